//! Session state in transaction mode, against a real PostgreSQL: what one client
//! leaves on a server never reaches the next client of the pool (issue #13 item 2:
//! roles, `set_config`, untracked SET forms, temporary tables, advisory locks, held
//! cursors, SQL-level prepared statements, LISTEN hidden in a multi-statement
//! query), settings made in a committed transaction follow their client to its next
//! server while rolled-back, failed and `SET LOCAL` ones do not (issue #19), and the
//! proxy's shared statement names cannot be replaced by a client (issue #13 item 5).
//! Each form is tried through the simple and the extended protocol.
//!
//! With `size: 1` every client of a pool runs on the same backend, so a leak shows
//! up in the other client's next statement. With `size: 2` a second client holding
//! one server in an open transaction makes the first one's next transaction run on
//! the other server.

mod harness;

use std::net::SocketAddr;

use harness::clients::*;
use harness::pg::shared_cluster;
use harness::proxy::*;
use harness::raw_client::*;
use tokio_postgres::{Client, SimpleQueryMessage};

const USER: &str = "app_md5";
const PASSWORD: &str = "app_md5_pw";

/// How a client runs a statement.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    /// One simple Query (may hold several statements).
    Simple,
    /// tokio-postgres `execute`: a named statement, Bind, Execute, Sync.
    Named,
    /// Raw Parse of the unnamed statement (what JDBC and psycopg 3 send).
    Unnamed,
}

async fn proxy_with_pool(size: u32) -> (switchyard::proxy::RunningProxy, SocketAddr, u16) {
    let cluster = shared_cluster().await;
    su_sql(
        cluster.port(0),
        "DO $$BEGIN CREATE ROLE sy_tenant_a; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END$$; \
         GRANT sy_tenant_a TO app_md5",
    )
    .await;
    // One worker thread: the tests follow which server a client gets, and with one
    // worker the pool's idle list is one stack, reused most recent first (with
    // several, each worker first reuses the servers it left itself).
    let (proxy, api) = proxy_for(
        cluster.port(0),
        &format!("runtime: {{ workers: 1 }}\npool: {{ mode: transaction, size: {size} }}\n"),
    )
    .await;
    // The fake Patroni API must outlive the test.
    std::mem::forget(api);
    let rw = proxy.listener_addr("rw").expect("rw");
    (proxy, rw, cluster.port(0))
}

async fn client(rw: SocketAddr) -> Client {
    connect(rw, USER, PASSWORD).await
}

/// Runs `sql` as `who` through `protocol`; panics on an error.
async fn run(rw: SocketAddr, client: &Client, protocol: Protocol, sql: &str, who: &str) {
    let result = try_run(rw, client, protocol, sql).await;
    if let Err(e) = result {
        panic!("{who}: {sql} ({protocol:?}): {e}");
    }
}

/// Runs `sql`; the SQLSTATE of the error, if any.
async fn try_run(
    rw: SocketAddr,
    client: &Client,
    protocol: Protocol,
    sql: &str,
) -> Result<(), String> {
    let code = |e: tokio_postgres::Error| {
        e.as_db_error()
            .map(|db| db.code().code().to_string())
            .unwrap_or_else(|| format!("{e:?}"))
    };
    match protocol {
        Protocol::Simple => client.batch_execute(sql).await.map_err(code),
        Protocol::Named => client.execute(sql, &[]).await.map(|_| ()).map_err(code),
        // A raw client is a session of its own: see raw_run.
        Protocol::Unnamed => Err(format!("{sql}: run unnamed statements with raw_run ({rw})")),
    }
}

async fn raw_run(raw: &mut RawClient, sql: &str) -> Result<(), String> {
    let bytes = [
        parse_msg("", sql),
        bind_msg("", &[]),
        execute_msg(),
        sync_msg(),
    ]
    .concat();
    let messages = raw.round_trip(&bytes).await;
    match error_responses(&messages).first() {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    }
}

async fn value(client: &Client, sql: &str, who: &str) -> String {
    simple_value(client, sql, who).await.unwrap_or_default()
}

/// One way to leave state on a server, and how the next client would see it.
struct Leak {
    sql: &'static str,
    /// Run by the next client: the answer of a clean session.
    check: &'static str,
    clean: &'static str,
    /// The client that ran `sql` still sees this in its next transaction.
    kept: Option<&'static str>,
}

const LEAKS: &[Leak] = &[
    Leak {
        sql: "SET ROLE sy_tenant_a",
        check: "select current_user",
        clean: USER,
        kept: Some("sy_tenant_a"),
    },
    Leak {
        sql: "SET role TO sy_tenant_a; RESET ALL",
        check: "select current_user",
        clean: USER,
        kept: Some("sy_tenant_a"),
    },
    Leak {
        sql: "select set_config('app.tenant_id', '42', false)",
        check: "select coalesce(current_setting('app.tenant_id', true), '')",
        clean: "",
        kept: None,
    },
    Leak {
        sql: "select 1; SET search_path TO pg_catalog",
        check: "select current_setting('search_path') = 'pg_catalog'",
        clean: "f",
        kept: Some("t"),
    },
    Leak {
        sql: "/* why */\nSET statement_timeout = 1234",
        check: "select current_setting('statement_timeout') = '1234ms'",
        clean: "f",
        kept: Some("t"),
    },
    Leak {
        sql: "SET TIME ZONE 'Asia/Tokyo'",
        check: "select current_setting('TimeZone') = 'Asia/Tokyo'",
        clean: "f",
        kept: Some("t"),
    },
    Leak {
        sql: "SET SCHEMA 'pg_catalog'",
        check: "select current_setting('search_path') = 'pg_catalog'",
        clean: "f",
        kept: Some("t"),
    },
    Leak {
        sql: "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        check: "show default_transaction_read_only",
        clean: "off",
        kept: None,
    },
    Leak {
        sql: "CREATE TEMP TABLE sy_tmp_leak (a int)",
        check: "select to_regclass('pg_temp.sy_tmp_leak') is null",
        clean: "t",
        kept: None,
    },
    Leak {
        sql: "select pg_advisory_lock(4242)",
        check: "select count(*) from pg_locks where locktype = 'advisory' \
                and objid = 4242 and pid = pg_backend_pid()",
        clean: "0",
        kept: None,
    },
    Leak {
        sql: "PREPARE user_q AS select 1",
        check: "select count(*) from pg_prepared_statements where not name like 'sy\\_%'",
        clean: "0",
        kept: None,
    },
];

#[tokio::test(flavor = "multi_thread")]
async fn session_state_never_reaches_the_next_client() {
    let (_proxy, rw, _) = proxy_with_pool(1).await;
    let b = client(rw).await;
    for protocol in [Protocol::Simple, Protocol::Named, Protocol::Unnamed] {
        for leak in LEAKS {
            let sql = leak.sql;
            if !matches!(protocol, Protocol::Simple) && sql.contains(';') {
                continue; // one statement per Parse
            }
            let who = format!("A ({protocol:?}: {sql})");
            let a = client(rw).await;
            match protocol {
                Protocol::Unnamed => {
                    let mut raw = RawClient::login(rw, "A (unnamed Parse)").await;
                    raw_run(&mut raw, sql)
                        .await
                        .unwrap_or_else(|e| panic!("{who}: {e}"));
                    // The raw client goes away cleanly; B comes next.
                    raw.send(&message(b'X', &[])).await;
                }
                _ => run(rw, &a, protocol, sql, &who).await,
            }
            assert_eq!(
                value(&b, leak.check, "B").await,
                leak.clean,
                "B after {who}: {}",
                leak.check
            );
            if let (Some(kept), Protocol::Simple | Protocol::Named) = (leak.kept, protocol) {
                assert_eq!(
                    value(&a, leak.check, &who).await,
                    kept,
                    "{who} keeps its own setting: {}",
                    leak.check
                );
                assert_eq!(
                    value(&b, leak.check, "B").await,
                    leak.clean,
                    "B after {who} used its setting again"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn held_cursors_and_listen_do_not_cross_clients() {
    let (_proxy, rw, _) = proxy_with_pool(1).await;
    let a = client(rw).await;
    let b = client(rw).await;
    a.batch_execute("BEGIN; DECLARE sy_c CURSOR WITH HOLD FOR select 1; COMMIT")
        .await
        .expect("A: WITH HOLD cursor");
    assert_eq!(value(&b, "select count(*) from pg_cursors", "B").await, "0");
    for sql in ["select 1; listen sy_events", "/* c */ LISTEN sy_events"] {
        assert_eq!(
            try_run(rw, &a, Protocol::Simple, sql).await,
            Err("0A000".to_string()),
            "{sql}"
        );
    }
    assert_eq!(
        try_run(rw, &a, Protocol::Named, "LISTEN sy_events").await,
        Err("0A000".to_string())
    );
    let mut raw = RawClient::login(rw, "raw").await;
    let error = raw_run(&mut raw, "listen sy_events").await;
    assert!(
        error.as_ref().is_err_and(|e| e.contains("0A000")),
        "{error:?}"
    );
    assert_eq!(
        value(&b, "select count(*) from pg_listening_channels()", "B").await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_statement_names_cannot_be_replaced() {
    let (_proxy, rw, _) = proxy_with_pool(1).await;
    let a = client(rw).await;
    // A prepared statement of the proxy's on the server; its name is long and keyed.
    let tx_client = client(rw).await;
    let statement = tx_client
        .prepare("select 'genuine'::text")
        .await
        .expect("prepare");
    let name = value(
        &tx_client,
        "select name from pg_prepared_statements where statement = 'select ''genuine''::text'",
        "A",
    )
    .await;
    assert!(
        name.starts_with("sy_") && name.len() == 35,
        "server statement name {name:?}"
    );
    for sql in [
        format!("DEALLOCATE {name}"),
        format!("DEALLOCATE PREPARE \"{}\"", name.to_uppercase()),
        format!("PREPARE {name} AS select 'evil'::text"),
        format!("EXECUTE {name}"),
        "select 1; PREPARE Sy_x AS select 1".to_string(),
    ] {
        for protocol in [Protocol::Simple, Protocol::Named] {
            if matches!(protocol, Protocol::Named) && sql.contains(';') {
                continue;
            }
            assert_eq!(
                try_run(rw, &a, protocol, &sql).await,
                Err("42501".to_string()),
                "{sql} ({protocol:?})"
            );
        }
    }
    let row = tx_client.query_one(&statement, &[]).await.expect("run");
    assert_eq!(row.get::<_, String>(0), "genuine");
}

/// What the issue #19 tests compare: settings, and the backend.
async fn state(client: &Client, who: &str) -> (Vec<String>, String) {
    let messages = client
        .simple_query(
            "select current_setting('search_path'), current_setting('TimeZone'), \
             current_setting('statement_timeout'), \
             coalesce(current_setting('sy.app_x', true), ''), \
             current_setting('application_name'), pg_backend_pid()::text",
        )
        .await
        .unwrap_or_else(|e| panic!("{who}: state: {}", describe(&e)));
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{who}: no row"));
    let mut values: Vec<String> = (0..6)
        .map(|i| row.get(i).unwrap_or_default().to_string())
        .collect();
    let pid = values.pop().unwrap_or_default();
    (values, pid)
}

const SETTINGS: [&str; 5] = [
    "SET search_path TO sy_x19, public",
    "SET TimeZone = 'Asia/Tokyo'",
    "SET statement_timeout = 4321",
    "SET sy.app_x = '7'",
    "SET application_name = 'sy_issue19'",
];

fn set_values() -> Vec<String> {
    ["sy_x19, public", "Asia/Tokyo", "4321ms", "7", "sy_issue19"]
        .map(str::to_string)
        .to_vec()
}

/// Runs `transaction` as a fresh client A, then makes A's next transaction run on
/// the other server and returns what A sees there; also checks that B, on A's
/// former server, sees a clean session.
async fn after_rotation<F, Fut>(rw: SocketAddr, transaction: F) -> Vec<String>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = (Client, String)>,
{
    let clean = state(&client(rw).await, "clean").await.0;
    let (a, pid_before) = transaction(client(rw).await).await;
    let b = client(rw).await;
    // A server that needs a reset goes back to the pool only after it: A has its
    // reply before then.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    b.batch_execute("BEGIN").await.expect("B: begin");
    let (b_state, b_pid) = state(&b, "B").await;
    let (a_state, a_pid) = state(&a, "A").await;
    assert_eq!(
        b_pid, pid_before,
        "B holds A's former server (idle servers are reused most recent first)"
    );
    assert_ne!(
        a_pid, pid_before,
        "A's next transaction runs on the other server"
    );
    assert_eq!(
        b_state, clean,
        "B on A's former server sees a clean session"
    );
    b.batch_execute("COMMIT").await.expect("B: commit");
    a_state
        .into_iter()
        .zip(clean)
        .map(|(a, c)| if a == c { "-".into() } else { a })
        .collect()
}

async fn pid(client: &Client) -> String {
    value(client, "select pg_backend_pid()::text", "A").await
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_of_a_committed_transaction_follow_the_client() {
    let (_proxy, rw, _) = proxy_with_pool(2).await;
    // Extended protocol (named statements) inside a tokio-postgres transaction.
    let seen = after_rotation(rw, |mut a| async move {
        let tx = a.transaction().await.expect("begin");
        for sql in SETTINGS {
            tx.execute(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
        }
        let pid: String = tx
            .query_one("select pg_backend_pid()::text", &[])
            .await
            .expect("pid")
            .get(0);
        tx.commit().await.expect("commit");
        (a, pid)
    })
    .await;
    assert_eq!(seen, set_values(), "committed (extended protocol)");

    // Simple protocol, one statement per query, ended with END.
    let seen = after_rotation(rw, |a| async move {
        a.batch_execute("BEGIN").await.expect("begin");
        for sql in SETTINGS {
            a.batch_execute(sql).await.expect(sql);
        }
        let pid = pid(&a).await;
        a.batch_execute("END").await.expect("end");
        (a, pid)
    })
    .await;
    assert_eq!(seen, set_values(), "committed (simple protocol)");

    // Raw unnamed Parse/Bind/Execute between simple BEGIN and COMMIT.
    let mut raw = RawClient::login(rw, "raw A").await;
    let begin = raw.round_trip(&query_msg("BEGIN")).await;
    assert!(error_responses(&begin).is_empty());
    raw_run(&mut raw, "SET statement_timeout = 4321")
        .await
        .expect("unnamed SET");
    let (_, pid_before) = raw_state(&mut raw).await;
    let commit = raw.round_trip(&query_msg("COMMIT")).await;
    assert!(error_responses(&commit).is_empty());
    let b = client(rw).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    b.batch_execute("BEGIN").await.expect("B: begin");
    let (timeout, pid_after) = raw_state(&mut raw).await;
    assert_ne!(pid_after, pid_before, "the raw client rotated");
    assert_eq!(timeout, "4321ms", "committed (unnamed statement)");
    assert_eq!(show(&b, "statement_timeout", "B").await, "0");
    b.batch_execute("COMMIT").await.expect("B: commit");
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_of_rolled_back_failed_and_local_work_do_not_follow() {
    let (_proxy, rw, _) = proxy_with_pool(2).await;
    let none = vec!["-".to_string(); 5];
    let cases: [(&str, &[&str], Vec<String>); 6] = [
        (
            "rollback",
            &["BEGIN", "SET search_path TO sy_rolled", "ROLLBACK"],
            none.clone(),
        ),
        (
            "savepoint rolled back to",
            &[
                "BEGIN",
                "SET statement_timeout = 4321",
                "SAVEPOINT s",
                "SET search_path TO sy_inner",
                "ROLLBACK TO SAVEPOINT s",
                "RELEASE s",
                "COMMIT",
            ],
            vec![
                "-".into(),
                "-".into(),
                "4321ms".into(),
                "-".into(),
                "-".into(),
            ],
        ),
        (
            "SET LOCAL and set_config(..., true)",
            &[
                "BEGIN",
                "SET LOCAL statement_timeout = 777",
                "select set_config('sy.app_x', '9', true)",
                "COMMIT",
            ],
            none.clone(),
        ),
        (
            "failed transaction",
            &[
                "BEGIN",
                "SET search_path TO sy_failed",
                "select 1/0",
                "COMMIT",
            ],
            none.clone(),
        ),
        (
            "implicit transaction with an error",
            &["SET search_path TO sy_implicit; select 1/0"],
            none.clone(),
        ),
        (
            "commit and chain, then rollback",
            &["BEGIN; SET statement_timeout = 4321; COMMIT AND CHAIN; \
                 SET search_path TO sy_chain; ROLLBACK"],
            vec![
                "-".into(),
                "-".into(),
                "4321ms".into(),
                "-".into(),
                "-".into(),
            ],
        ),
    ];
    for (what, statements, expected) in cases {
        let seen = after_rotation(rw, |a| async move {
            // With nobody else active, A's next transactions reuse this server.
            let pid = pid(&a).await;
            for sql in statements {
                // Some of them fail on purpose.
                let _ = a.batch_execute(sql).await;
            }
            (a, pid)
        })
        .await;
        assert_eq!(seen, expected, "{what}");
    }
}

/// The other ways a transaction ends (ABORT, an implicit transaction that
/// succeeds, BEGIN/COMMIT inside one simple query, COMMIT AND CHAIN then COMMIT)
/// and settings changed without SET, which only the server's ParameterStatus
/// reports (`set_config` of a reported parameter: kept when committed, not when
/// rolled back).
#[tokio::test(flavor = "multi_thread")]
async fn settings_follow_every_way_a_transaction_ends() {
    let (_proxy, rw, _) = proxy_with_pool(2).await;
    let only = |index: usize, value: &str| -> Vec<String> {
        let mut expected = vec!["-".to_string(); 5];
        expected[index] = value.to_string();
        expected
    };
    let cases: [(&str, &[&str], Vec<String>); 6] = [
        (
            "ABORT",
            &["BEGIN", "SET search_path TO sy_abort", "ABORT"],
            vec!["-".to_string(); 5],
        ),
        (
            "implicit transaction that succeeds",
            &["SET statement_timeout = 4321; select 1"],
            only(2, "4321ms"),
        ),
        (
            "BEGIN and COMMIT inside one simple query",
            &["SET application_name = 'sy_before_begin'; BEGIN; \
               SET statement_timeout = 4321; COMMIT"],
            vec![
                "-".into(),
                "-".into(),
                "4321ms".into(),
                "-".into(),
                "sy_before_begin".into(),
            ],
        ),
        (
            "COMMIT AND CHAIN, then COMMIT",
            &[
                "BEGIN",
                "SET statement_timeout = 4321",
                "COMMIT AND CHAIN",
                "SET search_path TO sy_chain, public",
                "COMMIT",
            ],
            vec![
                "sy_chain, public".into(),
                "-".into(),
                "4321ms".into(),
                "-".into(),
                "-".into(),
            ],
        ),
        (
            "set_config of a reported parameter, committed",
            &[
                "BEGIN",
                "select set_config('TimeZone', 'Asia/Tokyo', false)",
                "COMMIT",
            ],
            only(1, "Asia/Tokyo"),
        ),
        (
            "set_config of a reported parameter, rolled back",
            &[
                "BEGIN",
                "select set_config('TimeZone', 'Asia/Tokyo', false)",
                "ROLLBACK",
            ],
            vec!["-".to_string(); 5],
        ),
    ];
    for (what, statements, expected) in cases {
        let seen = after_rotation(rw, |a| async move {
            let pid = pid(&a).await;
            for sql in statements {
                a.batch_execute(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {sql}: {}", describe(&e)));
            }
            (a, pid)
        })
        .await;
        assert_eq!(seen, expected, "{what}");
    }
}

/// statement_timeout and the backend pid, as a raw client sees them.
async fn raw_state(raw: &mut RawClient) -> (String, String) {
    let rows = raw
        .round_trip(&query_msg(
            "select current_setting('statement_timeout'), pg_backend_pid()::text",
        ))
        .await;
    let row = data_rows(&rows).remove(0);
    (
        row[0].clone().unwrap_or_default(),
        row[1].clone().unwrap_or_default(),
    )
}
