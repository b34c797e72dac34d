//! etcd's space quota and alarms: filling past `--quota-backend-bytes` raises NOSPACE
//! cluster-wide and refuses writes that add data (reads, deletes and compaction go on)
//! until the space is back and the alarm disarmed; a member whose data was altered on
//! disk is found by the corruption check (HashKV compared across members) and CORRUPT
//! refuses every write.

use crate::support::{bounded, bytes, get, redis_cli, run_etcdctl, Cluster};
use shoal::proto::etcdserverpb::{
    AlarmRequest, DeleteRangeRequest, HashKvRequest, PutRequest, RangeRequest, StatusRequest,
};
use shoal::storage::{Engine, ReadView};
use std::process::Command;
use std::time::{Duration, Instant};

fn redis(port: u16, args: &[&str]) -> String {
    let output = Command::new(redis_cli())
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("running redis-cli");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

async fn alarms(cluster: &Cluster, node: usize) -> Vec<(u64, i32)> {
    cluster
        .maintenance(node)
        .await
        .alarm(AlarmRequest::default())
        .await
        .expect("alarm list")
        .into_inner()
        .alarms
        .into_iter()
        .map(|alarm| (alarm.member_id, alarm.alarm))
        .collect()
}

async fn member_id(cluster: &Cluster, node: usize) -> u64 {
    cluster
        .maintenance(node)
        .await
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .header
        .expect("header")
        .member_id
}

#[tokio::test]
async fn past_the_quota_writes_are_refused_until_space_is_back_and_the_alarm_disarmed() {
    bounded(async {
        let cluster = Cluster::start_with(3, &["--quota-backend-bytes=30000"]).await;
        let endpoints: Vec<String> = cluster.nodes.iter().map(|node| node.client_url()).collect();
        let mut kv = cluster.kv(0).await;
        let value = "v".repeat(1000);
        let mut written = Vec::new();
        let refusal = loop {
            let key = format!("q/{:03}", written.len());
            match kv
                .put(PutRequest {
                    key: bytes(&key),
                    value: bytes(&value),
                    ..Default::default()
                })
                .await
            {
                Ok(_) => written.push(key),
                Err(status) => break status,
            }
            assert!(written.len() < 100, "30 kB of quota took 100 kB of writes");
        };
        assert_eq!(refusal.code(), tonic::Code::ResourceExhausted, "{refusal}");
        assert_eq!(refusal.message(), "etcdserver: mvcc: database space exceeded");
        assert!(written.len() >= 25, "refused after {} writes", written.len());

        // Raised cluster-wide, for the member that refused, and listed as etcd lists it.
        let first = member_id(&cluster, 0).await;
        for node in 0..3 {
            assert_eq!(alarms(&cluster, node).await, vec![(first, 1)], "node {node}");
        }
        let (ok, listed, stderr) = run_etcdctl(&endpoints, &["alarm", "list"], None);
        assert!(ok, "{stderr}");
        assert_eq!(listed.trim(), format!("memberID:{first} alarm:NOSPACE"));
        let status = cluster
            .maintenance(1)
            .await
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.db_size_quota, 30000);
        assert!(
            status.errors.iter().any(|error| error.contains("alarm:NOSPACE")),
            "{status:?}"
        );

        // Every node refuses what adds data: puts, leases, Redis writes.
        let mut other = cluster.kv(2).await;
        let refused = other
            .put(PutRequest {
                key: bytes("q/extra"),
                value: bytes("x"),
                ..Default::default()
            })
            .await
            .expect_err("a put under NOSPACE");
        assert_eq!(refused.message(), "etcdserver: mvcc: database space exceeded");
        let (ok, _, stderr) = run_etcdctl(&endpoints[1..2], &["lease", "grant", "60"], None);
        assert!(!ok && stderr.contains("database space exceeded"), "{stderr}");
        let reply = redis(cluster.nodes[1].redis_port, &["SET", "k", "v"]);
        assert!(reply.starts_with("OOM "), "{reply}");

        // Reads, deletes and compaction go on; nothing acknowledged is lost.
        for node in 0..3 {
            let mut reader = cluster.kv(node).await;
            for key in &written {
                assert_eq!(
                    get(&mut reader, key, false).await.as_deref(),
                    Some(value.as_str()),
                    "{key}"
                );
            }
        }
        let deleted = other
            .delete_range(DeleteRangeRequest {
                key: bytes("q/"),
                range_end: bytes("q0"),
                ..Default::default()
            })
            .await
            .expect("a delete under NOSPACE")
            .into_inner();
        assert_eq!(deleted.deleted as usize, written.len());
        let revision = deleted.header.unwrap().revision;
        let (ok, _, stderr) = run_etcdctl(&endpoints, &["compact", &revision.to_string()], None);
        assert!(ok, "compaction under NOSPACE: {stderr}");

        // Still refused until disarmed; then writes come back.
        assert!(other
            .put(PutRequest {
                key: bytes("q/extra"),
                value: bytes("x"),
                ..Default::default()
            })
            .await
            .is_err());
        let (ok, disarmed, stderr) = run_etcdctl(&endpoints, &["alarm", "disarm"], None);
        assert!(ok, "{stderr}");
        assert!(disarmed.contains("alarm:NOSPACE"), "{disarmed}");
        for node in 0..3 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !alarms(&cluster, node).await.is_empty() {
                assert!(Instant::now() < deadline, "node {node} still lists the alarm");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        other
            .put(PutRequest {
                key: bytes("q/after"),
                value: bytes("back"),
                ..Default::default()
            })
            .await
            .expect("a put after disarming");
        assert_eq!(redis(cluster.nodes[0].redis_port, &["SET", "k", "v"]), "OK");
    })
    .await;
}

#[tokio::test]
async fn the_corruption_check_finds_a_member_whose_data_was_altered_on_disk() {
    bounded(async {
        let mut cluster = Cluster::start_with(3, &["--corrupt-check-time=1s"]).await;
        let mut kv = cluster.kv(0).await;
        let mut revision = 0;
        for index in 0..30 {
            revision = kv
                .put(PutRequest {
                    key: bytes(&format!("c/key{index:02}")),
                    value: bytes(&format!("value {index}")),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .header
                .unwrap()
                .revision;
        }
        // Healthy members agree.
        let mut hashes = Vec::new();
        for node in 0..3 {
            let hashed = cluster
                .maintenance(node)
                .await
                .hash_kv(HashKvRequest { revision })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(hashed.hash_revision, revision);
            hashes.push((hashed.hash, hashed.compact_revision));
        }
        assert!(hashes.iter().all(|hash| *hash == hashes[0]), "{hashes:?}");
        assert!(alarms(&cluster, 0).await.is_empty());
        let endpoints: Vec<String> = cluster.nodes.iter().map(|node| node.client_url()).collect();
        let (ok, table, stderr) = run_etcdctl(&endpoints, &["endpoint", "hashkv", &format!("--rev={revision}")], None);
        assert!(ok, "etcdctl endpoint hashkv: {stderr}");
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(
            table.lines().all(|line| line.ends_with(&format!(", {}", hashes[0].0))),
            "{table}"
        );

        // Alter one value behind the member's back, where its engine keeps it.
        let victim = 2;
        let victim_id = member_id(&cluster, victim).await;
        alter_behind_its_back(&mut cluster, victim, b"c/key07", b"value 7");

        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let raised = alarms(&cluster, 0).await;
            if raised.contains(&(victim_id, 2)) {
                assert_eq!(raised.len(), 1, "only the altered member is corrupt: {raised:?}");
                break;
            }
            assert!(Instant::now() < deadline, "no CORRUPT alarm: {raised:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (ok, listed, _) = run_etcdctl(&endpoints, &["alarm", "list"], None);
        assert!(
            ok && listed.contains(&format!("memberID:{victim_id} alarm:CORRUPT")),
            "{listed}"
        );

        // Writes are refused everywhere; reads still work.
        let refused = kv
            .put(PutRequest {
                key: bytes("c/after"),
                value: bytes("x"),
                ..Default::default()
            })
            .await
            .expect_err("a write under CORRUPT");
        assert_eq!(refused.code(), tonic::Code::DataLoss);
        assert_eq!(refused.message(), "etcdserver: corrupt cluster");
        let read = kv
            .range(RangeRequest {
                key: bytes("c/key08"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.kvs[0].value, b"value 8"[..]);
    })
    .await;
}

/// Stops `node`, changes `key`'s stored value (expected to be `was`) in its engine as
/// a damaged disk would, and starts it again.
fn alter_behind_its_back(cluster: &mut Cluster, node: usize, key: &[u8], was: &[u8]) {
    cluster.stop(node);
    {
        let engine = shoal::storage::FjallEngine::open(&cluster.nodes[node].data_dir.join("db")).unwrap();
        let key = shoal::api::etcd::etcd_internal_key(key);
        let stored = engine
            .get(shoal::storage::Space::KvLatest, &key)
            .unwrap()
            .expect("the key is stored");
        let mut record = shoal::storage::mvcc::Record::decode(shoal::storage::Space::KvLatest, &stored).unwrap();
        assert_eq!(record.value, was);
        record.value = b"altered".to_vec();
        let mut batch = shoal::storage::WriteBatch::new();
        batch.put(shoal::storage::Space::KvLatest, key.clone(), record.encode());
        batch.put(
            shoal::storage::Space::KvHistory,
            shoal::storage::keys::history_key(&key, record.mod_revision),
            record.encode(),
        );
        engine.write(batch, shoal::storage::Durability::Sync).unwrap();
    }
    cluster.restart(node);
}

/// With auth on, HashKV needs the root role: the members still ask one another.
#[tokio::test]
async fn the_corruption_check_runs_with_auth_on() {
    bounded(async {
        let mut cluster = Cluster::start_with(3, &["--corrupt-check-time=1s"]).await;
        let endpoints: Vec<String> = cluster.nodes.iter().map(|node| node.client_url()).collect();
        for args in [
            &["user", "add", "root:rootpw"][..],
            &["user", "grant-role", "root", "root"],
            &["put", "c/key01", "value 1"],
            &["auth", "enable"],
        ] {
            let (ok, out, err) = run_etcdctl(&endpoints[..1], args, None);
            assert!(ok, "etcdctl {args:?}: {out}{err}");
        }
        let victim_id = member_id(&cluster, 1).await;
        alter_behind_its_back(&mut cluster, 1, b"c/key01", b"value 1");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, listed, err) = run_etcdctl(&endpoints, &["--user=root:rootpw", "alarm", "list"], None);
            assert!(ok, "{err}");
            if listed.contains(&format!("memberID:{victim_id} alarm:CORRUPT")) {
                break;
            }
            assert!(Instant::now() < deadline, "no CORRUPT alarm with auth on: {listed}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
}
