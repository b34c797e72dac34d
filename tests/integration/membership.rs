//! Membership changes at run time with etcd's own tools: `etcdctl member add` (voter
//! and learner), a new node started with `--initial-cluster-state existing` or
//! `--join`, `member promote`, `member update`, `member remove`, and etcd's errors for
//! bad changes. Every range follows the membership, so a new member ends up holding
//! every key, and a removed one stops and cannot come back with its data.

use crate::support::{bounded, bytes, run_etcdctl, Cluster};
use shoal::proto::etcdserverpb::{PutRequest, RangeRequest};
use std::time::{Duration, Instant};

/// Keys written before a member is added.
const KEYS: usize = 120;

async fn write_keys(cluster: &Cluster, prefix: &str, count: usize) {
    let mut kv = cluster.kv(0).await;
    for i in 0..count {
        kv.put(PutRequest {
            key: bytes(&format!("{prefix}{i:04}")),
            value: bytes(&format!("v{i}")),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("put {i}: {status}"));
    }
}

/// Waits until node `index` answers a serializable read of `prefix` from its own copy
/// with `count` keys: it holds every range's data.
async fn wait_for_copy(cluster: &Cluster, index: usize, prefix: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut kv = cluster.kv(index).await;
    loop {
        let request = RangeRequest {
            key: bytes(prefix),
            range_end: shoal::client::prefix_range_end(prefix.as_bytes()).into(),
            serializable: true,
            count_only: true,
            ..Default::default()
        };
        let last = match kv.range(request).await {
            Ok(response) if response.get_ref().count as usize == count => return,
            Ok(response) => format!("{} keys", response.get_ref().count),
            Err(status) => status.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{} never held all {count} keys of {prefix} (last: {last})",
            cluster.nodes[index].name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `etcdctl member list -w simple` lines: id, status, name, peer URLs, client URLs, learner.
fn member_list(cluster: &Cluster) -> Vec<Vec<String>> {
    let (ok, out, err) = run_etcdctl(&cluster.endpoints()[..1], &["member", "list"], None);
    assert!(ok, "member list failed: {err}");
    out.lines()
        .map(|line| line.split(", ").map(str::to_string).collect())
        .collect()
}

/// The id etcdctl printed for an added member ("Member <hex> added to cluster <hex>").
fn added_id(output: &str) -> String {
    output
        .split_whitespace()
        .skip_while(|word| *word != "Member")
        .nth(1)
        .unwrap_or_else(|| panic!("no member id in {output:?}"))
        .to_string()
}

/// `ETCD_INITIAL_CLUSTER` as `member add` printed it.
fn printed_initial_cluster(output: &str) -> String {
    output
        .lines()
        .find_map(|line| line.strip_prefix("ETCD_INITIAL_CLUSTER="))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {output:?}"))
        .trim_matches('"')
        .to_string()
}

/// Waits until every range on node 0 (as `/v1/ranges` shows) has `replicas` replicas and
/// no learner.
async fn wait_for_replicas(cluster: &Cluster, replicas: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = shoal::http_probe::get(cluster.nodes[0].metrics_port, "/v1/ranges", Duration::from_secs(2))
            .await
            .map(|(_, body)| body)
            .unwrap_or_default();
        let ranges: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
        let settled = !ranges.is_empty()
            && ranges.iter().all(|range| {
                range["replicas"].as_array().map(Vec::len) == Some(replicas)
                    && range["learners"].as_array().is_none_or(Vec::is_empty)
            });
        if settled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ranges never settled on {replicas} voting replicas: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_with_etcdctl_gets_every_key_and_serves() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        write_keys(&cluster, "before/", KEYS).await;
        let index = cluster
            .add_node("n4", None, vec!["--initial-cluster-state".into(), "existing".into()])
            .expect("a fourth node");
        let url = cluster.peer_url(index);
        let (ok, out, err) = run_etcdctl(
            &cluster.endpoints()[..1],
            &["member", "add", "n4", &format!("--peer-urls={url}")],
            None,
        );
        assert!(ok, "member add failed: {err}");
        let id = added_id(&out);
        let initial = printed_initial_cluster(&out);
        assert!(initial.contains(&format!("n4={url}")), "{initial}");
        assert!(initial.contains("n1="), "the started members are named: {initial}");
        cluster.nodes[index].initial_cluster = Some(initial);
        cluster.restart(index);
        wait_for_copy(&cluster, index, "before/", KEYS).await;

        // It serves: a write through it is read back through another member.
        let mut kv = cluster.kv(index).await;
        kv.put(PutRequest {
            key: bytes("after/x"),
            value: bytes("from n4"),
            ..Default::default()
        })
        .await
        .expect("a write through the new member");
        assert_eq!(
            crate::support::get(&mut cluster.kv(1).await, "after/x", false)
                .await
                .as_deref(),
            Some("from n4")
        );
        wait_for_replicas(&cluster, 4).await;
        let members = member_list(&cluster);
        assert_eq!(members.len(), 4, "{members:?}");
        wait_for_state(&cluster, 0, "n4", "alive").await;
        let added = members
            .iter()
            .find(|member| member[0] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {members:?}"));
        assert_eq!(added[2], "n4", "it published its name: {added:?}");
        assert_eq!(added[5], "false", "added as a voter: {added:?}");

        // It survives a restart as the same member.
        cluster.stop(index);
        cluster.restart(index);
        cluster.wait_ready(Duration::from_secs(30)).await;
        wait_for_copy(&cluster, index, "before/", KEYS).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_is_promoted_and_a_removed_member_never_comes_back() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        write_keys(&cluster, "k/", 40).await;
        let endpoints = cluster.endpoints()[..1].to_vec();
        let index = cluster
            .add_node("n4", None, vec!["--initial-cluster-state".into(), "existing".into()])
            .expect("a fourth node");
        let url = cluster.peer_url(index);
        let (ok, out, err) = run_etcdctl(
            &endpoints,
            &["member", "add", "n4", &format!("--peer-urls={url}"), "--learner"],
            None,
        );
        assert!(ok, "member add --learner failed: {err}");
        let id = added_id(&out);
        cluster.nodes[index].initial_cluster = Some(printed_initial_cluster(&out));
        cluster.restart(index);
        wait_for_copy(&cluster, index, "k/", 40).await;
        let learner = member_list(&cluster)
            .into_iter()
            .find(|member| member[0] == id)
            .expect("listed");
        assert_eq!(learner[5], "true", "{learner:?}");

        // etcd's errors, each changing nothing.
        let first = member_list(&cluster)
            .into_iter()
            .find(|member| member[5] == "false")
            .expect("a voter")[0]
            .clone();
        let (ok, _, err) = run_etcdctl(&endpoints, &["member", "promote", &first], None);
        assert!(!ok && err.contains("can only promote a learner member"), "{err}");
        let (ok, _, err) = run_etcdctl(
            &endpoints,
            &["member", "add", "again", &format!("--peer-urls={url}")],
            None,
        );
        assert!(!ok && err.contains("Peer URLs already exists"), "{err}");
        let (ok, _, err) = run_etcdctl(&endpoints, &["member", "remove", "abcdef"], None);
        assert!(!ok && err.contains("member not found"), "{err}");
        let (ok, _, err) = run_etcdctl(
            &endpoints,
            &["member", "add", "third", "--peer-urls=http://127.0.0.1:1", "--learner"],
            None,
        );
        assert!(!ok && err.contains("too many learner members in cluster"), "{err}");
        assert_eq!(member_list(&cluster).len(), 4);

        let (ok, _, err) = run_etcdctl(&endpoints, &["member", "promote", &id], None);
        assert!(ok, "promote failed: {err}");
        let promoted = member_list(&cluster)
            .into_iter()
            .find(|member| member[0] == id)
            .expect("listed");
        assert_eq!(promoted[5], "false", "{promoted:?}");
        wait_for_replicas(&cluster, 4).await;

        // member update changes what the others dial; the same URL is fine.
        let (ok, _, err) = run_etcdctl(
            &endpoints,
            &["member", "update", &id, &format!("--peer-urls={url}")],
            None,
        );
        assert!(ok, "member update failed: {err}");

        // Removed: its replicas go, it stops, and it refuses to start on its old data.
        let (ok, _, err) = run_etcdctl(&endpoints, &["member", "remove", &id], None);
        assert!(ok, "member remove failed: {err}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.has_exited(index) {
            assert!(Instant::now() < deadline, "the removed member kept running");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            cluster.nodes[index].log_text().contains("was removed from the cluster"),
            "{}",
            cluster.nodes[index].log_text()
        );
        wait_for_replicas(&cluster, 3).await;
        write_keys(&cluster, "later/", 10).await;
        assert_eq!(member_list(&cluster).len(), 3);
        cluster.kill(index);
        cluster.restart(index);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.has_exited(index) {
            assert!(
                Instant::now() < deadline,
                "the removed member started again on its old data"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = cluster.nodes[index].log_text();
        assert_eq!(
            log.matches("Error: this member").count(),
            2,
            "refused at its restart: {log}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_with_the_join_flag() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        write_keys(&cluster, "j/", 30).await;
        let join = format!("--join={}", cluster.peer_url(1));
        let index = cluster.add_node("n4", None, vec![join]).expect("a fourth node");
        cluster.restart(index);
        wait_for_copy(&cluster, index, "j/", 30).await;
        wait_for_replicas(&cluster, 4).await;
        // Listed under its name once it has published it (it may not have yet when its
        // replicas are all in): gossip's view names it from the same list.
        wait_for_state(&cluster, 0, "n4", "alive").await;
    })
    .await;
}

/// `/v1/nodes` on node `index`: (name, gossip state, ranges in its load report).
async fn nodes(cluster: &Cluster, index: usize) -> Vec<(String, String, Option<u64>)> {
    let body = shoal::http_probe::get(cluster.nodes[index].metrics_port, "/v1/nodes", Duration::from_secs(2))
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();
    let nodes: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
    nodes
        .iter()
        .map(|node| {
            (
                node["name"].as_str().unwrap_or_default().to_string(),
                node["gossip"]["state"].as_str().unwrap_or_default().to_string(),
                node["load"]["ranges"].as_u64(),
            )
        })
        .collect()
}

async fn wait_for_state(cluster: &Cluster, observer: usize, name: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let seen = nodes(cluster, observer).await;
        if seen.iter().any(|(node, now, _)| node == name && now == state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never {state} for {observer}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_finds_a_killed_node_down_and_sees_it_back() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        for name in ["n1", "n2", "n3"] {
            wait_for_state(&cluster, 0, name, "alive").await;
        }
        // Every member's load reaches the others.
        let deadline = Instant::now() + Duration::from_secs(20);
        while nodes(&cluster, 0)
            .await
            .iter()
            .any(|(_, _, ranges)| ranges.is_none_or(|ranges| ranges == 0))
        {
            assert!(
                Instant::now() < deadline,
                "loads never spread: {:?}",
                nodes(&cluster, 0).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cluster.kill(2);
        wait_for_state(&cluster, 0, "n3", "down").await;
        wait_for_state(&cluster, 1, "n3", "down").await;
        // With n3 down, removing n1 would leave one started voter of two: etcd refuses.
        let n1 = member_list(&cluster)
            .into_iter()
            .find(|member| member[2] == "n1")
            .expect("n1 listed")[0]
            .clone();
        let (ok, _, err) = run_etcdctl(&cluster.endpoints()[1..2], &["member", "remove", &n1], None);
        assert!(
            !ok && err.contains("re-configuration failed due to not enough started members"),
            "{err}"
        );
        assert_eq!(member_list(&cluster).len(), 3);
        cluster.restart(2);
        wait_for_state(&cluster, 0, "n3", "alive").await;

        let output = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["ctl", "nodes", "--endpoints", &cluster.endpoints()[1]])
            .output()
            .expect("shoal ctl nodes");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(
            text.contains("STATE") && text.lines().filter(|line| line.contains("alive")).count() >= 3,
            "{text}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_then_removed_under_write_load_loses_no_write() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        let endpoints = cluster.endpoints();
        // Writers on the members that stay, each recording what was acknowledged.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for writer in 0..3 {
            let mut kv = cluster.kv(writer).await;
            let stop = stop.clone();
            writers.push(tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("load/{writer}/{i:05}");
                    let put = kv.put(PutRequest {
                        key: bytes(&key),
                        value: bytes("v"),
                        ..Default::default()
                    });
                    if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), put).await {
                        acknowledged.push(key);
                    }
                    i += 1;
                }
                acknowledged
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Added while the writes go on: it catches up as a learner and is promoted in
        // every range although the commit index keeps moving.
        let index = cluster
            .add_node("n4", None, vec!["--initial-cluster-state".into(), "existing".into()])
            .expect("a fourth node");
        let url = cluster.peer_url(index);
        let (ok, out, err) = run_etcdctl(
            &endpoints[..1],
            &["member", "add", "n4", &format!("--peer-urls={url}")],
            None,
        );
        assert!(ok, "member add failed: {err}");
        cluster.nodes[index].initial_cluster = Some(printed_initial_cluster(&out));
        cluster.restart(index);
        wait_for_replicas(&cluster, 4).await;
        let removed = added_id(&out);
        let (ok, _, err) = run_etcdctl(&endpoints[..1], &["member", "remove", &removed], None);
        assert!(ok, "member remove failed: {err}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.has_exited(3) {
            assert!(Instant::now() < deadline, "the removed member kept running");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_for_replicas(&cluster, 3).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut acknowledged = Vec::new();
        for writer in writers {
            acknowledged.extend(writer.await.expect("writer"));
        }
        assert!(
            acknowledged.len() > 30,
            "too few writes to judge: {}",
            acknowledged.len()
        );
        for index in 0..3 {
            let mut kv = cluster.kv(index).await;
            let held = crate::support::scan(&mut kv, "load/", false).await;
            let held: std::collections::HashSet<String> = held.into_iter().map(|(key, _)| key).collect();
            let missing: Vec<&String> = acknowledged.iter().filter(|key| !held.contains(*key)).collect();
            assert!(
                missing.is_empty(),
                "{} lost acknowledged writes: {missing:?}",
                cluster.nodes[index].name
            );
        }
    })
    .await;
}

/// Leaders of the data ranges as node `index` sees them (hex member ids).
async fn range_leaders(cluster: &Cluster, index: usize) -> Vec<String> {
    let body = shoal::http_probe::get(cluster.nodes[index].metrics_port, "/v1/ranges", Duration::from_secs(2))
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();
    let ranges: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
    ranges
        .iter()
        .map(|range| range["leader"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grown_cluster_spreads_range_leaders_onto_its_new_members() {
    bounded(async {
        let mut cluster = Cluster::start_with(3, &["--range-max-keys", "50"]).await;
        write_keys(&cluster, "grow/", 400).await;
        // n4 through etcdctl member add, n5 through --join (the cluster's flags, such as
        // the split limit, apply to them too).
        let n4 = cluster
            .add_node("n4", None, vec!["--initial-cluster-state".into(), "existing".into()])
            .expect("n4");
        let url = cluster.peer_url(n4);
        let (ok, out, err) = run_etcdctl(
            &cluster.endpoints()[..1],
            &["member", "add", "n4", &format!("--peer-urls={url}")],
            None,
        );
        assert!(ok, "member add failed: {err}");
        cluster.nodes[n4].initial_cluster = Some(printed_initial_cluster(&out));
        cluster.restart(n4);
        let join = format!("--join={}", cluster.peer_url(0));
        let n5 = cluster.add_node("n5", None, vec![join]).expect("n5");
        cluster.restart(n5);
        for index in [n4, n5] {
            wait_for_copy(&cluster, index, "grow/", 400).await;
        }
        wait_for_replicas(&cluster, 5).await;
        let ids: Vec<(String, String)> = member_list(&cluster)
            .into_iter()
            .map(|member| (member[2].clone(), member[0].clone()))
            .collect();
        let id_of = |name: &str| {
            ids.iter()
                .find(|(known, _)| known == name)
                .map(|(_, id)| id.clone())
                .unwrap_or_else(|| panic!("{name} not listed: {ids:?}"))
        };
        let (id4, id5) = (id_of("n4"), id_of("n5"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let leaders = range_leaders(&cluster, 0).await;
            if leaders.contains(&id4) && leaders.contains(&id5) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the new members lead no range: {leaders:?} (n4 {id4}, n5 {id5})"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
}
