//! Connections a node closes itself when it stops. A graceful shutdown of tonic, axum
//! or hyper stops accepting and asks each connection to finish, but a connection a
//! client keeps open (an idle keep-alive, a watch, a Redis client) lives on its own task
//! and holds the services it calls, and so the node's storage. A node that restarts in
//! process after a storage failure needs those let go: a [`Closing`] connection reads as
//! closed and refuses writes once the stop signal fires, which ends its task.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

fn stop_signal(mut stop: watch::Receiver<bool>) -> Stop {
    Box::pin(async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    })
}

pub struct Closing<S> {
    inner: S,
    stop: Stop,
    closed: bool,
}

impl<S> Closing<S> {
    /// `inner`, closed once `stop` holds `true` (or its sender is gone).
    pub fn new(inner: S, stop: watch::Receiver<bool>) -> Self {
        Closing {
            inner,
            stop: stop_signal(stop),
            closed: false,
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed && self.stop.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
        self.closed
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Closing<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.check(cx) {
            return Poll::Ready(Ok(())); // end of stream
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the node is stopping")
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Closing<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.check(cx) {
            return Poll::Ready(Err(closed_error()));
        }
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
        if self.check(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Closing<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// An axum listener whose connections close when `stop` fires.
pub struct ClosingListener<L> {
    inner: L,
    stop: watch::Receiver<bool>,
}

impl<L> ClosingListener<L> {
    pub fn new(inner: L, stop: watch::Receiver<bool>) -> Self {
        ClosingListener { inner, stop }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for ClosingListener<L> {
    type Io = Closing<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, address) = self.inner.accept().await;
        (Closing::new(io, self.stop.clone()), address)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_connection_reads_as_closed_once_stopped_even_while_waiting() {
        let (client, server) = tokio::io::duplex(64);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut server = Closing::new(server, stop_rx);
        let mut client = client;
        client.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).await.unwrap();
        let waiting = tokio::spawn(async move {
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.map(|_| (rest, server))
        });
        tokio::task::yield_now().await;
        stop_tx.send(true).unwrap();
        let (rest, mut server) = waiting.await.unwrap().unwrap();
        assert!(rest.is_empty());
        assert_eq!(server.write(b"y").await.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        drop(client);
    }
}
