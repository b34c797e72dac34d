//! Storage faults on purpose, for tests and `shoal chaos` (`--experimental-storage-faults
//! FILE`): an [`Engine`] wrapper that fails syncs, writes or reads as a failing disk
//! would, switched on and off at run time by what `FILE` holds, so a test can show that a
//! node never acknowledges what it could not make durable and recovers when the disk
//! does.
//!
//! `FILE` holds words separated by white space; a missing or empty file means no faults:
//! - `sync`: a batch that must be synced fails with EIO and reaches nothing (the
//!   strictest reading of a failed fsync: what it covered is gone);
//! - `write`: every write fails with ENOSPC, as on a full volume;
//! - `read`: every read fails with EIO.
//!
//! Once a change is in force, the engine copies the file's words to `FILE` with the
//! extension `applied`.

use super::{Durability, Engine, KeyRange, ReadView, Result, ScanIter, Space, StorageError, WriteBatch};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the control file is read again.
const POLL: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Faults {
    sync: AtomicBool,
    write: AtomicBool,
    read: AtomicBool,
}

impl Faults {
    fn load(&self, text: &str) {
        let words: Vec<&str> = text.split_whitespace().collect();
        self.sync.store(words.contains(&"sync"), Ordering::Relaxed);
        self.write.store(words.contains(&"write"), Ordering::Relaxed);
        self.read.store(words.contains(&"read"), Ordering::Relaxed);
    }

    fn check_read(&self) -> Result<()> {
        if self.read.load(Ordering::Relaxed) {
            return Err(injected(rustix::io::Errno::IO, "read"));
        }
        Ok(())
    }
}

fn injected(errno: rustix::io::Errno, what: &str) -> StorageError {
    let error = std::io::Error::from_raw_os_error(errno.raw_os_error());
    StorageError::Io(std::io::Error::new(
        error.kind(),
        format!("injected {what} fault: {error}"),
    ))
}

/// The engine with faults switched by a control file.
pub struct FaultyEngine {
    inner: Arc<dyn Engine>,
    faults: Arc<Faults>,
}

impl FaultyEngine {
    /// Wraps `inner`; a thread reads `control` every 50 ms for as long as the engine lives.
    pub fn new(inner: Arc<dyn Engine>, control: PathBuf) -> std::io::Result<FaultyEngine> {
        let faults = Arc::new(Faults::default());
        faults.load(&std::fs::read_to_string(&control).unwrap_or_default());
        let watched: Weak<Faults> = Arc::downgrade(&faults);
        std::thread::Builder::new().name("shoal-faults".into()).spawn(move || {
            let mut applied = None;
            let confirm = control.with_extension("applied");
            while let Some(faults) = watched.upgrade() {
                let text = std::fs::read_to_string(&control).unwrap_or_default();
                faults.load(&text);
                drop(faults);
                // Tells whoever switched the faults that they are in force.
                if applied.as_ref() != Some(&text) && std::fs::write(&confirm, &text).is_ok() {
                    applied = Some(text);
                }
                std::thread::sleep(POLL);
            }
        })?;
        Ok(FaultyEngine { inner, faults })
    }
}

impl ReadView for FaultyEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.faults.check_read()?;
        self.inner.get(space, key)
    }

    fn scan(&self, space: Space, range: &KeyRange, reverse: bool) -> ScanIter {
        scan_with_faults(&self.faults, self.inner.scan(space, range, reverse))
    }
}

fn scan_with_faults(faults: &Arc<Faults>, inner: ScanIter) -> ScanIter {
    let faults = faults.clone();
    Box::new(inner.map(move |pair| {
        faults.check_read()?;
        pair
    }))
}

impl Engine for FaultyEngine {
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        if self.faults.write.load(Ordering::Relaxed) {
            return Err(injected(rustix::io::Errno::NOSPC, "write"));
        }
        if durability == Durability::Sync && self.faults.sync.load(Ordering::Relaxed) {
            return Err(injected(rustix::io::Errno::IO, "fsync"));
        }
        self.inner.write(batch, durability)
    }

    fn snapshot(&self) -> Arc<dyn ReadView> {
        Arc::new(FaultySnapshot {
            inner: self.inner.snapshot(),
            faults: self.faults.clone(),
        })
    }

    fn disk_space_bytes(&self) -> u64 {
        self.inner.disk_space_bytes()
    }
}

struct FaultySnapshot {
    inner: Arc<dyn ReadView>,
    faults: Arc<Faults>,
}

impl ReadView for FaultySnapshot {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.faults.check_read()?;
        self.inner.get(space, key)
    }

    fn scan(&self, space: Space, range: &KeyRange, reverse: bool) -> ScanIter {
        scan_with_faults(&self.faults, self.inner.scan(space, range, reverse))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{FaultKind, FjallEngine};

    #[test]
    fn faults_follow_the_control_file() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("faults");
        let inner: Arc<dyn Engine> = Arc::new(FjallEngine::open(&dir.path().join("db")).unwrap());
        let engine = FaultyEngine::new(inner, control.clone()).unwrap();
        let put = |key: &[u8]| {
            let mut batch = WriteBatch::new();
            batch.put(Space::KvLatest, key.to_vec(), b"v".to_vec());
            batch
        };
        engine.write(put(b"a"), Durability::Sync).unwrap();

        engine.faults.load("sync");
        let error = engine.write(put(b"b"), Durability::Sync).unwrap_err();
        assert_eq!(error.kind(), FaultKind::Io, "{error}");
        assert!(error.is_recoverable_by_restart());
        engine.write(put(b"c"), Durability::Buffered).unwrap();
        assert_eq!(engine.get(Space::KvLatest, b"b").unwrap(), None, "a failed sync wrote");

        engine.faults.load("write read");
        assert_eq!(
            engine.write(put(b"d"), Durability::Buffered).unwrap_err().kind(),
            FaultKind::NoSpace
        );
        assert!(engine.get(Space::KvLatest, b"a").is_err());
        let range = KeyRange::new(Vec::new(), None);
        assert!(engine
            .snapshot()
            .scan(Space::KvLatest, &range, false)
            .any(|pair| pair.is_err()));

        // The file switches them; the watcher thread picks it up.
        std::fs::write(&control, "").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while engine.get(Space::KvLatest, b"a").is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the control file was not read again"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(engine.get(Space::KvLatest, b"c").unwrap(), Some(b"v".to_vec()));
    }
}
