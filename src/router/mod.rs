//! key -> range -> leader. Writes are proposed to the local replica, which hands them to
//! the range's leader inside the Raft stream when it does not lead, and retried while
//! the cluster has no leader or the proposal is known never to apply (so a retry cannot
//! apply a command twice). Lease queries go to the leader over the peer port.
//! Linearizable reads get a read index from the local replica.

use crate::proto::shoal::command::{command_result, CommandResult, ErrorKind};
use crate::proto::shoal::state::RangeDescriptor;
use crate::range::lease::LeaseTime;
use crate::range::reader::{PinnedRange, RangeReader};
use crate::range::replica::{LeaseQueryKind, RangeStatus};
use crate::range::{RangeError, FIRST_DATA_RANGE_ID, META_RANGE_ID};
use crate::store::{RangeView, StoreHandle};
use crate::transport::{ForwardError, PeerTransport};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long to wait for news of a leader before looking again.
const LEADER_POLL: Duration = Duration::from_millis(50);
/// How often a read waiting for a snapshot install looks again.
const INSTALL_POLL: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error("no leader")]
    NoLeader,
    /// A question forwarded to the leader lost its connection.
    #[error("connection to the leader lost: {0}")]
    ConnectionLost(String),
}

/// Which range holds which keys: range start key -> (range id, end key).
#[derive(Debug, Default)]
pub struct RangeMap {
    by_start: BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)>,
}

impl RangeMap {
    pub fn new(descriptors: &[RangeDescriptor]) -> Self {
        let by_start = descriptors
            .iter()
            .map(|descriptor| {
                let end = (!descriptor.end_key.is_empty()).then(|| descriptor.end_key.to_vec());
                (descriptor.start_key.to_vec(), (descriptor.id, end))
            })
            .collect();
        Self { by_start }
    }

    /// The range whose span holds `internal_key`.
    pub fn range_of(&self, internal_key: &[u8]) -> Option<u64> {
        let (_, (range_id, end)) = self.by_start.range(..=internal_key.to_vec()).next_back()?;
        end.as_deref().is_none_or(|end| internal_key < end).then_some(*range_id)
    }
}

pub struct Router {
    node_id: u64,
    store: StoreHandle,
    map: RangeMap,
    ranges: BTreeMap<u64, RangeView>,
    peers: Arc<PeerTransport>,
    reader: RangeReader,
    request_timeout: Duration,
}

impl Router {
    pub fn new(
        node_id: u64,
        store: StoreHandle,
        map: RangeMap,
        ranges: BTreeMap<u64, RangeView>,
        peers: Arc<PeerTransport>,
        reader: RangeReader,
        request_timeout: Duration,
    ) -> Self {
        assert!(ranges.contains_key(&META_RANGE_ID), "the meta range must be local");
        Self {
            node_id,
            store,
            map,
            ranges,
            peers,
            reader,
            request_timeout,
        }
    }

    /// The range holding the internal key `key`. Every range of the map is local until
    /// ranges move between nodes; a key outside every range is a bug in the map.
    pub fn range_of(&self, key: &[u8]) -> u64 {
        let range_id = self.map.range_of(key);
        debug_assert!(range_id.is_some(), "no range holds {key:?}");
        range_id.unwrap_or(FIRST_DATA_RANGE_ID)
    }

    /// Ids of the ranges this node holds a replica of.
    pub fn local_ranges(&self) -> Vec<u64> {
        self.ranges.keys().copied().collect()
    }

    pub fn status(&self, range_id: u64) -> &Arc<RangeStatus> {
        &self.view(range_id).status
    }

    /// Applied revisions of the local replica, as they change.
    pub fn revision_changes(&self, range_id: u64) -> tokio::sync::watch::Receiver<i64> {
        self.view(range_id).revision_changes.clone()
    }

    /// Waits until this node's replica of the range has physically removed history
    /// through `revision` (etcd's `physical` compaction waits for the local backend).
    /// `Stopped` if the node stops first.
    pub async fn wait_compacted(&self, range_id: u64, revision: i64) -> Result<(), RangeError> {
        let mut compacted = self.view(range_id).compacted.clone();
        compacted
            .wait_for(|through| *through >= revision)
            .await
            .map(|_| ())
            .map_err(|_| RangeError::Stopped)
    }

    /// This node's copy of the range, pinned at its newest applied state. A snapshot
    /// being installed over it is waited for (installs take milliseconds to seconds);
    /// past the request timeout the read is refused. Whether the copy is current enough
    /// is the caller's business: [`Router::linearize`] first for a linearizable read.
    pub async fn pinned(&self, range_id: u64) -> Result<PinnedRange, RouteError> {
        let status = self.status(range_id);
        let deadline = Instant::now() + self.request_timeout;
        loop {
            if let Some(pinned) = self.reader.pin(range_id, status) {
                return Ok(pinned);
            }
            if Instant::now() >= deadline {
                return Err(RouteError::Range(RangeError::Installing));
            }
            // Installs are rare and the flag lives in the store loop's status: polled.
            tokio::time::sleep(INSTALL_POLL).await;
        }
    }

    /// The newest revision the local replica of the range applied.
    pub fn revision(&self, range_id: u64) -> i64 {
        self.status(range_id)
            .revision
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn disk_space_bytes(&self) -> u64 {
        self.reader.disk_space_bytes()
    }

    fn view(&self, range_id: u64) -> &RangeView {
        // Every range id handed out by `range_of` is local.
        &self.ranges[&range_id]
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Runs a write (an encoded `RaftCommand`) on the range's leader and returns what
    /// applying it produced.
    pub async fn write(&self, range_id: u64, command: Vec<u8>) -> Result<CommandResult, RouteError> {
        self.retry_until_leader(range_id, |_leader| async {
            let applied = self
                .store
                .propose(range_id, command.clone())
                .await
                .map_err(ForwardError::Range)?;
            match &applied.result {
                // Refused for applying out of revision order: it did nothing, so it
                // goes again with a new revision.
                Some(command_result::Result::Error(refusal)) if refusal.kind() == ErrorKind::StaleRevision => {
                    Err(ForwardError::Range(RangeError::LeaderChanged))
                }
                _ => Ok(applied),
            }
        })
        .await
    }

    /// Asks the range's leader about a lease (keep-alive or time to live).
    pub async fn lease_query(
        &self,
        range_id: u64,
        lease_id: i64,
        kind: LeaseQueryKind,
    ) -> Result<Option<LeaseTime>, RouteError> {
        self.retry_until_leader(range_id, |leader| async move {
            if leader == self.node_id {
                self.store
                    .lease_query(range_id, lease_id, kind)
                    .await
                    .map_err(ForwardError::Range)
            } else {
                self.peers.lease_query(leader, range_id, lease_id, kind).await
            }
        })
        .await
    }

    /// Runs `attempt(leader)` once the range has a leader, waiting for one while there
    /// is none. Retries only when the attempt is known to have done nothing: the callee
    /// was not the leader, or the proposal can never apply.
    async fn retry_until_leader<T, Attempt>(
        &self,
        range_id: u64,
        attempt: impl Fn(u64) -> Attempt,
    ) -> Result<T, RouteError>
    where
        Attempt: Future<Output = Result<T, ForwardError>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        let view = self.view(range_id);
        let mut leader_changes = view.leader_changes.clone();
        loop {
            let leader = view.status.leader();
            let outcome = if leader != 0 {
                attempt(leader).await
            } else {
                Err(ForwardError::Range(RangeError::NotLeader { leader: 0 }))
            };
            match outcome {
                Ok(value) => return Ok(value),
                Err(ForwardError::Range(error @ (RangeError::NotLeader { .. } | RangeError::LeaderChanged))) => {
                    if Instant::now() >= deadline {
                        return Err(match error {
                            RangeError::LeaderChanged => error.into(),
                            _ => RouteError::NoLeader,
                        });
                    }
                    let wait = LEADER_POLL.min(deadline - Instant::now());
                    let _ = tokio::time::timeout(wait, leader_changes.changed()).await;
                }
                Err(ForwardError::Range(error)) => return Err(error.into()),
                Err(ForwardError::ConnectionLost(detail)) => return Err(RouteError::ConnectionLost(detail)),
            }
        }
    }

    /// The range's leader as this node knows it (0: none), as it changes.
    pub fn leader_changes(&self, range_id: u64) -> tokio::sync::watch::Receiver<u64> {
        self.view(range_id).leader_changes.clone()
    }

    /// Has this node, the range's leader, hand leadership to `target`; the change shows
    /// in [`Router::leader_changes`] once it happened.
    pub async fn transfer_leader(&self, range_id: u64, target: u64) -> Result<(), RouteError> {
        Ok(self.store.transfer_leader(range_id, target).await?)
    }

    /// Waits until this node's replica reflects every write acknowledged before the call.
    pub async fn linearize(&self, range_id: u64) -> Result<(), RouteError> {
        Ok(self.store.read_index(range_id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_the_range_whose_span_holds_them() {
        let descriptor = |id, start: &[u8], end: &[u8]| RangeDescriptor {
            id,
            start_key: start.to_vec().into(),
            end_key: end.to_vec().into(),
            epoch: 1,
            ..Default::default()
        };
        let map = RangeMap::new(&[descriptor(1, b"", b"m"), descriptor(2, b"m", b"")]);
        assert_eq!(map.range_of(b"a"), Some(1));
        assert_eq!(map.range_of(b""), Some(1));
        assert_eq!(map.range_of(b"m"), Some(2));
        assert_eq!(map.range_of(b"\xff\xff"), Some(2));
        let gap = RangeMap::new(&[descriptor(1, b"b", b"c")]);
        assert_eq!(gap.range_of(b"a"), None);
        assert_eq!(gap.range_of(b"c"), None);
    }
}
