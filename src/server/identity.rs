//! Who this node is: its member id and its cluster's id, fixed the first time the node
//! starts and kept in the engine, so a restart with the same data directory is the same
//! member whatever the flags say.

use crate::config::{ClusterState, NodeConfig};
use crate::proto::shoal::state::{MemberInfo, NodeIdentity};
use crate::range::DATA_LAYOUT;
use crate::storage::{Durability, Engine, Space, StorageError, WriteBatch};
use prost::Message;

const IDENTITY_KEY: &[u8] = b"identity";
const INCARNATION_KEY: &[u8] = b"incarnation";
/// Present once this member learned it was removed from the cluster.
const REMOVED_KEY: &[u8] = b"removed";

/// Whether the engine holds an identity (a member that started here before).
pub fn exists(engine: &dyn Engine) -> Result<bool, StorageError> {
    Ok(engine.get(Space::NodeMeta, IDENTITY_KEY)?.is_some())
}

/// Records that this member was removed: it never serves from this data again.
pub fn mark_removed(engine: &dyn Engine) -> Result<(), StorageError> {
    let mut batch = WriteBatch::new();
    batch.put(Space::NodeMeta, REMOVED_KEY.to_vec(), Vec::new());
    engine.write(batch, Durability::Sync)
}

pub fn is_removed(engine: &dyn Engine) -> Result<bool, StorageError> {
    Ok(engine.get(Space::NodeMeta, REMOVED_KEY)?.is_some())
}

/// Stores the identity of a member joining a running cluster: the id the cluster gave
/// it and the cluster's members when it joined.
pub fn create_joined(
    engine: &dyn Engine,
    config: &NodeConfig,
    member_id: u64,
    cluster_id: u64,
    members: Vec<MemberInfo>,
) -> Result<NodeIdentity, StorageError> {
    let identity = NodeIdentity {
        member_id,
        cluster_id,
        name: config.name.clone(),
        cluster_token: config.cluster_token.clone(),
        initial_members: members,
        layout: DATA_LAYOUT,
    };
    let mut batch = WriteBatch::new();
    batch.put(Space::NodeMeta, IDENTITY_KEY.to_vec(), identity.encode_to_vec());
    engine.write(batch, Durability::Sync)?;
    Ok(identity)
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("data directory belongs to member {stored:?}, but this node is named {configured:?}")]
    NameMismatch { stored: String, configured: String },
    #[error(
        "--initial-cluster-state=existing needs this member's data directory, or the cluster's \
         members to join through (none answered)"
    )]
    JoinUnsupported,
    #[error(
        "this member ({member:x}) was removed from the cluster: the member has been permanently removed \
         from the cluster. To join again, remove its data directory and add it again \
         (`etcdctl member add NAME --peer-urls=URL`, or start it with --join)"
    )]
    Removed { member: u64 },
    #[error(
        "the data directory was written by a Shoal with another storage layout ({found}; this one \
         uses {expected}); remove it or start an older Shoal on it"
    )]
    Layout { found: u32, expected: u32 },
}

/// FNV-1a: a stable hash, so every member computes the same ids from the same inputs.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(std::iter::once(&0xffu8)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// A member's id, derived (like etcd's) from its peer URLs and the cluster token.
pub fn member_id(cluster_token: &str, peer_urls: &[String]) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let joined = urls.join(",");
    fnv1a(&[joined.as_bytes(), cluster_token.as_bytes()]).max(1)
}

pub fn cluster_id(cluster_token: &str, member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    fnv1a(&[&bytes, cluster_token.as_bytes()]).max(1)
}

/// Whether the identity was just created (a brand-new member of a new cluster).
pub struct Loaded {
    pub identity: NodeIdentity,
    pub created: bool,
}

/// `rebuilding`: the member's storage was set aside by `shoal ctl rebuild-member`, so a
/// missing identity is made again from the settings (ids follow from them), whatever
/// `--initial-cluster-state` says, and the member joins its cluster as it was.
pub fn load_or_create(engine: &dyn Engine, config: &NodeConfig, rebuilding: bool) -> Result<Loaded, IdentityError> {
    if let Some(bytes) = engine.get(Space::NodeMeta, IDENTITY_KEY)? {
        let identity = NodeIdentity::decode(bytes.as_slice()).map_err(|error| StorageError::Corrupt {
            space: Space::NodeMeta,
            detail: format!("identity: {error}"),
        })?;
        if identity.layout != DATA_LAYOUT {
            return Err(IdentityError::Layout {
                found: identity.layout,
                expected: DATA_LAYOUT,
            });
        }
        if identity.name != config.name {
            return Err(IdentityError::NameMismatch {
                stored: identity.name,
                configured: config.name.clone(),
            });
        }
        return Ok(Loaded {
            identity,
            created: false,
        });
    }
    if config.cluster_state == ClusterState::Existing && !rebuilding {
        return Err(IdentityError::JoinUnsupported);
    }
    let members: Vec<MemberInfo> = config
        .initial_cluster
        .iter()
        .map(|member| MemberInfo {
            id: member_id(&config.cluster_token, &member.peer_urls),
            name: member.name.clone(),
            peer_urls: member.peer_urls.clone(),
            client_urls: Vec::new(),
            redis_addr: String::new(),
            is_learner: false,
        })
        .collect();
    let ids: Vec<u64> = members.iter().map(|member| member.id).collect();
    let identity = create_joined(
        engine,
        config,
        member_id(&config.cluster_token, &config.advertise_peer_urls),
        cluster_id(&config.cluster_token, &ids),
        members,
    )?;
    Ok(Loaded {
        identity,
        created: true,
    })
}

/// Raises the stored incarnation to at least `floor` (a rebuilt member lost its count: a
/// floor from the clock is above any count an earlier run of it reached).
pub fn raise_incarnation(engine: &dyn Engine, floor: u64) -> Result<(), StorageError> {
    let stored = match engine.get(Space::NodeMeta, INCARNATION_KEY)? {
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice()).map_or(0, u64::from_be_bytes),
        None => 0,
    };
    if stored >= floor {
        return Ok(());
    }
    let mut batch = WriteBatch::new();
    batch.put(Space::NodeMeta, INCARNATION_KEY.to_vec(), floor.to_be_bytes().to_vec());
    engine.write(batch, Durability::Sync)
}

/// Raises the node's incarnation, persisted before anything is proposed, and returns
/// it: every start gets a number no earlier start had, so proposal ids (incarnation,
/// request) never repeat across restarts, even when a crash lost everything else.
pub fn next_incarnation(engine: &dyn Engine) -> Result<u64, StorageError> {
    let previous = match engine.get(Space::NodeMeta, INCARNATION_KEY)? {
        None => 0,
        Some(bytes) => {
            let raw: [u8; 8] = bytes.as_slice().try_into().map_err(|_| StorageError::Corrupt {
                space: Space::NodeMeta,
                detail: format!("incarnation is {} bytes, not 8", bytes.len()),
            })?;
            u64::from_be_bytes(raw)
        }
    };
    let next = previous.checked_add(1).ok_or_else(|| StorageError::Corrupt {
        space: Space::NodeMeta,
        detail: "incarnation at its maximum".to_string(),
    })?;
    let mut batch = WriteBatch::new();
    batch.put(Space::NodeMeta, INCARNATION_KEY.to_vec(), next.to_be_bytes().to_vec());
    engine.write(batch, Durability::Sync)?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_gets_a_higher_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let first = {
            let engine = crate::storage::FjallEngine::open(&path).unwrap();
            let a = next_incarnation(&engine).unwrap();
            let b = next_incarnation(&engine).unwrap();
            assert_eq!((a, b), (1, 2));
            b
        };
        let engine = crate::storage::FjallEngine::open(&path).unwrap();
        assert_eq!(next_incarnation(&engine).unwrap(), first + 1, "survives a reopen");
    }

    #[test]
    fn ids_do_not_depend_on_url_order_and_differ_per_token() {
        let urls = vec!["http://a:1".to_string(), "http://b:2".to_string()];
        let reversed: Vec<String> = urls.iter().rev().cloned().collect();
        assert_eq!(member_id("t", &urls), member_id("t", &reversed));
        assert_ne!(member_id("t", &urls), member_id("u", &urls));
        assert_eq!(cluster_id("t", &[1, 2]), cluster_id("t", &[2, 1]));
    }
}
