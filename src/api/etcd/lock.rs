//! etcd's v3lock service: a distributed mutex on top of leases and the key space. The
//! holder's key revision is a fencing token: it only grows from holder to holder.

use super::recipe::{self, RemoveOnDrop};
use super::{observe, EtcdContext};
use crate::proto::etcdserverpb::{DeleteRangeRequest, RangeRequest};
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct LockService {
    context: Arc<EtcdContext>,
}

impl LockService {
    pub fn new(context: Arc<EtcdContext>) -> Self {
        Self { context }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let token = super::auth::credentials(&request);
        observe("v3lockpb.Lock", "Lock", async {
            let request = request.into_inner();
            let context = &self.context;
            // The lock's keys: its queue under the name, written and read.
            context
                .permit(
                    token,
                    &[
                        super::access::prefix(&request.name, true),
                        super::access::prefix(&request.name, false),
                    ],
                )
                .await?;
            let prefix = recipe::prefix_of(&request.name);
            let key = recipe::candidate_key(&request.name, request.lease);
            let (my_revision, _, owner, header_revision) =
                recipe::create_candidate(context, &prefix, &key, Default::default(), request.lease).await?;
            // From here on, a client that gives up leaves the queue.
            let guard = RemoveOnDrop::new(context.clone(), key.clone());
            if owner.is_none_or(|owner| owner.create_revision != my_revision) {
                recipe::wait_deletes(context, &prefix, my_revision - 1).await?;
            }
            // The lease may have expired while waiting: then the key is gone too.
            let still_mine = context
                .range(RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })
                .await?;
            if still_mine.kvs.is_empty() {
                guard.disarm();
                return Err(Status::failed_precondition(
                    "etcdserver: lock lost: its lease expired while waiting",
                ));
            }
            guard.disarm();
            Ok(Response::new(LockResponse {
                header: Some(context.header(header_revision)),
                key,
            }))
        })
        .await
    }

    async fn unlock(&self, request: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let token = super::auth::credentials(&request);
        observe("v3lockpb.Lock", "Unlock", async {
            // As in etcd: unlocking deletes the key, held or not.
            let key = request.into_inner().key;
            self.context
                .permit(token, &[crate::auth::perm::KeyAccess::write(&key, &[])])
                .await?;
            let deleted = self
                .context
                .delete_range(DeleteRangeRequest {
                    key,
                    ..Default::default()
                })
                .await?;
            Ok(Response::new(UnlockResponse { header: deleted.header }))
        })
        .await
    }
}
