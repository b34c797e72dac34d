//! A new cluster's ranges written from a backup: the meta range and one data range
//! holding every key, on the given voters, as a new cluster's bootstrap makes them,
//! except that the data range is at the backup's revision with its keys in place and
//! the oracle continues above it. Every member writes the same state from the same
//! file, so their replicas agree before their first election.

use super::log_store::LogStore;
use super::snapshot::SnapshotRegistry;
use super::state_machine::{self, StateMachine};
use super::{first_data_range, meta_range, FIRST_DATA_RANGE_ID, META_RANGE_ID};
use crate::proto::shoal::kv::KeyValue;
use crate::proto::shoal::state::LeaseRecord;
use crate::storage::mvcc::{self, Record};
use crate::storage::{keys, Durability, Engine, Space, StorageError, WriteBatch};
use prost::Message;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Keys written per engine batch.
const BATCH_KEYS: usize = 4_096;
/// The life of a lease a key names but the backup does not hold (it was revoked after
/// the backup's revision): the keys go soon after the restored cluster starts, as they
/// went in the cluster the backup came from.
const MISSING_LEASE_TTL: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the backup holds key {key:?} twice or out of order")]
    Unordered { key: String },
    #[error("the backup's key {key:?} is newer (revision {mod_revision}) than the backup ({revision})")]
    Newer {
        key: String,
        mod_revision: i64,
        revision: i64,
    },
}

/// Writes a restored cluster's ranges into an engine that holds only the node's identity.
pub struct RestoreWriter {
    engine: Arc<dyn Engine>,
    revision: i64,
    batch: WriteBatch,
    batched: usize,
    last_key: Option<Vec<u8>>,
    /// The next change-log sub revision for each mod revision written.
    subs: HashMap<i64, i64>,
    live_keys: u64,
    live_bytes: u64,
    leases: BTreeSet<i64>,
    leases_named: BTreeSet<i64>,
}

impl RestoreWriter {
    /// Bootstraps the meta range and the data range on `members`, every one a voter.
    pub fn new(
        engine: Arc<dyn Engine>,
        members: Vec<crate::proto::shoal::state::MemberInfo>,
        revision: i64,
    ) -> Result<Self, RestoreError> {
        let voters: Vec<u64> = members.iter().map(|member| member.id).collect();
        let snapshots = Arc::new(SnapshotRegistry::default());
        let data = first_data_range(voters.clone());
        let mut batch = WriteBatch::new();
        for (range_id, descriptor, data_ranges) in [
            (META_RANGE_ID, meta_range(voters.clone()), vec![data.clone()]),
            (FIRST_DATA_RANGE_ID, data.clone(), Vec::new()),
        ] {
            let mut log = LogStore::load(range_id, engine.clone(), snapshots.clone())?;
            log.bootstrap(voters.clone(), &mut batch);
            StateMachine::load(range_id, engine.clone(), descriptor)?.bootstrap(&data_ranges, &members, &mut batch);
        }
        state_machine::write_restored_state(META_RANGE_ID, revision, 0, 0, &mut batch);
        Ok(Self {
            engine,
            revision,
            batch,
            batched: 0,
            last_key: None,
            subs: HashMap::new(),
            live_keys: 0,
            live_bytes: 0,
            leases: BTreeSet::new(),
            leases_named: BTreeSet::new(),
        })
    }

    /// Adds one key; keys come in ascending order.
    pub fn key(&mut self, kv: KeyValue) -> Result<(), RestoreError> {
        let shown = || String::from_utf8_lossy(&kv.key).into_owned();
        if self.last_key.as_deref().is_some_and(|last| last >= kv.key.as_ref()) {
            return Err(RestoreError::Unordered { key: shown() });
        }
        if kv.mod_revision > self.revision {
            return Err(RestoreError::Newer {
                key: shown(),
                mod_revision: kv.mod_revision,
                revision: self.revision,
            });
        }
        let record = Record {
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            // A live key has a version of at least 1 (0 marks a deletion).
            version: kv.version.max(1),
            lease: kv.lease,
            value: kv.value.to_vec(),
        };
        let sub = self.subs.entry(record.mod_revision).or_insert(0);
        mvcc::write_put(&mut self.batch, &kv.key, &record, *sub);
        *sub += 1;
        if record.lease != 0 {
            self.leases_named.insert(record.lease);
            self.batch.put(
                Space::LeaseKeys,
                keys::lease_key_entry(record.lease, &kv.key),
                Vec::new(),
            );
        }
        self.live_keys += 1;
        self.live_bytes += state_machine::live_bytes(&kv.key, &record) as u64;
        self.last_key = Some(kv.key.to_vec());
        self.batched += 1;
        if self.batched >= BATCH_KEYS {
            self.engine
                .write(std::mem::take(&mut self.batch), Durability::Buffered)?;
            self.batched = 0;
        }
        Ok(())
    }

    /// Adds one lease (granted `ttl` seconds; its life starts when a leader takes it up).
    pub fn lease(&mut self, id: i64, ttl: i64) {
        if self.leases.insert(id) {
            let record = LeaseRecord {
                id,
                ttl,
                revoking: false,
            };
            self.batch.put(
                Space::Leases,
                keys::lease_key(META_RANGE_ID, id),
                record.encode_to_vec(),
            );
        }
    }

    /// The auth store (users, roles, whether auth is on), as the backup had it.
    pub fn auth(&mut self, store: crate::proto::shoal::state::AuthStore) {
        state_machine::write_restored_auth(&store, &mut self.batch);
    }

    /// Writes the rest and syncs: the data directory is then a member's.
    pub fn finish(mut self) -> Result<RestoreSummary, RestoreError> {
        let missing: Vec<i64> = self.leases_named.difference(&self.leases).copied().collect();
        for id in &missing {
            self.lease(*id, MISSING_LEASE_TTL);
        }
        state_machine::write_restored_state(
            FIRST_DATA_RANGE_ID,
            self.revision,
            self.live_keys,
            self.live_bytes,
            &mut self.batch,
        );
        self.engine.write(self.batch, Durability::Sync)?;
        Ok(RestoreSummary {
            revision: self.revision,
            keys: self.live_keys,
            leases: self.leases.len() as u64,
            leases_missing: missing.len() as u64,
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RestoreSummary {
    pub revision: i64,
    pub keys: u64,
    pub leases: u64,
    /// Leases keys named that the backup did not hold (revoked after its revision).
    pub leases_missing: u64,
}
