//! PAUSE and RESUME around a planned primary change, under write load: the
//! zero-error maintenance procedure of README "Admin console". A real primary and
//! replica behind fake Patroni APIs; the "switchover" stops the primary and
//! promotes the replica while the proxy is paused, and no client sees an error.

mod harness;

use std::time::{Duration, Instant};

use harness::clients::*;
use harness::console::*;
use harness::fake_patroni::{http_request, FakeRole};
use harness::pg::PgCluster;
use harness::proxy::*;
use harness::wait::*;
use harness::write_load::{LoadSpec, Protocol, WriteLoad};

const CLIENTS: usize = 6;

#[tokio::test(flavor = "multi_thread")]
async fn pause_switchover_resume_under_write_load_fails_nothing() {
    let cluster = blocking(|| PgCluster::start(1)).await;
    let roles = [FakeRole::Primary, FakeRole::Replica];
    let (apis, nodes) = fake_apis(&[cluster.port(0), cluster.port(1)], &roles).await;
    let extra = "pool: { mode: transaction, size: 8 }\nfailover: { hold_timeout: 30s }\n";
    let proxy = start_proxy(&with_console(&config_yaml(&nodes, "primary", extra))).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    connect(rw, "app", "app_pw")
        .await
        .batch_execute("create table pause_probe(id bigint primary key)")
        .await
        .expect("create table");
    let load = WriteLoad::start(LoadSpec {
        conn_str: conn_str(rw, "app", "app_pw", "appdb"),
        table: "pause_probe".to_string(),
        clients: CLIENTS,
        protocols: vec![Protocol::Simple, Protocol::Prepared],
        // A client that loses its connection stops: any error shows.
        reconnect: None,
        id_base: 0,
        op_timeout: Duration::from_secs(60),
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    // PAUSE over HTTP: it returns once every running transaction has finished.
    let response = http_request(
        proxy.admin_addr,
        "POST",
        "/pause?timeout_ms=10000",
        Duration::from_secs(15),
    )
    .await
    .expect("POST /pause");
    assert_eq!(response.status, 200, "{}", response.body);
    let paused_at = Instant::now();
    let mut console = RawConsole::login(rw).await;
    let state = console.query("SHOW STATE").await;
    assert_eq!(
        state.rows[1],
        [Some("paused".to_string()), Some("yes".to_string())]
    );

    // The planned switchover, while nothing runs.
    let cluster = switch_over_to_node2(cluster, &apis, &proxy).await;
    let resumed_at = Instant::now();
    assert_eq!(console.query("RESUME").await.tag.as_deref(), Some("RESUME"));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let report = load.stop().await;
    report.assert_held_without_errors(paused_at, resumed_at);
    let acknowledged = report.acknowledged();
    let (pause, _) = report.longest_pause();
    println!(
        "pause + switchover + resume: {} writes acknowledged, 0 failed, longest write pause {pause:?}",
        acknowledged.len()
    );
    let direct = cluster.conn_str(1, "app", "app_pw", "appdb");
    let present = harness::write_load::count_present(&direct, "pause_probe", &acknowledged).await;
    assert_eq!(
        present as usize,
        acknowledged.len(),
        "every acknowledged write is on the new primary"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_waits_for_a_running_transaction_and_holds_new_ones() {
    let cluster = harness::pg::shared_cluster().await;
    let (yaml, _api) = config_for(cluster.port(0), "pool: { mode: transaction }\n").await;
    let proxy = start_proxy(&with_console(&yaml)).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let inside = connect(rw, "app", "app_pw").await;
    inside
        .batch_execute("begin; select 1")
        .await
        .expect("begin");
    let mut console = RawConsole::login(rw).await;
    let pause = tokio::spawn(async move {
        let reply = console.query("PAUSE appdb").await;
        (reply.tag, console)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pause.is_finished(), "PAUSE waits for the open transaction");
    let other = connect(rw, "app", "app_pw").await;
    let held = tokio::spawn(async move { other.simple_query("select 1").await.map(|_| ()) });
    inside.batch_execute("commit").await.expect("commit");
    let (tag, mut console) = within(5, "PAUSE returns", pause).await.expect("join");
    assert_eq!(tag.as_deref(), Some("PAUSE"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !held.is_finished(),
        "a new transaction is held while paused"
    );
    let clients = console.query("SHOW CLIENTS").await;
    assert!(
        clients
            .column("state")
            .contains(&Some("waiting".to_string())),
        "{clients:?}"
    );
    let response = http_request(
        proxy.admin_addr,
        "POST",
        "/resume?db=appdb",
        Duration::from_secs(5),
    )
    .await
    .expect("POST /resume");
    assert_eq!(response.status, 200, "{}", response.body);
    within(5, "the held query runs", held)
        .await
        .expect("join")
        .expect("no error");
    let again = http_request(proxy.admin_addr, "POST", "/resume", Duration::from_secs(5))
        .await
        .expect("POST /resume");
    assert_eq!(again.status, 409, "nothing to resume: {}", again.body);
}
