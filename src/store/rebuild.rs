//! A member rebuilt from its peers (`shoal ctl rebuild-member`) starts with empty
//! storage, yet it may once have acknowledged log entries that a quorum counted on. Until
//! it holds them again its vote could elect a leader that lacks them, so while the
//! marker kept here is set every replica withholds its vote (`Replica::votes_withheld`),
//! and a task proposes a fence in each range (`server::rebuild`); a fence applied here
//! comes after every entry this member could have acknowledged before, so the range votes
//! again. Once every range is fenced the marker goes. A crash in between keeps the
//! marker, and the next start fences every range again.

use crate::storage::{Durability, Engine, Space, StorageError, WriteBatch};

const REBUILDING_KEY: &[u8] = b"rebuilding";

pub fn is_rebuilding(engine: &dyn Engine) -> Result<bool, StorageError> {
    Ok(engine.get(Space::NodeMeta, REBUILDING_KEY)?.is_some())
}

/// Records, durably, that this member is being rebuilt.
pub fn start(engine: &dyn Engine) -> Result<(), StorageError> {
    let mut batch = WriteBatch::new();
    batch.put(Space::NodeMeta, REBUILDING_KEY.to_vec(), Vec::new());
    engine.write(batch, Durability::Sync)
}

/// Records, durably, that every range is fenced.
pub fn finish(engine: &dyn Engine) -> Result<(), StorageError> {
    let mut batch = WriteBatch::new();
    batch.delete(Space::NodeMeta, REBUILDING_KEY.to_vec());
    engine.write(batch, Durability::Sync)
}
