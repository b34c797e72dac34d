//! The gateway's streaming calls, `/v3/watch` and `/v3/lease/keepalive`, as grpc-gateway
//! streams them: the request body is a sequence of JSON request objects, the response a
//! long body (chunked over HTTP/1.1) of one line per response, `{"result": ...}`, or
//! `{"error": {...}}` as the last line if the stream fails.
//!
//! The requests are handed to the gRPC service itself as a gRPC request stream (each
//! JSON object re-encoded as one protobuf message), so watches and keep-alives run the
//! very code gRPC clients get. When the request body ends, a keep-alive stream ends with
//! it (etcd answers what was asked, then closes), while a watch stays open (as etcd's does
//! after its client half-closes) until the client goes away or the node stops.

use super::json::{FromJson, Json, ObjectSplitter};
use super::{bad_json, error_response, http_status, too_large, Gateway, BODY_READ_TIMEOUT};
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{LeaseKeepAliveRequest, WatchRequest};
use bytes::Bytes;
use http::{header, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt;
use serde::Serialize;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::codec::Codec;
use tonic::{Status, Streaming};

/// Requests queued for the service before the body is read further.
const REQUEST_QUEUE: usize = 16;

/// What to do with the service's request stream when the HTTP request body ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AtBodyEnd {
    /// End it: the service answers what it was asked and finishes.
    Close,
    /// Keep it open until the response is dropped (the client went away).
    KeepOpen,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub(super) async fn watch(gateway: &Gateway, body: Body, token: Option<&HeaderValue>) -> http::Response<Body> {
    bidirectional::<WatchRequest, _, _, _>(gateway, body, "watch", AtBodyEnd::KeepOpen, |requests| {
        gateway
            .watch
            .watch(super::with_token(tonic::Request::new(requests), token))
    })
    .await
}

pub(super) async fn keep_alive(gateway: &Gateway, body: Body, token: Option<&HeaderValue>) -> http::Response<Body> {
    bidirectional::<LeaseKeepAliveRequest, _, _, _>(gateway, body, "keepalive", AtBodyEnd::Close, |requests| {
        gateway
            .lease
            .lease_keep_alive(super::with_token(tonic::Request::new(requests), token))
    })
    .await
}

/// Reads JSON objects off a request body.
struct RequestReader {
    body: Body,
    splitter: ObjectSplitter,
    limit: usize,
}

impl RequestReader {
    /// The next request of the body, None at its end.
    async fn next<Req: FromJson>(&mut self) -> Result<Option<Req>, Status> {
        loop {
            if let Some(object) = self.splitter.next_object().map_err(|error| bad_json(&error))? {
                return Req::from_json(&object).map(Some).map_err(|error| bad_json(&error));
            }
            if self.splitter.pending_bytes() > self.limit {
                return Err(too_large(self.limit));
            }
            match self.body.frame().await {
                None if self.splitter.has_partial() => {
                    return Err(Status::invalid_argument("the request body ended inside a JSON object"))
                }
                None => return Ok(None),
                Some(Err(status)) => {
                    return Err(Status::invalid_argument(format!("reading the request body: {status}")))
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.splitter.push(&data);
                    }
                }
            }
        }
    }
}

/// A gRPC message frame: uncompressed flag, length, protobuf bytes.
fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let length = message.encoded_len();
    let mut frame = Vec::with_capacity(5 + length);
    frame.push(0);
    frame.extend_from_slice(&(length as u32).to_be_bytes());
    message.encode_raw(&mut frame);
    frame.into()
}

async fn bidirectional<Req, Resp, Call, Answer>(
    gateway: &Gateway,
    body: Body,
    kind: &'static str,
    at_end: AtBodyEnd,
    call: Call,
) -> http::Response<Body>
where
    Req: FromJson + prost::Message + Default + Send + 'static,
    Resp: Send + 'static,
    Call: FnOnce(Streaming<Req>) -> Answer,
    Answer: Future<Output = Result<tonic::Response<ResponseStream<Resp>>, Status>>,
    for<'m> Json<'m, Resp>: Serialize,
{
    let limit = gateway.body_bytes_max;
    let mut reader = RequestReader {
        body,
        splitter: ObjectSplitter::default(),
        limit,
    };
    // As grpc-gateway: a first request that does not read is refused before any stream
    // opens; an empty body opens a stream with no request.
    let first = match tokio::time::timeout(BODY_READ_TIMEOUT, reader.next::<Req>()).await {
        Err(_) => {
            return error_response(&Status::deadline_exceeded(
                "the first request of the stream did not arrive in time",
            ))
        }
        Ok(Err(status)) => return error_response(&status),
        Ok(Ok(first)) => first,
    };
    let (frames, frames_out) = mpsc::channel::<Bytes>(REQUEST_QUEUE);
    let request_body = http_body_util::StreamBody::new(
        ReceiverStream::new(frames_out).map(|frame| Ok::<_, Infallible>(Frame::data(frame))),
    );
    let decoder = tonic_prost::ProstCodec::<Req, Req>::default().decoder();
    let requests = Streaming::new_request(decoder, request_body, None, Some(limit));
    if let Some(first) = first {
        // The queue is empty and its receiver alive: this cannot fail.
        let _ = frames.try_send(grpc_frame(&first));
    }
    tokio::spawn(feed::<Req>(reader, frames, at_end));
    let responses = match call(requests).await {
        Ok(responses) => responses.into_inner(),
        Err(status) => return error_response(&status),
    };
    let mut response = http::Response::new(Body::new(http_body_util::StreamBody::new(Lines {
        responses,
        done: false,
        _open: OpenStream::new(kind),
    })));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Passes the rest of the body's requests to the service, until the body ends or the
/// service stops taking them (the response was dropped).
async fn feed<Req: FromJson + prost::Message>(
    mut reader: RequestReader,
    frames: mpsc::Sender<Bytes>,
    at_end: AtBodyEnd,
) {
    loop {
        let next = tokio::select! {
            next = reader.next::<Req>() => next,
            () = frames.closed() => return,
        };
        match next {
            Ok(Some(request)) => {
                if frames.send(grpc_frame(&request)).await.is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(status) => {
                // grpc-gateway stops sending after a request it cannot read and leaves
                // the stream as it is.
                tracing::debug!(%status, "gateway stream: a request did not read; no more are taken");
                break;
            }
        }
    }
    if at_end == AtBodyEnd::KeepOpen {
        frames.closed().await;
    }
}

/// grpc-gateway's `{"result": ...}` line.
struct ResultLine<'a, T>(&'a T);

impl<T> Serialize for ResultLine<'_, T>
where
    for<'m> Json<'m, T>: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("result", &Json(self.0))?;
        map.end()
    }
}

/// grpc-gateway v1's stream error (its `StreamError` message, as jsonpb writes it).
#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    error: StreamError<'a>,
}

fn line(mut bytes: Vec<u8>) -> Bytes {
    bytes.push(b'\n');
    bytes.into()
}

fn error_line(status: &Status) -> Bytes {
    let http = http_status(status.code());
    let error = ErrorLine {
        error: StreamError {
            grpc_code: status.code() as i32,
            http_code: http.as_u16(),
            message: status.message(),
            http_status: http.canonical_reason().unwrap_or(""),
        },
    };
    line(serde_json::to_vec(&error).unwrap_or_default())
}

/// Counts a gateway stream in `shoal_gateway_streams_open` while its response lasts:
/// dropped when the response ends or the client goes away (and with it the service's
/// stream, so a watch ends with its HTTP client).
struct OpenStream(&'static str);

impl OpenStream {
    fn new(kind: &'static str) -> Self {
        metrics::gauge!("shoal_gateway_streams_open", "stream" => kind).increment(1.0);
        Self(kind)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!("shoal_gateway_streams_open", "stream" => self.0).decrement(1.0);
    }
}

/// The service's responses as lines of the HTTP response body; an error is the last line.
struct Lines<T> {
    responses: ResponseStream<T>,
    done: bool,
    _open: OpenStream,
}

impl<T> Stream for Lines<T>
where
    for<'m> Json<'m, T>: Serialize,
{
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let bytes = match std::task::ready!(self.responses.as_mut().poll_next(cx)) {
            None => return Poll::Ready(None),
            Some(Ok(message)) => match serde_json::to_vec(&ResultLine(&message)) {
                Ok(bytes) => line(bytes),
                Err(error) => {
                    self.done = true;
                    error_line(&Status::internal(format!("encoding the response: {error}")))
                }
            },
            Some(Err(status)) => {
                self.done = true;
                error_line(&status)
            }
        };
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_error_is_grpc_gateways_error_chunk() {
        let line = error_line(&Status::unavailable("etcdserver: no leader"));
        assert_eq!(
            line.as_ref(),
            b"{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"etcdserver: no leader\",\"http_status\":\"Service Unavailable\"}}\n"
        );
    }

    #[test]
    fn requests_become_grpc_frames() {
        let request = LeaseKeepAliveRequest { id: 1 };
        let frame = grpc_frame(&request);
        assert_eq!(frame.as_ref(), [0, 0, 0, 0, 2, 8, 1]);
    }
}
