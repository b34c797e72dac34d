//! Failure detection and load spreading by gossip: SWIM (the `foca` crate, a state
//! machine) driven by one task over a UDP socket on the peer port's number.
//!
//! Each member runs one foca instance whose identity is its member id, its gossip
//! address and its incarnation (raised at every start, so a restarted member is never
//! taken for the one declared down before). Members are introduced by the membership the
//! meta range replicates ([`Gossip::introduce`]); from then on foca probes them, spreads
//! suspicion and declares the unresponsive down, with no central heartbeat. Every member
//! also spreads its load (ranges, leaders, bytes) as a custom broadcast that a newer
//! report of the same member replaces. Every packet starts with the cluster id: packets
//! of another cluster are dropped unread.
//!
//! Gossip informs (`/v1/nodes`, placement's view of who is up); it never decides a
//! write's fate: Raft does.

use foca::{BroadcastHandler, Foca, Identity, Invalidates, OwnedNotification, PostcardCodec, Timer};
use rand_foca::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Commands (introductions, load reports) queued for the gossip task.
const COMMANDS_MAX: usize = 256;
/// Timer events waiting for the gossip task.
const TIMERS_MAX: usize = 4096;
/// Largest datagram read.
const DATAGRAM_MAX: usize = 64 * 1024;

/// A member as gossip knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub addr: SocketAddr,
    /// The member's incarnation when it took this identity.
    pub incarnation: u64,
}

impl Identity for Member {
    type Addr = u64;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            incarnation: self.incarnation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> u64 {
        self.id
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// What a member says of its load.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    pub member: u64,
    /// Newer reports of a member replace older ones (milliseconds of its clock).
    pub version: u64,
    pub ranges: u32,
    pub leaders: u32,
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Alive,
    Suspect,
    Down,
    /// Never heard of by gossip yet.
    Unknown,
}

/// One member in [`Gossip::members`].
#[derive(Clone, Debug)]
pub struct Seen {
    pub addr: SocketAddr,
    pub liveness: Liveness,
}

#[derive(Default)]
struct View {
    members: HashMap<u64, Seen>,
    loads: HashMap<u64, Load>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LoadKey {
    member: u64,
    version: u64,
}

impl Invalidates for LoadKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.member == other.member && self.version >= other.version
    }
}

struct LoadHandler {
    view: Arc<RwLock<View>>,
}

#[derive(Debug, thiserror::Error)]
#[error("bad load report: {0}")]
struct BadLoad(String);

impl BroadcastHandler<Member> for LoadHandler {
    type Key = LoadKey;
    type Error = BadLoad;

    fn receive_item(&mut self, data: &[u8], _sender: Option<&Member>) -> Result<Option<LoadKey>, BadLoad> {
        let load: Load = postcard::from_bytes(data).map_err(|error| BadLoad(error.to_string()))?;
        let mut view = self.view.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let newer = view
            .loads
            .get(&load.member)
            .is_none_or(|known| known.version < load.version);
        if !newer {
            return Ok(None);
        }
        let key = LoadKey {
            member: load.member,
            version: load.version,
        };
        view.loads.insert(load.member, load);
        Ok(Some(key))
    }
}

enum Command {
    Introduce(Vec<Member>),
    Load(Load),
}

/// This member's gossip: what it has learned, and the way to tell it more.
pub struct Gossip {
    me: u64,
    view: Arc<RwLock<View>>,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gossip {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Gossip {
    /// Starts gossiping as `me` on `socket` (bound by the caller before anything else of
    /// the node starts, so a failed bind leaves nothing running). `probe_period` paces probes;
    /// a member that stops answering is suspected within about two periods and declared
    /// down a few periods later (foca's LAN settings, scaled).
    pub fn start(me: Member, socket: UdpSocket, cluster_id: u64, cluster_size: u32, probe_period: Duration) -> Self {
        let view = Arc::new(RwLock::new(View::default()));
        let mut config = foca::Config::new_lan(NonZeroU32::new(cluster_size.max(3)).unwrap_or(NonZeroU32::MIN));
        let scale = probe_period.as_secs_f64() / config.probe_period.as_secs_f64();
        config.probe_period = probe_period;
        config.probe_rtt = config.probe_rtt.mul_f64(scale);
        config.suspect_to_down_after = config.suspect_to_down_after.mul_f64(scale);
        if let Some(gossip) = config.periodic_gossip.as_mut() {
            gossip.frequency = gossip.frequency.mul_f64(scale);
        }
        // Down members are tried again now and then: a member back from a partition
        // rejoins without waiting for a restart.
        if let Some(announce) = config.periodic_announce_to_down_members.as_mut() {
            announce.frequency = probe_period * 10;
        }
        if let Some(announce) = config.periodic_announce.as_mut() {
            announce.frequency = probe_period * 10;
        }
        let rng = rand_foca::rngs::SmallRng::seed_from_u64(me.id ^ me.incarnation);
        let foca = Foca::with_custom_broadcast(
            me.clone(),
            config,
            rng,
            PostcardCodec,
            LoadHandler { view: view.clone() },
        );
        view.write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .members
            .insert(
                me.id,
                Seen {
                    addr: me.addr,
                    liveness: Liveness::Alive,
                },
            );
        let (commands, inbox) = mpsc::channel(COMMANDS_MAX);
        let task = tokio::spawn(run(foca, socket, cluster_id, inbox, view.clone(), me.id));
        Self {
            me: me.id,
            view,
            commands,
            task,
        }
    }

    /// Stops gossiping and lets go of the socket, whoever still holds this value (a
    /// connection task of a stopped run may): the next run binds the port again.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Members gossip should know of (from the replicated membership); announcing
    /// ourselves to those it has not heard of brings them in.
    pub fn introduce(&self, members: Vec<Member>) {
        let _ = self.commands.try_send(Command::Introduce(members));
    }

    /// Spreads this member's load.
    pub fn publish_load(&self, load: Load) {
        let _ = self.commands.try_send(Command::Load(load));
    }

    /// How gossip sees `member`, and its last load report.
    pub fn member(&self, member: u64) -> (Option<Seen>, Option<Load>) {
        let view = self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        (view.members.get(&member).cloned(), view.loads.get(&member).cloned())
    }

    pub fn me(&self) -> u64 {
        self.me
    }
}

type Machine = Foca<Member, PostcardCodec, rand_foca::rngs::SmallRng, LoadHandler>;

async fn run(
    mut foca: Machine,
    socket: UdpSocket,
    cluster_id: u64,
    mut inbox: mpsc::Receiver<Command>,
    view: Arc<RwLock<View>>,
    me: u64,
) {
    let socket = Arc::new(socket);
    let prefix = cluster_id.to_be_bytes();
    let mut runtime = foca::AccumulatingRuntime::new();
    let (timers, mut timer_events) = mpsc::channel::<Timer<Member>>(TIMERS_MAX);
    let mut buffer = vec![0u8; DATAGRAM_MAX];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buffer) => {
                let Ok((length, _from)) = received else { continue };
                let packet = &buffer[..length];
                if packet.len() < prefix.len() || packet[..prefix.len()] != prefix {
                    metrics::counter!("shoal_gossip_packets_refused_total").increment(1);
                    continue;
                }
                if let Err(error) = foca.handle_data(&packet[prefix.len()..], &mut runtime) {
                    metrics::counter!("shoal_gossip_packets_refused_total").increment(1);
                    tracing::debug!(%error, "dropped a gossip packet");
                }
            }
            Some(event) = timer_events.recv() => {
                if let Err(error) = foca.handle_timer(event, &mut runtime) {
                    tracing::debug!(%error, "gossip timer");
                }
            }
            command = inbox.recv() => match command {
                None => return,
                Some(Command::Introduce(members)) => {
                    let known: Vec<u64> = foca.iter_membership_state().map(|member| member.id().id).collect();
                    for member in members {
                        if member.id != me && !known.contains(&member.id) {
                            if let Err(error) = foca.announce(member, &mut runtime) {
                                tracing::debug!(%error, "gossip announce");
                            }
                        }
                    }
                }
                Some(Command::Load(load)) => {
                    match postcard::to_allocvec(&load) {
                        Ok(bytes) => {
                            if let Err(error) = foca.add_broadcast(&bytes) {
                                tracing::debug!(%error, "gossip load report");
                            }
                        }
                        Err(error) => tracing::warn!(%error, "encoding a load report"),
                    }
                }
            },
        }
        while let Some((to, data)) = runtime.to_send() {
            let mut packet = Vec::with_capacity(prefix.len() + data.len());
            packet.extend_from_slice(&prefix);
            packet.extend_from_slice(&data);
            // Datagrams are best effort: a full socket buffer loses one, as the network may.
            let _ = socket.try_send_to(&packet, to.addr);
        }
        while let Some((after, event)) = runtime.to_schedule() {
            let timers = timers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = timers.send(event).await;
            });
        }
        while let Some(notification) = runtime.to_notify() {
            if let OwnedNotification::MemberUp(member) | OwnedNotification::MemberDown(member) = &notification {
                let up = matches!(notification, OwnedNotification::MemberUp(_));
                tracing::info!(member = format!("{:x}", member.id), up, "gossip");
            }
        }
        // Suspicion raises no notification: the view copies every state after each event.
        let mut view = view.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for member in foca.iter_membership_state() {
            let liveness = match member.state() {
                foca::State::Alive => Liveness::Alive,
                foca::State::Suspect => Liveness::Suspect,
                foca::State::Down => Liveness::Down,
            };
            view.members.insert(
                member.id().id,
                Seen {
                    addr: member.id().addr,
                    liveness,
                },
            );
        }
    }
}
