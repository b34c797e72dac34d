//! Splits data ranges that grew past `--range-max-bytes` or `--range-max-keys`, and
//! records every range's descriptor in the meta range's map.
//!
//! The leader of a range does it: it finds the key in the middle of the range (by bytes,
//! or by keys when the key limit was passed) over a pinned view, on a blocking thread, gets
//! a new range id from the meta range, and proposes `Split` planned on the range's epoch
//! (a range that changed meanwhile refuses it; the next round tries again). The split
//! itself is one Raft entry applied by every replica (see `range::state_machine`).
//! Afterwards, and at every round for each range it leads, the leader makes sure the
//! meta range's map holds the range's current descriptor, so a crash between the split
//! and the map update is repaired by the next leader.

use crate::config::SplitLimits;
use crate::proto::shoal::command::{command_result, raft_command, AllocateRangeId, Split, UpdateRangeMap};
use crate::proto::shoal::state::RangeDescriptor;
use crate::range::snapshot::descriptor_span;
use crate::range::{encode_command, META_RANGE_ID};
use crate::router::{RouteError, Router};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often the leader looks at its ranges.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("{0}")]
    Refused(String),
    #[error("storage: {0}")]
    Storage(String),
}

/// Runs until the task is aborted (at shutdown).
pub async fn run(router: Arc<Router>, me: u64, limits: SplitLimits) {
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for range in router.registry().data_ranges() {
            let status = &range.view.status;
            if status.leader() != me {
                continue;
            }
            if let Err(error) = record_in_meta(&router, &range.descriptor).await {
                tracing::debug!(range = range.descriptor.id, %error, "recording the range in the meta range");
            }
            let keys = status.live_keys.load(Ordering::Acquire);
            let bytes = status.live_bytes.load(Ordering::Acquire);
            if !limits.exceeded(keys, bytes) {
                continue;
            }
            let by_keys = limits.max_keys > 0 && keys > limits.max_keys;
            match split(&router, &range.descriptor, by_keys).await {
                Ok(Some(right)) => {
                    tracing::info!(
                        range = range.descriptor.id,
                        new_range = right,
                        keys,
                        bytes,
                        "split the range"
                    )
                }
                Ok(None) => {}
                Err(error) => tracing::info!(range = range.descriptor.id, %error, "split not done; will retry"),
            }
        }
    }
}

/// Splits the range in the middle; the new range's id, or `None` if it cannot split.
pub async fn split(router: &Router, descriptor: &RangeDescriptor, by_keys: bool) -> Result<Option<u64>, SplitError> {
    let range_id = descriptor.id;
    let pinned = router.pinned(range_id).await?;
    let span = descriptor_span(descriptor);
    let point = tokio::task::spawn_blocking(move || pinned.split_point(&span, by_keys))
        .await
        .map_err(|error| SplitError::Storage(error.to_string()))?
        .map_err(|error| SplitError::Storage(error.to_string()))?;
    let Some(point) = point else {
        return Ok(None);
    };
    let allocated = router
        .write(
            META_RANGE_ID,
            encode_command(raft_command::Op::AllocateRangeId(AllocateRangeId {})),
        )
        .await?;
    let new_range_id = allocated.allocated_range_id;
    if new_range_id == 0 {
        return Err(SplitError::Refused(format!(
            "no range id allocated: {:?}",
            allocated.result
        )));
    }
    let command = encode_command(raft_command::Op::Split(Split {
        split_key: point.key.into(),
        new_range_id,
        expected_epoch: descriptor.epoch,
        left_keys: point.left_keys,
        left_bytes: point.left_bytes,
    }));
    let applied = router.write(range_id, command).await?;
    if let Some(command_result::Result::Error(refusal)) = applied.result {
        return Err(SplitError::Refused(refusal.detail));
    }
    // Both halves go into the meta range's map now; the next rounds repeat it if this
    // node fails first.
    for id in [range_id, new_range_id] {
        if let Some(descriptor) = router.registry().descriptor(id) {
            record_in_meta(router, &descriptor).await?;
        }
    }
    Ok(Some(new_range_id))
}

/// Makes sure the meta range's map holds `descriptor` (or a newer one).
async fn record_in_meta(router: &Router, descriptor: &RangeDescriptor) -> Result<(), SplitError> {
    let recorded = {
        let pinned = router.pinned(META_RANGE_ID).await?;
        let map = pinned
            .range_map()
            .map_err(|error| SplitError::Storage(error.to_string()))?;
        map.ranges
            .iter()
            .find(|known| known.id == descriptor.id)
            .is_some_and(|known| (known.epoch, known.conf_version) >= (descriptor.epoch, descriptor.conf_version))
    };
    if recorded {
        return Ok(());
    }
    let command = encode_command(raft_command::Op::UpdateRangeMap(UpdateRangeMap {
        descriptors: vec![descriptor.clone()],
    }));
    router.write(META_RANGE_ID, command).await?;
    Ok(())
}
