//! Whether the cluster takes a write now, as etcd decides it: the space quota
//! (`--quota-backend-bytes`) and the alarms. A write that adds data is refused while
//! NOSPACE is raised anywhere in the cluster, and raises it (for this member) when this
//! member's data plus the write would pass the quota; every write is refused while
//! CORRUPT is raised. Deletes, compaction and lease revocation still run under NOSPACE,
//! so space can be made; reads are never refused.
//!
//! The measure is the key-value data the member holds: the live keys and values of its
//! data ranges (what decides splits), deterministic on every replica, not the engine's
//! files (an LSM's size moves with background compaction, not with the data).

use super::{Transactions, TxnError};
use crate::proto::shoal::command::{raft_command, AlarmChange};
use crate::proto::shoal::kv::{op, Txn};
use crate::proto::shoal::state::{AlarmEntry, AlarmKind};
use crate::range::{encode_command, META_RANGE_ID};
use std::sync::atomic::Ordering;

/// etcd's default quota (its recommended maximum), used when the flag is 0.
pub const DEFAULT_QUOTA_BYTES: u64 = 8 << 30;

/// The bytes a transaction may add: every put's key and value, in both branches (etcd
/// counts the larger branch; counting both only refuses earlier).
pub fn added_bytes(txn: &Txn) -> u64 {
    let mut total = 0u64;
    for operation in txn.success.iter().chain(&txn.failure) {
        total += match &operation.op {
            Some(op::Op::Put(put)) => (put.key.len() + put.value.len()) as u64,
            Some(op::Op::Txn(nested)) => added_bytes(nested),
            _ => 0,
        };
    }
    total
}

/// Whether a transaction writes data at all (a put, in either branch).
pub fn has_puts(txn: &Txn) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|operation| match &operation.op {
            Some(op::Op::Put(_)) => true,
            Some(op::Op::Txn(nested)) => has_puts(nested),
            _ => false,
        })
}

fn bit(kind: AlarmKind) -> u32 {
    1 << (kind as u32)
}

impl Transactions {
    /// The alarms raised in the cluster as this member last applied them.
    fn alarm_bits(&self) -> u32 {
        self.router.status(META_RANGE_ID).alarms.load(Ordering::Acquire)
    }

    /// The key-value bytes this member holds (its data ranges' live keys and values).
    pub fn space_used(&self) -> u64 {
        self.router.registry().live_bytes()
    }

    /// Room on this member's data volume.
    pub fn disk(&self) -> &crate::storage::disk::DiskSpace {
        &self.disk
    }

    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    /// Admits a write that adds `adds` bytes (`None`: one that adds no data, such as a
    /// delete), or refuses it.
    pub async fn admit(&self, adds: Option<u64>) -> Result<(), TxnError> {
        let alarms = self.alarm_bits();
        if alarms & bit(AlarmKind::Corrupt) != 0 {
            return Err(TxnError::Corrupt);
        }
        let Some(adds) = adds else {
            return Ok(());
        };
        // Deletes still run on a low disk (the reserve is there for them); what adds
        // data goes to a member with room.
        if self.disk.is_low() {
            return Err(TxnError::DiskFull);
        }
        if alarms & bit(AlarmKind::Nospace) != 0 {
            return Err(TxnError::NoSpace);
        }
        if self.space_used().saturating_add(adds) <= self.quota_bytes {
            return Ok(());
        }
        tracing::warn!(
            used = self.space_used(),
            quota = self.quota_bytes,
            "the member's data passed --quota-backend-bytes: raising NOSPACE"
        );
        // Refused whether or not the alarm lands now: the next write raises it again.
        if let Err(error) = self.change_alarm(self.node, AlarmKind::Nospace, true).await {
            tracing::warn!(%error, "could not raise the NOSPACE alarm");
        }
        Err(TxnError::NoSpace)
    }

    /// Raises or disarms `alarm` of `member` through the meta range's log.
    pub async fn change_alarm(&self, member: u64, alarm: AlarmKind, activate: bool) -> Result<(), TxnError> {
        let command = encode_command(raft_command::Op::AlarmChange(AlarmChange {
            member_id: member,
            alarm: alarm as i32,
            activate,
        }));
        self.router.write(META_RANGE_ID, command).await?;
        Ok(())
    }

    /// The alarms raised in the cluster as this member's copy of the meta range holds
    /// them (no round trip: for status pages, which must answer without a leader).
    pub async fn local_alarms(&self) -> Result<Vec<AlarmEntry>, TxnError> {
        let pinned = self.router.pinned(META_RANGE_ID).await?;
        Ok(pinned.alarms().map_err(crate::range::kv::KvError::from)?)
    }

    /// The alarms raised in the cluster, read current from the meta range.
    pub async fn alarms(&self) -> Result<Vec<AlarmEntry>, TxnError> {
        self.router.linearize(META_RANGE_ID).await?;
        let pinned = self.router.pinned(META_RANGE_ID).await?;
        Ok(pinned.alarms().map_err(crate::range::kv::KvError::from)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::ops;

    #[test]
    fn only_puts_count_towards_the_quota() {
        let put = ops::single(op::Op::Put(ops::put(&b"key"[..], &b"value"[..])));
        assert_eq!(added_bytes(&put), 8);
        assert!(has_puts(&put));
        let delete = ops::single(op::Op::Delete(ops::delete(ops::span(&b"a"[..], &b"z"[..]))));
        assert_eq!(added_bytes(&delete), 0);
        assert!(!has_puts(&delete));
        let nested = Txn {
            failure: vec![crate::proto::shoal::kv::Op {
                op: Some(op::Op::Txn(put.clone())),
            }],
            ..Default::default()
        };
        assert_eq!(added_bytes(&nested), 8);
        assert!(has_puts(&nested));
    }
}
