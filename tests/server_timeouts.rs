//! Server connections that never end (issue #13, item 6): TCP keepalive and
//! TCP_USER_TIMEOUT on server sockets, `server.query_timeout` against a backend that
//! stops answering (SIGSTOP), and `pool.idle_transaction_timeout` against a client
//! that sits in an open transaction while another waits for the only server. Each
//! behaviour in transaction and in session mode, against real PostgreSQL.

mod harness;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use switchyard::auth::stored::Credential;

use harness::clients::*;
use harness::pg::shared_cluster;
use harness::proxy::*;
use harness::wait::*;
use switchyard::config::{HumanDuration, KeepaliveConfig};
use switchyard::server::{self, LoginRequest};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// Sends `signal` to a process; panics if `kill` fails.
fn signal(pid: i32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A backend stopped with SIGSTOP, continued when dropped (also on a failed test,
/// so the shared cluster is never left with a frozen process).
struct Stopped(i32);

impl Stopped {
    fn new(pid: i32) -> Stopped {
        signal(pid, "STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// Connects as `app` to `appdb` through `addr`; the handle resolves with how the
/// connection ended (an unsolicited FATAL shows up there).
async fn connect_watched(
    addr: SocketAddr,
) -> (Client, JoinHandle<Result<(), tokio_postgres::Error>>) {
    let (client, connection) =
        tokio_postgres::connect(&conn_str(addr, "app", "app_pw", "appdb"), NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect via {addr}: {}", describe(&e)));
    (client, tokio::spawn(connection))
}

fn sqlstate(error: &tokio_postgres::Error) -> Option<String> {
    error.as_db_error().map(|db| db.code().code().to_string())
}

// ---------------------------------------------------------------------------
// Keepalive
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn server_connections_carry_the_configured_keepalive() {
    let cluster = shared_cluster().await;
    let address = format!("127.0.0.1:{}", cluster.port(0));
    let keepalive = KeepaliveConfig {
        idle: HumanDuration(Duration::from_secs(7)),
        interval: HumanDuration(Duration::from_secs(2)),
        count: 4,
    };
    let login = LoginRequest {
        user: "app",
        credential: Credential::Password("app_pw"),
        database: "appdb",
        params: &[],
        require_auth: Default::default(),
    };
    let connection = server::connect_with(
        "node1",
        &address,
        &login,
        Duration::from_secs(10),
        &keepalive,
        &switchyard::config::TlsPolicy::plaintext(),
    )
    .await
    .expect("login to PostgreSQL");
    let socket = socket2::SockRef::from(connection.stream.tcp());
    assert!(socket.keepalive().expect("SO_KEEPALIVE"), "keepalive is on");
    assert_eq!(
        socket.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
        Duration::from_secs(7)
    );
    assert_eq!(
        socket.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
        Duration::from_secs(2)
    );
    assert_eq!(socket.tcp_keepalive_retries().expect("TCP_KEEPCNT"), 4);
    assert_eq!(
        socket.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
        Some(Duration::from_secs(15)),
        "TCP_USER_TIMEOUT = idle + interval * count"
    );
}

/// The pool's own connections: the kernel shows their keepalive timer (`ss -o`),
/// found by the local port the server sees as the client's.
#[tokio::test(flavor = "multi_thread")]
async fn pooled_connections_run_a_keepalive_timer() {
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(
        cluster.port(0),
        "server: { keepalive: { idle: 7s, interval: 2s, count: 4 } }\npool: { mode: transaction, size: 1 }\n",
    )
    .await;
    let client = connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw").await;
    let port = simple_value(&client, "select inet_client_port()", "client")
        .await
        .expect("the proxy's local port");
    let out = Command::new("ss")
        .args([
            "-tnoH",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{port}"),
        ])
        .output()
        .expect("run ss");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("timer:(keepalive"),
        "the pooled server connection from port {port} has no keepalive timer: {listing:?}"
    );
}

// ---------------------------------------------------------------------------
// Query timeout
// ---------------------------------------------------------------------------

async fn query_timeout_frees_the_slot(mode: &str) {
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(
        cluster.port(0),
        &format!(
            "server: {{ query_timeout: 1s }}\npool: {{ mode: {mode}, size: 1, checkout_timeout: 10s }}\n"
        ),
    )
    .await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let (a, a_connection) = connect_watched(rw).await;
    let pid = backend_pid(&a, "A").await;
    a.batch_execute("select pg_sleep(0.2)")
        .await
        .expect("A: a query within the limit");

    let frozen = Stopped::new(pid);
    let started = Instant::now();
    let error = within(
        15,
        "A's query against a stopped backend",
        a.simple_query("select 1"),
    )
    .await
    .expect_err("A's query cannot succeed: its backend is stopped");
    let waited = started.elapsed();
    assert_eq!(
        sqlstate(&error).as_deref(),
        Some("57014"),
        "{mode}: {}",
        describe(&error)
    );
    assert!(
        describe(&error).contains("query timeout"),
        "{mode}: the message says why: {}",
        describe(&error)
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{mode}: the error came after {waited:?}, query_timeout is 1s"
    );
    let _ = within(5, "A's connection closes", a_connection).await;

    // The slot is free while the backend is still frozen: B gets a new server.
    let b = connect(rw, "app", "app_pw").await;
    let b_pid = within(10, "B served by the size-1 pool", backend_pid(&b, "B")).await;
    assert_ne!(b_pid, pid, "{mode}: B must not get the frozen backend");
    drop(frozen);
    eventually(
        Duration::from_secs(10),
        "the frozen backend exits once continued",
        || async {
            su_count(
                cluster.port(0),
                &format!("select count(*) from pg_stat_activity where pid = {pid}"),
            )
            .await
                == 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn query_timeout_ends_a_silent_server_in_transaction_mode() {
    query_timeout_frees_the_slot("transaction").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn query_timeout_ends_a_silent_server_in_session_mode() {
    query_timeout_frees_the_slot("session").await;
}

// ---------------------------------------------------------------------------
// Idle in transaction
// ---------------------------------------------------------------------------

async fn idle_in_transaction_frees_the_slot(mode: &str) {
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(
        cluster.port(0),
        &format!(
            "pool: {{ mode: {mode}, size: 1, checkout_timeout: 20s, idle_transaction_timeout: 1s }}\n"
        ),
    )
    .await;
    let rw = proxy.listener_addr("rw").expect("rw");

    // Idle outside a transaction for longer than the limit is fine.
    let calm = connect(rw, "app", "app_pw").await;
    calm.batch_execute("select 1")
        .await
        .expect("calm: first query");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    calm.batch_execute("select 2")
        .await
        .expect("calm: idle outside a transaction is left alone");
    // A statement that runs longer than the limit inside a transaction is not idling.
    calm.batch_execute("begin; select pg_sleep(1.5); commit")
        .await
        .expect("calm: a busy transaction is left alone");
    drop(calm);

    let (a, a_connection) = connect_watched(rw).await;
    a.batch_execute("begin; select 1").await.expect("A: begin");
    let pid = backend_pid(&a, "A").await;
    let started = Instant::now();
    // B needs the only server, which A holds.
    let b = tokio::spawn(async move {
        let b = connect(rw, "app", "app_pw").await;
        let b_pid = backend_pid(&b, "B").await;
        (b, b_pid, Instant::now())
    });
    let ended = within(10, "A is disconnected", a_connection)
        .await
        .expect("A's connection task");
    let error = ended.expect_err("A's connection ends with the proxy's FATAL");
    assert_eq!(
        sqlstate(&error).as_deref(),
        Some("25P03"),
        "{mode}: {}",
        describe(&error)
    );
    assert!(
        describe(&error).contains("idle-in-transaction timeout"),
        "{mode}: {}",
        describe(&error)
    );
    let (_b, b_pid, served_at) = within(10, "B is served", b).await.expect("B's task");
    let waited = served_at.duration_since(started);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{mode}: B waited {waited:?}; A's limit is 1s"
    );
    assert_ne!(b_pid, pid, "{mode}: A's server is closed, not handed to B");
    eventually(Duration::from_secs(10), "A's backend is gone", || async {
        su_count(
            cluster.port(0),
            &format!("select count(*) from pg_stat_activity where pid = {pid}"),
        )
        .await
            == 0
    })
    .await;
    assert!(a.is_closed(), "{mode}: A is disconnected");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_in_transaction_timeout_in_transaction_mode() {
    idle_in_transaction_frees_the_slot("transaction").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_in_transaction_timeout_in_session_mode() {
    idle_in_transaction_frees_the_slot("session").await;
}
