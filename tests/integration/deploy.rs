//! The Kubernetes manifests in deploy/kubernetes and `shoal server --dry-run`: the
//! StatefulSet's container arguments must be a configuration the server accepts, and its
//! probes and scrape annotation must point at the listener those arguments open.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn manifest(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The items of the block list under `key:` (the first such key), unquoted. The manifest
/// keeps its lists plain (`- item` lines), which is all this reads.
fn block_list(yaml: &str, key: &str) -> Vec<String> {
    let mut lines = yaml.lines();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let key_indent = lines
        .by_ref()
        .find(|line| line.trim() == format!("{key}:"))
        .map(indent)
        .unwrap_or_else(|| panic!("no `{key}:` list in the manifest"));
    let mut items = Vec::new();
    for line in lines {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if indent(line) < key_indent || (indent(line) == key_indent && !trimmed.starts_with("- ")) {
            break;
        }
        let item = trimmed.strip_prefix("- ").expect("a plain list item");
        items.push(item.trim_matches('"').trim_matches('\'').to_string());
    }
    items
}

/// `$(NAME)` references, as Kubernetes expands them from the container's environment.
fn expand(argument: &str, environment: &[(&str, &str)]) -> String {
    environment.iter().fold(argument.to_string(), |text, (name, value)| {
        text.replace(&format!("$({name})"), value)
    })
}

fn shoal(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        // A SHOAL_* variable of the environment running the tests would change the result.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("running shoal")
}

/// The value of `--flag=value` among `args`.
fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    args.iter()
        .find_map(|arg| arg.strip_prefix(&format!("--{name}=")))
        .unwrap_or_else(|| panic!("the manifest passes no --{name}"))
}

#[test]
fn the_statefulsets_arguments_pass_dry_run_for_every_replica() {
    let statefulset = manifest("statefulset.yaml");
    let args = block_list(&statefulset, "args");
    assert_eq!(args.first().map(String::as_str), Some("server"), "{args:?}");
    // Every $(VAR) the arguments use is one the container defines.
    let environment = [("POD_NAME", "shoal-1"), ("POD_NAMESPACE", "default")];
    for arg in &args {
        let expanded = expand(arg, &environment);
        assert!(!expanded.contains("$("), "{arg} uses a variable the test does not know");
    }
    for (name, _) in environment {
        assert!(
            statefulset.contains(&format!("- name: {name}\n")),
            "the container does not define {name}"
        );
    }
    let replicas: usize = statefulset
        .lines()
        .find_map(|line| line.trim().strip_prefix("replicas: "))
        .and_then(|count| count.parse().ok())
        .expect("replicas");
    for replica in 0..replicas {
        let pod = format!("shoal-{replica}");
        let environment = [("POD_NAME", pod.as_str()), ("POD_NAMESPACE", "default")];
        let mut expanded: Vec<String> = args.iter().map(|arg| expand(arg, &environment)).collect();
        expanded.push("--dry-run".into());
        let output = shoal(&expanded);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{pod}: shoal {expanded:?} refused: {}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The resolved configuration, as a --config file would hold it.
        assert!(stdout.contains(&format!("name = \"{pod}\"")), "{stdout}");
        assert!(stdout.contains("data-dir = \"/var/lib/shoal\""), "{stdout}");
        assert!(
            stdout.contains(&format!(
                "initial-advertise-peer-urls = \"http://{pod}.shoal.default.svc:2380\""
            )),
            "{stdout}"
        );
        assert!(
            stdout.contains("listen-metrics-urls = \"http://0.0.0.0:9090\""),
            "{stdout}"
        );
    }
    // Every replica is in --initial-cluster under its stable name.
    let initial_cluster = flag(&args, "initial-cluster");
    for replica in 0..replicas {
        assert!(
            initial_cluster.contains(&format!(
                "shoal-{replica}=http://shoal-{replica}.shoal.$(POD_NAMESPACE).svc:2380"
            )),
            "{initial_cluster}"
        );
    }
    assert_eq!(initial_cluster.split(',').count(), replicas);

    // Probes and the scrape annotation use the port --listen-metrics-urls opens.
    let metrics_port = flag(&args, "listen-metrics-urls").rsplit(':').next().expect("a port");
    assert!(statefulset.contains(&format!("prometheus.io/port: \"{metrics_port}\"")));
    assert!(statefulset.contains("prometheus.io/scrape: \"true\""));
    assert!(statefulset.contains(&format!("- name: metrics\n              containerPort: {metrics_port}")));
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
        let section = statefulset.split(&format!("{probe}:")).nth(1).expect(probe);
        let section: String = section.lines().take(4).collect::<Vec<_>>().join("\n");
        assert!(
            section.contains(&format!("path: {path}")) && section.contains("port: metrics"),
            "{probe}: {section}"
        );
    }
    // The headless Service the DNS names use, publishing members before they are ready.
    let services = manifest("services.yaml");
    assert!(statefulset.contains("serviceName: shoal\n"));
    assert!(services.contains("name: shoal\n") && services.contains("clusterIP: None"));
    assert!(services.contains("publishNotReadyAddresses: true"));
    assert!(manifest("pdb.yaml").contains("maxUnavailable: 1"));
}

#[test]
fn dry_run_reads_flags_file_and_environment_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("never-created");
    // A port in use: a dry run does not bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "max-txn-ops = 7\nsnapshot-count = 500\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["server", "--dry-run", "--name", "a", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{port}")])
        .env("SHOAL_SNAPSHOT_COUNT", "900")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for line in [
        "name = \"a\"",
        "max-txn-ops = 7",
        "snapshot-count = 900",
        &format!("listen-client-urls = \"http://127.0.0.1:{port}\""),
        "initial-cluster = \"a=http://127.0.0.1:2380\"",
    ] {
        assert!(
            stdout.lines().any(|printed| printed == line),
            "{line} missing:\n{stdout}"
        );
    }
    assert!(!data_dir.exists(), "the dry run created the data folder");
    // The printout is a configuration file that loads.
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, stdout.as_bytes()).unwrap();
    let again = shoal(&[
        "server".into(),
        "--dry-run".into(),
        "--config".into(),
        printed.display().to_string(),
    ]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(String::from_utf8_lossy(&again.stdout), stdout);

    // A setting that does not hold: non-zero, the setting named.
    let refused = shoal(&["server".into(), "--dry-run".into(), "--election-timeout=10".into()]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--election-timeout"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // TLS files are loaded as the server would: a missing one is refused.
    let missing: PathBuf = dir.path().join("missing.crt");
    let refused = shoal(&[
        "server".into(),
        "--dry-run".into(),
        "--listen-client-urls=https://127.0.0.1:2379".into(),
        format!("--cert-file={}", missing.display()),
        format!("--key-file={}", missing.display()),
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--cert-file"), "{stderr}");
    drop(taken);
}
