//! What a member tells operators about its ranges: `GET /v1/ranges` (on the metrics
//! listener and on the client port) and the per-node gauges of `/metrics`.

use crate::range::FIRST_DATA_RANGE_ID;
use crate::router::Router;
use std::sync::atomic::Ordering;

/// One object per data range this member holds: `id`, `start_key` and `end_key`
/// (base64 of the internal key: a namespace byte, 0x01 for etcd, then the client's key;
/// empty = unbounded), `epoch`, `replicas` (member ids in hex, as etcdctl prints them;
/// `learners` names those that do not vote),
/// `leader` (hex, "0" when none is known), `keys` and `bytes` (live keys and their
/// bytes, approximate right after a split).
pub fn describe(router: &Router) -> serde_json::Value {
    use base64::Engine as _;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let ranges = router
        .registry()
        .data_ranges()
        .into_iter()
        .map(|range| {
            let descriptor = &range.descriptor;
            let status = &range.view.status;
            serde_json::json!({
                "id": descriptor.id,
                "start_key": encode(&descriptor.start_key),
                "end_key": encode(&descriptor.end_key),
                "epoch": descriptor.epoch,
                "replicas": descriptor.replicas.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>(),
                "learners": descriptor.learners.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>(),
                "leader": format!("{:x}", status.leader()),
                "keys": status.live_keys.load(Ordering::Acquire),
                "bytes": status.live_bytes.load(Ordering::Acquire),
            })
        })
        .collect();
    serde_json::Value::Array(ranges)
}

/// Sets the gauges that describe this member's ranges, just before `/metrics` renders:
/// `shoal_ranges` (data ranges held), `shoal_range_leaders` (data ranges led),
/// `shoal_ranges_without_leader`, `shoal_ranges_under_replicated` (ranges it leads
/// where a voting member holds no voting replica yet), and etcd's `etcd_server_is_leader` /
/// `etcd_server_has_leader` / `shoal_raft_term` for the first data range (the range
/// etcd's Status and MoveLeader speak for), so each stays one value per member.
pub fn set_gauges(router: &Router) {
    let me = router.node_id();
    let (mut held, mut led, mut leaderless, mut under) = (0u64, 0u64, 0u64, 0u64);
    let membership = router.registry().membership().borrow().clone();
    let voters: Vec<u64> = membership
        .members
        .iter()
        .filter(|member| !member.is_learner)
        .map(|member| member.id)
        .collect();
    for range in router.registry().data_ranges() {
        held += 1;
        match range.view.status.leader() {
            0 => leaderless += 1,
            leader if leader == me => {
                led += 1;
                let descriptor = &range.descriptor;
                let voting = |id: &u64| descriptor.replicas.contains(id) && !descriptor.learners.contains(id);
                if membership.complete && !voters.iter().all(voting) {
                    under += 1;
                }
            }
            _ => {}
        }
    }
    metrics::gauge!("shoal_ranges_under_replicated").set(under as f64);
    metrics::gauge!("shoal_ranges").set(held as f64);
    metrics::gauge!("shoal_range_leaders").set(led as f64);
    metrics::gauge!("shoal_ranges_without_leader").set(leaderless as f64);
    let first = router.status(FIRST_DATA_RANGE_ID);
    let leader = first.leader();
    metrics::gauge!("etcd_server_is_leader").set(if leader == me { 1.0 } else { 0.0 });
    metrics::gauge!("etcd_server_has_leader").set(if leader != 0 { 1.0 } else { 0.0 });
    metrics::gauge!("shoal_raft_term").set(first.term.load(Ordering::Acquire) as f64);
}
