//! key -> range -> leader. Writes are proposed to the local replica, which hands them to
//! the range's leader inside the Raft stream when it does not lead, and retried while
//! the cluster has no leader or the proposal is known never to apply (so a retry cannot
//! apply a command twice). Lease queries go to the leader over the peer port.
//! Linearizable reads get a read index from the local replica.

use crate::proto::shoal::command::{command_result, CommandResult, ErrorKind, RaftCommand};
use crate::range::lease::LeaseTime;
use crate::range::reader::{PinnedRange, RangeReader};
use crate::range::replica::{LeaseQueryKind, RangeStatus};
use crate::range::{RangeError, FIRST_DATA_RANGE_ID, META_RANGE_ID};
use crate::storage::KeyRange;
use crate::store::{RangeRegistry, RangeView, StoreHandle};
use crate::transport::{ForwardError, PeerTransport};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long to wait for news of a leader before looking again.
const LEADER_POLL: Duration = Duration::from_millis(50);
/// How often a read waiting for a snapshot install looks again.
const INSTALL_POLL: Duration = Duration::from_millis(5);

/// Longest a serializable read across ranges waits for idle ranges to catch up with
/// the newest one (a few ticks when the leaders are reachable), and how often it looks.
const SETTLE_WAIT: Duration = Duration::from_secs(1);
const SETTLE_POLL: Duration = Duration::from_millis(10);

/// How long a command refused for a stale plan waits before it is planned again.
const REPLAN_PAUSE: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The keys of one command live in several ranges (these), which a single-range
    /// command cannot touch.
    #[error("the keys span ranges {0:?}")]
    CrossRange(Vec<u64>),
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error("no leader")]
    NoLeader,
    /// A question forwarded to the leader lost its connection.
    #[error("connection to the leader lost: {0}")]
    ConnectionLost(String),
}

pub struct Router {
    node_id: u64,
    store: StoreHandle,
    registry: Arc<RangeRegistry>,
    peers: Arc<PeerTransport>,
    reader: RangeReader,
    request_timeout: Duration,
}

/// How a command was planned: the range and the epoch of its descriptor then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub range_id: u64,
    pub epoch: u64,
}

impl Router {
    pub fn new(
        node_id: u64,
        store: StoreHandle,
        registry: Arc<RangeRegistry>,
        peers: Arc<PeerTransport>,
        reader: RangeReader,
        request_timeout: Duration,
    ) -> Self {
        assert!(registry.status(META_RANGE_ID).is_some(), "the meta range must be local");
        Self {
            node_id,
            store,
            registry,
            peers,
            reader,
            request_timeout,
        }
    }

    /// The range holding the internal key `key`. Data ranges cover every key and every
    /// node holds every range until ranges move between nodes; a key outside every
    /// local range is a bug in the map.
    pub fn range_of(&self, key: &[u8]) -> u64 {
        let plan = self.registry.route(key);
        debug_assert!(plan.is_some(), "no range holds {key:?}");
        plan.map_or(FIRST_DATA_RANGE_ID, |(range_id, _)| range_id)
    }

    /// The one data range holding every key of `spans`, or `CrossRange` naming them.
    pub fn plan(&self, spans: &[KeyRange]) -> Result<Plan, RouteError> {
        let mut planned: Option<Plan> = None;
        let mut all = Vec::new();
        for span in spans {
            for (range_id, epoch) in self.registry.overlapping(span) {
                if !all.contains(&range_id) {
                    all.push(range_id);
                }
                planned.get_or_insert(Plan { range_id, epoch });
            }
        }
        match (planned, all.len()) {
            (Some(plan), 1) => Ok(plan),
            (None, _) => Ok(Plan {
                range_id: FIRST_DATA_RANGE_ID,
                epoch: 0,
            }),
            (Some(_), _) => Err(RouteError::CrossRange(all)),
        }
    }

    /// The registry of this node's ranges.
    /// Lets go of the storage engine when the node's run stops (see
    /// `RangeReader::close`).
    pub fn close_storage(&self) {
        self.reader.close();
    }

    pub fn registry(&self) -> &Arc<RangeRegistry> {
        &self.registry
    }

    /// Ids of the ranges this node holds a replica of.
    pub fn local_ranges(&self) -> Vec<u64> {
        self.registry.ids()
    }

    /// This node's member id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn status(&self, range_id: u64) -> Arc<RangeStatus> {
        self.view(range_id).status
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
            if let Some(pinned) = self.reader.pin(range_id, &status) {
                return Ok(pinned);
            }
            if self.reader.engine().is_none() {
                return Err(RouteError::Range(RangeError::Stopped));
            }
            if Instant::now() >= deadline {
                return Err(RouteError::Range(RangeError::Installing));
            }
            // Installs are rare and the flag lives in the store loop's status: polled.
            tokio::time::sleep(INSTALL_POLL).await;
        }
    }

    /// The lowest revision every local data range has applied everything up to (locks
    /// of transactions in progress count): what a watch from now starts after.
    pub fn frontier(&self) -> i64 {
        self.registry.frontier().borrow().revision
    }

    /// Closes the local data ranges that have applied less than the newest one, and
    /// waits (within the request timeout) for the frontier to reach the lowest of those
    /// closes. Failures are left to the caller, which reads the frontier it gets.
    pub async fn catch_up_frontier(self: &Arc<Self>) {
        let newest = self.newest_revision();
        let lagging: Vec<u64> = self
            .registry
            .data_ranges()
            .iter()
            .filter(|range| range.view.status.revision.load(std::sync::atomic::Ordering::Acquire) < newest)
            .map(|range| range.descriptor.id)
            .collect();
        if lagging.is_empty() {
            return;
        }
        let Ok(closed) = self.close_all(&lagging).await else {
            return;
        };
        let target = closed.iter().copied().min().unwrap_or(newest).min(newest);
        let mut frontier = self.registry.frontier();
        let _ = tokio::time::timeout(
            self.request_timeout,
            frontier.wait_for(|frontier| frontier.revision >= target),
        )
        .await;
    }

    /// The newest revision any local data range applied: the store's revision as a
    /// header reports it.
    pub fn newest_revision(&self) -> i64 {
        self.registry
            .data_ranges()
            .iter()
            .map(|range| range.view.status.revision.load(std::sync::atomic::Ordering::Acquire))
            .max()
            .unwrap_or(1)
    }

    /// The newest revision the local replica of the range applied.
    pub fn revision(&self, range_id: u64) -> i64 {
        self.status(range_id)
            .revision
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The data of every range the spans touch, as of one revision, from one pinned
    /// view: `requested` (> 0), or else a revision at or above every write acknowledged
    /// before the call. Each range is made final at it first: a linearizable read closes
    /// every range (a `Close` takes a fresh revision from the oracle and applies here;
    /// the lowest of them is the read's revision), and ranges still below a requested
    /// revision are closed again. A serializable read takes what this member applied.
    pub async fn pin_across(
        self: &Arc<Self>,
        spans: &[KeyRange],
        serializable: bool,
        requested: i64,
    ) -> Result<PinnedRange, RouteError> {
        let overlapping = || {
            let mut ranges: Vec<u64> = Vec::new();
            for span in spans {
                for (range_id, _) in self.registry.overlapping(span) {
                    if !ranges.contains(&range_id) {
                        ranges.push(range_id);
                    }
                }
            }
            ranges
        };
        let deadline = Instant::now() + self.request_timeout;
        let applied = |range_id: u64| self.revision(range_id);
        let (revision, target) = if serializable {
            // What this member applied, as one snapshot: every range read at a revision
            // all of them are final at here (no write at or below it can still apply
            // locally, a transaction over several ranges is in all of them or none).
            // Idle ranges are closed up to the newest revision applied here first, so a
            // member's own recent writes show; a member cut off from the leaders reads
            // at the revision where its ranges stand, as a stale serializable read does.
            let ranges = overlapping();
            let target = if requested > 0 {
                requested
            } else {
                ranges.iter().map(|range_id| applied(*range_id)).max().unwrap_or(1)
            };
            (self.settle(&ranges, target).await, None)
        } else {
            let closed = self.close_all(&overlapping()).await?;
            let newest = closed.iter().copied().max().unwrap_or(1);
            let target = if requested > 0 {
                requested
            } else {
                closed.iter().copied().min().unwrap_or(1)
            };
            // A requested revision past every fresh one is in the future: the read
            // reports it (the view's revision is the newest, so it refuses).
            let target = target.min(newest);
            (if requested > newest { newest } else { target }, Some(target))
        };
        loop {
            // Ranges split while this read went on: the new ones must be final at the
            // target too (a split's new range may not have applied as far yet here).
            let ranges = overlapping();
            if let Some(target) = target {
                let behind: Vec<u64> = ranges
                    .iter()
                    .copied()
                    .filter(|range_id| applied(*range_id) < target)
                    .collect();
                if !behind.is_empty() {
                    if Instant::now() >= deadline {
                        return Err(RouteError::Range(RangeError::Timeout));
                    }
                    self.close_all(&behind).await?;
                    continue;
                }
            }
            let Some(engine) = self.reader.engine() else {
                return Err(RouteError::Range(RangeError::Stopped));
            };
            if let Some(view) = self.registry.whole_view(engine.as_ref()) {
                if overlapping() != ranges {
                    continue; // a split between the check and the view
                }
                let compact = ranges
                    .iter()
                    .map(|range_id| {
                        crate::range::state_machine::StateMachine::revisions_in(*range_id, view.as_ref())
                            .map(|revisions| revisions.compact)
                    })
                    .collect::<Result<Vec<i64>, _>>()
                    .map_err(|error| RouteError::Range(RangeError::Storage(error.to_string())))?
                    .into_iter()
                    .max()
                    .unwrap_or(0);
                return Ok(self.reader.pin_as_of(view, revision, compact, ranges));
            }
            if Instant::now() >= deadline {
                return Err(RouteError::Range(RangeError::Installing));
            }
            tokio::time::sleep(INSTALL_POLL).await;
        }
    }

    /// Waits, at most `SETTLE_WAIT`, for every one of `ranges` to be final here at
    /// `target` (asking for lagging ranges to be closed); the lowest revision they are
    /// all final at when it returns.
    async fn settle(&self, ranges: &[u64], target: i64) -> i64 {
        let resolved = || {
            ranges
                .iter()
                .map(|range_id| {
                    self.status(*range_id)
                        .resolved
                        .load(std::sync::atomic::Ordering::Acquire)
                })
                .min()
                .unwrap_or(1)
        };
        if resolved() >= target {
            return resolved();
        }
        self.registry.want_frontier(target);
        let mut changes = self.registry.frontier();
        let deadline = Instant::now() + SETTLE_WAIT;
        loop {
            let now = resolved();
            if now >= target || Instant::now() >= deadline {
                return now;
            }
            // The frontier moves with these ranges' closes; the poll covers a frontier
            // held back by a range outside this read.
            let _ = tokio::time::timeout(SETTLE_POLL.min(deadline - Instant::now()), changes.changed()).await;
        }
    }

    /// Closes every one of `ranges` at once (see `Close`); the revision each closed at.
    async fn close_all(self: &Arc<Self>, ranges: &[u64]) -> Result<Vec<i64>, RouteError> {
        let mut closing = tokio::task::JoinSet::new();
        for &range_id in ranges {
            let router = self.clone();
            closing.spawn(async move { router.write(range_id, crate::range::close_command()).await });
        }
        let mut closed = Vec::with_capacity(ranges.len());
        while let Some(outcome) = closing.join_next().await {
            let applied = outcome.map_err(|error| RouteError::Range(RangeError::Storage(error.to_string())))??;
            closed.push(applied.revision);
        }
        Ok(closed)
    }

    pub fn disk_space_bytes(&self) -> u64 {
        self.reader.disk_space_bytes()
    }

    fn view(&self, range_id: u64) -> RangeView {
        // Every range id handed out by `range_of` is local, and local ranges stay.
        self.registry
            .view(range_id)
            .unwrap_or_else(|| panic!("range {range_id} is not on this node"))
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Runs a key-value command (an encoded `RaftCommand`) on the one range holding
    /// every key of `spans`, planned against the range's epoch: a command refused for a
    /// stale plan (the range split meanwhile) did nothing and is planned again. Fails
    /// with `CrossRange` when the keys live in several ranges.
    pub async fn write_keys(&self, spans: &[KeyRange], command: Vec<u8>) -> Result<CommandResult, RouteError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let plan = self.plan(spans)?;
            let mut stamped = command.clone();
            let stamp = RaftCommand {
                epoch: plan.epoch,
                ..Default::default()
            };
            prost::Message::encode(&stamp, &mut stamped).unwrap_or_else(|_| unreachable!("a Vec grows as needed"));
            let applied = self.write(plan.range_id, stamped).await?;
            let Some(command_result::Result::Error(refusal)) = &applied.result else {
                return Ok(applied);
            };
            if refusal.kind() != ErrorKind::EpochMismatch {
                return Ok(applied);
            }
            for descriptor in &refusal.current {
                self.registry.update(descriptor);
            }
            if Instant::now() >= deadline {
                return Ok(applied);
            }
            // The store loop enters a split's new range right after applying it.
            tokio::time::sleep(REPLAN_PAUSE).await;
        }
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

    /// A fresh revision from the timestamp oracle: above every revision handed out
    /// before the call (the commit revision of a transaction over several ranges).
    pub async fn timestamp(&self) -> Result<i64, RouteError> {
        self.retry_until_leader(META_RANGE_ID, |leader| async move {
            if leader == self.node_id {
                self.store.oracle_request(1).await.map_err(ForwardError::Range)
            } else {
                self.peers.timestamps(leader, 1).await
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
        self.store.transfer_leader(range_id, target, false).await?;
        Ok(())
    }

    /// Hands leadership of a range this node leads to `target` only if the move can
    /// finish at once (see `Replica::transfer_leader`); false if it did not start.
    pub async fn transfer_leader_if_ready(&self, range_id: u64, target: u64) -> Result<bool, RouteError> {
        Ok(self.store.transfer_leader(range_id, target, true).await?)
    }

    /// Waits until this node's replica reflects every write acknowledged before the call.
    pub async fn linearize(&self, range_id: u64) -> Result<(), RouteError> {
        Ok(self.store.read_index(range_id).await?)
    }
}
