//! Gives requests over the gRPC size limit the status etcd gives them.
//!
//! tonic refuses a message over its decoding limit with OUT_OF_RANGE ("decoded message
//! length too large"); grpc-go, and so etcd, says RESOURCE_EXHAUSTED ("grpc: received
//! message larger than max"). etcd clients branch on the code, so Shoal answers like etcd.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

#[derive(Clone, Copy, Debug, Default)]
pub struct OversizeStatusLayer;

impl<S> Layer<S> for OversizeStatusLayer {
    type Service = OversizeStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OversizeStatus { inner }
    }
}

#[derive(Clone, Debug)]
pub struct OversizeStatus<S> {
    inner: S,
}

const TONIC_TOO_LARGE: &str = "decoded%20message%20length%20too%20large";

fn rewrite<B>(response: &mut http::Response<B>) {
    let headers = response.headers_mut();
    let is_oversize = headers.get("grpc-status").is_some_and(|status| status == "11")
        && headers
            .get("grpc-message")
            .and_then(|message| message.to_str().ok())
            .is_some_and(|message| message.contains(TONIC_TOO_LARGE));
    if is_oversize {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("grpc:%20received%20message%20larger%20than%20max"),
        );
    }
}

impl<S, Request, Body> Service<Request> for OversizeStatus<S>
where
    S: Service<Request, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            rewrite(&mut response);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tonic_size_refusals_change() {
        let mut oversize = http::Response::new(());
        oversize
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("11"));
        oversize.headers_mut().insert(
            "grpc-message",
            http::HeaderValue::from_static("Error,%20decoded%20message%20length%20too%20large:%20found%20x"),
        );
        rewrite(&mut oversize);
        assert_eq!(oversize.headers()["grpc-status"], "8");

        let mut compacted = http::Response::new(());
        compacted
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("11"));
        compacted.headers_mut().insert(
            "grpc-message",
            http::HeaderValue::from_static("etcdserver:%20mvcc:%20required%20revision%20has%20been%20compacted"),
        );
        rewrite(&mut compacted);
        assert_eq!(compacted.headers()["grpc-status"], "11");
    }
}
