//! key -> range -> leader. Writes go to the range's leader: proposed here when this
//! node leads, forwarded over the peer port otherwise, and retried while the cluster has
//! no leader (nothing was proposed yet, so a retry cannot apply a command twice).
//! Linearizable reads get a read index from the local replica.

use super::store::{RangeView, StoreHandle};
use crate::proto::shoal::command::CommandResult;
use crate::range::reader::RangeReader;
use crate::range::replica::RangeStatus;
use crate::range::{RangeError, FIRST_RANGE_ID};
use crate::transport::{ForwardError, PeerTransport};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long to wait for news of a leader before looking again.
const LEADER_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error("no leader")]
    NoLeader,
    /// A forwarded write lost its connection: it may or may not have applied.
    #[error("connection to the leader lost: {0}")]
    ConnectionLost(String),
}

pub struct Router {
    node_id: u64,
    store: StoreHandle,
    ranges: BTreeMap<u64, RangeView>,
    peers: Arc<PeerTransport>,
    reader: RangeReader,
    request_timeout: Duration,
}

impl Router {
    pub fn new(
        node_id: u64,
        store: StoreHandle,
        ranges: BTreeMap<u64, RangeView>,
        peers: Arc<PeerTransport>,
        reader: RangeReader,
        request_timeout: Duration,
    ) -> Self {
        assert!(
            ranges.contains_key(&FIRST_RANGE_ID),
            "the first range must be local"
        );
        Self {
            node_id,
            store,
            ranges,
            peers,
            reader,
            request_timeout,
        }
    }

    /// The range holding `key`. One range covers everything until ranges split; the
    /// callers already route by key so splitting does not change them.
    pub fn range_of(&self, _key: &[u8]) -> u64 {
        FIRST_RANGE_ID
    }

    pub fn status(&self, range_id: u64) -> &RangeStatus {
        &self.view(range_id).status
    }

    fn view(&self, range_id: u64) -> &RangeView {
        // Every range id handed out by `range_of` is local.
        &self.ranges[&range_id]
    }

    pub fn reader(&self) -> &RangeReader {
        &self.reader
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Runs a write (an encoded `RaftCommand`) on the range's leader and returns what
    /// applying it produced.
    pub async fn write(
        &self,
        range_id: u64,
        command: Vec<u8>,
    ) -> Result<CommandResult, RouteError> {
        let deadline = Instant::now() + self.request_timeout;
        let view = self.view(range_id);
        let mut leader_changes = view.leader_changes.clone();
        loop {
            let leader = view.status.leader();
            let outcome = if leader == self.node_id {
                self.store
                    .propose(range_id, command.clone())
                    .await
                    .map_err(ForwardError::Range)
            } else if leader != 0 {
                self.peers.forward(leader, range_id, command.clone()).await
            } else {
                Err(ForwardError::Range(RangeError::NotLeader { leader: 0 }))
            };
            match outcome {
                Ok(result) => return Ok(result),
                Err(ForwardError::Range(RangeError::NotLeader { .. })) => {
                    // Nothing was proposed: wait for a (new) leader and try again.
                    if Instant::now() >= deadline {
                        return Err(RouteError::NoLeader);
                    }
                    let wait = LEADER_POLL.min(deadline - Instant::now());
                    let _ = tokio::time::timeout(wait, leader_changes.changed()).await;
                }
                Err(ForwardError::Range(error)) => return Err(error.into()),
                Err(ForwardError::ConnectionLost(detail)) => {
                    return Err(RouteError::ConnectionLost(detail))
                }
            }
        }
    }

    /// Waits until this node's replica reflects every write acknowledged before the call.
    pub async fn linearize(&self, range_id: u64) -> Result<(), RouteError> {
        Ok(self.store.read_index(range_id).await?)
    }
}
