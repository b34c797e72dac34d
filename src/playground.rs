//! `shoal playground`: a local cluster of real `shoal server` processes, one per node,
//! with data under one folder. Each node logs to `<data-dir>/<name>.log`. Ctrl-C stops
//! them all; the next start finds the same data. With `--tls` every port serves https,
//! the members authenticate each other with certificates, and clients need one too; the
//! certificates (`shoal cert`) live in `<data-dir>/certs`.

use anyhow::{bail, Context};
use shoal::certs::{CertArgs, CertFiles};
use shoal::cli::PlaygroundArgs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);

struct PlaygroundNode {
    name: String,
    client_url: String,
    peer_url: String,
    metrics_port: u16,
    /// The Redis port (TLS with --tls).
    redis_port: Option<u16>,
    log: PathBuf,
    child: Child,
}

/// The certificates of a `--tls` playground, and a client configuration for probing it.
struct PlaygroundTls {
    files: CertFiles,
    probe: Arc<rustls::ClientConfig>,
}

impl PlaygroundTls {
    /// Uses the certificates in `dir`, making them first if any is missing.
    fn prepare(dir: PathBuf) -> anyhow::Result<Self> {
        let mut files = CertFiles::in_dir(&dir);
        if !files.complete() {
            files = shoal::certs::create(&CertArgs {
                dir,
                hosts: Vec::new(),
                client_name: "client".into(),
                days: 365,
            })?;
        }
        let client_certificate = shoal::tls::ReloadingCertificate::load(
            ("cert", &files.client_cert),
            ("key", &files.client_key),
            shoal::tls::provider(),
            shoal::tls::RELOAD_CHECK_INTERVAL,
        )?;
        let probe = shoal::tls::client_config(
            shoal::tls::load_roots("cacert", &files.ca_cert)?,
            Some(Arc::new(client_certificate)),
        )?;
        Ok(Self { files, probe })
    }

    /// Flags for a node: https on every port, client certificates required on both.
    fn server_args(&self) -> Vec<String> {
        let path = |path: &Path| path.display().to_string();
        let files = &self.files;
        vec![
            "--cert-file".into(),
            path(&files.node_cert),
            "--key-file".into(),
            path(&files.node_key),
            "--trusted-ca-file".into(),
            path(&files.ca_cert),
            "--client-cert-auth".into(),
            "--peer-cert-file".into(),
            path(&files.node_cert),
            "--peer-key-file".into(),
            path(&files.node_key),
            "--peer-trusted-ca-file".into(),
            path(&files.ca_cert),
            "--peer-client-cert-auth".into(),
        ]
    }
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
    let tls = if args.tls {
        Some(PlaygroundTls::prepare(data_dir.join("certs"))?)
    } else {
        None
    };
    let scheme = if tls.is_some() { "https" } else { "http" };

    let mut plan = Vec::new();
    for index in 0..args.nodes {
        let name = format!("n{}", index + 1);
        let client_url = format!(
            "{scheme}://127.0.0.1:{}",
            port(args.client_port_base, 2 * index, "client")?
        );
        let peer_url = format!("{scheme}://127.0.0.1:{}", port(args.peer_port_base, 2 * index, "peer")?);
        let metrics_port = port(args.metrics_port_base, index, "metrics")?;
        let redis_port = Some(port(args.redis_port_base, index, "redis")?);
        plan.push((name, client_url, peer_url, metrics_port, redis_port));
    }
    let initial_cluster = plan
        .iter()
        .map(|(name, _, peer_url, _, _)| format!("{name}={peer_url}"))
        .collect::<Vec<_>>()
        .join(",");

    // The nodes die with this process even if it is killed before it can stop them.
    let parent_env = shoal::parent_watch::child_env();
    let mut nodes = Vec::new();
    for (name, client_url, peer_url, metrics_port, redis_port) in plan {
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
            .args(["--listen-metrics-urls", &format!("{scheme}://127.0.0.1:{metrics_port}")])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", "shoal-playground"])
            .args(tls.as_ref().map(PlaygroundTls::server_args).unwrap_or_default())
            .args(
                redis_port
                    .map(|port| vec!["--listen-redis-addr".to_string(), format!("127.0.0.1:{port}")])
                    .unwrap_or_default(),
            )
            .args(if tls.is_some() { vec!["--redis-tls"] } else { Vec::new() })
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
            redis_port,
            log,
            child,
        });
    }

    let outcome = serve(&mut nodes, &data_dir, tls.as_ref()).await;
    stop(&mut nodes).await;
    outcome
}

async fn serve(nodes: &mut [PlaygroundNode], data_dir: &Path, tls: Option<&PlaygroundTls>) -> anyhow::Result<()> {
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
            if http_get_ok(node.metrics_port, "/ready", tls).await {
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
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut banner = format!(
        "Shoal playground: {} nodes, data in {}{}\n\n",
        nodes.len(),
        data_dir.display(),
        if tls.is_some() {
            ", TLS everywhere (client certificates required)"
        } else {
            ""
        }
    );
    for node in nodes.iter() {
        banner += &format!(
            "  {:<4} client {}  peer {}  metrics {scheme}://127.0.0.1:{}/metrics{}  log {}\n",
            node.name,
            node.client_url,
            node.peer_url,
            node.metrics_port,
            node.redis_port
                .map(|port| format!("  redis 127.0.0.1:{port}"))
                .unwrap_or_default(),
            node.log.display()
        );
    }
    if let Some(node) = nodes.first() {
        banner += &format!(
            "\nDashboard (on every node's metrics port): {scheme}://127.0.0.1:{}/{}\n",
            node.metrics_port,
            if tls.is_some() {
                " (the browser needs the client certificate)"
            } else {
                ""
            }
        );
    }
    // With TLS, etcdctl needs the CA and a client certificate (and so does curl).
    let (etcdctl_tls, curl_tls) = match tls {
        Some(tls) => {
            let files = &tls.files;
            let flags = format!(
                " --cacert {} --cert {} --key {}",
                files.ca_cert.display(),
                files.client_cert.display(),
                files.client_key.display()
            );
            (flags.clone(), flags)
        }
        None => (String::new(), String::new()),
    };
    banner += &format!(
        "\nTry it with etcdctl:\n\
         \x20 etcdctl --endpoints={endpoints}{etcdctl_tls} put greeting hello\n\
         \x20 etcdctl --endpoints={endpoints}{etcdctl_tls} get greeting\n\
         \x20 etcdctl --endpoints={endpoints}{etcdctl_tls} endpoint status -w table\n\n"
    );
    if let Some(port) = nodes.first().and_then(|node| node.redis_port) {
        let redis_tls = match tls {
            Some(tls) => format!(
                " --tls --cacert {} --cert {} --key {}",
                tls.files.ca_cert.display(),
                tls.files.client_cert.display(),
                tls.files.client_key.display()
            ),
            None => String::new(),
        };
        banner += &format!(
            "Try it with redis-cli (any node takes any key):\n\
             \x20 redis-cli{redis_tls} -p {port} set greeting hello\n\
             \x20 redis-cli{redis_tls} -p {port} get greeting\n\n"
        )
    }
    if let (Some(_), Some(node)) = (tls, nodes.first()) {
        banner += &format!(
            "Metrics:\n\
             \x20 curl{curl_tls} {scheme}://127.0.0.1:{}/metrics\n\n\
             Certificates in {} (run `shoal cert --dir {}` to renew them; the nodes pick\n\
             the new ones up without a restart).\n\n",
            node.metrics_port,
            data_dir.join("certs").display(),
            data_dir.join("certs").display(),
        );
    }
    banner += "Ctrl-C stops the cluster; its data stays for the next start.\n";
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

async fn http_get_ok(port: u16, path: &str, tls: Option<&PlaygroundTls>) -> bool {
    let answer = match tls {
        Some(tls) => shoal::http_probe::get_tls(port, path, Duration::from_secs(2), &tls.probe).await,
        None => shoal::http_probe::get(port, path, Duration::from_secs(2)).await,
    };
    matches!(answer, Some((200, _)))
}
