//! etcd's JSON gateway, on the client port beside gRPC (over TLS the same way when the
//! port is https).
//!
//! Scripts, curl and clients without gRPC (Patroni, etcd3gw, ...) reach etcd through its
//! grpc-gateway: `POST /v3/kv/range` with a JSON body, and so on. [`Dispatch`] looks at
//! each request on the client port: HTTP/2 with a gRPC content type goes to the gRPC
//! services, everything else (HTTP/1.1, or h2c without that content type) comes here.
//!
//! Every call runs the gRPC services' own code (the same validation, routing and etcd
//! error statuses), so a JSON client gets exactly the answer a gRPC client would; only
//! the encoding differs ([`json`]). Errors are grpc-gateway's
//! `{"error": ..., "code": ..., "message": ...}` with the HTTP status grpc-gateway maps
//! the gRPC code to. The streaming calls (watch, lease keep-alive) are in [`stream`].

mod json;
mod stream;

pub use json::{FromJson, Json, JsonError};

use crate::api::etcd::{
    AuthService, ClusterService, EtcdContext, KvService, LeaseService, MaintenanceService, WatchService,
    ETCD_API_VERSION,
};
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::body::Body;
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

/// Room a JSON body needs beyond the message it carries: base64 makes bytes a third
/// longer, and field names, quotes and escapes add more. The message itself is then held
/// to `--max-request-bytes` by the same check the gRPC path makes.
const JSON_OVERHEAD_BYTES: usize = 512 * 1024;

/// A client gets this long to send a request body (or, on a stream, its first message).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The paths etcd 3.4 serves its gateway under; `/v3alpha` and `/v3beta` are the older
/// releases' spellings, still accepted.
const PREFIXES: [&str; 3] = ["/v3/", "/v3beta/", "/v3alpha/"];

/// What the gateway serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compaction,
    Watch,
    LeaseGrant,
    LeaseRevoke,
    LeaseKeepAlive,
    LeaseTimeToLive,
    LeaseLeases,
    MemberList,
    MemberAdd,
    MemberRemove,
    MemberUpdate,
    MemberPromote,
    Status,
    Alarm,
    Hash,
    HashKv,
    Defragment,
    Authenticate,
    AuthEnable,
    AuthDisable,
    AuthStatus,
    UserAdd,
    UserGet,
    UserList,
    UserDelete,
    UserChangePassword,
    UserGrantRole,
    UserRevokeRole,
    RoleAdd,
    RoleGet,
    RoleList,
    RoleDelete,
    RoleGrantPermission,
    RoleRevokePermission,
    Version,
    Health,
    Metrics,
    /// Shoal's `/v1/ranges`, also served here so `shoal ctl` needs only client URLs.
    Ranges,
    /// Shoal's `/v1/nodes`, likewise.
    Nodes,
}

impl Route {
    /// The route of `path` and the method it takes. etcd's own extra bindings
    /// (`/v3/kv/lease/...`) are served too.
    fn of(path: &str) -> Option<(Route, Method)> {
        if let Some(rpc) = PREFIXES.iter().find_map(|prefix| path.strip_prefix(prefix)) {
            let route = match rpc {
                "kv/range" => Route::Range,
                "kv/put" => Route::Put,
                "kv/deleterange" => Route::DeleteRange,
                "kv/txn" => Route::Txn,
                "kv/compaction" => Route::Compaction,
                "watch" => Route::Watch,
                "lease/grant" => Route::LeaseGrant,
                "lease/revoke" | "kv/lease/revoke" => Route::LeaseRevoke,
                "lease/keepalive" => Route::LeaseKeepAlive,
                "lease/timetolive" | "kv/lease/timetolive" => Route::LeaseTimeToLive,
                "lease/leases" | "kv/lease/leases" => Route::LeaseLeases,
                "cluster/member/list" => Route::MemberList,
                "cluster/member/add" => Route::MemberAdd,
                "cluster/member/remove" => Route::MemberRemove,
                "cluster/member/update" => Route::MemberUpdate,
                "cluster/member/promote" => Route::MemberPromote,
                "maintenance/status" => Route::Status,
                "maintenance/alarm" => Route::Alarm,
                "maintenance/hash" => Route::Hash,
                "maintenance/hashkv" => Route::HashKv,
                "maintenance/defragment" => Route::Defragment,
                "auth/authenticate" => Route::Authenticate,
                "auth/enable" => Route::AuthEnable,
                "auth/disable" => Route::AuthDisable,
                "auth/status" => Route::AuthStatus,
                "auth/user/add" => Route::UserAdd,
                "auth/user/get" => Route::UserGet,
                "auth/user/list" => Route::UserList,
                "auth/user/delete" => Route::UserDelete,
                "auth/user/changepw" => Route::UserChangePassword,
                "auth/user/grant" => Route::UserGrantRole,
                "auth/user/revoke" => Route::UserRevokeRole,
                "auth/role/add" => Route::RoleAdd,
                "auth/role/get" => Route::RoleGet,
                "auth/role/list" => Route::RoleList,
                "auth/role/delete" => Route::RoleDelete,
                "auth/role/grant" => Route::RoleGrantPermission,
                "auth/role/revoke" => Route::RoleRevokePermission,
                _ => return None,
            };
            return Some((route, Method::POST));
        }
        let route = match path {
            "/version" => Route::Version,
            "/health" => Route::Health,
            "/metrics" => Route::Metrics,
            "/v1/ranges" => Route::Ranges,
            "/v1/nodes" => Route::Nodes,
            _ => return None,
        };
        Some((route, Method::GET))
    }
}

/// The gateway of one node.
pub struct Gateway {
    kv: KvService,
    lease: LeaseService,
    cluster: ClusterService,
    maintenance: MaintenanceService,
    watch: WatchService,
    auth: AuthService,
    context: Arc<EtcdContext>,
    metrics: Option<PrometheusHandle>,
    /// Largest request body (or one message of a streamed body) read.
    body_bytes_max: usize,
}

impl Gateway {
    pub fn new(context: Arc<EtcdContext>, metrics: Option<PrometheusHandle>) -> Arc<Self> {
        let body_bytes_max = context
            .limits
            .max_request_bytes
            .saturating_mul(4)
            .div_ceil(3)
            .saturating_add(JSON_OVERHEAD_BYTES);
        Arc::new(Self {
            kv: KvService::new(context.clone()),
            lease: LeaseService::new(context.clone()),
            cluster: ClusterService::new(context.clone()),
            maintenance: MaintenanceService::new(context.clone()),
            watch: WatchService::new(context.clone()),
            auth: AuthService::new(context.clone()),
            context,
            metrics,
            body_bytes_max,
        })
    }

    /// Answers one HTTP request.
    pub async fn serve(&self, request: http::Request<Body>) -> http::Response<Body> {
        let Some((route, method)) = Route::of(request.uri().path()) else {
            // grpc-gateway's answer to a path it does not serve.
            return error_response(&Status::not_found("Not Found"));
        };
        if request.method() != method {
            // grpc-gateway's answer to a known path with another method.
            let mut response = error_response(&Status::unimplemented("Method Not Allowed"));
            if let Ok(allow) = HeaderValue::from_str(method.as_str()) {
                response.headers_mut().insert(header::ALLOW, allow);
            }
            return response;
        }
        // A token from Authenticate, as grpc-gateway passes it: the Authorization header.
        let token = request.headers().get(header::AUTHORIZATION).cloned();
        let body = request.into_body();
        match route {
            Route::Range => self.unary(body, token.as_ref(), |request| self.kv.range(request)).await,
            Route::Put => self.unary(body, token.as_ref(), |request| self.kv.put(request)).await,
            Route::DeleteRange => {
                self.unary(body, token.as_ref(), |request| self.kv.delete_range(request))
                    .await
            }
            Route::Txn => self.unary(body, token.as_ref(), |request| self.kv.txn(request)).await,
            Route::Compaction => {
                self.unary(body, token.as_ref(), |request| self.kv.compact(request))
                    .await
            }
            Route::LeaseGrant => {
                self.unary(body, token.as_ref(), |request| self.lease.lease_grant(request))
                    .await
            }
            Route::LeaseRevoke => {
                self.unary(body, token.as_ref(), |request| self.lease.lease_revoke(request))
                    .await
            }
            Route::LeaseTimeToLive => {
                self.unary(body, token.as_ref(), |request| self.lease.lease_time_to_live(request))
                    .await
            }
            Route::LeaseLeases => {
                self.unary(body, token.as_ref(), |request| self.lease.lease_leases(request))
                    .await
            }
            Route::MemberList => {
                self.unary(body, token.as_ref(), |request| self.cluster.member_list(request))
                    .await
            }
            Route::MemberAdd => {
                self.unary(body, token.as_ref(), |request| self.cluster.member_add(request))
                    .await
            }
            Route::MemberRemove => {
                self.unary(body, token.as_ref(), |request| self.cluster.member_remove(request))
                    .await
            }
            Route::MemberUpdate => {
                self.unary(body, token.as_ref(), |request| self.cluster.member_update(request))
                    .await
            }
            Route::MemberPromote => {
                self.unary(body, token.as_ref(), |request| self.cluster.member_promote(request))
                    .await
            }
            Route::Status => {
                self.unary(body, token.as_ref(), |request| self.maintenance.status(request))
                    .await
            }
            Route::Alarm => {
                self.unary(body, token.as_ref(), |request| self.maintenance.alarm(request))
                    .await
            }
            Route::Hash => {
                self.unary(body, token.as_ref(), |request| self.maintenance.hash(request))
                    .await
            }
            Route::HashKv => {
                self.unary(body, token.as_ref(), |request| self.maintenance.hash_kv(request))
                    .await
            }
            Route::Defragment => {
                self.unary(body, token.as_ref(), |request| self.maintenance.defragment(request))
                    .await
            }
            Route::Authenticate => {
                self.unary(body, token.as_ref(), |request| self.auth.authenticate(request))
                    .await
            }
            Route::AuthEnable => {
                self.unary(body, token.as_ref(), |request| self.auth.auth_enable(request))
                    .await
            }
            Route::AuthDisable => {
                self.unary(body, token.as_ref(), |request| self.auth.auth_disable(request))
                    .await
            }
            Route::AuthStatus => {
                self.unary(body, token.as_ref(), |request| self.auth.auth_status(request))
                    .await
            }
            Route::UserAdd => {
                self.unary(body, token.as_ref(), |request| self.auth.user_add(request))
                    .await
            }
            Route::UserGet => {
                self.unary(body, token.as_ref(), |request| self.auth.user_get(request))
                    .await
            }
            Route::UserList => {
                self.unary(body, token.as_ref(), |request| self.auth.user_list(request))
                    .await
            }
            Route::UserDelete => {
                self.unary(body, token.as_ref(), |request| self.auth.user_delete(request))
                    .await
            }
            Route::UserChangePassword => {
                self.unary(body, token.as_ref(), |request| self.auth.user_change_password(request))
                    .await
            }
            Route::UserGrantRole => {
                self.unary(body, token.as_ref(), |request| self.auth.user_grant_role(request))
                    .await
            }
            Route::UserRevokeRole => {
                self.unary(body, token.as_ref(), |request| self.auth.user_revoke_role(request))
                    .await
            }
            Route::RoleAdd => {
                self.unary(body, token.as_ref(), |request| self.auth.role_add(request))
                    .await
            }
            Route::RoleGet => {
                self.unary(body, token.as_ref(), |request| self.auth.role_get(request))
                    .await
            }
            Route::RoleList => {
                self.unary(body, token.as_ref(), |request| self.auth.role_list(request))
                    .await
            }
            Route::RoleDelete => {
                self.unary(body, token.as_ref(), |request| self.auth.role_delete(request))
                    .await
            }
            Route::RoleGrantPermission => {
                self.unary(body, token.as_ref(), |request| self.auth.role_grant_permission(request))
                    .await
            }
            Route::RoleRevokePermission => {
                self.unary(body, token.as_ref(), |request| {
                    self.auth.role_revoke_permission(request)
                })
                .await
            }
            Route::Watch => stream::watch(self, body, token.as_ref()).await,
            Route::LeaseKeepAlive => stream::keep_alive(self, body, token.as_ref()).await,
            Route::Version => {
                let version = Version {
                    etcdserver: ETCD_API_VERSION,
                    etcdcluster: ETCD_API_VERSION,
                };
                match serde_json::to_vec(&version) {
                    Ok(body) => json_response(StatusCode::OK, body),
                    Err(error) => error_response(&Status::internal(error.to_string())),
                }
            }
            Route::Health => {
                let (status, body) = crate::api::health::check(&self.context.router).await;
                json_response(status, body.into_bytes())
            }
            Route::Ranges => {
                let body = crate::api::ranges::describe(&self.context.router).to_string();
                json_response(StatusCode::OK, body.into_bytes())
            }
            Route::Nodes => {
                let body = crate::api::nodes::describe(
                    &self.context.router,
                    &self.context.gossip,
                    &self.context.initial_members,
                )
                .to_string();
                json_response(StatusCode::OK, body.into_bytes())
            }
            Route::Metrics => {
                crate::api::ranges::set_gauges(&self.context.router);
                crate::api::nodes::set_gauges(
                    &self.context.router,
                    &self.context.gossip,
                    &self.context.initial_members,
                );
                let text = self.metrics.as_ref().map(PrometheusHandle::render).unwrap_or_default();
                let mut response = http::Response::new(full(text.into_bytes()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                response
            }
        }
    }

    /// A unary call: the body read as `Req`, the service called, its answer written.
    async fn unary<'a, Req, Resp, Call, Answer>(
        &'a self,
        body: Body,
        token: Option<&HeaderValue>,
        call: Call,
    ) -> http::Response<Body>
    where
        Req: FromJson,
        Call: FnOnce(tonic::Request<Req>) -> Answer,
        Answer: Future<Output = Result<tonic::Response<Resp>, Status>> + 'a,
        for<'m> Json<'m, Resp>: Serialize,
    {
        let bytes = match read_body(body, self.body_bytes_max).await {
            Ok(bytes) => bytes,
            Err(status) => return error_response(&status),
        };
        let request = match Req::from_json(&bytes) {
            Ok(request) => request,
            Err(error) => return error_response(&bad_json(&error)),
        };
        match call(with_token(tonic::Request::new(request), token)).await {
            Ok(response) => message_response(response.get_ref()),
            Err(status) => error_response(&status),
        }
    }
}

/// `request` carrying the caller's Authorization header as the services read it.
pub(super) fn with_token<T>(mut request: tonic::Request<T>, token: Option<&HeaderValue>) -> tonic::Request<T> {
    if let Some(value) = token.and_then(|token| token.to_str().ok()) {
        if let Ok(value) = value.parse() {
            request.metadata_mut().insert("authorization", value);
        }
    }
    request
}

/// The status for a body that is not the expected JSON, as grpc-gateway gives it.
fn bad_json(error: &JsonError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// The status for a body (or one streamed message) over the size limit: what etcd's
/// gRPC server answers for a message over its limit.
fn too_large(limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "grpc: received message larger than max (more than {limit} bytes of JSON)"
    ))
}

/// Reads a whole request body, at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Status> {
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(BODY_READ_TIMEOUT, limited.collect()).await {
        Err(_) => Err(Status::deadline_exceeded("the request body did not arrive in time")),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Ok(Err(error)) => Err(Status::invalid_argument(format!("reading the request body: {error}"))),
    }
}

/// A whole body of bytes.
fn full(bytes: Vec<u8>) -> Body {
    Body::new(http_body_util::Full::new(Bytes::from(bytes)))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> http::Response<Body> {
    let mut response = http::Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A reply message as JSON.
fn message_response<'a, T>(message: &'a T) -> http::Response<Body>
where
    Json<'a, T>: Serialize,
{
    match json::to_vec(message) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(error) => error_response(&Status::internal(format!("encoding the response: {error}"))),
    }
}

/// etcd's `/version`, in etcd's field order.
#[derive(Serialize)]
struct Version {
    etcdserver: &'static str,
    etcdcluster: &'static str,
}

/// grpc-gateway v1's error body: the message twice, as `error` and (with the code) as a
/// google.rpc.Status would carry it.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: i32,
    message: &'a str,
}

fn error_response(status: &Status) -> http::Response<Body> {
    let body = ErrorBody {
        error: status.message(),
        code: status.code() as i32,
        message: status.message(),
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"error":"","code":13,"message":""}"#.to_vec());
    json_response(http_status(status.code()), bytes)
}

/// The HTTP status grpc-gateway (v1, as etcd uses it) answers for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // grpc-gateway deliberately does not say 412 here.
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// True for a gRPC call: HTTP/2 with an `application/grpc` content type (etcd decides
/// the same way).
pub fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request.version() == http::Version::HTTP_2
        && request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// Puts the gateway in front of the client port's gRPC services (a tonic server layer).
#[derive(Clone)]
pub struct GatewayLayer {
    gateway: Arc<Gateway>,
}

impl GatewayLayer {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl<S> Layer<S> for GatewayLayer {
    type Service = Dispatch<S>;

    fn layer(&self, grpc: S) -> Self::Service {
        Dispatch {
            grpc,
            gateway: self.gateway.clone(),
        }
    }
}

/// Sends each request on the client port to gRPC or to the gateway.
#[derive(Clone)]
pub struct Dispatch<S> {
    grpc: S,
    gateway: Arc<Gateway>,
}

impl<S> Service<http::Request<Body>> for Dispatch<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.grpc.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if is_grpc(&request) {
            return Box::pin(self.grpc.call(request));
        }
        let gateway = self.gateway.clone();
        Box::pin(async move { Ok(gateway.serve(request).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_their_aliases_route_as_in_etcd() {
        for prefix in ["/v3", "/v3beta", "/v3alpha"] {
            assert_eq!(
                Route::of(&format!("{prefix}/kv/range")),
                Some((Route::Range, Method::POST))
            );
            assert_eq!(
                Route::of(&format!("{prefix}/watch")),
                Some((Route::Watch, Method::POST))
            );
        }
        for prefix in ["/v3", "/v3beta", "/v3alpha"] {
            assert_eq!(
                Route::of(&format!("{prefix}/auth/authenticate")),
                Some((Route::Authenticate, Method::POST))
            );
        }
        // etcd 3.5's paths for the Auth service.
        for (path, route) in [
            ("enable", Route::AuthEnable),
            ("disable", Route::AuthDisable),
            ("status", Route::AuthStatus),
            ("user/add", Route::UserAdd),
            ("user/get", Route::UserGet),
            ("user/list", Route::UserList),
            ("user/delete", Route::UserDelete),
            ("user/changepw", Route::UserChangePassword),
            ("user/grant", Route::UserGrantRole),
            ("user/revoke", Route::UserRevokeRole),
            ("role/add", Route::RoleAdd),
            ("role/get", Route::RoleGet),
            ("role/list", Route::RoleList),
            ("role/delete", Route::RoleDelete),
            ("role/grant", Route::RoleGrantPermission),
            ("role/revoke", Route::RoleRevokePermission),
        ] {
            assert_eq!(Route::of(&format!("/v3/auth/{path}")), Some((route, Method::POST)));
        }
        assert_eq!(Route::of("/v3/auth/user/changepassword"), None);
        assert_eq!(
            Route::of("/v3/kv/lease/timetolive"),
            Some((Route::LeaseTimeToLive, Method::POST))
        );
        assert_eq!(Route::of("/version"), Some((Route::Version, Method::GET)));
        assert_eq!(Route::of("/v3/kv/rangex"), None);
        assert_eq!(Route::of("/v4/kv/range"), None);
        assert_eq!(Route::of("/v3/version"), None);
    }

    #[test]
    fn grpc_codes_map_to_grpc_gateways_http_statuses() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::OutOfRange), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::FailedPrecondition), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(http_status(Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::Internal), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn only_http2_with_a_grpc_content_type_is_grpc() {
        let request = |version, content_type: &str| {
            http::Request::builder()
                .version(version)
                .header(header::CONTENT_TYPE, content_type)
                .body(())
                .unwrap()
        };
        assert!(is_grpc(&request(http::Version::HTTP_2, "application/grpc")));
        assert!(is_grpc(&request(http::Version::HTTP_2, "application/grpc+proto")));
        assert!(!is_grpc(&request(http::Version::HTTP_2, "application/json")));
        assert!(!is_grpc(&request(http::Version::HTTP_11, "application/grpc")));
    }

    #[tokio::test]
    async fn errors_have_grpc_gateways_shape() {
        let response = error_response(&Status::out_of_range(
            "etcdserver: mvcc: required revision is a future revision",
        ));
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body.as_ref(),
            br#"{"error":"etcdserver: mvcc: required revision is a future revision","code":11,"message":"etcdserver: mvcc: required revision is a future revision"}"#
        );
    }
}
