//! etcd's Cluster service. Membership is fixed when the cluster is created; members
//! publish their names and client URLs through the log when they start.

use super::{errors, observe, EtcdContext};
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{Member, MemberListRequest, MemberListResponse};
use crate::range::kv::KvError;
use crate::range::META_RANGE_ID;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ClusterService {
    context: Arc<EtcdContext>,
}

impl ClusterService {
    pub fn new(context: Arc<EtcdContext>) -> Self {
        Self { context }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(&self, request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        observe("etcdserverpb.Cluster", "MemberList", async {
            if request.into_inner().linearizable {
                self.context
                    .router
                    .linearize(META_RANGE_ID)
                    .await
                    .map_err(errors::route)?;
            }
            let pinned = self.context.router.pinned(META_RANGE_ID).await.map_err(errors::route)?;
            let published = pinned.members().map_err(|error| errors::kv(KvError::Storage(error)))?;
            let members = self
                .context
                .initial_members
                .iter()
                .map(|member| {
                    // A member that has not started yet has no name or client URLs (as in etcd).
                    let started = published.iter().find(|known| known.id == member.id);
                    Member {
                        id: member.id,
                        name: started.map(|known| known.name.clone()).unwrap_or_default(),
                        peer_ur_ls: member.peer_urls.clone(),
                        client_ur_ls: started.map(|known| known.client_urls.clone()).unwrap_or_default(),
                        is_learner: false,
                    }
                })
                .collect();
            let revision = pinned.revision().map_err(|error| errors::kv(KvError::Storage(error)))?;
            Ok(Response::new(MemberListResponse {
                header: Some(self.context.header(revision)),
                members,
            }))
        })
        .await
    }
}
