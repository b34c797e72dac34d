//! This member's side of the cluster's membership: joining a running cluster, keeping a
//! peer link to every member as members come and go, and stopping for good once removed.

use super::identity::IdentityError;
use super::NodeError;
use crate::config::NodeConfig;
use crate::proto::shoal::command::{command_result, membership_change, raft_command, MembershipChange};
use crate::proto::shoal::peer::JoinRequest;
use crate::proto::shoal::state::MemberInfo;
use crate::range::{encode_command, membership, META_RANGE_ID};
use crate::router::Router;
use crate::store::RangeRegistry;
use crate::transport::{MemberAdder, PeerTransport};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a joining node keeps asking the members it was given.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Adds members for nodes that join with `--join`. It holds the router weakly: the peer
/// service owning it may outlive the run in a connection task, and must not keep the
/// run's engine open (an in-process restart waits for the engine to be let go).
pub struct Adder {
    pub router: std::sync::Weak<Router>,
    pub cluster_id: u64,
}

#[tonic::async_trait]
impl MemberAdder for Adder {
    async fn add(&self, peer_urls: Vec<String>, learner: bool) -> Result<(), tonic::Status> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let id = membership::new_member_id(&format!("{:x}", self.cluster_id), &peer_urls, now);
        let command = encode_command(raft_command::Op::MembershipChange(MembershipChange {
            change: Some(membership_change::Change::Add(MemberInfo {
                id,
                peer_urls,
                is_learner: learner,
                ..Default::default()
            })),
        }));
        let router = self
            .router
            .upgrade()
            .ok_or_else(|| tonic::Status::unavailable("etcdserver: server stopped"))?;
        let applied = router
            .write(META_RANGE_ID, command)
            .await
            .map_err(|error| tonic::Status::unavailable(format!("etcdserver: {error}")))?;
        if let Some(command_result::Result::Error(refusal)) = applied.result {
            return Err(tonic::Status::failed_precondition(format!(
                "etcdserver: {}",
                refusal.detail
            )));
        }
        tracing::info!(member = format!("{id:x}"), "added a member that joins");
        Ok(())
    }
}

/// For a node without data starting as `existing`: asks the members it knows of (its
/// `--initial-cluster` and `--join` URLs) for the cluster's id and members, being added
/// first with `--join`, and finds itself among them by its peer URLs. Returns
/// (cluster id, member id, members).
pub async fn join(
    config: &NodeConfig,
    tls: Option<&crate::tls::TlsConnector>,
) -> Result<(u64, u64, Vec<MemberInfo>), NodeError> {
    let mine = &config.advertise_peer_urls;
    let mut urls: Vec<String> = config.join.clone();
    for member in &config.initial_cluster {
        if member.name == config.name {
            continue;
        }
        let dial = config.peer_dial_urls.get(&member.name).cloned();
        urls.extend(dial.into_iter().chain(member.peer_urls.iter().cloned()).take(1));
    }
    let request = JoinRequest {
        cluster_token: config.cluster_token.clone(),
        peer_urls: mine.clone(),
        add: !config.join.is_empty(),
        learner: false,
    };
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    loop {
        match crate::transport::ask_to_join(&urls, tls, request.clone()).await {
            Ok(answer) => {
                let Some(me) = answer
                    .members
                    .iter()
                    .find(|member| member.peer_urls.iter().any(|url| mine.contains(url)))
                else {
                    // The member asked may not have applied the addition yet.
                    if tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    return Err(NodeError::Join(format!(
                        "this node's peer URLs {mine:?} are not in the cluster's membership: add it first \
                         (`etcdctl member add {} --peer-urls={}`) or start it with --join",
                        config.name,
                        mine.join(",")
                    )));
                };
                tracing::info!(
                    member = format!("{:x}", me.id),
                    cluster = format!("{:x}", answer.cluster_id),
                    "joining the cluster"
                );
                return Ok((answer.cluster_id, me.id, answer.members));
            }
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                return Err(NodeError::Join(status.message().to_string()));
            }
            Err(status) if tokio::time::Instant::now() >= deadline => {
                tracing::error!(%status, "no member answered");
                return Err(IdentityError::JoinUnsupported.into());
            }
            Err(status) => {
                tracing::info!(%status, "asking to join; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Where to dial each member: a `--peer-dial-urls` override for its name, else its
/// first peer URL.
pub fn peer_map(
    members: &[MemberInfo],
    initial: &[MemberInfo],
    overrides: &HashMap<String, String>,
) -> HashMap<u64, String> {
    members
        .iter()
        .filter_map(|member| {
            let name = if member.name.is_empty() {
                initial
                    .iter()
                    .find(|known| known.id == member.id)
                    .map_or("", |known| known.name.as_str())
            } else {
                member.name.as_str()
            };
            let url = overrides.get(name).or(member.peer_urls.first())?;
            Some((member.id, url.clone()))
        })
        .collect()
}

/// Keeps a peer link to every member as the membership changes; returns once this
/// member is removed (it saw its removal apply, or a peer refused it as removed).
pub async fn follow(
    transport: Arc<PeerTransport>,
    registry: Arc<RangeRegistry>,
    me: u64,
    initial: Vec<MemberInfo>,
    overrides: HashMap<String, String>,
) {
    let mut changes = registry.membership();
    let mut refused = transport.removed();
    loop {
        let record = changes.borrow_and_update().clone();
        if record.removed.contains(&me) || *refused.borrow_and_update() {
            return;
        }
        let members = membership::current(&record, &initial);
        let peers = peer_map(&members, &initial, &overrides);
        if let Err(error) = transport.sync_members(&peers, record.complete) {
            tracing::warn!(%error, "cannot link to a member");
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            changed = refused.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// The UDP address gossip reaches a member at: its first peer URL's host and port.
pub async fn gossip_addr(peer_urls: &[String]) -> Option<std::net::SocketAddr> {
    let url: tonic::codegen::http::Uri = peer_urls.first()?.parse().ok()?;
    let authority = format!("{}:{}", url.host()?, url.port_u16()?);
    tokio::net::lookup_host(authority).await.ok()?.next()
}

/// Introduces the members to gossip and spreads this member's load, every `period`.
pub async fn spread(
    gossip: Arc<crate::gossip::Gossip>,
    router: Arc<Router>,
    initial: Vec<MemberInfo>,
    period: Duration,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Resolved once per member and peer URL, not at every tick.
    let mut resolved: HashMap<(u64, String), std::net::SocketAddr> = HashMap::new();
    loop {
        ticker.tick().await;
        let record = router.registry().membership().borrow().clone();
        let mut known = Vec::new();
        for member in membership::current(&record, &initial) {
            let Some(url) = member.peer_urls.first() else { continue };
            let key = (member.id, url.clone());
            let addr = match resolved.get(&key) {
                Some(addr) => Some(*addr),
                None => gossip_addr(&member.peer_urls).await,
            };
            if let Some(addr) = addr {
                resolved.insert(key, addr);
                known.push(crate::gossip::Member {
                    id: member.id,
                    addr,
                    incarnation: 0,
                });
            }
        }
        gossip.introduce(known);
        let version = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        gossip.publish_load(crate::api::nodes::own_load(&router, version));
    }
}
