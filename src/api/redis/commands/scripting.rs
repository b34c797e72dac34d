//! Lua scripts (EVAL, EVALSHA, SCRIPT): a script runs on a snapshot of the keys it
//! declares, like a MULTI/EXEC, so everything it writes applies as one conditional
//! write, atomically, also across ranges. `redis.call` runs the keyed commands on that
//! snapshot; a command naming a key the script did not declare is refused (Redis
//! Cluster asks the same of scripts). The interpreter is Lua 5.1 (mlua, vendored), as
//! Redis's; a script runs on its own interpreter, sandboxed, and is stopped past
//! `lua-time-limit` or by SCRIPT KILL.

use super::{find, integer, is_keyed, keys_of, run_keyed, run_plain, store_error, syntax_error, upper, Env, Outcome};
use crate::api::redis::resp::Reply;
use crate::api::redis::snapshot::{Need, Snapshot};
use crate::api::redis::{RedisContext, Session};
use bytes::Bytes;
use mlua::{Lua, MultiValue, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Redis's default `lua-time-limit`: past it a script is stopped (see the README).
pub const TIME_LIMIT: Duration = Duration::from_secs(5);
/// Scripts kept for EVALSHA per node; past it the cache starts over (SCRIPT FLUSH).
const CACHE_MAX: usize = 10_000;

/// The node's scripts: the EVALSHA cache and the scripts running now.
#[derive(Default)]
pub struct Scripts {
    cache: Mutex<HashMap<String, String>>,
    running: AtomicUsize,
    /// Set by SCRIPT KILL; every running script stops at its next check.
    kill: std::sync::Arc<AtomicBool>,
}

impl Scripts {
    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, script: &str) -> String {
        let sha = sha1_hex(script.as_bytes());
        let mut cache = self.cache();
        if cache.len() >= CACHE_MAX && !cache.contains_key(&sha) {
            cache.clear();
        }
        cache.insert(sha.clone(), script.to_string());
        sha
    }
}

pub fn sha1_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

pub async fn run(context: &RedisContext, session: &mut Session, name: &str, args: &[Bytes]) -> Outcome {
    let scripts = &context.scripts;
    match name {
        "script" => {
            let sub = upper(&args[1]);
            match (sub.as_str(), args.len()) {
                ("LOAD", 3) => Ok(Reply::bulk(scripts.remember(&String::from_utf8_lossy(&args[2])))),
                ("EXISTS", count) if count >= 3 => {
                    let cache = scripts.cache();
                    Ok(Reply::Array(
                        args[2..]
                            .iter()
                            .map(|sha| {
                                let sha = String::from_utf8_lossy(sha).to_ascii_lowercase();
                                Reply::Integer(i64::from(cache.contains_key(&sha)))
                            })
                            .collect(),
                    ))
                }
                ("FLUSH", 2) | ("FLUSH", 3) => {
                    if args.len() == 3 && !matches!(upper(&args[2]).as_str(), "ASYNC" | "SYNC") {
                        return Err(syntax_error());
                    }
                    scripts.cache().clear();
                    Ok(Reply::ok())
                }
                ("KILL", 2) => {
                    if scripts.running.load(Ordering::Acquire) == 0 {
                        return Err(Reply::error("NOTBUSY No scripts in execution right now."));
                    }
                    scripts.kill.store(true, Ordering::Release);
                    Ok(Reply::ok())
                }
                _ => Err(Reply::error(format!(
                    "ERR unknown subcommand or wrong number of arguments for '{}'. Try SCRIPT HELP.",
                    String::from_utf8_lossy(&args[1])
                ))),
            }
        }
        _ => {
            let read_only = name.ends_with("_ro");
            let script = if name.starts_with("evalsha") {
                let sha = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
                scripts
                    .cache()
                    .get(&sha)
                    .cloned()
                    .ok_or_else(|| Reply::error("NOSCRIPT No matching script. Please use EVAL."))?
            } else {
                let script = String::from_utf8_lossy(&args[1]).into_owned();
                scripts.remember(&script);
                script
            };
            let count = integer(&args[2])?;
            if count < 0 {
                return Err(Reply::error("ERR Number of keys can't be negative"));
            }
            if count as usize > args.len() - 3 {
                return Err(Reply::error("ERR Number of keys can't be greater than number of args"));
            }
            let keys = args[3..3 + count as usize].to_vec();
            let argv = args[3 + count as usize..].to_vec();
            let env = Env {
                db: session.db,
                max_bulk: context.limits.max_bulk,
                resp: session.resp,
            };
            let declared: Vec<Bytes> = keys.iter().map(|key| env.key(key)).collect();
            let needs: Vec<Need> = declared.iter().cloned().map(Need::All).collect();
            scripts.running.fetch_add(1, Ordering::AcqRel);
            let outcome = context
                .data
                .run(&needs, &[], |snapshot| {
                    let deadline = Instant::now() + TIME_LIMIT;
                    // A script may run long: its worker thread lets other tasks move on.
                    tokio::task::block_in_place(|| {
                        execute(
                            snapshot,
                            &Run {
                                env: &env,
                                script: &script,
                                keys: &keys,
                                argv: &argv,
                                declared: &declared,
                                read_only,
                                deadline,
                                kill: scripts.kill.clone(),
                            },
                        )
                    })
                })
                .await;
            if scripts.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                scripts.kill.store(false, Ordering::Release);
            }
            match outcome {
                Ok(Some(reply)) => Ok(reply),
                Ok(None) => Ok(Reply::Null),
                Err(error) => Err(store_error(error)),
            }
        }
    }
}

struct Run<'a> {
    env: &'a Env,
    script: &'a str,
    keys: &'a [Bytes],
    argv: &'a [Bytes],
    declared: &'a [Bytes],
    read_only: bool,
    deadline: Instant,
    kill: std::sync::Arc<AtomicBool>,
}

/// Runs the script on `snapshot`: its reply (an error reply for a script that failed).
fn execute(snapshot: &mut Snapshot, run: &Run<'_>) -> Reply {
    let lua = Lua::new();
    let snapshot = RefCell::new(snapshot);
    // The error reply a failed redis.call raised, given back to the client as it is.
    let raised: RefCell<Option<String>> = RefCell::new(None);
    let outcome = (|| -> mlua::Result<Reply> {
        let globals = lua.globals();
        for unsafe_global in [
            "os", "io", "loadfile", "dofile", "require", "module", "package", "debug",
        ] {
            globals.set(unsafe_global, Value::Nil)?;
        }
        let keys: Vec<mlua::String> = run
            .keys
            .iter()
            .map(|key| lua.create_string(key.as_ref()))
            .collect::<mlua::Result<_>>()?;
        globals.set("KEYS", lua.create_sequence_from(keys)?)?;
        let argv: Vec<mlua::String> = run
            .argv
            .iter()
            .map(|arg| lua.create_string(arg.as_ref()))
            .collect::<mlua::Result<_>>()?;
        globals.set("ARGV", lua.create_sequence_from(argv)?)?;
        let deadline = run.deadline;
        let kill = run.kill.clone();
        lua.set_hook(mlua::HookTriggers::new().every_nth_instruction(1_000), move |_, _| {
            if kill.load(Ordering::Acquire) {
                return Err(mlua::Error::RuntimeError(
                    "Script killed by user with SCRIPT KILL...".into(),
                ));
            }
            if Instant::now() > deadline {
                return Err(mlua::Error::RuntimeError(format!(
                    "Script exceeded the time limit of {} ms (lua-time-limit) and was stopped",
                    TIME_LIMIT.as_millis()
                )));
            }
            Ok(mlua::VmState::Continue)
        });
        lua.scope(|scope| {
            let redis = lua.create_table()?;
            let (snapshot, raised) = (&snapshot, &raised);
            for (name, raise) in [("call", true), ("pcall", false)] {
                let call = scope.create_function(move |lua, args: MultiValue| {
                    let reply = redis_call(&mut snapshot.borrow_mut(), run, args);
                    match reply {
                        Reply::Error(text) if raise => {
                            *raised.borrow_mut() = Some(text.clone());
                            Err(mlua::Error::RuntimeError(text))
                        }
                        reply => to_lua(lua, reply),
                    }
                })?;
                redis.set(name, call)?;
            }
            redis.set(
                "status_reply",
                lua.create_function(|lua, text: mlua::String| {
                    let table = lua.create_table()?;
                    table.set("ok", text)?;
                    Ok(table)
                })?,
            )?;
            redis.set(
                "error_reply",
                lua.create_function(|lua, text: mlua::String| {
                    let table = lua.create_table()?;
                    table.set("err", text)?;
                    Ok(table)
                })?,
            )?;
            redis.set(
                "sha1hex",
                lua.create_function(|_, text: mlua::String| Ok(sha1_hex(&text.as_bytes())))?,
            )?;
            redis.set("log", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
            for (level, value) in [
                ("LOG_DEBUG", 0),
                ("LOG_VERBOSE", 1),
                ("LOG_NOTICE", 2),
                ("LOG_WARNING", 3),
            ] {
                redis.set(level, value)?;
            }
            globals.set("redis", redis)?;
            let value: Value = lua.load(run.script).set_name("@user_script").eval()?;
            Ok(from_lua(value))
        })
    })();
    match outcome {
        Ok(reply) => reply,
        Err(_) if raised.borrow().is_some() => Reply::Error(raised.borrow().clone().unwrap_or_default()),
        Err(mlua::Error::SyntaxError { message, .. }) => {
            Reply::error(format!("ERR Error compiling script (new function): {message}"))
        }
        Err(error) => Reply::error(format!("ERR Error running script: {}", first_line(&error.to_string()))),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// One `redis.call`: the command on the script's snapshot, or the error reply.
fn redis_call(snapshot: &mut Snapshot, run: &Run<'_>, args: MultiValue) -> Reply {
    let mut words = Vec::with_capacity(args.len());
    for value in args {
        match value {
            Value::String(text) => words.push(Bytes::copy_from_slice(&text.as_bytes())),
            Value::Integer(number) => words.push(Bytes::from(number.to_string())),
            Value::Number(number) => words.push(Bytes::from(format_number(number))),
            _ => return Reply::error("ERR Lua redis lib command arguments must be strings or integers"),
        }
    }
    let Some(first) = words.first() else {
        return Reply::error("ERR Please specify at least one argument for this redis lib call");
    };
    let name = String::from_utf8_lossy(first).to_ascii_lowercase();
    let Some(spec) = find(&name) else {
        return Reply::error("ERR Unknown Redis command called from script");
    };
    let count = words.len() as i64;
    if (spec.arity > 0 && count != spec.arity) || (spec.arity < 0 && count < -spec.arity) {
        return Reply::error("ERR Wrong number of args calling Redis command from script");
    }
    if let Some(reply) = run_plain(snapshot, spec.name, &words) {
        return reply;
    }
    if !is_keyed(spec.name) {
        return Reply::error("ERR This Redis command is not allowed from script");
    }
    if run.read_only && spec.flags.contains(&"write") {
        return Reply::error("ERR Write commands are not allowed from read-only scripts.");
    }
    let touched = keys_of(spec, run.env, &words);
    if touched.is_empty() && spec.first_key <= 0 {
        // Its keys sit where the table cannot place them: they must all be declared,
        // which only a command naming them in fixed places shows.
        return Reply::error(
            "ERR Script attempted to run a command whose keys Shoal cannot check against the declared keys",
        );
    }
    if touched.iter().any(|key| !run.declared.contains(key)) {
        return Reply::error(
            "ERR Script attempted to access a key not declared in KEYS (Shoal runs a script on the keys it names)",
        );
    }
    run_keyed(snapshot, run.env, spec.name, &words)
}

/// A Lua number as Redis's Lua turns it into an argument (%.17g).
fn format_number(number: f64) -> String {
    if number.fract() == 0.0 && number.abs() < 1e17 {
        format!("{}", number as i64)
    } else {
        format!("{number}")
    }
}

/// A reply as a script sees it (Redis's RESP2 conversion).
fn to_lua(lua: &Lua, reply: Reply) -> mlua::Result<Value> {
    Ok(match reply {
        Reply::Integer(number) => Value::Integer(number),
        Reply::Bulk(bytes) => Value::String(lua.create_string(bytes.as_ref())?),
        Reply::Verbatim(text) => Value::String(lua.create_string(&text)?),
        Reply::Double(number) => Value::String(lua.create_string(format_number(number))?),
        Reply::Boolean(flag) => Value::Integer(i64::from(flag)),
        Reply::Null | Reply::NullArray => Value::Boolean(false),
        Reply::Simple(text) => {
            let table = lua.create_table()?;
            table.set("ok", text)?;
            Value::Table(table)
        }
        Reply::Error(text) => {
            let table = lua.create_table()?;
            table.set("err", text)?;
            Value::Table(table)
        }
        Reply::Array(items) | Reply::Set(items) | Reply::Push(items) | Reply::Sequence(items) => {
            let table = lua.create_table()?;
            for (index, item) in items.into_iter().enumerate() {
                table.set(index + 1, to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
        Reply::Map(pairs) => {
            let table = lua.create_table()?;
            for (index, (field, value)) in pairs.into_iter().enumerate() {
                table.set(2 * index + 1, to_lua(lua, field)?)?;
                table.set(2 * index + 2, to_lua(lua, value)?)?;
            }
            Value::Table(table)
        }
    })
}

/// A script's result as the client gets it (Redis's conversion: numbers truncated to
/// integers, tables read up to their first nil, `{ok=...}` and `{err=...}` replies).
fn from_lua(value: Value) -> Reply {
    match value {
        Value::Integer(number) => Reply::Integer(number),
        Value::Number(number) => Reply::Integer(number as i64),
        Value::String(text) => Reply::Bulk(Bytes::copy_from_slice(&text.as_bytes())),
        Value::Boolean(true) => Reply::Integer(1),
        Value::Table(table) => {
            if let Ok(Value::String(error)) = table.get::<Value>("err") {
                return Reply::Error(error.to_string_lossy().to_string());
            }
            if let Ok(Value::String(status)) = table.get::<Value>("ok") {
                return Reply::Simple(status.to_string_lossy().to_string());
            }
            let mut items = Vec::new();
            for index in 1.. {
                match table.get::<Value>(index) {
                    Ok(Value::Nil) | Err(_) => break,
                    Ok(item) => items.push(from_lua(item)),
                }
            }
            Reply::Array(items)
        }
        _ => Reply::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_is_redis_script_id() {
        // SCRIPT LOAD "return 1" in Redis.
        assert_eq!(sha1_hex(b"return 1"), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }
}
