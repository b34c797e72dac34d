//! Accepting TLS connections. Each TCP connection's handshake runs on a task of its own,
//! bounded in time and in number, so a slow or silent client holds up nobody; one that
//! fails (a plain-HTTP client, a certificate the CA did not sign) is logged once and
//! dropped. Finished connections come out of a channel, for tonic (as a stream) and for
//! axum (as a [`axum::serve::Listener`]).

use rustls::pki_types::CertificateDer;
use rustls::ServerConfig;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

/// A client gets this long to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once on one listener; further connections wait in the
/// kernel's accept queue.
pub const HANDSHAKES_MAX: usize = 256;
/// Connections handshaken but not yet taken by the server.
const READY_MAX: usize = 64;

/// Who is on the other end of a TLS connection.
#[derive(Clone, Debug)]
pub struct TlsConnectInfo {
    pub local_addr: Option<SocketAddr>,
    pub remote_addr: Option<SocketAddr>,
    /// The client's certificate chain, end entity first, when it showed one (always,
    /// with client-cert-auth): what certificate-based authentication reads.
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// A server-side TLS connection.
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl TlsConnection {
    pub fn info(&self) -> &TlsConnectInfo {
        &self.info
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

/// TLS connections accepted on one listener.
pub struct TlsIncoming {
    ready: mpsc::Receiver<(TlsConnection, SocketAddr)>,
    local_addr: io::Result<SocketAddr>,
}

impl TlsIncoming {
    /// Starts accepting on `listener` (inside the runtime). `purpose` names the
    /// listener in log lines. Accepting stops when this is dropped.
    pub fn start(listener: TcpListener, config: Arc<ServerConfig>, purpose: &'static str) -> Self {
        let local_addr = listener.local_addr();
        let (sender, ready) = mpsc::channel(READY_MAX);
        tokio::spawn(accept_loop(
            listener,
            tokio_rustls::TlsAcceptor::from(config),
            sender,
            purpose,
        ));
        Self { ready, local_addr }
    }

    /// The connections as tonic's `serve_with_incoming` takes them.
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = io::Result<TlsConnection>> + Send + 'static {
        tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(self.ready),
            |(connection, _)| Ok(connection),
        )
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    ready: mpsc::Sender<(TlsConnection, SocketAddr)>,
    purpose: &'static str,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = ready.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(listener = purpose, %error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let local_addr = tcp.local_addr().ok();
            let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(permit);
            let stream = match outcome {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::warn!(listener = purpose, %remote, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(listener = purpose, %remote, "TLS handshake timed out");
                    return;
                }
            };
            let peer_certificates = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|chain| Arc::new(chain.iter().map(|der| der.clone().into_owned()).collect()));
            let connection = TlsConnection {
                stream,
                info: TlsConnectInfo {
                    local_addr,
                    remote_addr: Some(remote),
                    peer_certificates,
                },
            };
            let _ = ready.send((connection, remote)).await;
        });
    }
}

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop never ends while this is alive; should it, serve nothing.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match &self.local_addr {
            Ok(address) => Ok(*address),
            Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
        }
    }
}

/// A connection accepted on a listener that serves TLS or not, as its URL says.
pub enum ServerConnection {
    Plain(TcpStream),
    Tls(Box<TlsConnection>),
}

impl AsyncRead for ServerConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for ServerConnection {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Self::Plain(stream) => TlsConnectInfo {
                local_addr: stream.local_addr().ok(),
                remote_addr: stream.peer_addr().ok(),
                peer_certificates: None,
            },
            Self::Tls(stream) => stream.info.clone(),
        }
    }
}

/// The connections of `listener` for tonic's `serve_with_incoming`: over TLS with `tls`,
/// plain without. `purpose` names the listener in log lines.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    purpose: &'static str,
) -> Pin<Box<dyn tokio_stream::Stream<Item = io::Result<ServerConnection>> + Send>> {
    use tokio_stream::StreamExt;
    match tls {
        Some(tls) => Box::pin(
            TlsIncoming::start(listener, tls, purpose)
                .into_stream()
                .map(|accepted| accepted.map(|connection| ServerConnection::Tls(Box::new(connection)))),
        ),
        None => Box::pin(
            tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
                accepted.map(|stream| {
                    let _ = stream.set_nodelay(true);
                    ServerConnection::Plain(stream)
                })
            }),
        ),
    }
}

/// A listener for axum: over TLS with a configuration, plain without.
pub enum ServerListener {
    Plain(TcpListener),
    Tls(TlsIncoming),
}

impl ServerListener {
    pub fn new(listener: TcpListener, tls: Option<Arc<ServerConfig>>, purpose: &'static str) -> Self {
        match tls {
            Some(tls) => Self::Tls(TlsIncoming::start(listener, tls, purpose)),
            None => Self::Plain(listener),
        }
    }
}

impl axum::serve::Listener for ServerListener {
    type Io = ServerConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self {
            Self::Plain(listener) => {
                let (stream, address) = axum::serve::Listener::accept(listener).await;
                (ServerConnection::Plain(stream), address)
            }
            Self::Tls(incoming) => {
                let (connection, address) = axum::serve::Listener::accept(incoming).await;
                (ServerConnection::Tls(Box::new(connection)), address)
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match self {
            Self::Plain(listener) => axum::serve::Listener::local_addr(listener),
            Self::Tls(incoming) => axum::serve::Listener::local_addr(incoming),
        }
    }
}
