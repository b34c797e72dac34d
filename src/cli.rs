//! The `shoal` command line.

use crate::config::ClusterState;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "shoal",
    version,
    about = "A distributed, strongly consistent key-value and coordination store"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one node. Flags use etcd's names, so etcd deployment scripts carry over.
    Server(Box<ServerArgs>),
    /// Run a local cluster of N nodes on this machine and print its endpoints.
    Playground(PlaygroundArgs),
    /// Load-test an etcd v3 endpoint (Shoal or etcd) and report throughput and latency.
    Bench(crate::bench::BenchArgs),
    /// Run a cluster under a seeded schedule of faults with checked client workloads.
    Chaos(crate::chaos::ChaosArgs),
    /// Create a CA and node and client certificates for local TLS (not for production).
    Cert(crate::certs::CertArgs),
    /// Look at a running cluster: `shoal ctl ranges --endpoints URL[,URL...]`.
    Ctl(crate::ctl::CtlArgs),
    /// Restore a new cluster from a backup (`etcdctl snapshot save` makes one), or
    /// check a backup file.
    Snapshot(crate::snapshot_cli::SnapshotArgs),
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// TOML file with the same settings (kebab-case keys); SHOAL_* environment variables
    /// override it, flags override both.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Load and check the whole configuration (flags, file, environment, TLS files) as
    /// the server would, print it as a --config file and exit: binds no port and does
    /// not touch the data folder. Exits non-zero with the error if it does not hold.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub flags: ServerFlags,
}

/// Settings given as flags; unset ones are left to the file, environment or defaults.
#[derive(Args, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServerFlags {
    /// Human-readable name of this member [default: default]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where the data lives [default: <name>.shoal]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// URLs to serve clients on [default: http://127.0.0.1:2379]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_client_urls: Option<String>,
    /// Client URLs announced to the cluster [default: the listen client URLs]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_client_urls: Option<String>,
    /// URLs to serve other members on [default: http://127.0.0.1:2380]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_peer_urls: Option<String>,
    /// Peer URLs announced to the cluster [default: the listen peer URLs]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Members of a new cluster: name=url[,name=url...] [default: this member alone]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_cluster: Option<String>,
    /// `new` to create the cluster, `existing` to rejoin it [default: new]
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_cluster_state: Option<ClusterState>,
    /// Join a running cluster through these members' peer URLs (URL[,URL...]): the node
    /// adds itself as a member and starts as `existing`
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
    /// Token that makes ids unique to this cluster [default: shoal-cluster]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_cluster_token: Option<String>,
    /// URLs for HTTP /metrics, /health and /ready [default: none, no metrics listener]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_metrics_urls: Option<String>,
    /// host:port to serve the Redis protocol on [default: none]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_redis_addr: Option<String>,
    /// Milliseconds between leader heartbeats [default: 100]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<u64>,
    /// Milliseconds without a leader before an election [default: 1000]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_timeout: Option<u64>,
    /// Most operations in one txn [default: 128]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_txn_ops: Option<usize>,
    /// Largest client request in bytes [default: 1572864]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<usize>,
    /// Most watches open at once on one Watch stream; a create beyond it is refused
    /// [default: 1000]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_watches_per_stream: Option<usize>,
    /// Largest Range response in bytes (Shoal only; etcd's fixed limit is the default): a
    /// Range with a limit is cut short there with `more`, one without is refused
    /// [default: 2147483647]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<usize>,
    /// Applied Raft log entries kept before the log is truncated [default: 10000]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<u64>,
    /// Entries kept behind the applied index when truncating [default: 5000]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_catchup_entries: Option<u64>,
    /// Split a data range holding more live key and value bytes than this (0: never)
    /// [default: 67108864]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_max_bytes: Option<u64>,
    /// Split a data range holding more live keys than this (0: never) [default: 200000]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_max_keys: Option<u64>,
    /// Interval of watch progress notifications, e.g. 10s [default: 10m]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experimental_watch_progress_notify_interval: Option<String>,
    /// Dial members at other URLs than they advertise: name=url[,name=url...]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experimental_peer_dial_urls: Option<String>,
    /// For fault tests only: exit at txn-after-prepare or txn-after-primary-commit
    #[arg(long, hide = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experimental_fail_at: Option<String>,
    /// For fault tests only: a file whose words (sync, write, read) make the storage
    /// engine fail those operations while they are there
    #[arg(long, hide = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experimental_storage_faults: Option<std::path::PathBuf>,
    /// A new cluster starts with its data ranges cut at these etcd keys (comma-separated)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experimental_initial_split_keys: Option<String>,
    /// Serve TLS on --listen-redis-addr with --cert-file/--key-file (and
    /// --client-cert-auth/--trusted-ca-file), as Redis's tls-port does [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_tls: Option<bool>,
    /// Token kind for authenticated clients: simple (signed tokens any member checks)
    /// [default: simple]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    /// Seconds a token lives; clients authenticate again after [default: 300]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token_ttl: Option<u64>,
    /// bcrypt cost of stored password hashes (4-31) [default: 10]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bcrypt_cost: Option<u32>,
    /// Free bytes the node keeps on its data volume: below them it refuses client writes
    /// and hands its leaderships over; below a quarter of them it stops taking log
    /// entries; 0 turns the guard off [default: 67108864 (64 MiB)]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_reserve_bytes: Option<u64>,
    /// Bytes per second this member sends range snapshots at (to a new, rebuilt or lagging
    /// replica), all transfers together, so that catching a replica up does not starve
    /// client traffic; 0: no limit [default: 67108864 (64 MiB)]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_send_rate: Option<u64>,
    /// Key-value bytes a member may hold before writes that add data are refused and
    /// the NOSPACE alarm is raised; 0 means the default [default: 8589934592 (8 GiB)]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_backend_bytes: Option<u64>,
    /// How often the first data range's leader compares every member's HashKV and
    /// raises CORRUPT on a mismatch (5m, 30s); 0s turns it off [default: 0s]
    #[arg(long, alias = "experimental-corrupt-check-time")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupt_check_time: Option<String>,
    /// How --auto-compaction-retention is read: periodic or revision [default: periodic]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_compaction_mode: Option<String>,
    /// History kept: a duration (30m, 1h) or hours in periodic mode, revisions in
    /// revision mode; 0 keeps everything [default: 0]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_compaction_retention: Option<String>,
    /// Certificate (PEM) for https:// client and metrics URLs
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by --trusted-ca-file [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_auth: Option<bool>,
    /// Certificate (PEM) for https:// peer URLs, also shown when dialing other members
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --peer-cert-file
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign the members' peer certificates
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require a peer certificate signed by --peer-trusted-ca-file [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_client_cert_auth: Option<bool>,
}

#[derive(Args, Debug)]
pub struct PlaygroundArgs {
    /// Number of nodes
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Folder for every node's data and log
    #[arg(long, default_value = "./shoal-data")]
    pub data_dir: PathBuf,
    /// Client port of the first node; node i uses base + 2*i
    #[arg(long, default_value_t = 2379)]
    pub client_port_base: u16,
    /// Peer port of the first node; node i uses base + 2*i
    #[arg(long, default_value_t = 2380)]
    pub peer_port_base: u16,
    /// Metrics port of the first node; node i uses base + i
    #[arg(long, default_value_t = 9090)]
    pub metrics_port_base: u16,
    /// Redis port of the first node; node i uses base + i
    #[arg(long, default_value_t = 6379)]
    pub redis_port_base: u16,
    /// Serve https on every port with mutual TLS between the nodes, using certificates
    /// made in <data-dir>/certs (kept across restarts)
    #[arg(long)]
    pub tls: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn tls_flags_parse_as_etcd_spells_them() {
        let cli = Cli::try_parse_from([
            "shoal",
            "server",
            "--cert-file",
            "/certs/node.crt",
            "--key-file=/certs/node.key",
            "--client-cert-auth",
            "--peer-client-cert-auth=false",
            "--peer-trusted-ca-file",
            "/certs/ca.crt",
        ])
        .unwrap();
        let Command::Server(args) = cli.command else {
            panic!("not the server command");
        };
        let flags = &args.flags;
        assert_eq!(
            flags.cert_file.as_deref(),
            Some(std::path::Path::new("/certs/node.crt"))
        );
        assert_eq!(flags.key_file.as_deref(), Some(std::path::Path::new("/certs/node.key")));
        assert_eq!(
            (flags.client_cert_auth, flags.peer_client_cert_auth),
            (Some(true), Some(false))
        );
        // Flags reach the settings under the same names as the file's keys.
        let settings = crate::config::ServerSettings::load(None, flags).unwrap();
        assert!(settings.client_cert_auth && !settings.peer_client_cert_auth);
        assert_eq!(settings.peer_trusted_ca_file, Some(PathBuf::from("/certs/ca.crt")));
    }
}
