//! What an operator touches: the HTTP endpoints, configuration sources, the playground.

use crate::support::{bounded, bytes, channel, get, put, Cluster};
use shoal::proto::etcdserverpb::kv_client::KvClient;
use shoal::proto::etcdserverpb::{maintenance_client::MaintenanceClient, StatusRequest};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn metrics_health_and_ready_endpoints() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut client = cluster.kv(0).await;
        put(&mut client, "m", "1").await;
        get(&mut client, "m", false).await;
        let port = cluster.nodes[0].metrics_port;
        let (status, body) = shoal::http_probe::get(port, "/metrics", Duration::from_secs(5)).await.unwrap();
        assert_eq!(status, 200);
        for metric in [
            "etcd_server_has_leader 1",
            "etcd_server_leader_changes_seen_total",
            "etcd_server_proposals_committed_total",
            "etcd_disk_wal_fsync_duration_seconds_bucket",
            "shoal_apply_duration_seconds_bucket",
            "shoal_raft_term",
            "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"etcdserverpb.KV\",grpc_method=\"Put\",grpc_code=\"OK\"}",
            "grpc_server_handling_seconds_bucket",
        ] {
            assert!(body.contains(metric), "/metrics lacks {metric}:\n{body}");
        }
        let (status, body) = shoal::http_probe::get(port, "/health", Duration::from_secs(5)).await.unwrap();
        assert_eq!((status, body.as_str()), (200, r#"{"health":"true","reason":""}"#));
        let (status, _) = shoal::http_probe::get(port, "/ready", Duration::from_secs(5)).await.unwrap();
        assert_eq!(status, 200);
    })
    .await;
}

#[tokio::test]
async fn health_turns_false_without_a_quorum() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        cluster.kill(1);
        cluster.kill(2);
        let port = cluster.nodes[0].metrics_port;
        let (status, body) = shoal::http_probe::get(port, "/health", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains(r#""health":"false""#), "{body}");
    })
    .await;
}

/// The processes `pid` started (Linux's /proc/<pid>/task/*/children).
fn child_processes(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let listed = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(listed.split_whitespace().filter_map(|child| child.parse::<u32>().ok()));
    }
    children
}

/// Whether a process runs (a zombie, dead but not yet reaped, does not).
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next()))
        .is_some_and(|state| state != Some('Z'))
}

fn free_port() -> u16 {
    shoal::chaos::cluster::free_port().expect("a free port")
}

#[tokio::test]
async fn settings_come_from_file_then_environment_then_flags() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (client_port, peer_port, metrics_port) = (free_port(), free_port(), free_port());
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            format!(
                "name = \"from-file\"\n\
                 data-dir = \"{}\"\n\
                 listen-client-urls = \"http://127.0.0.1:{client_port}\"\n\
                 listen-peer-urls = \"http://127.0.0.1:1\"\n\
                 listen-metrics-urls = \"http://127.0.0.1:{metrics_port}\"\n\
                 max-txn-ops = 1\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        // The environment fixes the file's unusable peer URL; the flag renames the node.
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["server", "--config"])
            .arg(&file)
            .args(["--name", "from-flag"])
            .env("SHOAL_LISTEN_PEER_URLS", format!("http://127.0.0.1:{peer_port}"))
            .env("SHOAL_MAX_TXN_OPS", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let outcome = async {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !matches!(
                shoal::http_probe::get(metrics_port, "/ready", Duration::from_secs(1)).await,
                Some((200, _))
            ) {
                assert!(Instant::now() < deadline, "single node never became ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let url = format!("http://127.0.0.1:{client_port}");
            let mut members = shoal::proto::etcdserverpb::cluster_client::ClusterClient::new(channel(&url).await);
            let list = members
                .member_list(shoal::proto::etcdserverpb::MemberListRequest::default())
                .await
                .unwrap()
                .into_inner();
            assert_eq!(list.members.len(), 1);
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut name = list.members[0].name.clone();
            while name.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                name = members
                    .member_list(shoal::proto::etcdserverpb::MemberListRequest::default())
                    .await
                    .unwrap()
                    .into_inner()
                    .members[0]
                    .name
                    .clone();
            }
            assert_eq!(name, "from-flag");
            assert_eq!(list.members[0].peer_ur_ls, [format!("http://127.0.0.1:{peer_port}")]);
            // max-txn-ops from the environment (3) beat the file (1).
            let mut kv = KvClient::new(channel(&url).await);
            let ops = |n: usize| shoal::proto::etcdserverpb::TxnRequest {
                success: (0..n)
                    .map(|i| shoal::proto::etcdserverpb::RequestOp {
                        request: Some(shoal::proto::etcdserverpb::request_op::Request::RequestPut(
                            shoal::proto::etcdserverpb::PutRequest {
                                key: bytes(&format!("k{i}")),
                                ..Default::default()
                            },
                        )),
                    })
                    .collect(),
                ..Default::default()
            };
            assert!(kv.txn(ops(3)).await.is_ok());
            let refused = kv.txn(ops(4)).await.expect_err("over --max-txn-ops");
            assert_eq!(
                (refused.code(), refused.message()),
                (
                    tonic::Code::InvalidArgument,
                    "etcdserver: too many operations in txn request"
                )
            );
        }
        .await;
        let _ = child.kill();
        let _ = child.wait();
        outcome
    })
    .await;
}

#[tokio::test]
async fn bad_settings_stop_the_server_with_a_message_naming_them() {
    let output = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["server", "--name", "a", "--initial-cluster", "b=http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--initial-cluster") && stderr.contains("\"a\""),
        "{stderr}"
    );
}

/// The README's first command: a local cluster that prints its endpoints, stops on a
/// signal and comes back with its data; its nodes never outlive it.
#[tokio::test(flavor = "multi_thread")]
async fn playground_runs_stops_and_restarts_with_its_data() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        // Ports: client/peer bases interleave (base + 2i) over six ports; metrics take three.
        let base = shoal::chaos::cluster::free_ports(6).expect("free ports");
        let metrics_base = shoal::chaos::cluster::free_ports(3).expect("free ports");
        let start = || {
            Command::new(env!("CARGO_BIN_EXE_shoal"))
                .arg("playground")
                .arg("--data-dir")
                .arg(dir.path())
                .args(["--client-port-base", &base.to_string()])
                .args(["--peer-port-base", &(base + 1).to_string()])
                .args(["--metrics-port-base", &metrics_base.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        };
        let read_endpoints = |child: &mut std::process::Child| {
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut endpoints = None;
            for line in lines.by_ref() {
                let line = line.unwrap();
                if let Some(rest) = line.trim().strip_prefix("etcdctl --endpoints=") {
                    endpoints = rest.split_whitespace().next().map(str::to_string);
                    break;
                }
            }
            // Keep reading so the playground never writes to a closed pipe.
            std::thread::spawn(move || lines.for_each(drop));
            endpoints.expect("the playground printed an etcdctl line")
        };
        let terminate = |child: &mut std::process::Child| {
            let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "playground exited with {status}");
                    break;
                }
                assert!(Instant::now() < deadline, "playground did not stop");
                std::thread::sleep(Duration::from_millis(50));
            }
        };

        let mut first = start();
        let endpoints = tokio::task::block_in_place(|| read_endpoints(&mut first));
        assert_eq!(endpoints.split(',').count(), 3);
        let first_endpoint = endpoints.split(',').next().unwrap().to_string();
        let mut client = KvClient::new(channel(&first_endpoint).await);
        put(&mut client, "kept", "across restarts").await;
        tokio::task::block_in_place(|| terminate(&mut first));
        // Every node process is gone: its port is free again.
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", base)).is_ok(),
            "a node outlived the playground"
        );

        let mut second = start();
        let endpoints = tokio::task::block_in_place(|| read_endpoints(&mut second));
        for endpoint in endpoints.split(',') {
            let mut client = KvClient::new(channel(endpoint).await);
            assert_eq!(
                get(&mut client, "kept", false).await.as_deref(),
                Some("across restarts")
            );
        }
        let mut status = MaintenanceClient::new(channel(&first_endpoint).await);
        assert!(status.status(StatusRequest {}).await.unwrap().into_inner().leader != 0);

        // A playground killed outright cannot stop its nodes: they die with it anyway.
        let nodes = child_processes(second.id());
        assert_eq!(nodes.len(), 3, "the playground runs three node processes: {nodes:?}");
        second.kill().unwrap();
        second.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        for node in nodes {
            while is_alive(node) {
                assert!(
                    Instant::now() < deadline,
                    "node process {node} outlived a SIGKILLed playground"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await;
}

/// `shoal bench` runs a small bounded workload and reports sane counts (the benchmark's
/// figures themselves belong in docs/benchmarks.md, never in a test).
#[tokio::test]
async fn bench_reports_every_operation_of_a_bounded_run() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["bench", "--endpoints", &cluster.endpoints().join(",")])
            .args([
                "--clients",
                "4",
                "--connections",
                "3",
                "--total",
                "300",
                "--key-space",
                "50",
            ])
            .args([
                "--workload",
                "put:2,get:2,sget:1,range:1,cas:1,delete:1",
                "--preload",
                "--json",
            ])
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
        assert_eq!(report["operations"], 300, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        let per_op = report["per_op"].as_object().unwrap();
        assert_eq!(per_op.len(), 6, "every operation of the mix ran: {report}");
        assert!(report["ops_per_second"].as_f64().unwrap() > 0.0);
        let latency = &report["latency_ms"];
        assert!(latency["min"].as_f64().unwrap() <= latency["p50"].as_f64().unwrap());
        assert!(latency["p50"].as_f64().unwrap() <= latency["max"].as_f64().unwrap());
    })
    .await;
}

/// Processes a test started; killed when it ends, also when it fails.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Three members on one host started with etcd's own flags and nothing else (no
/// `--listen-metrics-urls`): etcd runs like this, so Shoal must too.
#[tokio::test]
async fn three_members_on_one_host_start_with_etcd_flags_alone() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(index, (_, peer))| format!("m{index}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Children(Vec::new());
        for (index, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
                .arg("server")
                .args(["--name", &format!("m{index}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{index}")))
                .args([
                    "--listen-client-urls",
                    &client_url,
                    "--advertise-client-urls",
                    &client_url,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                ])
                .args(["--initial-cluster", &initial_cluster])
                .args([
                    "--initial-cluster-token",
                    "etcd-flags-only",
                    "--initial-cluster-state",
                    "new",
                ])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join(format!("m{index}.log"))).unwrap())
                .spawn()
                .unwrap();
            children.0.push(child);
        }
        // Every member serves, and a write through one is read through the others.
        let urls: Vec<String> = ports
            .iter()
            .map(|(client, _)| format!("http://127.0.0.1:{client}"))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut writer = KvClient::new(channel(&urls[0]).await);
        loop {
            let written = writer
                .put(shoal::proto::etcdserverpb::PutRequest {
                    key: bytes("etcd-flags"),
                    value: bytes("work"),
                    ..Default::default()
                })
                .await;
            if written.is_ok() {
                break;
            }
            for (index, child) in children.0.iter_mut().enumerate() {
                if let Some(status) = child.try_wait().unwrap() {
                    let log = std::fs::read_to_string(dir.path().join(format!("m{index}.log"))).unwrap_or_default();
                    panic!("member m{index} exited with {status}:\n{log}");
                }
            }
            assert!(Instant::now() < deadline, "the cluster never took a write: {written:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for url in &urls[1..] {
            let mut reader = KvClient::new(channel(url).await);
            assert_eq!(get(&mut reader, "etcd-flags", false).await.as_deref(), Some("work"));
        }
        for (index, child) in children.0.iter_mut().enumerate() {
            assert!(child.try_wait().unwrap().is_none(), "member m{index} exited");
        }
    })
    .await;
}
