//! etcd's Maintenance service: the member's own status, and the housekeeping calls
//! etcd's operators script (`etcdctl defrag`, `etcdctl alarm list|disarm`, `etcdctl
//! snapshot save`).

use super::{errors, observe, EtcdContext, ETCD_API_VERSION};
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{
    alarm_request, AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use crate::range::FIRST_DATA_RANGE_ID;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;
/// Chunks of a snapshot buffered for a slow reader before the backup waits for it.
const SNAPSHOT_BUFFER: usize = 16;

pub struct MaintenanceService {
    context: Arc<EtcdContext>,
}

impl MaintenanceService {
    pub fn new(context: Arc<EtcdContext>) -> Self {
        Self { context }
    }

    /// A response header at the member's applied revision.
    fn current_header(&self) -> Result<crate::proto::etcdserverpb::ResponseHeader, Status> {
        Ok(self.context.header(self.context.router.newest_revision()))
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// Shoal raises no alarms (there is no space quota yet), so there is never one to
    /// list or disarm; raising one by hand would promise a read-only mode Shoal lacks.
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        observe("etcdserverpb.Maintenance", "Alarm", async {
            if request.get_ref().action() == alarm_request::AlarmAction::Activate {
                return Err(Status::unimplemented("etcdserver: raising alarms is not supported"));
            }
            Ok(Response::new(AlarmResponse {
                header: Some(self.current_header()?),
                alarms: Vec::new(),
            }))
        })
        .await
    }

    /// A backup of the whole cluster at one revision (every range's keys and the
    /// leases), streamed in Shoal's backup format with etcd's SHA-256 trailer, so
    /// `etcdctl snapshot save FILE` writes a file `shoal snapshot restore` takes.
    async fn snapshot(&self, _request: Request<SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        let (chunks, received) = tokio::sync::mpsc::channel(SNAPSHOT_BUFFER);
        let (failed, failure) = tokio::sync::oneshot::channel::<Status>();
        let context = self.context.clone();
        tokio::spawn(async move {
            let saving = crate::backup::save::save(&context.txns, context.cluster_id, context.member_id, chunks);
            let outcome = tokio::select! {
                outcome = saving => outcome,
                () = context.stopped() => Err(crate::backup::save::SaveError::Closed),
            };
            match outcome {
                Ok(saved) => tracing::info!(
                    revision = saved.revision,
                    keys = saved.keys,
                    leases = saved.leases,
                    bytes = saved.bytes,
                    "sent a snapshot"
                ),
                Err(crate::backup::save::SaveError::Closed) => {}
                Err(error) => {
                    tracing::warn!(%error, "a snapshot failed");
                    let _ = failed.send(errors::backup(error));
                }
            }
        });
        let header = self.current_header()?;
        let mut first = Some(header);
        let responses = ReceiverStream::new(received).map(move |chunk: crate::backup::save::Chunk| {
            Ok(SnapshotResponse {
                header: first.take(),
                remaining_bytes: chunk.remaining_estimate,
                blob: chunk.bytes.into(),
                version: ETCD_API_VERSION.to_string(),
            })
        });
        // A failure ends the stream with its status instead of a short, valid-looking file.
        let mut failure = Some(failure);
        let failure = tokio_stream::once(()).then(move |()| {
            let failure = failure.take();
            async move {
                match failure {
                    Some(failure) => failure.await.ok().map(Err),
                    None => None,
                }
            }
        });
        let stream = responses.chain(failure.filter_map(|status| status));
        Ok(Response::new(Box::pin(stream)))
    }

    /// Hands leadership to another member (`etcdctl move-leader`, before maintenance on
    /// the leader's machine) and answers once it has moved.
    async fn move_leader(&self, request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        observe("etcdserverpb.Maintenance", "MoveLeader", async {
            let target = request.into_inner().target_id;
            let router = &self.context.router;
            let me = self.context.member_id;
            if router.status(FIRST_DATA_RANGE_ID).leader() != me {
                return Err(Status::failed_precondition("etcdserver: not leader"));
            }
            // Every range this member leads moves, as a member's leadership does in etcd.
            let mut moving = Vec::new();
            for range_id in router.local_ranges() {
                if router.status(range_id).leader() == me {
                    let leader = router.leader_changes(range_id);
                    router.transfer_leader(range_id, target).await.map_err(errors::route)?;
                    moving.push(leader);
                }
            }
            let moved = tokio::time::timeout(router.request_timeout(), async {
                for mut leader in moving {
                    leader.wait_for(|leader| *leader == target).await.map(|_| ())?;
                }
                Ok::<(), tokio::sync::watch::error::RecvError>(())
            })
            .await;
            match moved {
                Ok(Ok(())) => Ok(Response::new(MoveLeaderResponse {
                    header: Some(self.current_header()?),
                })),
                Ok(Err(_)) => Err(Status::unavailable("etcdserver: server stopped")),
                Err(_) => Err(Status::unavailable(
                    "etcdserver: request timed out, leader transfer took too long",
                )),
            }
        })
        .await
    }

    /// Nothing to do: an LSM has no free pages to hand back, and its background
    /// compaction already rewrites tables without the versions `Compact` dropped.
    /// Answering keeps the usual `etcdctl compact` + `etcdctl defrag` scripts working.
    async fn defragment(&self, _request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        observe("etcdserverpb.Maintenance", "Defragment", async {
            Ok(Response::new(DefragmentResponse {
                header: Some(self.current_header()?),
            }))
        })
        .await
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        observe("etcdserverpb.Maintenance", "Status", async {
            let router = &self.context.router;
            let status = router.status(FIRST_DATA_RANGE_ID);
            let header = self.current_header()?;
            let db_size = i64::try_from(router.disk_space_bytes()).unwrap_or(i64::MAX);
            let leader = status.leader();
            let mut errors = if leader == 0 {
                vec!["etcdserver: no leader".to_string()]
            } else {
                Vec::new()
            };
            // The figures are the first data range's (etcd has one group); a member
            // whose other ranges lost their leader must not look healthy.
            for range in router.registry().data_ranges() {
                if range.descriptor.id != FIRST_DATA_RANGE_ID && range.view.status.leader() == 0 {
                    errors.push(format!("shoal: range {} has no leader", range.descriptor.id));
                }
            }
            Ok(Response::new(StatusResponse {
                header: Some(header),
                version: ETCD_API_VERSION.to_string(),
                db_size,
                leader,
                raft_index: status.commit_index.load(Ordering::Acquire),
                raft_term: status.term(),
                raft_applied_index: status.applied_index.load(Ordering::Acquire),
                errors,
                db_size_in_use: db_size,
                is_learner: false,
                storage_version: String::new(),
                db_size_quota: 0,
                downgrade_info: None,
            }))
        })
        .await
    }
}
