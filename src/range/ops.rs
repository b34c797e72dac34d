//! Building Shoal's key-value operations (`proto/shoal/kv.proto`) and taking their
//! results apart: the small helpers front-ends and tests share.

use crate::proto::shoal::kv::{op, op_result, Delete, Op, Put, Read, Span, Txn, TxnResult};
use crate::storage::KeyRange;
use bytes::Bytes;

pub fn span(key: impl Into<Bytes>, end: impl Into<Bytes>) -> Span {
    Span {
        key: key.into(),
        end: end.into(),
    }
}

/// A transaction of one operation, with no compares: how a lone put or delete is
/// applied.
pub fn single(operation: op::Op) -> Txn {
    Txn {
        compare: Vec::new(),
        success: vec![Op { op: Some(operation) }],
        failure: Vec::new(),
        unknown_leases: Vec::new(),
    }
}

pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Put {
    Put {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

pub fn read(span: Span) -> Read {
    Read {
        span: Some(span),
        ..Default::default()
    }
}

pub fn delete(span: Span) -> Delete {
    Delete {
        span: Some(span),
        prev_kv: false,
    }
}

/// The result of a transaction's only operation (see [`single`]).
pub fn only_result(result: TxnResult) -> Option<op_result::Result> {
    let mut results = result.results;
    if results.len() != 1 {
        return None;
    }
    results.pop().and_then(|result| result.result)
}

/// The engine keys a transaction reads, compares or writes, span by span (what decides
/// which ranges it touches).
pub fn key_ranges(txn: &Txn) -> Vec<KeyRange> {
    fn visit(txn: &Txn, out: &mut Vec<KeyRange>) {
        let whole = Span::default();
        for compare in &txn.compare {
            out.push(super::kv::key_range(compare.span.as_ref().unwrap_or(&whole)));
        }
        for operation in txn.success.iter().chain(&txn.failure) {
            match &operation.op {
                Some(op::Op::Read(read)) => out.push(super::kv::key_range(read.span.as_ref().unwrap_or(&whole))),
                Some(op::Op::Put(put)) => out.push(super::kv::key_range(&span(put.key.clone(), Bytes::new()))),
                Some(op::Op::Delete(delete)) => out.push(super::kv::key_range(delete.span.as_ref().unwrap_or(&whole))),
                Some(op::Op::Txn(nested)) => visit(nested, out),
                Some(op::Op::RevokeLease(_)) => out.push(super::kv::key_range(&all_keys_span())),
                None => {}
            }
        }
    }
    let mut out = Vec::new();
    visit(txn, &mut out);
    // An empty span touches no range.
    out.retain(|keys| keys.end.as_ref() != Some(&keys.start));
    out
}

/// Every key of every front-end's namespace: what a lease revocation may touch.
pub fn all_keys_span() -> Span {
    span(vec![0x01], vec![0xff])
}

/// A transaction revoking a lease: every key attached to it, in every range, deleted at
/// one revision.
pub fn revoke_lease(lease: i64) -> Txn {
    single(op::Op::RevokeLease(crate::proto::shoal::kv::RevokeLease { lease }))
}
