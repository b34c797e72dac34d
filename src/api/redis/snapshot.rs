//! The keys a command (or a MULTI/EXEC of them) runs on, read at one revision, and the
//! changes it made on top of them: later commands of a transaction see earlier ones'
//! writes. A collection (hash, set) is its record (type, expiry, element count) plus
//! one stored key per element; every change to the elements rewrites the record, so a
//! compare on the record's mod revision covers the whole collection.
//!
//! A command that learns only from what it read which elements it needs (a stream's
//! entries after a consumer group's last delivered id) asks for them with
//! [`Snapshot::element`] or [`Snapshot::elements_between`]: what was not read is noted
//! ([`Unread`]), the run is discarded, and `Data::run` runs it again on a snapshot that
//! has it too, read at one revision with the rest.

use super::data::{Change, Stored};
use super::keys::{self, Kind, Record};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What a command needs read of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// The record only.
    Record(Bytes),
    /// The record and these elements.
    Fields(Bytes, Vec<Bytes>),
    /// The record and every element.
    All(Bytes),
    /// The record, and a list's first `front` and last `back` elements (read after the
    /// record, whose head and count say where they are, at the record's revision).
    Edges(Bytes, usize, usize),
    /// The record, and the elements whose fields fall in a span, in order, up to a limit.
    Span(Bytes, ElementSpan),
}

/// Elements of one collection by field: `[start, end)`, the first `limit` of them (0: all)
/// in field order, or the last ones when `reverse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementSpan {
    pub start: Bytes,
    pub end: Bytes,
    pub limit: usize,
    pub reverse: bool,
}

impl Need {
    pub fn key(&self) -> &Bytes {
        match self {
            Need::Record(key) | Need::Fields(key, _) | Need::All(key) | Need::Edges(key, ..) | Need::Span(key, _) => {
                key
            }
        }
    }
}

/// A command asked for elements its needs did not name: its run is discarded and runs
/// again with them read (see [`Snapshot::take_unread`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Unread;

impl From<Unread> for super::resp::Reply {
    /// Never sent: a run that missed a read is run again.
    fn from(_: Unread) -> Self {
        super::resp::Reply::error("ERR shoal: a command read an element it had not asked for")
    }
}

/// Elements read beyond what a span asks (a command that needs more than it guessed
/// usually needs a few more).
const SPAN_SLACK: usize = 16;

/// Whether `field` falls in one of the `[start, end)` intervals.
fn inside(intervals: &[(Bytes, Bytes)], field: &[u8]) -> bool {
    intervals
        .iter()
        .any(|(start, end)| &start[..] <= field && field < &end[..])
}

/// The elements of one collection as read, and as changed.
#[derive(Default, Debug)]
pub struct Elements {
    /// Elements read that exist.
    pub stored: BTreeMap<Bytes, Bytes>,
    /// Fields asked for (present or not), unless `all`.
    pub asked: BTreeSet<Bytes>,
    pub all: bool,
    /// The first and last elements were read (a list's ends): positions next to them
    /// are known to be free.
    pub edges: bool,
    /// The stored elements are gone (the key was deleted, overwritten or recreated).
    cleared: bool,
    changes: BTreeMap<Bytes, Option<Bytes>>,
    /// Field intervals `[start, end)` whose stored elements were all read.
    pub covered: Vec<(Bytes, Bytes)>,
    /// Field intervals whose stored elements the commands deleted whole.
    dropped: Vec<(Bytes, Bytes)>,
}

impl Elements {
    /// Whether the stored element under `field` was read (or does not matter any more).
    fn knows(&self, field: &[u8]) -> bool {
        self.all
            || self.cleared
            || self.asked.contains(field)
            || self.changes.contains_key(field)
            || inside(&self.covered, field)
            || inside(&self.dropped, field)
    }

    /// The element under `field` now, if known to be there.
    fn current(&self, field: &[u8]) -> Option<Bytes> {
        match self.changes.get(field) {
            Some(changed) => changed.clone(),
            None if self.cleared || inside(&self.dropped, field) => None,
            None => self.stored.get(field).cloned(),
        }
    }

    /// The elements now whose fields fall in `[start, end)`, of those read and written.
    fn current_between(&self, start: &[u8], end: &[u8]) -> BTreeMap<Bytes, Bytes> {
        use std::ops::Bound::{Excluded, Included};
        let bounds = (Included(start), Excluded(end));
        let mut out = BTreeMap::new();
        if !self.cleared {
            for (field, value) in self.stored.range::<[u8], _>(bounds) {
                if !inside(&self.dropped, field) {
                    out.insert(field.clone(), value.clone());
                }
            }
        }
        for (field, value) in self.changes.range::<[u8], _>(bounds) {
            match value {
                Some(value) => out.insert(field.clone(), value.clone()),
                None => out.remove(field),
            };
        }
        out
    }

    /// The intervals known whole (read or dropped), merged where they touch, in order.
    fn coverage(&self) -> Vec<(Bytes, Bytes)> {
        let mut intervals: Vec<(Bytes, Bytes)> = self.covered.iter().chain(&self.dropped).cloned().collect();
        intervals.sort();
        let mut merged: Vec<(Bytes, Bytes)> = Vec::with_capacity(intervals.len());
        for (start, end) in intervals {
            match merged.last_mut() {
                Some(last) if start <= last.1 => {
                    if end > last.1 {
                        last.1 = end;
                    }
                }
                _ => merged.push((start, end)),
            }
        }
        merged
    }
}

pub struct Snapshot {
    now: i64,
    read: HashMap<Bytes, Stored>,
    written: BTreeMap<Bytes, Option<Record>>,
    elements: HashMap<Bytes, Elements>,
    /// Reads commands asked for that their needs did not name.
    unread: Vec<Need>,
}

impl Snapshot {
    pub fn new(now: i64, read: HashMap<Bytes, Stored>, elements: HashMap<Bytes, Elements>) -> Snapshot {
        Snapshot {
            now,
            read,
            written: BTreeMap::new(),
            elements,
            unread: Vec::new(),
        }
    }

    /// The reads commands missed: when there are any, their answers and changes are to
    /// be discarded and the run repeated with these read too.
    pub fn take_unread(&mut self) -> Vec<Need> {
        std::mem::take(&mut self.unread)
    }

    /// Unix milliseconds the commands run at (expiry is judged by it).
    pub fn now(&self) -> i64 {
        self.now
    }

    /// The key's value now: `None` when missing or expired. Only keys named to
    /// `Data::run` can be asked for.
    pub fn get(&self, key: &Bytes) -> Option<&Record> {
        debug_assert!(self.read.contains_key(key), "a command read a key it did not name");
        match self.written.get(key) {
            Some(written) => written.as_ref().filter(|record| !record.expired(self.now)),
            None => self.read.get(key).and_then(|stored| stored.record.as_ref()),
        }
    }

    /// Sets (or with `None`, deletes) the key. A collection's elements go with it.
    pub fn set(&mut self, key: &Bytes, record: Option<Record>) {
        debug_assert!(self.read.contains_key(key), "a command wrote a key it did not name");
        self.clear_elements(key);
        self.written.insert(key.clone(), record);
    }

    fn clear_elements(&mut self, key: &Bytes) {
        let elements = self.elements.entry(key.clone()).or_default();
        elements.cleared = true;
        elements.changes.clear();
    }

    /// An element of the collection at `key` (`None` if the key is no collection now).
    pub fn field(&self, key: &Bytes, field: &[u8]) -> Option<Bytes> {
        self.get(key).filter(|record| record.kind.is_collection())?;
        let elements = self.elements.get(key)?;
        debug_assert!(
            elements.edges || elements.knows(field),
            "a command read an element it did not ask for"
        );
        elements.current(field)
    }

    /// An element of the collection at `key` (`None` if the key is no collection now),
    /// or [`Unread`] if it was not read (it will be, in the next run).
    pub fn element(&mut self, key: &Bytes, field: &[u8]) -> Result<Option<Bytes>, Unread> {
        if self.get(key).filter(|record| record.kind.is_collection()).is_none() {
            return Ok(None);
        }
        match self.elements.get(key) {
            Some(elements) if elements.knows(field) => Ok(elements.current(field)),
            _ => {
                self.unread
                    .push(Need::Fields(key.clone(), vec![Bytes::copy_from_slice(field)]));
                Err(Unread)
            }
        }
    }

    /// The elements of the collection at `key` whose fields fall in `[start, end)`: the
    /// first `limit` (0: all) in field order, or the last ones when `reverse` (then in
    /// reverse order). [`Unread`] if they were not all read (the rest will be, in the
    /// next run).
    pub fn elements_between(
        &mut self,
        key: &Bytes,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Bytes, Bytes)>, Unread> {
        if start >= end || self.get(key).filter(|record| record.kind.is_collection()).is_none() {
            return Ok(Vec::new());
        }
        let elements = self.elements.entry(key.clone()).or_default();
        let complete = elements.all || elements.cleared;
        // The part of [start, end) known whole, from the end the walk starts at.
        let (known_start, known_end): (Bytes, Bytes) = if complete {
            (Bytes::copy_from_slice(start), Bytes::copy_from_slice(end))
        } else {
            let coverage = elements.coverage();
            let found = if reverse {
                coverage
                    .into_iter()
                    .find(|(low, high)| &low[..] < end && end <= &high[..])
                    .map(|(low, _)| (low.max(Bytes::copy_from_slice(start)), Bytes::copy_from_slice(end)))
            } else {
                coverage
                    .into_iter()
                    .find(|(low, high)| &low[..] <= start && start < &high[..])
                    .map(|(_, high)| (Bytes::copy_from_slice(start), high.min(Bytes::copy_from_slice(end))))
            };
            found.unwrap_or_else(|| {
                // Nothing known: an empty part at the walk's start.
                let at = Bytes::copy_from_slice(if reverse { end } else { start });
                (at.clone(), at)
            })
        };
        let mut items: Vec<(Bytes, Bytes)> = elements.current_between(&known_start, &known_end).into_iter().collect();
        if reverse {
            items.reverse();
        }
        let enough = limit > 0 && items.len() >= limit;
        let reaches = if reverse {
            &known_start[..] <= start
        } else {
            &known_end[..] >= end
        };
        if complete || enough || reaches {
            if limit > 0 {
                items.truncate(limit);
            }
            return Ok(items);
        }
        // Read on from where the known part ends; deletions may hide some of what is read,
        // and a command that needed more than was read usually needs more again (a batch
        // of trims): read at least as many as are known, so the rounds stay few.
        let more = elements.changes.values().filter(|value| value.is_none()).count() + elements.stored.len();
        let span = ElementSpan {
            start: if reverse {
                Bytes::copy_from_slice(start)
            } else {
                known_end
            },
            end: if reverse {
                known_start
            } else {
                Bytes::copy_from_slice(end)
            },
            limit: if limit == 0 {
                0
            } else {
                limit - items.len() + more + SPAN_SLACK
            },
            reverse,
        };
        self.unread.push(Need::Span(key.clone(), span));
        Err(Unread)
    }

    /// Sets an element of the collection at `key`, which exists now; the record is
    /// rewritten as it is (the caller keeps its counts), so a compare on it covers the
    /// element.
    pub fn put_element(&mut self, key: &Bytes, field: Bytes, value: Bytes) {
        self.touch(key);
        self.elements
            .entry(key.clone())
            .or_default()
            .changes
            .insert(field, Some(value));
    }

    /// Deletes an element of the collection at `key`, which exists now (read or not).
    pub fn delete_element(&mut self, key: &Bytes, field: Bytes) {
        self.touch(key);
        self.elements
            .entry(key.clone())
            .or_default()
            .changes
            .insert(field, None);
    }

    /// Deletes every element of the collection at `key` whose field falls in
    /// `[start, end)`, without reading them (one span delete).
    pub fn drop_elements(&mut self, key: &Bytes, start: Bytes, end: Bytes) {
        self.touch(key);
        let elements = self.elements.entry(key.clone()).or_default();
        elements.changes.retain(|field, _| !(start <= *field && *field < end));
        // One span delete where spans meet (trims drop from the front again and again).
        let (mut start, mut end) = (start, end);
        elements.dropped.retain(|(low, high)| {
            let meets = *low <= end && start <= *high;
            if meets {
                start = start.clone().min(low.clone());
                end = end.clone().max(high.clone());
            }
            !meets
        });
        elements.dropped.push((start, end));
    }

    /// Rewrites the record of `key` as it is now.
    fn touch(&mut self, key: &Bytes) {
        debug_assert!(self.get(key).is_some(), "an element written beside no record");
        if let Some(record) = self.get(key).cloned() {
            self.written.entry(key.clone()).or_insert(Some(record));
        }
    }

    /// Every element of the collection at `key` (which asked for them all).
    pub fn fields(&self, key: &Bytes) -> BTreeMap<Bytes, Bytes> {
        if self.get(key).filter(|record| record.kind.is_collection()).is_none() {
            return BTreeMap::new();
        }
        let Some(elements) = self.elements.get(key) else {
            return BTreeMap::new();
        };
        debug_assert!(
            elements.all || elements.cleared,
            "a command listed elements it did not ask for"
        );
        let mut out = if elements.cleared {
            BTreeMap::new()
        } else {
            elements.stored.clone()
        };
        out.retain(|field, _| !inside(&elements.dropped, field));
        for (field, value) in &elements.changes {
            match value {
                Some(value) => out.insert(field.clone(), value.clone()),
                None => out.remove(field),
            };
        }
        out
    }

    /// Sets an element of the collection of `kind` at `key`, creating the collection
    /// (over a missing or expired key) if needed; whether the element is new. The caller
    /// has checked the key holds no other type.
    pub fn put_field(&mut self, key: &Bytes, kind: Kind, field: Bytes, value: Bytes) -> bool {
        let mut record = match self.get(key) {
            Some(record) => record.clone(),
            None => {
                // Whatever was stored (an expired collection's elements) goes.
                self.clear_elements(key);
                Record::collection(kind, 0, 0)
            }
        };
        debug_assert_eq!(record.kind, kind);
        let is_new = self.field(key, &field).is_none();
        if is_new {
            record.set_count(record.count() + 1);
        }
        self.written.insert(key.clone(), Some(record));
        self.elements
            .entry(key.clone())
            .or_default()
            .changes
            .insert(field, Some(value));
        is_new
    }

    /// Removes an element; whether it was there. The collection goes with its last one.
    pub fn remove_field(&mut self, key: &Bytes, field: &[u8]) -> bool {
        if self.field(key, field).is_none() {
            return false;
        }
        let Some(mut record) = self.get(key).cloned() else {
            return false;
        };
        let count = record.count().saturating_sub(1);
        if count == 0 {
            self.set(key, None);
            return true;
        }
        record.set_count(count);
        self.written.insert(key.clone(), Some(record));
        self.elements
            .entry(key.clone())
            .or_default()
            .changes
            .insert(Bytes::copy_from_slice(field), None);
        true
    }

    /// Makes `target` a copy of `source` (value, elements and expiry); `source` must
    /// have been read with all its elements. The record is copied as it is: a list's
    /// head position and a stream's ids stay true of the copied elements.
    pub fn copy_key(&mut self, source: &Bytes, target: &Bytes) {
        let record = self.get(source).cloned();
        let fields = self.fields(source);
        self.set(target, None);
        let Some(record) = record else {
            return;
        };
        let is_collection = record.kind.is_collection();
        self.written.insert(target.clone(), Some(record));
        if is_collection {
            let elements = self.elements.entry(target.clone()).or_default();
            for (field, value) in fields {
                elements.changes.insert(field, Some(value));
            }
        }
    }

    /// Changes the record of `key` (which exists now) in place.
    pub fn update_record(&mut self, key: &Bytes, change: impl FnOnce(&mut Record)) {
        if let Some(mut record) = self.get(key).cloned() {
            change(&mut record);
            self.written.insert(key.clone(), Some(record));
        }
    }

    /// The mod revisions every write is conditional on: each key as read.
    pub fn expected(&self) -> Vec<(Bytes, i64)> {
        self.read
            .iter()
            .map(|(key, stored)| (key.clone(), stored.mod_revision))
            .collect()
    }

    /// The changes to apply. Deletes of keys nothing is stored under are left out.
    pub fn changes(&self) -> Vec<Change> {
        let mut out = Vec::new();
        for (key, elements) in &self.elements {
            let stored = self.read.get(key);
            let had_elements = stored.is_some_and(|stored| stored.raw_kind.is_some_and(Kind::is_collection));
            if elements.cleared && had_elements {
                let (start, end) = keys::elements_span(key);
                out.push(Change::DeleteSpan(start, end));
            }
            if !elements.cleared && had_elements {
                for (start, end) in &elements.dropped {
                    out.push(Change::DeleteSpan(
                        keys::element_key(key, start),
                        keys::element_key(key, end),
                    ));
                }
            }
            for (field, value) in &elements.changes {
                let element = keys::element_key(key, field);
                // A delete of an element never read is blind (it may be there).
                let maybe_stored = elements.stored.contains_key(&field[..])
                    || !(elements.all || elements.asked.contains(field) || inside(&elements.covered, field));
                match value {
                    Some(value) => out.push(Change::Put(element, value.clone())),
                    None if !elements.cleared && !inside(&elements.dropped, field) && maybe_stored => {
                        out.push(Change::Delete(element))
                    }
                    None => {}
                }
            }
        }
        for (key, record) in &self.written {
            match record {
                Some(record) => out.push(Change::Put(key.clone(), record.encode())),
                None if self.read.get(key).is_some_and(|stored| stored.mod_revision != 0) => {
                    out.push(Change::Delete(key.clone()))
                }
                None => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    /// A stream at "k" whose elements a, b and c were read by a span from "a" that
    /// stopped after c (so what follows c is unknown).
    fn read_up_to_c() -> (Snapshot, Bytes) {
        let key = bytes("k");
        let mut read = HashMap::new();
        read.insert(
            key.clone(),
            Stored {
                record: Some(Record::collection(Kind::Stream, 0, 0)),
                mod_revision: 5,
                raw_kind: Some(Kind::Stream),
            },
        );
        let mut elements = Elements::default();
        for field in ["a", "b", "c"] {
            elements.stored.insert(bytes(field), bytes(&field.to_uppercase()));
        }
        elements.covered.push((bytes("a"), bytes("c\0")));
        let mut all = HashMap::new();
        all.insert(key.clone(), elements);
        (Snapshot::new(0, read, all), key)
    }

    fn fields_of(found: Result<Vec<(Bytes, Bytes)>, Unread>) -> Vec<Bytes> {
        found
            .expect("read already")
            .into_iter()
            .map(|(field, _)| field)
            .collect()
    }

    #[test]
    fn spans_answer_from_what_was_read_and_ask_for_the_rest() {
        let (mut snapshot, key) = read_up_to_c();
        assert_eq!(
            fields_of(snapshot.elements_between(&key, b"a", b"z", 2, false)),
            [bytes("a"), bytes("b")]
        );
        assert_eq!(
            fields_of(snapshot.elements_between(&key, b"b", b"c", 0, false)),
            [bytes("b")]
        );
        assert!(snapshot.take_unread().is_empty());
        // More than was read: asked for from where the read part ends.
        assert_eq!(snapshot.elements_between(&key, b"a", b"z", 5, false), Err(Unread));
        let unread = snapshot.take_unread();
        let [Need::Span(asked, span)] = &unread[..] else {
            panic!("one span asked for: {unread:?}")
        };
        assert_eq!(
            (asked, &span.start, &span.end, span.reverse),
            (&key, &bytes("c\0"), &bytes("z"), false)
        );
        assert!(span.limit >= 2, "at least what is missing: {span:?}");
        // Backwards from an end that was not read: unknown too.
        assert_eq!(snapshot.elements_between(&key, b"a", b"z", 1, true), Err(Unread));
        assert_eq!(snapshot.element(&key, b"x"), Err(Unread));
        let unread = snapshot.take_unread();
        assert!(matches!(&unread[1], Need::Fields(_, fields) if fields == &[bytes("x")]));
        assert_eq!(snapshot.element(&key, b"b"), Ok(Some(bytes("B"))));
        assert_eq!(
            snapshot.element(&key, b"bb"),
            Ok(None),
            "inside the read span: known absent"
        );
    }

    #[test]
    fn writes_and_dropped_spans_show_in_later_reads_and_in_the_changes() {
        let (mut snapshot, key) = read_up_to_c();
        snapshot.put_element(&key, bytes("bb"), bytes("new"));
        snapshot.delete_element(&key, bytes("c"));
        assert_eq!(
            fields_of(snapshot.elements_between(&key, b"a", b"c\0", 0, false)),
            [bytes("a"), bytes("b"), bytes("bb")]
        );
        snapshot.drop_elements(&key, bytes("a"), bytes("b\0"));
        snapshot.drop_elements(&key, bytes("a"), bytes("a\0"));
        assert_eq!(
            fields_of(snapshot.elements_between(&key, b"a", b"c\0", 0, true)),
            [bytes("bb")]
        );
        assert_eq!(snapshot.element(&key, b"b"), Ok(None));
        let changes = snapshot.changes();
        let spans: Vec<(Bytes, Bytes)> = changes
            .iter()
            .filter_map(|change| match change {
                Change::DeleteSpan(start, end) => Some((start.clone(), end.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            spans,
            [(keys::element_key(&key, b"a"), keys::element_key(&key, b"b\0"))],
            "dropped spans that meet are one delete"
        );
        let deleted: Vec<&Bytes> = changes
            .iter()
            .filter_map(|change| match change {
                Change::Delete(deleted) => Some(deleted),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, [&keys::element_key(&key, b"c")]);
        assert!(changes
            .iter()
            .any(|change| matches!(change, Change::Put(put, _) if *put == keys::element_key(&key, b"bb"))));
        assert!(
            changes
                .iter()
                .any(|change| matches!(change, Change::Put(put, _) if *put == key)),
            "the record is rewritten, so a compare on it covers the elements"
        );
        // A delete of an element never read is written blind.
        snapshot.delete_element(&key, bytes("zz"));
        assert!(snapshot
            .changes()
            .iter()
            .any(|change| matches!(change, Change::Delete(deleted) if *deleted == keys::element_key(&key, b"zz"))));
    }
}
