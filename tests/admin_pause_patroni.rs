//! The zero-error maintenance procedure of README "Admin console" with real
//! Patroni + etcd: under write load (transaction pooling, simple and prepared
//! clients that stop at their first error), `PAUSE` on the console, a real
//! `patronictl switchover`, then `RESUME` once the proxy has confirmed the new
//! primary. No client may see an error, nothing may be acknowledged while paused,
//! and every acknowledged write must be on the new primary. Once with transaction
//! pooling, once with session pooling (sessions moved to the new primary).

mod harness;

use std::time::{Duration, Instant};

use harness::clients::*;
use harness::console::*;
use harness::patroni::PatroniCluster;
use harness::proxy::*;
use harness::session_writers::SessionWriters;
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

/// The same procedure in session pooling: each writer keeps one session (one
/// client connection, its own `SET`s and a named prepared INSERT) through the
/// switchover. PAUSE holds each at its next idle boundary; after RESUME each is
/// moved to a connection on the new primary with its settings and prepared
/// statement rebuilt: no writer sees an error or loses its connection.
#[tokio::test(flavor = "multi_thread")]
async fn session_mode_sessions_move_to_the_new_primary_without_errors() {
    let cluster = blocking(PatroniCluster::start).await;
    let leader = cluster.leader().expect("a leader");
    let nodes = patroni_nodes(&cluster);
    let extra = "pool: { mode: session, size: 12 }\nfailover: { hold_timeout: 60s }\n";
    let proxy = start_proxy(&with_console(&config_yaml(&nodes, "primary", extra))).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    connect(rw, "app", "app_pw")
        .await
        .batch_execute("create table pause_session_probe(id bigint primary key)")
        .await
        .expect("create table");
    let writers = SessionWriters::start(
        &conn_str(rw, "app", "app_pw", "appdb"),
        "pause_session_probe",
        CLIENTS,
        Duration::from_secs(90),
    )
    .await;
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

    let logs = writers.stop().await;
    let new_port = cluster.pg_port(candidate);
    for log in &logs {
        assert_eq!(log.failure, None, "writer {} saw an error", log.index);
        assert_eq!(
            log.settings,
            Some(log.expected_settings()),
            "writer {}: settings kept",
            log.index
        );
        assert!(
            log.statement_works,
            "writer {}: prepared INSERT kept",
            log.index
        );
        assert_eq!(
            log.server_port,
            Some(new_port),
            "writer {}: on the new primary",
            log.index
        );
        let during_pause = log
            .acknowledged
            .iter()
            .filter(|&&(_, at)| at > paused_at + Duration::from_millis(100) && at < resumed_at)
            .count();
        assert_eq!(
            during_pause, 0,
            "writer {}: nothing acknowledged while paused",
            log.index
        );
        assert!(
            log.acknowledged.iter().any(|&(_, at)| at > resumed_at),
            "writer {}: writes go on after RESUME",
            log.index
        );
    }
    let acknowledged: Vec<i64> = logs
        .iter()
        .flat_map(|log| log.acknowledged.iter().map(|&(id, _)| id))
        .collect();
    println!(
        "session mode: PAUSE + patronictl switchover + RESUME: {} writes acknowledged by {} \
         sessions, 0 failed (paused for {:?})",
        acknowledged.len(),
        logs.len(),
        resumed_at - paused_at
    );
    let metrics = admin_get(&proxy, "/metrics").await.1;
    let moved = format!("switchyard_session_moves_total{{result=\"moved\"}} {CLIENTS}");
    assert!(metrics.contains(&moved), "{moved} in:\n{metrics}");
    assert_failover_landed(
        &proxy,
        &cluster,
        candidate,
        "pause_session_probe",
        &acknowledged,
        "every acknowledged write is on the new primary",
    )
    .await;
}
