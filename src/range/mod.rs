//! The range layer: one Raft group per key range. A [`replica::Replica`] drives raft-rs
//! for its range, applies committed commands through the [`state_machine`], and answers
//! proposals and linearizable reads. The layer does no I/O of its own besides the
//! engine: the node's store loop feeds it messages and ticks and sends what it emits.

pub mod background;
pub mod kv;
pub mod lease;
pub mod log_store;
pub mod membership;
pub mod ops;
pub mod oracle;
pub mod proposals;
mod raft_logger;
pub mod reader;
pub mod reads;
pub mod replica;
pub mod restore;
pub mod sequencer;
pub mod snapshot;
pub mod state_machine;
pub mod twophase;
pub mod watch;

/// The meta range: the map of every data range and the timestamp oracle. It holds no
/// keys: its span is the namespace below every front-end's.
pub const META_RANGE_ID: u64 = 1;
/// The data range a new cluster starts with, covering every key until ranges split.
pub const FIRST_DATA_RANGE_ID: u64 = 2;

/// How the data directory is laid out (`NodeIdentity.layout`): 2 is a meta range and
/// data ranges with oracle revisions. A directory of another layout is refused.
pub const DATA_LAYOUT: u32 = 2;

/// The meta range's descriptor; `replicas` are the cluster's first members.
pub fn meta_range(replicas: Vec<u64>) -> crate::proto::shoal::state::RangeDescriptor {
    crate::proto::shoal::state::RangeDescriptor {
        id: META_RANGE_ID,
        start_key: vec![0x00].into(),
        end_key: vec![0x01].into(),
        epoch: 1,
        conf_version: 1,
        replicas,
        learners: Vec::new(),
    }
}

/// A new cluster's data ranges: the first one, cut at each of `split_keys` (internal
/// keys, ascending after sorting), ids from the first data range's on.
pub fn initial_data_ranges(
    replicas: Vec<u64>,
    split_keys: &[Vec<u8>],
) -> Vec<crate::proto::shoal::state::RangeDescriptor> {
    let mut keys: Vec<Vec<u8>> = split_keys
        .iter()
        .filter(|key| key.as_slice() > &[0x01][..])
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    let first = first_data_range(replicas);
    let mut ranges = Vec::with_capacity(keys.len() + 1);
    let mut start = first.start_key.to_vec();
    for (offset, key) in keys.iter().enumerate() {
        ranges.push(crate::proto::shoal::state::RangeDescriptor {
            id: FIRST_DATA_RANGE_ID + offset as u64,
            start_key: start.clone().into(),
            end_key: key.clone().into(),
            ..first.clone()
        });
        start = key.clone();
    }
    ranges.push(crate::proto::shoal::state::RangeDescriptor {
        id: FIRST_DATA_RANGE_ID + keys.len() as u64,
        start_key: start.into(),
        ..first
    });
    ranges
}

/// The first data range's descriptor: every front-end's keys.
pub fn first_data_range(replicas: Vec<u64>) -> crate::proto::shoal::state::RangeDescriptor {
    crate::proto::shoal::state::RangeDescriptor {
        id: FIRST_DATA_RANGE_ID,
        start_key: vec![0x01].into(),
        end_key: Default::default(),
        epoch: 1,
        conf_version: 1,
        replicas,
        learners: Vec::new(),
    }
}

/// `op` as a `RaftCommand` ready to propose: origin, incarnation, request id and term are left out
/// for the proposing replica to stamp.
pub fn encode_command(op: crate::proto::shoal::command::raft_command::Op) -> Vec<u8> {
    prost::Message::encode_to_vec(&crate::proto::shoal::command::RaftCommand {
        origin_node: 0,
        request_id: 0,
        proposed_term: 0,
        origin_incarnation: 0,
        revision: 0,
        epoch: 0,
        op: Some(op),
    })
}

/// How far this node's data ranges have applied: every revision up to `revision` is
/// final in all of them, and history below `compact` may be gone in some. The watch
/// hub delivers events up to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    pub revision: i64,
    pub compact: i64,
}

/// A `Close` command ready to propose on a data range.
pub fn close_command() -> Vec<u8> {
    encode_command(crate::proto::shoal::command::raft_command::Op::Close(
        crate::proto::shoal::command::Close {},
    ))
}

/// Why a proposal or a read could not be served by this replica.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    /// Not the leader; `leader` is the one this replica knows of (0 if none).
    #[error("not leader (leader is {leader:x})")]
    NotLeader { leader: u64 },
    /// The proposal was replaced in the log by a new leader's entries: it never applied.
    #[error("leader changed")]
    LeaderChanged,
    /// No outcome within the request timeout; the command may or may not apply.
    #[error("request timed out")]
    Timeout,
    /// The node is shutting down.
    #[error("server stopped")]
    Stopped,
    #[error("range {0} is not on this node")]
    UnknownRange(u64),
    /// Leadership cannot go to this member: it does not replicate the range.
    #[error("{0:x} is not a member of the range")]
    BadTransferee(u64),
    /// A snapshot is being written over the replica's data; it cannot be read now.
    #[error("installing a snapshot")]
    Installing,
    /// The engine failed under a read outside the store loop.
    #[error("storage: {0}")]
    Storage(String),
}
