//! Revisions for a data range's writes. The range's leader holds every command (its own
//! and those its followers hand it through raft-rs) until the timestamp oracle gives it a
//! revision, then proposes them in revision order. So the log holds a leader's commands
//! in increasing revision order, the range applies them in that order, and the state at
//! the range's revision is final: no later write can land at or below it (the state
//! machine refuses one that would, as a leader change can reorder).
//!
//! One request to the oracle is in flight at a time; what arrives meanwhile waits for
//! the next, so a busy range asks once per round trip for everything that queued up.

use std::collections::VecDeque;

/// Commands waiting for revisions; beyond this new ones are refused.
pub const WAITING_MAX: usize = 65_536;
/// Most revisions asked for at once.
const ASK_MAX: usize = 8_192;
/// An ask unanswered this long is made again (its answer, if it comes, is discarded if
/// a later one was used first).
const ASK_RETRY_TICKS: u64 = 20;

/// A command waiting for its revision. `local` is what the proposer on this node waits
/// with (and the tick it gives up at); commands handed over by followers have none,
/// their proposer waits for the entry to apply.
pub struct Unsequenced<L> {
    pub command: Vec<u8>,
    pub local: Option<(L, u64)>,
}

pub struct Sequencer<L> {
    waiting: VecDeque<Unsequenced<L>>,
    /// When the ask in flight was made.
    asked_at: Option<u64>,
    /// The highest revision handed to a command so far.
    last_used: i64,
}

impl<L> Default for Sequencer<L> {
    fn default() -> Self {
        Self {
            waiting: VecDeque::new(),
            asked_at: None,
            last_used: 0,
        }
    }
}

impl<L> Sequencer<L> {
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Queues a command; gives it back when too many wait.
    pub fn push(&mut self, command: Unsequenced<L>) -> Result<(), Unsequenced<L>> {
        if self.waiting.len() >= WAITING_MAX {
            return Err(command);
        }
        self.waiting.push_back(command);
        Ok(())
    }

    /// How many revisions to ask the oracle for now, if an ask should go out.
    pub fn wanted(&mut self, now_tick: u64) -> Option<u32> {
        if self.waiting.is_empty() {
            return None;
        }
        if self.asked_at.is_some_and(|asked| now_tick < asked + ASK_RETRY_TICKS) {
            return None;
        }
        self.asked_at = Some(now_tick);
        Some(self.waiting.len().min(ASK_MAX) as u32)
    }

    /// `count` revisions from `first` on: the waiting commands they cover, in order,
    /// each with its revision. A grant not above the last revision used is stale (an
    /// answer to an ask made again) and is dropped.
    pub fn on_grant(&mut self, first: i64, count: u32) -> Vec<(Unsequenced<L>, i64)> {
        self.asked_at = None;
        if first <= self.last_used {
            return Vec::new();
        }
        let take = (count as usize).min(self.waiting.len());
        let granted: Vec<(Unsequenced<L>, i64)> = self
            .waiting
            .drain(..take)
            .enumerate()
            .map(|(offset, command)| (command, first + offset as i64))
            .collect();
        if let Some((_, last)) = granted.last() {
            self.last_used = *last;
        }
        granted
    }

    /// The ask failed (the oracle had no leader, the call broke): ask again from the
    /// next tick on, not at once, so a cluster without an oracle is not flooded.
    pub fn on_refused(&mut self, now_tick: u64) {
        self.asked_at = Some((now_tick + 1).saturating_sub(ASK_RETRY_TICKS));
    }

    /// Local commands past their deadline: never proposed, so certainly not applied.
    pub fn expire(&mut self, now_tick: u64) -> Vec<L> {
        let mut expired = Vec::new();
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for command in self.waiting.drain(..) {
            match command.local {
                Some((local, deadline)) if deadline <= now_tick => expired.push(local),
                _ => kept.push_back(command),
            }
        }
        self.waiting = kept;
        expired
    }

    /// Everything waiting (leadership is gone).
    pub fn drain(&mut self) -> Vec<Unsequenced<L>> {
        self.asked_at = None;
        self.waiting.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(name: &str, deadline: Option<u64>) -> Unsequenced<&'static str> {
        Unsequenced {
            command: name.as_bytes().to_vec(),
            local: deadline.map(|deadline| (if name == "a" { "a" } else { "other" }, deadline)),
        }
    }

    #[test]
    fn commands_get_revisions_in_arrival_order_one_ask_at_a_time() {
        let mut sequencer = Sequencer::default();
        sequencer.push(command("a", Some(100))).ok().unwrap();
        sequencer.push(command("b", None)).ok().unwrap();
        assert_eq!(sequencer.wanted(0), Some(2));
        sequencer.push(command("c", None)).ok().unwrap();
        assert_eq!(sequencer.wanted(1), None, "one ask in flight");
        let granted = sequencer.on_grant(10, 2);
        let order: Vec<(Vec<u8>, i64)> = granted.into_iter().map(|(c, r)| (c.command, r)).collect();
        assert_eq!(order, vec![(b"a".to_vec(), 10), (b"b".to_vec(), 11)]);
        assert_eq!(sequencer.wanted(2), Some(1), "what queued meanwhile goes next");
        let granted = sequencer.on_grant(12, 1);
        assert_eq!(granted[0].1, 12);
        assert!(sequencer.is_empty());
    }

    #[test]
    fn a_stale_grant_is_dropped() {
        let mut sequencer = Sequencer::default();
        sequencer.push(command("a", None)).ok().unwrap();
        sequencer.wanted(0);
        assert_eq!(sequencer.on_grant(50, 1).len(), 1);
        sequencer.push(command("b", None)).ok().unwrap();
        sequencer.wanted(1);
        assert!(sequencer.on_grant(40, 1).is_empty(), "below what was used");
        assert_eq!(sequencer.len(), 1);
        assert_eq!(sequencer.wanted(2), Some(1), "a dropped grant leaves no ask in flight");
    }

    #[test]
    fn an_unanswered_ask_is_made_again_and_refusals_free_the_next_ask() {
        let mut sequencer = Sequencer::default();
        sequencer.push(command("a", None)).ok().unwrap();
        assert_eq!(sequencer.wanted(0), Some(1));
        assert_eq!(sequencer.wanted(ASK_RETRY_TICKS - 1), None);
        assert_eq!(sequencer.wanted(ASK_RETRY_TICKS), Some(1));
        sequencer.on_refused(ASK_RETRY_TICKS);
        assert_eq!(sequencer.wanted(ASK_RETRY_TICKS), None, "not in the same tick");
        assert_eq!(sequencer.wanted(ASK_RETRY_TICKS + 1), Some(1));
    }

    #[test]
    fn local_commands_expire_and_others_wait() {
        let mut sequencer = Sequencer::default();
        sequencer.push(command("a", Some(5))).ok().unwrap();
        sequencer.push(command("b", None)).ok().unwrap();
        assert_eq!(sequencer.expire(4), Vec::<&str>::new());
        assert_eq!(sequencer.expire(5), vec!["a"]);
        assert_eq!(sequencer.len(), 1);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut sequencer = Sequencer::default();
        for _ in 0..WAITING_MAX {
            sequencer.push(command("b", None)).ok().unwrap();
        }
        assert!(sequencer.push(command("b", None)).is_err());
    }
}
