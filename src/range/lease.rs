//! Lease deadlines. Which leases exist is replicated state (applied through the log);
//! when each one expires is not: only the leader tracks deadlines, in memory, and when
//! a replica becomes leader it restarts every deadline at the full TTL (as etcd does),
//! so a change of leader never expires a lease early — at worst it lives longer.

use std::collections::BTreeMap;
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
    revoke_proposed_at: Option<Instant>,
}

/// What the leader knows about one lease's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTime {
    pub granted_ttl: i64,
    pub remaining_ttl: i64,
}

#[derive(Debug, Default)]
pub struct Lessor {
    leases: BTreeMap<i64, LeaseDeadline>,
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

    /// A lease granted (or loaded) now; its deadline starts now.
    pub fn insert(&mut self, id: i64, ttl_seconds: i64, now: Instant) {
        self.leases.insert(
            id,
            LeaseDeadline {
                ttl_seconds,
                deadline: now + ttl(ttl_seconds),
                revoke_proposed_at: None,
            },
        );
    }

    pub fn remove(&mut self, id: i64) {
        self.leases.remove(&id);
    }

    /// Restarts every deadline at the full TTL: called when this replica becomes leader,
    /// because the previous leader's renewals are unknown here.
    pub fn promote(&mut self, now: Instant) {
        for lease in self.leases.values_mut() {
            lease.deadline = now + ttl(lease.ttl_seconds);
            lease.revoke_proposed_at = None;
        }
    }

    /// Extends a live lease to a full TTL from now; None if it does not exist or has
    /// already expired (its revocation is on its way).
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let lease = self.leases.get_mut(&id)?;
        if lease.deadline <= now {
            return None;
        }
        lease.deadline = now + ttl(lease.ttl_seconds);
        Some(lease.ttl_seconds)
    }

    pub fn time(&self, id: i64, now: Instant) -> Option<LeaseTime> {
        let lease = self.leases.get(&id)?;
        Some(LeaseTime {
            granted_ttl: lease.ttl_seconds,
            remaining_ttl: lease.deadline.saturating_duration_since(now).as_secs() as i64,
        })
    }

    /// Leases past their deadline whose revocation should be proposed now; marks them
    /// so the next call does not propose them again right away.
    pub fn take_expired(&mut self, now: Instant) -> Vec<i64> {
        let mut expired = Vec::new();
        for (id, lease) in &mut self.leases {
            let due = lease.deadline <= now
                && lease
                    .revoke_proposed_at
                    .is_none_or(|proposed| now.duration_since(proposed) >= REVOKE_RETRY);
            if due {
                lease.revoke_proposed_at = Some(now);
                expired.push(*id);
            }
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
        assert_eq!(lessor.take_expired(later), vec![2]);
        assert!(lessor.take_expired(later).is_empty(), "not proposed twice in a row");
        assert_eq!(lessor.renew(2, later), None, "an expired lease cannot be kept alive");
        assert_eq!(lessor.renew(1, later), Some(10));
        assert_eq!(lessor.time(1, later).unwrap().remaining_ttl, 10);

        // A new leader gives every lease a full TTL again.
        let promoted_at = start + Duration::from_secs(20);
        lessor.promote(promoted_at);
        assert!(lessor.take_expired(promoted_at + Duration::from_secs(4)).is_empty());
        assert_eq!(lessor.take_expired(promoted_at + Duration::from_secs(5)), vec![2]);
    }
}
