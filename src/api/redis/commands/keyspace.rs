//! Commands on keys of any type: deletion, existence, expiry, renaming, iteration.

use super::{integer, syntax_error, upper, Env, Outcome};
use crate::api::redis::keys::{self, DATABASES, SLOTS};
use crate::api::redis::resp::Reply;
use crate::api::redis::snapshot::Snapshot;
use crate::api::redis::{glob, RedisContext, Session};
use bytes::Bytes;

/// Whether `name` is a key command run on a snapshot of its keys.
pub fn handles(name: &str) -> bool {
    matches!(
        name,
        "del"
            | "unlink"
            | "exists"
            | "type"
            | "rename"
            | "renamenx"
            | "copy"
            | "expire"
            | "pexpire"
            | "expireat"
            | "pexpireat"
            | "ttl"
            | "pttl"
            | "expiretime"
            | "pexpiretime"
            | "persist"
            | "object"
    )
}

/// COPY's keys: the source, and the target in the database its DB option names.
pub fn copy_keys(env: &Env, args: &[Bytes]) -> Vec<Bytes> {
    let db = copy_options(env, args).map_or(env.db, |(db, _)| db);
    vec![env.key(&args[1]), keys::internal_key(db, &args[2])]
}

fn copy_options(env: &Env, args: &[Bytes]) -> Result<(u8, bool), Reply> {
    let mut db = env.db;
    let mut replace = false;
    let mut at = 3;
    while at < args.len() {
        match upper(&args[at]).as_str() {
            "REPLACE" => replace = true,
            "DB" if at + 1 < args.len() => {
                let index = integer(&args[at + 1])?;
                if !(0..DATABASES as i64).contains(&index) {
                    return Err(Reply::error("ERR DB index is out of range"));
                }
                db = index as u8;
                at += 1;
            }
            _ => return Err(syntax_error()),
        }
        at += 1;
    }
    Ok((db, replace))
}

pub fn run(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Reply {
    outcome(snapshot, env, name, args).unwrap_or_else(|error| error)
}

fn outcome(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Result<Reply, Reply> {
    match name {
        "del" | "unlink" => {
            let mut keys: Vec<Bytes> = args[1..].iter().map(|key| env.key(key)).collect();
            keys.sort();
            keys.dedup();
            let mut live = 0;
            for key in keys {
                live += i64::from(snapshot.get(&key).is_some());
                // An expired key still stored goes too, but does not count.
                snapshot.set(&key, None);
            }
            Ok(Reply::Integer(live))
        }
        "exists" => Ok(Reply::Integer(
            args[1..]
                .iter()
                .filter(|key| snapshot.get(&env.key(key)).is_some())
                .count() as i64,
        )),
        "type" => Ok(Reply::Simple(
            snapshot
                .get(&env.key(&args[1]))
                .map_or("none", |record| record.kind.name())
                .into(),
        )),
        "rename" | "renamenx" => {
            let only_new = name == "renamenx";
            let (source, target) = (env.key(&args[1]), env.key(&args[2]));
            if snapshot.get(&source).is_none() {
                return Err(Reply::error("ERR no such key"));
            }
            if only_new && snapshot.get(&target).is_some() {
                return Ok(Reply::Integer(0));
            }
            if source == target {
                return Ok(if only_new { Reply::Integer(0) } else { Reply::ok() });
            }
            // The expiry (and a collection's elements) move with the value, as in Redis.
            snapshot.copy_key(&source, &target);
            snapshot.set(&source, None);
            Ok(if only_new { Reply::Integer(1) } else { Reply::ok() })
        }
        "copy" => {
            let (_, replace) = copy_options(env, args)?;
            let keys = copy_keys(env, args);
            let (source, target) = (&keys[0], &keys[1]);
            if source == target {
                return Err(Reply::error("ERR source and destination objects are the same"));
            }
            if snapshot.get(source).is_none() || (snapshot.get(target).is_some() && !replace) {
                return Ok(Reply::Integer(0));
            }
            snapshot.copy_key(source, target);
            Ok(Reply::Integer(1))
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => expire(snapshot, env, name, args),
        "ttl" | "pttl" | "expiretime" | "pexpiretime" => {
            let Some(record) = snapshot.get(&env.key(&args[1])) else {
                return Ok(Reply::Integer(-2));
            };
            if record.expires_at == 0 {
                return Ok(Reply::Integer(-1));
            }
            let remaining = (record.expires_at - snapshot.now()).max(0);
            Ok(Reply::Integer(match name {
                "ttl" => (remaining + 500) / 1000,
                "pttl" => remaining,
                "expiretime" => record.expires_at / 1000,
                _ => record.expires_at,
            }))
        }
        "persist" => {
            let key = env.key(&args[1]);
            match snapshot.get(&key).cloned() {
                Some(mut record) if record.expires_at != 0 => {
                    record.expires_at = 0;
                    snapshot.set(&key, Some(record));
                    Ok(Reply::Integer(1))
                }
                _ => Ok(Reply::Integer(0)),
            }
        }
        "object" => object(snapshot, env, args),
        _ => unreachable!("{name} is not a keyspace command"),
    }
}

/// Commands over a whole database: not run on a snapshot.
pub async fn run_wide(context: &RedisContext, session: &Session, name: &str, args: &[Bytes]) -> Outcome {
    match name {
        "keys" => {
            let (start, end) = keys::database_span(session.db);
            let found = context.data.scan(start, end).await?;
            let pattern = &args[1];
            Ok(Reply::Array(
                found
                    .into_iter()
                    .filter(|(key, _)| glob::matches(pattern, key))
                    .map(|(key, _)| Reply::bulk(key))
                    .collect(),
            ))
        }
        "scan" => scan(context, session, args).await,
        "randomkey" => {
            let (start, end) = keys::database_span(session.db);
            let found = context.data.scan(start, end).await?;
            if found.is_empty() {
                return Ok(Reply::Null);
            }
            let pick = rand::random::<usize>() % found.len();
            Ok(Reply::bulk(found[pick].0.clone()))
        }
        _ => unreachable!("{name} is not a database-wide command"),
    }
}

fn expire(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Result<Reply, Reply> {
    let amount = integer(&args[2])?;
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for option in &args[3..] {
        match upper(option).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            other => return Err(Reply::error(format!("ERR Unsupported option {other}"))),
        }
    }
    if nx && (xx || gt || lt) {
        return Err(Reply::error(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(Reply::error(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    let now = snapshot.now();
    let expires_at = match name {
        "expire" => amount.checked_mul(1000).and_then(|ms| ms.checked_add(now)),
        "pexpire" => amount.checked_add(now),
        "expireat" => amount.checked_mul(1000),
        _ => Some(amount),
    }
    .ok_or_else(|| Reply::error(format!("ERR invalid expire time in '{name}' command")))?;
    let key = env.key(&args[1]);
    let Some(mut record) = snapshot.get(&key).cloned() else {
        return Ok(Reply::Integer(0));
    };
    // No expiry counts as an infinite one for GT and LT.
    let current = if record.expires_at == 0 {
        i64::MAX
    } else {
        record.expires_at
    };
    let refused = (nx && record.expires_at != 0)
        || (xx && record.expires_at == 0)
        || (gt && expires_at <= current)
        || (lt && expires_at >= current);
    if refused {
        return Ok(Reply::Integer(0));
    }
    if expires_at <= now {
        // A time in the past deletes the key, as in Redis.
        snapshot.set(&key, None);
        return Ok(Reply::Integer(1));
    }
    record.expires_at = expires_at;
    snapshot.set(&key, Some(record));
    Ok(Reply::Integer(1))
}

/// SCAN's cursor is the hash slot to go on from: every call returns whole slots, so a
/// key present from the first call to the last is returned at least once, as Redis
/// promises, whatever is written meanwhile.
async fn scan(context: &RedisContext, session: &Session, args: &[Bytes]) -> Outcome {
    let cursor = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or_else(|| Reply::error("ERR invalid cursor"))?;
    let mut pattern: Option<Bytes> = None;
    let mut count: usize = 10;
    let mut kind: Option<String> = None;
    let mut at = 2;
    while at < args.len() {
        let option = upper(&args[at]);
        if at + 1 >= args.len() {
            return Err(syntax_error());
        }
        match option.as_str() {
            "MATCH" => pattern = Some(args[at + 1].clone()),
            "COUNT" => {
                let value = integer(&args[at + 1])?;
                if value < 1 {
                    return Err(syntax_error());
                }
                count = value as usize;
            }
            "TYPE" => kind = Some(String::from_utf8_lossy(&args[at + 1]).to_lowercase()),
            _ => return Err(syntax_error()),
        }
        at += 2;
    }
    let mut slot = cursor.min(SLOTS as u64) as u16;
    let mut found = Vec::new();
    // Whole slots, a batch at a time, until COUNT keys are seen or the slots run out.
    const SLOTS_PER_READ: u16 = 256;
    while slot < SLOTS && found.len() < count {
        let last = (slot + SLOTS_PER_READ - 1).min(SLOTS - 1);
        let (start, end) = keys::slots_span(session.db, slot, last);
        let batch = context.data.scan(start, end).await?;
        let room = count - found.len();
        if batch.len() > room {
            // More than COUNT: keep whole slots, stopping after the slot COUNT falls in.
            let mut next = slot;
            for (taken, (key, record)) in batch.into_iter().enumerate() {
                let key_slot = keys::slot(&key);
                if taken >= room && key_slot != next {
                    break;
                }
                next = key_slot;
                found.push((key, record.kind));
            }
            slot = next + 1;
            break;
        }
        found.extend(batch.into_iter().map(|(key, record)| (key, record.kind)));
        slot = last + 1;
    }
    let next_cursor = if slot >= SLOTS { 0 } else { slot as u64 };
    let keys: Vec<Reply> = found
        .into_iter()
        .filter(|(key, record_kind)| {
            pattern.as_ref().is_none_or(|pattern| glob::matches(pattern, key))
                && kind.as_ref().is_none_or(|kind| record_kind.name() == kind)
        })
        .map(|(key, _)| Reply::bulk(key))
        .collect();
    Ok(Reply::Array(vec![
        Reply::bulk(next_cursor.to_string()),
        Reply::Array(keys),
    ]))
}

fn object(snapshot: &Snapshot, env: &Env, args: &[Bytes]) -> Result<Reply, Reply> {
    let sub = upper(&args[1]);
    match sub.as_str() {
        "ENCODING" | "REFCOUNT" | "IDLETIME" | "FREQ" if args.len() == 3 => {
            let Some(record) = snapshot.get(&env.key(&args[2])) else {
                return Ok(Reply::Null);
            };
            Ok(match sub.as_str() {
                "ENCODING" if record.kind == keys::Kind::Stream => Reply::bulk("stream"),
                "ENCODING" if record.kind.is_collection() => {
                    Reply::bulk(if record.count() <= 128 { "listpack" } else { "hashtable" })
                }
                "ENCODING" => {
                    let payload = &record.payload;
                    let is_int = payload.len() <= 20
                        && std::str::from_utf8(payload).ok().and_then(|text| text.parse::<i64>().ok()).is_some();
                    Reply::bulk(if is_int {
                        "int"
                    } else if payload.len() <= 44 {
                        "embstr"
                    } else {
                        "raw"
                    })
                }
                "REFCOUNT" => Reply::Integer(1),
                "IDLETIME" => Reply::Integer(0),
                _ => Reply::error(
                    "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust.",
                ),
            })
        }
        "HELP" => Ok(Reply::Array(
            [
                "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "ENCODING <key>",
                "FREQ <key>",
                "IDLETIME <key>",
                "REFCOUNT <key>",
            ]
            .into_iter()
            .map(|line| Reply::Simple(line.into()))
            .collect(),
        )),
        _ => Err(Reply::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try OBJECT HELP.",
            String::from_utf8_lossy(&args[1])
        ))),
    }
}
