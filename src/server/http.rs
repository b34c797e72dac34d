//! The metrics listener: Prometheus `/metrics`, `/health` (can this member serve a
//! linearizable read now?), `/ready` (has it joined and caught up?), `/v1/ranges`
//! (the data ranges as this member holds them), and the dashboard: `/` and its JSON,
//! `/v1/cluster` (see `dashboard.rs`).

use super::dashboard::{self, Dashboard};
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
    /// For `/v1/nodes` (gossip and the members as the node was created).
    context: Arc<crate::api::etcd::EtcdContext>,
    metrics: Option<PrometheusHandle>,
    dashboard: Arc<Dashboard>,
}

pub fn routes(
    router: Arc<Router>,
    metrics: Option<PrometheusHandle>,
    dashboard: Arc<Dashboard>,
    context: Arc<crate::api::etcd::EtcdContext>,
) -> axum::Router {
    axum::Router::new()
        .route("/", get(dashboard::page))
        .route("/metrics", get(render_metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/v1/ranges", get(ranges))
        .route("/v1/nodes", get(nodes))
        .route("/v1/cluster", get(cluster))
        .with_state(HttpState {
            router,
            context,
            metrics,
            dashboard,
        })
}

async fn render_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    crate::api::ranges::set_gauges(&state.router);
    crate::api::nodes::set_gauges(&state.router, &state.context.gossip, &state.context.initial_members);
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

/// See `api::nodes::describe`.
async fn nodes(State(state): State<HttpState>) -> impl IntoResponse {
    let body = crate::api::nodes::describe(&state.router, &state.context.gossip, &state.context.initial_members);
    json(StatusCode::OK, body.to_string())
}

/// See `api::ranges::describe`.
async fn ranges(State(state): State<HttpState>) -> impl IntoResponse {
    json(StatusCode::OK, crate::api::ranges::describe(&state.router).to_string())
}

/// See `Dashboard::describe`.
async fn cluster(State(state): State<HttpState>) -> impl IntoResponse {
    json(
        StatusCode::OK,
        state.dashboard.describe(&state.router).await.to_string(),
    )
}
