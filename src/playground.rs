//! `shoal playground`: a local cluster of real `shoal server` processes, one per node,
//! with data under one folder. Each node logs to `<data-dir>/<name>.log`. Ctrl-C stops
//! them all; the next start finds the same data.

use anyhow::{bail, Context};
use shoal::cli::PlaygroundArgs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);

struct PlaygroundNode {
    name: String,
    client_url: String,
    peer_url: String,
    metrics_port: u16,
    log: PathBuf,
    child: Child,
}

fn port(base: u16, offset: usize, what: &str) -> anyhow::Result<u16> {
    u16::try_from(usize::from(base) + offset).with_context(|| format!("{what} port base {base} is too high"))
}

pub async fn run(args: PlaygroundArgs) -> anyhow::Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let exe = std::env::current_exe().context("locating the shoal binary")?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;

    let mut plan = Vec::new();
    for index in 0..args.nodes {
        let name = format!("n{}", index + 1);
        let client_url = format!("http://127.0.0.1:{}", port(args.client_port_base, 2 * index, "client")?);
        let peer_url = format!("http://127.0.0.1:{}", port(args.peer_port_base, 2 * index, "peer")?);
        let metrics_port = port(args.metrics_port_base, index, "metrics")?;
        plan.push((name, client_url, peer_url, metrics_port));
    }
    let initial_cluster = plan
        .iter()
        .map(|(name, _, peer_url, _)| format!("{name}={peer_url}"))
        .collect::<Vec<_>>()
        .join(",");

    // The nodes die with this process even if it is killed before it can stop them.
    let parent_env = shoal::parent_watch::child_env();
    let mut nodes = Vec::new();
    for (name, client_url, peer_url, metrics_port) in plan {
        let log = data_dir.join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(&exe)
            .arg("server")
            .args(["--name", &name])
            .arg("--data-dir")
            .arg(data_dir.join(&name))
            .args(["--listen-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{metrics_port}")])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", "shoal-playground"])
            .env(parent_env.0, &parent_env.1)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {name}"))?;
        nodes.push(PlaygroundNode {
            name,
            client_url,
            peer_url,
            metrics_port,
            log,
            child,
        });
    }

    let outcome = serve(&mut nodes, &data_dir).await;
    stop(&mut nodes).await;
    outcome
}

async fn serve(nodes: &mut [PlaygroundNode], data_dir: &Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    for node in nodes.iter_mut() {
        loop {
            if let Some(status) = node.child.try_wait()? {
                bail!(
                    "node {} exited during start-up ({status}); see {}",
                    node.name,
                    node.log.display()
                );
            }
            if http_get_ok(node.metrics_port, "/ready").await {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "node {} not ready after {READY_TIMEOUT:?}; see {}",
                    node.name,
                    node.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let endpoints = nodes
        .iter()
        .map(|node| node.client_url.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let mut banner = format!(
        "Shoal playground: {} nodes, data in {}\n\n",
        nodes.len(),
        data_dir.display()
    );
    for node in nodes.iter() {
        banner += &format!(
            "  {:<4} client {}  peer {}  metrics http://127.0.0.1:{}/metrics  log {}\n",
            node.name,
            node.client_url,
            node.peer_url,
            node.metrics_port,
            node.log.display()
        );
    }
    banner += &format!(
        "\nTry it with etcdctl:\n\
         \x20 etcdctl --endpoints={endpoints} put greeting hello\n\
         \x20 etcdctl --endpoints={endpoints} get greeting\n\
         \x20 etcdctl --endpoints={endpoints} endpoint status -w table\n\n\
         Ctrl-C stops the cluster; its data stays for the next start.\n"
    );
    // Whoever reads our output may go away; the cluster keeps running regardless.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(banner.as_bytes()).and_then(|()| stdout.flush());
    drop(stdout);

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut interrupt = Box::pin(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            _ = &mut interrupt => {
                eprintln!("\nStopping...");
                return Ok(());
            }
            _ = terminate.recv() => return Ok(()),
            _ = hangup.recv() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                for node in nodes.iter_mut() {
                    if let Some(status) = node.child.try_wait()? {
                        bail!("node {} exited ({status}); see {}", node.name, node.log.display());
                    }
                }
            }
        }
    }
}

/// SIGTERM every node, wait for them to finish cleanly, SIGKILL stragglers.
async fn stop(nodes: &mut [PlaygroundNode]) {
    for node in nodes.iter() {
        if let Some(pid) = node
            .child
            .id()
            .and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    for node in nodes.iter_mut() {
        match tokio::time::timeout(STOP_GRACE, node.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("node {} did not stop in {STOP_GRACE:?}; killing it", node.name);
                let _ = node.child.kill().await;
            }
        }
    }
}

async fn http_get_ok(port: u16, path: &str) -> bool {
    matches!(
        shoal::http_probe::get(port, path, Duration::from_secs(2)).await,
        Some((200, _))
    )
}
