//! Incoming peer traffic: hands Raft messages and staged snapshots to the store loop,
//! and answers lease questions for the ranges this node leads.

use super::PeerIdentity;
use crate::node::store::{StoreHandle, StoreInput};
use crate::proto::shoal::peer::{
    leader_failure, lease_answer, lease_query, peer_server::Peer, LeaderFailure, LeaseAnswer, LeaseQuery, LeaseState,
    NotLeader, RaftAck, RaftBatch, SnapshotAck, SnapshotChunk,
};
use crate::proto::shoal::state::RangeDescriptor;
use crate::range::replica::LeaseQueryKind;
use crate::range::{snapshot, RangeError};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use tonic::{Request, Response, Status, Streaming};

pub struct PeerService {
    identity: PeerIdentity,
    store: StoreHandle,
    /// Where received snapshots are staged until the store loop installs them.
    snapshot_dir: PathBuf,
    descriptors: HashMap<u64, RangeDescriptor>,
    staged_files: AtomicU64,
}

impl PeerService {
    pub fn new(
        identity: PeerIdentity,
        store: StoreHandle,
        snapshot_dir: PathBuf,
        descriptors: HashMap<u64, RangeDescriptor>,
    ) -> Self {
        Self {
            identity,
            store,
            snapshot_dir,
            descriptors,
            staged_files: AtomicU64::new(0),
        }
    }
}

fn failure(error: &RangeError) -> LeaderFailure {
    let kind = match error {
        RangeError::LeaderChanged => leader_failure::Kind::LeaderChanged,
        RangeError::Stopped => leader_failure::Kind::Stopped,
        RangeError::UnknownRange(_) => leader_failure::Kind::UnknownRange,
        RangeError::Timeout | RangeError::NotLeader { .. } | RangeError::BadTransferee(_) => {
            leader_failure::Kind::Timeout
        }
    };
    LeaderFailure { kind: kind as i32 }
}

fn decode_message(bytes: &[u8]) -> Result<Message, Status> {
    Message::parse_from_bytes(bytes).map_err(|error| Status::invalid_argument(format!("bad raft message: {error}")))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, request: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let from = self.identity.verify(request.metadata())?;
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            for envelope in batch.messages {
                let message = decode_message(&envelope.message)?;
                if message.from != from {
                    return Err(Status::invalid_argument(
                        "raft message from another member than the caller",
                    ));
                }
                if message.get_msg_type() == MessageType::MsgSnapshot {
                    // Snapshot data comes only through InstallSnapshot.
                    continue;
                }
                self.store
                    .send(StoreInput::Raft {
                        range_id: envelope.range_id,
                        message,
                    })
                    .await
                    .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
            }
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let from = self.identity.verify(request.metadata())?;
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let message = decode_message(&first.raft_message)?;
        if message.get_msg_type() != MessageType::MsgSnapshot || message.from != from {
            return Err(Status::invalid_argument(
                "snapshot stream must start with the caller's MsgSnapshot",
            ));
        }
        let range_id = first.range_id;
        let descriptor = self
            .descriptors
            .get(&range_id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("range {range_id} is not on this node")))?;
        let metadata = message.get_snapshot().get_metadata();
        let nonce = self.staged_files.fetch_add(1, Ordering::Relaxed);
        let path = self.snapshot_dir.join(format!(
            "range-{range_id}-{}-{}-{nonce}.snap",
            metadata.index, metadata.term
        ));
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&path).map_err(|e| Status::internal(format!("staging snapshot: {e}")))?,
        );
        let mut bytes = first.data.len() as u64;
        let written = async {
            file.write_all(&first.data)?;
            while let Some(chunk) = stream.message().await.map_err(std::io::Error::other)? {
                bytes += chunk.data.len() as u64;
                file.write_all(&chunk.data)?;
            }
            file.flush()
        }
        .await;
        drop(file);
        let checked = written.map_err(|e| e.to_string()).and_then(|()| {
            // Checked whole before Raft sees it: once Raft accepts a snapshot, installing
            // it must not fail on bad data.
            let mut reader = std::io::BufReader::new(std::fs::File::open(&path).map_err(|e| e.to_string())?);
            snapshot::read_records(&mut reader, &descriptor, &mut |_, _, _| Ok(())).map_err(|e| e.to_string())
        });
        let records = match checked {
            Ok(records) => records,
            Err(error) => {
                let _ = std::fs::remove_file(&path);
                return Err(Status::data_loss(format!("snapshot stream rejected: {error}")));
            }
        };
        tracing::info!(
            range = range_id,
            index = metadata.index,
            bytes,
            records,
            "received snapshot"
        );
        self.store
            .send(StoreInput::InstallSnapshot {
                range_id,
                message,
                staged: path,
            })
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        Ok(Response::new(SnapshotAck {}))
    }

    async fn lease(&self, request: Request<LeaseQuery>) -> Result<Response<LeaseAnswer>, Status> {
        self.identity.verify(request.metadata())?;
        let query = request.into_inner();
        let kind = match query.kind() {
            lease_query::Kind::Renew => LeaseQueryKind::Renew,
            lease_query::Kind::TimeToLive => LeaseQueryKind::TimeToLive,
        };
        let outcome = match self.store.lease_query(query.range_id, query.lease_id, kind).await {
            Ok(time) => lease_answer::Outcome::State(LeaseState {
                found: time.is_some(),
                granted_ttl: time.map_or(0, |time| time.granted_ttl),
                remaining_ttl: time.map_or(0, |time| time.remaining_ttl),
            }),
            Err(RangeError::NotLeader { leader }) => lease_answer::Outcome::NotLeader(NotLeader { leader_id: leader }),
            Err(error) => lease_answer::Outcome::Failure(failure(&error)),
        };
        Ok(Response::new(LeaseAnswer { outcome: Some(outcome) }))
    }
}
