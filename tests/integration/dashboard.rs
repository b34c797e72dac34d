//! The dashboard (`/` on the metrics listener) in a real browser: headless Chromium
//! loads it from a running 3-node cluster under load and lets its polling run (in
//! virtual time); the DOM it dumps must show every member healthy, every range, and
//! charts with data points, and nothing may reach the console. Its cluster is split
//! here, so the split suites (`integration_ranges`) do not run it again.

use crate::support::{bounded, bytes, chromium, Cluster};
use shoal::proto::etcdserverpb::PutRequest;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Virtual time the page runs for before its DOM is dumped: about 15 polls of
/// `/metrics` and 7 of `/v1/cluster` (virtual time stands still while a fetch is out).
const VIRTUAL_TIME_BUDGET_MS: u64 = 15_000;

/// Real time Chromium gets before it is killed and the test fails.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);

const CHARTS: [&str; 4] = ["requests", "latency", "fsync", "leader-changes"];

#[tokio::test]
async fn dashboard_shows_members_ranges_and_live_charts_in_headless_chromium() {
    bounded(async {
        let chromium = chromium();
        let cluster = Cluster::start_with(3, &["--experimental-initial-split-keys=m"]).await;
        let metrics_port = cluster.nodes[0].metrics_port;
        let names: Vec<String> = cluster.nodes.iter().map(|node| node.name.clone()).collect();

        // The page's JSON, as a script would read it.
        let (status, body) = shoal::http_probe::get(metrics_port, "/v1/cluster", Duration::from_secs(10))
            .await
            .expect("/v1/cluster answers");
        assert_eq!(status, 200, "{body}");
        let view: serde_json::Value = serde_json::from_str(&body).expect("/v1/cluster is JSON");
        assert_eq!(view["members"].as_array().map(Vec::len), Some(3), "{view}");
        assert_eq!(view["alarms"], serde_json::json!([]), "{view}");
        let range_ids: Vec<u64> = view["ranges"]
            .as_array()
            .expect("ranges")
            .iter()
            .map(|range| range["id"].as_u64().expect("range id"))
            .collect();
        assert_eq!(range_ids.len(), 2, "one split key makes two data ranges: {view}");

        // Writes through every member, on both sides of the split, while the page polls.
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..6 {
            let mut client = cluster.kv(writer % 3).await;
            let (stop, written) = (stop.clone(), written.clone());
            writers.spawn(async move {
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let side = if count.is_multiple_of(2) { "a" } else { "z" };
                    let key = format!("{side}/load/{writer}/{}", count % 50);
                    client
                        .put(PutRequest {
                            key: bytes(&key),
                            value: bytes("x"),
                            ..Default::default()
                        })
                        .await
                        .unwrap_or_else(|status| panic!("put {key}: {status}"));
                    count += 1;
                    written.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while written.load(Ordering::Relaxed) < 100 {
            assert!(Instant::now() < deadline, "the load did not get going");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let page = run_headless(&chromium, &format!("http://127.0.0.1:{metrics_port}/")).await;
        stop.store(true, Ordering::Relaxed);
        while let Some(outcome) = writers.join_next().await {
            outcome.expect("a writer failed");
        }

        let console: Vec<&str> = page.log.lines().filter(|line| line.contains(":CONSOLE")).collect();
        assert!(
            console.is_empty(),
            "the page wrote to the console:\n{}",
            console.join("\n")
        );
        assert!(
            page.dom.contains(r#"<body data-errors="0">"#),
            "the page recorded errors:\n{}",
            page.dom
        );
        for name in &names {
            assert!(
                page.dom
                    .contains(&format!(r#"<tr data-member="{name}" data-health="true">"#)),
                "member {name} is not shown healthy:\n{}",
                page.dom
            );
        }
        let leader = text_of(&page.dom, r#"<b id="leader">"#);
        assert!(names.contains(&leader), "the leader shown is {leader:?}:\n{}", page.dom);
        for id in &range_ids {
            assert!(
                page.dom.contains(&format!(r#"<tr data-range="{id}">"#)),
                "range {id} is not shown:\n{}",
                page.dom
            );
        }
        assert!(
            page.dom
                .contains(r#"<div id="alarm-list"><span class="note">none</span></div>"#),
            "the alarms panel does not say none:\n{}",
            page.dom
        );
        for chart in CHARTS {
            let points = data_points(&page.dom, chart);
            assert!(points >= 2, "chart {chart} has {points} data points:\n{}", page.dom);
        }
    })
    .await;
}

struct HeadlessPage {
    /// The DOM after the virtual time budget ran out.
    dom: String,
    /// Chromium's log: the page's console messages are its `:CONSOLE` lines.
    log: String,
}

/// Loads `url` in headless Chromium for [`VIRTUAL_TIME_BUDGET_MS`] of virtual time and
/// returns the DOM and the log. Chromium runs in a process group of its own, killed
/// whole when it is done or too slow.
async fn run_headless(chromium: &std::path::Path, url: &str) -> HeadlessPage {
    let profile = tempfile::tempdir().expect("a profile folder");
    let child = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            &format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"),
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("starting {}: {error}", chromium.display()));
    let group = child
        .id()
        .and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
        .expect("chromium's process id");
    let outcome = tokio::time::timeout(CHROMIUM_TIMEOUT, child.wait_with_output()).await;
    // Whatever it left behind (renderer, zygote) goes with it.
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    let output = match outcome {
        Ok(output) => output.expect("chromium's output"),
        Err(_) => panic!("chromium did not finish within {CHROMIUM_TIMEOUT:?}"),
    };
    let page = HeadlessPage {
        dom: String::from_utf8_lossy(&output.stdout).into_owned(),
        log: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        output.status.success() && page.dom.contains("</html>"),
        "chromium failed ({}); its log:\n{}",
        output.status,
        page.log
    );
    page
}

/// The text right after `opening` up to the next tag.
fn text_of(dom: &str, opening: &str) -> String {
    let start = dom
        .find(opening)
        .unwrap_or_else(|| panic!("no {opening} in the page:\n{dom}"))
        + opening.len();
    dom[start..].split('<').next().unwrap_or_default().to_string()
}

/// The `data-points` of the chart `id`'s `<svg>`.
fn data_points(dom: &str, id: &str) -> usize {
    let marker = format!(r#"id="chart-{id}""#);
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no chart {id} in the page:\n{dom}"));
    let tag_start = dom[..at].rfind("<svg").expect("the chart's <svg>");
    let tag = &dom[tag_start..at + dom[at..].find('>').expect("the end of <svg>")];
    let value = tag
        .split(r#"data-points=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("chart {id} has no data-points: {tag}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("chart {id}: data-points {value:?}"))
}
