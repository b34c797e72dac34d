//! A minimal HTTP/1.0 GET for probing a node's `/ready`, `/health` and `/v1/ranges`,
//! used by the playground, `shoal ctl` and tests (no HTTP client library needed for a
//! few JSON endpoints), over plain TCP or TLS.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Status code and body of `GET path` on `127.0.0.1:port`, or None if no answer came
/// within `timeout`.
pub async fn get(port: u16, path: &str, timeout: Duration) -> Option<(u16, String)> {
    get_from("127.0.0.1", port, path, timeout, None).await.ok()
}

/// [`get`] over TLS with `tls` (its ALPN is set to HTTP/1.1 here).
pub async fn get_tls(
    port: u16,
    path: &str,
    timeout: Duration,
    tls: &std::sync::Arc<rustls::ClientConfig>,
) -> Option<(u16, String)> {
    get_from("127.0.0.1", port, path, timeout, Some(tls)).await.ok()
}

/// Status code and body of `GET path` on `host:port`, over TLS when `tls` is given
/// (its ALPN is set to HTTP/1.1 here).
pub async fn get_from(
    host: &str,
    port: u16,
    path: &str,
    timeout: Duration,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> std::io::Result<(u16, String)> {
    let attempt = async {
        match tls {
            None => exchange(tokio::net::TcpStream::connect((host, port)).await?, path).await,
            Some(tls) => {
                let mut config = rustls::ClientConfig::clone(tls);
                config.alpn_protocols = vec![crate::tls::ALPN_HTTP1.to_vec()];
                let connector = crate::tls::TlsConnector::new(std::sync::Arc::new(config));
                exchange(connector.connect(host, port).await?, path).await
            }
        }
    };
    let response = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))??;
    parse(&response).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))
}

async fn exchange(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    path: &str,
) -> std::io::Result<Vec<u8>> {
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response).await {
        Ok(_) => Ok(response),
        // A TLS server may close without close_notify once it has answered.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => Ok(response),
        Err(error) => Err(error),
    }
}

fn parse(response: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(response);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Some((status, body))
}
