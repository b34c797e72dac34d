//! Hash commands: each field is an element stored beside the hash's record.

use super::{float, integer, not_integer, syntax_error, upper, wrong_type, Env};
use crate::api::redis::glob;
use crate::api::redis::keys::Kind;
use crate::api::redis::resp::{format_double, Reply};
use crate::api::redis::snapshot::{Need, Snapshot};
use bytes::Bytes;

pub fn handles(name: &str) -> bool {
    matches!(
        name,
        "hset"
            | "hmset"
            | "hsetnx"
            | "hget"
            | "hmget"
            | "hgetall"
            | "hdel"
            | "hlen"
            | "hexists"
            | "hkeys"
            | "hvals"
            | "hincrby"
            | "hincrbyfloat"
            | "hstrlen"
            | "hscan"
            | "hrandfield"
    )
}

pub fn needs(name: &str, env: &Env, args: &[Bytes]) -> Vec<Need> {
    let key = env.key(&args[1]);
    vec![match name {
        "hset" | "hmset" => Need::Fields(key, args[2..].iter().step_by(2).cloned().collect()),
        "hsetnx" | "hget" | "hexists" | "hincrby" | "hincrbyfloat" | "hstrlen" => {
            Need::Fields(key, args.get(2).cloned().into_iter().collect())
        }
        "hmget" | "hdel" => Need::Fields(key, args[2..].to_vec()),
        "hlen" => Need::Record(key),
        _ => Need::All(key),
    }]
}

pub fn run(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Reply {
    outcome(snapshot, env, name, args).unwrap_or_else(|error| error)
}

/// Refuses a key holding another type than a hash.
fn check(snapshot: &Snapshot, key: &Bytes) -> Result<bool, Reply> {
    match snapshot.get(key) {
        None => Ok(false),
        Some(record) if record.kind == Kind::Hash => Ok(true),
        Some(_) => Err(wrong_type()),
    }
}

fn outcome(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Result<Reply, Reply> {
    let key = env.key(&args[1]);
    check(snapshot, &key)?;
    match name {
        "hset" | "hmset" => {
            if args.len() < 4 || !(args.len() - 2).is_multiple_of(2) {
                return Err(super::wrong_arity(name));
            }
            let mut added = 0;
            for pair in args[2..].chunks(2) {
                added += i64::from(snapshot.put_field(&key, Kind::Hash, pair[0].clone(), pair[1].clone()));
            }
            Ok(if name == "hset" {
                Reply::Integer(added)
            } else {
                Reply::ok()
            })
        }
        "hsetnx" => {
            if snapshot.field(&key, &args[2]).is_some() {
                return Ok(Reply::Integer(0));
            }
            snapshot.put_field(&key, Kind::Hash, args[2].clone(), args[3].clone());
            Ok(Reply::Integer(1))
        }
        "hget" => Ok(snapshot.field(&key, &args[2]).map_or(Reply::Null, Reply::Bulk)),
        "hmget" => Ok(Reply::Array(
            args[2..]
                .iter()
                .map(|field| snapshot.field(&key, field).map_or(Reply::Null, Reply::Bulk))
                .collect(),
        )),
        "hgetall" => Ok(Reply::Map(
            snapshot
                .fields(&key)
                .into_iter()
                .map(|(field, value)| (Reply::Bulk(field), Reply::Bulk(value)))
                .collect(),
        )),
        "hkeys" => Ok(Reply::Array(
            snapshot.fields(&key).into_keys().map(Reply::Bulk).collect(),
        )),
        "hvals" => Ok(Reply::Array(
            snapshot.fields(&key).into_values().map(Reply::Bulk).collect(),
        )),
        "hdel" => {
            let mut removed = 0;
            for field in &args[2..] {
                removed += i64::from(snapshot.remove_field(&key, field));
            }
            Ok(Reply::Integer(removed))
        }
        "hlen" => Ok(Reply::Integer(
            snapshot.get(&key).map_or(0, |record| record.count() as i64),
        )),
        "hexists" => Ok(Reply::Integer(i64::from(snapshot.field(&key, &args[2]).is_some()))),
        "hstrlen" => Ok(Reply::Integer(
            snapshot.field(&key, &args[2]).map_or(0, |value| value.len() as i64),
        )),
        "hincrby" => {
            let by = integer(&args[3])?;
            let current = match snapshot.field(&key, &args[2]) {
                None => 0,
                Some(value) => std::str::from_utf8(&value)
                    .ok()
                    .filter(|text| !text.starts_with('+') && !text.is_empty())
                    .and_then(|text| text.parse::<i64>().ok())
                    .ok_or_else(|| Reply::error("ERR hash value is not an integer"))?,
            };
            let next = current
                .checked_add(by)
                .ok_or_else(|| Reply::error("ERR increment or decrement would overflow"))?;
            snapshot.put_field(&key, Kind::Hash, args[2].clone(), next.to_string().into());
            Ok(Reply::Integer(next))
        }
        "hincrbyfloat" => {
            let by = float(&args[3]).ok_or_else(|| Reply::error("ERR value is not a valid float"))?;
            let current = match snapshot.field(&key, &args[2]) {
                None => 0.0,
                Some(value) => float(&value).ok_or_else(|| Reply::error("ERR hash value is not a float"))?,
            };
            let next = current + by;
            if !next.is_finite() {
                return Err(Reply::error("ERR increment would produce NaN or Infinity"));
            }
            let text = format_double(next);
            snapshot.put_field(&key, Kind::Hash, args[2].clone(), text.clone().into());
            Ok(Reply::bulk(text))
        }
        "hscan" => scan_reply(snapshot.fields(&key), &args[2..], true),
        "hrandfield" => {
            let fields: Vec<(Bytes, Bytes)> = snapshot.fields(&key).into_iter().collect();
            random_members(&fields, &args[2..], "hrandfield")
        }
        _ => unreachable!("{name} is not a hash command"),
    }
}

/// HSCAN and SSCAN: every element in one step (cursor 0), filtered by MATCH. Redis may
/// return a small collection whole too; COUNT is a hint.
pub fn scan_reply(
    elements: std::collections::BTreeMap<Bytes, Bytes>,
    args: &[Bytes],
    with_values: bool,
) -> Result<Reply, Reply> {
    if std::str::from_utf8(&args[0])
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .is_none()
    {
        return Err(Reply::error("ERR invalid cursor"));
    }
    let mut pattern: Option<&Bytes> = None;
    let mut at = 1;
    while at < args.len() {
        if at + 1 >= args.len() {
            return Err(syntax_error());
        }
        match upper(&args[at]).as_str() {
            "MATCH" => pattern = Some(&args[at + 1]),
            "COUNT" => {
                if integer(&args[at + 1]).map_err(|_| not_integer())? < 1 {
                    return Err(syntax_error());
                }
            }
            _ => return Err(syntax_error()),
        }
        at += 2;
    }
    let mut items = Vec::new();
    for (field, value) in elements {
        if pattern.is_some_and(|pattern| !glob::matches(pattern, &field)) {
            continue;
        }
        items.push(Reply::Bulk(field));
        if with_values {
            items.push(Reply::Bulk(value));
        }
    }
    Ok(Reply::Array(vec![Reply::bulk("0"), Reply::Array(items)]))
}

/// HRANDFIELD and SRANDMEMBER: one random element, or COUNT of them (distinct when
/// positive, possibly repeated when negative), with values if asked.
pub fn random_members(elements: &[(Bytes, Bytes)], args: &[Bytes], name: &str) -> Result<Reply, Reply> {
    let with_values = match args.get(1) {
        Some(option) if name == "hrandfield" && upper(option) == "WITHVALUES" => true,
        Some(_) => return Err(syntax_error()),
        None => false,
    };
    if args.len() > 2 {
        return Err(syntax_error());
    }
    let Some(count) = args.first() else {
        if elements.is_empty() {
            return Ok(Reply::Null);
        }
        let pick = rand::random::<usize>() % elements.len();
        return Ok(Reply::Bulk(elements[pick].0.clone()));
    };
    let count = integer(count)?;
    let picks: Vec<usize> = if elements.is_empty() {
        Vec::new()
    } else if count >= 0 {
        let mut indexes: Vec<usize> = (0..elements.len()).collect();
        for index in 0..indexes.len() {
            let other = index + rand::random::<usize>() % (indexes.len() - index);
            indexes.swap(index, other);
        }
        indexes.truncate(count as usize);
        indexes
    } else {
        (0..count.unsigned_abs().min(1 << 20))
            .map(|_| rand::random::<usize>() % elements.len())
            .collect()
    };
    let mut out = Vec::new();
    for pick in picks {
        out.push(Reply::Bulk(elements[pick].0.clone()));
        if with_values {
            out.push(Reply::Bulk(elements[pick].1.clone()));
        }
    }
    Ok(Reply::Array(out))
}
