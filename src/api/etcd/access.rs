//! What an etcd request does to which keys, for the permission check once auth is on
//! (etcd's rules): a range reads `[key, range_end)`; a put or delete writes (and reads,
//! with `prev_kv`); a txn needs read on every compared key and whatever each operation
//! of both branches needs.

use crate::auth::perm::KeyAccess;
use crate::proto::etcdserverpb::{request_op, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};

pub fn range(request: &RangeRequest) -> Vec<KeyAccess> {
    vec![KeyAccess::read(&request.key, &request.range_end)]
}

pub fn put(request: &PutRequest) -> Vec<KeyAccess> {
    let mut accesses = vec![KeyAccess::write(&request.key, &[])];
    if request.prev_kv {
        accesses.push(KeyAccess::read(&request.key, &[]));
    }
    accesses
}

pub fn delete(request: &DeleteRangeRequest) -> Vec<KeyAccess> {
    let mut accesses = vec![KeyAccess::write(&request.key, &request.range_end)];
    if request.prev_kv {
        accesses.push(KeyAccess::read(&request.key, &request.range_end));
    }
    accesses
}

pub fn txn(request: &TxnRequest) -> Vec<KeyAccess> {
    let mut accesses: Vec<KeyAccess> = request
        .compare
        .iter()
        .map(|compare| KeyAccess::read(&compare.key, &compare.range_end))
        .collect();
    for operation in request.success.iter().chain(&request.failure) {
        match &operation.request {
            Some(request_op::Request::RequestRange(range_request)) => accesses.extend(range(range_request)),
            Some(request_op::Request::RequestPut(put_request)) => accesses.extend(put(put_request)),
            Some(request_op::Request::RequestDeleteRange(delete_request)) => accesses.extend(delete(delete_request)),
            Some(request_op::Request::RequestTxn(nested)) => accesses.extend(txn(nested)),
            None => {}
        }
    }
    accesses
}

/// Every key under `prefix` (what a lock or an election named `prefix` uses).
pub fn prefix(prefix: &[u8], write: bool) -> KeyAccess {
    let end = crate::client::prefix_range_end(prefix);
    if write {
        KeyAccess::write(prefix, &end)
    } else {
        KeyAccess::read(prefix, &end)
    }
}
