//! The dashboard on the metrics listener: `GET /` is one page (CSS and JS inline,
//! embedded in the binary: no CDN, works offline) and `GET /v1/cluster` the cluster at a
//! glance as this member sees it, the JSON the page shows. The page draws its charts
//! from this member's own `/metrics`, which it polls (same origin, so nothing but this
//! listener needs to be reachable from the browser); the health of the other members is
//! asked here, by the node, on their published client URLs.

use crate::api::health::HEALTH_CHECK_TIMEOUT;
use crate::proto::shoal::state::MemberInfo;
use crate::range::{FIRST_DATA_RANGE_ID, META_RANGE_ID};
use crate::router::Router;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The page: HTML with its CSS and JS inline.
const PAGE: &str = include_str!("dashboard.html");

/// What the page may load: nothing but itself and this listener's JSON and metrics.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:";

/// How long another member gets to answer `/health`: its own check waits up to
/// [`HEALTH_CHECK_TIMEOUT`] for read indexes before it answers with a reason.
const MEMBER_HEALTH_TIMEOUT: Duration = HEALTH_CHECK_TIMEOUT.saturating_add(Duration::from_millis(500));

/// How long reading the published members may take before the page is answered
/// without their client URLs.
const MEMBER_LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// What the dashboard knows beyond the router: the cluster's identity and how to dial
/// the other members' client URLs.
pub struct Dashboard {
    cluster_id: u64,
    /// Members with their peer URLs, as the cluster was created.
    initial_members: Vec<MemberInfo>,
    /// Dials `https://` client URLs (the client side's trusted CA and certificate);
    /// None when the node has no client CA to check them with.
    client_tls: Option<Arc<rustls::ClientConfig>>,
}

/// `GET /`.
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
}

/// A member's health as the dashboard shows it: "true", "false" (with etcd's reason,
/// or why it did not answer) or "unknown" (it cannot be asked).
struct Health {
    health: &'static str,
    reason: String,
}

impl Health {
    fn healthy() -> Self {
        Health {
            health: "true",
            reason: String::new(),
        }
    }

    fn unhealthy(reason: impl Into<String>) -> Self {
        Health {
            health: "false",
            reason: reason.into(),
        }
    }

    fn unknown(reason: impl Into<String>) -> Self {
        Health {
            health: "unknown",
            reason: reason.into(),
        }
    }

    /// From etcd's `/health` answer.
    fn from_answer(status: u16, body: &str) -> Self {
        if status == 200 {
            return Health::healthy();
        }
        let reason = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|answer| answer.get("reason").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| format!("/health answered {status}: {body}"));
        Health::unhealthy(reason)
    }
}

impl Dashboard {
    pub fn new(
        cluster_id: u64,
        initial_members: Vec<MemberInfo>,
        client_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        Self {
            cluster_id,
            initial_members,
            client_tls,
        }
    }

    /// `GET /v1/cluster`: `cluster_id`, `member_id` (this member), `leader` and `term`
    /// (of the first data range, as etcd's Status reports them), `meta_leader`,
    /// `members` (`id`, `name`, `peer_urls`, `client_urls`, `health`, `reason`,
    /// `leads`: data ranges it leads as this member sees them), `ranges` (as
    /// `/v1/ranges`) and `alarms`. Ids are hex, as etcdctl prints them.
    pub async fn describe(&self, router: &Router) -> Value {
        let me = router.node_id();
        let published = tokio::time::timeout(MEMBER_LIST_TIMEOUT, async {
            let pinned = router.pinned(META_RANGE_ID).await.map_err(|error| error.to_string())?;
            pinned.members().map_err(|error| error.to_string())
        })
        .await
        .unwrap_or_else(|_| Err("timed out reading the member list".to_string()));
        let mut leads: HashMap<u64, u64> = HashMap::new();
        for range in router.registry().data_ranges() {
            *leads.entry(range.view.status.leader()).or_default() += 1;
        }
        let health = self.health(router, published.as_deref()).await;
        let members: Vec<Value> = self
            .initial_members
            .iter()
            .zip(health)
            .map(|(member, health)| {
                // A member that has not started yet has no name or client URLs (as in etcd).
                let started = published
                    .as_ref()
                    .ok()
                    .and_then(|published| published.iter().find(|known| known.id == member.id));
                json!({
                    "id": format!("{:x}", member.id),
                    "name": started.map_or(member.name.as_str(), |known| known.name.as_str()),
                    "peer_urls": member.peer_urls,
                    "client_urls": started.map(|known| known.client_urls.clone()).unwrap_or_default(),
                    "self": member.id == me,
                    "health": health.health,
                    "reason": health.reason,
                    "leads": leads.get(&member.id).copied().unwrap_or(0),
                })
            })
            .collect();
        let first = router.status(FIRST_DATA_RANGE_ID);
        json!({
            "cluster_id": format!("{:x}", self.cluster_id),
            "member_id": format!("{me:x}"),
            "leader": format!("{:x}", first.leader()),
            "term": first.term(),
            "meta_leader": format!("{:x}", router.status(META_RANGE_ID).leader()),
            "members": members,
            "ranges": crate::api::ranges::describe(router),
            "alarms": alarms(router).await,
        })
    }

    /// The health of every initial member, in their order: this member's checked here,
    /// the others' asked on their first published client URL, all at once and each
    /// bounded by [`MEMBER_HEALTH_TIMEOUT`].
    async fn health(&self, router: &Router, published: Result<&[MemberInfo], &String>) -> Vec<Health> {
        let me = router.node_id();
        let mut asks = tokio::task::JoinSet::new();
        let mut health: Vec<Option<Health>> = Vec::new();
        for (index, member) in self.initial_members.iter().enumerate() {
            health.push(None);
            if member.id == me {
                continue;
            }
            let url = match published {
                Err(error) => {
                    health[index] = Some(Health::unknown(format!("the member list could not be read: {error}")));
                    continue;
                }
                Ok(published) => published
                    .iter()
                    .find(|known| known.id == member.id)
                    .and_then(|known| known.client_urls.first().cloned()),
            };
            let Some(url) = url else {
                health[index] = Some(Health::unknown("it has not published its client URLs yet"));
                continue;
            };
            let tls = self.client_tls.clone();
            asks.spawn(async move { (index, ask_health(&url, tls.as_ref()).await) });
        }
        let (own, asked) = tokio::join!(crate::api::health::check(router), asks.join_all());
        for (index, answer) in asked {
            health[index] = Some(answer);
        }
        if let Some(index) = self.initial_members.iter().position(|member| member.id == me) {
            health[index] = Some(Health::from_answer(own.0.as_u16(), &own.1));
        }
        health
            .into_iter()
            .map(|health| health.unwrap_or_else(|| Health::unknown("not checked")))
            .collect()
    }
}

/// etcd's `/health` of the member at client URL `url`.
async fn ask_health(url: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> Health {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return Health::unknown(format!("its client URL {url} is not a URL"));
    };
    let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
        return Health::unknown(format!("its client URL {url} has no host and port"));
    };
    let tls = match (crate::tls::is_https(url), tls) {
        (false, _) => None,
        (true, Some(tls)) => Some(tls),
        (true, None) => return Health::unknown("no --trusted-ca-file to check its https client URL with"),
    };
    match crate::http_probe::get_from(host, port, "/health", MEMBER_HEALTH_TIMEOUT, tls).await {
        Ok((status, body)) => Health::from_answer(status, &body),
        Err(error) => Health::unhealthy(format!("{url}/health: {error}")),
    }
}

/// The cluster's active alarms, one `{"member": hex id, "alarm": "NOSPACE" | "CORRUPT"}`
/// each, as this member's copy of the meta range holds them (where Maintenance.Alarm
/// reads them).
async fn alarms(router: &Router) -> Vec<Value> {
    use crate::proto::shoal::state::AlarmKind;
    let Ok(pinned) = router.pinned(crate::range::META_RANGE_ID).await else {
        return Vec::new();
    };
    pinned
        .alarms()
        .unwrap_or_default()
        .into_iter()
        .map(|alarm| {
            let kind = AlarmKind::try_from(alarm.alarm).map_or("UNKNOWN", |kind| kind.as_str_name());
            serde_json::json!({ "member": format!("{:x}", alarm.member_id), "alarm": kind })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_comes_from_etcds_answer() {
        let healthy = Health::from_answer(200, r#"{"health":"true","reason":""}"#);
        assert_eq!((healthy.health, healthy.reason.as_str()), ("true", ""));
        let unhealthy = Health::from_answer(503, r#"{"health":"false","reason":"timed out"}"#);
        assert_eq!((unhealthy.health, unhealthy.reason.as_str()), ("false", "timed out"));
        let garbled = Health::from_answer(502, "bad gateway");
        assert_eq!(garbled.health, "false");
        assert!(garbled.reason.contains("502"), "{}", garbled.reason);
    }

    #[tokio::test]
    async fn a_member_that_cannot_be_asked_is_unknown_or_unhealthy() {
        assert_eq!(ask_health("not a url", None).await.health, "unknown");
        assert_eq!(ask_health("https://127.0.0.1:1", None).await.health, "unknown");
        // Nothing listens on port 1.
        let refused = ask_health("http://127.0.0.1:1", None).await;
        assert_eq!(refused.health, "false");
        assert!(refused.reason.contains("127.0.0.1:1/health"), "{}", refused.reason);
    }
}
