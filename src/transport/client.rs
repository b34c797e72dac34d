//! Outgoing peer traffic. Each peer has one task that batches the store loop's Raft
//! messages onto a long-lived gRPC stream, reconnecting (with backoff) when it breaks;
//! snapshots go on their own streams so they never hold up heartbeats.

use super::{PeerIdentity, PEER_MESSAGE_BYTES_MAX};
use crate::proto::shoal::peer::{
    leader_failure, lease_answer, lease_query, peer_client::PeerClient, timestamp_answer, LeaderFailure, LeaseQuery,
    RaftBatch, RaftEnvelope, SnapshotChunk, TimestampRequest,
};
use crate::range::lease::LeaseTime;
use crate::range::replica::LeaseQueryKind;
use crate::range::snapshot::{self, SnapshotRegistry};
use crate::range::RangeError;
use crate::store::{RaftSender, StoreHandle, StoreInput};
use protobuf::Message as _;
use raft::eraftpb::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

/// Batches of messages waiting for a peer's stream; beyond this the store's messages
/// to that peer are dropped (Raft retransmits) rather than buffered without bound.
const QUEUE_BATCHES_MAX: usize = 1024;
/// Bytes of encoded messages sent as one gRPC message.
const BATCH_BYTES_MAX: usize = 4 << 20;
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

struct PeerLink {
    queue: mpsc::Sender<Vec<(u64, Message)>>,
    channel: Channel,
}

/// Sends Raft messages, snapshots and lease questions to the other members.
pub struct PeerTransport {
    identity: PeerIdentity,
    /// One link per member; members added or removed at run time come and go
    /// ([`PeerTransport::sync_members`]).
    links: std::sync::RwLock<HashMap<u64, PeerLink>>,
    tls: Option<crate::tls::TlsConnector>,
    store: StoreHandle,
    snapshots: Arc<SnapshotRegistry>,
    runtime: tokio::runtime::Handle,
    /// Turns true when a peer refused this member as removed from the cluster.
    removed: tokio::sync::watch::Sender<bool>,
    /// Paces every snapshot this member sends (`--snapshot-send-rate`).
    pacer: Arc<Pacer>,
}

/// Spaces out snapshot chunks so that, all transfers together, they leave at no more
/// than `rate` bytes per second (0: no limit).
pub struct Pacer {
    rate: u64,
    next: std::sync::Mutex<std::time::Instant>,
}

impl Pacer {
    pub fn new(rate: u64, now: std::time::Instant) -> Self {
        Self {
            rate,
            next: std::sync::Mutex::new(now),
        }
    }

    /// How long to wait, from `now`, before sending `bytes`.
    pub fn delay(&self, bytes: usize, now: std::time::Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let mut next = self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = (*next).max(now);
        *next = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        start - now
    }
}

/// Why a question forwarded to the leader has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Range(#[from] RangeError),
    /// The call failed in transport: the leader may or may not have acted on it.
    #[error("connection to the leader lost: {0}")]
    ConnectionLost(String),
}

fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

impl PeerTransport {
    /// Starts a link to every peer (`member id -> peer URL`, this node excluded). `https://`
    /// URLs are dialed with `tls` (the peer CA and this member's peer certificate). Must
    /// be called inside the runtime.
    pub fn start(
        identity: PeerIdentity,
        peers: &HashMap<u64, String>,
        tls: Option<crate::tls::TlsConnector>,
        store: StoreHandle,
        snapshots: Arc<SnapshotRegistry>,
        snapshot_send_rate: u64,
    ) -> Result<Arc<Self>, tonic::transport::Error> {
        let transport = Arc::new(Self {
            identity,
            links: std::sync::RwLock::new(HashMap::new()),
            tls,
            store,
            snapshots,
            runtime: tokio::runtime::Handle::current(),
            removed: tokio::sync::watch::channel(false).0,
            pacer: Arc::new(Pacer::new(snapshot_send_rate, std::time::Instant::now())),
        });
        transport.sync_members(peers, false)?;
        Ok(transport)
    }

    /// Links to every member of `peers` (`member id -> peer URL`) not linked yet; with
    /// `prune`, drops the links of members no longer in it (removed from the cluster).
    pub fn sync_members(&self, peers: &HashMap<u64, String>, prune: bool) -> Result<(), tonic::transport::Error> {
        let mut links = self.links.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if prune {
            links.retain(|id, _| peers.contains_key(id));
        }
        for (&peer_id, url) in peers {
            if peer_id == self.identity.member_id || links.contains_key(&peer_id) {
                continue;
            }
            let channel = match (&self.tls, crate::tls::is_https(url)) {
                (Some(tls), true) => tls.channel(&endpoint(url)?),
                (None, true) => {
                    // Configuration checking refuses this; should it get here, the
                    // peer's TLS listener refuses the plain connection.
                    tracing::error!(
                        peer = format!("{peer_id:x}"),
                        url,
                        "https peer URL without peer TLS settings"
                    );
                    endpoint(url)?.connect_lazy()
                }
                (_, false) => endpoint(url)?.connect_lazy(),
            };
            let (queue, batches) = mpsc::channel(QUEUE_BATCHES_MAX);
            self.runtime.spawn(run_link(
                peer_id,
                self.identity,
                channel.clone(),
                batches,
                self.store.clone(),
                self.removed.clone(),
            ));
            tracing::info!(peer = format!("{peer_id:x}"), url, "linked to a member");
            links.insert(peer_id, PeerLink { queue, channel });
        }
        Ok(())
    }

    /// Turns true once a peer said this member was removed from the cluster.
    pub fn removed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.removed.subscribe()
    }

    fn channel_to(&self, peer_id: u64) -> Option<Channel> {
        let links = self.links.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        links.get(&peer_id).map(|link| link.channel.clone())
    }

    fn queue_to(&self, peer_id: u64) -> Option<mpsc::Sender<Vec<(u64, Message)>>> {
        let links = self.links.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        links.get(&peer_id).map(|link| link.queue.clone())
    }
}

impl PeerTransport {
    /// Asks the meta range's leader `leader` for `count` revisions; the first of them.
    pub async fn timestamps(&self, leader: u64, count: u32) -> Result<i64, ForwardError> {
        let channel = self.channel_to(leader).ok_or(RangeError::NotLeader { leader: 0 })?;
        let mut client = PeerClient::new(channel);
        let mut request = tonic::Request::new(TimestampRequest { count });
        self.identity.stamp(request.metadata_mut());
        let answer = client
            .timestamps(request)
            .await
            .map_err(|status| ForwardError::ConnectionLost(status.message().to_string()))?
            .into_inner();
        match answer.outcome {
            Some(timestamp_answer::Outcome::Grant(grant)) if grant.count == count => Ok(grant.first),
            Some(timestamp_answer::Outcome::NotLeader(not_leader)) => Err(RangeError::NotLeader {
                leader: not_leader.leader_id,
            }
            .into()),
            Some(timestamp_answer::Outcome::Failure(failure)) => {
                Err(failure_to_error(&failure, crate::range::META_RANGE_ID).into())
            }
            _ => Err(ForwardError::ConnectionLost("malformed timestamp answer".into())),
        }
    }

    /// Asks the range's leader `leader` about a lease.
    pub async fn lease_query(
        &self,
        leader: u64,
        range_id: u64,
        lease_id: i64,
        kind: LeaseQueryKind,
    ) -> Result<Option<LeaseTime>, ForwardError> {
        let channel = self.channel_to(leader).ok_or(RangeError::NotLeader { leader: 0 })?;
        let mut client = PeerClient::new(channel);
        let mut request = tonic::Request::new(LeaseQuery {
            range_id,
            lease_id,
            kind: match kind {
                LeaseQueryKind::Renew => lease_query::Kind::Renew,
                LeaseQueryKind::TimeToLive => lease_query::Kind::TimeToLive,
            } as i32,
        });
        self.identity.stamp(request.metadata_mut());
        let answer = client
            .lease(request)
            .await
            .map_err(|status| ForwardError::ConnectionLost(status.message().to_string()))?
            .into_inner();
        match answer.outcome {
            Some(lease_answer::Outcome::State(state)) => Ok(state.found.then_some(LeaseTime {
                granted_ttl: state.granted_ttl,
                remaining_ttl: state.remaining_ttl,
            })),
            Some(lease_answer::Outcome::NotLeader(not_leader)) => Err(RangeError::NotLeader {
                leader: not_leader.leader_id,
            }
            .into()),
            Some(lease_answer::Outcome::Failure(failure)) => Err(failure_to_error(&failure, range_id).into()),
            None => Err(ForwardError::ConnectionLost("empty lease answer".into())),
        }
    }
}

fn failure_to_error(failure: &LeaderFailure, range_id: u64) -> RangeError {
    match failure.kind() {
        leader_failure::Kind::LeaderChanged => RangeError::LeaderChanged,
        leader_failure::Kind::Stopped => RangeError::Stopped,
        leader_failure::Kind::UnknownRange => RangeError::UnknownRange(range_id),
        leader_failure::Kind::Timeout | leader_failure::Kind::Unspecified => RangeError::Timeout,
    }
}

impl RaftSender for PeerTransport {
    fn send(&self, to: u64, messages: Vec<(u64, Message)>) {
        let Some(queue) = self.queue_to(to) else {
            tracing::debug!(to = format!("{to:x}"), "raft message for an unknown member dropped");
            return;
        };
        // A full queue means the link is stalled; it reports that to Raft itself.
        let _ = queue.try_send(messages);
    }

    fn send_snapshot(&self, to: u64, range_id: u64, message: Message) {
        let Some(channel) = self.channel_to(to) else {
            return;
        };
        let identity = self.identity;
        let registry = self.snapshots.clone();
        let store = self.store.clone();
        let pacer = self.pacer.clone();
        self.runtime.spawn(async move {
            let outcome = stream_snapshot(identity, channel, range_id, message, &registry, pacer).await;
            if let Err(error) = &outcome {
                tracing::warn!(to = format!("{to:x}"), range = range_id, %error, "sending snapshot failed");
            }
            let _ = store
                .send(StoreInput::SnapshotSent {
                    range_id,
                    to,
                    finished: outcome.is_ok(),
                })
                .await;
        });
    }

    fn request_timestamps(&self, to: u64, range_id: u64, count: u32) {
        let store = self.store.clone();
        let Some(channel) = self.channel_to(to) else {
            store.try_send(StoreInput::Timestamps {
                range_id,
                outcome: Err(RangeError::NotLeader { leader: 0 }),
            });
            return;
        };
        let mut client = PeerClient::new(channel);
        let mut request = tonic::Request::new(TimestampRequest { count });
        self.identity.stamp(request.metadata_mut());
        self.runtime.spawn(async move {
            let outcome = match client.timestamps(request).await {
                Ok(answer) => match answer.into_inner().outcome {
                    Some(timestamp_answer::Outcome::Grant(grant)) if grant.count == count => Ok((grant.first, count)),
                    Some(timestamp_answer::Outcome::NotLeader(not_leader)) => Err(RangeError::NotLeader {
                        leader: not_leader.leader_id,
                    }),
                    Some(timestamp_answer::Outcome::Failure(failure)) => Err(failure_to_error(&failure, range_id)),
                    _ => Err(RangeError::Timeout),
                },
                Err(status) => {
                    tracing::debug!(to = format!("{to:x}"), %status, "asking the oracle failed");
                    Err(RangeError::Timeout)
                }
            };
            // The answer must reach the store; a full inbox only delays it.
            let _ = store.send(StoreInput::Timestamps { range_id, outcome }).await;
        });
    }
}

/// Asks the members at `urls` (their peer URLs), one after the other, for the cluster's
/// id and members (the Join call); the first answer, or the last refusal.
pub async fn ask_to_join(
    urls: &[String],
    tls: Option<&crate::tls::TlsConnector>,
    request: crate::proto::shoal::peer::JoinRequest,
) -> Result<crate::proto::shoal::peer::JoinAnswer, tonic::Status> {
    let mut last = tonic::Status::unavailable("no member to join through");
    for url in urls {
        let endpoint = endpoint(url).map_err(|error| tonic::Status::invalid_argument(error.to_string()))?;
        let channel = match (tls, crate::tls::is_https(url)) {
            (Some(tls), true) => tls.channel(&endpoint),
            _ => endpoint.connect_lazy(),
        };
        let mut client = PeerClient::new(channel);
        match tokio::time::timeout(Duration::from_secs(10), client.join(request.clone())).await {
            Ok(Ok(answer)) => return Ok(answer.into_inner()),
            Ok(Err(status)) => last = status,
            Err(_) => last = tonic::Status::deadline_exceeded(format!("{url} did not answer in time")),
        }
    }
    Err(last)
}

async fn stream_snapshot(
    identity: PeerIdentity,
    channel: Channel,
    range_id: u64,
    message: Message,
    registry: &SnapshotRegistry,
    pacer: Arc<Pacer>,
) -> Result<(), String> {
    let id = snapshot::registration_id(&message.get_snapshot().data).ok_or("snapshot without registration")?;
    let pending = registry.take(id).ok_or("snapshot registration expired")?;
    let header = SnapshotChunk {
        range_id,
        raft_message: message.write_to_bytes().map_err(|e| e.to_string())?.into(),
        data: Default::default(),
    };
    let (chunks, chunk_stream) = mpsc::channel::<Vec<u8>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        snapshot::stream_range(pending.view.as_ref(), &pending.descriptor, &mut |chunk| {
            let delay = pacer.delay(chunk.len(), std::time::Instant::now());
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            metrics::counter!("shoal_snapshot_bytes_sent_total").increment(chunk.len() as u64);
            chunks.blocking_send(chunk).is_ok()
        })
    });
    let body = tokio_stream::once(header).chain(ReceiverStream::new(chunk_stream).map(move |data| SnapshotChunk {
        range_id,
        raft_message: Default::default(),
        data: data.into(),
    }));
    let mut request = tonic::Request::new(body);
    identity.stamp(request.metadata_mut());
    let mut client = PeerClient::new(channel).max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
    let sent = client
        .install_snapshot(request)
        .await
        .map_err(|status| status.to_string());
    let produced = producer.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string());
    sent?;
    produced
}

/// Feeds one peer's stream. Messages that cannot be sent are dropped and the peer is
/// reported unreachable, which makes Raft probe it instead of streaming blindly.
async fn run_link(
    peer_id: u64,
    identity: PeerIdentity,
    channel: Channel,
    mut batches: mpsc::Receiver<Vec<(u64, Message)>>,
    store: StoreHandle,
    removed: tokio::sync::watch::Sender<bool>,
) {
    let mut stream: Option<mpsc::Sender<RaftBatch>> = None;
    let mut broken_since: Option<tokio::time::Instant> = None;
    let mut last_report: Option<tokio::time::Instant> = None;
    while let Some(first) = batches.recv().await {
        let mut batch = RaftBatch::default();
        let mut bytes = encode_into(first, &mut batch);
        while bytes < BATCH_BYTES_MAX {
            match batches.try_recv() {
                Ok(more) => bytes += encode_into(more, &mut batch),
                Err(_) => break,
            }
        }

        if stream.as_ref().is_none_or(|sender| sender.is_closed()) {
            stream = None;
            if broken_since.is_some_and(|since| since.elapsed() < RECONNECT_BACKOFF) {
                continue; // dropped; Raft will resend
            }
            let (sender, receiver) = mpsc::channel::<RaftBatch>(64);
            let mut request = tonic::Request::new(ReceiverStream::new(receiver));
            identity.stamp(request.metadata_mut());
            let mut client = PeerClient::new(channel.clone()).max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
            let store = store.clone();
            let removed = removed.clone();
            tokio::spawn(async move {
                if let Err(status) = client.raft(request).await {
                    if status.code() == tonic::Code::FailedPrecondition && status.message() == super::REMOVED_MEMBER {
                        removed.send_replace(true);
                    }
                    tracing::debug!(peer = format!("{peer_id:x}"), %status, "raft stream ended");
                    store.try_send(StoreInput::Unreachable { node_id: peer_id });
                }
            });
            stream = Some(sender);
        }
        // Never wait on a stalled peer (paused, or its socket full): drop and tell Raft.
        let delivered = match &stream {
            Some(sender) => match sender.try_send(batch) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => false,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    stream = None;
                    broken_since = Some(tokio::time::Instant::now());
                    false
                }
            },
            None => false,
        };
        if delivered {
            broken_since = None;
        } else if last_report.is_none_or(|at: tokio::time::Instant| at.elapsed() >= RECONNECT_BACKOFF) {
            last_report = Some(tokio::time::Instant::now());
            store.try_send(StoreInput::Unreachable { node_id: peer_id });
        }
    }
}

/// Appends `messages` to `batch`; returns the bytes added.
fn encode_into(messages: Vec<(u64, Message)>, batch: &mut RaftBatch) -> usize {
    let mut bytes = 0;
    for (range_id, message) in messages {
        match message.write_to_bytes() {
            Ok(encoded) => {
                bytes += encoded.len();
                batch.messages.push(RaftEnvelope {
                    range_id,
                    message: encoded.into(),
                });
            }
            Err(error) => tracing::error!(%error, "could not encode a raft message"),
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_spreads_chunks_over_time_at_its_rate() {
        let start = std::time::Instant::now();
        let pacer = Pacer::new(1000, start);
        assert_eq!(pacer.delay(500, start), Duration::ZERO);
        assert_eq!(pacer.delay(500, start), Duration::from_millis(500));
        // Another transfer shares the same budget.
        assert_eq!(pacer.delay(1000, start), Duration::from_secs(1));
        // Idle time is not saved up beyond now.
        let later = start + Duration::from_secs(10);
        assert_eq!(pacer.delay(1000, later), Duration::ZERO);
        assert_eq!(Pacer::new(0, start).delay(1 << 30, start), Duration::ZERO);
    }
}
