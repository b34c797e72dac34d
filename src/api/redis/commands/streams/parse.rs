//! Stream commands' arguments, parsed as Redis parses them (its errors, in its order).

use super::super::{integer, syntax_error, upper};
use super::stored::{interval_end, interval_start, invalid_id, number, parse_id, strict_id, StreamId};
use crate::api::redis::resp::Reply;
use bytes::Bytes;

/// Entries an approximate trim (`~`) removes at most when no LIMIT is given (Redis's
/// 100 × stream-node-max-entries).
pub(super) const APPROXIMATE_TRIM_LIMIT: u64 = 10_000;
/// Pending entries XAUTOCLAIM looks at per entry it may claim (Redis's attempts factor).
pub(super) const AUTOCLAIM_ATTEMPTS_PER_COUNT: usize = 10;

// ---------------------------------------------------------------------------------
// Parsing.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Threshold {
    MaxLen(u64),
    MinId(StreamId),
}

/// A trimming strategy: remove entries beyond the threshold, at most `limit` (0: no
/// limit) of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Trim {
    pub(super) threshold: Threshold,
    pub(super) limit: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AddId {
    /// `*`: from the clock.
    Auto,
    /// `ms-*`: the sequence is chosen.
    Millis(u64),
    Exact(StreamId),
}

/// XADD's and XTRIM's options as Redis parses them; for XADD, the id and its position.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct AddOptions {
    pub(super) no_make: bool,
    pub(super) trim: Option<Trim>,
    pub(super) id: Option<(AddId, usize)>,
}

pub(super) fn add_id(arg: &[u8]) -> Result<AddId, Reply> {
    if arg == b"*" {
        return Ok(AddId::Auto);
    }
    if let Some(ms) = arg.strip_suffix(b"-*") {
        let ms = std::str::from_utf8(ms).ok().and_then(number).ok_or_else(invalid_id)?;
        return Ok(AddId::Millis(ms));
    }
    parse_id(arg, 0, true).map(AddId::Exact)
}

pub(super) fn parse_add_or_trim(args: &[Bytes], xadd: bool) -> Result<AddOptions, Reply> {
    let mut no_make = false;
    let mut threshold = None;
    let mut approximate = false;
    let mut limit: Option<i64> = None;
    let mut id = None;
    let mut at = 2;
    while at < args.len() {
        let more = args.len() - 1 - at;
        let arg = &args[at];
        if xadd && &arg[..] == b"*" {
            id = Some((AddId::Auto, at));
            break;
        }
        match upper(arg).as_str() {
            strategy @ ("MAXLEN" | "MINID") if more > 0 => {
                if threshold.is_some() {
                    return Err(Reply::error(
                        "ERR syntax error, MAXLEN and MINID options at the same time are not compatible",
                    ));
                }
                approximate = false;
                if more >= 2 && &args[at + 1][..] == b"~" {
                    approximate = true;
                    at += 1;
                } else if more >= 2 && &args[at + 1][..] == b"=" {
                    at += 1;
                }
                let value = &args[at + 1];
                threshold = Some(if strategy == "MAXLEN" {
                    let max = integer(value)?;
                    if max < 0 {
                        return Err(Reply::error("ERR The MAXLEN argument must be >= 0."));
                    }
                    Threshold::MaxLen(max as u64)
                } else {
                    Threshold::MinId(strict_id(value)?)
                });
                at += 2;
            }
            "LIMIT" if more > 0 => {
                let value = integer(&args[at + 1])?;
                if value < 0 {
                    return Err(Reply::error("ERR The LIMIT argument must be >= 0."));
                }
                limit = Some(value);
                at += 2;
            }
            "NOMKSTREAM" if xadd => {
                no_make = true;
                at += 1;
            }
            _ if xadd => {
                id = Some((add_id(arg)?, at));
                break;
            }
            _ => return Err(syntax_error()),
        }
    }
    if limit.is_some_and(|limit| limit > 0) && threshold.is_none() {
        return Err(Reply::error(
            "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy",
        ));
    }
    if !xadd && threshold.is_none() {
        return Err(Reply::error(
            "ERR syntax error, XTRIM must be called with a trimming strategy",
        ));
    }
    if limit.is_some() && !approximate {
        return Err(Reply::error(
            "ERR syntax error, LIMIT cannot be used without the special ~ option",
        ));
    }
    let limit = match limit {
        Some(limit) => limit as u64,
        None if approximate => APPROXIMATE_TRIM_LIMIT,
        None => 0,
    };
    Ok(AddOptions {
        no_make,
        trim: threshold.map(|threshold| Trim { threshold, limit }),
        id,
    })
}

/// XREAD's and XREADGROUP's options.
pub(super) struct ReadOptions<'a> {
    pub(super) group: Option<(&'a Bytes, &'a Bytes)>,
    /// 0: all.
    pub(super) count: usize,
    /// Milliseconds; 0 waits for ever.
    pub(super) block: Option<u64>,
    pub(super) no_ack: bool,
    pub(super) keys: &'a [Bytes],
    pub(super) ids: &'a [Bytes],
}

pub(super) fn parse_read<'a>(name: &str, args: &'a [Bytes]) -> Result<ReadOptions<'a>, Reply> {
    let with_group = name == "xreadgroup";
    let mut options = ReadOptions {
        group: None,
        count: 0,
        block: None,
        no_ack: false,
        keys: &[],
        ids: &[],
    };
    let mut streams_at = None;
    let mut at = 1;
    while at < args.len() {
        let more = args.len() - 1 - at;
        match upper(&args[at]).as_str() {
            "BLOCK" if more > 0 => {
                let timeout = integer(&args[at + 1])
                    .map_err(|_| Reply::error("ERR timeout is not an integer or out of range"))?;
                if timeout < 0 {
                    return Err(Reply::error("ERR timeout is negative"));
                }
                options.block = Some(timeout as u64);
                at += 2;
            }
            "COUNT" if more > 0 => {
                options.count = integer(&args[at + 1])?.max(0) as usize;
                at += 2;
            }
            "STREAMS" if more > 0 => {
                streams_at = Some(at + 1);
                break;
            }
            "GROUP" if with_group && more >= 2 => {
                options.group = Some((&args[at + 1], &args[at + 2]));
                at += 3;
            }
            "NOACK" if with_group => {
                options.no_ack = true;
                at += 1;
            }
            _ => return Err(syntax_error()),
        }
    }
    let Some(streams_at) = streams_at else {
        return Err(syntax_error());
    };
    let rest = &args[streams_at..];
    if !rest.len().is_multiple_of(2) {
        return Err(Reply::error(format!(
            "ERR Unbalanced {} list of streams: for each stream key an ID or '$' must be specified.",
            if with_group { "XREADGROUP" } else { "XREAD" }
        )));
    }
    if with_group && options.group.is_none() {
        return Err(Reply::error("ERR Missing GROUP option for XREADGROUP"));
    }
    let (keys, ids) = rest.split_at(rest.len() / 2);
    options.keys = keys;
    options.ids = ids;
    Ok(options)
}

/// XRANGE's `COUNT n`: `None` when absent.
pub(super) fn parse_count(options: &[Bytes]) -> Result<Option<usize>, Reply> {
    let mut count = None;
    let mut at = 0;
    while at < options.len() {
        if upper(&options[at]) == "COUNT" && at + 1 < options.len() {
            count = Some(integer(&options[at + 1])?.max(0) as usize);
            at += 2;
        } else {
            return Err(syntax_error());
        }
    }
    Ok(count)
}

/// XCLAIM's arguments after the key and group.
pub(super) struct ClaimOptions {
    pub(super) min_idle: i64,
    pub(super) ids: Vec<StreamId>,
    /// When the claimed entries count as delivered: TIME's Unix milliseconds, or IDLE's
    /// milliseconds before now (`true`).
    pub(super) delivered: Option<(i64, bool)>,
    pub(super) retry_count: Option<u64>,
    pub(super) force: bool,
    pub(super) just_id: bool,
    pub(super) last_id: Option<StreamId>,
}

pub(super) fn parse_claim(args: &[Bytes]) -> Result<ClaimOptions, Reply> {
    let min_idle = integer(&args[4])
        .map_err(|_| Reply::error("ERR Invalid min-idle-time argument for XCLAIM"))?
        .max(0);
    let mut at = 5;
    let mut ids = Vec::new();
    while at < args.len() {
        match strict_id(&args[at]) {
            Ok(id) => ids.push(id),
            Err(_) => break,
        }
        at += 1;
    }
    let mut options = ClaimOptions {
        min_idle,
        ids,
        delivered: None,
        retry_count: None,
        force: false,
        just_id: false,
        last_id: None,
    };
    while at < args.len() {
        let more = args.len() - 1 - at;
        let option = upper(&args[at]);
        let value = |error: &str| integer(&args[at + 1]).map_err(|_| Reply::error(error.to_string()));
        match option.as_str() {
            "FORCE" => options.force = true,
            "JUSTID" => options.just_id = true,
            "IDLE" if more > 0 => {
                options.delivered = Some((value("ERR Invalid IDLE option argument for XCLAIM")?, true));
                at += 1;
            }
            "TIME" if more > 0 => {
                options.delivered = Some((value("ERR Invalid TIME option argument for XCLAIM")?, false));
                at += 1;
            }
            "RETRYCOUNT" if more > 0 => {
                let count = value("ERR Invalid RETRYCOUNT option argument for XCLAIM")?;
                options.retry_count = (count >= 0).then_some(count as u64);
                at += 1;
            }
            "LASTID" if more > 0 => {
                options.last_id = Some(strict_id(&args[at + 1])?);
                at += 1;
            }
            _ => {
                return Err(Reply::error(format!(
                    "ERR Unrecognized XCLAIM option '{}'",
                    String::from_utf8_lossy(&args[at])
                )))
            }
        }
        at += 1;
    }
    Ok(options)
}

/// XAUTOCLAIM's arguments after the key and group.
pub(super) struct AutoClaimOptions {
    pub(super) min_idle: i64,
    pub(super) start: StreamId,
    pub(super) count: usize,
    pub(super) just_id: bool,
}

pub(super) fn parse_autoclaim(args: &[Bytes]) -> Result<AutoClaimOptions, Reply> {
    let min_idle = integer(&args[4])
        .map_err(|_| Reply::error("ERR Invalid min-idle-time argument for XAUTOCLAIM"))?
        .max(0);
    let start = interval_start(&args[5])?;
    let mut options = AutoClaimOptions {
        min_idle,
        start,
        count: 100,
        just_id: false,
    };
    let mut at = 6;
    while at < args.len() {
        match upper(&args[at]).as_str() {
            "COUNT" if at + 1 < args.len() => {
                let count = integer(&args[at + 1])
                    .ok()
                    .filter(|count| (1..=i64::MAX / AUTOCLAIM_ATTEMPTS_PER_COUNT as i64).contains(count))
                    .ok_or_else(|| Reply::error("ERR COUNT must be > 0"))?;
                options.count = count as usize;
                at += 2;
            }
            "JUSTID" => {
                options.just_id = true;
                at += 1;
            }
            _ => return Err(syntax_error()),
        }
    }
    Ok(options)
}

/// XPENDING's extended form: which pending entries to list.
pub(super) struct PendingQuery<'a> {
    pub(super) min_idle: Option<i64>,
    pub(super) start: StreamId,
    pub(super) end: StreamId,
    pub(super) count: usize,
    pub(super) consumer: Option<&'a Bytes>,
}

pub(super) fn parse_pending(args: &[Bytes]) -> Result<Option<PendingQuery<'_>>, Reply> {
    let length = args.len();
    if length != 3 && !(6..=9).contains(&length) {
        return Err(syntax_error());
    }
    if length == 3 {
        return Ok(None);
    }
    let mut at = 3;
    let mut min_idle = None;
    if upper(&args[3]) == "IDLE" {
        min_idle = Some(integer(&args[4])?);
        if length < 8 {
            return Err(syntax_error());
        }
        at = 5;
    }
    if length > at + 4 {
        return Err(syntax_error());
    }
    let count = integer(&args[at + 2])?.max(0) as usize;
    let start = interval_start(&args[at])?;
    let end = interval_end(&args[at + 1])?;
    Ok(Some(PendingQuery {
        min_idle,
        start,
        end,
        count,
        consumer: args.get(at + 3),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<Bytes> {
        text.split(' ')
            .map(|arg| Bytes::copy_from_slice(arg.as_bytes()))
            .collect()
    }

    #[test]
    fn add_and_trim_options_parse_as_redis() {
        assert_eq!(add_id(b"7-*"), Ok(AddId::Millis(7)));
        assert_eq!(add_id(b"*"), Ok(AddId::Auto));
        assert_eq!(add_id(b"x-*"), Err(invalid_id()));
        let parsed = parse_add_or_trim(&args("XADD s NOMKSTREAM MAXLEN ~ 5 LIMIT 2 * f v"), true).unwrap();
        assert!(parsed.no_make);
        assert_eq!(
            parsed.trim,
            Some(Trim {
                threshold: Threshold::MaxLen(5),
                limit: 2
            })
        );
        assert_eq!(parsed.id, Some((AddId::Auto, 8)));
        let parsed = parse_add_or_trim(&args("XADD s MINID = 3-1 5-0 f v"), true).unwrap();
        assert_eq!(
            parsed.trim,
            Some(Trim {
                threshold: Threshold::MinId(StreamId { ms: 3, seq: 1 }),
                limit: 0
            })
        );
        assert_eq!(
            parse_add_or_trim(&args("XADD s MAXLEN ~ 5 * f v"), true)
                .unwrap()
                .trim
                .map(|trim| trim.limit),
            Some(APPROXIMATE_TRIM_LIMIT)
        );
        let error = |text: &str, xadd: bool| parse_add_or_trim(&args(text), xadd).unwrap_err();
        assert_eq!(
            error("XADD s MAXLEN 2 LIMIT 1 * f v", true),
            Reply::error("ERR syntax error, LIMIT cannot be used without the special ~ option")
        );
        assert_eq!(
            error("XADD s MAXLEN -1 * f v", true),
            Reply::error("ERR The MAXLEN argument must be >= 0.")
        );
        assert_eq!(error("XTRIM s FOO", false), syntax_error());
        assert_eq!(
            error("XTRIM s LIMIT 0", false),
            Reply::error("ERR syntax error, XTRIM must be called with a trimming strategy")
        );
        assert_eq!(
            error("XADD s MAXLEN 1 MINID 2 * f v", true),
            Reply::error("ERR syntax error, MAXLEN and MINID options at the same time are not compatible")
        );
    }
}
