//! Group commit for Redis commands: commands on keys of one stripe that arrive while
//! another batch of that stripe runs wait, then run together on one snapshot, one after
//! the other, and their changes apply as one conditional write (one Raft round). A hot
//! key (a counter INCRed by 50 clients) costs one round per batch instead of one per
//! command. Each batch is serializable as its commands in arrival order, and every reply
//! is sent after the write is committed.

use super::data::Data;
use super::resp::Reply;
use super::snapshot::{Need, Snapshot};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// A command waiting for its batch. `run` may run more than once (a batch that lost a
/// conflict runs again on fresh data), always as a pure function of the snapshot.
pub struct Job {
    pub needs: Vec<Need>,
    pub run: Box<dyn Fn(&mut Snapshot) -> Reply + Send + Sync>,
}

struct Waiting {
    job: Job,
    done: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    running: bool,
}

/// Most commands in one batch (the rest wait for the next).
const BATCH_MAX: usize = 512;

pub struct Batches {
    queues: Vec<Mutex<Queue>>,
}

impl Batches {
    pub fn new(stripes: usize) -> Batches {
        Batches {
            queues: (0..stripes).map(|_| Mutex::new(Queue::default())).collect(),
        }
    }

    fn queue(&self, stripe: usize) -> std::sync::MutexGuard<'_, Queue> {
        self.queues[stripe]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs `job` in the next batch of `stripe`; its reply.
pub async fn submit(data: Arc<Data>, stripe: usize, job: Job) -> Reply {
    let (done, reply) = oneshot::channel();
    let lead = {
        let mut queue = data.batches.queue(stripe);
        queue.waiting.push(Waiting { job, done });
        !std::mem::replace(&mut queue.running, true)
    };
    if lead && run_batch(&data, stripe).await {
        // More came meanwhile: a task of its own runs them, so this caller answers now.
        tokio::spawn(async move { while run_batch(&data, stripe).await {} });
    }
    reply
        .await
        .unwrap_or_else(|_| Reply::error("ERR shoal: the command's batch ended without an answer"))
}

/// Runs one batch; whether more commands are waiting (the caller then runs them; the
/// stripe stays marked running).
async fn run_batch(data: &Arc<Data>, stripe: usize) -> bool {
    let batch: Vec<Waiting> = {
        let mut queue = data.batches.queue(stripe);
        let take = queue.waiting.len().min(BATCH_MAX);
        queue.waiting.drain(..take).collect()
    };
    let needs: Vec<Need> = batch.iter().flat_map(|waiting| waiting.job.needs.clone()).collect();
    let outcome = data
        .run(&needs, &[], |snapshot| {
            batch
                .iter()
                .map(|waiting| (waiting.job.run)(snapshot))
                .collect::<Vec<Reply>>()
        })
        .await;
    match outcome {
        Ok(Some(replies)) => {
            for (waiting, reply) in batch.into_iter().zip(replies) {
                let _ = waiting.done.send(reply);
            }
        }
        Ok(None) => {
            for waiting in batch {
                let _ = waiting.done.send(Reply::error("ERR shoal: a key changed unexpectedly"));
            }
        }
        Err(error) => {
            let reply = Reply::from(error);
            for waiting in batch {
                let _ = waiting.done.send(reply.clone());
            }
        }
    }
    let mut queue = data.batches.queue(stripe);
    if queue.waiting.is_empty() {
        queue.running = false;
        false
    } else {
        true
    }
}
