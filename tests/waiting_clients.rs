//! Clients whose request waits before it reaches a server: in the pool's queue
//! (every server in use) or in the failover hold (no primary). A client that gives
//! up while waiting (its socket closes, or its driver sends a CancelRequest, as
//! asyncpg's and JDBC's query timeouts do) must not have its request run later on
//! a server it no longer waits for: the application has been told it failed and
//! may already have retried it on another connection. PgBouncer drops a waiting
//! client that disconnects; a cancel of a waiting request is answered as
//! PostgreSQL answers a cancelled statement (57014).

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::clients::*;
use harness::fake_patroni::{http_request, FakeRole};
use harness::pg::shared_cluster;
use harness::proxy::*;
use harness::raw_client::*;
use harness::wait::*;

const TRANSACTION_POOL_OF_ONE: &str =
    "pool: { mode: transaction, size: 1, checkout_timeout: 20s }\n";

/// A table of its own for `test`, empty.
async fn fresh_table(port: u16, test: &str) -> String {
    let table = format!("sy_waiting_{test}");
    su_sql(
        port,
        &format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table}(v int); GRANT ALL ON {table} TO PUBLIC"),
    )
    .await;
    table
}

async fn rows(port: u16, table: &str) -> i64 {
    su_count(port, &format!("select count(*) from {table}")).await
}

/// Once a server is free again, lets the next client take it and checks that no
/// given-up request ran (`what` names the one that must not have).
async fn assert_nothing_ran(rw: SocketAddr, port: u16, table: &str, what: &str) {
    let next = connect(rw, "app", "app_pw").await;
    next.batch_execute("select 1")
        .await
        .expect("the next client");
    // Anything still queued would have run by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rows(port, table).await, 0, "{what}");
}

/// The proxy's count of clients waiting for a server (all listeners), from /status.
async fn waiting(proxy: &switchyard::proxy::RunningProxy) -> u64 {
    let status = admin_status(proxy).await;
    status["listeners"]
        .as_array()
        .map(|listeners| {
            listeners
                .iter()
                .map(|l| l["waiting"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// A raw client whose INSERT waits for the only server, which a tokio-postgres
/// client holds in an open transaction (both log in as `app_md5`, the raw
/// client's user, so they share one pool).
async fn queued_insert(rw: SocketAddr, table: &str) -> (tokio_postgres::Client, RawClient) {
    let holder = connect(rw, "app_md5", "app_md5_pw").await;
    holder
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("holder: begin");
    let mut waiter = RawClient::login(rw, "waiter").await;
    waiter
        .send(&query_msg(&format!("INSERT INTO {table} VALUES (1)")))
        .await;
    (holder, waiter)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_the_pool_queue_runs_nothing() {
    let port = shared_cluster().await.port(0);
    let table = fresh_table(port, "queue_leave").await;
    let (proxy, _api) = proxy_for(port, TRANSACTION_POOL_OF_ONE).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let (holder, waiter) = queued_insert(rw, &table).await;
    eventually(
        Duration::from_secs(5),
        "the insert waits for a server",
        || async { waiting(&proxy).await == 1 },
    )
    .await;
    drop(waiter);
    eventually(
        Duration::from_secs(5),
        "the client that left no longer waits",
        || async { waiting(&proxy).await == 0 },
    )
    .await;
    holder
        .batch_execute("COMMIT")
        .await
        .expect("holder: commit");
    assert_nothing_ran(rw, port, &table, "the insert of the client that left ran").await;
}

/// Runs `request` on `waiter` (it has to wait: the pool's only server is held),
/// cancels it once the proxy counts it waiting, and checks the answer is 57014
/// and that the proxy no longer counts it; gives the client back.
async fn cancelled_while_queued<F, Fut>(
    proxy: &switchyard::proxy::RunningProxy,
    waiter: tokio_postgres::Client,
    what: &str,
    request: F,
) -> tokio_postgres::Client
where
    F: FnOnce(tokio_postgres::Client) -> Fut,
    Fut: std::future::Future<Output = (tokio_postgres::Client, Result<(), tokio_postgres::Error>)>
        + Send
        + 'static,
{
    let token = waiter.cancel_token();
    let queued = tokio::spawn(request(waiter));
    eventually(
        Duration::from_secs(5),
        &format!("{what} waits for a server"),
        || async { waiting(proxy).await == 1 },
    )
    .await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send the cancel");
    let (waiter, result) = within(5, &format!("the cancelled {what} is answered"), queued)
        .await
        .expect("join");
    let error = result.expect_err("the cancelled request fails");
    assert_eq!(
        error.code().map(|c| c.code()),
        Some("57014"),
        "{what}: {}",
        describe(&error)
    );
    assert_eq!(waiting(proxy).await, 0, "{what}: nobody waits any more");
    waiter
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_of_a_queued_request_answers_57014_and_runs_nothing() {
    let port = shared_cluster().await.port(0);
    let table = fresh_table(port, "queue_cancel").await;
    let (proxy, _api) = proxy_for(port, TRANSACTION_POOL_OF_ONE).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let holder = connect(rw, "app", "app_pw").await;
    holder
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("holder: begin");
    let waiter = connect(rw, "app", "app_pw").await;
    let insert = format!("INSERT INTO {table} VALUES (1)");
    let waiter = cancelled_while_queued(&proxy, waiter, "the insert", move |waiter| async move {
        let result = waiter.batch_execute(&insert).await;
        (waiter, result.map(|_| ()))
    })
    .await;
    // The same through the extended protocol (Parse/Bind/Execute/Sync).
    let insert = format!("INSERT INTO {table} VALUES ($1)");
    let waiter = cancelled_while_queued(
        &proxy,
        waiter,
        "the prepared insert",
        move |waiter| async move {
            let result = waiter.execute(&insert, &[&2i32]).await;
            (waiter, result.map(|_| ()))
        },
    )
    .await;

    holder
        .batch_execute("COMMIT")
        .await
        .expect("holder: commit");
    waiter
        .batch_execute("select 1")
        .await
        .expect("the cancelled client goes on");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rows(port, &table).await, 0, "a cancelled insert ran");
}

async fn post(proxy: &switchyard::proxy::RunningProxy, path: &str) {
    let response = http_request(proxy.admin_addr, "POST", path, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e:?}"));
    assert_eq!(response.status, 200, "POST {path}: {}", response.body);
}

/// Under PAUSE (the admin console's, before a planned switchover): a held client
/// that leaves, and one whose driver cancels, run nothing on RESUME.
#[tokio::test(flavor = "multi_thread")]
async fn clients_that_give_up_during_a_pause_run_nothing_on_resume() {
    let port = shared_cluster().await.port(0);
    let table = fresh_table(port, "pause_leave").await;
    let (proxy, _api) = proxy_for(port, "pool: { mode: transaction, size: 2 }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let mut leaving = RawClient::login(rw, "leaving").await;
    let cancelling = connect(rw, "app", "app_pw").await;
    post(&proxy, "/pause?timeout_ms=5000").await;
    leaving
        .send(&query_msg(&format!("INSERT INTO {table} VALUES (1)")))
        .await;
    let token = cancelling.cancel_token();
    let insert = format!("INSERT INTO {table} VALUES (2)");
    let held = tokio::spawn(async move { cancelling.batch_execute(&insert).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "the insert is held while paused");
    drop(leaving);
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send the cancel");
    let error = within(5, "the cancelled held insert is answered", held)
        .await
        .expect("join")
        .expect_err("the cancelled insert fails");
    assert_eq!(
        error.code().map(|c| c.code()),
        Some("57014"),
        "{}",
        describe(&error)
    );
    // Give the proxy a moment to see the closed socket before RESUME.
    tokio::time::sleep(Duration::from_millis(300)).await;
    post(&proxy, "/resume").await;
    assert_nothing_ran(rw, port, &table, "an insert given up during the pause ran").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_the_failover_hold_runs_nothing() {
    let port = shared_cluster().await.port(0);
    let table = fresh_table(port, "hold_leave").await;
    let (proxy, api) = proxy_for(
        port,
        "pool: { mode: transaction, size: 2 }\nfailover: { hold_timeout: 20s }\n",
    )
    .await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let mut waiter = RawClient::login(rw, "waiter").await;
    api.set_role(FakeRole::Replica);
    eventually(
        Duration::from_secs(5),
        "the proxy sees no primary",
        || async { admin_status(&proxy).await["primary"].is_null() },
    )
    .await;
    waiter
        .send(&query_msg(&format!("INSERT INTO {table} VALUES (1)")))
        .await;
    eventually(Duration::from_secs(5), "the insert is held", || async {
        admin_status(&proxy).await["held_clients"].as_u64() == Some(1)
    })
    .await;
    drop(waiter);
    eventually(
        Duration::from_secs(5),
        "the client that left is no longer held",
        || async { admin_status(&proxy).await["held_clients"].as_u64() == Some(0) },
    )
    .await;
    api.set_role(FakeRole::Primary);
    eventually(Duration::from_secs(5), "the primary is back", || async {
        !admin_status(&proxy).await["primary"].is_null()
    })
    .await;
    assert_nothing_ran(
        rw,
        port,
        &table,
        "the held insert of the client that left ran",
    )
    .await;
}
