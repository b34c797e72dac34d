//! The periodic corruption check (`--corrupt-check-time`, off by default as in etcd):
//! the first data range's leader hashes its key-value history (HashKV) at its newest
//! revision, asks every other member for HashKV at that revision, and raises CORRUPT
//! for each member whose hash is not the one most members have (members whose
//! compaction point differs are not compared). Writes are refused from then on, reads
//! keep working, and an operator disarms the alarm once the member is rebuilt.

use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::HashKvRequest;
use crate::proto::shoal::state::{AlarmKind, MemberInfo};
use crate::range::reader::KvHash;
use crate::range::{FIRST_DATA_RANGE_ID, META_RANGE_ID};
use crate::txn::Transactions;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Endpoint;

/// How long a member may take to hash its data.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the check every `interval` while this member leads the first data range.
pub async fn run(
    txns: Arc<Transactions>,
    auth: Arc<crate::auth::Auth>,
    me: u64,
    interval: Duration,
    client_tls: Option<Arc<rustls::ClientConfig>>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if txns.router().status(FIRST_DATA_RANGE_ID).leader() != me {
            continue;
        }
        if let Err(error) = check(&txns, &auth, me, client_tls.as_ref()).await {
            tracing::warn!(%error, "the corruption check could not run");
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error(transparent)]
    Txn(#[from] crate::txn::TxnError),
    #[error(transparent)]
    Route(#[from] crate::router::RouteError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("auth: {0}")]
    Auth(String),
}

/// One round: the members whose hash differs from most members' get CORRUPT.
async fn check(
    txns: &Transactions,
    auth: &crate::auth::Auth,
    me: u64,
    client_tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(), CheckError> {
    let local = txns.hash_kv(0).await?;
    // With auth on, HashKV needs the root role: members ask one another as root.
    let token = auth
        .member_token()
        .await
        .map_err(|error| CheckError::Auth(error.to_string()))?;
    let members = txns.router().pinned(META_RANGE_ID).await?.members()?;
    let mut asks = tokio::task::JoinSet::new();
    for member in members.into_iter().filter(|member| member.id != me) {
        let tls = client_tls.cloned();
        let token = token.clone();
        asks.spawn(async move { (member.id, ask(&member, local.revision, tls, token).await) });
    }
    let mut hashes = vec![(me, local)];
    while let Some(answer) = asks.join_next().await {
        match answer {
            Ok((member, Ok(hash))) => hashes.push((member, hash)),
            Ok((member, Err(error))) => {
                tracing::info!(member = format!("{member:x}"), %error, "corruption check: no hash from a member");
            }
            Err(_) => {}
        }
    }
    for member in outliers(&hashes) {
        tracing::error!(
            member = format!("{member:x}"),
            revision = local.revision,
            "corruption check: the member's data differs from most members'; raising CORRUPT"
        );
        txns.change_alarm(member, AlarmKind::Corrupt, true).await?;
    }
    metrics::counter!("shoal_corruption_checks_total").increment(1);
    Ok(())
}

/// The members whose hash differs from the one most members at the same compaction
/// point have; with no majority, those that differ from the first (the checker's).
fn outliers(hashes: &[(u64, KvHash)]) -> Vec<u64> {
    let Some((_, reference)) = hashes.first() else {
        return Vec::new();
    };
    let comparable: Vec<&(u64, KvHash)> = hashes
        .iter()
        .filter(|(_, hash)| hash.compact_revision == reference.compact_revision && hash.revision == reference.revision)
        .collect();
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for (_, hash) in &comparable {
        *counts.entry(hash.hash).or_default() += 1;
    }
    let majority = counts
        .iter()
        .find(|(_, count)| **count * 2 > comparable.len())
        .map_or(reference.hash, |(hash, _)| *hash);
    comparable
        .into_iter()
        .filter(|(_, hash)| hash.hash != majority)
        .map(|(member, _)| *member)
        .collect()
}

#[derive(Debug, thiserror::Error)]
enum AskError {
    #[error("it publishes no client URL")]
    NoUrl,
    #[error("{0}")]
    Endpoint(String),
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("no answer within {ASK_TIMEOUT:?}")]
    Timeout,
}

/// HashKV at `revision` from `member`, through its client URL.
async fn ask(
    member: &MemberInfo,
    revision: i64,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: Option<String>,
) -> Result<KvHash, AskError> {
    let url = member.client_urls.first().ok_or(AskError::NoUrl)?;
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|error| AskError::Endpoint(error.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(ASK_TIMEOUT);
    let channel = match (crate::tls::is_https(url), tls) {
        (true, Some(tls)) => crate::tls::TlsConnector::new(tls).channel(&endpoint),
        (true, None) => {
            return Err(AskError::Endpoint(format!(
                "{url} is https and this member has no client TLS"
            )))
        }
        (false, _) => endpoint.connect_lazy(),
    };
    let mut request = tonic::Request::new(HashKvRequest { revision });
    if let Some(token) = token.and_then(|token| token.parse().ok()) {
        request.metadata_mut().insert("token", token);
    }
    let answer = tokio::time::timeout(ASK_TIMEOUT, MaintenanceClient::new(channel).hash_kv(request))
        .await
        .map_err(|_| AskError::Timeout)??
        .into_inner();
    Ok(KvHash {
        hash: answer.hash,
        compact_revision: answer.compact_revision,
        revision: answer.hash_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(hash: u32, compact_revision: i64) -> KvHash {
        KvHash {
            hash,
            compact_revision,
            revision: 100,
        }
    }

    #[test]
    fn the_member_outside_the_majority_is_the_corrupt_one() {
        assert_eq!(outliers(&[(1, hash(7, 0)), (2, hash(7, 0)), (3, hash(9, 0))]), vec![3]);
        // The checker itself can be the one that differs.
        assert_eq!(outliers(&[(1, hash(9, 0)), (2, hash(7, 0)), (3, hash(7, 0))]), vec![1]);
        assert!(outliers(&[(1, hash(7, 0)), (2, hash(7, 0)), (3, hash(7, 0))]).is_empty());
        // Another compaction point is not compared.
        assert!(outliers(&[(1, hash(7, 5)), (2, hash(7, 5)), (3, hash(9, 6))]).is_empty());
        // No majority: whoever differs from the checker.
        assert_eq!(outliers(&[(1, hash(7, 0)), (2, hash(8, 0))]), vec![2]);
    }
}
