//! Reads served from this node's copy of a range, outside the store loop. Each read pins
//! one engine snapshot, so the data and the revision it reports belong together, and
//! pins it only while no snapshot install is writing over the range
//! ([`RangeStatus::whole_view`]). Whether the copy is current enough is the caller's
//! business (a read index first for linearizable reads, nothing for serializable ones).

use super::kv::{self, KvError, Revisions};
use super::replica::RangeStatus;
use super::state_machine::{self, StateMachine};
use crate::proto::shoal::kv::{Read, ReadResult, Txn, TxnResult};
use crate::proto::shoal::state::MemberInfo;
use crate::storage::mvcc::{AsOf, MvccRead};
use crate::storage::{keys, Engine, KeyRange, ReadView, Space, StorageError};
use std::sync::Arc;

#[derive(Clone)]
pub struct RangeReader {
    /// `None` once the node's run stopped ([`RangeReader::close`]); shared by clones.
    engine: Arc<std::sync::RwLock<Option<Arc<dyn Engine>>>>,
}

impl RangeReader {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self {
            engine: Arc::new(std::sync::RwLock::new(Some(engine))),
        }
    }

    /// Lets go of the engine when the node's run stops: whatever still holds the reader
    /// then (a task finishing a request) reads nothing more, and cannot keep the storage
    /// open for the run that follows.
    pub fn close(&self) {
        *self.engine.write().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// The range's data as it is now, or `None` while a snapshot is being installed
    /// over it (ask again once it is done) or once the reader is closed.
    pub fn pin(&self, range_id: u64, status: &RangeStatus) -> Option<PinnedRange> {
        let engine = self.engine()?;
        let view = status.whole_view(engine.as_ref())?;
        Some(PinnedRange {
            range_id,
            view,
            revisions: None,
            lock_ranges: vec![range_id],
        })
    }

    /// Several ranges' data as they were at `revision` (each final at it), read from one
    /// pinned view; `compact` is the highest compaction point among them.
    pub fn pin_as_of(&self, view: Arc<dyn ReadView>, revision: i64, compact: i64, ranges: Vec<u64>) -> PinnedRange {
        PinnedRange {
            range_id: 0,
            view: Arc::new(AsOf { view, revision }),
            revisions: Some(Revisions {
                current: revision,
                compact,
            }),
            lock_ranges: ranges,
        }
    }

    pub fn engine(&self) -> Option<Arc<dyn Engine>> {
        self.engine
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn disk_space_bytes(&self) -> u64 {
        self.engine().map_or(0, |engine| engine.disk_space_bytes())
    }
}

/// Where a range splits: the right half's first key, and what lies below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitPoint {
    pub key: Vec<u8>,
    pub left_keys: u64,
    pub left_bytes: u64,
}

/// What [`PinnedRange::hash_kv`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    pub compact_revision: i64,
    /// The revision hashed up to.
    pub revision: i64,
}

/// One range's data at one applied state, or several ranges' at one revision.
pub struct PinnedRange {
    range_id: u64,
    view: Arc<dyn ReadView>,
    /// Set for several ranges at a revision; one range's come from its apply state.
    revisions: Option<Revisions>,
    /// The ranges whose locks a read must respect.
    lock_ranges: Vec<u64>,
}

impl PinnedRange {
    /// A read at this state, its result kept under `max_response_bytes` (see
    /// [`kv::range`]).
    pub fn read(&self, request: &Read, max_response_bytes: usize) -> Result<ReadResult, KvError> {
        let revisions = self.revisions()?;
        // Several ranges at a revision all of them were closed at: their commits at
        // or below it happened, locks above it do not matter.
        let at = if request.revision > 0 {
            Some(request.revision)
        } else if self.lock_ranges.len() > 1 || self.range_id == 0 {
            Some(revisions.current)
        } else {
            None
        };
        self.check_locks(
            &[kv::key_range(request.span.as_ref().unwrap_or(&Default::default()))],
            at,
        )?;
        kv::range(&self.view, request, revisions, revisions.current, max_response_bytes)
    }

    pub fn read_only_txn(&self, request: &Txn) -> Result<TxnResult, KvError> {
        let revisions = self.revisions()?;
        let at = (self.range_id == 0).then_some(revisions.current);
        self.check_locks(&super::ops::key_ranges(request), at)?;
        state_machine::read_only_txn(self.view.as_ref(), revisions, request)
    }

    /// A transaction over several ranges holding a lock on these keys may still commit
    /// at or below `revision`: the read must wait for it (`Locked`).
    /// etcd's HashKV over the keys of `span` up to `revision` (<= 0: the newest), and
    /// the compaction point and revision it covers. It hashes what every healthy
    /// replica holds alike whatever its background compaction has removed so far: each
    /// key's newest version at or below the compaction point (if live), then every
    /// version after it up to `revision`.
    pub fn hash_kv(&self, span: &KeyRange, revision: i64) -> Result<KvHash, KvError> {
        let revisions = self.revisions()?;
        let at = if revision > 0 { revision } else { revisions.current };
        if at < revisions.compact {
            return Err(KvError::Compacted);
        }
        if at > revisions.current {
            return Err(KvError::FutureRevision);
        }
        self.check_locks(std::slice::from_ref(span), Some(at))?;
        let history = KeyRange::new(
            keys::history_seek(&span.start),
            span.end.as_deref().map(keys::history_seek),
        );
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let hash_entry =
            |hasher: &mut ring::digest::Context, entry: Option<(Vec<u8>, Vec<u8>)>| -> Result<(), StorageError> {
                if let Some((key, value)) = entry {
                    if !crate::storage::mvcc::Record::decode(Space::KvHistory, &value)?.is_tombstone() {
                        hasher.update(&key);
                        hasher.update(&value);
                    }
                }
                Ok(())
            };
        let mut current_key: Option<Vec<u8>> = None;
        // The newest version at or below the compaction point of the key being read.
        let mut base: Option<(Vec<u8>, Vec<u8>)> = None;
        for pair in self.view.scan(Space::KvHistory, &history, false) {
            let (encoded, value) = pair?;
            let (key, entry_revision) = keys::parse_history_key(&encoded).ok_or_else(|| StorageError::Corrupt {
                space: Space::KvHistory,
                detail: "a history key without a revision".into(),
            })?;
            if current_key.as_ref() != Some(&key) {
                hash_entry(&mut hasher, base.take())?;
                current_key = Some(key);
            }
            if entry_revision <= revisions.compact {
                base = Some((encoded, value));
                continue;
            }
            hash_entry(&mut hasher, base.take())?;
            if entry_revision <= at {
                // Tombstones after the compaction point are history too.
                hasher.update(&encoded);
                hasher.update(&value);
            }
        }
        hash_entry(&mut hasher, base.take())?;
        let digest = hasher.finish();
        let mut first = [0u8; 4];
        first.copy_from_slice(&digest.as_ref()[..4]);
        Ok(KvHash {
            hash: u32::from_be_bytes(first),
            compact_revision: revisions.compact,
            revision: at,
        })
    }

    fn check_locks(&self, spans: &[KeyRange], revision: Option<i64>) -> Result<(), KvError> {
        for range_id in &self.lock_ranges {
            let locks = state_machine::locks_in(*range_id, self.view.as_ref())?;
            if let Some(lock) = state_machine::lock_blocking_read(&locks, spans, revision) {
                return Err(KvError::Locked {
                    txn_id: lock.txn_id.to_vec(),
                    primary: lock.primary_range,
                });
            }
        }
        Ok(())
    }

    fn revisions(&self) -> Result<Revisions, StorageError> {
        match self.revisions {
            Some(revisions) => Ok(revisions),
            None => StateMachine::revisions_in(self.range_id, self.view.as_ref()),
        }
    }

    /// Where to split the range so that its halves hold about as many bytes (or keys,
    /// when `by_keys`): the first key of the right half, with the live keys and bytes
    /// below it. `None` when the range cannot be split (fewer than two keys).
    pub fn split_point(&self, span: &KeyRange, by_keys: bool) -> Result<Option<SplitPoint>, StorageError> {
        let (total_keys, total_bytes) = {
            let mut keys = 0u64;
            let mut bytes = 0u64;
            for item in self.view.scan_latest(span) {
                let (key, record) = item?;
                keys += 1;
                bytes += (key.len() + record.value.len()) as u64;
            }
            (keys, bytes)
        };
        if total_keys < 2 {
            return Ok(None);
        }
        let mut left_bytes = 0u64;
        for (left_keys, item) in (0u64..).zip(self.view.scan_latest(span)) {
            let (key, record) = item?;
            let half_reached = if by_keys {
                left_keys >= total_keys / 2
            } else {
                left_bytes >= total_bytes / 2
            };
            if left_keys > 0 && half_reached {
                return Ok(Some(SplitPoint {
                    key,
                    left_keys,
                    left_bytes,
                }));
            }
            left_bytes += (key.len() + record.value.len()) as u64;
        }
        Ok(None)
    }

    /// Meta range: the map of every data range, in this state.
    pub fn range_map(&self) -> Result<crate::proto::shoal::state::RangeMap, StorageError> {
        StateMachine::range_map_in(self.view.as_ref())
    }

    /// The locks of transactions over several ranges the range holds, in this state.
    pub fn locks(&self) -> Result<Vec<crate::proto::shoal::state::TxnLock>, StorageError> {
        state_machine::locks_in(self.range_id, self.view.as_ref())
    }

    /// How a transaction whose primary is this range ended, in this state.
    pub fn txn_record(&self, txn_id: &[u8]) -> Result<Option<crate::proto::shoal::state::TxnRecord>, StorageError> {
        state_machine::txn_record_in(self.range_id, self.view.as_ref(), txn_id)
    }

    /// The range's epoch in this state.
    pub fn epoch(&self) -> Result<u64, StorageError> {
        Ok(state_machine::descriptor_in(self.range_id, self.view.as_ref())?.map_or(0, |descriptor| descriptor.epoch))
    }

    pub fn revision(&self) -> Result<i64, StorageError> {
        Ok(StateMachine::revisions_in(self.range_id, self.view.as_ref())?.current)
    }

    /// The auth store (the meta range holds it).
    pub fn auth_store(&self) -> Result<crate::proto::shoal::state::AuthStore, StorageError> {
        state_machine::auth_in(self.range_id, self.view.as_ref())
    }

    /// The alarms raised in the cluster (the meta range holds them).
    pub fn alarms(&self) -> Result<Vec<crate::proto::shoal::state::AlarmEntry>, StorageError> {
        state_machine::alarms_in(self.range_id, self.view.as_ref())
    }

    pub fn members(&self) -> Result<Vec<MemberInfo>, StorageError> {
        state_machine::members_in(self.range_id, self.view.as_ref())
    }

    /// The membership record (meta range).
    pub fn membership(&self) -> Result<crate::proto::shoal::state::PublishedMembers, StorageError> {
        state_machine::membership_in(self.range_id, self.view.as_ref())
    }

    /// Every lease record of the range (the meta range holds the leases).
    pub fn lease_records(&self) -> Result<Vec<crate::proto::shoal::state::LeaseRecord>, StorageError> {
        let mut leases = Vec::new();
        for pair in self
            .view
            .scan(Space::Leases, &keys::range_records(self.range_id), false)
        {
            let (_, value) = pair?;
            let lease = <crate::proto::shoal::state::LeaseRecord as prost::Message>::decode(value.as_slice()).map_err(
                |error| StorageError::Corrupt {
                    space: Space::Leases,
                    detail: format!("lease: {error}"),
                },
            )?;
            leases.push(lease);
        }
        Ok(leases)
    }

    /// Ids of every lease in use (not being revoked).
    pub fn lease_ids(&self) -> Result<Vec<i64>, StorageError> {
        Ok(self
            .lease_records()?
            .into_iter()
            .filter(|lease| !lease.revoking)
            .map(|lease| lease.id)
            .collect())
    }

    /// Ids of the leases being revoked.
    pub fn revoking_leases(&self) -> Result<Vec<i64>, StorageError> {
        Ok(self
            .lease_records()?
            .into_iter()
            .filter(|lease| lease.revoking)
            .map(|lease| lease.id)
            .collect())
    }

    /// Whether the lease exists and is in use.
    pub fn lease_exists(&self, lease_id: i64) -> Result<bool, StorageError> {
        let Some(bytes) = self
            .view
            .get(Space::Leases, &keys::lease_key(self.range_id, lease_id))?
        else {
            return Ok(false);
        };
        let lease =
            <crate::proto::shoal::state::LeaseRecord as prost::Message>::decode(bytes.as_slice()).map_err(|error| {
                StorageError::Corrupt {
                    space: Space::Leases,
                    detail: format!("lease: {error}"),
                }
            })?;
        Ok(!lease.revoking)
    }

    /// The etcd keys attached to a lease.
    /// The internal keys attached to a lease (in every range this node holds).
    pub fn lease_keys(&self, lease_id: i64) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut attached = Vec::new();
        for pair in self.view.scan(Space::LeaseKeys, &keys::lease_keys(lease_id), false) {
            let (entry, _) = pair?;
            attached.push(keys::lease_entry_key(&entry).to_vec());
        }
        Ok(attached)
    }
}
