//! A minimal HTTP/1.0 GET for probing a node's `/ready` and `/health`, used by the
//! playground and by tests (no HTTP client library needed for two endpoints).

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Status code and body of `GET path` on `127.0.0.1:port`, or None if no answer came
/// within `timeout`.
pub async fn get(port: u16, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(timeout, attempt).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Some((status, body))
}
