//! A range's replicated state machine: applies committed commands to the MVCC data.
//!
//! Consecutive commands are applied into one engine batch (an [`ApplyBatch`]) committed
//! together with the range's apply state
//! (applied index, revision), so the data and the index that produced it never
//! disagree, and a restart resumes right after the last applied command. Apply batches
//! are not synced: the Raft log is the write-ahead log, and a lost batch is applied
//! again from it.
//!
//! Applying is deterministic: the same command on the same state gives the same result
//! on every replica, including refusals (a compacted revision, a missing key for
//! `ignore_value`), which are results, not failures.

use super::kv::{self, KvError, Revisions};
use super::lease::Lessor;
use super::proposals::{Applied, ProposalId};
use super::{ops, snapshot, twophase};
use crate::proto::shoal::command::{self as cmd, command_result, raft_command, CommandResult, RaftCommand};
use crate::proto::shoal::kv::Span;
use crate::proto::shoal::kv::{
    op, op_result, Delete, DeleteResult, OpResult, Put, PutResult, Read, ReadResult, Txn, TxnResult,
};
use crate::proto::shoal::state::{
    AlarmEntry, AlarmKind, Alarms, AuthStore, LeaseRecord, MemberInfo, OracleState, PublishedMembers, RangeApplyState,
    RangeDescriptor, RangeMap, TxnLock, TxnRecord,
};
use crate::storage::mvcc::{self, MvccRead, Overlaid, Overlay, Record};
use crate::storage::KeyRange;
use crate::storage::{keys, Durability, Engine, ReadView, Space, StorageError, WriteBatch};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

const APPLY_STATE: u8 = b's';
const MEMBERS: u8 = b'm';
/// Meta range: the alarms raised and not yet disarmed.
const ALARMS: u8 = b'A';
/// Meta range: the auth store (users, roles, whether auth is on).
const AUTH: u8 = b'U';
const DESCRIPTOR: u8 = b'd';
/// Meta range: the map of every data range.
const RANGE_MAP: u8 = b'r';
/// Meta range: the timestamp oracle's high-water mark.
const ORACLE: u8 = b'o';
/// Data ranges: a lock of a transaction over several ranges (then the transaction id).
const LOCK: u8 = b'L';
/// Data ranges: a lease revoked here (then the lease id).
const REVOKED: u8 = b'R';
/// Data ranges: how a transaction over several ranges whose primary this is ended.
const TXN_RECORD: u8 = b'T';

fn txn_key(range_id: u64, kind: u8, txn_id: &[u8]) -> Vec<u8> {
    let mut key = keys::range_record_key(range_id, kind);
    key.extend_from_slice(txn_id);
    key
}

/// Whether two key ranges share a key.
fn overlaps(a: &KeyRange, b: &KeyRange) -> bool {
    let empty = |range: &KeyRange| range.end.as_ref() == Some(&range.start);
    !empty(a)
        && !empty(b)
        && b.end.as_ref().is_none_or(|end| a.start < *end)
        && a.end.as_ref().is_none_or(|end| b.start < *end)
}

/// The locks of a range as stored in `view`.
pub fn locks_in(range_id: u64, view: &dyn ReadView) -> Result<Vec<TxnLock>, StorageError> {
    let mut locks = Vec::new();
    let prefix = crate::storage::KeyRange::prefix(&keys::range_record_key(range_id, LOCK));
    for pair in view.scan(Space::RangeMeta, &prefix, false) {
        let (_, value) = pair?;
        if let Some(lock) = decode::<TxnLock>(Space::RangeMeta, Some(value), "lock")? {
            locks.push(lock);
        }
    }
    Ok(locks)
}

/// How a transaction whose primary is `range_id` ended, as stored in `view`.
pub fn txn_record_in(range_id: u64, view: &dyn ReadView, txn_id: &[u8]) -> Result<Option<TxnRecord>, StorageError> {
    decode(
        Space::RangeMeta,
        view.get(Space::RangeMeta, &txn_key(range_id, TXN_RECORD, txn_id))?,
        "transaction record",
    )
}

/// A lock among `locks` on a key of `spans` that a read must wait for. A read of the
/// newest state (`revision` is `None`) waits for every one: its transaction may have
/// passed its commit point on another range already, and a read that saw that must not
/// be followed by one that does not. A read at a past revision waits only for locks
/// whose transaction may still commit at or below it.
pub fn lock_blocking_read<'a>(locks: &'a [TxnLock], spans: &[KeyRange], revision: Option<i64>) -> Option<&'a TxnLock> {
    locks.iter().find(|lock| {
        revision.is_none_or(|revision| lock.floor < revision)
            && lock
                .spans
                .iter()
                .any(|span| spans.iter().any(|read| overlaps(&kv::key_range(span), read)))
    })
}

/// The first revision the oracle hands out: a new store is at revision 1, as etcd's.
const FIRST_REVISION: i64 = 2;
/// The revision through which history is physically removed (a u64, big-endian).
const COMPACTED_THROUGH: u8 = b'p';

/// Where a range's apply state is kept (snapshots carry it).
pub fn apply_state_key(range_id: u64) -> Vec<u8> {
    keys::range_record_key(range_id, APPLY_STATE)
}

pub fn decode_apply_state(bytes: &[u8]) -> Result<RangeApplyState, StorageError> {
    RangeApplyState::decode(bytes).map_err(|error| StorageError::Corrupt {
        space: Space::RangeMeta,
        detail: format!("apply state: {error}"),
    })
}

/// Records that history of `range_id` through `revision` is physically removed.
pub fn mark_compacted(range_id: u64, revision: i64, batch: &mut WriteBatch) {
    batch.put(
        Space::RangeMeta,
        keys::range_record_key(range_id, COMPACTED_THROUGH),
        revision.to_be_bytes().to_vec(),
    );
}

/// The auth store of a cluster restored from a backup, in its meta range.
pub fn write_restored_auth(store: &AuthStore, batch: &mut WriteBatch) {
    batch.put(
        Space::RangeMeta,
        keys::range_record_key(super::META_RANGE_ID, AUTH),
        store.encode_to_vec(),
    );
}

/// What a range of a cluster restored from a backup at `revision` starts with, written
/// after its bootstrap: a data range is at that revision with nothing older readable
/// (the backup holds no history) and counts its keys; the meta range's oracle hands out
/// revisions above it.
pub fn write_restored_state(range_id: u64, revision: i64, live_keys: u64, live_bytes: u64, batch: &mut WriteBatch) {
    if range_id == super::META_RANGE_ID {
        let oracle = OracleState {
            high_water: revision + 1,
        };
        batch.put(
            Space::RangeMeta,
            keys::range_record_key(range_id, ORACLE),
            oracle.encode_to_vec(),
        );
        return;
    }
    let state = RangeApplyState {
        revision,
        compact_revision: revision,
        live_keys,
        live_bytes,
        ..Default::default()
    };
    batch.put(Space::RangeMeta, apply_state_key(range_id), state.encode_to_vec());
    mark_compacted(range_id, revision, batch);
}

/// Writes of consecutive applied commands, committed together with the apply state by
/// [`StateMachine::flush`]. Later commands read earlier ones' writes through `overlay`.
#[derive(Default)]
pub struct ApplyBatch {
    batch: WriteBatch,
    overlay: Overlay,
}

impl ApplyBatch {
    /// For records kept beside the state machine's (a range's Raft configuration) that
    /// must be written atomically with what applied.
    pub fn batch_mut(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }
}

/// Past this size an apply batch is committed early, to bound memory.
const APPLY_BATCH_BYTES_MAX: usize = 8 << 20;

pub struct StateMachine {
    range_id: u64,
    engine: Arc<dyn Engine>,
    descriptor: RangeDescriptor,
    state: RangeApplyState,
    members: PublishedMembers,
    /// Meta range: the alarms raised and not yet disarmed.
    alarms: Alarms,
    /// Meta range: the auth store.
    auth: AuthStore,
    lessor: Lessor,
    /// History at or below this revision is physically gone (see `COMPACTED_THROUGH`).
    compacted_through: i64,
    /// A compaction applied (or found unfinished at load) whose history removal is yet
    /// to be handed to the background worker.
    compaction_due: Option<i64>,
    /// Meta range only: the oracle's applied high-water mark.
    oracle_high_water: i64,
    /// Meta range only: the map of every data range.
    range_map: RangeMap,
    /// Data ranges: ranges this range's splits created since the caller last took them.
    created: Vec<RangeDescriptor>,
    /// Data ranges: the right-hand range of the latest split applied here, told to a
    /// command routed by a map that predates it.
    last_split: Option<RangeDescriptor>,
    /// Meta range: the id the command being applied handed out.
    allocated_range_id: u64,
    /// Data ranges: locks of transactions over several ranges, by transaction id.
    locks: BTreeMap<Vec<u8>, TxnLock>,
    /// Meta range: leases being revoked (their keys are being deleted in every range).
    revoking: BTreeSet<i64>,
    /// Data ranges: leases revoked here; a put with one is refused.
    revoked: BTreeSet<i64>,
    /// Data ranges: the newest revision a write applied here (a `Close` or a compaction
    /// moves the range's revision, not this).
    last_write: i64,
}

/// Where a range created by a split starts its log, as if from a snapshot at this index
/// and term (TiKV's choice): every replica creates it identically, and the range's
/// leader has nothing below it to send.
pub const SPLIT_INIT_INDEX: u64 = 5;
pub const SPLIT_INIT_TERM: u64 = 5;

fn decode<M: Message + Default>(space: Space, bytes: Option<Vec<u8>>, what: &str) -> Result<Option<M>, StorageError> {
    bytes
        .map(|bytes| {
            M::decode(bytes.as_slice()).map_err(|error| StorageError::Corrupt {
                space,
                detail: format!("{what}: {error}"),
            })
        })
        .transpose()
}

impl StateMachine {
    /// Loads the range's state; a range never applied to starts at revision 1 (etcd's
    /// first revision, before any write).
    pub fn load(
        range_id: u64,
        engine: Arc<dyn Engine>,
        default_descriptor: RangeDescriptor,
    ) -> Result<Self, StorageError> {
        let record = |kind| engine.get(Space::RangeMeta, &keys::range_record_key(range_id, kind));
        let state = decode(Space::RangeMeta, record(APPLY_STATE)?, "apply state")?.unwrap_or(RangeApplyState {
            revision: 1,
            ..Default::default()
        });
        let members = decode(Space::RangeMeta, record(MEMBERS)?, "members")?.unwrap_or_default();
        let alarms = decode(Space::RangeMeta, record(ALARMS)?, "alarms")?.unwrap_or_default();
        let auth = decode(Space::RangeMeta, record(AUTH)?, "auth store")?.unwrap_or_default();
        let descriptor = decode(Space::RangeMeta, record(DESCRIPTOR)?, "descriptor")?.unwrap_or(default_descriptor);
        let compacted_through = match record(COMPACTED_THROUGH)? {
            None => 0,
            Some(bytes) => {
                let raw: [u8; 8] = bytes.as_slice().try_into().map_err(|_| StorageError::Corrupt {
                    space: Space::RangeMeta,
                    detail: format!("compacted-through marker is {} bytes, not 8", bytes.len()),
                })?;
                i64::from_be_bytes(raw)
            }
        };
        // A crash (or a snapshot taken) before the worker finished: finish it.
        let compaction_due = (state.compact_revision > compacted_through).then_some(state.compact_revision);
        let oracle: Option<OracleState> = decode(Space::RangeMeta, record(ORACLE)?, "oracle")?;
        let locks = locks_in(range_id, engine.as_ref())?
            .into_iter()
            .map(|lock| (lock.txn_id.to_vec(), lock))
            .collect();
        let range_map = if range_id == super::META_RANGE_ID {
            decode(Space::RangeMeta, record(RANGE_MAP)?, "range map")?.unwrap_or_default()
        } else {
            RangeMap::default()
        };
        let mut lessor = Lessor::default();
        let mut revoking = BTreeSet::new();
        let now = Instant::now();
        for pair in engine.scan(Space::Leases, &keys::range_records(range_id), false) {
            let (_, bytes) = pair?;
            let lease: LeaseRecord = decode(Space::Leases, Some(bytes), "lease")?.unwrap_or_default();
            if lease.revoking {
                revoking.insert(lease.id);
            } else {
                lessor.insert(lease.id, lease.ttl, now);
            }
        }
        let mut revoked = BTreeSet::new();
        let tombstones = crate::storage::KeyRange::prefix(&keys::range_record_key(range_id, REVOKED));
        for pair in engine.scan(Space::RangeMeta, &tombstones, false) {
            let (key, _) = pair?;
            if let Some(raw) = key.get(9..17).and_then(|raw| <[u8; 8]>::try_from(raw).ok()) {
                revoked.insert(i64::from_be_bytes(raw));
            }
        }
        Ok(Self {
            range_id,
            engine,
            descriptor,
            state,
            members,
            alarms,
            auth,
            lessor,
            compacted_through,
            compaction_due,
            oracle_high_water: oracle.map_or(0, |oracle| oracle.high_water),
            range_map,
            created: Vec::new(),
            last_split: None,
            allocated_range_id: 0,
            locks,
            revoking,
            revoked,
            last_write: state.revision,
        })
    }

    /// Locks of transactions over several ranges held here.
    pub fn locks(&self) -> impl Iterator<Item = &TxnLock> {
        self.locks.values()
    }

    /// The revision at or below which nothing can change here any more: the range's,
    /// or just below where a lock's transaction may still commit.
    pub fn resolved(&self) -> i64 {
        self.locks
            .values()
            .map(|lock| lock.floor)
            .chain(std::iter::once(self.state.revision))
            .min()
            .unwrap_or(self.state.revision)
    }

    /// A refusal for a command touching a key some transaction holds a lock on.
    fn lock_blocking(&self, spans: &[KeyRange], except: &[u8]) -> Option<KvError> {
        self.locks
            .values()
            .filter(|lock| lock.txn_id.as_ref() != except)
            .find(|lock| {
                lock.spans
                    .iter()
                    .any(|locked| spans.iter().any(|span| overlaps(&kv::key_range(locked), span)))
            })
            .map(|lock| KvError::Locked {
                txn_id: lock.txn_id.to_vec(),
                primary: lock.primary_range,
            })
    }

    fn txn_record(&self, txn_id: &[u8]) -> Result<Option<TxnRecord>, StorageError> {
        decode(
            Space::RangeMeta,
            self.engine
                .get(Space::RangeMeta, &txn_key(self.range_id, TXN_RECORD, txn_id))?,
            "transaction record",
        )
    }

    /// Locks this range's keys of a transaction over several ranges, and evaluates its
    /// compares and checks its operations on them (see `twophase`).
    fn apply_prepare(
        &mut self,
        prepare: cmd::Prepare,
        pending: &mut ApplyBatch,
    ) -> Result<command_result::Result, KvError> {
        let txn_id = prepare.txn_id.to_vec();
        if self.txn_record(&txn_id)?.is_some() {
            return Err(KvError::Aborted);
        }
        let txn = prepare.txn.clone().unwrap_or_default();
        let spans: Vec<KeyRange> = prepare.spans.iter().map(kv::key_range).collect();
        let within = snapshot::descriptor_span(&self.descriptor);
        let outside = spans.iter().any(|span| {
            span.start < within.start
                || match (&within.end, &span.end) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(end), Some(span_end)) => span_end > end,
                }
        });
        if outside {
            return Err(self.epoch_mismatch("a key of the transaction's part is outside the range".to_string()));
        }
        if let Some(refusal) = self.lock_blocking(&spans, &txn_id) {
            return Err(refusal);
        }
        let view = Overlaid {
            base: self.engine.as_ref(),
            overlay: &pending.overlay,
        };
        let compares = twophase::evaluate_compares(&view, &txn, &within)?;
        let mut refusals = Vec::new();
        let revisions = self.revisions();
        let mut failure = None;
        twophase::for_each_op(&txn, &mut |index, operation| {
            let refused = match operation {
                op::Op::Read(read) => {
                    let part = twophase::intersect(read.span.as_ref().unwrap_or(&Default::default()), &within);
                    match part {
                        Some(_) => revisions.check(read.revision).err(),
                        None => None,
                    }
                }
                op::Op::Put(put) if within.contains(&put.key) => {
                    if put.lease != 0 && (self.revoked.contains(&put.lease) || txn.unknown_leases.contains(&put.lease))
                    {
                        Some(KvError::LeaseNotFound)
                    } else if put.ignore_value || put.ignore_lease {
                        match view.latest(&put.key) {
                            Ok(None) => Some(KvError::KeyNotFound),
                            Ok(Some(_)) => None,
                            Err(error) => {
                                failure.get_or_insert(error);
                                None
                            }
                        }
                    } else {
                        None
                    }
                }
                _ => None,
            };
            if let Some(error) = refused {
                refusals.push(cmd::OpRefusal {
                    index,
                    error: Some(refusal_to_proto(&error)),
                });
            }
        });
        if let Some(error) = failure {
            return Err(error.into());
        }
        let lock = TxnLock {
            txn_id: prepare.txn_id.clone(),
            primary_range: prepare.primary_range,
            floor: self.state.revision,
            txn: prepare.txn,
            spans: prepare.spans,
            part: prepare.part,
        };
        // A prepare sent again (its answer was lost) finds its own lock: same answer.
        if !self.locks.contains_key(&txn_id) {
            pending.batch.put(
                Space::RangeMeta,
                txn_key(self.range_id, LOCK, &txn_id),
                lock.encode_to_vec(),
            );
            self.locks.insert(txn_id, lock);
        }
        Ok(command_result::Result::Prepare(cmd::PrepareResult {
            compares,
            refusals,
        }))
    }

    /// Applies this range's part of a prepared transaction at its commit revision and
    /// releases the lock; on the primary range, records the commit (the commit point).
    fn apply_commit(
        &mut self,
        commit: cmd::Commit,
        pending: &mut ApplyBatch,
    ) -> Result<command_result::Result, KvError> {
        let txn_id = commit.txn_id.to_vec();
        let Some(lock) = self.locks.get(&txn_id).cloned() else {
            return match self.txn_record(&txn_id)? {
                Some(record) if record.committed => Ok(command_result::Result::Empty(cmd::Empty {})),
                _ => Err(KvError::Aborted),
            };
        };
        if commit.commit_revision <= lock.floor {
            return Err(KvError::BadCommit(format!(
                "commit revision {} is not above the lock's floor {}",
                commit.commit_revision, lock.floor
            )));
        }
        let txn = lock.txn.clone().unwrap_or_default();
        let revisions = self.revisions();
        let mut exec = TxnExec {
            base: self.engine.as_ref(),
            overlay: &mut pending.overlay,
            batch: &mut pending.batch,
            revisions,
            revision: commit.commit_revision,
            sub: i64::from(lock.part) << 32,
            base_sub: i64::from(lock.part) << 32,
            keys_delta: 0,
            bytes_delta: 0,
            restrict: Some(snapshot::descriptor_span(&self.descriptor)),
            range_id: self.range_id,
            span: snapshot::descriptor_span(&self.descriptor),
            revoked: Vec::new(),
        };
        let mut result = exec.txn(&txn, &commit.path, &mut 0)?;
        let (wrote, keys_delta, bytes_delta) = (exec.sub > exec.base_sub, exec.keys_delta, exec.bytes_delta);
        let revoked = std::mem::take(&mut exec.revoked);
        self.revoked.extend(revoked);
        self.count_live(keys_delta, bytes_delta);
        if wrote {
            self.state.revision = self.state.revision.max(commit.commit_revision);
            self.last_write = self.last_write.max(commit.commit_revision);
        }
        pending
            .batch
            .delete(Space::RangeMeta, txn_key(self.range_id, LOCK, &txn_id));
        if lock.primary_range == self.range_id {
            let record = TxnRecord {
                txn_id: commit.txn_id.clone(),
                committed: true,
                commit_revision: commit.commit_revision,
                path: commit.path.clone(),
            };
            pending.batch.put(
                Space::RangeMeta,
                txn_key(self.range_id, TXN_RECORD, &txn_id),
                record.encode_to_vec(),
            );
        }
        self.locks.remove(&txn_id);
        result.revision = commit.commit_revision;
        Ok(command_result::Result::Txn(result))
    }

    /// Releases a transaction's lock without applying it; on the primary range,
    /// records that it will never commit (unless it already did: `Committed`).
    fn apply_rollback(
        &mut self,
        rollback: cmd::Rollback,
        batch: &mut WriteBatch,
    ) -> Result<command_result::Result, KvError> {
        let txn_id = rollback.txn_id.to_vec();
        if rollback.primary {
            match self.txn_record(&txn_id)? {
                Some(record) if record.committed => return Err(KvError::Committed),
                Some(_) => {}
                None => {
                    let record = TxnRecord {
                        txn_id: rollback.txn_id.clone(),
                        committed: false,
                        commit_revision: 0,
                        path: Vec::new(),
                    };
                    batch.put(
                        Space::RangeMeta,
                        txn_key(self.range_id, TXN_RECORD, &txn_id),
                        record.encode_to_vec(),
                    );
                }
            }
        }
        if self.locks.remove(&txn_id).is_some() {
            batch.delete(Space::RangeMeta, txn_key(self.range_id, LOCK, &txn_id));
        }
        Ok(command_result::Result::Empty(cmd::Empty {}))
    }

    /// Ranges created by splits applied since the last call.
    pub fn take_created(&mut self) -> Vec<RangeDescriptor> {
        std::mem::take(&mut self.created)
    }

    /// Meta range: the map of every data range, as applied.
    pub fn range_map(&self) -> &RangeMap {
        &self.range_map
    }

    fn count_live(&mut self, keys_delta: i64, bytes_delta: i64) {
        let apply = |value: u64, delta: i64| {
            if delta >= 0 {
                value.saturating_add(delta as u64)
            } else {
                value.saturating_sub(delta.unsigned_abs())
            }
        };
        self.state.live_keys = apply(self.state.live_keys, keys_delta);
        self.state.live_bytes = apply(self.state.live_bytes, bytes_delta);
    }

    /// The newest revision a write applied here.
    pub fn last_write(&self) -> i64 {
        self.last_write
    }

    /// Live keys and their bytes in the range (approximate after a split).
    pub fn live(&self) -> (u64, u64) {
        (self.state.live_keys, self.state.live_bytes)
    }

    /// A refusal for a command routed by a stale map: what the range looks like now.
    fn epoch_mismatch(&self, detail: String) -> KvError {
        let mut current = vec![self.descriptor.clone()];
        current.extend(self.last_split.iter().cloned());
        KvError::EpochMismatch { detail, current }
    }

    /// Whether every key and span the transaction reads, compares or writes lies in the
    /// range's span.
    fn holds_all(&self, txn: &Txn) -> bool {
        let span = snapshot::descriptor_span(&self.descriptor);
        let holds = |request: &crate::proto::shoal::kv::Span| {
            let keys = kv::key_range(request);
            let empty = keys.end.as_ref() == Some(&keys.start);
            empty
                || (keys.start >= span.start
                    && match (&span.end, &keys.end) {
                        (None, _) => true,
                        (Some(_), None) => false,
                        (Some(end), Some(keys_end)) => keys_end <= end,
                    })
        };
        fn visit(txn: &Txn, holds: &dyn Fn(&crate::proto::shoal::kv::Span) -> bool) -> bool {
            let default = crate::proto::shoal::kv::Span::default();
            txn.compare
                .iter()
                .all(|compare| holds(compare.span.as_ref().unwrap_or(&default)))
                && txn
                    .success
                    .iter()
                    .chain(&txn.failure)
                    .all(|operation| match &operation.op {
                        Some(op::Op::Read(read)) => holds(read.span.as_ref().unwrap_or(&default)),
                        Some(op::Op::Put(put)) => holds(&crate::proto::shoal::kv::Span {
                            key: put.key.clone(),
                            end: Default::default(),
                        }),
                        Some(op::Op::Delete(delete)) => holds(delete.span.as_ref().unwrap_or(&default)),
                        Some(op::Op::Txn(nested)) => visit(nested, holds),
                        Some(op::Op::RevokeLease(_)) => holds(&ops::all_keys_span()),
                        None => true,
                    })
        }
        visit(txn, &holds)
    }

    /// Splits the range at `split.split_key`: this range keeps the keys below it, a new
    /// range (same replicas) takes the rest. Both descriptors and the new range's whole
    /// starting state (apply state, Raft state) go in the same batch, so every replica
    /// splits at the same entry, atomically. Key-value data stays where it is: both
    /// ranges share the node's engine.
    fn apply_split(&mut self, split: cmd::Split, batch: &mut WriteBatch) -> Result<command_result::Result, KvError> {
        if split.expected_epoch != self.descriptor.epoch {
            return Err(self.epoch_mismatch(format!(
                "split planned against epoch {}, the range is at {}",
                split.expected_epoch, self.descriptor.epoch
            )));
        }
        let span = snapshot::descriptor_span(&self.descriptor);
        let key = split.split_key.to_vec();
        if key <= span.start || !span.contains(&key) || split.new_range_id <= super::META_RANGE_ID {
            return Err(KvError::BadSplit(format!(
                "cannot split range {} at {key:?} into range {}",
                self.range_id, split.new_range_id
            )));
        }
        let epoch = self.descriptor.epoch + 1;
        let right = RangeDescriptor {
            id: split.new_range_id,
            start_key: key.clone().into(),
            end_key: self.descriptor.end_key.clone(),
            epoch,
            conf_version: self.descriptor.conf_version,
            replicas: self.descriptor.replicas.clone(),
            learners: self.descriptor.learners.clone(),
        };
        self.descriptor.end_key = key.into();
        self.descriptor.epoch = epoch;
        let left_keys = split.left_keys.min(self.state.live_keys);
        let left_bytes = split.left_bytes.min(self.state.live_bytes);
        let right_state = RangeApplyState {
            applied_index: SPLIT_INIT_INDEX,
            applied_term: SPLIT_INIT_TERM,
            revision: self.state.revision,
            compact_revision: self.state.compact_revision,
            live_keys: self.state.live_keys - left_keys,
            live_bytes: self.state.live_bytes - left_bytes,
        };
        self.state.live_keys = left_keys;
        self.state.live_bytes = left_bytes;
        batch.put(
            Space::RangeMeta,
            keys::range_record_key(right.id, APPLY_STATE),
            right_state.encode_to_vec(),
        );
        batch.put(
            Space::RangeMeta,
            keys::range_record_key(right.id, DESCRIPTOR),
            right.encode_to_vec(),
        );
        mark_compacted(right.id, self.compacted_through, batch);
        super::log_store::LogStore::initialize_split(
            right.id,
            right
                .replicas
                .iter()
                .copied()
                .filter(|id| !right.learners.contains(id))
                .collect(),
            right.learners.clone(),
            SPLIT_INIT_INDEX,
            SPLIT_INIT_TERM,
            batch,
        );
        batch.put(
            Space::RangeMeta,
            keys::range_record_key(self.range_id, DESCRIPTOR),
            self.descriptor.encode_to_vec(),
        );
        tracing::info!(range = self.range_id, new_range = right.id, epoch, left_keys, "split");
        self.created.push(right.clone());
        self.last_split = Some(right);
        Ok(command_result::Result::Empty(cmd::Empty {}))
    }

    /// The meta range holds the range map and the oracle; data ranges hold keys.
    pub fn is_meta(&self) -> bool {
        self.range_id == super::META_RANGE_ID
    }

    /// Meta range: the oracle's applied high-water mark.
    pub fn oracle_high_water(&self) -> i64 {
        self.oracle_high_water
    }

    /// Meta range: the map of every data range, as stored in `view`.
    pub fn range_map_in(view: &dyn ReadView) -> Result<RangeMap, StorageError> {
        Ok(decode(
            Space::RangeMeta,
            view.get(
                Space::RangeMeta,
                &keys::range_record_key(super::META_RANGE_ID, RANGE_MAP),
            )?,
            "range map",
        )?
        .unwrap_or_default())
    }

    /// The compaction whose history removal should start now, if any: the caller hands
    /// it to the background worker, which records it done with [`mark_compacted`].
    pub fn take_compaction(&mut self) -> Option<i64> {
        self.compaction_due.take()
    }

    /// Through which revision history was physically removed when this was loaded.
    pub fn compacted_through(&self) -> i64 {
        self.compacted_through
    }

    /// Reloads everything from the engine, after a snapshot replaced the range's data.
    pub fn reload(&mut self) -> Result<(), StorageError> {
        *self = Self::load(self.range_id, self.engine.clone(), self.descriptor.clone())?;
        Ok(())
    }

    pub fn descriptor(&self) -> &RangeDescriptor {
        &self.descriptor
    }

    pub fn applied_index(&self) -> u64 {
        self.state.applied_index
    }

    pub fn applied_term(&self) -> u64 {
        self.state.applied_term
    }

    pub fn revisions(&self) -> Revisions {
        Revisions {
            current: self.state.revision,
            compact: self.state.compact_revision,
        }
    }

    pub fn members(&self) -> &[MemberInfo] {
        &self.members.members
    }

    pub fn lessor(&self) -> &Lessor {
        &self.lessor
    }

    pub fn lessor_mut(&mut self) -> &mut Lessor {
        &mut self.lessor
    }

    /// Revision and compaction point as stored in `view` (which may be older than the
    /// state machine, or a snapshot pinned by a reader).
    pub fn revisions_in(range_id: u64, view: &dyn ReadView) -> Result<Revisions, StorageError> {
        let state: Option<RangeApplyState> = decode(
            Space::RangeMeta,
            view.get(Space::RangeMeta, &keys::range_record_key(range_id, APPLY_STATE))?,
            "apply state",
        )?;
        Ok(state.map_or(Revisions { current: 1, compact: 0 }, |state| Revisions {
            current: state.revision,
            compact: state.compact_revision,
        }))
    }

    fn put_state(&self, batch: &mut WriteBatch) {
        batch.put(
            Space::RangeMeta,
            keys::range_record_key(self.range_id, APPLY_STATE),
            self.state.encode_to_vec(),
        );
    }

    /// Writes the range's descriptor; part of creating the range. The meta range also
    /// gets the map of the data ranges created with it, and the oracle its first mark.
    pub fn bootstrap(&self, data_ranges: &[RangeDescriptor], members: &[MemberInfo], batch: &mut WriteBatch) {
        batch.put(
            Space::RangeMeta,
            keys::range_record_key(self.range_id, DESCRIPTOR),
            self.descriptor.encode_to_vec(),
        );
        self.put_state(batch);
        if self.is_meta() {
            let map = RangeMap {
                next_range_id: data_ranges.iter().map(|range| range.id).max().unwrap_or(self.range_id) + 1,
                ranges: data_ranges.to_vec(),
            };
            batch.put(
                Space::RangeMeta,
                keys::range_record_key(self.range_id, RANGE_MAP),
                map.encode_to_vec(),
            );
            let membership = PublishedMembers {
                members: members.to_vec(),
                removed: Vec::new(),
                complete: true,
            };
            batch.put(
                Space::RangeMeta,
                keys::range_record_key(self.range_id, MEMBERS),
                membership.encode_to_vec(),
            );
            let oracle = OracleState {
                high_water: FIRST_REVISION,
            };
            batch.put(
                Space::RangeMeta,
                keys::range_record_key(self.range_id, ORACLE),
                oracle.encode_to_vec(),
            );
        }
    }

    /// Records that the entry at `index` was applied without changing data (an empty
    /// entry of a new leader, a configuration change).
    pub fn apply_noop(&mut self, index: u64, term: u64) {
        self.advance(index, term);
    }

    /// Commits the pending writes with the apply state that covers them.
    pub fn flush(&mut self, pending: &mut ApplyBatch) -> Result<(), StorageError> {
        let mut batch = std::mem::take(&mut pending.batch);
        pending.overlay.clear();
        self.put_state(&mut batch);
        self.engine.write(batch, Durability::Buffered)
    }

    /// Applies a configuration change of the range's Raft group: the descriptor's
    /// replicas follow it, with a new conf version, in the apply batch.
    pub fn apply_conf_change(
        &mut self,
        index: u64,
        term: u64,
        voters: &[u64],
        learners: &[u64],
        pending: &mut ApplyBatch,
    ) {
        self.advance(index, term);
        let mut replicas: Vec<u64> = voters.iter().chain(learners).copied().collect();
        replicas.sort_unstable();
        replicas.dedup();
        let mut learners = learners.to_vec();
        learners.sort_unstable();
        self.descriptor.replicas = replicas;
        self.descriptor.learners = learners;
        self.descriptor.conf_version += 1;
        pending.batch.put(
            Space::RangeMeta,
            keys::range_record_key(self.range_id, DESCRIPTOR),
            self.descriptor.encode_to_vec(),
        );
    }

    fn advance(&mut self, index: u64, term: u64) {
        assert!(
            index > self.state.applied_index,
            "range {}: applying index {index} after {}",
            self.range_id,
            self.state.applied_index
        );
        self.state.applied_index = index;
        self.state.applied_term = term;
    }

    /// Applies one committed command. A command that cannot be decoded is a bug or
    /// corruption upstream; it is skipped (identically on every replica) and logged.
    pub fn apply_command(
        &mut self,
        index: u64,
        term: u64,
        data: &[u8],
        pending: &mut ApplyBatch,
    ) -> Result<Option<Applied>, StorageError> {
        let command = match RaftCommand::decode(data) {
            Ok(command) => command,
            Err(error) => {
                tracing::error!(range = self.range_id, index, %error, "skipping undecodable log entry");
                self.apply_noop(index, term);
                return Ok(None);
            }
        };
        if command.proposed_term != 0 && command.proposed_term != term {
            // A proposal that reached a leader of a later term (raft-rs forwards
            // proposals without a term). Skipping it lets its proposer treat every
            // proposal of an older term that has not applied by now as dropped.
            self.apply_noop(index, term);
            return Ok(Some(Applied {
                id: proposal_id(&command),
                result: None,
            }));
        }
        if reads_beyond_overlay(&command) {
            self.flush(pending)?;
        }
        let id = proposal_id(&command);
        self.advance(index, term);
        let writes_before = pending.batch.len();
        let batch = pending;
        let outcome = if self.is_meta() {
            self.apply_meta(command.op, &mut batch.batch)
        } else if command.revision <= self.state.revision {
            // Out of revision order: a leader change let an older leader's command
            // through after a newer one. Refused, it can be proposed again.
            Err(KvError::StaleRevision)
        } else {
            let revision = command.revision;
            let outcome = match command.op {
                Some(_) if command.epoch != 0 && command.epoch != self.descriptor.epoch => {
                    Err(self.epoch_mismatch(format!(
                        "planned against epoch {}, the range is at {}",
                        command.epoch, self.descriptor.epoch
                    )))
                }
                Some(raft_command::Op::Txn(txn)) if !self.holds_all(&txn) => {
                    Err(self.epoch_mismatch("a key of the transaction is outside the range".to_string()))
                }
                Some(raft_command::Op::Txn(txn)) => match self.lock_blocking(&ops::key_ranges(&txn), &[]) {
                    Some(refusal) => Err(refusal),
                    None => self.apply_txn(txn, revision, batch).map(command_result::Result::Txn),
                },
                Some(raft_command::Op::Prepare(prepare)) => self.apply_prepare(prepare, batch),
                Some(raft_command::Op::Commit(commit)) => self.apply_commit(commit, batch),
                Some(raft_command::Op::Rollback(rollback)) => self.apply_rollback(rollback, &mut batch.batch),
                Some(raft_command::Op::Split(_)) if !self.locks.is_empty() => Err(KvError::BadSplit(
                    "the range holds locks of transactions in progress".to_string(),
                )),
                Some(raft_command::Op::Split(split)) => self.apply_split(split, &mut batch.batch),
                Some(raft_command::Op::Close(_)) => {
                    // Everything at or below this revision is final here from now on.
                    self.state.revision = revision;
                    Ok(command_result::Result::Empty(cmd::Empty {}))
                }
                Some(raft_command::Op::Compact(compact)) => self.apply_compact(compact.revision, revision, batch),
                Some(
                    raft_command::Op::LeaseGrant(_)
                    | raft_command::Op::LeaseRevoke(_)
                    | raft_command::Op::LeaseRevoking(_),
                ) => Err(KvError::WrongRange("a lease command (leases live in the meta range)")),
                Some(raft_command::Op::PublishMember(_)) => Err(KvError::WrongRange("member publishing")),
                Some(
                    raft_command::Op::OracleAdvance(_)
                    | raft_command::Op::AllocateRangeId(_)
                    | raft_command::Op::UpdateRangeMap(_)
                    | raft_command::Op::AlarmChange(_)
                    | raft_command::Op::SetAuth(_)
                    | raft_command::Op::MembershipChange(_),
                ) => Err(KvError::WrongRange("a meta range command")),
                None => Ok(command_result::Result::Empty(cmd::Empty {})),
            };
            // A command that wrote moved the range to its revision; one that did not
            // leaves it (as etcd's revision moves only with writes).
            outcome
        };
        let result = match outcome {
            Ok(result) => result,
            Err(KvError::Storage(error)) => return Err(error),
            Err(refusal) => {
                // Commands are checked whole before they write: a refusal left nothing.
                assert_eq!(batch.batch.len(), writes_before, "a refused command wrote");
                command_result::Result::Error(refusal_to_proto(&refusal))
            }
        };
        if batch.batch.size_bytes() > APPLY_BATCH_BYTES_MAX {
            self.flush(batch)?;
        }
        Ok(Some(Applied {
            id,
            result: Some(CommandResult {
                result: Some(result),
                revision: self.state.revision,
                allocated_range_id: std::mem::take(&mut self.allocated_range_id),
            }),
        }))
    }

    /// Commands of the meta range: member publishing and the oracle's mark.
    fn apply_meta(
        &mut self,
        op: Option<raft_command::Op>,
        batch: &mut WriteBatch,
    ) -> Result<command_result::Result, KvError> {
        match op {
            Some(raft_command::Op::PublishMember(member)) => {
                self.apply_publish(member, batch);
            }
            Some(raft_command::Op::OracleAdvance(advance)) if advance.to > self.oracle_high_water => {
                self.oracle_high_water = advance.to;
                let oracle = OracleState { high_water: advance.to };
                batch.put(
                    Space::RangeMeta,
                    keys::range_record_key(self.range_id, ORACLE),
                    oracle.encode_to_vec(),
                );
            }
            // A mark at or below the current one changes nothing.
            Some(raft_command::Op::OracleAdvance(_)) => {}
            Some(raft_command::Op::LeaseGrant(grant)) => {
                self.apply_lease_grant(&grant, batch)?;
            }
            Some(raft_command::Op::LeaseRevoking(revoking)) => {
                let id = revoking.id;
                if !self.revoking.contains(&id) {
                    let Some(time) = self.lessor.time(id, Instant::now()) else {
                        return Err(KvError::LeaseNotFound);
                    };
                    let record = LeaseRecord {
                        id,
                        ttl: time.granted_ttl,
                        revoking: true,
                    };
                    batch.put(
                        Space::Leases,
                        keys::lease_key(self.range_id, id),
                        record.encode_to_vec(),
                    );
                    self.lessor.remove(id);
                    self.revoking.insert(id);
                }
            }
            Some(raft_command::Op::LeaseRevoke(revoke)) => {
                // Its keys are gone in every range; removing it twice is harmless.
                batch.delete(Space::Leases, keys::lease_key(self.range_id, revoke.id));
                self.lessor.remove(revoke.id);
                self.revoking.remove(&revoke.id);
            }
            Some(raft_command::Op::AllocateRangeId(_)) => {
                let id = self.range_map.next_range_id.max(super::FIRST_DATA_RANGE_ID + 1);
                self.range_map.next_range_id = id + 1;
                self.put_range_map(batch);
                self.allocated_range_id = id;
            }
            Some(raft_command::Op::UpdateRangeMap(update)) => {
                let mut changed = false;
                for incoming in update.descriptors {
                    let ranges = &mut self.range_map.ranges;
                    match ranges.iter_mut().find(|known| known.id == incoming.id) {
                        Some(known) => {
                            if (incoming.epoch, incoming.conf_version) > (known.epoch, known.conf_version) {
                                *known = incoming;
                                changed = true;
                            }
                        }
                        None => {
                            ranges.push(incoming);
                            changed = true;
                        }
                    }
                }
                if changed {
                    self.range_map.ranges.sort_by(|a, b| a.start_key.cmp(&b.start_key));
                    self.put_range_map(batch);
                }
            }
            Some(raft_command::Op::AlarmChange(change)) => self.apply_alarm_change(change, batch),
            Some(raft_command::Op::MembershipChange(change)) => {
                super::membership::apply_change(&mut self.members, &change)?;
                self.put_members(batch);
            }
            Some(raft_command::Op::SetAuth(set)) => {
                if set.expected_revision != self.auth.revision {
                    return Err(KvError::Aborted);
                }
                let mut store = set.store.unwrap_or_default();
                store.revision = self.auth.revision + 1;
                batch.put(
                    Space::RangeMeta,
                    keys::range_record_key(self.range_id, AUTH),
                    store.encode_to_vec(),
                );
                self.auth = store;
            }
            None => {}
            Some(_) => return Err(KvError::WrongRange("a key-value command")),
        }
        Ok(command_result::Result::Empty(cmd::Empty {}))
    }

    /// Raises or disarms one member's alarm; raising a raised one or disarming a missing
    /// one changes nothing.
    fn apply_alarm_change(&mut self, change: cmd::AlarmChange, batch: &mut WriteBatch) {
        let entry = AlarmEntry {
            member_id: change.member_id,
            alarm: change.alarm,
        };
        let alarms = &mut self.alarms.alarms;
        let present = alarms.contains(&entry);
        if change.alarm == AlarmKind::AlarmNone as i32 || present == change.activate {
            return;
        }
        if change.activate {
            alarms.push(entry);
            alarms.sort_by_key(|alarm| (alarm.member_id, alarm.alarm));
        } else {
            alarms.retain(|alarm| *alarm != entry);
        }
        batch.put(
            Space::RangeMeta,
            keys::range_record_key(self.range_id, ALARMS),
            self.alarms.encode_to_vec(),
        );
    }

    /// The auth store's revision and whether auth is on, in one number (meta range):
    /// `revision << 1 | enabled`, so a reader can tell its cached copy is current.
    pub fn auth_version(&self) -> u64 {
        (self.auth.revision << 1) | u64::from(self.auth.enabled)
    }

    /// Which alarms are raised anywhere in the cluster (meta range): a bit per
    /// [`AlarmKind`] number.
    pub fn alarm_bits(&self) -> u32 {
        self.alarms.alarms.iter().fold(0, |bits, alarm| {
            bits | 1u32.checked_shl(alarm.alarm as u32).unwrap_or(0)
        })
    }

    fn put_range_map(&self, batch: &mut WriteBatch) {
        batch.put(
            Space::RangeMeta,
            keys::range_record_key(self.range_id, RANGE_MAP),
            self.range_map.encode_to_vec(),
        );
    }

    fn apply_txn(&mut self, request: Txn, revision: i64, pending: &mut ApplyBatch) -> Result<TxnResult, KvError> {
        let revisions = self.revisions();
        let base: &dyn ReadView = self.engine.as_ref();
        let path = {
            let view = Overlaid {
                base,
                overlay: &pending.overlay,
            };
            let path = compare_path(&view, &request)?;
            let unusable: BTreeSet<i64> = self.revoked.iter().chain(&request.unknown_leases).copied().collect();
            check_chosen(&view, &unusable, &request, &path, &mut 0, revisions)?;
            path
        };
        let mut exec = TxnExec {
            base,
            overlay: &mut pending.overlay,
            batch: &mut pending.batch,
            revisions,
            revision,
            sub: 0,
            base_sub: 0,
            keys_delta: 0,
            bytes_delta: 0,
            restrict: None,
            range_id: self.range_id,
            span: snapshot::descriptor_span(&self.descriptor),
            revoked: Vec::new(),
        };
        let mut result = exec.txn(&request, &path, &mut 0)?;
        if exec.sub > exec.base_sub {
            self.state.revision = revision;
            self.last_write = revision;
        }
        let revoked = std::mem::take(&mut exec.revoked);
        self.revoked.extend(revoked);
        let (keys_delta, bytes_delta) = (exec.keys_delta, exec.bytes_delta);
        self.count_live(keys_delta, bytes_delta);
        result.revision = self.state.revision;
        Ok(result)
    }

    /// Compacts history below `revision`. The command's own revision is a fresh one from
    /// the oracle: a compaction point above it is in the cluster's future.
    fn apply_compact(
        &mut self,
        revision: i64,
        command_revision: i64,
        pending: &mut ApplyBatch,
    ) -> Result<command_result::Result, KvError> {
        if revision <= self.state.compact_revision {
            return Err(KvError::Compacted);
        }
        if revision > command_revision {
            return Err(KvError::FutureRevision);
        }
        // The range is final at the command's revision (commands apply in revision
        // order), so an idle range may move up to the compaction point; not further,
        // as etcd's revision does not move with a compaction.
        self.state.revision = self.state.revision.max(revision);
        // The new compaction point is stored first: from then on no read can ask for
        // what the history removal takes, so it need not be atomic with it, and it runs
        // on the background worker, never holding up the log. (Earlier commands were
        // flushed before this one, see `reads_beyond_overlay`.)
        self.state.compact_revision = revision;
        self.flush(pending)?;
        self.compaction_due = Some(revision);
        Ok(command_result::Result::Empty(cmd::Empty {}))
    }

    fn apply_lease_grant(
        &mut self,
        request: &cmd::LeaseGrant,
        batch: &mut WriteBatch,
    ) -> Result<command_result::Result, KvError> {
        if self.lessor.contains(request.id) || self.revoking.contains(&request.id) {
            return Err(KvError::LeaseExists);
        }
        let record = LeaseRecord {
            id: request.id,
            ttl: request.ttl,
            revoking: false,
        };
        batch.put(
            Space::Leases,
            keys::lease_key(self.range_id, request.id),
            record.encode_to_vec(),
        );
        self.lessor.insert(request.id, request.ttl, Instant::now());
        Ok(command_result::Result::Empty(cmd::Empty {}))
    }

    fn apply_publish(&mut self, member: cmd::PublishMember, batch: &mut WriteBatch) {
        let complete = self.members.complete;
        let members = &mut self.members.members;
        match members.iter_mut().find(|known| known.id == member.member_id) {
            Some(known) => {
                known.name = member.name;
                known.client_urls = member.client_urls;
                known.redis_addr = member.redis_addr;
            }
            // Where the membership is replicated, only a member publishes.
            None if complete => return,
            None => members.push(MemberInfo {
                id: member.member_id,
                name: member.name,
                peer_urls: Vec::new(),
                client_urls: member.client_urls,
                redis_addr: member.redis_addr,
                is_learner: false,
            }),
        }
        members.sort_by_key(|member| member.id);
        self.put_members(batch);
    }

    fn put_members(&self, batch: &mut WriteBatch) {
        batch.put(
            Space::RangeMeta,
            keys::range_record_key(self.range_id, MEMBERS),
            self.members.encode_to_vec(),
        );
    }

    /// The membership as replicated (see `range::membership`).
    pub fn membership(&self) -> &PublishedMembers {
        &self.members
    }
}

fn proposal_id(command: &RaftCommand) -> ProposalId {
    ProposalId {
        node: command.origin_node,
        incarnation: command.origin_incarnation,
        request: command.request_id,
    }
}

/// Whether applying `command` reads more than the newest versions of keys (history at
/// a revision, the lease index, all of history for compaction). The overlay of an apply
/// batch holds only newest versions, so the batch must be committed first.
fn reads_beyond_overlay(command: &RaftCommand) -> bool {
    fn txn_reads_history(request: &Txn) -> bool {
        request
            .success
            .iter()
            .chain(&request.failure)
            .any(|operation| match &operation.op {
                Some(op::Op::Read(read)) => read.revision > 0,
                // Attachments written earlier in the batch are not in the overlay.
                Some(op::Op::RevokeLease(_)) => true,
                Some(op::Op::Txn(nested)) => txn_reads_history(nested),
                _ => false,
            })
    }
    match &command.op {
        Some(raft_command::Op::Txn(txn)) => txn_reads_history(txn),
        Some(raft_command::Op::Compact(_))
        | Some(raft_command::Op::Prepare(_))
        | Some(raft_command::Op::Commit(_))
        | Some(raft_command::Op::Rollback(_)) => true,
        _ => false,
    }
}

/// Every range this node holds (has a descriptor of), by id.
pub fn local_descriptors(view: &dyn ReadView) -> Result<Vec<RangeDescriptor>, StorageError> {
    let mut descriptors = Vec::new();
    for pair in view.scan(
        Space::RangeMeta,
        &crate::storage::KeyRange::new(Vec::new(), None),
        false,
    ) {
        let (key, value) = pair?;
        if key.len() == 9 && key[8] == DESCRIPTOR {
            if let Some(descriptor) = decode::<RangeDescriptor>(Space::RangeMeta, Some(value), "descriptor")? {
                descriptors.push(descriptor);
            }
        }
    }
    Ok(descriptors)
}

/// The range's descriptor as stored in `view`.
pub fn descriptor_in(range_id: u64, view: &dyn ReadView) -> Result<Option<RangeDescriptor>, StorageError> {
    decode(
        Space::RangeMeta,
        view.get(Space::RangeMeta, &keys::range_record_key(range_id, DESCRIPTOR))?,
        "descriptor",
    )
}

/// Members as published through the log, as stored in `view`.
/// The auth store, as the meta range in `view` holds it.
pub fn auth_in(range_id: u64, view: &dyn ReadView) -> Result<AuthStore, StorageError> {
    Ok(decode(
        Space::RangeMeta,
        view.get(Space::RangeMeta, &keys::range_record_key(range_id, AUTH))?,
        "auth store",
    )?
    .unwrap_or_default())
}

/// The alarms raised in the cluster, as the meta range in `view` holds them.
pub fn alarms_in(range_id: u64, view: &dyn ReadView) -> Result<Vec<AlarmEntry>, StorageError> {
    let alarms: Option<Alarms> = decode(
        Space::RangeMeta,
        view.get(Space::RangeMeta, &keys::range_record_key(range_id, ALARMS))?,
        "alarms",
    )?;
    Ok(alarms.unwrap_or_default().alarms)
}

pub fn members_in(range_id: u64, view: &dyn ReadView) -> Result<Vec<MemberInfo>, StorageError> {
    Ok(membership_in(range_id, view)?.members)
}

/// The membership record, as the meta range in `view` holds it.
pub fn membership_in(range_id: u64, view: &dyn ReadView) -> Result<PublishedMembers, StorageError> {
    let members: Option<PublishedMembers> = decode(
        Space::RangeMeta,
        view.get(Space::RangeMeta, &keys::range_record_key(range_id, MEMBERS))?,
        "members",
    )?;
    Ok(members.unwrap_or_default())
}

/// Runs a transaction whose every operation is a read, against `view`, without the
/// log: the caller has made `view` current enough (read index) or accepts staleness.
pub fn read_only_txn(view: &dyn ReadView, revisions: Revisions, request: &Txn) -> Result<TxnResult, KvError> {
    let overlay = Overlay::new();
    let view_now = Overlaid {
        base: view,
        overlay: &overlay,
    };
    let path = compare_path(&view_now, request)?;
    check_chosen(
        &view_now,
        &request.unknown_leases.iter().copied().collect(),
        request,
        &path,
        &mut 0,
        revisions,
    )?;
    let mut unused = WriteBatch::new();
    let mut unused_overlay = Overlay::new();
    let mut exec = TxnExec {
        base: view,
        overlay: &mut unused_overlay,
        batch: &mut unused,
        revisions,
        revision: revisions.current + 1,
        sub: 0,
        base_sub: 0,
        keys_delta: 0,
        bytes_delta: 0,
        restrict: None,
        range_id: 0,
        span: KeyRange::new(Vec::new(), None),
        revoked: Vec::new(),
    };
    let mut result = exec.txn(request, &path, &mut 0)?;
    assert!(exec.sub == 0 && unused.is_empty(), "a read-only transaction wrote");
    result.revision = revisions.current;
    Ok(result)
}

pub fn refusal_to_proto(error: &KvError) -> cmd::CommandError {
    let kind = match error {
        KvError::Compacted => cmd::ErrorKind::Compacted,
        KvError::FutureRevision => cmd::ErrorKind::FutureRevision,
        KvError::KeyNotFound => cmd::ErrorKind::KeyNotFound,
        KvError::LeaseNotFound => cmd::ErrorKind::LeaseNotFound,
        KvError::UnknownMember => cmd::ErrorKind::UnknownMember,
        KvError::LeaseExists => cmd::ErrorKind::LeaseExists,
        KvError::StaleRevision => cmd::ErrorKind::StaleRevision,
        KvError::EpochMismatch { .. } => cmd::ErrorKind::EpochMismatch,
        KvError::Locked { .. } => cmd::ErrorKind::Locked,
        KvError::Aborted => cmd::ErrorKind::Aborted,
        KvError::Committed => cmd::ErrorKind::Committed,
        KvError::MemberExists => cmd::ErrorKind::MemberExists,
        KvError::PeerUrlExists => cmd::ErrorKind::PeerUrlExists,
        KvError::MemberNotLearner => cmd::ErrorKind::MemberNotLearner,
        KvError::MembershipRefused(_) => cmd::ErrorKind::MembershipRefused,
        // Applying never bounds a response; a replicated refusal cannot carry it.
        KvError::Storage(_)
        | KvError::ResponseTooLarge { .. }
        | KvError::WrongRange(_)
        | KvError::BadSplit(_)
        | KvError::BadCommit(_) => cmd::ErrorKind::Unspecified,
    };
    cmd::CommandError {
        kind: kind as i32,
        detail: error.to_string(),
        current: match error {
            KvError::EpochMismatch { current, .. } => current.clone(),
            _ => Vec::new(),
        },
        locked_by: match error {
            KvError::Locked { txn_id, .. } => txn_id.clone().into(),
            _ => Default::default(),
        },
        locked_primary: match error {
            KvError::Locked { primary, .. } => *primary,
            _ => 0,
        },
    }
}

pub fn refusal_from_proto(error: &cmd::CommandError) -> KvError {
    match error.kind() {
        cmd::ErrorKind::Compacted => KvError::Compacted,
        cmd::ErrorKind::FutureRevision => KvError::FutureRevision,
        cmd::ErrorKind::KeyNotFound => KvError::KeyNotFound,
        cmd::ErrorKind::LeaseNotFound => KvError::LeaseNotFound,
        cmd::ErrorKind::UnknownMember => KvError::UnknownMember,
        cmd::ErrorKind::LeaseExists => KvError::LeaseExists,
        cmd::ErrorKind::StaleRevision => KvError::StaleRevision,
        cmd::ErrorKind::EpochMismatch => KvError::EpochMismatch {
            detail: error.detail.clone(),
            current: error.current.clone(),
        },
        cmd::ErrorKind::Locked => KvError::Locked {
            txn_id: error.locked_by.to_vec(),
            primary: error.locked_primary,
        },
        cmd::ErrorKind::Aborted => KvError::Aborted,
        cmd::ErrorKind::Committed => KvError::Committed,
        cmd::ErrorKind::MemberExists => KvError::MemberExists,
        cmd::ErrorKind::PeerUrlExists => KvError::PeerUrlExists,
        cmd::ErrorKind::MemberNotLearner => KvError::MemberNotLearner,
        cmd::ErrorKind::MembershipRefused => KvError::MembershipRefused(error.detail.clone()),
        cmd::ErrorKind::Unspecified => KvError::Storage(StorageError::Engine(error.detail.clone())),
    }
}

/// Outcome of every compare of the transaction and of the nested transactions on the
/// chosen branches, depth first, all against the state before the transaction (as
/// etcd decides them).
fn compare_path(view: &dyn MvccRead, request: &Txn) -> Result<Vec<bool>, KvError> {
    let mut path = Vec::new();
    fill_path(view, request, &mut path)?;
    Ok(path)
}

fn fill_path(view: &dyn MvccRead, request: &Txn, path: &mut Vec<bool>) -> Result<(), KvError> {
    let mut succeeded = true;
    for compare in &request.compare {
        if !kv::compare_holds(view, compare)? {
            succeeded = false;
            break;
        }
    }
    path.push(succeeded);
    let ops = if succeeded { &request.success } else { &request.failure };
    for operation in ops {
        if let Some(op::Op::Txn(nested)) = &operation.op {
            fill_path(view, nested, path)?;
        }
    }
    Ok(())
}

/// Refuses the whole transaction before any write if an operation on the chosen path
/// cannot run: reads at unreadable revisions, puts with unknown leases or with
/// `ignore_value`/`ignore_lease` on a missing key.
fn check_chosen(
    view: &dyn MvccRead,
    revoked: &BTreeSet<i64>,
    request: &Txn,
    path: &[bool],
    position: &mut usize,
    revisions: Revisions,
) -> Result<(), KvError> {
    let succeeded = path[*position];
    *position += 1;
    let ops = if succeeded { &request.success } else { &request.failure };
    for operation in ops {
        match &operation.op {
            Some(op::Op::Read(read)) => revisions.check(read.revision)?,
            Some(op::Op::Put(put)) => {
                if put.lease != 0 && revoked.contains(&put.lease) {
                    return Err(KvError::LeaseNotFound);
                }
                if (put.ignore_value || put.ignore_lease) && view.latest(&put.key)?.is_none() {
                    return Err(KvError::KeyNotFound);
                }
            }
            Some(op::Op::Txn(nested)) => check_chosen(view, revoked, nested, path, position, revisions)?,
            Some(op::Op::Delete(_)) | Some(op::Op::RevokeLease(_)) | None => {}
        }
    }
    Ok(())
}

/// One transaction being applied: its writes go to the batch and to an overlay that
/// its own later operations read through.
struct TxnExec<'a> {
    base: &'a dyn ReadView,
    /// Writes of this and earlier commands of the apply batch.
    overlay: &'a mut Overlay,
    batch: &'a mut WriteBatch,
    revisions: Revisions,
    /// The revision every write of this transaction gets.
    revision: i64,
    /// Writes so far; each gets its own sub revision, from `base_sub` on.
    sub: i64,
    base_sub: i64,
    /// How the range's live keys and bytes change.
    keys_delta: i64,
    bytes_delta: i64,
    /// A transaction over several ranges runs only on the keys this range holds.
    restrict: Option<KeyRange>,
    /// The range (for the records a lease revocation leaves) and its span.
    range_id: u64,
    span: KeyRange,
    /// Leases this transaction revoked here.
    revoked: Vec<i64>,
}

/// Bytes a live key counts for in the range's statistics.
pub fn live_bytes(key: &[u8], record: &Record) -> i64 {
    (key.len() + record.value.len()) as i64
}

impl TxnExec<'_> {
    /// The revision reads inside the transaction report: the one being built once the
    /// transaction has written, the store's before.
    fn read_revision(&self) -> i64 {
        if self.sub > self.base_sub {
            self.revision
        } else {
            self.revisions.current
        }
    }

    fn txn(&mut self, request: &Txn, path: &[bool], position: &mut usize) -> Result<TxnResult, KvError> {
        let succeeded = path[*position];
        *position += 1;
        let ops = if succeeded { &request.success } else { &request.failure };
        let mut results = Vec::with_capacity(ops.len());
        for operation in ops {
            let result = match &operation.op {
                Some(op::Op::Read(read)) => match self.restricted(read.span.as_ref()) {
                    Some(span) => op_result::Result::Read(self.read(&Read {
                        span: Some(span),
                        ..read.clone()
                    })?),
                    None => op_result::Result::Read(ReadResult {
                        revision: self.read_revision(),
                        ..Default::default()
                    }),
                },
                Some(op::Op::Put(put)) if !self.holds(&put.key) => op_result::Result::Put(PutResult {
                    prev_kv: None,
                    revision: self.revision,
                }),
                Some(op::Op::Put(put)) => op_result::Result::Put(self.put(put)?),
                Some(op::Op::Delete(delete)) => match self.restricted(delete.span.as_ref()) {
                    Some(span) => op_result::Result::Delete(self.delete(&Delete {
                        span: Some(span),
                        prev_kv: delete.prev_kv,
                    })?),
                    None => op_result::Result::Delete(DeleteResult {
                        revision: self.read_revision(),
                        ..Default::default()
                    }),
                },
                Some(op::Op::Txn(nested)) => {
                    let mut result = self.txn(nested, path, position)?;
                    result.revision = self.read_revision();
                    op_result::Result::Txn(result)
                }
                Some(op::Op::RevokeLease(revoke)) => op_result::Result::Delete(self.revoke_lease(revoke.lease)?),
                None => continue,
            };
            results.push(OpResult { result: Some(result) });
        }
        Ok(TxnResult {
            succeeded,
            results,
            revision: 0,
        })
    }

    /// Deletes every key of this range (of its part, when restricted) attached to the
    /// lease, and leaves a record that refuses later puts with it.
    fn revoke_lease(&mut self, lease: i64) -> Result<DeleteResult, KvError> {
        let within = self.restrict.clone().unwrap_or_else(|| self.span.clone());
        let mut attached = Vec::new();
        for pair in self.base.scan(Space::LeaseKeys, &keys::lease_keys(lease), false) {
            let (entry, _) = pair?;
            let key = keys::lease_entry_key(&entry);
            if within.contains(key) {
                attached.push(key.to_vec());
            }
        }
        let mut deleted = 0;
        for key in &attached {
            let current = Overlaid {
                base: self.base,
                overlay: self.overlay,
            }
            .latest(key)?;
            match current {
                Some(record) if record.lease == lease => {
                    self.delete_key(key, &record);
                    deleted += 1;
                }
                // The key moved to another lease or is gone: only the index entry is stale.
                _ => self.batch.delete(Space::LeaseKeys, keys::lease_key_entry(lease, key)),
            }
        }
        let mut tombstone = keys::range_record_key(self.range_id, REVOKED);
        tombstone.extend_from_slice(&(lease as u64).to_be_bytes());
        self.batch.put(Space::RangeMeta, tombstone, Vec::new());
        self.revoked.push(lease);
        Ok(DeleteResult {
            deleted,
            prev_kvs: Vec::new(),
            revision: self.read_revision(),
        })
    }

    /// The part of `span` this execution covers (all of it unless restricted).
    fn restricted(&self, span: Option<&Span>) -> Option<Span> {
        let whole = Span::default();
        let span = span.unwrap_or(&whole);
        match &self.restrict {
            None => Some(span.clone()),
            Some(within) => twophase::intersect(span, within),
        }
    }

    fn holds(&self, key: &[u8]) -> bool {
        self.restrict.as_ref().is_none_or(|within| within.contains(key))
    }

    fn read(&self, request: &Read) -> Result<ReadResult, KvError> {
        let view = Overlaid {
            base: self.base,
            overlay: self.overlay,
        };
        let mut revisions = self.revisions;
        revisions.current = self.read_revision();
        kv::range(&view, request, revisions, self.read_revision(), usize::MAX)
    }

    fn put(&mut self, request: &Put) -> Result<PutResult, KvError> {
        let key = request.key.to_vec();
        let previous = Overlaid {
            base: self.base,
            overlay: self.overlay,
        }
        .latest(&key)?;
        let (value, lease) = match &previous {
            Some(previous) => (
                if request.ignore_value {
                    previous.value.clone()
                } else {
                    request.value.to_vec()
                },
                if request.ignore_lease {
                    previous.lease
                } else {
                    request.lease
                },
            ),
            None => (request.value.to_vec(), request.lease),
        };
        let record = Record {
            create_revision: previous.as_ref().map_or(self.revision, |p| p.create_revision),
            mod_revision: self.revision,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            lease,
            value,
        };
        let previous_lease = previous.as_ref().map_or(0, |p| p.lease);
        if previous_lease != 0 && previous_lease != lease {
            self.batch
                .delete(Space::LeaseKeys, keys::lease_key_entry(previous_lease, &key));
        }
        if lease != 0 && previous_lease != lease {
            self.batch
                .put(Space::LeaseKeys, keys::lease_key_entry(lease, &key), Vec::new());
        }
        match &previous {
            Some(previous) => self.bytes_delta -= live_bytes(&key, previous),
            None => self.keys_delta += 1,
        }
        self.bytes_delta += live_bytes(&key, &record);
        mvcc::write_put(self.batch, &key, &record, self.sub);
        self.sub += 1;
        self.overlay.insert(key.clone(), Some(record));
        Ok(PutResult {
            prev_kv: match previous {
                Some(previous) if request.prev_kv => Some(kv::to_key_value(&key, previous)),
                _ => None,
            },
            revision: self.revision,
        })
    }

    fn delete_key(&mut self, key: &[u8], record: &Record) {
        if record.lease != 0 {
            self.batch
                .delete(Space::LeaseKeys, keys::lease_key_entry(record.lease, key));
        }
        self.keys_delta -= 1;
        self.bytes_delta -= live_bytes(key, record);
        mvcc::write_delete(self.batch, key, self.revision, self.sub);
        self.sub += 1;
        self.overlay.insert(key.to_vec(), None);
    }

    fn delete(&mut self, request: &Delete) -> Result<DeleteResult, KvError> {
        let span = kv::key_range(request.span.as_ref().unwrap_or(&Default::default()));
        let doomed: Vec<(Vec<u8>, Record)> = Overlaid {
            base: self.base,
            overlay: self.overlay,
        }
        .scan_latest(&span)
        .collect::<Result<_, StorageError>>()?;
        let mut prev_kvs = Vec::new();
        for (key, record) in &doomed {
            self.delete_key(key, record);
            if request.prev_kv {
                prev_kvs.push(kv::to_key_value(key, record.clone()));
            }
        }
        Ok(DeleteResult {
            deleted: doomed.len() as i64,
            prev_kvs,
            revision: self.read_revision(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::shoal::kv::{compare, Compare, Op};
    use crate::range::ops;
    use crate::storage::FjallEngine;

    struct Fixture {
        _dir: tempfile::TempDir,
        machine: StateMachine,
        index: u64,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let engine: Arc<dyn Engine> = Arc::new(FjallEngine::open(dir.path()).unwrap());
            let machine = StateMachine::load(
                super::super::FIRST_DATA_RANGE_ID,
                engine,
                RangeDescriptor {
                    id: super::super::FIRST_DATA_RANGE_ID,
                    ..Default::default()
                },
            )
            .unwrap();
            Self {
                _dir: dir,
                machine,
                index: 0,
            }
        }

        fn apply(&mut self, op: raft_command::Op) -> command_result::Result {
            self.index += 1;
            let command = RaftCommand {
                origin_node: 1,
                request_id: self.index,
                proposed_term: 1,
                origin_incarnation: 1,
                revision: self.machine.revisions().current + 1,
                epoch: 0,
                op: Some(op),
            };
            let mut pending = ApplyBatch::default();
            let applied = self
                .machine
                .apply_command(self.index, 1, &command.encode_to_vec(), &mut pending)
                .unwrap()
                .unwrap();
            self.machine.flush(&mut pending).unwrap();
            applied.result.unwrap().result.unwrap()
        }

        fn put(&mut self, key: &str, value: &str) -> PutResult {
            match self.apply(put_command(key, value)) {
                command_result::Result::Txn(txn) => match ops::only_result(txn) {
                    Some(op_result::Result::Put(put)) => put,
                    other => panic!("unexpected {other:?}"),
                },
                other => panic!("unexpected {other:?}"),
            }
        }

        fn delete(&mut self, key: &str) -> DeleteResult {
            let delete = Delete {
                span: Some(ops::span(key.as_bytes().to_vec(), Vec::new())),
                prev_kv: true,
            };
            match self.apply(raft_command::Op::Txn(ops::single(op::Op::Delete(delete)))) {
                command_result::Result::Txn(txn) => match ops::only_result(txn) {
                    Some(op_result::Result::Delete(delete)) => delete,
                    other => panic!("unexpected {other:?}"),
                },
                other => panic!("unexpected {other:?}"),
            }
        }

        fn get(&self, key: &str, revision: i64) -> Result<ReadResult, KvError> {
            let request = Read {
                revision,
                ..ops::read(ops::span(key.as_bytes().to_vec(), Vec::new()))
            };
            let revisions = self.machine.revisions();
            kv::range(
                &self.machine.engine.snapshot(),
                &request,
                revisions,
                revisions.current,
                usize::MAX,
            )
        }
    }

    fn put_command(key: &str, value: &str) -> raft_command::Op {
        let put = Put {
            prev_kv: true,
            ..ops::put(key.as_bytes().to_vec(), value.as_bytes().to_vec())
        };
        raft_command::Op::Txn(ops::single(op::Op::Put(put)))
    }

    fn put_op(key: &str, value: &str) -> Op {
        Op {
            op: Some(op::Op::Put(ops::put(
                key.as_bytes().to_vec(),
                value.as_bytes().to_vec(),
            ))),
        }
    }

    fn read_op(key: &str, revision: i64) -> Op {
        Op {
            op: Some(op::Op::Read(Read {
                revision,
                ..ops::read(ops::span(key.as_bytes().to_vec(), Vec::new()))
            })),
        }
    }

    #[test]
    fn commands_of_one_batch_see_each_others_writes() {
        let mut f = Fixture::new();
        f.put("a", "0");
        let mut pending = ApplyBatch::default();
        let mut apply = |machine: &mut StateMachine, index: u64, op: raft_command::Op| {
            let command = RaftCommand {
                origin_node: 1,
                request_id: index,
                proposed_term: 1,
                origin_incarnation: 1,
                revision: index as i64 + 1,
                epoch: 0,
                op: Some(op),
            };
            machine
                .apply_command(index, 1, &command.encode_to_vec(), &mut pending)
                .unwrap()
                .unwrap()
                .result
                .unwrap()
                .result
                .unwrap()
        };
        let first = apply(&mut f.machine, 2, put_command("a", "1"));
        let second = apply(&mut f.machine, 3, put_command("a", "2"));
        let command_result::Result::Txn(second) = second else {
            panic!()
        };
        let Some(op_result::Result::Put(second)) = ops::only_result(second) else {
            panic!()
        };
        assert_eq!(
            second.prev_kv.unwrap().value.as_ref(),
            b"1",
            "the second put saw the first"
        );
        assert!(matches!(first, command_result::Result::Txn(_)));
        // A read at a past revision forces the batch out first, so it sees revision 3.
        let txn = apply(
            &mut f.machine,
            4,
            raft_command::Op::Txn(Txn {
                success: vec![read_op("a", 3)],
                ..Default::default()
            }),
        );
        let command_result::Result::Txn(txn) = txn else {
            panic!()
        };
        let Some(op_result::Result::Read(range)) = &txn.results[0].result else {
            panic!()
        };
        assert_eq!(range.kvs[0].value.as_ref(), b"1");
        f.machine.flush(&mut pending).unwrap();
        assert_eq!(f.get("a", 0).unwrap().kvs[0].value.as_ref(), b"2");
        assert_eq!(f.machine.applied_index(), 4);
    }

    #[test]
    fn a_command_committed_in_another_term_than_proposed_is_skipped() {
        let mut f = Fixture::new();
        f.put("a", "1");
        let stale = RaftCommand {
            origin_node: 2,
            request_id: 7,
            proposed_term: 1,
            origin_incarnation: 3,
            revision: 3,
            epoch: 0,
            op: Some(put_command("a", "stale")),
        };
        let mut pending = ApplyBatch::default();
        let applied = f
            .machine
            .apply_command(2, 2, &stale.encode_to_vec(), &mut pending)
            .unwrap()
            .unwrap();
        f.machine.flush(&mut pending).unwrap();
        assert_eq!(
            applied.id,
            ProposalId {
                node: 2,
                incarnation: 3,
                request: 7
            }
        );
        assert!(applied.result.is_none(), "a skipped command has no result");
        assert_eq!(f.machine.applied_index(), 2, "the entry still counts as applied");
        let now = f.get("a", 0).unwrap();
        assert_eq!(now.kvs[0].value.as_ref(), b"1");
        assert_eq!(now.revision, 2, "a skipped command takes no revision");
    }

    #[test]
    fn puts_advance_revision_and_version_and_return_prev_kv() {
        let mut f = Fixture::new();
        let first = f.put("a", "1");
        assert_eq!(first.revision, 2);
        assert!(first.prev_kv.is_none());
        let second = f.put("a", "2");
        assert_eq!(second.revision, 3);
        assert_eq!(second.prev_kv.unwrap().value.as_ref(), b"1");
        let now = f.get("a", 0).unwrap();
        let kv = &now.kvs[0];
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        assert_eq!(f.get("a", 2).unwrap().kvs[0].value.as_ref(), b"1");
        assert!(matches!(f.get("a", 4), Err(KvError::FutureRevision)));
    }

    #[test]
    fn txn_reads_its_own_writes_and_bumps_revision_once() {
        let mut f = Fixture::new();
        f.put("a", "1");
        let result = f.apply(raft_command::Op::Txn(Txn {
            compare: vec![Compare {
                result: compare::Result::Equal as i32,
                target: compare::Target::Value as i32,
                span: Some(ops::span(b"a".to_vec(), Vec::new())),
                operand: Some(compare::Operand::Value(b"1".to_vec().into())),
            }],
            success: vec![put_op("a", "2"), put_op("b", "2"), read_op("a", 0)],
            failure: vec![],
            unknown_leases: vec![],
        }));
        let command_result::Result::Txn(txn) = result else {
            panic!("{result:?}")
        };
        assert!(txn.succeeded);
        assert_eq!(txn.revision, 3);
        let Some(op_result::Result::Read(range)) = &txn.results[2].result else {
            panic!()
        };
        assert_eq!(range.kvs[0].value.as_ref(), b"2");
        assert_eq!(range.kvs[0].mod_revision, 3);
        assert_eq!(f.get("b", 0).unwrap().kvs[0].mod_revision, 3);
    }

    #[test]
    fn refused_commands_change_nothing_but_the_applied_index() {
        let mut f = Fixture::new();
        f.put("a", "1");
        let result = f.apply(raft_command::Op::Txn(Txn {
            success: vec![put_op("b", "1"), read_op("a", 99)],
            ..Default::default()
        }));
        assert!(matches!(result, command_result::Result::Error(ref e) if e.kind() == cmd::ErrorKind::FutureRevision));
        assert_eq!(f.get("b", 0).unwrap().count, 0);
        assert_eq!(f.machine.revisions().current, 2);
        assert_eq!(f.machine.applied_index(), 2);
    }

    /// A command whose revision is not above the range's (a deposed leader's, let
    /// through after a newer one) is refused and writes nothing: the range's
    /// revisions only go up in log order, so the state at its revision is final.
    #[test]
    fn a_command_below_the_ranges_revision_is_refused() {
        let mut f = Fixture::new();
        f.put("a", "1");
        f.put("a", "2");
        assert_eq!(f.machine.revisions().current, 3);
        let late = RaftCommand {
            origin_node: 2,
            request_id: 9,
            proposed_term: 1,
            origin_incarnation: 1,
            revision: 3,
            epoch: 0,
            op: Some(put_command("a", "late")),
        };
        let mut pending = ApplyBatch::default();
        let applied = f
            .machine
            .apply_command(3, 1, &late.encode_to_vec(), &mut pending)
            .unwrap()
            .unwrap();
        f.machine.flush(&mut pending).unwrap();
        let result = applied.result.unwrap().result.unwrap();
        assert!(matches!(result, command_result::Result::Error(ref e) if e.kind() == cmd::ErrorKind::StaleRevision));
        assert_eq!(f.get("a", 0).unwrap().kvs[0].value.as_ref(), b"2");
        assert_eq!(f.machine.revisions().current, 3);
    }

    #[test]
    fn deleting_nothing_keeps_the_revision() {
        let mut f = Fixture::new();
        f.put("a", "1");
        let delete = f.delete("zzz");
        assert_eq!(delete.deleted, 0);
        assert_eq!(delete.revision, 2);
        let delete = f.delete("a");
        assert_eq!((delete.deleted, delete.revision), (1, 3));
        assert_eq!(delete.prev_kvs[0].value.as_ref(), b"1");
    }

    #[test]
    fn compaction_refuses_old_reads_and_keeps_newer_ones() {
        let mut f = Fixture::new();
        f.put("a", "1");
        f.put("a", "2");
        f.put("a", "3");
        let result = f.apply(raft_command::Op::Compact(cmd::Compact { revision: 3 }));
        assert!(matches!(result, command_result::Result::Empty(_)));
        assert!(matches!(f.get("a", 2), Err(KvError::Compacted)));
        assert_eq!(f.get("a", 3).unwrap().kvs[0].value.as_ref(), b"2");
        let again = f.apply(raft_command::Op::Compact(cmd::Compact { revision: 3 }));
        assert!(matches!(again, command_result::Result::Error(ref e) if e.kind() == cmd::ErrorKind::Compacted));
    }

    /// A split keeps the keys below the split key in this range and gives the rest a
    /// new range, in one batch: both descriptors (epoch bumped), the new range's apply
    /// state and its Raft starting point. Commands planned on the old epoch, or touching
    /// keys that moved, are refused as stale plans.
    #[test]
    fn a_split_hands_the_upper_keys_to_a_new_range_and_refuses_stale_plans() {
        let mut f = Fixture::new();
        for key in ["a", "b", "c", "d"] {
            f.put(key, "v");
        }
        let revision = f.machine.revisions().current;
        let epoch = f.machine.descriptor().epoch;
        let split = |expected_epoch| {
            raft_command::Op::Split(cmd::Split {
                split_key: b"c".to_vec().into(),
                new_range_id: 7,
                expected_epoch,
                left_keys: 2,
                left_bytes: 4,
            })
        };
        assert!(matches!(f.apply(split(epoch)), command_result::Result::Empty(_)));
        let left = f.machine.descriptor().clone();
        assert_eq!((left.end_key.as_ref(), left.epoch), (&b"c"[..], epoch + 1));
        let created = f.machine.take_created();
        assert_eq!(created.len(), 1);
        let right = &created[0];
        assert_eq!(
            (right.id, right.start_key.as_ref(), right.end_key.as_ref()),
            (7, &b"c"[..], &b""[..])
        );
        assert_eq!(right.epoch, epoch + 1);
        let right_machine = StateMachine::load(7, f.machine.engine.clone(), RangeDescriptor::default()).unwrap();
        assert_eq!(right_machine.descriptor(), right);
        assert_eq!(
            right_machine.revisions().current,
            revision,
            "the new range starts at the revision"
        );
        assert_eq!(right_machine.applied_index(), SPLIT_INIT_INDEX);
        assert_eq!(right_machine.live().0, 2, "the upper half's keys");
        assert_eq!(f.machine.live().0, 2);

        // The same split again: planned on an epoch that is gone.
        let again = f.apply(split(epoch));
        assert!(matches!(again, command_result::Result::Error(ref e) if e.kind() == cmd::ErrorKind::EpochMismatch));
        // A put of a key that moved, routed by the old map.
        let moved = f.apply(put_command("d", "late"));
        let command_result::Result::Error(refusal) = moved else {
            panic!("{moved:?}")
        };
        assert_eq!(refusal.kind(), cmd::ErrorKind::EpochMismatch);
        assert_eq!(refusal.current.len(), 2, "the refusal names both halves: {refusal:?}");
        assert_eq!(f.get("d", 0).unwrap().kvs[0].value.as_ref(), b"v", "nothing applied");
        f.put("b", "still here");
    }
}
