//! A Shoal node: wires storage, the store loop, the peer transport, the router and the
//! client protocols together, and runs them until shutdown.

pub mod compactor;
mod corruption;
pub mod dashboard;
mod disk_guard;
pub mod http;
pub mod identity;
mod membership;
pub mod rebuild;
pub mod restore;
mod tls;

use crate::api::etcd::{
    self, ClusterService, ElectionService, EtcdContext, KvService, LeaseService, Limits, LockService,
    MaintenanceService, WatchService,
};
use crate::api::gateway::{Gateway, GatewayLayer};
use crate::api::h2_authority::AuthorityRepair;
use crate::api::oversize_status::OversizeStatusLayer;
use crate::config::{ClusterState, ListenUrl, NodeConfig};
use crate::proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer, ResponseHeader,
};
use crate::proto::shoal::command::{raft_command, PublishMember};
use crate::proto::shoal::peer::peer_server::PeerServer;
use crate::proto::shoal::state::RangeDescriptor;
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use crate::range::reader::RangeReader;
use crate::range::replica::{Bootstrap, Replica, ReplicaConfig};
use crate::range::snapshot::SnapshotRegistry;
use crate::range::watch::WatchHub;
use crate::range::{self, FIRST_DATA_RANGE_ID, META_RANGE_ID};
use crate::router::Router;
use crate::storage::{Engine, FaultKind, FjallEngine, StorageError};
use crate::store::registry::HubViews;
use crate::store::{RangeRegistry, Store, StoreHandle, StoreInput, StoreParts};
use crate::tls::TlsError;
use crate::transport::{PeerIdentity, PeerService, PeerTransport, PEER_MESSAGE_BYTES_MAX};
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

/// gRPC framing and the rest of a request beyond its payload; etcd allows the same.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error("cannot listen on {address} for {purpose}: {source}")]
    Bind {
        address: SocketAddr,
        purpose: &'static str,
        source: std::io::Error,
    },
    #[error("peer transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the store loop stopped: {0}")]
    StoreFailed(String),
    #[error("cannot join the cluster: {0}")]
    Join(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "{detail}\nThis member's data cannot be trusted, so it serves none of it. Rebuild it from its \
         peers: `shoal ctl rebuild-member --data-dir {data_dir}`, then start it again with the same flags."
    )]
    Damaged { detail: String, data_dir: String },
}

/// Bound listeners, each with its TLS configuration if its URL is https.
async fn bind(
    urls: &[ListenUrl],
    purpose: &'static str,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Vec<(TcpListener, Option<Arc<rustls::ServerConfig>>)>, NodeError> {
    let mut listeners = Vec::new();
    for url in urls {
        let address = url.address;
        let tls = match (url.tls, &tls) {
            (false, _) => None,
            (true, Some(tls)) => Some(tls.clone()),
            (true, None) => {
                return Err(TlsError::Setup(format!("https://{address} for {purpose} has no certificate files")).into())
            }
        };
        let listener = TcpListener::bind(address).await.map_err(|source| NodeError::Bind {
            address,
            purpose,
            source,
        })?;
        listeners.push((listener, tls));
    }
    Ok(listeners)
}

/// Checks what [`run`] checks before it binds a port or opens the data folder: the TLS
/// certificate, key and CA files load (`shoal server --dry-run`).
pub fn check(config: &NodeConfig) -> Result<(), NodeError> {
    tls::NodeTls::load(config)?;
    Ok(())
}

impl NodeError {
    /// The storage failure behind this error, if it is one.
    fn storage(&self) -> Option<&StorageError> {
        match self {
            NodeError::Storage(error) | NodeError::Identity(identity::IdentityError::Storage(error)) => Some(error),
            _ => None,
        }
    }
}

/// Longest wait between two starts of a node whose storage keeps failing.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A run that served this long resets the backoff.
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(60);
/// Starts in a row that may fail for other reasons than storage while restarting.
const RESTART_OTHER_FAILURES_MAX: u32 = 20;
/// Longest a stopped run may take to let go of its storage engine before a restart.
const ENGINE_RELEASE_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs a node until `shutdown` resolves (or a fatal error). `metrics` renders
/// `/metrics`; the caller installs the recorder once per process.
///
/// A storage failure that reopening can cure (a full volume, a failed write or fsync)
/// does not end the process: the node stops everything it runs, drops its engine, and
/// starts again from what is on disk, as a restart would, backing off while it keeps
/// failing. Nothing it held in memory since its last good sync is trusted (it was never
/// acknowledged: the store loop stops at the failed write, before anything that needed
/// it is sent). Damaged files and every other error end the process.
pub async fn run(
    config: NodeConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let shutdown_task = tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    let shutdown = move || {
        let mut shutdown_rx = shutdown_rx.clone();
        async move {
            let _ = shutdown_rx.wait_for(|stop| *stop).await;
        }
    };
    let mut backoff = Duration::from_secs(1);
    // Set once any run has served clients: from then on the node's settings are known good.
    let mut served = false;
    // Set by a storage failure: the node is restarting in process. A start that fails then
    // for another reason (a port or file a stopping run still held) is tried again, a
    // bounded number of times.
    let mut recovering = false;
    let mut other_failures = 0u32;
    let outcome = loop {
        let started = std::time::Instant::now();
        let mut engine = None;
        let mut holders = Vec::new();
        let outcome = run_once(
            config.clone(),
            metrics.clone(),
            shutdown(),
            &mut served,
            &mut engine,
            &mut holders,
        )
        .await;
        let Err(error) = outcome else { break Ok(()) };
        if started.elapsed() > RESTART_BACKOFF_RESET {
            backoff = Duration::from_secs(1);
            other_failures = 0;
        }
        // What the failure was, if storage, and whether reopening the storage can cure it.
        let storage = error.storage().map(|storage| {
            (
                fault_kind(storage, &config.data_dir),
                storage.is_recoverable_by_restart(),
            )
        });
        if let Some((kind, _)) = storage {
            metrics::counter!("shoal_storage_faults_total", "kind" => kind.name()).increment(1);
        }
        match storage {
            Some((FaultKind::Damaged, _)) => {
                break Err(NodeError::Damaged {
                    detail: error.to_string(),
                    data_dir: config.data_dir.display().to_string(),
                })
            }
            // A first start that fails on I/O other than a full volume is more likely a
            // wrong setting (a folder the node may not write) than a failing disk.
            Some((kind, true)) if served || kind == FaultKind::NoSpace => {}
            _ if recovering => {
                other_failures += 1;
                if other_failures > RESTART_OTHER_FAILURES_MAX {
                    break Err(error);
                }
            }
            _ => break Err(error),
        }
        recovering = true;
        match storage {
            Some((kind, _)) => tracing::error!(
                %error,
                kind = kind.name(),
                retry_in = ?backoff,
                "storage failed: restarting the node from what is on disk"
            ),
            None => {
                tracing::warn!(%error, retry_in = ?backoff, "the node did not start again after a storage failure; retrying")
            }
        }
        metrics::counter!("shoal_node_restarts_total").increment(1);
        if let Some(engine) = engine {
            if !released(engine, &holders).await {
                tracing::warn!("starting again with the old engine still held: the open may fail and be retried");
            }
        }
        tokio::select! {
            () = shutdown() => break Ok(()),
            () = tokio::time::sleep(backoff) => {}
        }
        let alive: Vec<&str> = holders
            .iter()
            .filter(|(_, weak)| weak.strong_count() > 0)
            .map(|(name, _)| *name)
            .collect();
        if !alive.is_empty() {
            // Harmless to the restart (they no longer reach the storage), but a task of
            // the stopped run is still going a second after it: worth knowing.
            tracing::warn!(?alive, "parts of the stopped run are still held by a task");
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
    };
    shutdown_task.abort();
    outcome
}

/// What a storage failure was. fjall reports a failed background flush only as
/// "poisoned" on the next write; on a volume with (almost) no room left, that was a full
/// disk.
fn fault_kind(error: &StorageError, data_dir: &std::path::Path) -> FaultKind {
    let kind = error.kind();
    if matches!(error, StorageError::Poisoned) {
        let disk = crate::storage::disk::DiskSpace::new(data_dir, 0);
        if disk.refresh().is_ok() && disk.free_bytes() < 1 << 20 {
            return FaultKind::NoSpace;
        }
    }
    kind
}

/// Runs the node once: from opening its storage to stopping everything it started and
/// dropping its handle on the engine (`engine` is set to a weak one, to wait on before
/// opening the files again). Sets `served` once clients are being served.
async fn run_once(
    config: NodeConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    served: &mut bool,
    engine_out: &mut Option<std::sync::Weak<dyn Engine>>,
    holders_out: &mut Vec<(&'static str, std::sync::Weak<dyn std::any::Any + Send + Sync>)>,
) -> Result<(), NodeError> {
    let tls = tls::NodeTls::load(&config)?;
    std::fs::create_dir_all(&config.data_dir)?;
    let snapshot_dir = config.data_dir.join("snap");
    std::fs::create_dir_all(&snapshot_dir)?;
    let engine = open_engine(&config)?;
    *engine_out = Some(Arc::downgrade(&engine));
    let disk = Arc::new(crate::storage::disk::DiskSpace::new(
        &config.data_dir,
        config.storage_reserve_bytes,
    ));
    if let Err(error) = disk.refresh() {
        tracing::warn!(%error, "cannot measure the data volume's free space");
    }
    let rebuild_request = config.data_dir.join(rebuild::REQUEST_FILE);
    let rebuilding = if rebuild_request.exists() {
        // `shoal ctl rebuild-member` set the old storage aside: this engine is new. Its
        // incarnations start above any the old one reached (from the clock).
        crate::store::rebuild::start(engine.as_ref())?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_millis() as u64)
            .unwrap_or(0);
        identity::raise_incarnation(engine.as_ref(), now_ms)?;
        std::fs::remove_file(&rebuild_request)?;
        tracing::warn!("rebuilding this member from its peers: it votes in no range until that range is fenced");
        true
    } else {
        crate::store::rebuild::is_rebuilding(engine.as_ref())?
    };
    metrics::gauge!("shoal_member_rebuilding").set(if rebuilding { 1.0 } else { 0.0 });
    if config.cluster_state == ClusterState::Existing && !identity::exists(engine.as_ref())? {
        // A new member of a running cluster (or a rebuilt one): the cluster says who it is.
        let (cluster_id, member_id, members) = membership::join(&config, tls.peer_dialer.as_ref()).await?;
        identity::create_joined(engine.as_ref(), &config, member_id, cluster_id, members)?;
    }
    let loaded = identity::load_or_create(engine.as_ref(), &config, rebuilding)?;
    let identity = loaded.identity;
    let me = identity.member_id;
    if identity::is_removed(engine.as_ref())? {
        return Err(identity::IdentityError::Removed { member: me }.into());
    }
    let incarnation = identity::next_incarnation(engine.as_ref())?;
    tracing::info!(
        name = %identity.name,
        member = format!("{me:x}"),
        cluster = format!("{:x}", identity.cluster_id),
        data_dir = %config.data_dir.display(),
        incarnation,
        "starting"
    );

    let peer_listeners = bind(&config.peer_listen, "peer traffic", tls.peer.clone()).await?;
    let client_listeners = bind(&config.client_listen, "clients", tls.client.clone()).await?;
    let metrics_listeners = bind(&config.metrics_listen, "metrics", tls.metrics.clone()).await?;
    // Gossip on the peer port's number, over UDP; bound with the other listeners, before
    // anything starts, so a failed bind leaves nothing running.
    let gossip_bind = config
        .peer_listen
        .first()
        .map(|url| url.address)
        .ok_or_else(|| NodeError::Join("no peer URL to gossip on".into()))?;
    let gossip_socket = tokio::net::UdpSocket::bind(gossip_bind)
        .await
        .map_err(|source| NodeError::Bind {
            address: gossip_bind,
            purpose: "gossip (UDP)",
            source,
        })?;
    let redis_listener = match config.redis_listen {
        Some(address) => Some(TcpListener::bind(address).await.map_err(|source| NodeError::Bind {
            address,
            purpose: "Redis clients",
            source,
        })?),
        None => None,
    };

    // Asked here: nothing may fail once the store thread runs (see the end of the run).
    let redis_port = match &redis_listener {
        Some(listener) => listener.local_addr()?.port(),
        None => 0,
    };
    let tick = config.heartbeat_interval;
    let ticks = |duration: Duration| (duration.as_millis() / tick.as_millis().max(1)).max(1) as u64;
    let replica_config = ReplicaConfig {
        node_id: me,
        incarnation,
        election_ticks: ticks(config.election_timeout) as usize,
        election_timeout: config.election_timeout,
        heartbeat_ticks: 1,
        request_timeout_ticks: ticks(config.request_timeout()),
        // raft-rs drops read index requests while a new leader has not yet committed in
        // its term; re-asking soon keeps reads right after an election fast.
        read_retry_ticks: 2,
        log_compaction_entries: config.log_compaction_entries,
        log_catchup_entries: config.log_catchup_entries,
        rebuilding,
    };
    let voters: Vec<u64> = identity.initial_members.iter().map(|member| member.id).collect();
    let create = loaded.created && config.cluster_state == ClusterState::New && !rebuilding;
    let meta_descriptor = range::meta_range(voters.clone());
    // A new cluster's data ranges: one for every key, or as many as the split keys make.
    let initial_ranges: Vec<RangeDescriptor> = {
        let split_keys: Vec<Vec<u8>> = config
            .initial_split_keys
            .iter()
            .map(|key| crate::api::etcd::etcd_internal_key(key.as_bytes()))
            .collect();
        range::initial_data_ranges(voters.clone(), &split_keys)
    };
    let data_descriptor = initial_ranges[0].clone();
    let snapshots = Arc::new(SnapshotRegistry::default());
    let meta = Replica::open(
        META_RANGE_ID,
        replica_config.clone(),
        engine.clone(),
        snapshots.clone(),
        meta_descriptor.clone(),
        create.then(|| Bootstrap {
            voters: voters.clone(),
            members: identity.initial_members.clone(),
            data_ranges: initial_ranges.clone(),
        }),
    )?;
    let data = Replica::open(
        FIRST_DATA_RANGE_ID,
        replica_config.clone(),
        engine.clone(),
        snapshots.clone(),
        data_descriptor.clone(),
        create.then(|| Bootstrap {
            voters: voters.clone(),
            members: Vec::new(),
            data_ranges: Vec::new(),
        }),
    )?;
    let mut created = Vec::new();
    if create {
        for descriptor in initial_ranges.iter().skip(1) {
            created.push(Replica::open(
                descriptor.id,
                replica_config.clone(),
                engine.clone(),
                snapshots.clone(),
                descriptor.clone(),
                Some(Bootstrap {
                    voters: voters.clone(),
                    members: Vec::new(),
                    data_ranges: Vec::new(),
                }),
            )?);
        }
    }

    // Opening the replica finished any install a crash interrupted; what is left in the
    // staging folder are transfers that never got installed.
    std::fs::remove_dir_all(&snapshot_dir)?;
    std::fs::create_dir_all(&snapshot_dir)?;

    let (store_handle, inbox) = StoreHandle::channel();
    let peer_identity = PeerIdentity {
        cluster_id: identity.cluster_id,
        member_id: me,
    };
    let peer_urls: HashMap<u64, String> = membership::peer_map(
        &identity.initial_members,
        &identity.initial_members,
        &config.peer_dial_urls,
    );
    let transport = PeerTransport::start(
        peer_identity,
        &peer_urls,
        tls.peer_dialer.clone(),
        store_handle.clone(),
        snapshots.clone(),
        config.snapshot_send_rate,
    )?;
    let worker = crate::range::background::BackgroundWorker::start(engine.clone())?;
    // Ranges created with the cluster or by splits since it started.
    let mut replicas = vec![meta, data];
    let created_ids: Vec<u64> = created.iter().map(Replica::range_id).collect();
    replicas.extend(created);
    for descriptor in crate::range::state_machine::local_descriptors(engine.as_ref())? {
        if descriptor.id == META_RANGE_ID
            || descriptor.id == FIRST_DATA_RANGE_ID
            || created_ids.contains(&descriptor.id)
        {
            continue;
        }
        replicas.push(Replica::open(
            descriptor.id,
            replica_config.clone(),
            engine.clone(),
            snapshots.clone(),
            descriptor,
            None,
        )?);
    }
    let registry = Arc::new(RangeRegistry::default());
    let store = Store::new(
        StoreParts {
            node_id: me,
            disk: disk.clone(),
            engine: engine.clone(),
            inbox,
            sender: transport.clone(),
            tick_interval: tick,
            worker,
            replica_config,
            snapshots: snapshots.clone(),
            registry: registry.clone(),
        },
        replicas,
    );
    let (store_done_tx, store_done) = tokio::sync::oneshot::channel();
    // A failure raft-rs was handed before this run is not this run's.
    let _ = crate::range::log_store::take_failure_handed_to_raft();
    let store_thread = std::thread::Builder::new().name("shoal-store".into()).spawn(move || {
        let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.run())) {
            Ok(outcome) => outcome,
            // raft-rs panics on a storage read it could not make: that is a storage failure.
            Err(panic) => match crate::range::log_store::take_failure_handed_to_raft() {
                Some((kind, detail)) if matches!(kind, FaultKind::Io | FaultKind::NoSpace) => {
                    let io_kind = match kind {
                        FaultKind::NoSpace => std::io::ErrorKind::StorageFull,
                        _ => std::io::ErrorKind::Other,
                    };
                    Err(StorageError::Io(std::io::Error::new(
                        io_kind,
                        format!("{detail} (raft-rs stopped on it)"),
                    )))
                }
                _ => std::panic::resume_unwind(panic),
            },
        };
        let _ = store_done_tx.send(outcome);
    })?;

    let mut member_links = tokio::spawn(membership::follow(
        transport.clone(),
        registry.clone(),
        me,
        identity.initial_members.clone(),
        config.peer_dial_urls.clone(),
    ));
    let router = Arc::new(Router::new(
        me,
        store_handle.clone(),
        registry.clone(),
        transport,
        RangeReader::new(engine.clone()),
        config.request_timeout(),
    ));
    let header_status = router.status(FIRST_DATA_RANGE_ID);
    let (cluster_id, member_id) = (identity.cluster_id, me);
    let watch_hub = WatchHub::start(
        Arc::new(HubViews {
            registry: registry.clone(),
            engine: engine.clone(),
        }),
        registry.frontier(),
        Arc::new(move |revision| ResponseHeader {
            cluster_id,
            member_id,
            revision,
            raft_term: header_status.term(),
        }),
        config.watch_progress_notify_interval,
        config.max_request_bytes,
    );
    let watch_hub = match watch_hub {
        Ok(hub) => hub,
        Err(error) => {
            // The store thread runs already: stop it, so it lets go of the engine.
            member_links.abort();
            let _ = store_handle.send(StoreInput::Stop).await;
            let _ = tokio::task::spawn_blocking(move || store_thread.join()).await;
            return Err(error.into());
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let txns = crate::txn::Transactions::new(
        router.clone(),
        me,
        incarnation,
        // Well within a request's time: a client waiting on an abandoned lock still gets
        // its answer once the lock is resolved.
        config.request_timeout() / 2,
        config.fail_at,
        config.quota_bytes,
        disk.clone(),
    );
    let auth = crate::auth::Auth::new(router.clone(), config.auth_token_ttl, config.bcrypt_cost);
    let gossip_period = (config.election_timeout / 2).max(Duration::from_millis(100));
    let gossip = Arc::new(crate::gossip::Gossip::start(
        crate::gossip::Member {
            id: me,
            addr: membership::gossip_addr(&config.advertise_peer_urls)
                .await
                .unwrap_or(gossip_bind),
            incarnation,
        },
        gossip_socket,
        identity.cluster_id,
        identity.initial_members.len() as u32,
        gossip_period,
    ));
    let gossip_spreader = tokio::spawn(membership::spread(
        gossip.clone(),
        router.clone(),
        identity.initial_members.clone(),
        gossip_period * 2,
    ));
    let context = Arc::new(EtcdContext {
        router: router.clone(),
        txns: txns.clone(),
        auth,
        cluster_id: identity.cluster_id,
        member_id: me,
        limits: Limits {
            max_txn_ops: config.max_txn_ops,
            max_request_bytes: config.max_request_bytes,
            max_watches_per_stream: config.max_watches_per_stream,
            max_response_bytes: config.max_response_bytes,
            min_lease_ttl_seconds: config.min_lease_ttl_seconds(),
        },
        initial_members: identity.initial_members.clone(),
        gossip: gossip.clone(),
        lease_ids: etcd::LeaseIds::new(me),
        watch_hub,
        stopping: stop_rx.clone(),
    });

    let stopped_rx = stop_rx.clone();
    let stopped = move || {
        let mut stop_rx = stopped_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }
    };
    let mut servers = tokio::task::JoinSet::new();
    for (listener, tls) in peer_listeners {
        let service = PeerServer::new(PeerService::new(
            peer_identity,
            identity.cluster_token.clone(),
            Arc::new(membership::Adder {
                router: Arc::downgrade(&router),
                cluster_id: identity.cluster_id,
            }),
            store_handle.clone(),
            snapshot_dir.clone(),
            registry.clone(),
            stop_rx.clone(),
        ))
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX);
        servers.spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(service)
                .serve_with_incoming_shutdown(
                    closing(crate::tls::incoming(listener, tls, "peer"), &stop_rx),
                    stopped(),
                ),
        );
    }
    let max_decoding = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let gateway = Gateway::new(context.clone(), metrics.clone());
    for (listener, tls) in client_listeners {
        // Behind TLS the authority repair reads the decrypted HTTP/2 frames.
        let connections = closing(crate::tls::incoming(listener, tls, "client"), &stop_rx)
            .map(|accepted| accepted.map(AuthorityRepair::new));
        // HTTP/1.1 and HTTP/2 on one port: gRPC calls reach the services, every other
        // request etcd's JSON gateway.
        servers.spawn(
            tonic::transport::Server::builder()
                .accept_http1(true)
                .layer(GatewayLayer::new(gateway.clone()))
                .layer(OversizeStatusLayer)
                .add_service(KvServer::new(KvService::new(context.clone())).max_decoding_message_size(max_decoding))
                .add_service(ClusterServer::new(ClusterService::new(context.clone())))
                .add_service(MaintenanceServer::new(MaintenanceService::new(context.clone())))
                .add_service(LeaseServer::new(LeaseService::new(context.clone())))
                .add_service(WatchServer::new(WatchService::new(context.clone())))
                .add_service(LockServer::new(LockService::new(context.clone())))
                .add_service(ElectionServer::new(ElectionService::new(context.clone())))
                .add_service(crate::proto::etcdserverpb::auth_server::AuthServer::new(
                    crate::api::etcd::AuthService::new(context.clone()),
                ))
                .serve_with_incoming_shutdown(connections, stopped()),
        );
    }
    let mut http_servers = tokio::task::JoinSet::new();
    let mut redis_expiry = None;
    let mut redis_messages = None;
    if let Some(listener) = redis_listener {
        let port = redis_port;
        let redis = crate::api::redis::RedisContext::new(
            txns.clone(),
            context.auth.clone(),
            context.watch_hub.clone(),
            me,
            port,
            crate::api::redis::RedisLimits {
                max_bulk: config.max_request_bytes,
            },
        );
        redis_expiry = Some(tokio::spawn(redis.expire_keys(router.clone())));
        redis_messages = Some(tokio::spawn(redis.deliver_messages()));
        let stop = stopped();
        http_servers.spawn(crate::api::redis::serve(listener, redis, tls.redis.clone(), stop));
    }
    let dashboard = Arc::new(dashboard::Dashboard::new(
        identity.cluster_id,
        identity.initial_members.clone(),
        tls.client_dialer.clone(),
    ));
    for (listener, tls) in metrics_listeners {
        // As etcd: https metrics use the client side's certificate and client auth.
        let listener = crate::tls::closing::ClosingListener::new(
            crate::tls::ServerListener::new(listener, tls, "metrics"),
            stop_rx.clone(),
        );
        let app = http::routes(router.clone(), metrics.clone(), dashboard.clone(), context.clone());
        let stop = stopped();
        http_servers.spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop).await });
    }
    *served = true;
    tracing::info!(
        clients = ?config.advertise_client_urls,
        peers = ?config.advertise_peer_urls,
        metrics = ?config.metrics_listen,
        redis = ?config.redis_listen,
        "serving"
    );

    let compactor = tokio::spawn(compactor::run(router.clone(), me, config.auto_compaction));
    let splitter = tokio::spawn(crate::placement::splitter::run(router.clone(), me, config.split));
    let balancer = tokio::spawn(crate::placement::balancer::run(router.clone(), me));
    let resolver = tokio::spawn(crate::txn::resolver::run(txns.clone(), me));
    let disk_guard = tokio::spawn(disk_guard::run(router.clone(), disk.clone(), me));
    let corruption_check = config.corrupt_check_interval.map(|interval| {
        tokio::spawn(corruption::run(
            txns.clone(),
            context.auth.clone(),
            me,
            interval,
            tls.client_dialer.clone(),
        ))
    });
    let lease_revoker = tokio::spawn(crate::txn::leases::run(txns.clone(), me));
    let rebuild_fences = rebuilding.then(|| {
        tokio::spawn(rebuild::run(
            router.clone(),
            store_handle.clone(),
            me,
            publish_member_command(
                me,
                identity.name.clone(),
                config.advertise_client_urls.clone(),
                redis_addr(&config),
            ),
        ))
    });
    let publisher = tokio::spawn(publish_member(
        router.clone(),
        me,
        identity.name.clone(),
        config.advertise_client_urls.clone(),
        redis_addr(&config),
    ));

    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        done = store_done => Err(match done {
            Ok(Ok(())) => NodeError::StoreFailed("stopped unexpectedly".into()),
            Ok(Err(error)) => NodeError::Storage(error),
            Err(_) => NodeError::StoreFailed("panicked".into()),
        }),
        Some(server) = servers.join_next() => Err(NodeError::StoreFailed(format!("a gRPC server ended: {server:?}"))),
        _ = &mut member_links => {
            tracing::error!("this member was removed from the cluster; stopping for good");
            if let Err(error) = identity::mark_removed(engine.as_ref()) {
                tracing::error!(%error, "cannot record the removal");
            }
            Err(identity::IdentityError::Removed { member: me }.into())
        }
    };
    member_links.abort();
    gossip_spreader.abort();
    gossip.stop();
    tracing::info!("shutting down");
    publisher.abort();
    splitter.abort();
    balancer.abort();
    if outcome.is_ok() {
        crate::placement::balancer::hand_off_all(&router, me, HAND_OFF_TIMEOUT).await;
    }
    resolver.abort();
    disk_guard.abort();
    for task in corruption_check.iter().chain(&rebuild_fences) {
        task.abort();
    }
    lease_revoker.abort();
    for task in [redis_expiry, redis_messages].into_iter().flatten() {
        task.abort();
    }
    compactor.abort();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while servers.join_next().await.is_some() {}
        while http_servers.join_next().await.is_some() {}
    })
    .await;
    let _ = store_handle.send(StoreInput::Stop).await;
    drop(store_handle);
    let _ = tokio::task::spawn_blocking(move || store_thread.join()).await;
    // Whatever of the servers did not finish in time goes now, with what it holds.
    drop((servers, http_servers));
    // A task that outlives the run (one finishing a request) must not keep the storage
    // open for the next run: the router lets go of the engine, pending snapshots of
    // their views.
    router.close_storage();
    snapshots.clear();
    // What still holds the engine after a stop, if anything does (said when the engine is
    // not let go in time: see `released`).
    let watched: Vec<(&'static str, std::sync::Weak<dyn std::any::Any + Send + Sync>)> = vec![
        (
            "router",
            Arc::downgrade(&router) as std::sync::Weak<dyn std::any::Any + Send + Sync>,
        ),
        ("transactions", Arc::downgrade(&txns) as _),
        ("etcd context", Arc::downgrade(&context) as _),
        ("registry", Arc::downgrade(&registry) as _),
        ("snapshots", Arc::downgrade(&snapshots) as _),
        ("gossip", Arc::downgrade(&gossip) as _),
    ];
    *holders_out = watched;
    drop((router, txns, context, gateway, dashboard, engine, gossip));
    tracing::info!("stopped");
    outcome
}

/// The node's engine: fjall on `data-dir/db`, behind the fault injector when a test
/// asked for one.
fn open_engine(config: &NodeConfig) -> Result<Arc<dyn Engine>, NodeError> {
    let fjall = FjallEngine::open(&config.data_dir.join("db"))?;
    // Every block of every table is read once, so damage is found before anything is
    // served or sent to a peer.
    let started = std::time::Instant::now();
    fjall.verify()?;
    tracing::info!(took = ?started.elapsed(), "checked the checksums of every stored block");
    let engine: Arc<dyn Engine> = Arc::new(fjall);
    Ok(match &config.storage_faults {
        Some(control) => Arc::new(crate::storage::faults::FaultyEngine::new(engine, control.clone())?),
        None => engine,
    })
}

/// Waits (bounded) until every task and thread of a stopped run has dropped its handle
/// on the engine, so a restart can open the files again; whether they all did.
async fn released(
    engine: std::sync::Weak<dyn Engine>,
    holders: &[(&'static str, std::sync::Weak<dyn std::any::Any + Send + Sync>)],
) -> bool {
    let deadline = std::time::Instant::now() + ENGINE_RELEASE_TIMEOUT;
    while engine.strong_count() > 0 {
        if std::time::Instant::now() > deadline {
            let alive: Vec<&str> = holders
                .iter()
                .filter(|(_, weak)| weak.strong_count() > 0)
                .map(|(name, _)| *name)
                .collect();
            tracing::error!(
                holders = engine.strong_count(),
                ?alive,
                "the storage engine is still in use after the node stopped"
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// `connections`, each closed when the node stops (see `tls::closing`).
fn closing<S: Send + 'static>(
    connections: std::pin::Pin<Box<dyn tokio_stream::Stream<Item = std::io::Result<S>> + Send>>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> impl tokio_stream::Stream<Item = std::io::Result<crate::tls::closing::Closing<S>>> + Send {
    let stop = stop.clone();
    connections
        .map(move |accepted| accepted.map(|connection| crate::tls::closing::Closing::new(connection, stop.clone())))
}

/// Longest a graceful stop waits for the ranges it leads to get new leaders.
const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis address this member publishes ("" without a Redis listener).
fn redis_addr(config: &NodeConfig) -> String {
    config
        .redis_listen
        .map(|address| address.to_string())
        .unwrap_or_default()
}

fn publish_member_command(member_id: u64, name: String, client_urls: Vec<String>, redis_addr: String) -> Vec<u8> {
    crate::range::encode_command(raft_command::Op::PublishMember(PublishMember {
        member_id,
        name,
        client_urls,
        redis_addr,
    }))
}

/// Announces this member's name, client URLs and Redis address through the log once per
/// start, as etcd members do, so every member lists them in MemberList (and CLUSTER
/// SLOTS). Retries until it lands.
async fn publish_member(
    router: Arc<Router>,
    member_id: u64,
    name: String,
    client_urls: Vec<String>,
    redis_addr: String,
) {
    let command = publish_member_command(member_id, name.clone(), client_urls.clone(), redis_addr.clone());
    let mut delay = Duration::from_millis(100);
    loop {
        let published = match router.pinned(META_RANGE_ID).await {
            Ok(pinned) => pinned.members().ok(),
            Err(_) => None,
        };
        if let Some(published) = published {
            if published.iter().any(|member| {
                member.id == member_id
                    && member.name == name
                    && member.client_urls == client_urls
                    && member.redis_addr == redis_addr
            }) {
                return;
            }
        }
        match router.write(META_RANGE_ID, command.clone()).await {
            Ok(_) => {
                tracing::info!("published member attributes");
                return;
            }
            Err(error) => tracing::debug!(%error, "publishing member attributes; will retry"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

pub use etcd::ETCD_API_VERSION;
