//! The store loop: one thread per node that owns every local replica.
//!
//! Each turn it takes all waiting inputs (proposals, reads, Raft messages), ticks the
//! replicas when a tick is due, then collects the Raft output of every replica that has
//! some, writes all their log entries and hard states in **one** engine batch with
//! **one** fsync, sends the messages, and applies what got committed. Many clients, one
//! fsync: this is the group commit that keeps throughput high at full durability.

use crate::proto::shoal::command::CommandResult;
use crate::range::background::BackgroundWorker;
use crate::range::lease::LeaseTime;
use crate::range::oracle::TimestampWaiter;
use crate::range::replica::{
    Collected, LeaseQueryKind, Outbox, ProposalResponder, RangeStatus, ReadResponder, Replica, ReplicaConfig,
};
use crate::range::snapshot::SnapshotRegistry;
use crate::range::{Frontier, RangeError, META_RANGE_ID};
use crate::storage::disk::Room;
use crate::storage::{Durability, Engine, StorageError, WriteBatch};
use raft::eraftpb::Message;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

pub mod rebuild;
pub mod registry;
pub use registry::RangeRegistry;

/// Inputs are taken in turns of at most this many, so output is produced regularly
/// even under a flood of requests.
const INPUTS_PER_TURN_MAX: usize = 4096;
/// Bound of the inbox; senders wait when it is full (backpressure, not loss).
const INBOX_CAPACITY: usize = 65_536;
/// How often the loop looks for a finished snapshot install while one runs.
const INSTALL_POLL: Duration = Duration::from_millis(2);

pub enum StoreInput {
    Propose {
        range_id: u64,
        command: Vec<u8>,
        responder: ProposalResponder,
    },
    Read {
        range_id: u64,
        responder: ReadResponder,
    },
    Raft {
        range_id: u64,
        message: Message,
    },
    LeaseQuery {
        range_id: u64,
        lease_id: i64,
        kind: LeaseQueryKind,
        responder: oneshot::Sender<Result<Option<LeaseTime>, RangeError>>,
    },
    TransferLeader {
        range_id: u64,
        target: u64,
        only_if_ready: bool,
        responder: oneshot::Sender<Result<bool, RangeError>>,
    },
    InstallSnapshot {
        range_id: u64,
        message: Message,
        staged: PathBuf,
    },
    Unreachable {
        node_id: u64,
    },
    SnapshotSent {
        range_id: u64,
        to: u64,
        finished: bool,
    },
    /// The oracle's answer to a data range's ask made over the peer port: `count`
    /// revisions from `first` on.
    Timestamps {
        range_id: u64,
        outcome: Result<(i64, u32), RangeError>,
    },
    /// Another node asks this one's meta range (if it leads) for revisions.
    OracleRequest {
        count: u32,
        responder: oneshot::Sender<Result<i64, RangeError>>,
    },
    /// A rebuilt member's fence applied in this range: its replica votes again.
    Fenced {
        range_id: u64,
    },
    /// Every range of a rebuilt member is fenced: the rebuild is over (persisted).
    RebuildDone,
    Stop,
}

/// Where the store loop sends Raft messages.
pub trait RaftSender: Send + Sync {
    /// Queues messages for `to`; never blocks the store loop.
    fn send(&self, to: u64, messages: Vec<(u64, Message)>);
    /// Streams the snapshot a `MsgSnapshot` refers to, then reports back.
    fn send_snapshot(&self, to: u64, range_id: u64, message: Message);
    /// Asks the meta range's leader `to` for `count` revisions for `range_id`; the
    /// answer comes back as [`StoreInput::Timestamps`]. Never blocks the store loop.
    fn request_timestamps(&self, to: u64, range_id: u64, count: u32);
}

/// A range as the rest of the node sees it.
#[derive(Clone)]
pub struct RangeView {
    pub status: Arc<RangeStatus>,
    /// Through which revision history is physically gone on this node.
    pub compacted: watch::Receiver<i64>,
    pub leader_changes: watch::Receiver<u64>,
    pub revision_changes: watch::Receiver<i64>,
}

/// Sends inputs to the store loop.
#[derive(Clone)]
pub struct StoreHandle {
    inbox: flume::Sender<StoreInput>,
}

impl StoreHandle {
    /// A handle and the inbox the store loop will read.
    pub fn channel() -> (StoreHandle, flume::Receiver<StoreInput>) {
        let (inbox, receiver) = flume::bounded(INBOX_CAPACITY);
        (StoreHandle { inbox }, receiver)
    }

    /// Sends the input `make` builds around a responder and waits for its answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, RangeError>>) -> StoreInput,
    ) -> Result<T, RangeError> {
        let (responder, outcome) = oneshot::channel();
        self.send(make(responder)).await?;
        outcome.await.map_err(|_| RangeError::Stopped)?
    }

    /// Revisions from this node's meta range, if it leads: the first of `count`.
    pub async fn oracle_request(&self, count: u32) -> Result<i64, RangeError> {
        self.ask(|responder| StoreInput::OracleRequest { count, responder })
            .await
    }

    pub async fn propose(&self, range_id: u64, command: Vec<u8>) -> Result<CommandResult, RangeError> {
        self.ask(|responder| StoreInput::Propose {
            range_id,
            command,
            responder,
        })
        .await
    }

    /// Resolves once this node's replica of the range has applied everything that was
    /// committed when the call was made.
    pub async fn read_index(&self, range_id: u64) -> Result<(), RangeError> {
        self.ask(|responder| StoreInput::Read { range_id, responder }).await
    }

    /// Asks this node's replica (which must lead the range) about a lease.
    pub async fn lease_query(
        &self,
        range_id: u64,
        lease_id: i64,
        kind: LeaseQueryKind,
    ) -> Result<Option<LeaseTime>, RangeError> {
        self.ask(|responder| StoreInput::LeaseQuery {
            range_id,
            lease_id,
            kind,
            responder,
        })
        .await
    }

    /// Asks the range's leader (this node) to hand leadership to `target`; see
    /// `Replica::transfer_leader` for `only_if_ready` and the answer.
    pub async fn transfer_leader(&self, range_id: u64, target: u64, only_if_ready: bool) -> Result<bool, RangeError> {
        self.ask(|responder| StoreInput::TransferLeader {
            range_id,
            target,
            only_if_ready,
            responder,
        })
        .await
    }

    pub async fn send(&self, input: StoreInput) -> Result<(), RangeError> {
        self.inbox.send_async(input).await.map_err(|_| RangeError::Stopped)
    }

    /// For callers outside the runtime (the store's own helpers); drops on a full inbox.
    pub fn try_send(&self, input: StoreInput) {
        let _ = self.inbox.try_send(input);
    }
}

/// What the store loop is built from, besides its replicas.
pub struct StoreParts {
    pub node_id: u64,
    /// Room on the data volume: a node low on it takes no proposals, no leadership and,
    /// when critical, no log entries (see `storage::disk`).
    pub disk: Arc<crate::storage::disk::DiskSpace>,
    pub engine: Arc<dyn Engine>,
    pub inbox: flume::Receiver<StoreInput>,
    pub sender: Arc<dyn RaftSender>,
    pub tick_interval: Duration,
    pub worker: BackgroundWorker,
    /// For replicas of ranges created at run time (by splits).
    pub replica_config: ReplicaConfig,
    pub snapshots: Arc<SnapshotRegistry>,
    pub registry: Arc<RangeRegistry>,
}

pub struct Store {
    node_id: u64,
    replicas: BTreeMap<u64, Replica>,
    engine: Arc<dyn Engine>,
    inbox: flume::Receiver<StoreInput>,
    sender: Arc<dyn RaftSender>,
    tick_interval: Duration,
    worker: BackgroundWorker,
    replica_config: ReplicaConfig,
    snapshots: Arc<SnapshotRegistry>,
    registry: Arc<RangeRegistry>,
    disk: Arc<crate::storage::disk::DiskSpace>,
    /// Ticks counted by the loop, and when each data range was last asked to close.
    ticks: u64,
    closed_at: BTreeMap<u64, u64>,
}

fn view_of(replica: &Replica) -> RangeView {
    RangeView {
        status: replica.status(),
        compacted: replica.compacted_changes(),
        leader_changes: replica.leader_changes(),
        revision_changes: replica.revision_changes(),
    }
}

/// Whether a node with `room` on its disk leaves a peer's message of `kind` unread: a
/// low node appends no one's proposals and takes no leadership (its appends would eat
/// the reserve); a critical one also takes no log entries, so the others make the
/// quorum and its disk never fills. Heartbeats are always answered, so it never calls an
/// election for lack of them.
fn refused_for_room(room: Room, kind: raft::prelude::MessageType) -> bool {
    use raft::prelude::MessageType;
    match room {
        Room::Enough => false,
        Room::Low => matches!(kind, MessageType::MsgPropose | MessageType::MsgTimeoutNow),
        Room::Critical => matches!(
            kind,
            MessageType::MsgPropose | MessageType::MsgTimeoutNow | MessageType::MsgAppend | MessageType::MsgSnapshot
        ),
    }
}

/// A lagging range is asked to close at most this often (in ticks), while a watcher
/// waits for it.
const CLOSE_EVERY_TICKS: u64 = 2;

impl Store {
    /// The store loop over `replicas`; every one is entered in the registry.
    pub fn new(parts: StoreParts, replicas: Vec<Replica>) -> Self {
        for replica in &replicas {
            parts.registry.insert(replica.descriptor().clone(), view_of(replica));
        }
        let store = Self {
            node_id: parts.node_id,
            replicas: replicas
                .into_iter()
                .map(|replica| (replica.range_id(), replica))
                .collect(),
            engine: parts.engine,
            inbox: parts.inbox,
            sender: parts.sender,
            tick_interval: parts.tick_interval,
            worker: parts.worker,
            replica_config: parts.replica_config,
            snapshots: parts.snapshots,
            registry: parts.registry,
            disk: parts.disk,
            ticks: 0,
            closed_at: BTreeMap::new(),
        };
        store.publish_frontier();
        store
    }

    /// Opens the replicas of ranges that splits created, and hands every changed
    /// descriptor to the registry.
    fn open_created_ranges(&mut self) -> Result<(), StorageError> {
        let mut created = Vec::new();
        for replica in self.replicas.values_mut() {
            created.extend(replica.take_created_ranges());
            if let Some(descriptor) = replica.take_descriptor_change() {
                self.registry.update(&descriptor);
            }
        }
        for descriptor in created {
            if self.replicas.contains_key(&descriptor.id) {
                continue;
            }
            let replica = Replica::open(
                descriptor.id,
                self.replica_config.clone(),
                self.engine.clone(),
                self.snapshots.clone(),
                descriptor.clone(),
                None,
            )?;
            self.registry.insert(replica.descriptor().clone(), view_of(&replica));
            tracing::info!(range = descriptor.id, "opened a range created by a split");
            self.replicas.insert(descriptor.id, replica);
        }
        Ok(())
    }

    /// Opens, empty, every range the meta range's map names this node a replica of
    /// whose keys no local range holds: a range this node missed the split of (it
    /// caught up on the split range from a snapshot taken after it). The range's leader
    /// finds the replica empty and sends it a snapshot.
    fn open_missing_ranges(&mut self) -> Result<(), StorageError> {
        let Some(meta) = self.replicas.get(&META_RANGE_ID) else {
            return Ok(());
        };
        let local: Vec<crate::storage::KeyRange> = self
            .replicas
            .values()
            .filter(|replica| !replica.machine().is_meta())
            .map(|replica| crate::range::snapshot::descriptor_span(replica.descriptor()))
            .collect();
        let overlaps = |span: &crate::storage::KeyRange| {
            local.iter().any(|held| {
                held.end.as_ref().is_none_or(|end| span.start < *end)
                    && span.end.as_ref().is_none_or(|end| held.start < *end)
            })
        };
        let missing: Vec<crate::proto::shoal::state::RangeDescriptor> = meta
            .machine()
            .range_map()
            .ranges
            .iter()
            .filter(|descriptor| descriptor.replicas.contains(&self.node_id))
            .filter(|descriptor| !self.replicas.contains_key(&descriptor.id))
            .filter(|descriptor| !overlaps(&crate::range::snapshot::descriptor_span(descriptor)))
            .cloned()
            .collect();
        for descriptor in missing {
            let replica = Replica::open(
                descriptor.id,
                self.replica_config.clone(),
                self.engine.clone(),
                self.snapshots.clone(),
                descriptor.clone(),
                None,
            )?;
            self.registry.insert(descriptor.clone(), view_of(&replica));
            tracing::info!(
                range = descriptor.id,
                "opened an empty replica of a range whose split this node missed"
            );
            self.replicas.insert(descriptor.id, replica);
        }
        Ok(())
    }

    /// Every range this node leads takes its next step towards the cluster's membership,
    /// as this node's meta replica knows it.
    fn follow_membership(&mut self) {
        let Some(meta) = self.replicas.get(&META_RANGE_ID) else {
            return;
        };
        let record = meta.machine().membership().clone();
        self.registry.publish_membership(&record);
        for replica in self.replicas.values_mut() {
            replica.follow_membership(&record);
        }
    }

    /// Publishes how far every local data range has applied.
    fn publish_frontier(&self) {
        let mut frontier = Frontier {
            revision: i64::MAX,
            compact: 0,
        };
        for replica in self.replicas.values().filter(|replica| !replica.machine().is_meta()) {
            let revisions = replica.machine().revisions();
            frontier.revision = frontier.revision.min(replica.machine().resolved());
            frontier.compact = frontier.compact.max(revisions.compact);
        }
        if frontier.revision == i64::MAX {
            frontier.revision = 1;
        }
        self.registry.publish_frontier(frontier);
    }

    /// Data ranges that have not applied as far as a watcher waits for (`wanted`), or
    /// as far as the newest local range, are closed there (a `Close` gets a fresh
    /// revision), at most every few ticks: idle ranges keep up with busy ones, so the
    /// watch frontier follows the present. Only a range's leader closes it on its own
    /// account (a watcher's want is met on any replica: the proposal is forwarded).
    fn close_lagging_ranges(&mut self) {
        // The newest write, not the newest revision: a close moves a range's revision,
        // and closing up to other closes would never stop.
        let newest = self
            .replicas
            .values()
            .filter(|replica| !replica.machine().is_meta())
            .map(|replica| replica.machine().last_write())
            .max()
            .unwrap_or(0);
        let wanted = self.registry.wanted_frontier();
        for (range_id, replica) in self.replicas.iter_mut() {
            if replica.machine().is_meta() {
                continue;
            }
            let behind_wanted = wanted > 0 && replica.machine().resolved() < wanted;
            let idle_behind = replica.is_leader() && replica.machine().revisions().current < newest;
            if !behind_wanted && !idle_behind {
                continue;
            }
            let due = self
                .closed_at
                .get(range_id)
                .is_none_or(|at| self.ticks >= at + CLOSE_EVERY_TICKS);
            if due {
                self.closed_at.insert(*range_id, self.ticks);
                let (responder, _) = oneshot::channel();
                replica.propose(crate::range::close_command(), responder);
            }
        }
    }

    /// Runs until `Stop` arrives or every handle is gone. An engine error ends the loop:
    /// the in-memory Raft state could no longer be trusted to match the disk.
    pub fn run(mut self) -> Result<(), StorageError> {
        let mut next_tick = Instant::now() + self.tick_interval;
        let outcome = loop {
            let pending_output = self.replicas.values().any(Replica::has_ready);
            let wait = if pending_output {
                Duration::ZERO
            } else if self.replicas.values().any(Replica::is_installing) {
                // The worker does not wake the loop; an install's end is looked for often.
                INSTALL_POLL.min(next_tick.saturating_duration_since(Instant::now()))
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            let first = match self.inbox.recv_timeout(wait) {
                Ok(input) => Some(input),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => break Ok(()),
            };
            let mut stop = false;
            // One clock reading per turn: the replicas' logic takes time as an input.
            let now = Instant::now();
            let inputs: Vec<StoreInput> = first
                .into_iter()
                .chain(self.inbox.try_iter().take(INPUTS_PER_TURN_MAX))
                .collect();
            for input in inputs {
                if matches!(input, StoreInput::Stop) {
                    stop = true;
                    break;
                }
                self.handle(input, now);
            }
            if stop {
                break Ok(());
            }
            if now >= next_tick {
                self.ticks += 1;
                for replica in self.replicas.values_mut() {
                    replica.tick(now);
                }
                self.close_lagging_ranges();
                self.follow_membership();
                if let Err(error) = self.open_missing_ranges() {
                    break Err(error);
                }
                next_tick += self.tick_interval;
                // After a stall (a long fsync), do not fire a burst of catch-up ticks.
                if next_tick < now {
                    next_tick = now + self.tick_interval;
                }
            }
            self.ask_for_timestamps(now);
            // Revisions granted at once (the oracle is here and holds its lease) are
            // proposed now, so the commands ride in this turn's ready and fsync.
            self.deliver_timestamps();
            for replica in self.replicas.values_mut() {
                replica.flush_reads();
            }
            if let Err(error) = self.process_output(now) {
                break Err(error);
            }
            self.deliver_timestamps();
            if let Err(error) = self.open_created_ranges() {
                break Err(error);
            }
            self.publish_frontier();
            for replica in self.replicas.values_mut() {
                if let Some(job) = replica.take_compaction() {
                    self.worker.compact(job);
                }
            }
            if let Err(error) = self.finish_installs() {
                break Err(error);
            }
        };
        for replica in self.replicas.values_mut() {
            replica.shutdown();
        }
        outcome
    }

    fn handle(&mut self, input: StoreInput, now: Instant) {
        fn replica_of(replicas: &mut BTreeMap<u64, Replica>, range_id: u64) -> Option<&mut Replica> {
            replicas.get_mut(&range_id)
        }
        match input {
            StoreInput::Propose {
                range_id,
                command,
                responder,
            } => match replica_of(&mut self.replicas, range_id) {
                Some(replica) => replica.propose(command, responder),
                None => {
                    let _ = responder.send(Err(RangeError::UnknownRange(range_id)));
                }
            },
            StoreInput::Read { range_id, responder } => match replica_of(&mut self.replicas, range_id) {
                Some(replica) => replica.read(responder),
                None => {
                    let _ = responder.send(Err(RangeError::UnknownRange(range_id)));
                }
            },
            StoreInput::LeaseQuery {
                range_id,
                lease_id,
                kind,
                responder,
            } => match replica_of(&mut self.replicas, range_id) {
                Some(replica) => replica.lease_query(lease_id, kind, now, responder),
                None => {
                    let _ = responder.send(Err(RangeError::UnknownRange(range_id)));
                }
            },
            StoreInput::TransferLeader {
                range_id,
                target,
                only_if_ready,
                responder,
            } => {
                let answer = match replica_of(&mut self.replicas, range_id) {
                    Some(replica) => replica.transfer_leader(target, only_if_ready),
                    None => Err(RangeError::UnknownRange(range_id)),
                };
                let _ = responder.send(answer);
            }
            StoreInput::Raft { range_id, message } => {
                if refused_for_room(self.disk.room(), message.get_msg_type()) {
                    metrics::counter!("shoal_raft_messages_refused_for_disk_total").increment(1);
                    return;
                }
                if let Some(replica) = replica_of(&mut self.replicas, range_id) {
                    replica.step(message);
                }
            }
            StoreInput::InstallSnapshot { staged, .. } if self.disk.room() == Room::Critical => {
                metrics::counter!("shoal_raft_messages_refused_for_disk_total").increment(1);
                let _ = std::fs::remove_file(staged);
            }
            StoreInput::InstallSnapshot {
                range_id,
                message,
                staged,
            } => match replica_of(&mut self.replicas, range_id) {
                Some(replica) => replica.step_snapshot(message, staged),
                None => {
                    let _ = std::fs::remove_file(staged);
                }
            },
            StoreInput::Fenced { range_id } => {
                if let Some(replica) = replica_of(&mut self.replicas, range_id) {
                    replica.release_votes();
                }
            }
            StoreInput::RebuildDone => match rebuild::finish(self.engine.as_ref()) {
                Ok(()) => {
                    self.replica_config.rebuilding = false;
                    // Any replica the map does not name this member for has no vote to keep.
                    for replica in self.replicas.values_mut() {
                        replica.release_votes();
                    }
                    tracing::info!("rebuild finished: every range holds what this member once acknowledged");
                }
                // The marker stays: the next start fences every range again.
                Err(error) => tracing::warn!(%error, "cannot record the end of the rebuild"),
            },
            StoreInput::Unreachable { node_id } => {
                for replica in self.replicas.values_mut() {
                    replica.report_unreachable(node_id);
                }
            }
            StoreInput::SnapshotSent { range_id, to, finished } => {
                if let Some(replica) = replica_of(&mut self.replicas, range_id) {
                    replica.report_snapshot(to, finished);
                }
            }
            StoreInput::Timestamps { range_id, outcome } => {
                if let Some(replica) = replica_of(&mut self.replicas, range_id) {
                    replica.on_timestamps(outcome);
                }
            }
            StoreInput::OracleRequest { count, responder } => match replica_of(&mut self.replicas, META_RANGE_ID) {
                Some(meta) => meta.request_timestamps(TimestampWaiter::Remote { count, responder }, now),
                None => {
                    let _ = responder.send(Err(RangeError::UnknownRange(META_RANGE_ID)));
                }
            },
            StoreInput::Stop => {}
        }
    }

    /// Sends the data ranges' asks for revisions to the oracle (this node's meta range,
    /// or its leader over the peer port).
    fn ask_for_timestamps(&mut self, now: Instant) {
        for replica in self.replicas.values_mut() {
            replica.maintain(now);
        }
        let meta_leader = self
            .replicas
            .get(&META_RANGE_ID)
            .map_or(0, |meta| meta.status().leader());
        let asks: Vec<(u64, u32)> = self
            .replicas
            .iter_mut()
            .filter_map(|(range_id, replica)| replica.timestamps_wanted().map(|count| (*range_id, count)))
            .collect();
        for (range_id, count) in asks {
            if meta_leader == self.node_id {
                if let Some(meta) = self.replicas.get_mut(&META_RANGE_ID) {
                    meta.request_timestamps(TimestampWaiter::Local { range_id, count }, now);
                }
            } else if meta_leader != 0 {
                self.sender.request_timestamps(meta_leader, range_id, count);
            } else if let Some(replica) = self.replicas.get_mut(&range_id) {
                replica.on_timestamps(Err(RangeError::NotLeader { leader: 0 }));
            }
        }
    }

    /// Hands the oracle's answers to the local data ranges and remote callers.
    fn deliver_timestamps(&mut self) {
        let Some(meta) = self.replicas.get_mut(&META_RANGE_ID) else {
            return;
        };
        for (waiter, outcome) in meta.take_timestamp_answers() {
            match waiter {
                TimestampWaiter::Local { range_id, count } => {
                    if let Some(replica) = self.replicas.get_mut(&range_id) {
                        replica.on_timestamps(outcome.map(|first| (first, count)));
                    }
                }
                TimestampWaiter::Remote { responder, .. } => {
                    let _ = responder.send(outcome);
                }
            }
        }
    }

    /// Hands the replicas their finished installs. A failed one ends the loop: the data
    /// is half written, and the next start finishes the install from the staged file
    /// (its marker is on disk).
    fn finish_installs(&mut self) -> Result<(), StorageError> {
        for done in self.worker.take_finished_installs() {
            let records = done.outcome?;
            if let Some(replica) = self.replicas.get_mut(&done.range_id) {
                replica.finish_install(records)?;
            }
        }
        Ok(())
    }

    fn process_output(&mut self, now: Instant) -> Result<(), StorageError> {
        let mut outbox: Outbox = Vec::new();
        let mut log_batch = WriteBatch::new();
        let mut must_sync = false;
        let mut readies = Vec::new();
        for (range_id, replica) in self.replicas.iter_mut() {
            if replica.has_ready() {
                match replica.collect_ready(now, &mut outbox, &mut log_batch)? {
                    Collected::Ready(ready, sync) => {
                        must_sync |= sync;
                        readies.push((*range_id, ready));
                    }
                    Collected::Install(job) => self.worker.install(job),
                }
            }
        }
        if readies.is_empty() {
            // A ready that went to the worker may still have carried messages.
            self.send(outbox);
            return Ok(());
        }
        // A leader's appends go out before its own fsync: followers write in parallel.
        self.send(std::mem::take(&mut outbox));
        if !log_batch.is_empty() || must_sync {
            let started = Instant::now();
            let durability = if must_sync {
                Durability::Sync
            } else {
                Durability::Buffered
            };
            self.engine.write(log_batch, durability)?;
            if must_sync {
                metrics::histogram!("etcd_disk_wal_fsync_duration_seconds").record(started.elapsed().as_secs_f64());
            }
        }
        for (range_id, ready) in readies {
            if let Some(replica) = self.replicas.get_mut(&range_id) {
                replica.finish_ready(ready, &mut outbox)?;
            }
        }
        self.send(outbox);
        Ok(())
    }

    fn send(&self, outbox: Outbox) {
        if outbox.is_empty() {
            return;
        }
        let mut by_node: BTreeMap<u64, Vec<(u64, Message)>> = BTreeMap::new();
        for (range_id, message) in outbox {
            if Replica::is_snapshot_message(&message) {
                self.sender.send_snapshot(message.to, range_id, message);
            } else {
                by_node.entry(message.to).or_default().push((range_id, message));
            }
        }
        for (to, messages) in by_node {
            self.sender.send(to, messages);
        }
    }
}
