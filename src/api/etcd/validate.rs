//! Checks etcd makes before a request reaches consensus, with the same outcomes.

use super::errors;
use crate::proto::etcdserverpb::{
    range_request, request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use bytes::Bytes;
use std::collections::HashSet;
use tonic::Status;

pub fn range(request: &RangeRequest) -> Result<(), Status> {
    if request.key.is_empty() {
        return Err(errors::empty_key());
    }
    if range_request::SortOrder::try_from(request.sort_order).is_err()
        || range_request::SortTarget::try_from(request.sort_target).is_err()
    {
        return Err(errors::invalid_sort_option());
    }
    Ok(())
}

pub fn put(request: &PutRequest) -> Result<(), Status> {
    if request.key.is_empty() {
        return Err(errors::empty_key());
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(errors::value_provided());
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(errors::lease_provided());
    }
    Ok(())
}

pub fn delete(request: &DeleteRangeRequest) -> Result<(), Status> {
    if request.key.is_empty() {
        return Err(errors::empty_key());
    }
    Ok(())
}

/// etcd's txn checks: the number of operations (each nesting level gets what its parent
/// left over), non-empty keys, and no key written twice on any path through the txn.
pub fn txn(request: &TxnRequest, max_ops: usize) -> Result<(), Status> {
    txn_shape(request, max_ops)?;
    check_intervals(&request.success)?;
    check_intervals(&request.failure)?;
    Ok(())
}

fn txn_shape(request: &TxnRequest, max_ops: usize) -> Result<(), Status> {
    let ops = request
        .compare
        .len()
        .max(request.success.len())
        .max(request.failure.len());
    if ops > max_ops {
        return Err(errors::too_many_ops());
    }
    if request.compare.iter().any(|compare| compare.key.is_empty()) {
        return Err(errors::empty_key());
    }
    for op in request.success.iter().chain(&request.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(range_request)) => range(range_request)?,
            Some(request_op::Request::RequestPut(put_request)) => put(put_request)?,
            Some(request_op::Request::RequestDeleteRange(delete_request)) => delete(delete_request)?,
            Some(request_op::Request::RequestTxn(nested)) => txn_shape(nested, max_ops - ops)?,
            None => return Err(errors::key_not_found()),
        }
    }
    Ok(())
}

/// A deleted span: `[start, end)`; an empty end is the single key, "\0" every key from
/// `start` on.
struct Deleted {
    start: Bytes,
    end: Bytes,
}

impl Deleted {
    fn covers(&self, key: &[u8]) -> bool {
        match self.end.as_ref() {
            [] => key == self.start.as_ref(),
            [0] => key >= self.start.as_ref(),
            end => key >= self.start.as_ref() && key < end,
        }
    }
}

fn covered(deleted: &[Deleted], key: &[u8]) -> bool {
    deleted.iter().any(|span| span.covers(key))
}

/// Keys put and spans deleted by `ops` (and what they nest), refusing a key put twice
/// or put and deleted on the same path.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Bytes>, Vec<Deleted>), Status> {
    let mut deleted: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(delete)) => Some(Deleted {
                start: delete.key.clone(),
                end: delete.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Bytes> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, deleted_then) = check_intervals(&nested.success)?;
        let (puts_else, deleted_else) = check_intervals(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || covered(&deleted, key) {
                return Err(errors::duplicate_key());
            }
            puts.insert(key.clone());
        }
        for key in puts_else {
            // The two branches never both run: the same key in both is fine.
            if (puts.contains(&key) && !puts_then.contains(&key)) || covered(&deleted, &key) {
                return Err(errors::duplicate_key());
            }
            puts.insert(key);
        }
        deleted.extend(deleted_then);
        deleted.extend(deleted_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(put)) = &op.request else {
            continue;
        };
        if puts.contains(&put.key) || covered(&deleted, &put.key) {
            return Err(errors::duplicate_key());
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, deleted))
}

/// Whether every operation of the transaction is a read (it then needs no log entry).
pub fn txn_is_read_only(request: &TxnRequest) -> bool {
    request
        .success
        .iter()
        .chain(&request.failure)
        .all(|op| matches!(op.request, Some(request_op::Request::RequestRange(_))))
}

/// Whether every read of a read-only transaction accepts a stale answer.
pub fn txn_is_serializable(request: &TxnRequest) -> bool {
    request
        .success
        .iter()
        .chain(&request.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(range)) => range.serializable,
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn delete_op(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                range_end: Bytes::copy_from_slice(end.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                success,
                failure,
                ..Default::default()
            })),
        }
    }

    fn check(success: Vec<RequestOp>) -> Result<(), Status> {
        txn(
            &TxnRequest {
                success,
                ..Default::default()
            },
            128,
        )
    }

    #[test]
    fn duplicate_writes_on_one_path_are_refused() {
        assert!(check(vec![put_op("a"), put_op("b")]).is_ok());
        assert!(check(vec![put_op("a"), put_op("a")]).is_err());
        assert!(check(vec![delete_op("a", "c"), put_op("b")]).is_err());
        assert!(check(vec![delete_op("a", "c"), put_op("c")]).is_ok());
        assert!(check(vec![delete_op("a", "\0"), put_op("zz")]).is_err());
        assert!(check(vec![delete_op("a", ""), delete_op("a", "")]).is_ok());
        // Different branches of a nested txn may write the same key...
        assert!(check(vec![nested(vec![put_op("a")], vec![put_op("a")])]).is_ok());
        // ...but not a key the outer level also writes.
        assert!(check(vec![nested(vec![put_op("a")], vec![]), put_op("a")]).is_err());
    }

    #[test]
    fn nested_levels_share_the_operation_budget() {
        let wide = TxnRequest {
            success: (0..3).map(|i| put_op(&format!("k{i}"))).collect(),
            ..Default::default()
        };
        assert!(txn(&wide, 3).is_ok());
        assert!(txn(&wide, 2).is_err());
        let deep = TxnRequest {
            success: vec![put_op("x"), nested(vec![put_op("a"), put_op("b")], vec![])],
            ..Default::default()
        };
        assert!(txn(&deep, 4).is_ok());
        assert!(txn(&deep, 3).is_err());
        let empty_op = TxnRequest {
            success: vec![RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(txn(&empty_op, 8).unwrap_err().message(), "etcdserver: key not found");
    }
}
