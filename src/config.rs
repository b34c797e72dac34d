//! Server settings: etcd's flag names and meanings, from defaults, a TOML file, `SHOAL_*`
//! environment variables and flags (each overriding the one before), checked into a
//! typed [`NodeConfig`].

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::tls::ServerTlsFiles;

/// What history to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    Forever,
    /// Revisions committed within this much wall time.
    Period(Duration),
    /// This many revisions before the current one.
    Revisions(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(Box<figment::Error>),
    #[error("--{setting}: {problem}")]
    Invalid { setting: &'static str, problem: String },
    #[error("printing the configuration: {0}")]
    Print(String),
}

fn invalid(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        problem: problem.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// Create a new cluster from --initial-cluster.
    New,
    /// Join a cluster that already exists (the member must have been added to it).
    Existing,
}

/// Every server setting, named as etcd names its flags (kebab-case in TOML, upper snake
/// case after `SHOAL_` in the environment).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerSettings {
    pub name: String,
    /// Default: `<name>.shoal` in the working directory.
    pub data_dir: Option<PathBuf>,
    pub listen_client_urls: String,
    /// Default: the listen client URLs.
    pub advertise_client_urls: Option<String>,
    pub listen_peer_urls: String,
    /// Default: the listen peer URLs.
    pub initial_advertise_peer_urls: Option<String>,
    /// `name=url[,name=url...]`; default: this member alone.
    pub initial_cluster: Option<String>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    /// Peer URLs of members to join through (`URL[,URL...]`): the node is added to the
    /// cluster by the first that answers, then starts as `existing`.
    pub join: Option<String>,
    /// HTTP for /metrics, /health, /ready; empty (the default) opens no such listener, so
    /// members started with etcd's flags alone never compete for one port.
    pub listen_metrics_urls: String,
    /// `HOST:PORT` to serve the Redis protocol on; none (the default) serves no Redis.
    pub listen_redis_addr: Option<String>,
    /// TLS on the Redis listener, with the client side's certificate files.
    pub redis_tls: bool,
    /// Milliseconds between leader heartbeats (one Raft tick).
    pub heartbeat_interval: u64,
    /// Milliseconds without a leader before an election.
    pub election_timeout: u64,
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
    pub max_watches_per_stream: usize,
    pub max_response_bytes: usize,
    /// Applied log entries kept before the log is truncated.
    pub snapshot_count: u64,
    /// Entries kept behind the applied index at truncation, for slow followers.
    pub snapshot_catchup_entries: u64,
    /// A data range holding more than this many bytes of live keys and values splits;
    /// 0 never splits on size.
    pub range_max_bytes: u64,
    /// A data range holding more than this many live keys splits; 0 never splits on
    /// keys.
    pub range_max_keys: u64,
    /// Key-value bytes a member may hold before writes that add data are refused and
    /// NOSPACE raised; 0 is the default (8 GiB), as in etcd.
    pub quota_backend_bytes: u64,
    /// Free bytes kept on the data volume (see `storage::disk`); 0 turns it off.
    pub storage_reserve_bytes: u64,
    /// Bytes per second one member sends snapshots at, all of them together; 0: no limit.
    pub snapshot_send_rate: u64,
    /// "simple": the only token kind served (etcd's `jwt,...` is refused).
    pub auth_token: String,
    pub auth_token_ttl: u64,
    pub bcrypt_cost: u32,
    /// How often the corruption check compares the members' HashKV ("0s": never).
    pub corrupt_check_time: String,
    /// How often watchers that asked for progress notifications get one (e.g. "10m").
    pub experimental_watch_progress_notify_interval: String,
    /// `name=url,...`: dial these members at these URLs instead of their advertised peer
    /// URLs (their identity is unchanged). For NAT and for fault-injecting proxies.
    pub experimental_peer_dial_urls: Option<String>,
    /// For fault tests: the process exits at this point (`txn-after-prepare`,
    /// `txn-after-primary-commit`), as a crash there would end it.
    pub experimental_fail_at: Option<String>,
    /// For fault tests: a file whose words (`sync`, `write`, `read`) make the storage
    /// engine fail those operations while they are there (`storage::faults`).
    pub experimental_storage_faults: Option<std::path::PathBuf>,
    /// A new cluster starts with its data ranges already cut at these etcd keys
    /// (comma-separated), as if they had split there.
    pub experimental_initial_split_keys: Option<String>,
    /// `periodic` or `revision`: how `auto-compaction-retention` is read.
    pub auto_compaction_mode: String,
    /// History kept by automatic compaction; "0" keeps everything. Periodic mode: a
    /// duration ("30m", "1h") or a number of hours; revision mode: a number of revisions.
    pub auto_compaction_retention: String,
    /// Certificate (PEM) the client and metrics listeners present over `https://`.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `cert-file`.
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates.
    pub trusted_ca_file: Option<PathBuf>,
    /// Every client connection must show a certificate signed by `trusted-ca-file`.
    pub client_cert_auth: bool,
    /// Certificate (PEM) the peer listener presents, and this member shows when it
    /// dials an `https://` peer URL.
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `peer-cert-file`.
    pub peer_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign the members' peer certificates.
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Every peer connection must show a certificate signed by `peer-trusted-ca-file`.
    pub peer_client_cert_auth: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            name: "default".into(),
            data_dir: None,
            listen_client_urls: "http://127.0.0.1:2379".into(),
            advertise_client_urls: None,
            listen_peer_urls: "http://127.0.0.1:2380".into(),
            initial_advertise_peer_urls: None,
            initial_cluster: None,
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "shoal-cluster".into(),
            join: None,
            listen_metrics_urls: String::new(),
            listen_redis_addr: None,
            redis_tls: false,
            heartbeat_interval: 100,
            election_timeout: 1000,
            max_txn_ops: 128,
            max_request_bytes: 1536 * 1024,
            max_watches_per_stream: 1000,
            // etcd's gRPC send limit (math.MaxInt32).
            max_response_bytes: i32::MAX as usize,
            snapshot_count: 10_000,
            snapshot_catchup_entries: 5_000,
            // Off until writes across ranges (two-phase commit) land: see the README.
            range_max_bytes: 64 * 1024 * 1024,
            range_max_keys: 200_000,
            quota_backend_bytes: 0,
            storage_reserve_bytes: 64 << 20,
            snapshot_send_rate: 64 << 20,
            auth_token: "simple".into(),
            auth_token_ttl: 300,
            bcrypt_cost: 10,
            corrupt_check_time: "0s".into(),
            experimental_watch_progress_notify_interval: "10m".into(),
            experimental_peer_dial_urls: None,
            experimental_fail_at: None,
            experimental_storage_faults: None,
            experimental_initial_split_keys: None,
            auto_compaction_mode: "periodic".into(),
            auto_compaction_retention: "0".into(),
            cert_file: None,
            key_file: None,
            trusted_ca_file: None,
            client_cert_auth: false,
            peer_cert_file: None,
            peer_key_file: None,
            peer_trusted_ca_file: None,
            peer_client_cert_auth: false,
        }
    }
}

const SETTING_NAMES: &[&str] = &[
    "name",
    "data-dir",
    "listen-client-urls",
    "advertise-client-urls",
    "listen-peer-urls",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "listen-metrics-urls",
    "heartbeat-interval",
    "election-timeout",
    "max-txn-ops",
    "max-request-bytes",
    "max-watches-per-stream",
    "max-response-bytes",
    "snapshot-count",
    "snapshot-catchup-entries",
    "range-max-bytes",
    "range-max-keys",
    "experimental-watch-progress-notify-interval",
    "experimental-peer-dial-urls",
    "experimental-fail-at",
    "experimental-storage-faults",
    "experimental-initial-split-keys",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "cert-file",
    "key-file",
    "trusted-ca-file",
    "client-cert-auth",
    "peer-cert-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "peer-client-cert-auth",
];

impl ServerSettings {
    /// Layers defaults, the file, the environment and `flags` (settings given on the
    /// command line, serialized with unset ones left out).
    pub fn load(file: Option<&Path>, flags: impl Serialize) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(ServerSettings::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(invalid("config", format!("{} does not exist", file.display())));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        // Keys reach these closures before figment lowercases them.
        let environment = Env::prefixed("SHOAL_")
            .map(|key| key.as_str().replace('_', "-").into())
            .filter(|key| SETTING_NAMES.iter().any(|name| key.as_str().eq_ignore_ascii_case(name)));
        figment
            .merge(environment)
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(|error| ConfigError::Load(Box::new(error)))
    }
}

impl ServerSettings {
    /// These settings with the defaults that follow from others filled in as `config`
    /// resolved them (data folder, advertised URLs, initial cluster): what the node runs
    /// with, spelled as a `--config` file spells it.
    pub fn resolved(&self, config: &NodeConfig) -> ServerSettings {
        let mut resolved = self.clone();
        resolved.data_dir = Some(config.data_dir.clone());
        resolved.advertise_client_urls = Some(config.advertise_client_urls.join(","));
        resolved.initial_advertise_peer_urls = Some(config.advertise_peer_urls.join(","));
        let members: Vec<String> = config
            .initial_cluster
            .iter()
            .flat_map(|member| member.peer_urls.iter().map(move |url| format!("{}={url}", member.name)))
            .collect();
        resolved.initial_cluster = Some(members.join(","));
        resolved
    }

    /// The settings as TOML, a file `--config` reads back.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|error| ConfigError::Print(error.to_string()))
    }
}

/// One member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// One address to listen on, and whether it serves TLS (`https://`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenUrl {
    pub address: SocketAddr,
    pub tls: bool,
}

/// Checked settings of one node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub client_listen: Vec<ListenUrl>,
    pub advertise_client_urls: Vec<String>,
    pub peer_listen: Vec<ListenUrl>,
    pub advertise_peer_urls: Vec<String>,
    pub initial_cluster: Vec<InitialMember>,
    pub cluster_state: ClusterState,
    pub cluster_token: String,
    /// `--join`: members' peer URLs to ask for membership (empty: not joining that way).
    pub join: Vec<String>,
    pub metrics_listen: Vec<ListenUrl>,
    /// Where the Redis protocol is served, if anywhere.
    pub redis_listen: Option<SocketAddr>,
    /// Whether the Redis listener speaks TLS (with `client_tls`'s files).
    pub redis_tls: bool,
    /// TLS of the client and metrics listeners (`--cert-file`...), if configured.
    pub client_tls: Option<ServerTlsFiles>,
    /// TLS of the peer listener and of dialing `https://` peers (`--peer-cert-file`...).
    pub peer_tls: Option<ServerTlsFiles>,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
    pub max_watches_per_stream: usize,
    pub max_response_bytes: usize,
    pub log_compaction_entries: u64,
    pub log_catchup_entries: u64,
    pub split: SplitLimits,
    pub watch_progress_notify_interval: Duration,
    /// Key-value bytes this member may hold before writes that add data are refused.
    pub quota_bytes: u64,
    /// Free bytes kept on the data volume; 0: no guard.
    pub storage_reserve_bytes: u64,
    /// Snapshot bytes per second this member sends; 0: no limit.
    pub snapshot_send_rate: u64,
    /// How long an auth token lives.
    pub auth_token_ttl: Duration,
    pub bcrypt_cost: u32,
    /// How often the corruption check runs; `None` when off.
    pub corrupt_check_interval: Option<Duration>,
    /// Member name -> URL to dial it at, overriding its advertised peer URL.
    pub peer_dial_urls: std::collections::HashMap<String, String>,
    pub fail_at: Option<crate::txn::FailPoint>,
    /// The storage fault control file, when faults are injected.
    pub storage_faults: Option<std::path::PathBuf>,
    /// etcd keys a new cluster's data ranges are cut at.
    pub initial_split_keys: Vec<String>,
    pub auto_compaction: Retention,
}

/// When a data range splits (0: never on that measure).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SplitLimits {
    pub max_bytes: u64,
    pub max_keys: u64,
}

impl SplitLimits {
    pub fn is_off(&self) -> bool {
        self.max_bytes == 0 && self.max_keys == 0
    }

    /// Whether a range with these live keys and bytes should split.
    pub fn exceeded(&self, keys: u64, bytes: u64) -> bool {
        (self.max_keys > 0 && keys > self.max_keys) || (self.max_bytes > 0 && bytes > self.max_bytes)
    }
}

impl NodeConfig {
    /// How long a client request may wait for an outcome (etcd: 5 s plus two election
    /// timeouts, long enough to ride out one leader election).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + self.election_timeout * 2
    }

    /// Shortest lease TTL, in whole seconds: 1.5 election timeouts, rounded up (etcd's
    /// rule), so a lease outlives the election that may follow a leader failure.
    pub fn min_lease_ttl_seconds(&self) -> i64 {
        let millis = self.election_timeout.as_millis() as i64 * 3 / 2;
        ((millis + 999) / 1000).max(1)
    }
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

/// Resolves `http://host:port` or `https://host:port` to socket addresses.
pub fn resolve_url(setting: &'static str, url: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else {
        return Err(invalid(
            setting,
            format!("{url}: expected http://host:port or https://host:port"),
        ));
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') {
        return Err(invalid(setting, format!("{url}: a URL here has no path")));
    }
    let addresses: Vec<SocketAddr> = authority
        .to_socket_addrs()
        .map_err(|error| invalid(setting, format!("{url}: {error}")))?
        .collect();
    if addresses.is_empty() {
        return Err(invalid(setting, format!("{url}: resolves to no address")));
    }
    Ok(addresses)
}

/// A `host:port` address (no scheme), e.g. for the Redis listener.
fn resolve_address(setting: &'static str, address: &str) -> Result<SocketAddr, ConfigError> {
    address
        .to_socket_addrs()
        .map_err(|error| invalid(setting, format!("{address}: {error} (expected host:port)")))?
        .next()
        .ok_or_else(|| invalid(setting, format!("{address}: resolves to no address")))
}

fn resolve_list(setting: &'static str, value: &str) -> Result<Vec<ListenUrl>, ConfigError> {
    let mut addresses = Vec::new();
    for url in split_list(value) {
        // A listener binds one address per URL.
        addresses.push(ListenUrl {
            address: resolve_url(setting, &url)?[0],
            tls: is_https(&url),
        });
    }
    Ok(addresses)
}

fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// The setting names of one side's TLS files, for errors.
struct TlsSettingNames {
    prefix: &'static str,
    cert_file: &'static str,
    key_file: &'static str,
    trusted_ca_file: &'static str,
    client_cert_auth: &'static str,
}

const CLIENT_TLS: TlsSettingNames = TlsSettingNames {
    prefix: "",
    cert_file: "cert-file",
    key_file: "key-file",
    trusted_ca_file: "trusted-ca-file",
    client_cert_auth: "client-cert-auth",
};

const PEER_TLS: TlsSettingNames = TlsSettingNames {
    prefix: "peer-",
    cert_file: "peer-cert-file",
    key_file: "peer-key-file",
    trusted_ca_file: "peer-trusted-ca-file",
    client_cert_auth: "peer-client-cert-auth",
};

/// The TLS files of one side (client or peer), if any is given.
fn tls_files(
    names: &TlsSettingNames,
    cert_file: &Option<PathBuf>,
    key_file: &Option<PathBuf>,
    trusted_ca_file: &Option<PathBuf>,
    client_cert_auth: bool,
) -> Result<Option<ServerTlsFiles>, ConfigError> {
    let (cert_file, key_file) = match (cert_file, key_file) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        (Some(_), None) => return Err(invalid(names.cert_file, format!("needs --{}", names.key_file))),
        (None, Some(_)) => return Err(invalid(names.key_file, format!("needs --{}", names.cert_file))),
        (None, None) if client_cert_auth || trusted_ca_file.is_some() => {
            let setting = if client_cert_auth {
                names.client_cert_auth
            } else {
                names.trusted_ca_file
            };
            return Err(invalid(
                setting,
                format!(
                    "client certificates are checked on TLS connections only: give --{} and --{}",
                    names.cert_file, names.key_file
                ),
            ));
        }
        (None, None) => return Ok(None),
    };
    if client_cert_auth && trusted_ca_file.is_none() {
        return Err(invalid(
            names.client_cert_auth,
            format!(
                "needs --{}, the CA that signs the certificates to accept",
                names.trusted_ca_file
            ),
        ));
    }
    Ok(Some(ServerTlsFiles {
        cert_file,
        key_file,
        trusted_ca_file: trusted_ca_file.clone(),
        client_cert_auth,
        flag_prefix: names.prefix,
    }))
}

/// Every `https://` URL of `urls` needs TLS files for its side.
fn check_tls_urls<'a>(
    setting: &'static str,
    urls: impl IntoIterator<Item = &'a String>,
    tls: &Option<ServerTlsFiles>,
    needs: &str,
) -> Result<(), ConfigError> {
    match urls.into_iter().find(|url| is_https(url)) {
        Some(url) if tls.is_none() => Err(invalid(setting, format!("{url}: https needs {needs}"))),
        _ => Ok(()),
    }
}

/// Checks that `url` is `http://host:port` or `https://host:port`, without resolving
/// the host. URLs other members dial (advertised and initial-cluster URLs) need not
/// resolve when this member starts: in a Kubernetes StatefulSet a pod's DNS name appears
/// only once the pod runs, and the peer transport resolves names when it connects (and
/// keeps trying). Only the URLs this member listens on are resolved, to bind them.
pub fn check_url(setting: &'static str, url: &str) -> Result<(), ConfigError> {
    let expected = || {
        invalid(
            setting,
            format!("{url}: expected http://host:port or https://host:port"),
        )
    };
    let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else {
        return Err(expected());
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') {
        return Err(invalid(setting, format!("{url}: a URL here has no path")));
    }
    match authority.parse::<http::uri::Authority>() {
        Ok(parsed) if parsed.port_u16().is_some() && !parsed.host().is_empty() && !authority.contains('@') => Ok(()),
        _ => Err(expected()),
    }
}

fn check_urls(setting: &'static str, urls: &[String]) -> Result<(), ConfigError> {
    if urls.is_empty() {
        return Err(invalid(setting, "at least one URL is needed"));
    }
    for url in urls {
        check_url(setting, url)?;
    }
    Ok(())
}

/// "250ms", "10s", "10m", "1h" (Go-style, one unit).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => Some(Duration::from_secs(number.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(number.checked_mul(3600)?)),
        _ => None,
    }
}

/// etcd's `--auto-compaction-mode` and `--auto-compaction-retention`.
pub fn parse_auto_compaction(mode: &str, retention: &str) -> Result<Retention, ConfigError> {
    let retention = retention.trim();
    let parsed = match mode {
        "periodic" => match retention.parse::<u64>() {
            Ok(hours) => hours
                .checked_mul(3600)
                .map(|secs| Retention::Period(Duration::from_secs(secs))),
            Err(_) => parse_duration(retention).map(Retention::Period),
        },
        "revision" => retention
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Retention::Revisions),
        _ => {
            return Err(invalid(
                "auto-compaction-mode",
                format!("{mode:?}: expected periodic or revision"),
            ))
        }
    };
    match parsed {
        Some(Retention::Period(period)) if period.is_zero() => Ok(Retention::Forever),
        Some(Retention::Revisions(0)) => Ok(Retention::Forever),
        Some(retention) => Ok(retention),
        None => Err(invalid(
            "auto-compaction-retention",
            format!(
                "{retention:?}: expected {} in {mode} mode",
                if mode == "periodic" {
                    "a duration such as 30m or 1h, or a number of hours"
                } else {
                    "a number of revisions"
                }
            ),
        )),
    }
}

pub fn parse_initial_cluster(value: &str) -> Result<Vec<InitialMember>, ConfigError> {
    let mut members: Vec<InitialMember> = Vec::new();
    for item in split_list(value) {
        let Some((name, url)) = item.split_once('=') else {
            return Err(invalid("initial-cluster", format!("{item}: expected name=url")));
        };
        let (name, url) = (name.trim(), url.trim());
        if name.is_empty() {
            return Err(invalid("initial-cluster", format!("{item}: empty member name")));
        }
        check_urls("initial-cluster", &[url.to_string()])?;
        match members.iter_mut().find(|member| member.name == name) {
            Some(member) => member.peer_urls.push(url.to_string()),
            None => members.push(InitialMember {
                name: name.to_string(),
                peer_urls: vec![url.to_string()],
            }),
        }
    }
    if members.is_empty() {
        return Err(invalid("initial-cluster", "no members"));
    }
    Ok(members)
}

impl TryFrom<ServerSettings> for NodeConfig {
    type Error = ConfigError;

    fn try_from(settings: ServerSettings) -> Result<Self, ConfigError> {
        if settings.name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        let client_listen = resolve_list("listen-client-urls", &settings.listen_client_urls)?;
        if client_listen.is_empty() {
            return Err(invalid("listen-client-urls", "at least one URL is needed"));
        }
        let advertise_client_urls = split_list(
            settings
                .advertise_client_urls
                .as_deref()
                .unwrap_or(&settings.listen_client_urls),
        );
        check_urls("advertise-client-urls", &advertise_client_urls)?;
        let peer_listen = resolve_list("listen-peer-urls", &settings.listen_peer_urls)?;
        if peer_listen.is_empty() {
            return Err(invalid("listen-peer-urls", "at least one URL is needed"));
        }
        let advertise_peer_urls = split_list(
            settings
                .initial_advertise_peer_urls
                .as_deref()
                .unwrap_or(&settings.listen_peer_urls),
        );
        check_urls("initial-advertise-peer-urls", &advertise_peer_urls)?;
        let initial_cluster = match &settings.initial_cluster {
            Some(value) => parse_initial_cluster(value)?,
            None => vec![InitialMember {
                name: settings.name.clone(),
                peer_urls: advertise_peer_urls.clone(),
            }],
        };
        let Some(me) = initial_cluster.iter().find(|member| member.name == settings.name) else {
            return Err(invalid(
                "initial-cluster",
                format!("has no member named {:?} (the --name of this node)", settings.name),
            ));
        };
        let mut mine = me.peer_urls.clone();
        let mut advertised = advertise_peer_urls.clone();
        mine.sort();
        advertised.sort();
        if mine != advertised {
            return Err(invalid(
                "initial-cluster",
                format!(
                    "lists {:?} for {:?} but --initial-advertise-peer-urls is {:?}",
                    me.peer_urls, settings.name, advertise_peer_urls
                ),
            ));
        }
        let join = split_list(settings.join.as_deref().unwrap_or_default());
        for url in &join {
            check_url("join", url)?;
        }
        let metrics_listen = resolve_list("listen-metrics-urls", &settings.listen_metrics_urls)?;
        let redis_listen = match settings.listen_redis_addr.as_deref() {
            None | Some("") => None,
            Some(address) => Some(resolve_address("listen-redis-addr", address)?),
        };
        let client_tls = tls_files(
            &CLIENT_TLS,
            &settings.cert_file,
            &settings.key_file,
            &settings.trusted_ca_file,
            settings.client_cert_auth,
        )?;
        let peer_tls = tls_files(
            &PEER_TLS,
            &settings.peer_cert_file,
            &settings.peer_key_file,
            &settings.peer_trusted_ca_file,
            settings.peer_client_cert_auth,
        )?;
        let client_needs = "--cert-file and --key-file";
        check_tls_urls(
            "listen-client-urls",
            &split_list(&settings.listen_client_urls),
            &client_tls,
            client_needs,
        )?;
        check_tls_urls(
            "advertise-client-urls",
            &advertise_client_urls,
            &client_tls,
            client_needs,
        )?;
        check_tls_urls(
            "listen-metrics-urls",
            &split_list(&settings.listen_metrics_urls),
            &client_tls,
            client_needs,
        )?;
        if settings.redis_tls && client_tls.is_none() {
            return Err(invalid("redis-tls", format!("needs {client_needs}")));
        }
        if settings.redis_tls && settings.listen_redis_addr.as_deref().unwrap_or_default().is_empty() {
            return Err(invalid("redis-tls", "needs --listen-redis-addr"));
        }
        check_tls_urls(
            "listen-peer-urls",
            &split_list(&settings.listen_peer_urls),
            &peer_tls,
            "--peer-cert-file and --peer-key-file",
        )?;
        if settings.heartbeat_interval == 0 {
            return Err(invalid("heartbeat-interval", "must be at least 1 ms"));
        }
        if settings.election_timeout < 5 * settings.heartbeat_interval {
            return Err(invalid(
                "election-timeout",
                format!(
                    "{} ms should be at least 5 times --heartbeat-interval ({} ms)",
                    settings.election_timeout, settings.heartbeat_interval
                ),
            ));
        }
        if settings.max_txn_ops == 0 {
            return Err(invalid("max-txn-ops", "must be at least 1"));
        }
        if settings.max_request_bytes == 0 || settings.max_request_bytes > 64 << 20 {
            return Err(invalid("max-request-bytes", "must be between 1 byte and 64 MiB"));
        }
        if settings.max_response_bytes < 1024 || settings.max_response_bytes > i32::MAX as usize {
            return Err(invalid("max-response-bytes", "must be between 1 KiB and 2 GiB - 1"));
        }
        if settings.max_watches_per_stream == 0 {
            return Err(invalid("max-watches-per-stream", "must be at least 1"));
        }
        if settings.snapshot_count == 0 {
            return Err(invalid("snapshot-count", "must be at least 1"));
        }
        let watch_progress_notify_interval = parse_duration(&settings.experimental_watch_progress_notify_interval)
            .filter(|interval| !interval.is_zero())
            .ok_or_else(|| {
                invalid(
                    "experimental-watch-progress-notify-interval",
                    format!(
                        "{:?}: expected a duration such as 500ms, 10s or 10m",
                        settings.experimental_watch_progress_notify_interval
                    ),
                )
            })?;
        if settings.auth_token != "simple" {
            return Err(invalid(
                "auth-token",
                format!(
                    "{:?}: Shoal serves simple tokens only (signed, checked by every member); jwt is not supported",
                    settings.auth_token
                ),
            ));
        }
        if !(4..=31).contains(&settings.bcrypt_cost) {
            return Err(invalid("bcrypt-cost", "must be between 4 and 31"));
        }
        if settings.auth_token_ttl == 0 {
            return Err(invalid("auth-token-ttl", "must be at least 1 second"));
        }
        let corrupt_check_interval = parse_duration(&settings.corrupt_check_time)
            .or_else(|| (settings.corrupt_check_time.trim() == "0").then_some(Duration::ZERO))
            .ok_or_else(|| {
                invalid(
                    "corrupt-check-time",
                    format!(
                        "{:?}: expected a duration such as 30s or 5m (0s: off)",
                        settings.corrupt_check_time
                    ),
                )
            })?;
        let corrupt_check_interval = (!corrupt_check_interval.is_zero()).then_some(corrupt_check_interval);
        let mut peer_dial_urls = std::collections::HashMap::new();
        if let Some(overrides) = &settings.experimental_peer_dial_urls {
            for member in parse_initial_cluster(overrides)
                .map_err(|error| invalid("experimental-peer-dial-urls", error.to_string()))?
            {
                peer_dial_urls.insert(member.name, member.peer_urls[0].clone());
            }
        }
        // Dialing another member over https checks its certificate against the peer CA
        // and shows ours: both are needed (a member alone dials no one).
        let dial_tls = peer_tls.as_ref().filter(|tls| tls.trusted_ca_file.is_some()).cloned();
        let dial_needs =
            "--peer-cert-file, --peer-key-file and --peer-trusted-ca-file (members dial each other over TLS)";
        check_tls_urls(
            "initial-cluster",
            initial_cluster
                .iter()
                .filter(|member| member.name != settings.name)
                .flat_map(|member| &member.peer_urls),
            &dial_tls,
            dial_needs,
        )?;
        check_tls_urls(
            "experimental-peer-dial-urls",
            peer_dial_urls.values(),
            &dial_tls,
            dial_needs,
        )?;
        let auto_compaction =
            parse_auto_compaction(&settings.auto_compaction_mode, &settings.auto_compaction_retention)?;
        let data_dir = settings
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.shoal", settings.name)));
        Ok(NodeConfig {
            name: settings.name,
            data_dir,
            client_listen,
            advertise_client_urls,
            peer_listen,
            advertise_peer_urls,
            initial_cluster,
            cluster_state: if join.is_empty() {
                settings.initial_cluster_state
            } else {
                ClusterState::Existing
            },
            cluster_token: settings.initial_cluster_token,
            join,
            metrics_listen,
            redis_listen,
            redis_tls: settings.redis_tls,
            client_tls,
            peer_tls,
            heartbeat_interval: Duration::from_millis(settings.heartbeat_interval),
            election_timeout: Duration::from_millis(settings.election_timeout),
            max_txn_ops: settings.max_txn_ops,
            max_request_bytes: settings.max_request_bytes,
            max_watches_per_stream: settings.max_watches_per_stream,
            max_response_bytes: settings.max_response_bytes,
            log_compaction_entries: settings.snapshot_count,
            log_catchup_entries: settings.snapshot_catchup_entries.min(settings.snapshot_count),
            split: SplitLimits {
                max_bytes: settings.range_max_bytes,
                max_keys: settings.range_max_keys,
            },
            watch_progress_notify_interval,
            quota_bytes: match settings.quota_backend_bytes {
                0 => crate::txn::admission::DEFAULT_QUOTA_BYTES,
                bytes => bytes,
            },
            corrupt_check_interval,
            storage_reserve_bytes: settings.storage_reserve_bytes,
            snapshot_send_rate: settings.snapshot_send_rate,
            auth_token_ttl: Duration::from_secs(settings.auth_token_ttl),
            bcrypt_cost: settings.bcrypt_cost,
            peer_dial_urls,
            initial_split_keys: settings
                .experimental_initial_split_keys
                .as_deref()
                .unwrap_or_default()
                .split(',')
                .filter(|key| !key.is_empty())
                .map(str::to_string)
                .collect(),
            storage_faults: settings.experimental_storage_faults.clone(),
            fail_at: match settings.experimental_fail_at.as_deref() {
                None | Some("") => None,
                Some("txn-after-prepare") => Some(crate::txn::FailPoint::AfterPrepare),
                Some("txn-after-primary-commit") => Some(crate::txn::FailPoint::AfterPrimaryCommit),
                Some(other) => {
                    return Err(invalid(
                        "experimental-fail-at",
                        format!("{other:?}: expected txn-after-prepare or txn-after-primary-commit"),
                    ))
                }
            },
            auto_compaction,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    }

    #[test]
    fn auto_compaction_reads_etcd_forms() {
        let hour = Duration::from_secs(3600);
        assert_eq!(parse_auto_compaction("periodic", "0").unwrap(), Retention::Forever);
        assert_eq!(parse_auto_compaction("periodic", "1").unwrap(), Retention::Period(hour));
        assert_eq!(
            parse_auto_compaction("periodic", "30m").unwrap(),
            Retention::Period(hour / 2)
        );
        assert_eq!(
            parse_auto_compaction("revision", "1000").unwrap(),
            Retention::Revisions(1000)
        );
        assert_eq!(parse_auto_compaction("revision", "0").unwrap(), Retention::Forever);
        let error = parse_auto_compaction("revision", "1h").unwrap_err().to_string();
        assert!(error.contains("a number of revisions"), "{error}");
        let error = parse_auto_compaction("hourly", "1").unwrap_err().to_string();
        assert!(error.contains("expected periodic or revision"), "{error}");
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "name = \"from-file\"\nmax-txn-ops = 7\n").unwrap();
        let settings = ServerSettings::load(Some(&file), Flags::default()).unwrap();
        assert_eq!((settings.name.as_str(), settings.max_txn_ops), ("from-file", 7));
        let settings = ServerSettings::load(
            Some(&file),
            Flags {
                name: Some("from-flag".into()),
            },
        )
        .unwrap();
        assert_eq!((settings.name.as_str(), settings.max_txn_ops), ("from-flag", 7));
    }

    #[test]
    fn environment_variables_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "max-txn-ops = 7\n").unwrap();
        // A variable no test or other code reads, so setting it cannot race.
        std::env::set_var("SHOAL_SNAPSHOT_CATCHUP_ENTRIES", "77");
        let settings = ServerSettings::load(Some(&file), Flags::default()).unwrap();
        std::env::remove_var("SHOAL_SNAPSHOT_CATCHUP_ENTRIES");
        assert_eq!((settings.max_txn_ops, settings.snapshot_catchup_entries), (7, 77));
    }

    #[test]
    fn unknown_file_settings_are_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "max-txn-opz = 7\n").unwrap();
        let error = ServerSettings::load(Some(&file), Flags::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("max-txn-opz"), "{error}");
    }

    #[test]
    fn the_initial_cluster_must_name_this_node_with_its_urls() {
        let mut settings = ServerSettings {
            name: "n2".into(),
            listen_peer_urls: "http://127.0.0.1:2480".into(),
            initial_cluster: Some("n1=http://127.0.0.1:2380,n2=http://127.0.0.1:2480".into()),
            ..Default::default()
        };
        let config = NodeConfig::try_from(settings.clone()).unwrap();
        assert_eq!(config.initial_cluster.len(), 2);
        assert_eq!(config.data_dir, PathBuf::from("n2.shoal"));
        settings.name = "n3".into();
        let error = NodeConfig::try_from(settings.clone()).unwrap_err().to_string();
        assert!(error.contains("no member named \"n3\""), "{error}");
        settings.name = "n2".into();
        settings.listen_peer_urls = "http://127.0.0.1:2999".into();
        assert!(NodeConfig::try_from(settings).is_err());
    }

    #[test]
    fn urls_other_members_dial_are_checked_without_resolving_them() {
        // A StatefulSet's peers do not resolve yet when the first pod starts.
        let settings = ServerSettings {
            name: "shoal-0".into(),
            listen_peer_urls: "http://127.0.0.1:2380".into(),
            initial_advertise_peer_urls: Some("http://shoal-0.shoal.default.svc.invalid:2380".into()),
            advertise_client_urls: Some("http://shoal-0.shoal.default.svc.invalid:2379".into()),
            initial_cluster: Some(
                "shoal-0=http://shoal-0.shoal.default.svc.invalid:2380,shoal-1=http://shoal-1.shoal.default.svc.invalid:2380"
                    .into(),
            ),
            ..Default::default()
        };
        let config = NodeConfig::try_from(settings.clone()).unwrap();
        assert_eq!(config.initial_cluster.len(), 2);
        for bad in [
            "shoal-0.shoal:2380",
            "http://shoal-0.shoal",
            "http://:2380",
            "http://a:b",
            "http://u@a:1",
        ] {
            let error = NodeConfig::try_from(ServerSettings {
                initial_cluster: Some(format!(
                    "shoal-0=http://shoal-0.shoal.default.svc.invalid:2380,shoal-1={bad}"
                )),
                ..settings.clone()
            })
            .unwrap_err()
            .to_string();
            assert!(
                error.starts_with("--initial-cluster: ") && error.contains(bad),
                "{bad}: {error}"
            );
        }
        // What this member listens on is still resolved, to be bound.
        let error = NodeConfig::try_from(ServerSettings {
            listen_peer_urls: "http://nowhere.invalid:2380".into(),
            ..settings
        })
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("--listen-peer-urls"), "{error}");
    }

    #[test]
    fn resolved_settings_print_as_a_config_file_that_reads_back() {
        let settings = ServerSettings {
            name: "n1".into(),
            max_txn_ops: 9,
            ..Default::default()
        };
        let config = NodeConfig::try_from(settings.clone()).unwrap();
        let text = settings.resolved(&config).to_toml().unwrap();
        assert!(text.contains("name = \"n1\""), "{text}");
        assert!(text.contains("data-dir = \"n1.shoal\""), "{text}");
        assert!(
            text.contains("initial-cluster = \"n1=http://127.0.0.1:2380\""),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("printed.toml");
        std::fs::write(&file, &text).unwrap();
        let again = ServerSettings::load(Some(&file), Flags::default()).unwrap();
        assert_eq!(again.max_txn_ops, 9);
        assert_eq!(again.initial_cluster.as_deref(), Some("n1=http://127.0.0.1:2380"));
    }

    #[test]
    fn urls_are_http_or_https() {
        assert!(resolve_url("x", "http://127.0.0.1:1").is_ok());
        assert!(resolve_url("x", "https://127.0.0.1:1").is_ok());
        assert!(resolve_url("x", "127.0.0.1:1").is_err());
        assert!(resolve_url("x", "ftp://127.0.0.1:1").is_err());
        assert!(resolve_url("x", "http://127.0.0.1").is_err());
    }

    fn tls_settings() -> ServerSettings {
        ServerSettings {
            name: "n1".into(),
            listen_client_urls: "https://127.0.0.1:2379".into(),
            listen_peer_urls: "https://127.0.0.1:2380".into(),
            listen_metrics_urls: "https://127.0.0.1:9090,http://127.0.0.1:9091".into(),
            cert_file: Some("node.crt".into()),
            key_file: Some("node.key".into()),
            trusted_ca_file: Some("ca.crt".into()),
            client_cert_auth: true,
            peer_cert_file: Some("peer.crt".into()),
            peer_key_file: Some("peer.key".into()),
            peer_trusted_ca_file: Some("ca.crt".into()),
            peer_client_cert_auth: true,
            ..Default::default()
        }
    }

    fn refusal(settings: ServerSettings) -> String {
        NodeConfig::try_from(settings).unwrap_err().to_string()
    }

    #[test]
    fn https_urls_take_the_tls_files_of_their_side() {
        let config = NodeConfig::try_from(tls_settings()).unwrap();
        assert!(config.client_listen.iter().all(|listen| listen.tls));
        assert!(config.peer_listen.iter().all(|listen| listen.tls));
        assert_eq!(
            config
                .metrics_listen
                .iter()
                .map(|listen| listen.tls)
                .collect::<Vec<_>>(),
            [true, false]
        );
        let client = config.client_tls.unwrap();
        assert_eq!(
            (
                client.cert_file,
                client.key_file,
                client.trusted_ca_file,
                client.client_cert_auth
            ),
            ("node.crt".into(), "node.key".into(), Some("ca.crt".into()), true)
        );
        let peer = config.peer_tls.unwrap();
        assert_eq!((peer.cert_file, peer.flag_prefix), ("peer.crt".into(), "peer-"));
        assert_eq!(config.advertise_peer_urls, ["https://127.0.0.1:2380"]);
    }

    #[test]
    fn missing_tls_files_are_refused_naming_the_setting() {
        let message = refusal(ServerSettings {
            cert_file: None,
            key_file: None,
            trusted_ca_file: None,
            client_cert_auth: false,
            ..tls_settings()
        });
        assert!(
            message.contains("--listen-client-urls") && message.contains("--cert-file"),
            "{message}"
        );
        let message = refusal(ServerSettings {
            key_file: None,
            ..tls_settings()
        });
        assert!(message.starts_with("--cert-file: needs --key-file"), "{message}");
        let message = refusal(ServerSettings {
            peer_cert_file: None,
            ..tls_settings()
        });
        assert!(
            message.starts_with("--peer-key-file: needs --peer-cert-file"),
            "{message}"
        );
        let message = refusal(ServerSettings {
            trusted_ca_file: None,
            ..tls_settings()
        });
        assert!(
            message.starts_with("--client-cert-auth: needs --trusted-ca-file"),
            "{message}"
        );
        // Members dial each other over https: the peer CA is needed to check them...
        let message = refusal(ServerSettings {
            peer_trusted_ca_file: None,
            peer_client_cert_auth: false,
            initial_cluster: Some("n1=https://127.0.0.1:2380,n2=https://127.0.0.1:2480".into()),
            ..tls_settings()
        });
        assert!(
            message.starts_with("--initial-cluster: https://127.0.0.1:2480")
                && message.contains("--peer-trusted-ca-file"),
            "{message}"
        );
        // ...but a member alone dials no one.
        assert!(NodeConfig::try_from(ServerSettings {
            peer_trusted_ca_file: None,
            peer_client_cert_auth: false,
            ..tls_settings()
        })
        .is_ok());
        let message = refusal(ServerSettings {
            listen_client_urls: "http://127.0.0.1:2379".into(),
            listen_metrics_urls: String::new(),
            cert_file: None,
            key_file: None,
            ..tls_settings()
        });
        assert!(message.starts_with("--client-cert-auth"), "{message}");
        let message = refusal(ServerSettings {
            listen_client_urls: "http://127.0.0.1:2379".into(),
            listen_metrics_urls: String::new(),
            cert_file: None,
            key_file: None,
            client_cert_auth: false,
            ..tls_settings()
        });
        assert!(message.starts_with("--trusted-ca-file"), "{message}");
    }

    #[test]
    fn tls_settings_come_from_file_and_environment_like_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "cert-file = \"/etc/shoal/node.crt\"\nclient-cert-auth = true\npeer-client-cert-auth = true\n",
        )
        .unwrap();
        // Variables no other test reads, so setting them cannot race.
        std::env::set_var("SHOAL_PEER_TRUSTED_CA_FILE", "/etc/shoal/ca.crt");
        std::env::set_var("SHOAL_PEER_CLIENT_CERT_AUTH", "false");
        let settings = ServerSettings::load(Some(&file), Flags::default()).unwrap();
        std::env::remove_var("SHOAL_PEER_TRUSTED_CA_FILE");
        std::env::remove_var("SHOAL_PEER_CLIENT_CERT_AUTH");
        assert_eq!(settings.cert_file, Some(PathBuf::from("/etc/shoal/node.crt")));
        assert!(settings.client_cert_auth);
        assert_eq!(settings.peer_trusted_ca_file, Some(PathBuf::from("/etc/shoal/ca.crt")));
        assert!(!settings.peer_client_cert_auth);
    }
}
