//! The operations a benchmark client runs, and the weighted mix it draws them from.

use super::keys::key_bytes;
use crate::proto::etcdserverpb::{
    compare, kv_client::KvClient, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use bytes::Bytes;
use rand::Rng;
use std::collections::HashMap;
use tonic::transport::Channel;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// Put one key.
    Put,
    /// Linearizable get of one key.
    Get,
    /// Serializable (member-local) get of one key.
    SerializableGet,
    /// Linearizable range over `range_keys` consecutive keys.
    Range,
    /// Compare-and-swap through Txn: put if the key's mod revision is the one last seen.
    Cas,
    /// Delete one key.
    Delete,
    /// A Txn putting two keys half the key space apart (in two ranges when the key
    /// space is split into equal ranges: a two-phase commit in Shoal).
    Txn,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::SerializableGet => "sget",
            Op::Range => "range",
            Op::Cas => "cas",
            Op::Delete => "delete",
            Op::Txn => "txn",
        }
    }

    fn parse(name: &str) -> Option<Op> {
        [
            Op::Put,
            Op::Get,
            Op::SerializableGet,
            Op::Range,
            Op::Cas,
            Op::Delete,
            Op::Txn,
        ]
        .into_iter()
        .find(|op| op.name() == name)
    }
}

/// Operations with weights, e.g. `put:50,get:50`; a bare name is weight 1.
#[derive(Clone, Debug)]
pub struct Mix {
    choices: Vec<(Op, u32)>,
    total: u32,
}

impl Mix {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut choices = Vec::new();
        for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let (name, weight) = match item.split_once(':') {
                Some((name, weight)) => (
                    name,
                    weight.parse::<u32>().map_err(|_| format!("bad weight in {item:?}"))?,
                ),
                None => (item, 1),
            };
            let op = Op::parse(name)
                .ok_or_else(|| format!("unknown operation {name:?}; known: put, get, sget, range, cas, delete, txn"))?;
            if weight > 0 {
                choices.push((op, weight));
            }
        }
        let total = choices.iter().map(|(_, weight)| weight).sum();
        if total == 0 {
            return Err("the workload has no operation".into());
        }
        Ok(Self { choices, total })
    }

    pub fn choose(&self, rng: &mut impl Rng) -> Op {
        let mut ticket = rng.gen_range(0..self.total);
        for (op, weight) in &self.choices {
            if ticket < *weight {
                return *op;
            }
            ticket -= weight;
        }
        unreachable!("tickets are below the total weight")
    }

    pub fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        self.choices.iter().map(|(op, _)| *op)
    }
}

/// What the client needs to build requests.
#[derive(Clone)]
pub struct Shape {
    pub prefix: String,
    pub key_size: usize,
    pub value: Bytes,
    pub range_keys: u64,
    pub key_space: u64,
}

/// How one operation ended, for counting.
pub enum Outcome {
    Done,
    /// A compare-and-swap that found another value: a real outcome, not an error.
    CasConflict,
}

/// One benchmark client's connection and its view of the keys it swapped.
pub struct Client {
    kv: KvClient<Channel>,
    shape: Shape,
    seen_mod_revisions: HashMap<u64, i64>,
}

impl Client {
    pub fn new(channel: Channel, shape: Shape) -> Self {
        Self {
            kv: KvClient::new(channel).max_decoding_message_size(64 << 20),
            shape,
            seen_mod_revisions: HashMap::new(),
        }
    }

    fn key(&self, index: u64) -> Bytes {
        key_bytes(&self.shape.prefix, index, self.shape.key_size).into()
    }

    pub async fn run(&mut self, op: Op, index: u64) -> Result<Outcome, tonic::Status> {
        let key = self.key(index);
        match op {
            Op::Put => {
                self.kv
                    .put(PutRequest {
                        key,
                        value: self.shape.value.clone(),
                        ..Default::default()
                    })
                    .await?;
            }
            Op::Get | Op::SerializableGet => {
                self.kv
                    .range(RangeRequest {
                        key,
                        serializable: op == Op::SerializableGet,
                        ..Default::default()
                    })
                    .await?;
            }
            Op::Range => {
                let end = self.key(index + self.shape.range_keys);
                self.kv
                    .range(RangeRequest {
                        key,
                        range_end: end,
                        ..Default::default()
                    })
                    .await?;
            }
            Op::Delete => {
                self.kv
                    .delete_range(DeleteRangeRequest {
                        key,
                        ..Default::default()
                    })
                    .await?;
            }
            Op::Cas => return self.compare_and_swap(index, key).await,
            Op::Txn => {
                let other = self.key((index + self.shape.key_space / 2) % self.shape.key_space.max(1));
                let put = |key: Bytes| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key,
                        value: self.shape.value.clone(),
                        ..Default::default()
                    })),
                };
                self.kv
                    .txn(TxnRequest {
                        success: vec![put(key), put(other)],
                        ..Default::default()
                    })
                    .await?;
            }
        }
        Ok(Outcome::Done)
    }

    async fn compare_and_swap(&mut self, index: u64, key: Bytes) -> Result<Outcome, tonic::Status> {
        let expected = self.seen_mod_revisions.get(&index).copied().unwrap_or(0);
        let response = self
            .kv
            .txn(TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Mod as i32,
                    key: key.clone(),
                    target_union: Some(compare::TargetUnion::ModRevision(expected)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.clone(),
                        value: self.shape.value.clone(),
                        ..Default::default()
                    })),
                }],
                failure: vec![RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key,
                        ..Default::default()
                    })),
                }],
            })
            .await?
            .into_inner();
        if response.succeeded {
            let revision = response.header.map_or(0, |header| header.revision);
            self.seen_mod_revisions.insert(index, revision);
            return Ok(Outcome::Done);
        }
        let current = response.responses.first().and_then(|op| match &op.response {
            Some(response_op::Response::ResponseRange(range)) => range.kvs.first().map(|kv| kv.mod_revision),
            _ => None,
        });
        self.seen_mod_revisions.insert(index, current.unwrap_or(0));
        Ok(Outcome::CasConflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mixes_parse_and_follow_their_weights() {
        let mix = Mix::parse("put:3,get:1").unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let puts = (0..10_000).filter(|_| mix.choose(&mut rng) == Op::Put).count();
        assert!((7_000..8_000).contains(&puts), "{puts}");
        assert!(Mix::parse("put:x").is_err());
        assert!(Mix::parse("frobnicate").unwrap_err().contains("unknown operation"));
        assert!(Mix::parse("put:0").is_err());
    }
}
