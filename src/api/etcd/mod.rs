//! The etcd v3 gRPC API (wire-compatible with etcd's `etcdserverpb`).

mod access;
pub mod auth;
mod cluster;
mod convert;
mod election;
mod errors;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod recipe;
mod validate;
mod watch;

pub use auth::AuthService;
pub use cluster::ClusterService;

/// The internal key of an etcd key (etcd keys live under their namespace byte).
pub fn etcd_internal_key(key: &[u8]) -> Vec<u8> {
    convert::key(key).to_vec()
}
pub use election::ElectionService;
pub use kv::KvService;
pub use lease::{LeaseIds, LeaseService};
pub use lock::LockService;
pub use maintenance::MaintenanceService;
pub use watch::WatchService;

use crate::proto::etcdserverpb::ResponseHeader;
use crate::proto::shoal::state::MemberInfo;
use crate::range::FIRST_DATA_RANGE_ID;
use crate::router::Router;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// The etcd API version Shoal implements; clients gate features on it.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// Limits on client requests.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
    pub max_watches_per_stream: usize,
    /// Largest Range response; beyond it a Range is paged (client set a limit) or refused.
    pub max_response_bytes: usize,
    /// Shortest lease TTL granted: longer than an election takes.
    pub min_lease_ttl_seconds: i64,
}

/// What every etcd handler needs.
pub struct EtcdContext {
    pub router: Arc<Router>,
    /// Writes and reads wherever their keys live (two-phase commit across ranges).
    pub txns: Arc<crate::txn::Transactions>,
    /// Users, roles and tokens: who may call what once auth is on.
    pub auth: Arc<crate::auth::Auth>,
    pub cluster_id: u64,
    pub member_id: u64,
    pub limits: Limits,
    /// Members with their peer URLs, as the cluster was created.
    pub initial_members: Vec<MemberInfo>,
    /// This member's gossip (who is up, with what load): `/v1/nodes`.
    pub gossip: Arc<crate::gossip::Gossip>,
    pub lease_ids: LeaseIds,
    pub watch_hub: crate::range::watch::WatchHub,
    /// Turns true when the node starts shutting down: long-lived streams (watch,
    /// keep-alive, observe) end then, so a graceful stop does not wait on them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl EtcdContext {
    /// Resolves once the node is shutting down.
    pub async fn stopped(&self) {
        let mut stopping = self.stopping.clone();
        let _ = stopping.wait_for(|stop| *stop).await;
    }
}

impl EtcdContext {
    /// Refuses a call whose caller may not do `accesses` (auth on), with etcd's error.
    pub async fn permit(
        &self,
        credentials: crate::auth::Credentials,
        accesses: &[crate::auth::perm::KeyAccess],
    ) -> Result<(), tonic::Status> {
        self.auth.check(&credentials, accesses).await.map_err(errors::auth)
    }

    /// Refuses a call that comes from no user (auth on).
    pub async fn permit_user(&self, credentials: crate::auth::Credentials) -> Result<(), tonic::Status> {
        self.auth.check_user(&credentials).await.map_err(errors::auth)
    }

    /// Refuses a call whose caller does not hold the root role (auth on).
    pub async fn permit_admin(&self, credentials: crate::auth::Credentials) -> Result<(), tonic::Status> {
        self.auth.check_admin(&credentials).await.map_err(errors::auth)
    }

    /// A header for an answer that no one range gave (leases, members, status): the
    /// Raft term is the first data range's, the range etcd's Status speaks for.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        self.header_from(revision, FIRST_DATA_RANGE_ID)
    }

    /// A header for an answer about `key` (internal): the Raft term is that of the
    /// range holding it on this member, the range that answered (for a request over
    /// several ranges, the one holding its first key).
    pub fn header_at(&self, revision: i64, key: &[u8]) -> ResponseHeader {
        let range_id = self
            .router
            .registry()
            .route(key)
            .map_or(FIRST_DATA_RANGE_ID, |(range_id, _)| range_id);
        self.header_from(revision, range_id)
    }

    fn header_from(&self, revision: i64, range_id: u64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.router.status(range_id).term(),
        }
    }
}

/// Counts and times one call the way grpc-go's Prometheus interceptor does, so existing
/// dashboards for etcd read Shoal's metrics unchanged.
async fn observe<T>(
    service: &'static str,
    method: &'static str,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let started = Instant::now();
    let outcome = call.await;
    let code = match &outcome {
        Ok(_) => "OK".to_string(),
        Err(status) => format!("{:?}", status.code()),
    };
    metrics::counter!(
        "grpc_server_handled_total",
        "grpc_type" => "unary",
        "grpc_service" => service,
        "grpc_method" => method,
        "grpc_code" => code
    )
    .increment(1);
    metrics::histogram!(
        "grpc_server_handling_seconds",
        "grpc_type" => "unary",
        "grpc_service" => service,
        "grpc_method" => method
    )
    .record(started.elapsed().as_secs_f64());
    outcome
}
