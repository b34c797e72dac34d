//! etcd's authentication and role-based access, for every front-end. The auth store
//! (users with bcrypt password hashes, roles with key permissions, whether auth is on,
//! the token key) lives in the meta range and is replaced whole by each change, checked
//! against the revision it was read at. Each member checks calls against its own copy
//! (cached until the meta range's applied auth version moves): tokens are signed, so
//! any member can check one another issued (`token`).

pub mod perm;
pub mod token;

use crate::proto::shoal::command::{command_result, raft_command, ErrorKind, SetAuth};
use crate::proto::shoal::state::{AuthRole, AuthStore, AuthUser, KeyPermission};
use crate::range::{encode_command, META_RANGE_ID};
use crate::router::{RouteError, Router};
use perm::{KeyAccess, ROOT};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a change of the store is tried again after losing to another change.
const UPDATE_ATTEMPTS: usize = 8;
/// A failed authentication of a user delays the next one for that user by this, doubled
/// per failure up to [`FAILURE_DELAY_MAX`] (brute force against one user crawls).
const FAILURE_DELAY: Duration = Duration::from_millis(100);
const FAILURE_DELAY_MAX: Duration = Duration::from_secs(5);
/// How long a member's own token to its peers lives (one corruption check).
const MEMBER_TOKEN_TTL: Duration = Duration::from_secs(60);

/// etcd's auth errors; `api::etcd::errors::auth` gives each etcd's code and text.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("user name is empty")]
    UserEmpty,
    #[error("invalid auth token")]
    InvalidToken,
    #[error("revision of auth store is old")]
    OldRevision,
    #[error("permission denied")]
    PermissionDenied,
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("authentication is not enabled")]
    NotEnabled,
    #[error("user name already exists")]
    UserExists,
    #[error("user name not found")]
    UserNotFound,
    #[error("password is empty")]
    PasswordEmpty,
    #[error("role name already exists")]
    RoleExists,
    #[error("role name not found")]
    RoleNotFound,
    #[error("role name is empty")]
    RoleEmpty,
    #[error("role is not granted to the user")]
    RoleNotGranted,
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    #[error("permission not given")]
    PermissionNotGiven,
    #[error("root user does not exist")]
    RootUserNotExist,
    #[error("root user does not have root role")]
    RootRoleNotExist,
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("storage: {0}")]
    Storage(String),
}

/// What a call shows of its caller: a token from Authenticate, and the client
/// certificate chain verified at the handshake (its common name is the user when there
/// is no token, as in etcd; read only then, not on every call).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub token: Option<String>,
    pub certificates: Option<Arc<Vec<rustls::pki_types::CertificateDer<'static>>>>,
}

impl Credentials {
    /// The common name of the client's certificate, if it showed one.
    pub fn common_name(&self) -> Option<String> {
        crate::tls::subject::common_name(self.certificates.as_ref()?.first()?)
    }
}

/// Who a call comes from, once its token checked out (auth on).
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: String,
    pub store: Arc<AuthStore>,
}

pub struct Auth {
    router: Arc<Router>,
    cache: Mutex<(u64, Arc<AuthStore>)>,
    token_ttl: Duration,
    bcrypt_cost: u32,
    /// Failed authentications per user and when the last one was.
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

impl Auth {
    pub fn new(router: Arc<Router>, token_ttl: Duration, bcrypt_cost: u32) -> Arc<Self> {
        Arc::new(Self {
            router,
            cache: Mutex::new((u64::MAX, Arc::new(AuthStore::default()))),
            token_ttl,
            bcrypt_cost,
            failures: Mutex::new(HashMap::new()),
        })
    }

    fn version(&self) -> u64 {
        self.router.status(META_RANGE_ID).auth_version.load(Ordering::Acquire)
    }

    /// Whether auth is on, as this member last applied it (no read).
    pub fn enabled(&self) -> bool {
        self.version() & 1 == 1
    }

    /// The store as this member's copy of the meta range holds it.
    pub async fn store(&self) -> Result<Arc<AuthStore>, AuthError> {
        let version = self.version();
        {
            let cached = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if cached.0 == version {
                return Ok(cached.1.clone());
            }
        }
        let store = Arc::new(
            self.router
                .pinned(META_RANGE_ID)
                .await?
                .auth_store()
                .map_err(|error| AuthError::Storage(error.to_string()))?,
        );
        let mut cached = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Cached under the version read before it: a change meanwhile reads it again.
        *cached = (version, store.clone());
        Ok(store)
    }

    /// The caller of a request showing `credentials`: `None` when auth is off.
    pub async fn caller(&self, credentials: &Credentials) -> Result<Option<Caller>, AuthError> {
        if !self.enabled() {
            return Ok(None);
        }
        let store = self.store().await?;
        if !store.enabled {
            return Ok(None);
        }
        let Some(token) = credentials.token.as_deref().filter(|token| !token.is_empty()) else {
            // A verified client certificate names a user that exists.
            return match credentials.common_name() {
                Some(name) if store.users.iter().any(|user| user.name == name) => {
                    Ok(Some(Caller { user: name, store }))
                }
                _ => Err(AuthError::UserEmpty),
            };
        };
        let claims = token::verify(&store.token_key, token, now_unix_ms())
            .map_err(|token::TokenError::Invalid| AuthError::InvalidToken)?;
        if claims.revision < store.revision {
            return Err(AuthError::OldRevision);
        }
        if !store.users.iter().any(|user| user.name == claims.user) {
            return Err(AuthError::InvalidToken);
        }
        Ok(Some(Caller {
            user: claims.user,
            store,
        }))
    }

    /// Refuses the call unless its caller may do every one of `accesses`.
    pub async fn check(&self, credentials: &Credentials, accesses: &[KeyAccess]) -> Result<(), AuthError> {
        match self.caller(credentials).await? {
            None => Ok(()),
            Some(caller) if perm::permitted(&caller.store, &caller.user, accesses) => Ok(()),
            Some(_) => Err(AuthError::PermissionDenied),
        }
    }

    /// Refuses the call unless its caller holds the root role.
    pub async fn check_admin(&self, credentials: &Credentials) -> Result<(), AuthError> {
        match self.caller(credentials).await? {
            None => Ok(()),
            Some(caller) if perm::is_admin(&caller.store, &caller.user) => Ok(()),
            Some(_) => Err(AuthError::PermissionDenied),
        }
    }

    /// Refuses the call unless it comes from a user (any user, when auth is on).
    pub async fn check_user(&self, credentials: &Credentials) -> Result<(), AuthError> {
        self.caller(credentials).await.map(|_| ())
    }

    /// A token for `name`, if `password` is theirs. Failures slow the next attempts of
    /// the same user and from the same address (`source`), whatever the connection.
    pub async fn authenticate(
        &self,
        name: &str,
        password: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<String, AuthError> {
        if !self.enabled() {
            return Err(AuthError::NotEnabled);
        }
        let keys: Vec<String> = std::iter::once(format!("user:{name}"))
            .chain(source.map(|source| format!("from:{source}")))
            .collect();
        for key in &keys {
            self.wait_out_failures(key).await;
        }
        let store = self.store().await?;
        let user = store.users.iter().find(|user| user.name == name);
        let hash = user
            .filter(|user| !user.no_password && !user.password_hash.is_empty())
            .map(|user| user.password_hash.clone());
        let password = password.to_string();
        let cost = self.bcrypt_cost;
        // An unknown user is checked against a stand-in hash of the same cost, so the
        // answer takes as long and timing does not tell which names exist.
        let matches = tokio::task::spawn_blocking(move || match hash {
            Some(hash) => bcrypt::verify(password, &hash).unwrap_or(false),
            None => {
                static STAND_IN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
                if let Some(stand_in) = STAND_IN.get_or_init(|| bcrypt::hash("stand-in", cost).ok()) {
                    let _ = bcrypt::verify(password, stand_in);
                }
                false
            }
        })
        .await
        .unwrap_or(false);
        if !matches {
            for key in &keys {
                self.note_failure(key);
            }
            return Err(AuthError::AuthFailed);
        }
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for key in &keys {
            failures.remove(key);
        }
        drop(failures);
        Ok(token::issue(
            &store.token_key,
            &token::Claims {
                user: name.to_string(),
                revision: store.revision,
                expires_unix_ms: now_unix_ms() + self.token_ttl.as_millis() as u64,
            },
        ))
    }

    /// A short-lived token a member uses to ask other members for what needs the root
    /// role (the corruption check's HashKV): every member holds the replicated token
    /// key, so it can speak as root to its peers; `None` while auth is off.
    pub async fn member_token(&self) -> Result<Option<String>, AuthError> {
        if !self.enabled() {
            return Ok(None);
        }
        let store = self.store().await?;
        if !store.enabled {
            return Ok(None);
        }
        Ok(Some(token::issue(
            &store.token_key,
            &token::Claims {
                user: perm::ROOT.to_string(),
                revision: store.revision,
                expires_unix_ms: now_unix_ms() + MEMBER_TOKEN_TTL.as_millis() as u64,
            },
        )))
    }

    async fn wait_out_failures(&self, name: &str) {
        let wait = {
            let failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            failures.get(name).map(|(count, at)| {
                let delay = FAILURE_DELAY
                    .saturating_mul(1u32 << (*count).min(16))
                    .min(FAILURE_DELAY_MAX);
                delay.saturating_sub(at.elapsed())
            })
        };
        if let Some(wait) = wait.filter(|wait| !wait.is_zero()) {
            tokio::time::sleep(wait).await;
        }
    }

    fn note_failure(&self, name: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Bounded: a flood of made-up names must not grow the map without end.
        if failures.len() > 10_000 {
            failures.clear();
        }
        let entry = failures.entry(name.to_string()).or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = Instant::now();
    }

    /// A bcrypt hash of `password` (off the async workers: it takes tens of ms).
    pub async fn hash_password(&self, password: &str) -> Result<String, AuthError> {
        let password = password.to_string();
        let cost = self.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|error| AuthError::Storage(error.to_string()))?
            .map_err(|error| AuthError::Storage(error.to_string()))
    }

    /// Applies `change` to a current copy of the store and replaces it through the meta
    /// range's log, again from a fresh copy if another change got there first.
    pub async fn update(
        &self,
        change: impl Fn(&mut AuthStore) -> Result<(), AuthError>,
    ) -> Result<AuthStore, AuthError> {
        for _ in 0..UPDATE_ATTEMPTS {
            self.router.linearize(META_RANGE_ID).await?;
            let current = self
                .router
                .pinned(META_RANGE_ID)
                .await?
                .auth_store()
                .map_err(|error| AuthError::Storage(error.to_string()))?;
            let mut changed = current.clone();
            change(&mut changed)?;
            if changed == current {
                return Ok(current);
            }
            let command = encode_command(raft_command::Op::SetAuth(SetAuth {
                store: Some(changed.clone()),
                expected_revision: current.revision,
            }));
            let applied = self.router.write(META_RANGE_ID, command).await?;
            match applied.result {
                Some(command_result::Result::Error(error)) if error.kind() == ErrorKind::Aborted => continue,
                Some(command_result::Result::Error(error)) => return Err(AuthError::Storage(error.detail)),
                _ => {
                    changed.revision = current.revision + 1;
                    return Ok(changed);
                }
            }
        }
        Err(AuthError::Storage(
            "the auth store kept changing under this change".into(),
        ))
    }
}

// The store's changes, as etcd's auth store makes them (pure: `Auth::update` runs them).

pub fn enable(store: &mut AuthStore, key: impl FnOnce() -> Vec<u8>) -> Result<(), AuthError> {
    if store.enabled {
        return Ok(());
    }
    let root = store
        .users
        .iter()
        .find(|user| user.name == ROOT)
        .ok_or(AuthError::RootUserNotExist)?;
    if !root.roles.iter().any(|role| role == ROOT) {
        return Err(AuthError::RootRoleNotExist);
    }
    if store.token_key.is_empty() {
        store.token_key = key().into();
    }
    store.enabled = true;
    Ok(())
}

pub fn add_user(store: &mut AuthStore, user: AuthUser) -> Result<(), AuthError> {
    if user.name.is_empty() {
        return Err(AuthError::UserEmpty);
    }
    if store.users.iter().any(|known| known.name == user.name) {
        return Err(AuthError::UserExists);
    }
    store.users.push(user);
    store.users.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(())
}

fn user_mut<'a>(store: &'a mut AuthStore, name: &str) -> Result<&'a mut AuthUser, AuthError> {
    store
        .users
        .iter_mut()
        .find(|user| user.name == name)
        .ok_or(AuthError::UserNotFound)
}

pub fn delete_user(store: &mut AuthStore, name: &str) -> Result<(), AuthError> {
    if store.enabled && name == ROOT {
        return Err(AuthError::InvalidAuthMgmt);
    }
    user_mut(store, name)?;
    store.users.retain(|user| user.name != name);
    Ok(())
}

pub fn set_password(store: &mut AuthStore, name: &str, hash: &str) -> Result<(), AuthError> {
    let user = user_mut(store, name)?;
    user.password_hash = hash.to_string();
    user.no_password = false;
    Ok(())
}

pub fn grant_role(store: &mut AuthStore, name: &str, role: &str) -> Result<(), AuthError> {
    if role != ROOT && !store.roles.iter().any(|known| known.name == role) {
        return Err(AuthError::RoleNotFound);
    }
    let user = user_mut(store, name)?;
    if !user.roles.iter().any(|known| known == role) {
        user.roles.push(role.to_string());
        user.roles.sort();
    }
    Ok(())
}

pub fn revoke_role(store: &mut AuthStore, name: &str, role: &str) -> Result<(), AuthError> {
    if store.enabled && name == ROOT && role == ROOT {
        return Err(AuthError::InvalidAuthMgmt);
    }
    let user = user_mut(store, name)?;
    if !user.roles.iter().any(|known| known == role) {
        return Err(AuthError::RoleNotGranted);
    }
    user.roles.retain(|known| known != role);
    Ok(())
}

pub fn add_role(store: &mut AuthStore, name: &str) -> Result<(), AuthError> {
    if name.is_empty() {
        return Err(AuthError::RoleEmpty);
    }
    if store.roles.iter().any(|role| role.name == name) {
        return Err(AuthError::RoleExists);
    }
    store.roles.push(AuthRole {
        name: name.to_string(),
        permissions: Vec::new(),
    });
    store.roles.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(())
}

fn role_mut<'a>(store: &'a mut AuthStore, name: &str) -> Result<&'a mut AuthRole, AuthError> {
    store
        .roles
        .iter_mut()
        .find(|role| role.name == name)
        .ok_or(AuthError::RoleNotFound)
}

pub fn delete_role(store: &mut AuthStore, name: &str) -> Result<(), AuthError> {
    if store.enabled && name == ROOT {
        return Err(AuthError::InvalidAuthMgmt);
    }
    role_mut(store, name)?;
    store.roles.retain(|role| role.name != name);
    for user in &mut store.users {
        user.roles.retain(|role| role != name);
    }
    Ok(())
}

pub fn grant_permission(store: &mut AuthStore, role: &str, permission: KeyPermission) -> Result<(), AuthError> {
    let role = role_mut(store, role)?;
    match role
        .permissions
        .iter_mut()
        .find(|known| known.key == permission.key && known.range_end == permission.range_end)
    {
        Some(known) => known.kind = permission.kind,
        None => role.permissions.push(permission),
    }
    role.permissions
        .sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
    Ok(())
}

pub fn revoke_permission(store: &mut AuthStore, role: &str, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
    let role = role_mut(store, role)?;
    let before = role.permissions.len();
    role.permissions
        .retain(|known| !(known.key.as_ref() == key && known.range_end.as_ref() == range_end));
    if role.permissions.len() == before {
        return Err(AuthError::PermissionNotGranted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_turns_on_only_with_a_root_user_holding_the_root_role() {
        let mut store = AuthStore::default();
        assert!(matches!(enable(&mut store, Vec::new), Err(AuthError::RootUserNotExist)));
        add_user(
            &mut store,
            AuthUser {
                name: ROOT.into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(enable(&mut store, Vec::new), Err(AuthError::RootRoleNotExist)));
        grant_role(&mut store, ROOT, ROOT).unwrap();
        enable(&mut store, || vec![7; 32]).unwrap();
        assert!(store.enabled && store.token_key.len() == 32);
        // The root user and role cannot be taken away while auth is on.
        assert!(matches!(delete_user(&mut store, ROOT), Err(AuthError::InvalidAuthMgmt)));
        assert!(matches!(
            revoke_role(&mut store, ROOT, ROOT),
            Err(AuthError::InvalidAuthMgmt)
        ));
    }

    #[test]
    fn roles_and_permissions_change_as_etcds_do() {
        let mut store = AuthStore::default();
        assert!(matches!(grant_role(&mut store, "u", "r"), Err(AuthError::RoleNotFound)));
        add_role(&mut store, "r").unwrap();
        assert!(matches!(add_role(&mut store, "r"), Err(AuthError::RoleExists)));
        assert!(matches!(grant_role(&mut store, "u", "r"), Err(AuthError::UserNotFound)));
        add_user(
            &mut store,
            AuthUser {
                name: "u".into(),
                ..Default::default()
            },
        )
        .unwrap();
        grant_role(&mut store, "u", "r").unwrap();
        grant_role(&mut store, "u", "r").unwrap();
        assert_eq!(store.users[0].roles, vec!["r".to_string()]);
        let permission = KeyPermission {
            kind: 0,
            key: b"a".to_vec().into(),
            range_end: b"b".to_vec().into(),
        };
        grant_permission(&mut store, "r", permission.clone()).unwrap();
        grant_permission(&mut store, "r", KeyPermission { kind: 2, ..permission }).unwrap();
        assert_eq!(store.roles[0].permissions.len(), 1);
        assert!(matches!(
            revoke_permission(&mut store, "r", b"a", b"c"),
            Err(AuthError::PermissionNotGranted)
        ));
        revoke_permission(&mut store, "r", b"a", b"b").unwrap();
        delete_role(&mut store, "r").unwrap();
        assert!(store.users[0].roles.is_empty());
        assert!(matches!(
            revoke_role(&mut store, "u", "r"),
            Err(AuthError::RoleNotGranted)
        ));
    }
}
