//! `shoal snapshot restore`: a member's data directory for a new cluster, made from a
//! backup file, as `etcdutl snapshot restore` makes one. Every member of the new cluster
//! is restored from the same file with its own `--name` (and the same
//! `--initial-cluster` and token), then started with `shoal server` on that directory.

use super::identity::{self, IdentityError};
use crate::backup::format::{self, FormatError, Reader};
use crate::config::{ClusterState, NodeConfig};
use crate::proto::shoal::backup::frame::Frame;
use crate::range::restore::{RestoreError, RestoreSummary, RestoreWriter};
use crate::storage::{Engine, FjallEngine, StorageError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RestoreFailure {
    #[error("data-dir {0:?} exists")]
    Exists(PathBuf),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{path} is damaged: {detail}")]
    Content { path: PathBuf, detail: String },
}

/// Restores `file` into `config.data_dir`, which must not exist yet (or be empty).
/// Checks the file's SHA-256 trailer first unless `skip_hash_check`. A failure leaves
/// no data directory behind.
pub fn restore(config: &NodeConfig, file: &Path, skip_hash_check: bool) -> Result<RestoreSummary, RestoreFailure> {
    let data_dir = &config.data_dir;
    let occupied = match std::fs::read_dir(data_dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => return Err(error.into()),
    };
    if occupied {
        return Err(RestoreFailure::Exists(data_dir.clone()));
    }
    if !skip_hash_check {
        format::verify(file)?;
    }
    // Checked before anything is created: the file is ours and starts with a header.
    let mut reader = Reader::open(file)?;
    let header = match reader.next_frame()? {
        Some(Frame::Header(header)) => header,
        _ => {
            return Err(RestoreFailure::Content {
                path: file.to_path_buf(),
                detail: "it does not start with a header".into(),
            })
        }
    };
    std::fs::create_dir_all(data_dir)?;
    let outcome = write(config, reader, header.revision);
    if outcome.is_err() {
        let _ = std::fs::remove_dir_all(data_dir);
    }
    outcome
}

fn write(config: &NodeConfig, mut reader: Reader, revision: i64) -> Result<RestoreSummary, RestoreFailure> {
    let config = NodeConfig {
        cluster_state: ClusterState::New,
        ..config.clone()
    };
    let engine: Arc<dyn Engine> = Arc::new(FjallEngine::open(&config.data_dir.join("db"))?);
    let loaded = identity::load_or_create(engine.as_ref(), &config, false)?;
    let mut writer = RestoreWriter::new(engine.clone(), loaded.identity.initial_members.clone(), revision)?;
    // The reader checks the frames' order and that the end counts what came before.
    while let Some(frame) = reader.next_frame()? {
        match frame {
            Frame::Key(kv) => writer.key(kv)?,
            Frame::Lease(lease) => writer.lease(lease.id, lease.ttl),
            Frame::Auth(auth) => writer.auth(auth),
            Frame::Header(_) | Frame::End(_) => {}
        }
    }
    Ok(writer.finish()?)
}
