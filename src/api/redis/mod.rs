//! The Redis protocol front-end: RESP2/RESP3 over TCP, Redis's commands and error
//! texts, on Shoal's replicated store. Every write is a Raft command acknowledged after
//! a quorum fsynced it; every read is linearizable. Redis keys live in their own
//! namespace (see [`keys`]), invisible to the etcd API.

mod batch;
mod commands;
mod data;
pub mod expiry;
mod glob;
pub mod keys;
mod pubsub;
pub mod resp;
mod snapshot;

use bytes::BytesMut;
use data::Data;
use resp::Reply;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// The Redis version Shoal answers as (HELLO, INFO): the command set it follows.
pub const REDIS_VERSION: &str = "7.2.0";
/// Most clients connected at once to one node (Redis's maxclients default).
pub const MAX_CLIENTS: usize = 10_000;
/// Largest reply buffered before it is written out, while a pipeline is drained.
const FLUSH_BYTES: usize = 64 * 1024;
/// Most pipelined requests taken from a connection's buffer at once.
const PIPELINE_MAX: usize = 1024;
/// Arguments of one batch of pipelined commands, at most (one Raft entry holds them).
const PIPELINE_BATCH_BYTES: usize = 256 * 1024;

/// Settings of the Redis front-end.
#[derive(Clone, Debug)]
pub struct RedisLimits {
    /// Longest bulk string a request may carry (Redis's proto-max-bulk-len).
    pub max_bulk: usize,
}

/// What a connection knows of the others (CLIENT LIST, INFO clients).
#[derive(Clone, Debug)]
struct ClientInfo {
    address: SocketAddr,
    local: SocketAddr,
    name: String,
    db: u8,
    resp: u8,
    connected: Instant,
    last_command_at: Instant,
    last_command: String,
    /// Waiting in a blocking command (BLPOP, XREAD BLOCK, ...) for a write: CLIENT LIST's
    /// `b` flag, INFO's `blocked_clients`.
    blocked: bool,
}

/// Counters INFO stats reports.
#[derive(Default)]
struct Stats {
    connections_received: AtomicU64,
    commands_processed: AtomicU64,
    rejected_connections: AtomicU64,
}

/// What every Redis connection of a node shares.
pub struct RedisContext {
    data: Arc<Data>,
    /// The cluster's users and roles: once auth is on, a connection must AUTH.
    auth: Arc<crate::auth::Auth>,
    /// Lua scripts: the EVALSHA cache and the scripts running now.
    scripts: commands::Scripts,
    pubsub: Arc<pubsub::PubSub>,
    watch_hub: crate::range::watch::WatchHub,
    router: Arc<crate::router::Router>,
    member_id: u64,
    started: Instant,
    limits: RedisLimits,
    port: u16,
    next_client: AtomicU64,
    clients: Mutex<BTreeMap<u64, ClientInfo>>,
    stats: Stats,
}

impl RedisContext {
    pub fn new(
        txns: Arc<crate::txn::Transactions>,
        auth: Arc<crate::auth::Auth>,
        watch_hub: crate::range::watch::WatchHub,
        member_id: u64,
        port: u16,
        limits: RedisLimits,
    ) -> Arc<Self> {
        Arc::new(RedisContext {
            router: txns.router().clone(),
            data: Arc::new(Data::new(txns)),
            auth,
            scripts: Default::default(),
            pubsub: Arc::new(pubsub::PubSub::default()),
            watch_hub,
            member_id,
            started: Instant::now(),
            limits,
            port,
            next_client: AtomicU64::new(1),
            clients: Mutex::new(BTreeMap::new()),
            stats: Stats::default(),
        })
    }

    /// Removes expired keys from the ranges this node leads, until aborted.
    pub fn expire_keys(
        &self,
        router: Arc<crate::router::Router>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        expiry::run(self.data.clone(), router)
    }

    /// Delivers published messages to this node's subscribers, until aborted.
    pub fn deliver_messages(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        pubsub::deliver(self.pubsub.clone(), self.watch_hub.clone(), self.router.clone())
    }

    /// Something that wakes when any of the records at `keys` is written from now on.
    async fn wake_on(&self, keys: &[bytes::Bytes]) -> Wake {
        let start = self.router.frontier() + 1;
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        let mut tasks = Vec::with_capacity(keys.len());
        for key in keys {
            let span = crate::range::kv::key_range(&crate::range::ops::span(key.clone(), bytes::Bytes::new()));
            let mut subscription = self.watch_hub.subscribe(span, start, false).await;
            let sender = sender.clone();
            tasks.push(tokio::spawn(async move {
                while subscription.next().await.is_some() {
                    let _ = sender.try_send(());
                }
            }));
        }
        Wake { receiver, tasks }
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClientInfo>> {
        self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks `client` as waiting in a blocking command until the guard drops: from then
    /// on a write to its keys wakes it, so a client that sees it blocked (CLIENT LIST's
    /// `b` flag) knows its write will be seen.
    fn blocked(&self, client: u64) -> BlockedGuard<'_> {
        if let Some(info) = self.clients().get_mut(&client) {
            info.blocked = true;
        }
        BlockedGuard { context: self, client }
    }
}

/// A client waiting in a blocking command; no longer when dropped.
struct BlockedGuard<'a> {
    context: &'a RedisContext,
    client: u64,
}

impl Drop for BlockedGuard<'_> {
    fn drop(&mut self) {
        if let Some(info) = self.context.clients().get_mut(&self.client) {
            info.blocked = false;
        }
    }
}

/// Wakes a blocked command when one of the keys it waits on is written.
struct Wake {
    receiver: tokio::sync::mpsc::Receiver<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Wake {
    /// Until a write or `longest`, whichever first.
    async fn wait(mut self, longest: std::time::Duration) {
        let _ = tokio::time::timeout(longest, self.receiver.recv()).await;
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One client connection's state.
pub struct Session {
    pub id: u64,
    pub db: u8,
    /// Protocol version of replies: 2, or 3 after `HELLO 3`.
    pub resp: u8,
    pub name: String,
    /// Set by QUIT: close after this reply.
    pub closing: bool,
    /// Commands queued since MULTI.
    pub multi: Option<Vec<Vec<bytes::Bytes>>>,
    /// A command queued since MULTI was refused: EXEC runs nothing.
    pub multi_failed: bool,
    /// Keys WATCH named, with their mod revisions then.
    pub watched: Vec<(bytes::Bytes, i64)>,
    /// Where messages for this connection's subscriptions go.
    pub outbox: pubsub::Outbox,
    /// Channels and patterns subscribed to.
    pub channels: std::collections::BTreeSet<bytes::Bytes>,
    pub patterns: std::collections::BTreeSet<bytes::Bytes>,
    /// The user AUTH or HELLO AUTH authenticated (see `commands::gate`).
    pub user: Option<String>,
    /// Failed AUTHs on this connection: each makes the next answer wait longer.
    pub auth_failures: u32,
    /// The client's address (failed authentications slow its next ones).
    pub address: SocketAddr,
}

impl Session {
    /// A refused command inside MULTI makes EXEC refuse the transaction.
    fn abort_multi(&mut self) {
        if self.multi.is_some() {
            self.multi_failed = true;
        }
    }
}

/// Accepts Redis connections until `stopped` resolves.
/// How long a client may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn serve(
    listener: TcpListener,
    context: Arc<RedisContext>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stopped: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(stopped);
    // Every connection's task: they end with the listener, so a stopped node's clients
    // do not keep its storage in use (it may be restarting in process).
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, address) = tokio::select! {
            () = &mut stopped => return Ok(()),
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(%error, "accepting a Redis connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(address);
        context.stats.connections_received.fetch_add(1, Ordering::Relaxed);
        if context.clients().len() >= MAX_CLIENTS {
            context.stats.rejected_connections.fetch_add(1, Ordering::Relaxed);
            let mut stream = stream;
            tokio::spawn(async move {
                let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
            });
            continue;
        }
        let context = context.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            match acceptor {
                None => {
                    let (reader, writer) = stream.into_split();
                    connection(context, reader, writer, address, local).await;
                }
                // The handshake runs on the connection's own task, bounded in time.
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let (reader, writer) = tokio::io::split(stream);
                        connection(context, reader, writer, address, local).await;
                    }
                    Ok(Err(error)) => tracing::info!(%address, %error, "a Redis TLS handshake failed"),
                    Err(_) => tracing::info!(%address, "a Redis TLS handshake timed out"),
                },
            }
        });
    }
}

/// Serves one connection: requests are parsed as they arrive and run one after the
/// other; replies to a pipeline are written together once no whole request is left.
async fn connection(
    context: Arc<RedisContext>,
    mut reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
    address: SocketAddr,
    local: SocketAddr,
) {
    let id = context.next_client.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    context.clients().insert(
        id,
        ClientInfo {
            address,
            local,
            name: String::new(),
            db: 0,
            resp: 2,
            connected: now,
            last_command_at: now,
            last_command: "NULL".into(),
            blocked: false,
        },
    );
    let (sender, mut messages) = tokio::sync::mpsc::channel(pubsub::QUEUE_MAX);
    let kicked = Arc::new(tokio::sync::Notify::new());
    let outbox = pubsub::Outbox {
        sender,
        kicked: kicked.clone(),
    };
    let mut session = Session {
        id,
        db: 0,
        resp: 2,
        name: String::new(),
        closing: false,
        multi: None,
        multi_failed: false,
        watched: Vec::new(),
        outbox,
        channels: Default::default(),
        patterns: Default::default(),
        user: None,
        auth_failures: 0,
        address,
    };
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = Vec::with_capacity(16 * 1024);
    'serve: loop {
        tokio::select! {
            read = reader.read_buf(&mut input) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            // A subscriber that fell QUEUE_MAX messages behind is disconnected.
            () = kicked.notified() => break,
            message = messages.recv() => {
                let Some(message) = message else { break };
                message.write(&mut output, session.resp);
                while let Ok(message) = messages.try_recv() {
                    message.write(&mut output, session.resp);
                    if output.len() >= FLUSH_BYTES {
                        break;
                    }
                }
                if writer.write_all(&output).await.is_err() {
                    break;
                }
                output.clear();
                continue;
            }
        }
        loop {
            // Every whole request already here (a pipeline), up to a bound.
            let mut requests: Vec<Vec<bytes::Bytes>> = Vec::new();
            let mut protocol_error = None;
            // Until it authenticates (auth on), a connection gets Redis's tighter limits
            // and one request at a time (its AUTH must run before the next is parsed).
            let unauthenticated = session.user.is_none() && context.auth.enabled();
            let limit = if unauthenticated { 1 } else { PIPELINE_MAX };
            while requests.len() < limit {
                match resp::parse_limited(&mut input, context.limits.max_bulk, unauthenticated) {
                    Ok(Some(args)) if args.is_empty() => continue,
                    Ok(Some(args)) => requests.push(args),
                    Ok(None) => break,
                    Err(error) => {
                        protocol_error = Some(error);
                        break;
                    }
                }
            }
            if requests.is_empty() && protocol_error.is_none() {
                break;
            }
            let mut index = 0;
            while index < requests.len() {
                // Consecutive data commands of a pipeline on keys of one stripe run as one
                // job of that stripe's batch: in order, on one snapshot, in one write.
                // Others run one by one, in order.
                let mut end = index;
                let mut bytes = 0;
                while end < requests.len()
                    && bytes < PIPELINE_BATCH_BYTES
                    && !context.auth.enabled()
                    && commands::batchable(&session, &requests[end])
                {
                    bytes += requests[end].iter().map(bytes::Bytes::len).sum::<usize>();
                    end += 1;
                }
                let stripe = (end - index >= 2)
                    .then(|| commands::pipeline_stripe(&session, context.limits.max_bulk, &requests[index..end]))
                    .flatten();
                if let Some(stripe) = stripe {
                    let batch = &requests[index..end];
                    let replies = commands::run_pipeline(&context, &session, stripe, batch).await;
                    for (args, reply) in batch.iter().zip(replies) {
                        reply.write(&mut output, session.resp);
                        context.stats.commands_processed.fetch_add(1, Ordering::Relaxed);
                        context.note_command(&session, args);
                    }
                    index = end;
                } else {
                    let args = &requests[index];
                    index += 1;
                    // CLIENT LIST shows the command running, as Redis does.
                    context.note_command(&session, args);
                    let reply = commands::run(&context, &mut session, args).await;
                    reply.write(&mut output, session.resp);
                    context.stats.commands_processed.fetch_add(1, Ordering::Relaxed);
                    context.note_command(&session, args);
                    if session.closing {
                        let _ = writer.write_all(&output).await;
                        break 'serve;
                    }
                }
                if output.len() >= FLUSH_BYTES {
                    if writer.write_all(&output).await.is_err() {
                        break 'serve;
                    }
                    output.clear();
                }
            }
            if let Some(error) = protocol_error {
                Reply::error(format!("ERR {error}")).write(&mut output, session.resp);
                let _ = writer.write_all(&output).await;
                break 'serve;
            }
        }
        if !output.is_empty() {
            if writer.write_all(&output).await.is_err() {
                break;
            }
            output.clear();
        }
        // Do not keep a large buffer for a connection that sent one large request.
        if input.is_empty() && input.capacity() > 1024 * 1024 {
            input = BytesMut::with_capacity(16 * 1024);
        }
    }
    let _ = writer.shutdown().await;
    context.pubsub.forget(id);
    context.clients().remove(&id);
}

impl RedisContext {
    fn note_command(&self, session: &Session, args: &[bytes::Bytes]) {
        if let Some(client) = self.clients().get_mut(&session.id) {
            client.name.clone_from(&session.name);
            client.db = session.db;
            client.resp = session.resp;
            client.last_command_at = Instant::now();
            client.last_command = String::from_utf8_lossy(&args[0]).to_lowercase();
        }
    }
}
