//! Node-to-node traffic on the peer port: Raft messages (client writes that reach a
//! follower ride in them as raft-rs proposals), snapshots and lease questions for the
//! leader, over gRPC (HTTP/2). Every call carries the sender's cluster id and member id;
//! a node refuses calls from another cluster.

mod client;
mod server;

pub use client::{ask_to_join, ForwardError, PeerTransport};
pub use server::{MemberAdder, PeerService};

use tonic::metadata::MetadataMap;

const CLUSTER_ID_HEADER: &str = "shoal-cluster-id";
const MEMBER_ID_HEADER: &str = "shoal-member-id";

/// What a member answers a removed member's calls with (etcd's words).
pub const REMOVED_MEMBER: &str = "the member has been permanently removed from the cluster";

/// Cap on one peer message: a Raft batch holds at most a few max-size entries.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 << 20;

/// Identity stamped on every outgoing peer call.
#[derive(Clone, Copy, Debug)]
pub struct PeerIdentity {
    pub cluster_id: u64,
    pub member_id: u64,
}

impl PeerIdentity {
    fn stamp(&self, metadata: &mut MetadataMap) {
        if let Ok(value) = format!("{:x}", self.cluster_id).parse() {
            metadata.insert(CLUSTER_ID_HEADER, value);
        }
        if let Ok(value) = format!("{:x}", self.member_id).parse() {
            metadata.insert(MEMBER_ID_HEADER, value);
        }
    }

    /// Checks that a call comes from a member of this cluster; returns the sender.
    fn verify(&self, metadata: &MetadataMap) -> Result<u64, tonic::Status> {
        let read = |name: &str| {
            metadata
                .get(name)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| u64::from_str_radix(value, 16).ok())
        };
        match (read(CLUSTER_ID_HEADER), read(MEMBER_ID_HEADER)) {
            (Some(cluster), Some(member)) if cluster == self.cluster_id => Ok(member),
            (Some(cluster), _) => Err(tonic::Status::failed_precondition(format!(
                "etcdserver: cluster ID mismatch (this cluster is {:x}, the caller's is {cluster:x})",
                self.cluster_id
            ))),
            _ => Err(tonic::Status::unauthenticated(
                "peer call without cluster and member id",
            )),
        }
    }
}
