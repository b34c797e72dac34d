//! `shoal snapshot restore|status`: the offline half of backups, as `etcdutl snapshot`
//! has it (`etcdctl snapshot save` against a member writes the file).

use crate::backup::format::{self, FileStatus};
use crate::cli::ServerFlags;
use crate::config::{NodeConfig, ServerSettings};
use crate::ctl::WriteOut;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Create a member's data directory for a new cluster from a backup file (run once
    /// per member, each with its --name; then start each with `shoal server`).
    Restore(RestoreArgs),
    /// Check a backup file whole and print its revision, keys, size and hash.
    Status(StatusArgs),
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The backup file (`etcdctl snapshot save FILE` wrote it)
    pub file: PathBuf,
    /// Human-readable name of the member being restored [default: default]
    #[arg(long)]
    pub name: Option<String>,
    /// Where the member's data goes; must not exist yet [default: <name>.shoal]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Every member of the new cluster, NAME=PEER-URL,... [default: this member alone]
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// The new cluster's token [default: shoal-cluster]
    #[arg(long)]
    pub initial_cluster_token: Option<String>,
    /// This member's peer URLs, as in --initial-cluster [default: http://127.0.0.1:2380]
    #[arg(long)]
    pub initial_advertise_peer_urls: Option<String>,
    /// Restore even if the file's SHA-256 trailer is missing or does not match
    #[arg(long)]
    pub skip_hash_check: bool,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The backup file
    pub file: PathBuf,
    /// Output: table or json (as etcdctl's --write-out)
    #[arg(long, short = 'w', value_enum, default_value_t = WriteOut::Table)]
    pub write_out: WriteOut,
}

/// Runs the command and returns what it prints.
pub fn run(args: &SnapshotArgs) -> anyhow::Result<String> {
    match &args.command {
        SnapshotCommand::Restore(restore) => {
            let flags = ServerFlags {
                name: restore.name.clone(),
                data_dir: restore.data_dir.clone(),
                initial_cluster: restore.initial_cluster.clone(),
                initial_cluster_token: restore.initial_cluster_token.clone(),
                initial_advertise_peer_urls: restore.initial_advertise_peer_urls.clone(),
                ..ServerFlags::default()
            };
            let config = NodeConfig::try_from(ServerSettings::load(None, &flags)?)?;
            let summary = crate::server::restore::restore(&config, &restore.file, restore.skip_hash_check)?;
            let mut text = format!(
                "restored {} keys and {} leases at revision {} into {} (member {:?}); start it with \
                 `shoal server` and the same --name, --data-dir and --initial-cluster\n",
                summary.keys,
                summary.leases,
                summary.revision,
                config.data_dir.display(),
                config.name,
            );
            if summary.leases_missing > 0 {
                text.push_str(&format!(
                    "{} leases that keys name were revoked after the backup's revision: they expire a second \
                     after the cluster starts, with their keys\n",
                    summary.leases_missing
                ));
            }
            Ok(text)
        }
        SnapshotCommand::Status(status) => {
            let file = format::status(&status.file)?;
            Ok(match status.write_out {
                WriteOut::Json => format!("{}\n", serde_json::to_string(&json_status(&file))?),
                WriteOut::Table => status_table(&file),
            })
        }
    }
}

/// etcd's hash column is a 32-bit number; here it is the SHA-256's first four bytes.
fn short_hash(file: &FileStatus) -> u32 {
    u32::from_str_radix(file.sha256.get(..8).unwrap_or("0"), 16).unwrap_or(0)
}

/// etcdctl's JSON field names, and Shoal's extra figures beside them.
fn json_status(file: &FileStatus) -> serde_json::Value {
    serde_json::json!({
        "hash": short_hash(file),
        "revision": file.revision,
        "totalKey": file.keys,
        "totalSize": file.size,
        "leases": file.leases,
        "sha256": file.sha256,
        "clusterId": format!("{:x}", file.cluster_id),
        "createdUnixMs": file.created_unix_ms,
        "shoalVersion": file.shoal_version,
    })
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The table `etcdctl snapshot status` prints.
fn status_table(file: &FileStatus) -> String {
    let cells = [
        format!("{:08x}", short_hash(file)),
        file.revision.to_string(),
        file.keys.to_string(),
        human_size(file.size),
    ];
    let titles = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
    let widths: Vec<usize> = titles
        .iter()
        .zip(&cells)
        .map(|(title, cell)| title.len().max(cell.len()) + 2)
        .collect();
    let rule: String = widths
        .iter()
        .map(|width| format!("+{}", "-".repeat(*width)))
        .collect::<String>()
        + "+\n";
    let row = |values: &[&str]| -> String {
        values
            .iter()
            .zip(&widths)
            .map(|(value, width)| format!("|{value:^width$}", width = *width))
            .collect::<String>()
            + "|\n"
    };
    let title_row = row(&titles);
    let cell_refs: Vec<&str> = cells.iter().map(String::as_str).collect();
    format!("{rule}{title_row}{rule}{}{rule}", row(&cell_refs))
}
