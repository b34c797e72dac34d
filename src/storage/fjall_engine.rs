//! [`Engine`] on fjall, an LSM-tree engine in pure Rust.
//!
//! All spaces live in one fjall database, so a batch across spaces is atomic and they
//! share one journal: a synced batch also makes every earlier buffered batch durable.
//! Shoal relies on that ordering — apply batches are buffered, Raft log batches are
//! synced — and the journal is persisted manually so buffered batches cost no syscall.

use super::{Durability, Engine, KeyRange, ReadView, Result, ScanIter, Space, StorageError, WriteBatch, WriteOp};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

const MEMTABLE_BYTES_MAX: u64 = 16 << 20;

pub struct FjallEngine {
    db: Database,
    spaces: Arc<HashMap<Space, Keyspace>>,
}

/// fjall's errors sorted by what they mean for the node: an I/O error keeps its kind
/// (a full volume is told apart), a failed checksum or unparsable file is damage.
fn engine_error(error: fjall::Error) -> StorageError {
    use fjall::Error as F;
    use fjall::LsmError as L;
    match error {
        F::Io(error) | F::Storage(L::Io(error)) => StorageError::Io(error),
        F::Poisoned => StorageError::Poisoned,
        F::JournalRecovery(_) | F::InvalidTrailer | F::InvalidTag(_) | F::Decompress(_) | F::Unrecoverable => {
            StorageError::Damaged(format!("cannot be read back: {error}"))
        }
        F::Storage(
            L::ChecksumMismatch { .. }
            | L::Decompress(_)
            | L::InvalidTag(_)
            | L::InvalidTrailer
            | L::InvalidHeader(_)
            | L::Unrecoverable
            | L::InvalidVersion(_),
        ) => StorageError::Damaged(format!("a table file cannot be read back: {error}")),
        other => StorageError::Engine(other.to_string()),
    }
}

fn bounds(range: &KeyRange) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let end = match &range.end {
        Some(end) => Bound::Excluded(end.clone()),
        None => Bound::Unbounded,
    };
    (Bound::Included(range.start.clone()), end)
}

fn pairs(iter: fjall::Iter, reverse: bool) -> ScanIter {
    fn convert(guard: fjall::Guard) -> Result<(Vec<u8>, Vec<u8>)> {
        let (key, value) = guard.into_inner().map_err(engine_error)?;
        Ok((key.to_vec(), value.to_vec()))
    }
    if reverse {
        Box::new(iter.rev().map(convert))
    } else {
        Box::new(iter.map(convert))
    }
}

impl FjallEngine {
    pub fn open(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path)?;
        let journals = super::journal_guard::Journals::read(path)?;
        let db = Database::builder(path)
            .manual_journal_persist(true)
            .open()
            .map_err(|error| match engine_error(error) {
                StorageError::Damaged(detail) => StorageError::Damaged(format!(
                    "{} (the write-ahead journal: the newest Raft log entries and applied state): {detail}",
                    journals.describe(path)
                )),
                other => other,
            })?;
        if let Err(damaged) = journals.check() {
            drop(db);
            journals.restore();
            return Err(damaged);
        }
        let mut spaces = HashMap::new();
        for space in Space::ALL {
            // fjall's default (64 MiB of memtable per keyspace, no total cap) let a busy
            // node hold several hundred MiB of memtables; smaller ones flush sooner.
            let options = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES_MAX);
            let keyspace = db.keyspace(space.name(), options).map_err(engine_error)?;
            spaces.insert(space, keyspace);
        }
        Ok(Self {
            db,
            spaces: Arc::new(spaces),
        })
    }

    /// Reads every key of every space, so every block of every table file is read and
    /// its checksum checked: a member refuses to start on files that fail (the error
    /// names the space, its folder and, where it can tell, the table file and offset).
    pub fn verify(&self) -> Result<()> {
        for space in Space::ALL {
            let keyspace = self.keyspace(space);
            for item in keyspace.iter() {
                if let Err(error) = item.into_inner() {
                    let detail = match engine_error(error) {
                        StorageError::Damaged(detail) => detail,
                        other => return Err(other),
                    };
                    let folder = keyspace.path();
                    let files: Vec<String> = super::verify::damaged_tables(folder)
                        .into_iter()
                        .map(|(file, offset)| format!("{} (block at byte {offset})", file.display()))
                        .collect();
                    let place = if files.is_empty() {
                        format!("a table file under {}", folder.display())
                    } else {
                        files.join(", ")
                    };
                    return Err(StorageError::Damaged(format!(
                        "{place}, which holds {} ({}), fails its checksum: {detail}",
                        space.name(),
                        space.description()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Writes every space's memtable out as a table file (tests that need table files).
    #[cfg(test)]
    fn flush(&self) {
        for keyspace in self.spaces.values() {
            keyspace.rotate_memtable_and_wait().unwrap();
        }
    }

    fn keyspace(&self, space: Space) -> &Keyspace {
        // Every variant is inserted by `open`; a miss is a programming error.
        &self.spaces[&space]
    }
}

impl ReadView for FjallEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let value = self.keyspace(space).get(key).map_err(engine_error)?;
        Ok(value.map(|value| value.to_vec()))
    }

    fn scan(&self, space: Space, range: &KeyRange, reverse: bool) -> ScanIter {
        pairs(self.keyspace(space).range(bounds(range)), reverse)
    }
}

impl Engine for FjallEngine {
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        let mode = match durability {
            Durability::Sync => Some(PersistMode::SyncData),
            Durability::Buffered => None,
        };
        if batch.is_empty() {
            if let Some(mode) = mode {
                self.db.persist(mode).map_err(engine_error)?;
            }
            return Ok(());
        }
        let mut fjall_batch = self.db.batch().durability(mode);
        for op in batch.ops {
            match op {
                WriteOp::Put(space, key, value) => fjall_batch.insert(self.keyspace(space), key, value),
                WriteOp::Delete(space, key) => fjall_batch.remove(self.keyspace(space), key),
            }
        }
        fjall_batch.commit().map_err(engine_error)
    }

    fn snapshot(&self) -> Arc<dyn ReadView> {
        Arc::new(FjallSnapshot {
            snapshot: self.db.snapshot(),
            spaces: self.spaces.clone(),
        })
    }

    fn disk_space_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}

impl Drop for FjallEngine {
    fn drop(&mut self) {
        // Buffered batches are redone from the Raft log after a crash, but a clean stop
        // should not need that.
        if let Err(error) = self.db.persist(PersistMode::SyncAll) {
            tracing::warn!(%error, "could not persist the journal on shutdown");
        }
    }
}

struct FjallSnapshot {
    snapshot: fjall::Snapshot,
    spaces: Arc<HashMap<Space, Keyspace>>,
}

impl ReadView for FjallSnapshot {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let value = self.snapshot.get(&self.spaces[&space], key).map_err(engine_error)?;
        Ok(value.map(|value| value.to_vec()))
    }

    fn scan(&self, space: Space, range: &KeyRange, reverse: bool) -> ScanIter {
        pairs(self.snapshot.range(&self.spaces[&space], bounds(range)), reverse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_atomic_across_spaces_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = FjallEngine::open(dir.path()).unwrap();
            let mut batch = WriteBatch::new();
            batch.put(Space::KvLatest, b"a".to_vec(), b"1".to_vec());
            batch.put(Space::RaftLog, b"b".to_vec(), b"2".to_vec());
            engine.write(batch, Durability::Sync).unwrap();
        }
        let engine = FjallEngine::open(dir.path()).unwrap();
        assert_eq!(engine.get(Space::KvLatest, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(engine.get(Space::RaftLog, b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(engine.get(Space::KvLatest, b"b").unwrap(), None);
    }

    fn flip_byte(file: &Path, at: usize) {
        let mut bytes = std::fs::read(file).unwrap();
        bytes[at] ^= 0x40;
        std::fs::write(file, bytes).unwrap();
    }

    fn fill(engine: &FjallEngine) {
        let mut batch = WriteBatch::new();
        for index in 0..2_000u32 {
            batch.put(Space::KvLatest, index.to_be_bytes().to_vec(), vec![b'v'; 100]);
        }
        engine.write(batch, Durability::Sync).unwrap();
    }

    #[test]
    fn a_flipped_byte_in_a_table_is_found_and_its_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let tables = {
            let engine = FjallEngine::open(dir.path()).unwrap();
            fill(&engine);
            engine.flush();
            engine.verify().unwrap();
            engine.keyspace(Space::KvLatest).path().join("tables")
        };
        let table = std::fs::read_dir(&tables).unwrap().next().unwrap().unwrap().path();
        flip_byte(&table, 1_000);
        let engine = FjallEngine::open(dir.path()).unwrap();
        let error = engine.verify().unwrap_err();
        assert_eq!(error.kind(), crate::storage::FaultKind::Damaged, "{error}");
        let message = error.to_string();
        assert!(message.contains(&table.display().to_string()), "{message}");
        assert!(message.contains("kv_latest"), "{message}");
    }

    #[test]
    fn a_flipped_byte_in_the_journal_refuses_the_open_and_names_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = FjallEngine::open(dir.path()).unwrap();
            fill(&engine);
        }
        let journal = super::super::journal_guard::journal_paths(dir.path())
            .into_iter()
            .next()
            .expect("a journal file");
        // The file is preallocated: flip a byte inside what was written.
        let bytes = std::fs::read(&journal).unwrap();
        let written = bytes.iter().rposition(|byte| *byte != 0).expect("a written journal");
        flip_byte(&journal, written / 2);
        let error = FjallEngine::open(dir.path()).err().expect("a damaged journal opened");
        assert_eq!(error.kind(), crate::storage::FaultKind::Damaged, "{error}");
        assert!(error.to_string().contains(&journal.display().to_string()), "{error}");
    }

    #[test]
    fn a_journal_cut_short_before_whole_batches_is_damage_not_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = FjallEngine::open(dir.path()).unwrap();
            for index in 0..50u32 {
                let mut batch = WriteBatch::new();
                batch.put(Space::KvLatest, index.to_be_bytes().to_vec(), vec![b'v'; 20]);
                engine.write(batch, Durability::Sync).unwrap();
            }
        }
        let journal = super::super::journal_guard::journal_paths(dir.path())
            .into_iter()
            .next()
            .expect("a journal file");
        // The first byte of the journal is a batch's start tag: made unreadable, fjall
        // would take everything after it for a torn write.
        let original = std::fs::read(&journal).unwrap();
        let mut bytes = original.clone();
        bytes[0] = 0x7f;
        std::fs::write(&journal, &bytes).unwrap();
        for _ in 0..2 {
            let error = FjallEngine::open(dir.path()).err().expect("a damaged journal opened");
            assert_eq!(error.kind(), crate::storage::FaultKind::Damaged, "{error}");
            assert!(error.to_string().contains("not torn"), "{error}");
        }
        // Put right, it opens with every batch.
        std::fs::write(&journal, &original).unwrap();
        let engine = FjallEngine::open(dir.path()).unwrap();
        let keys = engine
            .scan(Space::KvLatest, &KeyRange::new(Vec::new(), None), false)
            .count();
        assert_eq!(keys, 50);
    }

    #[test]
    fn snapshot_does_not_see_later_writes_and_scans_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path()).unwrap();
        let mut batch = WriteBatch::new();
        for key in [b"a", b"b", b"c"] {
            batch.put(Space::KvLatest, key.to_vec(), key.to_vec());
        }
        engine.write(batch, Durability::Buffered).unwrap();
        let snapshot = engine.snapshot();
        let mut batch = WriteBatch::new();
        batch.delete(Space::KvLatest, b"b".to_vec());
        engine.write(batch, Durability::Buffered).unwrap();

        let range = KeyRange::new(b"a".to_vec(), Some(b"c".to_vec()));
        let seen: Vec<_> = snapshot
            .scan(Space::KvLatest, &range, false)
            .map(|pair| pair.unwrap().0)
            .collect();
        assert_eq!(seen, vec![b"a".to_vec(), b"b".to_vec()]);
        let now: Vec<_> = engine
            .scan(Space::KvLatest, &KeyRange::new(Vec::new(), None), true)
            .map(|pair| pair.unwrap().0)
            .collect();
        assert_eq!(now, vec![b"c".to_vec(), b"a".to_vec()]);
    }
}
