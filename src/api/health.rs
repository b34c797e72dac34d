//! etcd's `/health` answer, served on the metrics listener and on the client port:
//! healthy when this member can serve a linearizable read of every range it holds now.

use crate::router::{RouteError, Router};
use http::StatusCode;
use std::time::Duration;

/// How long a health check waits for the read indexes.
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The status and JSON body of etcd's `/health`.
pub async fn check(router: &Router) -> (StatusCode, String) {
    let check = tokio::time::timeout(HEALTH_CHECK_TIMEOUT, async {
        for range_id in router.local_ranges() {
            router.linearize(range_id).await?;
        }
        Ok::<(), RouteError>(())
    })
    .await;
    match check {
        Ok(Ok(())) => (StatusCode::OK, r#"{"health":"true","reason":""}"#.into()),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": error.to_string()}).to_string(),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"health":"false","reason":"timed out waiting for a read index"}"#.into(),
        ),
    }
}
