//! Real clusters for tests: `shoal server` processes on loopback ports picked at run
//! time, data in a temporary folder, every process killed when the cluster is dropped
//! (also when a test fails), and their logs printed on failure.

#![allow(dead_code)]

use shoal::proto::etcdserverpb::{
    kv_client::KvClient, maintenance_client::MaintenanceClient, PutRequest, RangeRequest,
};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// A cluster for one test (`shoal::chaos::cluster::Cluster`, so peers talk through
/// proxies), its data in a temporary folder; its processes die with it, and their logs
/// are printed if the test failed.
pub struct Cluster {
    inner: shoal::chaos::cluster::Cluster,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Cluster {
    type Target = shoal::chaos::cluster::Cluster;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl Cluster {
    /// Starts `size` nodes with fast elections and waits until all are ready.
    pub async fn start(size: usize) -> Cluster {
        Self::start_with(size, &[]).await
    }

    pub async fn start_with(size: usize, extra_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary folder");
        let mut extra: Vec<String> = extra_args.iter().map(|arg| arg.to_string()).collect();
        extra.extend(split_args(extra_args));
        let binary = Path::new(env!("CARGO_BIN_EXE_shoal"));
        let inner = shoal::chaos::cluster::Cluster::start(binary, size, dir.path(), &extra)
            .await
            .unwrap_or_else(|error| panic!("starting a cluster: {error}"));
        Cluster { inner, _dir: dir }
    }

    pub async fn wait_ready(&mut self, timeout: Duration) {
        if let Err(error) = self.inner.wait_ready(timeout).await {
            panic!("{error}");
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
            if let Some(leader) = self.inner.leader().await {
                return leader;
            }
            assert!(Instant::now() < deadline, "the cluster did not agree on a leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stop(&mut self, index: usize) {
        if let Err(error) = self.inner.stop(index) {
            panic!("{error}");
        }
    }

    pub fn restart(&mut self, index: usize) {
        if let Err(error) = self.inner.restart(index) {
            panic!("restarting {}: {error}", self.nodes[index].name);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.inner.nodes {
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
            range_end: shoal::client::prefix_range_end(prefix.as_bytes()).into(),
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
    installed_tool("etcdctl", "etcd-client", &INSTALL)
}

/// Path of `curl`, installed (apt package curl) as [`etcdctl`] is.
pub fn curl() -> PathBuf {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    installed_tool("curl", "curl", &INSTALL)
}

/// Path of `redis-cli`, installed (apt package redis-tools) as [`etcdctl`] is.
pub fn redis_cli() -> PathBuf {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    installed_tool("redis-cli", "redis-tools", &INSTALL)
}

/// Path of `chromium` (for the dashboard's test, headless), installed (apt package
/// chromium) as [`etcdctl`] is.
pub fn chromium() -> PathBuf {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    installed_tool("chromium", "chromium", &INSTALL)
}

/// `binary` from PATH, installing Debian's `package` once if it is missing and the tests
/// run as root; a test fails naming the package otherwise.
fn installed_tool(binary: &str, package: &str, install: &std::sync::Once) -> PathBuf {
    let find = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(binary))
                .find(|candidate| candidate.is_file())
        })
    };
    if let Some(path) = find() {
        return path;
    }
    install.call_once(|| {
        let is_root = rustix::process::geteuid().is_root();
        if is_root && Path::new("/usr/bin/apt-get").exists() {
            eprintln!("{binary} is missing: installing the {package} package");
            let status = Command::new("apt-get")
                .args(["install", "-y", "-q", package])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
            eprintln!("apt-get install {package}: {status:?}");
        }
    });
    find().unwrap_or_else(|| {
        panic!("{binary} not found on PATH: install it (Debian/Ubuntu: apt-get install -y {package})")
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

/// etcd keys the clusters of the split suites start cut at: the prefixes the tests use
/// fall into many ranges.
pub const SPLIT_KEYS: &str = "b,d,f,h,k,l,m,p,r,s,t,w";

/// Server flags that put a cluster's keys in many ranges, for the split suites (none
/// where the test chose its own split limit).
pub fn split_args(chosen: &[&str]) -> Vec<String> {
    if !crate::SPLIT || chosen.iter().any(|arg| arg.starts_with("--range-max-keys")) {
        return Vec::new();
    }
    vec![
        "--range-max-keys=50".to_string(),
        format!("--experimental-initial-split-keys={SPLIT_KEYS}"),
    ]
}
