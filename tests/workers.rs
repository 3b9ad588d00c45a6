//! Worker threads (`runtime.workers`, issue #18): clients spread over the workers,
//! and one pool serves them all: a server connection left idle by one worker is
//! taken by another (its socket moves to that worker's event loop) and keeps
//! working. Against real PostgreSQL with tokio-postgres and psql.

mod harness;

use std::time::Duration;

use harness::clients::*;
use harness::pg::{shared_cluster, try_psql};
use harness::proxy::*;
use harness::wait::*;

/// Transaction pooling with one server connection, so every transaction of every
/// client runs on that one connection, whichever worker serves the client.
const ONE_CONNECTION: &str =
    "runtime: { workers: 2 }\npool: { mode: transaction, size: 1, checkout_timeout: 10s }\n";

#[tokio::test(flavor = "multi_thread")]
async fn one_server_connection_serves_clients_on_both_workers() {
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(cluster.port(0), ONE_CONNECTION).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let first = connect(rw, "app", "app_pw").await;
    let second = connect(rw, "app", "app_pw").await;

    let status = admin_status(&proxy).await;
    assert_eq!(status["runtime"]["workers"], 2, "{status}");
    assert_eq!(
        status["runtime"]["sessions_per_worker"],
        serde_json::json!([1, 1]),
        "two clients, one on each worker: {status}"
    );

    // Alternating: the connection changes worker at every transaction.
    let mut pids = std::collections::BTreeSet::new();
    for round in 0..50 {
        for (who, client) in [("first", &first), ("second", &second)] {
            let pid = simple_value(client, "SELECT pg_backend_pid()", who)
                .await
                .expect("a pid");
            pids.insert(pid);
            let sum = simple_value(client, &format!("SELECT {round} + 1000"), who).await;
            assert_eq!(sum, Some((round + 1000).to_string()), "{who} round {round}");
        }
    }
    assert_eq!(pids.len(), 1, "one server connection for both: {pids:?}");

    // At the same time, with extended-protocol queries, on both workers.
    let run = |client: tokio_postgres::Client, who: &'static str| async move {
        let statement = client
            .prepare("SELECT $1::int * 2")
            .await
            .unwrap_or_else(|e| panic!("{who}: prepare: {}", describe(&e)));
        for i in 0..300i32 {
            let row = client
                .query_one(&statement, &[&i])
                .await
                .unwrap_or_else(|e| panic!("{who}: query {i}: {}", describe(&e)));
            assert_eq!(row.get::<_, i32>(0), i * 2, "{who} query {i}");
        }
        client
    };
    let (first, second) = tokio::join!(run(first, "first"), run(second, "second"));

    let status = admin_status(&proxy).await;
    let pool = &status["pools"][0];
    assert_eq!(pool["open"], 1, "still one server connection: {status}");
    drop((first, second));
    eventually(
        Duration::from_secs(10),
        "sessions leave their workers",
        || async {
            admin_status(&proxy).await["runtime"]["sessions_per_worker"]
                == serde_json::json!([0, 0])
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_sessions_on_every_worker_share_the_pool() {
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(
        cluster.port(0),
        "runtime: { workers: 3 }\npool: { mode: transaction, size: 2 }\n",
    )
    .await;
    let rw = proxy.listener_addr("rw").expect("rw");
    // Six psql runs at once: two per worker, four more sessions than connections.
    let runs: Vec<_> = (0..6)
        .map(|i| {
            tokio::task::spawn_blocking(move || {
                let sum = format!("SELECT count(*) + {i} FROM generate_series(1, 1000)");
                try_psql(
                    rw.port(),
                    "app",
                    "app_pw",
                    "appdb",
                    &[&sum, "SELECT pg_sleep(0.05)", &sum],
                )
            })
        })
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        let out = run.await.expect("psql task");
        let out = out.unwrap_or_else(|e| panic!("psql {i}: {e}"));
        assert!(out.contains(&(1000 + i).to_string()), "psql {i}: {out}");
    }
    let status = admin_status(&proxy).await;
    assert_eq!(status["runtime"]["workers"], 3, "{status}");
    let open = status["pools"][0]["open"].as_u64().unwrap_or(99);
    assert!(open <= 2, "the pool size holds across workers: {status}");
}
