//! One replica of one range: raft-rs's `RawNode`, the state machine it feeds, and the
//! clients waiting on it (proposals until their entry applies, linearizable reads until
//! the applied index reaches their read index).
//!
//! The store loop owns every replica and calls, in order: `step`/`propose`/`read`/`tick`
//! for inputs, then `collect_ready` (phase 1: emit leader messages, apply committed
//! entries, stage log writes), commits the staged writes of all replicas at once, then
//! `finish_ready` (phase 2: emit messages that needed the log on disk, apply what that
//! committed).

use super::background::{CompactionJob, InstallJob};
use super::lease::LeaseTime;
use super::log_store::LogStore;
use super::oracle::{Oracle, TimestampWaiter};
use super::proposals::{ProposalId, ProposalTracker};
use super::raft_logger;
use super::reads::ReadQueue;
use super::sequencer::{Sequencer, Unsequenced};
use super::snapshot::{self, SnapshotRegistry};
use super::state_machine::{ApplyBatch, StateMachine};
use super::RangeError;
use crate::proto::shoal::command::CommandResult;
use crate::proto::shoal::state::RangeDescriptor;
use crate::proto::shoal::state::SnapshotInstall;
use crate::storage::{Durability, Engine, ReadView, StorageError, WriteBatch};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, EntryType, Message, MessageType};
use raft::{RawNode, Ready, StateRole};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, watch};

/// Installs the staged snapshot `install` names (its start already recorded) and brings
/// the log store and state machine in line with it. Also what a restart runs when a
/// crash interrupted an install: every step can be repeated.
fn complete_install(
    engine: &Arc<dyn Engine>,
    log_store: &mut LogStore,
    machine: &mut StateMachine,
    install: &SnapshotInstall,
) -> Result<u64, StorageError> {
    let mut metadata = raft::eraftpb::SnapshotMetadata {
        index: install.index,
        term: install.term,
        ..Default::default()
    };
    metadata.set_conf_state(ConfState::parse_from_bytes(&install.conf_state).map_err(|error| {
        StorageError::Corrupt {
            space: crate::storage::Space::RaftState,
            detail: format!("snapshot install conf state: {error}"),
        }
    })?);
    let file = std::fs::File::open(&install.staged_file).map_err(|error| {
        StorageError::Io(std::io::Error::new(
            error.kind(),
            format!("staged snapshot {}: {error}", install.staged_file),
        ))
    })?;
    let mut reader = std::io::BufReader::new(file);
    let records = snapshot::install(engine.as_ref(), machine.descriptor(), &mut reader, |batch| {
        log_store.install_snapshot(&metadata, batch)
    })?;
    check_installed(machine, install)?;
    let _ = std::fs::remove_file(&install.staged_file);
    Ok(records)
}

/// Reloads the state machine from the installed data, which must be applied through
/// the snapshot's index.
fn check_installed(machine: &mut StateMachine, install: &SnapshotInstall) -> Result<(), StorageError> {
    machine.reload()?;
    if machine.applied_index() != install.index {
        // The peer server checks this before Raft sees the snapshot; reaching here
        // means the staged file changed on disk. Stop rather than run on it.
        return Err(StorageError::Corrupt {
            space: crate::storage::Space::RangeMeta,
            detail: format!(
                "installed snapshot is applied through {}, its metadata says {}",
                machine.applied_index(),
                install.index
            ),
        });
    }
    Ok(())
}

fn encode_conf_state(conf_state: &ConfState) -> Vec<u8> {
    conf_state
        .write_to_bytes()
        .unwrap_or_else(|error| panic!("encoding a conf state: {error}"))
}

pub type ProposalResponder = oneshot::Sender<Result<CommandResult, RangeError>>;
pub type ReadResponder = oneshot::Sender<Result<(), RangeError>>;
pub type LeaseResponder = oneshot::Sender<Result<Option<LeaseTime>, RangeError>>;

/// Revocations of expired leases proposed per tick at most; the rest wait a tick.
const LEASE_REVOKES_PER_TICK: usize = 100;

/// Linearizable reads and lease renewals waiting on one replica, beyond which new ones
/// are refused as if the replica had no leader (the router waits and retries).
const READ_WAITERS_MAX: usize = 100_000;

/// What a lease question asks of the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseQueryKind {
    /// Keep-alive: extend the lease to a full TTL.
    Renew,
    /// How long the lease has left.
    TimeToLive,
}

/// Limits and timings of a replica, in ticks of the store loop.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub node_id: u64,
    /// This start of the node (persisted, raised at every start): part of every
    /// proposal's id, so entries proposed before a restart never answer new waiters.
    pub incarnation: u64,
    pub election_ticks: usize,
    /// `election_ticks` as time: how long a follower that heard from the leader refuses
    /// to vote for anyone else (the meta range's leader lease rests on it).
    pub election_timeout: std::time::Duration,
    pub heartbeat_ticks: usize,
    /// A proposal or read without an outcome after this long fails with `Timeout`.
    pub request_timeout_ticks: u64,
    /// A read index request without an answer after this long is sent again (raft-rs
    /// drops them silently while there is no leader or the leader is new).
    pub read_retry_ticks: u64,
    /// Truncate the log once this many applied entries sit in it...
    pub log_compaction_entries: u64,
    /// ...keeping this many behind the applied index for slow followers.
    pub log_catchup_entries: u64,
    /// The member was rebuilt from its peers (`shoal ctl rebuild-member`): it may have
    /// acknowledged entries it no longer holds, so a replica neither votes nor campaigns
    /// until it has applied a fence proposed after the rebuild (see
    /// [`Replica::votes_withheld`]).
    pub rebuilding: bool,
}

/// What the rest of the node may read about a range without asking the store loop.
#[derive(Debug, Default)]
pub struct RangeStatus {
    pub leader: AtomicU64,
    pub is_leader: AtomicBool,
    pub term: AtomicU64,
    pub commit_index: AtomicU64,
    pub applied_index: AtomicU64,
    pub revision: AtomicI64,
    /// The newest revision a write applied in the range (closes and compactions move
    /// `revision` without writing).
    pub last_write: AtomicI64,
    /// At or below this revision nothing can change in the range's local state any more
    /// (`StateMachine::resolved`): reads across ranges at or below it are atomic.
    pub resolved: AtomicI64,
    /// Live keys and their bytes (approximate after a split): what decides a split.
    pub live_keys: AtomicU64,
    pub live_bytes: AtomicU64,
    /// Meta range: the alarms raised in the cluster, a bit per `AlarmKind` number
    /// (`StateMachine::alarm_bits`), so a write can be refused without a read.
    pub alarms: AtomicU32,
    /// Meta range: the auth store's version (`StateMachine::auth_version`).
    pub auth_version: AtomicU64,
    /// Even while the range's data is whole, odd while a snapshot is being written over
    /// it: a sequence lock that [`RangeStatus::whole_view`] reads (a view pinned during
    /// an install would hold the range half replaced).
    install_epoch: AtomicU64,
}

impl RangeStatus {
    pub fn clone_arc(self: &Arc<Self>) -> Arc<Self> {
        Arc::clone(self)
    }

    pub fn leader(&self) -> u64 {
        self.leader.load(Ordering::Acquire)
    }
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }

    pub fn is_installing(&self) -> bool {
        !self.install_epoch().is_multiple_of(2)
    }

    /// The install gate's sequence number (odd while an install writes).
    pub fn install_epoch(&self) -> u64 {
        self.install_epoch.load(Ordering::SeqCst)
    }

    /// A pinned view of `engine` in which this range's data is whole, or `None` while a
    /// snapshot is being written over it. The epoch is read on both sides of pinning: if
    /// it is even and unchanged, no install had begun writing when the view was pinned
    /// (the store loop makes it odd before it hands the install to the worker, and even
    /// only after the last write), so the view holds the range as it was before.
    pub fn whole_view(&self, engine: &dyn Engine) -> Option<Arc<dyn ReadView>> {
        let before = self.install_epoch.load(Ordering::SeqCst);
        if !before.is_multiple_of(2) {
            return None;
        }
        let view = engine.snapshot();
        (self.install_epoch.load(Ordering::SeqCst) == before).then_some(view)
    }

    fn begin_install(&self) {
        let before = self.install_epoch.fetch_add(1, Ordering::SeqCst);
        assert!(
            before.is_multiple_of(2),
            "an install began while another was in progress"
        );
    }

    fn end_install(&self) {
        let before = self.install_epoch.fetch_add(1, Ordering::SeqCst);
        assert!(!before.is_multiple_of(2), "an install ended that had not begun");
    }
}

/// What waits for a read index.
enum ReadWaiter {
    /// A linearizable read: answered once this replica has applied what was committed
    /// when it arrived.
    Client(ReadResponder),
    /// A lease keep-alive on the leader. It renews only once a read index has shown a
    /// quorum still follows this leader in the term it was asked in, and renews from
    /// the time it was asked: a new leader can only have been elected after that
    /// quorum answered, and it restarts every deadline at the full TTL when promoted,
    /// so the deadline the client is told never runs out before the new leader's.
    LeaseRenew {
        lease_id: i64,
        asked_at: Instant,
        term: u64,
        responder: LeaseResponder,
    },
    /// A request to the oracle (meta range leader): answered only once a read index
    /// asked after it arrived confirmed leadership in the term it was asked in.
    Timestamps { waiter: TimestampWaiter, term: u64 },
    /// Renews the meta range leader's lease: confirmed, it holds from `sent_at`.
    OracleLease { sent_at: Instant, term: u64 },
}

/// Part of the election timeout the meta range's leader counts as its lease: the rest
/// is margin for clocks that run at different rates on different machines.
const LEASE_SHARE_NUMERATOR: u32 = 4;
const LEASE_SHARE_DENOMINATOR: u32 = 5;

/// The meta range leader's lease: while it holds, no other member can have become
/// leader, so the oracle answers without a read index round per request. A follower
/// refuses to vote (raft-rs with check-quorum) until an election timeout after it last
/// heard from the leader; a quorum acknowledged a heartbeat sent at or after `from`, so
/// no new leader exists before `from` plus the election timeout. A leadership transfer
/// forces votes past that rule, so the lease ends when one starts.
#[derive(Debug, Default)]
struct LeaderLease {
    /// Valid until then, in this term.
    until: Option<(Instant, u64)>,
    /// A renewal is in flight.
    renewing: bool,
}

/// Messages a replica wants sent, tagged with its range.
pub type Outbox = Vec<(u64, Message)>;

pub struct Replica {
    range_id: u64,
    config: ReplicaConfig,
    raw: RawNode<LogStore>,
    machine: StateMachine,
    engine: Arc<dyn Engine>,
    ticks: u64,
    /// Set on a rebuilt member until the range's fence applied: every entry this
    /// replica may once have acknowledged precedes the fence in the log, so from then
    /// on its log holds them and its vote is safe again. Until then it drops vote
    /// requests and leadership transfers and does not tick (so never campaigns).
    votes_withheld: bool,
    proposals: ProposalTracker,
    reads: ReadQueue<ReadWaiter>,
    /// Snapshot data received and staged on disk, by (index, term).
    staged_snapshots: HashMap<(u64, u64), PathBuf>,
    status: Arc<RangeStatus>,
    leader_watch: watch::Sender<u64>,
    /// The revision this replica has applied, for watchers.
    revision_watch: watch::Sender<i64>,
    /// Through which revision history is physically removed (told by the worker).
    compacted_watch: Arc<watch::Sender<i64>>,
    /// The ready that carried a snapshot the worker is installing; raft-rs takes no
    /// input until it is advanced.
    installing: Option<Ready>,
    pending_install: Option<(SnapshotInstall, raft::eraftpb::SnapshotMetadata, Instant)>,
    /// That ready once installed, to collect again like a new one.
    resumed: Option<Ready>,
    /// Data ranges, on the leader: commands waiting for their revision.
    sequencer: Sequencer<(ProposalId, ProposalResponder)>,
    /// Meta range: the timestamp oracle (serving on the leader).
    oracle: Option<Oracle>,
    /// Meta range: answers to requests for revisions, for the store loop to deliver.
    timestamp_answers: Vec<(TimestampWaiter, Result<i64, RangeError>)>,
    /// Meta range: the leader's lease.
    lease: LeaderLease,
    /// Ranges this range's splits created, for the store loop to open.
    created_ranges: Vec<RangeDescriptor>,
    /// The range's descriptor changed (a split or a snapshot) since the store last looked.
    descriptor_changed: bool,
}

/// Creating a range that has never existed on this node.
pub struct Bootstrap {
    pub voters: Vec<u64>,
    /// Meta range: the members the cluster starts with (every one a voter).
    pub members: Vec<crate::proto::shoal::state::MemberInfo>,
    /// Meta range: the data ranges the cluster starts with.
    pub data_ranges: Vec<RangeDescriptor>,
}

/// What [`Replica::collect_ready`] found.
pub enum Collected {
    /// To finish with [`Replica::finish_ready`] once `log_batch` is committed (synced
    /// if the flag says so).
    Ready(Ready, bool),
    /// A snapshot to install on the background worker; report back with
    /// [`Replica::finish_install`].
    Install(InstallJob),
}

impl Replica {
    /// Opens the range's replica from the engine. `bootstrap` creates the range with
    /// those voters (and, for the meta range, that map of data ranges) if it has never
    /// existed on this node.
    pub fn open(
        range_id: u64,
        config: ReplicaConfig,
        engine: Arc<dyn Engine>,
        snapshots: Arc<SnapshotRegistry>,
        descriptor: RangeDescriptor,
        bootstrap: Option<Bootstrap>,
    ) -> Result<Self, StorageError> {
        let (node_id, incarnation) = (config.node_id, config.incarnation);
        let votes_withheld = config.rebuilding;
        let mut log_store = LogStore::load(range_id, engine.clone(), snapshots)?;
        let mut machine = StateMachine::load(range_id, engine.clone(), descriptor)?;
        if let Some(install) = log_store.pending_install()? {
            tracing::warn!(
                range = range_id,
                index = install.index,
                "finishing a snapshot install a crash interrupted"
            );
            complete_install(&engine, &mut log_store, &mut machine, &install)?;
        }
        if let Some(bootstrap) = bootstrap {
            if log_store.conf_state().voters.is_empty() && log_store.last_index() == 0 {
                let mut batch = WriteBatch::new();
                log_store.bootstrap(bootstrap.voters, &mut batch);
                machine.bootstrap(&bootstrap.data_ranges, &bootstrap.members, &mut batch);
                engine.write(batch, Durability::Sync)?;
                machine.reload()?;
            }
        }
        assert!(
            machine.applied_index() >= log_store.truncated_index(),
            "range {range_id}: applied index {} is behind the truncated log {}",
            machine.applied_index(),
            log_store.truncated_index()
        );
        log_store.set_applied(machine.applied_index(), machine.applied_term());
        log_store.set_descriptor(machine.descriptor().clone());
        // Only committed entries are applied, and the commit index is written lazily: a
        // crash may leave it behind the applied index, which raft-rs refuses.
        if log_store.hard_state().commit < machine.applied_index() {
            let mut hard_state = log_store.hard_state().clone();
            hard_state.commit = machine.applied_index();
            let mut batch = WriteBatch::new();
            log_store.set_hard_state(hard_state, &mut batch);
            engine.write(batch, Durability::Sync)?;
        }

        let raft_config = raft::Config {
            id: config.node_id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: machine.applied_index(),
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: 256 << 20,
            ..Default::default()
        };
        let logger = raft_logger::logger(config.node_id, range_id);
        let raw = RawNode::new(&raft_config, log_store, &logger)
            .map_err(|error| StorageError::Engine(format!("starting raft for range {range_id}: {error}")))?;
        let status = Arc::new(RangeStatus::default());
        status.revision.store(machine.revisions().current, Ordering::Release);
        status.last_write.store(machine.last_write(), Ordering::Release);
        status.resolved.store(machine.resolved(), Ordering::Release);
        let (live_keys, live_bytes) = machine.live();
        status.live_keys.store(live_keys, Ordering::Release);
        status.live_bytes.store(live_bytes, Ordering::Release);
        status.alarms.store(machine.alarm_bits(), Ordering::Release);
        status.auth_version.store(machine.auth_version(), Ordering::Release);
        status.applied_index.store(machine.applied_index(), Ordering::Release);
        // What the log says was committed before this start: a follower restarted into
        // an idle cluster may get no new hard state for a long time, and must not look
        // as if it had never caught up.
        status
            .commit_index
            .store(raw.raft.raft_log.committed, Ordering::Release);
        status.term.store(raw.raft.term, Ordering::Release);
        let (leader_watch, _) = watch::channel(0);
        let (revision_watch, _) = watch::channel(machine.revisions().current);
        let (compacted_watch, _) = watch::channel(machine.compacted_through());
        let machine_is_meta = machine.is_meta();
        let oracle_high_water = machine.oracle_high_water();
        Ok(Self {
            range_id,
            config,
            raw,
            machine,
            engine,
            ticks: 0,
            votes_withheld,
            proposals: ProposalTracker::new(node_id, incarnation),
            reads: ReadQueue::new(READ_WAITERS_MAX),
            staged_snapshots: HashMap::new(),
            status,
            leader_watch,
            revision_watch,
            compacted_watch: Arc::new(compacted_watch),
            installing: None,
            pending_install: None,
            resumed: None,
            sequencer: Sequencer::default(),
            oracle: machine_is_meta.then(|| Oracle::new(oracle_high_water)),
            timestamp_answers: Vec::new(),
            lease: LeaderLease::default(),
            created_ranges: Vec::new(),
            descriptor_changed: false,
        })
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn descriptor(&self) -> &RangeDescriptor {
        self.machine.descriptor()
    }

    /// Ranges created by splits applied here since the last call.
    pub fn take_created_ranges(&mut self) -> Vec<RangeDescriptor> {
        std::mem::take(&mut self.created_ranges)
    }

    /// The range's descriptor, if it changed since the last call.
    pub fn take_descriptor_change(&mut self) -> Option<RangeDescriptor> {
        std::mem::take(&mut self.descriptor_changed).then(|| self.machine.descriptor().clone())
    }

    /// After applying or installing: notes a descriptor the state machine changed.
    fn note_descriptor(&mut self) {
        let created = self.machine.take_created();
        let descriptor = self.machine.descriptor();
        if !created.is_empty() || descriptor != self.raw.store().descriptor() {
            self.raw.mut_store().set_descriptor(descriptor.clone());
            self.descriptor_changed = true;
        }
        self.created_ranges.extend(created);
    }

    pub fn status(&self) -> Arc<RangeStatus> {
        self.status.clone()
    }

    pub fn leader_changes(&self) -> watch::Receiver<u64> {
        self.leader_watch.subscribe()
    }

    pub fn compacted_changes(&self) -> watch::Receiver<i64> {
        self.compacted_watch.subscribe()
    }

    /// History removal for the background worker, after a compaction applied or when
    /// the range loaded with one unfinished.
    pub fn take_compaction(&mut self) -> Option<CompactionJob> {
        let revision = self.machine.take_compaction()?;
        Some(CompactionJob {
            range_id: self.range_id,
            span: snapshot::descriptor_span(self.machine.descriptor()),
            revision,
            done: self.compacted_watch.clone(),
        })
    }

    pub fn revision_changes(&self) -> watch::Receiver<i64> {
        self.revision_watch.subscribe()
    }

    fn publish_revision(&self) {
        let (keys, bytes) = self.machine.live();
        self.status
            .last_write
            .store(self.machine.last_write(), Ordering::Release);
        self.status.resolved.store(self.machine.resolved(), Ordering::Release);
        self.status.live_keys.store(keys, Ordering::Release);
        self.status.live_bytes.store(bytes, Ordering::Release);
        self.status.alarms.store(self.machine.alarm_bits(), Ordering::Release);
        self.status
            .auth_version
            .store(self.machine.auth_version(), Ordering::Release);
        let revision = self.machine.revisions().current;
        self.status.revision.store(revision, Ordering::Release);
        self.revision_watch.send_if_modified(|published| {
            let changed = *published != revision;
            *published = revision;
            changed
        });
    }

    pub fn range_id(&self) -> u64 {
        self.range_id
    }

    /// The range's fence applied on this rebuilt member: it votes and campaigns again.
    pub fn release_votes(&mut self) {
        if self.votes_withheld {
            tracing::info!(
                range = self.range_id,
                "rebuilt replica caught up past its fence: voting again"
            );
        }
        self.votes_withheld = false;
    }

    pub fn votes_withheld(&self) -> bool {
        self.votes_withheld
    }

    pub fn tick(&mut self, now: Instant) {
        self.ticks += 1;
        if !self.holds_ready() && !self.votes_withheld {
            self.raw.tick();
        }
        if self.raw.raft.state == StateRole::Leader {
            self.revoke_expired_leases(now);
        }
        for (_, responder) in self.sequencer.expire(self.ticks) {
            // Never proposed: certainly not applied, so the caller may try again.
            let _ = responder.send(Err(RangeError::Timeout));
        }
        self.proposals.expire(self.ticks);
        for waiter in self.reads.tick(self.ticks, self.config.read_retry_ticks) {
            self.refuse_read(waiter, RangeError::Timeout);
        }
    }

    /// Only the leader expires leases, by proposing their revocation through the log.
    fn revoke_expired_leases(&mut self, now: Instant) {
        let expired = self.machine.lessor_mut().take_expired(now, LEASE_REVOKES_PER_TICK);
        for id in expired {
            tracing::info!(
                range = self.range_id,
                lease = format!("{id:x}"),
                "lease expired; revoking"
            );
            // The meta range marks it; the lease task deletes its keys in every range.
            let command = super::encode_command(crate::proto::shoal::command::raft_command::Op::LeaseRevoking(
                crate::proto::shoal::command::LeaseRevoking { id },
            ));
            // Nobody waits for the outcome: a lost proposal is proposed again later.
            let (responder, _) = oneshot::channel();
            self.propose(command, responder);
        }
    }

    /// Answers a keep-alive or time-to-live question; only the leader knows deadlines.
    /// `Ok(None)`: no such lease (or it has expired and is being revoked). A keep-alive
    /// is answered once leadership is confirmed (see [`ReadWaiter::LeaseRenew`]).
    pub fn lease_query(&mut self, lease_id: i64, kind: LeaseQueryKind, now: Instant, responder: LeaseResponder) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            let _ = responder.send(Err(RangeError::NotLeader { leader: raft.leader_id }));
            return;
        }
        match kind {
            LeaseQueryKind::TimeToLive => {
                let _ = responder.send(Ok(self.machine.lessor().time(lease_id, now)));
            }
            LeaseQueryKind::Renew => {
                let waiter = ReadWaiter::LeaseRenew {
                    lease_id,
                    asked_at: now,
                    term: raft.term,
                    responder,
                };
                self.queue_read(waiter);
            }
        }
    }

    /// Starts handing leadership to `target` (etcd's MoveLeader); only the leader can.
    /// Whether it worked shows in the leader this replica reports next. With
    /// `only_if_ready` (the leader balancer) nothing happens, and `Ok(false)` says so,
    /// unless the move can finish at once: the target answered within the last
    /// election timeout and holds the whole log, and nothing proposed is still
    /// unapplied (no split or other command is in flight across the handover). A
    /// transfer to a node that cannot take over would stop this range's writes for an
    /// election timeout.
    pub fn transfer_leader(&mut self, target: u64, only_if_ready: bool) -> Result<bool, RangeError> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return Err(RangeError::NotLeader { leader: raft.leader_id });
        }
        let Some(progress) = raft.prs().get(target) else {
            return Err(RangeError::BadTransferee(target));
        };
        if only_if_ready {
            let last = raft.raft_log.last_index();
            let settled = raft.raft_log.committed == last && raft.raft_log.applied == last;
            let ready = progress.recent_active && progress.matched == last && settled;
            if !ready || raft.lead_transferee.is_some() || self.holds_ready() || target == self.config.node_id {
                return Ok(false);
            }
        }
        if target != self.config.node_id {
            tracing::info!(
                range = self.range_id,
                to = format!("{target:x}"),
                "transferring leadership"
            );
            self.raw.transfer_leader(target);
        }
        Ok(true)
    }

    pub fn step(&mut self, message: Message) {
        if self.holds_ready() {
            return; // the leader sends again; raft-rs takes nothing mid-install
        }
        if self.votes_withheld
            && message.get_msg_type() == MessageType::MsgHeartbeat
            && message.commit > self.raw.raft.raft_log.last_index()
        {
            self.ask_for_snapshot(&message);
            return;
        }
        if self.is_uninitialized()
            && matches!(
                message.get_msg_type(),
                MessageType::MsgAppend | MessageType::MsgHeartbeat
            )
        {
            // A replica added to a running range (a new member): the range's first
            // state was written at its creation, not logged, so replaying the log from
            // its start would miss it. It starts from a snapshot.
            self.ask_for_snapshot(&message);
            return;
        }
        if let Err(reason) = self.check_peer_message(&message) {
            tracing::warn!(
                range = self.range_id,
                from = format!("{:x}", message.from),
                kind = ?message.get_msg_type(),
                %reason,
                "dropped a raft message no correct peer sends"
            );
            return;
        }
        if self.votes_withheld
            && matches!(
                message.get_msg_type(),
                MessageType::MsgRequestVote | MessageType::MsgRequestPreVote | MessageType::MsgTimeoutNow
            )
        {
            return;
        }
        if self.oracle.is_some()
            && matches!(
                message.get_msg_type(),
                MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            )
            && self.ticks < self.config.election_ticks as u64
        {
            // A meta replica that just started may have acknowledged the leader's lease
            // heartbeat before it stopped and forgot (raft-rs keeps no such memory): it
            // votes for no one until an election timeout has passed, as it would not
            // have within the lease.
            return;
        }
        if message.get_msg_type() == MessageType::MsgPropose
            && self.is_sequenced()
            && self.raw.raft.state == StateRole::Leader
        {
            // A follower's proposals: they get revisions here like the leader's own.
            // Their proposers wait for the entries to apply, so a dropped one times out.
            for entry in message.entries.iter() {
                if entry.get_entry_type() == EntryType::EntryNormal && !entry.data.is_empty() {
                    let command = Unsequenced {
                        command: entry.data.to_vec(),
                        local: None,
                    };
                    if self.sequencer.push(command).is_err() {
                        tracing::warn!(range = self.range_id, "too many writes wait for revisions; dropped one");
                    }
                }
            }
            return;
        }
        if let Err(error) = self.raw.step(message) {
            tracing::debug!(range = self.range_id, %error, "raft refused a message");
        }
    }

    /// Holds nothing yet: no configuration and nothing applied (a replica opened on a
    /// member that joined, or for a range whose split this member missed).
    fn is_uninitialized(&self) -> bool {
        self.raw.raft.prs().conf().voters().ids().is_empty() && self.machine.applied_index() == 0
    }

    /// A rebuilt replica hears the leader commit past the end of its log: the leader
    /// still counts what this member acknowledged before it lost its storage (raft-rs never
    /// lowers a follower's match index), so it sends heartbeats, not entries. A rejection
    /// that asks for a snapshot is the one answer raft-rs takes from a follower it
    /// believes matched (an index above its match, so it is not taken as stale); the
    /// leader then sends a snapshot and probes from it.
    fn ask_for_snapshot(&mut self, heartbeat: &Message) {
        if heartbeat.term < self.raw.raft.term {
            return;
        }
        let mut reply = Message::default();
        reply.set_msg_type(MessageType::MsgAppendResponse);
        reply.to = heartbeat.from;
        reply.from = self.config.node_id;
        reply.term = heartbeat.term;
        reply.reject = true;
        reply.index = u64::MAX;
        reply.reject_hint = self.raw.raft.raft_log.last_index();
        reply.request_snapshot = heartbeat.commit.max(1);
        tracing::debug!(
            range = self.range_id,
            leader = format!("{:x}", heartbeat.from),
            commit = heartbeat.commit,
            "rebuilt replica asks the leader for a snapshot"
        );
        self.raw.raft.msgs.push(reply);
    }

    /// What raft-rs would take on trust and stop the process over (it treats a broken
    /// invariant as fatal): a sender outside the range, a heartbeat committing past the
    /// end of our log, entries that are not a run or that contradict committed ones.
    /// Correct peers never send these; a confused or hostile one must not crash us.
    fn check_peer_message(&self, message: &Message) -> Result<(), String> {
        let raft = &self.raw.raft;
        // An empty replica (opened for a range whose split this node missed) knows the
        // members from the range's descriptor until a snapshot gives it the group.
        let uninitialized =
            raft.prs().conf().voters().ids().is_empty() && self.machine.descriptor().replicas.contains(&message.from);
        if raft.prs().get(message.from).is_none() && !uninitialized {
            return Err("the sender is not a member of the range".into());
        }
        if message.term < raft.term {
            return Ok(()); // stale: raft-rs ignores it
        }
        let log = &raft.raft_log;
        match message.get_msg_type() {
            MessageType::MsgHeartbeat if message.commit > log.last_index() => Err(format!(
                "heartbeat commits {} past the log's end {}",
                message.commit,
                log.last_index()
            )),
            MessageType::MsgAppend => {
                if message.log_term > message.term {
                    return Err("previous entry's term is past the message's".into());
                }
                let mut previous_term = message.log_term;
                for (offset, entry) in message.entries.iter().enumerate() {
                    if entry.index != message.index + 1 + offset as u64 {
                        return Err(format!("entry {} out of sequence", entry.index));
                    }
                    if entry.term < previous_term || entry.term > message.term {
                        return Err(format!("entry {} has term {} out of order", entry.index, entry.term));
                    }
                    previous_term = entry.term;
                    if entry.index <= log.committed {
                        if let Ok(ours) = log.term(entry.index) {
                            if ours != 0 && ours != entry.term {
                                return Err(format!(
                                    "entry {} (term {}) contradicts the committed one (term {ours})",
                                    entry.index, entry.term
                                ));
                            }
                        }
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Stages snapshot data received from the leader, then steps the message that
    /// announces it. raft-rs decides whether to install it.
    pub fn step_snapshot(&mut self, message: Message, staged: PathBuf) {
        if self.holds_ready() {
            let _ = std::fs::remove_file(staged);
            return;
        }
        let metadata = message.get_snapshot().get_metadata();
        self.staged_snapshots.insert((metadata.index, metadata.term), staged);
        self.step(message);
    }

    /// Proposes `command` (an encoded `RaftCommand` without origin, request id and
    /// term). On a follower raft-rs hands the proposal to the leader inside the Raft
    /// stream; the follower answers once it applies the entry itself. A proposal is
    /// answered with its result, with `LeaderChanged` once it is known never to apply
    /// (another entry took its index, or an entry of a later term applied first), or
    /// with `Timeout`.
    pub fn propose(&mut self, mut command: Vec<u8>, responder: ProposalResponder) {
        let raft = &self.raw.raft;
        if self.holds_ready() {
            let _ = responder.send(Err(RangeError::NotLeader { leader: raft.leader_id }));
            return;
        }
        if raft.leader_id == raft::INVALID_ID || raft.lead_transferee.is_some() {
            let _ = responder.send(Err(RangeError::NotLeader { leader: raft.leader_id }));
            return;
        }
        let is_leader = raft.state == StateRole::Leader;
        let term = raft.term;
        let id = self.proposals.next_id();
        let deadline_tick = self.ticks + self.config.request_timeout_ticks;
        // Protobuf merges concatenated messages: appending the header fields fills them
        // in without decoding the command.
        let header = crate::proto::shoal::command::RaftCommand {
            origin_node: id.node,
            request_id: id.request,
            proposed_term: term,
            origin_incarnation: id.incarnation,
            revision: 0,
            epoch: 0,
            op: None,
        };
        prost::Message::encode(&header, &mut command).unwrap_or_else(|_| unreachable!("a Vec grows as needed"));
        if is_leader && self.is_sequenced() {
            let queued = Unsequenced {
                command,
                local: Some(((id, responder), deadline_tick)),
            };
            if let Err(refused) = self.sequencer.push(queued) {
                if let Some(((_, responder), _)) = refused.local {
                    let _ = responder.send(Err(RangeError::Timeout));
                }
            }
            return;
        }
        if let Err(error) = self.raw.propose(Vec::new(), command) {
            tracing::debug!(range = self.range_id, %error, "proposal dropped");
            let _ = responder.send(Err(RangeError::NotLeader {
                leader: self.raw.raft.leader_id,
            }));
            return;
        }
        let index = is_leader.then(|| self.raw.raft.raft_log.last_index());
        self.proposals.track(id, term, index, responder, deadline_tick);
    }

    /// Data ranges hand every command a revision from the oracle before proposing it.
    fn is_sequenced(&self) -> bool {
        !self.machine.is_meta()
    }

    /// How many revisions this range's leader should ask the oracle for now.
    pub fn timestamps_wanted(&mut self) -> Option<u32> {
        if self.raw.raft.state != StateRole::Leader || self.holds_ready() {
            return None;
        }
        self.sequencer.wanted(self.ticks)
    }

    /// The oracle's answer to this range's ask: `count` revisions from `first` on go to
    /// the waiting commands in order, which are proposed in that order.
    pub fn on_timestamps(&mut self, outcome: Result<(i64, u32), RangeError>) {
        let (first, count) = match outcome {
            Ok(grant) => grant,
            Err(error) => {
                tracing::debug!(range = self.range_id, %error, "no revisions from the oracle; asking again");
                self.sequencer.on_refused(self.ticks);
                return;
            }
        };
        for (queued, revision) in self.sequencer.on_grant(first, count) {
            let Unsequenced { mut command, local } = queued;
            let raft = &self.raw.raft;
            if raft.state != StateRole::Leader || self.holds_ready() {
                if let Some(((_, responder), _)) = local {
                    let _ = responder.send(Err(RangeError::NotLeader { leader: raft.leader_id }));
                }
                continue;
            }
            let stamp = crate::proto::shoal::command::RaftCommand {
                revision,
                ..Default::default()
            };
            prost::Message::encode(&stamp, &mut command).unwrap_or_else(|_| unreachable!("a Vec grows as needed"));
            let term = raft.term;
            if let Err(error) = self.raw.propose(Vec::new(), command) {
                tracing::debug!(range = self.range_id, %error, "proposal dropped");
                if let Some(((_, responder), _)) = local {
                    let _ = responder.send(Err(RangeError::NotLeader {
                        leader: self.raw.raft.leader_id,
                    }));
                }
                continue;
            }
            if let Some(((id, responder), deadline_tick)) = local {
                let index = self.raw.raft.raft_log.last_index();
                self.proposals.track(id, term, Some(index), responder, deadline_tick);
            }
        }
    }

    /// Meta range: a request for revisions. Answered (see
    /// [`Replica::take_timestamp_answers`]) once leadership is confirmed and the mark
    /// leaves room.
    pub fn request_timestamps(&mut self, waiter: TimestampWaiter, now: Instant) {
        let raft = &self.raw.raft;
        if self.oracle.is_none() || raft.state != StateRole::Leader {
            let leader = raft.leader_id;
            self.timestamp_answers
                .push((waiter, Err(RangeError::NotLeader { leader })));
            return;
        }
        let term = raft.term;
        if self.holds_lease(now) {
            // Arrived while no other leader can exist: confirmed.
            let leader = raft.leader_id;
            if let Some(oracle) = self.oracle.as_mut() {
                if let Err(refused) = oracle.confirmed(waiter) {
                    self.timestamp_answers
                        .push((refused, Err(RangeError::NotLeader { leader })));
                }
            }
            self.hand_out_timestamps();
            return;
        }
        self.queue_read(ReadWaiter::Timestamps { waiter, term });
    }

    fn holds_lease(&self, now: Instant) -> bool {
        let raft = &self.raw.raft;
        raft.state == StateRole::Leader
            && raft.lead_transferee.is_none()
            && self
                .lease
                .until
                .is_some_and(|(until, term)| term == raft.term && now < until)
    }

    /// The lease's length, counted from when a quorum-confirmed heartbeat was sent: a
    /// follower's refusal lasts `election_ticks` ticks from the one after the heartbeat,
    /// so at least `election_ticks - 1` tick intervals; of that, a share.
    fn lease_length(&self) -> std::time::Duration {
        let ticks = self.config.election_ticks.max(1) as u32;
        let refusal = self.config.election_timeout / ticks * (ticks - 1);
        refusal * LEASE_SHARE_NUMERATOR / LEASE_SHARE_DENOMINATOR
    }

    /// Meta range: answers for the store loop to deliver.
    pub fn take_timestamp_answers(&mut self) -> Vec<(TimestampWaiter, Result<i64, RangeError>)> {
        std::mem::take(&mut self.timestamp_answers)
    }

    /// Meta range leader: hands out what fits below the mark. Serving starts once an
    /// entry of this leader's term has applied. Safe anywhere: it proposes nothing.
    fn hand_out_timestamps(&mut self) {
        let Some(oracle) = self.oracle.as_mut() else {
            return;
        };
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return;
        }
        oracle.on_high_water(self.machine.oracle_high_water());
        if !oracle.is_serving() && self.machine.applied_term() == raft.term {
            oracle.serve();
        }
        for (waiter, first) in oracle.grants() {
            self.timestamp_answers.push((waiter, Ok(first)));
        }
    }

    /// Work the store loop asks for once per turn, outside the handling of a ready
    /// (raft-rs takes no proposal between a ready and its advance): the meta range's
    /// leader proposes a new oracle mark when the window runs low.
    pub fn maintain(&mut self, now: Instant) {
        if self.holds_ready() {
            return;
        }
        self.hand_out_timestamps();
        // The meta range's leader renews its lease while half of it is left.
        let raft = &self.raw.raft;
        if self.oracle.is_some() && raft.state == StateRole::Leader && !self.lease.renewing {
            let half = self.lease_length() / 2;
            let renew = self
                .lease
                .until
                .is_none_or(|(until, term)| term != raft.term || until.saturating_duration_since(now) < half);
            if renew {
                self.lease.renewing = true;
                let term = raft.term;
                self.queue_read(ReadWaiter::OracleLease { sent_at: now, term });
            }
        }
        let Some(oracle) = self.oracle.as_mut() else {
            return;
        };
        if let Some(to) = oracle.wanted_advance(self.ticks) {
            let command = super::encode_command(crate::proto::shoal::command::raft_command::Op::OracleAdvance(
                crate::proto::shoal::command::OracleAdvance { to },
            ));
            // Nobody waits: an advance that does not apply is proposed again.
            let (responder, _) = oneshot::channel();
            self.propose(command, responder);
        }
    }

    /// Queues a linearizable read: it is answered once this replica has applied
    /// everything the leader had committed when the read arrived.
    pub fn read(&mut self, responder: ReadResponder) {
        self.queue_read(ReadWaiter::Client(responder));
    }

    fn queue_read(&mut self, waiter: ReadWaiter) {
        let deadline_tick = self.ticks + self.config.request_timeout_ticks;
        if let Err(full) = self.reads.push(waiter, deadline_tick) {
            tracing::warn!(range = self.range_id, "read queue full; refusing a read");
            let leader = self.raw.raft.leader_id;
            self.refuse_read(full.0, RangeError::NotLeader { leader });
        }
    }

    /// Sends one read index request for all queued reads.
    pub fn flush_reads(&mut self) {
        if self.holds_ready() {
            return; // raft-rs takes nothing between a ready and its advance
        }
        if let Some(context) = self.reads.take_batch(self.ticks) {
            self.raw.read_index(context);
        }
    }

    fn refuse_read(&mut self, waiter: ReadWaiter, error: RangeError) {
        match waiter {
            ReadWaiter::Client(responder) => {
                let _ = responder.send(Err(error));
            }
            ReadWaiter::LeaseRenew { responder, .. } => {
                let _ = responder.send(Err(error));
            }
            ReadWaiter::Timestamps { waiter, .. } => {
                self.timestamp_answers.push((waiter, Err(error)));
            }
            ReadWaiter::OracleLease { .. } => self.lease.renewing = false,
        }
    }

    /// A read index this replica asked for is confirmed and applied.
    fn complete_read(&mut self, waiter: ReadWaiter) {
        match waiter {
            ReadWaiter::Client(responder) => {
                let _ = responder.send(Ok(()));
            }
            ReadWaiter::LeaseRenew {
                lease_id,
                asked_at,
                term,
                responder,
            } => {
                let raft = &self.raw.raft;
                let answer = if raft.state == StateRole::Leader && raft.term == term {
                    let lessor = self.machine.lessor_mut();
                    Ok(lessor
                        .renew(lease_id, asked_at)
                        .and_then(|_| lessor.time(lease_id, asked_at)))
                } else {
                    Err(RangeError::NotLeader { leader: raft.leader_id })
                };
                let _ = responder.send(answer);
            }
            ReadWaiter::Timestamps { waiter, term } => {
                let raft = &self.raw.raft;
                let leading = raft.state == StateRole::Leader && raft.term == term;
                let leader = raft.leader_id;
                let refused = match self.oracle.as_mut() {
                    Some(oracle) if leading => oracle.confirmed(waiter).err(),
                    _ => Some(waiter),
                };
                if let Some(waiter) = refused {
                    self.timestamp_answers
                        .push((waiter, Err(RangeError::NotLeader { leader })));
                }
                self.hand_out_timestamps();
            }
            ReadWaiter::OracleLease { sent_at, term } => {
                self.lease.renewing = false;
                let raft = &self.raw.raft;
                if raft.state == StateRole::Leader && raft.term == term {
                    let until = sent_at + self.lease_length();
                    if self.lease.until.is_none_or(|(known, _)| known < until) {
                        self.lease.until = Some((until, term));
                    }
                }
            }
        }
    }

    pub fn report_unreachable(&mut self, node_id: u64) {
        if !self.holds_ready() {
            self.raw.report_unreachable(node_id);
        }
    }

    pub fn report_snapshot(&mut self, to: u64, finished: bool) {
        if self.holds_ready() {
            return;
        }
        let status = if finished {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to, status);
    }

    pub fn has_ready(&self) -> bool {
        if self.installing.is_some() {
            return false;
        }
        self.resumed.is_some() || self.raw.has_ready()
    }

    pub fn is_installing(&self) -> bool {
        self.installing.is_some()
    }

    /// A ready is out (being installed, or installed and not yet advanced): raft-rs must
    /// take no input until it is advanced, or what that input makes it send would come
    /// out of the advance, which raft-rs refuses on a follower.
    fn holds_ready(&self) -> bool {
        self.installing.is_some() || self.resumed.is_some()
    }

    /// Phase 1 of handling raft-rs's output: sends what may go before the log is on
    /// disk, applies committed entries, and stages new log entries and hard state into
    /// `log_batch`. Returns the ready to finish after the batch is committed, and
    /// whether that commit must be synced. A ready that carries a snapshot comes back
    /// as an install for the background worker instead: the replica holds the ready,
    /// takes no input raft-rs would need, and goes on with it in [`finish_install`].
    pub fn collect_ready(
        &mut self,
        now: Instant,
        outbox: &mut Outbox,
        log_batch: &mut WriteBatch,
    ) -> Result<Collected, StorageError> {
        let mut ready = match self.resumed.take() {
            Some(ready) => ready,
            None => {
                let mut ready = self.raw.ready();
                if let Some(soft_state) = ready.ss() {
                    self.on_soft_state(soft_state.leader_id, soft_state.raft_state, now);
                }
                for message in ready.take_messages() {
                    outbox.push((self.range_id, message));
                }
                if !ready.snapshot().is_empty() {
                    let job = self.begin_install(ready.snapshot().clone())?;
                    self.installing = Some(ready);
                    return Ok(Collected::Install(job));
                }
                ready
            }
        };
        if !ready.read_states().is_empty() {
            for state in ready.take_read_states() {
                self.on_read_state(&state.request_ctx, state.index);
            }
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(&committed)?;
        self.raw.mut_store().append(ready.entries(), log_batch);
        if let Some(hard_state) = ready.hs() {
            self.status.term.store(hard_state.term, Ordering::Release);
            self.status.commit_index.store(hard_state.commit, Ordering::Release);
            self.raw.mut_store().set_hard_state(hard_state.clone(), log_batch);
        }
        let must_sync = ready.must_sync();
        Ok(Collected::Ready(ready, must_sync))
    }

    /// Phase 2: the staged log writes are on disk.
    pub fn finish_ready(&mut self, mut ready: Ready, outbox: &mut Outbox) -> Result<(), StorageError> {
        for message in ready.take_persisted_messages() {
            outbox.push((self.range_id, message));
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.status.commit_index.store(commit, Ordering::Release);
        }
        for message in light.take_messages() {
            outbox.push((self.range_id, message));
        }
        let committed = light.take_committed_entries();
        self.apply_entries(&committed)?;
        self.raw.advance_apply();
        self.maybe_truncate_log()
    }

    fn on_soft_state(&mut self, leader: u64, role: StateRole, now: Instant) {
        let previous = self.status.leader.swap(leader, Ordering::AcqRel);
        let is_leader = role == StateRole::Leader;
        let was_leader = self.status.is_leader.swap(is_leader, Ordering::AcqRel);
        if is_leader && !was_leader {
            // The previous leader's renewals are unknown here: restart every lease's
            // deadline rather than risk expiring one that was kept alive.
            self.machine.lessor_mut().promote(now);
        }
        if previous != leader {
            if leader != 0 {
                metrics::counter!("etcd_server_leader_changes_seen_total").increment(1);
            }
            tracing::info!(
                range = self.range_id,
                leader = format!("{leader:x}"),
                ?role,
                "leader changed"
            );
            self.leader_watch.send_replace(leader);
        }
        if !is_leader {
            for queued in self.sequencer.drain() {
                if let Some(((_, responder), _)) = queued.local {
                    let _ = responder.send(Err(RangeError::NotLeader { leader }));
                }
            }
            self.lease = LeaderLease::default();
            if let Some(oracle) = self.oracle.as_mut() {
                for waiter in oracle.stop() {
                    self.timestamp_answers
                        .push((waiter, Err(RangeError::NotLeader { leader })));
                }
            }
        }
        if !is_leader && self.proposals.has_indexed() {
            // Entries this node proposed as leader may still commit under the new leader;
            // whether they did is learned when their index applies (or they time out).
            tracing::debug!(
                range = self.range_id,
                pending = self.proposals.len(),
                "lost leadership with proposals in flight"
            );
        }
    }

    fn on_read_state(&mut self, context: &[u8], index: u64) {
        for waiter in self.reads.on_read_state(context, index, self.machine.applied_index()) {
            self.complete_read(waiter);
        }
    }

    /// Applies committed entries as one batch: clients are answered only once the batch
    /// (data and apply state) is in the engine.
    fn apply_entries(&mut self, entries: &[raft::eraftpb::Entry]) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut pending = ApplyBatch::default();
        let mut answers = Vec::with_capacity(entries.len());
        let term_before = self.machine.applied_term();
        for entry in entries {
            if entry.index <= self.machine.applied_index() {
                continue; // already applied before a restart; raft-rs may hand it again
            }
            let applied = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.machine.apply_noop(entry.index, entry.term);
                    None
                }
                EntryType::EntryNormal => {
                    metrics::counter!("etcd_server_proposals_applied_total").increment(1);
                    self.machine
                        .apply_command(entry.index, entry.term, &entry.data, &mut pending)?
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(entry, &mut pending)?;
                    None
                }
            };
            answers.push((entry.index, applied));
            self.raw.mut_store().set_applied(entry.index, entry.term);
        }
        self.machine.flush(&mut pending)?;
        self.note_descriptor();
        // Before any proposer hears back: a caller that changed an alarm or the auth
        // store must see its change in the status on its next call.
        self.status.alarms.store(self.machine.alarm_bits(), Ordering::Release);
        self.status
            .auth_version
            .store(self.machine.auth_version(), Ordering::Release);
        for (index, applied) in answers {
            self.proposals.on_applied(index, applied);
        }
        let term_now = self.machine.applied_term();
        if term_now > term_before {
            self.proposals.on_term_applied(term_now);
        }
        metrics::histogram!("shoal_apply_duration_seconds").record(started.elapsed().as_secs_f64());
        let applied = self.machine.applied_index();
        self.status.applied_index.store(applied, Ordering::Release);
        self.publish_revision();
        metrics::counter!("etcd_server_proposals_committed_total")
            .absolute(self.status.commit_index.load(Ordering::Acquire));
        for waiter in self.reads.on_applied(applied) {
            self.complete_read(waiter);
        }
        if self.oracle.is_some() {
            self.hand_out_timestamps();
        }
        Ok(())
    }

    /// Applies a configuration change: raft-rs's new configuration, this range's
    /// descriptor (replicas, conf version) and the apply state go into one batch.
    fn apply_conf_change(
        &mut self,
        entry: &raft::eraftpb::Entry,
        pending: &mut super::state_machine::ApplyBatch,
    ) -> Result<(), StorageError> {
        let conf_state = if entry.get_entry_type() == EntryType::EntryConfChange {
            ConfChange::parse_from_bytes(&entry.data)
                .map_err(|e| e.to_string())
                .and_then(|change| self.raw.apply_conf_change(&change).map_err(|e| e.to_string()))
        } else {
            ConfChangeV2::parse_from_bytes(&entry.data)
                .map_err(|e| e.to_string())
                .and_then(|change| self.raw.apply_conf_change(&change).map_err(|e| e.to_string()))
        };
        match conf_state {
            Ok(conf_state) => {
                tracing::info!(
                    range = self.range_id,
                    index = entry.index,
                    voters = ?conf_state.voters,
                    learners = ?conf_state.learners,
                    "configuration changed"
                );
                self.machine.apply_conf_change(
                    entry.index,
                    entry.term,
                    &conf_state.voters,
                    &conf_state.learners,
                    pending,
                );
                self.raw.mut_store().set_conf_state(conf_state, pending.batch_mut());
            }
            Err(error) => {
                tracing::error!(range = self.range_id, index = entry.index, %error, "skipping bad conf change");
                self.machine.apply_noop(entry.index, entry.term);
            }
        }
        Ok(())
    }

    /// The leader's view of its group, for [`super::membership::plan`].
    fn group_view(&self) -> super::membership::GroupView {
        let raft = &self.raw.raft;
        let conf = raft.prs().conf();
        let mut voters: Vec<u64> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<u64> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        let committed = raft.raft_log.committed;
        let mut active = Vec::new();
        let mut caught_up = Vec::new();
        for (&id, progress) in raft.prs().iter() {
            if id == raft.id || progress.recent_active {
                active.push(id);
            }
            // Under steady writes a learner's acknowledgement trails the commit index by
            // what is in flight: within a short run of entries counts as caught up (etcd
            // promotes at 90% of the leader's progress).
            if id == raft.id || progress.matched + super::membership::CATCH_UP_SLACK >= committed {
                caught_up.push(id);
            }
        }
        super::membership::GroupView {
            leader: raft.id,
            voters,
            learners,
            active,
            caught_up,
            changing: raft.has_pending_conf() || raft.lead_transferee.is_some(),
        }
    }

    /// On the leader: takes the next step that makes the range's replicas follow the
    /// cluster's membership (see `range::membership`).
    pub fn follow_membership(&mut self, record: &crate::proto::shoal::state::PublishedMembers) {
        if !self.is_leader() || self.holds_ready() || self.votes_withheld {
            return;
        }
        let Some(step) = super::membership::plan(&self.group_view(), record) else {
            return;
        };
        use raft::eraftpb::ConfChangeType;
        let label = match step {
            super::membership::Step::AddLearner(_) => "add_learner",
            super::membership::Step::Promote(_) => "promote",
            super::membership::Step::Remove(_) => "remove",
            super::membership::Step::TransferLeader(_) => "hand_over",
        };
        metrics::counter!("shoal_replica_changes_total", "step" => label).increment(1);
        let (kind, node) = match step {
            super::membership::Step::TransferLeader(target) => {
                tracing::info!(
                    range = self.range_id,
                    to = format!("{target:x}"),
                    "this member was removed: handing the range over"
                );
                self.raw.transfer_leader(target);
                return;
            }
            super::membership::Step::AddLearner(id) => (ConfChangeType::AddLearnerNode, id),
            super::membership::Step::Promote(id) => (ConfChangeType::AddNode, id),
            super::membership::Step::Remove(id) => (ConfChangeType::RemoveNode, id),
        };
        let mut change = ConfChangeV2::default();
        let mut single = raft::eraftpb::ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = node;
        change.mut_changes().push(single);
        tracing::info!(range = self.range_id, member = format!("{node:x}"), change = ?kind, "proposing a configuration change");
        if let Err(error) = self.raw.propose_conf_change(Vec::new(), change) {
            tracing::warn!(range = self.range_id, %error, "configuration change not proposed");
        }
    }

    /// Stores the install marker (a crash from here on finishes the install at the next
    /// start) and returns the data work for the background worker.
    fn begin_install(&mut self, snapshot: raft::eraftpb::Snapshot) -> Result<InstallJob, StorageError> {
        let metadata = snapshot.get_metadata().clone();
        let Some(path) = self.staged_snapshots.remove(&(metadata.index, metadata.term)) else {
            // raft-rs only accepts snapshots this replica stepped with staged data.
            panic!(
                "range {}: snapshot at {} accepted without staged data",
                self.range_id, metadata.index
            );
        };
        let install = SnapshotInstall {
            index: metadata.index,
            term: metadata.term,
            conf_state: encode_conf_state(metadata.get_conf_state()).into(),
            staged_file: path.to_string_lossy().into_owned(),
        };
        let mut marker = WriteBatch::new();
        self.raw.mut_store().begin_install(&install, &mut marker);
        self.engine.write(marker, Durability::Sync)?;
        self.status.begin_install();
        self.pending_install = Some((install, metadata, Instant::now()));
        Ok(InstallJob {
            range_id: self.range_id,
            descriptor: self.machine.descriptor().clone(),
            staged: path,
        })
    }

    /// The worker wrote the snapshot's data (`records` records): commit the install
    /// with the log's new start, reload the state machine, and go on with the ready
    /// that carried the snapshot.
    pub fn finish_install(&mut self, records: u64) -> Result<(), StorageError> {
        let Some(ready) = self.installing.take() else {
            return Ok(());
        };
        let Some((install, metadata, started)) = self.pending_install.take() else {
            unreachable!("an install in progress has its metadata");
        };
        let mut batch = WriteBatch::new();
        self.raw.mut_store().install_snapshot(&metadata, &mut batch);
        self.engine.write(batch, Durability::Sync)?;
        check_installed(&mut self.machine, &install)?;
        let _ = std::fs::remove_file(&install.staged_file);
        for (_, stale) in self.staged_snapshots.drain() {
            let _ = std::fs::remove_file(stale);
        }
        self.proposals.on_snapshot(metadata.index, metadata.term);
        self.status.applied_index.store(metadata.index, Ordering::Release);
        self.status.end_install();
        self.note_descriptor();
        self.publish_revision();
        self.resumed = Some(ready);
        tracing::info!(
            range = self.range_id,
            index = metadata.index,
            records,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "installed snapshot"
        );
        Ok(())
    }

    fn maybe_truncate_log(&mut self) -> Result<(), StorageError> {
        let store = self.raw.store();
        let applied = self.machine.applied_index();
        if applied.saturating_sub(store.truncated_index()) < self.config.log_compaction_entries {
            return Ok(());
        }
        let keep_from = applied.saturating_sub(self.config.log_catchup_entries);
        if keep_from <= store.truncated_index() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        self.raw.mut_store().truncate_to(keep_from, &mut batch)?;
        // Synced: the truncation must not outlive, on disk, the applied state it relies on.
        self.engine.write(batch, Durability::Sync)?;
        tracing::debug!(
            range = self.range_id,
            truncated_to = keep_from,
            applied,
            "compacted raft log"
        );
        Ok(())
    }

    /// Fails every waiting client; the node is stopping.
    pub fn shutdown(&mut self) {
        self.proposals.shutdown();
        for waiter in self.reads.drain() {
            self.refuse_read(waiter, RangeError::Stopped);
        }
    }

    /// Whether a message of this type carries snapshot data that must be streamed.
    pub fn is_snapshot_message(message: &Message) -> bool {
        message.get_msg_type() == MessageType::MsgSnapshot
    }

    pub fn machine(&self) -> &StateMachine {
        &self.machine
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::shoal::command::{raft_command, RaftCommand};
    use crate::proto::shoal::kv::op;
    use crate::range::background::BackgroundWorker;
    use crate::range::ops;
    use crate::storage::{FjallEngine, KeyRange, ReadView, Space};
    use prost::Message as _;

    fn config() -> ReplicaConfig {
        ReplicaConfig {
            node_id: 1,
            incarnation: 1,
            election_ticks: 10,
            election_timeout: std::time::Duration::from_secs(1),
            heartbeat_ticks: 1,
            request_timeout_ticks: 100,
            read_retry_ticks: 2,
            log_compaction_entries: 1000,
            log_catchup_entries: 100,
            rebuilding: false,
        }
    }

    /// A data range: its commands get revisions from the oracle, which the tests play.
    fn descriptor() -> RangeDescriptor {
        RangeDescriptor {
            id: RANGE,
            ..Default::default()
        }
    }

    const RANGE: u64 = super::super::FIRST_DATA_RANGE_ID;

    fn bootstrap(voters: Vec<u64>) -> Option<Bootstrap> {
        Some(Bootstrap {
            voters,
            members: Vec::new(),
            data_ranges: Vec::new(),
        })
    }

    /// Plays the oracle: gives the leader the revisions it asks for, from `next` on.
    fn grant(replica: &mut Replica, next: &mut i64) {
        if let Some(count) = replica.timestamps_wanted() {
            replica.on_timestamps(Ok((*next, count)));
            *next += i64::from(count);
        }
    }

    fn open(engine: &Arc<dyn Engine>) -> Replica {
        open_as(engine, 1)
    }

    fn open_as(engine: &Arc<dyn Engine>, incarnation: u64) -> Replica {
        Replica::open(
            RANGE,
            ReplicaConfig {
                incarnation,
                ..config()
            },
            engine.clone(),
            Arc::new(SnapshotRegistry::default()),
            descriptor(),
            bootstrap(vec![1]),
        )
        .unwrap()
    }

    fn all(view: &dyn ReadView, space: Space) -> Vec<(Vec<u8>, Vec<u8>)> {
        view.scan(space, &KeyRange::new(Vec::new(), None), false)
            .map(Result::unwrap)
            .collect()
    }

    /// A source range with ten applied puts (index 10, term 2), streamed to a staged
    /// file: (its folder, its engine, the staged file's folder, the staged file).
    fn staged_source() -> (tempfile::TempDir, Arc<dyn Engine>, tempfile::TempDir, PathBuf) {
        let source_dir = tempfile::tempdir().unwrap();
        let source: Arc<dyn Engine> = Arc::new(FjallEngine::open(source_dir.path()).unwrap());
        let mut machine = StateMachine::load(RANGE, source.clone(), descriptor()).unwrap();
        let mut pending = ApplyBatch::default();
        for index in 1..=10u64 {
            let command = RaftCommand {
                origin_node: 1,
                request_id: index,
                proposed_term: 2,
                origin_incarnation: 1,
                revision: index as i64 + 1,
                epoch: 0,
                op: Some(raft_command::Op::Txn(ops::single(op::Op::Put(ops::put(
                    format!("key{index}").into_bytes(),
                    b"from the snapshot".to_vec(),
                ))))),
            };
            machine
                .apply_command(index, 2, &command.encode_to_vec(), &mut pending)
                .unwrap();
        }
        machine.flush(&mut pending).unwrap();
        let staged_dir = tempfile::tempdir().unwrap();
        let staged = staged_dir.path().join("range-1.snap");
        let mut stream = Vec::new();
        snapshot::stream_range(source.snapshot().as_ref(), &descriptor(), &mut |chunk| {
            stream.extend_from_slice(&chunk);
            true
        })
        .unwrap();
        std::fs::write(&staged, &stream).unwrap();
        (source_dir, source, staged_dir, staged)
    }

    /// A snapshot from the leader goes to the background worker: meanwhile the replica
    /// takes nothing raft-rs would need and refuses proposals; once the worker is done it
    /// commits the install and carries on with the ready that brought the snapshot.
    #[test]
    fn a_snapshot_is_installed_by_the_worker_while_the_replica_waits() {
        let (_source_dir, source, _staged_dir, staged) = staged_source();
        let target_dir = tempfile::tempdir().unwrap();
        let target: Arc<dyn Engine> = Arc::new(FjallEngine::open(target_dir.path()).unwrap());
        let mut replica = Replica::open(
            RANGE,
            ReplicaConfig { node_id: 2, ..config() },
            target.clone(),
            Arc::new(SnapshotRegistry::default()),
            descriptor(),
            bootstrap(vec![1, 2]),
        )
        .unwrap();
        let now = Instant::now();
        drive(&mut replica, &target, now);
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgSnapshot);
        message.from = 1;
        message.to = 2;
        message.term = 2;
        let mut snapshot = raft::eraftpb::Snapshot::default();
        snapshot.mut_metadata().index = 10;
        snapshot.mut_metadata().term = 2;
        snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2];
        message.set_snapshot(snapshot);
        replica.step_snapshot(message, staged.clone());

        let mut outbox = Vec::new();
        let mut log_batch = WriteBatch::new();
        let job = match replica.collect_ready(now, &mut outbox, &mut log_batch).unwrap() {
            Collected::Install(job) => job,
            Collected::Ready(..) => panic!("the snapshot should go to the worker"),
        };
        assert!(replica.is_installing() && !replica.has_ready());
        assert!(replica.status().is_installing());
        assert!(replica.status().whole_view(target.as_ref()).is_none());
        let (refused, mut answer) = oneshot::channel();
        replica.propose(put_command("meanwhile"), refused);
        assert!(matches!(answer.try_recv(), Ok(Err(RangeError::NotLeader { .. }))));
        replica.tick(now); // ticks count on, raft-rs is not touched

        let worker = BackgroundWorker::start(target.clone()).unwrap();
        worker.install(job);
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let done = loop {
            if let Some(done) = worker.take_finished_installs().pop() {
                break done;
            }
            assert!(Instant::now() < deadline, "the worker did not finish the install");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        replica.finish_install(done.outcome.unwrap()).unwrap();
        assert!(!replica.status().is_installing());
        assert!(replica.status().whole_view(target.as_ref()).is_some());
        assert!(replica.has_ready(), "the held ready goes on");
        // A heartbeat between the install and the held ready's advance is not stepped:
        // its answer would come out of the advance, which raft-rs refuses on a follower.
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        heartbeat.from = 1;
        heartbeat.to = 2;
        heartbeat.term = 2;
        replica.step(heartbeat);
        drive(&mut replica, &target, now);
        assert_eq!(replica.machine().applied_index(), 10);
        assert!(!staged.exists(), "the staged file is removed once installed");
        let target_view = target.snapshot();
        let source_view = source.snapshot();
        for space in [Space::KvLatest, Space::KvHistory, Space::KvChanges] {
            assert_eq!(
                all(target_view.as_ref(), space),
                all(source_view.as_ref(), space),
                "{space:?}"
            );
        }
    }

    /// A crash in the middle of installing a snapshot leaves a marker; the next start
    /// finishes the install from the staged file, so the range is never half replaced.
    #[test]
    fn an_interrupted_snapshot_install_is_finished_at_start() {
        let (_source_dir, source, _staged_dir, staged) = staged_source();

        // A target with other data, whose install of that file stopped half way.
        let target_dir = tempfile::tempdir().unwrap();
        let target: Arc<dyn Engine> = Arc::new(FjallEngine::open(target_dir.path()).unwrap());
        {
            let replica = open(&target);
            let mut stale = WriteBatch::new();
            stale.put(Space::KvLatest, b"\x01stale".to_vec(), b"x".to_vec());
            target.write(stale, Durability::Sync).unwrap();
            let conf_state = ConfState {
                voters: vec![1],
                ..Default::default()
            };
            let install = SnapshotInstall {
                index: 10,
                term: 2,
                conf_state: encode_conf_state(&conf_state).into(),
                staged_file: staged.to_string_lossy().into_owned(),
            };
            let mut marker = WriteBatch::new();
            replica.raw.store().begin_install(&install, &mut marker);
            target.write(marker, Durability::Sync).unwrap();
            // Half of the install: the stale key is gone, nothing new is there yet.
            let mut half = WriteBatch::new();
            half.delete(Space::KvLatest, b"\x01stale".to_vec());
            target.write(half, Durability::Sync).unwrap();
        }

        let replica = open(&target);
        assert_eq!(replica.machine().applied_index(), 10);
        assert_eq!(replica.raw.store().first_index(), 11);
        assert!(
            replica.raw.store().pending_install().unwrap().is_none(),
            "the marker is gone"
        );
        assert!(!staged.exists(), "the staged file is removed once installed");
        let target_view = target.snapshot();
        let source_view = source.snapshot();
        for space in [Space::KvLatest, Space::KvHistory, Space::KvChanges] {
            assert_eq!(
                all(target_view.as_ref(), space),
                all(source_view.as_ref(), space),
                "{space:?}"
            );
        }
    }

    fn put_command(key: &str) -> Vec<u8> {
        super::super::encode_command(raft_command::Op::Txn(ops::single(op::Op::Put(ops::put(
            key.as_bytes().to_vec(),
            b"v".to_vec(),
        )))))
    }

    /// Runs readies to completion, committing each one's log writes as the store does.
    fn drive(replica: &mut Replica, engine: &Arc<dyn Engine>, now: Instant) {
        while replica.has_ready() {
            let mut outbox = Vec::new();
            let mut log_batch = WriteBatch::new();
            let Collected::Ready(ready, _) = replica.collect_ready(now, &mut outbox, &mut log_batch).unwrap() else {
                panic!("no snapshot expected here");
            };
            engine.write(log_batch, Durability::Sync).unwrap();
            replica.finish_ready(ready, &mut outbox).unwrap();
        }
    }

    fn revision_of(answer: Result<CommandResult, RangeError>) -> i64 {
        let applied = answer.expect("the proposal applied");
        match applied.result {
            Some(crate::proto::shoal::command::command_result::Result::Txn(_)) => applied.revision,
            other => panic!("not a put result: {other:?}"),
        }
    }

    /// Entry X is on disk but not applied when the node crashes; after the restart the
    /// node proposes Y before it applies X. X's id (node, incarnation 1, request 1) must
    /// not answer Y (node, incarnation 2, request 1): Y gets its own revision, once.
    #[test]
    fn an_entry_from_before_a_crash_never_answers_a_proposal_made_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(FjallEngine::open(dir.path()).unwrap());
        let now = Instant::now();
        let mut replica = open_as(&engine, 1);
        for _ in 0..100 {
            if replica.raw.raft.state == StateRole::Leader {
                break;
            }
            replica.tick(now);
            drive(&mut replica, &engine, now);
        }
        assert_eq!(replica.raw.raft.state, StateRole::Leader);
        let mut next_revision = 2;
        let (x_sender, mut x_answer) = oneshot::channel();
        replica.propose(put_command("x"), x_sender);
        grant(&mut replica, &mut next_revision);
        // The crash: X's log entry is durable, nothing after that ran.
        let mut outbox = Vec::new();
        let mut log_batch = WriteBatch::new();
        let Collected::Ready(ready, _) = replica.collect_ready(now, &mut outbox, &mut log_batch).unwrap() else {
            panic!("no snapshot expected here");
        };
        assert_eq!(ready.entries().len(), 1, "X is appended");
        engine.write(log_batch, Durability::Sync).unwrap();
        drop(ready);
        drop(replica);
        assert!(
            !matches!(x_answer.try_recv(), Ok(Ok(_))),
            "X never applied before the crash"
        );
        let revision_before = {
            let machine = StateMachine::load(RANGE, engine.clone(), descriptor()).unwrap();
            machine.revisions().current
        };

        let mut replica = open_as(&engine, 2);
        for _ in 0..100 {
            if replica.raw.raft.state == StateRole::Leader {
                break;
            }
            replica.tick(now);
        }
        assert_eq!(
            replica.raw.raft.state,
            StateRole::Leader,
            "a single voter elects itself"
        );
        // Y is proposed before the readies that commit and apply X are handled.
        let (y_sender, mut y_answer) = oneshot::channel();
        replica.propose(put_command("y"), y_sender);
        grant(&mut replica, &mut next_revision);
        drive(&mut replica, &engine, now);

        let y_revision = revision_of(y_answer.try_recv().expect("Y is answered"));
        assert_eq!(
            y_revision,
            revision_before + 2,
            "Y's revision is its own, after X's (X took {})",
            revision_before + 1
        );
        assert!(y_answer.try_recv().is_err(), "answered once");
        let machine = replica.machine();
        assert_eq!(
            machine.revisions().current,
            revision_before + 2,
            "both X and Y applied, once each"
        );
    }

    fn open_meta(engine: &Arc<dyn Engine>) -> Replica {
        Replica::open(
            super::super::META_RANGE_ID,
            config(),
            engine.clone(),
            Arc::new(SnapshotRegistry::default()),
            super::super::meta_range(vec![1]),
            Some(Bootstrap {
                voters: vec![1],
                members: Vec::new(),
                data_ranges: vec![super::super::first_data_range(vec![1])],
            }),
        )
        .unwrap()
    }

    /// Runs the meta replica's turns (maintenance, reads, readies) until `done` holds.
    fn turn_meta_until(replica: &mut Replica, engine: &Arc<dyn Engine>, now: Instant, done: impl Fn(&Replica) -> bool) {
        for _ in 0..200 {
            if done(replica) {
                return;
            }
            replica.tick(now);
            replica.maintain(now);
            replica.flush_reads();
            drive(replica, engine, now);
        }
        panic!("the meta replica did not get there");
    }

    /// The oracle serves from the mark it persisted, one request at a time in order, and
    /// a leader holding its lease answers at once, where one without asks for a read
    /// index first.
    #[test]
    fn the_meta_leader_hands_out_revisions_and_answers_from_its_lease() {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(FjallEngine::open(dir.path()).unwrap());
        let now = Instant::now();
        let mut meta = open_meta(&engine);
        turn_meta_until(&mut meta, &engine, now, |meta| {
            meta.holds_lease(now) && meta.oracle.as_ref().is_some_and(Oracle::is_serving)
        });
        turn_meta_until(&mut meta, &engine, now, |meta| meta.machine.oracle_high_water() > 2);

        meta.request_timestamps(
            TimestampWaiter::Local {
                range_id: RANGE,
                count: 3,
            },
            now,
        );
        let answers = meta.take_timestamp_answers();
        assert_eq!(answers.len(), 1, "answered at once under the lease");
        assert_eq!(
            answers[0].1.as_ref().ok(),
            Some(&2),
            "the first revision of a new cluster"
        );
        meta.request_timestamps(
            TimestampWaiter::Local {
                range_id: RANGE,
                count: 1,
            },
            now,
        );
        assert_eq!(meta.take_timestamp_answers()[0].1.as_ref().ok(), Some(&5));

        // Past the lease (and before its renewal), a request waits for a read index.
        let later = now + std::time::Duration::from_secs(5);
        meta.request_timestamps(
            TimestampWaiter::Local {
                range_id: RANGE,
                count: 1,
            },
            later,
        );
        assert!(
            meta.take_timestamp_answers().is_empty(),
            "no answer before a read index"
        );
        meta.flush_reads();
        drive(&mut meta, &engine, later);
        let answers = meta.take_timestamp_answers();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].1.as_ref().ok(), Some(&6));

        // A restart starts at the persisted mark, above everything handed out.
        let mark = meta.machine.oracle_high_water();
        drop(meta);
        let mut meta = Replica::open(
            super::super::META_RANGE_ID,
            ReplicaConfig {
                incarnation: 2,
                ..config()
            },
            engine.clone(),
            Arc::new(SnapshotRegistry::default()),
            super::super::meta_range(vec![1]),
            None,
        )
        .unwrap();
        turn_meta_until(&mut meta, &engine, now, |meta| {
            meta.holds_lease(now) && meta.machine.oracle_high_water() > mark
        });
        meta.request_timestamps(
            TimestampWaiter::Local {
                range_id: RANGE,
                count: 1,
            },
            now,
        );
        let answers = meta.take_timestamp_answers();
        assert_eq!(answers[0].1.as_ref().ok(), Some(&mark));
    }
}
