//! Acknowledged writes survive failures: a killed leader, a restarted cluster, a
//! node that fell so far behind that it needs a snapshot, and kill -9 of everything.

use crate::support::{bounded, bytes, get, put, scan, Cluster};
use shoal::proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Writers that put unique keys through every node, round robin, recording which puts
/// were acknowledged (and when).
struct Writers {
    acknowledged: Arc<Mutex<BTreeMap<String, (String, Instant)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Writers {
    fn start(endpoints: Vec<String>, writers: usize) -> Self {
        let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..writers)
            .map(|writer| {
                let endpoints = endpoints.clone();
                let acknowledged = acknowledged.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut clients = Vec::new();
                    for url in &endpoints {
                        clients.push(shoal::proto::etcdserverpb::kv_client::KvClient::new(
                            crate::support::channel(url).await,
                        ));
                    }
                    let mut sequence = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        sequence += 1;
                        let key = format!("w/{writer}/{sequence:06}");
                        let value = format!("value-{writer}-{sequence}");
                        let client = &mut clients[sequence as usize % endpoints.len()];
                        let request = PutRequest {
                            key: bytes(&key),
                            value: bytes(&value),
                            ..Default::default()
                        };
                        let outcome = tokio::time::timeout(Duration::from_secs(10), client.put(request)).await;
                        if let Ok(Ok(_)) = outcome {
                            acknowledged.lock().unwrap().insert(key, (value, Instant::now()));
                        } else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Self {
            acknowledged,
            tasks,
            stop,
        }
    }

    /// Waits until at least `count` writes were acknowledged after `since`.
    async fn wait_for(&self, count: usize, since: Instant) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let done = self
                .acknowledged
                .lock()
                .unwrap()
                .values()
                .filter(|(_, at)| *at > since)
                .count();
            if done >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {done} of {count} writes acknowledged within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> BTreeMap<String, (String, Instant)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("writer task");
        }
        Arc::try_unwrap(self.acknowledged).unwrap().into_inner().unwrap()
    }
}

/// Waits until `node` holds every acknowledged write (serializable reads: its own state).
async fn assert_holds_all(
    cluster: &Cluster,
    node: usize,
    expected: &BTreeMap<String, (String, Instant)>,
    serializable: bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut client = cluster.kv(node).await;
        let present: BTreeMap<String, String> = scan(&mut client, "w/", serializable).await.into_iter().collect();
        let missing: Vec<&String> = expected
            .iter()
            .filter(|(key, (value, _))| present.get(*key) != Some(value))
            .map(|(key, _)| key)
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            serializable && Instant::now() < deadline,
            "{} lost {} acknowledged writes, e.g. {:?}",
            cluster.nodes[node].name,
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn killing_the_leader_loses_no_acknowledged_write() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        let leader = cluster.leader().await;
        let started = Instant::now();
        let writers = Writers::start(cluster.endpoints(), 6);
        writers.wait_for(100, started).await;
        cluster.kill(leader);
        let killed_at = Instant::now();
        // The survivors elect a leader and take writes again.
        writers.wait_for(100, killed_at).await;
        let acknowledged = writers.finish().await;

        let after_kill = acknowledged.values().filter(|(_, at)| *at > killed_at).count();
        eprintln!(
            "{} writes acknowledged, {after_kill} of them after the leader died",
            acknowledged.len()
        );
        assert!(
            acknowledged.len() > 50,
            "too few writes to mean anything: {}",
            acknowledged.len()
        );
        assert!(
            after_kill > 0,
            "the surviving nodes accepted no write after the leader died"
        );
        let new_leader = cluster.leader().await;
        assert_ne!(new_leader, leader);
        for node in (0..3).filter(|node| *node != leader) {
            assert_holds_all(&cluster, node, &acknowledged, false).await;
        }

        // The surviving pair keeps taking writes, and the old leader catches up.
        let mut client = cluster.kv(new_leader).await;
        put(&mut client, "w/after", "yes").await;
        cluster.restart(leader);
        cluster.wait_ready(Duration::from_secs(30)).await;
        let mut expected = acknowledged;
        expected.insert("w/after".into(), ("yes".into(), Instant::now()));
        assert_holds_all(&cluster, leader, &expected, true).await;
    })
    .await;
}

#[tokio::test]
async fn a_restarted_cluster_keeps_data_revisions_and_compaction() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        let mut client = cluster.kv(0).await;
        let first = put(&mut client, "r/a", "1").await;
        for i in 0..50 {
            put(&mut client, &format!("r/k{i:02}"), &format!("{i}")).await;
        }
        let last = put(&mut client, "r/a", "2").await;
        client
            .compact(CompactionRequest {
                revision: first + 1,
                physical: true,
            })
            .await
            .unwrap();
        for node in 0..3 {
            cluster.stop(node);
        }
        for node in 0..3 {
            cluster.restart(node);
        }
        cluster.wait_ready(Duration::from_secs(30)).await;

        for node in 0..3 {
            let mut client = cluster.kv(node).await;
            let response = client
                .range(RangeRequest {
                    key: bytes("r/"),
                    range_end: bytes("r0"),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(response.count, 51);
            assert!(response.header.unwrap().revision >= last, "revision went backwards");
            let compacted = client
                .range(RangeRequest {
                    key: bytes("r/a"),
                    revision: first,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(
                (compacted.code(), compacted.message()),
                (
                    tonic::Code::OutOfRange,
                    "etcdserver: mvcc: required revision has been compacted"
                )
            );
            let past = client
                .range(RangeRequest {
                    key: bytes("r/a"),
                    revision: last - 1,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(past.kvs[0].value.as_ref(), b"1");
        }
        let mut client = cluster.kv(1).await;
        assert!(
            put(&mut client, "r/new", "x").await > last,
            "new writes continue the revision sequence"
        );
    })
    .await;
}

#[tokio::test]
async fn a_node_behind_the_truncated_log_catches_up_from_a_snapshot() {
    bounded(async {
        let mut cluster =
            Cluster::start_with(3, &["--snapshot-count", "100", "--snapshot-catchup-entries", "10"]).await;
        let leader = cluster.leader().await;
        let lagging = (leader + 1) % 3;
        cluster.kill(lagging);
        let mut client = cluster.kv(leader).await;
        let mut expected = BTreeMap::new();
        for i in 0..400 {
            let key = format!("w/{i:04}");
            let value = "x".repeat(100 + i % 50);
            put(&mut client, &key, &value).await;
            expected.insert(key, (value, Instant::now()));
        }
        cluster.restart(lagging);
        cluster.wait_ready(Duration::from_secs(30)).await;
        assert_holds_all(&cluster, lagging, &expected, true).await;
        let log = cluster.nodes[lagging].log_text();
        assert!(
            log.contains("installed snapshot"),
            "the node caught up without a snapshot:\n{log}"
        );
        // It keeps following afterwards.
        put(&mut client, "w/after-snapshot", "1").await;
        let mut lagging_client = cluster.kv(lagging).await;
        assert_eq!(
            get(&mut lagging_client, "w/after-snapshot", false).await.as_deref(),
            Some("1")
        );
    })
    .await;
}

#[tokio::test]
async fn kill_9_of_every_node_mid_write_loses_no_acknowledged_write() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        let started = Instant::now();
        let writers = Writers::start(cluster.endpoints(), 6);
        writers.wait_for(100, started).await;
        for node in 0..3 {
            cluster.kill(node);
        }
        let acknowledged = writers.finish().await;
        assert!(
            acknowledged.len() > 50,
            "too few writes to mean anything: {}",
            acknowledged.len()
        );
        for node in 0..3 {
            cluster.restart(node);
        }
        cluster.wait_ready(Duration::from_secs(30)).await;
        for node in 0..3 {
            assert_holds_all(&cluster, node, &acknowledged, false).await;
        }
    })
    .await;
}

/// Revisions come from the meta range's timestamp oracle: each acknowledged write gets
/// a revision above every write acknowledged before it started, through kill -9 of
/// every node (a new oracle leader starts above the persisted mark) and of each node in
/// turn (the oracle's leader among them), with writes through every member.
#[tokio::test]
async fn revisions_follow_real_time_through_oracle_failures() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        let mut clients = Vec::new();
        for node in 0..3 {
            clients.push(cluster.kv(node).await);
        }
        let mut acknowledged: Vec<i64> = Vec::new();
        let mut sequence = 0usize;
        for phase in 0..5 {
            let mut written = 0;
            while written < 30 {
                sequence += 1;
                let client = &mut clients[sequence % 3];
                let request = PutRequest {
                    key: bytes(&format!("rt/{sequence:05}")),
                    value: bytes("v"),
                    ..Default::default()
                };
                // Each put starts after the previous one was acknowledged.
                match tokio::time::timeout(Duration::from_secs(10), client.put(request)).await {
                    Ok(Ok(response)) => {
                        acknowledged.push(response.into_inner().header.expect("header").revision);
                        written += 1;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            match phase {
                0 => {
                    for node in 0..3 {
                        cluster.kill(node);
                    }
                    for node in 0..3 {
                        cluster.restart(node);
                    }
                    cluster.wait_ready(Duration::from_secs(30)).await;
                }
                1..=3 => {
                    cluster.kill(phase - 1);
                    cluster.restart(phase - 1);
                }
                _ => {}
            }
        }
        for pair in acknowledged.windows(2) {
            assert!(
                pair[0] < pair[1],
                "a write acknowledged at revision {} was followed by one at {}: {acknowledged:?}",
                pair[0],
                pair[1]
            );
        }
        // Everything acknowledged is there, at the revision it was acknowledged with.
        let mut client = cluster.kv(0).await;
        let response = client
            .range(RangeRequest {
                key: bytes("rt/"),
                range_end: bytes("rt0"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let stored: std::collections::BTreeSet<i64> = response.kvs.iter().map(|kv| kv.mod_revision).collect();
        for revision in &acknowledged {
            assert!(
                stored.contains(revision),
                "revision {revision} was acknowledged but is not stored"
            );
        }
    })
    .await;
}
