//! The zero-error maintenance procedure of README "Admin console" with real
//! Patroni + etcd: under write load (transaction pooling, simple and prepared
//! clients that stop at their first error), `PAUSE` on the console, a real
//! `patronictl switchover`, then `RESUME` once the proxy has confirmed the new
//! primary. No client may see an error, nothing may be acknowledged while paused,
//! and every acknowledged write must be on the new primary.

mod harness;

use std::time::{Duration, Instant};

use harness::clients::*;
use harness::console::*;
use harness::patroni::PatroniCluster;
use harness::proxy::*;
use harness::wait::*;
use harness::write_load::{LoadSpec, Protocol, WriteLoad};

const CLIENTS: usize = 8;

#[tokio::test(flavor = "multi_thread")]
async fn pause_patronictl_switchover_resume_fails_nothing() {
    let cluster = blocking(PatroniCluster::start).await;
    let leader = cluster.leader().expect("a leader");
    let nodes = patroni_nodes(&cluster);
    let extra = "pool: { mode: transaction, size: 10 }\nfailover: { hold_timeout: 60s }\n";
    let proxy = start_proxy(&with_console(&config_yaml(&nodes, "primary", extra))).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    connect(rw, "app", "app_pw")
        .await
        .batch_execute("create table pause_patroni_probe(id bigint primary key)")
        .await
        .expect("create table");
    let load = WriteLoad::start(LoadSpec {
        conn_str: conn_str(rw, "app", "app_pw", "appdb"),
        table: "pause_patroni_probe".to_string(),
        clients: CLIENTS,
        protocols: vec![Protocol::Simple, Protocol::Prepared],
        // A client stops at the first error it sees: any error shows.
        reconnect: None,
        id_base: 0,
        op_timeout: Duration::from_secs(90),
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut console = RawConsole::login(rw).await;
    let paused = console.query("PAUSE").await;
    assert_eq!(paused.tag.as_deref(), Some("PAUSE"), "{:?}", paused.error);
    let paused_at = Instant::now();

    let candidate = (leader + 1) % 3;
    let cluster = blocking(move || {
        cluster.switchover(candidate);
        cluster
    })
    .await;
    let expected = format!("OK: primary {}", cluster.name(candidate));
    eventually(
        Duration::from_secs(60),
        "the proxy confirms the new primary",
        || async { admin_get(&proxy, "/health").await.1.trim() == expected },
    )
    .await;
    let resumed_at = Instant::now();
    let resumed = console.query("RESUME").await;
    assert_eq!(
        resumed.tag.as_deref(),
        Some("RESUME"),
        "{:?}",
        resumed.error
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    let report = load.stop().await;
    report.assert_held_without_errors(paused_at, resumed_at);
    let acknowledged = report.acknowledged();
    let (pause, _) = report.longest_pause();
    println!(
        "PAUSE + patronictl switchover + RESUME: {} writes acknowledged, 0 failed, \
         longest write pause {pause:?} (paused for {:?})",
        acknowledged.len(),
        resumed_at - paused_at
    );
    assert_failover_landed(
        &proxy,
        &cluster,
        candidate,
        "pause_patroni_probe",
        &acknowledged,
        "every acknowledged write is on the new primary",
    )
    .await;
}
