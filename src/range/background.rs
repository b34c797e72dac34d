//! Long work taken off the store loop, so that no range on the node stops sending
//! heartbeats or committing while it runs: writing a received snapshot over a range's
//! data, and physically removing compacted history.
//!
//! The store loop applies a compaction by storing the new compaction point (from then on
//! no read may ask for what it removes) and hands the range and revision to the worker,
//! one thread for the node. The worker removes history over a pinned snapshot of the
//! engine, in bounded batches, while the range goes on applying. This is safe without
//! locks: applying only ever writes revisions above the current one, so it never touches
//! what the worker deletes (versions at or below the compaction point that are not the
//! newest of their key there), and which version of a key is newest at or below the
//! point cannot change. Once done, the worker stores a marker; a range that loads with a
//! compaction point above its marker (a crash, a snapshot taken mid-way) hands the work
//! over again.
//!
//! The queue holds one entry per range, the highest revision asked for: a limit on it
//! by construction, and a later compaction subsumes an earlier one.
//!
//! A snapshot install goes first: its replica takes no Raft input until it is done, so
//! a removal under way yields between batches and is taken up again afterwards. Readers
//! never see an install half done: the range's install gate
//! ([`super::replica::RangeStatus::whole_view`]) is closed from before the first write
//! until after the last, and every reader of the range pins its view through it. At
//! most one install per range is queued (the replica waits for it), so the install
//! queue is bounded by the number of ranges.

use super::{snapshot, state_machine};
use crate::proto::shoal::state::RangeDescriptor;
use crate::storage::{mvcc, Durability, Engine, KeyRange, StorageError, WriteBatch};
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::watch;

/// Deletes per batch, and the pause after each: the worker takes a share of the disk
/// and the CPU, not all of it, so puts keep their latency while history goes (etcd
/// paces its compaction the same way, 1000 keys then 10 ms).
const BATCH_OPS: usize = 1_000;
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Writing a staged snapshot over one range's data (the replica waits, frozen).
pub struct InstallJob {
    pub range_id: u64,
    pub descriptor: RangeDescriptor,
    pub staged: PathBuf,
}

/// What the worker reports of an install: the records written, or why it failed.
pub struct InstallDone {
    pub range_id: u64,
    pub outcome: Result<u64, StorageError>,
}

/// One range's history removal.
pub struct CompactionJob {
    pub range_id: u64,
    pub span: KeyRange,
    pub revision: i64,
    /// Told the revision through which history is gone, once it is.
    pub done: Arc<watch::Sender<i64>>,
}

#[derive(Default)]
struct Queue {
    due: BTreeMap<u64, CompactionJob>,
    /// At most one per range: a range waits, frozen, for its install.
    installs: VecDeque<InstallJob>,
    finished: Vec<InstallDone>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stopping: AtomicBool,
}

/// The node's background worker. Dropping it stops the thread (a removal under way
/// stops after its current batch and is picked up again at the next start).
pub struct BackgroundWorker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundWorker {
    pub fn start(engine: Arc<dyn Engine>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("shoal-background".into())
                .spawn(move || run(&shared, engine.as_ref()))?
        };
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues an install; it goes before any history removal, as its range waits.
    pub fn install(&self, job: InstallJob) {
        let mut queue = lock(&self.shared.queue);
        assert!(
            queue.installs.iter().all(|queued| queued.range_id != job.range_id),
            "range {} asked for two installs at once",
            job.range_id
        );
        queue.installs.push_back(job);
        self.shared.wake.notify_one();
    }

    /// Installs finished since the last call.
    pub fn take_finished_installs(&self) -> Vec<InstallDone> {
        std::mem::take(&mut lock(&self.shared.queue).finished)
    }

    /// Queues a removal; one already queued for the range is replaced if this one goes
    /// further.
    pub fn compact(&self, job: CompactionJob) {
        let mut queue = lock(&self.shared.queue);
        match queue.due.get(&job.range_id) {
            Some(queued) if queued.revision >= job.revision => {}
            _ => {
                queue.due.insert(job.range_id, job);
            }
        }
        self.shared.wake.notify_one();
    }
}

impl Drop for BackgroundWorker {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        // Taking the lock orders the flag before the worker's next wait.
        drop(lock(&self.shared.queue));
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock(queue: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    // The worker holds no invariant across a panic: the queue stays usable.
    queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Job {
    Compact(CompactionJob),
    Install(InstallJob),
}

fn run(shared: &Shared, engine: &dyn Engine) {
    loop {
        let job = {
            let mut queue = lock(&shared.queue);
            loop {
                if shared.stopping.load(Ordering::Acquire) {
                    return;
                }
                if let Some(job) = queue.installs.pop_front() {
                    break Job::Install(job);
                }
                if let Some((_, job)) = queue.due.pop_first() {
                    break Job::Compact(job);
                }
                queue = shared
                    .wake
                    .wait(queue)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        let job = match job {
            Job::Install(job) => {
                let outcome = install(engine, &job);
                lock(&shared.queue).finished.push(InstallDone {
                    range_id: job.range_id,
                    outcome,
                });
                continue;
            }
            Job::Compact(job) => job,
        };
        match remove_history(shared, engine, &job) {
            Ok(Removal::Done(removed)) => {
                job.done.send_if_modified(|through| {
                    let raised = job.revision > *through;
                    *through = (*through).max(job.revision);
                    raised
                });
                tracing::info!(
                    range = job.range_id,
                    revision = job.revision,
                    removed,
                    "compacted history"
                );
            }
            Ok(Removal::Stopped) => return,
            Ok(Removal::Yielded) => {
                // Taken up again after the install, over a new view; removal is
                // idempotent and the marker was not moved.
                let mut queue = lock(&shared.queue);
                if queue
                    .due
                    .get(&job.range_id)
                    .is_none_or(|queued| queued.revision < job.revision)
                {
                    queue.due.insert(job.range_id, job);
                }
            }
            Err(error) => {
                // Left for the next start, which finds the marker behind.
                tracing::error!(range = job.range_id, revision = job.revision, %error, "compacting history failed");
            }
        }
    }
}

/// Replaces the range's data with the staged snapshot's, in bounded batches. The
/// replica stored an install marker first, so a crash part way is finished at the next
/// start from the same file.
fn install(engine: &dyn Engine, job: &InstallJob) -> Result<u64, StorageError> {
    let file = std::fs::File::open(&job.staged).map_err(|error| {
        StorageError::Io(std::io::Error::new(
            error.kind(),
            format!("staged snapshot {}: {error}", job.staged.display()),
        ))
    })?;
    let mut reader = std::io::BufReader::new(file);
    snapshot::install(engine, &job.descriptor, &mut reader, |_| {})
}

enum Removal {
    /// This many entries removed, the marker moved.
    Done(u64),
    /// The node is stopping.
    Stopped,
    /// A snapshot install is waiting (its replica is frozen until it is done).
    Yielded,
}

fn remove_history(shared: &Shared, engine: &dyn Engine, job: &CompactionJob) -> Result<Removal, StorageError> {
    let started = Instant::now();
    let view = engine.snapshot();
    let mut interrupted = None;
    let outcome = mvcc::compact(view.as_ref(), &job.span, job.revision, BATCH_OPS, &mut |chunk| {
        if shared.stopping.load(Ordering::Acquire) {
            interrupted = Some(Removal::Stopped);
        } else if !lock(&shared.queue).installs.is_empty() {
            interrupted = Some(Removal::Yielded);
        }
        if interrupted.is_some() {
            return Err(StorageError::Engine("interrupted".into()));
        }
        engine.write(chunk, Durability::Buffered)?;
        std::thread::sleep(BATCH_PAUSE);
        Ok(())
    });
    if let Some(interrupted) = interrupted {
        return Ok(interrupted);
    }
    let removed = outcome?;
    let mut marker = WriteBatch::new();
    state_machine::mark_compacted(job.range_id, job.revision, &mut marker);
    engine.write(marker, Durability::Buffered)?;
    metrics::histogram!("shoal_compaction_duration_seconds").record(started.elapsed().as_secs_f64());
    Ok(Removal::Done(removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mvcc::Record;
    use crate::storage::{keys, FjallEngine, ReadView, Space};

    fn history(view: &dyn ReadView) -> Vec<(Vec<u8>, i64)> {
        view.scan(Space::KvHistory, &KeyRange::new(Vec::new(), None), false)
            .map(|pair| keys::parse_history_key(&pair.unwrap().0).unwrap())
            .collect()
    }

    #[test]
    fn history_is_removed_in_the_background_and_the_marker_set() {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(FjallEngine::open(dir.path()).unwrap());
        let mut batch = WriteBatch::new();
        for revision in 2..=30 {
            let key = format!("\x01k{}", revision % 3).into_bytes();
            let record = Record {
                create_revision: 2,
                mod_revision: revision,
                version: revision,
                lease: 0,
                value: b"v".to_vec(),
            };
            mvcc::write_put(&mut batch, &key, &record, 0);
        }
        engine.write(batch, Durability::Sync).unwrap();
        let worker = BackgroundWorker::start(engine.clone()).unwrap();
        let (done, mut through) = watch::channel(0);
        worker.compact(CompactionJob {
            range_id: 1,
            span: KeyRange::new(vec![1], Some(vec![2])),
            revision: 20,
            done: Arc::new(done),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(30),
                through.wait_for(|through| *through >= 20),
            )
            .await
            .expect("the worker finishes")
            .unwrap();
        });
        let left = history(engine.as_ref());
        for key in 0..3 {
            let name = format!("\x01k{key}").into_bytes();
            let revisions: Vec<i64> = left.iter().filter(|(k, _)| *k == name).map(|(_, r)| *r).collect();
            assert!(
                revisions.iter().filter(|revision| **revision <= 20).count() == 1,
                "one version at or below the compaction point survives per key: {revisions:?}"
            );
            assert!(revisions.iter().any(|revision| *revision > 20), "newer versions stay");
        }
        drop(worker);
        let reloaded = state_machine::StateMachine::load(1, engine, Default::default()).unwrap();
        assert_eq!(reloaded.compacted_through(), 20, "the marker is stored");
    }
}
