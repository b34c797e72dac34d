//! Reads wherever their keys live, for every front-end: the one range holding them (the
//! fast path, made current first unless serializable), or every range involved at one
//! revision (see [`Router::pin_across`]); locks of transactions in progress are waited
//! for or resolved.

use super::{Transactions, TxnError};
use crate::range::kv::KvError;
use crate::range::reader::PinnedRange;
use crate::router::RouteError;
use crate::storage::KeyRange;
use std::time::Duration;
use tokio::time::Instant;

/// How long a read pinned against a range that split meanwhile waits to plan again.
const REPLAN_PAUSE: Duration = Duration::from_millis(2);

impl Transactions {
    /// Runs `read` on the data of `spans` as of `revision` (0: the newest), made
    /// current first unless `serializable`.
    pub async fn read_spans<T>(
        &self,
        spans: &[KeyRange],
        serializable: bool,
        revision: i64,
        read: impl Fn(&PinnedRange) -> Result<T, KvError>,
    ) -> Result<T, TxnError> {
        let outcome = self
            .read(|| self.pinned_read(spans, serializable, revision), &read)
            .await;
        match outcome {
            // A revision past what this range applied may still be in the cluster's
            // past (another range wrote it): make the range final there and read again.
            Err(TxnError::Refused(KvError::FutureRevision)) if revision > 0 && !serializable => {
                self.read(
                    || async { Ok(self.router.pin_across(spans, false, revision).await?) },
                    &read,
                )
                .await
            }
            other => other,
        }
    }

    async fn pinned_read(
        &self,
        spans: &[KeyRange],
        serializable: bool,
        revision: i64,
    ) -> Result<PinnedRange, TxnError> {
        let single = match self.router.plan(spans) {
            Ok(_) => self.pinned_for(spans, serializable).await,
            Err(error) => Err(error.into()),
        };
        match single {
            // Across ranges from the start, or since a split after the plan.
            Err(TxnError::Route(RouteError::CrossRange(_))) => {
                Ok(self.router.pin_across(spans, serializable, revision).await?)
            }
            other => other,
        }
    }

    /// This member's copy of the one range holding every key of `spans`, made current
    /// first unless the read is `serializable`, and still the range the keys were
    /// planned against when pinned (a split meanwhile plans again).
    async fn pinned_for(&self, spans: &[KeyRange], serializable: bool) -> Result<PinnedRange, TxnError> {
        let deadline = Instant::now() + self.router.request_timeout();
        loop {
            let plan = self.router.plan(spans)?;
            if !serializable {
                self.router.linearize(plan.range_id).await?;
            }
            let pinned = self.router.pinned(plan.range_id).await?;
            let epoch = pinned.epoch().map_err(KvError::from)?;
            if epoch == plan.epoch || plan.epoch == 0 {
                return Ok(pinned);
            }
            // Never a view of a range that is no longer the one planned: its keys may
            // have moved to a range this member has not caught up on yet.
            if Instant::now() >= deadline {
                return Err(TxnError::Route(RouteError::Range(crate::range::RangeError::Timeout)));
            }
            tokio::time::sleep(REPLAN_PAUSE).await;
        }
    }
}

impl Transactions {
    /// etcd's HashKV of this member's copy of every front-end's keys up to `revision`
    /// (<= 0: the newest), made current first: equal on every healthy member for the
    /// same revision and compaction point.
    pub async fn hash_kv(&self, revision: i64) -> Result<crate::range::reader::KvHash, TxnError> {
        let span = KeyRange::new(vec![0x01], Some(vec![0xff]));
        self.read_spans(std::slice::from_ref(&span), false, revision, |pinned| {
            pinned.hash_kv(&span, revision)
        })
        .await
    }
}

/// A span read page by page in key order, every page at the first page's revision:
/// one snapshot of a span however much it holds, never one response over the bound.
pub struct Pages {
    start: bytes::Bytes,
    end: bytes::Bytes,
    revision: i64,
    page_keys: i64,
    page_bytes: usize,
    done: bool,
}

impl Pages {
    /// The internal span `[start, end)`, `page_keys` keys (or `page_bytes`) a page.
    pub fn new(start: bytes::Bytes, end: bytes::Bytes, page_keys: i64, page_bytes: usize) -> Self {
        Self {
            start,
            end,
            revision: 0,
            page_keys,
            page_bytes,
            done: false,
        }
    }

    /// The revision every page is read at (0 before the first page).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The next page; the first is always given, even empty; `None` after the last.
    pub async fn next(&mut self, txns: &Transactions) -> Result<Option<crate::proto::shoal::kv::ReadResult>, TxnError> {
        if self.done {
            return Ok(None);
        }
        let read = crate::proto::shoal::kv::Read {
            span: Some(crate::range::ops::span(self.start.clone(), self.end.clone())),
            limit: self.page_keys,
            revision: self.revision,
            skip_count: true,
            ..Default::default()
        };
        let span = crate::range::kv::key_range(read.span.as_ref().unwrap_or(&Default::default()));
        let page_bytes = self.page_bytes;
        let page = txns
            .read_spans(&[span], false, self.revision, |pinned| pinned.read(&read, page_bytes))
            .await?;
        if self.revision == 0 {
            self.revision = page.revision;
        }
        match page.kvs.last() {
            Some(last) if page.more => {
                let mut next = last.key.to_vec();
                next.push(0);
                self.start = next.into();
            }
            _ => self.done = true,
        }
        Ok(Some(page))
    }
}
