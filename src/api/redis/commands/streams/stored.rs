//! What a stream stores and where: ids, the record's metadata, groups, pending entries,
//! consumers and entries as encoded, the fields they live under, and reading and writing
//! them on a snapshot.

use super::super::{wrong_type, Env};
use crate::api::redis::keys::{Kind, Record, STREAM_PAYLOAD_BYTES};
use crate::api::redis::resp::Reply;
use crate::api::redis::snapshot::{ElementSpan, Need, Snapshot, Unread};
use bytes::Bytes;

// ---------------------------------------------------------------------------------
// Ids.

/// A stream entry id: milliseconds and a sequence number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const MIN: StreamId = StreamId { ms: 0, seq: 0 };
    pub const MAX: StreamId = StreamId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// The smallest id above this one.
    pub fn next(self) -> Option<StreamId> {
        if self.seq < u64::MAX {
            Some(StreamId {
                ms: self.ms,
                seq: self.seq + 1,
            })
        } else if self.ms < u64::MAX {
            Some(StreamId {
                ms: self.ms + 1,
                seq: 0,
            })
        } else {
            None
        }
    }

    /// The largest id below this one.
    pub fn prev(self) -> Option<StreamId> {
        if self.seq > 0 {
            Some(StreamId {
                ms: self.ms,
                seq: self.seq - 1,
            })
        } else if self.ms > 0 {
            Some(StreamId {
                ms: self.ms - 1,
                seq: u64::MAX,
            })
        } else {
            None
        }
    }

    /// Big-endian milliseconds then sequence: byte order is id order.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.ms.to_be_bytes());
        out[8..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<StreamId> {
        let bytes: &[u8; 16] = bytes.try_into().ok()?;
        Some(StreamId {
            ms: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            seq: u64::from_be_bytes(bytes[8..].try_into().ok()?),
        })
    }

    pub(super) fn reply(self) -> Reply {
        Reply::bulk(self.to_string())
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

pub(super) fn invalid_id() -> Reply {
    Reply::error("ERR Invalid stream ID specified as stream command argument")
}

/// Digits only, within u64.
pub(super) fn number(text: &str) -> Option<u64> {
    (!text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
        .then(|| text.parse::<u64>().ok())
        .flatten()
}

/// An id argument: `ms-seq`, or `ms` (then the sequence is `missing_seq`); also `-` and
/// `+` unless `strict`.
pub(super) fn parse_id(arg: &[u8], missing_seq: u64, strict: bool) -> Result<StreamId, Reply> {
    if arg.len() > 127 {
        return Err(invalid_id());
    }
    match arg {
        b"-" if !strict => return Ok(StreamId::MIN),
        b"+" if !strict => return Ok(StreamId::MAX),
        _ => {}
    }
    let text = std::str::from_utf8(arg).map_err(|_| invalid_id())?;
    let id = match text.split_once('-') {
        Some((ms, seq)) => number(ms).zip(number(seq)).map(|(ms, seq)| StreamId { ms, seq }),
        None => number(text).map(|ms| StreamId { ms, seq: missing_seq }),
    };
    id.ok_or_else(invalid_id)
}

pub(super) fn strict_id(arg: &[u8]) -> Result<StreamId, Reply> {
    parse_id(arg, 0, true)
}

/// The start of a range: an id, `-`, or `(id` (exclusive).
pub(super) fn interval_start(arg: &[u8]) -> Result<StreamId, Reply> {
    match arg.strip_prefix(b"(") {
        Some(rest) if !rest.is_empty() => parse_id(rest, 0, true)?
            .next()
            .ok_or_else(|| Reply::error("ERR invalid start ID for the interval")),
        _ => parse_id(arg, 0, false),
    }
}

/// The end of a range: an id (a missing sequence is the largest), `+`, or `(id`.
pub(super) fn interval_end(arg: &[u8]) -> Result<StreamId, Reply> {
    match arg.strip_prefix(b"(") {
        Some(rest) if !rest.is_empty() => parse_id(rest, u64::MAX, true)?
            .prev()
            .ok_or_else(|| Reply::error("ERR invalid end ID for the interval")),
        _ => parse_id(arg, u64::MAX, false),
    }
}

// ---------------------------------------------------------------------------------
// What is stored.

/// A stream's metadata, its record's payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Meta {
    pub(super) length: u64,
    pub(super) last: StreamId,
    pub(super) first: StreamId,
    pub(super) max_deleted: StreamId,
    pub(super) added: u64,
}

impl Meta {
    pub(super) fn of(record: &Record) -> Meta {
        let payload = &record.payload;
        let u64_at = |at: usize| {
            payload
                .get(at..at + 8)
                .and_then(|bytes| bytes.try_into().ok())
                .map_or(0, u64::from_be_bytes)
        };
        let id_at = |at: usize| {
            payload
                .get(at..at + 16)
                .and_then(StreamId::from_bytes)
                .unwrap_or_default()
        };
        Meta {
            length: u64_at(0),
            last: id_at(8),
            first: id_at(24),
            max_deleted: id_at(40),
            added: u64_at(56),
        }
    }

    pub(super) fn store(&self, record: &mut Record) {
        let mut payload = Vec::with_capacity(STREAM_PAYLOAD_BYTES);
        payload.extend_from_slice(&self.length.to_be_bytes());
        payload.extend_from_slice(&self.last.to_bytes());
        payload.extend_from_slice(&self.first.to_bytes());
        payload.extend_from_slice(&self.max_deleted.to_bytes());
        payload.extend_from_slice(&self.added.to_be_bytes());
        debug_assert_eq!(payload.len(), STREAM_PAYLOAD_BYTES);
        record.payload = payload.into();
    }

    /// Whether an entry between `start` and `end` may have been deleted (Redis's
    /// `streamRangeHasTombstones`).
    pub(super) fn has_tombstones(&self, start: StreamId, end: StreamId) -> bool {
        if self.length == 0 || self.max_deleted == StreamId::MIN || self.first > self.max_deleted {
            return false;
        }
        start <= self.max_deleted && self.max_deleted <= end
    }

    /// How many entries were added up to `id`, if that can be known (Redis's
    /// `streamEstimateDistanceFromFirstEverEntry`).
    pub(super) fn entries_up_to(&self, id: StreamId) -> Option<i64> {
        let added = self.added as i64;
        if self.added == 0 {
            return Some(0);
        }
        if self.length == 0 && id <= self.last {
            return Some(added);
        }
        if id == self.last {
            return Some(added);
        }
        if id > self.last {
            return None;
        }
        if self.max_deleted == StreamId::MIN || self.max_deleted < self.first {
            if id < self.first {
                return Some(added - self.length as i64);
            }
            if id == self.first {
                return Some(added - self.length as i64 + 1);
            }
        }
        None
    }

    /// Entries added after what `group` read, if that can be known.
    pub(super) fn lag(&self, group: &Group) -> Option<i64> {
        if self.added == 0 {
            return Some(0);
        }
        if let Some(read) = group.entries_read {
            if !self.has_tombstones(group.last, StreamId::MAX) {
                return Some(self.added as i64 - read);
            }
        }
        self.entries_up_to(group.last).map(|read| self.added as i64 - read)
    }
}

/// A consumer group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Group {
    pub(super) last: StreamId,
    /// Entries the group read, when known (Redis's `entries-read`).
    pub(super) entries_read: Option<i64>,
    /// No pending entry of the group has a higher id.
    pub(super) ceiling: StreamId,
}

impl Group {
    pub(super) fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(40);
        out.extend_from_slice(&self.last.to_bytes());
        out.extend_from_slice(&self.entries_read.unwrap_or(-1).to_be_bytes());
        out.extend_from_slice(&self.ceiling.to_bytes());
        out.into()
    }

    pub(super) fn decode(value: &[u8]) -> Option<Group> {
        if value.len() != 40 {
            return None;
        }
        let entries_read = i64::from_be_bytes(value[16..24].try_into().ok()?);
        Some(Group {
            last: StreamId::from_bytes(&value[..16])?,
            entries_read: (entries_read >= 0).then_some(entries_read),
            ceiling: StreamId::from_bytes(&value[24..])?,
        })
    }

    /// The group delivered `id` (Redis's bookkeeping of `entries-read`).
    pub(super) fn advance(&mut self, meta: &Meta, id: StreamId) {
        if id <= self.last {
            return;
        }
        if self.entries_read.is_some() && !meta.has_tombstones(id, StreamId::MAX) {
            self.entries_read = self.entries_read.map(|read| read + 1);
        } else if meta.added > 0 {
            self.entries_read = meta.entries_up_to(id);
        }
        self.last = id;
    }
}

/// A pending entry: delivered to `consumer`, not acknowledged yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Nack {
    pub(super) delivered_at: i64,
    pub(super) deliveries: u64,
    pub(super) consumer: Bytes,
}

impl Nack {
    pub(super) fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(16 + self.consumer.len());
        out.extend_from_slice(&self.delivered_at.to_be_bytes());
        out.extend_from_slice(&self.deliveries.to_be_bytes());
        out.extend_from_slice(&self.consumer);
        out.into()
    }

    pub(super) fn decode(value: &Bytes) -> Option<Nack> {
        if value.len() < 16 {
            return None;
        }
        Some(Nack {
            delivered_at: i64::from_be_bytes(value[..8].try_into().ok()?),
            deliveries: u64::from_be_bytes(value[8..16].try_into().ok()?),
            consumer: value.slice(16..),
        })
    }

    pub(super) fn idle(&self, now: i64) -> i64 {
        (now - self.delivered_at).max(0)
    }
}

/// A consumer: when it last read or claimed (seen), and last got something (active;
/// -1: never).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Consumer {
    pub(super) seen: i64,
    pub(super) active: i64,
}

impl Consumer {
    pub(super) fn new(now: i64) -> Consumer {
        Consumer { seen: now, active: -1 }
    }

    pub(super) fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.seen.to_be_bytes());
        out.extend_from_slice(&self.active.to_be_bytes());
        out.into()
    }

    pub(super) fn decode(value: &[u8]) -> Option<Consumer> {
        if value.len() != 16 {
            return None;
        }
        Some(Consumer {
            seen: i64::from_be_bytes(value[..8].try_into().ok()?),
            active: i64::from_be_bytes(value[8..].try_into().ok()?),
        })
    }
}

/// An entry's field-value pairs: their count, then each with its length (u32, big-endian).
pub(super) fn encode_entry(pairs: &[Bytes]) -> Bytes {
    let mut out = Vec::with_capacity(4 + pairs.iter().map(|item| item.len() + 4).sum::<usize>());
    out.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
    for item in pairs {
        out.extend_from_slice(&(item.len() as u32).to_be_bytes());
        out.extend_from_slice(item);
    }
    out.into()
}

pub(super) fn decode_entry(value: &Bytes) -> Option<Vec<Bytes>> {
    let length =
        |at: usize| -> Option<usize> { Some(u32::from_be_bytes(value.get(at..at + 4)?.try_into().ok()?) as usize) };
    let count = length(0)?;
    let mut items = Vec::with_capacity(count.min(1024));
    let mut at = 4;
    for _ in 0..count {
        let size = length(at)?;
        at += 4;
        if value.len() < at + size {
            return None;
        }
        items.push(value.slice(at..at + size));
        at += size;
    }
    (at == value.len()).then_some(items)
}

// ---------------------------------------------------------------------------------
// Where each part is stored (fields of the stream's elements).

pub(super) const ENTRY: u8 = b'i';
pub(super) const GROUP: u8 = b'g';
pub(super) const PENDING: u8 = b'p';
pub(super) const OWNED: u8 = b'o';
pub(super) const CONSUMER: u8 = b'c';

pub(super) fn entry_field(id: StreamId) -> Bytes {
    [&[ENTRY][..], &id.to_bytes()].concat().into()
}

/// Just after `id`'s entry: the exclusive end of a span that holds it.
pub(super) fn entry_after(id: StreamId) -> Bytes {
    [&[ENTRY][..], &id.to_bytes(), &[0]].concat().into()
}

pub(super) fn entries_start() -> Bytes {
    Bytes::from_static(&[ENTRY])
}

pub(super) fn entries_end() -> Bytes {
    Bytes::from_static(&[ENTRY + 1])
}

pub(super) fn entry_id(field: &[u8]) -> Option<StreamId> {
    StreamId::from_bytes(field.strip_prefix(&[ENTRY])?)
}

/// The id at the end of a pending (or owned) entry's field.
pub(super) fn trailing_id(field: &[u8]) -> Option<StreamId> {
    field
        .len()
        .checked_sub(16)
        .and_then(|at| StreamId::from_bytes(&field[at..]))
}

pub(super) fn group_field(name: &[u8]) -> Bytes {
    [&[GROUP][..], name].concat().into()
}

pub(super) fn groups_span() -> (Bytes, Bytes) {
    (Bytes::from_static(&[GROUP]), Bytes::from_static(&[GROUP + 1]))
}

pub(super) fn length_prefixed(out: &mut Vec<u8>, name: &[u8]) {
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name);
}

/// The prefix of a group's elements of one kind (`tag`).
pub(super) fn group_scope(tag: u8, group: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    length_prefixed(&mut out, group);
    out
}

/// The smallest key above every key that starts with `prefix`.
pub(super) fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end.into();
        }
    }
    // Every prefix here starts with a tag letter: never all 0xff.
    Bytes::from_static(&[u8::MAX])
}

pub(super) fn pending_field(group: &[u8], id: StreamId) -> Bytes {
    let mut out = group_scope(PENDING, group);
    out.extend_from_slice(&id.to_bytes());
    out.into()
}

pub(super) fn pending_span(group: &[u8]) -> (Bytes, Bytes) {
    let scope = group_scope(PENDING, group);
    let end = prefix_end(&scope);
    (scope.into(), end)
}

/// The pending entries of `group` from `start` to `end` (inclusive).
pub(super) fn pending_between(group: &[u8], start: StreamId, end: StreamId) -> (Bytes, Bytes) {
    let mut after = pending_field(group, end).to_vec();
    after.push(0);
    (pending_field(group, start), after.into())
}

pub(super) fn owned_scope(group: &[u8], consumer: &[u8]) -> Vec<u8> {
    let mut out = group_scope(OWNED, group);
    length_prefixed(&mut out, consumer);
    out
}

pub(super) fn owned_field(group: &[u8], consumer: &[u8], id: StreamId) -> Bytes {
    let mut out = owned_scope(group, consumer);
    out.extend_from_slice(&id.to_bytes());
    out.into()
}

/// The entries `consumer` owns from `start` to `end` (inclusive).
pub(super) fn owned_between(group: &[u8], consumer: &[u8], start: StreamId, end: StreamId) -> (Bytes, Bytes) {
    let mut after = owned_field(group, consumer, end).to_vec();
    after.push(0);
    (owned_field(group, consumer, start), after.into())
}

pub(super) fn consumer_field(group: &[u8], consumer: &[u8]) -> Bytes {
    let mut out = group_scope(CONSUMER, group);
    out.extend_from_slice(consumer);
    out.into()
}

pub(super) fn consumers_span(group: &[u8]) -> (Bytes, Bytes) {
    let scope = group_scope(CONSUMER, group);
    let end = prefix_end(&scope);
    (scope.into(), end)
}

pub(super) fn span(key: &Bytes, (start, end): (Bytes, Bytes), limit: usize, reverse: bool) -> Need {
    Need::Span(
        key.clone(),
        ElementSpan {
            start,
            end,
            limit,
            reverse,
        },
    )
}

// ---------------------------------------------------------------------------------
// Reading and writing a stream on a snapshot.

/// The stream at `key`: `None` when there is none, WRONGTYPE for another type.
pub(super) fn stream(snapshot: &Snapshot, key: &Bytes) -> Result<Option<Meta>, Reply> {
    match snapshot.get(key) {
        None => Ok(None),
        Some(record) if record.kind == Kind::Stream => Ok(Some(Meta::of(record))),
        Some(_) => Err(wrong_type()),
    }
}

pub(super) fn save(snapshot: &mut Snapshot, key: &Bytes, meta: &Meta) {
    snapshot.update_record(key, |record| meta.store(record));
}

/// The entries from `from` to `to` (inclusive), the first `limit` (0: all), or the last
/// ones when `reverse`.
pub(super) fn entries(
    snapshot: &mut Snapshot,
    key: &Bytes,
    from: StreamId,
    to: StreamId,
    limit: usize,
    reverse: bool,
) -> Result<Vec<(StreamId, Vec<Bytes>)>, Unread> {
    if from > to {
        return Ok(Vec::new());
    }
    let found = snapshot.elements_between(key, &entry_field(from), &entry_after(to), limit, reverse)?;
    Ok(found
        .into_iter()
        .filter_map(|(field, value)| Some((entry_id(&field)?, decode_entry(&value).unwrap_or_default())))
        .collect())
}

pub(super) fn entry(snapshot: &mut Snapshot, key: &Bytes, id: StreamId) -> Result<Option<Vec<Bytes>>, Unread> {
    Ok(snapshot
        .element(key, &entry_field(id))?
        .map(|value| decode_entry(&value).unwrap_or_default()))
}

pub(super) fn group(snapshot: &mut Snapshot, key: &Bytes, name: &[u8]) -> Result<Option<Group>, Unread> {
    Ok(snapshot
        .element(key, &group_field(name))?
        .and_then(|value| Group::decode(&value)))
}

pub(super) fn put_group(snapshot: &mut Snapshot, key: &Bytes, name: &[u8], group: &Group) {
    snapshot.put_element(key, group_field(name), group.encode());
}

pub(super) fn nack(snapshot: &mut Snapshot, key: &Bytes, group: &[u8], id: StreamId) -> Result<Option<Nack>, Unread> {
    Ok(snapshot
        .element(key, &pending_field(group, id))?
        .and_then(|value| Nack::decode(&value)))
}

/// Writes a pending entry in the group's list and under its owner; `previous` is the
/// owner it had, if any.
pub(super) fn put_nack(
    snapshot: &mut Snapshot,
    key: &Bytes,
    group: &[u8],
    id: StreamId,
    nack: &Nack,
    previous: Option<&Bytes>,
) {
    if let Some(previous) = previous.filter(|previous| **previous != nack.consumer) {
        snapshot.delete_element(key, owned_field(group, previous, id));
    }
    let value = nack.encode();
    snapshot.put_element(key, pending_field(group, id), value.clone());
    snapshot.put_element(key, owned_field(group, &nack.consumer, id), value);
}

pub(super) fn delete_nack(snapshot: &mut Snapshot, key: &Bytes, group: &[u8], id: StreamId, owner: &[u8]) {
    snapshot.delete_element(key, pending_field(group, id));
    snapshot.delete_element(key, owned_field(group, owner, id));
}

pub(super) fn consumer(
    snapshot: &mut Snapshot,
    key: &Bytes,
    group: &[u8],
    name: &[u8],
) -> Result<Option<Consumer>, Unread> {
    Ok(snapshot
        .element(key, &consumer_field(group, name))?
        .and_then(|value| Consumer::decode(&value)))
}

pub(super) fn put_consumer(snapshot: &mut Snapshot, key: &Bytes, group: &[u8], name: &[u8], consumer: &Consumer) {
    snapshot.put_element(key, consumer_field(group, name), consumer.encode());
}

pub(super) fn entry_reply(id: StreamId, fields: Option<Vec<Bytes>>) -> Reply {
    Reply::Array(vec![
        id.reply(),
        match fields {
            Some(fields) => Reply::Array(fields.into_iter().map(Reply::Bulk).collect()),
            None => Reply::NullArray,
        },
    ])
}

pub(super) fn entries_reply(found: Vec<(StreamId, Vec<Bytes>)>) -> Reply {
    Reply::Array(
        found
            .into_iter()
            .map(|(id, fields)| entry_reply(id, Some(fields)))
            .collect(),
    )
}

/// XREAD's and XREADGROUP's answer: per stream served, its name and entries (a map in
/// RESP3); a null array when none was.
pub(super) fn streams_reply(env: &Env, served: Vec<(Bytes, Reply)>) -> Reply {
    if served.is_empty() {
        return Reply::NullArray;
    }
    if env.resp >= 3 {
        return Reply::Map(
            served
                .into_iter()
                .map(|(name, entries)| (Reply::Bulk(name), entries))
                .collect(),
        );
    }
    Reply::Array(
        served
            .into_iter()
            .map(|(name, entries)| Reply::Array(vec![Reply::Bulk(name), entries]))
            .collect(),
    )
}

pub(super) fn nogroup(key: &[u8], group: &[u8]) -> Reply {
    Reply::error(format!(
        "NOGROUP No such key '{}' or consumer group '{}'",
        String::from_utf8_lossy(key),
        String::from_utf8_lossy(group)
    ))
}

/// The NOGROUP of XGROUP and XINFO CONSUMERS (the key exists).
pub(super) fn no_such_group(key: &[u8], group: &[u8]) -> Reply {
    Reply::error(format!(
        "NOGROUP No such consumer group '{}' for key name '{}'",
        String::from_utf8_lossy(group),
        String::from_utf8_lossy(key)
    ))
}

pub(super) fn subcommand_error(command: &str, sub: &[u8]) -> Reply {
    Reply::error(format!(
        "ERR unknown subcommand or wrong number of arguments for '{}'. Try {command} HELP.",
        String::from_utf8_lossy(sub)
    ))
}

pub(super) fn help(lines: &[&str]) -> Reply {
    Reply::Array(lines.iter().map(|line| Reply::Simple((*line).into())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ids_parse_and_order_as_redis() {
        assert_eq!(strict_id(b"5"), Ok(StreamId { ms: 5, seq: 0 }));
        assert_eq!(strict_id(b"5-3"), Ok(StreamId { ms: 5, seq: 3 }));
        assert_eq!(interval_end(b"5"), Ok(StreamId { ms: 5, seq: u64::MAX }));
        assert_eq!(interval_start(b"(5-3"), Ok(StreamId { ms: 5, seq: 4 }));
        assert_eq!(
            interval_end(b"(5"),
            Ok(StreamId {
                ms: 5,
                seq: u64::MAX - 1
            })
        );
        assert_eq!(interval_start(b"-"), Ok(StreamId::MIN));
        assert_eq!(interval_end(b"+"), Ok(StreamId::MAX));
        for bad in [&b"x"[..], b"-5", b"5-", b"1-2-3", b"", b"18446744073709551616", b"(-"] {
            assert!(interval_start(bad).is_err(), "{bad:?}");
        }
        assert!(strict_id(b"-").is_err() && strict_id(b"+").is_err());
        assert_eq!(
            interval_start(b"(18446744073709551615-18446744073709551615"),
            Err(Reply::error("ERR invalid start ID for the interval"))
        );
        assert_eq!(
            interval_end(b"(0-0"),
            Err(Reply::error("ERR invalid end ID for the interval"))
        );
        // Key order is id order.
        let ids = [
            StreamId::MIN,
            StreamId { ms: 0, seq: 1 },
            StreamId { ms: 1, seq: 0 },
            StreamId { ms: 1, seq: u64::MAX },
            StreamId { ms: 256, seq: 0 },
            StreamId::MAX,
        ];
        for pair in ids.windows(2) {
            assert!(entry_field(pair[0]) < entry_field(pair[1]));
            assert!(entry_after(pair[0]) <= entry_field(pair[1]));
            assert_eq!(pair[0].next().and_then(StreamId::prev), Some(pair[0]));
        }
        assert_eq!(StreamId::MAX.next(), None);
        assert_eq!(StreamId::MIN.prev(), None);
        assert!(entry_after(StreamId::MAX) < entries_end());
    }

    #[test]
    fn stored_parts_round_trip() {
        let pairs = vec![Bytes::from("f"), Bytes::new(), Bytes::from("v\0x")];
        assert_eq!(decode_entry(&encode_entry(&pairs)), Some(pairs));
        assert_eq!(decode_entry(&Bytes::from_static(b"\0\0\0\x01\0\0")), None);
        let group = Group {
            last: StreamId { ms: 3, seq: 1 },
            entries_read: None,
            ceiling: StreamId { ms: 2, seq: 0 },
        };
        assert_eq!(Group::decode(&group.encode()), Some(group));
        let pending = Nack {
            delivered_at: 17,
            deliveries: 2,
            consumer: Bytes::from("alice"),
        };
        assert_eq!(Nack::decode(&pending.encode()), Some(pending));
        let mut record = Record::collection(Kind::Stream, 0, 0);
        let meta = Meta {
            length: 2,
            last: StreamId { ms: 9, seq: 9 },
            first: StreamId { ms: 1, seq: 0 },
            max_deleted: StreamId { ms: 4, seq: 0 },
            added: 5,
        };
        meta.store(&mut record);
        assert_eq!(Meta::of(&record), meta);
        assert_eq!(record.count(), 2, "a stream's count is its length");
        assert_eq!(Record::decode(&record.encode()), Some(record));
    }

    #[test]
    fn groups_and_consumers_cannot_reach_into_each_other() {
        // "a" and "ab" as groups: length prefixes keep their spans apart.
        let (start, end) = pending_span(b"a");
        let other = pending_field(b"ab", StreamId::MIN);
        assert!(!(other >= start && other < end));
        let (start, end) = owned_between(b"g", b"c", StreamId::MIN, StreamId::MAX);
        let other = owned_field(b"g", b"cd", StreamId::MIN);
        assert!(!(other >= start && other < end));
        assert_eq!(
            trailing_id(&pending_field(b"g", StreamId { ms: 4, seq: 2 })),
            Some(StreamId { ms: 4, seq: 2 })
        );
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
    }

    #[test]
    fn lag_follows_redis() {
        let meta = Meta {
            length: 3,
            last: StreamId { ms: 3, seq: 0 },
            first: StreamId { ms: 1, seq: 0 },
            max_deleted: StreamId::MIN,
            added: 3,
        };
        let mut group = Group {
            last: StreamId::MIN,
            entries_read: None,
            ceiling: StreamId::MIN,
        };
        assert_eq!(meta.lag(&group), Some(3));
        group.advance(&meta, StreamId { ms: 1, seq: 0 });
        assert_eq!(group.entries_read, Some(1));
        group.advance(&meta, StreamId { ms: 2, seq: 0 });
        assert_eq!((group.entries_read, meta.lag(&group)), (Some(2), Some(1)));
        let fragmented = Meta {
            max_deleted: StreamId { ms: 2, seq: 5 },
            ..meta
        };
        let unknown = Group {
            last: StreamId { ms: 2, seq: 0 },
            entries_read: None,
            ceiling: StreamId::MIN,
        };
        assert_eq!(
            fragmented.lag(&unknown),
            None,
            "a deletion after the group's id hides the count"
        );
    }
}
