//! Writing a backup of the whole cluster: every key of every range as it was at one
//! revision, then the leases, as a stream of chunks of the backup file.

use super::format::{Writer, FORMAT};
use crate::proto::shoal::backup::{frame, End, Header, Lease};
use crate::range::META_RANGE_ID;
use crate::router::RouteError;
use crate::storage::StorageError;
use crate::txn::{Pages, Transactions, TxnError};
use bytes::Bytes;
use tokio::sync::mpsc;

/// Keys read per page (a page is one pinned read at the backup's revision).
const PAGE_KEYS: i64 = 2_000;
/// A page's response bound: big values end a page early.
const PAGE_BYTES: usize = 8 << 20;
/// Chunks sent to the client (etcd sends 32 KiB).
pub const CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(transparent)]
    Read(#[from] TxnError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The receiver went away (the client hung up): nothing to report to anyone.
    #[error("the snapshot's reader went away")]
    Closed,
}

/// What a finished backup holds.
#[derive(Clone, Copy, Debug)]
pub struct Saved {
    pub revision: i64,
    pub keys: u64,
    pub leases: u64,
    pub bytes: u64,
}

/// One piece of the file, with how many bytes the rest is expected to have (an
/// estimate from the ranges' sizes until the last piece, which says 0).
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub remaining_estimate: u64,
}

/// Streams a backup of every key (at one revision, the cluster's newest when it starts)
/// and every lease into `out`.
pub async fn save(
    txns: &Transactions,
    cluster_id: u64,
    member_id: u64,
    out: mpsc::Sender<Chunk>,
) -> Result<Saved, SaveError> {
    let router = txns.router();
    let estimate = router.registry().live_bytes();
    let mut writer = Writer::new(CHUNK_BYTES);
    let send = |writer: &mut Writer| {
        let chunks: Vec<Vec<u8>> = std::iter::from_fn(|| writer.take_chunk()).collect();
        let remaining = estimate.saturating_sub(writer.written()).max(1);
        let out = out.clone();
        async move {
            for bytes in chunks {
                out.send(Chunk {
                    bytes,
                    remaining_estimate: remaining,
                })
                .await
                .map_err(|_| SaveError::Closed)?;
            }
            Ok::<(), SaveError>(())
        }
    };

    // Every front-end's keys: the namespaces after the meta range's.
    let mut pages = Pages::new(
        Bytes::from_static(&[0x01]),
        Bytes::from_static(&[0xff]),
        PAGE_KEYS,
        PAGE_BYTES,
    );
    let mut keys = 0u64;
    let mut first = true;
    while let Some(page) = pages.next(txns).await? {
        // The first page fixed the revision every key is read at.
        if std::mem::take(&mut first) {
            writer.push(frame::Frame::Header(Header {
                format: FORMAT,
                revision: pages.revision(),
                cluster_id,
                member_id,
                created_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis() as i64),
                shoal_version: env!("CARGO_PKG_VERSION").to_string(),
            }));
        }
        for kv in page.kvs {
            keys += 1;
            writer.push(frame::Frame::Key(kv));
        }
        send(&mut writer).await?;
    }
    let revision = pages.revision();

    // Read after the keys: a lease granted since has no key here; a key whose lease
    // was revoked since is kept with the lease's id, and a restore gives such a lease
    // the shortest life (it is gone in the cluster the backup came from).
    router.linearize(META_RANGE_ID).await?;
    let records = router.pinned(META_RANGE_ID).await?.lease_records()?;
    let mut leases = 0u64;
    for record in records.into_iter().filter(|record| !record.revoking) {
        leases += 1;
        writer.push(frame::Frame::Lease(Lease {
            id: record.id,
            ttl: record.ttl,
        }));
    }
    let auth = router.pinned(META_RANGE_ID).await?.auth_store()?;
    if auth != Default::default() {
        writer.push(frame::Frame::Auth(auth));
    }
    writer.push(frame::Frame::End(End { keys, leases }));
    send(&mut writer).await?;
    let before = writer.written();
    let tail = writer.finish();
    let bytes = before + tail.len() as u64;
    out.send(Chunk {
        bytes: tail,
        remaining_estimate: 0,
    })
    .await
    .map_err(|_| SaveError::Closed)?;
    Ok(Saved {
        revision,
        keys,
        leases,
        bytes,
    })
}
