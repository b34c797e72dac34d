//! Redis keys over Shoal's transactions: linearizable reads of records, and writes
//! made conditional on what was read (a compare on the key's mod revision), so a
//! read-modify-write command (INCR, APPEND, SET NX, ...) applies exactly once, atomically,
//! wherever its keys live. Commands on one key from one node queue on a striped lock
//! first, so concurrent INCRs on a node do not keep invalidating each other's compares;
//! across nodes the compare decides and the loser tries again.

use super::keys::{self, Record};
use super::snapshot::{ElementSpan, Elements, Need, Snapshot};
use crate::proto::shoal::kv::{compare, op, op_result, read, Compare, KeyValue, Op, Read, Txn, TxnResult};
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
/// Stored keys (records and elements) read per page by a scan of a whole database.
const SCAN_PAGE_KEYS: i64 = 4096;

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
    /// The type of what is stored, expired or not (its elements may need removing).
    pub raw_kind: Option<keys::Kind>,
}

impl Stored {
    fn from_kv(kv: Option<&KeyValue>, now: i64) -> Stored {
        let Some(kv) = kv else {
            return Stored::default();
        };
        let decoded = Record::decode(&kv.value);
        let raw_kind = decoded.as_ref().map(|record| record.kind);
        let record = decoded.filter(|record| !record.expired(now));
        Stored {
            record,
            mod_revision: kv.mod_revision,
            raw_kind,
        }
    }
}

/// One change of a conditional batch.
#[derive(Clone, Debug)]
pub enum Change {
    Put(Bytes, Bytes),
    Delete(Bytes),
    /// Every key of `[start, end)` (a collection's elements).
    DeleteSpan(Bytes, Bytes),
}

impl Change {
    /// A record put or delete.
    pub fn record(key: Bytes, record: Option<Record>) -> Change {
        match record {
            Some(record) => Change::Put(key, record.encode()),
            None => Change::Delete(key),
        }
    }
}

pub struct Data {
    txns: Arc<Transactions>,
    /// Expired keys this node removed (INFO's `expired_keys`).
    pub expired: std::sync::atomic::AtomicU64,
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Commands waiting to run together, per stripe.
    pub batches: super::batch::Batches,
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
            batches: super::batch::Batches::new(STRIPES),
        }
    }

    /// Takes the stripe locks of `keys` (in stripe order, so two commands never wait on
    /// each other), held until the guard drops.
    /// The stripe every key of `keys` falls in, if they share one.
    pub fn stripe_of(keys: &[Bytes]) -> Option<usize> {
        let mut stripes = keys.iter().map(|key| keys::crc16(key) as usize % STRIPES);
        let first = stripes.next()?;
        stripes.all(|stripe| stripe == first).then_some(first)
    }

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

    /// Linearizable reads of records, at one revision.
    pub async fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Stored>, DataError> {
        let needs: Vec<Need> = keys.iter().cloned().map(Need::Record).collect();
        let (read, _) = self.load(&needs).await?;
        Ok(keys
            .iter()
            .map(|key| read.get(key).cloned().unwrap_or_default())
            .collect())
    }

    /// Reads what `needs` name, at one revision (linearizable): each key's record, and
    /// the elements asked for.
    pub async fn load(&self, needs: &[Need]) -> Result<(HashMap<Bytes, Stored>, HashMap<Bytes, Elements>), DataError> {
        if needs.is_empty() {
            // Nothing to read (a MULTI of PINGs, a HELP).
            return Ok((HashMap::new(), HashMap::new()));
        }
        /// What one read of the transaction below is for.
        enum Part {
            Record,
            Field(Bytes),
            All,
            Span(ElementSpan),
        }
        let now = now_ms();
        let read_op = |key: Bytes, end: Bytes| Op {
            op: Some(op::Op::Read(ops::read(ops::span(key, end)))),
        };
        // One read of the record per key, then its elements: positions remembered.
        let mut reads = Vec::new();
        let mut plan: Vec<(Bytes, Part)> = Vec::new();
        let mut records_planned: std::collections::HashSet<Bytes> = std::collections::HashSet::new();
        for need in needs {
            let key = need.key().clone();
            if records_planned.insert(key.clone()) {
                reads.push(read_op(key.clone(), Bytes::new()));
                plan.push((key.clone(), Part::Record));
            }
            match need {
                Need::Record(_) => {}
                Need::Fields(_, fields) => {
                    for field in fields {
                        reads.push(read_op(keys::element_key(&key, field), Bytes::new()));
                        plan.push((key.clone(), Part::Field(field.clone())));
                    }
                }
                Need::All(_) => {
                    let (start, end) = keys::elements_span(&key);
                    reads.push(read_op(start, end));
                    plan.push((key.clone(), Part::All));
                }
                Need::Span(_, span) => {
                    let mut read = ops::read(ops::span(
                        keys::element_key(&key, &span.start),
                        keys::element_key(&key, &span.end),
                    ));
                    read.limit = span.limit as i64;
                    // A limited read in key order stops after the limit (no total count).
                    read.skip_count = true;
                    if span.reverse {
                        read.sort_order = read::SortOrder::Descend as i32;
                    }
                    reads.push(Op {
                        op: Some(op::Op::Read(read)),
                    });
                    plan.push((key.clone(), Part::Span(span.clone())));
                }
                // Read once the record says where the ends are (below).
                Need::Edges(..) => {}
            }
        }
        let txn = Txn {
            success: reads,
            ..Default::default()
        };
        let spans = ops::key_ranges(&txn);
        let result = self
            .txns
            .read_spans(&spans, false, 0, |pinned| pinned.read_only_txn(&txn))
            .await?;
        let mut records: HashMap<Bytes, Stored> = HashMap::new();
        let mut elements: HashMap<Bytes, Elements> = HashMap::new();
        for ((key, part), result) in plan.into_iter().zip(&result.results) {
            let Some(op_result::Result::Read(read)) = &result.result else {
                continue;
            };
            match part {
                Part::Record => {
                    records.insert(key.clone(), Stored::from_kv(read.kvs.first(), now));
                }
                Part::Field(field) => {
                    let entry = elements.entry(key.clone()).or_default();
                    entry.asked.insert(field.clone());
                    if let Some(kv) = read.kvs.first() {
                        entry.stored.insert(field, kv.value.clone());
                    }
                }
                Part::All => {
                    let entry = elements.entry(key.clone()).or_default();
                    entry.all = true;
                    for kv in &read.kvs {
                        if let Some(field) = keys::field_of(&key, &kv.key) {
                            entry.stored.insert(Bytes::copy_from_slice(field), kv.value.clone());
                        }
                    }
                }
                Part::Span(span) => {
                    let entry = elements.entry(key.clone()).or_default();
                    let mut fields = Vec::with_capacity(read.kvs.len());
                    for kv in &read.kvs {
                        if let Some(field) = keys::field_of(&key, &kv.key) {
                            let field = Bytes::copy_from_slice(field);
                            entry.stored.insert(field.clone(), kv.value.clone());
                            fields.push(field);
                        }
                    }
                    // Known whole: the span, or the part of it up to the last one read.
                    let covered = match (read.more, span.reverse) {
                        (false, _) => (span.start, span.end),
                        (true, false) => {
                            let last = fields.iter().max().cloned().unwrap_or_else(|| span.start.clone());
                            (span.start, [&last[..], &[0]].concat().into())
                        }
                        (true, true) => {
                            let first = fields.iter().min().cloned().unwrap_or_else(|| span.end.clone());
                            (first, span.end)
                        }
                    };
                    entry.covered.push(covered);
                }
            }
        }
        self.load_list_ends(needs, &records, &mut elements, result.revision)
            .await?;
        Ok((records, elements))
    }

    /// The ends of the lists `needs` asks for, at `revision` (where their records were
    /// read): positions head.. and ..tail, which the records give.
    async fn load_list_ends(
        &self,
        needs: &[Need],
        records: &HashMap<Bytes, Stored>,
        elements: &mut HashMap<Bytes, Elements>,
        revision: i64,
    ) -> Result<(), DataError> {
        let mut wanted: Vec<(Bytes, Bytes)> = Vec::new();
        for need in needs {
            let Need::Edges(key, front, back) = need else { continue };
            elements.entry(key.clone()).or_default().edges = true;
            let Some(record) = records.get(key).and_then(|stored| stored.record.as_ref()) else {
                continue;
            };
            if record.kind != keys::Kind::List {
                continue;
            }
            let (head, count) = (record.head(), record.count() as i64);
            let front = (*front as i64).min(count);
            let back = (*back as i64).min(count);
            let positions = (head..head + front).chain(head + count - back..head + count);
            for position in positions {
                let field = keys::position_field(position);
                if !wanted
                    .iter()
                    .any(|(wanted_key, wanted_field)| wanted_key == key && *wanted_field == field)
                {
                    wanted.push((key.clone(), field));
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let reads: Vec<Op> = wanted
            .iter()
            .map(|(key, field)| {
                let mut read = ops::read(ops::span(keys::element_key(key, field), Bytes::new()));
                read.revision = revision;
                Op {
                    op: Some(op::Op::Read(read)),
                }
            })
            .collect();
        let txn = Txn {
            success: reads,
            ..Default::default()
        };
        let spans = ops::key_ranges(&txn);
        let result = self
            .txns
            .read_spans(&spans, false, revision, |pinned| pinned.read_only_txn(&txn))
            .await?;
        for ((key, field), result) in wanted.into_iter().zip(&result.results) {
            let entry = elements.entry(key).or_default();
            entry.asked.insert(field.clone());
            if let Some(op_result::Result::Read(read)) = &result.result {
                if let Some(kv) = read.kvs.first() {
                    entry.stored.insert(field, kv.value.clone());
                }
            }
        }
        Ok(())
    }

    /// Applies `changes` if every key in `expected` still has the mod revision it was
    /// read at; `Ok(false)` if one changed.
    pub async fn write_if(&self, expected: &[(Bytes, i64)], changes: Vec<Change>) -> Result<bool, DataError> {
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
            success: changes.into_iter().map(change_op).collect(),
            ..Default::default()
        });
        Ok(result.await?.succeeded)
    }

    /// Applies `changes` unconditionally.
    pub async fn write_all(&self, changes: Vec<Change>) -> Result<TxnResult, DataError> {
        self.write(Txn {
            success: changes.into_iter().map(change_op).collect(),
            ..Default::default()
        })
        .await
    }

    async fn write(&self, txn: Txn) -> Result<TxnResult, DataError> {
        Ok(self.txns.write(txn).await?)
    }

    /// Runs `body` on what `needs` name, read at one revision, and applies the changes
    /// it made only if none of the keys changed meanwhile, else runs it again on what
    /// they are now. `None` if a key of `watched` no longer has the mod revision given
    /// (WATCH).
    pub async fn run<T>(
        &self,
        needs: &[Need],
        watched: &[(Bytes, i64)],
        mut body: impl FnMut(&mut Snapshot) -> T,
    ) -> Result<Option<T>, DataError> {
        let mut needs = merge_needs(needs, watched);
        let keys: Vec<Bytes> = needs.iter().map(|need| need.key().clone()).collect();
        let _guards = self.lock(&keys).await;
        for _ in 0..ATTEMPTS {
            let (read, elements) = self.load(&needs).await?;
            let changed = watched
                .iter()
                .any(|(key, revision)| read.get(key).map_or(0, |stored| stored.mod_revision) != *revision);
            if changed {
                return Ok(None);
            }
            let mut snapshot = Snapshot::new(now_ms(), read, elements);
            let answer = body(&mut snapshot);
            let unread = snapshot.take_unread();
            if !unread.is_empty() {
                // A command needed elements it could not name before reading: read them
                // too (with the rest, at one revision) and run again.
                needs.extend(unread);
                needs = merge_needs(&needs, &[]);
                continue;
            }
            let changes = snapshot.changes();
            if changes.is_empty() {
                return Ok(Some(answer));
            }
            if self.write_if(&snapshot.expected(), changes).await? {
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
        let mut found = Vec::new();
        // One snapshot of the database whatever its collections hold.
        let mut pages = crate::txn::Pages::new(start, end, SCAN_PAGE_KEYS, SCAN_BYTES);
        while let Some(page) = pages.next(&self.txns).await? {
            found.extend(page.kvs.into_iter().filter_map(|kv| {
                let key = keys::redis_key(&kv.key)?;
                let record = Record::decode(&kv.value)?;
                (!record.expired(now)).then_some((key, record))
            }));
        }
        Ok(found)
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
            // The span may hold every Redis key: read only the batch asked for.
            skip_count: true,
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

fn change_op(change: Change) -> Op {
    Op {
        op: Some(match change {
            Change::Put(key, value) => op::Op::Put(ops::put(key, value)),
            Change::Delete(key) => op::Op::Delete(ops::delete(ops::span(key, Bytes::new()))),
            Change::DeleteSpan(start, end) => op::Op::Delete(ops::delete(ops::span(start, end))),
        }),
    }
}

/// One need per key (the widest asked), watched keys' records included; element spans
/// stay as they are, beside them.
fn merge_needs(needs: &[Need], watched: &[(Bytes, i64)]) -> Vec<Need> {
    let mut merged: BTreeMap<Bytes, Need> = BTreeMap::new();
    let mut spans: Vec<Need> = Vec::new();
    let watched = watched.iter().map(|(key, _)| Need::Record(key.clone()));
    for need in needs.iter().cloned().chain(watched) {
        let key = need.key().clone();
        if let Need::Span(..) = need {
            if !spans.contains(&need) {
                spans.push(need);
            }
            continue;
        }
        let combined = match (merged.remove(&key), need) {
            (None, need) => need,
            (Some(Need::All(_)), _) | (_, Need::All(_)) => Need::All(key.clone()),
            (Some(Need::Edges(_, front, back)), Need::Edges(_, more_front, more_back)) => {
                Need::Edges(key.clone(), front.max(more_front), back.max(more_back))
            }
            (Some(Need::Edges(_, front, back)), Need::Record(_))
            | (Some(Need::Record(_)), Need::Edges(_, front, back)) => Need::Edges(key.clone(), front, back),
            // Fields by name and edges of one key: read it whole.
            (Some(Need::Edges(..)), Need::Fields(..)) | (Some(Need::Fields(..)), Need::Edges(..)) => {
                Need::All(key.clone())
            }
            (Some(Need::Fields(_, mut fields)), Need::Fields(_, more)) => {
                fields.extend(more);
                fields.sort();
                fields.dedup();
                Need::Fields(key.clone(), fields)
            }
            (Some(Need::Fields(_, fields)), Need::Record(_)) | (Some(Need::Record(_)), Need::Fields(_, fields)) => {
                Need::Fields(key.clone(), fields)
            }
            (Some(Need::Record(_)), Need::Record(_)) => Need::Record(key.clone()),
            (Some(Need::Span(..)), _) | (_, Need::Span(..)) => unreachable!("spans are kept apart"),
        };
        merged.insert(key, combined);
    }
    // Every key read has its record read (a span alone names the key too).
    for span in &spans {
        merged
            .entry(span.key().clone())
            .or_insert_with(|| Need::Record(span.key().clone()));
    }
    merged.into_values().chain(spans).collect()
}

impl From<KvError> for DataError {
    fn from(error: KvError) -> Self {
        DataError::Store(TxnError::Refused(error))
    }
}
