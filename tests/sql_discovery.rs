//! SQL-probe discovery (`cluster.discovery: sql`) against real PostgreSQL servers,
//! with no Patroni anywhere: roles come from `pg_is_in_recovery()` on each node, so
//! the proxy follows what an operator (or repmgr) does with `pg_ctl promote`.

mod harness;

use std::collections::HashSet;
use std::time::Duration;

use harness::clients::*;
use harness::pg::{self, shared_cluster, PgCluster};
use harness::proc;
use harness::proxy::*;
use harness::wait::*;
use switchyard::proxy::RunningProxy;

/// Proxy config for `cluster` with SQL discovery; the probe logs in as `app` (an
/// ordinary role) with `probe_password`. `cluster_extra` goes inside `cluster:`.
fn sql_config(cluster: &PgCluster, probe_password: &str, cluster_extra: &str) -> String {
    let mut yaml = format!(
        "listeners:\n\
         \x20 - {{ name: rw, listen: \"127.0.0.1:0\", route: primary }}\n\
         \x20 - {{ name: ro, listen: \"127.0.0.1:0\", route: replica }}\n\
         admin:\n  listen: \"127.0.0.1:0\"\n\
         failover: {{ hold_timeout: 20s }}\n\
         cluster:\n\
         \x20 discovery: sql\n\
         \x20 probe: {{ user: app, password: \"{probe_password}\", database: appdb }}\n\
         \x20 health: {{ interval: 100ms, timeout: 500ms, rise: 2, fall: 3 }}\n\
         {cluster_extra}\
         \x20 nodes:\n"
    );
    for node in &cluster.nodes {
        yaml.push_str(&format!(
            "    - {{ name: {}, host: 127.0.0.1, port: {} }}\n",
            node.name, node.port
        ));
    }
    yaml.push_str(USERS_YAML);
    yaml
}

/// The port a fresh rw session writes on, if it can write at all.
async fn write_port(proxy: &RunningProxy) -> Option<u16> {
    let client = try_connect(proxy.listener_addr("rw")?, "app", "app_pw")
        .await
        .ok()?;
    client
        .batch_execute("create temp table sql_discovery_probe(x int)")
        .await
        .ok()?;
    Some(server_port(&client).await)
}

async fn read_port(proxy: &RunningProxy) -> Option<u16> {
    let client = try_connect(proxy.listener_addr("ro")?, "app", "app_pw")
        .await
        .ok()?;
    Some(server_port(&client).await)
}

/// Stops node `i` the way a crash would leave it (`pg_ctl stop -m immediate`).
fn stop_immediate(cluster: &PgCluster, i: usize) {
    proc::run_ok(
        proc::command_as_postgres(&pg::pg_bin("pg_ctl"))
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(&cluster.nodes[i].data_dir),
        "pg_ctl stop -m immediate",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_come_from_the_servers_themselves() {
    let cluster = shared_cluster().await;
    let proxy = start_proxy(&sql_config(cluster, "app_pw", "")).await;
    assert_eq!(
        write_port(&proxy).await,
        Some(cluster.port(0)),
        "rw on the primary"
    );

    let mut seen = HashSet::new();
    for _ in 0..6 {
        let client = connect(proxy.listener_addr("ro").expect("ro"), "app", "app_pw").await;
        let in_recovery: bool = client
            .query_one("select pg_is_in_recovery()", &[])
            .await
            .expect("query")
            .get(0);
        assert!(in_recovery, "ro sessions are on replicas");
        seen.insert(server_port(&client).await);
    }
    let replicas: HashSet<u16> = [cluster.port(1), cluster.port(2)].into();
    assert_eq!(seen, replicas, "reads spread over both replicas");

    let json = admin_status(&proxy).await;
    assert_eq!(json["primary"], "node0");
    let primary = &json["nodes"][0];
    assert_eq!(primary["role"], "primary");
    assert_eq!(primary["timeline"], 1, "timeline from the WAL file name");
    assert!(primary["api"].is_null(), "no Patroni API configured");
    assert!(primary["lag_bytes"].is_null(), "the primary has no lag");
    for replica in [&json["nodes"][1], &json["nodes"][2]] {
        assert_eq!(replica["role"], "replica", "{replica}");
        assert!(
            replica["lag_bytes"].is_u64(),
            "replica lag is measured: {replica}"
        );
        assert!(replica["last_error"].is_null(), "{replica}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_probe_discovery_follows_a_pg_ctl_promote() {
    let cluster = blocking(|| PgCluster::start(1)).await;
    let proxy = start_proxy(&sql_config(&cluster, "app_pw", "")).await;
    assert_eq!(write_port(&proxy).await, Some(cluster.port(0)));

    // What an operator (or repmgr) does when the primary dies.
    let cluster = blocking(move || {
        stop_immediate(&cluster, 0);
        cluster.promote(1);
        cluster
    })
    .await;
    let new_primary = cluster.port(1);
    eventually(
        Duration::from_secs(30),
        "writes through rw reach the promoted node",
        || async { write_port(&proxy).await == Some(new_primary) },
    )
    .await;
    let json = admin_status(&proxy).await;
    assert_eq!(json["primary"], "node1");
    assert_eq!(
        json["nodes"][1]["timeline"], 2,
        "promotion starts timeline 2"
    );
    assert_eq!(json["nodes"][0]["role"], "unavailable");
    assert!(
        json["nodes"][0]["last_error"].is_string(),
        "the stopped node shows why: {}",
        json["nodes"][0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_two_servers_out_of_recovery_the_higher_timeline_wins() {
    let cluster = blocking(|| PgCluster::start(1)).await;
    let proxy = start_proxy(&sql_config(&cluster, "app_pw", "")).await;
    assert_eq!(write_port(&proxy).await, Some(cluster.port(0)));

    // The old primary keeps running: both servers now accept writes.
    let cluster = blocking(move || {
        cluster.promote(1);
        cluster
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the promoted node (timeline 2) becomes the primary",
        || async { admin_status(&proxy).await["primary"] == "node1" },
    )
    .await;
    assert_eq!(write_port(&proxy).await, Some(cluster.port(1)));
    let json = admin_status(&proxy).await;
    assert_eq!(json["nodes"][0]["timeline"], 1, "{json}");
    assert_eq!(json["nodes"][1]["timeline"], 2, "{json}");
    assert!(json["nodes"][0]["lag_bytes"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_with_paused_replay_leaves_the_read_route_until_it_resumes() {
    let cluster = blocking(|| PgCluster::start(1)).await;
    let proxy = start_proxy(&sql_config(&cluster, "app_pw", "  max_replica_lag: 64kB\n")).await;
    let (primary, replica) = (cluster.port(0), cluster.port(1));
    assert_eq!(read_port(&proxy).await, Some(replica));

    let cluster = blocking(move || {
        cluster.psql(1, "SELECT pg_wal_replay_pause()");
        cluster.psql_db(
            0,
            pg::APP_DB,
            "CREATE TABLE lag_probe AS SELECT g, repeat('x', 200) AS pad \
             FROM generate_series(1, 20000) AS g",
        );
        cluster
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the paused replica leaves the read route",
        || async {
            let json = admin_status(&proxy).await;
            json["nodes"][1]["replica"]["up"] == false
                && json["nodes"][1]["lag_bytes"].as_u64().unwrap_or(0) > 64 << 10
        },
    )
    .await;
    assert_eq!(
        read_port(&proxy).await,
        Some(primary),
        "reads fall back to the primary"
    );

    let _cluster = blocking(move || {
        cluster.psql(1, "SELECT pg_wal_replay_resume()");
        cluster
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the replica returns once it has caught up",
        || async { read_port(&proxy).await == Some(replica) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_probe_password_is_reported_in_status() {
    let cluster = shared_cluster().await;
    let secret = "not-the-probe-password-7315";
    let proxy = start_proxy(&sql_config(cluster, secret, "")).await;
    eventually(
        Duration::from_secs(5),
        "every node reports the failed login",
        || async {
            let json = admin_status(&proxy).await;
            (0..3).all(|i| {
                json["nodes"][i]["last_error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("password authentication failed")
            })
        },
    )
    .await;
    let (code, text) = admin_get(&proxy, "/status").await;
    assert_eq!(code, 200);
    assert!(!text.contains(secret), "the password never shows");
    let error = admin_status(&proxy).await["nodes"][0]["last_error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(error.contains("SQL probe as \"app\""), "{error}");
    let (health, reason) = admin_get(&proxy, "/health").await;
    assert_eq!(health, 503);
    assert!(
        reason.contains("password authentication failed"),
        "{reason}"
    );
}
