//! Repairs a malformed HTTP/2 `:authority` sent by some etcd clients.
//!
//! etcdctl 3.4 (clientv3's per-endpoint dial, used by `endpoint status`) sends the
//! endpoint URL itself, `http://127.0.0.1:2379`, as `:authority`. Go's HTTP/2 server
//! accepts that; Rust's `h2` rejects the stream with PROTOCOL_ERROR. This wrapper sits
//! between the socket and the gRPC server and watches the first header block of each
//! connection. If its authority is valid (every well-behaved client) the connection is
//! passed through untouched from then on. If not, every header block of the connection
//! is decoded and re-encoded with the authority reduced to `host:port` — re-encoding all
//! of them keeps the HPACK tables on both sides in step.
//!
//! Behind TLS it wraps the decrypted stream (`AuthorityRepair<TlsConnection>`): the
//! frames it reads are the same.

use bytes::{Buf, BufMut, BytesMut};
use loona_hpack::{Decoder, Encoder};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_BYTES: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The smallest frame size every HTTP/2 peer accepts.
const FRAME_PAYLOAD_MAX: usize = 16_384;
/// A header block larger than this is not a gRPC request; it is passed on for h2 to judge.
const HEADER_BLOCK_BYTES_MAX: usize = 1 << 20;

enum Mode {
    /// Waiting for the first header block.
    Inspect(Box<Decoder<'static>>),
    /// Bytes flow through unchanged.
    PassThrough,
    /// Every header block is re-encoded with a repaired authority.
    Rewrite {
        decoder: Box<Decoder<'static>>,
        encoder: Box<Encoder<'static>>,
    },
}

/// A header block being collected from HEADERS and CONTINUATION frames.
struct PendingBlock {
    stream_id: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    raw_frames: Vec<u8>,
}

pub struct AuthorityRepair<S> {
    inner: S,
    incoming: BytesMut,
    ready: BytesMut,
    preface_seen: bool,
    mode: Mode,
    pending: Option<PendingBlock>,
    eof: bool,
}

impl<S> AuthorityRepair<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            incoming: BytesMut::new(),
            ready: BytesMut::new(),
            preface_seen: false,
            mode: Mode::Inspect(Box::new(Decoder::new())),
            pending: None,
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn pass_through_rest(&mut self) {
        self.mode = Mode::PassThrough;
        if let Some(pending) = self.pending.take() {
            self.ready.extend_from_slice(&pending.raw_frames);
        }
        let rest = self.incoming.split();
        self.ready.extend_from_slice(&rest);
    }

    /// Moves every complete frame from `incoming` to `ready`, rewriting header blocks
    /// as the mode requires.
    fn process(&mut self) {
        if !self.preface_seen {
            let seen = self.incoming.len().min(PREFACE.len());
            if self.incoming[..seen] != PREFACE[..seen] {
                return self.pass_through_rest(); // not HTTP/2 with prior knowledge
            }
            if seen < PREFACE.len() {
                return;
            }
            self.ready.extend_from_slice(&self.incoming.split_to(PREFACE.len()));
            self.preface_seen = true;
        }
        while self.incoming.len() >= FRAME_HEADER_BYTES {
            if matches!(self.mode, Mode::PassThrough) {
                return self.pass_through_rest();
            }
            let header = &self.incoming[..FRAME_HEADER_BYTES];
            let length = (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
            if self.incoming.len() < FRAME_HEADER_BYTES + length {
                return;
            }
            let frame = self.incoming.split_to(FRAME_HEADER_BYTES + length);
            self.on_frame(&frame);
        }
    }

    fn on_frame(&mut self, frame: &[u8]) {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER_BYTES..];
        match kind {
            FRAME_HEADERS => {
                let mut start = 0;
                let mut padding = 0;
                if flags & FLAG_PADDED != 0 {
                    let Some(&pad) = payload.first() else {
                        return self.give_up(frame);
                    };
                    padding = usize::from(pad);
                    start = 1;
                }
                let mut priority = None;
                if flags & FLAG_PRIORITY != 0 {
                    let Some(fields) = payload.get(start..start + 5) else {
                        return self.give_up(frame);
                    };
                    let mut copy = [0u8; 5];
                    copy.copy_from_slice(fields);
                    priority = Some(copy);
                    start += 5;
                }
                let Some(fragment) = payload
                    .len()
                    .checked_sub(padding)
                    .and_then(|end| payload.get(start..end))
                else {
                    return self.give_up(frame);
                };
                self.pending = Some(PendingBlock {
                    stream_id,
                    flags,
                    priority,
                    fragment: fragment.to_vec(),
                    raw_frames: frame.to_vec(),
                });
                if flags & FLAG_END_HEADERS != 0 {
                    self.finish_block();
                }
            }
            FRAME_CONTINUATION => match &mut self.pending {
                Some(pending) if pending.stream_id == stream_id => {
                    pending.fragment.extend_from_slice(payload);
                    pending.raw_frames.extend_from_slice(frame);
                    if pending.fragment.len() > HEADER_BLOCK_BYTES_MAX {
                        return self.give_up(&[]);
                    }
                    if flags & FLAG_END_HEADERS != 0 {
                        self.finish_block();
                    }
                }
                _ => self.give_up(frame),
            },
            _ => self.ready.extend_from_slice(frame),
        }
    }

    /// Something this wrapper does not understand: hand everything to h2 unchanged and
    /// let it decide.
    fn give_up(&mut self, frame: &[u8]) {
        self.mode = Mode::PassThrough;
        if let Some(pending) = self.pending.take() {
            self.ready.extend_from_slice(&pending.raw_frames);
        }
        self.ready.extend_from_slice(frame);
    }

    fn finish_block(&mut self) {
        let Some(block) = self.pending.take() else {
            return;
        };
        let decoder = match &mut self.mode {
            Mode::Inspect(decoder) | Mode::Rewrite { decoder, .. } => decoder,
            Mode::PassThrough => return self.ready.extend_from_slice(&block.raw_frames),
        };
        let Ok(mut headers) = decoder.decode(&block.fragment) else {
            self.pending = Some(block);
            return self.give_up(&[]);
        };
        let authority = headers.iter_mut().find(|(name, _)| name.as_slice() == b":authority");
        if let Mode::Inspect(_) = self.mode {
            if authority.as_ref().is_none_or(|(_, value)| is_valid_authority(value)) {
                self.mode = Mode::PassThrough;
                return self.ready.extend_from_slice(&block.raw_frames);
            }
            let Mode::Inspect(decoder) = std::mem::replace(&mut self.mode, Mode::PassThrough) else {
                unreachable!("checked above")
            };
            tracing::debug!("client sent a URL as HTTP/2 authority; rewriting its header blocks");
            self.mode = Mode::Rewrite {
                decoder,
                encoder: Box::new(Encoder::new()),
            };
        }
        if let Some((_, value)) = headers.iter_mut().find(|(name, _)| name.as_slice() == b":authority") {
            if !is_valid_authority(value) {
                *value = repair_authority(value);
            }
        }
        let Mode::Rewrite { encoder, .. } = &mut self.mode else {
            unreachable!("set above")
        };
        let encoded = encoder.encode(headers.iter().map(|(name, value)| (name.as_slice(), value.as_slice())));
        self.emit_block(block.stream_id, block.flags, block.priority, &encoded);
    }

    fn emit_block(&mut self, stream_id: u32, flags: u8, priority: Option<[u8; 5]>, block: &[u8]) {
        let priority_bytes = priority.map_or(0, |_| 5);
        let first_room = FRAME_PAYLOAD_MAX - priority_bytes;
        let (first, mut rest) = block.split_at(block.len().min(first_room));
        let mut first_flags = flags & (FLAG_END_STREAM | FLAG_PRIORITY);
        if rest.is_empty() {
            first_flags |= FLAG_END_HEADERS;
        }
        self.put_frame_header(first.len() + priority_bytes, FRAME_HEADERS, first_flags, stream_id);
        if let Some(fields) = priority {
            self.ready.extend_from_slice(&fields);
        }
        self.ready.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, remaining) = rest.split_at(rest.len().min(FRAME_PAYLOAD_MAX));
            rest = remaining;
            let chunk_flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
            self.put_frame_header(chunk.len(), FRAME_CONTINUATION, chunk_flags, stream_id);
            self.ready.extend_from_slice(chunk);
        }
    }

    fn put_frame_header(&mut self, length: usize, kind: u8, flags: u8, stream_id: u32) {
        debug_assert!(length <= FRAME_PAYLOAD_MAX);
        self.ready.put_uint(length as u64, 3);
        self.ready.put_u8(kind);
        self.ready.put_u8(flags);
        self.ready.put_u32(stream_id);
    }
}

fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// `http://host:port/path` -> `host:port`.
fn repair_authority(value: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(value);
    let without_scheme = text.split_once("://").map_or(text.as_ref(), |(_, rest)| rest);
    let host = without_scheme.split('/').next().unwrap_or_default();
    if is_valid_authority(host.as_bytes()) && !host.is_empty() {
        host.as_bytes().to_vec()
    } else {
        b"localhost".to_vec()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRepair<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let count = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..count]);
                this.ready.advance(count);
                return Poll::Ready(Ok(()));
            }
            if matches!(this.mode, Mode::PassThrough) && this.incoming.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.eof {
                // A truncated frame at the end: hand it over for h2 to report.
                let rest = this.incoming.split();
                this.ready.extend_from_slice(&rest);
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => {
                    let filled = chunk_buf.filled();
                    if filled.is_empty() {
                        this.eof = true;
                    } else {
                        this.incoming.extend_from_slice(filled);
                        this.process();
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRepair<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for AuthorityRepair<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream_id.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    async fn run(input: Vec<u8>) -> Vec<u8> {
        let mut repaired = AuthorityRepair::new(input.as_slice());
        let mut output = Vec::new();
        repaired.read_to_end(&mut output).await.unwrap();
        output
    }

    /// Splits a frame stream (after the preface) into header blocks, decoded.
    fn decoded_blocks(stream: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = Decoder::new();
        let mut blocks = Vec::new();
        let mut rest = &stream[PREFACE.len()..];
        let mut block = Vec::new();
        while rest.len() >= FRAME_HEADER_BYTES {
            let length = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let payload = &rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + length];
            if kind == FRAME_HEADERS || kind == FRAME_CONTINUATION {
                block.extend_from_slice(payload);
                if flags & FLAG_END_HEADERS != 0 {
                    blocks.push(decoder.decode(&block).unwrap());
                    block.clear();
                }
            }
            rest = &rest[FRAME_HEADER_BYTES + length..];
        }
        blocks
    }

    fn request(encoder: &mut Encoder, authority: &[u8], stream_id: u32) -> Vec<u8> {
        let block = encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
        ]);
        frame(FRAME_HEADERS, FLAG_END_HEADERS, stream_id, &block)
    }

    #[tokio::test]
    async fn valid_authorities_pass_through_byte_for_byte() {
        let mut encoder = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(request(&mut encoder, b"127.0.0.1:2379", 1));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0"));
        input.extend(request(&mut encoder, b"127.0.0.1:2379", 3));
        assert_eq!(run(input.clone()).await, input);
    }

    #[tokio::test]
    async fn url_authorities_are_reduced_to_host_and_port_on_every_request() {
        let mut encoder = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(request(&mut encoder, b"http://127.0.0.1:2379", 1));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0"));
        // The client's encoder now indexes the bad authority; the next block refers to it.
        input.extend(request(&mut encoder, b"http://127.0.0.1:2379", 3));
        let output = run(input).await;
        let blocks = decoded_blocks(&output);
        assert_eq!(blocks.len(), 2);
        for block in blocks {
            let authority = block.iter().find(|(name, _)| name == b":authority").unwrap();
            assert_eq!(authority.1, b"127.0.0.1:2379");
            assert!(block
                .iter()
                .any(|(name, value)| name == b":path" && value == b"/etcdserverpb.Maintenance/Status"));
        }
    }

    #[test]
    fn repair_keeps_host_and_port_only() {
        assert_eq!(repair_authority(b"http://127.0.0.1:2379"), b"127.0.0.1:2379");
        assert_eq!(repair_authority(b"https://db.example:443/x/y"), b"db.example:443");
        assert_eq!(repair_authority(b"http:///"), b"localhost");
    }
}
