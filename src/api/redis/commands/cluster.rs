//! CLUSTER SLOTS, SHARDS, NODES, KEYSLOT, MYID and INFO, answered from the range map:
//! the hash slots of database 0 each data range holds, its leader as master and its
//! other replicas as replicas, at the Redis addresses the members published. A
//! cluster-aware client can send each key to its range's leader; every node takes every
//! key anyway, so a stale map costs a hop, never an error. A slot whose keys a split
//! divided is reported with the range holding its first key.

use super::{upper, Outcome};
use crate::api::redis::keys::{self, SLOTS};
use crate::api::redis::resp::Reply;
use crate::api::redis::RedisContext;
use crate::proto::shoal::state::MemberInfo;
use crate::range::META_RANGE_ID;
use crate::storage::keys::namespace::REDIS;
use bytes::Bytes;
use std::fmt::Write as _;

/// One data range's part of database 0: its slots, leader and other replicas.
struct Shard {
    first: u16,
    last: u16,
    leader: u64,
    replicas: Vec<u64>,
}

/// Redis node ids are 40 hex characters: the member id, zero-padded.
fn node_id(member: u64) -> String {
    format!("{member:040x}")
}

/// The slot an internal key falls in, for a range bound: (slot, whether the bound is
/// inside the slot rather than at its start).
fn bound_slot(key: &[u8]) -> (u16, bool) {
    let high = key.get(2).copied().unwrap_or(0);
    let low = key.get(3).copied().unwrap_or(0);
    (u16::from_be_bytes([high, low]).min(SLOTS - 1), key.len() > 4)
}

/// The slots of database 0 in `[start, end)` (an empty end: unbounded).
fn slots_of(start: &[u8], end: &[u8]) -> Option<(u16, u16)> {
    let (db_start, db_end) = ([REDIS, 0], [REDIS, 1]);
    if (!end.is_empty() && end <= &db_start[..]) || start >= &db_end[..] {
        return None;
    }
    let first = if start <= &db_start[..] {
        0
    } else {
        let (slot, inside) = bound_slot(start);
        // A slot split by a bound belongs to the range holding its first key.
        if inside {
            slot.checked_add(1)?
        } else {
            slot
        }
    };
    let last = if end.is_empty() || end >= &db_end[..] {
        SLOTS - 1
    } else {
        let (slot, inside) = bound_slot(end);
        if inside {
            slot
        } else {
            slot.checked_sub(1)?
        }
    };
    (first <= last && first < SLOTS).then_some((first, last))
}

fn shards(context: &RedisContext) -> Vec<Shard> {
    let mut out: Vec<Shard> = context
        .router
        .registry()
        .data_ranges()
        .into_iter()
        .filter_map(|range| {
            let (first, last) = slots_of(&range.descriptor.start_key, &range.descriptor.end_key)?;
            let leader = range.view.status.leader();
            let replicas = range
                .descriptor
                .replicas
                .iter()
                .copied()
                .filter(|replica| *replica != leader)
                .collect();
            Some(Shard {
                first,
                last,
                leader,
                replicas,
            })
        })
        .collect();
    out.sort_by_key(|shard| shard.first);
    out
}

/// A member's Redis address split into host and port.
fn address(members: &[MemberInfo], id: u64) -> Option<(String, u16)> {
    let member = members.iter().find(|member| member.id == id)?;
    let (host, port) = member.redis_addr.rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_string(), port.parse().ok()?))
}

pub async fn run(context: &RedisContext, args: &[Bytes]) -> Outcome {
    let sub = upper(&args[1]);
    if sub == "KEYSLOT" && args.len() == 3 {
        return Ok(Reply::Integer(keys::slot(&args[2]) as i64));
    }
    if sub == "MYID" && args.len() == 2 {
        return Ok(Reply::bulk(node_id(context.member_id)));
    }
    let members = context
        .router
        .pinned(META_RANGE_ID)
        .await
        .map_err(|error| Reply::error(format!("ERR shoal: {error}")))?
        .members()
        .map_err(|error| Reply::error(format!("ERR shoal: {error}")))?;
    let shards = shards(context);
    let node = |id: u64| address(&members, id).map(|(host, port)| (id, host, port));
    match (sub.as_str(), args.len()) {
        ("SLOTS", 2) => Ok(Reply::Array(
            shards
                .iter()
                .filter_map(|shard| {
                    let (_, host, port) = node(shard.leader)?;
                    let mut entry = vec![
                        Reply::Integer(shard.first as i64),
                        Reply::Integer(shard.last as i64),
                        Reply::Array(vec![
                            Reply::bulk(host),
                            Reply::Integer(port as i64),
                            Reply::bulk(node_id(shard.leader)),
                        ]),
                    ];
                    for (id, host, port) in shard.replicas.iter().filter_map(|id| node(*id)) {
                        entry.push(Reply::Array(vec![
                            Reply::bulk(host),
                            Reply::Integer(port as i64),
                            Reply::bulk(node_id(id)),
                        ]));
                    }
                    Some(Reply::Array(entry))
                })
                .collect(),
        )),
        ("SHARDS", 2) => Ok(Reply::Array(
            shards
                .iter()
                .map(|shard| {
                    let nodes = std::iter::once((shard.leader, "master"))
                        .chain(shard.replicas.iter().map(|id| (*id, "replica")))
                        .filter_map(|(id, role)| {
                            let (_, host, port) = node(id)?;
                            Some(Reply::Map(vec![
                                (Reply::bulk("id"), Reply::bulk(node_id(id))),
                                (Reply::bulk("port"), Reply::Integer(port as i64)),
                                (Reply::bulk("ip"), Reply::bulk(host.clone())),
                                (Reply::bulk("endpoint"), Reply::bulk(host)),
                                (Reply::bulk("role"), Reply::bulk(role)),
                                (Reply::bulk("replication-offset"), Reply::Integer(0)),
                                (Reply::bulk("health"), Reply::bulk("online")),
                            ]))
                        })
                        .collect();
                    Reply::Map(vec![
                        (
                            Reply::bulk("slots"),
                            Reply::Array(vec![
                                Reply::Integer(shard.first as i64),
                                Reply::Integer(shard.last as i64),
                            ]),
                        ),
                        (Reply::bulk("nodes"), Reply::Array(nodes)),
                    ])
                })
                .collect(),
        )),
        ("NODES", 2) => {
            let mut out = String::new();
            for member in &members {
                let Some((host, port)) = address(&members, member.id) else {
                    continue;
                };
                let led: Vec<String> = shards
                    .iter()
                    .filter(|shard| shard.leader == member.id)
                    .map(|shard| {
                        if shard.first == shard.last {
                            shard.first.to_string()
                        } else {
                            format!("{}-{}", shard.first, shard.last)
                        }
                    })
                    .collect();
                let myself = if member.id == context.member_id { "myself," } else { "" };
                let _ = writeln!(
                    out,
                    "{} {host}:{port}@{} {myself}master - 0 0 1 connected{}{}",
                    node_id(member.id),
                    port as u32 + 10_000,
                    if led.is_empty() { "" } else { " " },
                    led.join(" ")
                );
            }
            Ok(Reply::Verbatim(out))
        }
        ("INFO", 2) => {
            let assigned: u32 = shards.iter().map(|shard| (shard.last - shard.first) as u32 + 1).sum();
            Ok(Reply::Verbatim(format!(
                "cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:{assigned}\r\ncluster_slots_ok:{assigned}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:{}\r\ncluster_size:{}\r\n",
                members.len(),
                members.len(),
            )))
        }
        _ => Err(Reply::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLUSTER HELP.",
            String::from_utf8_lossy(&args[1])
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_to_the_slots_of_database_zero() {
        assert_eq!(slots_of(b"", b""), Some((0, SLOTS - 1)));
        assert_eq!(slots_of(b"\x01abc", &[REDIS, 0, 0x10, 0x00]), Some((0, 0x0fff)));
        assert_eq!(slots_of(&[REDIS, 0, 0x10, 0x00], b""), Some((0x1000, SLOTS - 1)));
        // A bound inside a slot: the slot goes with the range holding its first key.
        assert_eq!(slots_of(b"", &[REDIS, 0, 0x10, 0x00, b'k']), Some((0, 0x1000)));
        assert_eq!(slots_of(&[REDIS, 0, 0x10, 0x00, b'k'], b""), Some((0x1001, SLOTS - 1)));
        assert_eq!(slots_of(b"", b"\x01zzz"), None, "etcd keys only");
        assert_eq!(slots_of(&[REDIS, 1], b""), None, "other databases only");
    }
}
