//! Failover behaviour with fake Patroni endpoints over a real primary and replica:
//! clients are held while there is no primary and resume on the new one; a hold
//! that outlasts `hold_timeout` ends in a clear 57P03.

mod harness;

use std::time::Duration;

use harness::clients::*;
use harness::fake_patroni::FakeRole;
use harness::pg::{shared_cluster, PgCluster};
use harness::proxy::*;
use harness::wait::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_waits_for_the_new_primary_instead_of_failing() {
    let cluster = blocking(|| PgCluster::start(1)).await;
    let roles = [FakeRole::Primary, FakeRole::Replica];
    let (apis, nodes) = fake_apis(&[cluster.port(0), cluster.port(1)], &roles).await;
    let (primary_api, replica_api) = (&apis[0], &apis[1]);
    let extra = "pool: { mode: transaction, size: 4 }\nfailover: { hold_timeout: 20s }\n";
    let proxy = start_proxy(&config_yaml(&nodes, "primary", extra)).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let client = connect(rw, "app", "app_pw").await;
    assert_eq!(server_port(&client).await, cluster.port(0));

    // The primary goes away; the client's next transaction is held, not failed.
    primary_api.set_role(FakeRole::NotRunning);
    eventually(
        Duration::from_secs(3),
        "write route loses its primary",
        || async { admin_get(&proxy, "/health").await.0 == 503 },
    )
    .await;
    let held = tokio::spawn(async move {
        let port = server_port(&client).await;
        let writable = client
            .batch_execute("create temp table held_probe(x int)")
            .await;
        (port, writable.is_ok())
    });
    eventually(
        Duration::from_secs(5),
        "the client shows as held",
        || async {
            let status = admin_status(&proxy).await;
            status["held_clients"] == 1
        },
    )
    .await;
    assert!(!held.is_finished(), "held while there is no primary");

    let cluster = blocking(move || {
        cluster.stop(0);
        cluster.promote(1);
        cluster
    })
    .await;
    replica_api.set_role(FakeRole::Primary);
    replica_api.set_timeline(2);
    let (port, writable) = tokio::time::timeout(Duration::from_secs(15), held)
        .await
        .expect("the held transaction resumes")
        .expect("join");
    assert_eq!(port, cluster.port(1), "resumed on the new primary");
    assert!(writable, "and it can write there");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hold_longer_than_hold_timeout_ends_in_57p03() {
    let cluster = shared_cluster().await;
    let extra = "pool: { mode: transaction }\nfailover: { hold_timeout: 1s }\n";
    let (proxy, api) = proxy_for(cluster.port(0), extra).await;
    let client = connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw").await;
    api.set_role(FakeRole::NotRunning);
    eventually(Duration::from_secs(3), "no primary", || async {
        admin_get(&proxy, "/health").await.0 == 503
    })
    .await;
    let error = tokio::time::timeout(Duration::from_secs(10), client.batch_execute("select 1"))
        .await
        .expect("the hold ends")
        .expect_err("no primary came back");
    let code = error.as_db_error().map(|e| e.code().code().to_string());
    assert_eq!(code.as_deref(), Some("57P03"), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_every_api_down_reads_continue_and_writes_are_refused_after_the_hold() {
    let cluster = shared_cluster().await;
    let roles = [FakeRole::Primary, FakeRole::Replica, FakeRole::Replica];
    let ports = [cluster.port(0), cluster.port(1), cluster.port(2)];
    let (apis, nodes) = fake_apis(&ports, &roles).await;
    let extra = "failover: { hold_timeout: 1s }\n";
    let proxy = start_proxy(&config_yaml(&nodes, "none", extra)).await;
    for api in &apis {
        api.set_role(FakeRole::Refuse);
    }
    eventually(
        Duration::from_secs(5),
        "the primary falls when its API is gone",
        || async { admin_get(&proxy, "/health").await.0 == 503 },
    )
    .await;
    let replicas = [cluster.port(1), cluster.port(2)];
    for _ in 0..3 {
        let reader = connect(proxy.listener_addr("ro").expect("ro"), "app", "app_pw").await;
        assert!(
            replicas.contains(&server_port(&reader).await),
            "reads stay on the last known replicas"
        );
    }
    let error = try_connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw")
        .await
        .err()
        .and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()));
    assert_eq!(
        error.as_deref(),
        Some("57P03"),
        "writes are held, then refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn session_mode_sessions_on_a_demoted_primary_are_closed_and_reconnects_held() {
    // The old primary keeps running (its sessions would otherwise end on their
    // own): only the topology says it was demoted.
    let cluster = blocking(|| PgCluster::start(1)).await;
    let (primary, replica) = (cluster.port(0), cluster.port(1));
    let roles = [FakeRole::Primary, FakeRole::Replica];
    let (apis, nodes) = fake_apis(&[primary, replica], &roles).await;
    let extra = "pool: { mode: session }\nfailover: { hold_timeout: 20s }\n";
    let proxy = start_proxy(&config_yaml(&nodes, "primary", extra)).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let ro = proxy.listener_addr("ro").expect("ro");
    // The FATAL arrives while the client is idle, so tokio-postgres reports it
    // from the connection future: keep that result.
    let (writer, connection) = tokio_postgres::connect(
        &conn_str(rw, "app", "app_pw", "appdb"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    let connection_end = tokio::spawn(connection);
    let reader = connect(ro, "app", "app_pw").await;
    assert_eq!(server_port(&writer).await, primary);

    // Unreachable is not demoted: the session stays.
    apis[0].set_role(FakeRole::NotRunning);
    eventually(Duration::from_secs(3), "no primary", || async {
        admin_get(&proxy, "/health").await.0 == 503
    })
    .await;
    writer
        .batch_execute("SELECT 1")
        .await
        .expect("no evidence of demotion yet: the session stays");

    // A reconnect now is held until a primary is confirmed.
    let reconnect = tokio::spawn(async move {
        let client = connect(rw, "app", "app_pw").await;
        server_port(&client).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!reconnect.is_finished(), "held while there is no primary");

    // Node2 is promoted and confirmed: node1's session-mode sessions are closed.
    let cluster = blocking(move || {
        cluster.promote(1);
        cluster
    })
    .await;
    apis[1].set_role(FakeRole::Primary);
    apis[1].set_timeline(2);
    let ended = tokio::time::timeout(Duration::from_secs(5), connection_end)
        .await
        .expect("the session on the demoted node is closed")
        .expect("join");
    let error = ended.expect_err("closed by the proxy");
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("a FATAL ErrorResponse, not a bare drop: {error:?}"));
    assert_eq!(db.code().code(), "57P01");
    assert!(
        db.message().contains("no longer the primary"),
        "{}",
        db.message()
    );
    let port = tokio::time::timeout(Duration::from_secs(10), reconnect)
        .await
        .expect("the held reconnect proceeds")
        .expect("join");
    assert_eq!(port, replica, "the reconnect reaches the new primary");
    reader
        .batch_execute("SELECT 1")
        .await
        .expect("read sessions are not touched");
    drop(cluster);
}
