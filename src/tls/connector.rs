//! Dialing over TLS: a connector for tonic channels (peers dialing peers over `https://`
//! peer URLs, tests and the playground dialing nodes). The server's certificate must be
//! signed by a trusted CA and name the host of the URL dialed.

use rustls::ClientConfig;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// A `tower::Service<Uri>` making TLS connections, for
/// [`tonic::transport::Endpoint::connect_with_connector_lazy`].
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl TlsConnector {
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Self { config }
    }

    /// A lazily connecting channel to `endpoint` over TLS.
    pub fn channel(&self, endpoint: &tonic::transport::Endpoint) -> tonic::transport::Channel {
        endpoint.connect_with_connector_lazy(self.clone())
    }

    /// Connects to `host:port` and completes the handshake, checking the certificate
    /// against `host`.
    pub async fn connect(&self, host: &str, port: u16) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(bare.to_string())
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {error}")))?;
        let tcp = TcpStream::connect((bare, port)).await?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
    }
}

type Connecting = Pin<
    Box<dyn Future<Output = io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send>,
>;

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: no host")))?
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let stream = connector.connect(&host, port).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}
