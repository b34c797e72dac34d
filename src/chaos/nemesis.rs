//! The nemesis: a schedule of faults drawn from a seeded generator (the same seed gives
//! the same faults at the same times), and their injection into a [`Cluster`].
//! Targets named "the leader" are resolved when the fault starts.

use super::cluster::{Cluster, ClusterError};
use crate::proto::etcdserverpb::cluster_client::ClusterClient;
use crate::proto::etcdserverpb::{MemberAddRequest, MemberRemoveRequest};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// kill -9 a random node, restart it when the fault ends.
    Kill,
    /// kill -9 the leader.
    KillLeader,
    /// SIGSTOP a random node, SIGCONT it when the fault ends.
    Pause,
    /// Cut the cluster into a majority and a minority.
    Partition,
    /// Cut the leader off from everyone else.
    IsolateLeader,
    /// Two halves that cannot talk, joined by one node that talks to both.
    Bridge,
    /// kill -9 every node, restart them all.
    RestartAll,
    /// A random node's fsyncs fail (EIO) until the fault ends.
    FsyncError,
    /// A random node's reads fail (EIO) and its writes too (ENOSPC) until the fault ends.
    DiskError,
    /// A new member is added (etcd's MemberAdd) and started empty; when the fault ends
    /// it is removed (MemberRemove), stops by itself and never comes back.
    MemberChurn,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Kill,
        FaultKind::KillLeader,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::IsolateLeader,
        FaultKind::Bridge,
        FaultKind::RestartAll,
        FaultKind::FsyncError,
        FaultKind::DiskError,
        FaultKind::MemberChurn,
    ];
}

/// One fault: when it starts (from the beginning of the run), how long it lasts, and
/// the random choices it needs (drawn up front, so the schedule depends on the seed
/// alone).
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlannedFault {
    pub kind: FaultKind,
    pub start: Duration,
    pub duration: Duration,
    /// For Kill and Pause: the node; for Partition: the minority; for Bridge: the
    /// bridge node first, then one half.
    pub nodes: Vec<usize>,
}

/// Faults from `after` until `until`, with quiet gaps between them.
pub fn schedule(seed: u64, nodes: usize, kinds: &[FaultKind], after: Duration, until: Duration) -> Vec<PlannedFault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut planned = Vec::new();
    let mut at = after;
    if kinds.is_empty() || nodes == 0 {
        return planned;
    }
    loop {
        let duration = Duration::from_millis(rng.gen_range(1_000..4_000));
        if at + duration >= until {
            return planned;
        }
        let kind = kinds[rng.gen_range(0..kinds.len())];
        let mut order: Vec<usize> = (0..nodes).collect();
        order.shuffle(&mut rng);
        let chosen = match kind {
            FaultKind::Kill | FaultKind::Pause | FaultKind::FsyncError | FaultKind::DiskError => vec![order[0]],
            FaultKind::Partition => order[..(nodes - 1) / 2].to_vec(),
            FaultKind::Bridge => {
                // bridge, then the half on one side of it
                let mut chosen = vec![order[0]];
                chosen.extend_from_slice(&order[1..1 + (nodes - 1) / 2]);
                chosen
            }
            FaultKind::KillLeader | FaultKind::IsolateLeader | FaultKind::RestartAll | FaultKind::MemberChurn => {
                Vec::new()
            }
        };
        planned.push(PlannedFault {
            kind,
            start: at,
            duration,
            nodes: chosen,
        });
        at += duration + Duration::from_millis(rng.gen_range(1_000..3_000));
    }
}

/// A fault in progress, to be healed.
pub enum Active {
    Killed(Vec<usize>),
    Paused(usize),
    Partitioned,
    StorageFaults(usize),
    /// A member added by the fault: its node and member id.
    Member(usize, u64),
    Nothing,
}

/// Client URLs of the running members the cluster started with.
fn original_endpoints(cluster: &Cluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .filter(|node| node.is_running() && !node.retired && node.initial_cluster.is_none())
        .map(super::cluster::Node::client_url)
        .collect()
}

fn cluster_client(url: &str) -> Option<ClusterClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    Some(ClusterClient::new(channel))
}

/// Adds a member and starts its node; the members as the add answered them.
async fn add_member(cluster: &mut Cluster) -> Result<(Active, String), ClusterError> {
    let name = format!("n{}", cluster.nodes.len() + 1);
    let index = cluster.add_node(
        &name,
        None,
        vec!["--initial-cluster-state".to_string(), "existing".to_string()],
    )?;
    let url = cluster.peer_url(index);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        for endpoint in original_endpoints(cluster) {
            let Some(mut client) = cluster_client(&endpoint) else {
                continue;
            };
            let request = MemberAddRequest {
                peer_ur_ls: vec![url.clone()],
                is_learner: false,
            };
            match client.member_add(request).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let id = answer.member.map_or(0, |member| member.id);
                    let initial: Vec<String> = answer
                        .members
                        .iter()
                        .flat_map(|member| {
                            let member_name = if member.id == id {
                                name.clone()
                            } else if member.name.is_empty() {
                                format!("m{:x}", member.id)
                            } else {
                                member.name.clone()
                            };
                            member
                                .peer_ur_ls
                                .iter()
                                .map(move |peer| format!("{member_name}={peer}"))
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    cluster.nodes[index].initial_cluster = Some(initial.join(","));
                    cluster.restart(index)?;
                    return Ok((
                        Active::Member(index, id),
                        format!("member add {name} ({id:x}), removed when the fault ends"),
                    ));
                }
                Err(status) => last = status.message().to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cluster.nodes[index].retired = true;
    Ok((Active::Nothing, format!("member add {name}: not added ({last})")))
}

/// Removes the member a fault added and waits for its node to stop by itself.
async fn remove_member(cluster: &mut Cluster, index: usize, id: u64) -> Result<(), ClusterError> {
    if cluster.has_exited(index) {
        cluster.kill(index);
        cluster.nodes[index].retired = true;
        return Err(ClusterError::Io(std::io::Error::other(format!(
            "{}, added as a member, exited before it was removed (see its log)",
            cluster.nodes[index].name
        ))));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut removed = false;
    while !removed && std::time::Instant::now() < deadline {
        for endpoint in original_endpoints(cluster) {
            let Some(mut client) = cluster_client(&endpoint) else {
                continue;
            };
            match client.member_remove(MemberRemoveRequest { id }).await {
                // Not found: an earlier attempt applied although its answer was lost.
                Ok(_) => removed = true,
                Err(status) if status.code() == tonic::Code::NotFound => removed = true,
                Err(_) => continue,
            }
            break;
        }
        if !removed {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    if !removed {
        return Err(ClusterError::Io(std::io::Error::other(format!(
            "member {id:x} ({}) could not be removed within 30 s",
            cluster.nodes[index].name
        ))));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cluster.has_exited(index) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped = cluster.has_exited(index);
    cluster.kill(index);
    cluster.nodes[index].retired = true;
    if !stopped {
        return Err(ClusterError::Io(std::io::Error::other(format!(
            "{} kept running 20 s after its removal",
            cluster.nodes[index].name
        ))));
    }
    Ok(())
}

/// The leader, waiting briefly for the members to agree on one (right after a fault
/// they may not yet).
async fn settled_leader(cluster: &Cluster) -> Option<usize> {
    for _ in 0..20 {
        if let Some(leader) = cluster.leader().await {
            return Some(leader);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Starts `fault`; returns what to undo and a description for the log.
pub async fn inject(cluster: &mut Cluster, fault: &PlannedFault) -> Result<(Active, String), ClusterError> {
    let size = cluster.nodes.len();
    Ok(match fault.kind {
        FaultKind::MemberChurn => add_member(cluster).await?,
        FaultKind::Kill => {
            let node = fault.nodes[0];
            cluster.kill(node);
            (
                Active::Killed(vec![node]),
                format!("kill -9 {}", cluster.nodes[node].name),
            )
        }
        FaultKind::KillLeader => match settled_leader(cluster).await {
            Some(leader) => {
                cluster.kill(leader);
                (
                    Active::Killed(vec![leader]),
                    format!("kill -9 leader {}", cluster.nodes[leader].name),
                )
            }
            None => (Active::Nothing, "kill leader: no leader to kill".to_string()),
        },
        FaultKind::Pause => {
            let node = fault.nodes[0];
            cluster.pause(node);
            (Active::Paused(node), format!("SIGSTOP {}", cluster.nodes[node].name))
        }
        FaultKind::Partition => {
            let minority = fault.nodes.clone();
            let majority: Vec<usize> = (0..size)
                .filter(|node| !cluster.nodes[*node].retired)
                .filter(|node| !minority.contains(node))
                .collect();
            cluster.network.partition(&[minority.clone(), majority.clone()]);
            (
                Active::Partitioned,
                format!(
                    "partition {:?} | {:?}",
                    names(cluster, &minority),
                    names(cluster, &majority)
                ),
            )
        }
        FaultKind::IsolateLeader => match settled_leader(cluster).await {
            Some(leader) => {
                let rest: Vec<usize> = (0..size)
                    .filter(|node| !cluster.nodes[*node].retired)
                    .filter(|node| *node != leader)
                    .collect();
                cluster.network.partition(&[vec![leader], rest]);
                (
                    Active::Partitioned,
                    format!("isolate leader {}", cluster.nodes[leader].name),
                )
            }
            None => (Active::Nothing, "isolate leader: no leader".to_string()),
        },
        FaultKind::Bridge => {
            let bridge = fault.nodes[0];
            let side: Vec<usize> = fault.nodes[1..].to_vec();
            let other: Vec<usize> = (0..size)
                .filter(|node| *node != bridge && !side.contains(node))
                .collect();
            for &a in &side {
                for &b in &other {
                    cluster.network.cut_between(a, b);
                }
            }
            (
                Active::Partitioned,
                format!(
                    "bridge {:?} - {} - {:?}",
                    names(cluster, &side),
                    cluster.nodes[bridge].name,
                    names(cluster, &other)
                ),
            )
        }
        FaultKind::RestartAll => {
            let all: Vec<usize> = (0..size).filter(|node| !cluster.nodes[*node].retired).collect();
            for node in &all {
                cluster.kill(*node);
            }
            (Active::Killed(all), "kill -9 every node".to_string())
        }
        FaultKind::FsyncError | FaultKind::DiskError => {
            let node = fault.nodes[0];
            let (words, what) = match fault.kind {
                FaultKind::FsyncError => ("sync", "fsync fails (EIO)"),
                _ => ("read write", "reads fail (EIO), writes fail (ENOSPC)"),
            };
            cluster.set_storage_faults(node, words).await?;
            (
                Active::StorageFaults(node),
                format!("{}: {what}", cluster.nodes[node].name),
            )
        }
    })
}

/// Ends a fault.
pub async fn heal(cluster: &mut Cluster, active: Active) -> Result<(), ClusterError> {
    match active {
        Active::Member(index, id) => remove_member(cluster, index, id).await?,
        Active::Killed(nodes) => {
            for node in nodes {
                cluster.restart(node)?;
            }
        }
        Active::Paused(node) => cluster.resume(node),
        Active::Partitioned => cluster.network.heal(),
        // The node finds its storage working again by itself; one whose first start met
        // the fault exited (by design: a failing disk at start may be a wrong setting)
        // and is started again.
        Active::StorageFaults(node) => {
            std::fs::write(&cluster.nodes[node].faults, "")?;
            if cluster.has_exited(node) {
                cluster.kill(node);
                cluster.restart(node)?;
            }
        }
        Active::Nothing => {}
    }
    Ok(())
}

fn names(cluster: &Cluster, nodes: &[usize]) -> Vec<String> {
    nodes.iter().map(|node| cluster.nodes[*node].name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_and_another_seed_another() {
        let plan = |seed| {
            schedule(
                seed,
                5,
                &FaultKind::ALL,
                Duration::from_secs(2),
                Duration::from_secs(120),
            )
            .into_iter()
            .map(|fault| (fault.kind, fault.start, fault.duration, fault.nodes))
            .collect::<Vec<_>>()
        };
        assert_eq!(plan(42), plan(42));
        assert_ne!(plan(42), plan(43));
        let faults = plan(42);
        assert!(faults.len() > 10);
        for window in faults.windows(2) {
            assert!(window[0].1 + window[0].2 < window[1].1, "faults do not overlap");
        }
        for (kind, _, _, nodes) in &faults {
            match kind {
                FaultKind::Partition => assert_eq!(nodes.len(), 2, "a minority of 5"),
                FaultKind::Bridge => assert_eq!(nodes.len(), 3, "the bridge and one half"),
                _ => {}
            }
        }
    }
}
