//! etcd's KV service. The operations themselves are methods of [`EtcdContext`], so the
//! lock and election services run the same validated, routed code.

use super::access;
use super::{convert, errors, observe, validate, EtcdContext};
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::proto::shoal::command::{command_result, raft_command, CommandResult, Compact};
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

impl EtcdContext {
    fn check_size(&self, request: &impl Message) -> Result<(), Status> {
        if request.encoded_len() > self.limits.max_request_bytes {
            return Err(errors::request_too_large());
        }
        Ok(())
    }

    /// Runs a transaction that writes, wherever its keys live (one range, or a
    /// two-phase commit over several).
    pub(super) async fn replicate_txn(&self, mut txn: Txn) -> Result<TxnResult, Status> {
        txn.unknown_leases = self.unknown_leases(&txn).await?;
        self.txns.write(txn).await.map_err(errors::txn)
    }

    /// The leases puts of the transaction name that do not exist (leases live in the
    /// meta range; a data range only knows the ones revoked in it). The range refuses
    /// the transaction if a put naming one is on the path it takes, as etcd does.
    async fn unknown_leases(&self, txn: &Txn) -> Result<Vec<i64>, Status> {
        let mut leases = Vec::new();
        crate::range::twophase::for_each_op(txn, &mut |_, operation| {
            if let op::Op::Put(put) = operation {
                if put.lease != 0 && !leases.contains(&put.lease) {
                    leases.push(put.lease);
                }
            }
        });
        let mut unknown = Vec::new();
        for lease in leases {
            if !crate::txn::leases::exists(&self.txns, lease)
                .await
                .map_err(errors::txn)?
            {
                unknown.push(lease);
            }
        }
        Ok(unknown)
    }

    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, Status> {
        validate::range(&request)?;
        let read = convert::read(&request);
        let spans = [crate::range::kv::key_range(
            read.span.as_ref().unwrap_or(&Default::default()),
        )];
        let limit = self.limits.max_response_bytes;
        let result = self
            .txns
            .read_spans(&spans, request.serializable, request.revision, |pinned| {
                pinned.read(&read, limit)
            })
            .await
            .map_err(errors::txn)?;
        let header = Some(self.header_at(result.revision, &spans[0].start));
        Ok(convert::range_response(result, header))
    }

    pub async fn put(&self, request: PutRequest) -> Result<PutResponse, Status> {
        validate::put(&request)?;
        self.check_size(&request)?;
        let put = convert::put(request);
        let key = put.key.clone();
        match ops::only_result(self.replicate_txn(ops::single(op::Op::Put(put))).await?) {
            Some(op_result::Result::Put(result)) => {
                let header = Some(self.header_at(result.revision, &key));
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
        match ops::only_result(self.replicate_txn(ops::single(op::Op::Delete(delete))).await?) {
            Some(op_result::Result::Delete(result)) => {
                let header = Some(self.header_at(result.revision, &key));
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
        let read_only = validate::txn_is_read_only(&request);
        let serializable = validate::txn_is_serializable(&request);
        let txn = convert::txn(request);
        let spans = ops::key_ranges(&txn);
        let result = if read_only {
            self.txns
                .read_spans(&spans, serializable, 0, |pinned| pinned.read_only_txn(&txn))
                .await
                .map_err(errors::txn)?
        } else {
            self.replicate_txn(txn).await?
        };
        let header = Some(match spans.first() {
            Some(first) => self.header_at(result.revision, &first.start),
            None => self.header(result.revision),
        });
        Ok(convert::txn_response(result, header))
    }

    /// Compacts every data range at the revision, one after the other (the compaction
    /// point is the same in all; a range that was already compacted there refuses).
    pub async fn compact(&self, request: CompactionRequest) -> Result<CompactionResponse, Status> {
        let (revision, physical) = (request.revision, request.physical);
        let mut current = 0;
        for range in self.router.registry().data_ranges() {
            let range_id = range.descriptor.id;
            let applied = self
                .router
                .write(
                    range_id,
                    crate::range::encode_command(raft_command::Op::Compact(Compact { revision })),
                )
                .await
                .map_err(errors::route)?;
            current = current.max(outcome(applied)?.1);
            if physical {
                self.router
                    .wait_compacted(range_id, revision)
                    .await
                    .map_err(|error| errors::route(error.into()))?;
            }
        }
        Ok(CompactionResponse {
            header: Some(self.header(current)),
        })
    }
}

/// What applying a command produced, a refusal as etcd's error, with the revision after.
fn outcome(applied: CommandResult) -> Result<(command_result::Result, i64), Status> {
    match applied.result {
        Some(command_result::Result::Error(refusal)) => Err(errors::kv(refusal_from_proto(&refusal))),
        Some(result) => Ok((result, applied.revision)),
        None => Err(Status::internal("etcdserver: empty apply result")),
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let token = super::auth::credentials(&request);
        let request = request.into_inner();
        observe("etcdserverpb.KV", "Range", async {
            self.context.permit(token, &access::range(&request)).await?;
            self.context.range(request).await
        })
        .await
        .map(Response::new)
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let token = super::auth::credentials(&request);
        let request = request.into_inner();
        observe("etcdserverpb.KV", "Put", async {
            self.context.permit(token, &access::put(&request)).await?;
            self.context.put(request).await
        })
        .await
        .map(Response::new)
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let token = super::auth::credentials(&request);
        let request = request.into_inner();
        observe("etcdserverpb.KV", "DeleteRange", async {
            self.context.permit(token, &access::delete(&request)).await?;
            self.context.delete_range(request).await
        })
        .await
        .map(Response::new)
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let token = super::auth::credentials(&request);
        let request = request.into_inner();
        observe("etcdserverpb.KV", "Txn", async {
            self.context.permit(token, &access::txn(&request)).await?;
            self.context.txn(request).await
        })
        .await
        .map(Response::new)
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let token = super::auth::credentials(&request);
        let request = request.into_inner();
        observe("etcdserverpb.KV", "Compact", async {
            self.context.permit_user(token).await?;
            self.context.compact(request).await
        })
        .await
        .map(Response::new)
    }
}
