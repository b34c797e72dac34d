//! etcd's v3election service: leader election on top of leases and the key space.
//! Candidates are keys under the election's name; the one created first leads. Error
//! texts are etcd's (`election: not leader`, `election: no leader`).

use super::convert;
use super::recipe::{self, RemoveOnDrop};
use super::{observe, EtcdContext};
use crate::proto::etcdserverpb::{compare, request_op, Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};
use crate::proto::mvccpb::KeyValue;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse,
};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

fn not_leader() -> Status {
    Status::unknown("election: not leader")
}

fn no_leader() -> Status {
    Status::unknown("election: no leader")
}

fn missing_leader_key() -> Status {
    Status::unknown("\"leader\" field must be provided")
}

/// A txn guarded by the leader key still being the one created at `leader.rev`.
fn as_leader(leader: &LeaderKey, then: RequestOp) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: leader.key.clone(),
            target_union: Some(compare::TargetUnion::CreateRevision(leader.rev)),
            ..Default::default()
        }],
        success: vec![then],
        failure: Vec::new(),
    }
}

pub struct ElectionService {
    context: Arc<EtcdContext>,
}

impl ElectionService {
    pub fn new(context: Arc<EtcdContext>) -> Self {
        Self { context }
    }

    async fn proclaim_value(&self, leader: &LeaderKey, value: bytes::Bytes) -> Result<i64, Status> {
        let put = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: leader.key.clone(),
                value,
                lease: leader.lease,
                ..Default::default()
            })),
        };
        let response = self.context.txn(as_leader(leader, put)).await?;
        if !response.succeeded {
            return Err(not_leader());
        }
        Ok(response.header.map_or(0, |header| header.revision))
    }

    /// The current leader's key-value and the revision it was read at.
    async fn current_leader(&self, name: &[u8]) -> Result<(Option<KeyValue>, i64), Status> {
        let response = self
            .context
            .range(recipe::first_created(&recipe::prefix_of(name)))
            .await?;
        let revision = response.header.as_ref().map_or(0, |header| header.revision);
        Ok((response.kvs.into_iter().next(), revision))
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, request: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let token = super::auth::credentials(&request);
        observe("v3electionpb.Election", "Campaign", async {
            let request = request.into_inner();
            let context = &self.context;
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
            let (my_revision, current_value, _, header_revision) =
                recipe::create_candidate(context, &prefix, &key, request.value.clone(), request.lease).await?;
            let leader = LeaderKey {
                name: request.name.clone(),
                key: key.clone(),
                rev: my_revision,
                lease: request.lease,
            };
            let guard = RemoveOnDrop::new(context.clone(), key);
            if current_value != request.value {
                // Campaigning again with a new value updates it, as etcd does.
                self.proclaim_value(&leader, request.value.clone()).await?;
            }
            recipe::wait_deletes(context, &prefix, my_revision - 1).await?;
            guard.disarm();
            Ok(Response::new(CampaignResponse {
                header: Some(context.header(header_revision)),
                leader: Some(leader),
            }))
        })
        .await
    }

    async fn proclaim(&self, request: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let token = super::auth::credentials(&request);
        observe("v3electionpb.Election", "Proclaim", async {
            let request = request.into_inner();
            let leader = request.leader.ok_or_else(missing_leader_key)?;
            self.context
                .permit(token, &[crate::auth::perm::KeyAccess::write(&leader.key, &[])])
                .await?;
            let revision = self.proclaim_value(&leader, request.value).await?;
            Ok(Response::new(ProclaimResponse {
                header: Some(self.context.header(revision)),
            }))
        })
        .await
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let token = super::auth::credentials(&request);
        observe("v3electionpb.Election", "Leader", async {
            let name = request.into_inner().name;
            self.context
                .permit(token, &[super::access::prefix(&name, false)])
                .await?;
            let (leader, revision) = self.current_leader(&name).await?;
            let kv = leader.ok_or_else(no_leader)?;
            Ok(Response::new(LeaderResponse {
                header: Some(self.context.header(revision)),
                kv: Some(kv),
            }))
        })
        .await
    }

    async fn observe(&self, request: Request<LeaderRequest>) -> Result<Response<ObserveStream>, Status> {
        let token = super::auth::credentials(&request);
        let name = request.into_inner().name;
        self.context
            .permit(token, &[super::access::prefix(&name, false)])
            .await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let service = ElectionService {
            context: self.context.clone(),
        };
        tokio::spawn(async move {
            let prefix = recipe::prefix_of(&name);
            let mut last_sent: Option<(bytes::Bytes, i64)> = None;
            loop {
                let (leader, revision) = match service.current_leader(&name).await {
                    Ok(found) => found,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                };
                if let Some(kv) = leader {
                    let identity = (kv.key.clone(), kv.mod_revision);
                    if last_sent.as_ref() != Some(&identity) {
                        let response = LeaderResponse {
                            header: Some(service.context.header(revision)),
                            kv: Some(kv),
                        };
                        if sender.send(Ok(response)).await.is_err() {
                            return;
                        }
                        last_sent = Some(identity);
                    }
                }
                // Wait for any change under the election's prefix after `revision`.
                let mut changes = service
                    .context
                    .watch_hub
                    .subscribe(
                        convert::key_range(&prefix, &convert::prefix_range_end(&prefix)),
                        revision + 1,
                        false,
                    )
                    .await;
                loop {
                    tokio::select! {
                        () = sender.closed() => return,
                        () = service.context.stopped() => return,
                        response = changes.next() => match response {
                            Some(Ok(response)) if !response.events.is_empty() => break,
                            Some(Ok(response)) if response.canceled => break,
                            Some(Ok(_)) => continue,
                            Some(Err(error)) => {
                                let _ = sender.send(Err(super::errors::watch(error))).await;
                                return;
                            }
                            None => return,
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let token = super::auth::credentials(&request);
        observe("v3electionpb.Election", "Resign", async {
            let leader = request.into_inner().leader.ok_or_else(missing_leader_key)?;
            self.context
                .permit(token, &[crate::auth::perm::KeyAccess::write(&leader.key, &[])])
                .await?;
            let delete = RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                    key: leader.key.clone(),
                    ..Default::default()
                })),
            };
            // Resigning a leadership already lost is not an error (etcd's behavior).
            let response = self.context.txn(as_leader(&leader, delete)).await?;
            Ok(Response::new(ResignResponse {
                header: response.header,
            }))
        })
        .await
    }
}
