//! etcd's authentication and role-based access through the unchanged etcdctl and raw
//! gRPC: users, roles, permissions over prefixes, etcd's errors, tokens checked by every
//! member and made stale by a change of the auth store, state kept across restarts; and
//! the crate's Rust client calling as a user.

use crate::support::{bounded, bytes, channel, redis_cli, run_etcdctl, Cluster};
use shoal::client::{prefix_range_end, Client, ClientError};
use shoal::proto::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, lease_client::LeaseClient, watch_client::WatchClient, watch_request,
    AuthenticateRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use std::time::Duration;
use tonic::metadata::MetadataValue;

/// The replies of redis-cli to `commands`, one line each, sent on one connection.
fn redis(port: u16, commands: &str) -> Vec<String> {
    use std::io::Write;
    let mut child = std::process::Command::new(redis_cli())
        .args(["-p", &port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting redis-cli");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(commands.as_bytes())
        .expect("writing to redis-cli");
    let output = child.wait_with_output().expect("redis-cli output");
    // redis-cli follows an error with an empty line when piped.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect()
}

/// etcdctl as `user` ("name:password", or none), expected to succeed; its stdout.
fn ok(endpoints: &[String], user: Option<&str>, args: &[&str]) -> String {
    let (success, stdout, stderr) = etcdctl(endpoints, user, args);
    assert!(success, "etcdctl {args:?} as {user:?}: {stdout}{stderr}");
    stdout
}

fn etcdctl(endpoints: &[String], user: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<String> = user.map(|user| format!("--user={user}")).into_iter().collect();
    all.extend(args.iter().map(|arg| arg.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    run_etcdctl(endpoints, &all, None)
}

/// etcdctl as `user`, expected to fail with `message`.
fn refused(endpoints: &[String], user: Option<&str>, args: &[&str], message: &str) {
    let (success, stdout, stderr) = etcdctl(endpoints, user, args);
    assert!(!success, "etcdctl {args:?} as {user:?} succeeded: {stdout}");
    assert!(stderr.contains(message), "etcdctl {args:?} as {user:?}: {stderr}");
}

async fn token(url: &str, name: &str, password: &str) -> String {
    AuthClient::new(channel(url).await)
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .expect("authenticate")
        .into_inner()
        .token
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("token", MetadataValue::try_from(token).expect("an ASCII token"));
    request
}

async fn get(url: &str, token: &str, key: &str) -> Result<Vec<String>, tonic::Status> {
    let response = KvClient::new(channel(url).await)
        .range(with_token(
            RangeRequest {
                key: bytes(key),
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner();
    Ok(response
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .collect())
}

#[tokio::test]
async fn roles_limit_users_to_their_keys_once_auth_is_on() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        let all: Vec<String> = cluster.nodes.iter().map(|node| node.client_url()).collect();
        let one = &all[..1];
        let other = &all[2..3];

        // Users and roles are managed before auth is on without credentials, as in etcd.
        ok(one, None, &["user", "add", "root:rootpw"]);
        ok(one, None, &["user", "grant-role", "root", "root"]);
        ok(one, None, &["user", "add", "alice:alicepw"]);
        ok(one, None, &["role", "add", "app-read"]);
        ok(
            one,
            None,
            &["role", "grant-permission", "app-read", "read", "app/", "--prefix=true"],
        );
        ok(one, None, &["role", "add", "app-own"]);
        ok(
            one,
            None,
            &[
                "role",
                "grant-permission",
                "app-own",
                "readwrite",
                "app/alice/",
                "--prefix=true",
            ],
        );
        ok(one, None, &["user", "grant-role", "alice", "app-read"]);
        ok(one, None, &["user", "grant-role", "alice", "app-own"]);
        refused(
            one,
            None,
            &["user", "add", "alice:again"],
            "etcdserver: user name already exists",
        );
        refused(
            one,
            None,
            &["user", "grant-role", "alice", "nope"],
            "etcdserver: role name not found",
        );
        ok(one, None, &["put", "app/config", "v1"]);
        ok(one, None, &["put", "secret/key", "s1"]);
        let roles = ok(one, None, &["user", "get", "alice"]);
        assert!(roles.contains("app-read") && roles.contains("app-own"), "{roles}");
        let role = ok(one, None, &["role", "get", "app-read"]);
        assert!(role.contains("[app/, app0) (prefix app/)"), "{role}");

        let redis_port = cluster.nodes[1].redis_port;
        assert_eq!(redis(redis_port, "SET r v\n"), vec!["OK"]);
        let enabled = ok(one, None, &["auth", "enable"]);
        assert!(enabled.contains("Authentication Enabled"), "{enabled}");

        // Who is asking, and with what.
        refused(other, None, &["get", "app/config"], "etcdserver: user name is empty");
        refused(
            other,
            Some("alice:wrong"),
            &["get", "app/config"],
            "etcdserver: authentication failed, invalid user ID or password",
        );
        refused(
            other,
            Some("mallory:x"),
            &["get", "app/config"],
            "etcdserver: authentication failed, invalid user ID or password",
        );
        let read = ok(other, Some("alice:alicepw"), &["get", "app/config"]);
        assert_eq!(read, "app/config\nv1\n");
        refused(
            other,
            Some("alice:alicepw"),
            &["put", "app/config", "v2"],
            "etcdserver: permission denied",
        );
        refused(
            other,
            Some("alice:alicepw"),
            &["get", "secret/key"],
            "etcdserver: permission denied",
        );
        refused(
            other,
            Some("alice:alicepw"),
            &["get", "app", "--prefix"],
            "etcdserver: permission denied",
        );
        ok(other, Some("alice:alicepw"), &["put", "app/alice/note", "mine"]);
        ok(other, Some("alice:alicepw"), &["get", "app/", "--prefix"]);
        refused(
            other,
            Some("alice:alicepw"),
            &["user", "list"],
            "etcdserver: permission denied",
        );
        let users = ok(other, Some("root:rootpw"), &["user", "list"]);
        assert_eq!(users, "alice\nroot\n");
        assert_eq!(
            ok(other, Some("root:rootpw"), &["get", "secret/key", "--print-value-only"]),
            "s1\n"
        );
        refused(
            other,
            Some("root:rootpw"),
            &["user", "delete", "root"],
            "etcdserver: invalid auth management",
        );

        // The Redis port follows: AUTH as a cluster user; data commands need root.
        assert_eq!(
            redis(
                redis_port,
                "GET r\nPING\nAUTH alice wrong\nAUTH alice alicepw\nPING\nGET r\nAUTH root rootpw\nGET r\n"
            ),
            vec![
                "NOAUTH Authentication required.",
                "NOAUTH Authentication required.",
                "WRONGPASS invalid username-password pair or user is disabled.",
                "OK",
                "PONG",
                "NOPERM User alice has no permissions to run the 'get' command",
                "OK",
                "v",
            ]
        );

        // Redis ACLs over the same users: key patterns and command rules.
        assert_eq!(
            redis(
                redis_port,
                "AUTH root rootpw\nACL SETUSER bob on >bobpw ~cache:* +@read +set\nACL SETUSER bob +nosuchcommand\nACL WHOAMI\n"
            ),
            vec![
                "OK",
                "OK",
                "ERR Error in ACL SETUSER modifier '+nosuchcommand': Unknown command or category name in ACL",
                "root",
            ]
        );
        assert_eq!(
            redis(
                cluster.nodes[2].redis_port,
                "AUTH bob bobpw\nSET cache:1 a\nGET cache:1\nGET other\nDEL cache:1\nKEYS *\nACL WHOAMI\nACL LIST\n"
            ),
            vec![
                "OK",
                "OK",
                "a",
                "NOPERM No permissions to access a key",
                "NOPERM User bob has no permissions to run the 'del' command",
                "NOPERM No permissions to access a key",
                "bob",
                "NOPERM User bob has no permissions to run the 'acl|list' command",
            ]
        );
        let bob = redis(redis_port, "AUTH root rootpw\nACL GETUSER bob\n");
        assert!(bob.contains(&"~cache:*".to_string()) && bob.contains(&"+@read +set".to_string()), "{bob:?}");
        assert!(ok(one, Some("root:rootpw"), &["user", "list"]).contains("bob"), "one set of users");
        assert_eq!(
            redis(redis_port, "AUTH root rootpw\nACL DELUSER bob nobody\nAUTH bob bobpw\n"),
            vec!["OK", "1", "WRONGPASS invalid username-password pair or user is disabled."]
        );

        // Raw gRPC: a token from one member works on every member.
        let token = token(&all[0], "alice", "alicepw").await;
        for url in &all {
            assert_eq!(get(url, &token, "app/config").await.unwrap(), vec!["v1".to_string()]);
        }
        let forged = format!("{}x", &token[..token.len() - 1]);
        let status = get(&all[1], &forged, "app/config").await.expect_err("a forged token");
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::Unauthenticated, "etcdserver: invalid auth token")
        );
        let status = KvClient::new(channel(&all[1]).await)
            .put(with_token(
                PutRequest {
                    key: bytes("app/config"),
                    value: bytes("x"),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .expect_err("a put without write permission");
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::PermissionDenied, "etcdserver: permission denied")
        );

        // A watch wider than the permission is cancelled at creation; one inside works.
        let (requests, receiver) = tokio::sync::mpsc::channel(4);
        let mut responses = WatchClient::new(channel(&all[1]).await)
            .watch(with_token(
                tokio_stream::wrappers::ReceiverStream::new(receiver),
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        let create = |key: &str, end: &str| WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: bytes(key),
                range_end: bytes(end),
                ..Default::default()
            })),
        };
        requests.send(create("app", "app0")).await.unwrap();
        let answer = responses.message().await.unwrap().unwrap();
        assert!(answer.created && answer.canceled, "{answer:?}");
        assert_eq!(answer.cancel_reason, "etcdserver: permission denied");
        requests.send(create("app/", "app0")).await.unwrap();
        let answer = responses.message().await.unwrap().unwrap();
        assert!(answer.created && !answer.canceled, "{answer:?}");

        // Revoking a role takes effect on the next call: the old token is stale, a new
        // one no longer reads.
        ok(one, Some("root:rootpw"), &["user", "revoke-role", "alice", "app-read"]);
        let status = get(&all[0], &token, "app/config")
            .await
            .expect_err("a token from before the change");
        assert_eq!(status.message(), "etcdserver: revision of auth store is old");
        refused(
            one,
            Some("alice:alicepw"),
            &["get", "app/config"],
            "etcdserver: permission denied",
        );
        ok(one, Some("alice:alicepw"), &["get", "app/alice/note"]);

        // The auth store survives a restart of every member.
        for index in 0..3 {
            cluster.stop(index);
        }
        for index in 0..3 {
            cluster.restart(index);
        }
        cluster.wait_ready(Duration::from_secs(30)).await;
        refused(other, None, &["get", "app/config"], "etcdserver: user name is empty");
        assert_eq!(
            ok(
                other,
                Some("alice:alicepw"),
                &["get", "app/alice/note", "--print-value-only"]
            ),
            "mine\n"
        );

        let disabled = ok(one, Some("root:rootpw"), &["auth", "disable"]);
        assert!(disabled.contains("Authentication Disabled"), "{disabled}");
        assert_eq!(ok(other, None, &["get", "secret/key", "--print-value-only"]), "s1\n");
    })
    .await;
}

/// The gRPC status of a client call expected to fail.
fn status_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> tonic::Status {
    match result {
        Err(ClientError::Status(status)) => status,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn value(kv: Option<shoal::proto::mvccpb::KeyValue>) -> Option<String> {
    kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_client_calls_as_a_user_and_renews_its_stale_token() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        let all: Vec<String> = cluster.endpoints();
        // etcdctl as root through one member: the change is applied there when it returns.
        let admin = |member: usize, args: &[&str]| {
            tokio::task::block_in_place(|| ok(&all[member..=member], Some("root:rootpw"), args));
        };
        // Set up through the member the clients call first, so it has auth on at once.
        let setup = |args: &[&str]| {
            tokio::task::block_in_place(|| ok(&all[0..1], None, args));
        };
        setup(&["user", "add", "root:rootpw"]);
        setup(&["user", "grant-role", "root", "root"]);
        setup(&["role", "add", "app-rw"]);
        setup(&[
            "role",
            "grant-permission",
            "app-rw",
            "readwrite",
            "app/",
            "--prefix=true",
        ]);
        setup(&["user", "add", "bob:bobpw"]);
        setup(&["user", "grant-role", "bob", "app-rw"]);
        setup(&["put", "secret/key", "s1"]);
        setup(&["auth", "enable"]);

        // A wrong password is refused when connecting; no credentials get nothing.
        let wrong = Client::connect_with_credentials(&all, "bob", "wrong").await.map(|_| ());
        let status = status_of(wrong);
        assert_eq!(
            (status.code(), status.message()),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password"
            )
        );
        let anonymous = Client::connect(&all).await.unwrap();
        assert_eq!(
            status_of(anonymous.get("app/a").await).message(),
            "etcdserver: user name is empty"
        );

        // Inside its permission the client works; outside it is refused, writes and
        // reads and watches alike.
        let client = Client::connect_with_credentials(&all, "bob", "bobpw").await.unwrap();
        client.put("app/a", "1", 0).await.unwrap();
        assert_eq!(value(client.get("app/a").await.unwrap()), Some("1".into()));
        let denied = status_of(client.put("other/x", "1", 0).await);
        assert_eq!(
            (denied.code(), denied.message()),
            (tonic::Code::PermissionDenied, "etcdserver: permission denied")
        );
        let denied = status_of(client.get("secret/key").await);
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
        let denied = status_of(
            client
                .watch("secret/", prefix_range_end(b"secret/"), 0, false)
                .await
                .map(|_| ()),
        );
        assert_eq!(
            (denied.code(), denied.message()),
            (tonic::Code::PermissionDenied, "etcdserver: permission denied")
        );
        let mut watch = client.watch("app/", prefix_range_end(b"app/"), 0, false).await.unwrap();

        // root revokes bob's role and grants it again (through the member the client
        // uses): the auth store moved on, bob's token is stale (checked with one taken
        // before), and the client authenticates again by itself on its next call.
        let before = token(&all[0], "bob", "bobpw").await;
        admin(0, &["user", "revoke-role", "bob", "app-rw"]);
        admin(0, &["user", "grant-role", "bob", "app-rw"]);
        let stale = get(&all[0], &before, "app/a")
            .await
            .expect_err("a token from before the change");
        assert_eq!(stale.message(), "etcdserver: revision of auth store is old");
        client.put("app/b", "2", 0).await.unwrap();
        assert_eq!(value(client.get("app/b").await.unwrap()), Some("2".into()));
        // A lease kept alive by a client of its own (no other call renews its token).
        let keeper = Client::connect_with_credentials(&all, "bob", "bobpw").await.unwrap();
        let lease = keeper.grant(10).await.unwrap();
        let keep_alive = keeper.keep_alive(lease);
        client.put("app/leased", "x", lease).await.unwrap();

        // Once more, and then the member the client (and its watch) used goes away: the
        // calls and the watch move to another member, which refuses the stale token too,
        // and go on.
        let before = token(&all[1], "bob", "bobpw").await;
        admin(1, &["user", "revoke-role", "bob", "app-rw"]);
        admin(1, &["user", "grant-role", "bob", "app-rw"]);
        let stale = get(&all[1], &before, "app/b")
            .await
            .expect_err("a token from before the change");
        assert_eq!(stale.message(), "etcdserver: revision of auth store is old");
        cluster.stop(0);
        cluster.wait_ready(Duration::from_secs(30)).await;
        assert_eq!(value(client.get("app/b").await.unwrap()), Some("2".into()));
        client.put("app/c", "3", 0).await.unwrap();
        client.delete("app/a").await.unwrap();
        let denied = status_of(client.put("other/y", "1", 0).await);
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

        // The lease's keep-alive stream came back too: its remaining TTL goes up again.
        let mut leases = LeaseClient::new(channel(&all[1]).await);
        let fresh = token(&all[1], "bob", "bobpw").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut lowest = i64::MAX;
        loop {
            let ttl = leases
                .lease_time_to_live(with_token(LeaseTimeToLiveRequest { id: lease, keys: false }, &fresh))
                .await
                .expect("the lease's time to live")
                .into_inner()
                .ttl;
            assert!(ttl > 0, "the lease expired");
            if ttl > lowest {
                break;
            }
            lowest = lowest.min(ttl);
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lease was not renewed since {}",
                all[0]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(keep_alive.is_alive());

        // The watch made before any of it resumed on another member with a new token and
        // lost nothing.
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let event = tokio::time::timeout(Duration::from_secs(30), watch.next())
                .await
                .expect("the watch delivers within 30 s")
                .expect("a watch event");
            let kv = event.kv.expect("an event's key");
            seen.push(String::from_utf8_lossy(&kv.key).into_owned());
        }
        assert_eq!(seen, ["app/b", "app/leased", "app/c", "app/a"]);
    })
    .await;
}
