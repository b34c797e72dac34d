//! Transactions wherever their keys live. A write whose keys one range holds goes
//! straight to it (one Raft round); one whose keys span ranges runs a two-phase commit
//! with the first range (in key order) as primary:
//!
//! 1. prepare every range (a lock on its keys, its part of the compares evaluated and
//!    its operations checked; a range already locked refuses, and this transaction
//!    rolls back what it locked and starts again),
//! 2. decide the path from the compares' parts, refuse the whole if an operation on it
//!    cannot run,
//! 3. take a commit revision from the oracle, commit the primary (the commit point: it
//!    records the outcome), then the others, and merge their partial results.
//!
//! A command or read meeting another transaction's lock waits for it; a lock older than
//! `lock_ttl` belongs to a coordinator that failed, and is resolved: rolled forward if
//! its primary recorded a commit, else the primary is rolled back first (so a late
//! commit is refused) and then the lock. The resolver task does the same for every lock
//! on the ranges this node leads, so a failed coordinator never blocks keys (or
//! watches) for long.

pub mod admission;
pub mod leases;
mod reads;
pub use reads::Pages;
pub mod resolver;

use crate::proto::shoal::command::{
    command_result, raft_command, CommandResult, Commit, Prepare, PrepareResult, RaftCommand, Rollback,
};
use crate::proto::shoal::kv::{Span, Txn, TxnResult};
use crate::range::kv::KvError;
use crate::range::reader::PinnedRange;
use crate::range::snapshot::descriptor_span;
use crate::range::state_machine::refusal_from_proto;
use crate::range::{encode_command, ops, twophase};
use crate::router::{RouteError, Router};
use crate::storage::KeyRange;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How long a command or read waits before looking at a lock again.
const LOCK_POLL: Duration = Duration::from_millis(5);
/// A transaction that lost a race for a lock starts again after about this long.
const CONFLICT_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error(transparent)]
    Route(#[from] RouteError),
    /// Refused by a range (etcd's errors: compacted, lease not found, ...).
    #[error(transparent)]
    Refused(#[from] KvError),
    /// A write that adds data while the NOSPACE alarm is raised (see `admission`).
    #[error("the space quota is exceeded (NOSPACE alarm)")]
    NoSpace,
    /// A write while the CORRUPT alarm is raised.
    #[error("the cluster is corrupt (CORRUPT alarm)")]
    Corrupt,
    /// A client write on a member whose disk is below its reserve: another member
    /// takes it.
    #[error("no space left on this member's disk (below --storage-reserve-bytes); another member takes writes")]
    DiskFull,
}

/// Where a fault test makes the coordinating process exit, as a crash would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPoint {
    AfterPrepare,
    AfterPrimaryCommit,
}

pub struct Transactions {
    router: Arc<Router>,
    fail_at: Option<FailPoint>,
    /// Transaction ids: this node, this start of it, a counter.
    node: u64,
    incarnation: u64,
    next: AtomicU64,
    /// A lock first seen this long ago belongs to a coordinator that failed.
    lock_ttl: Duration,
    first_seen: Mutex<HashMap<Vec<u8>, Instant>>,
    /// `--quota-backend-bytes`: this member's key-value data above which writes that
    /// add data are refused and NOSPACE raised.
    quota_bytes: u64,
    /// Room on this member's data volume.
    disk: Arc<crate::storage::disk::DiskSpace>,
}

/// One range's part of a transaction.
struct Part {
    range_id: u64,
    epoch: u64,
    spans: Vec<Span>,
}

impl Transactions {
    pub fn new(
        router: Arc<Router>,
        node: u64,
        incarnation: u64,
        lock_ttl: Duration,
        fail_at: Option<FailPoint>,
        quota_bytes: u64,
        disk: Arc<crate::storage::disk::DiskSpace>,
    ) -> Arc<Self> {
        Arc::new(Self {
            router,
            fail_at,
            node,
            incarnation,
            next: AtomicU64::new(1),
            lock_ttl,
            first_seen: Mutex::new(HashMap::new()),
            quota_bytes,
            disk,
        })
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    fn fail(&self, at: FailPoint) {
        if self.fail_at == Some(at) {
            tracing::error!(?at, "exiting at a fail point (--experimental-fail-at)");
            std::process::exit(70);
        }
    }

    fn new_txn_id(&self) -> Vec<u8> {
        let sequence = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = Vec::with_capacity(24);
        id.extend_from_slice(&self.node.to_be_bytes());
        id.extend_from_slice(&self.incarnation.to_be_bytes());
        id.extend_from_slice(&sequence.to_be_bytes());
        id
    }

    /// Runs a transaction that writes; its result, or the refusal of the range that
    /// refused it.
    pub async fn write(&self, txn: Txn) -> Result<TxnResult, TxnError> {
        self.admit(admission::has_puts(&txn).then(|| admission::added_bytes(&txn)))
            .await?;
        let spans = ops::key_ranges(&txn);
        let deadline = Instant::now() + self.router.request_timeout();
        let command = encode_command(raft_command::Op::Txn(txn.clone()));
        loop {
            match self.router.plan(&spans) {
                Ok(_) => {
                    let applied = match self.router.write_keys(&spans, command.clone()).await {
                        Ok(applied) => applied,
                        // The range split after the plan: the keys now span two.
                        Err(RouteError::CrossRange(_)) => return self.two_phase(&txn, &spans, deadline).await,
                        Err(error) => return Err(error.into()),
                    };
                    match refusal(&applied) {
                        Some(KvError::Locked { txn_id, primary }) if Instant::now() < deadline => {
                            self.wait_or_resolve(&txn_id, primary).await?;
                        }
                        Some(error) => return Err(error.into()),
                        None => match applied.result {
                            Some(command_result::Result::Txn(result)) => return Ok(result),
                            other => {
                                return Err(KvError::WrongRange(match other {
                                    Some(_) => "an unexpected result",
                                    None => "an empty result",
                                })
                                .into())
                            }
                        },
                    }
                }
                Err(RouteError::CrossRange(_)) => return self.two_phase(&txn, &spans, deadline).await,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Runs `read` on data pinned by `pin`, waiting for (or resolving) locks of
    /// transactions in progress on its keys.
    pub async fn read<T, Pin, Pinned>(
        &self,
        pin: Pin,
        read: impl Fn(&PinnedRange) -> Result<T, KvError>,
    ) -> Result<T, TxnError>
    where
        Pin: Fn() -> Pinned,
        Pinned: std::future::Future<Output = Result<PinnedRange, TxnError>>,
    {
        let deadline = Instant::now() + self.router.request_timeout();
        loop {
            let pinned = pin().await?;
            match read(&pinned) {
                Err(KvError::Locked { txn_id, primary }) if Instant::now() < deadline => {
                    self.wait_or_resolve(&txn_id, primary).await?;
                }
                other => return other.map_err(TxnError::from),
            }
        }
    }

    /// Whether a lock first seen now or earlier is older than the TTL.
    pub fn is_abandoned(&self, txn_id: &[u8]) -> bool {
        let mut seen = self
            .first_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        seen.retain(|_, at| now.duration_since(*at) < self.lock_ttl * 4);
        let first = *seen.entry(txn_id.to_vec()).or_insert(now);
        now.duration_since(first) >= self.lock_ttl
    }

    /// Waits a moment for a lock to go, or resolves it once it is older than the TTL.
    async fn wait_or_resolve(&self, txn_id: &[u8], primary: u64) -> Result<(), TxnError> {
        if self.is_abandoned(txn_id) {
            tracing::info!(txn = %hex(txn_id), primary, "resolving an abandoned transaction's locks");
            self.resolve(txn_id, primary, None).await?;
        } else {
            tokio::time::sleep(LOCK_POLL).await;
        }
        Ok(())
    }

    /// Finishes an abandoned transaction as its primary decided: rolls its locks
    /// forward if it committed, else rolls the primary back (recording that it never
    /// commits) and then the locks. `on` is one range holding a lock of it (all of them
    /// whose locks this node sees if `None`).
    pub async fn resolve(&self, txn_id: &[u8], primary: u64, on: Option<u64>) -> Result<(), TxnError> {
        let record = {
            self.router.linearize(primary).await?;
            let pinned = self.router.pinned(primary).await?;
            pinned.txn_record(txn_id).map_err(KvError::from)?
        };
        let decided = match record {
            Some(record) => record,
            None => {
                let rollback = encode_command(raft_command::Op::Rollback(Rollback {
                    txn_id: txn_id.to_vec().into(),
                    primary: true,
                }));
                let applied = self.router.write(primary, rollback).await?;
                match refusal(&applied) {
                    Some(KvError::Committed) => {
                        self.router.linearize(primary).await?;
                        let pinned = self.router.pinned(primary).await?;
                        match pinned.txn_record(txn_id).map_err(KvError::from)? {
                            Some(record) => record,
                            None => return Ok(()),
                        }
                    }
                    Some(error) => return Err(error.into()),
                    None => crate::proto::shoal::state::TxnRecord {
                        txn_id: txn_id.to_vec().into(),
                        committed: false,
                        commit_revision: 0,
                        path: Vec::new(),
                    },
                }
            }
        };
        let holders: Vec<u64> = match on {
            Some(range_id) => vec![range_id],
            None => self.ranges_locked_by(txn_id).await?,
        };
        for range_id in holders {
            let command = if decided.committed {
                raft_command::Op::Commit(Commit {
                    txn_id: txn_id.to_vec().into(),
                    commit_revision: decided.commit_revision,
                    path: decided.path.clone(),
                })
            } else {
                raft_command::Op::Rollback(Rollback {
                    txn_id: txn_id.to_vec().into(),
                    primary: false,
                })
            };
            // A lock gone meanwhile (resolved by someone else) answers ABORTED: fine.
            self.router.write(range_id, encode_command(command)).await?;
        }
        Ok(())
    }

    /// The local data ranges that hold a lock of `txn_id`.
    async fn ranges_locked_by(&self, txn_id: &[u8]) -> Result<Vec<u64>, TxnError> {
        let mut holders = Vec::new();
        for range in self.router.registry().data_ranges() {
            let range_id = range.descriptor.id;
            let pinned = self.router.pinned(range_id).await?;
            let locks = pinned.locks().map_err(KvError::from)?;
            if locks.iter().any(|lock| lock.txn_id.as_ref() == txn_id) {
                holders.push(range_id);
            }
        }
        Ok(holders)
    }

    /// The parts of a transaction per data range, in key order (the first is the
    /// primary).
    fn parts(&self, spans: &[KeyRange]) -> Vec<Part> {
        let mut parts = Vec::new();
        for range in self.router.registry().data_ranges() {
            let within = descriptor_span(&range.descriptor);
            let mine: Vec<Span> = spans
                .iter()
                .filter_map(|keys| {
                    let span = Span {
                        key: keys.start.clone().into(),
                        end: keys.end.clone().unwrap_or_default().into(),
                    };
                    twophase::intersect(&span, &within)
                })
                .collect();
            if !mine.is_empty() {
                parts.push(Part {
                    range_id: range.descriptor.id,
                    epoch: range.descriptor.epoch,
                    spans: mine,
                });
            }
        }
        parts
    }

    async fn two_phase(&self, txn: &Txn, spans: &[KeyRange], deadline: Instant) -> Result<TxnResult, TxnError> {
        loop {
            let parts = self.parts(spans);
            let Some(primary) = parts.first().map(|part| part.range_id) else {
                return Err(KvError::WrongRange("a transaction without keys").into());
            };
            let txn_id = self.new_txn_id();
            match self.prepare_all(&txn_id, primary, txn, &parts).await? {
                Prepared::All(results) => {
                    self.fail(FailPoint::AfterPrepare);
                    return self.commit(&txn_id, primary, txn, &parts, results).await;
                }
                Prepared::Refused(error) => return Err(error.into()),
                Prepared::Conflict { holder, holder_primary } => {
                    if Instant::now() >= deadline {
                        return Err(KvError::Locked {
                            txn_id: holder,
                            primary: holder_primary,
                        }
                        .into());
                    }
                    self.wait_or_resolve(&holder, holder_primary).await?;
                    // Jittered, so two transactions that keep meeting stop meeting.
                    let jitter = rand::random::<u64>() % CONFLICT_BACKOFF.as_millis() as u64;
                    tokio::time::sleep(CONFLICT_BACKOFF + Duration::from_millis(jitter)).await;
                }
                Prepared::Replan => {
                    if Instant::now() >= deadline {
                        return Err(RouteError::Range(crate::range::RangeError::Timeout).into());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    }

    /// Prepares every part at once. Anything short of all of them prepared rolls back
    /// what was (the primary first, recorded, so a late commit can never happen).
    async fn prepare_all(&self, txn_id: &[u8], primary: u64, txn: &Txn, parts: &[Part]) -> Result<Prepared, TxnError> {
        let mut preparing = tokio::task::JoinSet::new();
        for (position, part) in parts.iter().enumerate() {
            let router = self.router.clone();
            let mut command = encode_command(raft_command::Op::Prepare(Prepare {
                txn_id: txn_id.to_vec().into(),
                primary_range: primary,
                txn: Some(txn.clone()),
                spans: part.spans.clone(),
                part: position as u32,
            }));
            stamp_epoch(&mut command, part.epoch);
            let range_id = part.range_id;
            preparing.spawn(async move { (range_id, router.write(range_id, command).await) });
        }
        let mut prepared: Vec<(u64, PrepareResult)> = Vec::new();
        let mut outcome = None;
        while let Some(joined) = preparing.join_next().await {
            let (range_id, applied) = joined.map_err(|error| KvError::WrongRange(panic_or_cancel(&error)))?;
            let applied = match applied {
                Ok(applied) => applied,
                Err(error) => {
                    outcome.get_or_insert(Err(TxnError::from(error)));
                    continue;
                }
            };
            match (refusal(&applied), applied.result) {
                (None, Some(command_result::Result::Prepare(result))) => prepared.push((range_id, result)),
                (Some(KvError::Locked { txn_id, primary }), _) => {
                    outcome.get_or_insert(Ok(Prepared::Conflict {
                        holder: txn_id,
                        holder_primary: primary,
                    }));
                }
                (Some(KvError::EpochMismatch { current, .. }), _) => {
                    for descriptor in &current {
                        self.router.registry().update(descriptor);
                    }
                    outcome.get_or_insert(Ok(Prepared::Replan));
                }
                (Some(error), _) => {
                    outcome.get_or_insert(Ok(Prepared::Refused(error)));
                }
                (None, _) => {
                    outcome.get_or_insert(Ok(Prepared::Refused(KvError::WrongRange(
                        "an unexpected prepare result",
                    ))));
                }
            }
        }
        match outcome {
            None => {
                // In the parts' order, so results line up with them.
                let mut ordered = Vec::with_capacity(parts.len());
                for part in parts {
                    if let Some(position) = prepared.iter().position(|(range_id, _)| *range_id == part.range_id) {
                        ordered.push(prepared.swap_remove(position).1);
                    }
                }
                Ok(Prepared::All(ordered))
            }
            Some(outcome) => {
                self.roll_back(txn_id, primary, parts).await;
                outcome
            }
        }
    }

    /// Rolls a transaction back everywhere, the primary first; failures are left to
    /// the resolvers (a lock of a transaction without a commit record is rolled back).
    async fn roll_back(&self, txn_id: &[u8], primary: u64, parts: &[Part]) {
        for part in parts {
            let command = encode_command(raft_command::Op::Rollback(Rollback {
                txn_id: txn_id.to_vec().into(),
                primary: part.range_id == primary,
            }));
            if let Err(error) = self.router.write(part.range_id, command).await {
                tracing::debug!(txn = %hex(txn_id), range = part.range_id, %error, "rollback left to the resolver");
            }
        }
    }

    async fn commit(
        &self,
        txn_id: &[u8],
        primary: u64,
        txn: &Txn,
        parts: &[Part],
        prepared: Vec<PrepareResult>,
    ) -> Result<TxnResult, TxnError> {
        let compares = twophase::combine_compares(txn, &prepared);
        let path = twophase::path(txn, &compares);
        if let Some(error) = twophase::refusal_on_path(txn, &path, &prepared) {
            let error = refusal_from_proto(error);
            self.roll_back(txn_id, primary, parts).await;
            return Err(error.into());
        }
        let revision = match self.router.timestamp().await {
            Ok(revision) => revision,
            Err(error) => {
                self.roll_back(txn_id, primary, parts).await;
                return Err(error.into());
            }
        };
        let commit = encode_command(raft_command::Op::Commit(Commit {
            txn_id: txn_id.to_vec().into(),
            commit_revision: revision,
            path: path.clone(),
        }));
        // The commit point. An error here (a timeout) leaves the outcome unknown: the
        // primary may have applied it; the resolvers finish whichever way it went.
        let primary_result = self.router.write(primary, commit.clone()).await?;
        if let Some(error) = refusal(&primary_result) {
            self.roll_back(txn_id, primary, parts).await;
            return Err(error.into());
        }
        self.fail(FailPoint::AfterPrimaryCommit);
        let mut results = Vec::with_capacity(parts.len());
        results.push(primary_result);
        let mut committing = tokio::task::JoinSet::new();
        for (position, part) in parts.iter().enumerate().skip(1) {
            let router = self.router.clone();
            let commit = commit.clone();
            let range_id = part.range_id;
            committing.spawn(async move { (position, router.write(range_id, commit).await) });
        }
        let mut secondaries: Vec<(usize, CommandResult)> = Vec::new();
        while let Some(joined) = committing.join_next().await {
            match joined {
                Ok((position, Ok(applied))) => secondaries.push((position, applied)),
                Ok((position, Err(error))) => {
                    // Committed all the same: the resolver rolls this lock forward.
                    tracing::info!(txn = %hex(txn_id), range = parts[position].range_id, %error, "secondary commit left to the resolver");
                }
                Err(error) => tracing::warn!(%error, "a commit task ended"),
            }
        }
        secondaries.sort_by_key(|(position, _)| *position);
        results.extend(secondaries.into_iter().map(|(_, applied)| applied));
        let partial: Vec<TxnResult> = results
            .into_iter()
            .filter_map(|applied| match applied.result {
                Some(command_result::Result::Txn(result)) => Some(result),
                _ => None,
            })
            .collect();
        Ok(twophase::merge(partial, txn, &path, revision))
    }
}

enum Prepared {
    All(Vec<PrepareResult>),
    /// Another transaction holds a lock on our keys.
    Conflict {
        holder: Vec<u8>,
        holder_primary: u64,
    },
    /// A range changed (split): plan the parts again.
    Replan,
    Refused(KvError),
}

/// The refusal a command was answered with, if any.
fn refusal(applied: &CommandResult) -> Option<KvError> {
    match &applied.result {
        Some(command_result::Result::Error(error)) => Some(refusal_from_proto(error)),
        _ => None,
    }
}

/// Appends the epoch the command was planned against (protobuf merges fields).
fn stamp_epoch(command: &mut Vec<u8>, epoch: u64) {
    let stamp = RaftCommand {
        epoch,
        ..Default::default()
    };
    prost::Message::encode(&stamp, command).unwrap_or_else(|_| unreachable!("a Vec grows as needed"));
}

fn panic_or_cancel(error: &tokio::task::JoinError) -> &'static str {
    if error.is_panic() {
        "a panicked prepare"
    } else {
        "a cancelled prepare"
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
