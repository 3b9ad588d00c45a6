//! PAUSE in session mode (README "Zero-error maintenance"): a session stops at its
//! next idle boundary, PAUSE returns only once every session is there, and after a
//! switchover during the pause (a real primary stopped and its real replica
//! promoted, behind fake Patroni APIs) a session moves to the new primary with its
//! settings, prepared statements and cancel key, unless it owns state that cannot
//! move (a temporary table), which gets a FATAL naming it. A query a raw client
//! sent while held runs once, on the new primary.

mod harness;

use std::time::Duration;

use futures_util::SinkExt;

use harness::clients::*;
use harness::console::*;
use harness::fake_patroni::FakeRole;
use harness::pg::PgCluster;
use harness::proxy::*;
use harness::raw_client::*;
use harness::wait::*;

/// A session's setup that pins it to its server, and the words of its refusal.
const PINNED: [(&str, &str); 4] = [
    ("create temp table scratch(x int)", "had temporary tables"),
    ("select pg_advisory_lock(17)", "held session advisory locks"),
    ("listen moving_channel", "was listening for notifications"),
    (
        "begin; declare held cursor with hold for select 1; commit",
        "had open WITH HOLD cursors",
    ),
];

/// Backend message types these tests read.
mod tag_byte {
    pub const NOTIFICATION: u8 = b'A';
}

const SESSION_MODE: &str = "pool: { mode: session, size: 10 }\nfailover: { hold_timeout: 30s }\n";

#[tokio::test(flavor = "multi_thread")]
async fn pause_holds_a_session_mode_transaction_until_it_ends_then_resumes_on_the_same_server() {
    let cluster = harness::pg::shared_cluster().await;
    let (yaml, _api) = config_for(cluster.port(0), SESSION_MODE).await;
    let proxy = start_proxy(&with_console(&yaml)).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let inside = connect(rw, "app", "app_pw").await;
    let pid = backend_pid(&inside, "inside").await;
    let mut listener = RawClient::login(rw, "listener").await;
    listener
        .round_trip(&query_msg("listen pause_channel"))
        .await;
    let idle = connect(rw, "app", "app_pw").await;
    // Its last message was a CopyDone: still a boundary where PAUSE can stop it.
    idle.batch_execute("create temp table copied(x int)")
        .await
        .expect("temp table");
    let sink = idle
        .copy_in("copy copied from stdin")
        .await
        .expect("copy in");
    let mut sink = Box::pin(sink);
    sink.send(bytes::Bytes::from_static(b"1\n2\n"))
        .await
        .expect("copy data");
    assert_eq!(sink.as_mut().finish().await.expect("finish copy"), 2);
    inside.batch_execute("begin").await.expect("begin");

    let mut console = RawConsole::login(rw).await;
    let pause = tokio::spawn(async move {
        let reply = console.query("PAUSE").await;
        (reply.tag, reply.error, console)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE waits for the session-mode transaction"
    );
    // The transaction keeps running under PAUSE, as in PgBouncer.
    inside
        .batch_execute("select 1")
        .await
        .expect("inside the transaction");
    inside.batch_execute("commit").await.expect("commit");
    let (tag, error, mut console) = within(5, "PAUSE returns", pause).await.expect("join");
    assert_eq!(tag.as_deref(), Some("PAUSE"), "{error:?}");

    let held = tokio::spawn(async move {
        let value = simple_value(&idle, "select 42", "idle").await;
        (value, idle)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "an idle session's next query is held");
    let clients = console.query("SHOW CLIENTS").await;
    assert!(
        !clients
            .column("state")
            .contains(&Some("active".to_string())),
        "held sessions are not active: {clients:?}"
    );
    // A notification for a held session waits on its server connection; the
    // proxy's own check on RESUME must pass it on, not swallow it.
    direct(cluster.port(0))
        .await
        .batch_execute("notify pause_channel, 'while paused'")
        .await
        .expect("notify");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(console.query("RESUME").await.tag.as_deref(), Some("RESUME"));
    let notification = listener.until(tag_byte::NOTIFICATION).await;
    let payload = notification.last().map(|m| m.1.clone()).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&payload).contains("while paused"),
        "{notification:?}"
    );
    let (value, _idle) = within(5, "the held query runs", held).await.expect("join");
    assert_eq!(value.as_deref(), Some("42"));
    assert_eq!(
        backend_pid(&inside, "inside").await,
        pid,
        "without a switchover a session keeps its server connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn switchover_under_pause_moves_plain_sessions_and_refuses_pinned_ones() {
    let cluster = blocking(|| PgCluster::start(1)).await;
    let roles = [FakeRole::Primary, FakeRole::Replica];
    let (apis, nodes) = fake_apis(&[cluster.port(0), cluster.port(1)], &roles).await;
    let proxy = start_proxy(&with_console(&config_yaml(&nodes, "primary", SESSION_MODE))).await;
    let rw = proxy.listener_addr("rw").expect("rw");

    su_sql(cluster.port(0), "create role mover; grant mover to app").await;
    let plain = connect(rw, "app", "app_pw").await;
    plain
        .batch_execute(
            "create table moved_rows(id int primary key, note text); \
             grant all on moved_rows to public; \
             set role mover; \
             set application_name = 'moving app'; set statement_timeout = '17s'; \
             prepare sql_prepared(int) as select $1 * 2",
        )
        .await
        .expect("setup");
    let insert = plain
        .prepare("insert into moved_rows values ($1, $2)")
        .await
        .expect("prepare");
    plain
        .execute(&insert, &[&1i32, &"before"])
        .await
        .expect("insert before");
    // Sessions owning state that cannot move, and the reason each must name.
    let mut pinned = Vec::new();
    for (setup, reason) in PINNED {
        let client = connect(rw, "app", "app_pw").await;
        client
            .batch_execute(setup)
            .await
            .unwrap_or_else(|e| panic!("{setup}: {}", describe(&e)));
        pinned.push((client, reason));
    }
    let mut raw = RawClient::login(rw, "raw").await;
    assert_eq!(
        raw.round_trip(&query_msg("select 1"))
            .await
            .last()
            .map(|m| m.0),
        Some(b'Z')
    );

    let mut console = RawConsole::login(rw).await;
    let paused = console.query("PAUSE").await;
    assert_eq!(paused.tag.as_deref(), Some("PAUSE"), "{:?}", paused.error);
    // Sent while held: it must wait, then run once, on the new primary.
    raw.send(&query_msg(
        "insert into moved_rows values (2, 'sent while paused') returning inet_server_port()",
    ))
    .await;
    let pinned_queries: Vec<_> = pinned
        .into_iter()
        .map(|(client, reason)| {
            (
                tokio::spawn(async move { client.batch_execute("select 1").await }),
                reason,
            )
        })
        .collect();

    let cluster = switch_over_to_node2(cluster, &apis, &proxy).await;
    assert_eq!(console.query("RESUME").await.tag.as_deref(), Some("RESUME"));

    let replies = raw.until_ready().await;
    assert_eq!(error_responses(&replies), Vec::<String>::new());
    assert_eq!(
        data_rows(&replies),
        row(&[&cluster.port(1).to_string()]),
        "the held query ran on the new primary"
    );

    // The plain session: same client connection, its state rebuilt there.
    assert_eq!(server_port(&plain).await, cluster.port(1));
    assert_eq!(
        show(&plain, "application_name", "plain").await,
        "moving app"
    );
    assert_eq!(show(&plain, "statement_timeout", "plain").await, "17s");
    assert_eq!(
        simple_value(&plain, "select current_user", "plain").await,
        Some("mover".to_string()),
        "SET ROLE survives the move"
    );
    plain
        .execute(&insert, &[&3i32, &"after"])
        .await
        .expect("the protocol-level prepared statement survives the move");
    assert_eq!(
        simple_value(&plain, "execute sql_prepared(21)", "plain").await,
        Some("42".to_string()),
        "the SQL prepared statement survives the move"
    );
    // The client's cancel key now reaches its new server.
    let token = plain.cancel_token();
    let sleeper = tokio::spawn(async move {
        let result = plain.batch_execute("select pg_sleep(30)").await;
        (result, plain)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel request");
    let (result, _plain) = within(10, "the cancelled sleep returns", sleeper)
        .await
        .expect("join");
    let error = result.expect_err("cancelled");
    assert_eq!(
        error.as_db_error().map(|e| e.code().code()),
        Some("57014"),
        "{}",
        describe(&error)
    );

    // The pinned sessions: each held query gets a clear FATAL naming why.
    for (query, reason) in pinned_queries {
        let error = within(10, "a pinned session's held query ends", query)
            .await
            .expect("join")
            .expect_err(reason);
        let db = error
            .as_db_error()
            .unwrap_or_else(|| panic!("{reason}: {}", describe(&error)));
        assert_eq!((db.severity(), db.code().code()), ("FATAL", "57P01"));
        assert!(
            db.message().contains(reason) && db.message().contains("cannot move"),
            "{reason}: {}",
            db.message()
        );
    }

    let rows = simple_value(
        &direct(cluster.port(1)).await,
        "select string_agg(id || ':' || note, ',' order by id) from moved_rows",
        "direct",
    )
    .await;
    assert_eq!(
        rows.as_deref(),
        Some("1:before,2:sent while paused,3:after"),
        "the held query ran exactly once"
    );
    let metrics = admin_get(&proxy, "/metrics").await.1;
    for (result, count) in [("moved", 2), ("refused", PINNED.len())] {
        let series = format!("switchyard_session_moves_total{{result=\"{result}\"}} {count}");
        assert!(metrics.contains(&series), "{series} in:\n{metrics}");
    }
}
