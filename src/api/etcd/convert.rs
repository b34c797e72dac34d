//! etcd's key-value messages to Shoal's own operations and back: the only place that
//! knows etcd keys live under the `ETCD` namespace byte and how etcd spells a span.

use crate::proto::etcdserverpb::{
    compare as etcd_compare, request_op, response_op, Compare as EtcdCompare, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest,
    TxnResponse,
};
use crate::proto::mvccpb;
use crate::proto::shoal::kv::{
    compare, op, op_result, Compare, Delete, DeleteResult, KeyValue, Op, Put, PutResult, Read, ReadResult, Span, Txn,
    TxnResult,
};
use crate::storage::keys::namespace::ETCD;
use bytes::Bytes;

/// The internal key of an etcd key.
pub fn key(etcd_key: &[u8]) -> Bytes {
    let mut internal = Vec::with_capacity(etcd_key.len() + 1);
    internal.push(ETCD);
    internal.extend_from_slice(etcd_key);
    internal.into()
}

/// The internal span of etcd's `key`/`range_end` pair: an empty end is the key alone,
/// "\0" is every key from `key` on, an end at or before `key` is nothing.
pub fn span(etcd_key: &[u8], range_end: &[u8]) -> Span {
    let end = match range_end {
        [] => Bytes::new(),
        [0] => Bytes::from_static(&[ETCD + 1]),
        _ if range_end <= etcd_key => key(etcd_key),
        _ => key(range_end),
    };
    Span {
        key: key(etcd_key),
        end,
    }
}

/// etcd's `range_end` for every key starting with `prefix` (what `--prefix` sends).
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    crate::storage::keys::prefix_end(prefix).unwrap_or_else(|| vec![0])
}

/// The engine keys of etcd's `key`/`range_end` pair (for watches).
pub fn key_range(etcd_key: &[u8], range_end: &[u8]) -> crate::storage::KeyRange {
    crate::range::kv::key_range(&span(etcd_key, range_end))
}

/// The etcd key of an internal key of the etcd namespace.
pub fn etcd_key(internal: Bytes) -> Bytes {
    debug_assert_eq!(internal.first(), Some(&ETCD), "not an etcd key");
    internal.slice(1.min(internal.len())..)
}

pub fn key_value(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: etcd_key(kv.key),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// A header carrying only a revision, as etcd puts in the responses nested in a Txn.
fn bare_header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

pub fn read(request: &RangeRequest) -> Read {
    Read {
        span: Some(span(&request.key, &request.range_end)),
        limit: request.limit,
        revision: request.revision,
        sort_order: request.sort_order,
        sort_target: request.sort_target,
        keys_only: request.keys_only,
        count_only: request.count_only,
        min_mod_revision: request.min_mod_revision,
        max_mod_revision: request.max_mod_revision,
        min_create_revision: request.min_create_revision,
        max_create_revision: request.max_create_revision,
        // etcd reports the total count.
        skip_count: false,
    }
}

pub fn put(request: PutRequest) -> Put {
    Put {
        key: key(&request.key),
        value: request.value,
        lease: request.lease,
        prev_kv: request.prev_kv,
        ignore_value: request.ignore_value,
        ignore_lease: request.ignore_lease,
    }
}

pub fn delete(request: &DeleteRangeRequest) -> Delete {
    Delete {
        span: Some(span(&request.key, &request.range_end)),
        prev_kv: request.prev_kv,
    }
}

fn compare(etcd: EtcdCompare) -> Compare {
    use etcd_compare::TargetUnion;
    let operand = etcd.target_union.map(|operand| match operand {
        TargetUnion::Version(v) => compare::Operand::Version(v),
        TargetUnion::CreateRevision(v) => compare::Operand::CreateRevision(v),
        TargetUnion::ModRevision(v) => compare::Operand::ModRevision(v),
        TargetUnion::Value(v) => compare::Operand::Value(v),
        TargetUnion::Lease(v) => compare::Operand::Lease(v),
    });
    Compare {
        // The enums share their numbers with etcd's.
        result: etcd.result,
        target: etcd.target,
        span: Some(span(&etcd.key, &etcd.range_end)),
        operand,
    }
}

pub fn txn(request: TxnRequest) -> Txn {
    let ops = |ops: Vec<RequestOp>| {
        ops.into_iter()
            .map(|request| Op {
                op: request.request.map(|request| match request {
                    request_op::Request::RequestRange(range) => op::Op::Read(read(&range)),
                    request_op::Request::RequestPut(request) => op::Op::Put(put(request)),
                    request_op::Request::RequestDeleteRange(request) => op::Op::Delete(delete(&request)),
                    request_op::Request::RequestTxn(nested) => op::Op::Txn(txn(nested)),
                }),
            })
            .collect()
    };
    Txn {
        compare: request.compare.into_iter().map(compare).collect(),
        success: ops(request.success),
        failure: ops(request.failure),
        unknown_leases: Vec::new(),
    }
}

pub fn range_response(result: ReadResult, header: Option<ResponseHeader>) -> RangeResponse {
    RangeResponse {
        header,
        kvs: result.kvs.into_iter().map(key_value).collect(),
        more: result.more,
        count: result.count,
    }
}

pub fn put_response(result: PutResult, header: Option<ResponseHeader>) -> PutResponse {
    PutResponse {
        header,
        prev_kv: result.prev_kv.map(key_value),
    }
}

pub fn delete_response(result: DeleteResult, header: Option<ResponseHeader>) -> DeleteRangeResponse {
    DeleteRangeResponse {
        header,
        deleted: result.deleted,
        prev_kvs: result.prev_kvs.into_iter().map(key_value).collect(),
    }
}

pub fn txn_response(result: TxnResult, header: Option<ResponseHeader>) -> TxnResponse {
    let responses = result
        .results
        .into_iter()
        .filter_map(|result| result.result)
        .map(|result| {
            let response = match result {
                op_result::Result::Read(read) => {
                    let revision = read.revision;
                    response_op::Response::ResponseRange(range_response(read, bare_header(revision)))
                }
                op_result::Result::Put(put) => {
                    let revision = put.revision;
                    response_op::Response::ResponsePut(put_response(put, bare_header(revision)))
                }
                op_result::Result::Delete(delete) => {
                    let revision = delete.revision;
                    response_op::Response::ResponseDeleteRange(delete_response(delete, bare_header(revision)))
                }
                op_result::Result::Txn(nested) => {
                    let revision = nested.revision;
                    response_op::Response::ResponseTxn(txn_response(nested, bare_header(revision)))
                }
            };
            ResponseOp {
                response: Some(response),
            }
        })
        .collect();
    TxnResponse {
        header,
        succeeded: result.succeeded,
        responses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::kv::key_range;

    #[test]
    fn spans_follow_etcd_conventions() {
        let range = |key: &[u8], end: &[u8]| key_range(&span(key, end));
        let single = range(b"a", b"");
        assert!(single.contains(&super::key(b"a")) && !single.contains(&super::key(b"a\0")));
        let from = range(b"b", b"\0");
        assert!(from.contains(&super::key(b"zzz")) && !from.contains(&super::key(b"a")));
        assert!(from.contains(&super::key(b"\xff\xff\xff")) && !from.contains(&[ETCD + 1]));
        let all = range(b"\0", b"\0");
        assert!(all.contains(&super::key(b"\0")) && all.contains(&super::key(b"\xff\xff")));
        let prefix = range(b"ab", b"ac");
        assert!(prefix.contains(&super::key(b"ab\xff")) && !prefix.contains(&super::key(b"ac")));
        let empty = range(b"b", b"a");
        assert!(!empty.contains(&super::key(b"b")));
    }

    #[test]
    fn key_values_come_back_with_their_etcd_key() {
        let kv = key_value(KeyValue {
            key: key(b"app/x"),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        });
        assert_eq!(kv.key.as_ref(), b"app/x");
    }
}
