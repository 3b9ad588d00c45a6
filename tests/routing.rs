//! Routing through Switchyard to a real PostgreSQL primary and two streaming
//! replicas, with fake Patroni endpoints whose answers the tests flip.

mod harness;

use std::collections::HashSet;
use std::time::Duration;

use harness::clients::*;
use harness::fake_patroni::{FakePatroni, FakeRole};
use harness::pg::{shared_cluster, PgCluster};
use harness::proxy::*;
use harness::wait::*;

/// Fake APIs for the shared cluster: node 0 primary, nodes 1-2 replicas.
async fn shared_cluster_apis() -> (&'static PgCluster, Vec<FakePatroni>, Vec<NodeSpec>) {
    let cluster = shared_cluster().await;
    let roles = [FakeRole::Primary, FakeRole::Replica, FakeRole::Replica];
    let ports = [cluster.port(0), cluster.port(1), cluster.port(2)];
    let (apis, nodes) = fake_apis(&ports, &roles).await;
    (cluster, apis, nodes)
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_reach_the_primary_and_reads_spread_over_replicas() {
    let (cluster, _apis, nodes) = shared_cluster_apis().await;
    let proxy = start_proxy(&config_yaml(&nodes, "primary", "")).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let ro = proxy.listener_addr("ro").expect("ro");

    let writer = connect(rw, "app", "app_pw").await;
    let in_recovery: bool = writer
        .query_one("select pg_is_in_recovery()", &[])
        .await
        .expect("query")
        .get(0);
    assert!(!in_recovery, "rw session must be on the primary");
    assert_eq!(server_port(&writer).await, cluster.port(0));
    writer
        .batch_execute("create table if not exists routing_probe(id int); insert into routing_probe values (1)")
        .await
        .expect("writes work on rw");

    let mut seen = HashSet::new();
    let mut readers = Vec::new();
    for _ in 0..6 {
        let reader = connect(ro, "app", "app_pw").await;
        let in_recovery: bool = reader
            .query_one("select pg_is_in_recovery()", &[])
            .await
            .expect("query")
            .get(0);
        assert!(in_recovery, "ro session must be on a replica");
        seen.insert(server_port(&reader).await);
        readers.push(reader);
    }
    let replicas: HashSet<u16> = [cluster.port(1), cluster.port(2)].into();
    assert_eq!(seen, replicas, "ro sessions spread over both replicas");

    let error = readers[0]
        .batch_execute("insert into routing_probe values (2)")
        .await
        .expect_err("a replica refuses writes");
    assert_eq!(error.code().map(|c| c.code()), Some("25006"));
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_fall_back_to_the_primary_or_are_refused() {
    let (cluster, apis, nodes) = shared_cluster_apis().await;
    let proxy = start_proxy(&config_yaml(&nodes, "primary", "")).await;
    let ro = proxy.listener_addr("ro").expect("ro");
    apis[1].set_role(FakeRole::NotRunning);
    apis[2].set_role(FakeRole::Refuse);
    // NotRunning (503) is immediate; Refuse needs `fall` (3) failed checks.
    eventually(
        Duration::from_secs(5),
        "ro falls back to the primary",
        || async {
            let client = connect(ro, "app", "app_pw").await;
            server_port(&client).await == cluster.port(0)
        },
    )
    .await;

    let strict = start_proxy(&config_yaml(&nodes, "none", "")).await;
    let strict_ro = strict.listener_addr("ro").expect("ro");
    let error = try_connect(strict_ro, "app", "app_pw")
        .await
        .expect_err("no replica and fallback none");
    let db_error = error.as_db_error().expect("a server error");
    assert_eq!(db_error.code().code(), "57P03");
    assert!(
        db_error.message().contains("no healthy replica"),
        "{}",
        db_error.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_primary_means_a_clear_error_and_unhealthy() {
    let (_cluster, apis, nodes) = shared_cluster_apis().await;
    let proxy = start_proxy(&config_yaml(&nodes, "primary", "")).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let (status, body) = admin_get(&proxy, "/health").await;
    assert_eq!((status, body.trim()), (200, "OK: primary node1"));

    apis[0].set_role(FakeRole::NotRunning);
    eventually(Duration::from_secs(2), "health turns 503", || async {
        admin_get(&proxy, "/health").await.0 == 503
    })
    .await;
    let error = try_connect(rw, "app", "app_pw")
        .await
        .expect_err("no primary");
    let db_error = error.as_db_error().expect("server error");
    assert_eq!(db_error.code().code(), "57P03");
    assert!(db_error
        .message()
        .contains("no primary available for listener \"rw\""));
    assert!(
        db_error.detail().unwrap_or("").contains("node1"),
        "detail names the nodes: {:?}",
        db_error.detail()
    );
    let (_, body) = admin_get(&proxy, "/health").await;
    assert!(body.contains("no write route"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn split_brain_refuses_writes_unless_the_timeline_settles_it() {
    let (cluster, apis, nodes) = shared_cluster_apis().await;
    let proxy = start_proxy(&config_yaml(&nodes, "primary", "")).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    apis[1].set_role(FakeRole::Primary);
    apis[1].set_timeline(1);
    eventually(
        Duration::from_secs(3),
        "split brain is detected",
        || async { admin_get(&proxy, "/status").await.1.contains("split_brain") },
    )
    .await;
    let error = try_connect(rw, "app", "app_pw")
        .await
        .expect_err("split brain");
    let db_error = error.as_db_error().expect("server error");
    assert_eq!(db_error.code().code(), "57P03");
    assert!(
        db_error.detail().unwrap_or("").contains("split brain"),
        "{:?}",
        db_error.detail()
    );

    // The claimant on the higher timeline is the real primary. (node1 is the real
    // primary here, so give it the higher timeline to keep writes working.)
    apis[0].set_timeline(2);
    eventually(Duration::from_secs(3), "timeline settles it", || async {
        match try_connect(rw, "app", "app_pw").await {
            Ok(client) => server_port(&client).await == cluster.port(0),
            Err(_) => false,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_nodes_and_listeners() {
    let (_cluster, apis, nodes) = shared_cluster_apis().await;
    let proxy = start_proxy(&config_yaml(&nodes, "primary", "")).await;
    let ro = proxy.listener_addr("ro").expect("ro");
    let _reader = connect(ro, "app", "app_pw").await;
    apis[2].set_role(FakeRole::Hang);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = admin_get(&proxy, "/status").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["primary"], "node1");
    let node1 = &json["nodes"][0];
    assert_eq!(node1["role"], "primary");
    assert_eq!(node1["primary"]["up"], true);
    assert!(
        node1["primary"]["consecutive_successes"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );
    assert!(node1["last_check"].is_string());
    let node3 = &json["nodes"][2];
    assert!(
        node3["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("timed out"),
        "a hanging API shows as a timeout: {node3}"
    );
    assert!(
        node3["replica"]["consecutive_failures"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );
    let listeners = json["listeners"].as_array().expect("listeners");
    let ro_status = listeners
        .iter()
        .find(|l| l["name"] == "ro")
        .expect("ro listener");
    assert_eq!(ro_status["route"], "replica");
    assert_eq!(ro_status["clients"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn promotion_is_followed_within_two_seconds() {
    let cluster = blocking(|| PgCluster::start(1)).await;
    let roles = [FakeRole::Primary, FakeRole::Replica];
    let (apis, nodes) = fake_apis(&[cluster.port(0), cluster.port(1)], &roles).await;
    let (primary_api, replica_api) = (&apis[0], &apis[1]);
    let proxy = start_proxy(&config_yaml(&nodes, "primary", "")).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    assert_eq!(
        server_port(&connect(rw, "app", "app_pw").await).await,
        cluster.port(0)
    );

    let cluster = blocking(move || {
        cluster.stop(0);
        cluster.promote(1);
        cluster
    })
    .await;
    primary_api.set_role(FakeRole::NotRunning);
    replica_api.set_role(FakeRole::Primary);
    replica_api.set_timeline(2);
    let took = eventually(
        Duration::from_secs(2),
        "rw reaches the promoted node",
        || async {
            match try_connect(rw, "app", "app_pw").await {
                Ok(client) => {
                    let writable = client
                        .batch_execute("create temp table t(x int)")
                        .await
                        .is_ok();
                    writable && server_port(&client).await == cluster.port(1)
                }
                Err(_) => false,
            }
        },
    )
    .await;
    println!("new primary reached {took:?} after the API flipped");
}

#[tokio::test(flavor = "multi_thread")]
async fn lagging_replicas_leave_the_read_route_and_come_back() {
    let (cluster, apis, nodes) = shared_cluster_apis().await;
    let proxy = start_proxy(&config_yaml(&nodes, "primary", "")).await;
    let lag_aware = start_proxy(
        &config_yaml(&nodes, "primary", "")
            .replace("  nodes:\n", "  max_replica_lag: 1MB\n  nodes:\n"),
    )
    .await;
    let ro = lag_aware.listener_addr("ro").expect("ro");
    apis[1].set_lag(64 << 20);
    // With the limit, node2 (64MB behind) answers 503 to /replica?lag and leaves the
    // read route at once; every read goes to node3.
    eventually(
        Duration::from_secs(3),
        "node2 leaves the read route",
        || async {
            let status = admin_status(&lag_aware).await;
            status["nodes"][1]["replica"]["up"] == false
        },
    )
    .await;
    let status: serde_json::Value =
        serde_json::from_str(&admin_get(&lag_aware, "/status").await.1).expect("json");
    assert_eq!(
        status["nodes"][1]["lag_bytes"],
        64u64 << 20,
        "lag comes from the xlog positions in Patroni's answers"
    );
    assert_eq!(status["nodes"][2]["lag_bytes"], 0);
    assert!(
        status["nodes"][0]["lag_bytes"].is_null(),
        "the primary has no lag"
    );
    for _ in 0..4 {
        let reader = connect(ro, "app", "app_pw").await;
        assert_eq!(
            server_port(&reader).await,
            cluster.port(2),
            "reads avoid the lagging replica"
        );
    }
    // Without a limit configured, the lag does not matter.
    let status: serde_json::Value =
        serde_json::from_str(&admin_get(&proxy, "/status").await.1).expect("json");
    assert_eq!(status["nodes"][1]["replica"]["up"], true);

    apis[1].set_lag(0);
    eventually(
        Duration::from_secs(3),
        "node2 rejoins after catching up",
        || async {
            let status = admin_status(&lag_aware).await;
            status["nodes"][1]["replica"]["up"] == true
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn members_learned_from_patroni_cluster_follow_joins_and_survive_a_dead_seed() {
    let cluster = shared_cluster().await;
    let ports = [cluster.port(0), cluster.port(1), cluster.port(2)];
    let roles = [FakeRole::Primary, FakeRole::Replica, FakeRole::Replica];
    let (apis, _) = fake_apis(&ports, &roles).await;
    let member = |i: usize, role: &str| {
        serde_json::json!({
            "name": format!("pg{}", i + 1), "role": role, "state": "running",
            "host": "127.0.0.1", "port": ports[i], "api_url": format!("{}/patroni", apis[i].url()),
        })
    };
    // Patroni 3 calls the leader "leader"; the list starts with two members.
    let two = serde_json::json!([member(0, "leader"), member(1, "replica")]);
    for api in &apis {
        api.set_cluster_members(two.clone());
    }
    let seeds = format!(
        "    - {{ api: \"{}\" }}\n    - {{ api: \"{}\" }}\n",
        apis[0].url(),
        apis[1].url()
    );
    let yaml = config_yaml(&[], "primary", "").replace("  nodes:\n", &format!("  nodes:\n{seeds}"));
    let proxy = start_proxy(&yaml).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let ro = proxy.listener_addr("ro").expect("ro");
    let writer = connect(rw, "app", "app_pw").await;
    assert_eq!(server_port(&writer).await, ports[0]);
    let first_reader = connect(ro, "app", "app_pw").await;
    assert_eq!(server_port(&first_reader).await, ports[1]);

    // A third member joins the Patroni cluster (Patroni 4 words for the leader).
    let three = serde_json::json!([
        member(0, "primary"),
        member(1, "replica"),
        member(2, "replica")
    ]);
    for api in &apis {
        api.set_cluster_members(three.clone());
    }
    eventually(
        Duration::from_secs(5),
        "pg3 is in the read route",
        || async {
            let status = admin_status(&proxy).await;
            status["nodes"].as_array().is_some_and(|nodes| {
                nodes
                    .iter()
                    .any(|n| n["name"] == "pg3" && n["role"] == "replica")
            })
        },
    )
    .await;
    // Least connections: with pg2 busy, the next reader goes to the newcomer.
    let second_reader = connect(ro, "app", "app_pw").await;
    assert_eq!(server_port(&second_reader).await, ports[2]);

    // The first seed dies: membership comes from the second, routing carries on.
    apis[0].set_role(FakeRole::Refuse);
    apis[0].set_cluster_members(serde_json::json!([]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status: serde_json::Value =
        serde_json::from_str(&admin_get(&proxy, "/status").await.1).expect("status");
    let names: Vec<&str> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, ["pg1", "pg2", "pg3"], "members kept: {status}");
    drop(first_reader);
    let reader = connect(ro, "app", "app_pw").await;
    let port = server_port(&reader).await;
    assert!(port == ports[1] || port == ports[2], "{port}");
}
