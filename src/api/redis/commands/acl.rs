//! Redis's ACL over the cluster's users (the same users as etcd's): ACL SETUSER,
//! GETUSER, DELUSER, LIST, USERS, WHOAMI, CAT, and the check each command passes once
//! auth is on. A user holding etcd's `root` role may do everything; another user may
//! run the commands its rules allow on keys its patterns match, and nothing before ACL
//! SETUSER gave it rules.

use super::{syntax_error, upper, Outcome, Spec, COMMANDS};
use crate::api::redis::glob;
use crate::api::redis::resp::Reply;
use crate::api::redis::{RedisContext, Session};
use crate::auth::perm::{self, ROOT};
use crate::auth::AuthError;
use crate::proto::shoal::state::{AuthStore, AuthUser, RedisAcl};
use bytes::Bytes;

/// Redis's command categories that Shoal's commands fall in.
pub const CATEGORIES: &[&str] = &[
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "fast",
    "slow",
    "pubsub",
    "admin",
    "dangerous",
    "connection",
    "transaction",
    "blocking",
    "stream",
];

const STRING: &[&str] = &[
    "get",
    "set",
    "setnx",
    "setex",
    "psetex",
    "getset",
    "getdel",
    "getex",
    "mget",
    "mset",
    "msetnx",
    "incr",
    "decr",
    "incrby",
    "decrby",
    "incrbyfloat",
    "append",
    "strlen",
    "getrange",
    "setrange",
    "substr",
];
const KEYSPACE: &[&str] = &[
    "del",
    "unlink",
    "exists",
    "type",
    "rename",
    "renamenx",
    "copy",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "ttl",
    "pttl",
    "expiretime",
    "pexpiretime",
    "persist",
    "keys",
    "scan",
    "randomkey",
    "object",
    "dbsize",
    "flushdb",
    "flushall",
    "select",
];
const CONNECTION: &[&str] = &["ping", "echo", "quit", "hello", "auth", "select", "client", "reset"];
const TRANSACTION: &[&str] = &["multi", "exec", "discard", "watch", "unwatch"];
const DANGEROUS: &[&str] = &[
    "flushdb", "flushall", "keys", "config", "acl", "client", "info", "cluster",
];

/// Whether `spec` belongs to `category` (without the `@`).
pub fn in_category(spec: &Spec, category: &str) -> bool {
    let name = spec.name;
    let flag = |flag: &str| spec.flags.contains(&flag);
    match category {
        "all" => true,
        "read" => flag("readonly"),
        "write" => flag("write"),
        "fast" => flag("fast"),
        "slow" => !flag("fast"),
        "blocking" => flag("blocking"),
        "pubsub" => flag("pubsub"),
        "admin" => flag("admin") || name == "acl",
        "dangerous" => DANGEROUS.contains(&name),
        "connection" => CONNECTION.contains(&name),
        "transaction" => TRANSACTION.contains(&name),
        "keyspace" => KEYSPACE.contains(&name),
        "string" => STRING.contains(&name),
        "hash" => name.starts_with('h') && !matches!(name, "hello"),
        "list" => {
            matches!(
                name,
                "lpush" | "rpush" | "lpushx" | "rpushx" | "lpop" | "rpop" | "llen" | "lrange" | "lindex" | "lset"
            ) || matches!(
                name,
                "lrem"
                    | "ltrim"
                    | "linsert"
                    | "lpos"
                    | "lmove"
                    | "rpoplpush"
                    | "blpop"
                    | "brpop"
                    | "blmove"
                    | "brpoplpush"
            )
        }
        "set" => {
            name.starts_with('s')
                && !matches!(
                    name,
                    "set" | "setnx" | "setex" | "setrange" | "select" | "scan" | "subscribe" | "substr"
                )
        }
        "sortedset" => name.starts_with('z') || name.starts_with("bz"),
        "stream" => name.starts_with('x'),
        _ => false,
    }
}

/// Whether `rules` (applied in order to nothing allowed) allow `spec`.
pub fn command_allowed(rules: &[String], spec: &Spec) -> bool {
    rules.iter().fold(false, |allowed, rule| {
        let (grant, target) = match rule.split_at(1) {
            ("+", target) => (true, target),
            ("-", target) => (false, target),
            _ => return allowed,
        };
        let hits = match target.strip_prefix('@') {
            Some(category) => in_category(spec, category),
            None => target.split('|').next() == Some(spec.name),
        };
        if hits {
            grant
        } else {
            allowed
        }
    })
}

/// Whether `user` may run `spec` on `keys` (raw key arguments; `None`: the command
/// touches the whole database, which needs a pattern matching every key).
pub fn permitted(store: &AuthStore, user: &str, spec: &Spec, keys: Option<&[Bytes]>) -> bool {
    if perm::is_admin(store, user) {
        return true;
    }
    let Some(acl) = store
        .users
        .iter()
        .find(|known| known.name == user)
        .and_then(|known| known.redis_acl.as_ref())
        .filter(|acl| acl.configured && !acl.off)
    else {
        return false;
    };
    if !command_allowed(&acl.command_rules, spec) {
        return false;
    }
    match keys {
        Some(keys) => keys.iter().all(|key| {
            acl.key_patterns
                .iter()
                .any(|pattern| glob::matches(pattern.as_bytes(), key))
        }),
        None => acl.key_patterns.iter().any(|pattern| pattern == "*"),
    }
}

fn acl_error(rule: &str, why: &str) -> Reply {
    Reply::error(format!("ERR Error in ACL SETUSER modifier '{rule}': {why}"))
}

/// Applies ACL SETUSER's `rules` to `user`; a password rule becomes `hash` (hashed by
/// the caller beforehand, in rule order).
fn apply_rules(user: &mut AuthUser, rules: &[String], hashes: &mut std::vec::IntoIter<String>) -> Result<(), Reply> {
    let acl = user.redis_acl.get_or_insert_with(RedisAcl::default);
    acl.configured = true;
    for rule in rules {
        let lower = rule.to_ascii_lowercase();
        match lower.as_str() {
            "on" => acl.off = false,
            "off" => acl.off = true,
            "allkeys" => acl.key_patterns = vec!["*".into()],
            "resetkeys" => acl.key_patterns.clear(),
            "allcommands" => acl.command_rules = vec!["+@all".into()],
            "nocommands" => acl.command_rules = vec!["-@all".into()],
            "allchannels" | "resetchannels" => {}
            "resetpass" => {
                user.password_hash.clear();
            }
            "reset" => {
                *acl = RedisAcl {
                    configured: true,
                    off: true,
                    ..Default::default()
                };
                user.password_hash.clear();
            }
            "nopass" => {
                return Err(acl_error(
                    rule,
                    "nopass is not supported: users authenticate with a password",
                ))
            }
            _ if rule.starts_with('>') => {
                user.password_hash = hashes.next().unwrap_or_default();
                user.no_password = false;
            }
            _ if rule.starts_with('<') || rule.starts_with('#') || rule.starts_with('!') => {
                return Err(acl_error(rule, "only >password sets a password here"));
            }
            _ if rule.starts_with('~') && rule.len() > 1 => acl.key_patterns.push(rule[1..].to_string()),
            _ if rule.starts_with('&') => {}
            _ if rule.starts_with("%") => {
                return Err(acl_error(rule, "read/write key selectors (%R~, %W~) are not supported"));
            }
            _ if (rule.starts_with('+') || rule.starts_with('-')) && rule.len() > 1 => {
                let target = &lower[1..];
                let known = match target.strip_prefix('@') {
                    Some(category) => category == "all" || CATEGORIES.contains(&category),
                    None => COMMANDS.iter().any(|spec| Some(spec.name) == target.split('|').next()),
                };
                if !known {
                    return Err(acl_error(rule, "Unknown command or category name in ACL"));
                }
                acl.command_rules.push(lower.clone());
            }
            _ => return Err(acl_error(rule, "Syntax error")),
        }
    }
    Ok(())
}

fn described(user: &AuthUser) -> (bool, String, String) {
    let admin = user.roles.iter().any(|role| role == ROOT);
    let acl = user.redis_acl.clone().unwrap_or_default();
    let on = admin || (acl.configured && !acl.off);
    let commands = if admin {
        "+@all".to_string()
    } else if acl.command_rules.is_empty() {
        "-@all".to_string()
    } else {
        acl.command_rules.join(" ")
    };
    let keys = if admin {
        "~*".to_string()
    } else {
        acl.key_patterns
            .iter()
            .map(|pattern| format!("~{pattern}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    (on, commands, keys)
}

pub async fn run(context: &RedisContext, session: &mut Session, args: &[Bytes]) -> Outcome {
    let sub = upper(&args[1]);
    let auth = &context.auth;
    let store = auth
        .store()
        .await
        .map_err(|error| Reply::error(format!("ERR shoal: {error}")))?;
    let caller_is_admin = !store.enabled || session.user.as_deref().is_some_and(|user| perm::is_admin(&store, user));
    let admin_only = || -> Result<(), Reply> {
        if caller_is_admin {
            Ok(())
        } else {
            Err(Reply::error(format!(
                "NOPERM User {} has no permissions to run the 'acl|{}' command",
                session.user.as_deref().unwrap_or("default"),
                sub.to_ascii_lowercase()
            )))
        }
    };
    let text = |bytes: &Bytes| String::from_utf8_lossy(bytes).into_owned();
    match (sub.as_str(), args.len()) {
        ("WHOAMI", 2) => Ok(Reply::bulk(session.user.clone().unwrap_or_else(|| "default".into()))),
        ("CAT", 2) => Ok(Reply::Array(
            CATEGORIES.iter().map(|category| Reply::bulk(*category)).collect(),
        )),
        ("CAT", 3) => {
            let category = text(&args[2]).to_ascii_lowercase();
            if category != "all" && !CATEGORIES.contains(&category.as_str()) {
                return Err(Reply::error(format!("ERR Unknown category '{category}'")));
            }
            Ok(Reply::Array(
                COMMANDS
                    .iter()
                    .filter(|spec| in_category(spec, &category))
                    .map(|spec| Reply::bulk(spec.name))
                    .collect(),
            ))
        }
        ("USERS", 2) => {
            admin_only()?;
            Ok(Reply::Array(
                store.users.iter().map(|user| Reply::bulk(user.name.clone())).collect(),
            ))
        }
        ("LIST", 2) => {
            admin_only()?;
            Ok(Reply::Array(
                store
                    .users
                    .iter()
                    .map(|user| {
                        let (on, commands, keys) = described(user);
                        let mut line = format!("user {} {}", user.name, if on { "on" } else { "off" });
                        if !user.password_hash.is_empty() {
                            line.push_str(&format!(" #{}", user.password_hash));
                        }
                        if !keys.is_empty() {
                            line.push_str(&format!(" {keys}"));
                        }
                        line.push_str(&format!(" resetchannels {commands}"));
                        Reply::bulk(line)
                    })
                    .collect(),
            ))
        }
        ("GETUSER", 3) => {
            admin_only()?;
            let name = text(&args[2]);
            let Some(user) = store.users.iter().find(|user| user.name == name) else {
                return Ok(Reply::Null);
            };
            let (on, commands, keys) = described(user);
            let mut flags = vec![Reply::bulk(if on { "on" } else { "off" })];
            if user.password_hash.is_empty() {
                flags.push(Reply::bulk("nopass"));
            }
            let passwords = if user.password_hash.is_empty() {
                Vec::new()
            } else {
                vec![Reply::bulk(user.password_hash.clone())]
            };
            Ok(Reply::Map(vec![
                (Reply::bulk("flags"), Reply::Array(flags)),
                (Reply::bulk("passwords"), Reply::Array(passwords)),
                (Reply::bulk("commands"), Reply::bulk(commands)),
                (Reply::bulk("keys"), Reply::bulk(keys)),
                (Reply::bulk("channels"), Reply::bulk("")),
                (Reply::bulk("selectors"), Reply::Array(Vec::new())),
            ]))
        }
        ("SETUSER", count) if count >= 3 => {
            admin_only()?;
            let name = text(&args[2]);
            let rules: Vec<String> = args[3..].iter().map(text).collect();
            let mut hashes = Vec::new();
            for rule in &rules {
                if let Some(password) = rule.strip_prefix('>') {
                    hashes.push(
                        auth.hash_password(password)
                            .await
                            .map_err(|error| Reply::error(format!("ERR shoal: {error}")))?,
                    );
                }
            }
            // Checked once before the store is touched, so a bad rule changes nothing.
            apply_rules(&mut AuthUser::default(), &rules, &mut hashes.clone().into_iter())?;
            auth.update(|store| {
                let user = match store.users.iter().position(|user| user.name == name) {
                    Some(index) => &mut store.users[index],
                    None => {
                        crate::auth::add_user(
                            store,
                            AuthUser {
                                name: name.clone(),
                                ..Default::default()
                            },
                        )?;
                        store
                            .users
                            .iter_mut()
                            .find(|user| user.name == name)
                            .ok_or(AuthError::UserNotFound)?
                    }
                };
                apply_rules(user, &rules, &mut hashes.clone().into_iter()).map_err(|_| AuthError::InvalidAuthMgmt)
            })
            .await
            .map_err(|error| Reply::error(format!("ERR shoal: {error}")))?;
            Ok(Reply::ok())
        }
        ("DELUSER", count) if count >= 3 => {
            admin_only()?;
            let names: Vec<String> = args[2..].iter().map(text).collect();
            if store.enabled && names.iter().any(|name| name == ROOT) {
                return Err(Reply::error("ERR The 'root' user cannot be removed while auth is on"));
            }
            let present = names
                .iter()
                .filter(|name| store.users.iter().any(|user| &user.name == *name))
                .count();
            auth.update(|store| {
                store.users.retain(|user| !names.contains(&user.name));
                Ok(())
            })
            .await
            .map_err(|error| Reply::error(format!("ERR shoal: {error}")))?;
            Ok(Reply::Integer(present as i64))
        }
        _ => Err(syntax_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> &'static Spec {
        COMMANDS.iter().find(|spec| spec.name == name).unwrap()
    }

    #[test]
    fn rules_apply_in_order_to_categories_and_commands() {
        let rules: Vec<String> = ["+@read", "+set", "-mget"]
            .iter()
            .map(|rule| rule.to_string())
            .collect();
        assert!(command_allowed(&rules, spec("get")));
        assert!(command_allowed(&rules, spec("hgetall")));
        assert!(command_allowed(&rules, spec("set")));
        assert!(!command_allowed(&rules, spec("mget")));
        assert!(!command_allowed(&rules, spec("del")));
        let all_but: Vec<String> = ["+@all", "-@dangerous"].iter().map(|rule| rule.to_string()).collect();
        assert!(command_allowed(&all_but, spec("del")));
        assert!(!command_allowed(&all_but, spec("flushall")));
        assert!(in_category(spec("zadd"), "sortedset") && in_category(spec("sadd"), "set"));
        assert!(!in_category(spec("set"), "set") && in_category(spec("set"), "string"));
    }

    #[test]
    fn setuser_rules_build_the_acl_and_refuse_what_is_unknown() {
        let mut user = AuthUser::default();
        let rules: Vec<String> = ["on", ">secret", "~app:*", "+@read", "-keys"]
            .iter()
            .map(|rule| rule.to_string())
            .collect();
        apply_rules(&mut user, &rules, &mut vec!["hash".to_string()].into_iter()).unwrap();
        let acl = user.redis_acl.clone().unwrap();
        assert!(acl.configured && !acl.off);
        assert_eq!(acl.key_patterns, vec!["app:*".to_string()]);
        assert_eq!(user.password_hash, "hash");
        let store = AuthStore {
            users: vec![AuthUser {
                name: "u".into(),
                ..user
            }],
            ..Default::default()
        };
        let key = |text: &str| vec![Bytes::copy_from_slice(text.as_bytes())];
        assert!(permitted(&store, "u", spec("get"), Some(&key("app:1"))));
        assert!(!permitted(&store, "u", spec("get"), Some(&key("other"))));
        assert!(!permitted(&store, "u", spec("set"), Some(&key("app:1"))));
        assert!(!permitted(&store, "u", spec("keys"), None));
        for bad in ["+nosuchcommand", "+@nosuchcategory", "nopass", "bogus"] {
            assert!(apply_rules(
                &mut AuthUser::default(),
                &[bad.to_string()],
                &mut Vec::new().into_iter()
            )
            .is_err());
        }
    }
}
