//! A Rust client for Shoal (and any etcd v3 server), with the coordination helpers
//! people build on etcd: lease keep-alive, gap-free watches that survive a member's
//! death, locks with fencing tokens, and leader election.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shoal::client::ClientError> {
//! let client = shoal::client::Client::connect(&["http://127.0.0.1:2379".to_string()]).await?;
//! // Once auth is on: Client::connect_with_credentials(&endpoints, "alice", "alicepw").
//! let lease = client.grant(10).await?;
//! let keep_alive = client.keep_alive(lease);
//! let lock = client.lock("jobs/nightly", lease).await?;
//! // ... work, passing lock.fencing_token to every system the lock protects ...
//! client.unlock(&lock).await?;
//! drop(keep_alive);
//! # Ok(()) }
//! ```

use crate::proto::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, lease_client::LeaseClient, watch_client::WatchClient, watch_request,
    AuthenticateRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, WatchCreateRequest, WatchRequest,
};
use crate::proto::mvccpb::{Event, KeyValue};
use crate::proto::v3electionpb::{election_client::ElectionClient, CampaignRequest, LeaderKey, ResignRequest};
use crate::proto::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
use bytes::Bytes;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// etcd's `range_end` for every key starting with `prefix` (what `etcdctl --prefix`
/// sends).
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    crate::storage::keys::prefix_end(prefix).unwrap_or_else(|| vec![0])
}

/// Pause between attempts on another member after a failure.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const WATCH_CREATE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoint given")]
    NoEndpoints,
    #[error("endpoint {0}: {1}")]
    Endpoint(String, tonic::transport::Error),
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("watch canceled: history before revision {compact_revision} was compacted")]
    Compacted { compact_revision: i64 },
    #[error("the watch stream ended")]
    WatchEnded,
}

// etcd's errors that mean "authenticate again" (its clientv3 does so on these), and the
// answer to Authenticate while auth is off.
const INVALID_TOKEN: &str = "etcdserver: invalid auth token";
const OLD_REVISION: &str = "etcdserver: revision of auth store is old";
const USER_EMPTY: &str = "etcdserver: user name is empty";
const AUTH_NOT_ENABLED: &str = "etcdserver: authentication is not enabled";

/// Connections to every member; calls go to one member and move to the next when it
/// fails.
#[derive(Clone)]
pub struct Client {
    channels: Arc<Vec<Channel>>,
    current: Arc<AtomicUsize>,
    /// A user's, for a client made with [`Client::connect_with_credentials`].
    credentials: Option<Arc<Credentials>>,
}

/// Who the client calls as, and the token its calls carry.
struct Credentials {
    user: String,
    password: String,
    /// From the last Authenticate; none while auth is off.
    token: RwLock<Option<AsciiMetadataValue>>,
    /// One Authenticate at a time: calls that found the same token stale share it.
    refreshing: tokio::sync::Mutex<()>,
}

impl Credentials {
    fn token(&self) -> Option<AsciiMetadataValue> {
        self.token
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_token(&self, token: Option<AsciiMetadataValue>) {
        *self.token.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = token;
    }
}

/// Puts the client's token, if it has one, on every call as etcd's `token` metadata.
#[derive(Clone)]
struct TokenInterceptor {
    credentials: Option<Arc<Credentials>>,
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = self.credentials.as_ref().and_then(|credentials| credentials.token()) {
            request.metadata_mut().insert("token", token);
        }
        Ok(request)
    }
}

/// A connection to one member that sends the client's token with each call.
type Connection = InterceptedService<Channel, TokenInterceptor>;

/// Whether an error means "try another member": the member is unreachable or has no
/// leader. Only reads and idempotent calls are retried on their own.
fn is_unavailable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

impl Client {
    /// Prepares connections to `endpoints` (made lazily, so members may be down).
    pub async fn connect(endpoints: &[String]) -> Result<Client, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let mut channels = Vec::new();
        for url in endpoints {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|error| ClientError::Endpoint(url.clone(), error))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true);
            channels.push(endpoint.connect_lazy());
        }
        Ok(Client {
            channels: Arc::new(channels),
            current: Arc::new(AtomicUsize::new(0)),
            credentials: None,
        })
    }

    /// As [`Client::connect`], calling as `user` once the cluster has auth on: the
    /// client authenticates now (a wrong password is an error here; auth being off is
    /// not, the calls then go without a token) and sends the token with every call. When
    /// a call is refused because the token went stale (`invalid auth token`, `revision
    /// of auth store is old`: it expired, or users or roles changed) or is missing
    /// (`user name is empty`: auth was turned on since), the client authenticates again
    /// and repeats the call once, as etcd's clientv3 does. Any member accepts a token
    /// another issued, so failover keeps it.
    pub async fn connect_with_credentials(
        endpoints: &[String],
        user: &str,
        password: &str,
    ) -> Result<Client, ClientError> {
        let mut client = Self::connect(endpoints).await?;
        client.credentials = Some(Arc::new(Credentials {
            user: user.to_string(),
            password: password.to_string(),
            token: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }));
        client.authenticate(None).await?;
        Ok(client)
    }

    /// The current member's connection, carrying the token.
    fn channel(&self) -> Connection {
        InterceptedService::new(
            self.plain_channel(),
            TokenInterceptor {
                credentials: self.credentials.clone(),
            },
        )
    }

    fn plain_channel(&self) -> Channel {
        self.channels[self.current.load(Ordering::Relaxed) % self.channels.len()].clone()
    }

    /// The token calls carry now.
    fn token(&self) -> Option<AsciiMetadataValue> {
        self.credentials.as_ref().and_then(|credentials| credentials.token())
    }

    /// Whether a call refused with `message` should go again with a new token.
    fn needs_new_token(&self, message: &str) -> bool {
        self.credentials.is_some() && [INVALID_TOKEN, OLD_REVISION, USER_EMPTY].contains(&message)
    }

    /// Gets a new token, unless the one a call was refused with (`stale`) was already
    /// replaced meanwhile. Authenticate goes to any member that answers.
    async fn authenticate(&self, stale: Option<AsciiMetadataValue>) -> Result<(), Status> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        let _one_at_a_time = credentials.refreshing.lock().await;
        if credentials.token() != stale {
            return Ok(());
        }
        let request = AuthenticateRequest {
            name: credentials.user.clone(),
            password: credentials.password.clone(),
        };
        let answer = self
            .failover(|| {
                let request = request.clone();
                let channel = self.plain_channel();
                async move { AuthClient::new(channel).authenticate(request).await }
            })
            .await;
        match answer {
            Ok(response) => {
                let token = AsciiMetadataValue::try_from(response.into_inner().token)
                    .map_err(|_| Status::internal("Authenticate answered a token that is not ASCII"))?;
                credentials.set_token(Some(token));
                Ok(())
            }
            // Auth is off: calls need no token.
            Err(status) if status.message() == AUTH_NOT_ENABLED => {
                credentials.set_token(None);
                Ok(())
            }
            Err(status) => Err(status),
        }
    }

    /// Runs `call`; if its token was refused as stale or missing, authenticates again
    /// and runs it once more (the refusal came before the call did anything, so this is
    /// safe for writes too).
    async fn authed<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let used = self.token();
        match call().await {
            Err(status) if self.needs_new_token(status.message()) => {
                self.authenticate(used).await?;
                call().await
            }
            other => other,
        }
    }

    /// Runs `call` on the current member, moving on to the next after an unavailable
    /// one, each member tried twice at most.
    async fn failover<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut attempts = self.channels.len() * 2;
        loop {
            match call().await {
                Ok(value) => return Ok(value),
                Err(status) if is_unavailable(&status) && attempts > 1 => {
                    attempts -= 1;
                    self.rotate();
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(status) => return Err(status),
            }
        }
    }

    /// Moves to the next member.
    fn rotate(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs an idempotent call, trying each member once more after an unavailable one.
    async fn idempotent<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        Ok(self.failover(|| self.authed(|| call(self.channel()))).await?)
    }

    /// Writes `key`; returns the revision of the write. Not retried: a put whose outcome
    /// is unknown is reported, not repeated.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>, lease: i64) -> Result<i64, ClientError> {
        let request = PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..Default::default()
        };
        let response = self
            .authed(|| {
                let request = request.clone();
                let channel = self.channel();
                async move { KvClient::new(channel).put(request).await }
            })
            .await;
        if let Err(status) = &response {
            if is_unavailable(status) {
                self.rotate();
            }
        }
        Ok(response?.into_inner().header.map_or(0, |header| header.revision))
    }

    /// The newest version of `key` (linearizable read).
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<KeyValue>, ClientError> {
        let key = key.into();
        let response = self
            .idempotent(|channel| {
                let key = key.clone();
                async move {
                    KvClient::new(channel)
                        .max_decoding_message_size(usize::MAX)
                        .range(RangeRequest {
                            key,
                            ..Default::default()
                        })
                        .await
                }
            })
            .await?;
        Ok(response.into_inner().kvs.into_iter().next())
    }

    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<i64, ClientError> {
        let request = DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        };
        let response = self
            .authed(|| {
                let request = request.clone();
                let channel = self.channel();
                async move { KvClient::new(channel).delete_range(request).await }
            })
            .await?;
        Ok(response.into_inner().deleted)
    }

    /// Grants a lease of `ttl_seconds`; returns its id.
    pub async fn grant(&self, ttl_seconds: i64) -> Result<i64, ClientError> {
        let response = self
            .idempotent(|channel| async move {
                LeaseClient::new(channel)
                    .lease_grant(LeaseGrantRequest {
                        ttl: ttl_seconds,
                        id: 0,
                    })
                    .await
            })
            .await?;
        Ok(response.into_inner().id)
    }

    pub async fn revoke(&self, lease: i64) -> Result<(), ClientError> {
        self.authed(|| {
            let channel = self.channel();
            async move {
                LeaseClient::new(channel)
                    .lease_revoke(LeaseRevokeRequest { id: lease })
                    .await
            }
        })
        .await?;
        Ok(())
    }

    /// Keeps `lease` alive in the background (a keep-alive every third of its TTL,
    /// moving to another member when one fails) until the handle is dropped or the
    /// lease is gone.
    pub fn keep_alive(&self, lease: i64) -> KeepAlive {
        let alive = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(keep_alive_loop(self.clone(), lease, alive.clone()));
        KeepAlive { alive, task }
    }

    /// A watch on `key` (or `[key, range_end)`) from `start_revision` (0: from now) that
    /// reconnects to another member when its member fails and resumes after the last
    /// revision it delivered: no event is lost or repeated. Returns once a member
    /// confirmed the watch (so a write made after this returns is seen), with the
    /// server's refusal (`PERMISSION_DENIED` for keys outside the user's roles, ...), or
    /// with `DEADLINE_EXCEEDED` if no member answered within 30 s. A stale token is
    /// renewed on the way, also when the watch moves to another member later.
    pub async fn watch(
        &self,
        key: impl Into<Bytes>,
        range_end: impl Into<Bytes>,
        start_revision: i64,
        prev_kv: bool,
    ) -> Result<Watch, ClientError> {
        let (events, receiver) = mpsc::channel(1024);
        let spec = WatchCreateRequest {
            key: key.into(),
            range_end: range_end.into(),
            start_revision,
            prev_kv,
            ..Default::default()
        };
        let (created, confirmed) = oneshot::channel();
        let task = tokio::spawn(watch_loop(self.clone(), spec, events, created));
        match tokio::time::timeout(WATCH_CREATE_TIMEOUT, confirmed).await {
            Ok(Ok(Ok(()))) => Ok(Watch { receiver, task }),
            Ok(Ok(Err(refused))) => Err(refused),
            Ok(Err(_)) => Err(ClientError::WatchEnded),
            Err(_) => {
                task.abort();
                Err(ClientError::Status(tonic::Status::deadline_exceeded(format!(
                    "no member confirmed the watch within {WATCH_CREATE_TIMEOUT:?}"
                ))))
            }
        }
    }

    /// Waits until this client holds lock `name` through `lease`.
    pub async fn lock(&self, name: &str, lease: i64) -> Result<LockHandle, ClientError> {
        let request = LockRequest {
            name: Bytes::copy_from_slice(name.as_bytes()),
            lease,
        };
        let response = self
            .authed(|| {
                let request = request.clone();
                let channel = self.channel();
                async move { LockClient::new(channel).lock(request).await }
            })
            .await
            .inspect_err(|status| {
                if is_unavailable(status) {
                    self.rotate();
                }
            })?
            .into_inner();
        // The key's creation revision orders holders: pass it on as a fencing token.
        let key = response.key;
        let owned = self.get(key.clone()).await?;
        let fencing_token = owned.map_or(0, |kv| kv.create_revision);
        Ok(LockHandle { key, fencing_token })
    }

    pub async fn unlock(&self, lock: &LockHandle) -> Result<(), ClientError> {
        self.authed(|| {
            let key = lock.key.clone();
            let channel = self.channel();
            async move { LockClient::new(channel).unlock(UnlockRequest { key }).await }
        })
        .await?;
        Ok(())
    }

    /// Waits until this client leads election `name`, announcing `value`.
    pub async fn campaign(&self, name: &str, lease: i64, value: impl Into<Bytes>) -> Result<LeaderKey, ClientError> {
        let request = CampaignRequest {
            name: Bytes::copy_from_slice(name.as_bytes()),
            lease,
            value: value.into(),
        };
        let response = self
            .authed(|| {
                let request = request.clone();
                let channel = self.channel();
                async move { ElectionClient::new(channel).campaign(request).await }
            })
            .await?
            .into_inner();
        response
            .leader
            .ok_or_else(|| ClientError::Status(tonic::Status::internal("campaign answered without a leader key")))
    }

    pub async fn resign(&self, leader: LeaderKey) -> Result<(), ClientError> {
        self.authed(|| {
            let leader = leader.clone();
            let channel = self.channel();
            async move {
                ElectionClient::new(channel)
                    .resign(ResignRequest { leader: Some(leader) })
                    .await
            }
        })
        .await?;
        Ok(())
    }
}

/// A held lock.
#[derive(Clone, Debug)]
pub struct LockHandle {
    pub key: Bytes,
    /// Grows from holder to holder: systems the lock protects should refuse requests
    /// carrying a smaller token than one they have seen.
    pub fencing_token: i64,
}

/// Keeps a lease alive while it lives.
pub struct KeepAlive {
    alive: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    /// False once the server said the lease is gone (expired or revoked).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_alive_loop(client: Client, lease: i64, alive: Arc<AtomicBool>) {
    loop {
        let (requests, stream) = mpsc::channel(1);
        let used = client.token();
        let response = LeaseClient::new(client.channel())
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await;
        let response = match response {
            Ok(response) => response,
            Err(status) => {
                if client.needs_new_token(status.message()) {
                    // Failing, it is tried again at the next attempt.
                    let _ = client.authenticate(used).await;
                } else {
                    client.rotate();
                }
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let mut responses = response.into_inner();
        loop {
            if requests.send(LeaseKeepAliveRequest { id: lease }).await.is_err() {
                break;
            }
            let interval = match responses.message().await {
                Ok(Some(answer)) if answer.ttl > 0 => Duration::from_millis((answer.ttl as u64 * 1000 / 3).max(200)),
                Ok(Some(_)) => {
                    alive.store(false, Ordering::Relaxed);
                    return;
                }
                _ => break,
            };
            tokio::time::sleep(interval).await;
        }
        client.rotate();
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Events of a [`Client::watch`], in revision order.
pub struct Watch {
    receiver: mpsc::Receiver<Result<Event, ClientError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// The next event; an error ends the watch.
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        self.receiver.recv().await.unwrap_or(Err(ClientError::WatchEnded))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The error of a watch the server cancelled (refused at creation): etcd's status for
/// the auth refusals, `CANCELLED` with the server's reason otherwise.
fn watch_canceled(reason: &str) -> Status {
    match reason {
        "etcdserver: permission denied" => Status::permission_denied(reason),
        INVALID_TOKEN => Status::unauthenticated(reason),
        OLD_REVISION | USER_EMPTY => Status::invalid_argument(reason),
        "" => Status::cancelled("the server cancelled the watch"),
        _ => Status::cancelled(reason),
    }
}

async fn watch_loop(
    client: Client,
    mut spec: WatchCreateRequest,
    events: mpsc::Sender<Result<Event, ClientError>>,
    created: oneshot::Sender<Result<(), ClientError>>,
) {
    let mut created = Some(created);
    // The watch's end, told to whoever waits: the caller of `watch` until the watch was
    // created, its events' reader afterwards.
    let fail = |created: Option<oneshot::Sender<Result<(), ClientError>>>, error: ClientError| {
        let events = events.clone();
        async move {
            match created {
                Some(created) => {
                    let _ = created.send(Err(error));
                }
                None => {
                    let _ = events.send(Err(error)).await;
                }
            }
        }
    };
    // After the first connection, resume right after the last delivered revision.
    let mut last_revision: Option<i64> = None;
    loop {
        if let Some(last) = last_revision {
            spec.start_revision = last + 1;
        }
        let (requests, stream) = mpsc::channel(1);
        let _ = requests
            .send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(spec.clone())),
            })
            .await;
        let used = client.token();
        // etcd sends a revision's events in one response, however large: accept them
        // (as etcdctl does) instead of failing on gRPC's default 4 MiB limit.
        let response = WatchClient::new(client.channel())
            .max_decoding_message_size(usize::MAX)
            .watch(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await;
        let mut stale_token = None;
        match response {
            Ok(response) => {
                let mut responses = response.into_inner();
                while let Ok(Some(response)) = responses.message().await {
                    if response.canceled && response.compact_revision == 0 {
                        // Refused at creation. A stale token (the auth store changed since
                        // the last connection) is renewed and the watch made again.
                        if client.needs_new_token(&response.cancel_reason) {
                            stale_token = Some(used.clone());
                            break;
                        }
                        fail(
                            created.take(),
                            ClientError::Status(watch_canceled(&response.cancel_reason)),
                        )
                        .await;
                        return;
                    }
                    if response.created {
                        if let Some(created) = created.take() {
                            let _ = created.send(Ok(()));
                        }
                    }
                    if response.compact_revision != 0 {
                        let compacted = ClientError::Compacted {
                            compact_revision: response.compact_revision,
                        };
                        fail(created.take(), compacted).await;
                        return;
                    }
                    if response.created && last_revision.is_none() && spec.start_revision == 0 {
                        // Events start after the revision the watch was created at.
                        last_revision = response.header.as_ref().map(|header| header.revision);
                    }
                    for event in response.events {
                        let revision = event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                        last_revision = Some(revision);
                        if events.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Err(status) if client.needs_new_token(status.message()) => stale_token = Some(used.clone()),
            Err(_) => {}
        }
        drop(requests);
        match stale_token {
            Some(stale) => match client.authenticate(stale).await {
                Ok(()) => {}
                Err(status) if is_unavailable(&status) => client.rotate(),
                // The credentials no longer work (the password changed, the user is gone).
                Err(status) => {
                    fail(created.take(), ClientError::Status(status)).await;
                    return;
                }
            },
            None => client.rotate(),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
