//! A client's server backend as the client sees it, through Switchyard and real
//! PostgreSQL (issue #14, items 1, 3 and 4):
//!
//! - which pid the client is given: in session mode its server's real pid (so
//!   `pg_backend_pid()`, a notification's pid and `pg_terminate_backend()` agree
//!   with the driver), in transaction mode a minted one that names no process;
//! - the server ending a session (`pg_terminate_backend`, `idle_session_timeout`,
//!   `idle_in_transaction_session_timeout`): the client gets the server's FATAL and
//!   the connection closes, or, idle in transaction mode, never notices;
//! - a client that disappears mid-query leaves nothing running on the server.

mod harness;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::future::poll_fn;
use harness::clients::*;
use harness::pg::shared_cluster;
use harness::proxy::*;
use harness::raw_client::*;
use harness::wait::*;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification};

const SESSION: &str = "pool: { mode: session, size: 4 }\n";
const TRANSACTION: &str = "pool: { mode: transaction, size: 2 }\n";

/// A tokio-postgres client whose connection task reports notifications and how
/// the connection ended (Err: the server's error, such as a FATAL).
struct Watched {
    client: Client,
    notifications: mpsc::UnboundedReceiver<Notification>,
    ended: JoinHandle<Result<(), tokio_postgres::Error>>,
}

async fn connect_watched(addr: SocketAddr, options: Option<&str>) -> Watched {
    let mut config: tokio_postgres::Config = conn_str(addr, "app", "app_pw", "appdb")
        .parse()
        .expect("conninfo");
    if let Some(options) = options {
        config.options(options);
    }
    let (client, mut connection) = config
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect via {addr}: {}", describe(&e)));
    let (tx, notifications) = mpsc::unbounded_channel();
    let ended = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = tx.send(n);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    Watched {
        client,
        notifications,
        ended,
    }
}

impl Watched {
    /// The pid of the BackendKeyData the client was given.
    async fn key_pid(&self) -> i32 {
        cancel_key(&self.client.cancel_token()).await.0
    }

    async fn next_notification(&mut self) -> Notification {
        within(10, "a notification", self.notifications.recv())
            .await
            .expect("the connection task is alive")
    }

    /// The connection ends within `secs` with the server's FATAL `code`, and the
    /// client can no longer use it.
    async fn assert_ended_with(self, code: &str, secs: u64, what: &str) {
        let ended = within(secs, what, self.ended).await.expect("join");
        let error = ended.expect_err(&format!("{what}: the connection ends with an error"));
        let db = error
            .as_db_error()
            .unwrap_or_else(|| panic!("{what}: the server's ErrorResponse, got {error:?}"));
        assert_eq!(
            (db.severity(), db.code().code()),
            ("FATAL", code),
            "{what}: {}",
            describe(&error)
        );
        assert!(
            self.client.batch_execute("select 1").await.is_err(),
            "{what}: the connection is closed"
        );
    }
}

/// `select count(*) from pg_stat_activity where <condition>` as superuser.
async fn activity_count(port: u16, condition: &str) -> i64 {
    su_count(
        port,
        &format!("select count(*) from pg_stat_activity where {condition}"),
    )
    .await
}

// ---------------------------------------------------------------------------
// Item 1: which pid a client sees
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn session_mode_clients_are_given_their_servers_pid() {
    let port = shared_cluster().await.port(0);
    let (proxy, _api) = proxy_for(port, SESSION).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let mut a = connect_watched(rw, None).await;
    let b = connect_watched(rw, None).await;
    let a_pid = a.key_pid().await;
    assert_eq!(
        a_pid,
        backend_pid(&a.client, "A").await,
        "the BackendKeyData pid is the server backend's"
    );
    assert_eq!(
        activity_count(port, &format!("pid = {a_pid} and usename = 'app'")).await,
        1,
        "pg_stat_activity shows A's backend under the pid A was given"
    );
    // Notifications carry the sender's real pid: a listener can tell its own.
    a.client
        .batch_execute("listen sy_pid_channel")
        .await
        .expect("A: listen");
    a.client
        .batch_execute("notify sy_pid_channel, 'from A'")
        .await
        .expect("A: notify");
    let own = a.next_notification().await;
    assert_eq!(
        (own.payload(), own.process_id()),
        ("from A", a_pid),
        "A's own notification carries A's pid"
    );
    b.client
        .batch_execute("notify sy_pid_channel, 'from B'")
        .await
        .expect("B: notify");
    let other = a.next_notification().await;
    assert_eq!(
        (other.payload(), other.process_id()),
        ("from B", b.key_pid().await),
        "B's notification carries B's pid"
    );
    assert_ne!(other.process_id(), a_pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_mode_pids_are_minted_and_name_no_backend() {
    let port = shared_cluster().await.port(0);
    let (proxy, _api) = proxy_for(port, TRANSACTION).await;
    let client = connect_watched(proxy.listener_addr("rw").expect("rw"), None).await;
    let pid = client.key_pid().await;
    assert!(
        pid >= 1 << 24,
        "a minted pid lies above any pid Linux hands out: {pid}"
    );
    let terminated = su_sql(port, &format!("select pg_terminate_backend({pid})")).await;
    assert_eq!(terminated, "f", "no backend has the minted pid");
    client
        .client
        .batch_execute("select 1")
        .await
        .expect("the client is untouched");
}

// ---------------------------------------------------------------------------
// Item 3: the server ends the session
// ---------------------------------------------------------------------------

/// A raw session-mode login that keeps the BackendKeyData pid.
async fn raw_login_with_pid(addr: SocketAddr) -> (tokio::net::TcpStream, i32) {
    let (mut stream, password) = md5_login_started(addr).await;
    tokio::io::AsyncWriteExt::write_all(&mut stream, &password)
        .await
        .expect("password");
    let mut pid = None;
    loop {
        let (tag, body) = read_message(&mut stream).await;
        match tag {
            b'K' => pid = Some(i32::from_be_bytes([body[0], body[1], body[2], body[3]])),
            b'E' => panic!("login failed: {}", sqlstate(&body)),
            b'Z' => break,
            _ => {}
        }
    }
    (stream, pid.expect("BackendKeyData"))
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_terminate_backend_of_the_drivers_pid_ends_a_session_mode_client() {
    let port = shared_cluster().await.port(0);
    let (proxy, _api) = proxy_for(port, SESSION).await;
    let rw = proxy.listener_addr("rw").expect("rw");

    // A driver: the pid its cancel token carries, terminated from elsewhere.
    let client = connect_watched(rw, None).await;
    let pid = client.key_pid().await;
    let terminated = su_sql(port, &format!("select pg_terminate_backend({pid})")).await;
    assert_eq!(terminated, "t", "the driver's pid is a live backend");
    client
        .assert_ended_with("57P01", 10, "a terminated session-mode client")
        .await;

    // On the wire: the FATAL, then the connection closes.
    let (mut stream, pid) = raw_login_with_pid(rw).await;
    let terminated = su_sql(port, &format!("select pg_terminate_backend({pid})")).await;
    assert_eq!(terminated, "t");
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!(
        (tag, sqlstate(&body)),
        (b'E', "57P01".to_string()),
        "the server's FATAL reaches the client"
    );
    let mut rest = Vec::new();
    let read = within(10, "the proxy closes", stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(0)),
        "nothing after the FATAL: {read:?} {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_terminate_backend_of_a_busy_client_reaches_it_in_transaction_mode() {
    let port = shared_cluster().await.port(0);
    let (proxy, _api) = proxy_for(port, TRANSACTION).await;
    let client = connect_watched(proxy.listener_addr("rw").expect("rw"), None).await;
    let marker = "sy_terminate_busy_txn";
    let query = {
        let sql = format!("select pg_sleep(30) /* {marker} */");
        let client = client.client;
        tokio::spawn(async move { client.batch_execute(&sql).await })
    };
    let running =
        format!("state = 'active' and query like '%/* {marker} */%' and pid <> pg_backend_pid()");
    eventually(Duration::from_secs(10), "the query runs", || {
        let running = running.clone();
        async move { activity_count(port, &running).await == 1 }
    })
    .await;
    su_sql(
        port,
        &format!("select pg_terminate_backend(pid) from pg_stat_activity where {running}"),
    )
    .await;
    let error = within(10, "the terminated query", query)
        .await
        .expect("join")
        .expect_err("the query is terminated");
    assert_eq!(
        error.code().map(|c| c.code()),
        Some("57P01"),
        "{}",
        describe(&error)
    );
    let ended = within(10, "the connection ends", client.ended)
        .await
        .expect("join");
    assert!(ended.is_err(), "the connection ends with the FATAL");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_session_timeout_ends_a_session_mode_client_with_the_servers_fatal() {
    let port = shared_cluster().await.port(0);
    let (proxy, _api) = proxy_for(port, SESSION).await;
    let client = connect_watched(
        proxy.listener_addr("rw").expect("rw"),
        Some("-c idle_session_timeout=1s"),
    )
    .await;
    client
        .client
        .batch_execute("select 1")
        .await
        .expect("query");
    client
        .assert_ended_with("57P05", 10, "idle_session_timeout in session mode")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_in_transaction_session_timeout_reaches_the_client_in_both_modes() {
    let port = shared_cluster().await.port(0);
    for pool in [SESSION, TRANSACTION] {
        let (proxy, _api) = proxy_for(port, pool).await;
        let client = connect_watched(
            proxy.listener_addr("rw").expect("rw"),
            Some("-c idle_in_transaction_session_timeout=1s"),
        )
        .await;
        client
            .client
            .batch_execute("begin; select 1")
            .await
            .expect("begin");
        client
            .assert_ended_with("25P03", 10, &format!("idle in transaction, {pool}"))
            .await;
    }
}

/// A database whose role settings end idle sessions after 1 s (ALTER ROLE ... IN
/// DATABASE ... SET), so every server connection of its pools times out.
async fn idle_timeout_db(port: u16) -> &'static str {
    let db = "sy_idle_timeout_db";
    let exists = su_sql(
        port,
        &format!("select count(*) from pg_database where datname = '{db}'"),
    )
    .await;
    if exists == "0" {
        su_sql(port, &format!("create database {db} owner app")).await;
    }
    su_sql(
        port,
        &format!("alter role app in database {db} set idle_session_timeout = '1s'"),
    )
    .await;
    db
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_session_timeout_from_alter_role_in_both_modes() {
    let port = shared_cluster().await.port(0);
    let db = idle_timeout_db(port).await;
    for (pool, ends) in [(SESSION, true), (TRANSACTION, false)] {
        let (proxy, _api) = proxy_for(port, pool).await;
        let rw = proxy.listener_addr("rw").expect("rw");
        let (client, connection) =
            tokio_postgres::connect(&conn_str(rw, "app", "app_pw", db), NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to {db}: {}", describe(&e)));
        let ended = tokio::spawn(connection);
        client.batch_execute("select 1").await.expect("query");
        tokio::time::sleep(Duration::from_secs(2)).await;
        if ends {
            let error = within(10, "the session ends", ended)
                .await
                .expect("join")
                .expect_err("session mode: the server's FATAL ends the client");
            assert_eq!(
                error.as_db_error().map(|e| e.code().code()),
                Some("57P05"),
                "{}",
                describe(&error)
            );
        } else {
            // Transaction mode: the idle client held no server; the one that timed
            // out in the pool is replaced at the next checkout.
            for i in 0..3 {
                assert_eq!(
                    simple_value(&client, &format!("select {i}"), "after the timeout").await,
                    Some(i.to_string())
                );
            }
            assert!(!ended.is_finished(), "the client's connection stays open");
        }
    }
}

// ---------------------------------------------------------------------------
// Item 4: a client that disappears mid-query
// ---------------------------------------------------------------------------

/// How the client leaves while its query runs.
#[derive(Debug, Clone, Copy)]
enum Leaving {
    /// Its process dies: the socket closes without a Terminate.
    Killed,
    /// It sends Terminate without waiting for the reply (libpq's PQfinish).
    Terminates,
}

async fn a_client_leaving_mid_query_leaves_nothing_running(pool: &str, leaving: Leaving) {
    let port = shared_cluster().await.port(0);
    let (proxy, _api) = proxy_for(port, pool).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let marker = format!(
        "sy_gone_{}_{leaving:?}",
        if pool == SESSION { "session" } else { "txn" }
    );
    let sql = format!("select pg_sleep(60) /* {marker} */");
    let left = match leaving {
        Leaving::Killed => {
            let (client, connection) = connect_killable(rw).await;
            tokio::spawn(async move { client.batch_execute(&sql).await });
            wait_running(port, &marker).await;
            connection.abort();
            Instant::now()
        }
        Leaving::Terminates => {
            let mut raw = RawClient::login(rw, "leaving client").await;
            raw.send(&query_msg(&sql)).await;
            wait_running(port, &marker).await;
            raw.send(&message(b'X', b"")).await;
            drop(raw);
            Instant::now()
        }
    };
    let trace = format!("query like '%/* {marker} */%' and pid <> pg_backend_pid()");
    let took = eventually(
        Duration::from_secs(1),
        "no trace of the client left in pg_stat_activity within 1 s",
        || {
            let trace = trace.clone();
            async move { activity_count(port, &trace).await == 0 }
        },
    )
    .await;
    eprintln!(
        "{pool} {leaving:?}: gone from pg_stat_activity after {:?} ({took:?} polling)",
        left.elapsed()
    );
    // The pool still serves.
    let next = connect(rw, "app", "app_pw").await;
    within(10, "a query after", next.batch_execute("select 1"))
        .await
        .expect("the pool serves the next client");
}

async fn wait_running(port: u16, marker: &str) {
    let running =
        format!("state = 'active' and query like '%/* {marker} */%' and pid <> pg_backend_pid()");
    eventually(
        Duration::from_secs(10),
        "the query runs on the server",
        || {
            let running = running.clone();
            async move { activity_count(port, &running).await == 1 }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_client_leaves_no_query_running_in_session_mode() {
    a_client_leaving_mid_query_leaves_nothing_running(SESSION, Leaving::Killed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_client_leaves_no_query_running_in_transaction_mode() {
    a_client_leaving_mid_query_leaves_nothing_running(TRANSACTION, Leaving::Killed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_terminating_mid_query_leaves_no_query_running_in_session_mode() {
    a_client_leaving_mid_query_leaves_nothing_running(SESSION, Leaving::Terminates).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_terminating_mid_query_leaves_no_query_running_in_transaction_mode() {
    a_client_leaving_mid_query_leaves_nothing_running(TRANSACTION, Leaving::Terminates).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_by_the_drivers_key_works_in_both_modes() {
    let port = shared_cluster().await.port(0);
    for pool in [SESSION, TRANSACTION] {
        let (proxy, _api) = proxy_for(port, pool).await;
        let client = connect_watched(proxy.listener_addr("rw").expect("rw"), None).await;
        let token = client.client.cancel_token();
        let marker = if pool == SESSION {
            "sy_key_cancel_session"
        } else {
            "sy_key_cancel_txn"
        };
        let query = {
            let sql = format!("select pg_sleep(30) /* {marker} */");
            let client = client.client;
            tokio::spawn(async move {
                let result = client.batch_execute(&sql).await;
                (client, result)
            })
        };
        wait_running(port, marker).await;
        token.cancel_query(NoTls).await.expect("cancel sent");
        let (client, result) = within(10, "the cancelled query", query)
            .await
            .expect("join");
        let error = result.expect_err("cancelled");
        assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{pool}");
        client
            .batch_execute("select 1")
            .await
            .expect("the connection keeps working");
    }
}
