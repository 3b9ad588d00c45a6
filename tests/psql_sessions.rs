//! psql through Switchyard as a person at a terminal uses it (issue #14 with
//! psql), in both pool modes and straight to PostgreSQL (the control):
//!
//! - started with `PGCLIENTENCODING=EUC_JP`, psql is told EUC_JP (its `ENCODING`
//!   variable comes from the greeting's ParameterStatus) and Japanese text typed in
//!   EUC_JP round-trips and reaches the server as the same characters;
//! - a psql whose query the server ends (`pg_terminate_backend`) prints the
//!   server's FATAL, as it does directly;
//! - a psql killed (SIGKILL) during `pg_sleep(60)` leaves no trace of its query in
//!   `pg_stat_activity` within 1 s.

mod harness;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::clients::{su_count, su_sql};
use harness::fake_patroni::FakePatroni;
use harness::pg::{pg_bin, shared_cluster, APP_DB, APP_PASSWORD, APP_USER};
use harness::proxy::proxy_for;
use harness::wait::*;
use switchyard::proxy::RunningProxy;

const SESSION: &str = "pool: { mode: session, size: 2 }\n";
const TRANSACTION: &str = "pool: { mode: transaction, size: 2 }\n";

/// こんにちは in EUC-JP and in UTF-8.
const JAPANESE_EUC_JP: &[u8] = b"\xa4\xb3\xa4\xf3\xa4\xcb\xa4\xc1\xa4\xcf";
const JAPANESE_UTF8_HEX: &str = "e38193e38293e381abe381a1e381af";

/// psql with unaligned, tuples-only output to `port`, one `-c` per command; no
/// psqlrc, password file or environment settings of the machine leak in.
fn psql_command(port: u16, commands: &[OsString]) -> Command {
    let mut cmd = Command::new(pg_bin("psql"));
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", APP_USER, "-d", APP_DB]);
    for command in commands {
        cmd.arg("-c").arg(command);
    }
    cmd.env("PGPASSWORD", APP_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5")
        .env("HOME", "/nonexistent")
        .env_remove("PGOPTIONS")
        .env_remove("PGCLIENTENCODING")
        .env_remove("PGSERVICE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn run(mut cmd: Command) -> Output {
    within(
        30,
        "psql",
        blocking(move || cmd.output().expect("run psql")),
    )
    .await
}

/// Each target to run psql against: the proxy in both modes and PostgreSQL
/// itself. The proxies live as long as the returned guards.
async fn targets() -> (Vec<(&'static str, u16)>, Vec<(RunningProxy, FakePatroni)>) {
    let port = shared_cluster().await.port(0);
    let mut targets = vec![("direct", port)];
    let mut guards = Vec::new();
    for (label, pool) in [("session", SESSION), ("transaction", TRANSACTION)] {
        let (proxy, api) = proxy_for(port, pool).await;
        targets.push((label, proxy.listener_addr("rw").expect("rw").port()));
        guards.push((proxy, api));
    }
    (targets, guards)
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_with_pgclientencoding_euc_jp_round_trips_japanese() {
    let (targets, _guards) = targets().await;
    for (label, port) in targets {
        // A client in UTF8 first: the pool's first login would otherwise be the
        // EUC_JP client's own.
        let first = run(psql_command(port, &["select 1".into()])).await;
        assert!(first.status.success(), "{label}: a UTF8 psql first");

        let mut select = b"select '".to_vec();
        select.extend_from_slice(JAPANESE_EUC_JP);
        select.extend_from_slice(b"', encode(convert_to('");
        select.extend_from_slice(JAPANESE_EUC_JP);
        select.extend_from_slice(b"', 'UTF8'), 'hex')");
        let mut cmd = psql_command(
            port,
            &[
                r"\echo :ENCODING".into(),
                "show client_encoding".into(),
                OsString::from_vec(select),
            ],
        );
        cmd.env("PGCLIENTENCODING", "EUC_JP");
        let out = run(cmd).await;
        assert!(
            out.status.success(),
            "{label}: psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut expected = b"EUC_JP\nEUC_JP\n".to_vec();
        expected.extend_from_slice(JAPANESE_EUC_JP);
        expected.extend_from_slice(format!("|{JAPANESE_UTF8_HEX}\n").as_bytes());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&expected),
            "{label}: the encoding psql was told, the session's, the text read back in \
             EUC_JP and as the server stored it (UTF-8)"
        );
        assert_eq!(out.stdout, expected, "{label}: byte for byte");
    }
}

/// Starts psql running `sql` and waits until the server runs it; returns the
/// child and the backend's pid.
async fn psql_running(port: u16, pg_port: u16, sql: &str, marker: &str) -> (Child, i64) {
    let child = psql_command(port, &[sql.into()])
        .spawn()
        .expect("spawn psql");
    let running = format!(
        "select count(*) from pg_stat_activity where state = 'active' \
         and query like '%/* {marker} */%' and pid <> pg_backend_pid()"
    );
    eventually(Duration::from_secs(10), "psql's query runs", || {
        let running = running.clone();
        async move { su_count(pg_port, &running).await == 1 }
    })
    .await;
    let pid = su_count(
        pg_port,
        &format!(
            "select pid from pg_stat_activity where query like '%/* {marker} */%' \
             and pid <> pg_backend_pid()"
        ),
    )
    .await;
    (child, pid)
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_prints_the_servers_fatal_when_its_query_is_terminated() {
    let pg_port = shared_cluster().await.port(0);
    let (targets, _guards) = targets().await;
    for (label, port) in targets {
        let marker = format!("sy_psql_terminated_{label}");
        let sql = format!("select pg_sleep(30) /* {marker} */");
        let (child, pid) = psql_running(port, pg_port, &sql, &marker).await;
        su_sql(pg_port, &format!("select pg_terminate_backend({pid})")).await;
        let out = within(10, "psql ends", blocking(move || child.wait_with_output()))
            .await
            .expect("psql output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{label}: psql's exit code: {stderr}"
        );
        assert!(
            stderr.contains("FATAL:  terminating connection due to administrator command"),
            "{label}: psql prints the server's FATAL: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_psql_leaves_no_query_running() {
    let pg_port = shared_cluster().await.port(0);
    let (targets, _guards) = targets().await;
    // Directly, PostgreSQL notices a client that left only when it next writes
    // to it: the query would run its full 60 s.
    for (label, port) in targets.into_iter().filter(|(l, _)| *l != "direct") {
        let marker = format!("sy_psql_killed_{label}");
        let sql = format!("select pg_sleep(60) /* {marker} */");
        let (mut child, _) = psql_running(port, pg_port, &sql, &marker).await;
        child.kill().expect("SIGKILL psql");
        let killed = Instant::now();
        child.wait().expect("reap psql");
        let trace = format!(
            "select count(*) from pg_stat_activity where query like '%/* {marker} */%' \
             and pid <> pg_backend_pid()"
        );
        eventually(
            Duration::from_secs(1),
            &format!("{label}: no trace of the killed psql's query within 1 s"),
            || {
                let trace = trace.clone();
                async move { su_count(pg_port, &trace).await == 0 }
            },
        )
        .await;
        eprintln!("{label}: gone after {:?}", killed.elapsed());
    }
}
