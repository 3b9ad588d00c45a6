//! `GET /metrics` scraped during a real workload (tokio-postgres through both pool
//! modes against real PostgreSQL): the documented series exist with Prometheus
//! names and plausible values. One proxy per process: the recorder is global.

mod harness;

use std::collections::HashMap;
use std::time::Duration;

use harness::clients::*;
use harness::fake_patroni::FakeRole;
use harness::pg::{self, PgCluster};
use harness::proxy::*;
use harness::wait::*;

/// `name{labels} value` lines of a Prometheus text exposition, keyed by the
/// series (name with its labels as printed).
fn parse(exposition: &str) -> HashMap<String, f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of the one series whose name and labels contain all of `parts`.
fn value(series: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    let matches: Vec<(&String, &f64)> = series
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l)))
        .collect();
    match matches.as_slice() {
        [(_, v)] => **v,
        _ => panic!("expected one series {name} {labels:?}, found {matches:?}"),
    }
}

/// The documented metrics (conf/prometheus/metric-names.txt): name and type.
fn documented() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/prometheus/metric-names.txt"
    );
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            Some((fields.next()?.to_string(), fields.next()?.to_string()))
        })
        .collect()
}

/// `# TYPE name kind` lines of an exposition.
fn types(exposition: &str) -> HashMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_string(), kind.trim().to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_describe_a_real_workload() {
    let (primary, replica) = blocking(|| {
        let cluster = PgCluster::shared();
        (cluster.port(0), cluster.port(1))
    })
    .await;
    let (_apis, nodes) =
        fake_apis(&[primary, replica], &[FakeRole::Primary, FakeRole::Replica]).await;
    let yaml = config_yaml(&nodes, "primary", "pool: { mode: transaction, size: 4 }\n");
    let proxy = start_proxy(&yaml).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let ro = proxy.listener_addr("ro").expect("ro");

    let writer = connect(rw, "app", "app_pw").await;
    let reader = connect(ro, "app", "app_pw").await;
    let lingering = connect(rw, "app", "app_pw").await;
    writer
        .batch_execute("CREATE TABLE IF NOT EXISTS metrics_probe (n int)")
        .await
        .expect("table");
    const WRITES: usize = 50;
    for n in 0..WRITES {
        writer
            .execute("INSERT INTO metrics_probe VALUES ($1)", &[&(n as i32)])
            .await
            .expect("insert");
    }
    for _ in 0..10 {
        reader.simple_query("SELECT 1").await.expect("read");
    }
    let error = writer
        .batch_execute("SELECT * FROM no_such_table_for_metrics")
        .await
        .expect_err("undefined table");
    assert_eq!(error.as_db_error().map(|e| e.code().code()), Some("42P01"));
    // Wrong password: counted under class 28 for the listener.
    assert!(try_connect(rw, "app", "wrong").await.is_err());

    let (status, body) = admin_get(&proxy, "/metrics").await;
    assert_eq!(status, 200);
    let series = parse(&body);

    let transactions = value(
        &series,
        "switchyard_transactions_total",
        &["listener=\"rw\""],
    );
    assert!(transactions >= WRITES as f64, "{transactions}");
    let queries = value(&series, "switchyard_queries_total", &["listener=\"rw\""]);
    assert!(queries >= WRITES as f64, "{queries}");
    let reads = value(
        &series,
        "switchyard_transactions_total",
        &["listener=\"ro\""],
    );
    assert!(reads >= 10.0, "{reads}");
    let sent = value(
        &series,
        "switchyard_client_sent_bytes_total",
        &["listener=\"rw\""],
    );
    let received = value(
        &series,
        "switchyard_client_received_bytes_total",
        &["listener=\"rw\""],
    );
    assert!(
        received > (WRITES * 20) as f64 && sent > (WRITES * 20) as f64,
        "{received} {sent}"
    );
    let waits = value(
        &series,
        "switchyard_checkout_wait_seconds_count",
        &["listener=\"rw\""],
    );
    assert!(waits >= WRITES as f64, "{waits}");
    let wait_sum = value(
        &series,
        "switchyard_checkout_wait_seconds_sum",
        &["listener=\"rw\""],
    );
    assert!(
        wait_sum < waits,
        "average checkout wait under a second: {wait_sum}"
    );
    let durations = value(
        &series,
        "switchyard_transaction_duration_seconds_count",
        &["listener=\"rw\""],
    );
    assert!(durations >= WRITES as f64, "{durations}");
    let infinite_bucket = value(
        &series,
        "switchyard_transaction_duration_seconds_bucket",
        &["listener=\"rw\"", "le=\"+Inf\""],
    );
    assert_eq!(infinite_bucket, durations);
    assert_eq!(
        value(
            &series,
            "switchyard_errors_total",
            &["listener=\"rw\"", "class=\"42\""]
        ),
        1.0
    );
    assert!(
        value(
            &series,
            "switchyard_errors_total",
            &["listener=\"rw\"", "class=\"28\""]
        ) >= 1.0
    );

    // Clients: three connected, none holding a server between transactions.
    assert_eq!(
        value(
            &series,
            "switchyard_client_connections",
            &["listener=\"rw\"", "state=\"idle\""]
        ),
        2.0
    );
    assert_eq!(
        value(
            &series,
            "switchyard_client_connections",
            &["listener=\"rw\"", "state=\"active\""]
        ),
        0.0
    );
    let pool_labels = [
        "node=\"node1\"",
        "user=\"app\"",
        &format!("database=\"{}\"", pg::APP_DB),
    ];
    let pool_labels: Vec<&str> = pool_labels.iter().map(|s| s.as_ref()).collect();
    assert_eq!(value(&series, "switchyard_pool_size", &pool_labels), 4.0);
    let mut idle_labels = pool_labels.clone();
    idle_labels.push("state=\"idle\"");
    let idle_servers = value(&series, "switchyard_server_connections", &idle_labels);
    assert!((1.0..=4.0).contains(&idle_servers), "{idle_servers}");

    // Topology and health checks.
    assert_eq!(
        value(
            &series,
            "switchyard_node_role",
            &["node=\"node1\"", "role=\"primary\""]
        ),
        1.0
    );
    assert_eq!(
        value(
            &series,
            "switchyard_node_role",
            &["node=\"node2\"", "role=\"replica\""]
        ),
        1.0
    );
    assert_eq!(
        value(
            &series,
            "switchyard_node_role",
            &["node=\"node2\"", "role=\"primary\""]
        ),
        0.0
    );
    assert_eq!(value(&series, "switchyard_primary_available", &[]), 1.0);
    assert_eq!(value(&series, "switchyard_split_brain", &[]), 0.0);
    assert_eq!(value(&series, "switchyard_shutting_down", &[]), 0.0);
    let checks = value(
        &series,
        "switchyard_health_check_duration_seconds_count",
        &["node=\"node1\""],
    );
    assert!(checks >= 1.0, "{checks}");
    assert_eq!(
        value(
            &series,
            "switchyard_health_check_failures_total",
            &["node=\"node1\""]
        ),
        0.0
    );

    // Every exported name is documented, and every documented one is exported
    // (those that only appear after an event are checked by name only).
    let documented = documented();
    let exported_types = types(&body);
    for (name, kind) in &documented {
        if let Some(exported) = exported_types.get(name) {
            assert_eq!(exported, kind, "type of {name}");
        }
    }
    let documented: Vec<String> = documented.into_iter().map(|(name, _)| name).collect();
    let exported: std::collections::BTreeSet<String> = series
        .keys()
        .filter_map(|k| k.split('{').next())
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_string()
        })
        .collect();
    for name in &exported {
        assert!(
            documented.contains(name),
            "{name} is exported but not documented"
        );
    }
    let after_events = [
        "switchyard_primary_changes_total",
        "switchyard_failover_duration_seconds",
        "switchyard_config_reloads_total",
        "switchyard_replica_lag_bytes",
        "switchyard_cancel_requests_total",
        "switchyard_client_refusals_total",
        "switchyard_auth_failures_total",
        // Only with auth: configured (tests/auth_query.rs reads it).
        "switchyard_auth_query_total",
        // Only once PAUSE has moved (or refused to move) a session-mode session.
        "switchyard_session_moves_total",
        // Only listeners with TLS export it (tests/tls_clients.rs reads it).
        "switchyard_tls_certificate_expiry_timestamp_seconds",
    ];
    for name in &documented {
        assert!(
            exported.contains(name) || after_events.contains(&name.as_str()),
            "{name} is documented but not exported:\n{body}"
        );
    }
    drop(lingering);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
