//! KV semantics through the etcd gRPC API, checked against etcd's documented behavior.

use crate::support::{bounded, bytes, get, put, scan, Cluster};
use shoal::proto::etcdserverpb::{
    compare, range_request, request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: bytes(key),
            value: bytes(value),
            ..Default::default()
        })),
    }
}

fn get_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: bytes(key),
            ..Default::default()
        })),
    }
}

fn value_equals(key: &str, value: &str) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Value as i32,
        key: bytes(key),
        target_union: Some(compare::TargetUnion::Value(bytes(value))),
        ..Default::default()
    }
}

#[tokio::test]
async fn revisions_versions_and_history_follow_etcd() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut client = cluster.kv(0).await;
        // Each write gets a higher revision. Revisions come from the cluster's oracle
        // and may have gaps (a range closed meanwhile, a leader change), so only their
        // order is etcd's.
        let dense = |earlier: i64, later: i64| assert!(later > earlier, "revision {later} after {earlier}");
        let base = put(&mut client, "rev/a", "1").await;
        let second = put(&mut client, "rev/a", "2").await;
        dense(base, second);
        let third = put(&mut client, "rev/b", "1").await;
        dense(second, third);

        let now = client
            .range(RangeRequest {
                key: bytes("rev/a"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(now.header.as_ref().unwrap().revision >= third);
        let kv = &now.kvs[0];
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (base, second, 2));

        // Reads at a past revision see the history.
        let past = client
            .range(RangeRequest {
                key: bytes("rev/a"),
                revision: base,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(past.kvs[0].value.as_ref(), b"1");
        assert_eq!(past.kvs[0].version, 1);
        let before_b = client
            .range(RangeRequest {
                key: bytes("rev/"),
                range_end: bytes("rev0"),
                revision: second,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(before_b.count, 1, "rev/b did not exist at {second}");

        // Delete, then re-create: version restarts, create revision moves.
        let deleted = client
            .delete_range(DeleteRangeRequest {
                key: bytes("rev/a"),
                prev_kv: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(deleted.deleted, 1);
        assert_eq!(deleted.prev_kvs[0].value.as_ref(), b"2");
        let deleted_at = deleted.header.unwrap().revision;
        dense(third, deleted_at);
        let recreated = put(&mut client, "rev/a", "3").await;
        let kv = client
            .range(RangeRequest {
                key: bytes("rev/a"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .kvs
            .remove(0);
        assert_eq!((kv.create_revision, kv.version), (recreated, 1));

        // Deleting nothing writes no revision: the key's range stays where the last
        // write left it (with many ranges a close may have moved it since).
        let nothing = client
            .delete_range(DeleteRangeRequest {
                key: bytes("rev/none"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(nothing.deleted, 0);
        if !crate::SPLIT {
            assert_eq!(nothing.header.unwrap().revision, recreated);
        }
        let after = put(&mut client, "rev/a", "4").await;
        dense(recreated, after);
    })
    .await;
}

#[tokio::test]
async fn ranges_prefixes_limits_sorting_and_filters() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut client = cluster.kv(1).await;
        for (key, value) in [("p/c", "3"), ("p/a", "1"), ("p/b", "2"), ("p/d", "0"), ("q", "x")] {
            put(&mut client, key, value).await;
        }
        put(&mut client, "p/a", "9").await; // p/a: version 2, newest mod revision

        let all = scan(&mut client, "p/", false).await;
        let keys: Vec<&str> = all.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["p/a", "p/b", "p/c", "p/d"]);

        let limited = client
            .range(RangeRequest {
                key: bytes("p/"),
                range_end: bytes("p0"),
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((limited.kvs.len(), limited.more, limited.count), (2, true, 4));

        let by_value_desc = client
            .range(RangeRequest {
                key: bytes("p/"),
                range_end: bytes("p0"),
                sort_order: range_request::SortOrder::Descend as i32,
                sort_target: range_request::SortTarget::Value as i32,
                limit: 3,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let values: Vec<&[u8]> = by_value_desc.kvs.iter().map(|kv| kv.value.as_ref()).collect();
        assert_eq!(values, [b"9".as_ref(), b"3", b"2"]);
        assert!(by_value_desc.more);

        let by_mod_asc = client
            .range(RangeRequest {
                key: bytes("p/"),
                range_end: bytes("p0"),
                sort_target: range_request::SortTarget::Mod as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_mod_asc.kvs.last().unwrap().key.as_ref(), b"p/a");

        let keys_only = client
            .range(RangeRequest {
                key: bytes("p/"),
                range_end: bytes("p0"),
                keys_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()) && keys_only.kvs.len() == 4);

        let count_only = client
            .range(RangeRequest {
                key: bytes("\0"),
                range_end: bytes("\0"),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(count_only.kvs.is_empty());
        assert_eq!(count_only.count, 5);

        let modified_late = client
            .range(RangeRequest {
                key: bytes("p/"),
                range_end: bytes("p0"),
                min_mod_revision: by_mod_asc.kvs.last().unwrap().mod_revision,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(modified_late.kvs.len(), 1);
        let created_early = client
            .range(RangeRequest {
                key: bytes("p/"),
                range_end: bytes("p0"),
                max_create_revision: by_mod_asc.kvs[0].create_revision,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(created_early.kvs.len(), 1);
        assert_eq!(created_early.kvs[0].key.as_ref(), b"p/c");

        // From a key onwards ("\0" as range end).
        let from_c = client
            .range(RangeRequest {
                key: bytes("p/c"),
                range_end: bytes("\0"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let keys: Vec<&[u8]> = from_c.kvs.iter().map(|kv| kv.key.as_ref()).collect();
        assert_eq!(keys, [b"p/c".as_ref(), b"p/d", b"q"]);
    })
    .await;
}

#[tokio::test]
async fn put_options_prev_kv_ignore_value_and_follower_writes() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let leader = cluster.leader().await;
        let follower = (leader + 1) % 3;
        let mut client = cluster.kv(follower).await;
        put(&mut client, "opt/k", "v1").await;
        let replaced = client
            .put(PutRequest {
                key: bytes("opt/k"),
                value: bytes("v2"),
                prev_kv: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(replaced.prev_kv.unwrap().value.as_ref(), b"v1");
        let kept = client
            .put(PutRequest {
                key: bytes("opt/k"),
                ignore_value: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(kept.prev_kv.is_none(), "prev_kv was not asked for");
        assert_eq!(get(&mut client, "opt/k", false).await.as_deref(), Some("v2"));

        // A write through a follower is visible to a linearizable read anywhere at once.
        for index in 0..3 {
            let mut other = cluster.kv(index).await;
            assert_eq!(get(&mut other, "opt/k", false).await.as_deref(), Some("v2"));
        }
    })
    .await;
}

#[tokio::test]
async fn txn_compares_branches_and_nesting() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut client = cluster.kv(2).await;
        let created = put(&mut client, "t/x", "1").await;

        let swapped = client
            .txn(TxnRequest {
                compare: vec![value_equals("t/x", "1")],
                success: vec![put_op("t/x", "2"), get_op("t/x")],
                failure: vec![get_op("t/x")],
            })
            .await
            .unwrap()
            .into_inner();
        assert!(swapped.succeeded);
        // Revisions may have gaps (other ranges take revisions too), never go back.
        let swapped_revision = swapped.header.unwrap().revision;
        assert!(swapped_revision > created, "{swapped_revision} after {created}");
        if !crate::SPLIT {
            assert_eq!(swapped_revision, created + 1);
        }
        let Some(response_op::Response::ResponseRange(read)) = &swapped.responses[1].response else {
            panic!("expected a range response")
        };
        assert_eq!(read.kvs[0].value.as_ref(), b"2", "a txn reads its own writes");

        let stale = client
            .txn(TxnRequest {
                compare: vec![value_equals("t/x", "1")],
                success: vec![put_op("t/x", "3")],
                failure: vec![get_op("t/x")],
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!stale.succeeded);
        let Some(response_op::Response::ResponseRange(read)) = &stale.responses[0].response else {
            panic!("expected a range response")
        };
        assert_eq!(read.kvs[0].value.as_ref(), b"2");
        assert_eq!(
            read.kvs[0].mod_revision, swapped_revision,
            "a failed CAS writes nothing"
        );
        if !crate::SPLIT {
            assert_eq!(
                stale.header.unwrap().revision,
                swapped_revision,
                "a failed CAS writes nothing"
            );
        }

        // Every comparison target and operator.
        let targets = [
            (
                compare::CompareTarget::Version,
                compare::TargetUnion::Version(2),
                compare::CompareResult::Equal,
            ),
            (
                compare::CompareTarget::Create,
                compare::TargetUnion::CreateRevision(created),
                compare::CompareResult::Equal,
            ),
            (
                compare::CompareTarget::Mod,
                compare::TargetUnion::ModRevision(created),
                compare::CompareResult::Greater,
            ),
            (
                compare::CompareTarget::Version,
                compare::TargetUnion::Version(3),
                compare::CompareResult::Less,
            ),
            (
                compare::CompareTarget::Version,
                compare::TargetUnion::Version(1),
                compare::CompareResult::NotEqual,
            ),
            (
                compare::CompareTarget::Lease,
                compare::TargetUnion::Lease(0),
                compare::CompareResult::Equal,
            ),
        ];
        for (target, value, result) in targets {
            let outcome = client
                .txn(TxnRequest {
                    compare: vec![Compare {
                        result: result as i32,
                        target: target as i32,
                        key: bytes("t/x"),
                        target_union: Some(value.clone()),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(outcome.succeeded, "{target:?} {result:?} {value:?}");
        }

        // A missing key has version 0; a value compare on it is false.
        let missing = client
            .txn(TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Version as i32,
                    key: bytes("t/missing"),
                    target_union: Some(compare::TargetUnion::Version(0)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestTxn(TxnRequest {
                        compare: vec![value_equals("t/missing", "")],
                        success: vec![put_op("t/inner", "then")],
                        failure: vec![put_op("t/inner", "else")],
                    })),
                }],
                failure: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        assert!(missing.succeeded);
        assert_eq!(get(&mut client, "t/inner", false).await.as_deref(), Some("else"));
    })
    .await;
}

#[tokio::test]
async fn compaction_drops_history_but_keeps_current_state() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let mut client = cluster.kv(0).await;
        let first = put(&mut client, "c/k", "1").await;
        let second = put(&mut client, "c/k", "2").await;
        put(&mut client, "c/other", "x").await;
        client
            .compact(CompactionRequest {
                revision: second,
                physical: true,
            })
            .await
            .unwrap();
        for index in 0..3 {
            let mut reader = cluster.kv(index).await;
            let old = reader
                .range(RangeRequest {
                    key: bytes("c/k"),
                    revision: first,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(old.code(), tonic::Code::OutOfRange);
            assert_eq!(old.message(), "etcdserver: mvcc: required revision has been compacted");
            let at = reader
                .range(RangeRequest {
                    key: bytes("c/k"),
                    revision: second,
                    serializable: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(at.kvs[0].value.as_ref(), b"2");
        }
        assert_eq!(get(&mut client, "c/other", false).await.as_deref(), Some("x"));
    })
    .await;
}

#[tokio::test]
async fn auto_compaction_drops_history_older_than_the_retention() {
    bounded(async {
        let cluster = Cluster::start_with(3, &["--auto-compaction-retention", "1s"]).await;
        let mut client = cluster.kv(0).await;
        let first = put(&mut client, "auto/k", "1").await;
        let second = put(&mut client, "auto/k", "2").await;
        let read_at = |revision: i64| RangeRequest {
            key: bytes("auto/k"),
            revision,
            ..Default::default()
        };
        // The leader compacts once a revision is a full retention old; poll until then.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match client.range(read_at(first)).await {
                Err(status) => {
                    assert_eq!(
                        status.message(),
                        "etcdserver: mvcc: required revision has been compacted"
                    );
                    break;
                }
                Ok(_) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "revision {first} still readable 30 s after it was written"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        // Nothing newer than what was current a retention ago is dropped: the latest
        // revision stays readable, on every member.
        for index in 0..3 {
            let mut reader = cluster.kv(index).await;
            let at = reader.range(read_at(second)).await.unwrap().into_inner();
            assert_eq!(at.kvs[0].value.as_ref(), b"2");
        }
    })
    .await;
}
