//! Range snapshots: how a range's whole state is cut from one node and installed on
//! another.
//!
//! raft-rs asks the log store for a snapshot when a follower is too far behind the
//! leader's log. The log store pins an engine view at the applied index and registers it
//! here; the Raft message carries only the registration id. The transport then streams
//! the records of that view in chunks, the receiver stages them in a file, and the
//! receiving store loop installs the file when raft-rs accepts the snapshot.
//!
//! Stream format: a sequence of records `space tag (1 byte) | key length (u32 BE) | key |
//! value length (u32 BE) | value`, cut into chunks at record boundaries.

use crate::proto::shoal::state::RangeDescriptor;
use crate::storage::{keys, KeyRange, ReadView, Space, StorageError, WriteBatch};
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Size of one streamed chunk.
pub const CHUNK_BYTES: usize = 1 << 20;
/// A pinned view holds back engine garbage collection: drop it if nobody streamed it.
const PENDING_SNAPSHOT_TTL: Duration = Duration::from_secs(600);

/// The spaces that make up a range's replicated state: key-value data and lease
/// attachments, selected by the range's key span...
const DATA_SPACES: [Space; 4] = [Space::KvLatest, Space::KvHistory, Space::KvChanges, Space::LeaseKeys];
/// ...and per-range records, keyed by the range id.
const RANGE_RECORD_SPACES: [Space; 2] = [Space::RangeMeta, Space::Leases];

pub struct PendingSnapshot {
    pub descriptor: RangeDescriptor,
    pub to: u64,
    pub view: Arc<dyn ReadView>,
    created: Instant,
}

/// Engine views pinned for snapshots that are waiting to be streamed.
#[derive(Default)]
pub struct SnapshotRegistry {
    pending: Mutex<HashMap<u64, PendingSnapshot>>,
    next_id: AtomicU64,
}

impl SnapshotRegistry {
    pub fn register(&self, descriptor: RangeDescriptor, to: u64, view: Arc<dyn ReadView>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pending.retain(|_, snapshot| snapshot.created.elapsed() < PENDING_SNAPSHOT_TTL);
        pending.insert(
            id,
            PendingSnapshot {
                descriptor,
                to,
                view,
                created: Instant::now(),
            },
        );
        id
    }

    /// Drops every registered snapshot (their pinned views) when the node's run stops.
    pub fn clear(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }

    pub fn take(&self, id: u64) -> Option<PendingSnapshot> {
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pending.remove(&id)
    }
}

/// Reads the registration id out of a snapshot's data field.
pub fn registration_id(data: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(data.try_into().ok()?))
}

fn in_data_span(space: Space, key: &[u8], span: &KeyRange) -> bool {
    match space {
        Space::KvLatest => span.contains(key),
        Space::KvHistory => keys::parse_history_key(key).is_some_and(|(key, _)| span.contains(&key)),
        Space::LeaseKeys => span.contains(keys::lease_entry_key(key)),
        _ => false,
    }
}

fn space_scan(space: Space, span: &KeyRange) -> KeyRange {
    match space {
        Space::KvLatest => span.clone(),
        Space::KvHistory => KeyRange::new(
            keys::history_seek(&span.start),
            span.end.as_deref().map(keys::history_seek),
        ),
        _ => KeyRange::new(Vec::new(), None),
    }
}

pub fn descriptor_span(descriptor: &RangeDescriptor) -> KeyRange {
    let end = (!descriptor.end_key.is_empty()).then(|| descriptor.end_key.to_vec());
    KeyRange::new(descriptor.start_key.to_vec(), end)
}

fn push_record(chunk: &mut Vec<u8>, space: Space, key: &[u8], value: &[u8]) {
    chunk.push(space.tag());
    chunk.extend_from_slice(&(key.len() as u32).to_be_bytes());
    chunk.extend_from_slice(key);
    chunk.extend_from_slice(&(value.len() as u32).to_be_bytes());
    chunk.extend_from_slice(value);
}

/// Visits every record of the range's state in `view`, in a fixed order, until `visit`
/// returns false.
fn for_each_record(
    view: &dyn ReadView,
    descriptor: &RangeDescriptor,
    visit: &mut dyn FnMut(Space, Vec<u8>, Vec<u8>) -> bool,
) -> Result<(), StorageError> {
    let span = descriptor_span(descriptor);
    for space in DATA_SPACES {
        for pair in view.scan(space, &space_scan(space, &span), false) {
            let (key, value) = pair?;
            let belongs = match space {
                Space::KvChanges => span.contains(&value),
                _ => in_data_span(space, &key, &span),
            };
            if belongs && !visit(space, key, value) {
                return Ok(());
            }
        }
    }
    for space in RANGE_RECORD_SPACES {
        for pair in view.scan(space, &keys::range_records(descriptor.id), false) {
            let (key, value) = pair?;
            if !visit(space, key, value) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Streams every record of the range's state out of `view`, one chunk at a time, to
/// `send`; stops early (returning Ok) if `send` returns false.
pub fn stream_range(
    view: &dyn ReadView,
    descriptor: &RangeDescriptor,
    send: &mut dyn FnMut(Vec<u8>) -> bool,
) -> Result<(), StorageError> {
    let mut chunk = Vec::with_capacity(CHUNK_BYTES);
    let mut open = true;
    for_each_record(view, descriptor, &mut |space, key, value| {
        push_record(&mut chunk, space, &key, &value);
        if chunk.len() >= CHUNK_BYTES {
            open = send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_BYTES)));
        }
        open
    })?;
    if open && !chunk.is_empty() {
        send(chunk);
    }
    Ok(())
}

/// Bytes written per batch while a snapshot is installed: memory stays bounded however
/// large the range is.
const INSTALL_BATCH_BYTES: usize = 16 << 20;

/// Replaces the range's records in `engine` with those of a staged snapshot stream, in
/// bounded batches, then commits `finish` (the Raft-side records) with a sync. Until
/// that last batch the range is neither old nor new; the caller makes that recoverable
/// (see `SnapshotInstall`).
pub fn install(
    engine: &dyn crate::storage::Engine,
    descriptor: &RangeDescriptor,
    reader: &mut dyn Read,
    finish: impl FnOnce(&mut WriteBatch),
) -> Result<u64, StorageError> {
    use crate::storage::Durability;
    let mut batch = WriteBatch::new();
    let mut failure = None;
    let old = engine.snapshot();
    for_each_record(old.as_ref(), descriptor, &mut |space, key, _| {
        batch.delete(space, key);
        if batch.size_bytes() >= INSTALL_BATCH_BYTES {
            if let Err(error) = engine.write(std::mem::take(&mut batch), Durability::Buffered) {
                failure = Some(error);
                return false;
            }
        }
        true
    })?;
    drop(old);
    if let Some(error) = failure {
        return Err(error);
    }
    let records = read_records(reader, descriptor, &mut |space, key, value| {
        batch.put(space, key, value);
        if batch.size_bytes() >= INSTALL_BATCH_BYTES {
            engine.write(std::mem::take(&mut batch), Durability::Buffered)?;
        }
        Ok(())
    })?;
    finish(&mut batch);
    engine.write(batch, Durability::Sync)?;
    Ok(records)
}

/// Reads a whole snapshot stream, checking that every record is well formed and
/// belongs to the range, and hands each to `visit`. Returns the number of records.
pub fn read_records(
    reader: &mut dyn Read,
    descriptor: &RangeDescriptor,
    visit: &mut dyn FnMut(Space, Vec<u8>, Vec<u8>) -> Result<(), StorageError>,
) -> Result<u64, StorageError> {
    let span = descriptor_span(descriptor);
    let own_meta = keys::range_records(descriptor.id);
    let corrupt = |detail: String| StorageError::Corrupt {
        space: Space::RangeMeta,
        detail: format!("snapshot stream: {detail}"),
    };
    let mut records = 0u64;
    loop {
        let mut tag = [0u8; 1];
        if reader.read(&mut tag)? == 0 {
            return Ok(records);
        }
        let space = Space::from_tag(tag[0]).ok_or_else(|| corrupt(format!("unknown space tag {}", tag[0])))?;
        let key = read_field(reader)?;
        let value = read_field(reader)?;
        let belongs = match space {
            Space::KvChanges => span.contains(&value),
            Space::RangeMeta | Space::Leases => own_meta.contains(&key),
            _ => in_data_span(space, &key, &span),
        };
        if !belongs {
            return Err(corrupt(format!("record of {space:?} outside range {}", descriptor.id)));
        }
        visit(space, key, value)?;
        records += 1;
    }
}

fn read_field(reader: &mut dyn Read) -> Result<Vec<u8>, StorageError> {
    let mut length = [0u8; 4];
    reader.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length) as usize;
    // Keys and values are bounded by the request size limit; anything near 4 GiB is a
    // corrupt stream, not a record.
    if length > 256 << 20 {
        return Err(StorageError::Corrupt {
            space: Space::RangeMeta,
            detail: format!("snapshot stream: field of {length} bytes"),
        });
    }
    let mut field = vec![0u8; length];
    reader.read_exact(&mut field)?;
    Ok(field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{mvcc, Durability, Engine, FjallEngine};

    #[test]
    fn a_streamed_range_installs_identically_elsewhere() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = FjallEngine::open(source_dir.path()).unwrap();
        let descriptor = RangeDescriptor {
            id: 1,
            ..Default::default()
        };
        let mut batch = WriteBatch::new();
        for revision in 1..=2000i64 {
            let record = mvcc::Record {
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
                value: vec![7u8; 1000],
            };
            mvcc::write_put(&mut batch, format!("key{revision}").as_bytes(), &record, 0);
        }
        batch.put(Space::RangeMeta, keys::range_record_key(1, b's'), b"state".to_vec());
        batch.put(
            Space::RangeMeta,
            keys::range_record_key(2, b's'),
            b"other range".to_vec(),
        );
        source.write(batch, Durability::Buffered).unwrap();

        let mut stream = Vec::new();
        let mut chunks = 0;
        stream_range(source.snapshot().as_ref(), &descriptor, &mut |chunk| {
            chunks += 1;
            stream.extend_from_slice(&chunk);
            true
        })
        .unwrap();
        assert!(chunks > 1, "2 MB of values should need several chunks");

        let target_dir = tempfile::tempdir().unwrap();
        let target = FjallEngine::open(target_dir.path()).unwrap();
        let mut stale = WriteBatch::new();
        stale.put(Space::KvLatest, b"stale".to_vec(), b"x".to_vec());
        target.write(stale, Durability::Buffered).unwrap();

        let records = install(&target, &descriptor, &mut stream.as_slice(), |batch| {
            batch.put(Space::RaftState, b"finished".to_vec(), Vec::new());
        })
        .unwrap();
        assert!(target.get(Space::RaftState, b"finished").unwrap().is_some());
        assert_eq!(records, 3 * 2000 + 1);
        assert_eq!(target.get(Space::KvLatest, b"stale").unwrap(), None);
        for space in [Space::KvLatest, Space::KvHistory, Space::KvChanges] {
            let all = KeyRange::new(Vec::new(), None);
            let left: Vec<_> = source.scan(space, &all, false).map(Result::unwrap).collect();
            let right: Vec<_> = target.scan(space, &all, false).map(Result::unwrap).collect();
            assert_eq!(left, right, "{space:?} differs");
        }
        assert_eq!(
            target.get(Space::RangeMeta, &keys::range_record_key(2, b's')).unwrap(),
            None
        );
    }

    #[test]
    fn a_truncated_stream_is_an_error_not_a_partial_install() {
        let descriptor = RangeDescriptor {
            id: 1,
            ..Default::default()
        };
        let mut stream = Vec::new();
        push_record(&mut stream, Space::KvLatest, b"key", b"value");
        stream.truncate(stream.len() - 2);
        let records = read_records(&mut stream.as_slice(), &descriptor, &mut |_, _, _| Ok(()));
        assert!(records.is_err());
    }
}
