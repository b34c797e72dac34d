//! Reads served from this node's copy of a range, outside the store loop. Each read pins
//! one engine snapshot, so the data and the revision it reports belong together.
//! Whether the copy is current enough is the caller's business (a read index first for
//! linearizable reads, nothing for serializable ones).

use super::kv::{self, KvError};
use super::state_machine::{self, StateMachine};
use crate::proto::etcdserverpb::{RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use crate::proto::shoal::state::MemberInfo;
use crate::storage::{Engine, StorageError};
use std::sync::Arc;

#[derive(Clone)]
pub struct RangeReader {
    engine: Arc<dyn Engine>,
}

impl RangeReader {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self { engine }
    }

    pub fn range(&self, range_id: u64, request: &RangeRequest) -> Result<RangeResponse, KvError> {
        let view = self.engine.snapshot();
        let revisions = StateMachine::revisions_in(range_id, view.as_ref())?;
        kv::range(&view, request, revisions, revisions.current)
    }

    pub fn read_only_txn(
        &self,
        range_id: u64,
        request: &TxnRequest,
    ) -> Result<TxnResponse, KvError> {
        let view = self.engine.snapshot();
        let revisions = StateMachine::revisions_in(range_id, view.as_ref())?;
        state_machine::read_only_txn(view.as_ref(), revisions, request)
    }

    pub fn revision(&self, range_id: u64) -> Result<i64, StorageError> {
        Ok(StateMachine::revisions_in(range_id, self.engine.as_ref())?.current)
    }

    pub fn members(&self, range_id: u64) -> Result<Vec<MemberInfo>, StorageError> {
        state_machine::members_in(range_id, self.engine.as_ref())
    }

    pub fn disk_space_bytes(&self) -> u64 {
        self.engine.disk_space_bytes()
    }
}
