//! Automatic compaction, as etcd's `--auto-compaction-mode` and
//! `--auto-compaction-retention`: without it the MVCC history of every key grows without
//! bound. Every node samples the newest revision its data ranges applied; the meta
//! range's leader proposes `Compact` to every data range, as a client's `KV.Compact`
//! would.
//!
//! - periodic: keep the revisions of the last `retention` of wall time. Revisions are
//!   sampled every tenth of the retention (of an hour at most); at most once per
//!   retention (per hour at most) history is compacted up to the newest sample that is
//!   older than the retention.
//! - revision: keep the last `retention` revisions; checked every five minutes.

use crate::config::Retention;

use crate::proto::shoal::command::{command_result, raft_command, Compact, ErrorKind};
use crate::range::META_RANGE_ID;
use crate::router::Router;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const HOUR: Duration = Duration::from_secs(3600);
/// How often the revision mode looks (etcd's interval).
const REVISION_MODE_POLL: Duration = Duration::from_secs(300);

/// Decides when to compact to which revision; the caller supplies clock and revision.
#[derive(Debug)]
pub struct Schedule {
    retention: Retention,
    /// (when, applied revision then), oldest first.
    samples: VecDeque<(Instant, i64)>,
    last_compaction: Option<(Instant, i64)>,
}

impl Schedule {
    pub fn new(retention: Retention) -> Self {
        Self {
            retention,
            samples: VecDeque::new(),
            last_compaction: None,
        }
    }

    /// How often [`Schedule::observe`] wants to be called; `None` when nothing is compacted.
    pub fn poll_interval(&self) -> Option<Duration> {
        match self.retention {
            Retention::Forever => None,
            Retention::Period(period) => Some((period.min(HOUR) / 10).max(Duration::from_millis(10))),
            Retention::Revisions(_) => Some(REVISION_MODE_POLL),
        }
    }

    /// Records the applied `revision` at `now`; returns the revision to compact to, if
    /// it is time to compact. The caller reports success with [`Schedule::compacted`].
    pub fn observe(&mut self, now: Instant, revision: i64) -> Option<i64> {
        let compacted = self.last_compaction.map_or(0, |(_, revision)| revision);
        let target = match self.retention {
            Retention::Forever => return None,
            Retention::Revisions(keep) => revision.saturating_sub(keep),
            Retention::Period(period) => {
                self.samples.push_back((now, revision));
                let cadence = period.min(HOUR);
                if self
                    .last_compaction
                    .is_some_and(|(when, _)| now.duration_since(when) < cadence)
                {
                    return None;
                }
                // The newest sample at least `period` old; older ones are no longer needed.
                let old_enough = self
                    .samples
                    .iter()
                    .rposition(|(when, _)| now.duration_since(*when) >= period)?;
                self.samples.drain(..old_enough);
                self.samples[0].1
            }
        };
        (target > compacted && target > 0).then_some(target)
    }

    pub fn compacted(&mut self, now: Instant, revision: i64) {
        self.last_compaction = Some((now, revision));
    }
}

/// Runs the schedule until the task is dropped. Every node samples the newest revision
/// its data ranges applied; the meta range's leader compacts every data range (one
/// compactor for the cluster, as etcd's runs on its leader).
pub async fn run(router: Arc<Router>, node_id: u64, retention: Retention) {
    let mut schedule = Schedule::new(retention);
    let Some(interval) = schedule.poll_interval() else {
        return;
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let newest = router
            .registry()
            .data_ranges()
            .iter()
            .map(|range| range.view.status.last_write.load(std::sync::atomic::Ordering::Acquire))
            .max()
            .unwrap_or(0);
        let Some(target) = schedule.observe(now, newest) else {
            continue;
        };
        if router.status(META_RANGE_ID).leader() != node_id {
            continue; // the meta leader compacts; samples stay for when this node leads
        }
        let mut failed = None;
        for range in router.registry().data_ranges() {
            match compact(&router, range.descriptor.id, target).await {
                Ok(()) | Err(CompactFailure::AlreadyCompacted) => {}
                Err(CompactFailure::Other(error)) => failed = Some(error),
            }
        }
        match failed {
            None => {
                tracing::info!(revision = target, ?retention, "auto-compacted history");
                schedule.compacted(now, target);
            }
            Some(error) => {
                tracing::warn!(revision = target, %error, "auto-compaction failed; will retry");
            }
        }
    }
}

enum CompactFailure {
    AlreadyCompacted,
    Other(String),
}

async fn compact(router: &Router, range_id: u64, revision: i64) -> Result<(), CompactFailure> {
    let command = crate::range::encode_command(raft_command::Op::Compact(Compact { revision }));
    let result = router
        .write(range_id, command)
        .await
        .map_err(|error| CompactFailure::Other(error.to_string()))?;
    match result.result {
        Some(command_result::Result::Error(error)) if error.kind() == ErrorKind::Compacted => {
            Err(CompactFailure::AlreadyCompacted)
        }
        Some(command_result::Result::Error(error)) => Err(CompactFailure::Other(error.detail)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_keeps_the_last_period_and_compacts_once_per_period() {
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        let mut schedule = Schedule::new(Retention::Period(Duration::from_secs(1)));
        assert_eq!(schedule.poll_interval(), Some(Duration::from_millis(100)));
        // Nothing is a full period old yet.
        assert_eq!(schedule.observe(at(0), 10), None);
        assert_eq!(schedule.observe(at(500), 20), None);
        // At 1.2 s the sample from 0 s is the newest one a period old.
        assert_eq!(schedule.observe(at(1200), 40), Some(10));
        schedule.compacted(at(1200), 10);
        // Within a period of the last compaction nothing happens...
        assert_eq!(schedule.observe(at(1600), 50), None);
        // ...then history goes up to the newest sample a full period old: 40, taken at
        // 1.2 s.
        assert_eq!(schedule.observe(at(2200), 60), Some(40));
    }

    #[test]
    fn periodic_does_not_compact_an_idle_range_twice() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut schedule = Schedule::new(Retention::Period(Duration::from_secs(1)));
        schedule.observe(at(0), 5);
        assert_eq!(schedule.observe(at(2), 5), Some(5));
        schedule.compacted(at(2), 5);
        assert_eq!(schedule.observe(at(4), 5), None, "nothing new to drop");
    }

    #[test]
    fn revision_mode_keeps_the_last_n_revisions() {
        let now = Instant::now();
        let mut schedule = Schedule::new(Retention::Revisions(100));
        assert_eq!(schedule.observe(now, 50), None, "fewer revisions than kept");
        assert_eq!(schedule.observe(now, 1000), Some(900));
        schedule.compacted(now, 900);
        assert_eq!(schedule.observe(now, 1000), None);
        assert_eq!(schedule.observe(now, 1001), Some(901));
    }

    #[test]
    fn forever_never_compacts() {
        let mut schedule = Schedule::new(Retention::Forever);
        assert_eq!(schedule.poll_interval(), None);
        assert_eq!(schedule.observe(Instant::now(), 1_000_000), None);
    }
}
