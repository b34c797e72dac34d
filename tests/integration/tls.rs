//! TLS: etcdctl against a cluster that requires client certificates, refusals at the
//! handshake (no certificate, another CA's, plain HTTP), mutual TLS between members,
//! certificate rotation without restart, `shoal cert` and `shoal playground --tls`.

use crate::support::{bounded, etcdctl};
use shoal::certs::{CertArgs, CertFiles};
use shoal::proto::etcdserverpb::{maintenance_client::MaintenanceClient, StatusRequest};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Makes (or renews, keeping the CA) the certificates in `dir`.
fn make_certs(dir: &Path) -> CertFiles {
    shoal::certs::create(&CertArgs {
        dir: dir.to_path_buf(),
        hosts: Vec::new(),
        client_name: "client".into(),
        days: 1,
    })
    .expect("making certificates")
}

/// Copies a certificate and key over `cert`/`key` the way a careful rotation does:
/// written beside, renamed over.
fn install_pair(from: (&Path, &Path), to: (&Path, &Path)) {
    for (source, target) in [(from.0, to.0), (from.1, to.1)] {
        let staging = target.with_extension("new");
        std::fs::copy(source, &staging).expect("copying a certificate file");
        std::fs::rename(&staging, target).expect("renaming a certificate file");
    }
}

/// A client TLS configuration trusting `ca` and showing `cert`/`key` if given.
fn client_tls(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let roots = shoal::tls::load_roots("cacert", ca).expect("CA file");
    let certificate = identity.map(|(cert, key)| {
        Arc::new(
            shoal::tls::ReloadingCertificate::load(
                ("cert", cert),
                ("key", key),
                shoal::tls::provider(),
                shoal::tls::RELOAD_CHECK_INTERVAL,
            )
            .expect("client certificate"),
        )
    });
    shoal::tls::client_config(roots, certificate).expect("client TLS configuration")
}

pub(crate) struct TlsNode {
    name: String,
    pub(crate) client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    /// Data, log and this node's own copies of its certificate files.
    dir: PathBuf,
    child: Option<Child>,
}

impl TlsNode {
    pub(crate) fn client_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }
    fn cert(&self) -> PathBuf {
        self.dir.join("node.crt")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("node.key")
    }
    fn peer_cert(&self) -> PathBuf {
        self.dir.join("peer.crt")
    }
    fn peer_key(&self) -> PathBuf {
        self.dir.join("peer.key")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("node.log")
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

/// Real `shoal server` processes serving https on every port, with client and peer
/// certificates required; killed when dropped, logs printed if the test failed. The
/// gateway's TLS test uses it too.
pub(crate) struct TlsCluster {
    pub(crate) nodes: Vec<TlsNode>,
    pub(crate) certs: CertFiles,
    initial_cluster: String,
    _dir: tempfile::TempDir,
}

impl TlsCluster {
    /// Starts `size` nodes with certificates of one CA; `rogue_peer` gets a peer
    /// certificate of another CA (and trusts the cluster's CA, so it is the others who
    /// refuse it). Does not wait for readiness.
    pub(crate) fn start(size: usize, rogue_peer: Option<usize>) -> TlsCluster {
        let dir = tempfile::tempdir().expect("temporary folder");
        let certs = make_certs(&dir.path().join("certs"));
        let rogue = rogue_peer.map(|_| make_certs(&dir.path().join("rogue-certs")));
        let mut nodes = Vec::new();
        let mut taken = std::collections::HashSet::new();
        let mut port = || loop {
            let candidate = shoal::chaos::cluster::free_port().expect("a free port");
            if taken.insert(candidate) {
                return candidate;
            }
        };
        for index in 0..size {
            let name = format!("n{}", index + 1);
            let node = TlsNode {
                client_port: port(),
                peer_port: port(),
                metrics_port: port(),
                dir: dir.path().join(&name),
                name,
                child: None,
            };
            std::fs::create_dir_all(&node.dir).expect("node folder");
            install_pair((&certs.node_cert, &certs.node_key), (&node.cert(), &node.key()));
            let peer_certs = match (&rogue, rogue_peer) {
                (Some(rogue), Some(chosen)) if chosen == index => rogue,
                _ => &certs,
            };
            install_pair(
                (&peer_certs.node_cert, &peer_certs.node_key),
                (&node.peer_cert(), &node.peer_key()),
            );
            std::fs::copy(&certs.ca_cert, node.dir.join("peer-ca.crt")).expect("copying the CA");
            nodes.push(node);
        }
        let initial_cluster = nodes
            .iter()
            .map(|node| format!("{}=https://127.0.0.1:{}", node.name, node.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = TlsCluster {
            nodes,
            certs,
            initial_cluster,
            _dir: dir,
        };
        for index in 0..size {
            cluster.spawn(index);
        }
        cluster
    }

    fn spawn(&mut self, index: usize) {
        let node = &self.nodes[index];
        let path = |path: PathBuf| path.display().to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log())
            .expect("log file");
        let parent_env = shoal::parent_watch::child_env();
        let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("server")
            .args(["--name", &node.name])
            .args(["--data-dir", &path(node.dir.join("data"))])
            .args(["--listen-client-urls", &node.client_url()])
            .args(["--listen-peer-urls", &format!("https://127.0.0.1:{}", node.peer_port)])
            .args([
                "--listen-metrics-urls",
                &format!("https://127.0.0.1:{}", node.metrics_port),
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", "shoal-tls"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--cert-file", &path(node.cert())])
            .args(["--key-file", &path(node.key())])
            .args(["--trusted-ca-file", &path(self.certs.ca_cert.clone())])
            .arg("--client-cert-auth")
            .args(["--peer-cert-file", &path(node.peer_cert())])
            .args(["--peer-key-file", &path(node.peer_key())])
            .args(["--peer-trusted-ca-file", &path(node.dir.join("peer-ca.crt"))])
            .arg("--peer-client-cert-auth")
            .env("RUST_LOG", "info,raft=warn")
            .env(parent_env.0, parent_env.1)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting shoal server");
        self.nodes[index].child = Some(child);
    }

    /// A client configuration with the cluster's client certificate.
    fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        client_tls(
            &self.certs.ca_cert,
            Some((&self.certs.client_cert, &self.certs.client_key)),
        )
    }

    /// `/ready` of a node over https, if it answered.
    async fn ready(&self, index: usize) -> Option<u16> {
        shoal::http_probe::get_tls(
            self.nodes[index].metrics_port,
            "/ready",
            Duration::from_secs(1),
            &self.client_tls(),
        )
        .await
        .map(|(status, _)| status)
    }

    pub(crate) async fn wait_ready(&mut self, indexes: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for &index in indexes {
            while self.ready(index).await != Some(200) {
                if let Some(status) = self.nodes[index]
                    .child
                    .as_mut()
                    .and_then(|child| child.try_wait().ok().flatten())
                {
                    panic!("{} exited during start-up: {status}", self.nodes[index].name);
                }
                assert!(
                    Instant::now() < deadline,
                    "{} did not become ready",
                    self.nodes[index].name
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn endpoints(&self, indexes: &[usize]) -> String {
        indexes
            .iter()
            .map(|&index| self.nodes[index].client_url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// etcdctl with the cluster's CA and client certificate.
    pub(crate) fn etcdctl(&self, indexes: &[usize], args: &[&str]) -> (bool, String, String) {
        let certs = &self.certs;
        run_etcdctl(
            &self.endpoints(indexes),
            &[
                (&certs.ca_cert, "--cacert"),
                (&certs.client_cert, "--cert"),
                (&certs.client_key, "--key"),
            ],
            args,
        )
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                let text = node.log_text();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("---- last lines of {} ----", node.name);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Runs etcdctl with TLS files `files` (path, flag) and short timeouts, so a refused
/// connection fails fast; returns (success, stdout, stderr).
fn run_etcdctl(endpoints: &str, files: &[(&PathBuf, &str)], args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(etcdctl());
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=3s", "--command-timeout=10s"]);
    for (path, flag) in files {
        command.arg(flag).arg(path);
    }
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running etcdctl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits (bounded) until `condition` holds of the node's log.
async fn wait_for_log(node: &TlsNode, what: &str, condition: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition(&node.log_text()) {
        assert!(Instant::now() < deadline, "{} never logged {what}", node.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_needs_a_client_certificate_of_the_cluster_ca() {
    bounded(async {
        let mut cluster = TlsCluster::start(3, None);
        cluster.wait_ready(&[0, 1, 2]).await;
        let all = [0, 1, 2];
        let (ok, out, err) = tokio::task::block_in_place(|| cluster.etcdctl(&all, &["put", "secure", "yes"]));
        assert!(ok && out.contains("OK"), "put over TLS: {out}{err}");
        for index in all {
            let (ok, out, err) = tokio::task::block_in_place(|| cluster.etcdctl(&[index], &["get", "secure"]));
            assert!(ok && out.contains("yes"), "get from n{}: {out}{err}", index + 1);
        }
        // endpoint status goes through etcdctl 3.4's per-endpoint dial, whose malformed
        // :authority the server repairs: behind TLS too.
        let (ok, out, err) =
            tokio::task::block_in_place(|| cluster.etcdctl(&all, &["endpoint", "status", "-w", "table"]));
        assert!(ok && out.matches("https://127.0.0.1:").count() == 3, "{out}{err}");

        // No client certificate: refused at the handshake.
        let (ok, out, err) = tokio::task::block_in_place(|| {
            run_etcdctl(
                &cluster.endpoints(&[0]),
                &[(&cluster.certs.ca_cert, "--cacert")],
                &["get", "secure"],
            )
        });
        assert!(
            !ok && !out.contains("yes"),
            "a client without a certificate was served: {out}{err}"
        );
        wait_for_log(
            &cluster.nodes[0],
            "the refusal of a client without certificate",
            |log| log.contains("TLS handshake failed") && log.contains("no certificates"),
        )
        .await;

        // A certificate from another CA: refused too.
        let other = tempfile::tempdir().unwrap();
        let other_certs = make_certs(other.path());
        let (ok, out, err) = tokio::task::block_in_place(|| {
            run_etcdctl(
                &cluster.endpoints(&[0]),
                &[
                    (&cluster.certs.ca_cert, "--cacert"),
                    (&other_certs.client_cert, "--cert"),
                    (&other_certs.client_key, "--key"),
                ],
                &["get", "secure"],
            )
        });
        assert!(
            !ok && !out.contains("yes"),
            "another CA's client was served: {out}{err}"
        );

        // Plain HTTP/2 (etcdctl over http://) and plain HTTP/1 to the https port: the
        // connection fails, the node logs a line and keeps serving.
        let (ok, out, err) = tokio::task::block_in_place(|| {
            run_etcdctl(
                &format!("http://127.0.0.1:{}", cluster.nodes[0].client_port),
                &[],
                &["get", "secure"],
            )
        });
        assert!(!ok && !out.contains("yes"), "plain HTTP was served: {out}{err}");
        let port = cluster.nodes[0].client_port;
        let answer = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut answer = Vec::new();
            // Ends with the server closing the connection (an error or EOF), not a hang.
            let outcome = stream.read_to_end(&mut answer);
            (outcome.map_err(|error| error.kind()), answer)
        })
        .await
        .unwrap();
        assert!(
            !matches!(
                answer.0,
                Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
            ),
            "the node left a plain-HTTP client hanging"
        );
        assert!(
            !String::from_utf8_lossy(&answer.1).contains("HTTP/1.1 200"),
            "plain HTTP got an answer"
        );
        wait_for_log(&cluster.nodes[0], "the refusal of plain HTTP", |log| {
            log.contains("TLS handshake failed") && log.contains("InvalidContentType")
        })
        .await;
        let (ok, out, err) = tokio::task::block_in_place(|| cluster.etcdctl(&[0], &["get", "secure"]));
        assert!(
            ok && out.contains("yes"),
            "the node stopped serving after plain HTTP: {out}{err}"
        );
        let running = cluster.nodes[0].child.as_mut().map(|child| child.try_wait());
        assert!(matches!(running, Some(Ok(None))), "the node exited: {running:?}");

        // The metrics listener serves https with the client side's certificate rules.
        let tls = cluster.client_tls();
        let (status, body) =
            shoal::http_probe::get_tls(cluster.nodes[0].metrics_port, "/metrics", Duration::from_secs(5), &tls)
                .await
                .expect("https /metrics");
        assert!(
            status == 200 && body.contains("etcd_server_has_leader 1"),
            "{status}: {body}"
        );
        let anonymous = client_tls(&cluster.certs.ca_cert, None);
        assert!(
            shoal::http_probe::get_tls(
                cluster.nodes[0].metrics_port,
                "/metrics",
                Duration::from_secs(5),
                &anonymous
            )
            .await
            .is_none(),
            "metrics served to a client without certificate"
        );

        // The Rust client side of the crate dials a TLS node too (tests, playground).
        let connector = shoal::tls::TlsConnector::new(tls);
        let endpoint = tonic::transport::Endpoint::from_shared(cluster.nodes[1].client_url()).unwrap();
        let status = MaintenanceClient::new(connector.channel(&endpoint))
            .status(StatusRequest {})
            .await
            .expect("Status over TLS")
            .into_inner();
        assert_ne!(status.leader, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_with_another_cas_peer_certificate_is_refused_at_the_handshake() {
    bounded(async {
        let mut cluster = TlsCluster::start(3, Some(2));
        // The two members with the cluster's peer certificates form a quorum.
        cluster.wait_ready(&[0, 1]).await;
        for (index, node) in cluster.nodes.iter().enumerate().take(2) {
            // Refused by this member, for the certificate it was shown.
            wait_for_log(node, "refusing the rogue member's peer certificate", |log| {
                log.lines().any(|line| {
                    line.contains("TLS handshake failed")
                        && line.contains("listener=\"peer\"")
                        && line.contains("invalid peer certificate")
                })
            })
            .await;
            let (ok, out, err) = tokio::task::block_in_place(|| {
                cluster.etcdctl(&[index], &["put", &format!("written-by-{}", node.name), "ok"])
            });
            assert!(ok, "a write to {} while the rogue member knocks: {out}{err}", node.name);
        }
        // The rogue member has exchanged no Raft message: no leader, nothing applied,
        // not ready, while the others serve writes.
        let (ok, out, err) = tokio::task::block_in_place(|| cluster.etcdctl(&[0, 1], &["put", "after", "ok"]));
        assert!(ok, "{out}{err}");
        assert_eq!(cluster.ready(2).await, Some(503), "the rogue member became ready");
        let connector = shoal::tls::TlsConnector::new(cluster.client_tls());
        let endpoint = tonic::transport::Endpoint::from_shared(cluster.nodes[2].client_url()).unwrap();
        let status = MaintenanceClient::new(connector.channel(&endpoint))
            .status(StatusRequest {})
            .await
            .expect("Status of the rogue member")
            .into_inner();
        assert_eq!(status.leader, 0, "the rogue member knows a leader: {status:?}");
    })
    .await;
}

/// The certificate a new connection to `port` is shown.
async fn presented_certificate(port: u16, tls: &Arc<rustls::ClientConfig>) -> Option<Vec<u8>> {
    let stream = shoal::tls::TlsConnector::new(tls.clone())
        .connect("127.0.0.1", port)
        .await
        .ok()?;
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|der| der.to_vec())
}

fn first_certificate(path: &Path) -> Vec<u8> {
    shoal::tls::load_certificates("cert", path).expect("certificate file")[0].to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_certificates_reach_new_connections_and_open_ones_keep_working() {
    bounded(async {
        let mut cluster = TlsCluster::start(1, None);
        cluster.wait_ready(&[0]).await;
        let tls = cluster.client_tls();
        let port = cluster.nodes[0].client_port;
        let old = first_certificate(&cluster.nodes[0].cert());
        assert_eq!(presented_certificate(port, &tls).await.as_deref(), Some(old.as_slice()));
        // A connection opened under the old certificate, in use.
        let mut open = shoal::tls::TlsConnector::new(tls.clone())
            .connect("127.0.0.1", port)
            .await
            .expect("TLS connection");
        let authority = format!("127.0.0.1:{port}");
        assert!(raw_status_call(&mut open, authority.as_bytes()).await);

        // A watch on an open connection, seeing a first change.
        let certs = &cluster.certs;
        let mut watch = Command::new(etcdctl())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", cluster.nodes[0].client_url()))
            .arg("--cacert")
            .arg(&certs.ca_cert)
            .arg("--cert")
            .arg(&certs.client_cert)
            .arg("--key")
            .arg(&certs.client_key)
            .args(["watch", "rotating"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcdctl watch");
        let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
        let stdout = watch.stdout.take().expect("watch output");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
        let wait_for_value = |value: &str| {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match lines.recv_timeout(left) {
                    Ok(line) if line == value => return,
                    Ok(_) => continue,
                    Err(_) => panic!("the watch never delivered {value}"),
                }
            }
        };
        // The watch may not be registered yet when the first put lands: put until seen.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, out, err) = tokio::task::block_in_place(|| cluster.etcdctl(&[0], &["put", "rotating", "before"]));
            assert!(ok, "{out}{err}");
            if let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
                if line == "before" || line == "PUT" {
                    tokio::task::block_in_place(|| wait_for_value("before"));
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the watch saw nothing");
        }

        // Rotate: a new pair from the same CA (new key, new serial), renamed into place.
        let fresh = make_certs(cluster.certs.ca_cert.parent().unwrap());
        let new = first_certificate(&fresh.node_cert);
        assert_ne!(new, old);
        let node = &cluster.nodes[0];
        install_pair((&fresh.node_cert, &fresh.node_key), (&node.cert(), &node.key()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while presented_certificate(port, &tls).await.as_deref() != Some(new.as_slice()) {
            assert!(
                Instant::now() < deadline,
                "new connections never got the new certificate"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_for_log(node, "the reload", |log| log.contains("certificate files changed")).await;

        // The connection opened under the old certificate still carries HTTP/2 traffic.
        let pinged = tokio::time::timeout(Duration::from_secs(10), raw_ping(&mut open)).await;
        assert!(matches!(pinged, Ok(true)), "the open connection broke at the rotation");
        // The watch's connection, opened under the old certificate, still delivers.
        let (ok, out, err) = tokio::task::block_in_place(|| cluster.etcdctl(&[0], &["put", "rotating", "after"]));
        assert!(ok, "{out}{err}");
        tokio::task::block_in_place(|| wait_for_value("after"));
        assert!(watch.try_wait().unwrap().is_none(), "the watch ended");
        let _ = watch.kill();
        let _ = watch.wait();
    })
    .await;
}

#[tokio::test]
async fn bad_certificate_files_stop_the_server_naming_flag_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let missing = dir.path().join("missing.crt");
    let port = shoal::chaos::cluster::free_port().expect("a free port");
    let run = |cert: &Path, key: &Path| {
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["server", "--name", "a", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &format!("https://127.0.0.1:{port}")])
            .arg("--cert-file")
            .arg(cert)
            .arg("--key-file")
            .arg(key)
            .output()
            .unwrap()
    };
    let output = run(&missing, &certs.node_key);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("--cert-file") && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );
    // A key that is not the certificate's.
    let output = run(&certs.node_cert, &certs.client_key);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("--key-file") && stderr.contains("client.key"),
        "{stderr}"
    );
}

#[tokio::test]
async fn shoal_cert_writes_a_ca_and_certificates_that_load() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["cert", "--dir"])
        .arg(dir.path())
        .args(["--host", "db.internal,10.1.2.3"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("etcdctl --cacert"), "{stdout}");
    let files = CertFiles::in_dir(dir.path());
    assert!(files.complete());
    shoal::tls::ServerTls::load(&shoal::tls::ServerTlsFiles {
        cert_file: files.node_cert.clone(),
        key_file: files.node_key.clone(),
        trusted_ca_file: Some(files.ca_cert.clone()),
        client_cert_auth: true,
        flag_prefix: "",
    })
    .expect("the node certificate loads as a server's");
    client_tls(&files.ca_cert, Some((&files.client_cert, &files.client_key)));
}

/// `shoal playground --tls` prints an etcdctl line that works as printed.
#[tokio::test(flavor = "multi_thread")]
async fn playground_with_tls_prints_a_working_etcdctl_line() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let base = shoal::chaos::cluster::free_ports(6).expect("free ports");
        let metrics_base = shoal::chaos::cluster::free_ports(3).expect("free ports");
        let redis_base = shoal::chaos::cluster::free_ports(3).expect("free ports");
        let mut playground = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["playground", "--tls", "--data-dir"])
            .arg(dir.path())
            .args(["--client-port-base", &base.to_string()])
            .args(["--peer-port-base", &(base + 1).to_string()])
            .args(["--metrics-port-base", &metrics_base.to_string()])
            .args(["--redis-port-base", &redis_base.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = playground.stdout.take().unwrap();
        let (put_line, metrics_line, redis_lines) = tokio::task::block_in_place(|| {
            let mut lines = BufReader::new(stdout).lines();
            let (mut put_line, mut metrics_line, mut redis_lines) = (None, None, Vec::new());
            for line in lines.by_ref() {
                let line = line.unwrap();
                let line = line.trim();
                if line.starts_with("redis-cli --tls ") {
                    redis_lines.push(line.to_string());
                }
                if line.starts_with("etcdctl --endpoints=https://") && line.ends_with("put greeting hello") {
                    put_line = Some(line.to_string());
                }
                if line.starts_with("curl ") && line.contains("/metrics") {
                    metrics_line = Some(line.to_string());
                }
                if line.starts_with("Ctrl-C") {
                    break;
                }
            }
            // Keep reading so the playground never writes to a closed pipe.
            std::thread::spawn(move || lines.for_each(drop));
            (put_line, metrics_line, redis_lines)
        });
        // The printed redis-cli lines work as printed, over TLS.
        assert_eq!(redis_lines.len(), 2, "{redis_lines:?}");
        let mut replies = Vec::new();
        for line in &redis_lines {
            let words: Vec<&str> = line.split_whitespace().skip(1).collect();
            let output =
                tokio::task::block_in_place(|| Command::new(crate::support::redis_cli()).args(&words).output())
                    .unwrap();
            assert!(output.status.success(), "{line}: {output:?}");
            replies.push(String::from_utf8_lossy(&output.stdout).trim().to_string());
        }
        assert_eq!(replies, vec!["OK", "hello"]);
        let put_line = put_line.expect("the playground printed an https etcdctl line");
        assert!(metrics_line.is_some_and(|line| line.contains("https://")));
        let words: Vec<String> = put_line.split_whitespace().skip(1).map(str::to_string).collect();
        let run = |words: &[String]| {
            let output = Command::new(etcdctl())
                .env("ETCDCTL_API", "3")
                .args(words)
                .arg("--command-timeout=15s")
                .output()
                .unwrap();
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        };
        let (ok, out, err) = tokio::task::block_in_place(|| run(&words));
        assert!(ok && out.contains("OK"), "the printed line failed: {out}{err}");
        let mut get = words[..words.len() - 3].to_vec();
        get.extend(["get".to_string(), "greeting".to_string()]);
        let (ok, out, err) = tokio::task::block_in_place(|| run(&get));
        assert!(ok && out.contains("hello"), "{out}{err}");

        let pid = rustix::process::Pid::from_raw(playground.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = playground.try_wait().unwrap() {
                assert!(status.success(), "playground exited with {status}");
                break;
            }
            if Instant::now() > deadline {
                let _ = playground.kill();
                panic!("playground did not stop");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

fn h2_frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads HTTP/2 frames (acknowledging the server's SETTINGS) until `verdict` of a
/// frame's (type, flags, stream, payload length) says true or false; false if the
/// connection ends first.
async fn h2_read_until(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    verdict: impl Fn(u8, u8, u32, usize) -> Option<bool>,
) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut header = [0u8; 9];
        if stream.read_exact(&mut header).await.is_err() {
            return false;
        }
        let length = (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; length];
        if stream.read_exact(&mut payload).await.is_err() {
            return false;
        }
        if (kind, stream_id, flags & 0x1) == (0x4, 0, 0) {
            let ack = h2_frame(0x4, 0x1, 0, &[]);
            if stream.write_all(&ack).await.is_err() {
                return false;
            }
        }
        if kind == 0x7 {
            return false; // GOAWAY
        }
        if let Some(answer) = verdict(kind, flags, stream_id, length) {
            return answer;
        }
    }
}

/// Opens HTTP/2 on `stream` and sends one gRPC Maintenance.Status call with `authority`
/// as given (a URL, as etcdctl 3.4 sends on some dials); says whether it was answered
/// with data (true) or refused (false).
async fn raw_status_call(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    authority: &[u8],
) -> bool {
    use tokio::io::AsyncWriteExt;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    let block = loona_hpack::Encoder::new().encode([
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"https"),
        (b":path", b"/etcdserverpb.Maintenance/Status"),
        (b":authority", authority),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]);
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    request.extend(h2_frame(0x4, 0, 0, &[]));
    request.extend(h2_frame(0x1, END_HEADERS, 1, &block));
    request.extend(h2_frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]));
    stream.write_all(&request).await.expect("writing the request");
    h2_read_until(stream, |kind, _, stream_id, length| match (kind, stream_id) {
        (0x0, 1) if length > 5 => Some(true), // a Status response message
        (0x3, 1) => Some(false),              // RST_STREAM
        _ => None,
    })
    .await
}

/// Pings the server on an HTTP/2 connection that `raw_status_call` opened; true once
/// the acknowledgement comes back.
async fn raw_ping(stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin)) -> bool {
    use tokio::io::AsyncWriteExt;
    if stream.write_all(&h2_frame(0x6, 0, 0, b"rotation")).await.is_err() {
        return false;
    }
    h2_read_until(stream, |kind, flags, _, _| {
        (kind == 0x6 && flags & 0x1 == 1).then_some(true)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_2_and_1_3_are_served_and_the_authority_repair_works_behind_tls() {
    bounded(async {
        let mut cluster = TlsCluster::start(1, None);
        cluster.wait_ready(&[0]).await;
        let port = cluster.nodes[0].client_port;
        let certs = &cluster.certs;
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let roots = shoal::tls::load_roots("cacert", &certs.ca_cert).unwrap();
            let key = shoal::tls::reload::load_pair(
                ("cert", &certs.client_cert),
                ("key", &certs.client_key),
                &shoal::tls::provider(),
            )
            .unwrap();
            let mut config = rustls::ClientConfig::builder_with_provider(shoal::tls::provider())
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(key.cert.clone(), {
                    let pem = std::fs::read(&certs.client_key).unwrap();
                    rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap()
                })
                .unwrap();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let connector = shoal::tls::TlsConnector::new(Arc::new(config));
            let stream = tokio::time::timeout(Duration::from_secs(10), connector.connect("127.0.0.1", port))
                .await
                .expect("handshake in time")
                .unwrap_or_else(|error| panic!("{version:?}: {error}"));
            assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
            assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        }

        // A URL as :authority would make h2 refuse the stream; the repair fixes it on
        // the decrypted bytes.
        let connector = shoal::tls::TlsConnector::new(cluster.client_tls());
        let mut stream = connector.connect("127.0.0.1", port).await.expect("TLS connection");
        let url = format!("https://127.0.0.1:{port}");
        let answered = tokio::time::timeout(Duration::from_secs(10), raw_status_call(&mut stream, url.as_bytes()))
            .await
            .expect("an answer in time");
        assert!(answered, "a URL authority behind TLS was refused");
    })
    .await;
}

/// With auth on, a client certificate's common name is its user when the call carries
/// no token, as in etcd; a name no user has is no user.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificates_common_name_is_its_user_once_auth_is_on() {
    bounded(async {
        let mut cluster = TlsCluster::start(3, None);
        cluster.wait_ready(&[0, 1, 2]).await;
        // A certificate for "alice" from the cluster's CA (the same CA files, another folder).
        let alice_dir = tempfile::tempdir().unwrap();
        let theirs = shoal::certs::CertFiles::in_dir(alice_dir.path());
        std::fs::copy(&cluster.certs.ca_cert, &theirs.ca_cert).unwrap();
        std::fs::copy(&cluster.certs.ca_key, &theirs.ca_key).unwrap();
        let alice = shoal::certs::create(&CertArgs {
            dir: alice_dir.path().to_path_buf(),
            hosts: Vec::new(),
            client_name: "alice".into(),
            days: 1,
        })
        .expect("alice's certificate");
        let as_alice = |args: &[&str]| {
            run_etcdctl(
                &cluster.endpoints(&[1]),
                &[
                    (&cluster.certs.ca_cert, "--cacert"),
                    (&alice.client_cert, "--cert"),
                    (&alice.client_key, "--key"),
                ],
                args,
            )
        };
        let setup: &[&[&str]] = &[
            &["user", "add", "root:rootpw"],
            &["user", "grant-role", "root", "root"],
            &["user", "add", "alice:unused-password"],
            &["role", "add", "app-read"],
            &["role", "grant-permission", "app-read", "read", "app/", "--prefix=true"],
            &["user", "grant-role", "alice", "app-read"],
            &["put", "app/x", "1"],
            &["auth", "enable"],
        ];
        for args in setup {
            let (ok, out, err) = tokio::task::block_in_place(|| cluster.etcdctl(&[0], args));
            assert!(ok, "etcdctl {args:?}: {out}{err}");
        }
        let (ok, out, err) = tokio::task::block_in_place(|| as_alice(&["get", "app/x", "--print-value-only"]));
        assert!(ok && out == "1\n", "alice reads by certificate: {out}{err}");
        let (ok, _, err) = tokio::task::block_in_place(|| as_alice(&["put", "app/x", "2"]));
        assert!(!ok && err.contains("etcdserver: permission denied"), "{err}");
        // The cluster's own client certificate names "client", who is no user.
        let (ok, _, err) = tokio::task::block_in_place(|| cluster.etcdctl(&[2], &["get", "app/x"]));
        assert!(!ok && err.contains("etcdserver: user name is empty"), "{err}");
        // A token beats the certificate's name.
        let (ok, out, err) =
            tokio::task::block_in_place(|| cluster.etcdctl(&[2], &["--user=root:rootpw", "put", "app/x", "3"]));
        assert!(ok, "{out}{err}");
    })
    .await;
}
