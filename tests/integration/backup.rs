//! Backups: `etcdctl snapshot save` from a loaded cluster, `shoal snapshot status`, and
//! `shoal snapshot restore` into a new 3-node cluster that then serves every key as it
//! was (value, version, create and mod revisions, lease), Redis keys included; damaged
//! files are refused.

use crate::support::{bounded, bytes, redis_cli, run_etcdctl, Cluster};
use shoal::proto::etcdserverpb::{
    lease_client::LeaseClient, DeleteRangeRequest, LeaseGrantRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
};
use shoal::proto::mvccpb::KeyValue;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn shoal(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .output()
        .expect("running shoal");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn redis(port: u16, args: &[&str]) -> String {
    let output = Command::new(redis_cli())
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("running redis-cli");
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Every etcd key, as of `revision` (0: the newest).
async fn all_keys(cluster: &Cluster, node: usize, revision: i64) -> (i64, Vec<KeyValue>) {
    let response = cluster
        .kv(node)
        .await
        .range(RangeRequest {
            key: bytes("\0"),
            range_end: bytes("\0"),
            revision,
            ..Default::default()
        })
        .await
        .expect("reading every key")
        .into_inner();
    (response.header.expect("header").revision, response.kvs)
}

/// `shoal snapshot restore` of `file` into every node's (emptied) data directory.
fn restore_into(cluster: &Cluster, file: &Path) {
    for node in &cluster.nodes {
        std::fs::remove_dir_all(&node.data_dir).expect("removing the old data");
        let (ok, stdout, stderr) = shoal(&[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--name",
            &node.name,
            "--data-dir",
            node.data_dir.to_str().unwrap(),
            "--initial-cluster",
            cluster.initial_cluster(),
            "--initial-cluster-token",
            "shoal-chaos",
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{}", node.peer_port),
        ]);
        assert!(ok, "restoring {}: {stdout}{stderr}", node.name);
        assert!(stdout.contains("restored"), "{stdout}");
    }
}

#[tokio::test]
async fn etcdctl_snapshot_save_then_restore_into_a_new_cluster() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup.db");

        // A loaded cluster: keys with several versions, deleted keys, a lease with keys,
        // and Redis values.
        let source = Cluster::start(3).await;
        let mut kv = source.kv(0).await;
        for round in 0..3 {
            for index in 0..120 {
                if round > 0 && index % 3 != 0 {
                    continue;
                }
                kv.put(PutRequest {
                    key: bytes(&format!("{}/key{index:03}", ["a", "c", "n", "x"][index % 4])),
                    value: bytes(&format!("value {index} round {round}")),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        }
        kv.delete_range(DeleteRangeRequest {
            key: bytes("x/key003"),
            ..Default::default()
        })
        .await
        .unwrap();
        let lease = LeaseClient::new(crate::support::channel(&source.nodes[1].client_url()).await)
            .lease_grant(LeaseGrantRequest { ttl: 600, id: 0 })
            .await
            .unwrap()
            .into_inner()
            .id;
        for key in ["leased/one", "leased/two"] {
            kv.put(PutRequest {
                key: bytes(key),
                value: bytes("held"),
                lease,
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let redis_port = source.nodes[2].redis_port;
        assert_eq!(redis(redis_port, &["SET", "greeting", "hello"]), "OK");
        assert_eq!(redis(redis_port, &["RPUSH", "queue", "a", "b", "c"]), "3");
        assert_eq!(
            redis(redis_port, &["HSET", "user:1", "name", "ada", "lang", "rust"]),
            "2"
        );

        // Users and roles go in the backup too.
        let (ok, _, stderr) = run_etcdctl(&[source.nodes[0].client_url()], &["user", "add", "carol:carolpw"], None);
        assert!(ok, "{stderr}");
        let (ok, stdout, stderr) = run_etcdctl(
            &[source.nodes[0].client_url()],
            &["snapshot", "save", file.to_str().unwrap()],
            None,
        );
        assert!(ok, "etcdctl snapshot save: {stdout}{stderr}");
        assert!(
            format!("{stdout}{stderr}").contains("Snapshot saved at"),
            "{stdout}{stderr}"
        );
        let (ok, status, stderr) = shoal(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
        assert!(ok, "snapshot status: {stderr}");
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        let revision = status["revision"].as_i64().unwrap();
        // 121 etcd keys (one of 120 deleted, two leased) and three Redis keys, at least:
        // a Redis hash or list keeps more than one stored key.
        assert!(status["totalKey"].as_u64().unwrap() >= 124, "{status}");
        assert_eq!(status["leases"].as_u64(), Some(1), "{status}");
        let (ok, table, _) = shoal(&["snapshot", "status", file.to_str().unwrap()]);
        assert!(
            ok && table.contains("TOTAL KEYS") && table.contains(&revision.to_string()),
            "{table}"
        );

        let (_, expected) = all_keys(&source, 1, revision).await;
        assert_eq!(expected.len(), 121);
        drop(kv);
        drop(source);

        // Damaged copies are refused and leave nothing behind.
        let whole = std::fs::read(&file).unwrap();
        let cut = dir.path().join("cut.db");
        std::fs::write(&cut, &whole[..whole.len() - 100]).unwrap();
        let flipped = dir.path().join("flipped.db");
        let mut altered = whole.clone();
        altered[whole.len() / 2] ^= 0x10;
        std::fs::write(&flipped, &altered).unwrap();
        for (damaged, says) in [(&cut, "no SHA-256 trailer"), (&flipped, "is damaged")] {
            let target = dir.path().join("refused");
            let (ok, stdout, stderr) = shoal(&[
                "snapshot",
                "restore",
                damaged.to_str().unwrap(),
                "--data-dir",
                target.to_str().unwrap(),
            ]);
            assert!(!ok, "{} was restored: {stdout}", damaged.display());
            assert!(stderr.contains(says), "{stderr}");
            assert!(!target.exists(), "a refused restore left {}", target.display());
            let (ok, _, stderr) = shoal(&["snapshot", "status", damaged.to_str().unwrap()]);
            assert!(!ok && stderr.contains(says), "{stderr}");
        }

        // A new cluster from the backup.
        let mut restored = Cluster::start(3).await;
        for index in 0..3 {
            restored.kill(index);
        }
        restore_into(&restored, &file);
        let (ok, _, stderr) = shoal(&[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            restored.nodes[0].data_dir.to_str().unwrap(),
        ]);
        assert!(
            !ok && stderr.contains("exists"),
            "restored over a member's data: {stderr}"
        );
        for index in 0..3 {
            restored.restart(index);
        }
        restored.wait_ready(Duration::from_secs(30)).await;

        for node in 0..3 {
            let (now, actual) = all_keys(&restored, node, 0).await;
            assert!(
                now >= revision,
                "the restored cluster is at {now}, before the backup's {revision}"
            );
            assert_eq!(actual, expected, "node {node} serves other keys than the backup's");
        }
        // Reads at the backup's revision work; older history is not in a backup.
        let (_, at_backup) = all_keys(&restored, 0, revision).await;
        assert_eq!(at_backup, expected);
        let older = restored
            .kv(0)
            .await
            .range(RangeRequest {
                key: bytes("a/key000"),
                revision: revision - 1,
                ..Default::default()
            })
            .await
            .expect_err("history before the backup is compacted");
        assert!(older.message().contains("compacted"), "{older}");

        // New writes go on above the backup's revision; the lease still holds its keys.
        let mut kv = restored.kv(2).await;
        let written = kv
            .put(PutRequest {
                key: bytes("after/restore"),
                value: bytes("1"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
        assert!(
            written > revision,
            "a write after the restore got revision {written} <= {revision}"
        );
        let lease_status = LeaseClient::new(crate::support::channel(&restored.nodes[0].client_url()).await)
            .lease_time_to_live(LeaseTimeToLiveRequest { id: lease, keys: true })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(lease_status.granted_ttl, 600);
        assert!(lease_status.ttl > 0, "{lease_status:?}");
        let mut leased = lease_status.keys.clone();
        leased.sort();
        assert_eq!(leased, vec![bytes("leased/one"), bytes("leased/two")]);

        let (ok, users, stderr) = run_etcdctl(&[restored.nodes[2].client_url()], &["user", "list"], None);
        assert!(
            ok && users.contains("carol"),
            "users after the restore: {users}{stderr}"
        );

        let redis_port = restored.nodes[1].redis_port;
        assert_eq!(redis(redis_port, &["GET", "greeting"]), "hello");
        assert_eq!(redis(redis_port, &["LRANGE", "queue", "0", "-1"]), "a\nb\nc");
        assert_eq!(redis(redis_port, &["HGET", "user:1", "lang"]), "rust");
        assert_eq!(redis(redis_port, &["RPUSH", "queue", "d"]), "4");
    })
    .await;
}
