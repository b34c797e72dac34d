//! Watches: streams of changes to keys, served by any member from its own replica.
//!
//! One hub task per range turns applied revisions into watch events. It reads the
//! change log (`KvChanges`) from an engine snapshot once per batch of new revisions and
//! hands each watcher the events in its key span, in revision order:
//!
//! - a **synced** watcher is up to date with the hub and gets new events pushed;
//! - an **unsynced** watcher (it started in the past, or fell behind because its
//!   client read too slowly) catches up from storage, a bounded chunk at a time, and
//!   becomes synced when it reaches the hub.
//!
//! Each watcher tracks the next revision it needs, so every event goes out exactly
//! once and none is skipped. Responses go to the stream's bounded channel; when it is
//! full the watcher falls back to catching up from storage instead of queueing in
//! memory. A watcher whose next revision was compacted away is cancelled with the
//! compaction revision, as etcd does.

use super::Frontier;
use crate::proto::etcdserverpb::{ResponseHeader, WatchResponse};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};
use crate::storage::mvcc::{self, Change};
use crate::storage::{KeyRange, ReadView, StorageError};
use bytes::Bytes;
use prost::Message;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Events read from storage per step, and so per response to one watcher (whole
/// revisions are never split). The byte bound keeps responses under gRPC clients'
/// default 4 MiB receive limit unless a single revision is larger.
const CHUNK: mvcc::ChangeLimit = mvcc::ChangeLimit {
    changes: 1024,
    bytes: 1 << 20,
};
/// How often unsynced watchers are advanced.
const CATCH_UP_INTERVAL: Duration = Duration::from_millis(10);
/// How often a hub with watchers looks for changes held back above the frontier.
const HELD_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// How often streams whose client went away are looked for (in case the close command
/// found the hub's inbox full).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Commands waiting for the hub; senders wait when it is full.
const COMMANDS_MAX: usize = 4096;
/// Watch id etcd uses for responses that belong to no single watcher.
pub const NO_WATCH_ID: i64 = -1;

pub type StreamId = u64;
pub type Sink = mpsc::Sender<Result<WatchResponse, WatchError>>;

/// Why a hub ended a stream: its storage could not be read. The client protocol's edge
/// decides how to say so.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{0}")]
    Storage(String),
}
pub type HeaderFn = Arc<dyn Fn(i64) -> ResponseHeader + Send + Sync>;

/// What a client asked to watch.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub stream: StreamId,
    pub watch_id: i64,
    /// Internal keys.
    pub span: KeyRange,
    /// First revision whose events the watcher wants.
    pub start_revision: i64,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
}

enum Command {
    OpenStream {
        stream: StreamId,
        sink: Sink,
    },
    CloseStream {
        stream: StreamId,
    },
    Watch {
        spec: WatchSpec,
    },
    Cancel {
        stream: StreamId,
        watch_id: i64,
        done: oneshot::Sender<()>,
    },
    Progress {
        stream: StreamId,
    },
}

/// Handle to a range's watch hub.
#[derive(Clone)]
pub struct WatchHub {
    commands: mpsc::Sender<Command>,
    next_stream: Arc<std::sync::atomic::AtomicU64>,
}

/// One watcher on a private stream, for code inside the node (lock and election
/// waits). Dropping it ends the watch.
pub struct Subscription {
    hub: WatchHub,
    stream: StreamId,
    responses: mpsc::Receiver<Result<WatchResponse, WatchError>>,
}

impl Subscription {
    /// The next response (events, or a cancellation); None once the hub is gone.
    pub async fn next(&mut self) -> Option<Result<WatchResponse, WatchError>> {
        self.responses.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.close_stream(self.stream);
    }
}

impl WatchHub {
    /// Starts the node's hub on a thread of its own (its storage reads block, so they
    /// must not hold up the node's async workers); it runs until every handle is dropped
    /// or the frontier's sender is gone. It delivers the events of every local data
    /// range, up to the frontier: the revision every one of them has applied.
    pub fn start(
        source: Arc<dyn HubSource>,
        frontier: watch::Receiver<Frontier>,
        header: HeaderFn,
        progress_interval: Duration,
        max_response_bytes: usize,
    ) -> Result<Self, StorageError> {
        // What the store published is whole (an install publishes once it is done).
        let delivered = frontier.borrow().revision;
        let (commands, inbox) = mpsc::channel(COMMANDS_MAX);
        let task = HubTask {
            source,
            header,
            max_response_bytes,
            delivered,
            published: *frontier.borrow(),
            streams: HashMap::new(),
            watchers: BTreeMap::new(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| StorageError::Engine(format!("starting the watch hub: {error}")))?;
        std::thread::Builder::new()
            .name("shoal-watch".to_string())
            .spawn(move || runtime.block_on(task.run(inbox, frontier, progress_interval)))
            .map_err(|error| StorageError::Engine(format!("starting the watch hub: {error}")))?;
        Ok(Self {
            commands,
            next_stream: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        })
    }

    /// A stream id no other stream of this hub uses.
    pub fn new_stream_id(&self) -> StreamId {
        self.next_stream.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Watches `span` from `start_revision` on a private stream.
    pub async fn subscribe(&self, span: KeyRange, start_revision: i64, no_put: bool) -> Subscription {
        let stream = self.new_stream_id();
        let (sink, responses) = mpsc::channel(16);
        self.open_stream(stream, sink).await;
        self.watch(WatchSpec {
            stream,
            watch_id: 0,
            span,
            start_revision,
            no_put,
            no_delete: false,
            prev_kv: false,
            progress_notify: false,
            fragment: false,
        })
        .await;
        Subscription {
            hub: self.clone(),
            stream,
            responses,
        }
    }

    pub async fn open_stream(&self, stream: StreamId, sink: Sink) {
        let _ = self.commands.send(Command::OpenStream { stream, sink }).await;
    }

    /// Never waits (it runs from `Drop`): if the hub's inbox is full, the hub still
    /// finds the stream gone once its receiver is dropped.
    pub fn close_stream(&self, stream: StreamId) {
        let _ = self.commands.try_send(Command::CloseStream { stream });
    }

    pub async fn watch(&self, spec: WatchSpec) {
        let _ = self.commands.send(Command::Watch { spec }).await;
    }

    /// Stops a watcher; once this returns no further event of it is sent.
    pub async fn cancel(&self, stream: StreamId, watch_id: i64) {
        let (done, finished) = oneshot::channel();
        if self
            .commands
            .send(Command::Cancel { stream, watch_id, done })
            .await
            .is_ok()
        {
            let _ = finished.await;
        }
    }

    /// Asks for a progress notification on the stream (sent once all its watchers are
    /// synced).
    pub async fn request_progress(&self, stream: StreamId) {
        let _ = self.commands.send(Command::Progress { stream }).await;
    }
}

struct StreamState {
    sink: Sink,
    progress_requested: bool,
}

struct Watcher {
    spec: WatchSpec,
    /// The next revision whose events this watcher has not received.
    next_revision: i64,
    /// Events were sent since the last progress notification.
    sent_since_progress: bool,
    /// The rest of a fragmented batch that did not fit the stream's channel, sent as
    /// room frees; the batch covers revisions up to `pending_covered`. Until it is
    /// empty the watcher gets nothing new.
    pending: VecDeque<WatchResponse>,
    pending_covered: i64,
}

/// What the hub reads through: views of the engine with no range half replaced by a
/// snapshot install, and a way to ask lagging ranges to move on.
pub trait HubSource: Send + Sync {
    /// A pinned view in which no local range is mid-install, or `None` while one is.
    fn whole_view(&self) -> Option<Arc<dyn ReadView>>;
    /// The hub holds back a change at `revision` (0: none) because some data range has
    /// not applied that far: such ranges should close (move to a fresh revision).
    fn want(&self, revision: i64);
}

struct HubTask {
    source: Arc<dyn HubSource>,
    header: HeaderFn,
    max_response_bytes: usize,
    /// Every revision up to this one has been offered to the synced watchers.
    delivered: i64,
    /// The newest frontier the store published; above `delivered` while a snapshot
    /// install held the hub back.
    published: Frontier,
    streams: HashMap<StreamId, StreamState>,
    watchers: BTreeMap<(StreamId, i64), Watcher>,
}

enum Delivery {
    Sent,
    /// Some went out; these did not fit.
    Partly(VecDeque<WatchResponse>),
    Full,
    Closed,
}

impl HubTask {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Command>,
        mut frontier: watch::Receiver<Frontier>,
        progress_interval: Duration,
    ) {
        let mut catch_up = tokio::time::interval(CATCH_UP_INTERVAL);
        catch_up.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress = tokio::time::interval(progress_interval);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        progress.reset();
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut held = tokio::time::interval(HELD_CHECK_INTERVAL);
        held.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let outcome = tokio::select! {
                command = inbox.recv() => match command {
                    Some(command) => self.handle(command),
                    None => return,
                },
                changed = frontier.changed() => {
                    if changed.is_err() {
                        return; // the store is gone: the node is stopping
                    }
                    let published = *frontier.borrow_and_update();
                    self.advance(published)
                }
                _ = catch_up.tick(), if self.has_unsynced() || self.has_pending() || self.held_back() => {
                    self.advance(self.published).and_then(|()| self.catch_up())
                }
                _ = held.tick(), if !self.watchers.is_empty() => self.ask_for_held_changes(),
                _ = sweep.tick() => {
                    self.sweep_closed_streams();
                    Ok(())
                }
                _ = progress.tick() => {
                    self.notify_progress();
                    Ok(())
                }
            };
            if let Err(error) = outcome {
                tracing::error!(%error, "watch hub cannot read storage; closing its streams");
                for (_, stream) in self.streams.drain() {
                    let _ = stream.sink.try_send(Err(WatchError::Storage(error.to_string())));
                }
                self.watchers.clear();
            }
        }
    }

    fn handle(&mut self, command: Command) -> Result<(), StorageError> {
        match command {
            Command::OpenStream { stream, sink } => {
                self.streams.insert(
                    stream,
                    StreamState {
                        sink,
                        progress_requested: false,
                    },
                );
            }
            Command::CloseStream { stream } => self.drop_stream(stream),
            Command::Watch { spec } => {
                let next_revision = spec.start_revision.max(1);
                self.watchers.insert(
                    (spec.stream, spec.watch_id),
                    Watcher {
                        spec,
                        next_revision,
                        sent_since_progress: false,
                        pending: VecDeque::new(),
                        pending_covered: 0,
                    },
                );
                // A watcher starting in the past catches up on the next tick.
            }
            Command::Cancel { stream, watch_id, done } => {
                self.watchers.remove(&(stream, watch_id));
                let _ = done.send(());
            }
            Command::Progress { stream } => {
                if let Some(state) = self.streams.get_mut(&stream) {
                    state.progress_requested = true;
                }
                self.answer_progress_requests();
            }
        }
        Ok(())
    }

    fn drop_stream(&mut self, stream: StreamId) {
        self.streams.remove(&stream);
        self.watchers.retain(|(owner, _), _| *owner != stream);
    }

    fn is_synced(&self, watcher: &Watcher) -> bool {
        watcher.next_revision > self.delivered
    }

    fn has_unsynced(&self) -> bool {
        self.watchers.values().any(|watcher| !self.is_synced(watcher))
    }

    /// A snapshot install kept the hub from offering what the store published.
    fn held_back(&self) -> bool {
        self.delivered < self.published.revision
    }

    /// Tells the store whether a change waits above the frontier (a range that applied
    /// further than another holds it back).
    fn ask_for_held_changes(&mut self) -> Result<(), StorageError> {
        let Some(view) = self.source.whole_view() else {
            return Ok(());
        };
        let limit = mvcc::ChangeLimit {
            changes: 1,
            bytes: usize::MAX,
        };
        let (changes, _) = mvcc::read_changes(view.as_ref(), self.delivered + 1, i64::MAX - 1, limit)?;
        self.source.want(changes.first().map_or(0, |change| change.revision));
        Ok(())
    }

    fn has_pending(&self) -> bool {
        self.watchers.values().any(|watcher| !watcher.pending.is_empty())
    }

    /// Streams whose client is gone: their watchers go with them.
    fn sweep_closed_streams(&mut self) {
        let closed: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, state)| state.sink.is_closed())
            .map(|(stream, _)| *stream)
            .collect();
        for stream in closed {
            self.drop_stream(stream);
        }
    }

    /// Sends what fits of `key`'s pending fragments; once they are all out, the watcher
    /// moves past the batch they belong to.
    fn flush_pending(&mut self, key: (StreamId, i64)) {
        let Some(state) = self.streams.get(&key.0) else {
            self.drop_stream(key.0);
            return;
        };
        let Some(watcher) = self.watchers.get_mut(&key) else {
            return;
        };
        let mut closed = false;
        while let Some(response) = watcher.pending.pop_front() {
            match state.sink.try_reserve() {
                Ok(permit) => permit.send(Ok(response)),
                Err(mpsc::error::TrySendError::Full(())) => {
                    watcher.pending.push_front(response);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(())) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            self.drop_stream(key.0);
            return;
        }
        watcher.next_revision = watcher.pending_covered + 1;
        watcher.sent_since_progress = true;
    }

    /// Offers the revisions after `delivered` up to `revision` to the synced watchers.
    fn advance(&mut self, published: Frontier) -> Result<(), StorageError> {
        if published.revision >= self.published.revision {
            self.published = published;
        }
        let revision = self.published.revision;
        while self.delivered < revision {
            let Some(view) = self.source.whole_view() else {
                return Ok(()); // the catch-up timer tries again
            };
            let compact = self.published.compact;
            let from = self.delivered + 1;
            let synced: Vec<(StreamId, i64)> = self
                .watchers
                .iter()
                .filter(|(_, watcher)| self.is_synced(watcher))
                .map(|(key, _)| *key)
                .collect();
            if from < compact {
                // The hub fell behind a compaction: whoever needed what it missed is
                // cancelled; everyone else goes on from the compaction point.
                for key in synced {
                    if self
                        .watchers
                        .get(&key)
                        .is_some_and(|watcher| watcher.next_revision < compact)
                    {
                        self.cancel_compacted(key, compact);
                    }
                }
                self.delivered = compact - 1;
                continue;
            }
            let (changes, covered) = mvcc::read_changes(view.as_ref(), from, revision, CHUNK)?;
            for key in synced {
                self.offer(key, view.as_ref(), &changes, covered)?;
            }
            self.delivered = covered;
        }
        self.answer_progress_requests();
        Ok(())
    }

    /// Sends pending fragments, and moves every other unsynced watcher one chunk closer
    /// to the hub.
    fn catch_up(&mut self) -> Result<(), StorageError> {
        let with_pending: Vec<(StreamId, i64)> = self
            .watchers
            .iter()
            .filter(|(_, watcher)| !watcher.pending.is_empty())
            .map(|(key, _)| *key)
            .collect();
        for key in with_pending {
            self.flush_pending(key);
        }
        let Some(view) = self.source.whole_view() else {
            return Ok(()); // a snapshot is being installed: the next tick tries again
        };
        let compact = self.published.compact;
        let behind: Vec<(StreamId, i64)> = self
            .watchers
            .iter()
            .filter(|(_, watcher)| !self.is_synced(watcher) && watcher.pending.is_empty())
            .map(|(key, _)| *key)
            .collect();
        for key in behind {
            let Some(watcher) = self.watchers.get(&key) else {
                continue;
            };
            let from = watcher.next_revision;
            if from < compact {
                self.cancel_compacted(key, compact);
                continue;
            }
            let (changes, covered) = mvcc::read_changes(view.as_ref(), from, self.delivered, CHUNK)?;
            self.offer(key, view.as_ref(), &changes, covered)?;
        }
        self.answer_progress_requests();
        Ok(())
    }

    /// Sends `key`'s watcher its events among `changes` (which cover up to `covered`).
    fn offer(
        &mut self,
        key: (StreamId, i64),
        view: &dyn ReadView,
        changes: &[Change],
        covered: i64,
    ) -> Result<(), StorageError> {
        let Some(watcher) = self.watchers.get(&key) else {
            return Ok(());
        };
        if !watcher.pending.is_empty() {
            return Ok(());
        }
        let spec = &watcher.spec;
        let mut events = Vec::new();
        for change in changes {
            if change.revision < watcher.next_revision || !spec.span.contains(&change.key) {
                continue;
            }
            let deleted = change.record.is_tombstone();
            if (deleted && spec.no_delete) || (!deleted && spec.no_put) {
                continue;
            }
            let prev_kv = if spec.prev_kv {
                mvcc::version_before(view, &change.key, change.revision)?.map(|record| key_value(&change.key, record))
            } else {
                None
            };
            events.push(to_event(change, prev_kv));
        }
        if events.is_empty() {
            if let Some(watcher) = self.watchers.get_mut(&key) {
                // A watcher that starts in the future keeps its start.
                watcher.next_revision = watcher.next_revision.max(covered + 1);
            }
            return Ok(());
        }
        let responses = self.responses(key.1, spec.fragment, events, covered);
        match self.deliver(key.0, responses) {
            Delivery::Sent => {
                if let Some(watcher) = self.watchers.get_mut(&key) {
                    watcher.next_revision = covered + 1;
                    watcher.sent_since_progress = true;
                }
            }
            Delivery::Partly(rest) => {
                if let Some(watcher) = self.watchers.get_mut(&key) {
                    watcher.pending = rest;
                    watcher.pending_covered = covered;
                    watcher.sent_since_progress = true;
                }
            }
            // Not one response went out; the watcher re-reads these revisions later.
            Delivery::Full => metrics::counter!("shoal_watch_deliveries_deferred_total").increment(1),
            Delivery::Closed => self.drop_stream(key.0),
        }
        Ok(())
    }

    /// One response, or (if the client allows fragments and it is too large) several.
    fn responses(&self, watch_id: i64, fragment: bool, events: Vec<Event>, revision: i64) -> Vec<WatchResponse> {
        let whole = WatchResponse {
            header: Some((self.header)(revision)),
            watch_id,
            events,
            ..Default::default()
        };
        if !fragment || whole.encoded_len() <= self.max_response_bytes {
            return vec![whole];
        }
        let mut pieces = Vec::new();
        let mut current = Vec::new();
        let mut size = 0;
        for event in whole.events {
            let event_size = event.encoded_len();
            if !current.is_empty() && size + event_size > self.max_response_bytes {
                pieces.push(std::mem::take(&mut current));
                size = 0;
            }
            size += event_size;
            current.push(event);
        }
        pieces.push(current);
        let last = pieces.len() - 1;
        pieces
            .into_iter()
            .enumerate()
            .map(|(index, events)| WatchResponse {
                header: Some((self.header)(revision)),
                watch_id,
                events,
                fragment: index != last,
                ..Default::default()
            })
            .collect()
    }

    /// Sends what fits. Nothing fitting is `Full` (the watcher re-reads the revisions
    /// later, holding no memory); the fragments of one batch that did not fit come back
    /// in `Partly`, to follow as room frees, so a batch of more fragments than the
    /// channel holds still goes out whole, in order.
    fn deliver(&self, stream: StreamId, responses: Vec<WatchResponse>) -> Delivery {
        let Some(state) = self.streams.get(&stream) else {
            return Delivery::Closed;
        };
        let mut responses: VecDeque<WatchResponse> = responses.into();
        let mut sent = 0;
        while let Some(response) = responses.pop_front() {
            match state.sink.try_reserve() {
                Ok(permit) => {
                    permit.send(Ok(response));
                    sent += 1;
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    responses.push_front(response);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(())) => return Delivery::Closed,
            }
        }
        match (sent, responses.is_empty()) {
            (_, true) => Delivery::Sent,
            (0, false) => Delivery::Full,
            (_, false) => Delivery::Partly(responses),
        }
    }

    fn cancel_compacted(&mut self, key: (StreamId, i64), compact: i64) {
        if self.watchers.remove(&key).is_none() {
            return;
        }
        let response = WatchResponse {
            header: Some((self.header)(self.delivered)),
            watch_id: key.1,
            canceled: true,
            compact_revision: compact,
            cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
            ..Default::default()
        };
        if let Some(state) = self.streams.get(&key.0) {
            // The stream may be full; the cancellation must still arrive.
            let sink = state.sink.clone();
            tokio::spawn(async move {
                let _ = sink.send(Ok(response)).await;
            });
        }
    }

    /// Periodic progress for watchers that asked for it and had no events since.
    fn notify_progress(&mut self) {
        let due: Vec<(StreamId, i64)> = self
            .watchers
            .iter()
            .filter(|(_, watcher)| watcher.spec.progress_notify && self.is_synced(watcher))
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            let Some(watcher) = self.watchers.get_mut(&key) else {
                continue;
            };
            if std::mem::take(&mut watcher.sent_since_progress) {
                continue;
            }
            let response = WatchResponse {
                header: Some((self.header)(self.delivered)),
                watch_id: key.1,
                ..Default::default()
            };
            if let Some(state) = self.streams.get(&key.0) {
                let _ = state.sink.try_send(Ok(response));
            }
        }
    }

    /// A requested progress notification goes out once every watcher of the stream is
    /// synced: its revision then promises that no earlier event is still to come.
    fn answer_progress_requests(&mut self) {
        let waiting: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, state)| state.progress_requested)
            .map(|(stream, _)| *stream)
            .collect();
        for stream in waiting {
            let all_synced = self
                .watchers
                .iter()
                .filter(|((owner, _), _)| *owner == stream)
                .all(|(_, watcher)| self.is_synced(watcher));
            if !all_synced {
                continue;
            }
            let response = WatchResponse {
                header: Some((self.header)(self.delivered)),
                watch_id: NO_WATCH_ID,
                ..Default::default()
            };
            if let Some(state) = self.streams.get_mut(&stream) {
                if state.sink.try_send(Ok(response)).is_ok() {
                    state.progress_requested = false;
                }
            }
        }
    }
}

/// etcd's key-value of an internal key (the namespace byte dropped). The hub still
/// speaks etcd's watch messages; it learns Shoal's own when watches span ranges.
fn key_value(internal: &[u8], record: mvcc::Record) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(internal.get(1..).unwrap_or_default()),
        create_revision: record.create_revision,
        mod_revision: record.mod_revision,
        version: record.version,
        value: Bytes::from(record.value),
        lease: record.lease,
    }
}

fn to_event(change: &Change, prev_kv: Option<KeyValue>) -> Event {
    if change.record.is_tombstone() {
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: Bytes::copy_from_slice(change.key.get(1..).unwrap_or_default()),
                mod_revision: change.revision,
                ..Default::default()
            }),
            prev_kv,
        }
    } else {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(key_value(&change.key, change.record.clone())),
            prev_kv,
        }
    }
}
