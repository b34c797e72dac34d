//! Work that waits for a Raft read index: linearizable reads, and lease renewals that
//! must first confirm this replica still leads.
//!
//! Waiters queue until the replica asks raft-rs for one read index for all of them (a
//! *batch*, named by a context number). When raft-rs answers with the index, the batch
//! waits until the replica has applied up to it, then every waiter in it is ready.
//! raft-rs drops read index requests silently while there is no leader or the leader
//! has not committed in its term, so a batch without an answer is asked again.
//!
//! The queue only sorts waiters; the replica decides what being ready means for each.

use std::collections::{BTreeMap, HashMap};

struct Pending<W> {
    waiter: W,
    deadline_tick: u64,
}

struct Batch<W> {
    reads: Vec<Pending<W>>,
    issued_tick: u64,
}

pub struct ReadQueue<W> {
    queued: Vec<Pending<W>>,
    in_flight: HashMap<u64, Batch<W>>,
    waiting_apply: BTreeMap<u64, Vec<Pending<W>>>,
    next_context: u64,
    /// Queued waiters beyond this many are refused, so a stalled read path cannot grow
    /// memory without bound.
    waiters_max: usize,
}

/// The queue is full: the waiter was not queued.
#[derive(Debug)]
pub struct QueueFull<W>(pub W);

impl<W> ReadQueue<W> {
    pub fn new(waiters_max: usize) -> Self {
        Self {
            queued: Vec::new(),
            in_flight: HashMap::new(),
            waiting_apply: BTreeMap::new(),
            next_context: 1,
            waiters_max,
        }
    }

    pub fn len(&self) -> usize {
        self.queued.len()
            + self.in_flight.values().map(|batch| batch.reads.len()).sum::<usize>()
            + self.waiting_apply.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a waiter; it times out at `deadline_tick`.
    pub fn push(&mut self, waiter: W, deadline_tick: u64) -> Result<(), QueueFull<W>> {
        if self.len() >= self.waiters_max {
            return Err(QueueFull(waiter));
        }
        self.queued.push(Pending { waiter, deadline_tick });
        Ok(())
    }

    /// Puts every queued waiter into one batch; returns the context to ask raft-rs for
    /// a read index with, or None if nothing was queued.
    pub fn take_batch(&mut self, now_tick: u64) -> Option<Vec<u8>> {
        if self.queued.is_empty() {
            return None;
        }
        let context = self.next_context;
        self.next_context += 1;
        self.in_flight.insert(
            context,
            Batch {
                reads: std::mem::take(&mut self.queued),
                issued_tick: now_tick,
            },
        );
        Some(context.to_be_bytes().to_vec())
    }

    /// raft-rs answered `context` with `index`; returns the waiters ready now (the
    /// replica has applied `applied`). Unknown contexts (asked again, or from before a
    /// restart) are ignored.
    pub fn on_read_state(&mut self, context: &[u8], index: u64, applied: u64) -> Vec<W> {
        let Some(context) = context.try_into().ok().map(u64::from_be_bytes) else {
            return Vec::new();
        };
        let Some(batch) = self.in_flight.remove(&context) else {
            return Vec::new();
        };
        if applied >= index {
            batch.reads.into_iter().map(|read| read.waiter).collect()
        } else {
            self.waiting_apply.entry(index).or_default().extend(batch.reads);
            Vec::new()
        }
    }

    /// The replica has applied up to `applied`: the waiters whose index it reached.
    pub fn on_applied(&mut self, applied: u64) -> Vec<W> {
        let mut ready = Vec::new();
        while let Some(entry) = self.waiting_apply.first_entry() {
            if *entry.key() > applied {
                break;
            }
            ready.extend(entry.remove().into_iter().map(|read| read.waiter));
        }
        ready
    }

    /// Asks again for batches raft-rs has not answered within `retry_ticks`, and
    /// returns the waiters whose deadline has passed.
    pub fn tick(&mut self, now_tick: u64, retry_ticks: u64) -> Vec<W> {
        let stale: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, batch)| now_tick.saturating_sub(batch.issued_tick) >= retry_ticks)
            .map(|(context, _)| *context)
            .collect();
        for context in stale {
            if let Some(batch) = self.in_flight.remove(&context) {
                self.queued.extend(batch.reads);
            }
        }
        let mut expired = Vec::new();
        let mut keep_live = |reads: &mut Vec<Pending<W>>| {
            let (gone, live): (Vec<_>, Vec<_>) = std::mem::take(reads)
                .into_iter()
                .partition(|read| read.deadline_tick <= now_tick);
            *reads = live;
            expired.extend(gone.into_iter().map(|read| read.waiter));
        };
        keep_live(&mut self.queued);
        for reads in self.waiting_apply.values_mut() {
            keep_live(reads);
        }
        for batch in self.in_flight.values_mut() {
            keep_live(&mut batch.reads);
        }
        self.waiting_apply.retain(|_, reads| !reads.is_empty());
        self.in_flight.retain(|_, batch| !batch.reads.is_empty());
        expired
    }

    /// Every waiter, wherever it is; the replica is stopping.
    pub fn drain(&mut self) -> Vec<W> {
        let in_flight = self.in_flight.drain().flat_map(|(_, batch)| batch.reads);
        let waiting = std::mem::take(&mut self.waiting_apply).into_values().flatten();
        self.queued
            .drain(..)
            .chain(in_flight)
            .chain(waiting)
            .map(|read| read.waiter)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_ready_once_answered_and_applied() {
        let mut queue = ReadQueue::new(100);
        queue.push("a", 50).unwrap();
        queue.push("b", 50).unwrap();
        let context = queue.take_batch(0).expect("a batch");
        assert_eq!(queue.take_batch(0), None, "nothing left to ask for");
        queue.push("c", 50).unwrap();
        assert!(queue.on_read_state(&context, 10, 9).is_empty(), "not applied yet");
        assert!(queue.on_applied(9).is_empty());
        assert_eq!(queue.on_applied(10), vec!["a", "b"]);
        assert_eq!(queue.len(), 1, "c is still queued");
        let context = queue.take_batch(1).unwrap();
        assert_eq!(queue.on_read_state(&context, 10, 10), vec!["c"], "already applied");
        assert!(queue.is_empty());
    }

    #[test]
    fn an_unanswered_batch_is_asked_again_and_answers_to_old_contexts_are_ignored() {
        let mut queue = ReadQueue::new(100);
        queue.push(1, 50).unwrap();
        let first = queue.take_batch(0).unwrap();
        assert!(queue.tick(1, 2).is_empty());
        assert_eq!(queue.take_batch(1), None, "not stale yet");
        assert!(queue.tick(2, 2).is_empty());
        let second = queue.take_batch(2).expect("asked again");
        assert_ne!(first, second);
        assert!(queue.on_read_state(&first, 5, 5).is_empty(), "the old context is gone");
        assert!(queue.on_read_state(b"garbage", 5, 5).is_empty());
        assert_eq!(queue.on_read_state(&second, 5, 5), vec![1]);
    }

    #[test]
    fn waiters_expire_wherever_they_wait() {
        let mut queue = ReadQueue::new(100);
        queue.push("queued", 10).unwrap();
        let context = queue.take_batch(0).unwrap();
        queue.push("late", 20).unwrap();
        assert_eq!(queue.tick(10, 100), vec!["queued"]);
        assert!(queue.on_read_state(&context, 5, 5).is_empty(), "its batch emptied");
        let context = queue.take_batch(11).unwrap();
        assert!(queue.on_read_state(&context, 9, 5).is_empty());
        assert_eq!(queue.tick(20, 100), vec!["late"], "also while waiting for apply");
        assert!(queue.is_empty());
    }

    #[test]
    fn a_full_queue_refuses_and_drain_returns_everything() {
        let mut queue = ReadQueue::new(2);
        queue.push(1, 50).unwrap();
        let context = queue.take_batch(0).unwrap();
        queue.push(2, 50).unwrap();
        assert!(matches!(queue.push(3, 50), Err(QueueFull(3))));
        queue.on_read_state(&context, 9, 0);
        let mut all = queue.drain();
        all.sort();
        assert_eq!(all, vec![1, 2]);
        assert!(queue.is_empty());
    }
}
