//! Consumer groups: XGROUP, XREADGROUP, XACK, XPENDING, XCLAIM, XAUTOCLAIM.

use super::super::{integer, upper, Env};
use super::parse::*;
use super::stored::*;
use crate::api::redis::keys::{Kind, Record};
use crate::api::redis::resp::Reply;
use crate::api::redis::snapshot::Snapshot;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};

/// Where XREADGROUP reads a stream from.
pub(super) enum ReadFrom {
    /// `>`: entries never delivered to the group.
    New,
    /// The consumer's pending entries after this id.
    History(StreamId),
}

pub(super) fn xreadgroup(snapshot: &mut Snapshot, env: &Env, args: &[Bytes]) -> Result<Reply, Reply> {
    let options = parse_read("xreadgroup", args)?;
    let Some((group_name, consumer_name)) = options.group else {
        return Err(Reply::error("ERR Missing GROUP option for XREADGROUP"));
    };
    let mut plan = Vec::with_capacity(options.keys.len());
    for (name, id) in options.keys.iter().zip(options.ids) {
        let key = env.key(name);
        let found = match stream(snapshot, &key)? {
            Some(_) => group(snapshot, &key, group_name)?,
            None => None,
        };
        if found.is_none() {
            return Err(Reply::error(format!(
                "NOGROUP No such key '{}' or consumer group '{}' in XREADGROUP with GROUP option",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(group_name)
            )));
        }
        let from = match &id[..] {
            b"$" => {
                return Err(Reply::error(
                    "ERR The $ ID is meaningless in the context of XREADGROUP: you want to read the history of this consumer by specifying a proper ID, or use the > ID to get new messages. The $ ID would just return an empty result set.",
                ))
            }
            b">" => ReadFrom::New,
            _ => ReadFrom::History(strict_id(id)?),
        };
        plan.push((name, key, from));
    }
    let now = snapshot.now();
    let mut served = Vec::new();
    for (name, key, from) in plan {
        // As the commands before left them (a stream may be named twice).
        let (Some(meta), Some(mut state)) = (stream(snapshot, &key)?, group(snapshot, &key, group_name)?) else {
            continue;
        };
        let known = consumer(snapshot, &key, group_name, consumer_name)?;
        let mut reader = known.unwrap_or_else(|| Consumer::new(now));
        reader.seen = now;
        match from {
            ReadFrom::History(after) => {
                let owned = match after.next() {
                    Some(from) => {
                        let (start, end) = owned_between(group_name, consumer_name, from, StreamId::MAX);
                        snapshot.elements_between(&key, &start, &end, options.count, false)?
                    }
                    None => Vec::new(),
                };
                let mut items = Vec::with_capacity(owned.len());
                for (field, value) in owned {
                    let (Some(id), Some(mut pending)) = (trailing_id(&field), Nack::decode(&value)) else {
                        continue;
                    };
                    match entry(snapshot, &key, id)? {
                        Some(fields) => {
                            pending.delivered_at = now;
                            pending.deliveries += 1;
                            put_nack(snapshot, &key, group_name, id, &pending, None);
                            items.push(entry_reply(id, Some(fields)));
                        }
                        // Deleted from the stream since: its id, and no fields.
                        None => items.push(entry_reply(id, None)),
                    }
                }
                put_consumer(snapshot, &key, group_name, consumer_name, &reader);
                served.push((name.clone(), Reply::Array(items)));
            }
            ReadFrom::New => {
                let Some(from) = state.last.next() else { continue };
                let found = entries(snapshot, &key, from, StreamId::MAX, options.count, false)?;
                if found.is_empty() {
                    // Nothing written: a poll (or a blocked read's attempt) costs no write.
                    continue;
                }
                reader.active = now;
                let mut items = Vec::with_capacity(found.len());
                for (id, fields) in found {
                    state.advance(&meta, id);
                    if !options.no_ack {
                        // An entry below the ceiling may be pending already (the group's
                        // last id was set back): it changes owner.
                        let previous = if id <= state.ceiling {
                            nack(snapshot, &key, group_name, id)?.map(|pending| pending.consumer)
                        } else {
                            None
                        };
                        let pending = Nack {
                            delivered_at: now,
                            deliveries: 1,
                            consumer: consumer_name.clone(),
                        };
                        put_nack(snapshot, &key, group_name, id, &pending, previous.as_ref());
                        state.ceiling = state.ceiling.max(id);
                    }
                    items.push(entry_reply(id, Some(fields)));
                }
                put_group(snapshot, &key, group_name, &state);
                put_consumer(snapshot, &key, group_name, consumer_name, &reader);
                served.push((name.clone(), Reply::Array(items)));
            }
        }
    }
    Ok(streams_reply(env, served))
}

pub(super) fn xack(snapshot: &mut Snapshot, key: &Bytes, args: &[Bytes]) -> Result<Reply, Reply> {
    let exists = stream(snapshot, key)?.is_some();
    let ids = args[3..]
        .iter()
        .map(|arg| strict_id(arg))
        .collect::<Result<BTreeSet<StreamId>, Reply>>()?;
    let group_name = &args[2];
    if !exists || group(snapshot, key, group_name)?.is_none() {
        return Ok(Reply::Integer(0));
    }
    let mut acknowledged = 0;
    for id in ids {
        if let Some(pending) = nack(snapshot, key, group_name, id)? {
            delete_nack(snapshot, key, group_name, id, &pending.consumer);
            acknowledged += 1;
        }
    }
    Ok(Reply::Integer(acknowledged))
}

pub(super) fn xpending(snapshot: &mut Snapshot, key: &Bytes, args: &[Bytes]) -> Result<Reply, Reply> {
    let query = parse_pending(args)?;
    let group_name = &args[2];
    let exists = stream(snapshot, key)?.is_some();
    if !exists || group(snapshot, key, group_name)?.is_none() {
        return Err(nogroup(&args[1], group_name));
    }
    let now = snapshot.now();
    let Some(query) = query else {
        // The summary: how many, the lowest and highest id, and per consumer how many.
        let (start, end) = pending_span(group_name);
        let all = snapshot.elements_between(key, &start, &end, 0, false)?;
        let mut owners: BTreeMap<Bytes, u64> = BTreeMap::new();
        for (_, value) in &all {
            if let Some(pending) = Nack::decode(value) {
                *owners.entry(pending.consumer).or_default() += 1;
            }
        }
        let id_at = |index: Option<&(Bytes, Bytes)>| {
            index
                .and_then(|(field, _)| trailing_id(field))
                .map_or(Reply::Null, StreamId::reply)
        };
        return Ok(Reply::Array(vec![
            Reply::Integer(all.len() as i64),
            id_at(all.first()),
            id_at(all.last()),
            if owners.is_empty() {
                Reply::NullArray
            } else {
                Reply::Array(
                    owners
                        .into_iter()
                        .map(|(owner, count)| Reply::Array(vec![Reply::Bulk(owner), Reply::bulk(count.to_string())]))
                        .collect(),
                )
            },
        ]));
    };
    if query.count == 0 || query.start > query.end {
        return Ok(Reply::Array(Vec::new()));
    }
    let (start, end) = match query.consumer {
        Some(consumer) => owned_between(group_name, consumer, query.start, query.end),
        None => pending_between(group_name, query.start, query.end),
    };
    let limit = if query.min_idle.is_some() { 0 } else { query.count };
    let found = snapshot.elements_between(key, &start, &end, limit, false)?;
    let items = found
        .into_iter()
        .filter_map(|(field, value)| Some((trailing_id(&field)?, Nack::decode(&value)?)))
        .filter(|(_, pending)| query.min_idle.is_none_or(|min| min == 0 || pending.idle(now) >= min))
        .take(query.count)
        .map(|(id, pending)| {
            Reply::Array(vec![
                id.reply(),
                Reply::Bulk(pending.consumer.clone()),
                Reply::Integer(pending.idle(now)),
                Reply::Integer(pending.deliveries as i64),
            ])
        })
        .collect();
    Ok(Reply::Array(items))
}

pub(super) fn xclaim(snapshot: &mut Snapshot, key: &Bytes, args: &[Bytes]) -> Result<Reply, Reply> {
    let exists = stream(snapshot, key)?.is_some();
    let options = parse_claim(args)?;
    let (group_name, consumer_name) = (&args[2], &args[3]);
    let state = match exists {
        true => group(snapshot, key, group_name)?,
        false => None,
    };
    let Some(mut state) = state else {
        return Err(nogroup(&args[1], group_name));
    };
    let now = snapshot.now();
    let delivered_at = options
        .delivered
        .map(|(value, idle)| if idle { now.saturating_sub(value) } else { value })
        .filter(|at| (0..=now).contains(at))
        .unwrap_or(now);
    if let Some(last) = options.last_id.filter(|last| *last > state.last) {
        state.last = last;
        put_group(snapshot, key, group_name, &state);
    }
    let mut claimer: Option<Consumer> = None;
    let mut items = Vec::new();
    for id in options.ids {
        let pending = nack(snapshot, key, group_name, id)?;
        let Some(fields) = entry(snapshot, key, id)? else {
            // Deleted from the stream: it leaves the pending list too.
            if let Some(pending) = pending {
                delete_nack(snapshot, key, group_name, id, &pending.consumer);
            }
            continue;
        };
        let (mut claimed, previous) = match pending {
            Some(pending) => {
                if options.min_idle > 0 && pending.idle(now) < options.min_idle {
                    continue;
                }
                let previous = pending.consumer.clone();
                (pending, Some(previous))
            }
            None if options.force => (
                Nack {
                    delivered_at: now,
                    deliveries: 1,
                    consumer: consumer_name.clone(),
                },
                None,
            ),
            None => continue,
        };
        if claimer.is_none() {
            let mut found = consumer(snapshot, key, group_name, consumer_name)?.unwrap_or_else(|| Consumer::new(now));
            found.seen = now;
            found.active = now;
            claimer = Some(found);
        }
        claimed.delivered_at = delivered_at;
        match options.retry_count {
            Some(count) => claimed.deliveries = count,
            None if !options.just_id => claimed.deliveries += 1,
            None => {}
        }
        claimed.consumer = consumer_name.clone();
        put_nack(snapshot, key, group_name, id, &claimed, previous.as_ref());
        items.push(if options.just_id {
            id.reply()
        } else {
            entry_reply(id, Some(fields))
        });
    }
    if let Some(claimer) = claimer {
        put_consumer(snapshot, key, group_name, consumer_name, &claimer);
    }
    Ok(Reply::Array(items))
}

pub(super) fn xautoclaim(snapshot: &mut Snapshot, key: &Bytes, args: &[Bytes]) -> Result<Reply, Reply> {
    let exists = stream(snapshot, key)?.is_some();
    let options = parse_autoclaim(args)?;
    let (group_name, consumer_name) = (&args[2], &args[3]);
    if !exists || group(snapshot, key, group_name)?.is_none() {
        return Err(nogroup(&args[1], group_name));
    }
    let now = snapshot.now();
    let attempts = options.count.saturating_mul(AUTOCLAIM_ATTEMPTS_PER_COUNT);
    let (_, end) = pending_span(group_name);
    let pending = snapshot.elements_between(
        key,
        &pending_field(group_name, options.start),
        &end,
        attempts.saturating_add(1),
        false,
    )?;
    let mut remaining = options.count;
    let mut examined = 0;
    let mut claimer: Option<Consumer> = None;
    let (mut claimed, mut deleted) = (Vec::new(), Vec::new());
    for (field, value) in &pending {
        if examined == attempts || remaining == 0 {
            break;
        }
        examined += 1;
        let (Some(id), Some(mut entry_nack)) = (trailing_id(field), Nack::decode(value)) else {
            continue;
        };
        let Some(fields) = entry(snapshot, key, id)? else {
            delete_nack(snapshot, key, group_name, id, &entry_nack.consumer);
            deleted.push(id.reply());
            remaining -= 1;
            continue;
        };
        if options.min_idle > 0 && entry_nack.idle(now) < options.min_idle {
            continue;
        }
        if claimer.is_none() {
            let mut found = consumer(snapshot, key, group_name, consumer_name)?.unwrap_or_else(|| Consumer::new(now));
            found.seen = now;
            found.active = now;
            claimer = Some(found);
        }
        let previous = entry_nack.consumer.clone();
        entry_nack.delivered_at = now;
        if !options.just_id {
            entry_nack.deliveries += 1;
        }
        entry_nack.consumer = consumer_name.clone();
        put_nack(snapshot, key, group_name, id, &entry_nack, Some(&previous));
        claimed.push(if options.just_id {
            id.reply()
        } else {
            entry_reply(id, Some(fields))
        });
        remaining -= 1;
    }
    if let Some(claimer) = claimer {
        put_consumer(snapshot, key, group_name, consumer_name, &claimer);
    }
    // Where the next call goes on: the next pending entry, or 0-0 after the last.
    let cursor = pending
        .get(examined)
        .and_then(|(field, _)| trailing_id(field))
        .unwrap_or(StreamId::MIN);
    Ok(Reply::Array(vec![
        cursor.reply(),
        Reply::Array(claimed),
        Reply::Array(deleted),
    ]))
}

/// ENTRIESREAD's value: -1 (unknown) or a count.
pub(super) fn entries_read(arg: &[u8]) -> Result<Option<i64>, Reply> {
    let value = integer(arg)?;
    if value < 0 && value != -1 {
        return Err(Reply::error("ERR value for ENTRIESREAD must be positive or -1"));
    }
    Ok((value >= 0).then_some(value))
}

pub(super) fn xgroup(snapshot: &mut Snapshot, env: &Env, args: &[Bytes]) -> Result<Reply, Reply> {
    let sub = upper(&args[1]);
    let arity: i64 = match sub.as_str() {
        "CREATE" | "SETID" => -5,
        "DESTROY" => 4,
        "CREATECONSUMER" | "DELCONSUMER" => 5,
        "HELP" => 2,
        _ => {
            return Err(Reply::error(format!(
                "ERR unknown subcommand '{}'. Try XGROUP HELP.",
                String::from_utf8_lossy(&args[1])
            )))
        }
    };
    let count = args.len() as i64;
    if (arity > 0 && count != arity) || (arity < 0 && count < -arity) {
        return Err(Reply::error(format!(
            "ERR wrong number of arguments for 'xgroup|{}' command",
            sub.to_ascii_lowercase()
        )));
    }
    if sub == "HELP" {
        return Ok(help(&[
            "XGROUP <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "CREATE <key> <groupname> <id|$> [option]",
            "    Create a new consumer group. Options are:",
            "    * MKSTREAM",
            "      Create the empty stream if it does not exist.",
            "    * ENTRIESREAD entries_read",
            "      Set the group's entries_read counter (internal use).",
            "CREATECONSUMER <key> <groupname> <consumer>",
            "    Create a new consumer in the specified group.",
            "DELCONSUMER <key> <groupname> <consumer>",
            "    Remove the specified consumer.",
            "DESTROY <key> <groupname>",
            "    Remove the specified group.",
            "SETID <key> <groupname> <id|$> [ENTRIESREAD entries_read]",
            "    Set the current group ID and entries_read counter.",
            "HELP",
            "    Print this help.",
        ]));
    }
    let key = env.key(&args[2]);
    let group_name = &args[3];
    let mut make = false;
    let mut read_count = None;
    if sub == "CREATE" || sub == "SETID" {
        let mut at = 5;
        while at < args.len() {
            match upper(&args[at]).as_str() {
                "MKSTREAM" if sub == "CREATE" => {
                    make = true;
                    at += 1;
                }
                "ENTRIESREAD" if at + 1 < args.len() => {
                    read_count = entries_read(&args[at + 1])?;
                    at += 2;
                }
                _ => return Err(subcommand_error("XGROUP", &args[1])),
            }
        }
    }
    let meta = stream(snapshot, &key)?;
    if meta.is_none() && !make {
        return Err(Reply::error(
            "ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically.",
        ));
    }
    let existing = match meta {
        Some(_) => group(snapshot, &key, group_name)?,
        None => None,
    };
    if existing.is_none() && matches!(sub.as_str(), "SETID" | "CREATECONSUMER" | "DELCONSUMER") {
        return Err(no_such_group(&args[2], group_name));
    }
    let now = snapshot.now();
    match sub.as_str() {
        "CREATE" => {
            let last = match &args[4][..] {
                b"$" => meta.map_or(StreamId::MIN, |meta| meta.last),
                id => strict_id(id)?,
            };
            if existing.is_some() {
                return Err(Reply::error("BUSYGROUP Consumer Group name already exists"));
            }
            if meta.is_none() {
                snapshot.set(&key, Some(Record::collection(Kind::Stream, 0, 0)));
            }
            let created = Group {
                last,
                entries_read: read_count,
                ceiling: StreamId::MIN,
            };
            put_group(snapshot, &key, group_name, &created);
            Ok(Reply::ok())
        }
        "SETID" => {
            let last = match &args[4][..] {
                b"$" => meta.map_or(StreamId::MIN, |meta| meta.last),
                id => parse_id(id, 0, false)?,
            };
            let Some(mut state) = existing else {
                return Err(no_such_group(&args[2], group_name));
            };
            state.last = last;
            state.entries_read = read_count;
            put_group(snapshot, &key, group_name, &state);
            Ok(Reply::ok())
        }
        "DESTROY" => {
            if existing.is_none() {
                return Ok(Reply::Integer(0));
            }
            snapshot.delete_element(&key, group_field(group_name));
            for (start, end) in [pending_span(group_name), consumers_span(group_name), {
                let scope = group_scope(OWNED, group_name);
                let end = prefix_end(&scope);
                (scope.into(), end)
            }] {
                snapshot.drop_elements(&key, start, end);
            }
            Ok(Reply::Integer(1))
        }
        "CREATECONSUMER" => {
            let name = &args[4];
            if consumer(snapshot, &key, group_name, name)?.is_some() {
                return Ok(Reply::Integer(0));
            }
            put_consumer(snapshot, &key, group_name, name, &Consumer::new(now));
            Ok(Reply::Integer(1))
        }
        "DELCONSUMER" => {
            let name = &args[4];
            if consumer(snapshot, &key, group_name, name)?.is_none() {
                return Ok(Reply::Integer(0));
            }
            let (start, end) = owned_between(group_name, name, StreamId::MIN, StreamId::MAX);
            let owned = snapshot.elements_between(&key, &start, &end, 0, false)?;
            for (field, _) in &owned {
                if let Some(id) = trailing_id(field) {
                    snapshot.delete_element(&key, pending_field(group_name, id));
                }
            }
            let scope = owned_scope(group_name, name);
            let scope_end = prefix_end(&scope);
            snapshot.drop_elements(&key, scope.into(), scope_end);
            snapshot.delete_element(&key, consumer_field(group_name, name));
            Ok(Reply::Integer(owned.len() as i64))
        }
        _ => unreachable!("XGROUP {sub} was checked above"),
    }
}
