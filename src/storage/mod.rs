//! The storage layer: one engine per node, holding the Raft logs and the MVCC data of
//! every local range. It knows nothing about Raft messages or client protocols.
//!
//! Everything above reaches the engine through [`Engine`], a deliberately narrow trait
//! (point get, ordered scan, atomic batch, point-in-time snapshot), so the engine can be
//! replaced without touching the layers above.

pub mod disk;
pub mod faults;
mod fjall_engine;
mod journal_guard;
pub mod keys;
pub mod mvcc;
mod verify;

pub use fjall_engine::FjallEngine;

use std::sync::Arc;

/// A separate ordered key space inside the engine. Every space is its own tree, so a
/// scan of one never walks over the keys of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    /// Raft log entries: `range id ++ index`.
    RaftLog,
    /// Raft hard state, conf state and truncation point, per range.
    RaftState,
    /// Newest version of every live key: `internal key -> record`.
    KvLatest,
    /// Every version still kept: `escaped internal key ++ revision -> record`.
    KvHistory,
    /// Which key changed at which revision: `revision ++ sub revision -> internal key`.
    KvChanges,
    /// Per-range state machine records (applied index, revision, members).
    RangeMeta,
    /// Per-node records (identity).
    NodeMeta,
    /// Leases: `range id ++ lease id -> record`.
    Leases,
    /// Which keys each lease holds: `range id ++ lease id ++ internal key -> ()`.
    LeaseKeys,
}

impl Space {
    pub const ALL: [Space; 9] = [
        Space::RaftLog,
        Space::RaftState,
        Space::KvLatest,
        Space::KvHistory,
        Space::KvChanges,
        Space::RangeMeta,
        Space::NodeMeta,
        Space::Leases,
        Space::LeaseKeys,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Space::RaftLog => "raft_log",
            Space::RaftState => "raft_state",
            Space::KvLatest => "kv_latest",
            Space::KvHistory => "kv_history",
            Space::KvChanges => "kv_changes",
            Space::RangeMeta => "range_meta",
            Space::NodeMeta => "node_meta",
            Space::Leases => "leases",
            Space::LeaseKeys => "lease_keys",
        }
    }

    /// What the space holds, for an operator reading an error.
    pub fn description(self) -> &'static str {
        match self {
            Space::RaftLog => "Raft log entries",
            Space::RaftState => "Raft hard state and membership",
            Space::KvLatest => "the newest version of every key",
            Space::KvHistory => "older versions of keys",
            Space::KvChanges => "the change log watches read",
            Space::RangeMeta => "ranges' applied state and descriptors",
            Space::NodeMeta => "this member's identity",
            Space::Leases => "leases",
            Space::LeaseKeys => "which keys each lease holds",
        }
    }

    /// Stable one-byte tag, used in snapshot streams.
    pub fn tag(self) -> u8 {
        match self {
            Space::RaftLog => 1,
            Space::RaftState => 2,
            Space::KvLatest => 3,
            Space::KvHistory => 4,
            Space::KvChanges => 5,
            Space::RangeMeta => 6,
            Space::NodeMeta => 7,
            Space::Leases => 8,
            Space::LeaseKeys => 9,
        }
    }

    pub fn from_tag(tag: u8) -> Option<Space> {
        Space::ALL.into_iter().find(|space| space.tag() == tag)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("corrupt record in {space:?}: {detail}")]
    Corrupt { space: Space, detail: String },
    #[error("storage i/o: {0}")]
    Io(#[from] std::io::Error),
    /// An earlier write or sync failed, so the engine takes no more writes: what it
    /// holds in memory since its last good sync is not known to be on disk.
    #[error(
        "storage engine stopped taking writes after an earlier write or sync failed (fsync errors are never retried)"
    )]
    Poisoned,
    /// A checksum or format check failed: the files hold something Shoal did not write.
    #[error("damaged data files: {0}")]
    Damaged(String),
}

/// What went wrong with storage, for metrics and for deciding what a node does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The volume is full (ENOSPC, EDQUOT).
    NoSpace,
    /// A read, write or sync failed (EIO and the rest), or the engine stopped after one.
    Io,
    /// A file failed its checksum or does not parse.
    Damaged,
    /// Anything else the engine reported.
    Other,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::NoSpace => "no_space",
            FaultKind::Io => "io",
            FaultKind::Damaged => "damaged",
            FaultKind::Other => "other",
        }
    }
}

impl StorageError {
    pub fn kind(&self) -> FaultKind {
        match self {
            StorageError::Io(error) => match error.raw_os_error() {
                Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error() => FaultKind::NoSpace,
                Some(code) if code == rustix::io::Errno::DQUOT.raw_os_error() => FaultKind::NoSpace,
                _ if error.kind() == std::io::ErrorKind::StorageFull => FaultKind::NoSpace,
                _ => FaultKind::Io,
            },
            StorageError::Poisoned => FaultKind::Io,
            StorageError::Damaged(_) | StorageError::Corrupt { .. } => FaultKind::Damaged,
            StorageError::Engine(_) => FaultKind::Other,
        }
    }

    /// Whether reopening the engine from what is on disk can cure it: a full volume or a
    /// failed write or sync can; damaged files cannot (they are refused, not served).
    pub fn is_recoverable_by_restart(&self) -> bool {
        matches!(self.kind(), FaultKind::NoSpace | FaultKind::Io)
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// How far a batch must reach before `write` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// On stable storage (fsync). Also makes every earlier batch durable.
    Sync,
    /// Visible to readers; made durable by the next `Sync` batch or lost in a crash.
    Buffered,
}

#[derive(Debug)]
enum WriteOp {
    Put(Space, Vec<u8>, Vec<u8>),
    Delete(Space, Vec<u8>),
}

/// Writes that become visible together, all or nothing, also across a crash.
#[derive(Debug, Default)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
    size_bytes: usize,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.size_bytes += key.len() + value.len();
        self.ops.push(WriteOp::Put(space, key, value));
    }

    pub fn delete(&mut self, space: Space, key: Vec<u8>) {
        self.size_bytes += key.len();
        self.ops.push(WriteOp::Delete(space, key));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }
}

/// Keys from `start` (inclusive) to `end` (exclusive; `None` = to the end of the space).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    pub fn new(start: Vec<u8>, end: Option<Vec<u8>>) -> Self {
        Self { start, end }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        Self {
            start: prefix.to_vec(),
            end: keys::prefix_end(prefix),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }
}

pub type KvPair = (Vec<u8>, Vec<u8>);
pub type ScanIter = Box<dyn Iterator<Item = Result<KvPair>> + Send>;

/// Reads of one consistent state of the engine.
pub trait ReadView: Send + Sync {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Keys in `range` in ascending order (descending if `reverse`).
    fn scan(&self, space: Space, range: &KeyRange, reverse: bool) -> ScanIter;
}

/// The node's storage engine. Reads through the engine itself see the newest state;
/// [`Engine::snapshot`] pins one state for a consistent multi-key read.
pub trait Engine: ReadView {
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()>;
    fn snapshot(&self) -> Arc<dyn ReadView>;
    /// Bytes the engine occupies on disk.
    fn disk_space_bytes(&self) -> u64;
}

/// A shared view is a view: lets a pinned snapshot be handed to code that takes
/// `&dyn` reader traits.
impl ReadView for Arc<dyn ReadView> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.as_ref().get(space, key)
    }

    fn scan(&self, space: Space, range: &KeyRange, reverse: bool) -> ScanIter {
        self.as_ref().scan(space, range, reverse)
    }
}
