//! Failover through Switchyard with real Patroni + etcd: 20 clients keep writing
//! through the rw listener (transaction pooling) while `patronictl switchover` moves
//! the primary. Clients are held while there is no primary, requests the old
//! primary refused while shutting down are sent again to the new one, no write
//! ever reaches a standby, and every acknowledged write must be on the new primary
//! afterwards. The number of failed transactions (usually zero) is printed.

mod harness;

use std::time::Duration;

use harness::clients::*;
use harness::patroni::PatroniCluster;
use harness::proxy::*;
use harness::wait::*;
use harness::write_load::{LoadSpec, Protocol, WriteLoad};

const CLIENTS: usize = 20;

#[tokio::test(flavor = "multi_thread")]
async fn switchover_under_write_load_fails_no_transaction() {
    let cluster = blocking(PatroniCluster::start).await;
    let leader = cluster.leader().expect("a leader");
    let nodes = patroni_nodes(&cluster);
    let extra = "pool: { mode: transaction, size: 10 }\nfailover: { hold_timeout: 30s }\n";
    let proxy = start_proxy(&config_yaml(&nodes, "primary", extra)).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    connect(rw, "app", "app_pw")
        .await
        .batch_execute("create table failover_probe(id bigint primary key)")
        .await
        .expect("create table");

    // Half the clients use the simple protocol, half a prepared statement; a
    // client stops at the first connection it loses.
    let load = WriteLoad::start(LoadSpec {
        conn_str: conn_str(rw, "app", "app_pw", "appdb"),
        table: "failover_probe".to_string(),
        clients: CLIENTS,
        protocols: vec![Protocol::Simple, Protocol::Prepared],
        reconnect: None,
        id_base: 0,
        op_timeout: Duration::from_secs(60),
    });
    tokio::time::sleep(Duration::from_secs(3)).await;

    let candidate = (leader + 1) % 3;
    let cluster = blocking(move || {
        cluster.switchover(candidate);
        cluster
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "rw reaches the new leader",
        || async {
            match try_connect(rw, "app", "app_pw").await {
                Ok(client) => server_port(&client).await == cluster.pg_port(candidate),
                Err(_) => false,
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = load.stop().await;
    let acknowledged = report.acknowledged();
    let (longest_pause, _) = report.longest_pause();
    let errors: Vec<String> = report.failures().map(|f| f.message.clone()).collect();
    println!(
        "switchover under load: {} writes acknowledged, {} failed, longest write pause {:?}",
        acknowledged.len(),
        errors.len(),
        longest_pause
    );
    // Usually zero. What may fail is only a transaction in flight on the old
    // primary as it shut down, with the server's own 57P01 or the proxy's 08006,
    // which ends that client's connection: at most one such failure per client.
    // Anything else (a write reaching a standby, 25006) is a routing bug.
    let in_flight = |kind: &str| matches!(kind, "57P01" | "08006" | "closed");
    assert!(
        report.failures().all(|f| in_flight(&f.kind)),
        "failed transactions: {errors:?}"
    );
    assert!(
        report.clients.iter().all(|c| c.failures.len() <= 1),
        "at most one in-flight failure per client: {errors:?}"
    );
    assert!(
        acknowledged.len() > 100,
        "the load ran: {}",
        acknowledged.len()
    );

    assert_failover_landed(
        &proxy,
        &cluster,
        candidate,
        "failover_probe",
        &acknowledged,
        "every acknowledged write is on the new primary",
    )
    .await;
}
