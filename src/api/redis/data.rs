//! Redis keys over Shoal's transactions: linearizable reads of records, and writes
//! made conditional on what was read (a compare on the key's mod revision), so a
//! read-modify-write command (INCR, APPEND, SET NX, ...) applies exactly once, atomically,
//! wherever its keys live. Commands on one key from one node queue on a striped lock
//! first, so concurrent INCRs on a node do not keep invalidating each other's compares;
//! across nodes the compare decides and the loser tries again.

use super::keys::{self, Record};
use crate::proto::shoal::kv::{compare, op, op_result, Compare, KeyValue, Op, Read, Txn, TxnResult};
use crate::range::kv::KvError;
use crate::range::ops;
use crate::txn::{Transactions, TxnError};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Locks striping per-key command queues on a node.
const STRIPES: usize = 1024;
/// Most attempts of a conditional write that keeps losing to writers on other nodes.
const ATTEMPTS: usize = 64;
/// Longest answer a KEYS or SCAN reads at once.
const SCAN_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Store(#[from] TxnError),
    /// Lost the compare `ATTEMPTS` times in a row.
    #[error("too much contention on the key")]
    Contention,
}

/// A key as read: its record if it exists now (absent and expired read alike), and the
/// mod revision to make a write conditional on (0 when nothing is stored).
#[derive(Clone, Debug, Default)]
pub struct Stored {
    pub record: Option<Record>,
    pub mod_revision: i64,
}

impl Stored {
    fn from_kv(kv: Option<&KeyValue>, now: i64) -> Stored {
        let Some(kv) = kv else {
            return Stored::default();
        };
        let record = Record::decode(&kv.value).filter(|record| !record.expired(now));
        Stored {
            record,
            mod_revision: kv.mod_revision,
        }
    }
}

/// Keys as read at one revision, with the writes of the commands run on them so far
/// (later commands of a transaction see earlier ones' writes).
pub struct Snapshot {
    now: i64,
    read: HashMap<Bytes, Stored>,
    written: BTreeMap<Bytes, Option<Record>>,
}

impl Snapshot {
    /// Unix milliseconds the commands run at (expiry is judged by it).
    pub fn now(&self) -> i64 {
        self.now
    }

    /// The key's value now: `None` when missing or expired. Only keys named to
    /// [`Data::run`] can be asked for.
    pub fn get(&self, key: &Bytes) -> Option<&Record> {
        debug_assert!(self.read.contains_key(key), "a command read a key it did not name");
        match self.written.get(key) {
            Some(written) => written.as_ref().filter(|record| !record.expired(self.now)),
            None => self.read.get(key).and_then(|stored| stored.record.as_ref()),
        }
    }

    /// Sets (or with `None`, deletes) the key.
    pub fn set(&mut self, key: &Bytes, record: Option<Record>) {
        debug_assert!(self.read.contains_key(key), "a command wrote a key it did not name");
        self.written.insert(key.clone(), record);
    }

    /// The writes to apply: deletes of keys nothing is stored under are left out.
    fn writes(&self) -> Vec<Write> {
        self.written
            .iter()
            .filter(|(key, record)| {
                record.is_some() || self.read.get(*key).is_some_and(|stored| stored.mod_revision != 0)
            })
            .map(|(key, record)| Write {
                key: key.clone(),
                record: record.clone(),
            })
            .collect()
    }
}

/// One write of a conditional batch: the key and its new record, or `None` to delete.
pub struct Write {
    pub key: Bytes,
    pub record: Option<Record>,
}

pub struct Data {
    txns: Arc<Transactions>,
    /// Expired keys this node removed (INFO's `expired_keys`).
    pub expired: std::sync::atomic::AtomicU64,
    stripes: Vec<tokio::sync::Mutex<()>>,
}

/// Unix milliseconds now, the clock expiry is judged by.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

impl Data {
    pub fn new(txns: Arc<Transactions>) -> Data {
        Data {
            txns,
            expired: std::sync::atomic::AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// Takes the stripe locks of `keys` (in stripe order, so two commands never wait on
    /// each other), held until the guard drops.
    pub async fn lock(&self, keys: &[Bytes]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = keys.iter().map(|key| keys::crc16(key) as usize % STRIPES).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            guards.push(self.stripes[stripe].lock().await);
        }
        guards
    }

    /// Linearizable reads of internal keys, at one revision.
    pub async fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Stored>, DataError> {
        let now = now_ms();
        let reads: Vec<Op> = keys
            .iter()
            .map(|key| Op {
                op: Some(op::Op::Read(ops::read(ops::span(key.clone(), Bytes::new())))),
            })
            .collect();
        let txn = Txn {
            success: reads,
            ..Default::default()
        };
        let spans = ops::key_ranges(&txn);
        let result = self
            .txns
            .read_spans(&spans, false, 0, |pinned| pinned.read_only_txn(&txn))
            .await?;
        Ok(result
            .results
            .iter()
            .map(|result| match &result.result {
                Some(op_result::Result::Read(read)) => Stored::from_kv(read.kvs.first(), now),
                _ => Stored::default(),
            })
            .collect())
    }

    /// Applies `writes` if every key in `expected` still has the mod revision it was
    /// read at; `Ok(false)` if one changed.
    pub async fn write_if(&self, expected: &[(Bytes, i64)], writes: Vec<Write>) -> Result<bool, DataError> {
        let compare = expected
            .iter()
            .map(|(key, mod_revision)| Compare {
                result: compare::Result::Equal as i32,
                target: compare::Target::Mod as i32,
                span: Some(ops::span(key.clone(), Bytes::new())),
                operand: Some(compare::Operand::ModRevision(*mod_revision)),
            })
            .collect();
        let result = self.write(Txn {
            compare,
            success: writes.into_iter().map(write_op).collect(),
            ..Default::default()
        });
        Ok(result.await?.succeeded)
    }

    /// Applies `writes` unconditionally.
    pub async fn write_all(&self, writes: Vec<Write>) -> Result<TxnResult, DataError> {
        self.write(Txn {
            success: writes.into_iter().map(write_op).collect(),
            ..Default::default()
        })
        .await
    }

    async fn write(&self, txn: Txn) -> Result<TxnResult, DataError> {
        Ok(self.txns.write(txn).await?)
    }

    /// Runs `body` on `keys` read at one revision, and applies the writes it made only
    /// if none of the keys changed meanwhile, else runs it again on what they are now.
    /// `None` if a key of `watched` no longer has the mod revision given (WATCH).
    pub async fn run<T>(
        &self,
        keys: &[Bytes],
        watched: &[(Bytes, i64)],
        mut body: impl FnMut(&mut Snapshot) -> T,
    ) -> Result<Option<T>, DataError> {
        let mut all: Vec<Bytes> = keys.iter().chain(watched.iter().map(|(key, _)| key)).cloned().collect();
        all.sort();
        all.dedup();
        let _guards = self.lock(&all).await;
        for _ in 0..ATTEMPTS {
            let found = self.get_many(&all).await?;
            let read: HashMap<Bytes, Stored> = all.iter().cloned().zip(found).collect();
            let changed = watched
                .iter()
                .any(|(key, revision)| read.get(key).map_or(0, |stored| stored.mod_revision) != *revision);
            if changed {
                return Ok(None);
            }
            let mut snapshot = Snapshot {
                now: now_ms(),
                read,
                written: BTreeMap::new(),
            };
            let answer = body(&mut snapshot);
            let writes = snapshot.writes();
            if writes.is_empty() {
                return Ok(Some(answer));
            }
            let expected: Vec<(Bytes, i64)> = all
                .iter()
                .map(|key| {
                    (
                        key.clone(),
                        snapshot.read.get(key).map_or(0, |stored| stored.mod_revision),
                    )
                })
                .collect();
            if self.write_if(&expected, writes).await? {
                return Ok(Some(answer));
            }
            // Another node wrote one of the keys: a short pause lets it finish.
            tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 3)).await;
        }
        Err(DataError::Contention)
    }

    /// Every live key of the internal span `[start, end)`, in key order, with records.
    pub async fn scan(&self, start: Bytes, end: Bytes) -> Result<Vec<(Vec<u8>, Record)>, DataError> {
        let now = now_ms();
        let read = Read {
            span: Some(ops::span(start, end)),
            ..Default::default()
        };
        let span = crate::range::kv::key_range(read.span.as_ref().unwrap_or(&Default::default()));
        let result = self
            .txns
            .read_spans(&[span], false, 0, |pinned| pinned.read(&read, SCAN_BYTES))
            .await?;
        Ok(result
            .kvs
            .into_iter()
            .filter_map(|kv| {
                let key = keys::redis_key(&kv.key)?;
                let record = Record::decode(&kv.value)?;
                (!record.expired(now)).then_some((key, record))
            })
            .collect())
    }

    /// Up to `limit` stored keys of the internal span `[start, end)` as they are,
    /// expired ones included: (internal key, stored value, mod revision), and whether
    /// more keys follow.
    pub async fn scan_raw(
        &self,
        start: Bytes,
        end: Bytes,
        limit: i64,
    ) -> Result<(Vec<(Bytes, Bytes, i64)>, bool), DataError> {
        let read = Read {
            span: Some(ops::span(start, end)),
            limit,
            ..Default::default()
        };
        let span = crate::range::kv::key_range(read.span.as_ref().unwrap_or(&Default::default()));
        let result = self
            .txns
            .read_spans(&[span], false, 0, |pinned| pinned.read(&read, SCAN_BYTES))
            .await?;
        let more = result.more;
        Ok((
            result
                .kvs
                .into_iter()
                .map(|kv| (kv.key, kv.value, kv.mod_revision))
                .collect(),
            more,
        ))
    }

    /// Deletes every key of the internal span `[start, end)`: how many there were.
    pub async fn delete_span(&self, start: Bytes, end: Bytes) -> Result<i64, DataError> {
        let result = self
            .write(ops::single(op::Op::Delete(ops::delete(ops::span(start, end)))))
            .await?;
        Ok(match ops::only_result(result) {
            Some(op_result::Result::Delete(deleted)) => deleted.deleted,
            _ => 0,
        })
    }
}

fn write_op(write: Write) -> Op {
    Op {
        op: Some(match write.record {
            Some(record) => op::Op::Put(ops::put(write.key, record.encode())),
            None => op::Op::Delete(ops::delete(ops::span(write.key, Bytes::new()))),
        }),
    }
}

impl From<KvError> for DataError {
    fn from(error: KvError) -> Self {
        DataError::Store(TxnError::Refused(error))
    }
}
