//! String commands, run on a snapshot of the keys they name (see [`Data::run`]).
//!
//! [`Data::run`]: crate::api::redis::data::Data::run

use super::{float, integer, not_integer, syntax_error, upper, wrong_type, Env};
use crate::api::redis::keys::{Kind, Record};
use crate::api::redis::resp::{format_double, Reply};
use crate::api::redis::snapshot::Snapshot;
use bytes::Bytes;

/// Whether `name` is a string command.
pub fn handles(name: &str) -> bool {
    matches!(
        name,
        "get"
            | "set"
            | "setnx"
            | "setex"
            | "psetex"
            | "getset"
            | "getdel"
            | "getex"
            | "mget"
            | "mset"
            | "msetnx"
            | "incr"
            | "decr"
            | "incrby"
            | "decrby"
            | "incrbyfloat"
            | "append"
            | "strlen"
            | "getrange"
            | "substr"
            | "setrange"
    )
}

pub fn run(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Reply {
    outcome(snapshot, env, name, args).unwrap_or_else(|error| error)
}

fn outcome(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Result<Reply, Reply> {
    let key = || env.key(&args[1]);
    match name {
        "get" => Ok(string_of(snapshot.get(&key()))?.map_or(Reply::Null, Reply::Bulk)),
        "set" => {
            let options = set_options(args, snapshot.now())?;
            set_with(snapshot, &key(), &args[2], options)
        }
        "setnx" => {
            let options = SetOptions {
                nx: true,
                ..SetOptions::default()
            };
            let reply = set_with(snapshot, &key(), &args[2], options)?;
            Ok(Reply::Integer(i64::from(reply != Reply::Null)))
        }
        "setex" | "psetex" => {
            let amount = integer(&args[2])?;
            let unit = if name == "setex" { 1000 } else { 1 };
            match amount.checked_mul(unit).and_then(|ms| ms.checked_add(snapshot.now())) {
                Some(at) if amount > 0 => {
                    let options = SetOptions {
                        expires_at: Some(at),
                        ..SetOptions::default()
                    };
                    set_with(snapshot, &key(), &args[3], options)
                }
                _ => Err(Reply::error(format!("ERR invalid expire time in '{name}' command"))),
            }
        }
        "getset" => {
            let options = SetOptions {
                get: true,
                ..SetOptions::default()
            };
            set_with(snapshot, &key(), &args[2], options)
        }
        "getdel" => {
            let key = key();
            match string_of(snapshot.get(&key))? {
                Some(value) => {
                    snapshot.set(&key, None);
                    Ok(Reply::Bulk(value))
                }
                None => Ok(Reply::Null),
            }
        }
        "getex" => getex(snapshot, env, args),
        "mget" => Ok(Reply::Array(
            args[1..]
                .iter()
                .map(|key| match snapshot.get(&env.key(key)) {
                    Some(record) if record.kind == Kind::String => Reply::Bulk(record.payload.clone()),
                    _ => Reply::Null,
                })
                .collect(),
        )),
        "mset" | "msetnx" => {
            if !(args.len() - 1).is_multiple_of(2) {
                return Err(super::wrong_arity(name));
            }
            let pairs: Vec<(Bytes, &Bytes)> = args[1..].chunks(2).map(|pair| (env.key(&pair[0]), &pair[1])).collect();
            if name == "msetnx" && pairs.iter().any(|(key, _)| snapshot.get(key).is_some()) {
                return Ok(Reply::Integer(0));
            }
            // The last value of a key given twice wins, as in Redis.
            for (key, value) in pairs {
                snapshot.set(&key, Some(Record::string(value.clone(), 0)));
            }
            Ok(if name == "mset" { Reply::ok() } else { Reply::Integer(1) })
        }
        "incr" => incr_by(snapshot, &key(), 1),
        "decr" => incr_by(snapshot, &key(), -1),
        "incrby" => incr_by(snapshot, &key(), integer(&args[2])?),
        "decrby" => {
            let by = integer(&args[2])?;
            incr_by(snapshot, &key(), by.checked_neg().ok_or_else(overflow)?)
        }
        "incrbyfloat" => incr_by_float(snapshot, &key(), &args[2]),
        "append" => {
            let key = key();
            let mut value = string_of(snapshot.get(&key))?
                .map(|value| value.to_vec())
                .unwrap_or_default();
            if value.len() + args[2].len() > env.max_bulk {
                return Err(too_big());
            }
            value.extend_from_slice(&args[2]);
            let length = value.len() as i64;
            keep_expiry_set(snapshot, &key, value);
            Ok(Reply::Integer(length))
        }
        "strlen" => Ok(Reply::Integer(
            string_of(snapshot.get(&key()))?.map_or(0, |value| value.len() as i64),
        )),
        "getrange" | "substr" => {
            let (start, end) = (integer(&args[2])?, integer(&args[3])?);
            let value = string_of(snapshot.get(&key()))?.unwrap_or_default();
            Ok(Reply::bulk(substring(&value, start, end)))
        }
        "setrange" => setrange(snapshot, env, args),
        _ => unreachable!("{name} is not a string command"),
    }
}

fn overflow() -> Reply {
    Reply::error("ERR increment or decrement would overflow")
}

fn too_big() -> Reply {
    Reply::error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
}

/// The string a key holds: `None` when it does not exist, WRONGTYPE when it is no string.
fn string_of(record: Option<&Record>) -> Result<Option<Bytes>, Reply> {
    match record {
        None => Ok(None),
        Some(record) if record.kind == Kind::String => Ok(Some(record.payload.clone())),
        Some(_) => Err(wrong_type()),
    }
}

/// Sets a string value, keeping the key's expiry (APPEND, INCR and the like).
fn keep_expiry_set(snapshot: &mut Snapshot, key: &Bytes, value: impl Into<Bytes>) {
    let expires_at = snapshot.get(key).map_or(0, |record| record.expires_at);
    snapshot.set(key, Some(Record::string(value, expires_at)));
}

#[derive(Default)]
pub struct SetOptions {
    nx: bool,
    xx: bool,
    get: bool,
    keep_ttl: bool,
    /// Unix milliseconds.
    expires_at: Option<i64>,
}

impl SetOptions {
    /// A SET that needs nothing read first: one unconditional write.
    pub fn is_plain(&self) -> bool {
        !self.nx && !self.xx && !self.get && !self.keep_ttl
    }

    pub fn expires_at(&self) -> i64 {
        self.expires_at.unwrap_or(0)
    }
}

/// Expiry options (EX, PX, EXAT, PXAT) as an absolute time in Unix milliseconds.
fn expiry_at(option: &str, amount: i64, now: i64, command: &str) -> Result<i64, Reply> {
    let at = match option {
        "EX" => amount.checked_mul(1000).and_then(|ms| ms.checked_add(now)),
        "PX" => amount.checked_add(now),
        "EXAT" => amount.checked_mul(1000),
        _ => Some(amount),
    };
    match at {
        Some(at) if amount > 0 => Ok(at),
        _ => Err(Reply::error(format!("ERR invalid expire time in '{command}' command"))),
    }
}

/// SET's options (arguments after the value).
pub fn set_options(args: &[Bytes], now: i64) -> Result<SetOptions, Reply> {
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
                options.expires_at = Some(expiry_at(&option, amount, now, "set")?);
                expiry_given = true;
                at += 1;
            }
            _ => return Err(syntax_error()),
        }
        at += 1;
    }
    Ok(options)
}

fn set_with(snapshot: &mut Snapshot, key: &Bytes, value: &Bytes, options: SetOptions) -> Result<Reply, Reply> {
    let current = snapshot.get(key).cloned();
    let old = match string_of(current.as_ref()) {
        Ok(old) => old,
        // SET without GET overwrites a key of any type; with GET it refuses.
        Err(error) if options.get => return Err(error),
        Err(_) => None,
    };
    let exists = current.is_some();
    let previous = if options.get {
        old.map_or(Reply::Null, Reply::Bulk)
    } else {
        Reply::ok()
    };
    if (options.nx && exists) || (options.xx && !exists) {
        return Ok(if options.get { previous } else { Reply::Null });
    }
    let expires_at = match (options.expires_at, options.keep_ttl) {
        (Some(at), _) => at,
        (None, true) => current.as_ref().map_or(0, |record| record.expires_at),
        (None, false) => 0,
    };
    snapshot.set(key, Some(Record::string(value.clone(), expires_at)));
    Ok(previous)
}

fn getex(snapshot: &mut Snapshot, env: &Env, args: &[Bytes]) -> Result<Reply, Reply> {
    // None: leave the expiry; Some(0): persist; Some(at): expire then.
    let mut change: Option<i64> = None;
    let mut at = 2;
    while at < args.len() {
        let option = upper(&args[at]);
        match option.as_str() {
            "PERSIST" if change.is_none() => change = Some(0),
            "EX" | "PX" | "EXAT" | "PXAT" if change.is_none() && at + 1 < args.len() => {
                let amount = integer(&args[at + 1])?;
                change = Some(expiry_at(&option, amount, snapshot.now(), "getex")?);
                at += 1;
            }
            _ => return Err(syntax_error()),
        }
        at += 1;
    }
    let key = env.key(&args[1]);
    let Some(record) = snapshot.get(&key).cloned() else {
        return Ok(Reply::Null);
    };
    let value = string_of(Some(&record))?.unwrap_or_default();
    if let Some(expires_at) = change.filter(|at| *at != record.expires_at) {
        let mut record = record;
        record.expires_at = expires_at;
        snapshot.set(&key, Some(record));
    }
    Ok(Reply::Bulk(value))
}

fn incr_by(snapshot: &mut Snapshot, key: &Bytes, by: i64) -> Result<Reply, Reply> {
    let current = match string_of(snapshot.get(key))? {
        None => 0,
        Some(value) => std::str::from_utf8(&value)
            .ok()
            .and_then(parse_strict_i64)
            .ok_or_else(not_integer)?,
    };
    let next = current.checked_add(by).ok_or_else(overflow)?;
    keep_expiry_set(snapshot, key, next.to_string());
    Ok(Reply::Integer(next))
}

/// An integer stored as a string, as Redis reads one (no spaces, no leading '+').
fn parse_strict_i64(text: &str) -> Option<i64> {
    if text.is_empty() || text.starts_with('+') || text.len() > 20 {
        return None;
    }
    text.parse().ok()
}

fn incr_by_float(snapshot: &mut Snapshot, key: &Bytes, by: &Bytes) -> Result<Reply, Reply> {
    let not_float = || Reply::error("ERR value is not a valid float");
    let by = float(by).ok_or_else(not_float)?;
    let current = match string_of(snapshot.get(key))? {
        None => 0.0,
        Some(value) => float(&value).ok_or_else(not_float)?,
    };
    let next = current + by;
    if !next.is_finite() {
        return Err(Reply::error("ERR increment would produce NaN or Infinity"));
    }
    let text = format_double(next);
    keep_expiry_set(snapshot, key, text.clone());
    Ok(Reply::bulk(text))
}

fn setrange(snapshot: &mut Snapshot, env: &Env, args: &[Bytes]) -> Result<Reply, Reply> {
    let offset = integer(&args[2])?;
    if offset < 0 {
        return Err(Reply::error("ERR offset is out of range"));
    }
    let piece = &args[3];
    if offset as u64 + piece.len() as u64 > env.max_bulk as u64 {
        return Err(too_big());
    }
    let offset = offset as usize;
    let key = env.key(&args[1]);
    let mut value = string_of(snapshot.get(&key))?
        .map(|value| value.to_vec())
        .unwrap_or_default();
    if piece.is_empty() {
        // Redis creates nothing and changes nothing for an empty piece.
        return Ok(Reply::Integer(value.len() as i64));
    }
    if value.len() < offset + piece.len() {
        value.resize(offset + piece.len(), 0);
    }
    value[offset..offset + piece.len()].copy_from_slice(piece);
    let length = value.len() as i64;
    keep_expiry_set(snapshot, &key, value);
    Ok(Reply::Integer(length))
}

/// GETRANGE's bytes: inclusive offsets, negative from the end, clamped.
fn substring(value: &[u8], start: i64, end: i64) -> Bytes {
    let length = value.len() as i64;
    if length == 0 {
        return Bytes::new();
    }
    let start = if start < 0 { (length + start).max(0) } else { start };
    let end = if end < 0 { length + end } else { end.min(length - 1) };
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
