//! The Redis workloads of a chaos run, through the nodes' Redis ports:
//!
//! - **redis registers**: GET, SET, and compare-and-set as WATCH/GET/MULTI/SET/EXEC, for
//!   the linearizability checker (values are unique, so an aborted EXEC means the value
//!   was no longer the expected one);
//! - **redis set**: SADD of unique elements to one set; every acknowledged element must
//!   be in the final SMEMBERS.

use super::checker::{Input, Operation, Output};
use super::workload::{RegisterRecord, RunClock, SetRecord};
use bytes::{Buf, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);
pub const SET_KEY: &str = "chaos:set";

/// A reply, as much of RESP2 as the workloads read.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

/// How a call failed.
enum Failed {
    /// Certainly without effect (no connection, or refused before any proposal).
    Definite,
    /// Maybe applied.
    Unknown,
}

/// One connection to one node.
pub struct Connection {
    stream: TcpStream,
    buffer: BytesMut,
}

impl Connection {
    pub async fn open(port: u16) -> std::io::Result<Connection> {
        let stream = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buffer: BytesMut::with_capacity(4096),
        })
    }

    pub async fn call(&mut self, args: &[&str]) -> std::io::Result<Value> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        self.stream.write_all(&request).await?;
        loop {
            if let Some((value, used)) = parse(&self.buffer) {
                self.buffer.advance(used);
                return Ok(value);
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(std::io::Error::other("connection closed"));
            }
        }
    }
}

/// One value from the front of `data`, and its length; `None` if incomplete.
fn parse(data: &[u8]) -> Option<(Value, usize)> {
    let end = data.windows(2).position(|pair| pair == b"\r\n")?;
    let line = std::str::from_utf8(&data[1..end]).ok()?;
    let after = end + 2;
    match data.first()? {
        b'+' => Some((Value::Simple(line.to_string()), after)),
        b'-' => Some((Value::Error(line.to_string()), after)),
        b':' => Some((Value::Int(line.parse().ok()?), after)),
        b'$' => {
            let length: i64 = line.parse().ok()?;
            if length < 0 {
                return Some((Value::Bulk(None), after));
            }
            let stop = after + length as usize;
            (data.len() >= stop + 2).then(|| (Value::Bulk(Some(data[after..stop].to_vec())), stop + 2))
        }
        b'*' => {
            let count: i64 = line.parse().ok()?;
            if count < 0 {
                return Some((Value::Array(None), after));
            }
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..count {
                let (item, used) = parse(&data[at..])?;
                items.push(item);
                at += used;
            }
            Some((Value::Array(Some(items)), at))
        }
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::Bulk(Some(data)) => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    }
}

/// A reply that is an error: TRYAGAIN (no leader) certainly did nothing.
fn failed_reply(value: &Value) -> Option<Failed> {
    match value {
        Value::Error(text) if text.starts_with("TRYAGAIN") => Some(Failed::Definite),
        Value::Error(_) => Some(Failed::Unknown),
        _ => None,
    }
}

/// Runs one register operation. Failures before the write was sent are definite.
async fn register_op(connection: &mut Connection, key: &str, input: &Input) -> Result<Output, Failed> {
    let unknown = |_| Failed::Unknown;
    let definite = |_| Failed::Definite;
    match input {
        Input::Read => {
            let value = connection.call(&["GET", key]).await.map_err(unknown)?;
            if let Some(failed) = failed_reply(&value) {
                return Err(failed);
            }
            Ok(Output::Read(text(&value)))
        }
        Input::Write(value) => {
            let value = value.clone().unwrap_or_default();
            let reply = connection.call(&["SET", key, &value]).await.map_err(unknown)?;
            match failed_reply(&reply) {
                Some(failed) => Err(failed),
                None => Ok(Output::Written),
            }
        }
        Input::Cas { expected, new } => {
            let watched = connection.call(&["WATCH", key]).await.map_err(definite)?;
            if watched != Value::Simple("OK".into()) {
                return Err(Failed::Definite);
            }
            let current = connection.call(&["GET", key]).await.map_err(definite)?;
            if failed_reply(&current).is_some() {
                return Err(Failed::Definite);
            }
            if text(&current) != *expected {
                connection.call(&["UNWATCH"]).await.map_err(definite)?;
                return Ok(Output::Cas(false));
            }
            let new = new.clone().unwrap_or_default();
            for args in [&["MULTI"][..], &["SET", key, &new][..]] {
                let reply = connection.call(args).await.map_err(definite)?;
                if failed_reply(&reply).is_some() {
                    return Err(Failed::Definite);
                }
            }
            match connection.call(&["EXEC"]).await.map_err(unknown)? {
                Value::Array(Some(_)) => Ok(Output::Cas(true)),
                Value::Array(None) => Ok(Output::Cas(false)),
                other => Err(failed_reply(&other).unwrap_or(Failed::Unknown)),
            }
        }
    }
}

/// One Redis register client: random GET, SET and WATCH/MULTI compare-and-sets,
/// moving to the next node after a failure.
pub async fn register_client(
    process: u64,
    ports: Vec<u16>,
    keys: Vec<String>,
    seed: u64,
    clock: RunClock,
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<RegisterRecord>>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ process.wrapping_mul(0x51_7cc1_b727_220a));
    let mut node = process as usize % ports.len();
    let mut connection: Option<Connection> = None;
    let mut sequence = 0u64;
    let mut last_seen: std::collections::HashMap<String, Option<String>> = std::collections::HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        if connection.is_none() {
            match Connection::open(ports[node]).await {
                Ok(opened) => connection = Some(opened),
                Err(_) => {
                    node = (node + 1) % ports.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(open) = connection.as_mut() else { continue };
        let key = keys[rng.gen_range(0..keys.len())].clone();
        sequence += 1;
        let value = format!("r{process}-{sequence}");
        let input = match rng.gen_range(0..10) {
            0..=3 => Input::Read,
            4..=6 => Input::Write(Some(value.clone())),
            _ => Input::Cas {
                expected: last_seen.get(&key).cloned().flatten(),
                new: Some(value.clone()),
            },
        };
        let call = clock.nanos();
        let outcome = tokio::time::timeout(OPERATION_TIMEOUT, register_op(open, &key, &input)).await;
        let ret = clock.nanos();
        let (output, ret, definite) = match outcome {
            Ok(Ok(output)) => {
                match (&input, &output) {
                    (Input::Read, Output::Read(seen)) => {
                        last_seen.insert(key.clone(), seen.clone());
                    }
                    (Input::Write(_), _) | (Input::Cas { .. }, Output::Cas(true)) => {
                        last_seen.insert(key.clone(), Some(value.clone()));
                    }
                    _ => {}
                }
                (output, Some(ret), false)
            }
            Ok(Err(Failed::Definite)) => (Output::Unknown, None, true),
            Ok(Err(Failed::Unknown)) | Err(_) => (Output::Unknown, None, false),
        };
        if let Ok(mut record) = record.lock() {
            if definite {
                record.definite_failures += 1;
            } else {
                let id = record.operations.len();
                record.operations.push(Operation {
                    id,
                    process,
                    key: key.clone(),
                    input,
                    call,
                    ret,
                    output,
                });
            }
        }
        if ret.is_none() || definite {
            // A fresh connection: no WATCH or MULTI state carries over.
            connection = None;
            node = (node + 1) % ports.len();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// SADDs unique elements to one set; an element whose SADD failed with an unknown
/// outcome is recorded as unknown (a retry would be harmless, but is not needed).
pub async fn set_client(process: u64, ports: Vec<u16>, stop: Arc<AtomicBool>, record: Arc<Mutex<SetRecord>>) {
    let mut node = process as usize % ports.len();
    let mut connection: Option<Connection> = None;
    let mut next = (process + 100) * 1_000_000;
    while !stop.load(Ordering::Relaxed) {
        if connection.is_none() {
            match Connection::open(ports[node]).await {
                Ok(opened) => connection = Some(opened),
                Err(_) => {
                    node = (node + 1) % ports.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(open) = connection.as_mut() else { continue };
        next += 1;
        let element = next;
        if let Ok(mut record) = record.lock() {
            record.attempted.push(element);
        }
        let reply = tokio::time::timeout(OPERATION_TIMEOUT, open.call(&["SADD", SET_KEY, &element.to_string()])).await;
        let acknowledged = matches!(reply, Ok(Ok(Value::Int(1))));
        if let Ok(mut record) = record.lock() {
            match &reply {
                _ if acknowledged => record.acknowledged.push(element),
                Ok(Ok(value)) if matches!(failed_reply(value), Some(Failed::Definite)) => {}
                _ => record.unknown.push(element),
            }
        }
        if !acknowledged {
            connection = None;
            node = (node + 1) % ports.len();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The final members of the set.
pub async fn read_set(port: u16) -> Result<Vec<u64>, String> {
    let mut connection = Connection::open(port).await.map_err(|error| error.to_string())?;
    match connection
        .call(&["SMEMBERS", SET_KEY])
        .await
        .map_err(|error| error.to_string())?
    {
        Value::Array(Some(items)) => Ok(items.iter().filter_map(|item| text(item)?.parse().ok()).collect()),
        other => Err(format!("SMEMBERS answered {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, Value};

    #[test]
    fn replies_parse_whole_or_not_at_all() {
        assert_eq!(parse(b"+OK\r\n"), Some((Value::Simple("OK".into()), 5)));
        assert_eq!(
            parse(b"$3\r\nabc\r\n:1\r\n"),
            Some((Value::Bulk(Some(b"abc".to_vec())), 9))
        );
        assert_eq!(parse(b"$3\r\nab"), None);
        assert_eq!(parse(b"*-1\r\n"), Some((Value::Array(None), 5)));
        assert_eq!(
            parse(b"*2\r\n+OK\r\n$-1\r\n"),
            Some((
                Value::Array(Some(vec![Value::Simple("OK".into()), Value::Bulk(None)])),
                14
            ))
        );
        assert_eq!(parse(b"*2\r\n+OK\r\n"), None);
    }
}
