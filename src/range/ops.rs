//! Building Shoal's key-value operations (`proto/shoal/kv.proto`) and taking their
//! results apart: the small helpers front-ends and tests share.

use crate::proto::shoal::kv::{op, op_result, Delete, Op, Put, Read, Span, Txn, TxnResult};
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
