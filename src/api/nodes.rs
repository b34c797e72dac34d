//! What a member tells operators about the cluster's nodes: `GET /v1/nodes` (on the
//! metrics listener and the client port) returns one object per member of the
//! replicated membership: `id` (hex, as etcdctl prints it), `name`, `peer_urls`,
//! `client_urls`, `learner`, `gossip` (`addr`, `state`: alive, suspect, down or unknown,
//! as this member's gossip sees it) and `load` (`ranges`, `leaders`, `bytes`: the
//! member's own latest report, spread by gossip; null until one arrived).

use crate::gossip::{Gossip, Liveness, Load};
use crate::router::Router;
use std::sync::atomic::Ordering;

/// This member's load, as it reports it.
pub fn own_load(router: &Router, version: u64) -> Load {
    let me = router.node_id();
    let mut load = Load {
        member: me,
        version,
        ..Default::default()
    };
    for range in router.registry().data_ranges() {
        load.ranges += 1;
        if range.view.status.leader() == me {
            load.leaders += 1;
        }
        load.bytes += range.view.status.live_bytes.load(Ordering::Acquire);
    }
    load
}

pub fn describe(
    router: &Router,
    gossip: &Gossip,
    initial: &[crate::proto::shoal::state::MemberInfo],
) -> serde_json::Value {
    let record = router.registry().membership().borrow().clone();
    let members = crate::range::membership::current(&record, initial);
    let nodes = members
        .iter()
        .map(|member| {
            let (seen, load) = gossip.member(member.id);
            let load = if member.id == gossip.me() {
                Some(own_load(router, 0))
            } else {
                load
            };
            serde_json::json!({
                "id": format!("{:x}", member.id),
                "name": member.name,
                "peer_urls": member.peer_urls,
                "client_urls": member.client_urls,
                "learner": member.is_learner,
                "gossip": {
                    "addr": seen.as_ref().map(|seen| seen.addr.to_string()),
                    "state": seen.map_or(Liveness::Unknown, |seen| seen.liveness),
                },
                "load": load.map(|load| serde_json::json!({
                    "ranges": load.ranges,
                    "leaders": load.leaders,
                    "bytes": load.bytes,
                })),
            })
        })
        .collect();
    serde_json::Value::Array(nodes)
}

/// `shoal_members{state}`: the members by what this member's gossip says of them.
pub fn set_gauges(router: &Router, gossip: &Gossip, initial: &[crate::proto::shoal::state::MemberInfo]) {
    let record = router.registry().membership().borrow().clone();
    let mut counts = [0u64; 4];
    for member in crate::range::membership::current(&record, initial) {
        let state = gossip
            .member(member.id)
            .0
            .map_or(Liveness::Unknown, |seen| seen.liveness);
        counts[state as usize] += 1;
    }
    for (state, name) in [
        (Liveness::Alive, "alive"),
        (Liveness::Suspect, "suspect"),
        (Liveness::Down, "down"),
        (Liveness::Unknown, "unknown"),
    ] {
        metrics::gauge!("shoal_members", "state" => name).set(counts[state as usize] as f64);
    }
}
