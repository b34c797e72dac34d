//! The metrics listener: Prometheus `/metrics`, `/health` (can this member serve a
//! linearizable read now?), `/ready` (has it joined and caught up?) and `/v1/ranges`
//! (the data ranges as this member holds them).

use crate::range::FIRST_DATA_RANGE_ID;
use crate::router::Router;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Clone)]
struct HttpState {
    router: Arc<Router>,
    metrics: Option<PrometheusHandle>,
}

pub fn routes(router: Arc<Router>, metrics: Option<PrometheusHandle>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/v1/ranges", get(ranges))
        .with_state(HttpState { router, metrics })
}

async fn render_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let body = state.metrics.as_ref().map(PrometheusHandle::render).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

fn json(status: StatusCode, body: String) -> impl IntoResponse {
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

async fn health(State(state): State<HttpState>) -> impl IntoResponse {
    let (status, body) = crate::api::health::check(&state.router).await;
    json(status, body)
}

async fn ready(State(state): State<HttpState>) -> impl IntoResponse {
    // Ready once every local range has a leader and has applied what it knows committed;
    // the data range's figures are reported.
    let caught_up = state.router.local_ranges().into_iter().all(|range_id| {
        let status = state.router.status(range_id);
        let commit = status.commit_index.load(Ordering::Acquire);
        status.leader() != 0 && commit > 0 && status.applied_index.load(Ordering::Acquire) >= commit
    });
    let status = state.router.status(FIRST_DATA_RANGE_ID);
    let leader = status.leader();
    let commit = status.commit_index.load(Ordering::Acquire);
    let applied = status.applied_index.load(Ordering::Acquire);
    if caught_up {
        json(
            StatusCode::OK,
            format!(r#"{{"ready":true,"leader":"{leader:x}","applied":{applied}}}"#),
        )
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(r#"{{"ready":false,"leader":"{leader:x}","commit":{commit},"applied":{applied}}}"#),
        )
    }
}

/// One object per data range this member holds: `id`, `start_key` and `end_key` (base64,
/// empty = unbounded), `epoch`, `replicas` (member ids in hex, as etcdctl prints them),
/// `leader`, `keys` and `bytes` (live keys and their bytes, approximate after a split).
async fn ranges(State(state): State<HttpState>) -> impl IntoResponse {
    use base64::Engine as _;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let ranges: Vec<serde_json::Value> = state
        .router
        .registry()
        .data_ranges()
        .into_iter()
        .map(|range| {
            let descriptor = &range.descriptor;
            let status = &range.view.status;
            serde_json::json!({
                "id": descriptor.id,
                "start_key": encode(&descriptor.start_key),
                "end_key": encode(&descriptor.end_key),
                "epoch": descriptor.epoch,
                "replicas": descriptor.replicas.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>(),
                "leader": format!("{:x}", status.leader()),
                "keys": status.live_keys.load(Ordering::Acquire),
                "bytes": status.live_bytes.load(Ordering::Acquire),
            })
        })
        .collect();
    json(StatusCode::OK, serde_json::Value::Array(ranges).to_string())
}
