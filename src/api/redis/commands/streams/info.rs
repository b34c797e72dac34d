//! XINFO STREAM, GROUPS and CONSUMERS: figures read from what the stream stores.

use super::super::{integer, upper, Env};
use super::stored::*;
use crate::api::redis::resp::Reply;
use crate::api::redis::snapshot::{Snapshot, Unread};
use bytes::Bytes;
use std::collections::BTreeMap;

/// Entries (and pending entries) XINFO STREAM FULL lists by default.
pub(super) const INFO_FULL_COUNT: usize = 10;
/// Entries a stream's record counts per radix-tree key in XINFO's figures (Redis packs
/// up to 100 entries in one listpack node).
pub(super) const ENTRIES_PER_NODE: u64 = 100;

/// Plausible radix-tree figures for XINFO: Redis packs up to 100 entries per node.
pub(super) fn tree_figures(meta: &Meta) -> (i64, i64) {
    let keys = meta.length.div_ceil(ENTRIES_PER_NODE) as i64;
    (keys, keys + 1)
}

pub(super) fn meta_pairs(meta: &Meta) -> Vec<(Reply, Reply)> {
    let (keys, nodes) = tree_figures(meta);
    vec![
        (Reply::bulk("length"), Reply::Integer(meta.length as i64)),
        (Reply::bulk("radix-tree-keys"), Reply::Integer(keys)),
        (Reply::bulk("radix-tree-nodes"), Reply::Integer(nodes)),
        (Reply::bulk("last-generated-id"), meta.last.reply()),
        (Reply::bulk("max-deleted-entry-id"), meta.max_deleted.reply()),
        (Reply::bulk("entries-added"), Reply::Integer(meta.added as i64)),
        (Reply::bulk("recorded-first-entry-id"), meta.first.reply()),
    ]
}

pub(super) fn optional_integer(value: Option<i64>) -> Reply {
    value.map_or(Reply::Null, Reply::Integer)
}

/// Every group of the stream: (name, group).
pub(super) fn groups(snapshot: &mut Snapshot, key: &Bytes) -> Result<Vec<(Bytes, Group)>, Unread> {
    let (start, end) = groups_span();
    Ok(snapshot
        .elements_between(key, &start, &end, 0, false)?
        .into_iter()
        .filter_map(|(field, value)| Some((field.slice(1..), Group::decode(&value)?)))
        .collect())
}

pub(super) fn xinfo(snapshot: &mut Snapshot, env: &Env, args: &[Bytes]) -> Result<Reply, Reply> {
    let sub = upper(&args[1]);
    let arity: i64 = match sub.as_str() {
        "STREAM" => -3,
        "GROUPS" => 3,
        "CONSUMERS" => 4,
        "HELP" => 2,
        _ => {
            return Err(Reply::error(format!(
                "ERR unknown subcommand '{}'. Try XINFO HELP.",
                String::from_utf8_lossy(&args[1])
            )))
        }
    };
    let count = args.len() as i64;
    if (arity > 0 && count != arity) || (arity < 0 && count < -arity) {
        return Err(Reply::error(format!(
            "ERR wrong number of arguments for 'xinfo|{}' command",
            sub.to_ascii_lowercase()
        )));
    }
    if sub == "HELP" {
        return Ok(help(&[
            "XINFO <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "CONSUMERS <key> <groupname>",
            "    Show consumers of <groupname>.",
            "GROUPS <key>",
            "    Show the stream consumer groups.",
            "STREAM <key> [FULL [COUNT <count>]",
            "    Show information about the stream.",
            "HELP",
            "    Print this help.",
        ]));
    }
    let key = env.key(&args[2]);
    let mut full = None;
    if sub == "STREAM" && args.len() > 3 {
        if upper(&args[3]) != "FULL" {
            return Err(subcommand_error("XINFO", &args[1]));
        }
        let mut count = INFO_FULL_COUNT;
        if args.len() > 4 {
            if args.len() != 6 || upper(&args[4]) != "COUNT" {
                return Err(subcommand_error("XINFO", &args[1]));
            }
            let value = integer(&args[5])?;
            count = if value < 0 { INFO_FULL_COUNT } else { value as usize };
        }
        full = Some(count);
    }
    let Some(meta) = stream(snapshot, &key)? else {
        return Err(Reply::error("ERR no such key"));
    };
    let now = snapshot.now();
    match sub.as_str() {
        "STREAM" => {
            let mut pairs = meta_pairs(&meta);
            let all_groups = groups(snapshot, &key)?;
            let Some(count) = full else {
                let first = entries(snapshot, &key, StreamId::MIN, StreamId::MAX, 1, false)?;
                let last = entries(snapshot, &key, StreamId::MIN, StreamId::MAX, 1, true)?;
                let one = |found: Vec<(StreamId, Vec<Bytes>)>| {
                    found
                        .into_iter()
                        .next()
                        .map_or(Reply::Null, |(id, fields)| entry_reply(id, Some(fields)))
                };
                pairs.push((Reply::bulk("groups"), Reply::Integer(all_groups.len() as i64)));
                pairs.push((Reply::bulk("first-entry"), one(first)));
                pairs.push((Reply::bulk("last-entry"), one(last)));
                return Ok(Reply::Map(pairs));
            };
            let listed = entries(snapshot, &key, StreamId::MIN, StreamId::MAX, count, false)?;
            pairs.push((Reply::bulk("entries"), entries_reply(listed)));
            let mut group_replies = Vec::with_capacity(all_groups.len());
            for (name, state) in all_groups {
                let (start, end) = pending_span(&name);
                let pending = snapshot.elements_between(&key, &start, &end, 0, false)?;
                let decoded: Vec<(StreamId, Nack)> = pending
                    .iter()
                    .filter_map(|(field, value)| Some((trailing_id(field)?, Nack::decode(value)?)))
                    .collect();
                let limited = |items: Vec<Reply>| {
                    Reply::Array(if count == 0 {
                        items
                    } else {
                        items.into_iter().take(count).collect()
                    })
                };
                let group_pending = limited(
                    decoded
                        .iter()
                        .map(|(id, pending)| {
                            Reply::Array(vec![
                                id.reply(),
                                Reply::Bulk(pending.consumer.clone()),
                                Reply::Integer(pending.delivered_at),
                                Reply::Integer(pending.deliveries as i64),
                            ])
                        })
                        .collect(),
                );
                let (start, end) = consumers_span(&name);
                let members = snapshot.elements_between(&key, &start, &end, 0, false)?;
                let scope_length = group_scope(CONSUMER, &name).len();
                let mut consumer_replies = Vec::with_capacity(members.len());
                for (field, value) in members {
                    let Some(state) = Consumer::decode(&value) else {
                        continue;
                    };
                    let member = field.slice(scope_length..);
                    let owned: Vec<&(StreamId, Nack)> = decoded
                        .iter()
                        .filter(|(_, pending)| pending.consumer == member)
                        .collect();
                    consumer_replies.push(Reply::Map(vec![
                        (Reply::bulk("name"), Reply::Bulk(member.clone())),
                        (Reply::bulk("seen-time"), Reply::Integer(state.seen)),
                        (Reply::bulk("active-time"), Reply::Integer(state.active)),
                        (Reply::bulk("pel-count"), Reply::Integer(owned.len() as i64)),
                        (
                            Reply::bulk("pending"),
                            limited(
                                owned
                                    .iter()
                                    .map(|(id, pending)| {
                                        Reply::Array(vec![
                                            id.reply(),
                                            Reply::Integer(pending.delivered_at),
                                            Reply::Integer(pending.deliveries as i64),
                                        ])
                                    })
                                    .collect(),
                            ),
                        ),
                    ]));
                }
                group_replies.push(Reply::Map(vec![
                    (Reply::bulk("name"), Reply::Bulk(name)),
                    (Reply::bulk("last-delivered-id"), state.last.reply()),
                    (Reply::bulk("entries-read"), optional_integer(state.entries_read)),
                    (Reply::bulk("lag"), optional_integer(meta.lag(&state))),
                    (Reply::bulk("pel-count"), Reply::Integer(decoded.len() as i64)),
                    (Reply::bulk("pending"), group_pending),
                    (Reply::bulk("consumers"), Reply::Array(consumer_replies)),
                ]));
            }
            pairs.push((Reply::bulk("groups"), Reply::Array(group_replies)));
            Ok(Reply::Map(pairs))
        }
        "GROUPS" => {
            let mut replies = Vec::new();
            for (name, state) in groups(snapshot, &key)? {
                let (start, end) = consumers_span(&name);
                let members = snapshot.elements_between(&key, &start, &end, 0, false)?.len();
                let (start, end) = pending_span(&name);
                let pending = snapshot.elements_between(&key, &start, &end, 0, false)?.len();
                replies.push(Reply::Map(vec![
                    (Reply::bulk("name"), Reply::Bulk(name)),
                    (Reply::bulk("consumers"), Reply::Integer(members as i64)),
                    (Reply::bulk("pending"), Reply::Integer(pending as i64)),
                    (Reply::bulk("last-delivered-id"), state.last.reply()),
                    (Reply::bulk("entries-read"), optional_integer(state.entries_read)),
                    (Reply::bulk("lag"), optional_integer(meta.lag(&state))),
                ]));
            }
            Ok(Reply::Array(replies))
        }
        "CONSUMERS" => {
            let group_name = &args[3];
            if group(snapshot, &key, group_name)?.is_none() {
                return Err(no_such_group(&args[2], group_name));
            }
            let (start, end) = pending_span(group_name);
            let mut owners: BTreeMap<Bytes, i64> = BTreeMap::new();
            for (_, value) in snapshot.elements_between(&key, &start, &end, 0, false)? {
                if let Some(pending) = Nack::decode(&value) {
                    *owners.entry(pending.consumer).or_default() += 1;
                }
            }
            let (start, end) = consumers_span(group_name);
            let scope_length = group_scope(CONSUMER, group_name).len();
            let mut replies = Vec::new();
            for (field, value) in snapshot.elements_between(&key, &start, &end, 0, false)? {
                let Some(state) = Consumer::decode(&value) else {
                    continue;
                };
                let member = field.slice(scope_length..);
                let pending = owners.get(&member).copied().unwrap_or(0);
                let inactive = if state.active < 0 {
                    -1
                } else {
                    (now - state.active).max(0)
                };
                replies.push(Reply::Map(vec![
                    (Reply::bulk("name"), Reply::Bulk(member)),
                    (Reply::bulk("pending"), Reply::Integer(pending)),
                    (Reply::bulk("idle"), Reply::Integer((now - state.seen).max(0))),
                    (Reply::bulk("inactive"), Reply::Integer(inactive)),
                ]));
            }
            Ok(Reply::Array(replies))
        }
        _ => unreachable!("XINFO {sub} was checked above"),
    }
}
