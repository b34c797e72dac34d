//! Real clusters for tests: `shoal server` processes on loopback ports picked at run
//! time, data in a temporary folder, every process killed when the cluster is dropped
//! (also when a test fails), and their logs printed on failure.

#![allow(dead_code)]

use shoal::proto::etcdserverpb::{
    kv_client::KvClient, maintenance_client::MaintenanceClient, PutRequest, RangeRequest, StatusRequest,
};
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Upper bound for any single test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs a test body with a deadline, so a hung cluster fails the test instead of CI.
pub async fn bounded<T>(body: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TEST_TIMEOUT, body).await {
        Ok(value) => value,
        Err(_) => panic!("test did not finish within {TEST_TIMEOUT:?}"),
    }
}

fn free_port() -> u16 {
    // Bind port 0, read what the kernel chose, release it for the node to take.
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    listener.local_addr().expect("local address").port()
}

pub struct Node {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    initial_cluster: String,
    extra_args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `size` nodes with fast elections and waits until all are ready.
    pub async fn start(size: usize) -> Cluster {
        Self::start_with(size, &[]).await
    }

    pub async fn start_with(size: usize, extra_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary folder");
        let nodes: Vec<Node> = (0..size)
            .map(|index| {
                let name = format!("n{}", index + 1);
                Node {
                    client_port: free_port(),
                    peer_port: free_port(),
                    metrics_port: free_port(),
                    data_dir: dir.path().join(&name),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    child: None,
                }
            })
            .collect();
        let initial_cluster = nodes
            .iter()
            .map(|node| format!("{}=http://127.0.0.1:{}", node.name, node.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes,
            initial_cluster,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            _dir: dir,
        };
        for index in 0..size {
            cluster.spawn(index);
        }
        cluster.wait_ready(Duration::from_secs(30)).await;
        cluster
    }

    fn spawn(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        assert!(node.child.is_none(), "{} is already running", node.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("server")
            .args(["--name", &node.name])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", node.client_port),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", node.peer_port)])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", node.metrics_port),
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", "shoal-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(&self.extra_args)
            .env("RUST_LOG", "info,raft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting shoal server");
        node.child = Some(child);
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::client_url).collect()
    }

    /// Waits until every running node answers /ready.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for index in 0..self.nodes.len() {
            if !self.nodes[index].is_running() {
                continue;
            }
            loop {
                self.assert_alive(index);
                let port = self.nodes[index].metrics_port;
                if let Some((200, _)) = shoal::http_probe::get(port, "/ready", Duration::from_secs(1)).await {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} not ready within {timeout:?}",
                    self.nodes[index].name
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn assert_alive(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if let Some(child) = node.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                panic!(
                    "{} exited unexpectedly ({status}); log:\n{}",
                    node.name,
                    node.log_text()
                );
            }
        }
    }

    pub async fn kv(&self, index: usize) -> KvClient<Channel> {
        KvClient::new(channel(&self.nodes[index].client_url()).await).max_decoding_message_size(64 << 20)
    }

    pub async fn maintenance(&self, index: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(channel(&self.nodes[index].client_url()).await)
    }

    /// Index of the node every running node names as leader, once they agree.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut named = Vec::new();
            for (index, node) in self.nodes.iter().enumerate() {
                if !node.is_running() {
                    continue;
                }
                let mut client = self.maintenance(index).await;
                if let Ok(status) = client.status(StatusRequest {}).await {
                    let status = status.into_inner();
                    named.push((status.leader, status.header.map(|h| h.member_id), index));
                }
            }
            let leader_id = named.first().map(|(leader, _, _)| *leader).unwrap_or(0);
            if leader_id != 0 && named.iter().all(|(leader, _, _)| *leader == leader_id) {
                if let Some((_, _, index)) = named.iter().find(|(_, member, _)| *member == Some(leader_id)) {
                    return *index;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not agree on a leader: {named:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// kill -9, and reap.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            signal(&child, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "{} stopped with {status}", self.nodes[index].name);
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{} did not stop within 15 s of SIGTERM", self.nodes[index].name);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn pause(&self, index: usize) {
        if let Some(child) = &self.nodes[index].child {
            signal(child, rustix::process::Signal::STOP);
        }
    }

    pub fn resume(&self, index: usize) {
        if let Some(child) = &self.nodes[index].child {
            signal(child, rustix::process::Signal::CONT);
        }
    }

    /// Starts a stopped or killed node again with the same data and ports.
    pub fn restart(&mut self, index: usize) {
        self.spawn(index);
    }

    pub fn data_dir(&self, index: usize) -> &Path {
        &self.nodes[index].data_dir
    }
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // A paused process must be resumed to die of SIGKILL promptly? SIGKILL works on
                // stopped processes too; resume anyway so nothing lingers.
                signal(&child, rustix::process::Signal::CONT);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                let text = node.log_text();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- last lines of {} ----", node.name);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("endpoint URL")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

pub fn bytes(text: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(text.as_bytes())
}

pub async fn put(client: &mut KvClient<Channel>, key: &str, value: &str) -> i64 {
    client
        .put(PutRequest {
            key: bytes(key),
            value: bytes(value),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("put {key}: {status}"))
        .into_inner()
        .header
        .expect("header")
        .revision
}

/// The value of `key` (linearizable, or serializable if asked), None if absent.
pub async fn get(client: &mut KvClient<Channel>, key: &str, serializable: bool) -> Option<String> {
    let response = client
        .range(RangeRequest {
            key: bytes(key),
            serializable,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("get {key}: {status}"))
        .into_inner();
    response
        .kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

/// Every key/value under `prefix`.
pub async fn scan(client: &mut KvClient<Channel>, prefix: &str, serializable: bool) -> Vec<(String, String)> {
    let response = client
        .range(RangeRequest {
            key: bytes(prefix),
            range_end: shoal::range::kv::prefix_range_end(prefix.as_bytes()).into(),
            serializable,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("scan {prefix}: {status}"))
        .into_inner();
    response
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

/// Path of `etcdctl`. On a Debian-like machine where the tests run as root it is
/// installed (apt package etcd-client) if missing; anywhere else a missing etcdctl
/// fails the test with what to install — the compatibility tests never skip.
pub fn etcdctl() -> PathBuf {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    let find = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("etcdctl"))
                .find(|candidate| candidate.is_file())
        })
    };
    if let Some(path) = find() {
        return path;
    }
    INSTALL.call_once(|| {
        let is_root = rustix::process::geteuid().is_root();
        if is_root && Path::new("/usr/bin/apt-get").exists() {
            eprintln!("etcdctl is missing: installing the etcd-client package");
            let status = Command::new("apt-get")
                .args(["install", "-y", "-q", "etcd-client"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
            eprintln!("apt-get install etcd-client: {status:?}");
        }
    });
    find().unwrap_or_else(|| {
        panic!("etcdctl not found on PATH: install etcd's client (Debian/Ubuntu: apt-get install -y etcd-client)")
    })
}

/// Runs etcdctl against `endpoints`; returns (success, stdout, stderr).
pub fn run_etcdctl(endpoints: &[String], args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut command = Command::new(etcdctl());
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--command-timeout=15s")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("starting etcdctl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("writing etcdctl's stdin");
    }
    let output = child.wait_with_output().expect("etcdctl output");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
