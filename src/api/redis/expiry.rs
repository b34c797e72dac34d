//! Active expiry: the leader of each data range removes the Redis keys in it whose time
//! has passed, a bounded batch per range per pass, so expired keys do not keep their
//! space until someone writes them. A removal is a delete conditional on the key not
//! having changed since it was seen expired (a SET meanwhile wins). Reads never depend
//! on it: an expired key reads as missing whether or not it was removed yet.

use super::data::{now_ms, Change, Data};
use super::keys::{self, Record};
use crate::router::Router;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often a node looks at the ranges it leads.
const PASS_INTERVAL: Duration = Duration::from_secs(1);
/// Most keys one pass reads in one range (the next pass goes on from there).
const KEYS_PER_PASS: i64 = 1000;

/// Runs until the task is aborted.
pub async fn run(data: Arc<Data>, router: Arc<Router>) {
    // Where the next pass of each range starts reading.
    let mut positions: HashMap<u64, Bytes> = HashMap::new();
    let mut ticker = tokio::time::interval(PASS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let me = router.node_id();
        for range in router.registry().data_ranges() {
            if range.view.status.leader() != me {
                continue;
            }
            let span = crate::range::snapshot::descriptor_span(&range.descriptor);
            let (redis_start, redis_end) = keys::all_databases_span();
            // The part of the range holding Redis keys, if any.
            let start = Bytes::from(span.start.clone()).max(redis_start);
            let end = match &span.end {
                Some(end) => Bytes::from(end.clone()).min(redis_end),
                None => redis_end,
            };
            if start >= end {
                continue;
            }
            let from = positions
                .get(&range.descriptor.id)
                .filter(|position| **position >= start && **position < end)
                .cloned()
                .unwrap_or_else(|| start.clone());
            match sweep(&data, from, end.clone()).await {
                Ok(Some(next)) => {
                    positions.insert(range.descriptor.id, next);
                }
                Ok(None) => {
                    positions.remove(&range.descriptor.id);
                }
                Err(error) => tracing::debug!(range = range.descriptor.id, %error, "Redis expiry pass"),
            }
        }
    }
}

/// Removes the expired keys among the first [`KEYS_PER_PASS`] from `from`; where the
/// next pass starts (`None`: the span's end was reached).
async fn sweep(data: &Data, from: Bytes, end: Bytes) -> Result<Option<Bytes>, super::data::DataError> {
    let now = now_ms();
    let (stored, more) = data.scan_raw(from, end, KEYS_PER_PASS).await?;
    let next = more.then(|| stored.last().map(|(key, _, _)| next_key(key))).flatten();
    // Records only (elements are no keys of their own), expired ones, with what to
    // delete: the record, and a collection's elements.
    let expired: Vec<((Bytes, i64), Vec<Change>)> = stored
        .into_iter()
        .filter(|(key, _, _)| keys::redis_key(key).is_some())
        .filter_map(|(key, value, mod_revision)| {
            let record = Record::decode(&value).filter(|record| record.expired(now))?;
            let mut changes = vec![Change::Delete(key.clone())];
            if record.kind.is_collection() {
                let (start, end) = keys::elements_span(&key);
                changes.push(Change::DeleteSpan(start, end));
            }
            Some(((key, mod_revision), changes))
        })
        .collect();
    if expired.is_empty() {
        return Ok(next);
    }
    let mut removed = expired.len();
    let expected: Vec<(Bytes, i64)> = expired.iter().map(|(expected, _)| expected.clone()).collect();
    let changes: Vec<Change> = expired.iter().flat_map(|(_, changes)| changes.clone()).collect();
    // All at once when none changed meanwhile, else one by one.
    if !data.write_if(&expected, changes).await? {
        removed = 0;
        for (expected, changes) in expired {
            removed += usize::from(data.write_if(&[expected], changes).await?);
        }
    }
    metrics::counter!("shoal_redis_expired_keys_total").increment(removed as u64);
    data.expired
        .fetch_add(removed as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(next)
}

/// The smallest key after `key`.
fn next_key(key: &Bytes) -> Bytes {
    let mut next = key.to_vec();
    next.push(0);
    next.into()
}

#[cfg(test)]
mod tests {
    use super::next_key;
    use bytes::Bytes;

    #[test]
    fn the_next_pass_starts_right_after_the_last_key_read() {
        let key = Bytes::from_static(b"\x02\x00ab");
        let next = next_key(&key);
        assert!(next > key);
        assert_eq!(&next[..], b"\x02\x00ab\x00");
    }
}
