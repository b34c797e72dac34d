//! Whether a user's roles cover the keys a request touches, as etcd decides it: a range
//! is permitted when the union of the user's permitted intervals of the right kind
//! contains all of it (a prefix read needs read on the whole prefix).

use crate::proto::shoal::state::{key_permission::Kind, AuthStore};

/// The role that may do everything, and the user that must hold it before auth is on.
pub const ROOT: &str = "root";

/// What a request does to a key range (etcd's `[key, range_end)`: an empty end is the
/// key alone, `"\0"` every key from `key` on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyAccess {
    pub write: bool,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

impl KeyAccess {
    pub fn read(key: &[u8], range_end: &[u8]) -> Self {
        Self {
            write: false,
            key: key.to_vec(),
            range_end: range_end.to_vec(),
        }
    }

    pub fn write(key: &[u8], range_end: &[u8]) -> Self {
        Self {
            write: true,
            key: key.to_vec(),
            range_end: range_end.to_vec(),
        }
    }
}

/// `[start, end)`, `None` for no end.
type Interval = (Vec<u8>, Option<Vec<u8>>);

fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            (key.to_vec(), Some(end))
        }
        [0] => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

/// Whether the union of `intervals` holds all of `wanted`.
fn covered(mut intervals: Vec<Interval>, wanted: &Interval) -> bool {
    if wanted.1.as_ref().is_some_and(|end| *end <= wanted.0) {
        return true;
    }
    intervals.sort();
    let mut reached = wanted.0.clone();
    for (start, end) in intervals {
        if start > reached {
            break;
        }
        match end {
            None => return true,
            Some(end) if end > reached => reached = end,
            Some(_) => {}
        }
        if wanted.1.as_ref().is_some_and(|wanted_end| reached >= *wanted_end) {
            return true;
        }
    }
    false
}

/// Whether `user` holds the root role.
pub fn is_admin(store: &AuthStore, user: &str) -> bool {
    store
        .users
        .iter()
        .find(|known| known.name == user)
        .is_some_and(|known| known.roles.iter().any(|role| role == ROOT))
}

/// Whether `user` may do every one of `accesses`.
pub fn permitted(store: &AuthStore, user: &str, accesses: &[KeyAccess]) -> bool {
    let Some(known) = store.users.iter().find(|known| known.name == user) else {
        return false;
    };
    if known.roles.iter().any(|role| role == ROOT) {
        return true;
    }
    let permissions: Vec<_> = store
        .roles
        .iter()
        .filter(|role| known.roles.contains(&role.name))
        .flat_map(|role| role.permissions.iter())
        .collect();
    accesses.iter().all(|access| {
        let intervals = permissions
            .iter()
            .filter(|permission| match permission.kind() {
                Kind::Readwrite => true,
                Kind::Read => !access.write,
                Kind::Write => access.write,
            })
            .map(|permission| interval(&permission.key, &permission.range_end))
            .collect();
        covered(intervals, &interval(&access.key, &access.range_end))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::shoal::state::{AuthRole, AuthUser, KeyPermission};

    fn store() -> AuthStore {
        let permission = |kind: Kind, key: &str, end: &str| KeyPermission {
            kind: kind as i32,
            key: key.as_bytes().to_vec().into(),
            range_end: end.as_bytes().to_vec().into(),
        };
        AuthStore {
            enabled: true,
            users: vec![
                AuthUser {
                    name: "reader".into(),
                    roles: vec!["app-read".into(), "missing".into()],
                    ..Default::default()
                },
                AuthUser {
                    name: "root".into(),
                    roles: vec![ROOT.into()],
                    ..Default::default()
                },
            ],
            roles: vec![AuthRole {
                name: "app-read".into(),
                permissions: vec![
                    permission(Kind::Read, "app/", "app0"),
                    permission(Kind::Readwrite, "app/own/", "app/own0"),
                    permission(Kind::Write, "log", ""),
                    permission(Kind::Read, "z", "\0"),
                ],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn ranges_are_permitted_only_when_covered_whole() {
        let store = store();
        let allowed = |access: KeyAccess| permitted(&store, "reader", &[access]);
        assert!(allowed(KeyAccess::read(b"app/x", b"")));
        assert!(allowed(KeyAccess::read(b"app/", b"app0")));
        assert!(allowed(KeyAccess::read(b"app/a", b"app/b")));
        assert!(!allowed(KeyAccess::write(b"app/x", b"")));
        assert!(allowed(KeyAccess::write(b"app/own/x", b"")));
        // A watch or read wider than the permission is refused.
        assert!(!allowed(KeyAccess::read(b"app", b"app0")));
        assert!(!allowed(KeyAccess::read(b"app/", b"\0")));
        assert!(!allowed(KeyAccess::read(b"secret/x", b"")));
        assert!(allowed(KeyAccess::write(b"log", b"")));
        assert!(!allowed(KeyAccess::write(b"log2", b"")));
        assert!(allowed(KeyAccess::read(b"zz", b"\0")));
        assert!(permitted(&store, "root", &[KeyAccess::write(b"anything", b"\0")]));
        assert!(!permitted(&store, "nobody", &[KeyAccess::read(b"app/x", b"")]));
        assert!(is_admin(&store, "root") && !is_admin(&store, "reader"));
    }

    #[test]
    fn adjoining_permissions_cover_together() {
        let intervals = vec![
            (b"a".to_vec(), Some(b"c".to_vec())),
            (b"c".to_vec(), Some(b"e".to_vec())),
        ];
        assert!(covered(intervals.clone(), &(b"b".to_vec(), Some(b"d".to_vec()))));
        assert!(!covered(intervals, &(b"b".to_vec(), Some(b"f".to_vec()))));
    }
}
