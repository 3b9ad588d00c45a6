//! Debian's prometheus-pgbouncer-exporter (1.7, Python, psycopg2) pointed at
//! Switchyard's admin console exports its usual series without errors. (Against
//! a real PgBouncer 1.18 this exporter fails: it reads SHOW STATS's
//! `total_requests`, a column PgBouncer dropped in 1.8 and Switchyard appends.)

mod harness;

use std::process::Stdio;
use std::time::Duration;

use harness::clients::*;
use harness::console::with_console;
use harness::pg::shared_cluster;
use harness::proc::{free_port, http_get};
use harness::proxy::*;
use harness::wait::*;

const EXPORTER: &str = "/usr/bin/prometheus-pgbouncer-exporter";

#[tokio::test(flavor = "multi_thread")]
async fn debian_pgbouncer_exporter_scrapes_the_console() {
    assert!(
        std::path::Path::new(EXPORTER).exists(),
        "{EXPORTER} is missing: apt-get install prometheus-pgbouncer-exporter (.ci/run does)"
    );
    let cluster = shared_cluster().await;
    let (yaml, _api) = config_for(cluster.port(0), "pool: { mode: transaction }\n").await;
    let proxy = start_proxy(&with_console(&yaml)).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let app = connect(rw, "app", "app_pw").await;
    app.simple_query("select 1").await.expect("traffic");

    let port = free_port();
    let mut exporter = tokio::process::Command::new(EXPORTER)
        .args([
            "--pgbouncer-host",
            "127.0.0.1",
            "--pgbouncer-user",
            "app",
            "--host",
            "127.0.0.1",
        ])
        .arg("--pgbouncer-port")
        .arg(rw.port().to_string())
        .arg("--port")
        .arg(port.to_string())
        .env("PGPASSWORD", "app_pw")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the exporter");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut body = String::new();
    for _ in 0..100 {
        if let Some(exit) = exporter.try_wait().expect("exporter status") {
            let output = exporter.wait_with_output().await.expect("exporter output");
            panic!(
                "the exporter exited ({exit}): {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let fetched = {
            let url = url.clone();
            blocking(move || http_get(&url, Duration::from_secs(5))).await
        };
        if let Some((200, text)) = fetched {
            body = text;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!body.is_empty(), "no scrape from the exporter");
    for series in [
        "pgbouncer_active_clients{database=\"appdb\",user=\"app\"}",
        "pgbouncer_waiting_clients{database=\"appdb\",user=\"app\"}",
        "pgbouncer_requests_total{database=\"rw\"}",
        "pgbouncer_received_bytes_total{database=\"rw\"}",
        "pgbouncer_pool_size{database=\"appdb\"}",
        "pgbouncer_pools ",
        "pgbouncer_used_clients ",
    ] {
        assert!(body.contains(series), "missing {series} in:\n{body}");
    }
    let requests: f64 = body
        .lines()
        .find(|l| l.starts_with("pgbouncer_requests_total{database=\"rw\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("a value");
    assert!(requests >= 1.0, "the query above is counted: {requests}");
    // A second scrape works too (the exporter keeps one connection).
    let again = blocking(move || http_get(&url, Duration::from_secs(5))).await;
    assert_eq!(again.map(|(status, _)| status), Some(200));
    let _ = exporter.kill().await;
}
