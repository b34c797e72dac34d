//! A Rust client for Shoal (and any etcd v3 server), with the coordination helpers
//! people build on etcd: lease keep-alive, gap-free watches that survive a member's
//! death, locks with fencing tokens, and leader election.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shoal::client::ClientError> {
//! let client = shoal::client::Client::connect(&["http://127.0.0.1:2379".to_string()]).await?;
//! let lease = client.grant(10).await?;
//! let keep_alive = client.keep_alive(lease);
//! let lock = client.lock("jobs/nightly", lease).await?;
//! // ... work, passing lock.fencing_token to every system the lock protects ...
//! client.unlock(&lock).await?;
//! drop(keep_alive);
//! # Ok(()) }
//! ```

use crate::proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, watch_client::WatchClient, watch_request, DeleteRangeRequest,
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest, WatchCreateRequest,
    WatchRequest,
};
use crate::proto::mvccpb::{Event, KeyValue};
use crate::proto::v3electionpb::{election_client::ElectionClient, CampaignRequest, LeaderKey, ResignRequest};
use crate::proto::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

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

/// Connections to every member; calls go to one member and move to the next when it
/// fails.
#[derive(Clone)]
pub struct Client {
    channels: Arc<Vec<Channel>>,
    current: Arc<AtomicUsize>,
}

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
        })
    }

    fn channel(&self) -> Channel {
        self.channels[self.current.load(Ordering::Relaxed) % self.channels.len()].clone()
    }

    /// Moves to the next member.
    fn rotate(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs an idempotent call, trying each member once more after an unavailable one.
    async fn idempotent<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut attempts = self.channels.len() * 2;
        loop {
            match call(self.channel()).await {
                Ok(value) => return Ok(value),
                Err(status) if is_unavailable(&status) && attempts > 1 => {
                    attempts -= 1;
                    self.rotate();
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    /// Writes `key`; returns the revision of the write. Not retried: a put whose outcome
    /// is unknown is reported, not repeated.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>, lease: i64) -> Result<i64, ClientError> {
        let response = KvClient::new(self.channel())
            .put(PutRequest {
                key: key.into(),
                value: value.into(),
                lease,
                ..Default::default()
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
        let response = KvClient::new(self.channel())
            .delete_range(DeleteRangeRequest {
                key: key.into(),
                ..Default::default()
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
        LeaseClient::new(self.channel())
            .lease_revoke(LeaseRevokeRequest { id: lease })
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
    /// confirmed the watch (so a write made after this returns is seen), or with
    /// `DEADLINE_EXCEEDED` if none did within 30 s.
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
            Ok(Ok(())) => Ok(Watch { receiver, task }),
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
        let response = LockClient::new(self.channel())
            .lock(LockRequest {
                name: Bytes::copy_from_slice(name.as_bytes()),
                lease,
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
        LockClient::new(self.channel())
            .unlock(UnlockRequest { key: lock.key.clone() })
            .await?;
        Ok(())
    }

    /// Waits until this client leads election `name`, announcing `value`.
    pub async fn campaign(&self, name: &str, lease: i64, value: impl Into<Bytes>) -> Result<LeaderKey, ClientError> {
        let response = ElectionClient::new(self.channel())
            .campaign(CampaignRequest {
                name: Bytes::copy_from_slice(name.as_bytes()),
                lease,
                value: value.into(),
            })
            .await?
            .into_inner();
        response
            .leader
            .ok_or_else(|| ClientError::Status(tonic::Status::internal("campaign answered without a leader key")))
    }

    pub async fn resign(&self, leader: LeaderKey) -> Result<(), ClientError> {
        ElectionClient::new(self.channel())
            .resign(ResignRequest { leader: Some(leader) })
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
        let response = LeaseClient::new(client.channel())
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await;
        let Ok(response) = response else {
            client.rotate();
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
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

async fn watch_loop(
    client: Client,
    mut spec: WatchCreateRequest,
    events: mpsc::Sender<Result<Event, ClientError>>,
    created: oneshot::Sender<()>,
) {
    let mut created = Some(created);
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
        // etcd sends a revision's events in one response, however large: accept them
        // (as etcdctl does) instead of failing on gRPC's default 4 MiB limit.
        let response = WatchClient::new(client.channel())
            .max_decoding_message_size(usize::MAX)
            .watch(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await;
        let Ok(response) = response else {
            client.rotate();
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        let mut responses = response.into_inner();
        while let Ok(Some(response)) = responses.message().await {
            if response.created {
                if let Some(created) = created.take() {
                    let _ = created.send(());
                }
            }
            if response.compact_revision != 0 {
                let _ = events
                    .send(Err(ClientError::Compacted {
                        compact_revision: response.compact_revision,
                    }))
                    .await;
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
        drop(requests);
        client.rotate();
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
