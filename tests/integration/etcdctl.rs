//! The unchanged etcdctl (etcd's own client) against a Shoal cluster.

use crate::support::{bounded, run_etcdctl, Cluster};
use shoal::proto::etcdserverpb::StatusRequest;

fn ok(endpoints: &[String], args: &[&str]) -> String {
    let (success, stdout, stderr) = run_etcdctl(endpoints, args, None);
    assert!(success, "etcdctl {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

#[tokio::test]
async fn etcdctl_reads_writes_and_transacts() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let endpoints = cluster.endpoints();
        let one = &endpoints[2..];
        assert_eq!(ok(&endpoints, &["put", "app/name", "shoal"]).trim(), "OK");
        assert_eq!(ok(&endpoints, &["put", "app/port", "2379"]).trim(), "OK");
        assert_eq!(ok(one, &["put", "other", "x"]).trim(), "OK");
        assert_eq!(ok(one, &["get", "app/name", "--print-value-only"]).trim(), "shoal");
        assert_eq!(
            ok(&endpoints, &["get", "app/", "--prefix"]).lines().collect::<Vec<_>>(),
            ["app/name", "shoal", "app/port", "2379"]
        );
        assert_eq!(
            ok(&endpoints, &["get", "app/", "--prefix", "--keys-only"])
                .split_whitespace()
                .count(),
            2
        );
        let limited = ok(&endpoints, &["get", "app/", "--prefix", "--limit=1", "-w", "json"]);
        assert!(
            limited.contains("\"more\":true") && limited.contains("\"count\":2"),
            "{limited}"
        );
        let json = ok(&endpoints, &["get", "app/name", "-w", "json"]);
        assert!(
            json.contains("\"version\":1") && json.contains("\"create_revision\""),
            "{json}"
        );
        assert!(ok(one, &["get", "app/port", "--consistency=s"]).contains("2379"));

        let txn = "value(\"app/name\") = \"shoal\"\n\nput app/name shoal2\n\nput app/name never\n\n";
        let (success, stdout, stderr) = run_etcdctl(&endpoints, &["txn"], Some(txn));
        assert!(success, "{stdout}{stderr}");
        assert!(stdout.starts_with("SUCCESS"), "{stdout}");
        assert_eq!(
            ok(&endpoints, &["get", "app/name", "--print-value-only"]).trim(),
            "shoal2"
        );

        assert_eq!(ok(&endpoints, &["del", "app/", "--prefix"]).trim(), "2");
        assert_eq!(ok(&endpoints, &["get", "app/", "--prefix"]).trim(), "");

        // History and compaction.
        let revision: i64 = {
            let json = ok(&endpoints, &["get", "other", "-w", "json"]);
            let start = json.find("\"revision\":").expect("revision in header") + "\"revision\":".len();
            json[start..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        ok(&endpoints, &["put", "other", "y"]);
        assert_eq!(
            ok(
                &endpoints,
                &["get", "other", "--print-value-only", &format!("--rev={revision}")]
            )
            .trim(),
            "x"
        );
        assert!(ok(&endpoints, &["compact", &(revision + 1).to_string()]).contains("compacted revision"));
        let (success, _, stderr) = run_etcdctl(&endpoints, &["get", "other", &format!("--rev={revision}")], None);
        assert!(
            !success && stderr.contains("required revision has been compacted"),
            "{stderr}"
        );
    })
    .await;
}

#[tokio::test]
async fn etcdctl_sees_a_truthful_cluster() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let endpoints = cluster.endpoints();
        let leader = cluster.leader().await;

        let status = ok(&endpoints, &["endpoint", "status", "--cluster", "-w", "table"]);
        let rows: Vec<&str> = status
            .lines()
            .filter(|line| line.contains("http://127.0.0.1"))
            .collect();
        assert_eq!(rows.len(), 3, "{status}");
        // Columns: endpoint, id, version, db size, is leader, ...
        let leaders: Vec<&str> = rows
            .iter()
            .filter(|row| row.split('|').map(str::trim).nth(5) == Some("true"))
            .copied()
            .collect();
        assert_eq!(leaders.len(), 1, "exactly one leader:\n{status}");
        assert!(leaders[0].contains(&cluster.nodes[leader].client_url()), "{status}");

        let members = ok(&endpoints, &["member", "list", "-w", "table"]);
        for node in &cluster.nodes {
            let row = members
                .lines()
                .find(|line| line.contains(&format!(" {} ", node.name)))
                .unwrap_or_else(|| panic!("{} missing from\n{members}", node.name));
            assert!(row.contains("started") && row.contains(&node.client_url()), "{row}");
            assert!(row.contains(&format!("http://127.0.0.1:{}", node.peer_port)), "{row}");
        }

        // Housekeeping that etcd operators script.
        let defrag = ok(&endpoints, &["defrag", "--cluster"]);
        assert_eq!(
            defrag.matches("Finished defragmenting etcd member").count(),
            3,
            "{defrag}"
        );
        assert_eq!(ok(&endpoints, &["alarm", "list"]).trim(), "");
        assert_eq!(ok(&endpoints, &["alarm", "disarm"]).trim(), "");

        // Leadership moves on request (before maintenance on the leader's machine).
        let target = (leader + 1) % 3;
        let mut status = cluster.maintenance(target).await;
        let target_id = status
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .member_id;
        let moved = ok(&endpoints, &["move-leader", &format!("{target_id:x}")]);
        assert!(moved.contains("Leadership transferred"), "{moved}");
        assert_eq!(cluster.leader().await, target);
        let (success, _, stderr) = run_etcdctl(&endpoints, &["move-leader", "ffff"], None);
        assert!(!success && stderr.contains("bad leader transferee"), "{stderr}");

        // etcdctl 3.4 reports health on stderr.
        let (success, stdout, stderr) = run_etcdctl(&endpoints, &["endpoint", "health", "--cluster"], None);
        let health = stdout + &stderr;
        assert!(success, "{health}");
        assert_eq!(health.matches("is healthy").count(), 3, "{health}");
    })
    .await;
}
