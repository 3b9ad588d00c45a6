//! psycopg2 and psycopg 3 through Switchyard: session state that must not leak
//! between clients sharing a server in transaction mode (issue #13 item 2: `SET
//! ROLE`, `SET role; RESET ALL`, `set_config()`, temp tables, advisory locks), and
//! settings changed inside transactions in the drivers' default non-autocommit mode
//! (issue #19: committed `SET`s follow the client, rolled back / `SET LOCAL` /
//! failed ones do not; psycopg_pool's `configure`), and the ParameterStatus values
//! a client with startup `options` or `client_encoding` is greeted with, and (issue
//! #14) that the pid psycopg2 reports in session mode is its server backend's. The
//! cases are in
//! `tests/python/psycopg_cases.py`; each runs against PostgreSQL directly (the
//! control) and through the proxy, each case with its own proxy.
//!
//! Run: `cargo test --test drivers_psycopg` (`-- --nocapture` prints every case's
//! verdict).

mod harness;

use std::time::Duration;

use harness::clients::su_sql;
use harness::python::*;

const SCRIPT: &str = "psycopg_cases.py";
const CASE_TIMEOUT: Duration = Duration::from_secs(20);

/// Two autocommit clients A and B; through the proxy they share one server.
const LEAK_CASES: &[&str] = &[
    "pg2_leak_set_role",
    "pg2_leak_reset_all_keeps_role",
    "pg2_leak_set_config",
    "pg2_leak_temp_table",
    "pg2_leak_advisory_lock",
    "pg3_leak_set_role",
    "pg3_leak_reset_all_keeps_role",
    "pg3_leak_set_config",
    "pg3_leak_temp_table",
    "pg3_leak_advisory_lock",
];

/// Issue #19: default (non-autocommit) mode, a second client forcing rotation.
const TX_CASES: &[&str] = &[
    "pg2_tx_committed_search_path",
    "pg2_tx_committed_timezone",
    "pg2_tx_committed_statement_timeout",
    "pg2_tx_committed_custom",
    "pg2_tx_committed_application_name",
    "pg2_tx_rollback_discards",
    "pg2_tx_savepoint_rollback",
    "pg2_tx_set_local",
    "pg2_tx_failed_transaction",
    "pg3_tx_committed_search_path",
    "pg3_tx_committed_timezone",
    "pg3_tx_committed_statement_timeout",
    "pg3_tx_committed_custom",
    "pg3_tx_committed_application_name",
    "pg3_tx_rollback_discards",
    "pg3_tx_savepoint_rollback",
    "pg3_tx_set_local",
    "pg3_tx_failed_transaction",
    "pg3_pool_configure",
];

/// Startup `options` (standard_conforming_strings, DateStyle, TimeZone,
/// IntervalStyle) and `client_encoding=EUC_JP`: the ParameterStatus values the
/// client gets match its session (Japanese text round-trips in EUC_JP).
const STARTUP_CASES: &[&str] = &[
    "pg2_startup_options_reported",
    "pg3_startup_options_reported",
    "pg2_client_encoding_euc_jp",
    "pg3_client_encoding_euc_jp",
];

/// Issue #14: the pid psycopg2 reports is its server backend's (session mode).
const PID_CASES: &[&str] = &["pg2_own_backend_pid"];

/// Issue #14 item 5: libpq 18 (psycopg 3's wheel) with
/// `max_protocol_version=latest` negotiated down to 3.0, in every mode.
const PROTOCOL_CASES: &[&str] = &["pg3_libpq18_latest_protocol"];

/// The driver cluster with role `tenant_a`, granted to `app`: set up once per test
/// binary (tests run concurrently, and two concurrent CREATE ROLEs of one name fail
/// with a unique violation rather than `duplicate_object`).
async fn cluster_port() -> u16 {
    static PORT: tokio::sync::OnceCell<u16> = tokio::sync::OnceCell::const_new();
    *PORT
        .get_or_init(|| async {
            let port = driver_cluster().await.port(0);
            su_sql(
                port,
                "DO $$ BEGIN CREATE ROLE tenant_a; \
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$; \
                 GRANT tenant_a TO app",
            )
            .await;
            port
        })
        .await
}

async fn cases(what: &str, cases: &[&'static str], via: Via) {
    let port = cluster_port().await;
    let results = run_cases_via(SCRIPT, cases, port, via, CASE_TIMEOUT).await;
    assert_cases_passed(&format!("{what}, {}", via.label()), &results);
}

#[tokio::test(flavor = "multi_thread")]
async fn state_leaks_direct_to_postgres() {
    cases("psycopg state leaks", LEAK_CASES, Via::Direct).await;
}

/// Pool size 1: A and B share the one server.
#[tokio::test(flavor = "multi_thread")]
async fn state_leaks_through_transaction_mode() {
    cases("psycopg state leaks", LEAK_CASES, Via::Transaction(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_in_transactions_direct_to_postgres() {
    cases("psycopg settings in transactions", TX_CASES, Via::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_in_transactions_through_session_mode() {
    cases(
        "psycopg settings in transactions",
        TX_CASES,
        Via::Session(2),
    )
    .await;
}

/// Pool size 2: B's open transactions move A between the two servers.
#[tokio::test(flavor = "multi_thread")]
async fn settings_in_transactions_through_transaction_mode() {
    cases(
        "psycopg settings in transactions",
        TX_CASES,
        Via::Transaction(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_options_direct_to_postgres() {
    cases("psycopg startup options", STARTUP_CASES, Via::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_options_through_session_mode() {
    cases("psycopg startup options", STARTUP_CASES, Via::Session(2)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_options_through_transaction_mode() {
    cases(
        "psycopg startup options",
        STARTUP_CASES,
        Via::Transaction(1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn libpq18_latest_protocol_in_every_mode() {
    for via in [Via::Direct, Via::Session(1), Via::Transaction(1)] {
        cases("libpq 18 protocol negotiation", PROTOCOL_CASES, via).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn own_backend_pid_direct_to_postgres() {
    cases("psycopg2 backend pid", PID_CASES, Via::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn own_backend_pid_through_session_mode() {
    cases("psycopg2 backend pid", PID_CASES, Via::Session(2)).await;
}
