//! The storage layer: one engine per node, holding the Raft logs and the MVCC data of
//! every local range. It knows nothing about Raft messages or client protocols.
//!
//! Everything above reaches the engine through [`Engine`], a deliberately narrow trait
//! (point get, ordered scan, atomic batch, point-in-time snapshot), so the engine can be
//! replaced without touching the layers above.

pub mod disk;
mod fjall_engine;
pub mod keys;
pub mod mvcc;

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
