//! The Redis front-end end to end: a raw RESP client and redis-cli against a real
//! 3-node cluster, every node taking every key.

use crate::support::{bounded, redis_cli, Cluster};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A reply as the server wrote it (RESP2 and RESP3 types kept apart).
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    /// `$-1`, `*-1` or RESP3 `_`.
    Nil,
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Double(String),
    Bool(bool),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Simple(text) | Value::Error(text) | Value::Double(text) => text.clone(),
            Value::Bulk(data) => String::from_utf8_lossy(data).into_owned(),
            Value::Int(value) => value.to_string(),
            other => panic!("not a text reply: {other:?}"),
        }
    }
}

fn bulk(text: &str) -> Value {
    Value::Bulk(text.as_bytes().to_vec())
}

fn ok() -> Value {
    Value::Simple("OK".into())
}

struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    async fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connecting to the Redis port");
        Client {
            stream: BufReader::new(stream),
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.expect("writing a request");
    }

    fn encode(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    async fn call(&mut self, args: &[&str]) -> Value {
        self.send_raw(&Self::encode(args)).await;
        self.read().await
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        let read = self.stream.read_line(&mut line).await.expect("reading a reply");
        assert!(read > 0, "the server closed the connection");
        line.trim_end_matches("\r\n").to_string()
    }

    async fn read(&mut self) -> Value {
        let line = self.line().await;
        let (tag, rest) = line.split_at(1);
        match tag {
            "+" => Value::Simple(rest.into()),
            "-" => Value::Error(rest.into()),
            ":" => Value::Int(rest.parse().expect("an integer reply")),
            "_" => Value::Nil,
            "," => Value::Double(rest.into()),
            "#" => Value::Bool(rest == "t"),
            "$" | "=" => {
                let length: i64 = rest.parse().expect("a bulk length");
                if length < 0 {
                    return Value::Nil;
                }
                let mut data = vec![0; length as usize + 2];
                self.stream.read_exact(&mut data).await.expect("reading a bulk");
                data.truncate(length as usize);
                Value::Bulk(data)
            }
            "*" | "~" | ">" => {
                let count: i64 = rest.parse().expect("an array length");
                if count < 0 {
                    return Value::Nil;
                }
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(Box::pin(self.read()).await);
                }
                Value::Array(items)
            }
            "%" => {
                let count: usize = rest.parse().expect("a map length");
                let mut pairs = Vec::new();
                for _ in 0..count {
                    let key = Box::pin(self.read()).await;
                    let value = Box::pin(self.read()).await;
                    pairs.push((key, value));
                }
                Value::Map(pairs)
            }
            other => panic!("unknown reply type {other:?} in {line:?}"),
        }
    }

    /// Whether the server closed the connection (reads EOF within a few seconds).
    async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

async fn clients(cluster: &Cluster) -> Vec<Client> {
    let mut out = Vec::new();
    for node in &cluster.nodes {
        out.push(Client::connect(node.redis_port).await);
    }
    out
}

#[tokio::test]
async fn strings_and_keys_through_every_node() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut c = clients(&cluster).await;
        assert_eq!(c[0].call(&["PING"]).await, Value::Simple("PONG".into()));
        assert_eq!(c[0].call(&["SET", "greeting", "hello"]).await, ok());
        // Linearizable: acknowledged on one node, read on the others at once.
        assert_eq!(c[1].call(&["GET", "greeting"]).await, bulk("hello"));
        assert_eq!(c[2].call(&["get", "greeting"]).await, bulk("hello"));
        assert_eq!(c[2].call(&["GET", "missing"]).await, Value::Nil);

        // Counters from every node add up.
        for round in 0..10 {
            assert_eq!(
                c[round % 3].call(&["INCR", "counter"]).await,
                Value::Int(round as i64 + 1)
            );
        }
        assert_eq!(c[1].call(&["INCRBY", "counter", "-15"]).await, Value::Int(-5));
        assert_eq!(c[2].call(&["DECR", "counter"]).await, Value::Int(-6));
        assert_eq!(c[0].call(&["INCRBYFLOAT", "counter", "0.5"]).await, bulk("-5.5"));
        assert_eq!(
            c[0].call(&["INCR", "greeting"]).await,
            Value::Error("ERR value is not an integer or out of range".into())
        );
        assert_eq!(c[0].call(&["SET", "big", "9223372036854775807"]).await, ok());
        assert_eq!(
            c[0].call(&["INCR", "big"]).await,
            Value::Error("ERR increment or decrement would overflow".into())
        );

        // SET's options.
        assert_eq!(c[0].call(&["SET", "greeting", "x", "NX"]).await, Value::Nil);
        assert_eq!(c[1].call(&["SET", "fresh", "1", "XX"]).await, Value::Nil);
        assert_eq!(c[1].call(&["SET", "greeting", "hi", "XX", "GET"]).await, bulk("hello"));
        assert_eq!(c[2].call(&["SETNX", "greeting", "no"]).await, Value::Int(0));
        assert_eq!(c[2].call(&["GETSET", "greeting", "hey"]).await, bulk("hi"));
        assert_eq!(
            c[0].call(&["SET", "k", "v", "NX", "XX"]).await,
            Value::Error("ERR syntax error".into())
        );
        assert_eq!(
            c[0].call(&["SET", "k", "v", "EX", "0"]).await,
            Value::Error("ERR invalid expire time in 'set' command".into())
        );

        // Multi-key commands are atomic wherever the keys live.
        assert_eq!(c[0].call(&["MSET", "a", "1", "b", "2", "{a}c", "3"]).await, ok());
        assert_eq!(
            c[1].call(&["MGET", "a", "b", "nope", "{a}c"]).await,
            Value::Array(vec![bulk("1"), bulk("2"), Value::Nil, bulk("3")])
        );
        assert_eq!(c[2].call(&["MSETNX", "a", "9", "z", "9"]).await, Value::Int(0));
        assert_eq!(c[2].call(&["EXISTS", "z"]).await, Value::Int(0));
        assert_eq!(c[2].call(&["MSETNX", "y", "9", "z", "9"]).await, Value::Int(1));
        assert_eq!(c[0].call(&["EXISTS", "a", "b", "nope", "a"]).await, Value::Int(3));
        assert_eq!(c[0].call(&["DEL", "a", "b", "nope"]).await, Value::Int(2));
        assert_eq!(c[1].call(&["EXISTS", "a", "b"]).await, Value::Int(0));
        assert_eq!(c[1].call(&["TYPE", "y"]).await, Value::Simple("string".into()));
        assert_eq!(c[1].call(&["TYPE", "a"]).await, Value::Simple("none".into()));

        // Editing strings.
        assert_eq!(c[0].call(&["APPEND", "s", "Hello"]).await, Value::Int(5));
        assert_eq!(c[1].call(&["APPEND", "s", " World"]).await, Value::Int(11));
        assert_eq!(c[2].call(&["GETRANGE", "s", "-5", "-1"]).await, bulk("World"));
        assert_eq!(c[2].call(&["SETRANGE", "s", "6", "Redis"]).await, Value::Int(11));
        assert_eq!(c[0].call(&["GET", "s"]).await, bulk("Hello Redis"));
        assert_eq!(c[0].call(&["STRLEN", "s"]).await, Value::Int(11));
        assert_eq!(c[0].call(&["GETDEL", "s"]).await, bulk("Hello Redis"));
        assert_eq!(c[0].call(&["GETDEL", "s"]).await, Value::Nil);

        // Renaming and copying keep the value (and its expiry).
        assert_eq!(c[0].call(&["SET", "old", "v", "EX", "100"]).await, ok());
        assert_eq!(c[1].call(&["RENAME", "old", "new"]).await, ok());
        assert_eq!(c[2].call(&["GET", "new"]).await, bulk("v"));
        assert!(matches!(c[2].call(&["TTL", "new"]).await, Value::Int(99 | 100)));
        assert_eq!(
            c[2].call(&["RENAME", "old", "x"]).await,
            Value::Error("ERR no such key".into())
        );
        assert_eq!(c[2].call(&["RENAMENX", "new", "y"]).await, Value::Int(0));
        assert_eq!(c[0].call(&["COPY", "new", "copied"]).await, Value::Int(1));
        assert_eq!(c[0].call(&["COPY", "new", "copied"]).await, Value::Int(0));
        assert_eq!(c[0].call(&["COPY", "new", "copied", "DB", "3"]).await, Value::Int(1));

        // Databases are separate.
        assert_eq!(c[1].call(&["SELECT", "3"]).await, ok());
        assert_eq!(c[1].call(&["DBSIZE"]).await, Value::Int(1));
        assert_eq!(c[1].call(&["GET", "greeting"]).await, Value::Nil);
        assert_eq!(c[1].call(&["FLUSHDB"]).await, ok());
        assert_eq!(c[1].call(&["DBSIZE"]).await, Value::Int(0));
        assert_eq!(
            c[1].call(&["SELECT", "16"]).await,
            Value::Error("ERR DB index is out of range".into())
        );
        assert_eq!(c[1].call(&["SELECT", "0"]).await, ok());
        assert_eq!(c[1].call(&["GET", "greeting"]).await, bulk("hey"));

        // KEYS and a full SCAN see every key once, in any number of steps.
        assert_eq!(c[0].call(&["FLUSHALL"]).await, ok());
        for index in 0..120 {
            let key = format!("user:{index}");
            assert_eq!(c[index % 3].call(&["SET", &key, "x"]).await, ok());
        }
        assert_eq!(c[0].call(&["SET", "other", "x"]).await, ok());
        let Value::Array(listed) = c[1].call(&["KEYS", "user:*"]).await else {
            panic!("KEYS gives an array");
        };
        assert_eq!(listed.len(), 120);
        let mut seen = std::collections::BTreeSet::new();
        let mut cursor = "0".to_string();
        let mut steps = 0;
        loop {
            let reply = c[2].call(&["SCAN", &cursor, "MATCH", "user:*", "COUNT", "7"]).await;
            let Value::Array(parts) = reply else {
                panic!("SCAN gives an array")
            };
            cursor = parts[0].text();
            let Value::Array(keys) = &parts[1] else {
                panic!("SCAN's keys are an array")
            };
            for key in keys {
                seen.insert(key.text());
            }
            steps += 1;
            if cursor == "0" {
                break;
            }
            assert!(steps < 10_000, "SCAN never ended");
        }
        assert_eq!(seen.len(), 120, "SCAN returned every key");
        assert!(steps > 2, "COUNT 7 takes several steps");
        assert_eq!(c[0].call(&["DBSIZE"]).await, Value::Int(121));

        // Redis keys are not etcd keys.
        let mut kv = cluster.kv(0).await;
        let all = kv
            .range(shoal::proto::etcdserverpb::RangeRequest {
                key: vec![0].into(),
                range_end: vec![0].into(),
                ..Default::default()
            })
            .await
            .expect("reading every etcd key")
            .into_inner();
        assert_eq!(all.count, 0, "the etcd API sees no Redis key: {:?}", all.kvs);
    })
    .await;
}

#[tokio::test]
async fn keys_expire_on_time_and_not_before() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut c = clients(&cluster).await;
        assert_eq!(c[0].call(&["TTL", "none"]).await, Value::Int(-2));
        assert_eq!(c[0].call(&["SET", "plain", "v"]).await, ok());
        assert_eq!(c[1].call(&["TTL", "plain"]).await, Value::Int(-1));
        assert_eq!(c[1].call(&["EXPIRE", "plain", "100", "XX"]).await, Value::Int(0));
        assert_eq!(c[1].call(&["EXPIRE", "plain", "100", "NX"]).await, Value::Int(1));
        assert_eq!(c[2].call(&["EXPIRE", "plain", "50", "GT"]).await, Value::Int(0));
        assert_eq!(c[2].call(&["EXPIRE", "plain", "200", "GT"]).await, Value::Int(1));
        assert_eq!(c[2].call(&["EXPIRE", "plain", "20", "LT"]).await, Value::Int(1));
        let Value::Int(pttl) = c[0].call(&["PTTL", "plain"]).await else {
            panic!("PTTL is an integer")
        };
        assert!((15_000..=20_000).contains(&pttl), "PTTL {pttl}");
        assert_eq!(c[0].call(&["PERSIST", "plain"]).await, Value::Int(1));
        assert_eq!(c[0].call(&["TTL", "plain"]).await, Value::Int(-1));
        assert_eq!(
            c[0].call(&["EXPIRE", "plain", "10", "NX", "GT"]).await,
            Value::Error("ERR NX and XX, GT or LT options at the same time are not compatible".into())
        );
        // A time in the past deletes at once.
        assert_eq!(c[0].call(&["EXPIREAT", "plain", "1"]).await, Value::Int(1));
        assert_eq!(c[1].call(&["EXISTS", "plain"]).await, Value::Int(0));

        // A key with a TTL is there until the TTL has passed, then gone on every node.
        let set_at = Instant::now();
        assert_eq!(c[0].call(&["SET", "short", "v", "PX", "1500"]).await, ok());
        let expired_at = set_at + Duration::from_millis(1500);
        loop {
            let before = Instant::now();
            let replies = [
                c[0].call(&["GET", "short"]).await,
                c[1].call(&["GET", "short"]).await,
                c[2].call(&["GET", "short"]).await,
            ];
            if replies.iter().all(|reply| *reply == Value::Nil) {
                assert!(Instant::now() >= expired_at, "the key expired before its TTL");
                break;
            }
            for reply in &replies {
                if *reply == Value::Nil {
                    // Gone on one node while still read on another: only after the TTL.
                    assert!(Instant::now() >= expired_at, "the key expired before its TTL");
                } else {
                    assert_eq!(*reply, bulk("v"));
                    assert!(
                        before < expired_at + Duration::from_millis(500),
                        "the key outlived its TTL"
                    );
                }
            }
            assert!(set_at.elapsed() < Duration::from_secs(10), "the key never expired");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(c[2].call(&["EXISTS", "short"]).await, Value::Int(0));
        assert_eq!(c[2].call(&["TTL", "short"]).await, Value::Int(-2));
        // SETEX and GETEX.
        assert_eq!(c[0].call(&["SETEX", "s", "100", "v"]).await, ok());
        assert!(matches!(c[1].call(&["TTL", "s"]).await, Value::Int(99 | 100)));
        assert_eq!(c[1].call(&["GETEX", "s", "PERSIST"]).await, bulk("v"));
        assert_eq!(c[2].call(&["TTL", "s"]).await, Value::Int(-1));
        assert_eq!(c[2].call(&["GETEX", "s", "EX", "50"]).await, bulk("v"));
        assert!(matches!(c[0].call(&["TTL", "s"]).await, Value::Int(49 | 50)));
    })
    .await;
}

#[tokio::test]
async fn protocol_errors_pipelines_and_resp3() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let port = cluster.nodes[1].redis_port;
        let mut c = Client::connect(port).await;
        assert_eq!(
            c.call(&["GET"]).await,
            Value::Error("ERR wrong number of arguments for 'get' command".into())
        );
        assert_eq!(
            c.call(&["NOSUCH", "a"]).await,
            Value::Error("ERR unknown command 'NOSUCH', with args beginning with: 'a' ".into())
        );
        // Inline commands, as telnet sends them, with quoting.
        c.send_raw(b"SET inline \"two words\\x21\"\r\nGET inline\r\n").await;
        assert_eq!(c.read().await, ok());
        assert_eq!(c.read().await, bulk("two words!"));
        // A pipeline: every reply, in order.
        let mut pipeline = Vec::new();
        for index in 0..100 {
            pipeline.extend(Client::encode(&["SET", &format!("p{index}"), &index.to_string()]));
            pipeline.extend(Client::encode(&["INCR", &format!("p{index}")]));
        }
        c.send_raw(&pipeline).await;
        for index in 0..100 {
            assert_eq!(c.read().await, ok());
            assert_eq!(c.read().await, Value::Int(index + 1));
        }
        // A pipeline mixing data commands, a failing one and a transaction: every reply
        // in order, each command seeing the ones before it.
        let mut mixed = Vec::new();
        for args in [
            &["SET", "px", "1"][..],
            &["INCR", "inline"][..],
            &["INCR", "px"][..],
            &["MULTI"][..],
            &["SET", "py", "2"][..],
            &["EXEC"][..],
            &["MGET", "px", "py"][..],
        ] {
            mixed.extend(Client::encode(args));
        }
        c.send_raw(&mixed).await;
        assert_eq!(c.read().await, ok());
        assert_eq!(
            c.read().await,
            Value::Error("ERR value is not an integer or out of range".into())
        );
        assert_eq!(c.read().await, Value::Int(2));
        assert_eq!(c.read().await, ok());
        assert_eq!(c.read().await, Value::Simple("QUEUED".into()));
        assert_eq!(c.read().await, Value::Array(vec![ok()]));
        assert_eq!(c.read().await, Value::Array(vec![bulk("2"), bulk("2")]));
        // RESP3 after HELLO 3: maps, nulls and doubles of their own.
        let Value::Map(hello) = c.call(&["HELLO", "3"]).await else {
            panic!("HELLO 3 answers a map")
        };
        assert!(hello.contains(&(bulk("proto"), Value::Int(3))));
        assert_eq!(c.call(&["GET", "missing"]).await, Value::Nil);
        assert_eq!(
            c.call(&["HELLO", "4"]).await,
            Value::Error("NOPROTO unsupported protocol version".into())
        );
        assert_eq!(c.call(&["CLIENT", "SETNAME", "tester"]).await, ok());
        assert_eq!(c.call(&["CLIENT", "GETNAME"]).await, bulk("tester"));

        // Broken requests get Redis's protocol errors and the connection closes; the
        // node keeps serving everyone else.
        let mut broken = Client::connect(port).await;
        broken.send_raw(b"SET k \"unbalanced\r\n").await;
        assert_eq!(
            broken.read().await,
            Value::Error("ERR Protocol error: unbalanced quotes in request".into())
        );
        assert!(broken.closed().await);
        let mut oversize = Client::connect(port).await;
        oversize.send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$999999999\r\n").await;
        assert_eq!(
            oversize.read().await,
            Value::Error("ERR Protocol error: invalid bulk length".into())
        );
        assert!(oversize.closed().await);
        let mut garbage = Client::connect(port).await;
        garbage.send_raw(b"*2\r\n:1\r\n").await;
        assert_eq!(
            garbage.read().await,
            Value::Error("ERR Protocol error: expected '$', got ':'".into())
        );
        assert_eq!(c.call(&["PING"]).await, Value::Simple("PONG".into()));
        let mut fresh = Client::connect(port).await;
        assert_eq!(fresh.call(&["GET", "inline"]).await, bulk("two words!"));
    })
    .await;
}

#[tokio::test]
async fn redis_cli_talks_to_any_node() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let cli = redis_cli();
        let run = |port: u16, args: &[&str]| {
            let output = std::process::Command::new(&cli)
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(args)
                .output()
                .expect("running redis-cli");
            assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
            String::from_utf8_lossy(&output.stdout).trim_end().to_string()
        };
        let ports: Vec<u16> = cluster.nodes.iter().map(|node| node.redis_port).collect();
        assert_eq!(run(ports[0], &["set", "greeting", "hello world"]), "OK");
        assert_eq!(run(ports[1], &["get", "greeting"]), "hello world");
        assert_eq!(run(ports[2], &["incr", "visits"]), "1");
        assert_eq!(run(ports[0], &["incrby", "visits", "41"]), "42");
        assert_eq!(run(ports[1], &["get", "nothing"]), "");
        assert_eq!(run(ports[1], &["exists", "greeting", "visits"]), "2");
        assert!(run(ports[2], &["info", "server"]).contains("redis_version:"));
        assert!(run(ports[2], &["info", "keyspace"]).contains("db0:keys=2,expires=0"));
        // Piped commands (redis-cli sends them as a pipeline of requests).
        let mut child = std::process::Command::new(&cli)
            .args(["-h", "127.0.0.1", "-p", &ports[2].to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("running redis-cli");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(b"set piped 1\nincr piped\nget piped\n")
                .expect("writing commands");
        }
        let output = child.wait_with_output().expect("redis-cli output");
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim_end(), "OK\n2\n2");
    })
    .await;
}

#[tokio::test]
async fn acknowledged_writes_survive_a_leader_kill() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        let leader = cluster.leader().await;
        let survivors: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
        let mut c = Client::connect(cluster.nodes[survivors[0]].redis_port).await;
        let (mut acknowledged, mut failed) = (0i64, 0i64);
        // Per write kind: what was acknowledged, and what failed (may have applied).
        let mut strings: (Vec<String>, usize) = (Vec::new(), 0);
        let mut members: (Vec<String>, usize) = (Vec::new(), 0);
        let mut pushed: (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        for round in 0..120 {
            if round == 40 {
                cluster.kill(leader);
            }
            match c.call(&["INCR", "total"]).await {
                Value::Int(value) => {
                    acknowledged += 1;
                    assert!(value >= acknowledged, "an acknowledged increment was lost");
                }
                Value::Error(_) => failed += 1,
                other => panic!("INCR answered {other:?}"),
            }
            let name = format!("v{round}");
            match c.call(&["SET", &format!("key:{round}"), &name]).await {
                Value::Simple(_) => strings.0.push(name.clone()),
                _ => strings.1 += 1,
            }
            match c.call(&["SADD", "members", &name]).await {
                Value::Int(1) => members.0.push(name.clone()),
                _ => members.1 += 1,
            }
            match c.call(&["RPUSH", "log", &name]).await {
                Value::Int(_) => pushed.0.push(name.clone()),
                _ => pushed.1.push(name.clone()),
            }
        }
        let mut other = Client::connect(cluster.nodes[survivors[1]].redis_port).await;
        let total: i64 = other.call(&["GET", "total"]).await.text().parse().expect("a number");
        // Every acknowledged increment applied once; a failed one may have applied.
        assert!(
            total >= acknowledged && total <= acknowledged + failed,
            "total {total}, acknowledged {acknowledged}, failed {failed}"
        );
        assert!(acknowledged >= 80, "the cluster kept serving: {acknowledged} of 120");
        cluster.restart(leader);
        cluster.wait_ready(Duration::from_secs(30)).await;
        // On the restarted node too: every acknowledged write is there, once.
        let mut back = Client::connect(cluster.nodes[leader].redis_port).await;
        assert_eq!(back.call(&["GET", "total"]).await, bulk(&total.to_string()));
        for value in &strings.0 {
            let round = &value[1..];
            assert_eq!(
                back.call(&["GET", &format!("key:{round}")]).await,
                bulk(value),
                "an acknowledged SET was lost"
            );
        }
        let stored = sorted_texts(back.call(&["SMEMBERS", "members"]).await);
        for member in &members.0 {
            assert!(stored.contains(member), "acknowledged member {member} was lost");
        }
        assert!(stored.len() <= members.0.len() + members.1);
        let Value::Array(log) = back.call(&["LRANGE", "log", "0", "-1"]).await else {
            panic!("LRANGE gives an array")
        };
        let log: Vec<String> = log.iter().map(Value::text).collect();
        for value in &pushed.0 {
            assert_eq!(
                log.iter().filter(|item| *item == value).count(),
                1,
                "acknowledged push {value}"
            );
        }
        for value in &pushed.1 {
            assert!(
                log.iter().filter(|item| *item == value).count() <= 1,
                "push {value} applied twice"
            );
        }
    })
    .await;
}

/// Sum of a counter over every node's /metrics.
async fn counter_total(cluster: &Cluster, name: &str) -> f64 {
    let mut total = 0.0;
    for node in &cluster.nodes {
        let Some((200, text)) = shoal::http_probe::get(node.metrics_port, "/metrics", Duration::from_secs(5)).await
        else {
            continue;
        };
        total += text
            .lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total
}

#[tokio::test]
async fn leaders_remove_expired_keys_and_spare_the_rest() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut c = clients(&cluster).await;
        for index in 0..40 {
            let key = format!("session:{index}");
            assert_eq!(c[index % 3].call(&["SET", &key, "x", "PX", "300"]).await, ok());
        }
        assert_eq!(c[0].call(&["SET", "keep", "v"]).await, ok());
        assert_eq!(c[0].call(&["SET", "renewed", "v", "PX", "300"]).await, ok());
        assert_eq!(c[1].call(&["SET", "renewed", "again"]).await, ok());
        // The leaders' passes remove every expired key (the counter counts removals).
        let deadline = Instant::now() + Duration::from_secs(30);
        while counter_total(&cluster, "shoal_redis_expired_keys_total").await < 40.0 {
            assert!(Instant::now() < deadline, "expired keys were not removed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(c[2].call(&["GET", "keep"]).await, bulk("v"));
        assert_eq!(c[2].call(&["GET", "renewed"]).await, bulk("again"));
        assert_eq!(c[2].call(&["DBSIZE"]).await, Value::Int(2));
        assert_eq!(counter_total(&cluster, "shoal_redis_expired_keys_total").await, 40.0);
    })
    .await;
}

#[tokio::test]
async fn multi_exec_is_atomic_and_watch_aborts_on_change() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut c = clients(&cluster).await;
        assert_eq!(
            c[0].call(&["EXEC"]).await,
            Value::Error("ERR EXEC without MULTI".into())
        );
        assert_eq!(c[0].call(&["MULTI"]).await, ok());
        assert_eq!(c[0].call(&["SET", "a", "1"]).await, Value::Simple("QUEUED".into()));
        assert_eq!(c[0].call(&["INCR", "a"]).await, Value::Simple("QUEUED".into()));
        assert_eq!(
            c[0].call(&["SET", "{other}b", "x"]).await,
            Value::Simple("QUEUED".into())
        );
        assert_eq!(c[0].call(&["GET", "a"]).await, Value::Simple("QUEUED".into()));
        assert_eq!(
            c[0].call(&["MULTI"]).await,
            Value::Error("ERR MULTI calls can not be nested".into())
        );
        assert_eq!(
            c[0].call(&["EXEC"]).await,
            Value::Array(vec![ok(), Value::Int(2), ok(), bulk("2")])
        );
        assert_eq!(
            c[1].call(&["MGET", "a", "{other}b"]).await,
            Value::Array(vec![bulk("2"), bulk("x")])
        );

        // A command failing at run time fails alone; the others apply.
        assert_eq!(c[0].call(&["MULTI"]).await, ok());
        c[0].call(&["INCR", "{other}b"]).await;
        c[0].call(&["SET", "t", "1"]).await;
        assert_eq!(
            c[0].call(&["EXEC"]).await,
            Value::Array(vec![
                Value::Error("ERR value is not an integer or out of range".into()),
                ok()
            ])
        );
        assert_eq!(c[2].call(&["GET", "t"]).await, bulk("1"));

        // A command refused when queued discards the whole transaction.
        assert_eq!(c[0].call(&["MULTI"]).await, ok());
        c[0].call(&["SET", "never", "1"]).await;
        assert!(matches!(c[0].call(&["SET", "never"]).await, Value::Error(_)));
        assert_eq!(
            c[0].call(&["EXEC"]).await,
            Value::Error("EXECABORT Transaction discarded because of previous errors.".into())
        );
        assert_eq!(c[1].call(&["EXISTS", "never"]).await, Value::Int(0));
        assert_eq!(c[0].call(&["MULTI"]).await, ok());
        c[0].call(&["SET", "never", "1"]).await;
        assert_eq!(c[0].call(&["DISCARD"]).await, ok());
        assert_eq!(c[1].call(&["EXISTS", "never"]).await, Value::Int(0));

        // WATCH: a change by anyone (here through another node) aborts EXEC.
        assert_eq!(c[0].call(&["WATCH", "w"]).await, ok());
        assert_eq!(c[1].call(&["SET", "w", "theirs"]).await, ok());
        assert_eq!(c[0].call(&["MULTI"]).await, ok());
        c[0].call(&["SET", "w", "mine"]).await;
        assert_eq!(c[0].call(&["EXEC"]).await, Value::Nil);
        assert_eq!(c[2].call(&["GET", "w"]).await, bulk("theirs"));
        // Unchanged, it goes through; EXEC forgets the watch.
        assert_eq!(c[0].call(&["WATCH", "w"]).await, ok());
        assert_eq!(c[0].call(&["MULTI"]).await, ok());
        c[0].call(&["SET", "w", "mine"]).await;
        assert_eq!(c[0].call(&["EXEC"]).await, Value::Array(vec![ok()]));
        assert_eq!(c[2].call(&["GET", "w"]).await, bulk("mine"));

        // The optimistic-locking pattern from three nodes at once loses no increment.
        let ports: Vec<u16> = cluster.nodes.iter().map(|node| node.redis_port).collect();
        let mut workers = Vec::new();
        for port in ports {
            workers.push(tokio::spawn(async move {
                let mut client = Client::connect(port).await;
                let mut retries = 0;
                for _ in 0..15 {
                    loop {
                        assert_eq!(client.call(&["WATCH", "shared"]).await, ok());
                        let current = match client.call(&["GET", "shared"]).await {
                            Value::Nil => 0,
                            value => value.text().parse::<i64>().expect("a number"),
                        };
                        assert_eq!(client.call(&["MULTI"]).await, ok());
                        client.call(&["SET", "shared", &(current + 1).to_string()]).await;
                        match client.call(&["EXEC"]).await {
                            Value::Array(replies) => {
                                assert_eq!(replies, vec![ok()]);
                                break;
                            }
                            Value::Nil => retries += 1,
                            other => panic!("EXEC answered {other:?}"),
                        }
                    }
                }
                retries
            }));
        }
        for worker in workers {
            worker.await.expect("a worker");
        }
        assert_eq!(c[0].call(&["GET", "shared"]).await, bulk("45"));
    })
    .await;
}

fn sorted_texts(value: Value) -> Vec<String> {
    let Value::Array(items) = value else {
        panic!("not an array: {value:?}")
    };
    let mut texts: Vec<String> = items.iter().map(Value::text).collect();
    texts.sort();
    texts
}

#[tokio::test]
async fn hashes_and_sets_through_every_node() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut c = clients(&cluster).await;
        let wrongtype = Value::Error("WRONGTYPE Operation against a key holding the wrong kind of value".into());

        // Hashes.
        assert_eq!(
            c[0].call(&["HSET", "user:1", "name", "ann", "age", "30"]).await,
            Value::Int(2)
        );
        assert_eq!(c[1].call(&["HGET", "user:1", "name"]).await, bulk("ann"));
        assert_eq!(
            c[2].call(&["HSET", "user:1", "name", "bea", "city", "oslo"]).await,
            Value::Int(1)
        );
        assert_eq!(
            c[0].call(&["HGETALL", "user:1"]).await,
            Value::Array(vec![
                bulk("age"),
                bulk("30"),
                bulk("city"),
                bulk("oslo"),
                bulk("name"),
                bulk("bea")
            ])
        );
        assert_eq!(c[1].call(&["HINCRBY", "user:1", "age", "5"]).await, Value::Int(35));
        assert_eq!(
            c[1].call(&["HINCRBYFLOAT", "user:1", "score", "1.5"]).await,
            bulk("1.5")
        );
        assert_eq!(
            c[1].call(&["HINCRBY", "user:1", "name", "1"]).await,
            Value::Error("ERR hash value is not an integer".into())
        );
        assert_eq!(c[2].call(&["HLEN", "user:1"]).await, Value::Int(4));
        assert_eq!(
            c[2].call(&["HMGET", "user:1", "name", "nope", "city"]).await,
            Value::Array(vec![bulk("bea"), Value::Nil, bulk("oslo")])
        );
        assert_eq!(c[0].call(&["HSETNX", "user:1", "name", "x"]).await, Value::Int(0));
        assert_eq!(c[0].call(&["HSTRLEN", "user:1", "city"]).await, Value::Int(4));
        assert_eq!(
            c[0].call(&["HDEL", "user:1", "score", "nope", "city"]).await,
            Value::Int(2)
        );
        assert_eq!(c[1].call(&["HEXISTS", "user:1", "city"]).await, Value::Int(0));
        assert_eq!(sorted_texts(c[1].call(&["HKEYS", "user:1"]).await), ["age", "name"]);
        assert_eq!(sorted_texts(c[1].call(&["HVALS", "user:1"]).await), ["35", "bea"]);
        assert_eq!(c[2].call(&["TYPE", "user:1"]).await, Value::Simple("hash".into()));
        assert_eq!(c[2].call(&["GET", "user:1"]).await, wrongtype);
        assert_eq!(c[2].call(&["SADD", "user:1", "x"]).await, wrongtype);
        // A hash moves with its fields; its last field takes it away.
        assert_eq!(c[0].call(&["RENAME", "user:1", "user:2"]).await, ok());
        assert_eq!(c[1].call(&["HGET", "user:2", "name"]).await, bulk("bea"));
        assert_eq!(c[1].call(&["HLEN", "user:1"]).await, Value::Int(0));
        assert_eq!(c[2].call(&["COPY", "user:2", "user:3"]).await, Value::Int(1));
        assert_eq!(c[2].call(&["HDEL", "user:2", "name", "age"]).await, Value::Int(2));
        assert_eq!(c[0].call(&["EXISTS", "user:2", "user:3"]).await, Value::Int(1));
        assert_eq!(c[0].call(&["HGET", "user:3", "age"]).await, bulk("35"));
        // SET replaces a hash, fields and all.
        assert_eq!(c[0].call(&["SET", "user:3", "plain"]).await, ok());
        assert_eq!(c[1].call(&["HGET", "user:3", "age"]).await, wrongtype);
        assert_eq!(c[1].call(&["DEL", "user:3"]).await, Value::Int(1));
        assert_eq!(c[1].call(&["HSET", "user:3", "fresh", "1"]).await, Value::Int(1));
        assert_eq!(
            c[2].call(&["HGETALL", "user:3"]).await,
            Value::Array(vec![bulk("fresh"), bulk("1")])
        );

        // An expired hash recreated starts empty.
        assert_eq!(c[0].call(&["HSET", "temp", "a", "1", "b", "2"]).await, Value::Int(2));
        assert_eq!(c[0].call(&["PEXPIRE", "temp", "200"]).await, Value::Int(1));
        let deadline = Instant::now() + Duration::from_secs(10);
        while c[1].call(&["EXISTS", "temp"]).await != Value::Int(0) {
            assert!(Instant::now() < deadline, "the hash never expired");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(c[2].call(&["HSET", "temp", "c", "3"]).await, Value::Int(1));
        assert_eq!(
            c[0].call(&["HGETALL", "temp"]).await,
            Value::Array(vec![bulk("c"), bulk("3")])
        );
        assert_eq!(c[0].call(&["TTL", "temp"]).await, Value::Int(-1));

        // Many fields.
        let mut args: Vec<String> = vec!["HSET".into(), "big".into()];
        for index in 0..200 {
            args.push(format!("f{index}"));
            args.push(index.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(c[1].call(&args).await, Value::Int(200));
        assert_eq!(c[2].call(&["HLEN", "big"]).await, Value::Int(200));
        let Value::Array(scanned) = c[0].call(&["HSCAN", "big", "0", "MATCH", "f1*"]).await else {
            panic!()
        };
        let Value::Array(pairs) = &scanned[1] else { panic!() };
        assert_eq!(pairs.len(), 2 * 111, "f1, f10-f19, f100-f199");

        // Sets.
        assert_eq!(c[0].call(&["SADD", "s1", "a", "b", "c"]).await, Value::Int(3));
        assert_eq!(c[1].call(&["SADD", "s1", "a", "d"]).await, Value::Int(1));
        assert_eq!(c[2].call(&["SCARD", "s1"]).await, Value::Int(4));
        assert_eq!(c[2].call(&["SISMEMBER", "s1", "d"]).await, Value::Int(1));
        assert_eq!(
            c[2].call(&["SMISMEMBER", "s1", "a", "z"]).await,
            Value::Array(vec![Value::Int(1), Value::Int(0)])
        );
        assert_eq!(sorted_texts(c[0].call(&["SMEMBERS", "s1"]).await), ["a", "b", "c", "d"]);
        assert_eq!(c[0].call(&["SADD", "other-slot", "c", "d", "e"]).await, Value::Int(3));
        assert_eq!(
            sorted_texts(c[1].call(&["SINTER", "s1", "other-slot"]).await),
            ["c", "d"]
        );
        assert_eq!(
            sorted_texts(c[1].call(&["SUNION", "s1", "other-slot"]).await),
            ["a", "b", "c", "d", "e"]
        );
        assert_eq!(
            sorted_texts(c[1].call(&["SDIFF", "s1", "other-slot"]).await),
            ["a", "b"]
        );
        assert_eq!(
            c[2].call(&["SINTERCARD", "2", "s1", "other-slot", "LIMIT", "1"]).await,
            Value::Int(1)
        );
        assert_eq!(
            c[2].call(&["SUNIONSTORE", "dest", "s1", "other-slot"]).await,
            Value::Int(5)
        );
        assert_eq!(
            c[2].call(&["SINTERSTORE", "dest", "s1", "other-slot"]).await,
            Value::Int(2)
        );
        assert_eq!(sorted_texts(c[0].call(&["SMEMBERS", "dest"]).await), ["c", "d"]);
        assert_eq!(c[0].call(&["SMOVE", "s1", "dest", "a"]).await, Value::Int(1));
        assert_eq!(c[0].call(&["SMOVE", "s1", "dest", "a"]).await, Value::Int(0));
        assert_eq!(c[1].call(&["SREM", "s1", "b", "zz"]).await, Value::Int(1));
        assert_eq!(sorted_texts(c[1].call(&["SMEMBERS", "s1"]).await), ["c", "d"]);
        let popped = sorted_texts(c[2].call(&["SPOP", "dest", "2"]).await);
        assert_eq!(popped.len(), 2);
        assert_eq!(c[0].call(&["SCARD", "dest"]).await, Value::Int(1));
        assert!(matches!(c[0].call(&["SRANDMEMBER", "s1"]).await, Value::Bulk(_)));
        assert_eq!(c[0].call(&["SREM", "s1", "c", "d"]).await, Value::Int(2));
        assert_eq!(c[0].call(&["EXISTS", "s1"]).await, Value::Int(0));
        assert_eq!(c[0].call(&["TYPE", "other-slot"]).await, Value::Simple("set".into()));

        // In a transaction with the other types.
        assert_eq!(c[1].call(&["MULTI"]).await, ok());
        c[1].call(&["HSET", "tx-hash", "f", "v"]).await;
        c[1].call(&["SADD", "tx-set", "m"]).await;
        c[1].call(&["INCR", "tx-count"]).await;
        assert_eq!(
            c[1].call(&["EXEC"]).await,
            Value::Array(vec![Value::Int(1), Value::Int(1), Value::Int(1)])
        );
        assert_eq!(c[2].call(&["DBSIZE"]).await, Value::Int(8));
    })
    .await;
}

#[tokio::test]
async fn lists_and_blocking_pops_across_nodes() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut c = clients(&cluster).await;
        assert_eq!(c[0].call(&["RPUSH", "q", "a", "b", "c"]).await, Value::Int(3));
        assert_eq!(c[1].call(&["LPUSH", "q", "z", "y"]).await, Value::Int(5));
        assert_eq!(
            c[2].call(&["LRANGE", "q", "0", "-1"]).await,
            Value::Array(vec![bulk("y"), bulk("z"), bulk("a"), bulk("b"), bulk("c")])
        );
        assert_eq!(
            c[2].call(&["LRANGE", "q", "1", "2"]).await,
            Value::Array(vec![bulk("z"), bulk("a")])
        );
        assert_eq!(c[0].call(&["LLEN", "q"]).await, Value::Int(5));
        assert_eq!(c[0].call(&["LINDEX", "q", "0"]).await, bulk("y"));
        assert_eq!(c[0].call(&["LINDEX", "q", "-1"]).await, bulk("c"));
        assert_eq!(c[0].call(&["LINDEX", "q", "9"]).await, Value::Nil);
        assert_eq!(c[1].call(&["LSET", "q", "-2", "B"]).await, ok());
        assert_eq!(
            c[1].call(&["LSET", "q", "9", "x"]).await,
            Value::Error("ERR index out of range".into())
        );
        assert_eq!(c[2].call(&["LPOP", "q"]).await, bulk("y"));
        assert_eq!(
            c[2].call(&["RPOP", "q", "2"]).await,
            Value::Array(vec![bulk("c"), bulk("B")])
        );
        assert_eq!(c[0].call(&["LINSERT", "q", "BEFORE", "a", "m"]).await, Value::Int(3));
        assert_eq!(
            c[1].call(&["LRANGE", "q", "0", "-1"]).await,
            Value::Array(vec![bulk("z"), bulk("m"), bulk("a")])
        );
        assert_eq!(c[1].call(&["RPUSH", "q", "a", "a"]).await, Value::Int(5));
        assert_eq!(c[1].call(&["LPOS", "q", "a"]).await, Value::Int(2));
        assert_eq!(
            c[1].call(&["LPOS", "q", "a", "COUNT", "0"]).await,
            Value::Array(vec![Value::Int(2), Value::Int(3), Value::Int(4)])
        );
        assert_eq!(c[2].call(&["LREM", "q", "-2", "a"]).await, Value::Int(2));
        assert_eq!(c[2].call(&["LTRIM", "q", "1", "-1"]).await, ok());
        assert_eq!(
            c[0].call(&["LRANGE", "q", "0", "-1"]).await,
            Value::Array(vec![bulk("m"), bulk("a")])
        );
        assert_eq!(c[0].call(&["LMOVE", "q", "other", "RIGHT", "LEFT"]).await, bulk("a"));
        assert_eq!(c[0].call(&["RPOPLPUSH", "q", "other"]).await, bulk("m"));
        assert_eq!(
            c[0].call(&["EXISTS", "q"]).await,
            Value::Int(0),
            "an empty list is no key"
        );
        assert_eq!(
            c[1].call(&["LRANGE", "other", "0", "-1"]).await,
            Value::Array(vec![bulk("m"), bulk("a")])
        );
        assert_eq!(c[1].call(&["TYPE", "other"]).await, Value::Simple("list".into()));
        // A renamed list keeps its order after pushes at the head (the record's head
        // position moves with the elements).
        assert_eq!(c[1].call(&["LPUSH", "other", "z"]).await, Value::Int(3));
        assert_eq!(c[1].call(&["RENAME", "other", "moved"]).await, ok());
        assert_eq!(
            c[2].call(&["LRANGE", "moved", "0", "-1"]).await,
            Value::Array(vec![bulk("z"), bulk("m"), bulk("a")])
        );
        assert_eq!(c[2].call(&["RENAME", "moved", "other"]).await, ok());
        assert_eq!(c[2].call(&["LPOP", "other"]).await, bulk("z"));
        assert_eq!(c[1].call(&["LPUSHX", "missing", "x"]).await, Value::Int(0));
        assert_eq!(c[1].call(&["LPOP", "missing", "2"]).await, Value::Nil);

        // A blocking pop times out empty, and is woken by a push through another node.
        let started = Instant::now();
        assert_eq!(c[0].call(&["BLPOP", "jobs", "0.3"]).await, Value::Nil);
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "BLPOP waited its timeout"
        );
        let port = cluster.nodes[0].redis_port;
        let waiter = tokio::spawn(async move {
            let mut client = Client::connect(port).await;
            let started = Instant::now();
            let reply = client.call(&["BLPOP", "other-jobs", "jobs", "0"]).await;
            (reply, started.elapsed())
        });
        // Push only once the waiter is blocked (CLIENT LIST shows it running BLPOP), so
        // the wake-up path is what is tested.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c[0].call(&["CLIENT", "LIST"]).await.text().contains("cmd=blpop") {
            assert!(Instant::now() < deadline, "the waiter never blocked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(c[2].call(&["RPUSH", "jobs", "job-1"]).await, Value::Int(1));
        let (reply, waited) = waiter.await.expect("the waiter");
        assert_eq!(reply, Value::Array(vec![bulk("jobs"), bulk("job-1")]));
        assert!(
            waited < Duration::from_secs(4),
            "woken by the push, not by the 5 s recheck: {waited:?}"
        );
        assert_eq!(c[1].call(&["EXISTS", "jobs"]).await, Value::Int(0), "the pop took it");
        // BLMOVE moves atomically once there is something to move.
        assert_eq!(c[1].call(&["RPUSH", "src", "v"]).await, Value::Int(1));
        assert_eq!(
            c[2].call(&["BLMOVE", "src", "dst", "LEFT", "RIGHT", "1"]).await,
            bulk("v")
        );
        assert_eq!(
            c[0].call(&["LRANGE", "dst", "0", "-1"]).await,
            Value::Array(vec![bulk("v")])
        );
        assert_eq!(c[0].call(&["BRPOP", "src", "0.1"]).await, Value::Nil);
        assert_eq!(c[0].call(&["SET", "str", "x"]).await, ok());
        assert_eq!(
            c[0].call(&["LPUSH", "str", "x"]).await,
            Value::Error("WRONGTYPE Operation against a key holding the wrong kind of value".into())
        );
    })
    .await;
}

#[tokio::test]
async fn pubsub_delivers_across_nodes_in_publish_order() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut c = clients(&cluster).await;
        let mut other = Client::connect(cluster.nodes[1].redis_port).await;
        assert_eq!(c[0].call(&["SUBSCRIBE", "news", "sports"]).await, Value::Array(vec![bulk("subscribe"), bulk("news"), Value::Int(1)]));
        assert_eq!(c[0].read().await, Value::Array(vec![bulk("subscribe"), bulk("sports"), Value::Int(2)]));
        assert_eq!(c[1].call(&["PSUBSCRIBE", "n*"]).await, Value::Array(vec![bulk("psubscribe"), bulk("n*"), Value::Int(1)]));
        // RESP2 subscribers run only subscription commands; PING answers in kind.
        assert_eq!(
            c[0].call(&["GET", "x"]).await,
            Value::Error("ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context".into())
        );
        assert_eq!(c[0].call(&["PING"]).await, Value::Array(vec![bulk("pong"), bulk("")]));
        let mut numsub = Client::connect(cluster.nodes[0].redis_port).await;
        assert_eq!(numsub.call(&["PUBSUB", "NUMSUB", "news", "none"]).await, Value::Array(vec![bulk("news"), Value::Int(1), bulk("none"), Value::Int(0)]));
        assert_eq!(numsub.call(&["PUBSUB", "CHANNELS"]).await, Value::Array(vec![bulk("news"), bulk("sports")]));

        // Published through two other nodes, alternately: every subscriber gets every
        // message of its channels, in the order they were published.
        for index in 0..20 {
            let message = format!("m{index}");
            let publisher = if index % 2 == 0 { &mut c[2] } else { &mut other };
            assert!(matches!(publisher.call(&["PUBLISH", "news", &message]).await, Value::Int(_)));
        }
        assert!(matches!(c[2].call(&["PUBLISH", "sports", "goal"]).await, Value::Int(_)));
        for index in 0..20 {
            let message = format!("m{index}");
            assert_eq!(c[0].read().await, Value::Array(vec![bulk("message"), bulk("news"), bulk(&message)]));
            assert_eq!(c[1].read().await, Value::Array(vec![bulk("pmessage"), bulk("n*"), bulk("news"), bulk(&message)]));
        }
        assert_eq!(c[0].read().await, Value::Array(vec![bulk("message"), bulk("sports"), bulk("goal")]));
        // A publish on a subscriber's own node counts it.
        assert_eq!(numsub.call(&["PUBLISH", "sports", "again"]).await, Value::Int(1));
        assert_eq!(c[0].read().await, Value::Array(vec![bulk("message"), bulk("sports"), bulk("again")]));

        assert_eq!(c[0].call(&["UNSUBSCRIBE"]).await, Value::Array(vec![bulk("unsubscribe"), bulk("news"), Value::Int(1)]));
        assert_eq!(c[0].read().await, Value::Array(vec![bulk("unsubscribe"), bulk("sports"), Value::Int(0)]));
        assert_eq!(c[0].call(&["GET", "x"]).await, Value::Nil);

        // RESP3 subscribers get pushes and may run any command.
        let mut resp3 = Client::connect(cluster.nodes[2].redis_port).await;
        assert!(matches!(resp3.call(&["HELLO", "3"]).await, Value::Map(_)));
        assert_eq!(resp3.call(&["SUBSCRIBE", "news"]).await, Value::Array(vec![bulk("subscribe"), bulk("news"), Value::Int(1)]));
        assert_eq!(resp3.call(&["SET", "k", "v"]).await, ok());
        assert!(matches!(other.call(&["PUBLISH", "news", "late"]).await, Value::Int(_)));
        assert_eq!(resp3.read().await, Value::Array(vec![bulk("message"), bulk("news"), bulk("late")]));
    })
    .await;
}

#[tokio::test]
async fn sorted_sets_through_every_node() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut c = clients(&cluster).await;
        assert_eq!(
            c[0].call(&["ZADD", "board", "10", "ann", "20", "bob", "15", "cy"])
                .await,
            Value::Int(3)
        );
        assert_eq!(
            c[1].call(&["ZADD", "board", "XX", "CH", "25", "bob", "1", "new"]).await,
            Value::Int(1)
        );
        assert_eq!(c[1].call(&["ZADD", "board", "NX", "99", "ann"]).await, Value::Int(0));
        assert_eq!(c[2].call(&["ZADD", "board", "GT", "5", "ann"]).await, Value::Int(0));
        assert_eq!(c[2].call(&["ZSCORE", "board", "ann"]).await, bulk("10"));
        assert_eq!(c[2].call(&["ZINCRBY", "board", "2.5", "ann"]).await, bulk("12.5"));
        assert_eq!(c[0].call(&["ZADD", "board", "INCR", "1", "cy"]).await, bulk("16"));
        assert_eq!(c[0].call(&["ZCARD", "board"]).await, Value::Int(3));
        assert_eq!(
            c[1].call(&["ZRANGE", "board", "0", "-1", "WITHSCORES"]).await,
            Value::Array(vec![
                bulk("ann"),
                bulk("12.5"),
                bulk("cy"),
                bulk("16"),
                bulk("bob"),
                bulk("25")
            ])
        );
        assert_eq!(
            c[1].call(&["ZREVRANGE", "board", "0", "0"]).await,
            Value::Array(vec![bulk("bob")])
        );
        assert_eq!(
            c[2].call(&["ZRANGE", "board", "(12.5", "+inf", "BYSCORE", "LIMIT", "0", "1"])
                .await,
            Value::Array(vec![bulk("cy")])
        );
        assert_eq!(
            c[2].call(&["ZRANGEBYSCORE", "board", "-inf", "16"]).await,
            Value::Array(vec![bulk("ann"), bulk("cy")])
        );
        assert_eq!(
            c[2].call(&["ZREVRANGEBYSCORE", "board", "+inf", "(16"]).await,
            Value::Array(vec![bulk("bob")])
        );
        assert_eq!(c[0].call(&["ZRANK", "board", "cy"]).await, Value::Int(1));
        assert_eq!(c[0].call(&["ZREVRANK", "board", "cy"]).await, Value::Int(1));
        assert_eq!(c[0].call(&["ZRANK", "board", "nobody"]).await, Value::Nil);
        assert_eq!(c[0].call(&["ZCOUNT", "board", "12", "20"]).await, Value::Int(2));
        assert_eq!(
            c[0].call(&["ZMSCORE", "board", "bob", "nobody"]).await,
            Value::Array(vec![bulk("25"), Value::Nil])
        );
        assert_eq!(
            c[1].call(&["ZPOPMIN", "board"]).await,
            Value::Array(vec![bulk("ann"), bulk("12.5")])
        );
        assert_eq!(c[1].call(&["ZREM", "board", "cy", "nobody"]).await, Value::Int(1));
        assert_eq!(
            c[2].call(&["ZRANGE", "board", "0", "-1"]).await,
            Value::Array(vec![bulk("bob")])
        );
        assert_eq!(c[2].call(&["TYPE", "board"]).await, Value::Simple("zset".into()));
        assert_eq!(
            c[2].call(&["ZADD", "board", "x", "m"]).await,
            Value::Error("ERR value is not a valid float".into())
        );
        assert_eq!(
            c[2].call(&["ZADD", "board", "NX", "XX", "1", "m"]).await,
            Value::Error("ERR XX and NX options at the same time are not compatible".into())
        );

        // Lex ranges and set operations (keys in different slots: across ranges when
        // the cluster is split).
        assert_eq!(
            c[0].call(&["ZADD", "lex", "0", "a", "0", "b", "0", "c", "0", "d"])
                .await,
            Value::Int(4)
        );
        assert_eq!(
            c[1].call(&["ZRANGEBYLEX", "lex", "[b", "(d"]).await,
            Value::Array(vec![bulk("b"), bulk("c")])
        );
        assert_eq!(c[1].call(&["ZLEXCOUNT", "lex", "-", "+"]).await, Value::Int(4));
        assert_eq!(c[1].call(&["ZREMRANGEBYLEX", "lex", "[c", "+"]).await, Value::Int(2));
        assert_eq!(c[0].call(&["ZADD", "z1", "1", "a", "2", "b"]).await, Value::Int(2));
        assert_eq!(c[0].call(&["ZADD", "z2", "10", "b", "20", "c"]).await, Value::Int(2));
        assert_eq!(
            c[2].call(&["ZUNIONSTORE", "zu", "2", "z1", "z2", "WEIGHTS", "1", "2"])
                .await,
            Value::Int(3)
        );
        assert_eq!(
            c[2].call(&["ZRANGE", "zu", "0", "-1", "WITHSCORES"]).await,
            Value::Array(vec![bulk("a"), bulk("1"), bulk("b"), bulk("22"), bulk("c"), bulk("40")])
        );
        assert_eq!(
            c[0].call(&["ZINTER", "2", "z1", "z2", "AGGREGATE", "MAX", "WITHSCORES"])
                .await,
            Value::Array(vec![bulk("b"), bulk("10")])
        );
        assert_eq!(
            c[0].call(&["ZDIFF", "2", "z1", "z2"]).await,
            Value::Array(vec![bulk("a")])
        );
        assert_eq!(c[1].call(&["ZREMRANGEBYRANK", "zu", "0", "0"]).await, Value::Int(1));
        assert_eq!(
            c[1].call(&["ZREMRANGEBYSCORE", "zu", "-inf", "(40"]).await,
            Value::Int(1)
        );
        assert_eq!(c[1].call(&["ZCARD", "zu"]).await, Value::Int(1));
        // Blocking pops: one waiting on an empty set is woken by a ZADD on another node.
        assert_eq!(c[0].call(&["BZPOPMIN", "empty", "0.1"]).await, Value::Nil);
        let port = cluster.nodes[0].redis_port;
        let waiter = tokio::spawn(async move {
            let mut client = Client::connect(port).await;
            client.call(&["BZPOPMAX", "scores", "0"]).await
        });
        assert_eq!(
            c[2].call(&["ZADD", "scores", "1", "low", "9", "high"]).await,
            Value::Int(2)
        );
        assert_eq!(
            waiter.await.expect("the waiter"),
            Value::Array(vec![bulk("scores"), bulk("high"), bulk("9")])
        );
        assert_eq!(
            c[1].call(&["ZRANGE", "scores", "0", "-1"]).await,
            Value::Array(vec![bulk("low")])
        );
        // RESP3: scores are doubles.
        let mut resp3 = Client::connect(cluster.nodes[2].redis_port).await;
        assert!(matches!(resp3.call(&["HELLO", "3"]).await, Value::Map(_)));
        assert_eq!(resp3.call(&["ZSCORE", "zu", "c"]).await, Value::Double("40".into()));
        assert_eq!(
            resp3.call(&["ZRANGE", "z1", "0", "-1", "WITHSCORES"]).await,
            Value::Array(vec![
                Value::Array(vec![bulk("a"), Value::Double("1".into())]),
                Value::Array(vec![bulk("b"), Value::Double("2".into())]),
            ])
        );
    })
    .await;
}

/// The `redis` crate's client, as an application would use it: commands, a pipeline, and
/// its optimistic transaction helper (WATCH, MULTI, EXEC, retried on conflict) from
/// several threads at once.
#[tokio::test]
async fn the_redis_crate_works_against_any_node() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let urls: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}/", node.redis_port))
            .collect();
        let checked = tokio::task::spawn_blocking(move || {
            use redis::Commands;
            let connect = |url: &str| {
                redis::Client::open(url)
                    .and_then(|client| client.get_connection())
                    .expect("connecting with the redis crate")
            };
            let mut first = connect(&urls[0]);
            let mut second = connect(&urls[1]);
            let () = first.set("crate:greeting", "hello").expect("SET");
            let greeting: String = second.get("crate:greeting").expect("GET");
            assert_eq!(greeting, "hello");
            let _: () = first
                .hset_multiple("crate:user", &[("name", "ann"), ("city", "oslo")])
                .expect("HSET");
            let user: std::collections::HashMap<String, String> = second.hgetall("crate:user").expect("HGETALL");
            assert_eq!(user.get("city").map(String::as_str), Some("oslo"));
            let (count, members): (i64, Vec<String>) = redis::pipe()
                .rpush("crate:list", &["a", "b", "c"])
                .lrange("crate:list", 0, -1)
                .query(&mut second)
                .expect("a pipeline");
            assert_eq!(
                (count, members),
                (3, vec!["a".to_string(), "b".to_string(), "c".to_string()])
            );
            let missing: Option<String> = first.get("crate:missing").expect("GET of a missing key");
            assert_eq!(missing, None);
            let error = first
                .incr::<_, _, i64>("crate:greeting", 1)
                .expect_err("INCR of a word");
            assert!(error.to_string().contains("not an integer"), "{error}");

            // The crate's transaction helper from three threads through three nodes.
            let workers: Vec<_> = urls
                .iter()
                .cloned()
                .map(|url| {
                    std::thread::spawn(move || {
                        let mut connection = connect(&url);
                        for _ in 0..10 {
                            let _: () = redis::transaction(&mut connection, &["crate:counter"], |connection, pipe| {
                                let current: Option<i64> = connection.get("crate:counter")?;
                                pipe.set("crate:counter", current.unwrap_or(0) + 1)
                                    .ignore()
                                    .query(connection)
                            })
                            .expect("a transaction");
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.join().expect("a worker thread");
            }
            let counter: i64 = first.get("crate:counter").expect("GET");
            counter
        })
        .await
        .expect("the client thread");
        assert_eq!(checked, 30, "no transaction lost an increment");
    })
    .await;
}

#[tokio::test]
async fn cluster_slots_name_each_range_leader() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let ports: Vec<i64> = cluster.nodes.iter().map(|node| node.redis_port as i64).collect();
        let mut c = Client::connect(cluster.nodes[1].redis_port).await;
        assert_eq!(c.call(&["CLUSTER", "KEYSLOT", "foo"]).await, Value::Int(12182));
        // The examples of Redis's documentation.
        assert_eq!(c.call(&["CLUSTER", "KEYSLOT", "somekey"]).await, Value::Int(11058));
        assert_eq!(c.call(&["CLUSTER", "KEYSLOT", "foo{hash_tag}"]).await, Value::Int(2515));
        let Value::Bulk(id) = c.call(&["CLUSTER", "MYID"]).await else {
            panic!("MYID is a bulk string")
        };
        assert_eq!(id.len(), 40);
        // Members publish their Redis address once they start: wait for all three.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let nodes = c.call(&["CLUSTER", "NODES"]).await.text();
            if nodes.lines().count() == 3 {
                assert_eq!(
                    nodes.lines().filter(|line| line.contains("myself")).count(),
                    1,
                    "{nodes}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "members never published their Redis address: {nodes}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every slot once, in order, each with a master at one of the nodes.
        let Value::Array(slots) = c.call(&["CLUSTER", "SLOTS"]).await else {
            panic!("SLOTS is an array")
        };
        assert!(!slots.is_empty());
        let mut next = 0;
        for entry in &slots {
            let Value::Array(parts) = entry else {
                panic!("a slot range is an array")
            };
            assert_eq!(parts[0], Value::Int(next), "slots covered without gaps: {slots:?}");
            let Value::Int(last) = parts[1] else {
                panic!("a slot number")
            };
            let Value::Array(master) = &parts[2] else {
                panic!("a node")
            };
            let Value::Int(port) = master[1] else { panic!("a port") };
            assert!(ports.contains(&port), "the master {master:?} is a node");
            assert!(parts.len() >= 4, "replicas are listed too: {parts:?}");
            next = last + 1;
        }
        assert_eq!(next, 16384, "every slot is served");
        let Value::Array(shards) = c.call(&["CLUSTER", "SHARDS"]).await else {
            panic!("SHARDS is an array")
        };
        assert_eq!(shards.len(), slots.len());
    })
    .await;
}

/// Lua scripts: redis.call on the declared keys, atomically (a Redlock-style release,
/// concurrent counters from every node), Redis's reply conversions, the script cache,
/// errors, and a runaway script stopped by SCRIPT KILL from another connection.
#[tokio::test(flavor = "multi_thread")]
async fn lua_scripts_run_atomically_on_their_keys() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut c = clients(&cluster).await;
        let set = "return redis.call('SET', KEYS[1], ARGV[1])";
        assert_eq!(c[0].call(&["EVAL", set, "1", "lock:a", "token-1"]).await, ok());
        assert_eq!(
            c[1].call(&["EVAL", "return redis.call('GET', KEYS[1])", "1", "lock:a"]).await,
            bulk("token-1")
        );
        // The release every Redis lock client sends: delete only if still ours.
        let release = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
        assert_eq!(c[2].call(&["EVAL", release, "1", "lock:a", "token-2"]).await, Value::Int(0));
        assert_eq!(c[2].call(&["EVAL", release, "1", "lock:a", "token-1"]).await, Value::Int(1));
        assert_eq!(c[0].call(&["EXISTS", "lock:a"]).await, Value::Int(0));

        // Redis's conversions both ways.
        let shapes = "return {1, 'two', {3, 4.9}, redis.status_reply('fine'), ARGV[1], false, 'after nil'}";
        assert_eq!(
            c[0].call(&["EVAL", shapes, "0", "arg"]).await,
            Value::Array(vec![
                Value::Int(1),
                bulk("two"),
                Value::Array(vec![Value::Int(3), Value::Int(4)]),
                Value::Simple("fine".into()),
                bulk("arg"),
                Value::Nil,
                bulk("after nil"),
            ])
        );
        let pcall = "local r = redis.pcall('INCR', KEYS[1]) return r['err']";
        assert_eq!(c[0].call(&["SET", "text", "abc"]).await, ok());
        assert_eq!(
            c[0].call(&["EVAL", pcall, "1", "text"]).await,
            bulk("ERR value is not an integer or out of range")
        );
        // Writes across two ranges' keys apply together.
        let both = "redis.call('SET', KEYS[1], 'a') redis.call('SET', KEYS[2], 'b') return redis.call('MGET', KEYS[1], KEYS[2])";
        assert_eq!(
            c[1].call(&["EVAL", both, "2", "{x}1", "{y}2"]).await,
            Value::Array(vec![bulk("a"), bulk("b")])
        );

        // The cache: SCRIPT LOAD, EVALSHA, EXISTS, FLUSH; per node, as in Redis Cluster.
        let sha = match c[0].call(&["SCRIPT", "LOAD", "return ARGV[1] .. '!'"]).await {
            Value::Bulk(sha) => String::from_utf8(sha).unwrap(),
            other => panic!("SCRIPT LOAD answered {other:?}"),
        };
        assert_eq!(sha.len(), 40);
        assert_eq!(c[0].call(&["EVALSHA", &sha, "0", "hi"]).await, bulk("hi!"));
        let missing = c[1].call(&["EVALSHA", &sha, "0", "hi"]).await;
        assert_eq!(missing, Value::Error("NOSCRIPT No matching script. Please use EVAL.".into()));
        assert_eq!(
            c[0].call(&["SCRIPT", "EXISTS", &sha, "0000000000000000000000000000000000000000"]).await,
            Value::Array(vec![Value::Int(1), Value::Int(0)])
        );
        assert_eq!(c[0].call(&["SCRIPT", "FLUSH"]).await, ok());
        assert_eq!(c[0].call(&["SCRIPT", "EXISTS", &sha]).await, Value::Array(vec![Value::Int(0)]));

        // Errors, each in Redis's form; the node keeps serving.
        let undeclared = c[0].call(&["EVAL", "return redis.call('GET', 'elsewhere')", "0"]).await;
        assert!(undeclared.text().contains("not declared in KEYS"), "{undeclared:?}");
        let wrong_type = c[0].call(&["EVAL", "return redis.call('LPUSH', KEYS[1], 'x')", "1", "text"]).await;
        assert!(wrong_type.text().starts_with("WRONGTYPE"), "{wrong_type:?}");
        let syntax = c[0].call(&["EVAL", "return +", "0"]).await;
        assert!(syntax.text().starts_with("ERR Error compiling script"), "{syntax:?}");
        let runtime = c[0].call(&["EVAL", "return nil + 1", "0"]).await;
        assert!(runtime.text().starts_with("ERR Error running script"), "{runtime:?}");
        let sandbox = c[0].call(&["EVAL", "return os.time()", "0"]).await;
        assert!(sandbox.text().starts_with("ERR Error running script"), "{sandbox:?}");
        assert_eq!(
            c[0].call(&["EVAL", "return 1", "2", "only-one"]).await,
            Value::Error("ERR Number of keys can't be greater than number of args".into())
        );
        assert_eq!(
            c[0].call(&["EVAL_RO", "return redis.call('SET', KEYS[1], 'x')", "1", "k"]).await,
            Value::Error("ERR Write commands are not allowed from read-only scripts.".into())
        );

        // Counters from every node: no increment lost.
        let mut tasks = Vec::new();
        for node in &cluster.nodes {
            let port = node.redis_port;
            tasks.push(tokio::spawn(async move {
                let mut client = Client::connect(port).await;
                for _ in 0..30 {
                    let reply = client
                        .call(&["EVAL", "return redis.call('INCRBY', KEYS[1], ARGV[1])", "1", "hits", "2"])
                        .await;
                    assert!(matches!(reply, Value::Int(_)), "{reply:?}");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(c[2].call(&["GET", "hits"]).await, bulk("180"));

        // A runaway script is stopped by SCRIPT KILL from another connection.
        assert_eq!(
            c[1].call(&["SCRIPT", "KILL"]).await,
            Value::Error("NOTBUSY No scripts in execution right now.".into())
        );
        let port = cluster.nodes[0].redis_port;
        let runaway = tokio::spawn(async move {
            let mut client = Client::connect(port).await;
            client.call(&["EVAL", "while true do end", "0"]).await
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c[0].call(&["CLIENT", "LIST"]).await.text().contains("cmd=eval") {
            assert!(Instant::now() < deadline, "the script never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(c[0].call(&["SCRIPT", "KILL"]).await, ok());
        let stopped = runaway.await.unwrap();
        assert!(stopped.text().contains("Script killed by user with SCRIPT KILL"), "{stopped:?}");
        assert_eq!(c[0].call(&["PING"]).await, Value::Simple("PONG".into()));
    })
    .await;
}

/// A stream entry as XRANGE and XREAD answer it: its id, then its field-value pairs.
fn entry(id: &str, pairs: &[&str]) -> Value {
    Value::Array(vec![
        bulk(id),
        Value::Array(pairs.iter().map(|item| bulk(item)).collect()),
    ])
}

/// The ids of the entries in an XRANGE-shaped answer.
fn entry_ids(entries: &Value) -> Vec<String> {
    let Value::Array(entries) = entries else {
        panic!("entries are an array: {entries:?}")
    };
    entries
        .iter()
        .map(|entry| match entry {
            Value::Array(parts) => parts[0].text(),
            other => panic!("an entry is an array: {other:?}"),
        })
        .collect()
}

fn stream_id(text: &str) -> (u64, u64) {
    let (ms, seq) = text.split_once('-').expect("an id is ms-seq");
    (ms.parse().expect("milliseconds"), seq.parse().expect("a sequence"))
}

/// A RESP2 map (a flat array of names and values) by name.
fn fields(value: &Value) -> std::collections::HashMap<String, Value> {
    let Value::Array(items) = value else {
        panic!("a flat map is an array: {value:?}")
    };
    items.chunks(2).map(|pair| (pair[0].text(), pair[1].clone())).collect()
}

#[tokio::test]
async fn streams_through_every_node() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut c = clients(&cluster).await;
        // Explicit ids, ms-*, and * from the clock: each above the stream's last id.
        assert_eq!(c[0].call(&["XADD", "s", "1-1", "a", "1"]).await, bulk("1-1"));
        assert_eq!(c[1].call(&["XADD", "s", "1-*", "b", "2"]).await, bulk("1-2"));
        assert_eq!(c[2].call(&["XADD", "s", "2-*", "c", "3", "d", "4"]).await, bulk("2-0"));
        let auto = c[0].call(&["XADD", "s", "*", "e", "5"]).await.text();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_millis() as u64;
        let (ms, _) = stream_id(&auto);
        assert!(ms.abs_diff(now_ms) < 60_000, "* takes the node's clock: {auto}");
        for (args, error) in [
            (
                &["XADD", "s", "2-0", "x", "1"][..],
                "ERR The ID specified in XADD is equal or smaller than the target stream top item",
            ),
            (
                &["XADD", "s", "0-0", "x", "1"][..],
                "ERR The ID specified in XADD must be greater than 0-0",
            ),
            (
                &["XADD", "s", "abc", "x", "1"][..],
                "ERR Invalid stream ID specified as stream command argument",
            ),
            (
                &["XADD", "s", "*", "x"][..],
                "ERR wrong number of arguments for 'xadd' command",
            ),
            (&["XADD", "s"][..], "ERR wrong number of arguments for 'xadd' command"),
            (
                &["XADD", "s", "MAXLEN", "-1", "*", "x", "1"][..],
                "ERR The MAXLEN argument must be >= 0.",
            ),
            (
                &["XADD", "s", "MAXLEN", "2", "LIMIT", "1", "*", "x", "1"][..],
                "ERR syntax error, LIMIT cannot be used without the special ~ option",
            ),
            (
                &["XRANGE", "s", "x", "+"][..],
                "ERR Invalid stream ID specified as stream command argument",
            ),
            (
                &["XRANGE", "s", "(-", "+"][..],
                "ERR Invalid stream ID specified as stream command argument",
            ),
            (&["XRANGE", "s", "-", "(0-0"][..], "ERR invalid end ID for the interval"),
            (&["XRANGE", "s", "-", "+", "COUNT"][..], "ERR syntax error"),
            (
                &["XDEL", "s", "1-x"][..],
                "ERR Invalid stream ID specified as stream command argument",
            ),
            (
                &["XTRIM", "s", "LIMIT", "0"][..],
                "ERR syntax error, XTRIM must be called with a trimming strategy",
            ),
            (
                &["XTRIM", "s", "LIMIT", "1"][..],
                "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy",
            ),
            (&["XLEN"][..], "ERR wrong number of arguments for 'xlen' command"),
            (
                &["XREAD", "STREAMS", "s", "t", "0"][..],
                "ERR Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified.",
            ),
            (
                &["XREAD", "STREAMS", "s", ">"][..],
                "ERR The > ID can be specified only when calling XREADGROUP using the GROUP <group> <consumer> option.",
            ),
            (
                &["XREAD", "BLOCK", "-1", "STREAMS", "s", "0"][..],
                "ERR timeout is negative",
            ),
            (&["XREAD", "COUNT", "1", "s", "0"][..], "ERR syntax error"),
        ] {
            assert_eq!(c[1].call(args).await, Value::Error(error.into()), "{args:?}");
        }
        assert_eq!(
            c[1].call(&["XADD", "nothing", "NOMKSTREAM", "*", "x", "1"]).await,
            Value::Nil
        );
        assert_eq!(c[2].call(&["EXISTS", "nothing"]).await, Value::Int(0));
        assert_eq!(c[2].call(&["XLEN", "s"]).await, Value::Int(4));
        assert_eq!(c[2].call(&["XLEN", "nothing"]).await, Value::Int(0));
        assert_eq!(
            c[1].call(&["XRANGE", "s", "-", "+"]).await,
            Value::Array(vec![
                entry("1-1", &["a", "1"]),
                entry("1-2", &["b", "2"]),
                entry("2-0", &["c", "3", "d", "4"]),
                entry(&auto, &["e", "5"]),
            ])
        );
        assert_eq!(
            c[2].call(&["XRANGE", "s", "(1-1", "2", "COUNT", "5"]).await,
            Value::Array(vec![entry("1-2", &["b", "2"]), entry("2-0", &["c", "3", "d", "4"])])
        );
        assert_eq!(
            c[0].call(&["XREVRANGE", "s", "+", "-", "COUNT", "2"]).await,
            Value::Array(vec![entry(&auto, &["e", "5"]), entry("2-0", &["c", "3", "d", "4"])])
        );
        assert_eq!(c[0].call(&["XRANGE", "s", "-", "+", "COUNT", "0"]).await, Value::Nil);
        assert_eq!(c[0].call(&["XRANGE", "s", "5", "1"]).await, Value::Array(vec![]));
        assert_eq!(c[0].call(&["XRANGE", "nothing", "-", "+"]).await, Value::Array(vec![]));

        // XDEL, then XTRIM and XADD's trimming.
        assert_eq!(c[1].call(&["XDEL", "s", "1-1", "9-9", "1-1"]).await, Value::Int(1));
        assert_eq!(c[2].call(&["XLEN", "s"]).await, Value::Int(3));
        assert_eq!(c[2].call(&["XTRIM", "s", "MAXLEN", "2"]).await, Value::Int(1));
        assert_eq!(
            entry_ids(&c[0].call(&["XRANGE", "s", "-", "+"]).await),
            ["2-0", auto.as_str()]
        );
        assert_eq!(c[0].call(&["XTRIM", "s", "MINID", "=", "2-1"]).await, Value::Int(1));
        assert_eq!(
            c[0].call(&["XTRIM", "s", "MAXLEN", "~", "5", "LIMIT", "10"]).await,
            Value::Int(0)
        );
        for index in 0..4 {
            let id = format!("{}-0", ms + 1 + index);
            assert_eq!(
                c[index as usize % 3]
                    .call(&["XADD", "s", "MAXLEN", "=", "3", &id, "n", &index.to_string()])
                    .await,
                bulk(&id)
            );
        }
        assert_eq!(c[1].call(&["XLEN", "s"]).await, Value::Int(3));
        let minid = format!("{}-0", ms + 3);
        assert_eq!(
            entry_ids(&c[1].call(&["XRANGE", "s", "-", "+"]).await),
            [
                format!("{}-0", ms + 2),
                format!("{}-0", ms + 3),
                format!("{}-0", ms + 4)
            ]
        );
        c[2].call(&["XADD", "s", "MINID", &minid, "*", "n", "last"])
            .await
            .text();
        assert_eq!(c[0].call(&["XLEN", "s"]).await, Value::Int(3));

        // XREAD: entries after an id, per stream; `$` (the last id) finds nothing new.
        assert_eq!(c[0].call(&["XADD", "t", "1-0", "k", "v"]).await, bulk("1-0"));
        let Value::Array(read) = c[1].call(&["XREAD", "COUNT", "1", "STREAMS", "s", "t", "0", "0"]).await else {
            panic!("XREAD answers an array")
        };
        assert_eq!(read.len(), 2);
        assert_eq!(
            read[1],
            Value::Array(vec![bulk("t"), Value::Array(vec![entry("1-0", &["k", "v"])])])
        );
        assert_eq!(c[1].call(&["XREAD", "STREAMS", "s", "t", "$", "$"]).await, Value::Nil);
        assert_eq!(c[1].call(&["XREAD", "STREAMS", "t", "1-0"]).await, Value::Nil);
        assert_eq!(c[1].call(&["XREAD", "STREAMS", "nothing", "0"]).await, Value::Nil);
        // RESP3: a map of stream names to entries.
        let mut resp3 = Client::connect(cluster.nodes[2].redis_port).await;
        assert!(matches!(resp3.call(&["HELLO", "3"]).await, Value::Map(_)));
        assert_eq!(
            resp3.call(&["XREAD", "STREAMS", "t", "0"]).await,
            Value::Map(vec![(bulk("t"), Value::Array(vec![entry("1-0", &["k", "v"])]))])
        );
        assert_eq!(resp3.call(&["XREAD", "STREAMS", "t", "$"]).await, Value::Nil);

        // A stream is a key like the others.
        assert_eq!(c[0].call(&["TYPE", "s"]).await, Value::Simple("stream".into()));
        assert_eq!(c[0].call(&["OBJECT", "ENCODING", "s"]).await, bulk("stream"));
        assert_eq!(c[0].call(&["SET", "plain", "x"]).await, ok());
        let wrong = Value::Error("WRONGTYPE Operation against a key holding the wrong kind of value".into());
        assert_eq!(c[0].call(&["XADD", "plain", "*", "a", "1"]).await, wrong);
        assert_eq!(c[0].call(&["XRANGE", "plain", "-", "+"]).await, wrong);
        assert_eq!(c[0].call(&["XREAD", "STREAMS", "plain", "0"]).await, wrong);
        assert_eq!(c[0].call(&["LPUSH", "s", "x"]).await, wrong);
        let before = c[1].call(&["XRANGE", "s", "-", "+"]).await;
        assert_eq!(c[1].call(&["RENAME", "s", "renamed"]).await, ok());
        assert_eq!(c[2].call(&["XRANGE", "renamed", "-", "+"]).await, before);
        assert_eq!(c[2].call(&["COPY", "renamed", "copied"]).await, Value::Int(1));
        assert_eq!(c[0].call(&["XRANGE", "copied", "-", "+"]).await, before);
        // The copy keeps the stream's last id: XADD still refuses a smaller one.
        assert_eq!(
            c[0].call(&["XADD", "copied", "1-0", "x", "1"]).await,
            Value::Error("ERR The ID specified in XADD is equal or smaller than the target stream top item".into())
        );
        assert_eq!(c[0].call(&["DEL", "copied"]).await, Value::Int(1));
        assert_eq!(c[1].call(&["XLEN", "copied"]).await, Value::Int(0));
        assert_eq!(c[1].call(&["EXPIRE", "renamed", "100"]).await, Value::Int(1));
        let Value::Int(ttl) = c[2].call(&["TTL", "renamed"]).await else {
            panic!("TTL is an integer")
        };
        assert!((1..=100).contains(&ttl), "{ttl}");
        assert_eq!(
            sorted_texts(
                c[2].call(&["SCAN", "0", "TYPE", "stream", "COUNT", "1000"])
                    .await
                    .clone_second()
            ),
            ["renamed", "t"]
        );

        // MULTI: the commands see each other's writes and apply as one.
        assert_eq!(c[2].call(&["MULTI"]).await, ok());
        for args in [
            &["XADD", "tx", "5-0", "f", "v"][..],
            &["XLEN", "tx"][..],
            &["XRANGE", "tx", "-", "+"][..],
            &["XTRIM", "tx", "MAXLEN", "0"][..],
        ] {
            assert_eq!(c[2].call(args).await, Value::Simple("QUEUED".into()));
        }
        assert_eq!(
            c[2].call(&["EXEC"]).await,
            Value::Array(vec![
                bulk("5-0"),
                Value::Int(1),
                Value::Array(vec![entry("5-0", &["f", "v"])]),
                Value::Int(1),
            ])
        );
        assert_eq!(c[0].call(&["XLEN", "tx"]).await, Value::Int(0));
        assert_eq!(
            c[0].call(&["TYPE", "tx"]).await,
            Value::Simple("stream".into()),
            "an empty stream stays"
        );

        // A pipeline of capped appends (one batch, trimming as it goes): every id above
        // the last, and the newest ten kept.
        let mut pipeline = Vec::new();
        for index in 0..60 {
            pipeline.extend(Client::encode(&[
                "XADD",
                "capped",
                "MAXLEN",
                "10",
                "*",
                "n",
                &index.to_string(),
            ]));
        }
        c[1].send_raw(&pipeline).await;
        let mut ids = Vec::new();
        for _ in 0..60 {
            ids.push(c[1].read().await.text());
        }
        assert!(
            ids.windows(2).all(|pair| stream_id(&pair[0]) < stream_id(&pair[1])),
            "{ids:?}"
        );
        assert_eq!(c[2].call(&["XLEN", "capped"]).await, Value::Int(10));
        assert_eq!(entry_ids(&c[2].call(&["XRANGE", "capped", "-", "+"]).await), ids[50..]);
        let info = fields(&c[0].call(&["XINFO", "STREAM", "capped"]).await);
        assert_eq!(info["length"], Value::Int(10));
        assert_eq!(info["entries-added"], Value::Int(60));
        assert_eq!(info["recorded-first-entry-id"], bulk(&ids[50]));
        assert_eq!(info["last-generated-id"], bulk(&ids[59]));
        assert_eq!(info["first-entry"], entry(&ids[50], &["n", "50"]));
        assert_eq!(info["last-entry"], entry(&ids[59], &["n", "59"]));
    })
    .await;
}

impl Value {
    /// The second element of a two-element array (SCAN's keys).
    fn clone_second(&self) -> Value {
        match self {
            Value::Array(items) if items.len() == 2 => items[1].clone(),
            other => panic!("not a pair: {other:?}"),
        }
    }
}

#[tokio::test]
async fn stream_consumer_groups_through_every_node() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut c = clients(&cluster).await;
        assert_eq!(
            c[0].call(&["XGROUP", "CREATE", "jobs", "workers", "$"]).await,
            Value::Error(
                "ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically."
                    .into()
            )
        );
        assert_eq!(c[0].call(&["XGROUP", "CREATE", "jobs", "workers", "$", "MKSTREAM"]).await, ok());
        assert_eq!(c[1].call(&["XLEN", "jobs"]).await, Value::Int(0));
        assert_eq!(
            c[1].call(&["XGROUP", "CREATE", "jobs", "workers", "0"]).await,
            Value::Error("BUSYGROUP Consumer Group name already exists".into())
        );
        assert_eq!(
            c[2].call(&["XGROUP", "SETID", "jobs", "nope", "0"]).await,
            Value::Error("NOGROUP No such consumer group 'nope' for key name 'jobs'".into())
        );
        assert_eq!(
            c[2].call(&["XGROUP", "CREATE", "jobs"]).await,
            Value::Error("ERR wrong number of arguments for 'xgroup|create' command".into())
        );
        assert_eq!(
            c[2].call(&["XGROUP", "NOPE", "jobs"]).await,
            Value::Error("ERR unknown subcommand 'NOPE'. Try XGROUP HELP.".into())
        );
        for index in 1..=5 {
            let id = format!("{index}-0");
            assert_eq!(c[index % 3].call(&["XADD", "jobs", &id, "n", &index.to_string()]).await, bulk(&id));
        }
        // New entries go to one consumer each, and stay pending until acknowledged.
        assert_eq!(
            c[0].call(&["XREADGROUP", "GROUP", "workers", "alice", "COUNT", "2", "STREAMS", "jobs", ">"]).await,
            Value::Array(vec![Value::Array(vec![
                bulk("jobs"),
                Value::Array(vec![entry("1-0", &["n", "1"]), entry("2-0", &["n", "2"])]),
            ])])
        );
        assert_eq!(
            c[1].call(&["XREADGROUP", "GROUP", "workers", "bob", "COUNT", "1", "STREAMS", "jobs", ">"]).await,
            Value::Array(vec![Value::Array(vec![bulk("jobs"), Value::Array(vec![entry("3-0", &["n", "3"])])])])
        );
        for (args, error) in [
            (
                &["XREADGROUP", "GROUP", "nope", "alice", "STREAMS", "jobs", ">"][..],
                "NOGROUP No such key 'jobs' or consumer group 'nope' in XREADGROUP with GROUP option",
            ),
            (
                &["XREADGROUP", "GROUP", "workers", "alice", "STREAMS", "missing", ">"][..],
                "NOGROUP No such key 'missing' or consumer group 'workers' in XREADGROUP with GROUP option",
            ),
            (
                &["XREADGROUP", "GROUP", "workers", "alice", "STREAMS", "jobs", "$"][..],
                "ERR The $ ID is meaningless in the context of XREADGROUP: you want to read the history of this consumer by specifying a proper ID, or use the > ID to get new messages. The $ ID would just return an empty result set.",
            ),
            (
                &["XREADGROUP", "GROUP", "workers", "alice", "STREAMS", "jobs"][..],
                "ERR wrong number of arguments for 'xreadgroup' command",
            ),
            (&["XPENDING", "jobs", "nope"][..], "NOGROUP No such key 'jobs' or consumer group 'nope'"),
            (&["XPENDING", "jobs", "workers", "-", "+"][..], "ERR syntax error"),
            (&["XCLAIM", "jobs", "nope", "x", "0", "1-0"][..], "NOGROUP No such key 'jobs' or consumer group 'nope'"),
            (&["XCLAIM", "jobs", "workers", "x", "y", "1-0"][..], "ERR Invalid min-idle-time argument for XCLAIM"),
            (&["XCLAIM", "jobs", "workers", "x", "0", "1-0", "FOO"][..], "ERR Unrecognized XCLAIM option 'FOO'"),
            (&["XAUTOCLAIM", "jobs", "workers", "x", "0", "0", "COUNT", "0"][..], "ERR COUNT must be > 0"),
            (&["XACK", "jobs", "workers", "x"][..], "ERR Invalid stream ID specified as stream command argument"),
        ] {
            assert_eq!(c[2].call(args).await, Value::Error(error.into()), "{args:?}");
        }
        let summary = |count: i64, first: &str, last: &str, owners: &[(&str, &str)]| {
            Value::Array(vec![
                Value::Int(count),
                bulk(first),
                bulk(last),
                Value::Array(
                    owners
                        .iter()
                        .map(|(name, count)| Value::Array(vec![bulk(name), bulk(count)]))
                        .collect(),
                ),
            ])
        };
        assert_eq!(
            c[2].call(&["XPENDING", "jobs", "workers"]).await,
            summary(3, "1-0", "3-0", &[("alice", "2"), ("bob", "1")])
        );
        let Value::Array(alices) = c[2].call(&["XPENDING", "jobs", "workers", "-", "+", "10", "alice"]).await else {
            panic!("XPENDING's extended form is an array")
        };
        assert_eq!(alices.len(), 2);
        let Value::Array(first) = &alices[0] else { panic!("a pending entry") };
        assert_eq!((&first[0], &first[1], &first[3]), (&bulk("1-0"), &bulk("alice"), &Value::Int(1)));
        assert!(matches!(first[2], Value::Int(idle) if idle >= 0));
        // A consumer's history: its pending entries again, delivered once more.
        assert_eq!(
            entry_ids(&match c[0].call(&["XREADGROUP", "GROUP", "workers", "alice", "STREAMS", "jobs", "0"]).await {
                Value::Array(streams) => match &streams[0] {
                    Value::Array(parts) => parts[1].clone(),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            }),
            ["1-0", "2-0"]
        );
        let Value::Array(again) = c[1].call(&["XPENDING", "jobs", "workers", "IDLE", "0", "-", "+", "1"]).await else {
            panic!("an array")
        };
        assert!(matches!(&again[0], Value::Array(parts) if parts[3] == Value::Int(2)));
        assert_eq!(c[1].call(&["XACK", "jobs", "workers", "1-0", "9-0"]).await, Value::Int(1));
        assert_eq!(c[2].call(&["XACK", "jobs", "workers", "1-0"]).await, Value::Int(0));
        assert_eq!(c[2].call(&["XACK", "jobs", "nope", "2-0"]).await, Value::Int(0));
        assert_eq!(
            c[0].call(&["XPENDING", "jobs", "workers"]).await,
            summary(2, "2-0", "3-0", &[("alice", "1"), ("bob", "1")])
        );
        // Claims: only entries idle long enough, unless forced.
        assert_eq!(
            c[0].call(&["XCLAIM", "jobs", "workers", "carol", "3600000", "2-0"]).await,
            Value::Array(vec![])
        );
        assert_eq!(
            c[1].call(&["XCLAIM", "jobs", "workers", "carol", "0", "2-0", "IDLE", "5000"]).await,
            Value::Array(vec![entry("2-0", &["n", "2"])])
        );
        assert_eq!(
            c[2].call(&["XCLAIM", "jobs", "workers", "dave", "4000", "2-0", "JUSTID"]).await,
            Value::Array(vec![bulk("2-0")])
        );
        assert_eq!(
            c[2].call(&["XCLAIM", "jobs", "workers", "dave", "0", "4-0"]).await,
            Value::Array(vec![]),
            "4-0 was never delivered"
        );
        assert_eq!(
            c[2].call(&["XCLAIM", "jobs", "workers", "dave", "0", "4-0", "FORCE", "JUSTID"]).await,
            Value::Array(vec![bulk("4-0")])
        );
        let Value::Array(pending) = c[0].call(&["XPENDING", "jobs", "workers", "-", "+", "10"]).await else {
            panic!("an array")
        };
        let owners: Vec<(String, String, Value)> = pending
            .iter()
            .map(|item| match item {
                Value::Array(parts) => (parts[0].text(), parts[1].text(), parts[3].clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            owners,
            [
                ("2-0".to_string(), "dave".to_string(), Value::Int(3)),
                ("3-0".to_string(), "bob".to_string(), Value::Int(1)),
                ("4-0".to_string(), "dave".to_string(), Value::Int(1)),
            ]
        );
        assert_eq!(
            c[1].call(&["XAUTOCLAIM", "jobs", "workers", "erin", "0", "0-0", "COUNT", "1"]).await,
            Value::Array(vec![bulk("3-0"), Value::Array(vec![entry("2-0", &["n", "2"])]), Value::Array(vec![])])
        );
        assert_eq!(c[2].call(&["XDEL", "jobs", "3-0"]).await, Value::Int(1));
        assert_eq!(
            c[0].call(&["XAUTOCLAIM", "jobs", "workers", "frank", "0", "0-0", "JUSTID"]).await,
            Value::Array(vec![
                bulk("0-0"),
                Value::Array(vec![bulk("2-0"), bulk("4-0")]),
                Value::Array(vec![bulk("3-0")]),
            ]),
            "a deleted entry leaves the pending list"
        );
        assert_eq!(
            c[1].call(&["XPENDING", "jobs", "workers"]).await,
            summary(2, "2-0", "4-0", &[("frank", "2")])
        );

        // XINFO's figures.
        let info = fields(&c[2].call(&["XINFO", "STREAM", "jobs"]).await);
        assert_eq!(info["length"], Value::Int(4));
        assert_eq!(info["entries-added"], Value::Int(5));
        assert_eq!(info["last-generated-id"], bulk("5-0"));
        assert_eq!(info["max-deleted-entry-id"], bulk("3-0"));
        assert_eq!(info["groups"], Value::Int(1));
        assert_eq!(info["first-entry"], entry("1-0", &["n", "1"]));
        assert_eq!(info["last-entry"], entry("5-0", &["n", "5"]));
        let Value::Array(groups) = c[0].call(&["XINFO", "GROUPS", "jobs"]).await else {
            panic!("XINFO GROUPS is an array")
        };
        let workers = fields(&groups[0]);
        assert_eq!(workers["name"], bulk("workers"));
        assert_eq!(workers["consumers"], Value::Int(6));
        assert_eq!(workers["pending"], Value::Int(2));
        assert_eq!(workers["last-delivered-id"], bulk("3-0"));
        assert_eq!(workers["entries-read"], Value::Int(3));
        let Value::Array(consumers) = c[1].call(&["XINFO", "CONSUMERS", "jobs", "workers"]).await else {
            panic!("XINFO CONSUMERS is an array")
        };
        let consumers: Vec<_> = consumers.iter().map(fields).collect();
        let names: Vec<String> = consumers.iter().map(|consumer| consumer["name"].text()).collect();
        assert_eq!(names, ["alice", "bob", "carol", "dave", "erin", "frank"]);
        assert_eq!(consumers[5]["pending"], Value::Int(2));
        assert_eq!(consumers[0]["pending"], Value::Int(0));
        assert!(consumers.iter().all(|consumer| matches!(consumer["idle"], Value::Int(idle) if idle >= 0)));
        assert_eq!(
            c[1].call(&["XINFO", "CONSUMERS", "jobs", "nope"]).await,
            Value::Error("NOGROUP No such consumer group 'nope' for key name 'jobs'".into())
        );
        assert_eq!(c[1].call(&["XINFO", "STREAM", "missing"]).await, Value::Error("ERR no such key".into()));
        let full = fields(&c[1].call(&["XINFO", "STREAM", "jobs", "FULL"]).await);
        assert_eq!(entry_ids(&full["entries"]), ["1-0", "2-0", "4-0", "5-0"]);

        // Consumers come and go; a removed consumer's pending entries go with it.
        assert_eq!(c[2].call(&["XGROUP", "CREATECONSUMER", "jobs", "workers", "gina"]).await, Value::Int(1));
        assert_eq!(c[0].call(&["XGROUP", "CREATECONSUMER", "jobs", "workers", "gina"]).await, Value::Int(0));
        assert_eq!(c[0].call(&["XGROUP", "DELCONSUMER", "jobs", "workers", "frank"]).await, Value::Int(2));
        assert_eq!(
            c[1].call(&["XPENDING", "jobs", "workers"]).await,
            Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil])
        );
        // Moving the group back delivers the entries again.
        assert_eq!(c[1].call(&["XGROUP", "SETID", "jobs", "workers", "0"]).await, ok());
        let again = c[2].call(&["XREADGROUP", "GROUP", "workers", "gina", "STREAMS", "jobs", ">"]).await;
        let Value::Array(streams) = again else { panic!("{again:?}") };
        let Value::Array(parts) = &streams[0] else { panic!("{streams:?}") };
        assert_eq!(entry_ids(&parts[1]), ["1-0", "2-0", "4-0", "5-0"]);
        // NOACK: delivered, never pending.
        assert_eq!(c[0].call(&["XGROUP", "CREATE", "jobs", "quiet", "$", "ENTRIESREAD", "5"]).await, ok());
        assert_eq!(c[0].call(&["XADD", "jobs", "6-0", "n", "6"]).await, bulk("6-0"));
        assert_eq!(
            c[1].call(&["XREADGROUP", "GROUP", "quiet", "q", "NOACK", "STREAMS", "jobs", ">"]).await,
            Value::Array(vec![Value::Array(vec![bulk("jobs"), Value::Array(vec![entry("6-0", &["n", "6"])])])])
        );
        assert_eq!(
            c[2].call(&["XPENDING", "jobs", "quiet"]).await,
            Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil])
        );
        assert_eq!(c[2].call(&["XGROUP", "DESTROY", "jobs", "workers"]).await, Value::Int(1));
        assert_eq!(c[2].call(&["XGROUP", "DESTROY", "jobs", "workers"]).await, Value::Int(0));
        let Value::Array(groups) = c[0].call(&["XINFO", "GROUPS", "jobs"]).await else {
            panic!("an array")
        };
        assert_eq!(groups.len(), 1);
        assert_eq!(fields(&groups[0])["name"], bulk("quiet"));
        assert_eq!(fields(&groups[0])["lag"], Value::Int(0));
        assert_eq!(c[0].call(&["SET", "plain", "x"]).await, ok());
        assert_eq!(
            c[0].call(&["XGROUP", "CREATE", "plain", "g", "$"]).await,
            Value::Error("WRONGTYPE Operation against a key holding the wrong kind of value".into())
        );
        // COMMAND reports the stream commands as Redis does.
        let Value::Array(described) = c[0].call(&["COMMAND", "INFO", "XREADGROUP", "XADD"]).await else {
            panic!("COMMAND INFO is an array")
        };
        let Value::Array(readgroup) = &described[0] else { panic!("{described:?}") };
        assert_eq!((&readgroup[0], &readgroup[1]), (&bulk("xreadgroup"), &Value::Int(-7)));
        let Value::Array(add) = &described[1] else { panic!("{described:?}") };
        assert_eq!((&add[1], &add[3], &add[4]), (&Value::Int(-5), &Value::Int(1), &Value::Int(1)));

        // The redis crate's raw commands against another node.
        let url = format!("redis://127.0.0.1:{}/", cluster.nodes[2].redis_port);
        let (added, read) = tokio::task::spawn_blocking(move || {
            let mut connection = redis::Client::open(url)
                .and_then(|client| client.get_connection())
                .expect("connecting with the redis crate");
            let added: String = redis::cmd("XADD")
                .arg("crate:stream")
                .arg("*")
                .arg("field")
                .arg("value")
                .query(&mut connection)
                .expect("XADD");
            let read: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg("crate:stream")
                .arg("-")
                .arg("+")
                .query(&mut connection)
                .expect("XRANGE");
            (added, read)
        })
        .await
        .expect("the client thread");
        assert_eq!(read, vec![(added, vec!["field".to_string(), "value".to_string()])]);
    })
    .await;
}

#[tokio::test]
async fn blocked_stream_reads_wake_on_an_entry_added_through_another_node() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut c = clients(&cluster).await;
        let started = Instant::now();
        assert_eq!(
            c[0].call(&["XREAD", "BLOCK", "300", "STREAMS", "events", "$"]).await,
            Value::Nil
        );
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "XREAD waited its timeout"
        );
        assert_eq!(c[1].call(&["XADD", "events", "1-0", "old", "x"]).await, bulk("1-0"));

        // Waits on node 1 for an entry after the last one ($), added through node 3.
        let port = cluster.nodes[0].redis_port;
        let waiter = tokio::spawn(async move {
            let mut client = Client::connect(port).await;
            let started = Instant::now();
            let reply = client
                .call(&["XREAD", "BLOCK", "0", "STREAMS", "other", "events", "$", "$"])
                .await;
            (reply, started.elapsed())
        });
        wait_for_blocked(&mut c[0], "xread").await;
        let id = c[2].call(&["XADD", "events", "*", "new", "y"]).await.text();
        let (reply, waited) = waiter.await.expect("the waiter");
        assert_eq!(
            reply,
            Value::Array(vec![Value::Array(vec![
                bulk("events"),
                Value::Array(vec![entry(&id, &["new", "y"])])
            ])])
        );
        assert!(
            waited < Duration::from_secs(4),
            "woken by the entry, not by the recheck: {waited:?}"
        );

        // A consumer of a group waits the same way; the entry is then pending for it.
        assert_eq!(c[0].call(&["XGROUP", "CREATE", "events", "g", "$"]).await, ok());
        assert_eq!(
            c[1].call(&[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "200",
                "STREAMS",
                "events",
                ">"
            ])
            .await,
            Value::Nil
        );
        let port = cluster.nodes[1].redis_port;
        let waiter = tokio::spawn(async move {
            let mut client = Client::connect(port).await;
            let started = Instant::now();
            let reply = client
                .call(&[
                    "XREADGROUP",
                    "GROUP",
                    "g",
                    "c",
                    "COUNT",
                    "5",
                    "BLOCK",
                    "20000",
                    "STREAMS",
                    "events",
                    ">",
                ])
                .await;
            (reply, started.elapsed())
        });
        wait_for_blocked(&mut c[1], "xreadgroup").await;
        let id = c[0].call(&["XADD", "events", "*", "job", "z"]).await.text();
        let (reply, waited) = waiter.await.expect("the waiter");
        assert_eq!(
            reply,
            Value::Array(vec![Value::Array(vec![
                bulk("events"),
                Value::Array(vec![entry(&id, &["job", "z"])])
            ])])
        );
        assert!(waited < Duration::from_secs(4), "woken by the entry: {waited:?}");
        let Value::Array(pending) = c[2].call(&["XPENDING", "events", "g", "-", "+", "10"]).await else {
            panic!("an array")
        };
        assert_eq!(pending.len(), 1);
        assert!(matches!(&pending[0], Value::Array(parts) if parts[0] == bulk(&id) && parts[1] == bulk("c")));
        // Inside MULTI a blocking read does not wait.
        assert_eq!(c[2].call(&["MULTI"]).await, ok());
        assert_eq!(
            c[2].call(&["XREAD", "BLOCK", "0", "STREAMS", "events", "$"]).await,
            Value::Simple("QUEUED".into())
        );
        assert_eq!(c[2].call(&["EXEC"]).await, Value::Array(vec![Value::Nil]));
    })
    .await;
}

/// Until CLIENT LIST on `client`'s node shows a connection blocked (flag `b`) in
/// `command`: from then on a write wakes it (XREAD's `$` is fixed by then), so what
/// follows tests the wake-up.
async fn wait_for_blocked(client: &mut Client, command: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let wanted = format!("cmd={command} ");
    let blocked = |list: &str| {
        list.lines()
            .any(|line| line.contains(" flags=b ") && line.contains(&wanted))
    };
    while !blocked(&client.call(&["CLIENT", "LIST"]).await.text()) {
        assert!(Instant::now() < deadline, "the reader never blocked in {command}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // INFO counts it too (a wake-up that finds nothing clears the flag for a moment).
    while !client
        .call(&["INFO", "clients"])
        .await
        .text()
        .contains("blocked_clients:1")
    {
        assert!(Instant::now() < deadline, "INFO never counted the blocked client");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn acknowledged_stream_entries_and_acks_survive_a_leader_kill() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        let leader = cluster.leader().await;
        let survivors: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
        let mut c = Client::connect(cluster.nodes[survivors[0]].redis_port).await;
        assert_eq!(
            c.call(&["XGROUP", "CREATE", "log", "readers", "$", "MKSTREAM"]).await,
            ok()
        );
        // Acknowledged appends (id and value) and the values of failed ones (may have
        // applied); acknowledged XACKs, and those that failed.
        let (mut added, mut add_failed): (Vec<(String, String)>, Vec<String>) = (Vec::new(), Vec::new());
        let (mut acked, mut ack_failed): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        for round in 0..120 {
            if round == 40 {
                cluster.kill(leader);
            }
            let value = format!("v{round}");
            match c.call(&["XADD", "log", "*", "n", &value]).await {
                Value::Bulk(id) => added.push((String::from_utf8(id).expect("an id"), value)),
                Value::Error(_) => add_failed.push(value),
                other => panic!("XADD answered {other:?}"),
            }
            let delivered = match c
                .call(&[
                    "XREADGROUP",
                    "GROUP",
                    "readers",
                    "r",
                    "COUNT",
                    "2",
                    "STREAMS",
                    "log",
                    ">",
                ])
                .await
            {
                Value::Array(streams) => match &streams[0] {
                    Value::Array(parts) => entry_ids(&parts[1]),
                    other => panic!("{other:?}"),
                },
                Value::Nil | Value::Error(_) => Vec::new(),
                other => panic!("XREADGROUP answered {other:?}"),
            };
            for id in delivered {
                match c.call(&["XACK", "log", "readers", &id]).await {
                    Value::Int(1) => acked.push(id),
                    Value::Int(other) => panic!("a delivered entry was not pending ({other}): {id}"),
                    Value::Error(_) => ack_failed.push(id),
                    other => panic!("XACK answered {other:?}"),
                }
            }
        }
        assert!(added.len() >= 80, "the cluster kept serving: {} of 120", added.len());
        assert!(acked.len() >= 60, "acknowledgements went on: {}", acked.len());
        let check = |entries: &Value, pending: &Value| {
            let Value::Array(entries) = entries else {
                panic!("{entries:?}")
            };
            let stored: Vec<(String, String)> = entries
                .iter()
                .map(|entry| match entry {
                    Value::Array(parts) => match &parts[1] {
                        Value::Array(pairs) => (parts[0].text(), pairs[1].text()),
                        other => panic!("{other:?}"),
                    },
                    other => panic!("{other:?}"),
                })
                .collect();
            for (id, value) in &added {
                assert!(
                    stored.contains(&(id.clone(), value.clone())),
                    "acknowledged XADD {id} {value} was lost"
                );
            }
            for value in &add_failed {
                assert!(
                    stored.iter().filter(|(_, stored)| stored == value).count() <= 1,
                    "XADD {value} applied twice"
                );
            }
            assert!(stored.len() <= added.len() + add_failed.len());
            let mut values: Vec<&String> = stored.iter().map(|(_, value)| value).collect();
            values.sort();
            values.dedup();
            assert_eq!(values.len(), stored.len(), "an entry applied twice");
            let Value::Array(pending) = pending else {
                panic!("{pending:?}")
            };
            let pending: Vec<String> = pending
                .iter()
                .map(|item| match item {
                    Value::Array(parts) => parts[0].text(),
                    other => panic!("{other:?}"),
                })
                .collect();
            for id in &acked {
                assert!(!pending.contains(id), "acknowledged XACK of {id} was lost");
            }
            stored.len()
        };
        let mut other = Client::connect(cluster.nodes[survivors[1]].redis_port).await;
        let entries = other.call(&["XRANGE", "log", "-", "+"]).await;
        let pending = other.call(&["XPENDING", "log", "readers", "-", "+", "1000"]).await;
        let length = check(&entries, &pending);
        assert_eq!(other.call(&["XLEN", "log"]).await, Value::Int(length as i64));
        cluster.restart(leader);
        cluster.wait_ready(Duration::from_secs(30)).await;
        // On the restarted node too: the same entries and the same pending list.
        let mut back = Client::connect(cluster.nodes[leader].redis_port).await;
        assert_eq!(back.call(&["XRANGE", "log", "-", "+"]).await, entries);
        assert_eq!(
            entry_ids(&back.call(&["XPENDING", "log", "readers", "-", "+", "1000"]).await),
            entry_ids(&pending)
        );
        check(&entries, &pending);
    })
    .await;
}
