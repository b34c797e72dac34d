//! The keys a command (or a MULTI/EXEC of them) runs on, read at one revision, and the
//! changes it made on top of them: later commands of a transaction see earlier ones'
//! writes. A collection (hash, set) is its record (type, expiry, element count) plus
//! one stored key per element; every change to the elements rewrites the record, so a
//! compare on the record's mod revision covers the whole collection.

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
}

impl Need {
    pub fn key(&self) -> &Bytes {
        match self {
            Need::Record(key) | Need::Fields(key, _) | Need::All(key) | Need::Edges(key, ..) => key,
        }
    }
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
}

pub struct Snapshot {
    now: i64,
    read: HashMap<Bytes, Stored>,
    written: BTreeMap<Bytes, Option<Record>>,
    elements: HashMap<Bytes, Elements>,
}

impl Snapshot {
    pub fn new(now: i64, read: HashMap<Bytes, Stored>, elements: HashMap<Bytes, Elements>) -> Snapshot {
        Snapshot {
            now,
            read,
            written: BTreeMap::new(),
            elements,
        }
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
            elements.all
                || elements.edges
                || elements.cleared
                || elements.asked.contains(field)
                || elements.changes.contains_key(field),
            "a command read an element it did not ask for"
        );
        match elements.changes.get(field) {
            Some(changed) => changed.clone(),
            None if elements.cleared => None,
            None => elements.stored.get(field).cloned(),
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
    /// have been read with all its elements.
    pub fn copy_key(&mut self, source: &Bytes, target: &Bytes) {
        let record = self.get(source).cloned();
        let fields = self.fields(source);
        self.set(target, None);
        let Some(record) = record else {
            return;
        };
        if !record.kind.is_collection() {
            self.set(target, Some(record));
            return;
        }
        for (field, value) in fields {
            self.put_field(target, record.kind, field, value);
        }
        if let Some(Some(copied)) = self.written.get_mut(target) {
            copied.expires_at = record.expires_at;
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
            for (field, value) in &elements.changes {
                let element = keys::element_key(key, field);
                match value {
                    Some(value) => out.push(Change::Put(element, value.clone())),
                    None if !elements.cleared && elements.stored.contains_key(field) => {
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
