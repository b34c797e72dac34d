//! Bad requests get etcd's error (code and message), and the node keeps serving.

use crate::support::{bounded, bytes, get, put, Cluster};
use shoal::proto::etcdserverpb::{
    alarm_request, request_op, AlarmRequest, AlarmType, CompactionRequest, Compare, DeleteRangeRequest, HashKvRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
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
            maintenance.hash_kv(HashKvRequest { revision: 1 << 40 }).await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        );
        // An alarm of no type raises nothing (etcd answers an empty list).
        let raised = maintenance
            .alarm(AlarmRequest {
                action: alarm_request::AlarmAction::Activate as i32,
                member_id: 0,
                alarm: AlarmType::None as i32,
            })
            .await
            .expect("an alarm of no type")
            .into_inner();
        assert!(raised.alarms.is_empty());

        // Every node is still up and serving.
        for index in 0..3 {
            let mut other = cluster.kv(index).await;
            assert_eq!(get(&mut other, "k", false).await.as_deref(), Some("v2"));
        }
    })
    .await;
}

/// Peers are checked before the node acts on what they send: malformed or impossible
/// Raft messages and snapshots get an error (and a log line), never a crash, and the
/// node keeps serving.
#[tokio::test]
async fn malformed_peer_input_is_refused_and_the_node_keeps_serving() {
    use protobuf::Message as _;
    use raft::eraftpb::{Entry, Message, MessageType, Snapshot};
    use shoal::proto::etcdserverpb::StatusRequest;
    use shoal::proto::shoal::peer::{peer_client::PeerClient, RaftBatch, RaftEnvelope, SnapshotChunk};
    use shoal::proto::shoal::state::RangeApplyState;

    bounded(async {
        let mut cluster = Cluster::start(3).await;
        let leader = cluster.leader().await;
        let target = (leader + 1) % 3;
        let urls: Vec<String> = cluster.endpoints();
        let status = |index: usize| {
            let url = urls[index].clone();
            async move {
                shoal::proto::etcdserverpb::maintenance_client::MaintenanceClient::new(
                    crate::support::channel(&url).await,
                )
                .status(StatusRequest {})
                .await
                .unwrap()
                .into_inner()
            }
        };
        let target_status = status(target).await;
        let header = target_status.header.unwrap();
        let (cluster_id, target_id, term) = (header.cluster_id, header.member_id, header.raft_term);
        let sender_id = status(leader).await.header.unwrap().member_id;
        let peer_url = format!("http://127.0.0.1:{}", cluster.nodes[target].peer_port);
        let mut peer = PeerClient::new(crate::support::channel(&peer_url).await);
        fn stamped<T>(body: T, cluster_id: u64, sender_id: u64) -> tonic::Request<T> {
            let mut request = tonic::Request::new(body);
            request
                .metadata_mut()
                .insert("shoal-cluster-id", format!("{cluster_id:x}").parse().unwrap());
            request
                .metadata_mut()
                .insert("shoal-member-id", format!("{sender_id:x}").parse().unwrap());
            request
        }
        let message = |kind: MessageType| {
            let mut message = Message::default();
            message.set_msg_type(kind);
            message.from = sender_id;
            message.to = target_id;
            message.term = term;
            message
        };
        const DATA: u64 = shoal::range::FIRST_DATA_RANGE_ID;
        let batch = |range_id: u64, bytes: Vec<u8>| {
            tokio_stream::iter(vec![RaftBatch {
                messages: vec![RaftEnvelope {
                    range_id,
                    message: bytes.into(),
                }],
            }])
        };

        let outcome = peer
            .raft(stamped(
                batch(DATA, b"\xff\xffnot a message".to_vec()),
                cluster_id,
                sender_id,
            ))
            .await;
        let refused = outcome.expect_err("garbage is refused");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(
            refused.message().starts_with("bad raft message"),
            "{}",
            refused.message()
        );

        let mut elsewhere = message(MessageType::MsgHeartbeat);
        elsewhere.to = 0x3039;
        assert_status(
            peer.raft(stamped(
                batch(DATA, elsewhere.write_to_bytes().unwrap()),
                cluster_id,
                sender_id,
            ))
            .await,
            Code::InvalidArgument,
            &format!("raft message for member 3039 sent to {target_id:x}"),
        );
        let mut impostor = message(MessageType::MsgHeartbeat);
        impostor.from = 0x77;
        assert_status(
            peer.raft(stamped(
                batch(DATA, impostor.write_to_bytes().unwrap()),
                cluster_id,
                sender_id,
            ))
            .await,
            Code::InvalidArgument,
            &format!("raft message from 77 on a connection of {sender_id:x}"),
        );
        // A range the node does not hold (yet: a split not applied here, a replica not
        // opened) is dropped and counted, and the stream goes on; Raft sends again.
        let unknown = |body: &str| {
            body.lines()
                .find(|line| line.starts_with("shoal_raft_messages_for_unknown_ranges_total"))
                .and_then(|line| line.split_whitespace().last()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let metrics = || {
            shoal::http_probe::get(
                cluster.nodes[target].metrics_port,
                "/metrics",
                std::time::Duration::from_secs(2),
            )
        };
        let before = unknown(&metrics().await.expect("metrics").1);
        let heartbeat = message(MessageType::MsgHeartbeat).write_to_bytes().unwrap();
        peer.raft(stamped(batch(99, heartbeat), cluster_id, sender_id))
            .await
            .expect("a message for a range not held here is dropped, not refused");
        assert_eq!(unknown(&metrics().await.expect("metrics").1), before + 1.0);

        // Well formed, impossible from a correct peer: raft-rs would stop the process.
        let mut past_the_end = message(MessageType::MsgHeartbeat);
        past_the_end.commit = 1 << 40;
        let mut contradicting = message(MessageType::MsgAppend);
        contradicting.term = term + 1;
        let entry = Entry {
            index: 1,
            term: term + 1,
            ..Default::default()
        };
        contradicting.entries = vec![entry].into();
        contradicting.commit = 1;
        for impossible in [past_the_end, contradicting] {
            peer.raft(stamped(
                batch(DATA, impossible.write_to_bytes().unwrap()),
                cluster_id,
                sender_id,
            ))
            .await
            .expect("delivered: the store loop drops it");
        }

        // Snapshots: checked whole before Raft sees them.
        let snapshot_stream = |index: u64, voters: Vec<u64>, data: Vec<u8>| {
            let mut message = message(MessageType::MsgSnapshot);
            let mut snapshot = Snapshot::default();
            snapshot.mut_metadata().index = index;
            snapshot.mut_metadata().term = term;
            snapshot.mut_metadata().mut_conf_state().voters = voters;
            message.set_snapshot(snapshot);
            tokio_stream::iter(vec![SnapshotChunk {
                range_id: DATA,
                raft_message: message.write_to_bytes().unwrap().into(),
                data: data.into(),
            }])
        };
        let record = |space: shoal::storage::Space, key: &[u8], value: &[u8]| {
            let mut out = vec![space.tag()];
            out.extend_from_slice(&(key.len() as u32).to_be_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
            out
        };
        let apply_state = |index: u64| {
            record(
                shoal::storage::Space::RangeMeta,
                &shoal::range::state_machine::apply_state_key(DATA),
                &prost::Message::encode_to_vec(&RangeApplyState {
                    applied_index: index,
                    applied_term: term,
                    revision: 1,
                    ..Default::default()
                }),
            )
        };
        let voters = vec![target_id, sender_id];
        assert_status(
            peer.install_snapshot(stamped(
                snapshot_stream(0, voters.clone(), Vec::new()),
                cluster_id,
                sender_id,
            ))
            .await,
            Code::InvalidArgument,
            &format!("snapshot metadata without an index, a term or voters (index 0, term {term}, voters {voters:?})"),
        );
        let garbage = peer
            .install_snapshot(stamped(
                snapshot_stream(1000, voters.clone(), b"\x63garbage".to_vec()),
                cluster_id,
                sender_id,
            ))
            .await
            .expect_err("garbage data is refused");
        assert_eq!(garbage.code(), Code::DataLoss);
        assert!(
            garbage.message().starts_with("snapshot stream rejected"),
            "{}",
            garbage.message()
        );
        let no_state = record(shoal::storage::Space::KvLatest, b"\x01a", b"v");
        assert_status(
            peer.install_snapshot(stamped(
                snapshot_stream(1000, voters.clone(), no_state),
                cluster_id,
                sender_id,
            ))
            .await,
            Code::DataLoss,
            "snapshot stream rejected: it holds no apply state for the range",
        );
        assert_status(
            peer.install_snapshot(stamped(
                snapshot_stream(1000, voters.clone(), apply_state(5)),
                cluster_id,
                sender_id,
            ))
            .await,
            Code::DataLoss,
            &format!(
                "snapshot stream rejected: its data is applied through index 5 term {term}, its metadata says index \
                 1000 term {term}"
            ),
        );

        // The node dropped the impossible messages (and said so) and still serves.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while cluster.nodes[target]
            .log_text()
            .matches("dropped a raft message no correct peer sends")
            .count()
            < 2
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the impossible messages were not dropped"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        cluster.wait_ready(std::time::Duration::from_secs(30)).await;
        let mut kv = cluster.kv(target).await;
        put(&mut kv, "after-bad-peers", "v").await;
        assert_eq!(get(&mut kv, "after-bad-peers", false).await.as_deref(), Some("v"));
        assert_eq!(
            status(target).await.header.unwrap().member_id,
            target_id,
            "the same process answers"
        );
    })
    .await;
}

/// A Range response stays under `--max-response-bytes`: a Range with a limit comes back
/// as a shorter page with `more` (so a client paging by last key sees every key once),
/// one without is refused with grpc's message, as etcd at its own send limit.
#[tokio::test]
async fn range_responses_over_the_size_limit_are_paged_or_refused() {
    bounded(async {
        let cluster = Cluster::start_with(1, &["--max-response-bytes", "4096"]).await;
        let mut client = cluster.kv(0).await;
        let value = "v".repeat(500);
        for index in 0..20 {
            put(&mut client, &format!("big/{index:02}"), &value).await;
        }
        let whole = client
            .range(RangeRequest {
                key: bytes("big/"),
                range_end: bytes("big0"),
                ..Default::default()
            })
            .await
            .expect_err("20 values of 500 bytes are over 4096 bytes");
        assert_eq!(whole.code(), Code::ResourceExhausted);
        let message = whole.message();
        let size: usize = message
            .strip_prefix("grpc: trying to send message larger than max (")
            .and_then(|rest| rest.strip_suffix(" vs. 4096)"))
            .and_then(|size| size.parse().ok())
            .unwrap_or_else(|| panic!("not grpc's message: {message}"));
        assert!(size > 20 * 500, "the size counts every value: {size}");

        let mut seen = Vec::new();
        let mut start = bytes("big/");
        loop {
            let page = client
                .range(RangeRequest {
                    key: start.clone(),
                    range_end: bytes("big0"),
                    limit: 15,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(
                !page.kvs.is_empty() && page.kvs.len() < 15,
                "a page cut for size: {}",
                page.kvs.len()
            );
            let encoded: usize = page.kvs.iter().map(prost::Message::encoded_len).sum();
            assert!(encoded <= 4096, "{encoded}");
            seen.extend(page.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()));
            if !page.more {
                break;
            }
            let mut next = page.kvs.last().unwrap().key.to_vec();
            next.push(0);
            start = next.into();
        }
        let expected: Vec<String> = (0..20).map(|index| format!("big/{index:02}")).collect();
        assert_eq!(seen, expected, "every key once, in order");
    })
    .await;
}
