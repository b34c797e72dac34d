//! A guard over fjall's journal recovery. fjall replays its journals at open and, at the
//! first entry it cannot decode, takes the rest for a write a crash tore and cuts the file
//! there. A torn write is only ever the end of what was written; a byte damaged in the
//! middle of a journal also stops decoding, and then every later batch (fsynced, maybe
//! acknowledged) would be dropped without an error. So the written part of every journal
//! is read before the open, and if fjall cut away a part that holds a whole batch (the
//! end marker every complete batch carries: tag 3, its checksum, the magic bytes), the
//! journal was damaged, not torn: the files are put back as they were and the open fails.
//!
//! A crash that loses power may, rarely, leave a later page written and an earlier one
//! not; that looks the same and costs a rebuild of the member, never its data.

use super::StorageError;
use std::path::{Path, PathBuf};

/// fjall's end-of-batch marker: tag 3, then an 8-byte checksum, then these bytes.
const END_TAG: u8 = 3;
const MAGIC: [u8; 4] = [b'F', b'J', b'L', 3];

/// The journals of a database folder, as they were before recovery.
pub struct Journals {
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Journals {
    /// Reads the written part (up to the last non-zero byte) of every journal.
    pub fn read(db: &Path) -> std::io::Result<Journals> {
        let mut files = Vec::new();
        for path in journal_paths(db) {
            let mut bytes = std::fs::read(&path)?;
            let written = bytes.iter().rposition(|byte| *byte != 0).map_or(0, |last| last + 1);
            bytes.truncate(written);
            files.push((path, bytes));
        }
        Ok(Journals { files })
    }

    /// The journal files, for an error message.
    pub fn describe(&self, db: &Path) -> String {
        if self.files.is_empty() {
            return format!("the journal in {}", db.display());
        }
        let names: Vec<String> = self.files.iter().map(|(path, _)| path.display().to_string()).collect();
        names.join(", ")
    }

    /// After recovery: whether fjall cut a whole batch from any journal (the error names
    /// the file).
    pub fn check(&self) -> Result<(), StorageError> {
        for (path, before) in &self.files {
            let Ok(now) = std::fs::metadata(path).map(|metadata| metadata.len() as usize) else {
                continue; // replayed and removed
            };
            let Some(cut) = before.get(now..) else { continue };
            if let Some(offset) = end_marker(cut) {
                return Err(StorageError::Damaged(format!(
                    "{} (the write-ahead journal: the newest Raft log entries and applied state) cannot be \
                     read past byte {now}, yet a complete batch follows at byte {}: the journal is damaged, \
                     not torn by a crash",
                    path.display(),
                    now + offset
                )));
            }
        }
        Ok(())
    }
}

impl Journals {
    /// Puts every journal back as it was read (with the database closed), so the next
    /// start finds the same damage instead of a journal already cut short.
    pub fn restore(&self) {
        for (path, bytes) in &self.files {
            if let Err(error) = std::fs::write(path, bytes) {
                tracing::error!(file = %path.display(), %error, "cannot put a damaged journal back as it was");
            }
        }
    }
}

/// fjall's journal files in a database folder, in name order.
pub fn journal_paths(db: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(db)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "jnl"))
        .collect();
    paths.sort();
    paths
}

/// Where in `bytes` a batch's end marker lies, if one does.
fn end_marker(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(13)
        .position(|window| window[0] == END_TAG && window[9..13] == MAGIC)
}
