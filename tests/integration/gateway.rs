//! etcd's JSON gateway on the client port, driven with curl as etcd's documentation
//! drives it: every endpoint and its `/v3beta` and `/v3alpha` aliases, the JSON encoding
//! (base64 bytes, 64-bit integers as strings, enums by name, defaults left out), etcd's
//! error codes and texts, a watch read as a chunked stream while others write, gRPC
//! (etcdctl) on the same port at the same time, h2c, and the https client port.

use crate::support::{bounded, curl, run_etcdctl, Cluster};
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A curl answer: HTTP status, body, and the body as JSON (Null if it is not JSON).
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
    json: Value,
}

/// Runs curl with `args` (bounded in time) and returns what the server answered.
async fn curl_with(args: &[&str]) -> Reply {
    let output = tokio::process::Command::new(curl())
        .args(["-s", "-S", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("running curl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, status) = stdout.rsplit_once('\n').expect("curl printed the status");
    Reply {
        status: status.trim().parse().expect("an HTTP status"),
        body: body.to_string(),
        json: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

/// `curl -X POST -d body url`.
async fn post(url: &str, body: &str) -> Reply {
    curl_with(&["-X", "POST", "-d", body, url]).await
}

/// A 200 reply's JSON.
async fn ok(url: &str, body: &str) -> Value {
    let reply = post(url, body).await;
    assert_eq!(reply.status, 200, "{url} {body}: {reply:?}");
    reply.json
}

/// Asserts `reply` is grpc-gateway's error with this HTTP status, gRPC code and message.
fn assert_error(reply: &Reply, status: u16, code: i64, message: &str) {
    let expected = serde_json::json!({ "error": message, "code": code, "message": message });
    assert_eq!((reply.status, &reply.json), (status, &expected), "{}", reply.body);
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A field that etcd's gateway writes as a string holding an int64.
fn int64(value: &Value) -> i64 {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not an int64 string"))
        .parse()
        .unwrap_or_else(|_| panic!("{value} is not an int64 string"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_answers_in_etcds_json_through_curl() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let urls = cluster.endpoints();
        let (a, b) = (&urls[0], &urls[1]);

        // Put on one member, read on another: bytes base64, int64s as strings, zero
        // fields (lease, more) left out, exactly the field set etcd writes.
        let put = ok(&format!("{a}/v3/kv/put"), r#"{"key": "Zm9v", "value": "YmFy"}"#).await;
        let header = &put["header"];
        let put_revision = int64(&header["revision"]);
        assert!(put_revision > 0 && int64_u(&header["cluster_id"]) != 0 && int64_u(&header["raft_term"]) > 0);
        assert!(int64_u(&header["member_id"]) != 0, "{put}");
        let range = ok(&format!("{b}/v3/kv/range"), r#"{"key": "Zm9v"}"#).await;
        let kv = &range["kvs"][0];
        assert_eq!(
            (kv["key"].as_str(), kv["value"].as_str(), kv["version"].as_str()),
            (Some("Zm9v"), Some("YmFy"), Some("1"))
        );
        assert_eq!(int64(&kv["mod_revision"]), put_revision);
        assert_eq!(int64(&kv["create_revision"]), put_revision);
        let mut fields: Vec<&str> = kv.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["create_revision", "key", "mod_revision", "value", "version"]);
        assert_eq!(range["count"], "1");
        assert!(range.get("more").is_none(), "{range}");
        // The older prefixes are aliases, and h2c serves the gateway as HTTP/1.1 does.
        for path in ["/v3beta/kv/range", "/v3alpha/kv/range"] {
            assert_eq!(ok(&format!("{b}{path}"), r#"{"key": "Zm9v"}"#).await["kvs"], range["kvs"]);
        }
        let h2c = curl_with(&[
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "-d",
            r#"{"key": "Zm9v", "range_end": "Zm9w", "keys_only": true}"#,
            &format!("{a}/v3/kv/range"),
        ])
        .await;
        assert_eq!(h2c.status, 200, "{h2c:?}");
        assert_eq!(h2c.json["kvs"][0]["key"], "Zm9v");
        assert!(h2c.json["kvs"][0].get("value").is_none(), "keys_only: {}", h2c.body);

        // A txn as etcd's guide writes it (camelCase requestRange, version as a string),
        // and its failure branch; nested responses name their oneof member.
        let txn = ok(
            &format!("{a}/v3/kv/txn"),
            r#"{"compare":[{"version":"1","result":"EQUAL","target":"VERSION","key":"Zm9v"}],
                "success":[{"request_put":{"key":"Zm9v","value":"YmF6"}},{"requestRange":{"key":"Zm9v"}}],
                "failure":[{"requestRange":{"key":"Zm9v"}}]}"#,
        )
        .await;
        assert_eq!(txn["succeeded"], true, "{txn}");
        assert!(txn["responses"][0]["response_put"]["header"]["revision"].is_string());
        let inner = &txn["responses"][1]["response_range"];
        assert_eq!(inner["kvs"][0]["value"], base64("baz"));
        assert_eq!(inner["kvs"][0]["version"], "2");
        let txn = ok(
            &format!("{b}/v3/kv/txn"),
            r#"{"compare":[{"value":"YmFy","result":"EQUAL","target":"VALUE","key":"Zm9v"}],
                "failure":[{"request_range":{"key":"Zm9v","count_only":true}}]}"#,
        )
        .await;
        assert!(txn.get("succeeded").is_none(), "false is left out: {txn}");
        assert_eq!(txn["responses"][0]["response_range"]["count"], "1");

        // Delete with the previous value.
        ok(&format!("{a}/v3/kv/put"), &format!(r#"{{"key":"{}","value":"MQ=="}}"#, base64("gone"))).await;
        let deleted = ok(
            &format!("{a}/v3/kv/deleterange"),
            &format!(r#"{{"key":"{}","prev_kv":true}}"#, base64("gone")),
        )
        .await;
        assert_eq!(deleted["deleted"], "1");
        assert_eq!(deleted["prev_kvs"][0]["value"], "MQ==");
        let after = ok(&format!("{b}/v3/kv/range"), &format!(r#"{{"key":"{}"}}"#, base64("gone"))).await;
        assert!(after.get("kvs").is_none() && after.get("count").is_none(), "{after}");

        // Leases: grant, keep-alive (one streamed line), time-to-live with keys, list,
        // revoke; the key goes with the lease.
        let grant = ok(&format!("{a}/v3/lease/grant"), r#"{"TTL": 60}"#).await;
        let id = int64(&grant["ID"]);
        assert_eq!(grant["TTL"], "60");
        ok(
            &format!("{a}/v3/kv/put"),
            &format!(r#"{{"key":"{}","value":"MQ==","lease":"{id}"}}"#, base64("leased")),
        )
        .await;
        let kept = post(&format!("{b}/v3/lease/keepalive"), &format!(r#"{{"ID": {id}}}"#)).await;
        assert_eq!(kept.status, 200, "{kept:?}");
        let lines: Vec<Value> = kept
            .body
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 1, "{}", kept.body);
        assert_eq!((int64(&lines[0]["result"]["ID"]), &lines[0]["result"]["TTL"]), (id, &Value::from("60")));
        let ttl = ok(&format!("{b}/v3/lease/timetolive"), &format!(r#"{{"ID":"{id}","keys":true}}"#)).await;
        assert_eq!(ttl["grantedTTL"], "60");
        assert!((1..=60).contains(&int64(&ttl["TTL"])), "{ttl}");
        assert_eq!(ttl["keys"], serde_json::json!([base64("leased")]));
        let leases = ok(&format!("{a}/v3/lease/leases"), "").await;
        assert!(
            leases["leases"].as_array().unwrap().iter().any(|lease| int64(&lease["ID"]) == id),
            "{leases}"
        );
        let aliased = ok(&format!("{a}/v3beta/kv/lease/leases"), "{}").await;
        assert_eq!(aliased["leases"], leases["leases"]);
        ok(&format!("{b}/v3/lease/revoke"), &format!(r#"{{"ID":"{id}"}}"#)).await;
        let ttl = ok(&format!("{a}/v3/lease/timetolive"), &format!(r#"{{"ID":"{id}"}}"#)).await;
        assert_eq!(ttl["TTL"], "-1");
        let gone = ok(&format!("{a}/v3/kv/range"), &format!(r#"{{"key":"{}"}}"#, base64("leased"))).await;
        assert!(gone.get("kvs").is_none(), "{gone}");

        // Cluster and maintenance.
        let members = ok(&format!("{b}/v3/cluster/member/list"), "{}").await;
        let members = members["members"].as_array().expect("members").clone();
        assert_eq!(members.len(), 3);
        for node in &cluster.nodes {
            let member = members
                .iter()
                .find(|member| member["name"] == node.name.as_str())
                .unwrap_or_else(|| panic!("{} missing from {members:?}", node.name));
            assert!(int64_u(&member["ID"]) != 0);
            assert_eq!(member["peerURLs"].as_array().map(Vec::len), Some(1));
            assert_eq!(member["clientURLs"][0], node.client_url().as_str());
            assert!(member.get("isLearner").is_none());
        }
        // Membership changes through the gateway, as etcd's: a learner added, then removed.
        let added = ok(
            &format!("{b}/v3/cluster/member/add"),
            r#"{"peerURLs":["http://127.0.0.1:9"],"isLearner":true}"#,
        )
        .await;
        assert_eq!(added["member"]["isLearner"], true, "{added}");
        assert_eq!(added["members"].as_array().map(Vec::len), Some(4), "{added}");
        let learner = added["member"]["ID"].as_str().expect("the new member's ID").to_string();
        let refused = post(
            &format!("{b}/v3/cluster/member/add"),
            r#"{"peerURLs":["http://127.0.0.1:9"]}"#,
        )
        .await;
        assert_error(&refused, 400, 9, "etcdserver: Peer URLs already exists");
        let removed = ok(
            &format!("{b}/v3/cluster/member/remove"),
            &format!(r#"{{"ID":"{learner}"}}"#),
        )
        .await;
        assert_eq!(removed["members"].as_array().map(Vec::len), Some(3), "{removed}");
        let status = ok(&format!("{a}/v3/maintenance/status"), "").await;
        assert_eq!(status["version"], "3.5.0");
        assert!(int64_u(&status["leader"]) != 0 && int64_u(&status["raftIndex"]) > 0, "{status}");
        assert!(int64(&status["dbSize"]) > 0, "{status}");
        assert_eq!(int64(&status["dbSizeQuota"]), 8 << 30, "{status}");

        // Alarms: raised by hand for a member (ids as strings, the type by name), listed,
        // disarmed. Hashes agree between members at one revision.
        let member = int64_u(&status["header"]["member_id"]);
        let raised = ok(
            &format!("{a}/v3/maintenance/alarm"),
            &format!(r#"{{"action":"ACTIVATE","memberID":"{member}","alarm":"NOSPACE"}}"#),
        )
        .await;
        assert_eq!(raised["alarms"], serde_json::json!([{"memberID": member.to_string(), "alarm": "NOSPACE"}]));
        let listed = ok(&format!("{b}/v3/maintenance/alarm"), r#"{"action":"GET"}"#).await;
        assert_eq!(listed["alarms"], raised["alarms"], "{listed}");
        // Enums by number and ids as numbers are read too; raising it again answers it.
        let again = ok(
            &format!("{b}/v3/maintenance/alarm"),
            &format!(r#"{{"action":1,"memberID":{member},"alarm":1}}"#),
        )
        .await;
        assert_eq!(again["alarms"], raised["alarms"], "{again}");
        let disarmed = ok(
            &format!("{b}/v3/maintenance/alarm"),
            &format!(r#"{{"action":"DEACTIVATE","memberID":"{member}","alarm":"NOSPACE"}}"#),
        )
        .await;
        assert_eq!(disarmed["alarms"], raised["alarms"], "{disarmed}");
        assert!(ok(&format!("{a}/v3/maintenance/alarm"), "").await["alarms"].is_null());
        let at = int64(&ok(&format!("{a}/v3/kv/put"), r#"{"key":"aGFzaA==","value":"MQ=="}"#).await["header"]["revision"]);
        let request = format!(r#"{{"revision":"{at}"}}"#);
        let first = ok(&format!("{a}/v3/maintenance/hashkv"), &request).await;
        let second = ok(&format!("{b}/v3/maintenance/hashkv"), &request).await;
        assert!(first["hash"].as_u64().is_some_and(|hash| hash > 0), "{first}");
        assert_eq!((&first["hash"], int64(&first["hash_revision"])), (&second["hash"], at));
        assert!(ok(&format!("{a}/v3/maintenance/hash"), "").await["hash"].is_u64());
        ok(&format!("{a}/v3/maintenance/defragment"), "").await;

        // Compaction, then a read below it: etcd's OutOfRange.
        let compacted_at = int64(&ok(&format!("{a}/v3/kv/put"), r#"{"key":"Zm9v","value":"Mw=="}"#).await["header"]["revision"]);
        let compaction = ok(
            &format!("{a}/v3/kv/compaction"),
            &format!(r#"{{"revision":"{compacted_at}","physical":true}}"#),
        )
        .await;
        assert!(int64(&compaction["header"]["revision"]) >= compacted_at);
        let below = post(
            &format!("{b}/v3/kv/range"),
            &format!(r#"{{"key":"Zm9v","revision":{}}}"#, put_revision),
        )
        .await;
        assert_error(&below, 400, 11, "etcdserver: mvcc: required revision has been compacted");

        // The plain HTTP endpoints etcd serves on its client port.
        let version = curl_with(&[&format!("{a}/version")]).await;
        assert_eq!(
            (version.status, version.body.as_str()),
            (200, r#"{"etcdserver":"3.5.0","etcdcluster":"3.5.0"}"#)
        );
        let health = curl_with(&[&format!("{b}/health")]).await;
        assert_eq!(
            (health.status, health.body.as_str()),
            (200, r#"{"health":"true","reason":""}"#)
        );
        let metrics = curl_with(&[&format!("{a}/metrics")]).await;
        assert_eq!(metrics.status, 200);
        for metric in [
            "etcd_server_has_leader 1",
            "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"etcdserverpb.KV\",grpc_method=\"Txn\",grpc_code=\"OK\"}",
        ] {
            assert!(metrics.body.contains(metric), "client-port /metrics lacks {metric}");
        }
    })
    .await;
}

/// A uint64 field (written as a string too).
fn int64_u(value: &Value) -> u64 {
    value
        .as_str()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("{value} is not a uint64 string"))
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_errors_carry_etcds_codes_and_messages() {
    bounded(async {
        let cluster = Cluster::start_with(3, &["--max-request-bytes", "1024"]).await;
        let url = &cluster.endpoints()[0];
        let kv = |path: &str| format!("{url}/v3/kv/{path}");

        let reply = post(&kv("put"), r#"{"key": "#).await;
        assert_eq!((reply.status, reply.json["code"].as_i64()), (400, Some(3)), "{reply:?}");
        assert_eq!(reply.json["error"], reply.json["message"]);
        assert!(reply.json["error"].as_str().unwrap().contains("EOF"), "{reply:?}");
        let reply = post(&kv("put"), r#"{"key": "not base64!", "value": "YmFy"}"#).await;
        assert_eq!((reply.status, reply.json["code"].as_i64()), (400, Some(3)), "{reply:?}");
        let reply = post(&kv("range"), r#"{"key": "Zm9v", "sort_order": "SIDEWAYS"}"#).await;
        assert_eq!((reply.status, reply.json["code"].as_i64()), (400, Some(3)), "{reply:?}");

        assert_error(&post(&format!("{url}/v3/kv/nothing"), "{}").await, 404, 5, "Not Found");
        assert_error(&curl_with(&[&format!("{url}/v3/nope/nope")]).await, 404, 5, "Not Found");
        assert_error(&curl_with(&[&kv("range")]).await, 501, 12, "Method Not Allowed");
        assert_error(
            &post(&format!("{url}/version"), "{}").await,
            501,
            12,
            "Method Not Allowed",
        );

        assert_error(
            &post(&kv("put"), r#"{"value": "YmFy"}"#).await,
            400,
            3,
            "etcdserver: key is not provided",
        );
        let revision = int64(&ok(&kv("put"), r#"{"key": "Zm9v", "value": "YmFy"}"#).await["header"]["revision"]);
        assert_error(
            &post(
                &kv("range"),
                &format!(r#"{{"key": "Zm9v", "revision": "{}"}}"#, revision + 1_000_000),
            )
            .await,
            400,
            11,
            "etcdserver: mvcc: required revision is a future revision",
        );
        assert_error(
            &post(&format!("{url}/v3/lease/revoke"), r#"{"ID": "12345"}"#).await,
            404,
            5,
            "etcdserver: requested lease not found",
        );
        assert_error(
            &post(
                &kv("txn"),
                r#"{"success":[{"request_put":{"key":"YQ=="}},{"request_put":{"key":"YQ=="}}]}"#,
            )
            .await,
            400,
            3,
            "etcdserver: duplicate key given in txn request",
        );

        // Size: a value over --max-request-bytes gets etcd's own refusal; a body far over
        // what any valid request needs is not even read.
        let value = base64(&"x".repeat(1500));
        assert_error(
            &post(&kv("put"), &format!(r#"{{"key": "YQ==", "value": "{value}"}}"#)).await,
            400,
            3,
            "etcdserver: request is too large",
        );
        let huge = format!(r#"{{"key": "YQ==", "value": "{}"}}"#, "QUFB".repeat(300_000));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("huge.json");
        std::fs::write(&file, huge).unwrap();
        let reply = curl_with(&[
            "-X",
            "POST",
            "--data-binary",
            &format!("@{}", file.display()),
            &kv("put"),
        ])
        .await;
        assert_eq!((reply.status, reply.json["code"].as_i64()), (429, Some(8)), "{reply:?}");
        // A stream's first request that does not read is refused before the stream opens.
        let reply = post(&format!("{url}/v3/watch"), r#"{"create_request": {"key": 5}}"#).await;
        assert_eq!((reply.status, reply.json["code"].as_i64()), (400, Some(3)), "{reply:?}");

        // The node is fine afterwards, for JSON and gRPC clients alike.
        assert_eq!(ok(&kv("range"), r#"{"key": "Zm9v"}"#).await["count"], "1");
        let (success, out, err) =
            tokio::task::block_in_place(|| run_etcdctl(std::slice::from_ref(url), &["get", "foo"], None));
        assert!(success && out.contains("bar"), "{out}{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_streams_json_lines_while_etcdctl_writes_on_the_same_port() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let urls = cluster.endpoints();
        let key = base64("watched");
        let mut watch = tokio::process::Command::new(curl())
            .args(["-s", "-N", "-i", "--max-time", "120", "-X", "POST", "-d"])
            .arg(format!(r#"{{"create_request": {{"key": "{key}", "prev_kv": true}}}}"#))
            .arg(format!("{}/v3/watch", urls[0]))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("curl -N");
        let mut lines = BufReader::new(watch.stdout.take().expect("curl's output")).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut next_line = async || {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, lines.next_line()).await {
                Ok(Ok(Some(line))) => line,
                other => panic!("the watch stream ended or stalled: {other:?}"),
            }
        };
        // Headers first: a chunked HTTP/1.1 response of JSON.
        let mut headers = Vec::new();
        loop {
            let line = next_line().await;
            if line.trim().is_empty() {
                break;
            }
            headers.push(line.to_ascii_lowercase());
        }
        assert!(headers[0].starts_with("http/1.1 200"), "{headers:?}");
        assert!(
            headers.iter().any(|h| h.trim() == "transfer-encoding: chunked"),
            "{headers:?}"
        );
        assert!(
            headers.iter().any(|h| h.trim() == "content-type: application/json"),
            "{headers:?}"
        );
        let created: Value = serde_json::from_str(&next_line().await).expect("a JSON line");
        assert_eq!(created["result"]["created"], true, "{created}");

        // etcdctl (gRPC, on the same member's port while the stream is open), then the
        // gateway on another member, then etcdctl deletes.
        let one = [urls[0].clone()];
        let (success, out, err) = tokio::task::block_in_place(|| run_etcdctl(&one, &["put", "watched", "v1"], None));
        assert!(success, "{out}{err}");
        ok(
            &format!("{}/v3/kv/put", urls[1]),
            &format!(r#"{{"key":"{key}","value":"{}"}}"#, base64("v2")),
        )
        .await;
        let (success, out, err) = tokio::task::block_in_place(|| run_etcdctl(&one, &["del", "watched"], None));
        assert!(success, "{out}{err}");

        let mut events = Vec::new();
        while events.len() < 3 {
            let line: Value = serde_json::from_str(&next_line().await).expect("a JSON line");
            let result = &line["result"];
            assert!(result["header"]["revision"].is_string(), "{line}");
            events.extend(result["events"].as_array().cloned().unwrap_or_default());
        }
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(
            events[0].get("type").is_none(),
            "PUT is the default, left out: {}",
            events[0]
        );
        assert_eq!(events[0]["kv"]["value"], base64("v1"));
        assert!(events[0].get("prev_kv").is_none());
        assert_eq!(events[1]["kv"]["value"], base64("v2"));
        assert_eq!(events[1]["kv"]["version"], "2");
        assert_eq!(events[1]["prev_kv"]["value"], base64("v1"));
        assert_eq!(events[2]["type"], "DELETE");
        assert_eq!(events[2]["kv"]["key"], key);
        assert_eq!(events[2]["prev_kv"]["value"], base64("v2"));
        let revisions: Vec<i64> = events.iter().map(|event| int64(&event["kv"]["mod_revision"])).collect();
        assert!(revisions.windows(2).all(|pair| pair[0] < pair[1]), "{revisions:?}");

        // The stream is still open after the request body ended (as etcd keeps it), and
        // ends on the server when its client goes away.
        assert!(watch.try_wait().expect("curl's state").is_none(), "the watch ended");
        let open_watches = |count: u32| format!("shoal_gateway_streams_open{{stream=\"watch\"}} {count}");
        let metrics = curl_with(&[&format!("{}/metrics", urls[0])]).await;
        assert!(metrics.body.contains(&open_watches(1)), "{}", metrics.body);
        watch.kill().await.expect("stopping curl");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !curl_with(&[&format!("{}/metrics", urls[0])])
            .await
            .body
            .contains(&open_watches(0))
        {
            assert!(Instant::now() < deadline, "the watch outlived its client");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A watch from a compacted revision is created and cancelled with etcd's reason.
        let at = int64(
            &ok(&format!("{}/v3/kv/put", urls[0]), r#"{"key":"YQ==","value":"YQ=="}"#).await["header"]["revision"],
        );
        ok(
            &format!("{}/v3/kv/compaction", urls[0]),
            &format!(r#"{{"revision":"{at}"}}"#),
        )
        .await;
        let mut old = tokio::process::Command::new(curl())
            .args(["-s", "-N", "--max-time", "60", "-X", "POST", "-d"])
            .arg(r#"{"create_request": {"key": "YQ==", "start_revision": "1"}}"#)
            .arg(format!("{}/v3alpha/watch", urls[2]))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("curl -N");
        let mut lines = BufReader::new(old.stdout.take().expect("curl's output")).lines();
        let mut cancelled = None;
        while cancelled.is_none() {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .expect("a watch answer in time")
                .expect("reading curl's output")
                .expect("a line");
            let line: Value = serde_json::from_str(&line).expect("a JSON line");
            if line["result"]["canceled"] == true {
                cancelled = Some(line);
            }
        }
        let cancelled = cancelled.unwrap_or_default();
        assert_eq!(
            cancelled["result"]["cancel_reason"],
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(int64(&cancelled["result"]["compact_revision"]), at);
        old.kill().await.expect("stopping curl");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_serves_https_on_a_tls_client_port_beside_grpc() {
    bounded(async {
        let mut cluster = crate::tls::TlsCluster::start(1, None);
        cluster.wait_ready(&[0]).await;
        let certs = &cluster.certs;
        let url = cluster.nodes[0].client_url();
        let tls_args = |extra: &[&str]| {
            let mut args: Vec<String> = vec![
                "--cacert".into(),
                certs.ca_cert.display().to_string(),
                "--cert".into(),
                certs.client_cert.display().to_string(),
                "--key".into(),
                certs.client_key.display().to_string(),
            ];
            args.extend(extra.iter().map(|arg| arg.to_string()));
            args
        };
        let call = |extra: &[&str]| {
            let args = tls_args(extra);
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                curl_with(&args).await
            }
        };
        // HTTP/1.1 (ALPN http/1.1) and HTTP/2 (ALPN h2) both reach the gateway.
        let put_url = format!("{url}/v3/kv/put");
        let put = call(&[
            "--http1.1",
            "-X",
            "POST",
            "-d",
            r#"{"key":"c2VjdXJl","value":"eWVz"}"#,
            &put_url,
        ])
        .await;
        assert_eq!(put.status, 200, "{put:?}");
        let range_url = format!("{url}/v3/kv/range");
        let range = call(&["--http2", "-X", "POST", "-d", r#"{"key":"c2VjdXJl"}"#, &range_url]).await;
        assert_eq!(
            (range.status, &range.json["kvs"][0]["value"]),
            (200, &Value::from("eWVz")),
            "{range:?}"
        );
        let health = call(&[&format!("{url}/health")]).await;
        assert_eq!(health.body, r#"{"health":"true","reason":""}"#);
        // gRPC on the same https port.
        let (success, out, err) = tokio::task::block_in_place(|| cluster.etcdctl(&[0], &["get", "secure"]));
        assert!(success && out.contains("yes"), "{out}{err}");
        // Without a client certificate the handshake is refused, gateway or not.
        let output = tokio::process::Command::new(curl())
            .args(["-s", "--max-time", "20", "--cacert"])
            .arg(&certs.ca_cert)
            .arg(format!("{url}/version"))
            .output()
            .await
            .expect("running curl");
        assert!(
            !output.status.success() && !String::from_utf8_lossy(&output.stdout).contains("etcdserver"),
            "served without a client certificate"
        );
    })
    .await;
}

/// `curl -X POST -H "Authorization: token" -d body url`, as etcd's gateway users send a
/// token from `/v3/auth/authenticate`.
async fn post_as(token: &str, url: &str, body: &str) -> Reply {
    let header = format!("Authorization: {token}");
    curl_with(&["-X", "POST", "-H", &header, "-d", body, url]).await
}

/// A 200 reply's JSON, for a call carrying `token`.
async fn ok_as(token: &str, url: &str, body: &str) -> Value {
    let reply = post_as(token, url, body).await;
    assert_eq!(reply.status, 200, "{url} {body}: {reply:?}");
    reply.json
}

/// The token `/v3/auth/authenticate` gives `name`.
async fn authenticate(url: &str, name: &str, password: &str) -> String {
    let reply = ok(
        &format!("{url}/v3/auth/authenticate"),
        &serde_json::json!({ "name": name, "password": password }).to_string(),
    )
    .await;
    let token = reply["token"].as_str().unwrap_or_else(|| panic!("no token in {reply}"));
    assert!(!token.is_empty());
    token.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn users_roles_and_tokens_through_the_gateways_auth_endpoints() {
    bounded(async {
        let cluster = Cluster::start(3).await;
        let urls = cluster.endpoints();
        let (a, b) = (&urls[0], &urls[1]);
        let auth = |url: &str, path: &str| format!("{url}/v3/auth/{path}");
        let range = |url: &str| format!("{url}/v3/kv/range");
        let key = |text: &str| serde_json::json!({ "key": base64(text) }).to_string();
        let (app, secret) = (key("app/config"), key("secret/key"));
        ok(
            &format!("{a}/v3/kv/put"),
            &format!(r#"{{"key":"{}","value":"{}"}}"#, base64("app/config"), base64("v1")),
        )
        .await;
        ok(
            &format!("{a}/v3/kv/put"),
            &format!(r#"{{"key":"{}","value":"{}"}}"#, base64("secret/key"), base64("s1")),
        )
        .await;

        // Users and roles through curl while auth is off (no token needed yet): root, and
        // alice holding a role that may read and write app/ only.
        let added = ok(&auth(a, "user/add"), r#"{"name":"root","password":"rootpw"}"#).await;
        assert!(added["header"]["revision"].is_string(), "{added}");
        ok(&auth(a, "user/grant"), r#"{"user":"root","role":"root"}"#).await;
        ok(&auth(a, "role/add"), r#"{"name":"app"}"#).await;
        let perm = serde_json::json!({
            "name": "app",
            "perm": { "permType": "READWRITE", "key": base64("app/"), "range_end": base64("app0") },
        });
        ok(&auth(a, "role/grant"), &perm.to_string()).await;
        ok(&auth(a, "user/add"), r#"{"name":"alice","password":"alicepw"}"#).await;
        ok(&auth(a, "user/grant"), r#"{"user":"alice","role":"app"}"#).await;
        assert_error(
            &post(&auth(a, "user/add"), r#"{"name":"alice","password":"again"}"#).await,
            400,
            9,
            "etcdserver: user name already exists",
        );
        assert_error(
            &post(&auth(a, "user/grant"), r#"{"user":"alice","role":"nope"}"#).await,
            400,
            9,
            "etcdserver: role name not found",
        );
        let role = ok(&auth(a, "role/get"), r#"{"role":"app"}"#).await;
        assert_eq!(
            role["perm"],
            serde_json::json!([{ "permType": "READWRITE", "key": base64("app/"), "range_end": base64("app0") }]),
            "{role}"
        );
        assert_eq!(
            ok(&auth(a, "user/get"), r#"{"name":"alice"}"#).await["roles"],
            serde_json::json!(["app"])
        );
        assert_eq!(
            ok(&auth(a, "user/list"), "").await["users"],
            serde_json::json!(["alice", "root"])
        );
        assert_eq!(
            ok(&auth(a, "role/list"), "{}").await["roles"],
            serde_json::json!(["app"])
        );
        let status = ok(&auth(a, "status"), "").await;
        assert!(status.get("enabled").is_none(), "off is left out: {status}");
        let revision_before: u64 = int64_u(&status["authRevision"]);
        assert_error(
            &post(&auth(a, "authenticate"), r#"{"name":"alice","password":"alicepw"}"#).await,
            400,
            9,
            "etcdserver: authentication is not enabled",
        );

        // Auth on, through curl; every member follows (the status of another member is
        // polled until it applied the change).
        ok(&auth(a, "enable"), "").await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            let status = ok(&format!("{b}/v3alpha/auth/status"), "{}").await;
            if status["enabled"] == true {
                break status;
            }
            assert!(Instant::now() < deadline, "{b} never saw auth enabled: {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(int64_u(&status["authRevision"]) > revision_before, "{status}");

        // A token from one member, used on another in the Authorization header.
        let token = authenticate(a, "alice", "alicepw").await;
        let read = ok_as(&token, &range(b), &app).await;
        assert_eq!(read["kvs"][0]["value"], base64("v1"), "{read}");
        let put = post_as(
            &token,
            &format!("{b}/v3/kv/put"),
            &format!(r#"{{"key":"{}","value":"{}"}}"#, base64("app/config"), base64("v2")),
        )
        .await;
        assert_eq!(put.status, 200, "{put:?}");
        // Outside the role's prefix, etcd's refusal with grpc-gateway's 403.
        let denied = post_as(&token, &range(b), &secret).await;
        assert_eq!(
            denied.body,
            r#"{"error":"etcdserver: permission denied","code":7,"message":"etcdserver: permission denied"}"#
        );
        assert_error(&denied, 403, 7, "etcdserver: permission denied");
        let wide = serde_json::json!({ "key": base64("app"), "range_end": base64("app0") }).to_string();
        assert_error(
            &post_as(&token, &range(a), &wide).await,
            403,
            7,
            "etcdserver: permission denied",
        );
        // No token, a forged one, a wrong password.
        assert_error(&post(&range(b), &app).await, 400, 3, "etcdserver: user name is empty");
        let forged = format!("{}x", &token[..token.len() - 1]);
        assert_error(
            &post_as(&forged, &range(b), &app).await,
            401,
            16,
            "etcdserver: invalid auth token",
        );
        assert_error(
            &post(&auth(b, "authenticate"), r#"{"name":"alice","password":"wrong"}"#).await,
            400,
            3,
            "etcdserver: authentication failed, invalid user ID or password",
        );
        // Managing users and roles now takes root's token.
        assert_error(
            &post(&auth(b, "user/list"), "{}").await,
            400,
            3,
            "etcdserver: user name is empty",
        );
        assert_error(
            &post_as(&token, &auth(b, "user/list"), "{}").await,
            403,
            7,
            "etcdserver: permission denied",
        );
        let admin = ok(
            &format!("{b}/v3beta/auth/authenticate"),
            r#"{"name":"root","password":"rootpw"}"#,
        )
        .await["token"]
            .as_str()
            .expect("a token")
            .to_string();
        assert_eq!(
            ok_as(&admin, &auth(b, "user/list"), "{}").await["users"],
            serde_json::json!(["alice", "root"])
        );
        assert_eq!(
            ok_as(&format!("Bearer {admin}"), &range(b), &secret).await["kvs"][0]["value"],
            base64("s1")
        );

        // Each change of users or roles makes every earlier token stale (root's too: it
        // authenticates again for each change, as etcdctl does).
        let root = || authenticate(a, "root", "rootpw");
        ok_as(
            &root().await,
            &auth(a, "user/changepw"),
            r#"{"name":"alice","password":"newpw"}"#,
        )
        .await;
        assert_error(
            &post_as(&token, &range(a), &app).await,
            400,
            3,
            "etcdserver: revision of auth store is old",
        );
        let token = authenticate(a, "alice", "newpw").await;
        assert_eq!(ok_as(&token, &range(a), &app).await["kvs"][0]["value"], base64("v2"));
        // Without the permission, the role no longer reads app/.
        let revoke = serde_json::json!({ "role": "app", "key": base64("app/"), "range_end": base64("app0") });
        ok_as(&root().await, &auth(a, "role/revoke"), &revoke.to_string()).await;
        assert_eq!(
            ok_as(&root().await, &auth(a, "role/get"), r#"{"role":"app"}"#)
                .await
                .get("perm"),
            None
        );
        let token = authenticate(a, "alice", "newpw").await;
        assert_error(
            &post_as(&token, &range(a), &app).await,
            403,
            7,
            "etcdserver: permission denied",
        );
        ok_as(
            &root().await,
            &auth(a, "user/revoke"),
            r#"{"name":"alice","role":"app"}"#,
        )
        .await;
        assert_eq!(
            ok_as(&root().await, &auth(a, "user/get"), r#"{"name":"alice"}"#)
                .await
                .get("roles"),
            None
        );
        ok_as(&root().await, &auth(a, "role/delete"), r#"{"role":"app"}"#).await;
        ok_as(&root().await, &auth(a, "user/delete"), r#"{"name":"alice"}"#).await;
        let root = root().await;
        assert_eq!(
            ok_as(&root, &auth(a, "user/list"), "").await["users"],
            serde_json::json!(["root"])
        );
        assert_eq!(ok_as(&root, &auth(a, "role/list"), "").await.get("roles"), None);
        assert_error(
            &post_as(&root, &auth(a, "user/delete"), r#"{"name":"root"}"#).await,
            400,
            3,
            "etcdserver: invalid auth management",
        );
        assert_error(
            &post(&auth(a, "authenticate"), r#"{"name":"alice","password":"newpw"}"#).await,
            400,
            3,
            "etcdserver: authentication failed, invalid user ID or password",
        );

        // Auth off again: calls need no token.
        ok_as(&root, &auth(a, "disable"), "").await;
        assert_eq!(ok(&range(a), &secret).await["kvs"][0]["value"], base64("s1"));
    })
    .await;
}
