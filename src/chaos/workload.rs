//! The client workloads of a chaos run, each recording what it did and saw:
//!
//! - **registers**: reads, writes and compare-and-sets (etcd Txn) on a few keys, for
//!   the linearizability checker;
//! - **set**: clients append unique elements to one list with compare-and-set; every
//!   acknowledged element must be in the final list, none twice;
//! - **watch**: watchers on different members must see the committed history of their
//!   keys without gaps, duplicates or reordering;
//! - **lock**: contenders for one lock record their fencing tokens.

use super::checker::{Input, Operation, Output};
use crate::client::Client;
use crate::proto::etcdserverpb::{
    compare, kv_client::KvClient, request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::proto::mvccpb::event::EventType;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Longest a client waits for one operation; after that its outcome is unknown.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared by every workload of a run.
#[derive(Clone)]
pub struct RunClock {
    origin: Instant,
}

impl RunClock {
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }

    pub fn nanos(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    pub fn origin(&self) -> Instant {
        self.origin
    }
}

impl Default for RunClock {
    fn default() -> Self {
        Self::new()
    }
}

/// How a failed call ended.
pub(super) enum Failure {
    /// The request certainly had no effect (refused before it was sent or proposed).
    Definite,
    /// It may or may not have taken effect.
    Unknown,
}

pub(super) fn classify(status: &tonic::Status) -> Failure {
    let message = status.message();
    // Not proposed: no leader was found in time, or the proposal lost its log slot.
    let not_applied = [
        "etcdserver: no leader",
        "etcdserver: leader changed",
        "tcp connect error",
        "Connection refused",
    ];
    if not_applied.iter().any(|text| message.contains(text)) {
        Failure::Definite
    } else {
        Failure::Unknown
    }
}

pub(super) fn channel(url: &str) -> Channel {
    // A valid loopback URL from the cluster itself; a bad one is a bug.
    tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap_or_else(|error| panic!("endpoint {url}: {error}"))
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An acknowledged write with the revision the server named, for the lost-write check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AckedWrite {
    pub key: String,
    pub value: String,
    pub revision: i64,
}

#[derive(Default)]
pub struct RegisterRecord {
    pub operations: Vec<Operation>,
    pub acked_writes: Vec<AckedWrite>,
    /// Operations refused before they could take effect (left out of the history).
    pub definite_failures: usize,
}

/// One register client: random reads, writes and compare-and-sets, moving to the next
/// member after a failure.
pub async fn register_client(
    process: u64,
    endpoints: Vec<String>,
    keys: Vec<String>,
    seed: u64,
    clock: RunClock,
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<RegisterRecord>>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ process.wrapping_mul(0x9e37_79b9));
    let mut member = process as usize % endpoints.len();
    let mut kv = KvClient::new(channel(&endpoints[member]));
    let mut sequence = 0u64;
    let mut last_seen: std::collections::HashMap<String, Option<String>> = std::collections::HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let key = keys[rng.gen_range(0..keys.len())].clone();
        sequence += 1;
        let value = format!("p{process}-{sequence}");
        let input = match rng.gen_range(0..10) {
            0..=3 => Input::Read,
            4..=6 => Input::Write(Some(value.clone())),
            _ => Input::Cas {
                expected: last_seen.get(&key).cloned().flatten(),
                new: Some(value.clone()),
            },
        };
        let call = clock.nanos();
        let outcome = tokio::time::timeout(OPERATION_TIMEOUT, run_register_op(&mut kv, &key, &input)).await;
        let ret = clock.nanos();
        let (output, ret, failed) = match outcome {
            Ok(Ok((output, revision))) => {
                match (&input, &output) {
                    (Input::Read, Output::Read(seen)) => {
                        last_seen.insert(key.clone(), seen.clone());
                    }
                    (Input::Write(_), _) | (Input::Cas { .. }, Output::Cas(true)) => {
                        last_seen.insert(key.clone(), Some(value.clone()));
                        if let Ok(mut record) = record.lock() {
                            record.acked_writes.push(AckedWrite {
                                key: key.clone(),
                                value: value.clone(),
                                revision,
                            });
                        }
                    }
                    _ => {}
                }
                (output, Some(ret), false)
            }
            Ok(Err(status)) => match classify(&status) {
                Failure::Definite => (Output::Unknown, None, true),
                Failure::Unknown => (Output::Unknown, None, false),
            },
            Err(_) => (Output::Unknown, None, false),
        };
        if failed {
            // Certainly not applied: it did not happen, so it is not in the history.
            if let Ok(mut record) = record.lock() {
                record.definite_failures += 1;
            }
        } else if let Ok(mut record) = record.lock() {
            let id = record.operations.len();
            record.operations.push(Operation {
                id,
                process,
                key: key.clone(),
                input,
                call,
                ret,
                output,
            });
        }
        if ret.is_none() || failed {
            member = (member + 1) % endpoints.len();
            kv = KvClient::new(channel(&endpoints[member]));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs one register operation; returns what the client saw and the revision of a
/// successful write.
async fn run_register_op(kv: &mut KvClient<Channel>, key: &str, input: &Input) -> Result<(Output, i64), tonic::Status> {
    let key_bytes = Bytes::copy_from_slice(key.as_bytes());
    match input {
        Input::Read => {
            let response = kv
                .range(RangeRequest {
                    key: key_bytes,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((Output::Read(response.kvs.first().map(|kv| text(&kv.value))), 0))
        }
        Input::Write(value) => {
            let response = kv
                .put(PutRequest {
                    key: key_bytes,
                    value: Bytes::from(value.clone().unwrap_or_default()),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((Output::Written, response.header.map_or(0, |header| header.revision)))
        }
        Input::Cas { expected, new } => {
            let compare = match expected {
                Some(expected) => Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Value as i32,
                    key: key_bytes.clone(),
                    target_union: Some(compare::TargetUnion::Value(Bytes::from(expected.clone()))),
                    ..Default::default()
                },
                None => Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Version as i32,
                    key: key_bytes.clone(),
                    target_union: Some(compare::TargetUnion::Version(0)),
                    ..Default::default()
                },
            };
            let response = kv
                .txn(TxnRequest {
                    compare: vec![compare],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key_bytes,
                            value: Bytes::from(new.clone().unwrap_or_default()),
                            ..Default::default()
                        })),
                    }],
                    failure: Vec::new(),
                })
                .await?
                .into_inner();
            Ok((
                Output::Cas(response.succeeded),
                response.header.map_or(0, |header| header.revision),
            ))
        }
    }
}

#[derive(Default, serde::Serialize)]
pub struct SetRecord {
    pub attempted: Vec<u64>,
    pub acknowledged: Vec<u64>,
    pub unknown: Vec<u64>,
}

/// The set is spread over lists of this many elements (`chaos/set/0`, `/1`, ...), so no
/// value, and no history of values, grows without bound.
const SET_ELEMENTS_PER_KEY: usize = 200;
pub(super) const SET_PREFIX: &str = "chaos/set/";

fn set_key(index: usize) -> Bytes {
    Bytes::from(format!("{SET_PREFIX}{index:06}"))
}

enum Append {
    Done,
    /// Someone else appended first: read again.
    Conflict,
    /// The list is full: move to the next one.
    Full,
}

/// Appends unique elements to one list through compare-and-set on its mod revision.
/// An append whose outcome is unknown is not retried (a retry could add it twice
/// legitimately); it is recorded as unknown.
pub async fn set_client(process: u64, endpoints: Vec<String>, stop: Arc<AtomicBool>, record: Arc<Mutex<SetRecord>>) {
    let mut member = process as usize % endpoints.len();
    let mut kv = KvClient::new(channel(&endpoints[member]));
    let mut next = process * 1_000_000;
    let mut list = 0usize;
    'elements: while !stop.load(Ordering::Relaxed) {
        next += 1;
        let element = next;
        if let Ok(mut record) = record.lock() {
            record.attempted.push(element);
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                break 'elements;
            }
            let attempt = tokio::time::timeout(OPERATION_TIMEOUT, append(&mut kv, list, element)).await;
            let outcome = match attempt {
                Ok(Ok(appended)) => Ok(appended),
                Ok(Err(status)) => Err(classify(&status)),
                Err(_) => Err(Failure::Unknown),
            };
            match outcome {
                Ok(Append::Done) => {
                    if let Ok(mut record) = record.lock() {
                        record.acknowledged.push(element);
                    }
                    continue 'elements;
                }
                Ok(Append::Conflict) => continue,
                Ok(Append::Full) => list += 1,
                Err(failure) => {
                    member = (member + 1) % endpoints.len();
                    kv = KvClient::new(channel(&endpoints[member]));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if matches!(failure, Failure::Unknown) {
                        if let Ok(mut record) = record.lock() {
                            record.unknown.push(element);
                        }
                        continue 'elements;
                    }
                }
            }
        }
    }
}

/// Reads list `list` and tries once to append `element` to it.
async fn append(kv: &mut KvClient<Channel>, list: usize, element: u64) -> Result<Append, tonic::Status> {
    let key = set_key(list);
    let current = kv
        .range(RangeRequest {
            key: key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let (elements, mod_revision) = match current.kvs.first() {
        Some(kv) => (text(&kv.value), kv.mod_revision),
        None => (String::new(), 0),
    };
    if elements.split(',').filter(|item| !item.is_empty()).count() >= SET_ELEMENTS_PER_KEY {
        return Ok(Append::Full);
    }
    let appended = if elements.is_empty() {
        element.to_string()
    } else {
        format!("{elements},{element}")
    };
    let response = kv
        .txn(TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: key.clone(),
                target_union: Some(compare::TargetUnion::ModRevision(mod_revision)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key,
                    value: Bytes::from(appended),
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        })
        .await?
        .into_inner();
    Ok(if response.succeeded {
        Append::Done
    } else {
        Append::Conflict
    })
}

/// Every element of every list, read linearizably (duplicates kept: they are a failure).
pub async fn read_set(endpoint: &str) -> Result<Vec<u64>, tonic::Status> {
    let response = KvClient::new(channel(endpoint))
        .max_decoding_message_size(usize::MAX)
        .range(RangeRequest {
            key: Bytes::from_static(SET_PREFIX.as_bytes()),
            range_end: crate::client::prefix_range_end(SET_PREFIX.as_bytes()).into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(response
        .kvs
        .iter()
        .flat_map(|kv| {
            text(&kv.value)
                .split(',')
                .filter(|item| !item.is_empty())
                .filter_map(|item| item.parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect())
}

/// One change seen by a watcher.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SeenEvent {
    pub revision: i64,
    pub key: String,
    /// None for a deletion.
    pub value: Option<String>,
}

/// A watcher on every key from `start_revision`, through the resuming client.
pub async fn watcher(
    endpoints: Vec<String>,
    start_revision: i64,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<SeenEvent>>>,
) -> Result<(), String> {
    let client = Client::connect(&endpoints).await.map_err(|error| error.to_string())?;
    let mut watch = client
        .watch("\0", "\0", start_revision, false)
        .await
        .map_err(|error| error.to_string())?;
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), watch.next()).await {
            Ok(Ok(event)) => {
                let kv = event.kv.unwrap_or_default();
                let value = (event.r#type == EventType::Put as i32).then(|| text(&kv.value));
                if let Ok(mut seen) = seen.lock() {
                    seen.push(SeenEvent {
                        revision: kv.mod_revision,
                        key: text(&kv.key),
                        value,
                    });
                }
            }
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => {}
        }
    }
    Ok(())
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Hold {
    pub contender: u64,
    pub fencing_token: i64,
    /// Milliseconds since the start of the run.
    pub acquired_ms: u64,
    pub released_ms: u64,
}

/// Contends for one lock: lease, lock, hold briefly, unlock.
pub async fn lock_contender(
    contender: u64,
    endpoints: Vec<String>,
    clock: RunClock,
    stop: Arc<AtomicBool>,
    holds: Arc<Mutex<Vec<Hold>>>,
) {
    let mut rotated = endpoints.clone();
    rotated.rotate_left(contender as usize % endpoints.len());
    let Ok(client) = Client::connect(&rotated).await else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(lease)) = tokio::time::timeout(OPERATION_TIMEOUT, client.grant(2)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let keep_alive = client.keep_alive(lease);
        if let Ok(Ok(lock)) = tokio::time::timeout(Duration::from_secs(5), client.lock("chaos/lock", lease)).await {
            let acquired_ms = clock.nanos() / 1_000_000;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let released_ms = clock.nanos() / 1_000_000;
            let _ = tokio::time::timeout(OPERATION_TIMEOUT, client.unlock(&lock)).await;
            if lock.fencing_token > 0 {
                if let Ok(mut holds) = holds.lock() {
                    holds.push(Hold {
                        contender,
                        fencing_token: lock.fencing_token,
                        acquired_ms,
                        released_ms,
                    });
                }
            }
        }
        drop(keep_alive);
        let _ = tokio::time::timeout(OPERATION_TIMEOUT, client.revoke(lease)).await;
    }
}

/// Reads the committed change history from `start_revision` on a healthy member,
/// until it has been quiet for a while: the reference the watchers are judged by.
pub async fn committed_history(endpoint: &str, start_revision: i64) -> Result<Vec<SeenEvent>, String> {
    let client = Client::connect(&[endpoint.to_string()])
        .await
        .map_err(|error| error.to_string())?;
    let mut watch = client
        .watch("\0", "\0", start_revision, false)
        .await
        .map_err(|error| error.to_string())?;
    let mut history = Vec::new();
    while let Ok(next) = tokio::time::timeout(Duration::from_secs(3), watch.next()).await {
        let event = next.map_err(|error| error.to_string())?;
        let kv = event.kv.unwrap_or_default();
        history.push(SeenEvent {
            revision: kv.mod_revision,
            key: text(&kv.key),
            value: (event.r#type == EventType::Put as i32).then(|| text(&kv.value)),
        });
    }
    Ok(history)
}

/// The store's revision now (linearizable), on `endpoint`.
pub async fn current_revision(endpoint: &str) -> Result<i64, tonic::Status> {
    let response = KvClient::new(channel(endpoint))
        .range(RangeRequest {
            key: Bytes::from_static(b"chaos/"),
            count_only: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(response.header.map_or(0, |header| header.revision))
}
