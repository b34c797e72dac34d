//! Watches the room on the data volume (`storage::disk`): measures it four times a
//! second, reports it (metrics, and the member's DISK_LOW alarm, NOSPACE to etcd's
//! tools, which refuses nothing elsewhere), and while the node is low on it hands every
//! range it leads to another replica, so the members with room take the writes.

use crate::proto::shoal::command::{raft_command, AlarmChange};
use crate::proto::shoal::state::AlarmKind;
use crate::range::{encode_command, META_RANGE_ID};
use crate::router::Router;
use crate::storage::disk::{DiskSpace, Room};
use std::sync::Arc;
use std::time::Duration;

const EVERY: Duration = Duration::from_millis(250);

/// Raises this member's DISK_LOW alarm (NOSPACE to etcd's tools) while it is low on disk
/// and clears it when room comes back, as the meta range's copy here shows it; a change
/// that does not land is tried again on the next measurement.
async fn sync_alarm(router: &Router, low: bool, me: u64) {
    let raised = match router.pinned(META_RANGE_ID).await.map(|pinned| pinned.alarms()) {
        Ok(Ok(alarms)) => alarms
            .iter()
            .any(|alarm| alarm.member_id == me && alarm.alarm == AlarmKind::DiskLow as i32),
        _ => return,
    };
    if raised == low {
        return;
    }
    let command = encode_command(raft_command::Op::AlarmChange(AlarmChange {
        member_id: me,
        alarm: AlarmKind::DiskLow as i32,
        activate: low,
    }));
    match tokio::time::timeout(EVERY * 4, router.write(META_RANGE_ID, command)).await {
        Ok(Ok(_)) => tracing::info!(raised = low, "this member's NOSPACE (disk low) alarm"),
        Ok(Err(error)) => tracing::debug!(%error, "changing the disk alarm; will retry"),
        Err(_) => tracing::debug!("changing the disk alarm timed out; will retry"),
    }
}

pub async fn run(router: Arc<Router>, disk: Arc<DiskSpace>, me: u64) {
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        sync_alarm(&router, disk.is_low(), me).await;
        ticker.tick().await;
        match disk.refresh() {
            Ok((before, after)) if before != after => {
                let free = disk.free_bytes();
                let reserve = disk.reserve();
                match after {
                    Room::Enough => tracing::info!(free, reserve, "the data volume has room again: taking writes"),
                    Room::Low => tracing::warn!(
                        free,
                        reserve,
                        "the data volume is below --storage-reserve-bytes: refusing client writes, handing leadership over"
                    ),
                    Room::Critical => tracing::error!(
                        free,
                        reserve,
                        "the data volume is nearly full: taking no more log entries until room comes back"
                    ),
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot measure the data volume's free space"),
        }
        metrics::gauge!("shoal_disk_free_bytes").set(disk.free_bytes().min(u64::MAX / 2) as f64);
        metrics::gauge!("shoal_disk_room").set(match disk.room() {
            Room::Enough => 0.0,
            Room::Low => 1.0,
            Room::Critical => 2.0,
        });
        if disk.is_low() {
            hand_over(&router, me).await;
        }
    }
}

/// Moves the leadership of every range this node leads to a replica that can take it.
async fn hand_over(router: &Router, me: u64) {
    for range_id in router.local_ranges() {
        if router.status(range_id).leader() != me {
            continue;
        }
        let Some(descriptor) = router.registry().descriptor(range_id) else {
            continue;
        };
        for target in descriptor.replicas.iter().copied().filter(|replica| *replica != me) {
            if let Ok(true) = router.transfer_leader_if_ready(range_id, target).await {
                tracing::info!(
                    range = range_id,
                    to = format!("{target:x}"),
                    "handing leadership over: low on disk"
                );
                break;
            }
        }
    }
}
