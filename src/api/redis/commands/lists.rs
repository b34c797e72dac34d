//! List commands: each element stored beside the list's record under its position
//! (head positions count down, tail positions up), so pushes and pops at either end
//! read and write only that end.

use super::{integer, syntax_error, upper, wrong_type, Env};
use crate::api::redis::keys::{self, Kind};
use crate::api::redis::resp::Reply;
use crate::api::redis::snapshot::{Need, Snapshot};
use bytes::Bytes;

/// Most elements one read takes from an end for LRANGE/LINDEX; beyond it, the whole list.
const EDGE_MAX: i64 = 100_000;

pub fn handles(name: &str) -> bool {
    matches!(
        name,
        "lpush"
            | "rpush"
            | "lpushx"
            | "rpushx"
            | "lpop"
            | "rpop"
            | "llen"
            | "lrange"
            | "lindex"
            | "lset"
            | "lrem"
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

/// Whether the command blocks (outside MULTI) until it finds an element.
pub fn is_blocking(name: &str) -> bool {
    matches!(name, "blpop" | "brpop" | "blmove" | "brpoplpush")
}

/// LEFT or RIGHT: whether it is the head.
fn side(arg: &Bytes) -> Result<bool, Reply> {
    match upper(arg).as_str() {
        "LEFT" => Ok(true),
        "RIGHT" => Ok(false),
        _ => Err(syntax_error()),
    }
}

/// The ends LMOVE and its kin take from and push to.
fn move_sides(name: &str, args: &[Bytes]) -> Result<(bool, bool), Reply> {
    match name {
        "lmove" | "blmove" => Ok((side(&args[3])?, side(&args[4])?)),
        _ => Ok((false, true)),
    }
}

fn edge(key: Bytes, head: bool, count: usize) -> Need {
    if head {
        Need::Edges(key, count, 0)
    } else {
        Need::Edges(key, 0, count)
    }
}

pub fn needs(name: &str, env: &Env, args: &[Bytes]) -> Vec<Need> {
    let key = env.key(&args[1]);
    let count = || {
        args.get(2)
            .and_then(|count| integer(count).ok())
            .map_or(1, |count| count.clamp(1, EDGE_MAX) as usize)
    };
    match name {
        // The record says where the ends are: a push reads no element.
        "lpush" | "lpushx" | "rpush" | "rpushx" => vec![Need::Edges(key, 0, 0)],
        "lpop" => vec![Need::Edges(key, count(), 0)],
        "rpop" => vec![Need::Edges(key, 0, count())],
        "llen" => vec![Need::Record(key)],
        "lindex" | "lset" => match integer(&args[2]) {
            Ok(index) if (0..EDGE_MAX).contains(&index) => vec![Need::Edges(key, index as usize + 1, 0)],
            Ok(index) if (-EDGE_MAX..0).contains(&index) => vec![Need::Edges(key, 0, index.unsigned_abs() as usize)],
            _ => vec![Need::All(key)],
        },
        "lrange" => match (integer(&args[2]), integer(&args[3])) {
            (Ok(start), Ok(stop)) if start >= 0 && (0..EDGE_MAX).contains(&stop) => {
                vec![Need::Edges(key, stop as usize + 1, 0)]
            }
            _ => vec![Need::All(key)],
        },
        "blpop" | "brpop" => args[1..args.len() - 1]
            .iter()
            .map(|key| edge(env.key(key), name == "blpop", 1))
            .collect(),
        "lmove" | "blmove" | "rpoplpush" | "brpoplpush" => match move_sides(name, args) {
            Ok((from_head, _)) => vec![edge(key, from_head, 1), Need::Edges(env.key(&args[2]), 0, 0)],
            Err(_) => vec![Need::Record(key)],
        },
        _ => vec![Need::All(key)],
    }
}

pub fn run(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Reply {
    outcome(snapshot, env, name, args).unwrap_or_else(|error| error)
}

/// Refuses a key holding another type than a list; its length.
fn check(snapshot: &Snapshot, key: &Bytes) -> Result<i64, Reply> {
    match snapshot.get(key) {
        None => Ok(0),
        Some(record) if record.kind == Kind::List => Ok(record.count() as i64),
        Some(_) => Err(wrong_type()),
    }
}

/// The whole list (read with all its elements), head to tail: (position, value).
fn known(snapshot: &Snapshot, key: &Bytes) -> Vec<(i64, Bytes)> {
    snapshot
        .fields(key)
        .into_iter()
        .filter_map(|(field, value)| Some((keys::field_position(&field)?, value)))
        .collect()
}

/// The list's head position and length (0, 0 when missing).
fn bounds(snapshot: &Snapshot, key: &Bytes) -> (i64, i64) {
    snapshot
        .get(key)
        .map_or((0, 0), |record| (record.head(), record.count() as i64))
}

fn push(snapshot: &mut Snapshot, key: &Bytes, values: &[Bytes], head_side: bool) -> i64 {
    for value in values {
        let (head, length) = bounds(snapshot, key);
        let position = match (length, head_side) {
            (0, _) => 0,
            (_, true) => head - 1,
            (_, false) => head + length,
        };
        snapshot.put_field(key, Kind::List, keys::position_field(position), value.clone());
        if head_side || length == 0 {
            snapshot.update_record(key, |record| record.set_head(position));
        }
    }
    bounds(snapshot, key).1
}

fn pop(snapshot: &mut Snapshot, key: &Bytes, head_side: bool, count: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    for _ in 0..count {
        let (head, length) = bounds(snapshot, key);
        if length == 0 {
            break;
        }
        let position = if head_side { head } else { head + length - 1 };
        let field = keys::position_field(position);
        let Some(value) = snapshot.field(key, &field) else {
            break;
        };
        snapshot.remove_field(key, &field);
        if head_side && length > 1 {
            snapshot.update_record(key, |record| record.set_head(head + 1));
        }
        out.push(value);
    }
    out
}

/// Lays `values` out as the whole list from its head on (after LREM or LINSERT), so
/// positions stay contiguous; the record (and its expiry) stays.
fn relayout(snapshot: &mut Snapshot, key: &Bytes, values: Vec<Bytes>) {
    let (head, length) = bounds(snapshot, key);
    if values.is_empty() {
        snapshot.set(key, None);
        return;
    }
    let new_length = values.len() as i64;
    for (offset, value) in values.into_iter().enumerate() {
        snapshot.put_field(key, Kind::List, keys::position_field(head + offset as i64), value);
    }
    for position in head + new_length..head + length {
        snapshot.remove_field(key, &keys::position_field(position));
    }
}

/// A Redis index (negative from the tail) as an offset from the head, if inside.
fn offset(index: i64, length: i64) -> Option<i64> {
    let offset = if index < 0 { length + index } else { index };
    (0..length).contains(&offset).then_some(offset)
}

/// The position and value at Redis index `index`.
fn at(snapshot: &Snapshot, key: &Bytes, index: i64) -> Option<(i64, Bytes)> {
    let (head, length) = bounds(snapshot, key);
    let position = head + offset(index, length)?;
    snapshot
        .field(key, &keys::position_field(position))
        .map(|value| (position, value))
}

fn outcome(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Result<Reply, Reply> {
    let key = env.key(&args[1]);
    let length = check(snapshot, &key)?;
    match name {
        "lpush" | "rpush" => Ok(Reply::Integer(push(snapshot, &key, &args[2..], name == "lpush"))),
        "lpushx" | "rpushx" => {
            if length == 0 {
                return Ok(Reply::Integer(0));
            }
            Ok(Reply::Integer(push(snapshot, &key, &args[2..], name == "lpushx")))
        }
        "lpop" | "rpop" => {
            let head = name == "lpop";
            match args.get(2) {
                None => Ok(pop(snapshot, &key, head, 1).pop().map_or(Reply::Null, Reply::Bulk)),
                Some(count) => {
                    let count = integer(count)?;
                    if count < 0 {
                        return Err(Reply::error("ERR value is out of range, must be positive"));
                    }
                    if length == 0 {
                        return Ok(Reply::NullArray);
                    }
                    let popped = pop(snapshot, &key, head, count.min(EDGE_MAX) as usize);
                    Ok(Reply::Array(popped.into_iter().map(Reply::Bulk).collect()))
                }
            }
        }
        "llen" => Ok(Reply::Integer(length)),
        "lindex" => {
            let index = integer(&args[2])?;
            Ok(at(snapshot, &key, index).map_or(Reply::Null, |(_, value)| Reply::Bulk(value)))
        }
        "lset" => {
            let index = integer(&args[2])?;
            if length == 0 {
                return Err(Reply::error("ERR no such key"));
            }
            let Some((position, _)) = at(snapshot, &key, index) else {
                return Err(Reply::error("ERR index out of range"));
            };
            snapshot.put_field(&key, Kind::List, keys::position_field(position), args[3].clone());
            Ok(Reply::ok())
        }
        "lrange" => {
            let (start, stop) = (integer(&args[2])?, integer(&args[3])?);
            let start = if start < 0 { (length + start).max(0) } else { start };
            let stop = if stop < 0 { length + stop } else { stop.min(length - 1) };
            if start > stop || start >= length {
                return Ok(Reply::Array(Vec::new()));
            }
            let head = bounds(snapshot, &key).0;
            Ok(Reply::Array(
                (head + start..=head + stop)
                    .filter_map(|position| snapshot.field(&key, &keys::position_field(position)))
                    .map(Reply::Bulk)
                    .collect(),
            ))
        }
        "lrem" => {
            let count = integer(&args[2])?;
            let mut values: Vec<Bytes> = known(snapshot, &key).into_iter().map(|(_, value)| value).collect();
            if count < 0 {
                values.reverse();
            }
            let limit = if count == 0 {
                usize::MAX
            } else {
                count.unsigned_abs() as usize
            };
            let mut removed = 0;
            values.retain(|value| {
                if removed < limit && *value == args[3] {
                    removed += 1;
                    false
                } else {
                    true
                }
            });
            if count < 0 {
                values.reverse();
            }
            if removed > 0 {
                relayout(snapshot, &key, values);
            }
            Ok(Reply::Integer(removed as i64))
        }
        "ltrim" => {
            let (start, stop) = (integer(&args[2])?, integer(&args[3])?);
            let start = if start < 0 { (length + start).max(0) } else { start };
            let stop = if stop < 0 { length + stop } else { stop.min(length - 1) };
            let head = bounds(snapshot, &key).0;
            if start > stop {
                snapshot.set(&key, None);
                return Ok(Reply::ok());
            }
            for offset in (0..start).chain(stop + 1..length) {
                snapshot.remove_field(&key, &keys::position_field(head + offset));
            }
            snapshot.update_record(&key, |record| record.set_head(head + start));
            Ok(Reply::ok())
        }
        "linsert" => {
            let before = match upper(&args[2]).as_str() {
                "BEFORE" => true,
                "AFTER" => false,
                _ => return Err(syntax_error()),
            };
            if length == 0 {
                return Ok(Reply::Integer(0));
            }
            let mut values: Vec<Bytes> = known(snapshot, &key).into_iter().map(|(_, value)| value).collect();
            let Some(pivot) = values.iter().position(|value| *value == args[3]) else {
                return Ok(Reply::Integer(-1));
            };
            values.insert(if before { pivot } else { pivot + 1 }, args[4].clone());
            relayout(snapshot, &key, values);
            Ok(Reply::Integer(length + 1))
        }
        "lpos" => lpos(snapshot, &key, args),
        "lmove" | "rpoplpush" | "blmove" | "brpoplpush" => {
            let (from_head, to_head) = move_sides(name, args)?;
            let target = env.key(&args[2]);
            check(snapshot, &target)?;
            let Some(value) = pop(snapshot, &key, from_head, 1).pop() else {
                return Ok(Reply::Null);
            };
            push(snapshot, &target, std::slice::from_ref(&value), to_head);
            Ok(Reply::Bulk(value))
        }
        "blpop" | "brpop" => {
            // Without blocking (MULTI, or one attempt of the blocking loop): the first
            // key holding an element.
            for name_arg in &args[1..args.len() - 1] {
                let key = env.key(name_arg);
                if check(snapshot, &key)? == 0 {
                    continue;
                }
                if let Some(value) = pop(snapshot, &key, name == "blpop", 1).pop() {
                    return Ok(Reply::Array(vec![Reply::Bulk(name_arg.clone()), Reply::Bulk(value)]));
                }
            }
            Ok(Reply::NullArray)
        }
        _ => unreachable!("{name} is not a list command"),
    }
}

fn lpos(snapshot: &Snapshot, key: &Bytes, args: &[Bytes]) -> Result<Reply, Reply> {
    let (mut rank, mut count, mut max_len) = (1i64, None, 0i64);
    let mut at = 3;
    while at < args.len() {
        if at + 1 >= args.len() {
            return Err(syntax_error());
        }
        let value = integer(&args[at + 1])?;
        match upper(&args[at]).as_str() {
            "RANK" if value != 0 && value != i64::MIN => rank = value,
            "RANK" => {
                return Err(Reply::error(
                    "ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list",
                ))
            }
            "COUNT" if value >= 0 => count = Some(value),
            "COUNT" => return Err(Reply::error("ERR COUNT can't be negative")),
            "MAXLEN" if value >= 0 => max_len = value,
            "MAXLEN" => return Err(Reply::error("ERR MAXLEN can't be negative")),
            _ => return Err(syntax_error()),
        }
        at += 2;
    }
    let elements = known(snapshot, key);
    let length = elements.len();
    let order: Box<dyn Iterator<Item = usize>> = if rank > 0 {
        Box::new(0..length)
    } else {
        Box::new((0..length).rev())
    };
    let mut skip = rank.unsigned_abs() - 1;
    let mut found = Vec::new();
    for (compared, index) in order.enumerate() {
        if max_len > 0 && compared as i64 >= max_len {
            break;
        }
        if elements[index].1 == args[2] {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            found.push(Reply::Integer(index as i64));
            if count.is_none() || count.is_some_and(|count| count > 0 && found.len() as i64 >= count) {
                break;
            }
        }
    }
    Ok(match count {
        None => found.pop().unwrap_or(Reply::Null),
        Some(_) => Reply::Array(found),
    })
}
