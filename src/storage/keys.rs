//! Byte encodings of engine keys. Every encoding here keeps the order that scans rely on.

/// Leading byte of an internal data key: which client namespace the key belongs to, so
/// one engine holds etcd keys, Redis keys and internal records without collisions.
pub mod namespace {
    /// Keys of the etcd v3 API.
    pub const ETCD: u8 = 0x01;
    /// Keys of the Redis protocol front-end (see `api::redis::keys`).
    pub const REDIS: u8 = 0x02;
    /// Redis pub/sub messages, under their channel (see `api::redis::pubsub`).
    pub const PUBSUB: u8 = 0x03;
}

/// The smallest key greater than every key starting with `prefix`, or `None` when no
/// such key exists (the prefix is empty or all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Order-preserving escape: `0x00` becomes `0x00 0xff` and the key ends with `0x00 0x01`,
/// so `escape(a) < escape(b)` exactly when `a < b`, and no escaped key is a prefix of
/// another. Anything appended after it (a revision) sorts within that key.
pub fn escape(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    escape_into(key, &mut out);
    out
}

fn escape_into(key: &[u8], out: &mut Vec<u8>) {
    for &byte in key {
        out.push(byte);
        if byte == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Inverse of [`escape`]: returns the key and the bytes after its terminator.
pub fn unescape(encoded: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut key = Vec::with_capacity(encoded.len());
    let mut index = 0;
    while index < encoded.len() {
        let byte = encoded[index];
        if byte != 0 {
            key.push(byte);
            index += 1;
            continue;
        }
        match encoded.get(index + 1) {
            Some(0xff) => {
                key.push(0);
                index += 2;
            }
            Some(0x01) => return Some((key, &encoded[index + 2..])),
            _ => return None,
        }
    }
    None
}

/// Key of one version in the history space: escaped key, then the revision.
pub fn history_key(internal_key: &[u8], revision: i64) -> Vec<u8> {
    debug_assert!(revision > 0, "revisions start at 1");
    let mut out = Vec::with_capacity(internal_key.len() + 10);
    escape_into(internal_key, &mut out);
    out.extend_from_slice(&(revision as u64).to_be_bytes());
    out
}

/// Splits a history-space key into internal key and revision.
pub fn parse_history_key(encoded: &[u8]) -> Option<(Vec<u8>, i64)> {
    let (key, rest) = unescape(encoded)?;
    let revision: [u8; 8] = rest.try_into().ok()?;
    Some((key, u64::from_be_bytes(revision) as i64))
}

/// Start of the history-space keys of every key >= `internal_key`.
pub fn history_seek(internal_key: &[u8]) -> Vec<u8> {
    escape(internal_key)
}

/// Key of the change log: main revision, then sub revision.
pub fn change_key(revision: i64, sub: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&(revision as u64).to_be_bytes());
    out.extend_from_slice(&(sub as u64).to_be_bytes());
    out
}

pub fn parse_change_key(encoded: &[u8]) -> Option<(i64, i64)> {
    let revision: [u8; 8] = encoded.get(..8)?.try_into().ok()?;
    let sub: [u8; 8] = encoded.get(8..16)?.try_into().ok()?;
    Some((u64::from_be_bytes(revision) as i64, u64::from_be_bytes(sub) as i64))
}

/// Key of one Raft log entry.
pub fn raft_log_key(range_id: u64, index: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&range_id.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out
}

pub fn parse_raft_log_key(encoded: &[u8]) -> Option<(u64, u64)> {
    let range_id: [u8; 8] = encoded.get(..8)?.try_into().ok()?;
    let index: [u8; 8] = encoded.get(8..16)?.try_into().ok()?;
    Some((u64::from_be_bytes(range_id), u64::from_be_bytes(index)))
}

/// Key of a per-range record (`kind` tells which).
pub fn range_record_key(range_id: u64, kind: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.extend_from_slice(&range_id.to_be_bytes());
    out.push(kind);
    out
}

/// Key of a lease record.
pub fn lease_key(range_id: u64, lease_id: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&range_id.to_be_bytes());
    out.extend_from_slice(&(lease_id as u64).to_be_bytes());
    out
}

/// Key recording that `internal_key` is attached to a lease. Not keyed by range: a
/// lease's keys may live in many ranges, and a split moves none of these records.
pub fn lease_key_entry(lease_id: i64, internal_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + internal_key.len());
    out.extend_from_slice(&(lease_id as u64).to_be_bytes());
    out.extend_from_slice(internal_key);
    out
}

/// The internal key a lease attachment record is about.
pub fn lease_entry_key(entry: &[u8]) -> &[u8] {
    entry.get(8..).unwrap_or_default()
}

/// The keys attached to one lease, in every range.
pub fn lease_keys(lease_id: i64) -> super::KeyRange {
    super::KeyRange::prefix(&(lease_id as u64).to_be_bytes())
}

/// Every per-range record of one range.
pub fn range_records(range_id: u64) -> super::KeyRange {
    super::KeyRange::prefix(&range_id.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_carries_over_0xff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn escape_preserves_order_and_round_trips() {
        let mut keys: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\x00".to_vec(),
            b"\x00\x00".to_vec(),
            b"\x00\x01".to_vec(),
            b"a".to_vec(),
            b"a\x00".to_vec(),
            b"a\x00b".to_vec(),
            b"a\x01".to_vec(),
            b"ab".to_vec(),
            b"b".to_vec(),
            b"\xff".to_vec(),
        ];
        keys.sort();
        for pair in keys.windows(2) {
            for (rev_a, rev_b) in [(1, 1), (9, 1), (1, 9)] {
                assert!(
                    history_key(&pair[0], rev_a) < history_key(&pair[1], rev_b),
                    "{:?}@{rev_a} vs {:?}@{rev_b}",
                    pair[0],
                    pair[1]
                );
            }
        }
        for key in &keys {
            assert_eq!(parse_history_key(&history_key(key, 42)), Some((key.clone(), 42)));
            assert!(history_seek(key) <= history_key(key, 1));
        }
    }

    #[test]
    fn revisions_sort_numerically() {
        assert!(history_key(b"k", 255) < history_key(b"k", 256));
        assert!(change_key(1, 9) < change_key(2, 0));
        assert_eq!(parse_change_key(&change_key(7, 3)), Some((7, 3)));
        assert_eq!(parse_raft_log_key(&raft_log_key(1, 300)), Some((1, 300)));
    }
}
