//! One range's Raft log and Raft state, kept in the engine and served to raft-rs
//! through its `Storage` trait.
//!
//! Writes never go to the engine directly from here: `append`, `set_hard_state` and
//! friends add to a batch that the store loop commits (with one fsync for every range),
//! and update the in-memory view at the same time. raft-rs reads that view only after
//! the batch is committed (the store loop calls `advance` afterwards), so it never sees
//! an entry that is not on disk.

use super::snapshot::SnapshotRegistry;
use crate::proto::shoal::state::{RangeDescriptor, SnapshotInstall, TruncatedState};
use crate::storage::{keys, Engine, KeyRange, Result as StorageResult, Space, StorageError, WriteBatch};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};
use std::collections::VecDeque;
use std::sync::Arc;

const HARD_STATE: u8 = b'h';
const CONF_STATE: u8 = b'c';
const TRUNCATED: u8 = b't';
const INSTALLING: u8 = b'i';

/// Recent entries are served from memory: followers are usually sent, and the state
/// machine applies, entries that were appended moments ago.
const CACHE_BYTES_MAX: usize = 16 << 20;

pub struct LogStore {
    range_id: u64,
    engine: Arc<dyn Engine>,
    hard_state: HardState,
    conf_state: ConfState,
    truncated: TruncatedState,
    last_index: u64,
    /// Contiguous entries ending at `last_index`.
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    /// What the state machine has applied; snapshots are taken at this point.
    applied_index: u64,
    applied_term: u64,
    snapshots: Arc<SnapshotRegistry>,
    descriptor: RangeDescriptor,
}

fn corrupt(detail: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        space: Space::RaftState,
        detail: detail.into(),
    }
}

/// The last storage failure handed to raft-rs. raft-rs treats a storage error other than
/// "compacted" or "unavailable" as a broken invariant and panics; the store loop's thread
/// catches that panic and, finding a failure here, reports it as the storage failure it
/// is (the node then restarts from disk) rather than as a bug. One node per process.
static HANDED_TO_RAFT: std::sync::Mutex<Option<(crate::storage::FaultKind, String)>> = std::sync::Mutex::new(None);

fn raft_error(error: StorageError) -> raft::Error {
    if let Ok(mut last) = HANDED_TO_RAFT.lock() {
        *last = Some((error.kind(), error.to_string()));
    }
    raft::Error::Store(RaftStorageError::Other(Box::new(error)))
}

/// The storage failure raft-rs was last handed, if any (taken: asked once per failure).
pub fn take_failure_handed_to_raft() -> Option<(crate::storage::FaultKind, String)> {
    HANDED_TO_RAFT.lock().ok().and_then(|mut last| last.take())
}

fn encode_pb(message: &impl protobuf::Message) -> Vec<u8> {
    // Encoding an in-memory message cannot fail; an error here is a bug in protobuf.
    message
        .write_to_bytes()
        .unwrap_or_else(|error| panic!("encoding a raft message: {error}"))
}

impl LogStore {
    /// Loads the log of `range_id`; a range never written before comes back empty and
    /// uninitialized (no voters).
    pub fn load(range_id: u64, engine: Arc<dyn Engine>, snapshots: Arc<SnapshotRegistry>) -> StorageResult<Self> {
        let read = |kind: u8| engine.get(Space::RaftState, &keys::range_record_key(range_id, kind));
        let hard_state = match read(HARD_STATE)? {
            Some(bytes) => HardState::parse_from_bytes(&bytes).map_err(|e| corrupt(format!("hard state: {e}")))?,
            None => HardState::default(),
        };
        let conf_state = match read(CONF_STATE)? {
            Some(bytes) => ConfState::parse_from_bytes(&bytes).map_err(|e| corrupt(format!("conf state: {e}")))?,
            None => ConfState::default(),
        };
        let truncated = match read(TRUNCATED)? {
            Some(bytes) => {
                TruncatedState::decode(bytes.as_slice()).map_err(|e| corrupt(format!("truncated state: {e}")))?
            }
            None => TruncatedState::default(),
        };
        let log = KeyRange::prefix(&range_id.to_be_bytes());
        let last_index = match engine.scan(Space::RaftLog, &log, true).next() {
            Some(pair) => {
                let (key, _) = pair?;
                keys::parse_raft_log_key(&key)
                    .ok_or_else(|| corrupt("unparsable log key"))?
                    .1
            }
            None => truncated.index,
        };
        assert!(
            last_index >= truncated.index,
            "range {range_id}: log ends at {last_index} before its truncation point {}",
            truncated.index
        );
        Ok(Self {
            range_id,
            engine,
            hard_state,
            conf_state,
            applied_index: truncated.index,
            applied_term: truncated.term,
            truncated,
            last_index,
            cache: VecDeque::new(),
            cache_bytes: 0,
            snapshots,
            descriptor: RangeDescriptor {
                id: range_id,
                ..Default::default()
            },
        })
    }

    /// Gives a brand-new range its first configuration. Every member of a new cluster
    /// starts from the same (empty) log and the same voters.
    pub fn bootstrap(&mut self, voters: Vec<u64>, batch: &mut WriteBatch) {
        assert!(
            self.conf_state.voters.is_empty() && self.last_index == 0,
            "bootstrapping a used range"
        );
        let conf_state = ConfState {
            voters,
            ..Default::default()
        };
        self.set_conf_state(conf_state, batch);
        self.set_hard_state(HardState::default(), batch);
    }

    /// The Raft state a range created by a split starts with on every replica: a log
    /// that begins after `index` (of `term`), everything up to it committed, and the
    /// voters and learners of the range it split from. Written in the split's apply batch.
    pub fn initialize_split(
        range_id: u64,
        voters: Vec<u64>,
        learners: Vec<u64>,
        index: u64,
        term: u64,
        batch: &mut WriteBatch,
    ) {
        let conf_state = ConfState {
            voters,
            learners,
            ..Default::default()
        };
        batch.put(
            Space::RaftState,
            keys::range_record_key(range_id, CONF_STATE),
            encode_pb(&conf_state),
        );
        let hard_state = HardState {
            term,
            vote: 0,
            commit: index,
            ..Default::default()
        };
        batch.put(
            Space::RaftState,
            keys::range_record_key(range_id, HARD_STATE),
            encode_pb(&hard_state),
        );
        batch.put(
            Space::RaftState,
            keys::range_record_key(range_id, TRUNCATED),
            TruncatedState { index, term }.encode_to_vec(),
        );
    }

    /// The span snapshots of this range cover.
    pub fn set_descriptor(&mut self, descriptor: RangeDescriptor) {
        self.descriptor = descriptor;
    }

    pub fn descriptor(&self) -> &RangeDescriptor {
        &self.descriptor
    }

    /// A snapshot install a crash interrupted, if any.
    pub fn pending_install(&self) -> StorageResult<Option<SnapshotInstall>> {
        let key = keys::range_record_key(self.range_id, INSTALLING);
        match self.engine.get(Space::RaftState, &key)? {
            Some(bytes) => Ok(Some(
                SnapshotInstall::decode(bytes.as_slice()).map_err(|e| corrupt(format!("snapshot install: {e}")))?,
            )),
            None => Ok(None),
        }
    }

    /// Records (synced by the caller) that an install is starting.
    pub fn begin_install(&self, install: &SnapshotInstall, batch: &mut WriteBatch) {
        batch.put(
            Space::RaftState,
            keys::range_record_key(self.range_id, INSTALLING),
            install.encode_to_vec(),
        );
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn first_index(&self) -> u64 {
        self.truncated.index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    pub fn truncated_index(&self) -> u64 {
        self.truncated.index
    }

    pub fn set_applied(&mut self, index: u64, term: u64) {
        debug_assert!(index >= self.applied_index, "applied index went backwards");
        self.applied_index = index;
        self.applied_term = term;
    }

    pub fn set_hard_state(&mut self, hard_state: HardState, batch: &mut WriteBatch) {
        batch.put(
            Space::RaftState,
            keys::range_record_key(self.range_id, HARD_STATE),
            encode_pb(&hard_state),
        );
        self.hard_state = hard_state;
    }

    pub fn set_conf_state(&mut self, conf_state: ConfState, batch: &mut WriteBatch) {
        batch.put(
            Space::RaftState,
            keys::range_record_key(self.range_id, CONF_STATE),
            encode_pb(&conf_state),
        );
        self.conf_state = conf_state;
    }

    /// Appends `entries`, replacing any conflicting tail of the log.
    pub fn append(&mut self, entries: &[Entry], batch: &mut WriteBatch) {
        let Some(first) = entries.first() else { return };
        let first_index = first.index;
        let new_last = first_index + entries.len() as u64 - 1;
        assert!(
            first_index > self.truncated.index && first_index <= self.last_index + 1,
            "range {}: appending at {first_index} to a log spanning ({}, {}]",
            self.range_id,
            self.truncated.index,
            self.last_index
        );
        for entry in entries {
            batch.put(
                Space::RaftLog,
                keys::raft_log_key(self.range_id, entry.index),
                encode_pb(entry),
            );
        }
        for stale in new_last + 1..=self.last_index {
            batch.delete(Space::RaftLog, keys::raft_log_key(self.range_id, stale));
        }

        while self.cache.back().is_some_and(|entry| entry.index >= first_index) {
            if let Some(entry) = self.cache.pop_back() {
                self.cache_bytes -= entry.compute_size() as usize;
            }
        }
        if self.cache.back().is_some_and(|entry| entry.index + 1 != first_index) {
            self.cache.clear();
            self.cache_bytes = 0;
        }
        for entry in entries {
            self.cache_bytes += entry.compute_size() as usize;
            self.cache.push_back(entry.clone());
        }
        while self.cache_bytes > CACHE_BYTES_MAX && self.cache.len() > 1 {
            if let Some(entry) = self.cache.pop_front() {
                self.cache_bytes -= entry.compute_size() as usize;
            }
        }
        self.last_index = new_last;
    }

    /// Drops entries up to and including `index`. Only called with an index the state
    /// machine has applied, in a batch that is synced, so that the applied state the
    /// entries led to is durable before they disappear.
    pub fn truncate_to(&mut self, index: u64, batch: &mut WriteBatch) -> StorageResult<()> {
        if index <= self.truncated.index {
            return Ok(());
        }
        assert!(index <= self.applied_index, "truncating unapplied entries");
        let term = self.entry_term(index)?;
        for stale in self.truncated.index + 1..=index {
            batch.delete(Space::RaftLog, keys::raft_log_key(self.range_id, stale));
        }
        self.truncated = TruncatedState { index, term };
        batch.put(
            Space::RaftState,
            keys::range_record_key(self.range_id, TRUNCATED),
            self.truncated.encode_to_vec(),
        );
        while self.cache.front().is_some_and(|entry| entry.index <= index) {
            if let Some(entry) = self.cache.pop_front() {
                self.cache_bytes -= entry.compute_size() as usize;
            }
        }
        Ok(())
    }

    /// Resets the log to start right after an installed snapshot, and ends the install.
    pub fn install_snapshot(&mut self, metadata: &SnapshotMetadata, batch: &mut WriteBatch) {
        batch.delete(Space::RaftState, keys::range_record_key(self.range_id, INSTALLING));
        for stale in self.truncated.index + 1..=self.last_index {
            batch.delete(Space::RaftLog, keys::raft_log_key(self.range_id, stale));
        }
        self.truncated = TruncatedState {
            index: metadata.index,
            term: metadata.term,
        };
        batch.put(
            Space::RaftState,
            keys::range_record_key(self.range_id, TRUNCATED),
            self.truncated.encode_to_vec(),
        );
        self.last_index = metadata.index;
        self.cache.clear();
        self.cache_bytes = 0;
        self.set_conf_state(metadata.get_conf_state().clone(), batch);
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = hard_state.commit.max(metadata.index);
        hard_state.term = hard_state.term.max(metadata.term);
        self.set_hard_state(hard_state, batch);
        self.applied_index = metadata.index;
        self.applied_term = metadata.term;
    }

    fn cached(&self, index: u64) -> Option<&Entry> {
        let first = self.cache.front()?.index;
        if index < first {
            return None;
        }
        self.cache.get((index - first) as usize)
    }

    fn load_entry(&self, index: u64) -> StorageResult<Entry> {
        let bytes = self
            .engine
            .get(Space::RaftLog, &keys::raft_log_key(self.range_id, index))?
            .ok_or_else(|| corrupt(format!("range {}: log entry {index} is missing", self.range_id)))?;
        Entry::parse_from_bytes(&bytes).map_err(|e| corrupt(format!("log entry {index}: {e}")))
    }

    fn entry_term(&self, index: u64) -> StorageResult<u64> {
        if index == self.truncated.index {
            return Ok(self.truncated.term);
        }
        if let Some(entry) = self.cached(index) {
            return Ok(entry.term);
        }
        Ok(self.load_entry(index)?.term)
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        assert!(
            high <= self.last_index + 1,
            "raft asked for entries up to {high} of a log ending at {}",
            self.last_index
        );
        let max_size = max_size.into();
        let mut entries = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let mut index = low;
        // Entries older than the cache come from the engine in one ordered scan.
        let cache_first = self.cache.front().map_or(high, |entry| entry.index).max(low);
        if index < cache_first.min(high) {
            let span = KeyRange::new(
                keys::raft_log_key(self.range_id, index),
                Some(keys::raft_log_key(self.range_id, cache_first.min(high))),
            );
            for pair in self.engine.scan(Space::RaftLog, &span, false) {
                let (_, bytes) = pair.map_err(raft_error)?;
                let entry = Entry::parse_from_bytes(&bytes)
                    .map_err(|e| raft_error(corrupt(format!("log entry {index}: {e}"))))?;
                if entry.index != index {
                    return Err(raft_error(corrupt(format!("log entry {index} is missing"))));
                }
                size += u64::from(entry.compute_size());
                if !entries.is_empty() && max_size.is_some_and(|max| size > max) {
                    return Ok(entries);
                }
                entries.push(entry);
                index += 1;
            }
        }
        while index < high {
            let entry = match self.cached(index) {
                Some(entry) => entry.clone(),
                None => self.load_entry(index).map_err(raft_error)?,
            };
            size += u64::from(entry.compute_size());
            if !entries.is_empty() && max_size.is_some_and(|max| size > max) {
                break;
            }
            entries.push(entry);
            index += 1;
        }
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.truncated.index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if index > self.last_index {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        self.entry_term(index).map_err(raft_error)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        if self.applied_index < request_index || self.applied_index == 0 {
            return Err(raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable));
        }
        let mut snapshot = Snapshot::default();
        let metadata = snapshot.mut_metadata();
        metadata.index = self.applied_index;
        metadata.term = self.applied_term;
        metadata.set_conf_state(self.conf_state.clone());
        // The data travels separately, streamed from a pinned engine view; the message
        // only names it.
        let id = self
            .snapshots
            .register(self.descriptor.clone(), to, self.engine.snapshot());
        snapshot.data = id.to_be_bytes().to_vec().into();
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Durability, FjallEngine};
    use raft::Storage as _;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn open(dir: &std::path::Path) -> (Arc<dyn Engine>, LogStore) {
        let engine: Arc<dyn Engine> = Arc::new(FjallEngine::open(dir).unwrap());
        let store = LogStore::load(1, engine.clone(), Arc::new(SnapshotRegistry::default())).unwrap();
        (engine, store)
    }

    #[test]
    fn append_replaces_conflicting_tail_and_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (engine, mut store) = open(dir.path());
            let mut batch = WriteBatch::new();
            store.bootstrap(vec![1, 2, 3], &mut batch);
            store.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>(), &mut batch);
            store.append(&[entry(4, 2)], &mut batch);
            engine.write(batch, Durability::Sync).unwrap();
            assert_eq!(store.last_index(), 4);
            assert_eq!(store.term(4).unwrap(), 2);
        }
        let (_, store) = open(dir.path());
        assert_eq!(store.last_index(), 4);
        assert_eq!(store.conf_state().voters, vec![1, 2, 3]);
        let entries = store.entries(1, 5, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(
            entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(1, 1), (2, 1), (3, 1), (4, 2)]
        );
        assert!(matches!(
            store.term(5),
            Err(raft::Error::Store(RaftStorageError::Unavailable))
        ));
    }

    #[test]
    fn truncation_moves_first_index_and_keeps_the_boundary_term() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (engine, mut store) = open(dir.path());
            let mut batch = WriteBatch::new();
            store.append(&(1..=10).map(|i| entry(i, 1 + i / 5)).collect::<Vec<_>>(), &mut batch);
            store.set_applied(8, 2);
            store.truncate_to(6, &mut batch).unwrap();
            engine.write(batch, Durability::Sync).unwrap();
        }
        let (_, store) = open(dir.path());
        assert_eq!(store.first_index(), 7);
        assert_eq!(store.term(6).unwrap(), 2);
        assert!(matches!(
            store.term(5),
            Err(raft::Error::Store(RaftStorageError::Compacted))
        ));
        assert!(matches!(
            store.entries(6, 8, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(RaftStorageError::Compacted))
        ));
        // From the engine (the cache is empty after a reload), honouring the size limit.
        let entries = store.entries(7, 11, Some(1), GetEntriesContext::empty(false)).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].index, 7);
    }
}
