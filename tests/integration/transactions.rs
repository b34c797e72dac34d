//! Writes across ranges: transactions and deletes whose keys live in several ranges
//! run a two-phase commit, atomic and at one revision; concurrent transfers between
//! accounts in different ranges never show a wrong total; a coordinator that dies
//! between prepare and commit, or right after its commit point, leaves nothing half
//! done once its locks are resolved.

use crate::support::{bounded, bytes, get, put, Cluster};
use shoal::proto::etcdserverpb::kv_client::KvClient;
use shoal::proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use std::time::Duration;
use tonic::transport::Channel;

/// Waits until member 0 reports at least `count` data ranges, each with a leader.
async fn wait_for_ranges(cluster: &Cluster, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let port = cluster.nodes[0].metrics_port;
        if let Some((200, body)) = shoal::http_probe::get(port, "/v1/ranges", Duration::from_secs(5)).await {
            let ranges: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
            if ranges.len() >= count && ranges.iter().all(|range| range["leader"] != "0") {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {count} ranges after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn value_is(key: &str, value: &str) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Value as i32,
        key: bytes(key),
        target_union: Some(compare::TargetUnion::Value(bytes(value))),
        ..Default::default()
    }
}

fn mod_revision_is(key: &str, revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: bytes(key),
        target_union: Some(compare::TargetUnion::ModRevision(revision)),
        ..Default::default()
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: bytes(key),
            value: bytes(value),
            ..Default::default()
        })),
    }
}

fn get_op(key: &str, range_end: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: bytes(key),
            range_end: bytes(range_end),
            ..Default::default()
        })),
    }
}

/// Every account's balance and the read's revision, as one snapshot.
async fn balances(client: &mut KvClient<Channel>, revision: i64) -> (Vec<(String, i64, i64)>, i64) {
    balances_read(client, revision, false).await
}

async fn balances_read(
    client: &mut KvClient<Channel>,
    revision: i64,
    serializable: bool,
) -> (Vec<(String, i64, i64)>, i64) {
    let response = client
        .range(RangeRequest {
            key: bytes("acct/"),
            range_end: bytes("acct0"),
            revision,
            serializable,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("reading balances: {status}"))
        .into_inner();
    let accounts = response
        .kvs
        .iter()
        .map(|kv| {
            let balance = String::from_utf8_lossy(&kv.value).parse::<i64>().unwrap_or(i64::MIN);
            (String::from_utf8_lossy(&kv.key).into_owned(), balance, kv.mod_revision)
        })
        .collect();
    (accounts, response.header.map_or(0, |header| header.revision))
}

#[tokio::test]
async fn transactions_across_ranges_are_atomic_at_one_revision() {
    bounded(async {
        let cluster = Cluster::start_with(3, &["--range-max-keys", "20"]).await;
        let mut client = cluster.kv(0).await;
        for i in 0..100 {
            put(&mut client, &format!("acct/{i:03}"), "100").await;
        }
        wait_for_ranges(&cluster, 4).await;

        let swapped = client
            .txn(TxnRequest {
                compare: vec![value_is("acct/000", "100"), value_is("acct/099", "100")],
                success: vec![
                    put_op("acct/000", "50"),
                    put_op("acct/099", "150"),
                    get_op("acct/", "acct0"),
                ],
                failure: vec![get_op("acct/000", "")],
            })
            .await
            .unwrap()
            .into_inner();
        assert!(swapped.succeeded);
        let revision = swapped.header.unwrap().revision;
        let Some(response_op::Response::ResponseRange(all)) = &swapped.responses[2].response else {
            panic!("a range response")
        };
        assert_eq!(all.count, 100, "a read inside the txn sees every range");
        let first = all.kvs.first().unwrap();
        assert_eq!((first.value.as_ref(), first.mod_revision), (&b"50"[..], revision));
        let last = all.kvs.last().unwrap();
        assert_eq!((last.value.as_ref(), last.mod_revision), (&b"150"[..], revision));

        // A compare that fails in one range runs the failure branch everywhere.
        let refused = client
            .txn(TxnRequest {
                compare: vec![value_is("acct/000", "50"), value_is("acct/099", "100")],
                success: vec![put_op("acct/000", "0"), put_op("acct/099", "0")],
                failure: vec![get_op("acct/000", "")],
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!refused.succeeded);
        let mut other = cluster.kv(2).await;
        assert_eq!(get(&mut other, "acct/000", false).await.as_deref(), Some("50"));
        assert_eq!(get(&mut other, "acct/099", false).await.as_deref(), Some("150"));

        // A prefix delete across every range: one revision, every previous value.
        let deleted = other
            .delete_range(DeleteRangeRequest {
                key: bytes("acct/"),
                range_end: bytes("acct0"),
                prev_kv: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((deleted.deleted, deleted.prev_kvs.len()), (100, 100));
        let keys: Vec<&[u8]> = deleted.prev_kvs.iter().map(|kv| kv.key.as_ref()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        let (left, _) = balances(&mut client, 0).await;
        assert!(left.is_empty(), "{left:?}");
        // Every delete happened at the delete's revision: the keys were there just before.
        let delete_revision = deleted.header.unwrap().revision;
        let (before, _) = balances(&mut client, delete_revision - 1).await;
        assert_eq!(before.len(), 100);
    })
    .await;
}

/// Transfers between accounts in different ranges, from several clients at once,
/// each a compare-and-swap on both balances; every read of all accounts (now, or at a
/// past revision) sums to the same total.
#[tokio::test]
async fn bank_transfers_across_ranges_keep_the_total() {
    bounded(async {
        let cluster = Cluster::start_with(3, &["--range-max-keys", "10"]).await;
        const ACCOUNTS: usize = 40;
        const TOTAL: i64 = ACCOUNTS as i64 * 100;
        let mut client = cluster.kv(0).await;
        for i in 0..ACCOUNTS {
            put(&mut client, &format!("acct/{i:03}"), "100").await;
        }
        wait_for_ranges(&cluster, 3).await;
        let (_, start) = balances(&mut client, 0).await;

        let mut transfers = tokio::task::JoinSet::new();
        for writer in 0..4u64 {
            let mut client = cluster.kv(writer as usize % 3).await;
            transfers.spawn(async move {
                let mut done = 0;
                let mut attempt = writer;
                while done < 25 {
                    attempt += 7;
                    let from = (attempt * 13) as usize % ACCOUNTS;
                    let to = (from + ACCOUNTS / 2 + attempt as usize % 5) % ACCOUNTS;
                    let (accounts, _) = balances(&mut client, 0).await;
                    let (from_key, from_balance, from_revision) = accounts[from].clone();
                    let (to_key, to_balance, to_revision) = accounts[to].clone();
                    let amount = (attempt % 7) as i64 + 1;
                    let outcome = client
                        .txn(TxnRequest {
                            compare: vec![
                                mod_revision_is(&from_key, from_revision),
                                mod_revision_is(&to_key, to_revision),
                            ],
                            success: vec![
                                put_op(&from_key, &(from_balance - amount).to_string()),
                                put_op(&to_key, &(to_balance + amount).to_string()),
                            ],
                            failure: vec![],
                        })
                        .await;
                    if let Ok(response) = outcome {
                        if response.into_inner().succeeded {
                            done += 1;
                        }
                    }
                }
            });
        }
        let mut reader = cluster.kv(1).await;
        let mut local_reader = cluster.kv(2).await;
        let mut checked = 0;
        while !transfers.is_empty() {
            let (accounts, revision) = balances(&mut reader, 0).await;
            assert_eq!(accounts.len(), ACCOUNTS);
            let sum: i64 = accounts.iter().map(|(_, balance, _)| balance).sum();
            assert_eq!(sum, TOTAL, "at revision {revision}: {accounts:?}");
            // And at a revision in the past.
            if revision > start {
                let past = start + (revision - start) / 2;
                let (accounts, _) = balances(&mut reader, past).await;
                let sum: i64 = accounts.iter().map(|(_, balance, _)| balance).sum();
                assert_eq!(sum, TOTAL, "at past revision {past}: {accounts:?}");
            }
            // Serializable, on a member that may lag: one snapshot all the same.
            let (accounts, revision) = balances_read(&mut local_reader, 0, true).await;
            assert_eq!(accounts.len(), ACCOUNTS);
            let sum: i64 = accounts.iter().map(|(_, balance, _)| balance).sum();
            assert_eq!(sum, TOTAL, "serializable at revision {revision}: {accounts:?}");
            checked += 1;
            while let Some(joined) = transfers.try_join_next() {
                joined.expect("a transfer task panicked");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(checked > 3, "the totals were checked while transfers ran");
        let (accounts, _) = balances(&mut reader, 0).await;
        assert_eq!(accounts.iter().map(|(_, balance, _)| balance).sum::<i64>(), TOTAL);
        assert!(
            accounts.iter().any(|(_, balance, _)| *balance != 100),
            "transfers happened"
        );
    })
    .await;
}

/// A coordinator that dies after preparing leaves locks that block the keys until
/// they are resolved (rolled back: its primary has no commit record); one that dies
/// right after its commit point is rolled forward in every range.
#[tokio::test]
async fn a_coordinator_that_dies_mid_commit_leaves_nothing_half_done() {
    bounded(async {
        let mut cluster = Cluster::start_with(3, &["--range-max-keys", "20"]).await;
        let mut client = cluster.kv(1).await;
        for i in 0..60 {
            put(&mut client, &format!("acct/{i:03}"), "100").await;
        }
        wait_for_ranges(&cluster, 2).await;
        let transfer = |value: &str| TxnRequest {
            compare: vec![],
            success: vec![put_op("acct/000", value), put_op("acct/059", value)],
            failure: vec![],
        };

        for (fail_at, value, applies) in [
            ("txn-after-prepare", "rolled-back", false),
            ("txn-after-primary-commit", "rolled-forward", true),
        ] {
            cluster.stop(0);
            cluster.nodes[0].args = vec![format!("--experimental-fail-at={fail_at}")];
            cluster.restart(0);
            cluster.wait_ready(Duration::from_secs(30)).await;
            let mut doomed = cluster.kv(0).await;
            let outcome = doomed.txn(transfer(value)).await;
            assert!(outcome.is_err(), "the coordinator exits at {fail_at}");
            // The other members wait on the locks, then resolve them.
            let first = get(&mut client, "acct/000", false).await;
            let last = get(&mut client, "acct/059", false).await;
            let expected = if applies { value } else { "100" };
            assert_eq!(
                (first.as_deref(), last.as_deref()),
                (Some(expected), Some(expected)),
                "after {fail_at}"
            );
            let (accounts, _) = balances(&mut client, 0).await;
            let revisions: Vec<i64> = accounts
                .iter()
                .filter(|(key, _, _)| key == "acct/000" || key == "acct/059")
                .map(|(_, _, revision)| *revision)
                .collect();
            if applies {
                assert_eq!(revisions[0], revisions[1], "both halves at the commit revision");
            }
            // The keys are free again.
            put(&mut client, "acct/000", "100").await;
            put(&mut client, "acct/059", "100").await;
            cluster.kill(0);
            cluster.nodes[0].args.clear();
        }
        cluster.restart(0);
        cluster.wait_ready(Duration::from_secs(30)).await;
    })
    .await;
}

const LEASED: [&str; 3] = ["a-leased", "fill/050-leased", "z-leased"];

/// Puts every leased key with `lease`; their revisions.
async fn attach(client: &mut KvClient<Channel>, lease: i64) -> Vec<i64> {
    let mut revisions = Vec::new();
    for key in LEASED {
        let response = client
            .put(PutRequest {
                key: bytes(key),
                value: bytes("v"),
                lease,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("put {key}: {status}"))
            .into_inner();
        revisions.push(response.header.unwrap().revision);
    }
    revisions
}

/// How many leased keys there are at `revision` (0: now).
async fn present_at(client: &mut KvClient<Channel>, revision: i64) -> i64 {
    let mut present = 0;
    for key in LEASED {
        let response = client
            .range(RangeRequest {
                key: bytes(key),
                revision,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        present += response.count;
    }
    present
}

/// A lease whose keys live in several ranges: revoking it, or letting it expire,
/// deletes every one of them at one revision, and a put naming it afterwards is
/// refused as etcd refuses it.
#[tokio::test]
async fn a_lease_with_keys_in_several_ranges_goes_as_one() {
    use shoal::proto::etcdserverpb::lease_client::LeaseClient;
    use shoal::proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
    bounded(async {
        let cluster = Cluster::start_with(3, &["--range-max-keys", "20"]).await;
        let mut client = cluster.kv(0).await;
        for i in 0..100 {
            put(&mut client, &format!("fill/{i:03}"), "x").await;
        }
        wait_for_ranges(&cluster, 4).await;
        let mut leases = LeaseClient::new(crate::support::channel(&cluster.nodes[1].client_url()).await);

        // Revoked on request.
        let lease = leases
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
            .await
            .unwrap()
            .into_inner()
            .id;
        let attached = attach(&mut client, lease).await;
        let revoked = leases
            .lease_revoke(LeaseRevokeRequest { id: lease })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
        assert_eq!(present_at(&mut client, 0).await, 0, "every leased key is gone");
        // The answer's revision is at or after the one that took them (the leader's
        // lease task may have finished the revocation first).
        gone_at_once(&mut client, *attached.iter().max().unwrap(), revoked).await;
        let refused = client
            .put(PutRequest {
                key: bytes("z-leased"),
                value: bytes("again"),
                lease,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.message(), "etcdserver: requested lease not found");

        // Expired: the short TTL runs out with no keep-alive.
        let lease = leases
            .lease_grant(LeaseGrantRequest { ttl: 1, id: 0 })
            .await
            .unwrap()
            .into_inner()
            .id;
        let attached = attach(&mut client, lease).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while present_at(&mut client, 0).await > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the lease's keys outlived it");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now = client
            .range(RangeRequest {
                key: bytes("fill/000"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
        gone_at_once(&mut client, *attached.iter().max().unwrap(), now).await;
    })
    .await;
}

/// One revision took all three leased keys: between `all` (the last put) and `none`,
/// every revision has all of them or none (searched by halves; revisions may have gaps).
async fn gone_at_once(client: &mut KvClient<Channel>, mut all: i64, mut none: i64) {
    assert_eq!(present_at(client, all).await, 3, "all there after the last put");
    assert_eq!(present_at(client, none).await, 0, "none there after the revocation");
    while none - all > 1 {
        let middle = all + (none - all) / 2;
        match present_at(client, middle).await {
            3 => all = middle,
            0 => none = middle,
            partly => panic!("{partly} of the lease's keys at revision {middle}"),
        }
    }
}
