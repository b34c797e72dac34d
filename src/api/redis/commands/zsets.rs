//! Sorted-set commands: each member is an element stored beside the set's record, its
//! value the score (an f64, big-endian). Commands that take members by name read only
//! those; ranges, ranks and set operations read the whole set and order it in memory
//! (O(n log n) in the set's size: a score index is future work).

use super::{float, integer, syntax_error, upper, wrong_type, Env};
use crate::api::redis::keys::Kind;
use crate::api::redis::resp::Reply;
use crate::api::redis::snapshot::{Need, Snapshot};
use bytes::Bytes;
use std::collections::BTreeMap;

pub fn handles(name: &str) -> bool {
    matches!(
        name,
        "zadd"
            | "zincrby"
            | "zscore"
            | "zmscore"
            | "zrem"
            | "zcard"
            | "zcount"
            | "zlexcount"
            | "zrange"
            | "zrevrange"
            | "zrangebyscore"
            | "zrevrangebyscore"
            | "zrangebylex"
            | "zrevrangebylex"
            | "zrank"
            | "zrevrank"
            | "zpopmin"
            | "zpopmax"
            | "zrandmember"
            | "zremrangebyrank"
            | "zremrangebyscore"
            | "zremrangebylex"
            | "zunionstore"
            | "zinterstore"
            | "zdiffstore"
            | "zunion"
            | "zinter"
            | "zdiff"
            | "bzpopmin"
            | "bzpopmax"
    )
}

/// Source keys of the set operations: `numkeys key...` starting at `at`.
fn sources(args: &[Bytes], at: usize) -> Option<&[Bytes]> {
    let count = integer(args.get(at)?).ok().filter(|count| *count > 0)? as usize;
    args.get(at + 1..at + 1 + count)
}

pub fn needs(name: &str, env: &Env, args: &[Bytes]) -> Vec<Need> {
    let key = env.key(&args[1]);
    match name {
        "zadd" => {
            // Members follow the options, as score-member pairs.
            let first = args[2..]
                .iter()
                .position(|arg| !matches!(upper(arg).as_str(), "NX" | "XX" | "GT" | "LT" | "CH" | "INCR"))
                .map_or(args.len(), |offset| offset + 2);
            let members = args[first..].iter().skip(1).step_by(2).cloned().collect();
            vec![Need::Fields(key, members)]
        }
        "zincrby" => vec![Need::Fields(key, vec![args[3].clone()])],
        "zscore" => vec![Need::Fields(key, vec![args[2].clone()])],
        "zmscore" | "zrem" => vec![Need::Fields(key, args[2..].to_vec())],
        "zcard" => vec![Need::Record(key)],
        "zunionstore" | "zinterstore" | "zdiffstore" => std::iter::once(Need::Record(key))
            .chain(
                sources(args, 2)
                    .unwrap_or_default()
                    .iter()
                    .map(|key| Need::All(env.key(key))),
            )
            .collect(),
        "bzpopmin" | "bzpopmax" => args[1..args.len() - 1]
            .iter()
            .map(|key| Need::All(env.key(key)))
            .collect(),
        "zunion" | "zinter" | "zdiff" => sources(args, 1)
            .unwrap_or_default()
            .iter()
            .map(|key| Need::All(env.key(key)))
            .collect(),
        _ => vec![Need::All(key)],
    }
}

pub fn run(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Reply {
    outcome(snapshot, env, name, args).unwrap_or_else(|error| error)
}

fn not_float() -> Reply {
    Reply::error("ERR value is not a valid float")
}

fn check(snapshot: &Snapshot, key: &Bytes) -> Result<(), Reply> {
    match snapshot.get(key) {
        Some(record) if record.kind != Kind::ZSet => Err(wrong_type()),
        _ => Ok(()),
    }
}

fn encode(score: f64) -> Bytes {
    Bytes::copy_from_slice(&score.to_be_bytes())
}

fn decode(value: &[u8]) -> f64 {
    value.try_into().map_or(0.0, f64::from_be_bytes)
}

fn score(snapshot: &Snapshot, key: &Bytes, member: &[u8]) -> Option<f64> {
    snapshot.field(key, member).map(|value| decode(&value))
}

/// The whole set, ordered by score then member.
fn ordered(snapshot: &Snapshot, key: &Bytes) -> Result<Vec<(Bytes, f64)>, Reply> {
    check(snapshot, key)?;
    let mut members: Vec<(Bytes, f64)> = snapshot
        .fields(key)
        .into_iter()
        .map(|(member, value)| (member, decode(&value)))
        .collect();
    members.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    Ok(members)
}

/// One end of a score range: the value and whether it is excluded ("(1.5").
fn score_bound(arg: &[u8]) -> Result<(f64, bool), Reply> {
    let error = || Reply::error("ERR min or max is not a float");
    match arg.strip_prefix(b"(") {
        Some(rest) => float(rest).map(|value| (value, true)).ok_or_else(error),
        None => float(arg).map(|value| (value, false)).ok_or_else(error),
    }
}

fn in_score_range(score: f64, min: (f64, bool), max: (f64, bool)) -> bool {
    let above = if min.1 { score > min.0 } else { score >= min.0 };
    let below = if max.1 { score < max.0 } else { score <= max.0 };
    above && below
}

/// One end of a lex range: "-", "+", "[a" (included) or "(a" (excluded).
#[derive(Clone)]
enum Lex {
    Min,
    Max,
    Included(Bytes),
    Excluded(Bytes),
}

fn lex_bound(arg: &Bytes) -> Result<Lex, Reply> {
    match arg.first() {
        Some(b'-') if arg.len() == 1 => Ok(Lex::Min),
        Some(b'+') if arg.len() == 1 => Ok(Lex::Max),
        Some(b'[') => Ok(Lex::Included(arg.slice(1..))),
        Some(b'(') => Ok(Lex::Excluded(arg.slice(1..))),
        _ => Err(Reply::error("ERR min or max not valid string range item")),
    }
}

fn in_lex_range(member: &[u8], min: &Lex, max: &Lex) -> bool {
    let above = match min {
        Lex::Min => true,
        Lex::Max => false,
        Lex::Included(bound) => member >= &bound[..],
        Lex::Excluded(bound) => member > &bound[..],
    };
    let below = match max {
        Lex::Min => false,
        Lex::Max => true,
        Lex::Included(bound) => member <= &bound[..],
        Lex::Excluded(bound) => member < &bound[..],
    };
    above && below
}

/// Members (with scores if asked) as Redis replies: a flat array in RESP2, pairs in
/// RESP3.
fn members_reply(env: &Env, members: Vec<(Bytes, f64)>, with_scores: bool) -> Reply {
    if !with_scores {
        return Reply::Array(members.into_iter().map(|(member, _)| Reply::Bulk(member)).collect());
    }
    if env.resp >= 3 {
        return Reply::Array(
            members
                .into_iter()
                .map(|(member, score)| Reply::Array(vec![Reply::Bulk(member), Reply::Double(score)]))
                .collect(),
        );
    }
    Reply::Array(
        members
            .into_iter()
            .flat_map(|(member, score)| [Reply::Bulk(member), Reply::Double(score)])
            .collect(),
    )
}

/// Redis's inclusive rank range (negative from the end) as a slice range.
fn rank_range(start: i64, stop: i64, length: usize) -> Option<std::ops::Range<usize>> {
    let length = length as i64;
    let start = if start < 0 { (length + start).max(0) } else { start };
    let stop = if stop < 0 { length + stop } else { stop.min(length - 1) };
    (start <= stop && start < length).then(|| start as usize..stop as usize + 1)
}

/// ZRANGE's forms, and the older commands as ZRANGE with fixed options.
struct RangeQuery {
    by: By,
    reverse: bool,
    limit: Option<(i64, i64)>,
    with_scores: bool,
}

enum By {
    Rank(i64, i64),
    Score((f64, bool), (f64, bool)),
    Lex(Lex, Lex),
}

fn parse_range(name: &str, args: &[Bytes]) -> Result<RangeQuery, Reply> {
    let (mut by_score, mut by_lex, mut reverse) = (false, false, false);
    match name {
        "zrevrange" => reverse = true,
        "zrangebyscore" => by_score = true,
        "zrevrangebyscore" => (by_score, reverse) = (true, true),
        "zrangebylex" => by_lex = true,
        "zrevrangebylex" => (by_lex, reverse) = (true, true),
        _ => {}
    }
    let (mut limit, mut with_scores) = (None, false);
    let mut at = 4;
    while at < args.len() {
        match upper(&args[at]).as_str() {
            "BYSCORE" if name == "zrange" => by_score = true,
            "BYLEX" if name == "zrange" => by_lex = true,
            "REV" if name == "zrange" => reverse = true,
            "WITHSCORES" => with_scores = true,
            "LIMIT" if at + 2 < args.len() => {
                limit = Some((integer(&args[at + 1])?, integer(&args[at + 2])?));
                at += 2;
            }
            _ => return Err(syntax_error()),
        }
        at += 1;
    }
    if by_score && by_lex {
        return Err(syntax_error());
    }
    if limit.is_some() && !by_score && !by_lex {
        return Err(Reply::error(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ));
    }
    if with_scores && by_lex {
        return Err(Reply::error(
            "ERR syntax error, WITHSCORES not supported in combination with BYLEX",
        ));
    }
    // The older REV commands and ZRANGE ... REV take the range from max to min.
    let (low, high) = if reverse && (by_score || by_lex) {
        (&args[3], &args[2])
    } else {
        (&args[2], &args[3])
    };
    let by = if by_score {
        By::Score(score_bound(low)?, score_bound(high)?)
    } else if by_lex {
        By::Lex(lex_bound(low)?, lex_bound(high)?)
    } else {
        By::Rank(integer(&args[2])?, integer(&args[3])?)
    };
    Ok(RangeQuery {
        by,
        reverse,
        limit,
        with_scores,
    })
}

fn range(members: Vec<(Bytes, f64)>, query: &RangeQuery) -> Vec<(Bytes, f64)> {
    let mut members = members;
    if query.reverse {
        members.reverse();
    }
    let mut selected: Vec<(Bytes, f64)> = match &query.by {
        By::Rank(start, stop) => match rank_range(*start, *stop, members.len()) {
            Some(range) => members[range].to_vec(),
            None => Vec::new(),
        },
        By::Score(min, max) => members
            .into_iter()
            .filter(|(_, score)| in_score_range(*score, *min, *max))
            .collect(),
        By::Lex(min, max) => members
            .into_iter()
            .filter(|(member, _)| in_lex_range(member, min, max))
            .collect(),
    };
    if let Some((offset, count)) = query.limit {
        if offset < 0 {
            return Vec::new();
        }
        selected = selected.into_iter().skip(offset as usize).collect();
        if count >= 0 {
            selected.truncate(count as usize);
        }
    }
    selected
}

/// Replaces `key` with `members` (the STORE forms); the number stored.
fn store(snapshot: &mut Snapshot, key: &Bytes, members: Vec<(Bytes, f64)>) -> i64 {
    snapshot.set(key, None);
    let count = members.len() as i64;
    for (member, score) in members {
        snapshot.put_field(key, Kind::ZSet, member, encode(score));
    }
    count
}

/// ZUNION, ZINTER and ZDIFF over `keys`, with WEIGHTS and AGGREGATE from `options`;
/// also what they found WITHSCORES.
fn combine(
    snapshot: &Snapshot,
    name: &str,
    keys: &[Bytes],
    options: &[Bytes],
) -> Result<(Vec<(Bytes, f64)>, bool), Reply> {
    let mut weights = vec![1.0; keys.len()];
    let mut aggregate = "SUM".to_string();
    let mut with_scores = false;
    let mut at = 0;
    while at < options.len() {
        match upper(&options[at]).as_str() {
            "WEIGHTS" if !name.starts_with("zdiff") && at + keys.len() < options.len() => {
                for (index, weight) in options[at + 1..=at + keys.len()].iter().enumerate() {
                    weights[index] = float(weight).ok_or_else(|| Reply::error("ERR weight value is not a float"))?;
                }
                at += keys.len();
            }
            "AGGREGATE" if !name.starts_with("zdiff") && at + 1 < options.len() => {
                aggregate = upper(&options[at + 1]);
                if !matches!(aggregate.as_str(), "SUM" | "MIN" | "MAX") {
                    return Err(syntax_error());
                }
                at += 1;
            }
            "WITHSCORES" if !name.ends_with("store") => with_scores = true,
            _ => return Err(syntax_error()),
        }
        at += 1;
    }
    let mut sets = Vec::with_capacity(keys.len());
    for key in keys {
        check(snapshot, key)?;
        sets.push(
            snapshot
                .fields(key)
                .into_iter()
                .map(|(member, value)| (member, decode(&value)))
                .collect::<BTreeMap<Bytes, f64>>(),
        );
    }
    let join = |a: f64, b: f64| match aggregate.as_str() {
        "MIN" => a.min(b),
        "MAX" => a.max(b),
        _ => {
            let sum = a + b;
            if sum.is_nan() {
                0.0
            } else {
                sum
            }
        }
    };
    let mut result: BTreeMap<Bytes, f64> = BTreeMap::new();
    let kind = name.trim_end_matches("store");
    for (index, set) in sets.iter().enumerate() {
        let weight = weights[index];
        match kind {
            "zunion" => {
                for (member, score) in set {
                    let weighted = score * weight;
                    result
                        .entry(member.clone())
                        .and_modify(|current| *current = join(*current, weighted))
                        .or_insert(weighted);
                }
            }
            "zinter" if index == 0 => {
                result = set
                    .iter()
                    .map(|(member, score)| (member.clone(), score * weight))
                    .collect()
            }
            "zinter" => {
                result = result
                    .into_iter()
                    .filter_map(|(member, current)| {
                        set.get(&member).map(|score| (member, join(current, score * weight)))
                    })
                    .collect();
            }
            _ if index == 0 => result = set.clone(),
            _ => result.retain(|member, _| !set.contains_key(member)),
        }
    }
    let mut members: Vec<(Bytes, f64)> = result.into_iter().collect();
    members.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    Ok((members, with_scores))
}

fn outcome(snapshot: &mut Snapshot, env: &Env, name: &str, args: &[Bytes]) -> Result<Reply, Reply> {
    let key = env.key(&args[1]);
    match name {
        "zadd" => zadd(snapshot, &key, args),
        "zincrby" => {
            check(snapshot, &key)?;
            let by = float(&args[2]).ok_or_else(not_float)?;
            let next = score(snapshot, &key, &args[3]).unwrap_or(0.0) + by;
            if next.is_nan() {
                return Err(Reply::error("ERR resulting score is not a number (NaN)"));
            }
            snapshot.put_field(&key, Kind::ZSet, args[3].clone(), encode(next));
            Ok(Reply::Double(next))
        }
        "zscore" => {
            check(snapshot, &key)?;
            Ok(score(snapshot, &key, &args[2]).map_or(Reply::Null, Reply::Double))
        }
        "zmscore" => {
            check(snapshot, &key)?;
            Ok(Reply::Array(
                args[2..]
                    .iter()
                    .map(|member| score(snapshot, &key, member).map_or(Reply::Null, Reply::Double))
                    .collect(),
            ))
        }
        "zrem" => {
            check(snapshot, &key)?;
            let mut removed = 0;
            for member in &args[2..] {
                removed += i64::from(snapshot.remove_field(&key, member));
            }
            Ok(Reply::Integer(removed))
        }
        "zcard" => {
            check(snapshot, &key)?;
            Ok(Reply::Integer(
                snapshot.get(&key).map_or(0, |record| record.count() as i64),
            ))
        }
        "zcount" => {
            let (min, max) = (score_bound(&args[2])?, score_bound(&args[3])?);
            let members = ordered(snapshot, &key)?;
            Ok(Reply::Integer(
                members
                    .iter()
                    .filter(|(_, score)| in_score_range(*score, min, max))
                    .count() as i64,
            ))
        }
        "zlexcount" => {
            let (min, max) = (lex_bound(&args[2])?, lex_bound(&args[3])?);
            let members = ordered(snapshot, &key)?;
            Ok(Reply::Integer(
                members
                    .iter()
                    .filter(|(member, _)| in_lex_range(member, &min, &max))
                    .count() as i64,
            ))
        }
        "zrange" | "zrevrange" | "zrangebyscore" | "zrevrangebyscore" | "zrangebylex" | "zrevrangebylex" => {
            let query = parse_range(name, args)?;
            let members = ordered(snapshot, &key)?;
            Ok(members_reply(env, range(members, &query), query.with_scores))
        }
        "zrank" | "zrevrank" => {
            let with_score = match args.get(3) {
                None => false,
                Some(option) if upper(option) == "WITHSCORE" && args.len() == 4 => true,
                Some(_) => return Err(syntax_error()),
            };
            let mut members = ordered(snapshot, &key)?;
            if name == "zrevrank" {
                members.reverse();
            }
            Ok(match members.iter().position(|(member, _)| *member == args[2]) {
                None if with_score => Reply::NullArray,
                None => Reply::Null,
                Some(rank) if with_score => {
                    Reply::Array(vec![Reply::Integer(rank as i64), Reply::Double(members[rank].1)])
                }
                Some(rank) => Reply::Integer(rank as i64),
            })
        }
        "zpopmin" | "zpopmax" => {
            let count = match args.get(2) {
                None => 1,
                Some(count) => {
                    let count = integer(count)?;
                    if count < 0 {
                        return Err(Reply::error("ERR value is out of range, must be positive"));
                    }
                    count as usize
                }
            };
            let mut members = ordered(snapshot, &key)?;
            if name == "zpopmax" {
                members.reverse();
            }
            members.truncate(count);
            for (member, _) in &members {
                snapshot.remove_field(&key, member);
            }
            Ok(members_reply(env, members, true))
        }
        "zrandmember" => {
            let members = ordered(snapshot, &key)?;
            let pairs: Vec<(Bytes, Bytes)> = members
                .iter()
                .map(|(member, score)| (member.clone(), encode(*score)))
                .collect();
            let with_scores = args.get(3).is_some_and(|option| upper(option) == "WITHSCORES");
            if args.len() > 4 || (args.len() == 4 && !with_scores) {
                return Err(syntax_error());
            }
            let count_args: Vec<Bytes> = args.get(2).cloned().into_iter().collect();
            let picked = super::hashes::random_members(&pairs, &count_args, "zrandmember")?;
            if !with_scores {
                return Ok(picked);
            }
            let Reply::Array(items) = picked else { return Ok(picked) };
            let chosen: Vec<(Bytes, f64)> = items
                .into_iter()
                .filter_map(|item| match item {
                    Reply::Bulk(member) => {
                        let score = members.iter().find(|(candidate, _)| *candidate == member)?.1;
                        Some((member, score))
                    }
                    _ => None,
                })
                .collect();
            Ok(members_reply(env, chosen, true))
        }
        "zremrangebyrank" | "zremrangebyscore" | "zremrangebylex" => {
            let members = ordered(snapshot, &key)?;
            let doomed: Vec<Bytes> = match name {
                "zremrangebyrank" => {
                    let (start, stop) = (integer(&args[2])?, integer(&args[3])?);
                    rank_range(start, stop, members.len())
                        .map(|range| members[range].iter().map(|(member, _)| member.clone()).collect())
                        .unwrap_or_default()
                }
                "zremrangebyscore" => {
                    let (min, max) = (score_bound(&args[2])?, score_bound(&args[3])?);
                    members
                        .into_iter()
                        .filter(|(_, score)| in_score_range(*score, min, max))
                        .map(|(member, _)| member)
                        .collect()
                }
                _ => {
                    let (min, max) = (lex_bound(&args[2])?, lex_bound(&args[3])?);
                    members
                        .into_iter()
                        .filter(|(member, _)| in_lex_range(member, &min, &max))
                        .map(|(member, _)| member)
                        .collect()
                }
            };
            for member in &doomed {
                snapshot.remove_field(&key, member);
            }
            Ok(Reply::Integer(doomed.len() as i64))
        }
        "zunionstore" | "zinterstore" | "zdiffstore" => {
            let Some(keys) = sources(args, 2) else {
                return Err(Reply::error(format!(
                    "ERR at least 1 input key is needed for '{name}' command"
                )));
            };
            let keys: Vec<Bytes> = keys.iter().map(|key| env.key(key)).collect();
            let (members, _) = combine(snapshot, name, &keys, &args[3 + keys.len()..])?;
            Ok(Reply::Integer(store(snapshot, &key, members)))
        }
        "zunion" | "zinter" | "zdiff" => {
            let Some(keys) = sources(args, 1) else {
                return Err(Reply::error(format!(
                    "ERR at least 1 input key is needed for '{name}' command"
                )));
            };
            let keys: Vec<Bytes> = keys.iter().map(|key| env.key(key)).collect();
            let (members, with_scores) = combine(snapshot, name, &keys, &args[2 + keys.len()..])?;
            Ok(members_reply(env, members, with_scores))
        }
        "bzpopmin" | "bzpopmax" => {
            // Without blocking (MULTI, or one attempt of the blocking loop): the first
            // key holding a member.
            for name_arg in &args[1..args.len() - 1] {
                let key = env.key(name_arg);
                let mut members = ordered(snapshot, &key)?;
                if name == "bzpopmax" {
                    members.reverse();
                }
                if let Some((member, score)) = members.into_iter().next() {
                    snapshot.remove_field(&key, &member);
                    return Ok(Reply::Array(vec![
                        Reply::Bulk(name_arg.clone()),
                        Reply::Bulk(member),
                        Reply::Double(score),
                    ]));
                }
            }
            Ok(Reply::NullArray)
        }
        _ => unreachable!("{name} is not a sorted-set command"),
    }
}

fn zadd(snapshot: &mut Snapshot, key: &Bytes, args: &[Bytes]) -> Result<Reply, Reply> {
    let (mut nx, mut xx, mut gt, mut lt, mut ch, mut incr) = (false, false, false, false, false, false);
    let mut at = 2;
    while at < args.len() {
        match upper(&args[at]).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            "CH" => ch = true,
            "INCR" => incr = true,
            _ => break,
        }
        at += 1;
    }
    let pairs = &args[at..];
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Err(syntax_error());
    }
    if nx && xx {
        return Err(Reply::error(
            "ERR XX and NX options at the same time are not compatible",
        ));
    }
    if (gt && lt) || (nx && (gt || lt)) {
        return Err(Reply::error(
            "ERR GT, LT, and/or NX options at the same time are not compatible",
        ));
    }
    if incr && pairs.len() != 2 {
        return Err(Reply::error("ERR INCR option supports a single increment-element pair"));
    }
    // Every score parses before anything changes.
    let mut parsed = Vec::with_capacity(pairs.len() / 2);
    for pair in pairs.chunks(2) {
        parsed.push((float(&pair[0]).ok_or_else(not_float)?, pair[1].clone()));
    }
    check(snapshot, key)?;
    let (mut added, mut changed) = (0, 0);
    let mut incr_result = None;
    for (value, member) in parsed {
        let current = score(snapshot, key, &member);
        let next = if incr { current.unwrap_or(0.0) + value } else { value };
        if next.is_nan() {
            return Err(Reply::error("ERR resulting score is not a number (NaN)"));
        }
        let allowed = match current {
            None => !xx,
            Some(current) => !nx && (!gt || next > current) && (!lt || next < current),
        };
        if !allowed {
            continue;
        }
        incr_result = Some(next);
        if current == Some(next) {
            continue;
        }
        snapshot.put_field(key, Kind::ZSet, member, encode(next));
        if current.is_none() {
            added += 1;
        } else {
            changed += 1;
        }
    }
    if incr {
        return Ok(incr_result.map_or(Reply::Null, Reply::Double));
    }
    Ok(Reply::Integer(if ch { added + changed } else { added }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_select_as_redis() {
        assert_eq!(score_bound(b"(1.5").ok(), Some((1.5, true)));
        assert_eq!(score_bound(b"-inf").ok(), Some((f64::NEG_INFINITY, false)));
        assert!(score_bound(b"x").is_err());
        assert!(in_lex_range(b"b", &Lex::Included(Bytes::from("b")), &Lex::Max));
        assert!(!in_lex_range(b"b", &Lex::Excluded(Bytes::from("b")), &Lex::Max));
        assert_eq!(rank_range(0, -1, 3), Some(0..3));
        assert_eq!(rank_range(-2, -1, 3), Some(1..3));
        assert_eq!(rank_range(5, 9, 3), None);
        let members: Vec<(Bytes, f64)> = [("a", 1.0), ("b", 2.0), ("c", 3.0)]
            .into_iter()
            .map(|(member, score)| (Bytes::from(member), score))
            .collect();
        let query = RangeQuery {
            by: By::Score((1.0, true), (f64::INFINITY, false)),
            reverse: false,
            limit: Some((0, 1)),
            with_scores: false,
        };
        assert_eq!(range(members, &query), vec![(Bytes::from("b"), 2.0)]);
    }
}
