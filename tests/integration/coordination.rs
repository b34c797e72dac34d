//! Watch, Lease, Lock and Election: etcd's semantics, and safety under failures.

use crate::support::{bounded, bytes, etcdctl, get, put, Cluster};
use shoal::client::Client;
use shoal::proto::etcdserverpb::{
    lease_client::LeaseClient, watch_client::WatchClient, watch_request, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, WatchCreateRequest, WatchRequest,
};
use shoal::proto::mvccpb::event::EventType;
use shoal::proto::v3electionpb::{election_client::ElectionClient, LeaderKey, LeaderRequest, ProclaimRequest};
use shoal::proto::v3lockpb::{lock_client::LockClient, UnlockRequest};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tonic::Code;

/// A long-running etcdctl (watch, lock, elect) whose output is read line by line.
struct Background {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Background {
    fn start(endpoints: &[String], args: &[&str]) -> Self {
        let mut child = Command::new(etcdctl())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting etcdctl");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self { child, lines }
    }

    /// The next `count` lines, failing the test if they do not come within `timeout`.
    async fn read(&mut self, count: usize, timeout: Duration) -> Vec<String> {
        let mut read = Vec::new();
        while read.len() < count {
            match tokio::time::timeout(timeout, self.lines.next_line()).await {
                Ok(Ok(Some(line))) => read.push(line),
                other => panic!("etcdctl output ended or stalled after {read:?}: {other:?}"),
            }
        }
        read
    }

    /// Whether a line arrives within `wait`.
    async fn says_something_within(&mut self, wait: Duration) -> bool {
        matches!(
            tokio::time::timeout(wait, self.lines.next_line()).await,
            Ok(Ok(Some(_)))
        )
    }

    fn interrupt(&self) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
    }
}

#[tokio::test]
async fn etcdctl_watches_leases_locks_and_elects() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let endpoints = cluster.endpoints();
        let run = |args: &[&str]| {
            let (success, stdout, stderr) = crate::support::run_etcdctl(&endpoints, args, None);
            assert!(success, "etcdctl {args:?}: {stdout}{stderr}");
            stdout
        };

        // Watch: a prefix from revision 1 with previous values, served by a follower.
        run(&["put", "w/a", "1"]);
        let follower = (cluster.leader().await + 1) % 3;
        let mut watch = Background::start(
            &endpoints[follower..=follower],
            &["watch", "w/", "--prefix", "--rev=1", "--prev-kv"],
        );
        assert_eq!(watch.read(3, Duration::from_secs(10)).await, ["PUT", "w/a", "1"]);
        run(&["put", "w/a", "2"]);
        run(&["put", "other", "x"]);
        run(&["del", "w/a"]);
        assert_eq!(
            watch.read(10, Duration::from_secs(10)).await,
            ["PUT", "w/a", "1", "w/a", "2", "DELETE", "w/a", "2", "w/a", ""]
        );
        // etcdctl prints nothing when its watch is created: start it at a revision to
        // come, so the put is seen however late the watch is set up.
        let now = put(&mut cluster.kv(0).await, "before-k", "x").await;
        let mut single = Background::start(&endpoints, &["watch", "k", &format!("--rev={}", now + 1)]);
        run(&["put", "k", "v"]);
        assert_eq!(single.read(3, Duration::from_secs(10)).await, ["PUT", "k", "v"]);

        // Leases.
        let granted = run(&["lease", "grant", "30"]);
        let lease = granted.split_whitespace().nth(1).expect("lease id").to_string();
        run(&["put", "leased", "v", &format!("--lease={lease}")]);
        let ttl = run(&["lease", "timetolive", &lease, "--keys"]);
        assert!(
            ttl.contains("granted with TTL(30s)") && ttl.contains("attached keys([leased])"),
            "{ttl}"
        );
        assert!(run(&["lease", "list"]).contains(&lease));
        assert!(run(&["lease", "keep-alive", "--once", &lease]).contains("keepalived with TTL(30)"));
        assert!(run(&["lease", "revoke", &lease]).contains("revoked"));
        assert_eq!(run(&["get", "leased"]).trim(), "");

        // Lock: a second contender waits until the holder lets go.
        let mut holder = Background::start(&endpoints, &["lock", "jobs"]);
        let held = holder.read(1, Duration::from_secs(10)).await;
        assert!(held[0].starts_with("jobs/"), "{held:?}");
        let mut contender = Background::start(&endpoints, &["lock", "jobs", "--", "echo", "contender-got-it"]);
        assert!(
            !contender.says_something_within(Duration::from_secs(2)).await,
            "the lock was handed out twice"
        );
        holder.interrupt();
        assert_eq!(contender.read(1, Duration::from_secs(10)).await, ["contender-got-it"]);

        // Election: a listener follows the leader as it changes.
        let mut alpha = Background::start(&endpoints, &["elect", "chief", "alpha"]);
        assert_eq!(alpha.read(2, Duration::from_secs(10)).await[1], "alpha");
        let mut listener = Background::start(&endpoints, &["elect", "chief", "--listen"]);
        assert_eq!(listener.read(2, Duration::from_secs(10)).await[1], "alpha");
        let mut beta = Background::start(&endpoints, &["elect", "chief", "beta"]);
        assert!(
            !beta.says_something_within(Duration::from_secs(2)).await,
            "two leaders at once"
        );
        alpha.interrupt();
        assert_eq!(beta.read(2, Duration::from_secs(10)).await[1], "beta");
        assert_eq!(listener.read(2, Duration::from_secs(10)).await[1], "beta");
    })
    .await;
}

/// One observed event, comparable with what a writer recorded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    revision: i64,
    key: String,
    value: Option<String>,
}

fn seen_of(event: shoal::proto::mvccpb::Event) -> Seen {
    let kv = event.kv.unwrap_or_default();
    Seen {
        revision: kv.mod_revision,
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: (event.r#type == EventType::Put as i32).then(|| String::from_utf8_lossy(&kv.value).into_owned()),
    }
}

/// Every event of `watch` until it has been quiet for 5 s.
async fn collect(name: String, mut watch: shoal::client::Watch) -> (String, Vec<Seen>) {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
            Ok(Ok(event)) => seen.push(seen_of(event)),
            Ok(Err(error)) => panic!("watch {name} failed: {error}"),
            Err(_) => return (name, seen),
        }
    }
}

#[tokio::test]
async fn every_watcher_sees_exactly_the_committed_history_of_its_keys() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let start = put(&mut cluster.kv(0).await, "marker", "start").await;

        // Watchers on overlapping spans, on different members.
        let spans: [(&str, &str, &str); 4] = [
            ("a/", "a0", "a/"),
            ("b/", "b0", "b/"),
            ("a/", "c", "a+b"),
            ("a/1", "", "a/1"),
        ];
        let mut watchers = Vec::new();
        for (index, (key, end, name)) in spans.iter().enumerate() {
            let member = Client::connect(&cluster.endpoints()[index % 3..=index % 3])
                .await
                .unwrap();
            let watch = member
                .watch(key.to_string(), end.to_string(), start + 1, false)
                .await
                .unwrap();
            watchers.push(tokio::spawn(collect(name.to_string(), watch)));
        }
        // A slow reader on a raw stream: it reads nothing while the writes happen, so its
        // member must stop pushing to it and let it catch up from storage afterwards.
        let slow_member = 1;
        let (slow_requests, stream) = tokio::sync::mpsc::channel(1);
        slow_requests
            .send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                    key: bytes("a/"),
                    range_end: bytes("c"),
                    start_revision: start + 1,
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
        let mut slow = WatchClient::new(crate::support::channel(&cluster.endpoints()[slow_member]).await)
            .watch(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
            .unwrap()
            .into_inner();

        // Writers: puts and deletes on a/ and b/ keys through every member. In a healthy
        // cluster every write succeeds, so the acknowledged writes are the committed
        // history, each at the revision its response named.
        let committed = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for writer in 0..4usize {
            let endpoint = cluster.endpoints()[writer % 3].clone();
            let committed = committed.clone();
            writers.push(tokio::spawn(async move {
                let mut kv =
                    shoal::proto::etcdserverpb::kv_client::KvClient::new(crate::support::channel(&endpoint).await);
                for step in 0..300 {
                    let key = format!(
                        "{}/{}",
                        if writer % 2 == 0 { "a" } else { "b" },
                        (writer * 7 + step) % 13
                    );
                    if step % 5 == 4 {
                        let response = kv
                            .delete_range(shoal::proto::etcdserverpb::DeleteRangeRequest {
                                key: bytes(&key),
                                ..Default::default()
                            })
                            .await
                            .expect("delete")
                            .into_inner();
                        if response.deleted > 0 {
                            let revision = response.header.unwrap().revision;
                            committed.lock().unwrap().push(Seen {
                                revision,
                                key,
                                value: None,
                            });
                        }
                    } else {
                        // Large values fill the slow reader's flow-control window quickly.
                        let value = format!("{writer}-{step}-{}", "x".repeat(4000));
                        let revision = put(&mut kv, &key, &value).await;
                        committed.lock().unwrap().push(Seen {
                            revision,
                            key,
                            value: Some(value),
                        });
                    }
                }
            }));
        }
        for writer in writers {
            writer.await.unwrap();
        }
        let mut results = BTreeMap::new();
        for watcher in watchers {
            let (name, seen) = watcher.await.unwrap();
            results.insert(name, seen);
        }
        // The slow reader now reads everything.
        let mut slow_seen = Vec::new();
        while let Ok(Some(Ok(response))) = tokio::time::timeout(Duration::from_secs(5), slow.message())
            .await
            .map(|r| r.transpose())
        {
            for event in response.events {
                slow_seen.push(seen_of(event));
            }
        }
        results.insert("a+b slow".to_string(), slow_seen);
        drop(slow_requests);
        // A watcher created after the writes replays them from storage.
        let late = Client::connect(&cluster.endpoints()[2..]).await.unwrap();
        let late_watch = late.watch("a/", "c", start + 1, false).await.unwrap();
        let (_, late_seen) = collect("a+b late".to_string(), late_watch).await;
        results.insert("a+b late".to_string(), late_seen);
        let (status, metrics) = shoal::http_probe::get(
            cluster.nodes[slow_member].metrics_port,
            "/metrics",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        // With many ranges the hub delivers as the frontier moves (every few ticks while
        // ranges are idle), in fewer, larger responses: the reader may never fill up.
        assert!(
            crate::SPLIT || metrics.contains("shoal_watch_deliveries_deferred_total"),
            "the slow reader never made its member fall back to catching up"
        );
        let mut everything = committed.lock().unwrap().clone();
        everything.sort();
        assert!(
            everything.iter().any(|seen| seen.value.is_none()),
            "the workload deleted nothing"
        );
        let checks = spans
            .iter()
            .copied()
            .chain([("a/", "c", "a+b slow"), ("a/", "c", "a+b late")]);
        for (key, end, name) in checks {
            let in_span = |seen: &&Seen| {
                if end.is_empty() {
                    seen.key == key
                } else {
                    seen.key.as_str() >= key && seen.key.as_str() < end
                }
            };
            let expected: Vec<Seen> = everything.iter().filter(in_span).cloned().collect();
            let seen = &results[name];
            assert!(!expected.is_empty(), "{name}: nothing to watch");
            assert_eq!(seen, &expected, "watcher {name} differs from the committed history");
        }
    })
    .await;
}

#[tokio::test]
async fn a_watch_resumes_on_another_member_without_gaps_or_duplicates() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        let leader = cluster.leader().await;
        let doomed = (leader + 1) % 3;
        let survivor = (leader + 2) % 3;
        // The watcher's first member is the one that will die.
        let endpoints = cluster.endpoints();
        let watcher = Client::connect(&[endpoints[doomed].clone(), endpoints[survivor].clone()])
            .await
            .unwrap();
        // Returns once the member confirmed the watch: every later write is seen.
        let mut watch = watcher.watch("seq/", "seq0", 0, false).await.unwrap();
        let mut writer = cluster.kv(leader).await;
        let mut written = Vec::new();
        for step in 0..200 {
            if step == 100 {
                cluster.kill(doomed);
            }
            let key = format!("seq/{step:03}");
            let revision = put(&mut writer, &key, "v").await;
            written.push((key, revision));
        }
        let mut seen = Vec::new();
        while seen.len() < written.len() {
            let event = tokio::time::timeout(Duration::from_secs(15), watch.next())
                .await
                .expect("the watch stalled after its member died")
                .expect("watch error");
            let kv = event.kv.unwrap();
            seen.push((String::from_utf8_lossy(&kv.key).into_owned(), kv.mod_revision));
        }
        assert_eq!(seen, written);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), watch.next())
                .await
                .is_err(),
            "an event was delivered twice"
        );
    })
    .await;
}

#[tokio::test]
async fn leases_expire_without_keep_alives_and_survive_a_leader_kill_with_them() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        let client = Client::connect(&cluster.endpoints()).await.unwrap();
        // A lease's deadline starts when the leader applies the grant: after this.
        let granted_at = Instant::now();
        let abandoned = client.grant(2).await.unwrap();
        let kept = client.grant(2).await.unwrap();
        client.put("lease/abandoned", "x", abandoned).await.unwrap();
        client.put("lease/kept", "x", kept).await.unwrap();
        let keep_alive = client.keep_alive(kept);

        // The abandoned lease's key goes within TTL plus a bound (a tick, an election).
        loop {
            if client.get("lease/abandoned").await.unwrap().is_none() {
                break;
            }
            assert!(
                granted_at.elapsed() < Duration::from_secs(2 + 3),
                "the lease outlived its TTL"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Never early.
        assert!(granted_at.elapsed() >= Duration::from_secs(2), "a lease expired early");

        // The kept-alive lease survives the leader's death and an election.
        let leader = cluster.leader().await;
        cluster.kill(leader);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(keep_alive.is_alive());
        assert!(
            client.get("lease/kept").await.unwrap().is_some(),
            "a kept-alive lease expired"
        );

        // Stop keeping it alive: it goes too, and a revoked lease cannot be kept alive.
        drop(keep_alive);
        let stopped_at = Instant::now();
        while client.get("lease/kept").await.unwrap().is_some() {
            assert!(
                stopped_at.elapsed() < Duration::from_secs(2 + 3),
                "the lease outlived its TTL"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut leases = LeaseClient::new(crate::support::channel(&cluster.endpoints()[(leader + 1) % 3]).await);
        let ttl = leases
            .lease_time_to_live(LeaseTimeToLiveRequest { id: kept, keys: false })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ttl.ttl, -1, "an expired lease answers TTL -1");
    })
    .await;
}

#[tokio::test]
async fn leases_survive_a_full_cluster_restart() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        let client = Client::connect(&cluster.endpoints()).await.unwrap();
        let lease = client.grant(30).await.unwrap();
        client.put("durable-lease", "x", lease).await.unwrap();
        for node in 0..3 {
            cluster.stop(node);
        }
        for node in 0..3 {
            cluster.restart(node);
        }
        cluster.wait_ready(Duration::from_secs(30)).await;
        let mut leases = LeaseClient::new(crate::support::channel(&cluster.endpoints()[0]).await);
        let ttl = leases
            .lease_time_to_live(LeaseTimeToLiveRequest { id: lease, keys: true })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ttl.granted_ttl, 30);
        assert!(
            ttl.ttl > 20,
            "a restart restarts the TTL, never shortens it: {}",
            ttl.ttl
        );
        assert_eq!(ttl.keys, [bytes("durable-lease")]);
        client.revoke(lease).await.unwrap();
        assert!(client.get("durable-lease").await.unwrap().is_none());
    })
    .await;
}

/// Several clients contend for one lock while the leader is killed and a member is
/// paused. Holders pass the lock's fencing token to a "protected resource" that
/// remembers the largest token it accepted; no two acquisitions may share a token, and
/// each client's tokens must grow.
#[tokio::test]
async fn the_lock_hands_out_unique_growing_fencing_tokens_through_failures() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        let endpoints = cluster.endpoints();
        let acquisitions = Arc::new(Mutex::new(Vec::<(usize, i64, Instant, Instant)>::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut contenders = Vec::new();
        for contender in 0..4usize {
            let endpoints = endpoints.clone();
            let acquisitions = acquisitions.clone();
            let stop = stop.clone();
            contenders.push(tokio::spawn(async move {
                let mut rotated = endpoints.clone();
                rotated.rotate_left(contender % 3);
                let client = Client::connect(&rotated).await.unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Long enough that a 50 ms hold never outlives its lease: an overlap
                    // below is then a broken lock, not an expired holder.
                    let Ok(lease) = client.grant(10).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let keep_alive = client.keep_alive(lease);
                    let attempt = tokio::time::timeout(Duration::from_secs(10), client.lock("fenced", lease)).await;
                    let Ok(Ok(lock)) = attempt else {
                        continue;
                    };
                    let acquired = Instant::now();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let released = Instant::now();
                    let _ = client.unlock(&lock).await;
                    drop(keep_alive);
                    if lock.fencing_token > 0 {
                        acquisitions
                            .lock()
                            .unwrap()
                            .push((contender, lock.fencing_token, acquired, released));
                    }
                }
            }));
        }
        // Each phase lasts until the lock changed hands a few more times.
        let more_acquisitions = |count: usize| {
            let acquisitions = acquisitions.clone();
            async move {
                let target = acquisitions.lock().unwrap().len() + count;
                let deadline = Instant::now() + Duration::from_secs(60);
                while acquisitions.lock().unwrap().len() < target {
                    assert!(Instant::now() < deadline, "the lock stopped changing hands");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        more_acquisitions(5).await;
        let leader = cluster.leader().await;
        cluster.kill(leader);
        more_acquisitions(5).await;
        cluster.restart(leader);
        cluster.wait_ready(Duration::from_secs(30)).await;
        // Another member frozen mid-flight (its holders' keep-alives stall with it).
        let paused = (leader + 1) % 3;
        cluster.pause(paused);
        more_acquisitions(3).await;
        cluster.resume(paused);
        more_acquisitions(5).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for contender in contenders {
            let _ = tokio::time::timeout(Duration::from_secs(30), contender).await;
        }

        let acquisitions = acquisitions.lock().unwrap().clone();
        assert!(
            acquisitions.len() >= 10,
            "too few acquisitions to mean anything: {}",
            acquisitions.len()
        );
        let mut tokens: Vec<i64> = acquisitions.iter().map(|(_, token, _, _)| *token).collect();
        tokens.sort_unstable();
        let before = tokens.len();
        tokens.dedup();
        assert_eq!(tokens.len(), before, "two acquisitions got the same fencing token");
        for contender in 0..4 {
            let mine: Vec<i64> = acquisitions
                .iter()
                .filter(|(who, _, _, _)| *who == contender)
                .map(|(_, token, _, _)| *token)
                .collect();
            assert!(
                mine.windows(2).all(|pair| pair[0] < pair[1]),
                "contender {contender}: {mine:?}"
            );
        }
        // Mutual exclusion: in token order, each hold began after the one before ended
        // (a holder takes its release time before it unlocks, its acquire time after
        // the lock was granted), so no two holders' intervals overlap.
        let mut by_token = acquisitions.clone();
        by_token.sort_by_key(|(_, token, _, _)| *token);
        for pair in by_token.windows(2) {
            let (earlier, later) = (&pair[0], &pair[1]);
            assert!(
                later.2 > earlier.3,
                "two holders at once: {earlier:?} still held the lock when {later:?} got it"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn coordination_requests_refused_like_etcd() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let channel = crate::support::channel(&cluster.endpoints()[1]).await;
        let mut leases = LeaseClient::new(channel.clone());
        let status = leases
            .lease_revoke(LeaseRevokeRequest { id: 0x7777 })
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::NotFound, "etcdserver: requested lease not found")
        );
        let status = leases
            .lease_grant(LeaseGrantRequest {
                ttl: 9_000_000_001,
                id: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::OutOfRange, "etcdserver: too large lease TTL")
        );
        let granted = leases
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 4242 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((granted.id, granted.ttl), (4242, 60));
        let status = leases
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 4242 })
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::FailedPrecondition, "etcdserver: lease already exists")
        );
        let short = leases
            .lease_grant(LeaseGrantRequest { ttl: 0, id: 0 })
            .await
            .unwrap()
            .into_inner();
        assert!(
            short.ttl >= 1,
            "a TTL below an election's length is raised: {}",
            short.ttl
        );
        let unknown_ttl = leases
            .lease_time_to_live(LeaseTimeToLiveRequest { id: 0x7777, keys: true })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(unknown_ttl.ttl, -1);
        let (requests, stream) = tokio::sync::mpsc::channel(1);
        requests.send(LeaseKeepAliveRequest { id: 0x7777 }).await.unwrap();
        let mut answers = leases
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answers.message().await.unwrap().unwrap().ttl,
            0,
            "an unknown lease keeps alive with TTL 0"
        );
        let mut kv = cluster.kv(0).await;
        let status = kv
            .put(PutRequest {
                key: bytes("k"),
                lease: 0x7777,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::NotFound, "etcdserver: requested lease not found")
        );

        // A watch on an empty range, a negative start, a duplicate watch id.
        let (requests, stream) = tokio::sync::mpsc::channel(4);
        let mut watch = WatchClient::new(channel.clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
            .unwrap()
            .into_inner();
        let create = |key: &str, end: &str, start_revision: i64, watch_id: i64| WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: bytes(key),
                range_end: bytes(end),
                start_revision,
                watch_id,
                ..Default::default()
            })),
        };
        requests.send(create("b", "a", 0, 0)).await.unwrap();
        let refused = watch.message().await.unwrap().unwrap();
        assert!(
            refused.created && refused.canceled && refused.watch_id == -1,
            "{refused:?}"
        );
        assert_eq!(refused.cancel_reason, "mvcc: watcher range is empty");
        requests.send(create("a", "", -1, 0)).await.unwrap();
        let refused = watch.message().await.unwrap().unwrap();
        assert!(
            refused.canceled && refused.cancel_reason.contains("compacted"),
            "{refused:?}"
        );
        requests.send(create("a", "", 0, 7)).await.unwrap();
        let created = watch.message().await.unwrap().unwrap();
        assert!(
            created.created && !created.canceled && created.watch_id == 7,
            "{created:?}"
        );
        requests.send(create("b", "", 0, 7)).await.unwrap();
        let refused = watch.message().await.unwrap().unwrap();
        assert_eq!(
            refused.cancel_reason,
            "mvcc: duplicate watch ID provided on the WatchStream"
        );

        // Unlocking a key not held succeeds, as in etcd; proclaiming without leading fails.
        let mut locks = LockClient::new(channel.clone());
        locks
            .unlock(UnlockRequest {
                key: bytes("never/locked"),
            })
            .await
            .expect("etcd lets anyone unlock any key");
        let mut elections = ElectionClient::new(channel.clone());
        let status = elections
            .proclaim(ProclaimRequest {
                leader: Some(LeaderKey {
                    name: bytes("nobody"),
                    key: bytes("nobody/1"),
                    rev: 1,
                    lease: 1,
                }),
                value: bytes("x"),
            })
            .await
            .unwrap_err();
        assert_eq!(status.message(), "election: not leader");
        let status = elections
            .leader(LeaderRequest { name: bytes("nobody") })
            .await
            .unwrap_err();
        assert_eq!(status.message(), "election: no leader");
        assert_eq!(get(&mut kv, "k", false).await, None);
    })
    .await;
}

#[tokio::test]
async fn watch_progress_is_reported_on_request_and_periodically() {
    bounded(async {
        let cluster = Cluster::start_with(3, &["--experimental-watch-progress-notify-interval", "300ms"]).await;
        let revision = put(&mut cluster.kv(0).await, "p/k", "v").await;
        let (requests, stream) = tokio::sync::mpsc::channel(4);
        let mut watch = WatchClient::new(crate::support::channel(&cluster.endpoints()[2]).await)
            .watch(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
            .unwrap()
            .into_inner();
        requests
            .send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                    key: bytes("p/"),
                    range_end: bytes("p0"),
                    // From after the put: a follower that has not applied it yet would
                    // otherwise deliver it as an event, as etcd's follower would.
                    start_revision: revision + 1,
                    progress_notify: true,
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
        let created = watch.message().await.unwrap().unwrap();
        assert!(created.created);
        // Periodic: empty responses for the quiet watcher, at the revision below which
        // everything was sent; it reaches the put's (with many ranges, once the idle
        // ones are closed past it, within a few notifications).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let periodic = tokio::time::timeout_at(deadline, watch.message())
                .await
                .expect("no progress notification at the put's revision")
                .unwrap()
                .unwrap();
            assert!(
                periodic.events.is_empty() && periodic.watch_id == created.watch_id,
                "{periodic:?}"
            );
            if periodic.header.unwrap().revision >= revision {
                break;
            }
        }
        // On request: one response for the whole stream (watch id -1).
        requests
            .send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::ProgressRequest(Default::default())),
            })
            .await
            .unwrap();
        loop {
            let response = tokio::time::timeout(Duration::from_secs(5), watch.message())
                .await
                .expect("no answer to the progress request")
                .unwrap()
                .unwrap();
            if response.watch_id == -1 {
                assert!(response.events.is_empty() && response.header.unwrap().revision >= revision);
                break;
            }
        }
    })
    .await;
}

/// A leader cut off from the others must not renew leases it may no longer lead: the
/// others elect a new leader, which counts each lease's TTL from its own promotion.
/// Node 1 leads with a long election timeout (so it notices the cut-off only seconds
/// after the others replaced it) and is the only member the keep-alives go to. The
/// lease's key may go only once every successful keep-alive's TTL has run out.
#[tokio::test]
async fn a_cut_off_leader_does_not_keep_leases_alive() {
    bounded(async {
        const TTL: u64 = 3;
        let mut cluster = Cluster::start(3).await;
        cluster.stop(0);
        cluster.nodes[0].args = ["--heartbeat-interval", "50", "--election-timeout", "5000"]
            .map(String::from)
            .to_vec();
        cluster.restart(0);
        cluster.wait_ready(Duration::from_secs(30)).await;
        let slow_id = cluster
            .maintenance(0)
            .await
            .status(shoal::proto::etcdserverpb::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .member_id;
        let deadline = Instant::now() + Duration::from_secs(20);
        while cluster.leader().await != 0 {
            let leader = cluster.leader().await;
            let _ = cluster
                .maintenance(leader)
                .await
                .move_leader(shoal::proto::etcdserverpb::MoveLeaderRequest { target_id: slow_id })
                .await;
            assert!(Instant::now() < deadline, "leadership did not move to the slow member");
        }

        let mut fast = LeaseClient::new(crate::support::channel(&cluster.endpoints()[1]).await);
        let lease = fast
            .lease_grant(LeaseGrantRequest { ttl: TTL as i64, id: 0 })
            .await
            .unwrap()
            .into_inner()
            .id;
        let mut kv = cluster.kv(1).await;
        kv.put(PutRequest {
            key: bytes("kept"),
            value: bytes("x"),
            lease,
            ..Default::default()
        })
        .await
        .unwrap();
        let mut watches = WatchClient::new(crate::support::channel(&cluster.endpoints()[2]).await);
        let (watch_requests, watch_stream) = tokio::sync::mpsc::channel(1);
        watch_requests
            .send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                    key: bytes("kept"),
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
        let mut events = watches
            .watch(tokio_stream::wrappers::ReceiverStream::new(watch_stream))
            .await
            .unwrap()
            .into_inner();
        assert!(events.message().await.unwrap().unwrap().created);

        // Keep-alives through the slow leader only; each success's send time is kept.
        let renewed: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let keeper = {
            let renewed = renewed.clone();
            let mut slow = LeaseClient::new(crate::support::channel(&cluster.endpoints()[0]).await);
            tokio::spawn(async move {
                let (requests, stream) = tokio::sync::mpsc::channel(1);
                let mut answers = match slow
                    .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(stream))
                    .await
                {
                    Ok(answers) => answers.into_inner(),
                    Err(_) => return,
                };
                loop {
                    let sent = Instant::now();
                    if requests.send(LeaseKeepAliveRequest { id: lease }).await.is_err() {
                        return;
                    }
                    match answers.message().await {
                        Ok(Some(answer)) if answer.ttl > 0 => renewed.lock().unwrap().push(sent),
                        _ => return,
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            })
        };
        let started = Instant::now();
        while renewed.lock().unwrap().len() < 3 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "keep-alives through the leader failed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster.network.partition(&[vec![0], vec![1, 2]]);
        let cut_at = Instant::now();

        // The others elect a leader and, with no renewals reaching it, expire the lease.
        let deleted_at = loop {
            let message = tokio::time::timeout(Duration::from_secs(30), events.message())
                .await
                .expect("the lease expires once keep-alives stop reaching a leader")
                .unwrap()
                .unwrap();
            if message
                .events
                .iter()
                .any(|event| event.r#type == EventType::Delete as i32)
            {
                break Instant::now();
            }
        };
        keeper.abort();
        let renewed = renewed.lock().unwrap().clone();
        let last = *renewed.last().unwrap();
        let after_cut = renewed.iter().filter(|sent| **sent > cut_at).count();
        assert!(
            deleted_at >= last + Duration::from_secs(TTL),
            "the lease expired {:?} after a keep-alive sent {:?} after the cut-off succeeded \
             ({after_cut} keep-alives succeeded after it)",
            deleted_at - last,
            last.saturating_duration_since(cut_at),
        );
    })
    .await;
}

/// One revision whose events need more fragments than a stream buffers (a delete of
/// 600 keys with their previous values, at most ~1 KiB per response) still arrives,
/// whole and in order, as the client reads; and a stream holds a bounded number of
/// watches, refusing the next with a reason.
#[tokio::test]
async fn a_revision_of_more_fragments_than_a_stream_buffers_arrives_whole() {
    bounded(async {
        const KEYS: usize = 600;
        let cluster = Cluster::start_with(1, &["--max-request-bytes", "1024", "--max-watches-per-stream", "3"]).await;
        let value = "v".repeat(900);
        let mut writers = Vec::new();
        for writer in 0..8 {
            let mut kv = cluster.kv(0).await;
            let value = value.clone();
            writers.push(tokio::spawn(async move {
                for index in (writer..KEYS).step_by(8) {
                    put(&mut kv, &format!("f/{index:04}"), &value).await;
                }
            }));
        }
        for writer in writers {
            writer.await.unwrap();
        }
        let (requests, stream) = tokio::sync::mpsc::channel(4);
        let mut watch = WatchClient::new(crate::support::channel(&cluster.endpoints()[0]).await)
            .watch(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
            .unwrap()
            .into_inner();
        let create = |key: &str, end: &str| WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: bytes(key),
                range_end: bytes(end),
                prev_kv: true,
                fragment: true,
                ..Default::default()
            })),
        };
        requests.send(create("f/", "f0")).await.unwrap();
        assert!(watch.message().await.unwrap().unwrap().created);
        cluster
            .kv(0)
            .await
            .delete_range(shoal::proto::etcdserverpb::DeleteRangeRequest {
                key: bytes("f/"),
                range_end: bytes("f0"),
                ..Default::default()
            })
            .await
            .unwrap();

        let mut events = Vec::new();
        let mut responses = 0;
        loop {
            let response = tokio::time::timeout(Duration::from_secs(20), watch.message())
                .await
                .expect("the fragments keep coming")
                .unwrap()
                .unwrap();
            responses += 1;
            events.extend(response.events);
            if !response.fragment {
                break;
            }
        }
        assert!(
            responses > 256,
            "the revision took {responses} responses, more than a stream buffers"
        );
        assert_eq!(events.len(), KEYS);
        let revisions: std::collections::BTreeSet<i64> = events
            .iter()
            .map(|event| event.kv.as_ref().unwrap().mod_revision)
            .collect();
        assert_eq!(revisions.len(), 1, "one revision");
        for (index, event) in events.iter().enumerate() {
            assert_eq!(event.r#type, EventType::Delete as i32);
            assert_eq!(event.kv.as_ref().unwrap().key, bytes(&format!("f/{index:04}")));
            assert_eq!(event.prev_kv.as_ref().unwrap().value.len(), 900);
        }

        // Two more watches fit on the stream; the fourth is refused, with the reason.
        for key in ["a", "b"] {
            requests.send(create(key, "")).await.unwrap();
            let created = watch.message().await.unwrap().unwrap();
            assert!(created.created && !created.canceled, "{created:?}");
        }
        requests.send(create("c", "")).await.unwrap();
        let refused = watch.message().await.unwrap().unwrap();
        assert!(refused.created && refused.canceled, "{refused:?}");
        assert_eq!(
            refused.cancel_reason,
            "etcdserver: too many watches on one stream (at most 3, see --max-watches-per-stream)"
        );
    })
    .await;
}
