//! The waiting at the heart of etcd's lock and election recipes, run inside the node:
//! candidates are keys under a common prefix, ordered by creation revision, and a
//! candidate waits until every key created before its own is gone.

use super::convert;
use super::EtcdContext;
use crate::proto::etcdserverpb::{
    compare, range_request, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::proto::mvccpb::{event::EventType, KeyValue};
use bytes::Bytes;
use tonic::Status;

/// `prefix` = `name` + "/"; a candidate's key is the prefix and its lease in hex.
pub fn candidate_key(name: &[u8], lease: i64) -> Bytes {
    let mut key = name.to_vec();
    key.push(b'/');
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key.into()
}

pub fn prefix_of(name: &[u8]) -> Bytes {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix.into()
}

fn range_op(request: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(request)),
    }
}

/// The candidate created first under `prefix`, if any.
pub fn first_created(prefix: &Bytes) -> RangeRequest {
    RangeRequest {
        key: prefix.clone(),
        range_end: convert::prefix_range_end(prefix).into(),
        limit: 1,
        sort_order: range_request::SortOrder::Ascend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

/// Creates `key` (owned by `lease`) unless it exists. Returns its creation revision,
/// its current value, and the first candidate under `prefix`, with the txn's header
/// revision.
pub async fn create_candidate(
    context: &EtcdContext,
    prefix: &Bytes,
    key: &Bytes,
    value: Bytes,
    lease: i64,
) -> Result<(i64, Bytes, Option<KeyValue>, i64), Status> {
    let response = context
        .txn(TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Create as i32,
                key: key.clone(),
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
                ..Default::default()
            }],
            success: vec![
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                        lease,
                        ..Default::default()
                    })),
                },
                range_op(first_created(prefix)),
            ],
            failure: vec![
                range_op(RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                }),
                range_op(first_created(prefix)),
            ],
        })
        .await?;
    let revision = response.header.as_ref().map_or(0, |header| header.revision);
    let range_at = |index: usize| match response.responses.get(index).and_then(|op| op.response.as_ref()) {
        Some(crate::proto::etcdserverpb::response_op::Response::ResponseRange(range)) => range.kvs.first().cloned(),
        _ => None,
    };
    let owner = range_at(1);
    if response.succeeded {
        return Ok((revision, value, owner, revision));
    }
    let mine = range_at(0).ok_or_else(|| Status::internal("etcdserver: candidate key vanished"))?;
    Ok((mine.create_revision, mine.value, owner, revision))
}

/// Waits until no key under `prefix` has a creation revision up to `max_create_revision`.
pub async fn wait_deletes(context: &EtcdContext, prefix: &Bytes, max_create_revision: i64) -> Result<(), Status> {
    loop {
        let newest_before = context
            .range(RangeRequest {
                key: prefix.clone(),
                range_end: convert::prefix_range_end(prefix).into(),
                limit: 1,
                sort_order: range_request::SortOrder::Descend as i32,
                sort_target: range_request::SortTarget::Create as i32,
                max_create_revision,
                ..Default::default()
            })
            .await?;
        let Some(blocker) = newest_before.kvs.first() else {
            return Ok(());
        };
        let revision = newest_before.header.as_ref().map_or(0, |header| header.revision);
        wait_delete(context, &blocker.key, revision).await?;
    }
}

/// Waits until `key` is deleted after `revision`.
pub async fn wait_delete(context: &EtcdContext, key: &[u8], revision: i64) -> Result<(), Status> {
    let mut subscription = context
        .watch_hub
        .subscribe(convert::key_range(key, b""), revision + 1, true)
        .await;
    while let Some(response) = subscription.next().await {
        let response = response.map_err(super::errors::watch)?;
        if response.canceled {
            return Err(Status::unavailable("etcdserver: watch canceled"));
        }
        if response
            .events
            .iter()
            .any(|event| event.r#type == EventType::Delete as i32)
        {
            return Ok(());
        }
    }
    Err(Status::unavailable("etcdserver: server stopped"))
}

/// Deletes `key` when dropped unless disarmed: a waiter whose client gave up must not
/// stay in the queue.
pub struct RemoveOnDrop {
    context: Option<std::sync::Arc<EtcdContext>>,
    key: Bytes,
}

impl RemoveOnDrop {
    pub fn new(context: std::sync::Arc<EtcdContext>, key: Bytes) -> Self {
        Self {
            context: Some(context),
            key,
        }
    }

    pub fn disarm(mut self) {
        self.context = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(context) = self.context.take() {
            let key = self.key.clone();
            tokio::spawn(async move {
                let _ = context
                    .delete_range(DeleteRangeRequest {
                        key,
                        ..Default::default()
                    })
                    .await;
            });
        }
    }
}
