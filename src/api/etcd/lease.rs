//! etcd's Lease service. Grants and revocations go through the log; keep-alives and
//! time-to-live questions go to the leader, which alone keeps lease deadlines.

use super::{errors, observe, EtcdContext};
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use crate::proto::shoal::command::{command_result, raft_command, LeaseGrant};
use crate::range::kv::KvError;
use crate::range::lease::MAX_LEASE_TTL_SECONDS;
use crate::range::replica::LeaseQueryKind;
use crate::range::state_machine::refusal_from_proto;
use crate::range::META_RANGE_ID;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Lease ids as etcd makes them: the member's id in the top bits, then a counter
/// started from the clock, so ids are unique across members and restarts.
pub struct LeaseIds {
    prefix: u64,
    next: AtomicU64,
}

impl LeaseIds {
    pub fn new(member_id: u64) -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        Self {
            prefix: (member_id & 0x7fff) << 48,
            next: AtomicU64::new((millis & ((1 << 40) - 1)) << 8),
        }
    }

    pub fn next(&self) -> i64 {
        let suffix = self.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1) & ((1 << 48) - 1);
        // Positive, and never 0 (0 means "no lease").
        ((self.prefix | suffix) as i64).max(1)
    }
}

/// What a lease costs against the space quota (its record), as etcd counts it.
const LEASE_RECORD_BYTES: u64 = 64;

pub struct LeaseService {
    context: Arc<EtcdContext>,
}

impl LeaseService {
    pub fn new(context: Arc<EtcdContext>) -> Self {
        Self { context }
    }
}

fn storage(error: crate::storage::StorageError) -> Status {
    errors::kv(KvError::Storage(error))
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let token = super::auth::credentials(&request);
        observe("etcdserverpb.Lease", "LeaseGrant", async {
            self.context.permit_user(token).await?;
            let mut request = request.into_inner();
            if request.ttl > MAX_LEASE_TTL_SECONDS {
                return Err(Status::out_of_range("etcdserver: too large lease TTL"));
            }
            // etcd raises short TTLs to what an election could take, so a lease cannot
            // expire merely because the cluster changed leader.
            request.ttl = request.ttl.max(self.context.limits.min_lease_ttl_seconds);
            if request.id == 0 {
                request.id = self.context.lease_ids.next();
            }
            let grant = LeaseGrant {
                id: request.id,
                ttl: request.ttl,
            };
            // etcd refuses new leases under NOSPACE (a lease is data too).
            self.context
                .txns
                .admit(Some(LEASE_RECORD_BYTES))
                .await
                .map_err(errors::txn)?;
            let applied = self
                .context
                .router
                .write(
                    META_RANGE_ID,
                    crate::range::encode_command(raft_command::Op::LeaseGrant(grant)),
                )
                .await
                .map_err(errors::route)?;
            if let Some(command_result::Result::Error(error)) = &applied.result {
                return Err(errors::kv(refusal_from_proto(error)));
            }
            let revision = self.context.router.newest_revision();
            Ok(Response::new(LeaseGrantResponse {
                header: Some(self.context.header(revision)),
                id: request.id,
                ttl: request.ttl,
                error: String::new(),
            }))
        })
        .await
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let token = super::auth::credentials(&request);
        observe("etcdserverpb.Lease", "LeaseRevoke", async {
            self.context.permit_user(token).await?;
            let revision = crate::txn::leases::revoke(&self.context.txns, request.into_inner().id)
                .await
                .map_err(errors::txn)?;
            Ok(Response::new(LeaseRevokeResponse {
                header: Some(self.context.header(revision)),
            }))
        })
        .await
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        self.context.permit_user(super::auth::credentials(&request)).await?;
        let mut requests = request.into_inner();
        let (responses, stream) = tokio::sync::mpsc::channel(16);
        let context = self.context.clone();
        tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    request = requests.message() => request,
                    () = context.stopped() => return,
                };
                let Ok(Some(request)) = request else {
                    return;
                };
                let renewed = context
                    .router
                    .lease_query(META_RANGE_ID, request.id, LeaseQueryKind::Renew)
                    .await;
                let response = match renewed {
                    // An unknown or expired lease answers TTL 0, as in etcd.
                    Ok(time) => Ok(LeaseKeepAliveResponse {
                        header: Some(context.header(0)),
                        id: request.id,
                        ttl: time.map_or(0, |time| time.granted_ttl),
                    }),
                    Err(error) => Err(errors::route(error)),
                };
                let failed = response.is_err();
                if responses.send(response).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let token = super::auth::credentials(&request);
        observe("etcdserverpb.Lease", "LeaseTimeToLive", async {
            self.context.permit_user(token).await?;
            let request = request.into_inner();
            let router = &self.context.router;
            let time = router
                .lease_query(META_RANGE_ID, request.id, LeaseQueryKind::TimeToLive)
                .await
                .map_err(errors::route)?;
            let Some(time) = time else {
                // etcd answers an unknown lease with TTL -1, not an error.
                return Ok(Response::new(LeaseTimeToLiveResponse {
                    header: Some(self.context.header(0)),
                    id: request.id,
                    ttl: -1,
                    granted_ttl: 0,
                    keys: Vec::new(),
                }));
            };
            let keys = if request.keys {
                // Attachment records of every local range (each holds its own keys').
                for range_id in router.local_ranges() {
                    router.linearize(range_id).await.map_err(errors::route)?;
                }
                router
                    .pinned(META_RANGE_ID)
                    .await
                    .map_err(errors::route)?
                    .lease_keys(request.id)
                    .map_err(storage)?
                    .into_iter()
                    .map(|internal| super::convert::etcd_key(internal.into()))
                    .collect()
            } else {
                Vec::new()
            };
            Ok(Response::new(LeaseTimeToLiveResponse {
                header: Some(self.context.header(0)),
                id: request.id,
                ttl: time.remaining_ttl,
                granted_ttl: time.granted_ttl,
                keys,
            }))
        })
        .await
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let token = super::auth::credentials(&request);
        observe("etcdserverpb.Lease", "LeaseLeases", async {
            self.context.permit_user(token).await?;
            let router = &self.context.router;
            router.linearize(META_RANGE_ID).await.map_err(errors::route)?;
            let leases = router
                .pinned(META_RANGE_ID)
                .await
                .map_err(errors::route)?
                .lease_ids()
                .map_err(storage)?
                .into_iter()
                .map(|id| LeaseStatus { id })
                .collect();
            Ok(Response::new(LeaseLeasesResponse {
                header: Some(self.context.header(0)),
                leases,
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_positive_unique_and_carry_the_member() {
        let ids = LeaseIds::new(0xffff_ffff_ffff_abcd);
        let first = ids.next();
        let second = ids.next();
        assert!(first > 0 && second > first);
        assert_eq!((first as u64) >> 48, 0x2bcd);
    }
}
