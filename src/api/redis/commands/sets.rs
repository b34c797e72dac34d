//! Set commands: each member is an element stored beside the set's record.

use super::hashes::{random_members, scan_reply};
use super::{integer, syntax_error, upper, wrong_type, Env};
use crate::api::redis::keys::Kind;
use crate::api::redis::resp::Reply;
use crate::api::redis::snapshot::{Need, Snapshot};
use bytes::Bytes;
use std::collections::BTreeSet;

pub fn handles(name: &str) -> bool {
    matches!(
        name,
        "sadd"
            | "srem"
            | "smembers"
            | "sismember"
            | "smismember"
            | "scard"
            | "spop"
            | "srandmember"
            | "smove"
            | "sinter"
            | "sunion"
            | "sdiff"
            | "sinterstore"
            | "sunionstore"
            | "sdiffstore"
            | "sintercard"
            | "sscan"
    )
}

/// The source keys of SINTERCARD (`numkeys key...`), if `numkeys` is valid.
fn intercard_keys(args: &[Bytes]) -> Option<&[Bytes]> {
    let count = integer(&args[1]).ok().filter(|count| *count > 0)? as usize;
    args.get(2..2 + count)
}

pub fn needs(name: &str, env: &Env, args: &[Bytes]) -> Vec<Need> {
    let key = env.key(&args[1]);
    match name {
        "sadd" | "srem" | "smismember" => vec![Need::Fields(key, args[2..].to_vec())],
        "sismember" => vec![Need::Fields(key, vec![args[2].clone()])],
        "scard" => vec![Need::Record(key)],
        "smove" => vec![
            Need::Fields(key, vec![args[3].clone()]),
            Need::Fields(env.key(&args[2]), vec![args[3].clone()]),
        ],
        "sinter" | "sunion" | "sdiff" => args[1..].iter().map(|key| Need::All(env.key(key))).collect(),
        "sinterstore" | "sunionstore" | "sdiffstore" => std::iter::once(Need::Record(key))
            .chain(args[2..].iter().map(|key| Need::All(env.key(key))))
            .collect(),
        "sintercard" => intercard_keys(args)
            .unwrap_or_default()
            .iter()
            .map(|key| Need::All(env.key(key)))
            .collect(),
        _ => vec![Need::All(key)],
    }
}

pub fn run(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Reply {
    outcome(snapshot, env, name, args).unwrap_or_else(|error| error)
}

/// Refuses a key holding another type than a set.
fn check(snapshot: &Snapshot, key: &Bytes) -> Result<(), Reply> {
    match snapshot.get(key) {
        Some(record) if record.kind != Kind::Set => Err(wrong_type()),
        _ => Ok(()),
    }
}

fn members(snapshot: &Snapshot, key: &Bytes) -> Result<BTreeSet<Bytes>, Reply> {
    check(snapshot, key)?;
    Ok(snapshot.fields(key).into_keys().collect())
}

/// SINTER, SUNION and SDIFF over the sets at `keys`.
fn combine(snapshot: &Snapshot, name: &str, keys: &[Bytes]) -> Result<BTreeSet<Bytes>, Reply> {
    let mut sets = Vec::with_capacity(keys.len());
    for key in keys {
        sets.push(members(snapshot, key)?);
    }
    let mut sets = sets.into_iter();
    let first = sets.next().unwrap_or_default();
    Ok(match name.trim_end_matches("store") {
        "sinter" | "sintercard" => sets.fold(first, |acc, set| acc.intersection(&set).cloned().collect()),
        "sunion" => sets.fold(first, |mut acc, set| {
            acc.extend(set);
            acc
        }),
        _ => sets.fold(first, |acc, set| acc.difference(&set).cloned().collect()),
    })
}

fn set_reply(members: impl IntoIterator<Item = Bytes>) -> Reply {
    Reply::Set(members.into_iter().map(Reply::Bulk).collect())
}

fn outcome(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Result<Reply, Reply> {
    let key = env.key(&args[1]);
    match name {
        "sadd" => {
            check(snapshot, &key)?;
            let mut added = 0;
            for member in &args[2..] {
                added += i64::from(snapshot.put_field(&key, Kind::Set, member.clone(), Bytes::new()));
            }
            Ok(Reply::Integer(added))
        }
        "srem" => {
            check(snapshot, &key)?;
            let mut removed = 0;
            for member in &args[2..] {
                removed += i64::from(snapshot.remove_field(&key, member));
            }
            Ok(Reply::Integer(removed))
        }
        "smembers" => Ok(set_reply(members(snapshot, &key)?)),
        "sismember" => {
            check(snapshot, &key)?;
            Ok(Reply::Integer(i64::from(snapshot.field(&key, &args[2]).is_some())))
        }
        "smismember" => {
            check(snapshot, &key)?;
            Ok(Reply::Array(
                args[2..]
                    .iter()
                    .map(|member| Reply::Integer(i64::from(snapshot.field(&key, member).is_some())))
                    .collect(),
            ))
        }
        "scard" => {
            check(snapshot, &key)?;
            Ok(Reply::Integer(
                snapshot.get(&key).map_or(0, |record| record.count() as i64),
            ))
        }
        "spop" => {
            let all: Vec<(Bytes, Bytes)> = members(snapshot, &key)?
                .into_iter()
                .map(|m| (m, Bytes::new()))
                .collect();
            let reply = match args.get(2) {
                None => random_members(&all, &[], "srandmember")?,
                Some(count) => {
                    let count = integer(count)?;
                    if count < 0 {
                        return Err(Reply::error("ERR value is out of range, must be positive"));
                    }
                    random_members(&all, &[Bytes::from(count.to_string())], "srandmember")?
                }
            };
            let popped: Vec<Bytes> = match &reply {
                Reply::Bulk(member) => vec![member.clone()],
                Reply::Array(items) => items
                    .iter()
                    .filter_map(|item| match item {
                        Reply::Bulk(member) => Some(member.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            for member in &popped {
                snapshot.remove_field(&key, member);
            }
            Ok(match reply {
                Reply::Array(items) => Reply::Set(items),
                other => other,
            })
        }
        "srandmember" => {
            let all: Vec<(Bytes, Bytes)> = members(snapshot, &key)?
                .into_iter()
                .map(|m| (m, Bytes::new()))
                .collect();
            random_members(&all, &args[2..], "srandmember")
        }
        "smove" => {
            let target = env.key(&args[2]);
            check(snapshot, &key)?;
            check(snapshot, &target)?;
            let member = &args[3];
            if !snapshot.remove_field(&key, member) {
                return Ok(Reply::Integer(0));
            }
            snapshot.put_field(&target, Kind::Set, member.clone(), Bytes::new());
            Ok(Reply::Integer(1))
        }
        "sinter" | "sunion" | "sdiff" => {
            let keys: Vec<Bytes> = args[1..].iter().map(|key| env.key(key)).collect();
            Ok(set_reply(combine(snapshot, name, &keys)?))
        }
        "sinterstore" | "sunionstore" | "sdiffstore" => {
            let keys: Vec<Bytes> = args[2..].iter().map(|key| env.key(key)).collect();
            let result = combine(snapshot, name, &keys)?;
            let count = result.len() as i64;
            // The destination is replaced whatever it held.
            snapshot.set(&key, None);
            for member in result {
                snapshot.put_field(&key, Kind::Set, member, Bytes::new());
            }
            Ok(Reply::Integer(count))
        }
        "sintercard" => {
            let Some(sources) = intercard_keys(args) else {
                return Err(Reply::error("ERR numkeys should be greater than 0"));
            };
            let rest = &args[2 + sources.len()..];
            let limit = match rest {
                [] => 0,
                [option, limit] if upper(option) == "LIMIT" => {
                    let limit = integer(limit)?;
                    if limit < 0 {
                        return Err(Reply::error("ERR LIMIT can't be negative"));
                    }
                    limit
                }
                _ => return Err(syntax_error()),
            };
            let keys: Vec<Bytes> = sources.iter().map(|key| env.key(key)).collect();
            let count = combine(snapshot, name, &keys)?.len() as i64;
            Ok(Reply::Integer(if limit > 0 { count.min(limit) } else { count }))
        }
        "sscan" => {
            let all = members(snapshot, &key)?
                .into_iter()
                .map(|m| (m, Bytes::new()))
                .collect();
            scan_reply(all, &args[2..], false)
        }
        _ => unreachable!("{name} is not a set command"),
    }
}
