//! Spreads data range leaders evenly over the nodes, so writes (each range's leader
//! sequences, proposes and fsyncs them) use every node rather than whichever won the
//! elections.
//!
//! Each node decides for the ranges it leads, from the leaders it sees for every range
//! it holds: when it leads at least two more data ranges than one of a range's other
//! replicas, it hands that range to the least loaded of them, one range per round. The
//! move is a raft-rs leadership transfer that only starts when it can finish at once
//! (see `Replica::transfer_leader`), so a node that is down or behind is never handed
//! a range and writes never pause for a failed handover. Rounds are seconds apart, so
//! the leaders every node sees are current again before the next decision; two nodes
//! unloading onto the same one in one round can only overshoot by one range each, which
//! the next rounds undo, so the counts converge to differ by at most one.
//!
//! The meta range is left where it is: moving it would start its successor's oracle
//! window and lease deadlines over for no gain (its load is small and batched).
//! Every node holds every range while the cluster has three nodes; once replicas are
//! spread (the elastic-cluster work), the counts come from gossip's load reports
//! instead of local replicas, and the rule stays the same.

use crate::router::Router;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How often a node looks at the leaders it sees.
const ROUND: Duration = Duration::from_secs(2);

/// What a node sees of one data range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeLeadership {
    pub range_id: u64,
    /// Member ids holding a replica.
    pub replicas: Vec<u64>,
    /// 0 when no leader is known.
    pub leader: u64,
}

/// Moves `me` should try this round, best first: (range it leads, target). The caller
/// starts the first one the range's replica accepts.
pub fn plan(me: u64, ranges: &[RangeLeadership]) -> Vec<(u64, u64)> {
    let mut load: BTreeMap<u64, usize> = BTreeMap::new();
    for range in ranges {
        for replica in &range.replicas {
            load.entry(*replica).or_default();
        }
        if range.leader != 0 {
            *load.entry(range.leader).or_default() += 1;
        }
    }
    let mine = load.get(&me).copied().unwrap_or(0);
    let mut moves: Vec<(usize, u64, u64)> = Vec::new();
    for range in ranges.iter().filter(|range| range.leader == me) {
        for target in range.replicas.iter().filter(|replica| **replica != me) {
            let theirs = load.get(target).copied().unwrap_or(0);
            if mine >= theirs + 2 {
                moves.push((theirs, *target, range.range_id));
            }
        }
    }
    // The least loaded target first; among equals the lowest node id, then the newest
    // range (split off most recently, so the least read and cached).
    moves.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)));
    moves.into_iter().map(|(_, target, range)| (range, target)).collect()
}

/// Runs until the task is aborted (at shutdown).
pub async fn run(router: Arc<Router>, me: u64) {
    let mut ticker = tokio::time::interval(ROUND);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let ranges: Vec<RangeLeadership> = router
            .registry()
            .data_ranges()
            .into_iter()
            .map(|range| RangeLeadership {
                range_id: range.descriptor.id,
                replicas: range.descriptor.replicas.clone(),
                leader: range.view.status.leader(),
            })
            .collect();
        for (range_id, target) in plan(me, &ranges) {
            match router.transfer_leader_if_ready(range_id, target).await {
                Ok(true) => {
                    tracing::info!(
                        range = range_id,
                        to = format!("{target:x}"),
                        "moving the range's leadership to spread leaders"
                    );
                    metrics::counter!("shoal_leader_balance_transfers_total").increment(1);
                    break;
                }
                Ok(false) => continue,
                Err(error) => {
                    tracing::debug!(range = range_id, %error, "leader balancing");
                    continue;
                }
            }
        }
    }
}

/// At a graceful stop: hands every range this node leads (the meta range too) to the
/// replica leading the fewest, and waits up to `timeout` for the handovers, so clients
/// see no election timeout when a member is stopped for maintenance (etcd's leader
/// does the same on stop).
pub async fn hand_off_all(router: &Router, me: u64, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut moving = Vec::new();
    let mut ranges: Vec<RangeLeadership> = router
        .registry()
        .data_ranges()
        .into_iter()
        .map(|range| RangeLeadership {
            range_id: range.descriptor.id,
            replicas: range.descriptor.replicas.clone(),
            leader: range.view.status.leader(),
        })
        .collect();
    let load = |ranges: &[RangeLeadership], node: u64| ranges.iter().filter(|range| range.leader == node).count();
    let meta = router.status(crate::range::META_RANGE_ID);
    if meta.leader() == me {
        if let Some(replicas) = ranges.first().map(|range| range.replicas.clone()) {
            ranges.push(RangeLeadership {
                range_id: crate::range::META_RANGE_ID,
                replicas,
                leader: me,
            });
        }
    }
    for index in 0..ranges.len() {
        if ranges[index].leader != me {
            continue;
        }
        let mut targets: Vec<u64> = ranges[index]
            .replicas
            .iter()
            .copied()
            .filter(|node| *node != me)
            .collect();
        targets.sort_by_key(|node| load(&ranges, *node));
        for target in targets {
            if let Ok(true) = router.transfer_leader_if_ready(ranges[index].range_id, target).await {
                moving.push(router.leader_changes(ranges[index].range_id));
                ranges[index].leader = target;
                break;
            }
        }
    }
    if moving.is_empty() {
        return;
    }
    tracing::info!(ranges = moving.len(), "handing range leadership over before stopping");
    let _ = tokio::time::timeout_at(deadline, async {
        for mut leader in moving {
            let _ = leader.wait_for(|leader| *leader != me && *leader != 0).await;
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(leaders: &[u64], replicas: &[u64]) -> Vec<RangeLeadership> {
        leaders
            .iter()
            .enumerate()
            .map(|(index, leader)| RangeLeadership {
                range_id: 2 + index as u64,
                replicas: replicas.to_vec(),
                leader: *leader,
            })
            .collect()
    }

    #[test]
    fn a_node_leading_two_more_than_another_hands_one_to_the_least_loaded() {
        let view = ranges(&[1, 1, 1, 1, 2, 3, 3], &[1, 2, 3]);
        let moves = plan(1, &view);
        // Node 2 leads one, node 3 two: only 2 is two behind node 1's four.
        assert_eq!(moves.first(), Some(&(5, 2)));
        assert!(moves.iter().all(|(_, target)| *target == 2 || *target == 3));
        assert!(plan(2, &view).is_empty());
        assert!(plan(3, &view).is_empty(), "3 leads two, no one leads zero");
    }

    #[test]
    fn counts_within_one_of_each_other_are_left_alone() {
        for leaders in [&[1, 2, 3][..], &[1, 1, 2, 3], &[1, 1, 2, 2, 3], &[1]] {
            let view = ranges(leaders, &[1, 2, 3]);
            for me in 1..=3 {
                assert!(plan(me, &view).is_empty(), "{leaders:?} from {me}");
            }
        }
    }

    #[test]
    fn leaderless_ranges_count_for_no_one_and_targets_must_hold_a_replica() {
        let mut view = ranges(&[1, 1, 0, 0], &[1, 2, 3]);
        view.push(RangeLeadership {
            range_id: 9,
            replicas: vec![1, 4, 5],
            leader: 1,
        });
        let moves = plan(1, &view);
        for (range, target) in &moves {
            let range = view.iter().find(|candidate| candidate.range_id == *range).unwrap();
            assert!(range.replicas.contains(target) && *target != 1);
        }
        assert!(moves.contains(&(9, 4)) && moves.contains(&(2, 2)));
    }

    #[test]
    fn rounds_of_moves_converge_to_counts_within_one() {
        // Every node acts on the same view each round (the worst case: no one sees
        // the others' moves until the next round); the first move each plans starts.
        let mut leaders: Vec<u64> = vec![1; 12];
        leaders.extend([2, 2]);
        for _round in 0..20 {
            let view = ranges(&leaders, &[1, 2, 3]);
            for me in 1..=3 {
                if let Some((range, target)) = plan(me, &view).first() {
                    leaders[(*range - 2) as usize] = *target;
                }
            }
        }
        let count = |node: u64| leaders.iter().filter(|leader| **leader == node).count();
        let counts = [count(1), count(2), count(3)];
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?}"
        );
    }
}
