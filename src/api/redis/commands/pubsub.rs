//! SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE, PUNSUBSCRIBE, PUBLISH and PUBSUB.

use super::{upper, Outcome};
use crate::api::redis::data::Change;
use crate::api::redis::pubsub::channel_key;
use crate::api::redis::resp::Reply;
use crate::api::redis::{RedisContext, Session};
use bytes::Bytes;

pub fn handles(name: &str) -> bool {
    matches!(
        name,
        "subscribe" | "psubscribe" | "unsubscribe" | "punsubscribe" | "publish" | "pubsub"
    )
}

/// Whether a connection with subscriptions may run `name` in RESP2 (replies and
/// messages share the connection; RESP3 tells them apart and allows everything).
pub fn allowed_while_subscribed(name: &str) -> bool {
    matches!(
        name,
        "subscribe" | "psubscribe" | "unsubscribe" | "punsubscribe" | "ping" | "quit" | "reset"
    )
}

fn confirmation(kind: &str, name: Option<Bytes>, count: usize) -> Reply {
    Reply::Push(vec![
        Reply::bulk(kind.to_string()),
        name.map_or(Reply::Null, Reply::Bulk),
        Reply::Integer(count as i64),
    ])
}

pub async fn run(context: &RedisContext, session: &mut Session, name: &str, args: &[Bytes]) -> Outcome {
    let pubsub = &context.pubsub;
    match name {
        "subscribe" | "psubscribe" => {
            let pattern = name == "psubscribe";
            let mut replies = Vec::new();
            for channel in &args[1..] {
                pubsub.subscribe(session.id, &session.outbox, channel.clone(), pattern);
                if pattern {
                    session.patterns.insert(channel.clone());
                } else {
                    session.channels.insert(channel.clone());
                }
                let count = session.channels.len() + session.patterns.len();
                replies.push(confirmation(name, Some(channel.clone()), count));
            }
            Ok(Reply::Sequence(replies))
        }
        "unsubscribe" | "punsubscribe" => {
            let pattern = name == "punsubscribe";
            let subscribed = if pattern { &session.patterns } else { &session.channels };
            let names: Vec<Bytes> = if args.len() > 1 {
                args[1..].to_vec()
            } else {
                subscribed.iter().cloned().collect()
            };
            if names.is_empty() {
                let count = session.channels.len() + session.patterns.len();
                return Ok(confirmation(name, None, count));
            }
            let mut replies = Vec::new();
            for channel in names {
                pubsub.unsubscribe(session.id, &channel, pattern);
                if pattern {
                    session.patterns.remove(&channel);
                } else {
                    session.channels.remove(&channel);
                }
                let count = session.channels.len() + session.patterns.len();
                replies.push(confirmation(name, Some(channel), count));
            }
            Ok(Reply::Sequence(replies))
        }
        "publish" => {
            // Through Raft like any write: every node's hub delivers it, in log order.
            context
                .data
                .write_all(vec![Change::Put(channel_key(&args[1]), args[2].clone())])
                .await?;
            Ok(Reply::Integer(pubsub.receivers(&args[1]) as i64))
        }
        "pubsub" => match (upper(&args[1]).as_str(), args.len()) {
            ("CHANNELS", 2 | 3) => Ok(Reply::Array(
                pubsub
                    .channels(args.get(2).map(|pattern| &pattern[..]))
                    .into_iter()
                    .map(Reply::Bulk)
                    .collect(),
            )),
            ("NUMSUB", _) => Ok(Reply::Array(
                args[2..]
                    .iter()
                    .flat_map(|channel| {
                        [
                            Reply::Bulk(channel.clone()),
                            Reply::Integer(pubsub.subscribers(channel) as i64),
                        ]
                    })
                    .collect(),
            )),
            ("NUMPAT", 2) => Ok(Reply::Integer(pubsub.pattern_count() as i64)),
            _ => Err(Reply::error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try PUBSUB HELP.",
                String::from_utf8_lossy(&args[1])
            ))),
        },
        _ => unreachable!("{name} is not a pub/sub command"),
    }
}
