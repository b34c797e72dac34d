//! Entries: XADD (with trimming), XRANGE, XREVRANGE, XREAD, XDEL, XTRIM.

use super::super::{wrong_arity, Env};
use super::parse::*;
use super::stored::*;
use crate::api::redis::keys::{Kind, Record};
use crate::api::redis::resp::Reply;
use crate::api::redis::snapshot::{Snapshot, Unread};
use bytes::Bytes;
use std::collections::BTreeSet;

pub(super) fn exhausted() -> Reply {
    Reply::error("ERR The stream has exhausted the last possible ID, unable to add more items")
}

pub(super) fn not_above_top() -> Reply {
    Reply::error("ERR The ID specified in XADD is equal or smaller than the target stream top item")
}

pub(super) fn xadd(snapshot: &mut Snapshot, key: &Bytes, args: &[Bytes]) -> Result<Reply, Reply> {
    let options = parse_add_or_trim(args, true)?;
    let Some((id, id_at)) = options.id else {
        return Err(wrong_arity("xadd"));
    };
    let pairs = &args[id_at + 1..];
    if pairs.len() < 2 || !pairs.len().is_multiple_of(2) {
        return Err(wrong_arity("xadd"));
    }
    if id == AddId::Exact(StreamId::MIN) {
        return Err(Reply::error("ERR The ID specified in XADD must be greater than 0-0"));
    }
    let mut meta = match stream(snapshot, key)? {
        Some(meta) => meta,
        None if options.no_make => return Ok(Reply::Null),
        None => {
            snapshot.set(key, Some(Record::collection(Kind::Stream, 0, 0)));
            Meta::default()
        }
    };
    if meta.last == StreamId::MAX {
        return Err(exhausted());
    }
    let id = match id {
        AddId::Auto => {
            let now = snapshot.now().max(0) as u64;
            if now > meta.last.ms {
                StreamId { ms: now, seq: 0 }
            } else {
                meta.last.next().ok_or_else(exhausted)?
            }
        }
        AddId::Millis(ms) if ms == meta.last.ms => {
            let seq = meta.last.seq.checked_add(1).ok_or_else(not_above_top)?;
            StreamId { ms, seq }
        }
        AddId::Millis(ms) => StreamId { ms, seq: 0 },
        AddId::Exact(id) => id,
    };
    if id <= meta.last {
        return Err(not_above_top());
    }
    snapshot.put_element(key, entry_field(id), encode_entry(pairs));
    meta.length += 1;
    meta.last = id;
    meta.added += 1;
    if meta.length == 1 {
        meta.first = id;
    }
    if let Some(trim) = options.trim {
        trim_stream(snapshot, key, &mut meta, trim)?;
    }
    save(snapshot, key, &meta);
    Ok(id.reply())
}

/// Removes the first entries as `trim` says (the first one left becomes the stream's
/// first id); how many. Exact, also for `~` (which lets Redis keep a few more).
pub(super) fn trim_stream(snapshot: &mut Snapshot, key: &Bytes, meta: &mut Meta, trim: Trim) -> Result<u64, Unread> {
    let (end, wanted) = match trim.threshold {
        Threshold::MaxLen(max) if meta.length <= max => return Ok(0),
        Threshold::MaxLen(max) => (entries_end(), meta.length - max),
        // Every entry below the id.
        Threshold::MinId(min) => (entry_field(min), 0),
    };
    let limit = match (wanted, trim.limit) {
        (0, limit) => limit,
        (wanted, 0) => wanted,
        (wanted, limit) => wanted.min(limit),
    };
    let victims = snapshot.elements_between(key, &entries_start(), &end, limit as usize, false)?;
    let Some((last, _)) = victims.last() else {
        return Ok(0);
    };
    let cut: Bytes = [&last[..], &[0]].concat().into();
    snapshot.drop_elements(key, entries_start(), cut.clone());
    let removed = victims.len() as u64;
    meta.length -= removed.min(meta.length);
    meta.first = if meta.length == 0 {
        StreamId::MIN
    } else {
        snapshot
            .elements_between(key, &cut, &entries_end(), 1, false)?
            .first()
            .and_then(|(field, _)| entry_id(field))
            .unwrap_or_default()
    };
    Ok(removed)
}

pub(super) fn xrange(snapshot: &mut Snapshot, key: &Bytes, args: &[Bytes], reverse: bool) -> Result<Reply, Reply> {
    let (start, end) = if reverse {
        (&args[3], &args[2])
    } else {
        (&args[2], &args[3])
    };
    let start = interval_start(start)?;
    let end = interval_end(end)?;
    let count = parse_count(&args[4..])?;
    if stream(snapshot, key)?.is_none() {
        return Ok(Reply::Array(Vec::new()));
    }
    if count == Some(0) {
        return Ok(Reply::NullArray);
    }
    let found = entries(snapshot, key, start, end, count.unwrap_or(0), reverse)?;
    Ok(entries_reply(found))
}

pub(super) fn xdel(snapshot: &mut Snapshot, key: &Bytes, args: &[Bytes]) -> Result<Reply, Reply> {
    let ids = args[2..]
        .iter()
        .map(|arg| strict_id(arg))
        .collect::<Result<BTreeSet<StreamId>, Reply>>()?;
    let Some(mut meta) = stream(snapshot, key)? else {
        return Ok(Reply::Integer(0));
    };
    let first = meta.first;
    let mut deleted = 0;
    let mut first_gone = false;
    for id in ids {
        if entry(snapshot, key, id)?.is_none() {
            continue;
        }
        snapshot.delete_element(key, entry_field(id));
        deleted += 1;
        meta.length = meta.length.saturating_sub(1);
        meta.max_deleted = meta.max_deleted.max(id);
        first_gone |= id == first;
    }
    if deleted == 0 {
        return Ok(Reply::Integer(0));
    }
    if meta.length == 0 {
        meta.first = StreamId::MIN;
    } else if first_gone {
        meta.first = entries(snapshot, key, first, StreamId::MAX, 1, false)?
            .first()
            .map_or(StreamId::MIN, |(id, _)| *id);
    }
    save(snapshot, key, &meta);
    Ok(Reply::Integer(deleted))
}

pub(super) fn xread(snapshot: &mut Snapshot, env: &Env, args: &[Bytes]) -> Result<Reply, Reply> {
    let options = parse_read("xread", args)?;
    let mut starts = Vec::with_capacity(options.keys.len());
    for (name, id) in options.keys.iter().zip(options.ids) {
        let key = env.key(name);
        let meta = stream(snapshot, &key)?;
        let after = match &id[..] {
            b"$" => meta.map_or(StreamId::MIN, |meta| meta.last),
            b">" => return Err(Reply::error(
                "ERR The > ID can be specified only when calling XREADGROUP using the GROUP <group> <consumer> option.",
            )),
            _ => strict_id(id)?,
        };
        starts.push((name, key, after));
    }
    let mut served = Vec::new();
    for (name, key, after) in starts {
        let Some(from) = after.next() else { continue };
        let found = entries(snapshot, &key, from, StreamId::MAX, options.count, false)?;
        if !found.is_empty() {
            served.push((name.clone(), entries_reply(found)));
        }
    }
    Ok(streams_reply(env, served))
}

pub(super) fn xtrim(snapshot: &mut Snapshot, key: &Bytes, args: &[Bytes]) -> Result<Reply, Reply> {
    let options = parse_add_or_trim(args, false)?;
    let (Some(trim), Some(mut meta)) = (options.trim, stream(snapshot, key)?) else {
        return Ok(Reply::Integer(0));
    };
    let removed = trim_stream(snapshot, key, &mut meta, trim)?;
    if removed > 0 {
        save(snapshot, key, &meta);
    }
    Ok(Reply::Integer(removed as i64))
}
