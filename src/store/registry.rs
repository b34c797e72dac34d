//! What the rest of the node sees of its ranges: each local range's descriptor and view
//! (status, change channels), and which data range holds a key. The store loop keeps it
//! current as ranges split; the router, the peer service and the watch hub read it.
//!
//! A descriptor is only ever replaced by one with a higher epoch, so a stale hint (a
//! refusal carrying what a range looked like) never undoes newer knowledge.

use super::RangeView;
use crate::proto::shoal::state::{PublishedMembers, RangeDescriptor};
use crate::range::replica::RangeStatus;
use crate::range::snapshot::descriptor_span;
use crate::range::{Frontier, META_RANGE_ID};
use crate::storage::{Engine, KeyRange, ReadView};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::watch;

#[derive(Clone)]
pub struct LocalRange {
    pub descriptor: RangeDescriptor,
    pub view: RangeView,
}

#[derive(Default)]
struct Inner {
    ranges: BTreeMap<u64, LocalRange>,
    /// Data ranges by start key.
    by_start: BTreeMap<Vec<u8>, u64>,
}

pub struct RangeRegistry {
    inner: RwLock<Inner>,
    frontier: watch::Sender<Frontier>,
    /// Set by the watch hub: the revision of a change it holds back because some data
    /// range has not applied that far (0: none). The store loop closes such ranges.
    wanted: AtomicI64,
    /// The cluster's membership as this node's meta replica has applied it.
    membership: watch::Sender<PublishedMembers>,
}

impl Default for RangeRegistry {
    fn default() -> Self {
        Self {
            inner: RwLock::default(),
            frontier: watch::channel(Frontier::default()).0,
            wanted: AtomicI64::new(0),
            membership: watch::channel(PublishedMembers::default()).0,
        }
    }
}

impl RangeRegistry {
    pub fn publish_frontier(&self, frontier: Frontier) {
        self.frontier.send_if_modified(|published| {
            let changed = *published != frontier;
            *published = frontier;
            changed
        });
    }

    pub fn frontier(&self) -> watch::Receiver<Frontier> {
        self.frontier.subscribe()
    }

    /// Publishes the membership the meta replica applied (a change only).
    pub fn publish_membership(&self, record: &PublishedMembers) {
        self.membership.send_if_modified(|published| {
            let changed = published != record;
            if changed {
                *published = record.clone();
            }
            changed
        });
    }

    pub fn membership(&self) -> watch::Receiver<PublishedMembers> {
        self.membership.subscribe()
    }

    /// Asks for every local data range to be made final up to `revision` (lagging
    /// ones are closed); the highest revision anyone asked for stands.
    pub fn want_frontier(&self, revision: i64) {
        self.wanted.fetch_max(revision, Ordering::AcqRel);
    }

    pub fn wanted_frontier(&self) -> i64 {
        self.wanted.load(Ordering::Acquire)
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A range this node now holds a replica of.
    pub fn insert(&self, descriptor: RangeDescriptor, view: RangeView) {
        let mut inner = self.write();
        if descriptor.id != META_RANGE_ID {
            inner.by_start.insert(descriptor.start_key.to_vec(), descriptor.id);
        }
        inner.ranges.insert(descriptor.id, LocalRange { descriptor, view });
    }

    /// A local range's descriptor changed (a split shrank it, a snapshot replaced it);
    /// ignored unless its epoch is newer.
    pub fn update(&self, descriptor: &RangeDescriptor) {
        let mut inner = self.write();
        let Some(local) = inner.ranges.get_mut(&descriptor.id) else {
            return;
        };
        if (descriptor.epoch, descriptor.conf_version) <= (local.descriptor.epoch, local.descriptor.conf_version) {
            return;
        }
        let old_start = local.descriptor.start_key.to_vec();
        local.descriptor = descriptor.clone();
        if descriptor.id != META_RANGE_ID {
            if inner.by_start.get(&old_start) == Some(&descriptor.id) {
                inner.by_start.remove(&old_start);
            }
            inner.by_start.insert(descriptor.start_key.to_vec(), descriptor.id);
        }
    }

    pub fn view(&self, range_id: u64) -> Option<RangeView> {
        self.read().ranges.get(&range_id).map(|local| local.view.clone())
    }

    pub fn status(&self, range_id: u64) -> Option<Arc<RangeStatus>> {
        self.read().ranges.get(&range_id).map(|local| local.view.status.clone())
    }

    pub fn descriptor(&self, range_id: u64) -> Option<RangeDescriptor> {
        self.read().ranges.get(&range_id).map(|local| local.descriptor.clone())
    }

    /// Ids of every local range, the meta range first.
    pub fn ids(&self) -> Vec<u64> {
        self.read().ranges.keys().copied().collect()
    }

    /// The live key and value bytes of every local data range (the space quota's
    /// measure), without copying the ranges out.
    pub fn live_bytes(&self) -> u64 {
        let inner = self.read();
        inner
            .by_start
            .values()
            .filter_map(|id| inner.ranges.get(id))
            .map(|range| range.view.status.live_bytes.load(std::sync::atomic::Ordering::Acquire))
            .sum()
    }

    /// Every local data range, in key order.
    pub fn data_ranges(&self) -> Vec<LocalRange> {
        let inner = self.read();
        inner
            .by_start
            .values()
            .filter_map(|id| inner.ranges.get(id).cloned())
            .collect()
    }

    /// The local data range whose span holds the internal key `key`, with its epoch.
    pub fn route(&self, key: &[u8]) -> Option<(u64, u64)> {
        let inner = self.read();
        let (_, id) = inner.by_start.range(..=key.to_vec()).next_back()?;
        let local = inner.ranges.get(id)?;
        descriptor_span(&local.descriptor)
            .contains(key)
            .then_some((*id, local.descriptor.epoch))
    }

    /// The local data ranges a span of keys touches, in key order, with their epochs.
    pub fn overlapping(&self, keys: &KeyRange) -> Vec<(u64, u64)> {
        let inner = self.read();
        let first = inner
            .by_start
            .range(..=keys.start.clone())
            .next_back()
            .map(|(start, _)| start.clone())
            .unwrap_or_default();
        inner
            .by_start
            .range(first..)
            .take_while(|(start, _)| keys.end.as_ref().is_none_or(|end| start.as_slice() < end.as_slice()))
            .filter_map(|(_, id)| inner.ranges.get(id))
            .filter(|local| {
                let span = descriptor_span(&local.descriptor);
                span.end.as_ref().is_none_or(|end| keys.start < *end)
            })
            .map(|local| (local.descriptor.id, local.descriptor.epoch))
            .collect()
    }

    /// A view of `engine` in which no local data range is half replaced by a snapshot
    /// install (see [`RangeStatus::whole_view`]), or `None` while one is.
    pub fn whole_view(&self, engine: &dyn Engine) -> Option<Arc<dyn ReadView>> {
        let statuses: Vec<Arc<RangeStatus>> = self
            .read()
            .ranges
            .values()
            .map(|local| local.view.status.clone())
            .collect();
        let before: Vec<u64> = statuses.iter().map(|status| status.install_epoch()).collect();
        if before.iter().any(|epoch| !epoch.is_multiple_of(2)) {
            return None;
        }
        let view = engine.snapshot();
        let after = statuses.iter().map(|status| status.install_epoch());
        before.iter().copied().eq(after).then_some(view)
    }
}

/// The watch hub reads through the registry: whole views of every local range, and
/// lagging ranges asked to close for it.
pub struct HubViews {
    pub registry: Arc<RangeRegistry>,
    pub engine: Arc<dyn Engine>,
}

impl crate::range::watch::HubSource for HubViews {
    fn whole_view(&self) -> Option<Arc<dyn ReadView>> {
        self.registry.whole_view(self.engine.as_ref())
    }

    fn want(&self, revision: i64) {
        self.registry.want_frontier(revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::replica::RangeStatus;

    fn view() -> RangeView {
        RangeView {
            status: Arc::new(RangeStatus::default()),
            compacted: watch::channel(0).1,
            leader_changes: watch::channel(0).1,
            revision_changes: watch::channel(0).1,
        }
    }

    fn descriptor(id: u64, start: &[u8], end: &[u8], epoch: u64) -> RangeDescriptor {
        RangeDescriptor {
            id,
            start_key: start.to_vec().into(),
            end_key: end.to_vec().into(),
            epoch,
            ..Default::default()
        }
    }

    #[test]
    fn keys_route_to_the_range_whose_span_holds_them_through_a_split() {
        let registry = RangeRegistry::default();
        registry.insert(descriptor(META_RANGE_ID, b"\x00", b"\x01", 1), view());
        registry.insert(descriptor(2, b"\x01", b"", 1), view());
        assert_eq!(registry.route(b"\x01a"), Some((2, 1)));
        assert_eq!(registry.route(b"\x00"), None, "the meta range holds no keys");
        // Range 2 splits at "m": the old descriptor stays unless the epoch is newer.
        registry.update(&descriptor(2, b"\x01", b"\x01m", 1));
        assert_eq!(registry.route(b"\x01z"), Some((2, 1)));
        registry.update(&descriptor(2, b"\x01", b"\x01m", 2));
        registry.insert(descriptor(3, b"\x01m", b"", 2), view());
        assert_eq!(registry.route(b"\x01a"), Some((2, 2)));
        assert_eq!(registry.route(b"\x01m"), Some((3, 2)));
        assert_eq!(registry.route(b"\x01zzz"), Some((3, 2)));
        let all = KeyRange::new(b"\x01".to_vec(), Some(b"\x02".to_vec()));
        assert_eq!(registry.overlapping(&all), vec![(2, 2), (3, 2)]);
        let low = KeyRange::new(b"\x01a".to_vec(), Some(b"\x01m".to_vec()));
        assert_eq!(registry.overlapping(&low), vec![(2, 2)]);
        let high = KeyRange::new(b"\x01m".to_vec(), Some(b"\x01n".to_vec()));
        assert_eq!(registry.overlapping(&high), vec![(3, 2)]);
        assert_eq!(registry.data_ranges().len(), 2);
    }
}
