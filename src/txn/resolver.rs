//! Finishes transactions whose coordinator failed: every so often the leader of each
//! data range looks at the locks the range holds, and resolves those it has seen for
//! longer than the lock TTL (see [`super::Transactions::resolve`]). Without it, keys
//! nobody touches would stay locked, and watches would stall below the lock.

use super::Transactions;
use std::sync::Arc;
use std::time::Duration;

const SCAN_INTERVAL: Duration = Duration::from_millis(500);

/// Runs until the task is aborted (at shutdown).
pub async fn run(txns: Arc<Transactions>, me: u64) {
    let mut ticker = tokio::time::interval(SCAN_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let router = txns.router().clone();
        for range in router.registry().data_ranges() {
            if range.view.status.leader() != me {
                continue;
            }
            let range_id = range.descriptor.id;
            let locks = match router.pinned(range_id).await.map(|pinned| pinned.locks()) {
                Ok(Ok(locks)) => locks,
                _ => continue,
            };
            for lock in locks {
                if !txns.is_abandoned(&lock.txn_id) {
                    continue;
                }
                tracing::info!(
                    range = range_id,
                    txn = %super::hex(&lock.txn_id),
                    primary = lock.primary_range,
                    "resolving a lock its coordinator left"
                );
                if let Err(error) = txns.resolve(&lock.txn_id, lock.primary_range, Some(range_id)).await {
                    tracing::info!(range = range_id, %error, "resolving a lock failed; will retry");
                }
            }
        }
    }
}
