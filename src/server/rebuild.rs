//! A rebuilt member's fences (see `store::rebuild`): one write in each range it holds,
//! proposed through the range's leader after the rebuild began. The write answers here
//! only once it applied on this member, and so after every entry before it, among them
//! every entry this member may have acknowledged before its storage was set aside; from
//! then on the range's replica votes again. When every range is fenced the rebuild is
//! over.

use crate::range::{close_command, FIRST_DATA_RANGE_ID, META_RANGE_ID};
use crate::router::Router;
use crate::store::{StoreHandle, StoreInput};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const RETRY: Duration = Duration::from_millis(200);

/// The file `shoal ctl rebuild-member` leaves in the data folder: the next start makes
/// the member's identity again and begins the rebuild.
pub const REQUEST_FILE: &str = "rebuild-requested";

/// Fences every range this member holds, then ends the rebuild. `meta_fence` is a
/// command the meta range applies without effect (the member's published attributes).
pub async fn run(router: Arc<Router>, store: StoreHandle, me: u64, meta_fence: Vec<u8>) {
    let mut fenced = BTreeSet::new();
    loop {
        tokio::time::sleep(RETRY).await;
        if !fenced.contains(&META_RANGE_ID) {
            if router.write(META_RANGE_ID, meta_fence.clone()).await.is_ok() {
                fenced.insert(META_RANGE_ID);
                let _ = store
                    .send(StoreInput::Fenced {
                        range_id: META_RANGE_ID,
                    })
                    .await;
            }
            continue;
        }
        // Which data ranges this member holds, from the meta range's map as it applied
        // here (after its fence, so no older than the rebuild).
        let holds: Vec<u64> = match router.pinned(META_RANGE_ID).await.and_then(|pinned| {
            pinned
                .range_map()
                .map_err(|error| crate::router::RouteError::Range(crate::range::RangeError::Storage(error.to_string())))
        }) {
            Ok(map) => map
                .ranges
                .iter()
                .filter(|descriptor| descriptor.replicas.contains(&me))
                .map(|descriptor| descriptor.id)
                .collect(),
            Err(_) => continue,
        };
        let holds = if holds.is_empty() {
            vec![FIRST_DATA_RANGE_ID]
        } else {
            holds
        };
        let local = router.local_ranges();
        let unfenced: Vec<u64> = holds
            .iter()
            .copied()
            .filter(|range_id| !fenced.contains(range_id))
            .collect();
        for range_id in unfenced {
            // A range this member has not opened yet (it opens when it learns of it).
            if !local.contains(&range_id) {
                continue;
            }
            if router.write(range_id, close_command()).await.is_ok() {
                fenced.insert(range_id);
                let _ = store.send(StoreInput::Fenced { range_id }).await;
            }
        }
        if holds.iter().all(|range_id| fenced.contains(range_id)) {
            let _ = store.send(StoreInput::RebuildDone).await;
            metrics::gauge!("shoal_member_rebuilding").set(0.0);
            tracing::info!(
                ranges = fenced.len(),
                "every range is fenced: this member votes everywhere again"
            );
            return;
        }
    }
}
