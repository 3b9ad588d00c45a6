//! The wire protocol through Switchyard with real clients (tokio-postgres, psql,
//! pgbench) and raw bytes: authentication both ways, extended protocol, COPY,
//! LISTEN/NOTIFY, cancel, and refusals of bad input with the right SQLSTATE.

mod harness;

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use harness::clients::*;
use harness::fake_patroni::{FakePatroni, FakeRole};
use harness::pg::shared_cluster;
use harness::proxy::*;
use harness::raw_client::*;
use harness::wait::*;
use switchyard::proxy::RunningProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy whose only node is the shared cluster's primary.
async fn proxy_on_primary(extra: &str) -> (RunningProxy, FakePatroni) {
    let cluster = shared_cluster().await;
    let extra = format!(
        "{extra}{}",
        std::env::var("SY_TEST_EXTRA").unwrap_or_default()
    );
    proxy_for(cluster.port(0), &extra).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_server_auth_method_and_md5_clients_work() {
    let (proxy, _api) = proxy_on_primary("").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    // Server side: app = SCRAM, app_md5 = MD5, app_clear = cleartext, app_trust = trust.
    // Client side: app_md5 is configured for MD5 client auth, the rest SCRAM.
    for (user, password) in [
        ("app", "app_pw"),
        ("app_md5", "app_md5_pw"),
        ("app_clear", "app_clear_pw"),
        ("app_trust", "trust_pw"),
    ] {
        let client = connect(rw, user, password).await;
        let who: String = client
            .query_one("select current_user::text", &[])
            .await
            .expect("query")
            .get(0);
        assert_eq!(who, user);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_and_unknown_user_get_the_same_28p01() {
    let (proxy, _api) = proxy_on_primary("").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let mut messages = Vec::new();
    for (user, password) in [
        ("app", "wrong"),
        ("nobody", "whatever"),
        ("app_md5", "wrong"),
    ] {
        let error = try_connect(rw, user, password).await.expect_err("refused");
        let db_error = error.as_db_error().expect("server error");
        assert_eq!(db_error.code().code(), "28P01", "{user}");
        messages.push(db_error.message().replace(user, "USER"));
    }
    assert!(
        messages
            .iter()
            .all(|m| m == "password authentication failed for user \"USER\""),
        "{messages:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol_and_pipelining_through_tokio_postgres() {
    let (proxy, _api) = proxy_on_primary("").await;
    let client = connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw").await;
    let statement = client
        .prepare("select $1::int + $2::int, $3::text")
        .await
        .expect("prepare");
    for i in 0..20 {
        let row = client
            .query_one(&statement, &[&i, &1i32, &"x"])
            .await
            .expect("execute");
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }
    // Pipelined: several queries in flight at once on one connection.
    let (a, b, c) = tokio::join!(
        client.query_one("select 1::int", &[]),
        client.query_one("select repeat('y', 100000)", &[]),
        client.query_one("select $1::bigint", &[&7i64]),
    );
    assert_eq!(a.expect("a").get::<_, i32>(0), 1);
    assert_eq!(b.expect("b").get::<_, String>(0).len(), 100_000);
    assert_eq!(c.expect("c").get::<_, i64>(0), 7);
    // A failed statement leaves the session usable.
    assert!(client.query_one("select 1/0", &[]).await.is_err());
    assert_eq!(
        client
            .query_one("select 2::int", &[])
            .await
            .expect("after error")
            .get::<_, i32>(0),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_in_and_out() {
    let (proxy, _api) = proxy_on_primary("").await;
    let client = connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw").await;
    client
        .batch_execute(
            "drop table if exists copy_probe; create table copy_probe(id int, name text)",
        )
        .await
        .expect("create");
    let sink = client
        .copy_in("copy copy_probe from stdin")
        .await
        .expect("copy in");
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\tname-{i}\n"));
    }
    let mut sink = Box::pin(sink);
    sink.send(bytes::Bytes::from(data))
        .await
        .expect("send copy data");
    let rows = sink.as_mut().finish().await.expect("finish copy");
    assert_eq!(rows, 5000);

    let stream = client
        .copy_out("copy (select * from copy_probe order by id) to stdout")
        .await
        .expect("copy out");
    let mut stream = Box::pin(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(text.lines().count(), 5000);
    assert!(text.starts_with("0\tname-0\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_notify_across_two_clients() {
    let (proxy, _api) = proxy_on_primary("").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let (listener, mut connection) = tokio_postgres::connect(
        &conn_str(rw, "app", "app_pw", "appdb"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect listener");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = message {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener
        .batch_execute("listen switchyard_events")
        .await
        .expect("listen");
    let notifier = connect(rw, "app", "app_pw").await;
    notifier
        .batch_execute("notify switchyard_events, 'hello'")
        .await
        .expect("notify");
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("notification in time");
    assert_eq!(got, Some(("switchyard_events".into(), "hello".into())));
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_the_running_query() {
    let (proxy, _api) = proxy_on_primary("").await;
    let client = connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw").await;
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { client.batch_execute("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    let result = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("query ends")
        .expect("join");
    let error = result.expect_err("cancelled");
    assert_eq!(error.code().map(|c| c.code()), Some("57014"));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_and_pgbench_work_unmodified() {
    let (proxy, _api) = proxy_on_primary("").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let port = rw.port().to_string();
    let psql = blocking(move || {
        Command::new("psql")
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "app",
                "-d",
                "appdb",
                "-Atc",
                "select 40 + 2",
            ])
            .env("PGPASSWORD", "app_pw")
            .output()
            .expect("run psql")
    })
    .await;
    assert!(
        psql.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), "42");

    let pgbench = harness::pg::pg_bin("pgbench");
    let port = rw.port().to_string();
    let output = blocking(move || {
        let run = |args: &[&str]| {
            let output = Command::new(&pgbench)
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "app"])
                .args(args)
                .arg("appdb")
                .env("PGPASSWORD", "app_pw")
                .output()
                .expect("run pgbench");
            assert!(
                output.status.success(),
                "pgbench {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        run(&["-i", "-s", "1", "-q"]);
        let mut outputs = Vec::new();
        for mode in ["simple", "extended", "prepared"] {
            outputs.push(run(&["-c", "4", "-j", "2", "-t", "50", "-M", mode]));
        }
        outputs
    })
    .await;
    for out in output {
        assert!(out.contains("number of failed transactions: 0"), "{out}");
        assert!(
            out.contains("number of transactions actually processed: 200/200"),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ssl_and_gss_requests_are_declined_and_old_protocols_refused() {
    let (proxy, _api) = proxy_on_primary("").await;
    let rw = proxy.listener_addr("rw").expect("rw");

    let mut stream = raw_connect(rw).await;
    stream
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .expect("ssl request");
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"N");
    stream
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .expect("gss request");
    stream.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"N");
    stream
        .write_all(&startup_packet(
            196608,
            &[("user", "app"), ("database", "appdb")],
        ))
        .await
        .expect("startup");
    let (tag, _) = read_message(&mut stream).await;
    assert_eq!(tag, b'R', "authentication request after declining TLS");

    let mut stream = raw_connect(rw).await;
    stream
        .write_all(&startup_packet(2 << 16, &[("user", "app")]))
        .await
        .expect("v2 startup");
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!((tag, sqlstate(&body).as_str()), (b'E', "0A000"));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_input_gets_08p01() {
    let (proxy, _api) = proxy_on_primary("client: { max_message_size: 64kB }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");

    // A startup packet claiming to be 1 GB.
    let mut stream = raw_connect(rw).await;
    stream
        .write_all(&[0x40, 0, 0, 0, 0, 3, 0, 0])
        .await
        .expect("write");
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!((tag, sqlstate(&body).as_str()), (b'E', "08P01"));

    // A startup packet whose parameters are not NUL-terminated.
    let mut stream = raw_connect(rw).await;
    let mut packet = startup_packet(196608, &[("user", "app")]);
    packet.truncate(packet.len() - 2);
    let len = packet.len() as u32;
    packet[..4].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&packet).await.expect("write");
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!((tag, sqlstate(&body).as_str()), (b'E', "08P01"));

    // After login: a query larger than max_message_size ends the session cleanly.
    let client = connect(rw, "app", "app_pw").await;
    let huge = format!("select '{}'", "x".repeat(100 * 1024));
    let error = client.batch_execute(&huge).await.expect_err("too large");
    assert!(
        error.as_db_error().map(|e| e.code().code()) == Some("08P01") || error.is_closed(),
        "{error:?}"
    );
    // Small queries on a fresh session still work.
    let client = connect(rw, "app", "app_pw").await;
    client.batch_execute("select 1").await.expect("fine");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stalls_in_startup_is_timed_out() {
    let (proxy, _api) = proxy_on_primary("client: { startup_timeout: 300ms }\n").await;
    let mut stream = raw_connect(proxy.listener_addr("rw").expect("rw")).await;
    stream.write_all(&[0, 0, 0]).await.expect("partial packet");
    let started = Instant::now();
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!((tag, sqlstate(&body).as_str()), (b'E', "08P01"));
    assert!(String::from_utf8_lossy(&body).contains("startup did not finish"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_server_and_missing_database_are_reported() {
    let api = FakePatroni::start(FakeRole::Primary, 1).await;
    let dead_port = harness::proc::free_port();
    let nodes = [NodeSpec {
        name: "ghost".into(),
        port: dead_port,
        api: api.url(),
    }];
    let proxy = start_proxy(&config_yaml(&nodes, "primary", "")).await;
    let error = try_connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw")
        .await
        .expect_err("no server");
    let db_error = error.as_db_error().expect("server error");
    assert_eq!(db_error.code().code(), "08006");
    assert!(
        db_error.message().contains("ghost"),
        "{}",
        db_error.message()
    );

    let (proxy, _api) = proxy_on_primary("").await;
    let addr = proxy.listener_addr("rw").expect("rw");
    let result = tokio_postgres::connect(
        &conn_str(addr, "app", "app_pw", "no_such_db"),
        tokio_postgres::NoTls,
    )
    .await;
    let Err(error) = result else {
        panic!("connecting to a missing database must fail")
    };
    assert_eq!(error.as_db_error().map(|e| e.code().code()), Some("3D000"));
}

/// A client may send its first query in the same packet as its password, without
/// waiting for AuthenticationOk: the proxy reads the startup phase in whole flights,
/// and what follows the password is the session's first input, in both pool modes.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_sent_with_the_password_is_answered() {
    for mode in ["transaction", "session"] {
        let (proxy, _api) = proxy_on_primary(&format!("pool: {{ mode: {mode} }}\n")).await;
        let rw = proxy.listener_addr("rw").expect("rw");
        // Twice: the first login fills the pool's greeting cache, the second uses it.
        for attempt in 0..2 {
            let (mut stream, mut flight) = md5_login_started(rw).await;
            flight.extend(query_msg("select 40 + 2"));
            stream.write_all(&flight).await.expect("password and query");

            let mut seen = Vec::new();
            let mut row = None;
            let mut ready = 0;
            while ready < 2 {
                let (tag, body) = read_message(&mut stream).await;
                assert_ne!(
                    tag,
                    b'E',
                    "{mode} #{attempt}: {}",
                    String::from_utf8_lossy(&body)
                );
                match tag {
                    b'Z' => ready += 1,
                    b'D' => row = Some(body[6..].to_vec()),
                    _ => {}
                }
                seen.push(tag as char);
            }
            assert_eq!(
                row.as_deref(),
                Some(&b"42"[..]),
                "{mode} #{attempt}: {seen:?}"
            );
            assert_eq!(seen.first(), Some(&'R'), "AuthenticationOk first: {seen:?}");
            assert_eq!(&seen[seen.len() - 4..], &['T', 'D', 'C', 'Z']);
        }
    }
}
