//! asyncpg through Switchyard (issue #13 item 1). asyncpg prepares each statement
//! with Parse + Describe + Flush (no Sync) and waits for ParseComplete,
//! ParameterDescription and RowDescription before it sends Bind/Execute/Sync; a
//! proxy that holds server replies until a Sync hangs it. Issue #14 as asyncpg
//! sees it: the pid it reports (session mode), the server's FATAL, cancels by its
//! key and by its pid, a client leaving mid-query. The cases of
//! `tests/python/asyncpg_cases.py` run straight to PostgreSQL (the control),
//! through a session-mode listener and through a transaction-mode listener; the
//! raw-protocol tests pin the Flush behaviour without a driver in between.
//!
//! Run: `cargo test --test drivers_asyncpg` (builds the venv in target/pyenv on
//! first use; `-- --nocapture` prints every case's verdict).

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::fake_patroni::FakePatroni;
use harness::proxy::proxy_for;
use harness::python::*;
use harness::raw_client::*;
use switchyard::proxy::RunningProxy;

const SCRIPT: &str = "asyncpg_cases.py";
const CASES: &[&str] = &[
    "fetchval_no_cache",
    "fetchval_default_cache",
    "prepared_fetch_repeatedly",
    "executemany",
    "copy_records_to_table",
    "transaction_commit_and_rollback",
    "two_concurrent_connections",
    "cancel_through_the_driver",
];
/// The backend's own pid (session mode and direct; a transaction-mode client has
/// none of its own).
const PID_CASES: &[&str] = &[
    "own_backend_pid",
    "terminated_by_its_pid",
    "cancelled_by_its_pid",
];
/// Through the proxy only: directly, PostgreSQL notices a client that left only
/// when it next writes to it (client_connection_check_interval is off by
/// default), so the query runs on for its full 60 s.
const PROXY_CASES: &[&str] = &["leaves_mid_query"];
/// Transaction mode with a pool of one: a request that waits for the only server
/// and is given up by asyncpg's timeout (a CancelRequest) never runs.
const QUEUE_CASES: &[&str] = &["timeout_while_queued"];
const CASE_TIMEOUT: Duration = Duration::from_secs(20);

async fn asyncpg_cases(via: Via) {
    let cluster = driver_cluster().await;
    let mut cases = CASES.to_vec();
    if via != Via::Direct {
        cases.extend(PROXY_CASES);
    }
    if matches!(via, Via::Transaction(_)) {
        cases.extend(QUEUE_CASES);
    } else {
        cases.extend(PID_CASES);
    }
    let results = run_cases_via(SCRIPT, &cases, cluster.port(0), via, CASE_TIMEOUT).await;
    assert_cases_passed(&format!("asyncpg, {}", via.label()), &results);
}

#[tokio::test(flavor = "multi_thread")]
async fn asyncpg_direct_to_postgres() {
    asyncpg_cases(Via::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn asyncpg_through_session_mode() {
    asyncpg_cases(Via::Session(2)).await;
}

/// Pool size 1: the two concurrent connections share one server.
#[tokio::test(flavor = "multi_thread")]
async fn asyncpg_through_transaction_mode() {
    asyncpg_cases(Via::Transaction(1)).await;
}

// ---------------------------------------------------------------------------
// The same exchange as raw protocol
// ---------------------------------------------------------------------------

/// Describe of the prepared statement `name`.
fn describe_statement_msg(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    cstr(&mut body, name);
    message(b'D', &body)
}

/// Reads messages until `tag` arrives, failing after `secs` with what arrived.
async fn expect_until(client: &mut RawClient, tag: u8, secs: u64, what: &str) -> Vec<Message> {
    let mut got: Vec<Message> = Vec::new();
    let read = async {
        loop {
            let m = read_message(&mut client.stream).await;
            let done = m.0 == tag;
            got.push(m);
            if done {
                break;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(secs), read)
        .await
        .is_err()
    {
        panic!(
            "{what}: no '{}' within {secs} s; received before that: {:?}",
            tag as char,
            tags(&got)
        );
    }
    got
}

fn tags(messages: &[Message]) -> String {
    messages.iter().map(|(t, _)| *t as char).collect()
}

/// The address a raw client logs in to for `via`, and the proxy to keep alive.
async fn raw_target(via: Via) -> (SocketAddr, Option<(RunningProxy, FakePatroni)>) {
    let cluster = driver_cluster().await;
    match via.pool_yaml() {
        None => (SocketAddr::from(([127, 0, 0, 1], cluster.port(0))), None),
        Some(pool) => {
            let (proxy, api) = proxy_for(cluster.port(0), &pool).await;
            let addr = proxy.listener_addr("rw").expect("rw");
            (addr, Some((proxy, api)))
        }
    }
}

/// Parse + Describe(statement) + Flush, no Sync: the replies arrive anyway; then
/// Bind/Execute/Sync completes the statement.
async fn describe_then_flush(via: Via) {
    let (addr, _proxy) = raw_target(via).await;
    let what = format!("{} (Parse + Describe + Flush)", via.label());
    let mut client = RawClient::login(addr, "raw flush client").await;
    let mut bytes = parse_msg("", "select $1::int + 1");
    bytes.extend(describe_statement_msg(""));
    bytes.extend(flush_msg());
    client.send(&bytes).await;
    let got = expect_until(&mut client, b'T', 5, &what).await;
    assert_eq!(
        tags(&got),
        "1tT",
        "{what}: expected ParseComplete, ParameterDescription, RowDescription"
    );
    let rows = client
        .run_statement("", &["41"])
        .await
        .unwrap_or_else(|e| panic!("{what}: Bind/Execute/Sync after the Flush: {e:?}"));
    assert_eq!(rows, row(&["42"]), "{what}: result");
    // The session is still in step: a second round trip works.
    let mut again = parse_msg("", "select 'still in step'");
    again.extend(bind_msg("", &[]));
    again.extend(execute_msg());
    again.extend(sync_msg());
    let messages = within5(&what, client.round_trip(&again)).await;
    assert_eq!(data_rows(&messages), row(&["still in step"]), "{what}");
}

/// Parse + Bind + Execute + Flush, no Sync: the rows and CommandComplete arrive
/// before the Sync; the Sync then brings ReadyForQuery.
async fn execute_then_flush(via: Via) {
    let (addr, _proxy) = raw_target(via).await;
    let what = format!("{} (Parse + Bind + Execute + Flush)", via.label());
    let mut client = RawClient::login(addr, "raw flush client").await;
    let mut bytes = parse_msg("", "select g from generate_series(1, 3) g");
    bytes.extend(bind_msg("", &[]));
    bytes.extend(execute_msg());
    bytes.extend(flush_msg());
    client.send(&bytes).await;
    let got = expect_until(&mut client, b'C', 5, &what).await;
    assert_eq!(tags(&got), "12DDDC", "{what}: replies before the Sync");
    assert_eq!(
        data_rows(&got),
        vec![
            vec![Some("1".to_string())],
            vec![Some("2".to_string())],
            vec![Some("3".to_string())]
        ],
        "{what}: rows"
    );
    client.send(&sync_msg()).await;
    let after = expect_until(&mut client, b'Z', 5, &what).await;
    assert_eq!(tags(&after), "Z", "{what}: after the Sync");
}

async fn within5<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no reply within 5 s"))
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_describe_flush_direct() {
    describe_then_flush(Via::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_describe_flush_session_mode() {
    describe_then_flush(Via::Session(2)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_describe_flush_transaction_mode() {
    describe_then_flush(Via::Transaction(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_execute_flush_direct() {
    execute_then_flush(Via::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_execute_flush_session_mode() {
    execute_then_flush(Via::Session(2)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_execute_flush_transaction_mode() {
    execute_then_flush(Via::Transaction(1)).await;
}
