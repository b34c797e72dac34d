//! etcd's KV service. The operations themselves are methods of [`EtcdContext`], so the
//! lock and election services run the same validated, routed code.

use super::{convert, errors, observe, validate, EtcdContext};
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::proto::shoal::command::{command_result, raft_command, Compact};
use crate::proto::shoal::kv::{op, op_result, Txn, TxnResult};
use crate::range::ops;
use crate::range::state_machine::refusal_from_proto;
use prost::Message;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct KvService {
    context: Arc<EtcdContext>,
}

impl KvService {
    pub fn new(context: Arc<EtcdContext>) -> Self {
        Self { context }
    }
}

fn unexpected(result: command_result::Result) -> Status {
    Status::internal(format!("etcdserver: unexpected apply result {result:?}"))
}

impl EtcdContext {
    fn check_size(&self, request: &impl Message) -> Result<(), Status> {
        if request.encoded_len() > self.limits.max_request_bytes {
            return Err(errors::request_too_large());
        }
        Ok(())
    }

    /// Replicates `op` through the range holding the internal key `key` and returns
    /// what applying it produced (a refusal becomes etcd's error) and the revision after.
    pub(super) async fn replicate(
        &self,
        key: &[u8],
        op: raft_command::Op,
    ) -> Result<(command_result::Result, i64), Status> {
        let applied = self
            .router
            .write(self.router.range_of(key), crate::range::encode_command(op))
            .await
            .map_err(errors::route)?;
        match applied.result {
            Some(command_result::Result::Error(refusal)) => Err(errors::kv(refusal_from_proto(&refusal))),
            Some(result) => Ok((result, applied.revision)),
            None => Err(Status::internal("etcdserver: empty apply result")),
        }
    }

    /// Replicates a transaction and returns its result.
    pub(super) async fn replicate_txn(&self, key: &[u8], txn: Txn) -> Result<TxnResult, Status> {
        match self.replicate(key, raft_command::Op::Txn(txn)).await? {
            (command_result::Result::Txn(result), _) => Ok(result),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Waits until this member reflects every write acknowledged before the call, for
    /// the range holding the internal key `key`.
    async fn linearize(&self, key: &[u8]) -> Result<(), Status> {
        self.router
            .linearize(self.router.range_of(key))
            .await
            .map_err(errors::route)
    }

    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, Status> {
        validate::range(&request)?;
        let read = convert::read(&request);
        let key = convert::key(&request.key);
        if !request.serializable {
            self.linearize(&key).await?;
        }
        let result = self
            .router
            .pinned(self.router.range_of(&key))
            .await
            .map_err(errors::route)?
            .read(&read, self.limits.max_response_bytes)
            .map_err(errors::kv)?;
        let header = Some(self.header(result.revision));
        Ok(convert::range_response(result, header))
    }

    pub async fn put(&self, request: PutRequest) -> Result<PutResponse, Status> {
        validate::put(&request)?;
        self.check_size(&request)?;
        let put = convert::put(request);
        let key = put.key.clone();
        match ops::only_result(self.replicate_txn(&key, ops::single(op::Op::Put(put))).await?) {
            Some(op_result::Result::Put(result)) => {
                let header = Some(self.header(result.revision));
                Ok(convert::put_response(result, header))
            }
            other => Err(Status::internal(format!("etcdserver: unexpected put result {other:?}"))),
        }
    }

    pub async fn delete_range(&self, request: DeleteRangeRequest) -> Result<DeleteRangeResponse, Status> {
        validate::delete(&request)?;
        self.check_size(&request)?;
        let delete = convert::delete(&request);
        let key = convert::key(&request.key);
        match ops::only_result(self.replicate_txn(&key, ops::single(op::Op::Delete(delete))).await?) {
            Some(op_result::Result::Delete(result)) => {
                let header = Some(self.header(result.revision));
                Ok(convert::delete_response(result, header))
            }
            other => Err(Status::internal(format!(
                "etcdserver: unexpected delete result {other:?}"
            ))),
        }
    }

    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, Status> {
        validate::txn(&request, self.limits.max_txn_ops)?;
        self.check_size(&request)?;
        // Until transactions span ranges, a txn runs in the range of its first key.
        let key = convert::key(&first_key(&request));
        let read_only = validate::txn_is_read_only(&request);
        let serializable = validate::txn_is_serializable(&request);
        let txn = convert::txn(request);
        let result = if read_only {
            if !serializable {
                self.linearize(&key).await?;
            }
            self.router
                .pinned(self.router.range_of(&key))
                .await
                .map_err(errors::route)?
                .read_only_txn(&txn)
                .map_err(errors::kv)?
        } else {
            self.replicate_txn(&key, txn).await?
        };
        let header = Some(self.header(result.revision));
        Ok(convert::txn_response(result, header))
    }

    pub async fn compact(&self, request: CompactionRequest) -> Result<CompactionResponse, Status> {
        let (revision, physical) = (request.revision, request.physical);
        let (_, current) = self
            .replicate(&convert::key(b""), raft_command::Op::Compact(Compact { revision }))
            .await?;
        if physical {
            self.router
                .wait_compacted(self.router.range_of(&convert::key(b"")), revision)
                .await
                .map_err(|error| errors::route(error.into()))?;
        }
        Ok(CompactionResponse {
            header: Some(self.header(current)),
        })
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        observe("etcdserverpb.KV", "Range", self.context.range(request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        observe("etcdserverpb.KV", "Put", self.context.put(request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        observe(
            "etcdserverpb.KV",
            "DeleteRange",
            self.context.delete_range(request.into_inner()),
        )
        .await
        .map(Response::new)
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        observe("etcdserverpb.KV", "Txn", self.context.txn(request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        observe("etcdserverpb.KV", "Compact", self.context.compact(request.into_inner()))
            .await
            .map(Response::new)
    }
}

fn first_key(request: &TxnRequest) -> bytes::Bytes {
    use crate::proto::etcdserverpb::request_op::Request as Op;
    if let Some(compare) = request.compare.first() {
        return compare.key.clone();
    }
    request
        .success
        .iter()
        .chain(&request.failure)
        .find_map(|op| match &op.request {
            Some(Op::RequestRange(range)) => Some(range.key.clone()),
            Some(Op::RequestPut(put)) => Some(put.key.clone()),
            Some(Op::RequestDeleteRange(delete)) => Some(delete.key.clone()),
            _ => None,
        })
        .unwrap_or_default()
}
