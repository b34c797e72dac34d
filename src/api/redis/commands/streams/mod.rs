//! Stream commands: Redis streams, Shoal's durable message queue, with consumer groups
//! whose state is replicated like everything else, so a failover loses no entry, no
//! delivery and no acknowledgement.
//!
//! A stream is its record plus elements (see `keys::element_key`), each under a
//! sub-prefix of its own, so every part is a span of ordered keys:
//!
//! - the record's payload: length, last id, first id, largest deleted id and entries
//!   ever added (`keys::STREAM_PAYLOAD_BYTES`);
//! - `i` + id: an entry, the id as milliseconds then sequence, both big-endian, so key
//!   order is id order; its value the field-value pairs;
//! - `g` + group name: a consumer group: last delivered id, entries read, and the
//!   highest id any pending entry of the group may have (below it a delivery looks for
//!   an entry already pending; above it there is none to look for);
//! - `p` + group (length-prefixed) + id: the group's pending entries list (PEL): the
//!   consumer that owns the entry, when it was delivered and how often;
//! - `o` + group + consumer (both length-prefixed) + id: the same entry under its
//!   owner, so a consumer's pending entries are one span too;
//! - `c` + group + consumer: a consumer: when it was last seen and last active.
//!
//! Every change to any of them rewrites the record, so one compare on the record's mod
//! revision covers the whole stream (as for every collection, see `snapshot`). Ids made
//! from `*` take the serving node's clock, and are always above the stream's last id.
//! A command that learns from what it read which elements it needs (the entries after
//! a group's last delivered id) reads them in a second round, at one revision with the
//! rest ([`Snapshot::elements_between`]).

mod entries;
mod groups;
mod info;
mod parse;
mod stored;

use super::{upper, Env};
use crate::api::redis::data::Stored;
use crate::api::redis::keys::Kind;
use crate::api::redis::resp::Reply;
use crate::api::redis::snapshot::{Need, Snapshot};
use bytes::Bytes;
use parse::*;
use stored::*;

pub fn handles(name: &str) -> bool {
    matches!(
        name,
        "xadd"
            | "xlen"
            | "xrange"
            | "xrevrange"
            | "xread"
            | "xreadgroup"
            | "xdel"
            | "xtrim"
            | "xgroup"
            | "xack"
            | "xpending"
            | "xclaim"
            | "xautoclaim"
            | "xinfo"
    )
}

// ---------------------------------------------------------------------------------
// What each command reads.

pub fn needs(name: &str, env: &Env, args: &[Bytes]) -> Vec<Need> {
    match name {
        "xread" | "xreadgroup" => return read_needs(name, env, args),
        "xgroup" => return group_needs(env, args),
        "xinfo" => return info_needs(env, args),
        _ => {}
    }
    let key = env.key(&args[1]);
    let mut needs = vec![Need::Record(key.clone())];
    match name {
        "xadd" | "xtrim" => {
            if let Ok(AddOptions { trim: Some(_), .. }) = parse_add_or_trim(args, name == "xadd") {
                // A trim usually removes an entry or two: the first ones are read now,
                // the first one left among them.
                needs.push(span(&key, (entries_start(), entries_end()), 2, false));
            }
        }
        "xrange" | "xrevrange" => {
            let reverse = name == "xrevrange";
            let (start, end) = if reverse {
                (&args[3], &args[2])
            } else {
                (&args[2], &args[3])
            };
            if let (Ok(start), Ok(end), Ok(count)) = (interval_start(start), interval_end(end), parse_count(&args[4..]))
            {
                if start <= end && count != Some(0) {
                    needs.push(span(
                        &key,
                        (entry_field(start), entry_after(end)),
                        count.unwrap_or(0),
                        reverse,
                    ));
                }
            }
        }
        "xdel" => {
            let ids: Vec<StreamId> = args[2..].iter().filter_map(|arg| strict_id(arg).ok()).collect();
            // The first entries, in case the first one goes.
            needs.push(span(&key, (entries_start(), entries_end()), ids.len() + 1, false));
            needs.push(Need::Fields(key.clone(), ids.into_iter().map(entry_field).collect()));
        }
        "xack" => {
            let group = &args[2];
            let mut fields = vec![group_field(group)];
            fields.extend(
                args[3..]
                    .iter()
                    .filter_map(|arg| strict_id(arg).ok())
                    .map(|id| pending_field(group, id)),
            );
            needs.push(Need::Fields(key.clone(), fields));
        }
        "xpending" => {
            let group = &args[2];
            needs.push(Need::Fields(key.clone(), vec![group_field(group)]));
            match parse_pending(args) {
                Ok(None) => needs.push(span(&key, pending_span(group), 0, false)),
                Ok(Some(query)) if query.start <= query.end && query.count > 0 => {
                    let limit = if query.min_idle.is_some() { 0 } else { query.count };
                    let bounds = match query.consumer {
                        Some(consumer) => owned_between(group, consumer, query.start, query.end),
                        None => pending_between(group, query.start, query.end),
                    };
                    needs.push(span(&key, bounds, limit, false));
                }
                _ => {}
            }
        }
        "xclaim" => {
            let (group, consumer) = (&args[2], &args[3]);
            let mut fields = vec![group_field(group), consumer_field(group, consumer)];
            if let Ok(options) = parse_claim(args) {
                for id in options.ids {
                    fields.push(pending_field(group, id));
                    fields.push(entry_field(id));
                }
            }
            needs.push(Need::Fields(key.clone(), fields));
        }
        "xautoclaim" => {
            let (group, consumer) = (&args[2], &args[3]);
            needs.push(Need::Fields(
                key.clone(),
                vec![group_field(group), consumer_field(group, consumer)],
            ));
            if let Ok(options) = parse_autoclaim(args) {
                let attempts = options.count.saturating_mul(AUTOCLAIM_ATTEMPTS_PER_COUNT);
                let (_, end) = pending_span(group);
                needs.push(span(
                    &key,
                    (pending_field(group, options.start), end),
                    attempts.saturating_add(1),
                    false,
                ));
            }
        }
        _ => {}
    }
    needs
}

fn read_needs(name: &str, env: &Env, args: &[Bytes]) -> Vec<Need> {
    let Ok(options) = parse_read(name, args) else {
        return vec![Need::Record(env.key(&args[1]))];
    };
    let mut needs = Vec::new();
    for (name_arg, id) in options.keys.iter().zip(options.ids) {
        let key = env.key(name_arg);
        needs.push(Need::Record(key.clone()));
        match options.group {
            Some((group, consumer)) => {
                needs.push(Need::Fields(
                    key.clone(),
                    vec![group_field(group), consumer_field(group, consumer)],
                ));
                // History: the consumer's pending entries after the id.
                if let Some(from) = strict_id(id).ok().and_then(StreamId::next) {
                    needs.push(span(
                        &key,
                        owned_between(group, consumer, from, StreamId::MAX),
                        options.count,
                        false,
                    ));
                }
            }
            None => {
                if let Some(from) = strict_id(id).ok().and_then(StreamId::next) {
                    needs.push(span(&key, (entry_field(from), entries_end()), options.count, false));
                }
            }
        }
    }
    needs
}

fn group_needs(env: &Env, args: &[Bytes]) -> Vec<Need> {
    let Some(name_arg) = args.get(2) else {
        return Vec::new();
    };
    let key = env.key(name_arg);
    let mut needs = vec![Need::Record(key.clone())];
    if let Some(group) = args.get(3) {
        let mut fields = vec![group_field(group)];
        let sub = upper(&args[1]);
        if let Some(consumer) = args
            .get(4)
            .filter(|_| matches!(sub.as_str(), "CREATECONSUMER" | "DELCONSUMER"))
        {
            fields.push(consumer_field(group, consumer));
            if sub == "DELCONSUMER" {
                needs.push(span(
                    &key,
                    owned_between(group, consumer, StreamId::MIN, StreamId::MAX),
                    0,
                    false,
                ));
            }
        }
        needs.push(Need::Fields(key, fields));
    }
    needs
}

fn info_needs(env: &Env, args: &[Bytes]) -> Vec<Need> {
    let Some(name_arg) = args.get(2) else {
        return Vec::new();
    };
    let key = env.key(name_arg);
    match upper(&args[1]).as_str() {
        "STREAM" if args.len() > 3 => vec![Need::All(key)],
        "STREAM" => vec![
            Need::Record(key.clone()),
            span(&key, (entries_start(), entries_end()), 1, false),
            span(&key, (entries_start(), entries_end()), 1, true),
            span(&key, groups_span(), 0, false),
        ],
        "GROUPS" => vec![Need::Record(key.clone()), span(&key, groups_span(), 0, false)],
        "CONSUMERS" => match args.get(3) {
            Some(group) => vec![
                Need::Fields(key.clone(), vec![group_field(group)]),
                span(&key, consumers_span(group), 0, false),
                span(&key, pending_span(group), 0, false),
            ],
            None => vec![Need::Record(key)],
        },
        _ => vec![Need::Record(key)],
    }
}

// ---------------------------------------------------------------------------------
// Blocking reads.

/// Whether the request is an XREAD or XREADGROUP that may wait (BLOCK, outside MULTI).
pub fn blocks(name: &str, args: &[Bytes]) -> bool {
    matches!(name, "xread" | "xreadgroup") && parse_read(name, args).is_ok_and(|options| options.block.is_some())
}

/// How long a blocking read waits at most (`None`: for ever), and the internal keys of
/// its streams (a write to any of them wakes it).
pub fn block_plan(env: &Env, name: &str, args: &[Bytes]) -> Option<(Option<std::time::Duration>, Vec<Bytes>)> {
    let options = parse_read(name, args).ok()?;
    let timeout = options.block.filter(|ms| *ms > 0).map(std::time::Duration::from_millis);
    Some((timeout, options.keys.iter().map(|key| env.key(key)).collect()))
}

/// XREAD's arguments with each `$` replaced by its stream's last id in `found` (the
/// streams' records, read when the command arrived), so the waits that follow look
/// for entries added after that.
pub fn resolve_last_ids(args: &[Bytes], found: &[Stored]) -> Vec<Bytes> {
    let mut resolved = args.to_vec();
    let streams = found.len();
    let first_id = resolved.len().saturating_sub(streams);
    for (index, stored) in found.iter().enumerate() {
        let at = first_id + index;
        if resolved.get(at).is_some_and(|id| &id[..] == b"$") {
            match &stored.record {
                Some(record) if record.kind == Kind::Stream => {
                    resolved[at] = Bytes::from(Meta::of(record).last.to_string());
                }
                None => resolved[at] = Bytes::from_static(b"0-0"),
                // Another type: the read reports WRONGTYPE.
                Some(_) => {}
            }
        }
    }
    resolved
}

// ---------------------------------------------------------------------------------
// The commands, each in the file of its part.

pub fn run(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Reply {
    outcome(snapshot, env, name, args).unwrap_or_else(|error| error)
}

fn outcome(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Result<Reply, Reply> {
    match name {
        "xread" => return entries::xread(snapshot, env, args),
        "xreadgroup" => return groups::xreadgroup(snapshot, env, args),
        "xgroup" => return groups::xgroup(snapshot, env, args),
        "xinfo" => return info::xinfo(snapshot, env, args),
        _ => {}
    }
    let key = env.key(&args[1]);
    match name {
        "xadd" => entries::xadd(snapshot, &key, args),
        "xlen" => Ok(Reply::Integer(
            stream(snapshot, &key)?.map_or(0, |meta| meta.length as i64),
        )),
        "xrange" | "xrevrange" => entries::xrange(snapshot, &key, args, name == "xrevrange"),
        "xdel" => entries::xdel(snapshot, &key, args),
        "xtrim" => entries::xtrim(snapshot, &key, args),
        "xack" => groups::xack(snapshot, &key, args),
        "xpending" => groups::xpending(snapshot, &key, args),
        "xclaim" => groups::xclaim(snapshot, &key, args),
        "xautoclaim" => groups::xautoclaim(snapshot, &key, args),
        _ => unreachable!("{name} is not a stream command"),
    }
}
