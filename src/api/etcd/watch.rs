//! etcd's Watch service: many watches multiplexed on one bidirectional stream. The
//! range's watch hub produces the events; this handler speaks the protocol (create,
//! cancel, progress requests, etcd's error responses).

use super::convert;
use super::EtcdContext;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{
    watch_create_request, watch_request, WatchCreateRequest, WatchRequest, WatchResponse,
};
use crate::range::watch::{Sink, StreamId, WatchSpec, NO_WATCH_ID};
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Responses buffered per stream; a slower client makes its watchers catch up from
/// storage instead of growing this.
const STREAM_BUFFER: usize = 256;

pub struct WatchService {
    context: Arc<EtcdContext>,
}

impl WatchService {
    pub fn new(context: Arc<EtcdContext>) -> Self {
        Self { context }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<WatchStream>, Status> {
        let token = super::auth::credentials(&request);
        let stream = self.context.watch_hub.new_stream_id();
        let (sink, responses) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        self.context.watch_hub.open_stream(stream, sink.clone()).await;
        let mut session = Session {
            context: self.context.clone(),
            stream,
            sink,
            active: HashSet::new(),
            next_watch_id: 0,
            token,
        };
        let mut requests = request.into_inner();
        tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    request = requests.message() => request,
                    () = session.sink.closed() => break,
                    () = session.context.stopped() => break,
                };
                match request {
                    Ok(Some(request)) => {
                        if session.handle(request).await.is_err() {
                            break;
                        }
                    }
                    // The client closed its side or went away: the watches end with it.
                    _ => break,
                }
            }
            session.context.watch_hub.close_stream(session.stream);
        });
        use tokio_stream::StreamExt as _;
        let responses = ReceiverStream::new(responses).map(|response| response.map_err(super::errors::watch));
        Ok(Response::new(Box::pin(responses)))
    }
}

/// One client stream's watches.
struct Session {
    context: Arc<EtcdContext>,
    stream: StreamId,
    sink: Sink,
    active: HashSet<i64>,
    next_watch_id: i64,
    /// The stream's credentials: each watch needs read on all of its keys.
    token: crate::auth::Credentials,
}

/// The client stopped reading its responses.
struct Gone;

impl Session {
    async fn send(&self, response: WatchResponse) -> Result<(), Gone> {
        self.sink.send(Ok(response)).await.map_err(|_| Gone)
    }

    /// The revision a watch "from now" starts after: the frontier, below which every
    /// range has applied everything (a write acknowledged later lands above it).
    fn current_revision(&self) -> i64 {
        self.context.router.frontier()
    }

    /// A create refused as etcd refuses it: created and cancelled at once, no watch id.
    async fn refuse(&self, reason: &str) -> Result<(), Gone> {
        self.send(WatchResponse {
            header: Some(self.context.header(self.current_revision())),
            watch_id: NO_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        })
        .await
    }

    async fn handle(&mut self, request: WatchRequest) -> Result<(), Gone> {
        match request.request_union {
            Some(watch_request::RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(watch_request::RequestUnion::CancelRequest(cancel)) => {
                if self.active.remove(&cancel.watch_id) {
                    self.context.watch_hub.cancel(self.stream, cancel.watch_id).await;
                    self.send(WatchResponse {
                        header: Some(self.context.header(self.current_revision())),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                self.context.watch_hub.request_progress(self.stream).await;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, mut create: WatchCreateRequest) -> Result<(), Gone> {
        if create.key.is_empty() {
            create.key = vec![0].into();
        }
        if create.start_revision < 0 {
            return self
                .refuse("etcdserver: mvcc: required revision has been compacted")
                .await;
        }
        let end = create.range_end.as_ref();
        if !end.is_empty() && end != [0] && end <= create.key.as_ref() {
            return self.refuse("mvcc: watcher range is empty").await;
        }
        let wanted = crate::auth::perm::KeyAccess::read(&create.key, &create.range_end);
        if let Err(status) = self.context.permit(self.token.clone(), &[wanted]).await {
            return self.refuse(status.message()).await;
        }
        let limit = self.context.limits.max_watches_per_stream;
        if self.active.len() >= limit {
            return self
                .refuse(&format!(
                    "etcdserver: too many watches on one stream (at most {limit}, see --max-watches-per-stream)"
                ))
                .await;
        }
        let watch_id = if create.watch_id != 0 {
            if self.active.contains(&create.watch_id) {
                return self
                    .refuse("mvcc: duplicate watch ID provided on the WatchStream")
                    .await;
            }
            create.watch_id
        } else {
            while self.active.contains(&self.next_watch_id) {
                self.next_watch_id += 1;
            }
            self.next_watch_id += 1;
            self.next_watch_id - 1
        };
        // The created response names the revision after which events start when the
        // client gave none.
        let revision = if create.start_revision == 0 {
            // Ranges that have applied less than the newest are closed first, so "now"
            // is the present and not an idle range's past.
            self.context.router.catch_up_frontier().await;
            self.current_revision()
        } else {
            self.current_revision()
        };
        let start_revision = if create.start_revision == 0 {
            revision + 1
        } else {
            create.start_revision
        };
        let filters = create.filters();
        let filters: Vec<watch_create_request::FilterType> = filters.collect();
        self.active.insert(watch_id);
        self.send(WatchResponse {
            header: Some(self.context.header(revision)),
            watch_id,
            created: true,
            ..Default::default()
        })
        .await?;
        self.context
            .watch_hub
            .watch(WatchSpec {
                stream: self.stream,
                watch_id,
                span: convert::key_range(&create.key, &create.range_end),
                start_revision,
                no_put: filters.contains(&watch_create_request::FilterType::Noput),
                no_delete: filters.contains(&watch_create_request::FilterType::Nodelete),
                prev_kv: create.prev_kv,
                progress_notify: create.progress_notify,
                fragment: create.fragment,
            })
            .await;
        Ok(())
    }
}
