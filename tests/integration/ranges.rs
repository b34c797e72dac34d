//! Many ranges: data ranges split as they grow (here past 50 keys), every member holds
//! and routes to all of them, and a full restart keeps data, revisions and the map.

use crate::support::{bounded, get, put, Cluster};
use std::time::Duration;

/// The data ranges member `index` reports on `/v1/ranges`.
async fn ranges(cluster: &Cluster, index: usize) -> Vec<serde_json::Value> {
    let port = cluster.nodes[index].metrics_port;
    let (status, body) = shoal::http_probe::get(port, "/v1/ranges", Duration::from_secs(5))
        .await
        .expect("/v1/ranges answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap_or_else(|error| panic!("{error}: {body}"))
}

/// Waits until every member reports at least `count` ranges, the same ones, none of
/// them over the split limit (splitting has settled).
async fn wait_for_ranges(cluster: &Cluster, count: usize) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = Vec::new();
        for node in 0..cluster.nodes.len() {
            seen.push(ranges(cluster, node).await);
        }
        let ids = |ranges: &Vec<serde_json::Value>| ranges.iter().map(|range| range["id"].clone()).collect::<Vec<_>>();
        let settled = seen[0]
            .iter()
            .all(|range| range["keys"].as_u64().is_some_and(|keys| keys <= 50) && range["leader"] != "0");
        if settled && seen[0].len() >= count && seen.iter().all(|other| ids(other) == ids(&seen[0])) {
            return seen.swap_remove(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ranges did not reach {count} on every member: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn data_ranges_split_as_they_grow_and_survive_a_full_restart() {
    bounded(async {
        let mut cluster = Cluster::start_with(3, &["--range-max-keys", "50"]).await;
        let mut clients = Vec::new();
        for node in 0..3 {
            clients.push(cluster.kv(node).await);
        }
        let mut written = Vec::new();
        for i in 0..500 {
            let key = format!("split/{i:04}");
            let revision = put(&mut clients[i % 3], &key, &format!("v{i}")).await;
            written.push((key, revision));
        }
        let before = wait_for_ranges(&cluster, 8).await;
        // The ranges tile the key space: each starts where the previous ends.
        for pair in before.windows(2) {
            assert_eq!(pair[0]["end_key"], pair[1]["start_key"], "{before:?}");
        }
        assert_eq!(
            before[0]["start_key"], "AQ==",
            "the first data range starts at the etcd namespace"
        );
        assert_eq!(before.last().unwrap()["end_key"], "", "the last one is unbounded");
        for range in &before {
            assert_eq!(range["replicas"].as_array().map(Vec::len), Some(3), "{range}");
            assert_ne!(range["leader"], "0", "{range}");
        }
        // Every key reads back through every member, each from its own range.
        for (i, (key, _)) in written.iter().enumerate() {
            assert_eq!(
                get(&mut clients[(i + 1) % 3], key, false).await.as_deref(),
                Some(&*format!("v{i}"))
            );
        }

        for node in 0..3 {
            cluster.stop(node);
        }
        for node in 0..3 {
            cluster.restart(node);
        }
        cluster.wait_ready(Duration::from_secs(30)).await;
        let after = wait_for_ranges(&cluster, before.len()).await;
        let spans = |ranges: &[serde_json::Value]| {
            ranges
                .iter()
                .map(|range| {
                    (
                        range["id"].clone(),
                        range["start_key"].clone(),
                        range["end_key"].clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(spans(&after), spans(&before), "the range map survives the restart");
        let mut client = cluster.kv(2).await;
        for (i, (key, _)) in written.iter().enumerate().step_by(7) {
            assert_eq!(get(&mut client, key, false).await.as_deref(), Some(&*format!("v{i}")));
        }
        // Revisions go on above everything written before the restart.
        let last = written.iter().map(|(_, revision)| *revision).max().unwrap_or(0);
        assert!(put(&mut client, "split/after", "x").await > last);
    })
    .await;
}

/// Reads across ranges: one snapshot of every range at one revision, sorted, limited
/// and counted as one; a prefix watch across ranges sees every write once, in order,
/// while the ranges split under it.
#[tokio::test]
async fn reads_and_watches_span_ranges_as_one_store() {
    use shoal::proto::etcdserverpb::{range_request, RangeRequest};
    bounded(async {
        let cluster = Cluster::start_with(3, &["--range-max-keys", "40"]).await;
        let endpoints = cluster.endpoints();
        let mut watch = shoal::client::Client::connect(&endpoints)
            .await
            .expect("client")
            .watch("span/".to_string(), "span0".to_string(), 0, false)
            .await
            .expect("watch");
        let mut clients = Vec::new();
        for node in 0..3 {
            clients.push(cluster.kv(node).await);
        }
        let mut revisions = Vec::new();
        for i in 0..300 {
            revisions.push(put(&mut clients[i % 3], &format!("span/{i:04}"), &format!("v{i}")).await);
        }
        let ranges = wait_for_ranges(&cluster, 5).await;
        assert!(ranges.len() >= 5, "{ranges:?}");

        let prefix = |revision: i64, limit: i64, order: range_request::SortOrder| RangeRequest {
            key: crate::support::bytes("span/"),
            range_end: crate::support::bytes("span0"),
            revision,
            limit,
            sort_order: order as i32,
            ..Default::default()
        };
        for client in clients.iter_mut() {
            let all = client
                .range(prefix(0, 0, range_request::SortOrder::None))
                .await
                .unwrap()
                .into_inner();
            assert_eq!((all.count, all.kvs.len()), (300, 300));
            let keys: Vec<String> = all
                .kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted, "keys come in order across ranges");
            assert!(all.header.unwrap().revision >= *revisions.last().unwrap());
        }
        let last3 = clients[1]
            .range(prefix(0, 3, range_request::SortOrder::Descend))
            .await
            .unwrap()
            .into_inner();
        let keys: Vec<&[u8]> = last3.kvs.iter().map(|kv| kv.key.as_ref()).collect();
        assert_eq!(keys, vec![&b"span/0299"[..], b"span/0298", b"span/0297"]);
        assert!(last3.more && last3.count == 300);
        // At the revision of the 150th put: exactly the first 150 keys, in every range.
        let middle = revisions[149];
        let then = clients[2]
            .range(prefix(middle, 0, range_request::SortOrder::None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(then.count, 150);
        assert!(then.kvs.iter().all(|kv| kv.mod_revision <= middle));

        // The watch saw every put, once, in revision order.
        let mut seen = Vec::new();
        while seen.len() < 300 {
            let event = tokio::time::timeout(Duration::from_secs(20), watch.next())
                .await
                .expect("the watch stalled")
                .expect("watch error");
            let kv = event.kv.expect("event kv");
            seen.push(kv.mod_revision);
        }
        assert_eq!(seen, revisions, "the watch across ranges equals the committed history");
    })
    .await;
}

/// Leaders of the data ranges each member reports, counted per member id (hex, as
/// `/v1/ranges` names them), members leading nothing included.
async fn leader_counts(cluster: &Cluster, observer: usize) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for range in ranges(cluster, observer).await {
        for replica in range["replicas"].as_array().into_iter().flatten() {
            counts
                .entry(replica.as_str().unwrap_or_default().to_string())
                .or_insert(0);
        }
        let leader = range["leader"].as_str().unwrap_or("0").to_string();
        *counts.entry(leader).or_insert(0) += 1;
    }
    counts
}

/// Waits until `observer` sees every data range led by one of `members`, each leading
/// within one range of the others.
async fn wait_for_spread(cluster: &Cluster, observer: usize, members: &[String]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let counts = leader_counts(cluster, observer).await;
        let led: Vec<usize> = members
            .iter()
            .map(|member| counts.get(member).copied().unwrap_or(0))
            .collect();
        let others: usize = counts
            .iter()
            .filter(|(member, _)| !members.contains(member))
            .map(|(_, count)| count)
            .sum();
        let (most, least) = (
            led.iter().max().copied().unwrap_or(0),
            led.iter().min().copied().unwrap_or(0),
        );
        if others == 0 && most - least <= 1 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leaders did not spread over {members:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Placement: the leaders of 9 data ranges end up 3 per node, move onto the two nodes
/// left when one stops (writes go on in every range), and spread again when it is back.
#[tokio::test]
async fn range_leaders_spread_over_the_nodes() {
    use shoal::proto::etcdserverpb::StatusRequest;
    bounded(async {
        let mut cluster = Cluster::start_with(
            3,
            &[
                "--range-max-keys=0",
                "--experimental-initial-split-keys=b,c,d,e,f,g,h,i",
            ],
        )
        .await;
        let mut members = Vec::new();
        for node in 0..3 {
            let status = cluster
                .maintenance(node)
                .await
                .status(StatusRequest {})
                .await
                .expect("status")
                .into_inner();
            members.push(format!("{:x}", status.header.expect("header").member_id));
        }
        assert_eq!(ranges(&cluster, 0).await.len(), 9);
        wait_for_spread(&cluster, 0, &members).await;

        cluster.stop(2);
        wait_for_spread(&cluster, 0, &members[..2]).await;
        let mut client = cluster.kv(0).await;
        for key in ["a", "b", "c", "d", "e", "f", "g", "h", "i"] {
            put(&mut client, key, "while one node is down").await;
        }

        cluster.restart(2);
        cluster.wait_ready(Duration::from_secs(30)).await;
        wait_for_spread(&cluster, 0, &members).await;
        for key in ["a", "b", "c", "d", "e", "f", "g", "h", "i"] {
            assert_eq!(
                get(&mut client, key, false).await.as_deref(),
                Some("while one node is down")
            );
        }

        // Operators see the same through `shoal ctl ranges` (client URLs) and the gauges.
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["ctl", "ranges", "--endpoints"])
            .arg(format!("http://127.0.0.1:1,{}", cluster.endpoints().join(",")))
            .output()
            .expect("running shoal ctl");
        let table = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{table}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let rows: Vec<&str> = table
            .lines()
            .filter(|line| line.starts_with("| ") && !line.starts_with("| RANGE"))
            .collect();
        assert_eq!(rows.len(), 9, "{table}");
        assert!(rows[0].contains("| \"\"") && rows[1].contains("| \"b\""), "{table}");
        assert!(
            members
                .iter()
                .all(|member| rows.iter().any(|row| row.contains(&format!("| {member} ")))),
            "{table}"
        );
        let mut led = 0.0;
        for node in 0..3 {
            let (_, text) =
                shoal::http_probe::get(cluster.nodes[node].metrics_port, "/metrics", Duration::from_secs(5))
                    .await
                    .expect("metrics");
            let gauge = |name: &str| -> f64 {
                text.lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                    .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            };
            assert_eq!(gauge("shoal_ranges"), 9.0);
            led += gauge("shoal_range_leaders");
        }
        assert_eq!(led, 9.0, "each range has one leader");
    })
    .await;
}
