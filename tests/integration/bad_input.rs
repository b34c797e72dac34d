//! Bad requests get etcd's error (code and message), and the node keeps serving.

use crate::support::{bounded, bytes, get, put, Cluster};
use shoal::proto::etcdserverpb::{
    alarm_request, request_op, AlarmRequest, AlarmType, CompactionRequest, Compare, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};
use tonic::Code;

fn put_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: bytes(key),
            value: bytes("v"),
            ..Default::default()
        })),
    }
}

fn assert_status<T: std::fmt::Debug>(outcome: Result<T, tonic::Status>, code: Code, message: &str) {
    let status = outcome.expect_err("the request should be refused");
    assert_eq!((status.code(), status.message()), (code, message));
}

#[tokio::test]
async fn refused_requests_name_their_problem_like_etcd() {
    bounded(async {
        let cluster = Cluster::start_with(3, &["--max-txn-ops", "4", "--max-request-bytes", "10000"]).await;
        let mut client = cluster.kv(0).await;
        let revision = put(&mut client, "k", "v").await;

        let empty = "etcdserver: key is not provided";
        assert_status(client.put(PutRequest::default()).await, Code::InvalidArgument, empty);
        assert_status(
            client.range(RangeRequest::default()).await,
            Code::InvalidArgument,
            empty,
        );
        assert_status(
            client.delete_range(DeleteRangeRequest::default()).await,
            Code::InvalidArgument,
            empty,
        );
        assert_status(
            client
                .txn(TxnRequest {
                    compare: vec![Compare::default()],
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            empty,
        );

        let too_many = TxnRequest {
            success: (0..5).map(|i| put_op(&format!("t{i}"))).collect(),
            ..Default::default()
        };
        assert_status(
            client.txn(too_many).await,
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        );
        assert_status(
            client
                .txn(TxnRequest {
                    success: vec![put_op("dup"), put_op("dup")],
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        );
        assert_status(
            client
                .txn(TxnRequest {
                    success: vec![RequestOp { request: None }],
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "etcdserver: key not found",
        );

        // Over --max-request-bytes: refused by Shoal; far over it: by the gRPC layer.
        assert_status(
            client
                .put(PutRequest {
                    key: bytes("big"),
                    value: vec![0u8; 20_000].into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "etcdserver: request is too large",
        );
        let huge = client
            .put(PutRequest {
                key: bytes("huge"),
                value: vec![0u8; 2 << 20].into(),
                ..Default::default()
            })
            .await
            .expect_err("a 2 MiB request is over the transport limit");
        assert_eq!(
            (huge.code(), huge.message()),
            (Code::ResourceExhausted, "grpc: received message larger than max"),
            "{huge:?}"
        );

        assert_status(
            client
                .range(RangeRequest {
                    key: bytes("k"),
                    revision: revision + 100,
                    ..Default::default()
                })
                .await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        );
        put(&mut client, "k", "v2").await;
        client
            .compact(CompactionRequest {
                revision: revision + 1,
                physical: false,
            })
            .await
            .unwrap();
        let compacted = "etcdserver: mvcc: required revision has been compacted";
        assert_status(
            client
                .range(RangeRequest {
                    key: bytes("k"),
                    revision,
                    ..Default::default()
                })
                .await,
            Code::OutOfRange,
            compacted,
        );
        assert_status(
            client
                .compact(CompactionRequest {
                    revision,
                    physical: false,
                })
                .await,
            Code::OutOfRange,
            compacted,
        );
        assert_status(
            client
                .compact(CompactionRequest {
                    revision: revision + 100,
                    physical: false,
                })
                .await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        );
        // Inside a txn too, and then nothing of the txn applies.
        assert_status(
            client
                .txn(TxnRequest {
                    success: vec![
                        put_op("not-written"),
                        RequestOp {
                            request: Some(request_op::Request::RequestRange(RangeRequest {
                                key: bytes("k"),
                                revision,
                                ..Default::default()
                            })),
                        },
                    ],
                    ..Default::default()
                })
                .await,
            Code::OutOfRange,
            compacted,
        );
        assert_eq!(get(&mut client, "not-written", false).await, None);

        assert_status(
            client
                .put(PutRequest {
                    key: bytes("k"),
                    value: bytes("x"),
                    ignore_value: true,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "etcdserver: value is provided",
        );
        assert_status(
            client
                .put(PutRequest {
                    key: bytes("k"),
                    lease: 5,
                    ignore_lease: true,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "etcdserver: lease is provided",
        );
        assert_status(
            client
                .put(PutRequest {
                    key: bytes("absent"),
                    ignore_value: true,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "etcdserver: key not found",
        );
        assert_status(
            client
                .put(PutRequest {
                    key: bytes("k"),
                    value: bytes("x"),
                    lease: 12345,
                    ..Default::default()
                })
                .await,
            Code::NotFound,
            "etcdserver: requested lease not found",
        );
        assert_status(
            client
                .range(RangeRequest {
                    key: bytes("k"),
                    sort_order: 7,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "etcdserver: invalid sort option",
        );

        let mut maintenance = cluster.maintenance(1).await;
        assert_status(
            maintenance
                .alarm(AlarmRequest {
                    action: alarm_request::AlarmAction::Activate as i32,
                    member_id: 0,
                    alarm: AlarmType::Nospace as i32,
                })
                .await,
            Code::Unimplemented,
            "etcdserver: raising alarms is not supported",
        );

        // Every node is still up and serving.
        for index in 0..3 {
            let mut other = cluster.kv(index).await;
            assert_eq!(get(&mut other, "k", false).await.as_deref(), Some("v2"));
        }
    })
    .await;
}
