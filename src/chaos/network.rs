//! Network partitions between real processes on one machine, without root: every node
//! dials every other node through its own proxy (one per ordered pair), so the harness
//! can cut any link. A cut link drops its open connections and black-holes new ones
//! (accepted, never answered), as a real partition does; healing drops the black-holed
//! connections so both sides reconnect cleanly.
//!
//! The proxies run on a runtime of their own, so nothing the caller's runtime does (a
//! test blocking on a child process, a busy harness) can stall the cluster's traffic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct Link {
    port: u16,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut and heal: connections of an older generation close.
    generation: watch::Sender<u64>,
    accept_task: tokio::task::JoinHandle<()>,
}

/// Proxies for every ordered pair of nodes.
pub struct Network {
    links: BTreeMap<(usize, usize), Link>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Network {
    /// Starts a proxy for every ordered pair (from, to), forwarding to `peers[to]`. The
    /// proxies never take a port in `reserved` (ports the nodes will bind).
    pub async fn start(peers: &[SocketAddr], reserved: &[u16]) -> std::io::Result<Network> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("chaos-network")
            .enable_all()
            .build()?;
        let mut links = BTreeMap::new();
        for from in 0..peers.len() {
            for (to, target) in peers.iter().enumerate() {
                if from == to {
                    continue;
                }
                let listener = loop {
                    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
                    if !reserved.contains(&listener.local_addr()?.port()) {
                        break listener;
                    }
                };
                listener.set_nonblocking(true)?;
                let port = listener.local_addr()?.port();
                let listener = {
                    let _inside = runtime.enter();
                    TcpListener::from_std(listener)?
                };
                let cut = Arc::new(AtomicBool::new(false));
                let (generation, _) = watch::channel(0u64);
                let accept_task = runtime.spawn(accept(listener, *target, cut.clone(), generation.subscribe()));
                links.insert(
                    (from, to),
                    Link {
                        port,
                        cut,
                        generation,
                        accept_task,
                    },
                );
            }
        }
        Ok(Network {
            links,
            runtime: Some(runtime),
        })
    }

    /// The port node `from` dials to reach node `to`.
    pub fn port(&self, from: usize, to: usize) -> u16 {
        self.links[&(from, to)].port
    }

    fn set(&self, from: usize, to: usize, cut: bool) {
        if let Some(link) = self.links.get(&(from, to)) {
            if link.cut.swap(cut, Ordering::SeqCst) != cut {
                link.generation.send_modify(|generation| *generation += 1);
            }
        }
    }

    /// Cuts every link between different groups (both directions). Nodes in no group
    /// keep all their links.
    pub fn partition(&self, groups: &[Vec<usize>]) {
        let group_of = |node: usize| groups.iter().position(|group| group.contains(&node));
        for &(from, to) in self.links.keys() {
            let cut = matches!((group_of(from), group_of(to)), (Some(a), Some(b)) if a != b);
            self.set(from, to, cut);
        }
    }

    /// Cuts the links between `a` and `b`, both directions.
    pub fn cut_between(&self, a: usize, b: usize) {
        self.set(a, b, true);
        self.set(b, a, true);
    }

    pub fn heal(&self) {
        for &(from, to) in self.links.keys() {
            self.set(from, to, false);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for link in self.links.values() {
            link.accept_task.abort();
            link.generation.send_modify(|generation| *generation += 1);
        }
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime may block; this may run inside another runtime.
            runtime.shutdown_background();
        }
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, cut: Arc<AtomicBool>, generation: watch::Receiver<u64>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            return;
        };
        let _ = inbound.set_nodelay(true);
        let mut generation = generation.clone();
        generation.mark_unchanged();
        if cut.load(Ordering::SeqCst) {
            tokio::spawn(black_hole(inbound, generation));
        } else {
            tokio::spawn(forward(inbound, target, generation));
        }
    }
}

/// Reads and discards until the link changes state.
async fn black_hole(mut inbound: TcpStream, mut generation: watch::Receiver<u64>) {
    let mut sink = [0u8; 4096];
    loop {
        tokio::select! {
            _ = generation.changed() => return,
            read = inbound.read(&mut sink) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

async fn forward(mut inbound: TcpStream, target: SocketAddr, mut generation: watch::Receiver<u64>) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = generation.changed() => {}
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 64];
                    while let Ok(read) = stream.read(&mut buffer).await {
                        if read == 0 || stream.write_all(&buffer[..read]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    async fn round_trip(port: u16) -> bool {
        let attempt = async {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
            stream.write_all(b"ping").await?;
            let mut reply = [0u8; 4];
            stream.read_exact(&mut reply).await?;
            Ok::<_, std::io::Error>(&reply == b"ping")
        };
        matches!(
            tokio::time::timeout(std::time::Duration::from_millis(300), attempt).await,
            Ok(Ok(true))
        )
    }

    #[tokio::test]
    async fn cut_links_black_hole_and_healed_links_carry_traffic_again() {
        let peers = [echo_server().await, echo_server().await, echo_server().await];
        let network = Network::start(&peers, &[]).await.unwrap();
        assert!(round_trip(network.port(0, 1)).await);
        network.partition(&[vec![0], vec![1, 2]]);
        assert!(!round_trip(network.port(0, 1)).await, "0 -> 1 crosses the partition");
        assert!(!round_trip(network.port(1, 0)).await, "1 -> 0 crosses the partition");
        assert!(round_trip(network.port(1, 2)).await, "1 -> 2 is on one side");
        network.heal();
        assert!(round_trip(network.port(0, 1)).await);
    }
}
