//! Connection and server commands.

use super::{integer, syntax_error, upper, Outcome, COMMANDS};
use crate::api::redis::keys::{self, DATABASES};
use crate::api::redis::resp::Reply;
use crate::api::redis::{glob, RedisContext, Session, REDIS_VERSION};
use bytes::Bytes;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

pub async fn run(context: &RedisContext, session: &mut Session, name: &str, args: &[Bytes]) -> Outcome {
    match name {
        "ping" => match args.len() {
            1 => Ok(Reply::Simple("PONG".into())),
            2 => Ok(Reply::Bulk(args[1].clone())),
            _ => Err(super::wrong_arity("ping")),
        },
        "echo" => Ok(Reply::Bulk(args[1].clone())),
        "quit" => {
            session.closing = true;
            Ok(Reply::ok())
        }
        "hello" => hello(context, session, args).await,
        "auth" => auth(context, session, &args[1..]).await,
        "select" => {
            let index = integer(&args[1])?;
            if !(0..DATABASES as i64).contains(&index) {
                return Err(Reply::error("ERR DB index is out of range"));
            }
            session.db = index as u8;
            Ok(Reply::ok())
        }
        "client" => client(context, session, args),
        "command" => command(args),
        "info" => info(context, args).await,
        "dbsize" => {
            let (start, end) = keys::database_span(session.db);
            Ok(Reply::Integer(context.data.scan(start, end).await?.len() as i64))
        }
        "flushdb" | "flushall" => {
            if args.len() > 2
                || args
                    .get(1)
                    .is_some_and(|mode| !matches!(upper(mode).as_str(), "ASYNC" | "SYNC"))
            {
                return Err(syntax_error());
            }
            let (start, end) = if name == "flushdb" {
                keys::database_span(session.db)
            } else {
                keys::all_databases_span()
            };
            context.data.delete_span(start, end).await?;
            Ok(Reply::ok())
        }
        "time" => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            Ok(Reply::Array(vec![
                Reply::bulk(now.as_secs().to_string()),
                Reply::bulk(now.subsec_micros().to_string()),
            ]))
        }
        "config" => config(context, args),
        _ => unreachable!("{name} is not a server command"),
    }
}

async fn hello(context: &RedisContext, session: &mut Session, args: &[Bytes]) -> Outcome {
    let mut resp = session.resp;
    let mut at = 1;
    if let Some(version) = args.get(1) {
        let version =
            integer(version).map_err(|_| Reply::error("ERR Protocol version is not an integer or out of range"))?;
        if !(2..=3).contains(&version) {
            return Err(Reply::error("NOPROTO unsupported protocol version"));
        }
        resp = version as u8;
        at = 2;
    }
    let mut name = None;
    while at < args.len() {
        match upper(&args[at]).as_str() {
            "AUTH" if at + 2 < args.len() => {
                auth(context, session, &args[at + 1..at + 3]).await?;
                at += 3;
            }
            "SETNAME" if at + 1 < args.len() => {
                name = Some(client_name(&args[at + 1])?);
                at += 2;
            }
            _ => {
                return Err(Reply::error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&args[at])
                )))
            }
        }
    }
    session.resp = resp;
    if let Some(name) = name {
        session.name = name;
    }
    Ok(Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("redis")),
        (Reply::bulk("version"), Reply::bulk(REDIS_VERSION)),
        (Reply::bulk("proto"), Reply::Integer(resp as i64)),
        (Reply::bulk("id"), Reply::Integer(session.id as i64)),
        (Reply::bulk("mode"), Reply::bulk("standalone")),
        (Reply::bulk("role"), Reply::bulk("master")),
        (Reply::bulk("modules"), Reply::Array(Vec::new())),
    ]))
}

/// With etcd's auth on, the cluster's users authenticate (`AUTH password` as the user
/// `default`). With it off there are no passwords: the default user takes any, as
/// Redis's `nopass` default user does, and the one-argument form says none is
/// configured, as Redis does.
async fn auth(context: &RedisContext, session: &mut Session, args: &[Bytes]) -> Outcome {
    if context.auth.enabled() {
        let (user, password) = match args {
            [password] => ("default".to_string(), password),
            [user, password] => (String::from_utf8_lossy(user).into_owned(), password),
            _ => return Err(syntax_error()),
        };
        return match context
            .auth
            .authenticate(&user, &String::from_utf8_lossy(password), Some(session.address.ip()))
            .await
        {
            Ok(_) => {
                // A user ACL SETUSER turned off may not use the Redis port.
                let store = context
                    .auth
                    .store()
                    .await
                    .map_err(|error| Reply::error(format!("ERR shoal: {error}")))?;
                let off = store
                    .users
                    .iter()
                    .find(|known| known.name == user)
                    .and_then(|known| known.redis_acl.as_ref())
                    .is_some_and(|acl| acl.off && !crate::auth::perm::is_admin(&store, &user));
                if off {
                    return Err(Reply::error(
                        "WRONGPASS invalid username-password pair or user is disabled.",
                    ));
                }
                session.user = Some(user);
                Ok(Reply::ok())
            }
            Err(crate::auth::AuthError::AuthFailed) => {
                // Brute force over one connection crawls: 100 ms doubling per failure,
                // up to 5 s (the user's own delay applies on top, across connections).
                let delay = std::time::Duration::from_millis(100)
                    .saturating_mul(1 << session.auth_failures.min(6))
                    .min(std::time::Duration::from_secs(5));
                session.auth_failures = session.auth_failures.saturating_add(1);
                tokio::time::sleep(delay).await;
                Err(Reply::error(
                    "WRONGPASS invalid username-password pair or user is disabled.",
                ))
            }
            Err(error) => Err(Reply::error(format!("ERR shoal: {error}"))),
        };
    }
    match args {
        [_password] => Err(Reply::error(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        )),
        [user, _password] if &user[..] == b"default" => Ok(Reply::ok()),
        [_, _] => Err(Reply::error("WRONGPASS invalid username-password pair or user is disabled.")),
        _ => Err(syntax_error()),
    }
}

fn client_name(name: &Bytes) -> Result<String, Reply> {
    if name.iter().any(|&byte| byte <= b' ' || byte > b'~') {
        return Err(Reply::error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(String::from_utf8_lossy(name).into_owned())
}

fn client(context: &RedisContext, session: &mut Session, args: &[Bytes]) -> Outcome {
    let sub = upper(&args[1]);
    match (sub.as_str(), args.len()) {
        ("SETNAME", 3) => {
            session.name = client_name(&args[2])?;
            Ok(Reply::ok())
        }
        ("GETNAME", 2) => Ok(if session.name.is_empty() {
            Reply::Null
        } else {
            Reply::bulk(session.name.clone())
        }),
        ("ID", 2) => Ok(Reply::Integer(session.id as i64)),
        ("INFO", 2) => Ok(Reply::Verbatim(client_lines(context, session, Some(session.id)))),
        ("LIST", _) => Ok(Reply::Verbatim(client_lines(context, session, None))),
        ("SETINFO", 4) => Ok(Reply::ok()),
        _ => Err(Reply::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(&args[1])
        ))),
    }
}

/// CLIENT LIST lines (all clients, or one), in Redis's format.
fn client_lines(context: &RedisContext, session: &Session, only: Option<u64>) -> String {
    let clients = context.clients();
    let mut out = String::new();
    for (id, client) in clients.iter() {
        if only.is_some_and(|only| only != *id) {
            continue;
        }
        // The calling connection's state is newer than what it last recorded.
        let (name, db, resp) = if *id == session.id {
            (session.name.as_str(), session.db, session.resp)
        } else {
            (client.name.as_str(), client.db, client.resp)
        };
        let flags = if client.blocked { "b" } else { "N" };
        let _ = writeln!(
            out,
            "id={id} addr={} laddr={} fd=0 name={name} age={} idle={} flags={flags} db={db} sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 tot-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 events=r cmd={} user=default redir=-1 resp={resp}",
            client.address,
            client.local,
            client.connected.elapsed().as_secs(),
            client.last_command_at.elapsed().as_secs(),
            client.last_command,
        );
    }
    out
}

fn command(args: &[Bytes]) -> Outcome {
    let info = |spec: &super::Spec| {
        Reply::Array(vec![
            Reply::bulk(spec.name),
            Reply::Integer(spec.arity),
            Reply::Set(spec.flags.iter().map(|flag| Reply::Simple((*flag).into())).collect()),
            Reply::Integer(spec.first_key),
            Reply::Integer(spec.last_key),
            Reply::Integer(spec.step),
            Reply::Set(Vec::new()),
            Reply::Set(Vec::new()),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
        ])
    };
    let Some(sub) = args.get(1) else {
        return Ok(Reply::Array(COMMANDS.iter().map(info).collect()));
    };
    match upper(sub).as_str() {
        "COUNT" => Ok(Reply::Integer(COMMANDS.len() as i64)),
        "INFO" => Ok(Reply::Array(
            args[2..]
                .iter()
                .map(|name| super::find(&String::from_utf8_lossy(name)).map_or(Reply::NullArray, info))
                .collect(),
        )),
        // redis-cli asks for documentation to show hints; none is served (it copes).
        "DOCS" => Ok(Reply::Map(Vec::new())),
        "LIST" => Ok(Reply::Array(
            COMMANDS.iter().map(|spec| Reply::bulk(spec.name)).collect(),
        )),
        _ => Err(Reply::error(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(sub)
        ))),
    }
}

/// Settings CONFIG GET answers: what clients read to adapt to a server.
fn settings(context: &RedisContext) -> Vec<(&'static str, String)> {
    vec![
        ("databases", DATABASES.to_string()),
        ("port", context.port.to_string()),
        ("maxmemory", "0".into()),
        ("maxmemory-policy", "noeviction".into()),
        ("maxclients", super::super::MAX_CLIENTS.to_string()),
        ("appendonly", "yes".into()),
        ("appendfsync", "always".into()),
        ("save", String::new()),
        ("proto-max-bulk-len", context.limits.max_bulk.to_string()),
        ("timeout", "0".into()),
        ("cluster-enabled", "no".into()),
        ("notify-keyspace-events", String::new()),
        ("slowlog-log-slower-than", "10000".into()),
    ]
}

fn config(context: &RedisContext, args: &[Bytes]) -> Outcome {
    match upper(&args[1]).as_str() {
        "GET" if args.len() >= 3 => {
            let mut pairs = Vec::new();
            for (name, value) in settings(context) {
                if args[2..]
                    .iter()
                    .any(|pattern| glob::matches(&pattern.to_ascii_lowercase(), name.as_bytes()))
                {
                    pairs.push((Reply::bulk(name), Reply::bulk(value)));
                }
            }
            Ok(Reply::Map(pairs))
        }
        "SET" => Err(Reply::error(
            "ERR CONFIG SET is not supported: Shoal is configured by its server flags",
        )),
        "RESETSTAT" if args.len() == 2 => Ok(Reply::ok()),
        _ => Err(Reply::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(&args[1])
        ))),
    }
}

async fn info(context: &RedisContext, args: &[Bytes]) -> Outcome {
    let wanted: Vec<String> = args[1..]
        .iter()
        .map(|arg| String::from_utf8_lossy(arg).to_lowercase())
        .collect();
    let everything = wanted.is_empty()
        || wanted
            .iter()
            .any(|section| matches!(section.as_str(), "all" | "everything" | "default"));
    let show = |section: &str| everything || wanted.iter().any(|wanted| wanted == section);
    let mut out = String::new();
    let uptime = context.started.elapsed().as_secs();
    if show("server") {
        let _ = write!(
            out,
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nshoal_version:{}\r\nshoal_member_id:{:x}\r\nos:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            context.member_id,
            std::env::consts::OS,
            std::process::id(),
            context.port,
            uptime / 86_400,
        );
    }
    if show("clients") {
        // One look at the clients (their lock is not reentrant).
        let (connected, blocked) = {
            let clients = context.clients();
            (clients.len(), clients.values().filter(|client| client.blocked).count())
        };
        let _ = write!(
            out,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:{}\r\n\r\n",
            connected,
            super::super::MAX_CLIENTS,
            blocked,
        );
    }
    if show("memory") {
        let rss = resident_bytes();
        let _ = write!(
            out,
            "# Memory\r\nused_memory:{rss}\r\nused_memory_rss:{rss}\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n\r\n"
        );
    }
    if show("persistence") {
        let _ = write!(
            out,
            "# Persistence\r\nloading:0\r\naof_enabled:1\r\nrdb_changes_since_last_save:0\r\nshoal_durability:raft-quorum-fsync\r\n\r\n"
        );
    }
    if show("stats") {
        let stats = &context.stats;
        let _ = write!(
            out,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\nexpired_keys:{}\r\nevicted_keys:0\r\n\r\n",
            stats.connections_received.load(Ordering::Relaxed),
            stats.commands_processed.load(Ordering::Relaxed),
            stats.rejected_connections.load(Ordering::Relaxed),
            context.data.expired.load(Ordering::Relaxed),
        );
    }
    if show("replication") {
        // Every node takes writes (they go through Raft): each is a master to clients.
        let _ = write!(out, "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n");
    }
    if show("keyspace") {
        out.push_str("# Keyspace\r\n");
        let mut per_db = [(0u64, 0u64); DATABASES as usize];
        for db in 0..DATABASES {
            let (start, end) = keys::database_span(db);
            let keys_in = context.data.scan(start, end).await?;
            per_db[db as usize] = (
                keys_in.len() as u64,
                keys_in.iter().filter(|(_, record)| record.expires_at != 0).count() as u64,
            );
        }
        for (db, (count, expires)) in per_db.iter().enumerate() {
            if *count > 0 {
                let _ = write!(out, "db{db}:keys={count},expires={expires},avg_ttl=0\r\n");
            }
        }
        out.push_str("\r\n");
    }
    Ok(Reply::Verbatim(out.trim_end_matches("\r\n").to_string() + "\r\n"))
}

/// This process's resident memory in bytes (0 where /proc is missing).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| {
            text.split_whitespace()
                .nth(1)
                .and_then(|pages| pages.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}
