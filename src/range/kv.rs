//! Key-value semantics over the MVCC records (etcd's, which Shoal's own operations
//! follow): spans, reads with their options, and transaction compares. Used both by the state machine (inside writes)
//! and by the read path (from a pinned engine view), so reads and writes agree.

use crate::proto::shoal::kv::{compare, read, Compare, KeyValue, Read, ReadResult, Span};
use crate::storage::mvcc::{MvccRead, Record, RecordIter};
use crate::storage::{KeyRange, StorageError};
use bytes::Bytes;

/// Why a key-value operation was refused. Every replica refuses the same command the
/// same way, so these also travel as replicated results.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("member not found")]
    UnknownMember,
    #[error("lease already exists")]
    LeaseExists,
    #[error("member ID already exist")]
    MemberExists,
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    #[error("can only promote a learner member")]
    MemberNotLearner,
    /// A membership change refused for another reason (said in the text).
    #[error("{0}")]
    MembershipRefused(String),
    /// The command's revision is not above the range's (see `STALE_REVISION`).
    #[error("stale revision")]
    StaleRevision,
    /// The command does not belong to this kind of range.
    #[error("{0} is not served by this range")]
    WrongRange(&'static str),
    /// Planned against another epoch of the range, or touching keys outside its span.
    #[error("range epoch mismatch: {detail}")]
    EpochMismatch {
        detail: String,
        current: Vec<crate::proto::shoal::state::RangeDescriptor>,
    },
    #[error("bad split: {0}")]
    BadSplit(String),
    /// Keys are locked by a transaction over several ranges (its id and primary range).
    #[error("keys are locked by a transaction in progress")]
    Locked { txn_id: Vec<u8>, primary: u64 },
    /// The transaction was rolled back; nothing of it applied.
    #[error("the transaction was aborted")]
    Aborted,
    /// A rollback came after the transaction committed.
    #[error("the transaction committed")]
    Committed,
    #[error("bad commit: {0}")]
    BadCommit(String),
    /// A Range whose response would be `size` bytes, over the `limit` a response may be.
    #[error("response of {size} bytes is over the limit of {limit}")]
    ResponseTooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The engine keys a span covers: `[key, end)`, or the key alone when `end` is empty;
/// an `end` at or before `key` covers nothing.
pub fn key_range(span: &Span) -> KeyRange {
    let start = span.key.to_vec();
    let end = if span.end.is_empty() {
        let mut end = start.clone();
        end.push(0);
        end
    } else if span.end <= span.key {
        start.clone()
    } else {
        span.end.to_vec()
    };
    KeyRange::new(start, Some(end))
}

pub fn to_key_value(key: &[u8], record: Record) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(key),
        create_revision: record.create_revision,
        mod_revision: record.mod_revision,
        version: record.version,
        value: Bytes::from(record.value),
        lease: record.lease,
    }
}

/// Revisions a read can see: everything from `compact` to `current`.
#[derive(Clone, Copy, Debug)]
pub struct Revisions {
    pub current: i64,
    pub compact: i64,
}

impl Revisions {
    /// Checks a requested revision (<= 0 means the newest).
    pub fn check(&self, requested: i64) -> Result<(), KvError> {
        if requested <= 0 {
            Ok(())
        } else if requested > self.current {
            Err(KvError::FutureRevision)
        } else if requested < self.compact {
            Err(KvError::Compacted)
        } else {
            Ok(())
        }
    }
}

fn is_default_ordering(request: &Read) -> bool {
    let order = request.sort_order();
    order == read::SortOrder::None
        || (request.sort_target() == read::SortTarget::Key && order == read::SortOrder::Ascend)
}

fn has_revision_filters(request: &Read) -> bool {
    request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0
}

/// Runs a read at `revisions` (the view's state). `header_revision` is what the
/// result reports: the store revision, or inside a transaction the revision the
/// transaction is building. A response is kept under `max_response_bytes`: when the
/// client set a limit (keys in key order, no filters) it is cut short with `more`, as
/// a page; otherwise it is refused with its size, before it is built whole.
pub fn range(
    view: &dyn MvccRead,
    request: &Read,
    revisions: Revisions,
    header_revision: i64,
    max_response_bytes: usize,
) -> Result<ReadResult, KvError> {
    revisions.check(request.revision)?;
    let whole = Span::default();
    let requested = request.span.as_ref().unwrap_or(&whole);
    let span = key_range(requested);
    let at_newest = request.revision <= 0 || request.revision == revisions.current;
    let records: RecordIter<'_> = if at_newest && requested.end.is_empty() {
        // One key: a point lookup stops at the newest table holding it and skips the
        // others by their bloom filters, where a scan merges every table it overlaps.
        let key = span.start.clone();
        Box::new(
            view.latest(&key)
                .transpose()
                .map(|record| record.map(|record| (key, record)))
                .into_iter(),
        )
    } else if at_newest {
        view.scan_latest(&span)
    } else {
        view.scan_at(&span, request.revision)
    };

    // Without sorting or filters the first `limit + 1` keys decide `more`; otherwise
    // every key is needed before cutting.
    let fetch_limit = if !is_default_ordering(request) || has_revision_filters(request) || request.limit <= 0 {
        usize::MAX
    } else {
        usize::try_from(request.limit).unwrap_or(usize::MAX).saturating_add(1)
    };
    let pageable = fetch_limit != usize::MAX;
    let mut count = 0i64;
    let mut kvs = Vec::new();
    // Encoded size of the kvs so far, and whether a page was cut for size.
    let mut size = 0usize;
    let mut cut_for_size = false;
    let mut too_large = false;
    for item in records {
        if request.skip_count && pageable && kvs.len() >= fetch_limit {
            break;
        }
        let (key, mut record) = item?;
        count += 1;
        if request.count_only || kvs.len() >= fetch_limit || cut_for_size {
            continue;
        }
        if request.keys_only && request.sort_target() != read::SortTarget::Value {
            record.value = Vec::new();
        }
        let kv = to_key_value(&key, record);
        // A repeated field costs a tag and a length besides the message.
        size += prost::Message::encoded_len(&kv) + 6;
        if size > max_response_bytes {
            if pageable && !kvs.is_empty() {
                cut_for_size = true;
                continue;
            }
            // Only the size is counted on from here, for the error.
            too_large = true;
        }
        if !too_large {
            kvs.push(kv);
        }
    }
    if too_large {
        return Err(KvError::ResponseTooLarge {
            size,
            limit: max_response_bytes,
        });
    }

    prune(&mut kvs, request);
    sort(&mut kvs, request);
    let mut more = cut_for_size;
    if request.limit > 0 && kvs.len() as i64 > request.limit {
        kvs.truncate(request.limit as usize);
        more = true;
    }
    if request.keys_only {
        for kv in &mut kvs {
            kv.value = Bytes::new();
        }
    }
    Ok(ReadResult {
        kvs,
        more,
        count,
        revision: header_revision,
    })
}

fn prune(kvs: &mut Vec<KeyValue>, request: &Read) {
    if request.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= request.max_mod_revision);
    }
    if request.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= request.min_mod_revision);
    }
    if request.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= request.max_create_revision);
    }
    if request.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= request.min_create_revision);
    }
}

fn sort(kvs: &mut [KeyValue], request: &Read) {
    use read::{SortOrder, SortTarget};
    let target = request.sort_target();
    let mut order = request.sort_order();
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    if order == SortOrder::None || (target == SortTarget::Key && order == SortOrder::Ascend) {
        return; // keys come out of the engine ascending
    }
    // Stable sorts, so equal targets stay in key order, as etcd's results do.
    match target {
        SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        kvs.reverse();
    }
}

/// Whether every key the compare covers satisfies it (etcd: a missing key compares as
/// an empty version, except that a value compare on a missing key is false).
pub fn compare_holds(view: &dyn MvccRead, compare: &Compare) -> Result<bool, KvError> {
    let span = key_range(compare.span.as_ref().unwrap_or(&Span::default()));
    let mut any = false;
    for item in view.scan_latest(&span) {
        let (_, record) = item?;
        any = true;
        if !compare_record(compare, &record) {
            return Ok(false);
        }
    }
    if any {
        return Ok(true);
    }
    if compare.target() == compare::Target::Value {
        return Ok(false);
    }
    Ok(compare_record(compare, &Record::default()))
}

/// A compare over the keys of `part` (a piece of its span one range holds): whether
/// any key is there, and whether every one there satisfies it.
pub fn compare_part(view: &dyn MvccRead, compare: &Compare, part: &Span) -> Result<(bool, bool), KvError> {
    let mut any = false;
    for item in view.scan_latest(&key_range(part)) {
        let (_, record) = item?;
        any = true;
        if !compare_record(compare, &record) {
            return Ok((true, false));
        }
    }
    Ok((any, true))
}

/// A compare whose span holds no key at all (etcd: a missing key compares as an empty
/// version, except that a value compare is false).
pub fn compare_missing(compare: &Compare) -> bool {
    compare.target() != compare::Target::Value && compare_record(compare, &Record::default())
}

/// Sorts and cuts a read's keys gathered from several ranges as the read asks.
pub fn sort_and_limit(result: &mut ReadResult, request: &Read) {
    sort(&mut result.kvs, request);
    if request.limit > 0 && result.kvs.len() as i64 > request.limit {
        result.kvs.truncate(request.limit as usize);
        result.more = true;
    }
}

fn compare_record(compare: &Compare, record: &Record) -> bool {
    use compare::{Operand, Result as CompareResult, Target as CompareTarget};
    let ordering = match compare.target() {
        CompareTarget::Value => {
            let wanted: &[u8] = match &compare.operand {
                Some(Operand::Value(value)) => value,
                _ => &[],
            };
            record.value.as_slice().cmp(wanted)
        }
        target => {
            let wanted = match (&compare.operand, target) {
                (Some(Operand::Version(v)), CompareTarget::Version) => *v,
                (Some(Operand::CreateRevision(v)), CompareTarget::Create) => *v,
                (Some(Operand::ModRevision(v)), CompareTarget::Mod) => *v,
                (Some(Operand::Lease(v)), CompareTarget::Lease) => *v,
                _ => 0,
            };
            let actual = match target {
                CompareTarget::Version => record.version,
                CompareTarget::Create => record.create_revision,
                CompareTarget::Mod => record.mod_revision,
                CompareTarget::Lease => record.lease,
                CompareTarget::Value => unreachable!("handled above"),
            };
            actual.cmp(&wanted)
        }
    };
    match compare.result() {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_a_key_alone_or_up_to_their_end() {
        let span = |key: &[u8], end: &[u8]| {
            key_range(&Span {
                key: key.to_vec().into(),
                end: end.to_vec().into(),
            })
        };
        let single = span(b"a", b"");
        assert!(single.contains(b"a") && !single.contains(b"a\0"));
        let up_to = span(b"b", b"d");
        assert!(up_to.contains(b"b") && up_to.contains(b"c\xff") && !up_to.contains(b"d"));
        let empty = span(b"b", b"a");
        assert!(!empty.contains(b"b") && !empty.contains(b"a"));
    }

    #[test]
    fn revision_checks_name_the_right_error() {
        let revisions = Revisions {
            current: 10,
            compact: 5,
        };
        assert!(revisions.check(0).is_ok() && revisions.check(5).is_ok() && revisions.check(10).is_ok());
        assert!(matches!(revisions.check(11), Err(KvError::FutureRevision)));
        assert!(matches!(revisions.check(4), Err(KvError::Compacted)));
    }
}
