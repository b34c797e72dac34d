//! Lease deadlines. Which leases exist is replicated state (applied through the log);
//! when each one expires is not: only the leader tracks deadlines, in memory, and when
//! a replica becomes leader it restarts every deadline at the full TTL (as etcd does),
//! so a change of leader never expires a lease early — at worst it lives longer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// etcd's largest lease TTL, seconds.
pub const MAX_LEASE_TTL_SECONDS: i64 = 9_000_000_000;

/// After proposing the revocation of an expired lease, wait this long before proposing
/// it again (the first proposal may have been lost with a leader).
const REVOKE_RETRY: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct LeaseDeadline {
    ttl_seconds: i64,
    deadline: Instant,
    /// When `take_expired` looks at the lease next: its deadline, or after a proposed
    /// revocation, when to propose it again. Its key in `Lessor::due`.
    next_check: Instant,
}

/// What the leader knows about one lease's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTime {
    pub granted_ttl: i64,
    pub remaining_ttl: i64,
}

/// Deadlines of every lease, indexed by when each needs looking at, so a tick costs the
/// expired leases only, not every lease.
#[derive(Debug, Default)]
pub struct Lessor {
    leases: BTreeMap<i64, LeaseDeadline>,
    due: BTreeSet<(Instant, i64)>,
}

fn ttl(seconds: i64) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

impl Lessor {
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.leases.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// A lease granted (or loaded) now; its deadline starts now.
    pub fn insert(&mut self, id: i64, ttl_seconds: i64, now: Instant) {
        self.remove(id);
        let deadline = now + ttl(ttl_seconds);
        self.leases.insert(
            id,
            LeaseDeadline {
                ttl_seconds,
                deadline,
                next_check: deadline,
            },
        );
        self.due.insert((deadline, id));
    }

    pub fn remove(&mut self, id: i64) {
        if let Some(lease) = self.leases.remove(&id) {
            self.due.remove(&(lease.next_check, id));
        }
    }

    fn reschedule(&mut self, id: i64, deadline: Instant, next_check: Instant) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        self.due.remove(&(lease.next_check, id));
        lease.deadline = deadline;
        lease.next_check = next_check;
        self.due.insert((next_check, id));
    }

    /// Restarts every deadline at the full TTL: called when this replica becomes leader,
    /// because the previous leader's renewals are unknown here.
    pub fn promote(&mut self, now: Instant) {
        self.due.clear();
        for (id, lease) in &mut self.leases {
            lease.deadline = now + ttl(lease.ttl_seconds);
            lease.next_check = lease.deadline;
            self.due.insert((lease.deadline, *id));
        }
    }

    /// Extends a live lease to a full TTL from now; None if it does not exist or has
    /// already expired (its revocation is on its way).
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let lease = self.leases.get(&id)?;
        if lease.deadline <= now {
            return None;
        }
        let ttl_seconds = lease.ttl_seconds;
        let deadline = now + ttl(ttl_seconds);
        self.reschedule(id, deadline, deadline);
        Some(ttl_seconds)
    }

    pub fn time(&self, id: i64, now: Instant) -> Option<LeaseTime> {
        let lease = self.leases.get(&id)?;
        Some(LeaseTime {
            granted_ttl: lease.ttl_seconds,
            remaining_ttl: lease.deadline.saturating_duration_since(now).as_secs() as i64,
        })
    }

    /// Up to `max` leases past their deadline whose revocation should be proposed now,
    /// oldest deadline first; each is looked at again only after `REVOKE_RETRY`, in
    /// case the proposal was lost. The rest wait for the next call (etcd likewise
    /// limits the rate of revocations, so a mass expiry cannot flood the log).
    pub fn take_expired(&mut self, now: Instant, max: usize) -> Vec<i64> {
        let mut expired = Vec::new();
        while expired.len() < max {
            let Some(&(check, id)) = self.due.first() else {
                break;
            };
            if check > now {
                break;
            }
            let deadline = self.leases.get(&id).map_or(check, |lease| lease.deadline);
            self.reschedule(id, deadline, now + REVOKE_RETRY);
            expired.push(id);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_renewals_and_promotion() {
        let start = Instant::now();
        let mut lessor = Lessor::default();
        lessor.insert(1, 10, start);
        lessor.insert(2, 5, start);
        let later = start + Duration::from_secs(6);
        assert_eq!(lessor.take_expired(later, 100), vec![2]);
        assert!(
            lessor.take_expired(later, 100).is_empty(),
            "not proposed twice in a row"
        );
        assert_eq!(lessor.renew(2, later), None, "an expired lease cannot be kept alive");
        assert_eq!(lessor.renew(1, later), Some(10));
        assert_eq!(lessor.time(1, later).unwrap().remaining_ttl, 10);

        // A new leader gives every lease a full TTL again.
        let promoted_at = start + Duration::from_secs(20);
        lessor.promote(promoted_at);
        assert!(lessor
            .take_expired(promoted_at + Duration::from_secs(4), 100)
            .is_empty());
        assert_eq!(lessor.take_expired(promoted_at + Duration::from_secs(5), 100), vec![2]);
    }

    #[test]
    fn expiry_is_bounded_per_call_oldest_first_and_retried_later() {
        let start = Instant::now();
        let mut lessor = Lessor::default();
        for id in 1..=10 {
            lessor.insert(id, id, start);
        }
        let late = start + Duration::from_secs(100);
        assert_eq!(lessor.take_expired(late, 3), vec![1, 2, 3]);
        assert_eq!(lessor.take_expired(late, 3), vec![4, 5, 6]);
        assert_eq!(lessor.take_expired(late, 100), vec![7, 8, 9, 10]);
        assert!(lessor.take_expired(late, 100).is_empty());
        lessor.remove(5);
        let retry = late + REVOKE_RETRY;
        assert_eq!(
            lessor.take_expired(retry, 100),
            vec![1, 2, 3, 4, 6, 7, 8, 9, 10],
            "a revocation not applied by now is proposed again; a removed lease is gone"
        );
        assert_eq!(lessor.len(), 9);
    }
}
