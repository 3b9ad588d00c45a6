//! Connection pooling through Switchyard: transaction mode (many clients over few
//! server connections, protocol-level prepared statements, session state that
//! follows its client and never leaks), session mode (a server is reset before the
//! next client gets it), per-listener mode override, checkout timeout, the client
//! limit, cancel in both modes, clients that vanish mid-transaction and the server
//! connection lifecycle settings.
//!
//! Tests that count server connections in `pg_stat_activity` use a private
//! primary (`PgCluster::start(0)`), because the shared cluster is used by the other
//! tests of this binary at the same time. Tests on the shared cluster prove
//! sharing through `pg_backend_pid()` instead (with `size: 1`, every client of a
//! pool must see the same backend).

mod harness;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::clients::*;
use harness::pg::{self, shared_cluster, PgCluster};
use harness::proc::run_with_deadline;
use harness::proxy::*;
use harness::raw_client::*;
use harness::wait::*;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

// ---------------------------------------------------------------------------
// Pooling-specific helpers
// ---------------------------------------------------------------------------

/// A private primary without replicas, for tests that count server connections.
async fn private_primary() -> PgCluster {
    blocking(|| PgCluster::start(0)).await
}

/// Stops a private cluster off the async runtime.
async fn stop_cluster(cluster: PgCluster) {
    blocking(move || drop(cluster)).await
}

/// The session settings these tests compare, as a client sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    application_name: String,
    search_path: String,
    time_zone: String,
    date_style: String,
}

async fn settings(client: &Client, who: &str) -> Settings {
    Settings {
        application_name: show(client, "application_name", who).await,
        search_path: show(client, "search_path", who).await,
        time_zone: show(client, "TimeZone", who).await,
        date_style: show(client, "DateStyle", who).await,
    }
}

/// Settings of a fresh direct session of a tokio-postgres client that sets no
/// startup parameters beyond what tokio-postgres always sends.
async fn server_defaults(pg_port: u16) -> Settings {
    let client = direct(pg_port).await;
    settings(&client, "direct session (defaults)").await
}

/// The error a client gets when it cannot have a server connection (checkout
/// timeout). The proxy sends FATAL 53300 and closes; the driver reports either the
/// DbError or, if it saw the close first, a closed connection.
fn assert_53300_or_closed(error: &tokio_postgres::Error, what: &str) {
    match error.as_db_error() {
        Some(db) => {
            assert_eq!(
                db.code().code(),
                "53300",
                "{what}: expected SQLSTATE 53300, got {} {}: {}",
                db.severity(),
                db.code().code(),
                db.message()
            );
            let message = db.message();
            assert!(
                message.contains("timed out") && message.contains("waiting for a server connection"),
                "{what}: 53300 message should say it timed out waiting for a server connection: {message:?}"
            );
        }
        None => assert!(
            error.is_closed(),
            "{what}: expected SQLSTATE 53300 (or a closed connection right after it), got {error:?}"
        ),
    }
}

/// Counts `app` client backends in `appdb` (only meaningful on a private cluster).
const APP_BACKENDS: &str = "select count(*) from pg_stat_activity \
     where usename = 'app' and datname = 'appdb' and backend_type = 'client backend'";

/// Samples [`APP_BACKENDS`] every 50 ms on a thread until finished.
struct BackendSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<i64>>,
}

impl BackendSampler {
    fn start(pg_port: u16) -> BackendSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Ok(out) = pg::try_psql(
                    pg_port,
                    pg::SUPERUSER,
                    pg::SUPERUSER_PASSWORD,
                    "postgres",
                    &[APP_BACKENDS],
                ) {
                    if let Ok(n) = out.parse() {
                        samples.push(n);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        BackendSampler { stop, thread }
    }

    async fn finish(self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        blocking(move || thread.join().expect("sampler thread")).await
    }
}

/// Asserts the sampler saw server connections, and never more than `size`.
fn assert_samples_within(samples: &[i64], size: i64, what: &str) {
    assert!(
        samples.len() >= 3,
        "{what}: too few pg_stat_activity samples ({}) to judge",
        samples.len()
    );
    let max = samples.iter().copied().max().unwrap_or(0);
    assert!(
        max >= 1,
        "{what}: pg_stat_activity never showed a server connection for app/appdb (sampler broken?)"
    );
    assert!(
        max <= size,
        "{what}: up to {max} server connections for (appdb, app) were open at once; pool size is {size}. Samples: {samples:?}"
    );
}

// ---------------------------------------------------------------------------
// Transaction mode: many clients, few servers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn transaction_mode_serves_200_clients_over_5_server_connections() {
    const CLIENTS: usize = 200;
    const TRANSACTIONS: i32 = 10;
    const SIZE: i64 = 5;
    let cluster = private_primary().await;
    let port = cluster.port(0);
    direct(port)
        .await
        .batch_execute("create table pool_many(client int not null, n int not null)")
        .await
        .expect("create pool_many");
    let (proxy, _api) = proxy_for(port, "pool: { mode: transaction, size: 5 }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let sampler = BackendSampler::start(port);

    // All 200 clients connected at the same time.
    let attempts = within(
        120,
        "200 clients connecting",
        // Bounded concurrency: SCRAM in a debug build is CPU-heavy, and 200
        // handshakes at once would just trip the startup timeout.
        futures_util::stream::StreamExt::collect::<Vec<_>>(
            futures_util::stream::StreamExt::buffered(
                futures_util::stream::iter((0..CLIENTS).map(|_| try_connect(rw, "app", "app_pw"))),
                8,
            ),
        ),
    )
    .await;
    let mut clients = Vec::new();
    for (i, attempt) in attempts.into_iter().enumerate() {
        clients.push(attempt.unwrap_or_else(|e| {
            panic!(
                "client {i} of {CLIENTS} could not connect through a size-5 transaction pool: {}",
                describe(&e)
            )
        }));
    }
    let idle = su_count(port, APP_BACKENDS).await;
    assert!(
        idle <= SIZE,
        "{CLIENTS} idle clients must hold no server connections beyond the pool: {idle} server connections for (appdb, app), pool size {SIZE}"
    );

    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            tokio::spawn(async move {
                let id = i as i32;
                let fail = |what: &str, e: tokio_postgres::Error| format!("client {i}: {what}: {}", describe(&e));
                let insert = client
                    .prepare("insert into pool_many(client, n) values ($1, $2)")
                    .await
                    .map_err(|e| fail("prepare insert", e))?;
                let count = client
                    .prepare("select count(*) from pool_many where client = $1")
                    .await
                    .map_err(|e| fail("prepare select", e))?;
                let mut pids = HashSet::new();
                for n in 0..TRANSACTIONS {
                    let tx = client
                        .transaction()
                        .await
                        .map_err(|e| fail(&format!("BEGIN #{n}"), e))?;
                    tx.execute(&insert, &[&id, &n])
                        .await
                        .map_err(|e| fail(&format!("insert #{n}"), e))?;
                    let seen: i64 = tx
                        .query_one(&count, &[&id])
                        .await
                        .map_err(|e| fail(&format!("select #{n}"), e))?
                        .get(0);
                    let pid: i32 = tx
                        .query_one("select pg_backend_pid()", &[])
                        .await
                        .map_err(|e| fail(&format!("pid #{n}"), e))?
                        .get(0);
                    tx.commit()
                        .await
                        .map_err(|e| fail(&format!("COMMIT #{n}"), e))?;
                    if seen != i64::from(n) + 1 {
                        return Err(format!(
                            "client {i}: after insert #{n} its own prepared select counted {seen} rows, expected {}",
                            n + 1
                        ));
                    }
                    pids.insert(pid);
                }
                // Returning the client keeps it connected until every task is done.
                Ok::<_, String>((client, pids))
            })
        })
        .collect();
    let results = within(
        300,
        "200 clients x 10 transactions",
        futures_util::future::join_all(tasks),
    )
    .await;
    let mut failures = Vec::new();
    let mut pids = BTreeSet::new();
    let mut still_connected = Vec::new();
    for result in results {
        match result.expect("client task") {
            Ok((client, p)) => {
                pids.extend(p);
                still_connected.push(client);
            }
            Err(e) => failures.push(e),
        }
    }
    let samples = sampler.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients failed; first ones: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        pids.len() as i64 <= SIZE,
        "clients were served by {} distinct backends, pool size is {SIZE}: {pids:?}",
        pids.len()
    );
    assert_samples_within(&samples, SIZE, "200 clients over size 5");

    let check = direct(port).await;
    let total: i64 = check
        .query_one("select count(*) from pool_many", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        total,
        CLIENTS as i64 * i64::from(TRANSACTIONS),
        "total rows"
    );
    let wrong: i64 = check
        .query_one(
            "select count(*) from (select client from pool_many group by client having count(*) <> $1 or count(distinct n) <> $1) x",
            &[&i64::from(TRANSACTIONS)],
        )
        .await
        .expect("per-client counts")
        .get(0);
    let distinct_clients: i64 = check
        .query_one("select count(distinct client) from pool_many", &[])
        .await
        .expect("distinct")
        .get(0);
    assert_eq!(
        (distinct_clients, wrong),
        (CLIENTS as i64, 0),
        "every client must have exactly {TRANSACTIONS} rows"
    );
    drop(still_connected);
    drop(check);
    stop_cluster(cluster).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_prepared_with_50_clients_over_5_server_connections() {
    let cluster = private_primary().await;
    let port = cluster.port(0);
    let pgbench = pg::pg_bin("pgbench");
    // Initialise directly on the node: the run below is what goes through the proxy.
    let init = {
        let pgbench = pgbench.clone();
        blocking(move || {
            Command::new(&pgbench)
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "app"])
                .args(["-i", "-s", "1", "-q", "appdb"])
                .env("PGPASSWORD", "app_pw")
                .env("PGSSLMODE", "disable")
                .output()
                .expect("run pgbench -i")
        })
        .await
    };
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );

    let (proxy, _api) = proxy_for(port, "pool: { mode: transaction, size: 5 }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let sampler = BackendSampler::start(port);
    let args: Vec<String> = ["-h", "127.0.0.1", "-p", &rw.port().to_string(), "-U", "app"]
        .into_iter()
        .chain(["-c", "50", "-j", "2", "-t", "20", "-M", "prepared", "appdb"])
        .map(String::from)
        .collect();
    let (output, timed_out) = blocking(move || {
        run_with_deadline(
            Command::new(&pgbench)
                .args(&args)
                .env("PGPASSWORD", "app_pw")
                .env("PGSSLMODE", "disable"),
            Duration::from_secs(180),
        )
    })
    .await;
    let samples = sampler.finish().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !timed_out,
        "pgbench -M prepared -c 50 over size 5 did not finish within 180 s (killed):\n{stdout}\n{stderr}"
    );
    assert!(
        output.status.success(),
        "pgbench -M prepared -c 50 over size 5 failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "pgbench reports failed transactions:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("number of transactions actually processed: 1000/1000"),
        "pgbench did not complete all 1000 transactions:\n{stdout}\n{stderr}"
    );
    assert_samples_within(&samples, 5, "pgbench -c 50 over size 5");
    stop_cluster(cluster).await;
}

// ---------------------------------------------------------------------------
// Transaction mode: prepared statements
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_follow_the_client_across_server_connections() {
    const SIZE: usize = 3;
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(cluster.port(0), "pool: { mode: transaction, size: 3 }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");

    // Part 1, deterministic: make A's prepared statement run on a server other than
    // the one it last used, by holding that server in another client's open
    // transaction.
    let a = connect(rw, "app", "app_pw").await;
    let doubled = a
        .prepare("select $1::int * 2, pg_backend_pid()")
        .await
        .expect("A: prepare");
    let run_a = |x: i32| {
        let a = &a;
        let doubled = &doubled;
        async move {
            let row = a.query_one(doubled, &[&x]).await.unwrap_or_else(|e| {
                panic!("A: execute prepared statement with {x}: {}", describe(&e))
            });
            let value: i32 = row.get(0);
            assert_eq!(
                value,
                x * 2,
                "A's prepared statement returned a wrong result"
            );
            row.get::<_, i32>(1)
        }
    };
    let mut last_pid = run_a(1).await;
    let holders = [
        connect(rw, "app", "app_pw").await,
        connect(rw, "app", "app_pw").await,
    ];
    let mut forced = None;
    for attempt in 0..50 {
        let mut began = 0;
        let mut holding_last = false;
        for (h, holder) in holders.iter().enumerate() {
            holder
                .batch_execute("begin")
                .await
                .unwrap_or_else(|e| panic!("holder {h}: begin: {}", describe(&e)));
            began += 1;
            if backend_pid(holder, "holder").await == last_pid {
                holding_last = true;
                break;
            }
        }
        if holding_last {
            let pid = run_a(attempt + 10).await;
            assert_ne!(
                pid, last_pid,
                "A's statement ran on the backend another client holds in an open transaction"
            );
            forced = Some((last_pid, pid));
        }
        for holder in &holders[..began] {
            holder
                .batch_execute("commit")
                .await
                .expect("holder: commit");
        }
        if forced.is_some() {
            break;
        }
        last_pid = run_a(attempt + 100).await;
    }
    assert!(
        forced.is_some(),
        "in 50 attempts no other client was ever given the server connection A had just used; \
         transaction-mode clients must share server connections"
    );
    // A's statement keeps working on whatever server comes next, in and out of transactions.
    for x in 0..5 {
        run_a(x).await;
    }

    // Part 2, load: clients interleave prepared statements (same SQL text across
    // clients), pipeline them, close some and prepare new ones, over 3 servers.
    let clients: Vec<Client> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(connect(rw, "app", "app_pw").await);
        }
        v
    };
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            tokio::spawn(async move {
                let id = i as i32;
                let fail = |what: String, e: tokio_postgres::Error| {
                    format!("client {i}: {what}: {}", describe(&e))
                };
                let plus = client
                    .prepare("select $1::int + 1000, pg_backend_pid()")
                    .await
                    .map_err(|e| fail("prepare plus".into(), e))?;
                let concat = client
                    .prepare("select $1::text || '-' || $2::text")
                    .await
                    .map_err(|e| fail("prepare concat".into(), e))?;
                let mut scratch = Some(
                    client
                        .prepare("select $1::int * 3")
                        .await
                        .map_err(|e| fail("prepare scratch".into(), e))?,
                );
                let mut replacement = None;
                let mut pids = HashSet::new();
                for round in 0..20i32 {
                    let tag = format!("c{i}r{round}");
                    if round % 3 == 0 {
                        let tx = client
                            .transaction()
                            .await
                            .map_err(|e| fail(format!("BEGIN r{round}"), e))?;
                        let row = tx
                            .query_one(&plus, &[&round])
                            .await
                            .map_err(|e| fail(format!("plus in tx r{round}"), e))?;
                        let joined: String = tx
                            .query_one(&concat, &[&tag, &id.to_string()])
                            .await
                            .map_err(|e| fail(format!("concat in tx r{round}"), e))?
                            .get(0);
                        tx.commit()
                            .await
                            .map_err(|e| fail(format!("COMMIT r{round}"), e))?;
                        if row.get::<_, i32>(0) != round + 1000 || joined != format!("{tag}-{id}") {
                            return Err(format!("client {i}: wrong results in tx r{round}"));
                        }
                        pids.insert(row.get::<_, i32>(1));
                    } else {
                        // Two extended-protocol batches pipelined, outside a transaction.
                        let p = "p".to_string();
                        let plus_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&round];
                        let concat_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                            [&tag, &p];
                        let (a, b) = tokio::join!(
                            client.query_one(&plus, &plus_params),
                            client.query_one(&concat, &concat_params),
                        );
                        let a = a.map_err(|e| fail(format!("pipelined plus r{round}"), e))?;
                        let b: String = b
                            .map_err(|e| fail(format!("pipelined concat r{round}"), e))?
                            .get(0);
                        if a.get::<_, i32>(0) != round + 1000 || b != format!("{tag}-p") {
                            return Err(format!("client {i}: wrong pipelined results r{round}"));
                        }
                        pids.insert(a.get::<_, i32>(1));
                    }
                    if let Some(s) = &scratch {
                        let v: i32 = client
                            .query_one(s, &[&round])
                            .await
                            .map_err(|e| fail(format!("scratch r{round}"), e))?
                            .get(0);
                        if v != round * 3 {
                            return Err(format!("client {i}: scratch r{round} = {v}"));
                        }
                    }
                    if round == 8 {
                        // Closing one statement (protocol Close from the driver) must
                        // not disturb this client's other statements or anyone else's.
                        drop(scratch.take());
                        replacement = Some(
                            client
                                .prepare("select $1::int * 3 + 1")
                                .await
                                .map_err(|e| fail("prepare replacement".into(), e))?,
                        );
                    }
                    if let Some(s) = &replacement {
                        let v: i32 = client
                            .query_one(s, &[&round])
                            .await
                            .map_err(|e| fail(format!("replacement r{round}"), e))?
                            .get(0);
                        if v != round * 3 + 1 {
                            return Err(format!("client {i}: replacement r{round} = {v}"));
                        }
                    }
                }
                Ok::<_, String>((client, pids))
            })
        })
        .collect();
    let results = within(
        120,
        "6 clients interleaving prepared statements",
        futures_util::future::join_all(tasks),
    )
    .await;
    let mut failures = Vec::new();
    let mut all_pids = BTreeSet::new();
    let mut per_client = Vec::new();
    for r in results {
        match r.expect("task") {
            Ok((_client, pids)) => {
                per_client.push(pids.len());
                all_pids.extend(pids);
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "prepared statements broke: {failures:#?}"
    );
    assert!(
        all_pids.len() <= SIZE,
        "6 clients used {} distinct backends through a size-{SIZE} pool: {all_pids:?}",
        all_pids.len()
    );
    eprintln!("backends per client: {per_client:?}, forced rotation {forced:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn statement_names_are_private_to_each_client() {
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(cluster.port(0), "pool: { mode: transaction, size: 1 }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let mut x = RawClient::login(rw, "X").await;
    let mut y = RawClient::login(rw, "Y").await;

    // Both clients prepare a statement with the same name and different SQL.
    for (client, sql) in [
        (&mut x, "select 'x'::text, $1::int, pg_backend_pid()::text"),
        (
            &mut y,
            "select 'y'::text, ($1::int * 10)::int, pg_backend_pid()::text",
        ),
    ] {
        let mut bytes = parse_msg("stmt1", sql);
        bytes.extend(sync_msg());
        let messages = client.round_trip(&bytes).await;
        assert_eq!(
            error_responses(&messages),
            Vec::<String>::new(),
            "{}: Parse stmt1",
            client.name
        );
        assert!(
            messages.iter().any(|(t, _)| *t == b'1'),
            "{}: ParseComplete expected",
            client.name
        );
    }
    let mut pids = BTreeSet::new();
    for round in 0..3 {
        let n = round.to_string();
        let xr = x.run_statement("stmt1", &[&n]).await.expect("X: stmt1");
        let yr = y.run_statement("stmt1", &[&n]).await.expect("Y: stmt1");
        assert_eq!(
            (xr[0][0].as_deref(), xr[0][1].as_deref()),
            (Some("x"), Some(n.as_str())),
            "X's stmt1 must run X's SQL"
        );
        let tenfold = (round * 10).to_string();
        assert_eq!(
            (yr[0][0].as_deref(), yr[0][1].as_deref()),
            (Some("y"), Some(tenfold.as_str())),
            "Y's stmt1 must run Y's SQL"
        );
        pids.insert(xr[0][2].clone());
        pids.insert(yr[0][2].clone());
    }
    assert_eq!(
        pids.len(),
        1,
        "with size 1 both clients must share one backend (else this test proves nothing): {pids:?}"
    );

    // X closes its stmt1: Y's stmt1 is unaffected, X's is gone.
    let mut bytes = close_statement_msg("stmt1");
    bytes.extend(sync_msg());
    let messages = x.round_trip(&bytes).await;
    assert_eq!(
        error_responses(&messages),
        Vec::<String>::new(),
        "X: Close stmt1"
    );
    assert!(
        messages.iter().any(|(t, _)| *t == b'3'),
        "X: CloseComplete expected"
    );
    let yr = y.run_statement("stmt1", &["7"]).await;
    assert_eq!(
        yr.map(|rows| rows[0][..2].to_vec()),
        Ok(vec![Some("y".to_string()), Some("70".to_string())]),
        "Y's stmt1 after X closed its own stmt1"
    );
    let xr = x.run_statement("stmt1", &["1"]).await;
    match xr {
        Err(errors) => assert!(
            errors[0].starts_with("26000"),
            "X's closed stmt1 must be reported as nonexistent (26000): {errors:?}"
        ),
        Ok(rows) => panic!("X's stmt1 was closed but still ran: {rows:?}"),
    }
    // X prepares stmt1 again, with new SQL.
    let mut bytes = parse_msg("stmt1", "select 'x2'::text, ($1::int + 1)::int");
    bytes.extend(sync_msg());
    let messages = x.round_trip(&bytes).await;
    assert_eq!(
        error_responses(&messages),
        Vec::<String>::new(),
        "X: re-Parse stmt1"
    );
    assert_eq!(
        x.run_statement("stmt1", &["1"]).await,
        Ok(row(&["x2", "2"]))
    );
    let yr = y
        .run_statement("stmt1", &["2"])
        .await
        .expect("Y: stmt1 at the end");
    assert_eq!(
        yr[0][..2].to_vec(),
        vec![Some("y".to_string()), Some("20".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extended_protocol_batch_keeps_its_server_until_sync() {
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(cluster.port(0), "pool: { mode: transaction, size: 1 }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let mut a = RawClient::login(rw, "A").await;
    let mut b = RawClient::login(rw, "B").await;

    // A: unnamed statement, Execute, Flush — no Sync yet.
    let mut bytes = parse_msg("", "select pg_backend_pid()::text");
    bytes.extend(bind_msg("", &[]));
    bytes.extend(execute_msg());
    bytes.extend(flush_msg());
    a.send(&bytes).await;
    let first = a.until(b'C').await;
    assert_eq!(
        error_responses(&first),
        Vec::<String>::new(),
        "A: first execute"
    );
    let a_pid = data_rows(&first)[0][0].clone();

    // B asks for the (only) server meanwhile. It must wait for A's Sync: if B's
    // query ran now, it would destroy A's unnamed statement.
    b.send(&query_msg("select pg_backend_pid()::text")).await;

    // A binds the unnamed statement again, still inside its batch.
    let mut bytes = bind_msg("", &[]);
    bytes.extend(execute_msg());
    bytes.extend(flush_msg());
    a.send(&bytes).await;
    let second = a.until(b'C').await;
    assert_eq!(
        error_responses(&second),
        Vec::<String>::new(),
        "A's unnamed statement must survive until A's Sync (was its server handed to B mid-batch?)"
    );
    assert_eq!(
        data_rows(&second)[0][0],
        a_pid,
        "A stays on one backend within a batch"
    );
    a.send(&sync_msg()).await;
    let ready = a.until_ready().await;
    assert_eq!(
        ready.last().map(|m| m.1.clone()),
        Some(b"I".to_vec()),
        "A is idle after Sync"
    );

    let b_messages = b.until_ready().await;
    assert_eq!(
        error_responses(&b_messages),
        Vec::<String>::new(),
        "B's query"
    );
    assert_eq!(
        data_rows(&b_messages)[0][0],
        a_pid,
        "with size 1, B runs on the backend A released at its Sync"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_beyond_the_per_server_limit_are_reprepared() {
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(
        cluster.port(0),
        "pool: { mode: transaction, size: 1, max_prepared_statements: 2 }\n",
    )
    .await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let mut client = connect(rw, "app", "app_pw").await;
    let mut statements = Vec::new();
    for k in 1..=5 {
        statements.push(
            client
                .prepare(&format!("select $1::int + {k}"))
                .await
                .unwrap_or_else(|e| panic!("prepare statement {k}: {}", describe(&e))),
        );
    }
    for round in 0..3i32 {
        for (k, statement) in statements.iter().enumerate() {
            let v: i32 = client
                .query_one(statement, &[&round])
                .await
                .unwrap_or_else(|e| panic!("round {round}, statement {}: {}", k + 1, describe(&e)))
                .get(0);
            assert_eq!(
                v,
                round + k as i32 + 1,
                "round {round}, statement {}",
                k + 1
            );
        }
    }
    // All five in one transaction.
    let tx = client.transaction().await.expect("begin");
    for (k, statement) in statements.iter().enumerate() {
        let v: i32 = tx
            .query_one(statement, &[&100i32])
            .await
            .unwrap_or_else(|e| panic!("in a transaction, statement {}: {}", k + 1, describe(&e)))
            .get(0);
        assert_eq!(v, 100 + k as i32 + 1);
    }
    tx.commit().await.expect("commit");
    let on_server: i64 = simple_value(
        &client,
        "select count(*) from pg_prepared_statements",
        "client",
    )
    .await
    .expect("count")
    .parse()
    .expect("number");
    assert!(
        on_server <= 2,
        "the server connection holds {on_server} prepared statements; max_prepared_statements is 2"
    );
}

// ---------------------------------------------------------------------------
// Transaction mode: session state follows the client and never leaks
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn startup_parameters_follow_each_client_in_transaction_mode() {
    let cluster = shared_cluster().await;
    let setup = direct(cluster.port(0)).await;
    setup
        .batch_execute(
            "drop schema if exists pool_start_sch cascade;
             create schema pool_start_sch;
             create table pool_start_sch.pool_start_marker(v text);
             insert into pool_start_sch.pool_start_marker values ('startup-schema');",
        )
        .await
        .expect("setup schema");
    // What PostgreSQL itself shows for each client's startup parameters, from
    // direct sessions with the same parameters.
    const ALPHA_OPTIONS: &str =
        "-c search_path=pool_start_sch,public -c TimeZone=Asia/Tokyo -c DateStyle=SQL,DMY";
    let node = SocketAddr::from(([127, 0, 0, 1], cluster.port(0)));
    let expected_alpha = settings(
        &connect_with(node, Some("sy_alpha"), Some(ALPHA_OPTIONS)).await,
        "direct alpha",
    )
    .await;
    let expected_beta = settings(
        &connect_with(node, Some("sy_beta"), None).await,
        "direct beta",
    )
    .await;
    assert_eq!(expected_alpha.time_zone, "Asia/Tokyo", "direct alpha");
    assert!(
        expected_alpha.search_path != expected_beta.search_path
            && expected_alpha.time_zone != expected_beta.time_zone
            && expected_alpha.date_style != expected_beta.date_style,
        "the two clients' parameters must differ for this test to mean anything: {expected_alpha:?} vs {expected_beta:?}"
    );

    let (proxy, _api) = proxy_for(cluster.port(0), "pool: { mode: transaction, size: 1 }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let alpha = connect_with(rw, Some("sy_alpha"), Some(ALPHA_OPTIONS)).await;
    let beta = connect_with(rw, Some("sy_beta"), None).await;
    let mut pids = BTreeSet::new();
    for round in 0..3 {
        assert_eq!(
            settings(&alpha, "alpha").await,
            expected_alpha,
            "round {round}: alpha's startup parameters"
        );
        let marker = simple_value(&alpha, "select v from pool_start_marker", "alpha").await;
        assert_eq!(
            marker.as_deref(),
            Some("startup-schema"),
            "alpha resolves via its search_path"
        );
        pids.insert(backend_pid(&alpha, "alpha").await);
        assert_eq!(
            settings(&beta, "beta").await,
            expected_beta,
            "round {round}: beta must see its own startup parameters, not alpha's"
        );
        let visible = simple_value(
            &beta,
            "select to_regclass('pool_start_marker')::text",
            "beta",
        )
        .await;
        assert_eq!(
            visible, None,
            "beta must not resolve names through alpha's search_path"
        );
        pids.insert(backend_pid(&beta, "beta").await);
    }
    assert_eq!(
        pids.len(),
        1,
        "with size 1 both clients must share one backend (else this test proves nothing): {pids:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn set_outside_a_transaction_sticks_to_its_client_and_never_leaks() {
    let cluster = shared_cluster().await;
    let setup = direct(cluster.port(0)).await;
    setup
        .batch_execute(
            "drop schema if exists pool_set_sch cascade;
             create schema pool_set_sch;
             create table pool_set_sch.pool_set_marker(v text);
             insert into pool_set_sch.pool_set_marker values ('only-in-a');",
        )
        .await
        .expect("setup schema");
    let defaults = server_defaults(cluster.port(0)).await;
    assert_eq!(defaults.search_path, "\"$user\", public");
    assert_ne!(
        defaults.time_zone, "America/Sao_Paulo",
        "pick another zone for this test"
    );

    let (proxy, _api) = proxy_for(cluster.port(0), "pool: { mode: transaction, size: 1 }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let mut a = connect(rw, "app", "app_pw").await;
    let b = connect(rw, "app", "app_pw").await;
    for sql in [
        "SET search_path TO pool_set_sch",
        "SET application_name = 'sy_set_a'",
        "SET TimeZone = 'America/Sao_Paulo'",
    ] {
        a.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("A: {sql}: {}", describe(&e)));
    }
    let expected_a = Settings {
        application_name: "sy_set_a".into(),
        search_path: "pool_set_sch".into(),
        time_zone: "America/Sao_Paulo".into(),
        date_style: defaults.date_style.clone(),
    };
    let mut pids = BTreeSet::new();
    for round in 0..3 {
        assert_eq!(
            settings(&b, "B").await,
            defaults,
            "round {round}: B must see the defaults, not A's SETs"
        );
        assert_eq!(
            simple_value(&b, "select to_regclass('pool_set_marker')::text", "B").await,
            None,
            "round {round}: B must not resolve names through A's search_path"
        );
        pids.insert(backend_pid(&b, "B").await);

        // A, in a later explicit transaction, still has its settings.
        let tx = a.transaction().await.expect("A: begin");
        let path = tx
            .simple_query("show search_path")
            .await
            .expect("A: show search_path");
        let marker: String = tx
            .query_one("select v from pool_set_marker", &[])
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "round {round}: A's search_path must still find pool_set_marker: {}",
                    describe(&e)
                )
            })
            .get(0);
        let pid: i32 = tx
            .query_one("select pg_backend_pid()", &[])
            .await
            .expect("A: pid")
            .get(0);
        tx.commit().await.expect("A: commit");
        let path = path.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(
            path.as_deref(),
            Some("pool_set_sch"),
            "round {round}: A's search_path in a transaction"
        );
        assert_eq!(marker, "only-in-a");
        pids.insert(pid);
        assert_eq!(
            settings(&a, "A").await,
            expected_a,
            "round {round}: A's settings outside a transaction"
        );
    }
    assert_eq!(
        pids.len(),
        1,
        "with size 1 both clients must share one backend (else this test proves nothing): {pids:?}"
    );

    // After A leaves, neither B nor a newcomer inherits anything from A.
    drop(a);
    assert_eq!(settings(&b, "B after A left").await, defaults);
    let c = connect(rw, "app", "app_pw").await;
    assert_eq!(
        settings(&c, "C").await,
        defaults,
        "a new client must see the defaults"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_transaction_keeps_its_server_until_rollback() {
    let cluster = shared_cluster().await;
    let setup = direct(cluster.port(0)).await;
    setup
        .batch_execute("drop table if exists pool_failed_tx; create table pool_failed_tx(id int)")
        .await
        .expect("setup");
    let (proxy, _api) = proxy_for(cluster.port(0), "pool: { mode: transaction, size: 1 }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let a = connect(rw, "app", "app_pw").await;
    let b = connect(rw, "app", "app_pw").await;

    a.batch_execute("begin; insert into pool_failed_tx values (1)")
        .await
        .expect("A: begin + insert");
    let a_pid = backend_pid(&a, "A").await;
    let error = a
        .batch_execute("select 1/0")
        .await
        .expect_err("A: division by zero");
    assert_eq!(error.code().map(|c| c.code()), Some("22012"));

    // B wants the only server while A sits in a failed transaction.
    let b_task = tokio::spawn(async move {
        let row = b
            .query_one(
                "select (select count(*) from pool_failed_tx), pg_backend_pid()",
                &[],
            )
            .await;
        (b, row)
    });

    let error = a
        .batch_execute("select 1")
        .await
        .expect_err("A is still in its failed transaction");
    assert_eq!(
        error.code().map(|c| c.code()),
        Some("25P02"),
        "A must stay on its aborted transaction until it ends it: {error:?}"
    );
    a.batch_execute("rollback").await.expect("A: rollback");
    assert_eq!(
        simple_value(&a, "select 'after rollback'", "A")
            .await
            .as_deref(),
        Some("after rollback")
    );

    let (_b, row) = within(20, "B's query after A's rollback", b_task)
        .await
        .expect("B task");
    let row = row.unwrap_or_else(|e| {
        panic!(
            "B's query must succeed once A rolled back: {}",
            describe(&e)
        )
    });
    assert_eq!(
        row.get::<_, i64>(0),
        0,
        "A's rolled-back insert must never be visible"
    );
    assert_eq!(
        row.get::<_, i32>(1),
        a_pid,
        "size 1: B gets the server A released"
    );
}

// ---------------------------------------------------------------------------
// Session mode
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn session_mode_resets_the_server_before_the_next_client() {
    let cluster = shared_cluster().await;
    let default_work_mem = show(&direct(cluster.port(0)).await, "work_mem", "direct").await;
    assert_ne!(default_work_mem, "7MB");
    let (proxy, _api) = proxy_for(cluster.port(0), "pool: { mode: session, size: 1 }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");

    let first = connect(rw, "app", "app_pw").await;
    let first_pid = backend_pid(&first, "first").await;
    first
        .batch_execute(
            "create temp table tmp_x(id int);
             insert into tmp_x values (1);
             set work_mem = '7MB';
             prepare p_sess as select 1;",
        )
        .await
        .expect("first: session state");
    // In session mode the client keeps its server across transactions.
    first
        .batch_execute("begin; insert into tmp_x values (2); commit")
        .await
        .expect("first: temp table in a later transaction");
    assert_eq!(backend_pid(&first, "first").await, first_pid);
    drop(first);

    // Size 1: the next client gets the same server once the first one is gone.
    let second = within(30, "second client connects", connect(rw, "app", "app_pw")).await;
    let second_pid = within(
        30,
        "second client's first query",
        backend_pid(&second, "second"),
    )
    .await;
    assert_eq!(
        second_pid, first_pid,
        "size 1: the second client must get the first client's server back from the pool"
    );
    assert_eq!(
        simple_value(&second, "select to_regclass('tmp_x')::text", "second").await,
        None,
        "the first client's TEMP table survived into the next session (reset_query not run?)"
    );
    let error = second
        .batch_execute("select * from pg_temp.tmp_x")
        .await
        .expect_err("pg_temp.tmp_x must be gone");
    assert_eq!(error.code().map(|c| c.code()), Some("42P01"), "{error:?}");
    assert_eq!(
        show(&second, "work_mem", "second").await,
        default_work_mem,
        "SET leaked into the next session"
    );
    assert_eq!(
        simple_value(
            &second,
            "select count(*) from pg_prepared_statements where name = 'p_sess'",
            "second"
        )
        .await
        .as_deref(),
        Some("0"),
        "the first client's prepared statement leaked into the next session"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_can_override_the_pool_mode() {
    let cluster = shared_cluster().await;
    let (yaml, _api) = config_for(
        cluster.port(0),
        "pool: { mode: transaction, size: 1, checkout_timeout: 1s }\n",
    )
    .await;
    let overridden = yaml.replacen(
        "route: primary }",
        "route: primary, pool: { mode: session } }",
        1,
    );
    assert_ne!(
        overridden, yaml,
        "could not add the listener override to:\n{yaml}"
    );
    let proxy = start_proxy(&overridden).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let ro = proxy.listener_addr("ro").expect("ro");

    // ro keeps the global transaction mode: two clients share the single server
    // (app_md5, so its pool is separate from app's on rw).
    let t1 = connect(ro, "app_md5", "app_md5_pw").await;
    let t2 = connect(ro, "app_md5", "app_md5_pw").await;
    let p1 = within(10, "ro client 1", backend_pid(&t1, "ro client 1")).await;
    let p2 = within(10, "ro client 2", backend_pid(&t2, "ro client 2")).await;
    let p3 = within(10, "ro client 1 again", backend_pid(&t1, "ro client 1")).await;
    assert!(
        p1 == p2 && p2 == p3,
        "transaction mode on ro: both clients alternate on the one server ({p1}, {p2}, {p3})"
    );

    // rw is in session mode: the first client keeps the only server, so a second
    // one waits and times out with 53300.
    let s1 = connect(rw, "app", "app_pw").await;
    let s1_pid = backend_pid(&s1, "rw client 1").await;
    let started = Instant::now();
    let outcome = within(
        15,
        "rw client 2 while rw client 1 holds the server",
        async {
            match try_connect(rw, "app", "app_pw").await {
                Err(e) => Err(e),
                Ok(client) => client.batch_execute("select 1").await.map(|_| client),
            }
        },
    )
    .await;
    match outcome {
        Ok(_) => panic!(
            "session mode on rw: a second client got a server while the first one (size 1) was still connected"
        ),
        Err(e) => assert_53300_or_closed(&e, "rw client 2 in session mode"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));

    drop(s1);
    let s3 = within(
        30,
        "rw client 3 after client 1 left",
        connect(rw, "app", "app_pw"),
    )
    .await;
    let s3_pid = within(30, "rw client 3 query", backend_pid(&s3, "rw client 3")).await;
    assert_eq!(
        s3_pid, s1_pid,
        "the server went back to the pool when client 1 left"
    );
}

// ---------------------------------------------------------------------------
// Clients that vanish mid-transaction
// ---------------------------------------------------------------------------

async fn killed_client_leaves_no_server_stuck(mode: &str) {
    let table = format!("pool_killed_{mode}");
    let cluster = shared_cluster().await;
    let port = cluster.port(0);
    direct(port)
        .await
        .batch_execute(&format!(
            "drop table if exists {table}; create table {table}(id int primary key, v text);
             insert into {table} values (1, 'original')"
        ))
        .await
        .expect("setup");
    let (proxy, _api) = proxy_for(
        port,
        &format!("pool: {{ mode: {mode}, size: 1, checkout_timeout: 10s }}\n"),
    )
    .await;
    let rw = proxy.listener_addr("rw").expect("rw");

    let (a, a_connection) = connect_killable(rw).await;
    a.batch_execute(&format!(
        "begin; update {table} set v = 'uncommitted' where id = 1"
    ))
    .await
    .expect("A: begin + update (row lock held)");
    let open = format!(
        "select count(*) from pg_stat_activity where state like 'idle in transaction%' and query like '%{table}%'"
    );
    eventually(
        Duration::from_secs(5),
        "A's transaction is open on the server before A is killed",
        || {
            let open = open.clone();
            async move { su_count(port, &open).await == 1 }
        },
    )
    .await;
    // Kill A: its socket closes without Terminate, mid-transaction.
    a_connection.abort();
    drop(a);

    let mut b = connect(rw, "app", "app_pw").await;
    let value = within(20, "B locking the row A had locked", async {
        let tx = b.transaction().await.expect("B: begin");
        tx.batch_execute("set local lock_timeout = '5s'")
            .await
            .expect("B: lock_timeout");
        let v: String = tx
            .query_one(
                &format!("select v from {table} where id = 1 for update"),
                &[],
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "B could not lock the row A held when it was killed: {}",
                    describe(&e)
                )
            })
            .get(0);
        tx.commit().await.expect("B: commit");
        v
    })
    .await;
    assert_eq!(
        value, "original",
        "A's uncommitted update must be rolled back, never handed to another client"
    );
    eventually(
        Duration::from_secs(10),
        "no idle-in-transaction session left from the killed client",
        || {
            let open = open.clone();
            async move { su_count(port, &open).await == 0 }
        },
    )
    .await;
    let v: String = direct(port)
        .await
        .query_one(&format!("select v from {table} where id = 1"), &[])
        .await
        .expect("final read")
        .get(0);
    assert_eq!(v, "original");
    // The pool still serves clients (B leaves first: in session mode it holds the
    // only server for as long as it is connected).
    drop(b);
    let c = within(
        20,
        "C connects after the kill",
        connect(rw, "app", "app_pw"),
    )
    .await;
    within(20, "C's query after the kill", c.batch_execute("select 1"))
        .await
        .unwrap_or_else(|e| panic!("C after the kill: {}", describe(&e)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_killed_mid_transaction_leaves_no_server_stuck_in_transaction_mode() {
    killed_client_leaves_no_server_stuck("transaction").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_killed_mid_transaction_leaves_no_server_stuck_in_session_mode() {
    killed_client_leaves_no_server_stuck("session").await;
}

// ---------------------------------------------------------------------------
// Limits: checkout timeout, max clients
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn checkout_timeout_fails_the_waiting_client_and_spares_the_pool() {
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(
        cluster.port(0),
        "pool: { mode: transaction, size: 1, checkout_timeout: 500ms }\n",
    )
    .await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let a = connect(rw, "app", "app_pw").await;
    a.batch_execute("begin; select 1").await.expect("A: begin");

    let started = Instant::now();
    let outcome = within(15, "B waiting for the server A holds", async {
        match try_connect(rw, "app", "app_pw").await {
            Err(e) => Err((e, None)),
            Ok(b) => match b.batch_execute("select 1").await {
                Ok(()) => Ok(b),
                Err(e) => Err((e, Some(b))),
            },
        }
    })
    .await;
    let waited = started.elapsed();
    let b = match outcome {
        Ok(_) => panic!("B got a server although A holds the only one in an open transaction"),
        Err((e, b)) => {
            assert_53300_or_closed(&e, "B after checkout_timeout 500ms");
            b
        }
    };
    assert!(
        waited >= Duration::from_millis(400),
        "B failed after {waited:?}, before checkout_timeout (500ms) could have passed"
    );
    assert!(
        waited < Duration::from_secs(5),
        "B's failure took {waited:?}"
    );
    if let Some(b) = b {
        eventually(
            Duration::from_secs(5),
            "B is disconnected after its FATAL",
            || async { b.is_closed() },
        )
        .await;
    }

    // A is unaffected, and after it commits the pool serves new clients.
    assert_eq!(
        simple_value(&a, "select 'still in my transaction'", "A")
            .await
            .as_deref(),
        Some("still in my transaction")
    );
    a.batch_execute("commit").await.expect("A: commit");
    let c = within(10, "C connects", connect(rw, "app", "app_pw")).await;
    assert_eq!(
        within(10, "C's query", simple_value(&c, "select 'c works'", "C"))
            .await
            .as_deref(),
        Some("c works"),
        "the pool must still work after a checkout timeout"
    );
    a.batch_execute("select 1").await.expect("A after commit");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_client_connections_counts_across_listeners() {
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(cluster.port(0), "pool: { max_client_connections: 3 }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let ro = proxy.listener_addr("ro").expect("ro");
    let mut held = vec![
        connect(rw, "app", "app_pw").await,
        connect(rw, "app", "app_pw").await,
        connect(ro, "app", "app_pw").await,
    ];
    for (addr, name) in [(ro, "ro"), (rw, "rw")] {
        let error = try_connect(addr, "app", "app_pw")
            .await
            .err()
            .unwrap_or_else(|| {
                panic!("a 4th client (via {name}) must be refused with max_client_connections: 3")
            });
        let db_error = error.as_db_error().unwrap_or_else(|| {
            panic!("4th client via {name}: expected FATAL 53300, got {error:?}")
        });
        assert_eq!(
            db_error.code().code(),
            "53300",
            "4th client via {name}: {}",
            db_error.message()
        );
    }
    // The three admitted clients still work.
    for (i, client) in held.iter().enumerate() {
        client
            .batch_execute("select 1")
            .await
            .unwrap_or_else(|e| panic!("admitted client {i}: {}", describe(&e)));
    }

    drop(held.pop());
    let slot: Mutex<Option<Client>> = Mutex::new(None);
    let slot_ref = &slot;
    eventually(
        Duration::from_secs(10),
        "a new client is admitted after one left",
        || async move {
            match try_connect(ro, "app", "app_pw").await {
                Ok(client) => {
                    *slot_ref.lock().unwrap() = Some(client);
                    true
                }
                Err(_) => false,
            }
        },
    )
    .await;
    let newcomer = slot.lock().unwrap().take().expect("newcomer");
    newcomer
        .batch_execute("select 1")
        .await
        .expect("newcomer works");
    held.push(newcomer);
    let Err(error) = try_connect(rw, "app", "app_pw").await else {
        panic!("back at 3 clients: a 4th is refused again");
    };
    assert_eq!(error.as_db_error().map(|e| e.code().code()), Some("53300"));
}

// ---------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------

async fn cancel_a_running_query(pool: &str, marker: &str) {
    let cluster = shared_cluster().await;
    let port = cluster.port(0);
    let (proxy, _api) = proxy_for(port, pool).await;
    let client = connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw").await;
    let client = Arc::new(client);
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = {
        let client = Arc::clone(&client);
        let sql = format!("select pg_sleep(30) /* {marker} */");
        tokio::spawn(async move { client.batch_execute(&sql).await })
    };
    let running = format!(
        "select count(*) from pg_stat_activity where state = 'active' and query like '%pg_sleep(30) /* {marker} */%' and pid <> pg_backend_pid()"
    );
    eventually(
        Duration::from_secs(10),
        "pg_sleep is running on the server",
        || {
            let running = running.clone();
            async move { su_count(port, &running).await == 1 }
        },
    )
    .await;
    token
        .cancel_query(NoTls)
        .await
        .expect("cancel request sent");
    let result = within(10, "the cancelled query to end", sleeper)
        .await
        .expect("join");
    let error = result.expect_err("pg_sleep(30) must be cancelled");
    assert_eq!(
        error.code().map(|c| c.code()),
        Some("57014"),
        "cancelled query: {error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the cancel took {:?}",
        started.elapsed()
    );
    for i in 0..3 {
        assert_eq!(
            simple_value(&client, &format!("select {i}"), "after cancel").await,
            Some(i.to_string()),
            "the connection keeps working after a cancel"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_works_in_transaction_mode() {
    cancel_a_running_query("pool: { mode: transaction, size: 2 }\n", "pool_cancel_txn").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_works_in_session_mode() {
    cancel_a_running_query("pool: { mode: session, size: 2 }\n", "pool_cancel_sess").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_clients_cancel_does_not_hit_another_clients_query() {
    let cluster = shared_cluster().await;
    let port = cluster.port(0);
    let (proxy, _api) = proxy_for(port, "pool: { mode: transaction, size: 1 }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let a = connect(rw, "app", "app_pw").await;
    let b = connect(rw, "app", "app_pw").await;
    // A used the only server, then released it.
    let a_pid = backend_pid(&a, "A").await;
    let b_query = tokio::spawn(async move {
        let r = b
            .simple_query("select pg_sleep(3) /* pool_idle_cancel */, pg_backend_pid()")
            .await;
        (b, r)
    });
    let running = "select count(*) from pg_stat_activity where state = 'active' \
                   and query like '%pg_sleep(3) /* pool_idle_cancel */%' and pid <> pg_backend_pid()";
    eventually(
        Duration::from_secs(10),
        "B's pg_sleep is running",
        || async move { su_count(port, running).await == 1 },
    )
    .await;
    // A is idle: it holds no server, so its cancel must not reach B's query on the
    // server A used before.
    let _ = a.cancel_token().cancel_query(NoTls).await;
    let (_b, result) = within(15, "B's query", b_query).await.expect("join");
    let messages = result.unwrap_or_else(|e| {
        panic!("B's query was hit by idle client A's cancel (or failed otherwise): {e:?}")
    });
    let b_pid = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(1).map(str::to_string),
        _ => None,
    });
    assert_eq!(
        b_pid,
        Some(a_pid.to_string()),
        "size 1: B ran on the server A had used (else this test proves nothing)"
    );
    a.batch_execute("select 1").await.expect("A still works");
}

// ---------------------------------------------------------------------------
// Server connection lifecycle
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn idle_server_connections_are_closed_after_server_idle_timeout() {
    let cluster = shared_cluster().await;
    let port = cluster.port(0);
    let (proxy, _api) = proxy_for(
        port,
        "pool: { mode: transaction, size: 2, server_idle_timeout: 1s }\n",
    )
    .await;
    let client = connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw").await;
    let pid = backend_pid(&client, "client").await;
    let alive = format!("select count(*) from pg_stat_activity where pid = {pid}");
    assert_eq!(
        su_count(port, &alive).await,
        1,
        "the server connection exists"
    );
    eventually(
        Duration::from_secs(30),
        "the idle server connection is closed after server_idle_timeout 1s",
        || {
            let alive = alive.clone();
            async move { su_count(port, &alive).await == 0 }
        },
    )
    .await;
    let new_pid = backend_pid(&client, "client after idle close").await;
    assert_ne!(
        new_pid, pid,
        "a new server connection serves the still-connected client"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_connections_are_replaced_after_server_lifetime() {
    let cluster = shared_cluster().await;
    let port = cluster.port(0);
    let (proxy, _api) = proxy_for(
        port,
        "pool: { mode: transaction, size: 1, server_lifetime: 1s }\n",
    )
    .await;
    let client = connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw").await;
    let first = backend_pid(&client, "client").await;
    let client_ref = &client;
    eventually(
        Duration::from_secs(30),
        "the client is served by a new server connection after server_lifetime 1s",
        || async move { backend_pid(client_ref, "client").await != first },
    )
    .await;
    let gone = format!("select count(*) from pg_stat_activity where pid = {first}");
    eventually(
        Duration::from_secs(30),
        "the expired server connection is closed",
        || {
            let gone = gone.clone();
            async move { su_count(port, &gone).await == 0 }
        },
    )
    .await;
}
