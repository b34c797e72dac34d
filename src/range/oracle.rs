//! The timestamp oracle: the revisions of every write in the cluster, handed out by the
//! meta range's leader, strictly increasing in real time across leader changes and
//! restarts (PD's TSO, with a counter instead of physical time).
//!
//! Why it holds:
//! - Only values below the *high-water mark* are handed out, and the mark is raised
//!   through the meta range's log (`OracleAdvance`) before values above the old one are
//!   used. So every value any leader ever handed out is below a mark that was committed.
//! - A new leader starts serving only after it has applied an entry of its own term:
//!   by then it has applied every mark an earlier leader committed, and it starts at the
//!   mark, above anything handed out before.
//! - A request is answered only after a read index, asked after the request arrived,
//!   confirmed leadership in the term the leader serves. A deposed leader therefore
//!   answers no request that arrived after the new leader was elected, so a revision
//!   handed out by the new leader and acknowledged is never followed by a lower one
//!   for a write that started later.
//!
//! The mark moves in windows of [`WINDOW`], proposed while half a window is left, so
//! serving rarely waits; a leader change skips what is left of a window (revisions have
//! gaps, as the README says).
//!
//! This is the logic only; the meta range's replica drives it (read indexes, proposals,
//! applied marks) and the store loop routes what it grants.

use super::RangeError;
use std::collections::VecDeque;
use tokio::sync::oneshot;

/// Revisions the mark moves by at once.
pub const WINDOW: i64 = 10_000;
/// Confirmed requests waiting for room below the mark; beyond this they are refused.
const WAITERS_MAX: usize = 65_536;
/// An advance not applied within this many ticks is proposed again (it was dropped).
const ADVANCE_RETRY_TICKS: u64 = 10;

/// Who asked for revisions.
#[derive(Debug)]
pub enum TimestampWaiter {
    /// A data range on this node: the store loop hands it the grant.
    Local { range_id: u64, count: u32 },
    /// Another node, over the peer port: `first` of `count` revisions.
    Remote {
        count: u32,
        responder: oneshot::Sender<Result<i64, RangeError>>,
    },
}

impl TimestampWaiter {
    pub fn count(&self) -> u32 {
        match self {
            TimestampWaiter::Local { count, .. } | TimestampWaiter::Remote { count, .. } => *count,
        }
    }
}

#[derive(Debug, Default)]
pub struct Oracle {
    /// The first value this leader has not handed out; `None` while it does not serve.
    next: Option<i64>,
    /// The applied high-water mark: values below it may be handed out.
    high_water: i64,
    /// An advance proposed (its target) and when it may be proposed again.
    advancing: Option<(i64, u64)>,
    /// Requests whose leadership confirmation came back, in order.
    confirmed: VecDeque<TimestampWaiter>,
}

impl Oracle {
    pub fn new(high_water: i64) -> Self {
        Self {
            high_water,
            ..Default::default()
        }
    }

    pub fn is_serving(&self) -> bool {
        self.next.is_some()
    }

    /// The leader has applied an entry of its own term: every mark of earlier leaders is
    /// applied, so it may start at the mark.
    pub fn serve(&mut self) {
        if self.next.is_none() {
            self.next = Some(self.high_water);
            self.advancing = None;
        }
    }

    /// Leadership is gone: everything waiting is refused (`leader`: the new one, 0 if
    /// unknown).
    pub fn stop(&mut self) -> Vec<TimestampWaiter> {
        self.next = None;
        self.advancing = None;
        self.confirmed.drain(..).collect()
    }

    /// A mark applied from the log (by any leader).
    pub fn on_high_water(&mut self, high_water: i64) {
        assert!(
            high_water >= self.high_water,
            "the oracle's mark went back from {} to {high_water}",
            self.high_water
        );
        self.high_water = high_water;
        if self.advancing.is_some_and(|(target, _)| target <= high_water) {
            self.advancing = None;
        }
    }

    pub fn high_water(&self) -> i64 {
        self.high_water
    }

    /// A request whose leadership confirmation came back. Refused (given back) when
    /// not serving or too many wait.
    pub fn confirmed(&mut self, waiter: TimestampWaiter) -> Result<(), TimestampWaiter> {
        if self.next.is_none() || self.confirmed.len() >= WAITERS_MAX || waiter.count() == 0 {
            return Err(waiter);
        }
        self.confirmed.push_back(waiter);
        Ok(())
    }

    /// Hands out, in order, to every confirmed request that fits below the mark: each
    /// gets the first of its `count` revisions.
    pub fn grants(&mut self) -> Vec<(TimestampWaiter, i64)> {
        let mut granted = Vec::new();
        let Some(next) = self.next.as_mut() else {
            return granted;
        };
        while let Some(waiter) = self.confirmed.front() {
            let end = *next + i64::from(waiter.count());
            if end > self.high_water {
                break;
            }
            let first = *next;
            *next = end;
            if let Some(waiter) = self.confirmed.pop_front() {
                granted.push((waiter, first));
            }
        }
        granted
    }

    /// The mark to propose, when less than half a window is left above what waiting
    /// requests need (or an earlier advance seems lost).
    pub fn wanted_advance(&mut self, now_tick: u64) -> Option<i64> {
        let next = self.next?;
        if let Some((_, retry_at)) = self.advancing {
            if now_tick < retry_at {
                return None;
            }
        }
        let demand: i64 = self.confirmed.iter().map(|waiter| i64::from(waiter.count())).sum();
        if next + demand + WINDOW / 2 <= self.high_water {
            return None;
        }
        let target = self.high_water.max(next) + demand + WINDOW;
        self.advancing = Some((target, now_tick + ADVANCE_RETRY_TICKS));
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(count: u32) -> TimestampWaiter {
        TimestampWaiter::Local { range_id: 2, count }
    }

    fn firsts(grants: Vec<(TimestampWaiter, i64)>) -> Vec<(u32, i64)> {
        grants
            .into_iter()
            .map(|(waiter, first)| (waiter.count(), first))
            .collect()
    }

    #[test]
    fn nothing_is_handed_out_before_serving_or_above_the_mark() {
        let mut oracle = Oracle::new(2);
        assert!(oracle.confirmed(local(1)).is_err(), "not serving yet");
        oracle.serve();
        oracle.confirmed(local(3)).unwrap();
        assert!(oracle.grants().is_empty(), "the mark leaves no room");
        let target = oracle.wanted_advance(0).expect("an advance is wanted");
        assert!(target >= 2 + 3 + WINDOW);
        assert_eq!(oracle.wanted_advance(1), None, "one advance at a time");
        oracle.on_high_water(target);
        oracle.confirmed(local(2)).unwrap();
        assert_eq!(firsts(oracle.grants()), vec![(3, 2), (2, 5)]);
    }

    #[test]
    fn a_new_leader_starts_above_everything_an_earlier_one_handed_out() {
        let mut first = Oracle::new(2);
        first.serve();
        let mark = first.wanted_advance(0).unwrap();
        first.on_high_water(mark);
        first.confirmed(local(100)).unwrap();
        let handed: Vec<i64> = first.grants().into_iter().map(|(_, first)| first).collect();
        // The second leader applied the same mark from the log before serving.
        let mut second = Oracle::new(2);
        second.on_high_water(mark);
        second.serve();
        let mark2 = second.wanted_advance(0).unwrap();
        second.on_high_water(mark2);
        second.confirmed(local(1)).unwrap();
        let granted = second.grants()[0].1;
        assert!(granted >= mark && granted > handed[0] + 99);
    }

    #[test]
    fn losing_leadership_refuses_what_waits_and_stops_serving() {
        let mut oracle = Oracle::new(2);
        oracle.serve();
        oracle.confirmed(local(1)).unwrap();
        let refused = oracle.stop();
        assert_eq!(refused.len(), 1);
        assert!(!oracle.is_serving());
        assert!(oracle.grants().is_empty());
    }

    #[test]
    fn a_lost_advance_is_proposed_again_after_its_retry_ticks() {
        let mut oracle = Oracle::new(2);
        oracle.serve();
        let target = oracle.wanted_advance(0).unwrap();
        assert_eq!(oracle.wanted_advance(ADVANCE_RETRY_TICKS - 1), None);
        assert_eq!(oracle.wanted_advance(ADVANCE_RETRY_TICKS), Some(target));
    }

    #[test]
    #[should_panic(expected = "went back")]
    fn the_mark_never_goes_back() {
        let mut oracle = Oracle::new(100);
        oracle.on_high_water(50);
    }
}
