//! Long work taken off the store loop, so that no range on the node stops sending
//! heartbeats or committing while it runs: physically removing compacted history.
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

use super::state_machine;
use crate::storage::{mvcc, Durability, Engine, KeyRange, StorageError, WriteBatch};
use std::collections::BTreeMap;
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

fn run(shared: &Shared, engine: &dyn Engine) {
    loop {
        let job = {
            let mut queue = lock(&shared.queue);
            loop {
                if shared.stopping.load(Ordering::Acquire) {
                    return;
                }
                if let Some((_, job)) = queue.due.pop_first() {
                    break job;
                }
                queue = shared
                    .wake
                    .wait(queue)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        match remove_history(shared, engine, &job) {
            Ok(Some(removed)) => {
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
            Ok(None) => return,
            Err(error) => {
                // Left for the next start, which finds the marker behind.
                tracing::error!(range = job.range_id, revision = job.revision, %error, "compacting history failed");
            }
        }
    }
}

/// `Ok(None)`: stopped part way.
fn remove_history(shared: &Shared, engine: &dyn Engine, job: &CompactionJob) -> Result<Option<u64>, StorageError> {
    let started = Instant::now();
    let view = engine.snapshot();
    let mut stopped = false;
    let outcome = mvcc::compact(view.as_ref(), &job.span, job.revision, BATCH_OPS, &mut |chunk| {
        if shared.stopping.load(Ordering::Acquire) {
            stopped = true;
            return Err(StorageError::Engine("stopping".into()));
        }
        engine.write(chunk, Durability::Buffered)?;
        std::thread::sleep(BATCH_PAUSE);
        Ok(())
    });
    if stopped {
        return Ok(None);
    }
    let removed = outcome?;
    let mut marker = WriteBatch::new();
    state_machine::mark_compacted(job.range_id, job.revision, &mut marker);
    engine.write(marker, Durability::Buffered)?;
    metrics::histogram!("shoal_compaction_duration_seconds").record(started.elapsed().as_secs_f64());
    Ok(Some(removed))
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
