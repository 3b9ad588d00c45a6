//! Transaction pooling that is safe, against real PostgreSQL: replies a client
//! waits for after a Flush are never held back (asyncpg's Parse/Describe/Flush),
//! and a request is sent again after a server ends only when the node is really
//! leaving and the request is one statement that did nothing outside its
//! transaction: a DBA's `pg_terminate_backend()` or a user-raised 57P01 reaches the
//! client once, a `CALL` that committed is never run twice, and a plain INSERT cut
//! off by a fast shutdown still succeeds exactly once.

mod harness;

use std::time::Duration;

use harness::clients::*;
use harness::pg::{self, shared_cluster, PgCluster};
use harness::proxy::*;
use harness::raw_client::*;
use harness::wait::blocking;
use switchyard::proxy::RunningProxy;

/// `sql` as superuser in appdb on the server at `port`.
async fn su_appdb(port: u16, sql: &str) -> String {
    let owned = sql.to_string();
    blocking(move || {
        pg::try_psql(
            port,
            pg::SUPERUSER,
            pg::SUPERUSER_PASSWORD,
            pg::APP_DB,
            &[&owned],
        )
    })
    .await
    .unwrap_or_else(|e| panic!("superuser psql failed: {e}\nSQL: {sql}"))
}

/// Waits until a backend runs a query containing `marker`; its pid.
async fn backend_running(port: u16, marker: &str) -> i64 {
    let sql = format!(
        "SELECT coalesce(max(pid), 0) FROM pg_stat_activity \
         WHERE query LIKE '%{marker}%' AND query NOT LIKE '%pg_stat_activity%'"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pid = su_count(port, &sql).await;
        if pid != 0 {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backend runs {marker}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn db_code(error: &tokio_postgres::Error) -> Option<(String, String)> {
    error
        .as_db_error()
        .map(|db| (db.severity().to_string(), db.code().code().to_string()))
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_before_a_flush_reach_the_client_without_a_sync() {
    let cluster = shared_cluster().await;
    for mode in ["transaction", "session"] {
        let (proxy, _api) = proxy_for(
            cluster.port(0),
            &format!("pool: {{ mode: {mode}, size: 1 }}\n"),
        )
        .await;
        let rw = proxy.listener_addr("rw").expect("rw");
        let mut client = RawClient::login(rw, "asyncpg-like").await;

        // What asyncpg sends to prepare: Parse, Describe statement, Flush; then it
        // waits for the answers before it binds.
        let mut bytes = parse_msg("", "select $1::int + 1");
        bytes.extend(message(b'D', b"S\0"));
        bytes.extend(flush_msg());
        client.send(&bytes).await;
        let described = client.until(b'T').await;
        let tags: Vec<u8> = described.iter().map(|m| m.0).collect();
        assert_eq!(
            tags, b"1tT",
            "{mode}: ParseComplete, ParameterDescription, RowDescription"
        );

        let mut bytes = bind_msg("", &["41"]);
        bytes.extend(execute_msg());
        bytes.extend(flush_msg());
        client.send(&bytes).await;
        let executed = client.until(b'C').await;
        assert_eq!(
            data_rows(&executed),
            row(&["42"]),
            "{mode}: rows before Sync"
        );

        let done = client.round_trip(&sync_msg()).await;
        assert_eq!(done.last().map(|m| m.1.clone()), Some(b"I".to_vec()));
        // The slot is free again (in session mode once the client leaves): another
        // client is served on the size-1 pool.
        if mode == "session" {
            drop(client);
        }
        let mut other = RawClient::login(rw, "next").await;
        let rows = other.round_trip(&query_msg("select 7")).await;
        assert_eq!(
            data_rows(&rows),
            row(&["7"]),
            "{mode}: the pool slot was released"
        );
    }
}

/// How many times `nextval('terminated_runs')` has run.
async fn terminated_runs(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM terminated_runs",
            &[],
        )
        .await
        .expect("last_value")
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminated_backend_gives_its_client_the_error_once() {
    let cluster = shared_cluster().await;
    let port = cluster.port(0);
    su_appdb(port, "CREATE SEQUENCE IF NOT EXISTS terminated_runs; GRANT ALL ON SEQUENCE terminated_runs TO app").await;
    let (proxy, _api) = proxy_for(port, "pool: { mode: transaction, size: 2 }\n").await;
    let client = connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw").await;
    let runs_before = terminated_runs(&client).await;
    let marker = "terminate_me_7731";
    let sql = format!("SELECT nextval('terminated_runs'), pg_sleep(30) /* {marker} */");
    let query = client.simple_query(&sql);
    let kill = async {
        let pid = backend_running(port, marker).await;
        su_count(port, &format!("SELECT pg_terminate_backend({pid})::int")).await
    };
    let (result, killed) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(query, kill) })
            .await
            .expect("the client hears about the terminated backend at once (not a resend)");
    assert_eq!(killed, 1);
    let error = result.expect_err("the query was terminated");
    assert_eq!(
        db_code(&error),
        Some(("FATAL".to_string(), "57P01".to_string())),
        "the server's own error: {error:?}"
    );
    let direct = direct(port).await;
    let runs_after = terminated_runs(&direct).await;
    assert_eq!(runs_after, runs_before + 1, "the query ran once, not again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_raised_57p01_is_an_answer_and_drains_nothing() {
    let cluster = shared_cluster().await;
    let port = cluster.port(0);
    su_appdb(
        port,
        "CREATE OR REPLACE FUNCTION raise_admin_shutdown() RETURNS int LANGUAGE plpgsql AS \
         $$BEGIN RAISE EXCEPTION 'raised by the application' USING ERRCODE = 'admin_shutdown'; END$$",
    )
    .await;
    let (proxy, _api) = proxy_for(port, "pool: { mode: transaction, size: 1 }\n").await;
    let client = connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw").await;
    let pid = backend_pid(&client, "before").await;
    let error = tokio::time::timeout(
        Duration::from_secs(10),
        client.simple_query("SELECT raise_admin_shutdown()"),
    )
    .await
    .expect("answered, not retried")
    .expect_err("the function raises");
    assert_eq!(
        db_code(&error),
        Some(("ERROR".to_string(), "57P01".to_string())),
        "{error:?}"
    );
    assert!(
        format!("{error:?}").contains("raised by the application"),
        "{error:?}"
    );
    assert_eq!(
        backend_pid(&client, "after").await,
        pid,
        "the same server connection serves on: nothing was drained or replaced"
    );
}

/// A private one-node cluster, the proxy in front of it, and a table to count in.
async fn stoppable_primary(
    setup: &str,
) -> (PgCluster, RunningProxy, harness::fake_patroni::FakePatroni) {
    let cluster = blocking(|| PgCluster::start(0)).await;
    su_appdb(cluster.port(0), setup).await;
    let (proxy, api) = proxy_for(
        cluster.port(0),
        "pool: { mode: transaction, size: 2 }\nfailover: { hold_timeout: 30s }\n",
    )
    .await;
    (cluster, proxy, api)
}

/// Fast-stops the node while `marker` runs, and starts it again a moment later.
async fn bounce_while_running(cluster: PgCluster, marker: &'static str) -> PgCluster {
    let port = cluster.port(0);
    backend_running(port, marker).await;
    blocking(move || {
        cluster.stop(0);
        std::thread::sleep(Duration::from_millis(500));
        cluster.restart(0);
        cluster
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_committed_is_not_run_again_after_a_shutdown() {
    let (cluster, proxy, _api) = stoppable_primary(
        "CREATE TABLE calls (n int); \
         CREATE PROCEDURE commit_then_wait() LANGUAGE plpgsql AS \
         $$BEGIN INSERT INTO calls VALUES (1); COMMIT; PERFORM pg_sleep(30); END$$; \
         GRANT ALL ON calls TO app",
    )
    .await;
    let port = cluster.port(0);
    let client = connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw").await;
    let call = client.simple_query("CALL commit_then_wait() /* call_marker_5521 */");
    let (result, cluster) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(call, bounce_while_running(cluster, "call_marker_5521"))
    })
    .await
    .expect("the CALL ends");
    let error = result.expect_err("the shutdown interrupted the CALL");
    assert_eq!(
        db_code(&error).map(|(_, code)| code).as_deref(),
        Some("57P01"),
        "the client gets the shutdown error, not a second run: {error:?}"
    );
    let calls = su_appdb(port, "SELECT count(*) FROM calls").await;
    assert_eq!(calls, "1", "the committed part ran once");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_insert_cut_off_by_a_shutdown_is_sent_again_once() {
    let (cluster, proxy, _api) = stoppable_primary(
        "CREATE TABLE cut_off (attempt bigint); CREATE SEQUENCE attempts; \
         GRANT ALL ON cut_off, attempts TO app",
    )
    .await;
    let port = cluster.port(0);
    let client = connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw").await;
    // The sequence is not rolled back with the interrupted attempt: only the first
    // attempt sleeps, so the resend finishes at once.
    let insert = client.simple_query(
        "INSERT INTO cut_off SELECT a.n FROM (SELECT nextval('attempts') AS n) a, \
         LATERAL (SELECT pg_sleep(CASE WHEN a.n = 1 THEN 30 ELSE 0 END)) s /* insert_marker_9913 */",
    );
    let (result, cluster) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(insert, bounce_while_running(cluster, "insert_marker_9913"))
    })
    .await
    .expect("the INSERT ends");
    result.expect("the INSERT was sent again to the restarted node and succeeded");
    let rows = su_appdb(port, "SELECT count(*) || ' ' || max(attempt) FROM cut_off").await;
    assert_eq!(rows, "1 2", "exactly one row, from the second attempt");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_resend_off_the_client_gets_the_shutdown_error() {
    let cluster = blocking(|| PgCluster::start(0)).await;
    let port = cluster.port(0);
    let (proxy, _api) = proxy_for(
        port,
        "pool: { mode: transaction, size: 2 }\nfailover: { resend: false }\n",
    )
    .await;
    let client = connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw").await;
    let query = client.simple_query("SELECT pg_sleep(30) /* no_resend_marker_4410 */");
    let (result, cluster) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(
            query,
            bounce_while_running(cluster, "no_resend_marker_4410")
        )
    })
    .await
    .expect("the query ends");
    let error = result.expect_err("not resent");
    assert_eq!(
        db_code(&error).map(|(_, code)| code).as_deref(),
        Some("57P01"),
        "{error:?}"
    );
    drop(cluster);
}
