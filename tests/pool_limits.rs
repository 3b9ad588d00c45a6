//! Pools keyed by database names clients choose (issue #13, item 7): pools that
//! nobody uses are removed after `pool.server_idle_timeout` and leave `/status`, and
//! `pool.max_pools` caps how many exist, with a clear 53400 for the client whose
//! database would need one more. Against real PostgreSQL.

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::clients::*;
use harness::pg::shared_cluster;
use harness::proxy::*;
use harness::wait::*;
use switchyard::proxy::RunningProxy;
use tokio_postgres::{Client, NoTls};

async fn try_connect_db(addr: SocketAddr, db: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&conn_str(addr, "app", "app_pw", db), NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The databases of the pools `/status` lists.
async fn pool_databases(proxy: &RunningProxy) -> Vec<String> {
    let status = admin_status(proxy).await;
    let mut databases: Vec<String> = status["pools"]
        .as_array()
        .map(|pools| {
            pools
                .iter()
                .filter_map(|p| p["database"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    databases.sort();
    databases
}

#[tokio::test(flavor = "multi_thread")]
async fn unused_pools_are_removed_after_the_idle_timeout() {
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(
        cluster.port(0),
        "pool: { mode: transaction, server_idle_timeout: 2s }\n",
    )
    .await;
    let rw = proxy.listener_addr("rw").expect("rw");
    // A client that stays: its pool stays, even once its idle server is closed.
    let stays = connect(rw, "app", "app_pw").await;
    stays.batch_execute("select 1").await.expect("stays: query");
    // Databases that do not exist still make pools: the pool exists before the
    // server refuses the login.
    for i in 0..3 {
        let error = try_connect_db(rw, &format!("no_such_db_{i}"))
            .await
            .expect_err("a database that does not exist is refused");
        let code = error.as_db_error().map(|db| db.code().code().to_string());
        assert_eq!(code.as_deref(), Some("3D000"), "{}", describe(&error));
    }
    let listed = pool_databases(&proxy).await;
    assert_eq!(
        listed,
        ["appdb", "no_such_db_0", "no_such_db_1", "no_such_db_2"],
        "every database asked for has a pool in /status"
    );
    let took = eventually(
        Duration::from_secs(10),
        "unused pools leave /status",
        || async { pool_databases(&proxy).await == ["appdb"] },
    )
    .await;
    assert!(
        took >= Duration::from_millis(1500),
        "pools were removed after {took:?}, before server_idle_timeout (2s)"
    );
    // The remaining pool still serves, past its own connections' idle timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        pool_databases(&proxy).await,
        ["appdb"],
        "a pool with a client stays"
    );
    stays
        .batch_execute("select 2")
        .await
        .expect("stays: still served");
    // A removed pool comes back when asked for again.
    assert!(try_connect_db(rw, "no_such_db_0").await.is_err());
    assert!(pool_databases(&proxy)
        .await
        .contains(&"no_such_db_0".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn max_pools_refuses_a_new_database_and_spares_existing_pools() {
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(
        cluster.port(0),
        "pool: { mode: transaction, max_pools: 2 }\n",
    )
    .await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let a = try_connect_db(rw, "appdb").await.expect("A: appdb");
    let b = try_connect_db(rw, "postgres").await.expect("B: postgres");
    a.batch_execute("select 1").await.expect("A: query");
    b.batch_execute("select 1").await.expect("B: query");

    for db in ["template1", "no_such_db"] {
        let error = try_connect_db(rw, db)
            .await
            .err()
            .unwrap_or_else(|| panic!("a third database ({db}) is over max_pools: 2"));
        let db_error = error.as_db_error().unwrap_or_else(|| {
            panic!("{db}: expected the proxy's FATAL, got {}", describe(&error))
        });
        assert_eq!(
            db_error.code().code(),
            "53400",
            "{db}: {}",
            describe(&error)
        );
        assert!(
            db_error.message().contains("pool.max_pools") && db_error.message().contains(db),
            "{db}: the message names the limit and the database: {}",
            db_error.message()
        );
    }
    assert_eq!(pool_databases(&proxy).await, ["appdb", "postgres"]);
    // Existing pools keep working, also for new clients of their databases.
    a.batch_execute("select 2").await.expect("A: still served");
    let a2 = try_connect_db(rw, "appdb")
        .await
        .expect("A2: appdb has its pool");
    a2.batch_execute("select 3").await.expect("A2: query");
    b.batch_execute("select 2").await.expect("B: still served");
}
