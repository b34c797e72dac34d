//! Reads served from this node's copy of a range, outside the store loop. Each read pins
//! one engine snapshot, so the data and the revision it reports belong together, and
//! pins it only while no snapshot install is writing over the range
//! ([`RangeStatus::whole_view`]). Whether the copy is current enough is the caller's
//! business (a read index first for linearizable reads, nothing for serializable ones).

use super::kv::{self, KvError};
use super::replica::RangeStatus;
use super::state_machine::{self, StateMachine};
use crate::proto::shoal::kv::{Read, ReadResult, Txn, TxnResult};
use crate::proto::shoal::state::MemberInfo;
use crate::storage::{keys, Engine, ReadView, Space, StorageError};
use std::sync::Arc;

#[derive(Clone)]
pub struct RangeReader {
    engine: Arc<dyn Engine>,
}

impl RangeReader {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self { engine }
    }

    /// The range's data as it is now, or `None` while a snapshot is being installed
    /// over it (ask again once it is done).
    pub fn pin(&self, range_id: u64, status: &RangeStatus) -> Option<PinnedRange> {
        let view = status.whole_view(self.engine.as_ref())?;
        Some(PinnedRange { range_id, view })
    }

    pub fn disk_space_bytes(&self) -> u64 {
        self.engine.disk_space_bytes()
    }
}

/// One range's data at one applied state.
pub struct PinnedRange {
    range_id: u64,
    view: Arc<dyn ReadView>,
}

impl PinnedRange {
    /// A read at this state, its result kept under `max_response_bytes` (see
    /// [`kv::range`]).
    pub fn read(&self, request: &Read, max_response_bytes: usize) -> Result<ReadResult, KvError> {
        let revisions = StateMachine::revisions_in(self.range_id, self.view.as_ref())?;
        kv::range(&self.view, request, revisions, revisions.current, max_response_bytes)
    }

    pub fn read_only_txn(&self, request: &Txn) -> Result<TxnResult, KvError> {
        let revisions = StateMachine::revisions_in(self.range_id, self.view.as_ref())?;
        state_machine::read_only_txn(self.view.as_ref(), revisions, request)
    }

    pub fn revision(&self) -> Result<i64, StorageError> {
        Ok(StateMachine::revisions_in(self.range_id, self.view.as_ref())?.current)
    }

    pub fn members(&self) -> Result<Vec<MemberInfo>, StorageError> {
        state_machine::members_in(self.range_id, self.view.as_ref())
    }

    /// Ids of every lease of the range.
    pub fn lease_ids(&self) -> Result<Vec<i64>, StorageError> {
        let prefix_bytes = 8;
        let mut ids = Vec::new();
        for pair in self
            .view
            .scan(Space::Leases, &keys::range_records(self.range_id), false)
        {
            let (key, _) = pair?;
            let raw: [u8; 8] = key[prefix_bytes..].try_into().map_err(|_| StorageError::Corrupt {
                space: Space::Leases,
                detail: "lease key of the wrong length".into(),
            })?;
            ids.push(u64::from_be_bytes(raw) as i64);
        }
        Ok(ids)
    }

    /// The etcd keys attached to a lease.
    pub fn lease_keys(&self, lease_id: i64) -> Result<Vec<Vec<u8>>, StorageError> {
        let prefix_bytes = keys::lease_key(self.range_id, lease_id).len();
        let mut attached = Vec::new();
        for pair in self
            .view
            .scan(Space::LeaseKeys, &keys::lease_keys(self.range_id, lease_id), false)
        {
            let (entry, _) = pair?;
            // Drop the namespace byte of the internal key.
            attached.push(entry.get(prefix_bytes + 1..).unwrap_or_default().to_vec());
        }
        Ok(attached)
    }
}
