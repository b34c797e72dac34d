//! Pub/sub across nodes: PUBLISH writes the message through Raft under the channel's
//! key in the `PUBSUB` namespace, and every node's watch hub sees every range's writes,
//! so each node delivers each message, in log order, to the subscribers connected to
//! it. One hub subscription per node feeds a registry of channels and patterns.

use super::glob;
use super::resp::Reply;
use crate::range::watch::WatchHub;
use crate::router::Router;
use crate::storage::keys::namespace::PUBSUB;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Messages waiting for one slow subscriber before it is disconnected (Redis's
/// client-output-buffer-limit for pub/sub does the same).
pub const QUEUE_MAX: usize = 10_000;

/// Where a connection's pushed messages go, and how it is told it fell too far behind.
#[derive(Clone)]
pub struct Outbox {
    pub sender: mpsc::Sender<Reply>,
    pub kicked: Arc<tokio::sync::Notify>,
}

impl Outbox {
    fn push(&self, message: Reply) -> bool {
        if self.sender.try_send(message).is_ok() {
            return true;
        }
        self.kicked.notify_one();
        false
    }
}

#[derive(Default)]
struct Registry {
    channels: BTreeMap<Bytes, HashMap<u64, Outbox>>,
    patterns: BTreeMap<Bytes, HashMap<u64, Outbox>>,
}

#[derive(Default)]
pub struct PubSub {
    registry: Mutex<Registry>,
}

/// The internal key a channel's messages are written under.
pub fn channel_key(channel: &[u8]) -> Bytes {
    let mut key = Vec::with_capacity(channel.len() + 1);
    key.push(PUBSUB);
    key.extend_from_slice(channel);
    key.into()
}

impl PubSub {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Subscribes a client to a channel (or pattern); whether it was new.
    pub fn subscribe(&self, client: u64, outbox: &Outbox, name: Bytes, pattern: bool) -> bool {
        let mut registry = self.registry();
        let map = if pattern {
            &mut registry.patterns
        } else {
            &mut registry.channels
        };
        map.entry(name).or_default().insert(client, outbox.clone()).is_none()
    }

    /// Unsubscribes a client; whether it was subscribed.
    pub fn unsubscribe(&self, client: u64, name: &Bytes, pattern: bool) -> bool {
        let mut registry = self.registry();
        let map = if pattern {
            &mut registry.patterns
        } else {
            &mut registry.channels
        };
        let Some(clients) = map.get_mut(name) else {
            return false;
        };
        let removed = clients.remove(&client).is_some();
        if clients.is_empty() {
            map.remove(name);
        }
        removed
    }

    /// Channels with subscribers on this node, matching `pattern` if given.
    pub fn channels(&self, pattern: Option<&[u8]>) -> Vec<Bytes> {
        self.registry()
            .channels
            .keys()
            .filter(|channel| pattern.is_none_or(|pattern| glob::matches(pattern, channel)))
            .cloned()
            .collect()
    }

    /// Subscribers of `channel` on this node.
    pub fn subscribers(&self, channel: &[u8]) -> usize {
        self.registry().channels.get(channel).map_or(0, HashMap::len)
    }

    /// Pattern subscriptions on this node.
    pub fn pattern_count(&self) -> usize {
        self.registry().patterns.values().map(HashMap::len).sum()
    }

    /// Clients on this node a message on `channel` reaches (PUBLISH's answer).
    pub fn receivers(&self, channel: &[u8]) -> usize {
        let registry = self.registry();
        let direct = registry.channels.get(channel).map_or(0, HashMap::len);
        let by_pattern: usize = registry
            .patterns
            .iter()
            .filter(|(pattern, _)| glob::matches(pattern, channel))
            .map(|(_, clients)| clients.len())
            .sum();
        direct + by_pattern
    }

    /// Hands a message to every subscriber of its channel on this node. A subscriber
    /// whose queue is full is dropped (its connection closes, as in Redis).
    fn deliver(&self, channel: &Bytes, message: &Bytes) {
        let mut guard = self.registry();
        let registry = &mut *guard;
        let mut full = Vec::new();
        if let Some(clients) = registry.channels.get(channel) {
            for (client, outbox) in clients {
                let push = Reply::Push(vec![
                    Reply::bulk("message"),
                    Reply::Bulk(channel.clone()),
                    Reply::Bulk(message.clone()),
                ]);
                if !outbox.push(push) {
                    full.push(*client);
                }
            }
        }
        for (pattern, clients) in &registry.patterns {
            if !glob::matches(pattern, channel) {
                continue;
            }
            for (client, outbox) in clients {
                let push = Reply::Push(vec![
                    Reply::bulk("pmessage"),
                    Reply::Bulk(pattern.clone()),
                    Reply::Bulk(channel.clone()),
                    Reply::Bulk(message.clone()),
                ]);
                if !outbox.push(push) {
                    full.push(*client);
                }
            }
        }
        if !full.is_empty() {
            for map in [&mut registry.channels, &mut registry.patterns] {
                for clients in map.values_mut() {
                    clients.retain(|client, _| !full.contains(client));
                }
                map.retain(|_, clients| !clients.is_empty());
            }
        }
    }

    /// Removes every subscription of a client (it disconnected).
    pub fn forget(&self, client: u64) {
        let mut guard = self.registry();
        let registry = &mut *guard;
        for map in [&mut registry.channels, &mut registry.patterns] {
            for clients in map.values_mut() {
                clients.remove(&client);
            }
            map.retain(|_, clients| !clients.is_empty());
        }
    }
}

/// Delivers published messages to this node's subscribers until aborted: one watch over
/// the whole `PUBSUB` namespace, from now on, renewed if the hub ends it.
pub async fn deliver(pubsub: Arc<PubSub>, hub: WatchHub, router: Arc<Router>) {
    let span = crate::storage::KeyRange::new(vec![PUBSUB], Some(vec![PUBSUB + 1]));
    loop {
        let mut subscription = hub.subscribe(span.clone(), router.frontier() + 1, false).await;
        while let Some(response) = subscription.next().await {
            let Ok(response) = response else {
                break;
            };
            for event in &response.events {
                if event.r#type != crate::proto::mvccpb::event::EventType::Put as i32 {
                    continue;
                }
                if let Some(kv) = &event.kv {
                    // The hub drops the namespace byte: the key is the channel.
                    pubsub.deliver(&kv.key, &kv.value);
                }
            }
            if response.canceled {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
