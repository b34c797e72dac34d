//! String commands.

use super::{float, integer, internal_keys, not_integer, syntax_error, upper, wrong_type, Outcome};
use crate::api::redis::data::{now_ms, Stored, Write};
use crate::api::redis::keys::{Kind, Record};
use crate::api::redis::resp::{format_double, Reply};
use crate::api::redis::{RedisContext, Session};
use bytes::Bytes;

pub async fn run(context: &RedisContext, session: &mut Session, name: &str, args: &[Bytes]) -> Outcome {
    match name {
        "get" => get(context, session, &args[1]).await,
        "set" => set(context, session, args).await,
        "setnx" => {
            let reply = set_with(
                context,
                session,
                &args[1],
                &args[2],
                SetOptions {
                    nx: true,
                    ..SetOptions::default()
                },
            )
            .await?;
            Ok(Reply::Integer(i64::from(reply != Reply::Null)))
        }
        "setex" | "psetex" => {
            let amount = integer(&args[2])?;
            let unit = if name == "setex" { 1000 } else { 1 };
            let expires_at = amount.checked_mul(unit).and_then(|ms| ms.checked_add(now_ms()));
            match expires_at {
                Some(at) if amount > 0 => {
                    set_with(
                        context,
                        session,
                        &args[1],
                        &args[3],
                        SetOptions {
                            expires_at: Some(at),
                            ..SetOptions::default()
                        },
                    )
                    .await
                }
                _ => Err(Reply::error(format!("ERR invalid expire time in '{name}' command"))),
            }
        }
        "getset" => {
            set_with(
                context,
                session,
                &args[1],
                &args[2],
                SetOptions {
                    get: true,
                    ..SetOptions::default()
                },
            )
            .await
        }
        "getdel" => getdel(context, session, &args[1]).await,
        "getex" => getex(context, session, args).await,
        "mget" => mget(context, session, &args[1..]).await,
        "mset" | "msetnx" => mset(context, session, name == "msetnx", &args[1..]).await,
        "incr" => incr_by(context, session, &args[1], 1).await,
        "decr" => incr_by(context, session, &args[1], -1).await,
        "incrby" => incr_by(context, session, &args[1], integer(&args[2])?).await,
        "decrby" => {
            let by = integer(&args[2])?;
            incr_by(context, session, &args[1], by.checked_neg().ok_or_else(overflow)?).await
        }
        "incrbyfloat" => incr_by_float(context, session, &args[1], &args[2]).await,
        "append" => append(context, session, &args[1], &args[2]).await,
        "strlen" => {
            let value = string_of(&read(context, session, &args[1]).await?)?;
            Ok(Reply::Integer(value.map_or(0, |value| value.len() as i64)))
        }
        "getrange" | "substr" => {
            let (start, end) = (integer(&args[2])?, integer(&args[3])?);
            let value = string_of(&read(context, session, &args[1]).await?)?.unwrap_or_default();
            Ok(Reply::bulk(substring(&value, start, end)))
        }
        "setrange" => setrange(context, session, args).await,
        _ => unreachable!("{name} is not a string command"),
    }
}

fn overflow() -> Reply {
    Reply::error("ERR increment or decrement would overflow")
}

async fn read(context: &RedisContext, session: &Session, key: &Bytes) -> Result<Stored, Reply> {
    let internal = internal_keys(session, std::slice::from_ref(key)).remove(0);
    Ok(context.data.get(&internal).await?)
}

/// The string a key holds: `None` when it does not exist, WRONGTYPE when it is no string.
fn string_of(stored: &Stored) -> Result<Option<Bytes>, Reply> {
    match &stored.record {
        None => Ok(None),
        Some(record) if record.kind == Kind::String => Ok(Some(record.payload.clone())),
        Some(_) => Err(wrong_type()),
    }
}

async fn get(context: &RedisContext, session: &Session, key: &Bytes) -> Outcome {
    Ok(string_of(&read(context, session, key).await?)?.map_or(Reply::Null, Reply::Bulk))
}

async fn mget(context: &RedisContext, session: &Session, keys: &[Bytes]) -> Outcome {
    let found = context.data.get_many(&internal_keys(session, keys)).await?;
    Ok(Reply::Array(
        found
            .iter()
            .map(|stored| match &stored.record {
                Some(record) if record.kind == Kind::String => Reply::Bulk(record.payload.clone()),
                _ => Reply::Null,
            })
            .collect(),
    ))
}

#[derive(Default)]
struct SetOptions {
    nx: bool,
    xx: bool,
    get: bool,
    keep_ttl: bool,
    /// Unix milliseconds.
    expires_at: Option<i64>,
}

async fn set(context: &RedisContext, session: &Session, args: &[Bytes]) -> Outcome {
    let mut options = SetOptions::default();
    let mut at = 3;
    let mut expiry_given = false;
    while at < args.len() {
        let option = upper(&args[at]);
        match option.as_str() {
            "NX" if !options.xx => options.nx = true,
            "XX" if !options.nx => options.xx = true,
            "GET" => options.get = true,
            "KEEPTTL" if !expiry_given => options.keep_ttl = true,
            "EX" | "PX" | "EXAT" | "PXAT" if !expiry_given && !options.keep_ttl && at + 1 < args.len() => {
                let amount = integer(&args[at + 1])?;
                let expires_at = match option.as_str() {
                    "EX" => amount.checked_mul(1000).and_then(|ms| ms.checked_add(now_ms())),
                    "PX" => amount.checked_add(now_ms()),
                    "EXAT" => amount.checked_mul(1000),
                    _ => Some(amount),
                };
                match expires_at {
                    Some(expires_at) if amount > 0 => options.expires_at = Some(expires_at),
                    _ => return Err(Reply::error("ERR invalid expire time in 'set' command")),
                }
                expiry_given = true;
                at += 1;
            }
            _ => return Err(syntax_error()),
        }
        at += 1;
    }
    set_with(context, session, &args[1], &args[2], options).await
}

async fn set_with(
    context: &RedisContext,
    session: &Session,
    key: &Bytes,
    value: &Bytes,
    options: SetOptions,
) -> Outcome {
    let internal = internal_keys(session, std::slice::from_ref(key)).remove(0);
    let plain = !options.nx && !options.xx && !options.get && !options.keep_ttl;
    if plain {
        // Nothing to read first: one unconditional write.
        let record = Record::string(value.clone(), options.expires_at.unwrap_or(0));
        context
            .data
            .write_all(vec![Write {
                key: internal,
                record: Some(record),
            }])
            .await?;
        return Ok(Reply::ok());
    }
    let answer = context
        .data
        .update(std::slice::from_ref(&internal), |found| {
            let stored = &found[0];
            let old = match string_of(stored) {
                Ok(old) => old,
                // SET without GET overwrites a key of any type; with GET it refuses.
                Err(error) if options.get => return (Vec::new(), Err(error)),
                Err(_) => None,
            };
            let exists = stored.record.is_some();
            let previous = if options.get {
                old.clone().map_or(Reply::Null, Reply::Bulk)
            } else {
                Reply::ok()
            };
            if (options.nx && exists) || (options.xx && !exists) {
                return (Vec::new(), Ok(if options.get { previous } else { Reply::Null }));
            }
            let expires_at = match (options.expires_at, options.keep_ttl) {
                (Some(at), _) => at,
                (None, true) => stored.record.as_ref().map_or(0, |record| record.expires_at),
                (None, false) => 0,
            };
            let record = Record::string(value.clone(), expires_at);
            (
                vec![Write {
                    key: internal.clone(),
                    record: Some(record),
                }],
                Ok(previous),
            )
        })
        .await?;
    answer
}

async fn getdel(context: &RedisContext, session: &Session, key: &Bytes) -> Outcome {
    let internal = internal_keys(session, std::slice::from_ref(key)).remove(0);
    context
        .data
        .update(std::slice::from_ref(&internal), |found| match string_of(&found[0]) {
            Ok(Some(value)) => (
                vec![Write {
                    key: internal.clone(),
                    record: None,
                }],
                Ok(Reply::Bulk(value)),
            ),
            Ok(None) => (Vec::new(), Ok(Reply::Null)),
            Err(error) => (Vec::new(), Err(error)),
        })
        .await?
}

async fn getex(context: &RedisContext, session: &Session, args: &[Bytes]) -> Outcome {
    // None: leave the expiry; Some(0): persist; Some(at): expire then.
    let mut change: Option<i64> = None;
    let mut at = 2;
    while at < args.len() {
        let option = upper(&args[at]);
        match option.as_str() {
            "PERSIST" if change.is_none() => change = Some(0),
            "EX" | "PX" | "EXAT" | "PXAT" if change.is_none() && at + 1 < args.len() => {
                let amount = integer(&args[at + 1])?;
                let expires_at = match option.as_str() {
                    "EX" => amount.checked_mul(1000).and_then(|ms| ms.checked_add(now_ms())),
                    "PX" => amount.checked_add(now_ms()),
                    "EXAT" => amount.checked_mul(1000),
                    _ => Some(amount),
                };
                match expires_at {
                    Some(expires_at) if amount > 0 => change = Some(expires_at),
                    _ => return Err(Reply::error("ERR invalid expire time in 'getex' command")),
                }
                at += 1;
            }
            _ => return Err(syntax_error()),
        }
        at += 1;
    }
    let internal = internal_keys(session, std::slice::from_ref(&args[1])).remove(0);
    let Some(expires_at) = change else {
        return get(context, session, &args[1]).await;
    };
    context
        .data
        .update(std::slice::from_ref(&internal), |found| {
            match (string_of(&found[0]), &found[0].record) {
                (Ok(Some(value)), Some(record)) => {
                    if record.expires_at == expires_at {
                        return (Vec::new(), Ok(Reply::Bulk(value)));
                    }
                    let mut record = record.clone();
                    record.expires_at = expires_at;
                    (
                        vec![Write {
                            key: internal.clone(),
                            record: Some(record),
                        }],
                        Ok(Reply::Bulk(value)),
                    )
                }
                (Ok(_), _) => (Vec::new(), Ok(Reply::Null)),
                (Err(error), _) => (Vec::new(), Err(error)),
            }
        })
        .await?
}

async fn mset(context: &RedisContext, session: &Session, only_new: bool, pairs: &[Bytes]) -> Outcome {
    if !pairs.len().is_multiple_of(2) {
        return Err(super::wrong_arity(if only_new { "msetnx" } else { "mset" }));
    }
    // The last value of a key given twice wins, as in Redis.
    let mut writes: Vec<(Bytes, Bytes)> = Vec::new();
    for pair in pairs.chunks(2) {
        let internal = internal_keys(session, &pair[..1]).remove(0);
        writes.retain(|(key, _)| *key != internal);
        writes.push((internal, pair[1].clone()));
    }
    let to_write = |writes: &[(Bytes, Bytes)]| {
        writes
            .iter()
            .map(|(key, value)| Write {
                key: key.clone(),
                record: Some(Record::string(value.clone(), 0)),
            })
            .collect::<Vec<_>>()
    };
    if !only_new {
        context.data.write_all(to_write(&writes)).await?;
        return Ok(Reply::ok());
    }
    let keys: Vec<Bytes> = writes.iter().map(|(key, _)| key.clone()).collect();
    let reply = context
        .data
        .update(&keys, |found| {
            if found.iter().any(|stored| stored.record.is_some()) {
                (Vec::new(), Reply::Integer(0))
            } else {
                (to_write(&writes), Reply::Integer(1))
            }
        })
        .await?;
    Ok(reply)
}

async fn incr_by(context: &RedisContext, session: &Session, key: &Bytes, by: i64) -> Outcome {
    let internal = internal_keys(session, std::slice::from_ref(key)).remove(0);
    context
        .data
        .update(std::slice::from_ref(&internal), |found| {
            let stored = &found[0];
            let current = match string_of(stored) {
                Ok(None) => 0,
                Ok(Some(value)) => match std::str::from_utf8(&value).ok().and_then(parse_strict_i64) {
                    Some(value) => value,
                    None => return (Vec::new(), Err(not_integer())),
                },
                Err(error) => return (Vec::new(), Err(error)),
            };
            let Some(next) = current.checked_add(by) else {
                return (Vec::new(), Err(overflow()));
            };
            let expires_at = stored.record.as_ref().map_or(0, |record| record.expires_at);
            let record = Record::string(next.to_string(), expires_at);
            (
                vec![Write {
                    key: internal.clone(),
                    record: Some(record),
                }],
                Ok(Reply::Integer(next)),
            )
        })
        .await?
}

/// An integer stored as a string, as Redis reads one (no spaces, no leading '+').
fn parse_strict_i64(text: &str) -> Option<i64> {
    if text.is_empty() || text.starts_with('+') || text.len() > 20 {
        return None;
    }
    text.parse().ok()
}

async fn incr_by_float(context: &RedisContext, session: &Session, key: &Bytes, by: &Bytes) -> Outcome {
    let not_float = || Reply::error("ERR value is not a valid float");
    let by = float(by).ok_or_else(not_float)?;
    let internal = internal_keys(session, std::slice::from_ref(key)).remove(0);
    context
        .data
        .update(std::slice::from_ref(&internal), |found| {
            let stored = &found[0];
            let current = match string_of(stored) {
                Ok(None) => 0.0,
                Ok(Some(value)) => match float(&value) {
                    Some(value) => value,
                    None => return (Vec::new(), Err(not_float())),
                },
                Err(error) => return (Vec::new(), Err(error)),
            };
            let next = current + by;
            if !next.is_finite() {
                return (
                    Vec::new(),
                    Err(Reply::error("ERR increment would produce NaN or Infinity")),
                );
            }
            let text = format_double(next);
            let expires_at = stored.record.as_ref().map_or(0, |record| record.expires_at);
            let record = Record::string(text.clone(), expires_at);
            (
                vec![Write {
                    key: internal.clone(),
                    record: Some(record),
                }],
                Ok(Reply::bulk(text)),
            )
        })
        .await?
}

async fn append(context: &RedisContext, session: &Session, key: &Bytes, suffix: &Bytes) -> Outcome {
    let internal = internal_keys(session, std::slice::from_ref(key)).remove(0);
    let max = context.limits.max_bulk;
    context
        .data
        .update(std::slice::from_ref(&internal), |found| {
            let stored = &found[0];
            let mut value = match string_of(stored) {
                Ok(value) => value.map(|value| value.to_vec()).unwrap_or_default(),
                Err(error) => return (Vec::new(), Err(error)),
            };
            if value.len() + suffix.len() > max {
                return (Vec::new(), Err(too_big()));
            }
            value.extend_from_slice(suffix);
            let length = value.len() as i64;
            let expires_at = stored.record.as_ref().map_or(0, |record| record.expires_at);
            let record = Record::string(value, expires_at);
            (
                vec![Write {
                    key: internal.clone(),
                    record: Some(record),
                }],
                Ok(Reply::Integer(length)),
            )
        })
        .await?
}

fn too_big() -> Reply {
    Reply::error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
}

async fn setrange(context: &RedisContext, session: &Session, args: &[Bytes]) -> Outcome {
    let offset = integer(&args[2])?;
    if offset < 0 {
        return Err(Reply::error("ERR offset is out of range"));
    }
    let piece = args[3].clone();
    let max = context.limits.max_bulk;
    if offset as u64 + piece.len() as u64 > max as u64 {
        return Err(too_big());
    }
    let offset = offset as usize;
    let internal = internal_keys(session, std::slice::from_ref(&args[1])).remove(0);
    context
        .data
        .update(std::slice::from_ref(&internal), |found| {
            let stored = &found[0];
            let mut value = match string_of(stored) {
                Ok(value) => value.map(|value| value.to_vec()).unwrap_or_default(),
                Err(error) => return (Vec::new(), Err(error)),
            };
            if piece.is_empty() {
                // Redis creates nothing and changes nothing for an empty piece.
                return (Vec::new(), Ok(Reply::Integer(value.len() as i64)));
            }
            if value.len() < offset + piece.len() {
                value.resize(offset + piece.len(), 0);
            }
            value[offset..offset + piece.len()].copy_from_slice(&piece);
            let length = value.len() as i64;
            let expires_at = stored.record.as_ref().map_or(0, |record| record.expires_at);
            let record = Record::string(value, expires_at);
            (
                vec![Write {
                    key: internal.clone(),
                    record: Some(record),
                }],
                Ok(Reply::Integer(length)),
            )
        })
        .await?
}

/// GETRANGE's bytes: inclusive offsets, negative from the end, clamped.
fn substring(value: &[u8], start: i64, end: i64) -> Bytes {
    let length = value.len() as i64;
    if length == 0 {
        return Bytes::new();
    }
    let mut start = if start < 0 { (length + start).max(0) } else { start };
    let end = if end < 0 { length + end } else { end.min(length - 1) };
    if start < 0 {
        start = 0;
    }
    if end < 0 || start > end {
        return Bytes::new();
    }
    Bytes::copy_from_slice(&value[start as usize..=end as usize])
}

#[cfg(test)]
mod tests {
    use super::substring;

    #[test]
    fn getrange_offsets_as_redis() {
        let value = b"This is a string";
        assert_eq!(&substring(value, 0, 3)[..], b"This");
        assert_eq!(&substring(value, -3, -1)[..], b"ing");
        assert_eq!(&substring(value, 0, -1)[..], value);
        assert_eq!(&substring(value, 10, 100)[..], b"string");
        assert_eq!(&substring(value, 5, 3)[..], b"");
        assert_eq!(&substring(b"", 0, -1)[..], b"");
    }
}
