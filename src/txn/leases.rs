//! Leases live in the meta range (its leader keeps their deadlines); the keys attached
//! to a lease live in any data range. Revoking one (on request, or when it expired) is
//! three steps: the meta range marks it revoking (no keep-alive or new use from then
//! on), one transaction deletes every key attached to it in every range at one revision
//! and leaves a record in each range that refuses later puts with it, and the meta range
//! removes it. The task here finishes, on the meta range's leader, every revocation that
//! was marked but not finished (expired leases, and revokers that failed).

use super::{Transactions, TxnError};
use crate::proto::shoal::command::{command_result, raft_command, LeaseRevoke, LeaseRevoking};
use crate::range::kv::KvError;
use crate::range::state_machine::refusal_from_proto;
use crate::range::{encode_command, ops, META_RANGE_ID};
use std::sync::Arc;
use std::time::Duration;

const SCAN_INTERVAL: Duration = Duration::from_millis(200);

/// Revokes a lease; the revision its keys were deleted at.
pub async fn revoke(txns: &Transactions, lease: i64) -> Result<i64, TxnError> {
    let marked = txns
        .router()
        .write(
            META_RANGE_ID,
            encode_command(raft_command::Op::LeaseRevoking(LeaseRevoking { id: lease })),
        )
        .await?;
    if let Some(command_result::Result::Error(error)) = &marked.result {
        return Err(refusal_from_proto(error).into());
    }
    finish(txns, lease).await
}

/// Deletes a revoking lease's keys everywhere, then the lease.
async fn finish(txns: &Transactions, lease: i64) -> Result<i64, TxnError> {
    let deleted = txns.write(ops::revoke_lease(lease)).await?;
    txns.router()
        .write(
            META_RANGE_ID,
            encode_command(raft_command::Op::LeaseRevoke(LeaseRevoke { id: lease })),
        )
        .await?;
    Ok(deleted.revision)
}

/// Whether a lease exists and can be used: this member's copy of the meta range first,
/// and if it does not know the lease, a current one (a grant may not have reached it).
pub async fn exists(txns: &Transactions, lease: i64) -> Result<bool, TxnError> {
    let router = txns.router();
    if router
        .pinned(META_RANGE_ID)
        .await?
        .lease_exists(lease)
        .map_err(KvError::from)?
    {
        return Ok(true);
    }
    router.linearize(META_RANGE_ID).await?;
    Ok(router
        .pinned(META_RANGE_ID)
        .await?
        .lease_exists(lease)
        .map_err(KvError::from)?)
}

/// Runs until the task is aborted (at shutdown).
pub async fn run(txns: Arc<Transactions>, me: u64) {
    let mut ticker = tokio::time::interval(SCAN_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Revocations seen on the last scan: a revocation is finished here only once it has
    // been seen twice, so one that a request (or an expiry) is finishing right now is
    // left to it rather than done twice.
    let mut seen: Vec<i64> = Vec::new();
    loop {
        ticker.tick().await;
        let router = txns.router().clone();
        if router.status(META_RANGE_ID).leader() != me {
            seen.clear();
            continue;
        }
        let revoking = match router
            .pinned(META_RANGE_ID)
            .await
            .map(|pinned| pinned.revoking_leases())
        {
            Ok(Ok(revoking)) => revoking,
            _ => continue,
        };
        let stale: Vec<i64> = revoking.iter().copied().filter(|lease| seen.contains(lease)).collect();
        seen = revoking;
        for lease in stale {
            match finish(&txns, lease).await {
                Ok(revision) => {
                    tracing::info!(lease = format!("{lease:x}"), revision, "lease revoked")
                }
                Err(error) => {
                    tracing::info!(lease = format!("{lease:x}"), %error, "revoking a lease failed; will retry")
                }
            }
        }
    }
}
