//! Incoming peer traffic: hands Raft messages and staged snapshots to the store loop,
//! and answers lease questions for the ranges this node leads.

use super::PeerIdentity;
use crate::proto::shoal::peer::{
    leader_failure, lease_answer, lease_query, peer_server::Peer, timestamp_answer, JoinAnswer, JoinRequest,
    LeaderFailure, LeaseAnswer, LeaseQuery, LeaseState, NotLeader, RaftAck, RaftBatch, SnapshotAck, SnapshotChunk,
    TimestampAnswer, TimestampGrant, TimestampRequest,
};
use crate::proto::shoal::state::RangeDescriptor;
use crate::range::replica::LeaseQueryKind;
use crate::range::{snapshot, state_machine, RangeError};
use crate::storage::Space;
use crate::store::{RangeRegistry, StoreHandle, StoreInput};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

/// Most revisions one call may ask for (a range asks for what waits, at most 8192).
const TIMESTAMPS_PER_REQUEST_MAX: u32 = 65_536;

/// Adds a member to the cluster for a joining node (`--join`); the server wires it to
/// the meta range.
#[tonic::async_trait]
pub trait MemberAdder: Send + Sync {
    async fn add(&self, peer_urls: Vec<String>, learner: bool) -> Result<(), Status>;
}

pub struct PeerService {
    identity: PeerIdentity,
    /// The token the cluster was created with: a joining node, which cannot know the
    /// cluster id yet, proves with it which cluster it means.
    cluster_token: String,
    adder: Arc<dyn MemberAdder>,
    store: StoreHandle,
    /// Where received snapshots are staged until the store loop installs them.
    snapshot_dir: PathBuf,
    registry: Arc<RangeRegistry>,
    staged_files: AtomicU64,
    /// True once the node is stopping: Raft streams end, so a graceful stop need not
    /// wait for the peers to hang up.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl PeerService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: PeerIdentity,
        cluster_token: String,
        adder: Arc<dyn MemberAdder>,
        store: StoreHandle,
        snapshot_dir: PathBuf,
        registry: Arc<RangeRegistry>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            identity,
            cluster_token,
            adder,
            store,
            snapshot_dir,
            registry,
            staged_files: AtomicU64::new(0),
            stopping,
        }
    }
}

fn failure(error: &RangeError) -> LeaderFailure {
    let kind = match error {
        RangeError::LeaderChanged => leader_failure::Kind::LeaderChanged,
        RangeError::Stopped => leader_failure::Kind::Stopped,
        RangeError::UnknownRange(_) => leader_failure::Kind::UnknownRange,
        RangeError::Timeout
        | RangeError::NotLeader { .. }
        | RangeError::BadTransferee(_)
        | RangeError::Installing
        | RangeError::Storage(_) => leader_failure::Kind::Timeout,
    };
    LeaderFailure { kind: kind as i32 }
}

fn decode_message(bytes: &[u8]) -> Result<Message, Status> {
    Message::parse_from_bytes(bytes).map_err(|error| Status::invalid_argument(format!("bad raft message: {error}")))
}

/// A refusal of bad peer input: logged here (the peer may not log what it sent) and
/// returned to the caller.
fn refuse(from: u64, status: Status) -> Status {
    tracing::warn!(from = format!("{from:x}"), code = ?status.code(), message = status.message(), "refused peer input");
    status
}

impl PeerService {
    /// Refuses a member removed from the cluster (it learns so from the answer).
    fn check_member(&self, from: u64) -> Result<(), Status> {
        if self.registry.membership().borrow().removed.contains(&from) {
            return Err(Status::failed_precondition(super::REMOVED_MEMBER));
        }
        Ok(())
    }

    /// Checks what every message from `from` must satisfy before the store sees it.
    fn check_message(&self, from: u64, message: &Message) -> Result<(), Status> {
        if message.from != from {
            return Err(Status::invalid_argument(format!(
                "raft message from {:x} on a connection of {from:x}",
                message.from
            )));
        }
        if message.to != self.identity.member_id {
            return Err(Status::invalid_argument(format!(
                "raft message for member {:x} sent to {:x}",
                message.to, self.identity.member_id
            )));
        }
        Ok(())
    }
}

/// Checks a staged snapshot whole before Raft sees it (once Raft accepts a snapshot,
/// installing it must not fail on bad data): every record well formed and in the range,
/// and the range's apply state in it at the index and term its metadata claims.
fn check_staged(path: &std::path::Path, descriptor: &RangeDescriptor, expected: (u64, u64)) -> Result<u64, String> {
    let mut reader = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| e.to_string())?);
    let apply_state_key = state_machine::apply_state_key(descriptor.id);
    let mut applied = None;
    let records = snapshot::read_records(&mut reader, descriptor, &mut |space, key, value| {
        if space == Space::RangeMeta && key == apply_state_key {
            applied = Some(state_machine::decode_apply_state(&value)?);
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    match applied {
        None => Err("it holds no apply state for the range".to_string()),
        Some(state) if (state.applied_index, state.applied_term) != expected => Err(format!(
            "its data is applied through index {} term {}, its metadata says index {} term {}",
            state.applied_index, state.applied_term, expected.0, expected.1
        )),
        Some(_) => Ok(records),
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, request: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let from = self.identity.verify(request.metadata())?;
        self.check_member(from)?;
        let mut stream = request.into_inner();
        let mut stopping = self.stopping.clone();
        loop {
            let batch = tokio::select! {
                batch = stream.message() => batch?,
                _ = stopping.wait_for(|stop| *stop) => None,
            };
            let Some(batch) = batch else {
                break;
            };
            self.check_member(from)?;
            for envelope in batch.messages {
                let message = decode_message(&envelope.message).map_err(|status| refuse(from, status))?;
                self.check_message(from, &message)
                    .map_err(|status| refuse(from, status))?;
                if self.registry.status(envelope.range_id).is_none() {
                    // A range this node does not hold yet (a split not applied here, a
                    // replica not opened yet): Raft sends again.
                    metrics::counter!("shoal_raft_messages_for_unknown_ranges_total").increment(1);
                    continue;
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
        let message = decode_message(&first.raft_message).map_err(|status| refuse(from, status))?;
        if message.get_msg_type() != MessageType::MsgSnapshot {
            return Err(refuse(
                from,
                Status::invalid_argument("snapshot stream must start with a MsgSnapshot"),
            ));
        }
        let range_id = first.range_id;
        self.check_member(from)?;
        self.check_message(from, &message)
            .map_err(|status| refuse(from, status))?;
        let descriptor = self
            .registry
            .descriptor(range_id)
            .ok_or_else(|| refuse(from, Status::not_found(format!("range {range_id} is not on this node"))))?;
        let metadata = message.get_snapshot().get_metadata().clone();
        if metadata.index == 0 || metadata.term == 0 || metadata.get_conf_state().voters.is_empty() {
            return Err(refuse(
                from,
                Status::invalid_argument(format!(
                    "snapshot metadata without an index, a term or voters (index {}, term {}, voters {:?})",
                    metadata.index,
                    metadata.term,
                    metadata.get_conf_state().voters
                )),
            ));
        }
        let nonce = self.staged_files.fetch_add(1, Ordering::Relaxed);
        let path = self.snapshot_dir.join(format!(
            "range-{range_id}-{}-{}-{nonce}.snap",
            metadata.index, metadata.term
        ));
        // Written with async file I/O and checked on a blocking thread: staging a large
        // snapshot must not hold up the node's async workers.
        let mut file = tokio::io::BufWriter::new(
            tokio::fs::File::create(&path)
                .await
                .map_err(|e| Status::internal(format!("staging snapshot: {e}")))?,
        );
        let mut bytes = first.data.len() as u64;
        let written = async {
            file.write_all(&first.data).await?;
            while let Some(chunk) = stream.message().await.map_err(std::io::Error::other)? {
                bytes += chunk.data.len() as u64;
                file.write_all(&chunk.data).await?;
            }
            file.flush().await
        }
        .await;
        drop(file);
        let checked = match written {
            Err(error) => Err(error.to_string()),
            Ok(()) => {
                let path = path.clone();
                let expected = (metadata.index, metadata.term);
                tokio::task::spawn_blocking(move || check_staged(&path, &descriptor, expected))
                    .await
                    .unwrap_or_else(|error| Err(format!("checking the snapshot: {error}")))
            }
        };
        let records = match checked {
            Ok(records) => records,
            Err(error) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(refuse(
                    from,
                    Status::data_loss(format!("snapshot stream rejected: {error}")),
                ));
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

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinAnswer>, Status> {
        let request = request.into_inner();
        if request.cluster_token != self.cluster_token {
            return Err(Status::failed_precondition(
                "etcdserver: cluster token mismatch (the joining node's --initial-cluster-token is not this cluster's)",
            ));
        }
        let known = |membership: &crate::proto::shoal::state::PublishedMembers| {
            membership
                .members
                .iter()
                .any(|member| member.peer_urls.iter().any(|url| request.peer_urls.contains(url)))
        };
        if request.add && !known(&self.registry.membership().borrow()) {
            self.adder.add(request.peer_urls.clone(), request.learner).await?;
            // The store loop publishes what its meta replica applied at its next tick.
            let mut changes = self.registry.membership();
            let published = tokio::time::timeout(std::time::Duration::from_secs(5), changes.wait_for(known)).await;
            if !matches!(published, Ok(Ok(_))) {
                return Err(Status::unavailable("etcdserver: request timed out"));
            }
        }
        let membership = self.registry.membership().borrow().clone();
        if !membership.complete {
            return Err(Status::failed_precondition(
                "etcdserver: this cluster was created before membership could change; no member can join it",
            ));
        }
        Ok(Response::new(JoinAnswer {
            cluster_id: self.identity.cluster_id,
            members: membership.members,
        }))
    }

    async fn timestamps(&self, request: Request<TimestampRequest>) -> Result<Response<TimestampAnswer>, Status> {
        let from = self.identity.verify(request.metadata())?;
        let count = request.into_inner().count;
        if count == 0 || count > TIMESTAMPS_PER_REQUEST_MAX {
            return Err(refuse(
                from,
                Status::invalid_argument(format!(
                    "asked for {count} revisions; between 1 and {TIMESTAMPS_PER_REQUEST_MAX} may be asked for"
                )),
            ));
        }
        let outcome = match self.store.oracle_request(count).await {
            Ok(first) => timestamp_answer::Outcome::Grant(TimestampGrant { first, count }),
            Err(RangeError::NotLeader { leader }) => {
                timestamp_answer::Outcome::NotLeader(NotLeader { leader_id: leader })
            }
            Err(error) => timestamp_answer::Outcome::Failure(failure(&error)),
        };
        Ok(Response::new(TimestampAnswer { outcome: Some(outcome) }))
    }
}
