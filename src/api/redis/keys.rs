//! Where Redis data lives in Shoal's keyspace, and how a value is stored.
//!
//! Internal key of a Redis key: the `REDIS` namespace byte, the database (0-15), the
//! key's hash slot (CRC16 mod 16384 of the key or its `{hash tag}`, big-endian, as
//! Redis Cluster computes it), then the key, escaped so that nothing appended after it
//! (a collection's elements, later) can be mistaken for another key. A database's keys
//! are one span; within it, keys sort by slot, so ranges split along slots.
//!
//! Stored value: a type byte, the expiry time in Unix milliseconds (0: none), then the
//! payload. A collection's elements are stored one per key after its record (see
//! [`element_key`]); a stream's entries, consumer groups, pending entries and consumers
//! are elements too, under sub-prefixes of their own (see `commands::streams`).

use crate::storage::keys::{escape, namespace::REDIS, unescape};
use bytes::{BufMut, Bytes, BytesMut};

pub const SLOTS: u16 = 16384;
pub const DATABASES: u8 = 16;

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), Redis Cluster's key hash.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of a key: of the text between the first `{` and the next `}` when
/// that is not empty, else of the whole key.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&byte| byte == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|&byte| byte == b'}').map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// The internal key of `key` in database `db`.
pub fn internal_key(db: u8, key: &[u8]) -> Bytes {
    debug_assert!(db < DATABASES);
    let mut out = Vec::with_capacity(key.len() + 8);
    out.push(REDIS);
    out.push(db);
    out.extend_from_slice(&slot(key).to_be_bytes());
    out.extend_from_slice(&escape(key));
    out.into()
}

/// The span holding every key of database `db`: `[start, end)`.
pub fn database_span(db: u8) -> (Bytes, Bytes) {
    (Bytes::from(vec![REDIS, db]), Bytes::from(vec![REDIS, db + 1]))
}

/// The span of every Redis key in every database.
pub fn all_databases_span() -> (Bytes, Bytes) {
    (Bytes::from(vec![REDIS]), Bytes::from(vec![REDIS + 1]))
}

/// The Redis key of an internal key of database span, if it is a key's own record.
pub fn redis_key(internal: &[u8]) -> Option<Vec<u8>> {
    if internal.len() < 4 || internal[0] != REDIS {
        return None;
    }
    let (key, rest) = unescape(&internal[4..])?;
    rest.is_empty().then_some(key)
}

/// The span of internal keys of `db` in slots `[first, last]`.
pub fn slots_span(db: u8, first: u16, last: u16) -> (Bytes, Bytes) {
    let start = [&[REDIS, db][..], &first.to_be_bytes()].concat();
    let end = match last.checked_add(1) {
        Some(next) if next < SLOTS => [&[REDIS, db][..], &next.to_be_bytes()].concat(),
        _ => vec![REDIS, db + 1],
    };
    (start.into(), end.into())
}

/// The slot an internal Redis key (or span bound) falls in, for mapping ranges to slots.
pub fn slot_of_internal(internal: &[u8]) -> Option<u16> {
    match internal {
        [ns, _, high, low, ..] if *ns == REDIS => Some(u16::from_be_bytes([*high, *low])),
        _ => None,
    }
}

/// The key under which an element (hash field, set member) of the collection at
/// `record_key` is stored: after the record's key, which ends with the escape's
/// terminator, so no other key's elements or record can share it.
pub fn element_key(record_key: &[u8], field: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(record_key.len() + field.len() + 1);
    out.extend_from_slice(record_key);
    out.push(ELEMENT);
    out.extend_from_slice(field);
    out.into()
}

/// The span of every element of the collection at `record_key`.
pub fn elements_span(record_key: &[u8]) -> (Bytes, Bytes) {
    let start = [record_key, &[ELEMENT]].concat();
    let end = [record_key, &[ELEMENT + 1]].concat();
    (start.into(), end.into())
}

/// The field of an element key of the collection at `record_key`.
pub fn field_of<'a>(record_key: &[u8], element: &'a [u8]) -> Option<&'a [u8]> {
    element.strip_prefix(record_key)?.strip_prefix(&[ELEMENT])
}

const ELEMENT: u8 = b'e';

/// A list element's field: its position, ordered as the integers are (the sign bit
/// flipped, big-endian), so the elements span lists the list from head to tail.
pub fn position_field(position: i64) -> Bytes {
    Bytes::copy_from_slice(&((position as u64) ^ (1 << 63)).to_be_bytes())
}

/// The position a list element's field holds.
pub fn field_position(field: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = field.try_into().ok()?;
    Some((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// Size of a stream record's payload: length (8), last id (16), first id (16), largest
/// deleted id (16), entries ever added (8).
pub const STREAM_PAYLOAD_BYTES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    String,
    Hash,
    Set,
    List,
    ZSet,
    Stream,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::String => b's',
            Kind::Hash => b'h',
            Kind::Set => b'S',
            Kind::List => b'l',
            Kind::ZSet => b'z',
            Kind::Stream => b'x',
        }
    }

    fn from_tag(tag: u8) -> Option<Kind> {
        match tag {
            b's' => Some(Kind::String),
            b'h' => Some(Kind::Hash),
            b'S' => Some(Kind::Set),
            b'l' => Some(Kind::List),
            b'z' => Some(Kind::ZSet),
            b'x' => Some(Kind::Stream),
            _ => None,
        }
    }

    /// What TYPE answers.
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Hash => "hash",
            Kind::Set => "set",
            Kind::List => "list",
            Kind::ZSet => "zset",
            Kind::Stream => "stream",
        }
    }

    /// Whether values of this type are stored as elements beside the record.
    pub fn is_collection(self) -> bool {
        !matches!(self, Kind::String)
    }
}

/// A Redis value as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    /// Unix milliseconds after which the key no longer exists; 0: never.
    pub expires_at: i64,
    /// A string's bytes; a collection's element count (8 bytes, big-endian), and for a
    /// list its head position after it. A stream's is its metadata
    /// ([`STREAM_PAYLOAD_BYTES`]: length, last id, first id, largest deleted id,
    /// entries added), its length first, so `count` is its number of entries.
    pub payload: Bytes,
}

impl Record {
    pub fn string(payload: impl Into<Bytes>, expires_at: i64) -> Record {
        Record {
            kind: Kind::String,
            expires_at,
            payload: payload.into(),
        }
    }

    pub fn collection(kind: Kind, expires_at: i64, count: u64) -> Record {
        debug_assert!(kind.is_collection());
        let mut payload = count.to_be_bytes().to_vec();
        if kind == Kind::List {
            // The head's position: a list's elements sit at head..head + count.
            payload.extend_from_slice(&0i64.to_be_bytes());
        }
        if kind == Kind::Stream {
            // Every id 0-0, nothing added yet.
            payload.resize(STREAM_PAYLOAD_BYTES, 0);
        }
        Record {
            kind,
            expires_at,
            payload: payload.into(),
        }
    }

    /// A list's head position.
    pub fn head(&self) -> i64 {
        self.payload
            .get(8..16)
            .and_then(|bytes| bytes.try_into().ok())
            .map_or(0, i64::from_be_bytes)
    }

    pub fn set_head(&mut self, head: i64) {
        let mut payload = self.payload.to_vec();
        payload.resize(16, 0);
        payload[8..16].copy_from_slice(&head.to_be_bytes());
        self.payload = payload.into();
    }

    /// A collection's element count.
    pub fn count(&self) -> u64 {
        self.payload
            .get(..8)
            .and_then(|bytes| bytes.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    }

    pub fn set_count(&mut self, count: u64) {
        let mut payload = self.payload.to_vec();
        payload.resize(payload.len().max(8), 0);
        payload[..8].copy_from_slice(&count.to_be_bytes());
        self.payload = payload.into();
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.payload.len() + 9);
        out.put_u8(self.kind.tag());
        out.put_i64(self.expires_at);
        out.extend_from_slice(&self.payload);
        out.freeze()
    }

    /// `None` for bytes no version of Shoal wrote (a value is never trusted blindly).
    pub fn decode(stored: &Bytes) -> Option<Record> {
        if stored.len() < 9 {
            return None;
        }
        let kind = Kind::from_tag(stored[0])?;
        let expires_at = i64::from_be_bytes(stored[1..9].try_into().ok()?);
        let payload_length = match kind {
            Kind::String => stored.len() - 9,
            Kind::List => 16,
            Kind::Hash | Kind::Set | Kind::ZSet => 8,
            Kind::Stream => STREAM_PAYLOAD_BYTES,
        };
        if stored.len() != 9 + payload_length {
            return None;
        }
        Some(Record {
            kind,
            expires_at,
            payload: stored.slice(9..),
        })
    }

    /// Whether the key is gone at `now` (Unix milliseconds).
    pub fn expired(&self, now: i64) -> bool {
        self.expires_at != 0 && self.expires_at <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from Redis's CLUSTER KEYSLOT.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"{}x"), crc16(b"{}x") % SLOTS, "an empty tag hashes the whole key");
        assert_eq!(crc16(b"123456789"), 0x31c3);
    }

    #[test]
    fn keys_round_trip_and_stay_inside_their_database() {
        for key in [&b""[..], b"a", b"a\0b", b"\xff\xff"] {
            let internal = internal_key(3, key);
            assert_eq!(redis_key(&internal).as_deref(), Some(key));
            let (start, end) = database_span(3);
            assert!(internal >= start && internal < end);
            let (first, last) = slots_span(3, slot(key), slot(key));
            assert!(internal >= first && internal < last);
            assert_eq!(slot_of_internal(&internal), Some(slot(key)));
        }
        let record = Record::string(&b"value"[..], 1234);
        assert_eq!(Record::decode(&record.encode()), Some(record.clone()));
        assert!(record.expired(1234) && !record.expired(1233));
        assert_eq!(Record::decode(&Bytes::from_static(b"x")), None);
        let stream = Record::collection(Kind::Stream, 0, 0);
        assert_eq!(Record::decode(&stream.encode()), Some(stream.clone()));
        assert_eq!(stream.kind.name(), "stream");
        let mut set = Record::collection(Kind::Set, 0, 3);
        assert_eq!(set.count(), 3);
        set.set_count(4);
        assert_eq!(Record::decode(&set.encode()).map(|record| record.count()), Some(4));
        let record_key = internal_key(0, b"k");
        let element = element_key(&record_key, b"field");
        let (start, end) = elements_span(&record_key);
        assert!(element >= start && element < end && record_key < start);
        assert_eq!(field_of(&record_key, &element), Some(&b"field"[..]));
        assert_eq!(redis_key(&element), None, "an element is no key of its own");
        let positions = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for pair in positions.windows(2) {
            assert!(position_field(pair[0]) < position_field(pair[1]));
        }
        for position in positions {
            assert_eq!(field_position(&position_field(position)), Some(position));
        }
    }
}
