//! etcd's Maintenance service: the member's own status.

use super::{errors, observe, EtcdContext, ETCD_API_VERSION};
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{StatusRequest, StatusResponse};
use crate::range::kv::KvError;
use crate::range::FIRST_RANGE_ID;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct MaintenanceService {
    context: Arc<EtcdContext>,
}

impl MaintenanceService {
    pub fn new(context: Arc<EtcdContext>) -> Self {
        Self { context }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        observe("etcdserverpb.Maintenance", "Status", async {
            let router = &self.context.router;
            let status = router.status(FIRST_RANGE_ID);
            let reader = router.reader();
            let revision = reader
                .revision(FIRST_RANGE_ID)
                .map_err(|error| errors::kv(KvError::Storage(error)))?;
            let db_size = i64::try_from(reader.disk_space_bytes()).unwrap_or(i64::MAX);
            let leader = status.leader();
            let errors = if leader == 0 {
                vec!["etcdserver: no leader".to_string()]
            } else {
                Vec::new()
            };
            Ok(Response::new(StatusResponse {
                header: Some(self.context.header(revision)),
                version: ETCD_API_VERSION.to_string(),
                db_size,
                leader,
                raft_index: status.commit_index.load(Ordering::Acquire),
                raft_term: status.term(),
                raft_applied_index: status.applied_index.load(Ordering::Acquire),
                errors,
                db_size_in_use: db_size,
                is_learner: false,
                storage_version: String::new(),
                db_size_quota: 0,
                downgrade_info: None,
            }))
        })
        .await
    }
}
