//! etcd's Maintenance service: the member's own status, and the housekeeping calls
//! etcd's operators script (`etcdctl defrag`, `etcdctl alarm list|disarm`, `etcdctl
//! snapshot save`).

use super::{errors, observe, EtcdContext, ETCD_API_VERSION};
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{
    alarm_request, AlarmMember, AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse,
};
use crate::proto::shoal::state::{AlarmEntry, AlarmKind};
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
    /// etcd's alarms, kept cluster-wide in the meta range: GET lists them (of one type,
    /// or all), ACTIVATE raises one for a member, DEACTIVATE disarms one (`etcdctl alarm
    /// disarm` lists them, then disarms each). A NOSPACE disarmed while the member is
    /// still over its quota is raised again by the next write that adds data.
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let token = super::auth::credentials(&request);
        observe("etcdserverpb.Maintenance", "Alarm", async {
            self.context.permit_admin(token).await?;
            let request = request.into_inner();
            let txns = &self.context.txns;
            let raised = txns.alarms().await.map_err(errors::txn)?;
            // DISK_LOW is Shoal's own: etcd's clients name it NOSPACE.
            let kind = match AlarmKind::try_from(request.alarm) {
                Ok(AlarmKind::DiskLow) | Err(_) => AlarmKind::AlarmNone,
                Ok(kind) => kind,
            };
            // A member low on disk is NOSPACE to etcd's tools.
            let disk_low = AlarmEntry {
                member_id: request.member_id,
                alarm: AlarmKind::DiskLow as i32,
            };
            let entry = AlarmEntry {
                member_id: request.member_id,
                alarm: kind as i32,
            };
            let alarms = match request.action() {
                alarm_request::AlarmAction::Get => {
                    let mut listed: Vec<AlarmEntry> = Vec::new();
                    // A member over its quota and low on disk is one NOSPACE, as in etcd.
                    for alarm in raised.into_iter().map(as_etcd_alarm) {
                        if (kind == AlarmKind::AlarmNone || alarm.alarm == kind as i32) && !listed.contains(&alarm) {
                            listed.push(alarm);
                        }
                    }
                    listed
                }
                alarm_request::AlarmAction::Activate => {
                    if kind == AlarmKind::AlarmNone {
                        Vec::new()
                    } else {
                        txns.change_alarm(request.member_id, kind, true)
                            .await
                            .map_err(errors::txn)?;
                        vec![entry]
                    }
                }
                alarm_request::AlarmAction::Deactivate => {
                    // The member raises it again while it is still low.
                    if kind == AlarmKind::Nospace && raised.contains(&disk_low) {
                        txns.change_alarm(request.member_id, AlarmKind::DiskLow, false)
                            .await
                            .map_err(errors::txn)?;
                    }
                    if raised.contains(&entry) || (kind == AlarmKind::Nospace && raised.contains(&disk_low)) {
                        txns.change_alarm(request.member_id, kind, false)
                            .await
                            .map_err(errors::txn)?;
                        vec![entry]
                    } else {
                        Vec::new()
                    }
                }
            };
            Ok(Response::new(AlarmResponse {
                header: Some(self.current_header()?),
                alarms: alarms
                    .into_iter()
                    .map(|alarm| AlarmMember {
                        member_id: alarm.member_id,
                        alarm: alarm.alarm,
                    })
                    .collect(),
            }))
        })
        .await
    }

    /// A hash of this member's key-value data at its newest revision (etcd hashes its
    /// whole backend file; Shoal's is HashKV's at the newest revision, so healthy
    /// members agree on it when no write is in flight).
    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let token = super::auth::credentials(&_request);
        observe("etcdserverpb.Maintenance", "Hash", async {
            self.context.permit_admin(token).await?;
            let hashed = self.context.txns.hash_kv(0).await.map_err(errors::txn)?;
            Ok(Response::new(HashResponse {
                header: Some(self.context.header(hashed.revision)),
                hash: hashed.hash,
            }))
        })
        .await
    }

    /// etcd's HashKV: a hash of this member's key-value history up to a revision, equal
    /// on every healthy member for the same revision and compaction point (what the
    /// corruption check compares).
    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let token = super::auth::credentials(&request);
        observe("etcdserverpb.Maintenance", "HashKV", async {
            self.context.permit_admin(token).await?;
            let revision = request.into_inner().revision;
            let hashed = self.context.txns.hash_kv(revision).await.map_err(errors::txn)?;
            Ok(Response::new(HashKvResponse {
                header: Some(self.current_header()?),
                hash: hashed.hash,
                compact_revision: hashed.compact_revision,
                hash_revision: hashed.revision,
            }))
        })
        .await
    }

    /// A backup of the whole cluster at one revision (every range's keys and the
    /// leases), streamed in Shoal's backup format with etcd's SHA-256 trailer, so
    /// `etcdctl snapshot save FILE` writes a file `shoal snapshot restore` takes.
    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        self.context.permit_admin(super::auth::credentials(&request)).await?;
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
        let token = super::auth::credentials(&request);
        observe("etcdserverpb.Maintenance", "MoveLeader", async {
            self.context.permit_admin(token).await?;
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
        let token = super::auth::credentials(&_request);
        observe("etcdserverpb.Maintenance", "Defragment", async {
            self.context.permit_admin(token).await?;
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
            let disk = self.context.txns.disk();
            if disk.is_low() {
                errors.push(format!(
                    "shoal: the data volume is below --storage-reserve-bytes ({} bytes free of a {} byte reserve): this member refuses writes",
                    disk.free_bytes(),
                    disk.reserve()
                ));
            }
            // As etcd lists raised alarms among a member's status errors.
            if let Ok(alarms) = self.context.txns.local_alarms().await {
                for alarm in alarms.into_iter().map(as_etcd_alarm) {
                    let kind = AlarmKind::try_from(alarm.alarm).map_or("UNKNOWN", |kind| kind.as_str_name());
                    errors.push(format!("memberID:{} alarm:{kind} ", alarm.member_id));
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
                db_size_quota: i64::try_from(self.context.txns.quota_bytes()).unwrap_or(i64::MAX),
                downgrade_info: None,
            }))
        })
        .await
    }
}

/// An alarm as etcd's clients know them: a member low on disk is NOSPACE.
fn as_etcd_alarm(alarm: AlarmEntry) -> AlarmEntry {
    if alarm.alarm == AlarmKind::DiskLow as i32 {
        AlarmEntry {
            alarm: AlarmKind::Nospace as i32,
            ..alarm
        }
    } else {
        alarm
    }
}
