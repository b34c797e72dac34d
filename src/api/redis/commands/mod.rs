//! The command table and dispatch: arity checks and errors with Redis's texts, then
//! the handler of each group.

mod acl;
mod cluster;
mod hashes;
mod keyspace;
mod lists;
mod pubsub;
mod scripting;
mod server;
mod sets;
mod streams;
mod strings;
mod zsets;

use super::data::{Change, DataError};
use super::keys::Record;
use super::resp::Reply;
use super::snapshot::{Need, Snapshot};
use super::{RedisContext, Session};
use bytes::Bytes;
pub use scripting::Scripts;

/// A command Shoal serves: Redis's name, arity (negative: at least that many
/// arguments, the name included), flags, and key positions, as COMMAND reports them.
pub struct Spec {
    pub name: &'static str,
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
}

const fn spec(name: &'static str, arity: i64, flags: &'static [&'static str], keys: (i64, i64, i64)) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
    }
}

const W: &[&str] = &["write"];
const WD: &[&str] = &["write", "denyoom"];
const R: &[&str] = &["readonly", "fast"];
const RS: &[&str] = &["readonly"];
const C: &[&str] = &["fast", "loading", "stale"];
const NONE: (i64, i64, i64) = (0, 0, 0);
const ONE: (i64, i64, i64) = (1, 1, 1);
const ALL: (i64, i64, i64) = (1, -1, 1);

pub static COMMANDS: &[Spec] = &[
    // Connection and server.
    spec("ping", -1, C, NONE),
    spec("echo", 2, C, NONE),
    spec("quit", -1, C, NONE),
    spec("hello", -1, C, NONE),
    spec("auth", -2, C, NONE),
    spec("select", 2, C, NONE),
    spec("client", -2, C, NONE),
    spec("command", -1, C, NONE),
    spec("info", -1, &["loading", "stale"], NONE),
    spec("dbsize", 1, R, NONE),
    spec("flushdb", -1, W, NONE),
    spec("flushall", -1, W, NONE),
    spec("time", 1, C, NONE),
    spec("config", -2, &["admin", "loading", "stale"], NONE),
    spec("acl", -2, &["admin", "noscript", "loading", "stale"], NONE),
    // Scripting.
    spec("eval", -3, &["noscript", "stale", "skip_monitor", "movablekeys"], NONE),
    spec(
        "evalsha",
        -3,
        &["noscript", "stale", "skip_monitor", "movablekeys"],
        NONE,
    ),
    spec(
        "eval_ro",
        -3,
        &["noscript", "stale", "skip_monitor", "readonly", "movablekeys"],
        NONE,
    ),
    spec(
        "evalsha_ro",
        -3,
        &["noscript", "stale", "skip_monitor", "readonly", "movablekeys"],
        NONE,
    ),
    spec("script", -2, &["noscript"], NONE),
    spec("cluster", -2, &["loading", "stale"], NONE),
    // Hashes.
    spec("hset", -4, WD, ONE),
    spec("hmset", -4, WD, ONE),
    spec("hsetnx", 4, WD, ONE),
    spec("hget", 3, R, ONE),
    spec("hmget", -3, R, ONE),
    spec("hgetall", 2, RS, ONE),
    spec("hdel", -3, W, ONE),
    spec("hlen", 2, R, ONE),
    spec("hexists", 3, R, ONE),
    spec("hkeys", 2, RS, ONE),
    spec("hvals", 2, RS, ONE),
    spec("hincrby", 4, WD, ONE),
    spec("hincrbyfloat", 4, WD, ONE),
    spec("hstrlen", 3, R, ONE),
    spec("hscan", -3, RS, ONE),
    spec("hrandfield", -2, RS, ONE),
    // Sets.
    spec("sadd", -3, WD, ONE),
    spec("srem", -3, W, ONE),
    spec("smembers", 2, RS, ONE),
    spec("sismember", 3, R, ONE),
    spec("smismember", -3, R, ONE),
    spec("scard", 2, R, ONE),
    spec("spop", -2, W, ONE),
    spec("srandmember", -2, RS, ONE),
    spec("smove", 4, W, (1, 2, 1)),
    spec("sinter", -2, RS, ALL),
    spec("sunion", -2, RS, ALL),
    spec("sdiff", -2, RS, ALL),
    spec("sinterstore", -3, WD, ALL),
    spec("sunionstore", -3, WD, ALL),
    spec("sdiffstore", -3, WD, ALL),
    spec("sintercard", -3, RS, NONE),
    spec("sscan", -3, RS, ONE),
    // Lists.
    spec("lpush", -3, WD, ONE),
    spec("rpush", -3, WD, ONE),
    spec("lpushx", -3, WD, ONE),
    spec("rpushx", -3, WD, ONE),
    spec("lpop", -2, W, ONE),
    spec("rpop", -2, W, ONE),
    spec("llen", 2, R, ONE),
    spec("lrange", 4, RS, ONE),
    spec("lindex", 3, RS, ONE),
    spec("lset", 4, WD, ONE),
    spec("lrem", 4, W, ONE),
    spec("ltrim", 4, W, ONE),
    spec("linsert", 5, WD, ONE),
    spec("lpos", -3, RS, ONE),
    spec("lmove", 5, WD, (1, 2, 1)),
    spec("rpoplpush", 3, WD, (1, 2, 1)),
    spec("blpop", -3, &["write", "blocking"], (1, -2, 1)),
    spec("brpop", -3, &["write", "blocking"], (1, -2, 1)),
    spec("blmove", 6, &["write", "denyoom", "blocking"], (1, 2, 1)),
    spec("brpoplpush", 4, &["write", "denyoom", "blocking"], (1, 2, 1)),
    // Sorted sets.
    spec("zadd", -4, WD, ONE),
    spec("zincrby", 4, WD, ONE),
    spec("zscore", 3, R, ONE),
    spec("zmscore", -3, R, ONE),
    spec("zrem", -3, W, ONE),
    spec("zcard", 2, R, ONE),
    spec("zcount", 4, R, ONE),
    spec("zlexcount", 4, R, ONE),
    spec("zrange", -4, RS, ONE),
    spec("zrevrange", -4, RS, ONE),
    spec("zrangebyscore", -4, RS, ONE),
    spec("zrevrangebyscore", -4, RS, ONE),
    spec("zrangebylex", -4, RS, ONE),
    spec("zrevrangebylex", -4, RS, ONE),
    spec("zrank", -3, R, ONE),
    spec("zrevrank", -3, R, ONE),
    spec("zpopmin", -2, W, ONE),
    spec("zpopmax", -2, W, ONE),
    spec("zrandmember", -2, RS, ONE),
    spec("zremrangebyrank", 4, W, ONE),
    spec("zremrangebyscore", 4, W, ONE),
    spec("zremrangebylex", 4, W, ONE),
    spec("bzpopmin", -3, &["write", "blocking", "fast"], (1, -2, 1)),
    spec("bzpopmax", -3, &["write", "blocking", "fast"], (1, -2, 1)),
    spec("zunionstore", -4, WD, NONE),
    spec("zinterstore", -4, WD, NONE),
    spec("zdiffstore", -4, WD, NONE),
    spec("zunion", -3, RS, NONE),
    spec("zinter", -3, RS, NONE),
    spec("zdiff", -3, RS, NONE),
    // Streams (XREAD and XREADGROUP find their keys after STREAMS, XGROUP and XINFO after
    // the subcommand: no fixed positions, as Redis reports them).
    spec("xadd", -5, &["write", "denyoom", "fast"], ONE),
    spec("xlen", 2, R, ONE),
    spec("xrange", -4, RS, ONE),
    spec("xrevrange", -4, RS, ONE),
    spec("xread", -4, &["readonly", "blocking", "movablekeys"], NONE),
    spec("xreadgroup", -7, &["write", "blocking", "movablekeys"], NONE),
    spec("xdel", -3, &["write", "fast"], ONE),
    spec("xtrim", -4, W, ONE),
    spec("xgroup", -2, &[], NONE),
    spec("xack", -4, &["write", "fast"], ONE),
    spec("xpending", -3, RS, ONE),
    spec("xclaim", -6, &["write", "fast"], ONE),
    spec("xautoclaim", -6, &["write", "fast"], ONE),
    spec("xinfo", -2, &[], NONE),
    // Pub/sub.
    spec("subscribe", -2, &["pubsub", "noscript", "loading", "stale"], NONE),
    spec("psubscribe", -2, &["pubsub", "noscript", "loading", "stale"], NONE),
    spec("unsubscribe", -1, &["pubsub", "noscript", "loading", "stale"], NONE),
    spec("punsubscribe", -1, &["pubsub", "noscript", "loading", "stale"], NONE),
    spec("publish", 3, &["pubsub", "loading", "stale", "fast"], NONE),
    spec("pubsub", -2, &["pubsub", "loading", "stale"], NONE),
    // Transactions.
    spec("multi", 1, &["noscript", "loading", "stale", "fast"], NONE),
    spec("exec", 1, &["noscript", "loading", "stale"], NONE),
    spec("discard", 1, &["noscript", "loading", "stale", "fast"], NONE),
    spec("watch", -2, &["noscript", "loading", "stale", "fast"], ALL),
    spec("unwatch", 1, &["noscript", "loading", "stale", "fast"], NONE),
    // Keys.
    spec("del", -2, W, ALL),
    spec("unlink", -2, W, ALL),
    spec("exists", -2, R, ALL),
    spec("type", 2, R, ONE),
    spec("rename", 3, W, (1, 2, 1)),
    spec("renamenx", 3, W, (1, 2, 1)),
    spec("copy", -3, W, (1, 2, 1)),
    spec("expire", -3, W, ONE),
    spec("pexpire", -3, W, ONE),
    spec("expireat", -3, W, ONE),
    spec("pexpireat", -3, W, ONE),
    spec("ttl", 2, R, ONE),
    spec("pttl", 2, R, ONE),
    spec("expiretime", 2, R, ONE),
    spec("pexpiretime", 2, R, ONE),
    spec("persist", 2, W, ONE),
    spec("keys", 2, RS, NONE),
    spec("scan", -2, RS, NONE),
    spec("randomkey", 1, RS, NONE),
    spec("object", -2, RS, (2, 2, 1)),
    // Strings.
    spec("get", 2, R, ONE),
    spec("set", -3, WD, ONE),
    spec("setnx", 3, WD, ONE),
    spec("setex", 4, WD, ONE),
    spec("psetex", 4, WD, ONE),
    spec("getset", 3, WD, ONE),
    spec("getdel", 2, W, ONE),
    spec("getex", -2, W, ONE),
    spec("mget", -2, R, ALL),
    spec("mset", -3, WD, (1, -1, 2)),
    spec("msetnx", -3, WD, (1, -1, 2)),
    spec("incr", 2, WD, ONE),
    spec("decr", 2, WD, ONE),
    spec("incrby", 3, WD, ONE),
    spec("decrby", 3, WD, ONE),
    spec("incrbyfloat", 3, WD, ONE),
    spec("append", 3, WD, ONE),
    spec("strlen", 2, R, ONE),
    spec("getrange", 4, RS, ONE),
    spec("substr", 4, RS, ONE),
    spec("setrange", 4, WD, ONE),
];

/// A command's failure, as the reply it gets.
pub type Outcome = Result<Reply, Reply>;

pub fn syntax_error() -> Reply {
    Reply::error("ERR syntax error")
}

pub fn not_integer() -> Reply {
    Reply::error("ERR value is not an integer or out of range")
}

pub fn wrong_type() -> Reply {
    Reply::error("WRONGTYPE Operation against a key holding the wrong kind of value")
}

pub fn wrong_arity(name: &str) -> Reply {
    Reply::error(format!("ERR wrong number of arguments for '{name}' command"))
}

/// A failure of the store below (no leader, a timeout): the write may or may not have
/// applied when it timed out, which the text says.
pub fn store_error(error: DataError) -> Reply {
    use crate::router::RouteError;
    use crate::txn::TxnError;
    let text = match &error {
        DataError::Store(TxnError::Route(RouteError::Range(crate::range::RangeError::Timeout))) => {
            "ERR shoal: request timed out; a write may or may not have been applied".to_string()
        }
        DataError::Store(TxnError::Route(RouteError::NoLeader)) => "TRYAGAIN shoal: no leader".to_string(),
        // Redis's refusal when it is out of its memory limit: clients treat OOM as "the
        // write was refused, reads still work", which is what the NOSPACE alarm means.
        DataError::Store(TxnError::NoSpace) => {
            "OOM command not allowed: the space quota is exceeded (NOSPACE alarm); delete keys, then disarm it"
                .to_string()
        }
        DataError::Store(TxnError::DiskFull) => {
            "MISCONF shoal: no space left on this node's disk (below --storage-reserve-bytes); write through another node"
                .to_string()
        }
        DataError::Store(TxnError::Corrupt) => {
            "ERR shoal: the cluster is corrupt (CORRUPT alarm); writes are refused".to_string()
        }
        other => format!("ERR shoal: {other}"),
    };
    Reply::Error(text)
}

impl From<DataError> for Reply {
    fn from(error: DataError) -> Self {
        store_error(error)
    }
}

/// An integer argument as Redis parses one (no spaces, no '+', within i64).
pub fn integer(arg: &[u8]) -> Result<i64, Reply> {
    std::str::from_utf8(arg)
        .ok()
        .filter(|text| !text.starts_with('+') && !text.is_empty() && !text.contains(char::is_whitespace))
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or_else(not_integer)
}

/// A float argument ("inf" allowed, NaN refused).
pub fn float(arg: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(arg).ok()?;
    if text.is_empty() || text.contains(char::is_whitespace) {
        return None;
    }
    let value = match text.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ => text.parse::<f64>().ok()?,
    };
    (!value.is_nan()).then_some(value)
}

pub fn upper(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_uppercase()
}

pub fn find(name: &str) -> Option<&'static Spec> {
    COMMANDS.iter().find(|spec| spec.name.eq_ignore_ascii_case(name))
}

/// What commands run on a snapshot need of their connection.
pub struct Env {
    pub db: u8,
    pub max_bulk: usize,
    /// The connection's protocol version (some replies are shaped by it).
    pub resp: u8,
}

impl Env {
    /// The internal key of a key argument in this database.
    pub fn key(&self, key: &[u8]) -> Bytes {
        super::keys::internal_key(self.db, key)
    }
}

/// Commands that run on a snapshot of the keys they name: atomic, and queueable in
/// MULTI.
fn is_keyed(name: &str) -> bool {
    strings::handles(name)
        || keyspace::handles(name)
        || hashes::handles(name)
        || sets::handles(name)
        || lists::handles(name)
        || zsets::handles(name)
        || streams::handles(name)
}

/// The commands that read no data and may run inside MULTI or a script: PING, ECHO,
/// TIME (the snapshot's clock); `None` for any other.
fn run_plain(snapshot: &Snapshot, name: &str, args: &[Bytes]) -> Option<Reply> {
    Some(match name {
        "ping" => Reply::Simple("PONG".into()),
        "echo" => Reply::Bulk(args.get(1)?.clone()),
        "time" => {
            let now = snapshot.now();
            Reply::Array(vec![
                Reply::bulk((now / 1000).to_string()),
                Reply::bulk((now % 1000 * 1000).to_string()),
            ])
        }
        _ => return None,
    })
}

/// Commands MULTI queues: the keyed ones, and those that read no data.
fn is_queueable(name: &str) -> bool {
    is_keyed(name) || matches!(name, "ping" | "echo" | "time")
}

/// The internal keys a keyed command names (its arguments at the spec's positions).
fn keys_of(spec: &Spec, env: &Env, args: &[Bytes]) -> Vec<Bytes> {
    if spec.name == "copy" {
        return keyspace::copy_keys(env, args);
    }
    if spec.first_key <= 0 {
        return Vec::new();
    }
    let last = if spec.last_key < 0 {
        args.len() as i64 + spec.last_key
    } else {
        spec.last_key.min(args.len() as i64 - 1)
    };
    (spec.first_key..=last)
        .step_by(spec.step.max(1) as usize)
        .filter_map(|index| args.get(index as usize))
        .map(|key| env.key(key))
        .collect()
}

/// What a keyed command needs read: its keys' records, and the elements it touches.
fn needs_of(spec: &Spec, env: &Env, args: &[Bytes]) -> Vec<Need> {
    if hashes::handles(spec.name) {
        return hashes::needs(spec.name, env, args);
    }
    if sets::handles(spec.name) {
        return sets::needs(spec.name, env, args);
    }
    if lists::handles(spec.name) {
        return lists::needs(spec.name, env, args);
    }
    if zsets::handles(spec.name) {
        return zsets::needs(spec.name, env, args);
    }
    if streams::handles(spec.name) {
        return streams::needs(spec.name, env, args);
    }
    let keys = keys_of(spec, env, args);
    match spec.name {
        // A collection moves or is copied with its elements.
        "rename" | "renamenx" | "copy" => keys
            .into_iter()
            .enumerate()
            .map(|(index, key)| if index == 0 { Need::All(key) } else { Need::Record(key) })
            .collect(),
        _ => keys.into_iter().map(Need::Record).collect(),
    }
}

/// Runs a keyed command on a snapshot.
fn run_keyed(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Reply {
    if strings::handles(name) {
        strings::run(snapshot, env, name, args)
    } else if hashes::handles(name) {
        hashes::run(snapshot, env, name, args)
    } else if sets::handles(name) {
        sets::run(snapshot, env, name, args)
    } else if lists::handles(name) {
        lists::run(snapshot, env, name, args)
    } else if zsets::handles(name) {
        zsets::run(snapshot, env, name, args)
    } else if streams::handles(name) {
        streams::run(snapshot, env, name, args)
    } else {
        keyspace::run(snapshot, env, name, args)
    }
}

/// Whether a pipelined request can join a batch: a data command (not blocking) with
/// valid arity, outside MULTI and subscriptions.
pub fn batchable(session: &Session, args: &[Bytes]) -> bool {
    if session.multi.is_some() || !session.channels.is_empty() || !session.patterns.is_empty() {
        return false;
    }
    let Some(spec) = find(&String::from_utf8_lossy(&args[0])) else {
        return false;
    };
    let count = args.len() as i64;
    let arity_ok = (spec.arity > 0 && count == spec.arity) || (spec.arity < 0 && count >= -spec.arity);
    arity_ok && is_keyed(spec.name) && !is_blocking(spec.name) && !streams::blocks(spec.name, args)
}

/// The needs of pipelined data commands (each [`batchable`]), and the stripe their keys
/// share if they do (only then do they run as one batch: see [`run_pipeline`]).
pub fn pipeline_stripe(session: &Session, max_bulk: usize, requests: &[Vec<Bytes>]) -> Option<usize> {
    let env = Env {
        db: session.db,
        max_bulk,
        resp: session.resp,
    };
    let mut keys = Vec::new();
    for args in requests {
        let spec = find(&String::from_utf8_lossy(&args[0]))?;
        keys.extend(needs_of(spec, &env, args).iter().map(|need| need.key().clone()));
    }
    super::data::Data::stripe_of(&keys)
}

/// Runs pipelined data commands whose keys share `stripe` as one job of that stripe's
/// batch: in order, on one snapshot, committed with the other connections' commands in
/// one write. One reply each.
pub async fn run_pipeline(
    context: &RedisContext,
    session: &Session,
    stripe: usize,
    requests: &[Vec<Bytes>],
) -> Vec<Reply> {
    let env = Env {
        db: session.db,
        max_bulk: context.limits.max_bulk,
        resp: session.resp,
    };
    let mut needs = Vec::new();
    let mut commands = Vec::with_capacity(requests.len());
    for args in requests {
        if let Some(spec) = find(&String::from_utf8_lossy(&args[0])) {
            needs.extend(needs_of(spec, &env, args));
            commands.push((spec.name, args.clone()));
        }
    }
    let count = commands.len();
    let job = super::batch::Job {
        needs,
        run: Box::new(move |snapshot| {
            Reply::Sequence(
                commands
                    .iter()
                    .map(|(name, args)| run_keyed(snapshot, &env, name, args))
                    .collect(),
            )
        }),
    };
    match super::batch::submit(context.data.clone(), stripe, job).await {
        Reply::Sequence(replies) => replies,
        // The whole batch failed (no leader, a timeout): the same answer for each.
        other => vec![other; count],
    }
}

/// Once etcd's auth is on, the Redis port follows it: a connection must AUTH as one of
/// the cluster's users (`AUTH password` is the user `default`, as in Redis), and runs
/// what its ACL (`acl`) allows: everything for the `root` role, for others the commands
/// and key patterns ACL SETUSER gave them; `-NOPERM` otherwise.
async fn gate(context: &RedisContext, session: &Session, name: &str, args: &[Bytes]) -> Option<Reply> {
    if !context.auth.enabled() || matches!(name, "auth" | "hello" | "quit") {
        return None;
    }
    let Some(user) = &session.user else {
        return Some(Reply::error("NOAUTH Authentication required."));
    };
    let store = match context.auth.store().await {
        Ok(store) if !store.enabled => return None,
        Ok(store) => store,
        Err(error) => return Some(Reply::error(format!("ERR shoal: {error}"))),
    };
    if !store.users.iter().any(|known| &known.name == user) {
        return Some(Reply::error("NOAUTH Authentication required."));
    }
    // ACL checks its subcommands itself (WHOAMI and CAT are anyone's).
    let harmless = matches!(name, "ping" | "echo" | "select" | "client" | "command" | "acl");
    let spec = find(name)?;
    if harmless || acl::permitted(&store, user, spec, acl_keys(spec, args).as_deref()) {
        return None;
    }
    // The command itself is allowed: its keys are not.
    let keys_refused = acl::permitted(&store, user, spec, Some(&[]));
    Some(Reply::error(if keys_refused {
        "NOPERM No permissions to access a key".to_string()
    } else {
        format!("NOPERM User {user} has no permissions to run the '{name}' command")
    }))
}

/// The key arguments a command names, raw, for the ACL's key patterns; `None` for a
/// command over the whole database, or one whose keys the table cannot place (it
/// needs a pattern matching every key).
fn acl_keys(spec: &Spec, args: &[Bytes]) -> Option<Vec<Bytes>> {
    if matches!(
        spec.name,
        "keys" | "scan" | "randomkey" | "dbsize" | "flushdb" | "flushall"
    ) {
        return None;
    }
    if spec.name == "copy" {
        return Some(args.iter().skip(1).take(2).cloned().collect());
    }
    if matches!(spec.name, "eval" | "evalsha" | "eval_ro" | "evalsha_ro") {
        // The keys a script declares (it may touch no others).
        let count = args.get(2).and_then(|count| integer(count).ok()).unwrap_or(0).max(0) as usize;
        return Some(args.iter().skip(3).take(count).cloned().collect());
    }
    if spec.first_key <= 0 {
        return if is_keyed(spec.name) { None } else { Some(Vec::new()) };
    }
    let last = if spec.last_key < 0 {
        args.len() as i64 + spec.last_key
    } else {
        spec.last_key.min(args.len() as i64 - 1)
    };
    Some(
        (spec.first_key..=last)
            .step_by(spec.step.max(1) as usize)
            .filter_map(|index| args.get(index as usize).cloned())
            .collect(),
    )
}

/// Runs one request.
pub async fn run(context: &RedisContext, session: &mut Session, args: &[Bytes]) -> Reply {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let Some(spec) = find(&name) else {
        session.abort_multi();
        return unknown_command(args);
    };
    let count = args.len() as i64;
    if (spec.arity > 0 && count != spec.arity) || (spec.arity < 0 && count < -spec.arity) {
        session.abort_multi();
        return wrong_arity(spec.name);
    }
    if let Some(refusal) = gate(context, session, spec.name, args).await {
        session.abort_multi();
        return refusal;
    }
    let subscribed = !session.channels.is_empty() || !session.patterns.is_empty();
    if subscribed && session.resp < 3 && !pubsub::allowed_while_subscribed(spec.name) {
        return Reply::error(format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            spec.name
        ));
    }
    if subscribed && session.resp < 3 && spec.name == "ping" {
        return Reply::Array(vec![
            Reply::bulk("pong"),
            Reply::Bulk(args.get(1).cloned().unwrap_or_default()),
        ]);
    }
    if let Some(queued) = &mut session.multi {
        return match spec.name {
            "exec" => exec(context, session).await,
            "discard" => {
                session.multi = None;
                session.multi_failed = false;
                session.watched.clear();
                Reply::ok()
            }
            "multi" => Reply::error("ERR MULTI calls can not be nested"),
            "watch" => Reply::error("ERR WATCH inside MULTI is not allowed"),
            name if is_queueable(name) => {
                queued.push(args.to_vec());
                Reply::Simple("QUEUED".into())
            }
            name => {
                session.multi_failed = true;
                Reply::error(format!("ERR '{name}' is not supported inside MULTI by Shoal"))
            }
        };
    }
    let env = Env {
        db: session.db,
        max_bulk: context.limits.max_bulk,
        resp: session.resp,
    };
    let outcome = match spec.name {
        "multi" => {
            session.multi = Some(Vec::new());
            session.multi_failed = false;
            Ok(Reply::ok())
        }
        "exec" => Err(Reply::error("ERR EXEC without MULTI")),
        "discard" => Err(Reply::error("ERR DISCARD without MULTI")),
        "watch" => watch(context, session, &env, spec, args).await,
        "unwatch" => {
            session.watched.clear();
            Ok(Reply::ok())
        }
        "set" | "mset" if plain_write(args) => {
            // Nothing to read first: one unconditional write.
            let now = super::data::now_ms();
            let writes = match spec.name {
                "set" => strings::set_options(args, now)
                    .map(|options| overwrite(env.key(&args[1]), Record::string(args[2].clone(), options.expires_at()))),
                _ => Ok(args[1..]
                    .chunks(2)
                    .flat_map(|pair| overwrite(env.key(&pair[0]), Record::string(pair[1].clone(), 0)))
                    .collect()),
            };
            match writes {
                Ok(writes) => context
                    .data
                    .write_all(writes)
                    .await
                    .map(|_| Reply::ok())
                    .map_err(Reply::from),
                Err(error) => Err(error),
            }
        }
        name if is_blocking(name) => blocking(context, session.id, &env, spec, args).await,
        name if streams::blocks(name, args) => blocking_read(context, session.id, &env, spec, args).await,
        name if is_keyed(name) => {
            let needs = needs_of(spec, &env, args);
            let keys: Vec<Bytes> = needs.iter().map(|need| need.key().clone()).collect();
            if let Some(stripe) = super::data::Data::stripe_of(&keys) {
                // Batched with the other commands on this stripe (group commit).
                let (name, args) = (name.to_string(), args.to_vec());
                let job = super::batch::Job {
                    needs,
                    run: Box::new(move |snapshot| run_keyed(snapshot, &env, &name, &args)),
                };
                return super::batch::submit(context.data.clone(), stripe, job).await;
            }
            match context
                .data
                .run(&needs, &[], |snapshot| run_keyed(snapshot, &env, name, args))
                .await
            {
                Ok(Some(reply)) => Ok(reply),
                Ok(None) => Err(Reply::error("ERR shoal: a key changed unexpectedly")),
                Err(error) => Err(store_error(error)),
            }
        }
        "keys" | "scan" | "randomkey" => keyspace::run_wide(context, session, spec.name, args).await,
        name if pubsub::handles(name) => pubsub::run(context, session, name, args).await,
        "cluster" => cluster::run(context, args).await,
        "acl" => acl::run(context, session, args).await,
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "script" => {
            scripting::run(context, session, spec.name, args).await
        }
        _ => server::run(context, session, spec.name, args).await,
    };
    outcome.unwrap_or_else(|error| error)
}

/// Whether the command blocks (outside MULTI) until it finds an element.
fn is_blocking(name: &str) -> bool {
    lists::is_blocking(name) || matches!(name, "bzpopmin" | "bzpopmax")
}

/// BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BZPOPMIN and BZPOPMAX outside MULTI: tries, and while the lists are
/// empty waits for a write to one of them (on any node: the watch hub sees every
/// range's writes) or the timeout, then tries again.
async fn blocking(context: &RedisContext, client: u64, env: &Env, spec: &Spec, args: &[Bytes]) -> Outcome {
    let timeout = super::commands::float(&args[args.len() - 1])
        .filter(|seconds| seconds.is_finite())
        .ok_or_else(|| Reply::error("ERR timeout is not a float or out of range"))?;
    if timeout < 0.0 {
        return Err(Reply::error("ERR timeout is negative"));
    }
    let deadline = (timeout > 0.0).then(|| tokio::time::Instant::now() + std::time::Duration::from_secs_f64(timeout));
    let sources: Vec<Bytes> = match spec.name {
        "blpop" | "brpop" | "bzpopmin" | "bzpopmax" => args[1..args.len() - 1].iter().map(|key| env.key(key)).collect(),
        _ => vec![env.key(&args[1])],
    };
    let needs = needs_of(spec, env, args);
    loop {
        // Watch first, so a push between the attempt and the wait still wakes us.
        let wake = context.wake_on(&sources).await;
        let reply = match context
            .data
            .run(&needs, &[], |snapshot| run_keyed(snapshot, env, spec.name, args))
            .await
        {
            Ok(Some(reply)) => reply,
            Ok(None) => Reply::NullArray,
            Err(error) => return Err(store_error(error)),
        };
        if !matches!(reply, Reply::NullArray | Reply::Null) {
            return Ok(reply);
        }
        let now = tokio::time::Instant::now();
        if deadline.is_some_and(|deadline| now >= deadline) {
            return Ok(Reply::NullArray);
        }
        // Woken by a write, or at the latest after a few seconds (a safety net, not the
        // mechanism), or at the timeout.
        let wait = deadline.map_or(BLOCK_RECHECK, |deadline| (deadline - now).min(BLOCK_RECHECK));
        let _blocked = context.blocked(client);
        wake.wait(wait).await;
    }
}

/// XREAD and XREADGROUP with BLOCK outside MULTI: reads, and while no stream has
/// anything for it waits for a write to one of them (on any node) or the timeout, then
/// reads again. XREAD's `$` is the streams' last id when the command arrived.
async fn blocking_read(context: &RedisContext, client: u64, env: &Env, spec: &Spec, args: &[Bytes]) -> Outcome {
    let Some((timeout, sources)) = streams::block_plan(env, spec.name, args) else {
        return Err(syntax_error());
    };
    let deadline = timeout.and_then(|timeout| tokio::time::Instant::now().checked_add(timeout));
    // Watch first, so an entry added between the first attempt and the wait still wakes us.
    let mut wake = Some(context.wake_on(&sources).await);
    let args = if spec.name == "xread" && args.iter().any(|arg| &arg[..] == b"$") {
        let found = context.data.get_many(&sources).await?;
        streams::resolve_last_ids(args, &found)
    } else {
        args.to_vec()
    };
    let needs = needs_of(spec, env, &args);
    loop {
        let wake = match wake.take() {
            Some(wake) => wake,
            None => context.wake_on(&sources).await,
        };
        let reply = match context
            .data
            .run(&needs, &[], |snapshot| run_keyed(snapshot, env, spec.name, &args))
            .await
        {
            Ok(Some(reply)) => reply,
            Ok(None) => Reply::NullArray,
            Err(error) => return Err(store_error(error)),
        };
        if reply != Reply::NullArray {
            return Ok(reply);
        }
        let now = tokio::time::Instant::now();
        if deadline.is_some_and(|deadline| now >= deadline) {
            return Ok(Reply::NullArray);
        }
        let wait = deadline.map_or(BLOCK_RECHECK, |deadline| (deadline - now).min(BLOCK_RECHECK));
        // Only now, with `$` fixed and the watch in place, is the client blocked.
        let _blocked = context.blocked(client);
        wake.wait(wait).await;
    }
}

/// Longest a blocked command waits before it looks at its lists again unwoken.
const BLOCK_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// The changes that make `key` hold `record` whatever it held: a collection's elements
/// go too.
fn overwrite(key: Bytes, record: Record) -> Vec<Change> {
    let (start, end) = super::keys::elements_span(&key);
    vec![Change::DeleteSpan(start, end), Change::record(key, Some(record))]
}

/// A SET without options that need the old value, or an MSET: no read first.
fn plain_write(args: &[Bytes]) -> bool {
    match String::from_utf8_lossy(&args[0]).to_ascii_lowercase().as_str() {
        "set" => strings::set_options(args, 0).is_ok_and(|options| options.is_plain()),
        _ => (args.len() - 1).is_multiple_of(2),
    }
}

async fn watch(context: &RedisContext, session: &mut Session, env: &Env, spec: &Spec, args: &[Bytes]) -> Outcome {
    let keys = keys_of(spec, env, args);
    let found = context.data.get_many(&keys).await?;
    for (key, stored) in keys.into_iter().zip(found) {
        if !session.watched.iter().any(|(watched, _)| *watched == key) {
            session.watched.push((key, stored.mod_revision));
        }
    }
    Ok(Reply::ok())
}

/// Runs the queued commands as one atomic write at one point in the log, unless a
/// watched key changed (then nothing runs and the reply is a null array).
async fn exec(context: &RedisContext, session: &mut Session) -> Reply {
    let queued = session.multi.take().unwrap_or_default();
    let watched = std::mem::take(&mut session.watched);
    if std::mem::take(&mut session.multi_failed) {
        return Reply::error("EXECABORT Transaction discarded because of previous errors.");
    }
    let env = Env {
        db: session.db,
        max_bulk: context.limits.max_bulk,
        resp: session.resp,
    };
    let mut needs = Vec::new();
    for args in &queued {
        if let Some(spec) = find(&String::from_utf8_lossy(&args[0])) {
            needs.extend(needs_of(spec, &env, args));
        }
    }
    let outcome = context
        .data
        .run(&needs, &watched, |snapshot| {
            Reply::Array(
                queued
                    .iter()
                    .map(|args| {
                        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
                        run_plain(snapshot, &name, args).unwrap_or_else(|| run_keyed(snapshot, &env, &name, args))
                    })
                    .collect(),
            )
        })
        .await;
    match outcome {
        Ok(Some(replies)) => replies,
        Ok(None) => Reply::NullArray,
        Err(error) => store_error(error),
    }
}

fn unknown_command(args: &[Bytes]) -> Reply {
    let name: String = String::from_utf8_lossy(&args[0]).chars().take(128).collect();
    let mut text = format!("ERR unknown command '{name}', with args beginning with: ");
    for arg in args.iter().skip(1) {
        let arg: String = String::from_utf8_lossy(arg).chars().take(128).collect();
        text.push_str(&format!("'{arg}' "));
        if text.len() > 1024 {
            break;
        }
    }
    Reply::Error(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_redis_writes_them() {
        let unknown = unknown_command(&[Bytes::from("foo"), Bytes::from("a"), Bytes::from("b")]);
        assert_eq!(
            unknown,
            Reply::Error("ERR unknown command 'foo', with args beginning with: 'a' 'b' ".into())
        );
        assert_eq!(
            wrong_arity("get"),
            Reply::Error("ERR wrong number of arguments for 'get' command".into())
        );
        assert_eq!(integer(b"12"), Ok(12));
        assert!(integer(b"+12").is_err() && integer(b"1 ").is_err() && integer(b"99999999999999999999").is_err());
        assert_eq!(float(b"1.5"), Some(1.5));
        assert_eq!(float(b"nan"), None);
    }

    #[test]
    fn every_command_has_a_unique_lowercase_name() {
        let mut names: Vec<&str> = COMMANDS.iter().map(|spec| spec.name).collect();
        // Redis spells a few with an underscore (eval_ro).
        assert!(names
            .iter()
            .all(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COMMANDS.len());
    }
}
