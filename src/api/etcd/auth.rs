//! etcd's Auth service: turning auth on and off, tokens, users and roles. The store and
//! its rules are `crate::auth`'s; this is the gRPC edge (who may call what, etcd's
//! messages and errors).

use super::{errors, observe, EtcdContext};
use crate::auth::{self, perm::ROOT, AuthError};
use crate::proto::authpb;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::*;
use crate::proto::shoal::state::{AuthUser, KeyPermission};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AuthService {
    context: Arc<EtcdContext>,
}

impl AuthService {
    pub fn new(context: Arc<EtcdContext>) -> Self {
        Self { context }
    }

    fn header(&self) -> ResponseHeader {
        self.context.header(self.context.router.newest_revision())
    }

    /// User and role management is the root role's once auth is on.
    async fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.context
            .auth
            .check_admin(&credentials(request))
            .await
            .map_err(errors::auth)
    }

    async fn update(
        &self,
        change: impl Fn(&mut crate::proto::shoal::state::AuthStore) -> Result<(), AuthError>,
    ) -> Result<(), Status> {
        self.context.auth.update(change).await.map(|_| ()).map_err(errors::auth)
    }
}

/// What a request shows of its caller: its token, and the client certificate chain
/// the TLS handshake verified.
pub fn credentials<T>(request: &Request<T>) -> crate::auth::Credentials {
    crate::auth::Credentials {
        token: token(request),
        certificates: request
            .extensions()
            .get::<crate::tls::TlsConnectInfo>()
            .and_then(|info| info.peer_certificates.clone()),
    }
}

/// The token a request carries: etcd clients send it as `token` metadata, the JSON
/// gateway's callers as an `Authorization` header.
pub fn token<T>(request: &Request<T>) -> Option<String> {
    let metadata = request.metadata();
    metadata
        .get("token")
        .or_else(|| metadata.get("authorization"))
        .and_then(|value| value.to_str().ok())
        .map(|value| value.strip_prefix("Bearer ").unwrap_or(value).to_string())
}

fn random_key() -> Vec<u8> {
    use rand::RngCore;
    let mut key = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(&self, request: Request<AuthEnableRequest>) -> Result<Response<AuthEnableResponse>, Status> {
        observe("etcdserverpb.Auth", "AuthEnable", async {
            self.admin(&request).await?;
            self.update(|store| auth::enable(store, random_key)).await?;
            Ok(Response::new(AuthEnableResponse {
                header: Some(self.header()),
            }))
        })
        .await
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        observe("etcdserverpb.Auth", "AuthDisable", async {
            self.admin(&request).await?;
            self.update(|store| {
                store.enabled = false;
                Ok(())
            })
            .await?;
            Ok(Response::new(AuthDisableResponse {
                header: Some(self.header()),
            }))
        })
        .await
    }

    async fn auth_status(&self, _request: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        observe("etcdserverpb.Auth", "AuthStatus", async {
            let store = self.context.auth.store().await.map_err(errors::auth)?;
            Ok(Response::new(AuthStatusResponse {
                header: Some(self.header()),
                enabled: store.enabled,
                auth_revision: store.revision,
            }))
        })
        .await
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        observe("etcdserverpb.Auth", "Authenticate", async {
            let source = request
                .extensions()
                .get::<crate::tls::TlsConnectInfo>()
                .and_then(|info| info.remote_addr)
                .map(|address| address.ip())
                .or_else(|| request.remote_addr().map(|address| address.ip()));
            let request = request.into_inner();
            let token = self
                .context
                .auth
                .authenticate(&request.name, &request.password, source)
                .await
                .map_err(errors::auth)?;
            Ok(Response::new(AuthenticateResponse {
                header: Some(self.header()),
                token,
            }))
        })
        .await
    }

    async fn user_add(&self, request: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        observe("etcdserverpb.Auth", "UserAdd", async {
            self.admin(&request).await?;
            let request = request.into_inner();
            let no_password = request.options.as_ref().is_some_and(|options| options.no_password);
            let password_hash = if no_password {
                String::new()
            } else if !request.hashed_password.is_empty() {
                request.hashed_password.clone()
            } else if request.password.is_empty() {
                return Err(errors::auth(AuthError::PasswordEmpty));
            } else {
                self.context
                    .auth
                    .hash_password(&request.password)
                    .await
                    .map_err(errors::auth)?
            };
            let user = AuthUser {
                name: request.name.clone(),
                password_hash,
                roles: Vec::new(),
                no_password,
                redis_acl: None,
            };
            self.update(|store| auth::add_user(store, user.clone())).await?;
            Ok(Response::new(AuthUserAddResponse {
                header: Some(self.header()),
            }))
        })
        .await
    }

    async fn user_get(&self, request: Request<AuthUserGetRequest>) -> Result<Response<AuthUserGetResponse>, Status> {
        observe("etcdserverpb.Auth", "UserGet", async {
            self.admin(&request).await?;
            let name = request.into_inner().name;
            let store = self.context.auth.store().await.map_err(errors::auth)?;
            let user = store
                .users
                .iter()
                .find(|user| user.name == name)
                .ok_or_else(|| errors::auth(AuthError::UserNotFound))?;
            Ok(Response::new(AuthUserGetResponse {
                header: Some(self.header()),
                roles: user.roles.clone(),
            }))
        })
        .await
    }

    async fn user_list(&self, request: Request<AuthUserListRequest>) -> Result<Response<AuthUserListResponse>, Status> {
        observe("etcdserverpb.Auth", "UserList", async {
            self.admin(&request).await?;
            let store = self.context.auth.store().await.map_err(errors::auth)?;
            Ok(Response::new(AuthUserListResponse {
                header: Some(self.header()),
                users: store.users.iter().map(|user| user.name.clone()).collect(),
            }))
        })
        .await
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        observe("etcdserverpb.Auth", "UserDelete", async {
            self.admin(&request).await?;
            let name = request.into_inner().name;
            self.update(|store| auth::delete_user(store, &name)).await?;
            Ok(Response::new(AuthUserDeleteResponse {
                header: Some(self.header()),
            }))
        })
        .await
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        observe("etcdserverpb.Auth", "UserChangePassword", async {
            self.admin(&request).await?;
            let request = request.into_inner();
            let hash = if request.hashed_password.is_empty() {
                if request.password.is_empty() {
                    return Err(errors::auth(AuthError::PasswordEmpty));
                }
                self.context
                    .auth
                    .hash_password(&request.password)
                    .await
                    .map_err(errors::auth)?
            } else {
                request.hashed_password.clone()
            };
            self.update(|store| auth::set_password(store, &request.name, &hash))
                .await?;
            Ok(Response::new(AuthUserChangePasswordResponse {
                header: Some(self.header()),
            }))
        })
        .await
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        observe("etcdserverpb.Auth", "UserGrantRole", async {
            self.admin(&request).await?;
            let request = request.into_inner();
            self.update(|store| auth::grant_role(store, &request.user, &request.role))
                .await?;
            Ok(Response::new(AuthUserGrantRoleResponse {
                header: Some(self.header()),
            }))
        })
        .await
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        observe("etcdserverpb.Auth", "UserRevokeRole", async {
            self.admin(&request).await?;
            let request = request.into_inner();
            self.update(|store| auth::revoke_role(store, &request.name, &request.role))
                .await?;
            Ok(Response::new(AuthUserRevokeRoleResponse {
                header: Some(self.header()),
            }))
        })
        .await
    }

    async fn role_add(&self, request: Request<AuthRoleAddRequest>) -> Result<Response<AuthRoleAddResponse>, Status> {
        observe("etcdserverpb.Auth", "RoleAdd", async {
            self.admin(&request).await?;
            let name = request.into_inner().name;
            self.update(|store| auth::add_role(store, &name)).await?;
            Ok(Response::new(AuthRoleAddResponse {
                header: Some(self.header()),
            }))
        })
        .await
    }

    async fn role_get(&self, request: Request<AuthRoleGetRequest>) -> Result<Response<AuthRoleGetResponse>, Status> {
        observe("etcdserverpb.Auth", "RoleGet", async {
            self.admin(&request).await?;
            let name = request.into_inner().role;
            let store = self.context.auth.store().await.map_err(errors::auth)?;
            let perm = match store.roles.iter().find(|role| role.name == name) {
                Some(role) => role
                    .permissions
                    .iter()
                    .map(|permission| authpb::Permission {
                        perm_type: permission.kind,
                        key: permission.key.clone(),
                        range_end: permission.range_end.clone(),
                    })
                    .collect(),
                // The root role may do everything whether or not it was added.
                None if name == ROOT => Vec::new(),
                None => return Err(errors::auth(AuthError::RoleNotFound)),
            };
            Ok(Response::new(AuthRoleGetResponse {
                header: Some(self.header()),
                perm,
            }))
        })
        .await
    }

    async fn role_list(&self, request: Request<AuthRoleListRequest>) -> Result<Response<AuthRoleListResponse>, Status> {
        observe("etcdserverpb.Auth", "RoleList", async {
            self.admin(&request).await?;
            let store = self.context.auth.store().await.map_err(errors::auth)?;
            Ok(Response::new(AuthRoleListResponse {
                header: Some(self.header()),
                roles: store.roles.iter().map(|role| role.name.clone()).collect(),
            }))
        })
        .await
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        observe("etcdserverpb.Auth", "RoleDelete", async {
            self.admin(&request).await?;
            let name = request.into_inner().role;
            self.update(|store| auth::delete_role(store, &name)).await?;
            Ok(Response::new(AuthRoleDeleteResponse {
                header: Some(self.header()),
            }))
        })
        .await
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        observe("etcdserverpb.Auth", "RoleGrantPermission", async {
            self.admin(&request).await?;
            let request = request.into_inner();
            let perm = request
                .perm
                .ok_or_else(|| errors::auth(AuthError::PermissionNotGiven))?;
            let permission = KeyPermission {
                kind: perm.perm_type,
                key: perm.key,
                range_end: perm.range_end,
            };
            self.update(|store| auth::grant_permission(store, &request.name, permission.clone()))
                .await?;
            Ok(Response::new(AuthRoleGrantPermissionResponse {
                header: Some(self.header()),
            }))
        })
        .await
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        observe("etcdserverpb.Auth", "RoleRevokePermission", async {
            self.admin(&request).await?;
            let request = request.into_inner();
            self.update(|store| auth::revoke_permission(store, &request.role, &request.key, &request.range_end))
                .await?;
            Ok(Response::new(AuthRoleRevokePermissionResponse {
                header: Some(self.header()),
            }))
        })
        .await
    }
}
