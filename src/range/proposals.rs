//! Clients waiting for their proposals to apply.
//!
//! A proposal is known by the id its proposer stamped on the command: the proposer's
//! node, the node's *incarnation* (a number persisted and raised at every start, so an
//! entry proposed before a crash can never be taken for one proposed after it) and a
//! request number counted within the incarnation. An applied entry answers the waiter
//! with the same id, and only that one.
//!
//! A proposal is answered exactly once: with its result when its entry applies, with
//! `LeaderChanged` once it is known never to apply (another entry took the index it was
//! appended at, or an entry of a later term applied first), with `Timeout` when its
//! outcome cannot be known (its deadline passed, or a snapshot may hold it).

use super::replica::ProposalResponder;
use super::RangeError;
use crate::proto::shoal::command::CommandResult;
use std::collections::{BTreeMap, HashMap};

/// The id a proposer stamps on a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProposalId {
    pub node: u64,
    pub incarnation: u64,
    pub request: u64,
}

/// What applying an entry told its proposer: its id, and the result (`None`: the entry
/// was skipped, committed in another term than it was proposed in).
#[derive(Debug)]
pub struct Applied {
    pub id: ProposalId,
    pub result: Option<CommandResult>,
}

struct Pending {
    responder: ProposalResponder,
    deadline_tick: u64,
    /// The term it was proposed in: it applies in that term or never.
    term: u64,
}

pub struct ProposalTracker {
    node: u64,
    incarnation: u64,
    next_request: u64,
    pending: HashMap<u64, Pending>,
    /// Index each of this leader's proposals got, to tell when another entry took it.
    at_index: BTreeMap<u64, u64>,
}

impl ProposalTracker {
    pub fn new(node: u64, incarnation: u64) -> Self {
        assert!(
            incarnation > 0,
            "incarnation 0 is what commands from before incarnations carry"
        );
        Self {
            node,
            incarnation,
            next_request: 1,
            pending: HashMap::new(),
            at_index: BTreeMap::new(),
        }
    }

    /// A fresh id for the next proposal.
    pub fn next_id(&mut self) -> ProposalId {
        let request = self.next_request;
        self.next_request += 1;
        ProposalId {
            node: self.node,
            incarnation: self.incarnation,
            request,
        }
    }

    /// Waits for `id`, proposed in `term`; `index` is where it was appended, when this
    /// node leads and so knows it.
    pub fn track(
        &mut self,
        id: ProposalId,
        term: u64,
        index: Option<u64>,
        responder: ProposalResponder,
        deadline_tick: u64,
    ) {
        debug_assert!(self.is_own(&id), "tracking another proposer's id");
        if let Some(index) = index {
            let previous = self.at_index.insert(index, id.request);
            debug_assert!(previous.is_none(), "two proposals appended at index {index}");
        }
        let previous = self.pending.insert(
            id.request,
            Pending {
                responder,
                deadline_tick,
                term,
            },
        );
        assert!(previous.is_none(), "request id {} reused", id.request);
        self.publish_gauge();
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether any proposal waits on an index this node appended as leader.
    pub fn has_indexed(&self) -> bool {
        !self.at_index.is_empty()
    }

    fn is_own(&self, id: &ProposalId) -> bool {
        id.node == self.node && id.incarnation == self.incarnation
    }

    /// The entry at `index` applied, with `applied` if it was a command.
    pub fn on_applied(&mut self, index: u64, applied: Option<Applied>) {
        let expected = self.at_index.remove(&index);
        let own = applied.filter(|applied| self.is_own(&applied.id));
        if let Some(expected) = expected {
            if own.as_ref().map(|own| own.id.request) != Some(expected) {
                // Another leader's entry took this index: the proposal is gone for good.
                self.fail(expected);
            }
        }
        if let Some(own) = own {
            match own.result {
                Some(result) => {
                    if let Some(proposal) = self.pending.remove(&own.id.request) {
                        let _ = proposal.responder.send(Ok(result));
                    }
                }
                None => self.fail(own.id.request),
            }
        }
        self.publish_gauge();
    }

    /// Answers a proposal that will never apply; the router may safely retry it.
    fn fail(&mut self, request: u64) {
        if let Some(proposal) = self.pending.remove(&request) {
            metrics::counter!("etcd_server_proposals_failed_total").increment(1);
            let _ = proposal.responder.send(Err(RangeError::LeaderChanged));
        }
    }

    /// An entry of `term` has applied: every entry of an earlier term that will ever
    /// commit lies before it, so pending proposals of earlier terms never apply (an
    /// older-term proposal appended in a later term is skipped by the state machine).
    pub fn on_term_applied(&mut self, term: u64) {
        let dropped: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, proposal)| proposal.term < term)
            .map(|(request, _)| *request)
            .collect();
        for request in dropped {
            self.fail(request);
        }
        self.forget_answered_indexes();
        self.publish_gauge();
    }

    /// Proposals past their deadline get `Timeout`: they may still apply.
    pub fn expire(&mut self, now_tick: u64) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, proposal)| proposal.deadline_tick <= now_tick)
            .map(|(request, _)| *request)
            .collect();
        for request in expired {
            if let Some(proposal) = self.pending.remove(&request) {
                metrics::counter!("etcd_server_proposals_failed_total").increment(1);
                let _ = proposal.responder.send(Err(RangeError::Timeout));
            }
        }
        self.forget_answered_indexes();
        self.publish_gauge();
    }

    /// A snapshot up to `index` (taken in `term`) replaced the log: proposals it may
    /// hold get an unknown outcome (`Timeout`). Those are this leader's proposals up to
    /// its index, and those proposed without a known index (on a follower) in its term
    /// or before. Left waiting, a later term's entries would wrongly mark them as never
    /// applied.
    pub fn on_snapshot(&mut self, index: u64, term: u64) {
        let after = self.at_index.split_off(&(index + 1));
        let covered: std::collections::HashSet<u64> = self.at_index.values().copied().collect();
        let kept: std::collections::HashSet<u64> = after.values().copied().collect();
        let unknown: Vec<u64> = self
            .pending
            .iter()
            .filter(|(request, proposal)| {
                covered.contains(*request) || (!kept.contains(*request) && proposal.term <= term)
            })
            .map(|(request, _)| *request)
            .collect();
        for request in unknown {
            if let Some(proposal) = self.pending.remove(&request) {
                let _ = proposal.responder.send(Err(RangeError::Timeout));
            }
        }
        self.at_index = after;
        self.publish_gauge();
    }

    /// Fails every waiting client with `Stopped`; the node is stopping.
    pub fn shutdown(&mut self) {
        for (_, proposal) in self.pending.drain() {
            let _ = proposal.responder.send(Err(RangeError::Stopped));
        }
        self.at_index.clear();
    }

    fn forget_answered_indexes(&mut self) {
        let pending = &self.pending;
        self.at_index.retain(|_, request| pending.contains_key(request));
    }

    fn publish_gauge(&self) {
        metrics::gauge!("etcd_server_proposals_pending").set(self.pending.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::shoal::command::{command_result, Empty};
    use tokio::sync::oneshot;

    type Outcome = oneshot::Receiver<Result<CommandResult, RangeError>>;

    fn result() -> CommandResult {
        CommandResult {
            result: Some(command_result::Result::Empty(Empty {})),
            revision: 1,
            allocated_range_id: 0,
        }
    }

    fn propose(tracker: &mut ProposalTracker, term: u64, index: Option<u64>) -> (ProposalId, Outcome) {
        let id = tracker.next_id();
        let (responder, outcome) = oneshot::channel();
        tracker.track(id, term, index, responder, 100);
        (id, outcome)
    }

    fn answer(outcome: &mut Outcome) -> Option<Result<CommandResult, RangeError>> {
        outcome.try_recv().ok()
    }

    #[test]
    fn an_applied_entry_answers_its_own_proposal_only() {
        let mut tracker = ProposalTracker::new(7, 2);
        let (id, mut outcome) = propose(&mut tracker, 1, Some(10));
        // The same request number from an earlier incarnation of this node, and from
        // another node, are someone else's entries.
        for stranger in [ProposalId { incarnation: 1, ..id }, ProposalId { node: 8, ..id }] {
            tracker.on_applied(
                9,
                Some(Applied {
                    id: stranger,
                    result: Some(result()),
                }),
            );
            assert!(answer(&mut outcome).is_none(), "{stranger:?} answered {id:?}");
        }
        tracker.on_applied(
            10,
            Some(Applied {
                id,
                result: Some(result()),
            }),
        );
        assert_eq!(answer(&mut outcome), Some(Ok(result())));
        assert!(tracker.is_empty() && !tracker.has_indexed());
    }

    #[test]
    fn ids_are_never_reused_within_an_incarnation() {
        let mut tracker = ProposalTracker::new(1, 1);
        let first = tracker.next_id();
        let second = tracker.next_id();
        assert_ne!(first, second);
        assert_eq!((first.node, first.incarnation), (second.node, second.incarnation));
    }

    #[test]
    fn another_entry_at_a_proposals_index_means_it_never_applies() {
        let mut tracker = ProposalTracker::new(1, 1);
        let (_, mut outcome) = propose(&mut tracker, 3, Some(5));
        tracker.on_applied(5, None); // a new leader's empty entry took index 5
        assert_eq!(answer(&mut outcome), Some(Err(RangeError::LeaderChanged)));
    }

    #[test]
    fn a_skipped_entry_fails_its_proposal_as_never_applied() {
        let mut tracker = ProposalTracker::new(1, 1);
        let (id, mut outcome) = propose(&mut tracker, 3, None);
        tracker.on_applied(8, Some(Applied { id, result: None }));
        assert_eq!(answer(&mut outcome), Some(Err(RangeError::LeaderChanged)));
    }

    #[test]
    fn a_later_term_applying_drops_older_proposals_only() {
        let mut tracker = ProposalTracker::new(1, 1);
        let (_, mut old) = propose(&mut tracker, 3, None);
        let (_, mut current) = propose(&mut tracker, 4, None);
        tracker.on_term_applied(4);
        assert_eq!(answer(&mut old), Some(Err(RangeError::LeaderChanged)));
        assert!(answer(&mut current).is_none());
        assert_eq!(tracker.len(), 1);
    }

    #[test]
    fn deadlines_give_an_unknown_outcome() {
        let mut tracker = ProposalTracker::new(1, 1);
        let (_, mut outcome) = propose(&mut tracker, 1, Some(4));
        tracker.expire(99);
        assert!(answer(&mut outcome).is_none());
        tracker.expire(100);
        assert_eq!(answer(&mut outcome), Some(Err(RangeError::Timeout)));
        assert!(!tracker.has_indexed(), "the index of an answered proposal is forgotten");
    }

    #[test]
    fn a_snapshot_makes_the_outcome_of_proposals_it_may_hold_unknown() {
        let mut tracker = ProposalTracker::new(1, 1);
        let (_, mut inside) = propose(&mut tracker, 5, Some(10));
        let (_, mut beyond) = propose(&mut tracker, 5, Some(12));
        let (_, mut unindexed_old) = propose(&mut tracker, 5, None);
        let (_, mut unindexed_new) = propose(&mut tracker, 6, None);
        tracker.on_snapshot(11, 5);
        assert_eq!(answer(&mut inside), Some(Err(RangeError::Timeout)));
        assert_eq!(answer(&mut unindexed_old), Some(Err(RangeError::Timeout)));
        assert!(answer(&mut beyond).is_none());
        assert!(answer(&mut unindexed_new).is_none());
        tracker.shutdown();
        assert_eq!(answer(&mut beyond), Some(Err(RangeError::Stopped)));
        assert_eq!(answer(&mut unindexed_new), Some(Err(RangeError::Stopped)));
    }
}
