//! etcd's KV service. The operations themselves are methods of [`EtcdContext`], so the
//! lock and election services run the same validated, routed code.

use super::{errors, observe, validate, EtcdContext};
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::proto::shoal::command::{command_result, raft_command};
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

fn revision_of(header: Option<ResponseHeader>) -> i64 {
    header.map_or(0, |header| header.revision)
}

impl EtcdContext {
    fn check_size(&self, request: &impl Message) -> Result<(), Status> {
        if request.encoded_len() > self.limits.max_request_bytes {
            return Err(errors::request_too_large());
        }
        Ok(())
    }

    /// Replicates `op` through the range holding `key` and returns what applying it
    /// produced (a refusal becomes etcd's error).
    pub(super) async fn replicate(&self, key: &[u8], op: raft_command::Op) -> Result<command_result::Result, Status> {
        let result = self
            .router
            .write(self.router.range_of(key), crate::range::encode_command(op))
            .await
            .map_err(errors::route)?
            .result
            .ok_or_else(|| Status::internal("etcdserver: empty apply result"))?;
        match result {
            command_result::Result::Error(refusal) => Err(errors::kv(refusal_from_proto(&refusal))),
            result => Ok(result),
        }
    }

    async fn linearize(&self, key: &[u8]) -> Result<(), Status> {
        self.router
            .linearize(self.router.range_of(key))
            .await
            .map_err(errors::route)
    }

    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, Status> {
        validate::range(&request)?;
        if !request.serializable {
            self.linearize(&request.key).await?;
        }
        let mut response = self
            .router
            .pinned(self.router.range_of(&request.key))
            .await
            .map_err(errors::route)?
            .range(&request, self.limits.max_response_bytes)
            .map_err(errors::kv)?;
        response.header = Some(self.header(revision_of(response.header)));
        Ok(response)
    }

    pub async fn put(&self, request: PutRequest) -> Result<PutResponse, Status> {
        validate::put(&request)?;
        self.check_size(&request)?;
        let key = request.key.clone();
        match self.replicate(&key, raft_command::Op::Put(request)).await? {
            command_result::Result::Put(mut response) => {
                response.header = Some(self.header(revision_of(response.header)));
                Ok(response)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_range(&self, request: DeleteRangeRequest) -> Result<DeleteRangeResponse, Status> {
        validate::delete(&request)?;
        self.check_size(&request)?;
        let key = request.key.clone();
        match self.replicate(&key, raft_command::Op::DeleteRange(request)).await? {
            command_result::Result::DeleteRange(mut response) => {
                response.header = Some(self.header(revision_of(response.header)));
                Ok(response)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, Status> {
        validate::txn(&request, self.limits.max_txn_ops)?;
        self.check_size(&request)?;
        // Until transactions span ranges, a txn runs in the range of its first key.
        let key = first_key(&request);
        let mut response = if validate::txn_is_read_only(&request) {
            if !validate::txn_is_serializable(&request) {
                self.linearize(&key).await?;
            }
            self.router
                .pinned(self.router.range_of(&key))
                .await
                .map_err(errors::route)?
                .read_only_txn(&request)
                .map_err(errors::kv)?
        } else {
            match self.replicate(&key, raft_command::Op::Txn(request)).await? {
                command_result::Result::Txn(response) => response,
                other => return Err(unexpected(other)),
            }
        };
        response.header = Some(self.header(revision_of(response.header)));
        Ok(response)
    }

    pub async fn compact(&self, request: CompactionRequest) -> Result<CompactionResponse, Status> {
        let (revision, physical) = (request.revision, request.physical);
        match self.replicate(b"", raft_command::Op::Compact(request)).await? {
            command_result::Result::Compact(mut response) => {
                if physical {
                    self.router
                        .wait_compacted(crate::range::FIRST_RANGE_ID, revision)
                        .await
                        .map_err(|error| errors::route(error.into()))?;
                }
                response.header = Some(self.header(revision_of(response.header)));
                Ok(response)
            }
            other => Err(unexpected(other)),
        }
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
