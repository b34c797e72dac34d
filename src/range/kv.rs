//! etcd's key-value semantics over the MVCC records: key spans, Range with its
//! options, and transaction compares. Used both by the state machine (inside writes)
//! and by the read path (from a pinned engine view), so reads and writes agree.

use crate::proto::etcdserverpb::{compare, range_request, Compare, RangeRequest, RangeResponse, ResponseHeader};
use crate::proto::mvccpb::KeyValue;
use crate::storage::keys::{self, namespace};
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
    /// A Range whose response would be `size` bytes, over the `limit` a response may be.
    #[error("response of {size} bytes is over the limit of {limit}")]
    ResponseTooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The engine key of an etcd key.
pub fn internal_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(namespace::ETCD);
    out.extend_from_slice(key);
    out
}

/// The engine keys an etcd `key`/`range_end` pair covers (etcd's conventions: empty end
/// is the single key, "\0" is everything from `key` on).
pub fn key_span(key: &[u8], range_end: &[u8]) -> KeyRange {
    let start = internal_key(key);
    let end = match range_end {
        [] => {
            let mut end = start.clone();
            end.push(0);
            end
        }
        [0] => vec![namespace::ETCD + 1],
        _ if range_end <= key => start.clone(),
        _ => internal_key(range_end),
    };
    KeyRange::new(start, Some(end))
}

/// The whole etcd namespace.
pub fn etcd_span() -> KeyRange {
    KeyRange::new(vec![namespace::ETCD], Some(vec![namespace::ETCD + 1]))
}

pub fn to_key_value(internal: &[u8], record: Record) -> KeyValue {
    debug_assert_eq!(internal.first(), Some(&namespace::ETCD));
    KeyValue {
        key: Bytes::copy_from_slice(&internal[1..]),
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

fn is_default_ordering(request: &RangeRequest) -> bool {
    let order = request.sort_order();
    order == range_request::SortOrder::None
        || (request.sort_target() == range_request::SortTarget::Key && order == range_request::SortOrder::Ascend)
}

fn has_revision_filters(request: &RangeRequest) -> bool {
    request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0
}

/// Runs a Range at `revisions` (the view's state). `header_revision` is what the
/// response reports: the store revision, or inside a transaction the revision the
/// transaction is building. A response is kept under `max_response_bytes`: when the
/// client set a limit (keys in key order, no filters) it is cut short with `more`, as
/// a page; otherwise it is refused with its size, before it is built whole.
pub fn range(
    view: &dyn MvccRead,
    request: &RangeRequest,
    revisions: Revisions,
    header_revision: i64,
    max_response_bytes: usize,
) -> Result<RangeResponse, KvError> {
    revisions.check(request.revision)?;
    let span = key_span(&request.key, &request.range_end);
    let at_newest = request.revision <= 0 || request.revision == revisions.current;
    let records: RecordIter<'_> = if at_newest && request.range_end.is_empty() {
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
        let (key, mut record) = item?;
        count += 1;
        if request.count_only || kvs.len() >= fetch_limit || cut_for_size {
            continue;
        }
        if request.keys_only && request.sort_target() != range_request::SortTarget::Value {
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
    Ok(RangeResponse {
        header: Some(ResponseHeader {
            revision: header_revision,
            ..Default::default()
        }),
        kvs,
        more,
        count,
    })
}

fn prune(kvs: &mut Vec<KeyValue>, request: &RangeRequest) {
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

fn sort(kvs: &mut [KeyValue], request: &RangeRequest) {
    use range_request::{SortOrder, SortTarget};
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
    let span = key_span(&compare.key, &compare.range_end);
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
    if compare.target() == compare::CompareTarget::Value {
        return Ok(false);
    }
    Ok(compare_record(compare, &Record::default()))
}

fn compare_record(compare: &Compare, record: &Record) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let ordering = match compare.target() {
        CompareTarget::Value => {
            let wanted: &[u8] = match &compare.target_union {
                Some(TargetUnion::Value(value)) => value,
                _ => &[],
            };
            record.value.as_slice().cmp(wanted)
        }
        target => {
            let wanted = match (&compare.target_union, target) {
                (Some(TargetUnion::Version(v)), CompareTarget::Version) => *v,
                (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create) => *v,
                (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod) => *v,
                (Some(TargetUnion::Lease(v)), CompareTarget::Lease) => *v,
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

/// The span of `key`'s prefix, as etcdctl's `--prefix` would send it.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    keys::prefix_end(prefix).unwrap_or_else(|| vec![0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_follow_etcd_conventions() {
        let single = key_span(b"a", b"");
        assert!(single.contains(&internal_key(b"a")));
        assert!(!single.contains(&internal_key(b"a\0")));
        let from = key_span(b"b", b"\0");
        assert!(from.contains(&internal_key(b"zzz")) && !from.contains(&internal_key(b"a")));
        let all = key_span(b"\0", b"\0");
        assert!(all.contains(&internal_key(b"\0")) && all.contains(&internal_key(b"\xff\xff")));
        let prefix = key_span(b"ab", &prefix_range_end(b"ab"));
        assert!(prefix.contains(&internal_key(b"ab\xff")) && !prefix.contains(&internal_key(b"ac")));
        let empty = key_span(b"b", b"a");
        assert!(!empty.contains(&internal_key(b"b")));
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
