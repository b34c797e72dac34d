//! The range layer: one Raft group per key range. A [`replica::Replica`] drives raft-rs
//! for its range, applies committed commands through the [`state_machine`], and answers
//! proposals and linearizable reads. The layer does no I/O of its own besides the
//! engine: the node's store loop feeds it messages and ticks and sends what it emits.

pub mod background;
pub mod kv;
pub mod lease;
pub mod log_store;
pub mod ops;
pub mod proposals;
mod raft_logger;
pub mod reader;
pub mod reads;
pub mod replica;
pub mod snapshot;
pub mod state_machine;
pub mod watch;

/// The first range, covering the whole key space until ranges split.
pub const FIRST_RANGE_ID: u64 = 1;

/// `op` as a `RaftCommand` ready to propose: origin, incarnation, request id and term are left out
/// for the proposing replica to stamp.
pub fn encode_command(op: crate::proto::shoal::command::raft_command::Op) -> Vec<u8> {
    prost::Message::encode_to_vec(&crate::proto::shoal::command::RaftCommand {
        origin_node: 0,
        request_id: 0,
        proposed_term: 0,
        origin_incarnation: 0,
        op: Some(op),
    })
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
}
