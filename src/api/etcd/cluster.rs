//! etcd's Cluster service. The meta range replicates the membership; a change is one
//! `MembershipChange` on it, and every range then follows it through its own Raft
//! configuration changes (`range::membership`). Members publish their names and client
//! URLs through the log when they start.

use super::{errors, observe, EtcdContext};
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
    ResponseHeader,
};
use crate::proto::shoal::command::{command_result, membership_change, raft_command, MemberUrls, MembershipChange};
use crate::proto::shoal::state::MemberInfo;
use crate::range::kv::KvError;
use crate::range::{encode_command, META_RANGE_ID};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ClusterService {
    context: Arc<EtcdContext>,
}

impl ClusterService {
    pub fn new(context: Arc<EtcdContext>) -> Self {
        Self { context }
    }

    /// The members as this node's meta replica holds them, and the header to answer with.
    async fn members(&self, linearizable: bool) -> Result<(ResponseHeader, Vec<Member>), Status> {
        if linearizable {
            self.context
                .router
                .linearize(META_RANGE_ID)
                .await
                .map_err(errors::route)?;
        }
        let pinned = self.context.router.pinned(META_RANGE_ID).await.map_err(errors::route)?;
        let record = pinned
            .membership()
            .map_err(|error| errors::kv(KvError::Storage(error)))?;
        let members = crate::range::membership::current(&record, &self.context.initial_members)
            .iter()
            .map(member)
            .collect();
        let revision = pinned.revision().map_err(|error| errors::kv(KvError::Storage(error)))?;
        Ok((self.context.header(revision), members))
    }

    /// Proposes a membership change and answers with the members after it.
    async fn change(&self, change: membership_change::Change) -> Result<(ResponseHeader, Vec<Member>), Status> {
        let command = encode_command(raft_command::Op::MembershipChange(MembershipChange {
            change: Some(change),
        }));
        let applied = self
            .context
            .router
            .write(META_RANGE_ID, command)
            .await
            .map_err(errors::route)?;
        if let Some(command_result::Result::Error(refusal)) = &applied.result {
            return Err(errors::kv(crate::range::state_machine::refusal_from_proto(refusal)));
        }
        // The change applied on this node's meta replica before the write returned.
        self.members(false).await
    }
}

impl ClusterService {
    /// etcd's strict reconfiguration check: the voters left after removing `id` must
    /// hold a majority that gossip sees up, or the cluster would lose its quorum.
    async fn check_started_after_removing(&self, id: u64) -> Result<(), Status> {
        let pinned = self.context.router.pinned(META_RANGE_ID).await.map_err(errors::route)?;
        let record = pinned
            .membership()
            .map_err(|error| errors::kv(KvError::Storage(error)))?;
        let members = crate::range::membership::current(&record, &self.context.initial_members);
        if !members.iter().any(|member| member.id == id) {
            return Err(errors::kv(KvError::UnknownMember));
        }
        let left: Vec<u64> = members
            .iter()
            .filter(|member| !member.is_learner && member.id != id)
            .map(|member| member.id)
            .collect();
        let gossip = &self.context.gossip;
        let started = left
            .iter()
            .filter(|&&member| {
                member == gossip.me()
                    || gossip.member(member).0.is_some_and(|seen| {
                        matches!(
                            seen.liveness,
                            crate::gossip::Liveness::Alive | crate::gossip::Liveness::Suspect
                        )
                    })
            })
            .count();
        if started <= left.len() / 2 {
            return Err(Status::failed_precondition(
                "etcdserver: re-configuration failed due to not enough started members",
            ));
        }
        Ok(())
    }
}

fn member(info: &MemberInfo) -> Member {
    Member {
        id: info.id,
        // A member that has not started yet has no name or client URLs (as in etcd).
        name: info.name.clone(),
        peer_ur_ls: info.peer_urls.clone(),
        client_ur_ls: info.client_urls.clone(),
        is_learner: info.is_learner,
    }
}

/// etcd's check of the peer URLs a member is added or updated with.
fn check_urls(urls: &[String]) -> Result<(), Status> {
    let valid = |url: &String| {
        url.parse::<tonic::codegen::http::Uri>().is_ok_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https" | "unix" | "unixs")) && uri.authority().is_some()
        })
    };
    if urls.is_empty() || !urls.iter().all(valid) {
        return Err(Status::invalid_argument("etcdserver: given member URLs are invalid"));
    }
    Ok(())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, request: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        observe("etcdserverpb.Cluster", "MemberAdd", async {
            self.context.permit_admin(super::auth::credentials(&request)).await?;
            let request = request.into_inner();
            check_urls(&request.peer_ur_ls)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos());
            let id = crate::range::membership::new_member_id(
                &format!("{:x}", self.context.cluster_id),
                &request.peer_ur_ls,
                now,
            );
            let added = MemberInfo {
                id,
                peer_urls: request.peer_ur_ls.clone(),
                is_learner: request.is_learner,
                ..Default::default()
            };
            let (header, members) = self.change(membership_change::Change::Add(added.clone())).await?;
            Ok(Response::new(MemberAddResponse {
                header: Some(header),
                member: Some(member(&added)),
                members,
            }))
        })
        .await
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        observe("etcdserverpb.Cluster", "MemberRemove", async {
            self.context.permit_admin(super::auth::credentials(&request)).await?;
            let id = request.into_inner().id;
            self.check_started_after_removing(id).await?;
            let (header, members) = self.change(membership_change::Change::Remove(id)).await?;
            Ok(Response::new(MemberRemoveResponse {
                header: Some(header),
                members,
            }))
        })
        .await
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        observe("etcdserverpb.Cluster", "MemberUpdate", async {
            self.context.permit_admin(super::auth::credentials(&request)).await?;
            let request = request.into_inner();
            check_urls(&request.peer_ur_ls)?;
            let (header, members) = self
                .change(membership_change::Change::Update(MemberUrls {
                    id: request.id,
                    peer_urls: request.peer_ur_ls,
                }))
                .await?;
            Ok(Response::new(MemberUpdateResponse {
                header: Some(header),
                members,
            }))
        })
        .await
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        observe("etcdserverpb.Cluster", "MemberPromote", async {
            self.context.permit_admin(super::auth::credentials(&request)).await?;
            let id = request.into_inner().id;
            let (header, members) = self.change(membership_change::Change::Promote(id)).await?;
            Ok(Response::new(MemberPromoteResponse {
                header: Some(header),
                members,
            }))
        })
        .await
    }

    async fn member_list(&self, request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        observe("etcdserverpb.Cluster", "MemberList", async {
            let (header, members) = self.members(request.into_inner().linearizable).await?;
            Ok(Response::new(MemberListResponse {
                header: Some(header),
                members,
            }))
        })
        .await
    }
}
