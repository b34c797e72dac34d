//! Real `shoal server` processes for fault injection: loopback ports picked at run
//! time, peer traffic routed through the [`Network`] proxies, and every process killed
//! (and resumed first, if paused) when the cluster is dropped.

use super::network::Network;
use crate::proto::etcdserverpb::{maintenance_client::MaintenanceClient, StatusRequest};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("node {name} did not become ready within {waited:?} (log: {log}); its log ends:\n{tail}")]
    NotReady {
        name: String,
        waited: Duration,
        log: String,
        tail: String,
    },
}

pub struct Node {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    pub redis_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The node's storage fault control file (`--experimental-storage-faults`): its
    /// words make the node's engine fail syncs, writes or reads while they are there.
    pub faults: PathBuf,
    /// Flags for this node only, after the cluster's; they take effect at its next
    /// (re)start.
    pub args: Vec<String>,
    /// Its own `--initial-cluster` (a member added at run time); else the cluster's.
    pub initial_cluster: Option<String>,
    /// Whether its peer traffic goes through the [`Network`]'s proxies (only the
    /// members the cluster started with).
    proxied: bool,
    /// Removed from the cluster: never started again.
    pub retired: bool,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub network: Network,
    binary: PathBuf,
    initial_cluster: String,
    extra_args: Vec<String>,
}

impl Cluster {
    /// The `--initial-cluster` every node starts with (its token is `shoal-chaos`).
    pub fn initial_cluster(&self) -> &str {
        &self.initial_cluster
    }
}

/// A free loopback port for a test server. See [`free_ports`].
pub fn free_port() -> std::io::Result<u16> {
    free_ports(1)
}

/// The first of `count` consecutive free loopback ports. They come from below Linux's
/// ephemeral range (32768 and up), so no outgoing connection can be holding a port a
/// server is about to bind or, after a restart, bind again. Each port handed out is
/// reserved for the life of this process with a lock file, so concurrent test
/// processes (a test binary and the `shoal chaos` runs it starts) never share one.
pub fn free_ports(count: u16) -> std::io::Result<u16> {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: LazyLock<AtomicU32> = LazyLock::new(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        AtomicU32::new(nanos ^ std::process::id().wrapping_mul(7919))
    });
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let locks = std::env::temp_dir().join("shoal-test-ports");
    std::fs::create_dir_all(&locks)?;
    let reserve = |port: u32| -> Option<std::fs::File> {
        let file = std::fs::File::create(locks.join(format!("{port}.lock"))).ok()?;
        file.try_lock().ok()?;
        TcpListener::bind(("127.0.0.1", port as u16)).ok()?;
        Some(file)
    };
    let count = u32::from(count.max(1));
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(count, Ordering::Relaxed) % SPAN;
        if offset + count > SPAN {
            continue; // the block would run past the span
        }
        let first = FIRST + offset;
        let reserved: Option<Vec<std::fs::File>> = (first..first + count).map(reserve).collect();
        if let Some(files) = reserved {
            HELD.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .extend(files);
            return Ok(first as u16);
        }
    }
    Err(std::io::Error::other("no free loopback ports between 20000 and 32000"))
}

/// The last lines of a node's log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

impl Cluster {
    /// Starts `size` nodes of `binary` with data under `dir` (and `extra_args` on every
    /// node's command line), and waits until all are ready.
    pub async fn start(binary: &Path, size: usize, dir: &Path, extra_args: &[String]) -> Result<Cluster, ClusterError> {
        let mut nodes = Vec::new();
        let mut taken = std::collections::HashSet::new();
        let mut port = || loop {
            // The kernel may hand back a port it just gave: each must be distinct.
            let candidate = free_port()?;
            if taken.insert(candidate) {
                return Ok::<u16, std::io::Error>(candidate);
            }
        };
        for index in 0..size {
            let name = format!("n{}", index + 1);
            nodes.push(Node {
                client_port: port()?,
                peer_port: port()?,
                metrics_port: port()?,
                redis_port: port()?,
                data_dir: dir.join(&name),
                log: dir.join(format!("{name}.log")),
                faults: dir.join(format!("{name}.faults")),
                name,
                args: Vec::new(),
                initial_cluster: None,
                proxied: true,
                retired: false,
                child: None,
                paused: false,
            });
        }
        let peers: Vec<SocketAddr> = nodes
            .iter()
            .map(|node| SocketAddr::from(([127, 0, 0, 1], node.peer_port)))
            .collect();
        let reserved: Vec<u16> = nodes
            .iter()
            .flat_map(|node| [node.client_port, node.peer_port, node.metrics_port, node.redis_port])
            .collect();
        let network = Network::start(&peers, &reserved).await?;
        let initial_cluster = nodes
            .iter()
            .map(|node| format!("{}=http://127.0.0.1:{}", node.name, node.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes,
            network,
            binary: binary.to_path_buf(),
            initial_cluster,
            extra_args: extra_args.to_vec(),
        };
        for index in 0..size {
            cluster.spawn(index)?;
        }
        cluster.wait_ready(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Adds a node that was not in the cluster at its start, with its own
    /// `--initial-cluster` (`None`: only itself, for `--join`) and flags (such as
    /// `--initial-cluster-state existing`); [`Cluster::restart`] starts it. Its peer
    /// traffic does not go through the proxies. Returns its index.
    pub fn add_node(
        &mut self,
        name: &str,
        initial_cluster: Option<String>,
        args: Vec<String>,
    ) -> Result<usize, ClusterError> {
        let dir = self.nodes[0]
            .data_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let ports: Vec<u16> = (0..4).map(|_| free_port()).collect::<Result<_, _>>()?;
        let peer_url = format!("http://127.0.0.1:{}", ports[1]);
        self.nodes.push(Node {
            client_port: ports[0],
            peer_port: ports[1],
            metrics_port: ports[2],
            redis_port: ports[3],
            data_dir: dir.join(name),
            log: dir.join(format!("{name}.log")),
            faults: dir.join(format!("{name}.faults")),
            name: name.to_string(),
            args,
            initial_cluster: Some(initial_cluster.unwrap_or_else(|| format!("{name}={peer_url}"))),
            proxied: false,
            retired: false,
            child: None,
            paused: false,
        });
        Ok(self.nodes.len() - 1)
    }

    /// The peer URL a member advertises.
    pub fn peer_url(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[index].peer_port)
    }

    fn spawn(&mut self, index: usize) -> Result<(), ClusterError> {
        let proxied = self.nodes[index].proxied;
        let dial = (0..self.nodes.len())
            .filter(|other| *other != index && proxied && self.nodes[*other].proxied)
            .map(|other| {
                format!(
                    "{}=http://127.0.0.1:{}",
                    self.nodes[other].name,
                    self.network.port(index, other)
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let node = &mut self.nodes[index];
        // Fast elections unless the test chose its own timing (clap refuses a flag twice).
        let timing_chosen = self
            .extra_args
            .iter()
            .chain(&node.args)
            .any(|arg| arg.starts_with("--heartbeat-interval") || arg.starts_with("--election-timeout"));
        let timing: &[&str] = if timing_chosen {
            &[]
        } else {
            &["--heartbeat-interval", "50", "--election-timeout", "500"]
        };
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let parent_env = crate::parent_watch::child_env();
        let child = Command::new(&self.binary)
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
            .args(["--listen-redis-addr", &format!("127.0.0.1:{}", node.redis_port)])
            .args([
                "--initial-cluster",
                node.initial_cluster.as_deref().unwrap_or(&self.initial_cluster),
            ])
            .args(["--initial-cluster-token", "shoal-chaos"])
            .arg("--experimental-storage-faults")
            .arg(&node.faults)
            .args(if dial.is_empty() {
                Vec::new()
            } else {
                vec!["--experimental-peer-dial-urls".to_string(), dial.clone()]
            })
            .args(timing)
            .args(&self.extra_args)
            .args(&node.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,raft=warn".into()),
            )
            // A server's error is one line; a captured backtrace would fill the log tail
            // a failed wait prints (panics still get theirs from RUST_BACKTRACE).
            .env("RUST_LIB_BACKTRACE", "0")
            .env(parent_env.0, parent_env.1)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Makes node `index`'s storage fail the operations `words` names (`sync`, `write`,
    /// `read`; empty: none), and waits (up to 10 s) until a running node's engine says they
    /// are in force.
    pub async fn set_storage_faults(&self, index: usize, words: &str) -> std::io::Result<()> {
        let node = &self.nodes[index];
        std::fs::write(&node.faults, words)?;
        if !node.is_running() {
            return Ok(());
        }
        let applied = node.faults.with_extension("applied");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&applied).ok().as_deref() != Some(words) {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "{}: storage faults {words:?} not in force after 10 s",
                    node.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::client_url).collect()
    }

    /// Waits until every running node answers /ready.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        for node in &self.nodes {
            if !node.is_running() || node.paused {
                continue;
            }
            while !matches!(
                crate::http_probe::get(node.metrics_port, "/ready", Duration::from_secs(1)).await,
                Some((200, _))
            ) {
                if Instant::now() > deadline {
                    return Err(ClusterError::NotReady {
                        name: node.name.clone(),
                        waited: timeout,
                        log: node.log.display().to_string(),
                        tail: log_tail(&node.log),
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// The node the running members agree leads, if they agree.
    pub async fn leader(&self) -> Option<usize> {
        // (node index, the leader it names, its own member id)
        let mut named = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if !node.is_running() || node.paused {
                continue;
            }
            let channel = tonic::transport::Endpoint::from_shared(node.client_url())
                .ok()?
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(1))
                .connect_lazy();
            if let Ok(status) = MaintenanceClient::new(channel).status(StatusRequest {}).await {
                let status = status.into_inner();
                named.push((index, status.leader, status.header.map_or(0, |header| header.member_id)));
            }
        }
        let leader = named.first()?.1;
        if leader == 0 || named.iter().any(|(_, other, _)| *other != leader) {
            return None;
        }
        named
            .iter()
            .find(|(_, _, member)| *member == leader)
            .map(|(index, _, _)| *index)
    }

    /// Whether node `index`'s process has ended since it was (re)started.
    pub fn has_exited(&mut self, index: usize) -> bool {
        match self.nodes[index].child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            signal(&child, rustix::process::Signal::CONT);
            let _ = child.kill();
            let _ = child.wait();
        }
        self.nodes[index].paused = false;
    }

    /// SIGTERM, and waits (up to 15 s) for a clean exit.
    pub fn stop(&mut self, index: usize) -> Result<(), ClusterError> {
        let Some(mut child) = self.nodes[index].child.take() else {
            return Ok(());
        };
        signal(&child, rustix::process::Signal::CONT);
        signal(&child, rustix::process::Signal::TERM);
        self.nodes[index].paused = false;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait()? {
                if status.success() {
                    return Ok(());
                }
                return Err(ClusterError::Io(std::io::Error::other(format!(
                    "{} stopped with {status}",
                    self.nodes[index].name
                ))));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ClusterError::Io(std::io::Error::other(format!(
                    "{} did not stop within 15 s of SIGTERM",
                    self.nodes[index].name
                ))));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self, index: usize) -> Result<(), ClusterError> {
        if !self.nodes[index].is_running() && !self.nodes[index].retired {
            self.spawn(index)?;
        }
        Ok(())
    }

    pub fn pause(&mut self, index: usize) {
        if let Some(child) = &self.nodes[index].child {
            signal(child, rustix::process::Signal::STOP);
            self.nodes[index].paused = true;
        }
    }

    pub fn resume(&mut self, index: usize) {
        if let Some(child) = &self.nodes[index].child {
            signal(child, rustix::process::Signal::CONT);
        }
        self.nodes[index].paused = false;
    }

    /// Resumes, restarts and reconnects everything.
    pub fn heal_all(&mut self) -> Result<(), ClusterError> {
        self.network.heal();
        for index in 0..self.nodes.len() {
            self.resume(index);
            self.restart(index)?;
        }
        Ok(())
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|index| self.nodes[*index].is_running())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}
