//! `shoal ctl`: operator views of a running cluster, over its client URLs (the same
//! `--endpoints` and TLS flags as etcdctl).

use crate::http_probe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long one member gets to answer before the next endpoint is tried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// Client URLs of members, comma-separated; the first that answers is asked.
    #[arg(long, global = true, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// CA bundle that signed the members' certificates (https endpoints).
    #[arg(long, global = true)]
    pub cacert: Option<PathBuf>,
    /// Client certificate, for members that require one.
    #[arg(long, global = true, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, global = true, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Output: table or json (as etcdctl's --write-out).
    #[arg(long, short = 'w', global = true, value_enum, default_value_t = WriteOut::Table)]
    pub write_out: WriteOut,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOut {
    Table,
    Json,
}

#[derive(clap::Subcommand, Debug)]
pub enum CtlCommand {
    /// The data ranges as a member holds them: span, epoch, replicas, leader, keys,
    /// bytes (`GET /v1/ranges`).
    Ranges,
    /// The members with what gossip says of them: state (alive, suspect, down), gossip
    /// address, learner, and load (ranges, leaders, bytes) (`GET /v1/nodes`).
    Nodes,
    /// Offline, on a stopped member whose data is damaged: sets its storage aside
    /// (renamed, not deleted) so that at its next start, with its usual flags, it takes
    /// every range again from its peers. It votes in no range until it holds everything
    /// it may once have acknowledged there.
    RebuildMember {
        /// The member's data folder (`--data-dir`).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// Sets `data_dir/db` aside as `db.damaged-<seconds since 1970>` and leaves the request
/// the server acts on at its next start (`server::rebuild`).
fn rebuild_member(data_dir: &std::path::Path) -> Result<String, CtlError> {
    let db = data_dir.join("db");
    let request = data_dir.join(crate::server::rebuild::REQUEST_FILE);
    if !db.exists() && !request.exists() {
        return Err(CtlError::Rebuild(format!(
            "{} holds no member's storage (no db folder)",
            data_dir.display()
        )));
    }
    // fjall holds this lock while a server has the storage open.
    if let Ok(lock) = std::fs::File::open(db.join("lock")) {
        if lock.try_lock().is_err() {
            return Err(CtlError::Rebuild(format!(
                "a server is running on {}: stop it first",
                data_dir.display()
            )));
        }
    }
    let mut aside = None;
    if db.exists() {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or(0);
        let target = data_dir.join(format!("db.damaged-{seconds}"));
        std::fs::rename(&db, &target)
            .map_err(|error| CtlError::Rebuild(format!("moving {}: {error}", db.display())))?;
        aside = Some(target);
    }
    let _ = std::fs::remove_dir_all(data_dir.join("snap"));
    std::fs::write(&request, b"")
        .map_err(|error| CtlError::Rebuild(format!("writing {}: {error}", request.display())))?;
    let mut text = String::new();
    if let Some(aside) = aside {
        text.push_str(&format!(
            "The damaged storage is now {} (delete it once the member is back).\n",
            aside.display()
        ));
    }
    text.push_str(
        "Start the member again with its usual flags: it takes every range from its peers \
         and votes again once it holds what it held.\n",
    );
    Ok(text)
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Rebuild(String),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0} is not a URL with a host and a port")]
    BadEndpoint(String),
    #[error("no endpoint answered: {0}")]
    Unreachable(String),
    #[error("{endpoint} answered {status}: {body}")]
    Refused {
        endpoint: String,
        status: u16,
        body: String,
    },
    #[error("{endpoint} sent an answer that is not the expected JSON: {detail}")]
    BadAnswer { endpoint: String, detail: String },
}

/// Runs the command and returns what it prints.
pub async fn run(args: &CtlArgs) -> Result<String, CtlError> {
    match args.command {
        CtlCommand::RebuildMember { ref data_dir } => rebuild_member(data_dir),
        CtlCommand::Nodes => {
            let (endpoint, body) = fetch(args, "/v1/nodes").await?;
            let nodes: Vec<NodeInfo> = serde_json::from_str(&body).map_err(|error| CtlError::BadAnswer {
                endpoint,
                detail: error.to_string(),
            })?;
            Ok(match args.write_out {
                WriteOut::Json => format!("{body}\n"),
                WriteOut::Table => nodes_table(&nodes),
            })
        }
        CtlCommand::Ranges => {
            let (endpoint, body) = fetch(args, "/v1/ranges").await?;
            let ranges: Vec<RangeInfo> = serde_json::from_str(&body).map_err(|error| CtlError::BadAnswer {
                endpoint,
                detail: error.to_string(),
            })?;
            Ok(match args.write_out {
                WriteOut::Json => format!("{body}\n"),
                WriteOut::Table => ranges_table(&ranges),
            })
        }
    }
}

/// The body of `GET path` from the first endpoint that answers 200.
async fn fetch(args: &CtlArgs, path: &str) -> Result<(String, String), CtlError> {
    let tls = match (&args.cacert, &args.cert, &args.key) {
        (None, None, None) if !args.endpoints.iter().any(|url| crate::tls::is_https(url)) => None,
        (cacert, cert, key) => {
            let roots = match cacert {
                Some(path) => crate::tls::load_roots("cacert", path)?,
                None => rustls::RootCertStore::empty(),
            };
            let certificate = match (cert, key) {
                (Some(cert), Some(key)) => Some(Arc::new(crate::tls::ReloadingCertificate::load(
                    ("cert", cert),
                    ("key", key),
                    crate::tls::provider(),
                    crate::tls::RELOAD_CHECK_INTERVAL,
                )?)),
                _ => None,
            };
            Some(crate::tls::client_config(roots, certificate)?)
        }
    };
    let mut failures = Vec::new();
    for endpoint in &args.endpoints {
        let uri: http::Uri = endpoint.parse().map_err(|_| CtlError::BadEndpoint(endpoint.clone()))?;
        let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
            return Err(CtlError::BadEndpoint(endpoint.clone()));
        };
        let secure = crate::tls::is_https(endpoint).then_some(tls.as_ref()).flatten();
        match http_probe::get_from(host, port, path, REQUEST_TIMEOUT, secure).await {
            Ok((200, body)) => return Ok((endpoint.clone(), body)),
            Ok((status, body)) => {
                return Err(CtlError::Refused {
                    endpoint: endpoint.clone(),
                    status,
                    body,
                })
            }
            Err(error) => failures.push(format!("{endpoint}: {error}")),
        }
    }
    Err(CtlError::Unreachable(failures.join("; ")))
}

#[derive(serde::Deserialize)]
struct RangeInfo {
    id: u64,
    start_key: String,
    end_key: String,
    epoch: u64,
    replicas: Vec<String>,
    leader: String,
    keys: u64,
    bytes: u64,
}

#[derive(serde::Deserialize)]
struct NodeInfo {
    id: String,
    name: String,
    learner: bool,
    gossip: GossipInfo,
    load: Option<LoadInfo>,
}

#[derive(serde::Deserialize)]
struct GossipInfo {
    addr: Option<String>,
    state: String,
}

#[derive(serde::Deserialize)]
struct LoadInfo {
    ranges: u64,
    leaders: u64,
    bytes: u64,
}

fn nodes_table(nodes: &[NodeInfo]) -> String {
    let header = [
        "ID",
        "NAME",
        "STATE",
        "GOSSIP ADDR",
        "LEARNER",
        "RANGES",
        "LEADERS",
        "BYTES",
    ]
    .map(String::from);
    let rows: Vec<[String; 8]> = nodes
        .iter()
        .map(|node| {
            let load = |pick: fn(&LoadInfo) -> u64| {
                node.load
                    .as_ref()
                    .map_or("-".to_string(), |load| pick(load).to_string())
            };
            [
                node.id.clone(),
                node.name.clone(),
                node.gossip.state.clone(),
                node.gossip.addr.clone().unwrap_or_else(|| "-".to_string()),
                node.learner.to_string(),
                load(|load| load.ranges),
                load(|load| load.leaders),
                load(|load| load.bytes),
            ]
        })
        .collect();
    table(&header, &rows)
}

fn ranges_table(ranges: &[RangeInfo]) -> String {
    let header = ["RANGE", "START", "END", "EPOCH", "REPLICAS", "LEADER", "KEYS", "BYTES"].map(String::from);
    let rows: Vec<[String; 8]> = ranges
        .iter()
        .map(|range| {
            [
                range.id.to_string(),
                show_key(&range.start_key, "(first)"),
                show_key(&range.end_key, "(last)"),
                range.epoch.to_string(),
                range.replicas.join(","),
                if range.leader == "0" {
                    "(none)".to_string()
                } else {
                    range.leader.clone()
                },
                range.keys.to_string(),
                range.bytes.to_string(),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// A range bound as people read it: an etcd key in quotes (bytes outside printable
/// ASCII escaped), another namespace's key in hex, `unbounded` for an empty bound.
fn show_key(base64_key: &str, unbounded: &str) -> String {
    use base64::Engine as _;
    let Ok(key) = base64::engine::general_purpose::STANDARD.decode(base64_key) else {
        return format!("(base64 {base64_key})");
    };
    match key.split_first() {
        None => unbounded.to_string(),
        Some((&crate::storage::keys::namespace::ETCD, etcd_key)) => {
            format!("\"{}\"", etcd_key.escape_ascii())
        }
        Some(_) => key.iter().map(|byte| format!("{byte:02x}")).collect(),
    }
}

/// etcdctl's table look: a bordered grid.
fn table<const N: usize>(header: &[String; N], rows: &[[String; N]]) -> String {
    let mut widths = header.each_ref().map(|cell| cell.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let rule: String = widths
        .iter()
        .map(|width| format!("+{}", "-".repeat(width + 2)))
        .collect::<String>()
        + "+\n";
    let line = |cells: &[String; N]| -> String {
        cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("| {cell:<width$} "))
            .collect::<String>()
            + "|\n"
    };
    let mut out = rule.clone();
    out.push_str(&line(header));
    out.push_str(&rule);
    for row in rows {
        out.push_str(&line(row));
    }
    out.push_str(&rule);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_read_as_etcd_keys() {
        assert_eq!(show_key("", "(first)"), "(first)");
        assert_eq!(show_key("AQ==", "(first)"), "\"\"");
        assert_eq!(show_key("AWZvbw==", "(last)"), "\"foo\"");
        assert_eq!(show_key("AWEA/w==", "(last)"), "\"a\\x00\\xff\"");
        assert_eq!(show_key("AgE=", "(last)"), "0201");
    }

    #[test]
    fn a_table_has_aligned_columns() {
        let header = ["A".to_string(), "LONGER".to_string()];
        let rows = [["wide cell".to_string(), "x".to_string()]];
        let text = table(&header, &rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines.iter().all(|line| line.len() == lines[0].len()), "{text}");
        assert_eq!(lines[1], "| A         | LONGER |");
    }
}
