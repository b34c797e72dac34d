//! Multi-version key-value records on top of the engine.
//!
//! Three spaces hold the data of every range:
//! - `KvLatest`: `key -> record` of every live key, so reads at the newest revision are
//!   one ordered scan;
//! - `KvHistory`: `escape(key) ++ revision -> record` of every version not yet compacted
//!   away, including deletions (tombstones), for reads at past revisions;
//! - `KvChanges`: `revision ++ sub -> key`, the order in which keys changed, for watches.
//!
//! Keys here are internal keys (namespace byte first). This module knows revisions but
//! nothing of etcd's request semantics.

use super::keys;
use super::{KeyRange, ReadView, Result, ScanIter, Space, StorageError, WriteBatch};
use std::collections::BTreeMap;
use std::iter::Peekable;

const RECORD_FORMAT: u8 = 1;
const RECORD_HEADER_BYTES: usize = 1 + 4 * 8;

/// One version of one key. A version of 0 marks a deletion (a tombstone), which exists
/// only in the history.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Vec<u8>,
}

impl Record {
    pub fn tombstone(mod_revision: i64) -> Self {
        Self {
            mod_revision,
            ..Self::default()
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + self.value.len());
        out.push(RECORD_FORMAT);
        for field in [self.create_revision, self.mod_revision, self.version, self.lease] {
            out.extend_from_slice(&field.to_be_bytes());
        }
        out.extend_from_slice(&self.value);
        out
    }

    pub fn decode(space: Space, bytes: &[u8]) -> Result<Self> {
        let corrupt = |detail: &str| StorageError::Corrupt {
            space,
            detail: detail.to_string(),
        };
        if bytes.len() < RECORD_HEADER_BYTES {
            return Err(corrupt("record shorter than its header"));
        }
        if bytes[0] != RECORD_FORMAT {
            return Err(corrupt("unknown record format"));
        }
        let field = |index: usize| {
            let start = 1 + index * 8;
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&bytes[start..start + 8]);
            i64::from_be_bytes(raw)
        };
        Ok(Self {
            create_revision: field(0),
            mod_revision: field(1),
            version: field(2),
            lease: field(3),
            value: bytes[RECORD_HEADER_BYTES..].to_vec(),
        })
    }
}

pub type KeyRecord = (Vec<u8>, Record);
pub type RecordIter<'a> = Box<dyn Iterator<Item = Result<KeyRecord>> + 'a>;

/// Reads of MVCC data at the newest or at a past revision.
pub trait MvccRead {
    fn latest(&self, key: &[u8]) -> Result<Option<Record>>;
    /// Live keys in `range`, ascending.
    fn scan_latest(&self, range: &KeyRange) -> RecordIter<'_>;
    /// Keys in `range` that were live at `revision`, with the version they had then.
    fn scan_at(&self, range: &KeyRange, revision: i64) -> RecordIter<'_>;
}

impl<V: ReadView + ?Sized> MvccRead for V {
    fn latest(&self, key: &[u8]) -> Result<Option<Record>> {
        match self.get(Space::KvLatest, key)? {
            Some(bytes) => Ok(Some(Record::decode(Space::KvLatest, &bytes)?)),
            None => Ok(None),
        }
    }

    fn scan_latest(&self, range: &KeyRange) -> RecordIter<'_> {
        Box::new(self.scan(Space::KvLatest, range, false).map(|pair| {
            let (key, value) = pair?;
            Ok((key, Record::decode(Space::KvLatest, &value)?))
        }))
    }

    fn scan_at(&self, range: &KeyRange, revision: i64) -> RecordIter<'_> {
        let history = history_range(range);
        Box::new(VersionsAt {
            versions: self.scan(Space::KvHistory, &history, false).peekable(),
            revision,
        })
    }
}

fn history_range(range: &KeyRange) -> KeyRange {
    KeyRange::new(
        keys::history_seek(&range.start),
        range.end.as_deref().map(keys::history_seek),
    )
}

/// Walks the history of consecutive keys and yields, per key, the version that was
/// current at `revision` (if it was live).
struct VersionsAt<I: Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>> {
    versions: Peekable<I>,
    revision: i64,
}

impl<I: Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>> Iterator for VersionsAt<I> {
    type Item = Result<KeyRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (encoded, value) = match self.versions.next()? {
                Ok(pair) => pair,
                Err(error) => return Some(Err(error)),
            };
            let Some((key, revision)) = keys::parse_history_key(&encoded) else {
                return Some(Err(StorageError::Corrupt {
                    space: Space::KvHistory,
                    detail: "unparsable history key".into(),
                }));
            };
            let mut current = (revision <= self.revision).then_some(value);
            // Versions of one key are consecutive and ascending: keep the newest one that
            // is not after the requested revision.
            while let Some(Ok((next_encoded, _))) = self.versions.peek() {
                match keys::parse_history_key(next_encoded) {
                    Some((next_key, next_revision)) if next_key == key => {
                        let Some(Ok((_, next_value))) = self.versions.next() else {
                            unreachable!("peeked an Ok item")
                        };
                        if next_revision <= self.revision {
                            current = Some(next_value);
                        }
                    }
                    _ => break,
                }
            }
            let Some(value) = current else { continue };
            match Record::decode(Space::KvHistory, &value) {
                Ok(record) if record.is_tombstone() => continue,
                Ok(record) => return Some(Ok((key, record))),
                Err(error) => return Some(Err(error)),
            }
        }
    }
}

/// The engine as it was at `revision`: its newest-version space shows, for each key,
/// the version current at that revision (from history); everything else reads through.
/// A read or transaction over several ranges runs on one pinned view seen this way,
/// at a revision every range involved is final at, even where a range has applied
/// further.
pub struct AsOf<V> {
    pub view: V,
    pub revision: i64,
}

impl<V: ReadView> ReadView for AsOf<V> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if space != Space::KvLatest {
            return self.view.get(space, key);
        }
        let mut end = key.to_vec();
        end.push(0);
        match self
            .view
            .scan_at(&KeyRange::new(key.to_vec(), Some(end)), self.revision)
            .next()
        {
            Some(Ok((found, record))) if found == key => Ok(Some(record.encode())),
            Some(Err(error)) => Err(error),
            _ => Ok(None),
        }
    }

    fn scan(&self, space: Space, range: &KeyRange, reverse: bool) -> ScanIter {
        if space != Space::KvLatest || reverse {
            // Only forward scans of newest versions are asked of a view at a revision.
            return self.view.scan(space, range, reverse);
        }
        let versions: Vec<Result<(Vec<u8>, Vec<u8>)>> = self
            .view
            .scan_at(range, self.revision)
            .map(|item| item.map(|(key, record)| (key, record.encode())))
            .collect();
        Box::new(versions.into_iter())
    }
}

/// Uncommitted writes of one transaction, seen by its own later operations.
/// `None` marks a key the transaction deleted.
pub type Overlay = BTreeMap<Vec<u8>, Option<Record>>;

/// The engine as a transaction sees it: its own writes on top of the committed state.
pub struct Overlaid<'a> {
    pub base: &'a dyn ReadView,
    pub overlay: &'a Overlay,
}

impl MvccRead for Overlaid<'_> {
    fn latest(&self, key: &[u8]) -> Result<Option<Record>> {
        match self.overlay.get(key) {
            Some(written) => Ok(written.clone()),
            None => self.base.latest(key),
        }
    }

    fn scan_latest(&self, range: &KeyRange) -> RecordIter<'_> {
        use std::ops::Bound;
        let upper = match &range.end {
            Some(end) => Bound::Excluded(end.clone()),
            None => Bound::Unbounded,
        };
        let written = self
            .overlay
            .range((Bound::Included(range.start.clone()), upper))
            .map(|(key, record)| (key.clone(), record.clone()))
            .peekable();
        Box::new(MergeOverlay {
            base: self.base.scan_latest(range).peekable(),
            written,
        })
    }

    fn scan_at(&self, range: &KeyRange, revision: i64) -> RecordIter<'_> {
        // A transaction's own writes carry the revision it is creating, which no read
        // inside it may ask for; past revisions are all committed.
        self.base.scan_at(range, revision)
    }
}

struct MergeOverlay<'a, W: Iterator<Item = (Vec<u8>, Option<Record>)>> {
    base: Peekable<RecordIter<'a>>,
    written: Peekable<W>,
}

impl<W: Iterator<Item = (Vec<u8>, Option<Record>)>> Iterator for MergeOverlay<'_, W> {
    type Item = Result<KeyRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.base.peek(), self.written.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => return self.base.next(),
                (None, Some(_)) => std::cmp::Ordering::Less,
                (Some(_), None) => std::cmp::Ordering::Greater,
                (Some(Ok((base_key, _))), Some((written_key, _))) => written_key.cmp(base_key),
            };
            if order == std::cmp::Ordering::Equal {
                // The transaction's write shadows the committed version.
                self.base.next();
            }
            let take_written = order != std::cmp::Ordering::Greater;
            if !take_written {
                return self.base.next();
            }
            let (key, record) = self.written.next()?;
            if let Some(record) = record {
                return Some(Ok((key, record)));
            }
        }
    }
}

/// One change to one key, in revision order: a new version, or a deletion (a
/// tombstone record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub revision: i64,
    pub sub: i64,
    pub key: Vec<u8>,
    pub record: Record,
}

/// How much [`read_changes`] may return at once.
#[derive(Clone, Copy, Debug)]
pub struct ChangeLimit {
    pub changes: usize,
    /// Bytes of keys and values.
    pub bytes: usize,
}

/// Changes with revisions in `[from, to]`, in order, stopping once past either limit but
/// never inside a revision (a transaction's changes stay together). Returns them and the
/// last revision fully covered.
pub fn read_changes(view: &dyn ReadView, from: i64, to: i64, limit: ChangeLimit) -> Result<(Vec<Change>, i64)> {
    let mut bytes_read = 0usize;
    let mut changes: Vec<Change> = Vec::new();
    if from > to {
        return Ok((changes, to));
    }
    let range = KeyRange::new(keys::change_key(from, 0), Some(keys::change_key(to + 1, 0)));
    for pair in view.scan(Space::KvChanges, &range, false) {
        let (encoded, key) = pair?;
        let Some((revision, sub)) = keys::parse_change_key(&encoded) else {
            return Err(StorageError::Corrupt {
                space: Space::KvChanges,
                detail: "unparsable change key".into(),
            });
        };
        let full = changes.len() >= limit.changes || bytes_read >= limit.bytes;
        if full && changes.last().is_some_and(|last| last.revision != revision) {
            let covered = revision - 1;
            return Ok((changes, covered));
        }
        let bytes = view
            .get(Space::KvHistory, &keys::history_key(&key, revision))?
            .ok_or_else(|| StorageError::Corrupt {
                space: Space::KvHistory,
                detail: format!("change at revision {revision} has no version"),
            })?;
        let record = Record::decode(Space::KvHistory, &bytes)?;
        bytes_read += key.len() + record.value.len();
        changes.push(Change {
            revision,
            sub,
            key,
            record,
        });
    }
    Ok((changes, to))
}

/// The version of `key` just before `revision`, if it was live then.
pub fn version_before(view: &dyn ReadView, key: &[u8], revision: i64) -> Result<Option<Record>> {
    if revision <= 1 {
        return Ok(None);
    }
    let range = KeyRange::new(keys::history_key(key, 1), Some(keys::history_key(key, revision)));
    match view.scan(Space::KvHistory, &range, true).next() {
        Some(pair) => {
            let record = Record::decode(Space::KvHistory, &pair?.1)?;
            Ok((!record.is_tombstone()).then_some(record))
        }
        None => Ok(None),
    }
}

/// Writes `record` as the new newest version of `key`.
pub fn write_put(batch: &mut WriteBatch, key: &[u8], record: &Record, sub: i64) {
    debug_assert!(!record.is_tombstone());
    let encoded = record.encode();
    batch.put(
        Space::KvHistory,
        keys::history_key(key, record.mod_revision),
        encoded.clone(),
    );
    batch.put(Space::KvLatest, key.to_vec(), encoded);
    batch.put(
        Space::KvChanges,
        keys::change_key(record.mod_revision, sub),
        key.to_vec(),
    );
}

/// Records the deletion of `key` at `revision`.
pub fn write_delete(batch: &mut WriteBatch, key: &[u8], revision: i64, sub: i64) {
    batch.put(
        Space::KvHistory,
        keys::history_key(key, revision),
        Record::tombstone(revision).encode(),
    );
    batch.delete(Space::KvLatest, key.to_vec());
    batch.put(Space::KvChanges, keys::change_key(revision, sub), key.to_vec());
}

/// Removes, for keys in `range`, every version that no read at `compact_revision` or
/// later can see: all but the newest version at or below `compact_revision`, and that
/// one too if it is a deletion. Deletes are handed to `flush` in batches of at most
/// `batch_ops` so a large history never builds one huge batch.
pub fn compact(
    view: &dyn ReadView,
    range: &KeyRange,
    compact_revision: i64,
    batch_ops: usize,
    flush: &mut dyn FnMut(WriteBatch) -> Result<()>,
) -> Result<u64> {
    let mut removed = 0u64;
    let mut batch = WriteBatch::new();
    let mut key_versions: Vec<(Vec<u8>, i64, bool)> = Vec::new();
    let mut current_key: Option<Vec<u8>> = None;

    let mut finish_key = |versions: &mut Vec<(Vec<u8>, i64, bool)>, batch: &mut WriteBatch| {
        // `versions` holds this key's versions at or below the compact revision, oldest
        // first; the newest of them survives unless it is a deletion.
        if let Some((_, _, newest_is_tombstone)) = versions.last() {
            let keep_newest = !newest_is_tombstone;
            let cut = if keep_newest {
                versions.len() - 1
            } else {
                versions.len()
            };
            for (encoded, _, _) in versions.drain(..).take(cut) {
                batch.delete(Space::KvHistory, encoded);
                removed += 1;
            }
        }
        versions.clear();
    };

    for pair in view.scan(Space::KvHistory, &history_range(range), false) {
        let (encoded, value) = pair?;
        let Some((key, revision)) = keys::parse_history_key(&encoded) else {
            return Err(StorageError::Corrupt {
                space: Space::KvHistory,
                detail: "unparsable history key".into(),
            });
        };
        if current_key.as_deref() != Some(key.as_slice()) {
            finish_key(&mut key_versions, &mut batch);
            current_key = Some(key);
        }
        if revision <= compact_revision {
            let tombstone = Record::decode(Space::KvHistory, &value)?.is_tombstone();
            key_versions.push((encoded, revision, tombstone));
        }
        if batch.len() >= batch_ops {
            flush(std::mem::take(&mut batch))?;
        }
    }
    finish_key(&mut key_versions, &mut batch);

    let changes = KeyRange::new(Vec::new(), Some(keys::change_key(compact_revision, 0)));
    for pair in view.scan(Space::KvChanges, &changes, false) {
        let (encoded, key) = pair?;
        if range.contains(&key) {
            batch.delete(Space::KvChanges, encoded);
        }
        if batch.len() >= batch_ops {
            flush(std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        flush(batch)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Durability, Engine, FjallEngine};

    fn put(engine: &FjallEngine, key: &[u8], value: &[u8], revision: i64) {
        let previous = engine.latest(key).unwrap();
        let record = Record {
            create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            lease: 0,
            value: value.to_vec(),
        };
        let mut batch = WriteBatch::new();
        write_put(&mut batch, key, &record, 0);
        engine.write(batch, Durability::Buffered).unwrap();
    }

    fn delete(engine: &FjallEngine, key: &[u8], revision: i64) {
        let mut batch = WriteBatch::new();
        write_delete(&mut batch, key, revision, 0);
        engine.write(batch, Durability::Buffered).unwrap();
    }

    fn values_at(engine: &FjallEngine, revision: i64) -> Vec<(Vec<u8>, Vec<u8>)> {
        engine
            .scan_at(&KeyRange::new(Vec::new(), None), revision)
            .map(|item| {
                let (key, record) = item.unwrap();
                (key, record.value)
            })
            .collect()
    }

    fn kv(key: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
        (key.as_bytes().to_vec(), value.as_bytes().to_vec())
    }

    #[test]
    fn reads_at_past_revisions_see_the_version_current_then() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path()).unwrap();
        put(&engine, b"a", b"1", 1);
        put(&engine, b"b", b"1", 2);
        put(&engine, b"a", b"2", 3);
        delete(&engine, b"b", 4);
        put(&engine, b"a\x00", b"x", 5);

        assert_eq!(values_at(&engine, 1), vec![kv("a", "1")]);
        assert_eq!(values_at(&engine, 2), vec![kv("a", "1"), kv("b", "1")]);
        assert_eq!(values_at(&engine, 3), vec![kv("a", "2"), kv("b", "1")]);
        assert_eq!(values_at(&engine, 4), vec![kv("a", "2")]);
        assert_eq!(values_at(&engine, 5), vec![kv("a", "2"), kv("a\0", "x")]);
        let a = engine.latest(b"a").unwrap().unwrap();
        assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 3, 2));
    }

    #[test]
    fn compaction_keeps_what_reads_at_or_after_it_need() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path()).unwrap();
        put(&engine, b"a", b"1", 1);
        put(&engine, b"a", b"2", 2);
        put(&engine, b"b", b"1", 3);
        delete(&engine, b"b", 4);
        put(&engine, b"a", b"3", 5);
        let expected_at_4 = values_at(&engine, 4);
        let expected_at_5 = values_at(&engine, 5);

        let removed = compact(&engine, &KeyRange::new(Vec::new(), None), 4, 2, &mut |batch| {
            engine.write(batch, Durability::Buffered)
        })
        .unwrap();
        // a@1 is shadowed by a@2; b@3 and its deletion at 4 are both gone.
        assert_eq!(removed, 3);
        assert_eq!(values_at(&engine, 4), expected_at_4);
        assert_eq!(values_at(&engine, 5), expected_at_5);
        let changes: Vec<_> = engine
            .scan(Space::KvChanges, &KeyRange::new(Vec::new(), None), false)
            .map(|pair| keys::parse_change_key(&pair.unwrap().0).unwrap().0)
            .collect();
        assert_eq!(changes, vec![4, 5]);
    }

    #[test]
    fn changes_come_in_revision_order_without_splitting_a_revision() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path()).unwrap();
        put(&engine, b"a", b"1", 2);
        put(&engine, b"b", b"1", 3);
        // One revision, two keys (a transaction).
        let mut batch = WriteBatch::new();
        for (sub, key) in [b"c", b"d"].iter().enumerate() {
            let record = Record {
                create_revision: 4,
                mod_revision: 4,
                version: 1,
                lease: 0,
                value: b"t".to_vec(),
            };
            write_put(&mut batch, *key, &record, sub as i64);
        }
        engine.write(batch, Durability::Buffered).unwrap();
        delete(&engine, b"a", 5);

        let many = ChangeLimit {
            changes: 100,
            bytes: 1 << 20,
        };
        let (all, covered) = read_changes(&engine, 1, 5, many).unwrap();
        let order: Vec<(i64, i64)> = all.iter().map(|c| (c.revision, c.sub)).collect();
        assert_eq!(order, [(2, 0), (3, 0), (4, 0), (4, 1), (5, 0)]);
        assert_eq!(covered, 5);
        assert!(all[4].record.is_tombstone());

        let two = ChangeLimit {
            changes: 2,
            bytes: 1 << 20,
        };
        let (first, covered) = read_changes(&engine, 3, 5, two).unwrap();
        assert_eq!(first.len(), 3, "revision 4 is not split");
        assert_eq!(covered, 4);
        let tiny = ChangeLimit { changes: 100, bytes: 1 };
        let (one, covered) = read_changes(&engine, 2, 5, tiny).unwrap();
        assert_eq!(
            (one.len(), covered),
            (1, 2),
            "the byte limit cuts after the first revision"
        );
        assert_eq!(version_before(&engine, b"a", 5).unwrap().unwrap().value, b"1");
        assert_eq!(version_before(&engine, b"a", 2).unwrap(), None);
    }

    #[test]
    fn overlay_hides_deleted_and_shows_written_keys() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path()).unwrap();
        put(&engine, b"a", b"1", 1);
        put(&engine, b"c", b"1", 2);
        let mut overlay = Overlay::new();
        overlay.insert(b"a".to_vec(), None);
        overlay.insert(
            b"b".to_vec(),
            Some(Record {
                create_revision: 3,
                mod_revision: 3,
                version: 1,
                lease: 0,
                value: b"new".to_vec(),
            }),
        );
        let view = Overlaid {
            base: &engine,
            overlay: &overlay,
        };
        let keys: Vec<_> = view
            .scan_latest(&KeyRange::new(Vec::new(), None))
            .map(|item| item.unwrap().0)
            .collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(view.latest(b"a").unwrap(), None);
    }
}
