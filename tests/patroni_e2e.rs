//! End to end with real Patroni + etcd managing three PostgreSQL nodes on loopback:
//! Switchyard learns roles from the real REST API, routes writes to the leader and
//! reads to the replicas, and follows a `patronictl switchover`. A second proxy
//! configured with only the three REST API URLs learns the members from Patroni's
//! `/cluster` and follows the same switchover.

mod harness;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use harness::clients::*;
use harness::patroni::PatroniCluster;
use harness::proxy::*;
use harness::wait::*;

#[tokio::test(flavor = "multi_thread")]
async fn follows_a_real_patroni_cluster_through_switchover() {
    let cluster = blocking(PatroniCluster::start).await;
    let leader = cluster.leader().expect("a leader");
    let nodes = patroni_nodes(&cluster);
    let proxy = start_proxy(&config_yaml(&nodes, "primary", "")).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let ro = proxy.listener_addr("ro").expect("ro");
    let seeds: String = nodes
        .iter()
        .map(|n| format!("    - {{ api: \"{}\" }}\n", n.api))
        .collect();
    // allowed_hosts admits what real Patroni reports (host and api_url on loopback).
    let seeded = start_proxy(&config_yaml(&[], "primary", "").replace(
        "  nodes:\n",
        &format!("  allowed_hosts: [127.0.0.0/8]\n  nodes:\n{seeds}"),
    ))
    .await;
    let seeded_rw = seeded.listener_addr("rw").expect("rw");
    let learned = eventually(
        Duration::from_secs(10),
        "members learned from /cluster",
        || async {
            let status = admin_status(&seeded).await;
            status["nodes"].as_array().map_or(0, |n| n.len()) == 3
                && status["primary"] == cluster.name(leader).as_str()
        },
    )
    .await;
    let status = admin_status(&seeded).await;
    assert_eq!(status["ignored_members"], serde_json::json!([]), "{status}");
    println!("members and primary learned from /cluster within {learned:?}");
    let seeded_writer = connect(seeded_rw, "app", "app_pw").await;
    assert_eq!(server_port(&seeded_writer).await, cluster.pg_port(leader));

    let writer = connect(rw, "app", "app_pw").await;
    assert_eq!(server_port(&writer).await, cluster.pg_port(leader));
    writer
        .batch_execute(
            "create table if not exists e2e(id int primary key); insert into e2e values (1)",
        )
        .await
        .expect("write through rw");

    // Replicas become healthy in the read route after their checks rise.
    let replica_ports: HashSet<u16> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| cluster.pg_port(i))
        .collect();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.is_superset(&replica_ports) {
        assert!(
            Instant::now() < deadline,
            "ro sessions reached only {seen:?}, want {replica_ports:?}"
        );
        let reader = connect(ro, "app", "app_pw").await;
        seen.insert(server_port(&reader).await);
    }
    assert!(
        !seen.contains(&cluster.pg_port(leader)),
        "reads stay off the primary while replicas are healthy"
    );

    // Replay paused on one replica while the primary writes: it leaves the read
    // route (its received WAL keeps up, so Patroni's own /replica?lag= alone would
    // not notice) and comes back once replay resumes.
    let candidate = (leader + 1) % 3;
    let paused = (leader + 2) % 3;
    let lag_proxy = start_proxy(
        &config_yaml(&nodes, "primary", "")
            .replace("  health: {", "  max_replica_lag: 1MB\n  health: {"),
    )
    .await;
    let role_of = |status: &serde_json::Value, name: &str| -> (String, u64) {
        let node = status["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == name))
            .cloned()
            .unwrap_or_default();
        (
            node["role"].as_str().unwrap_or("").to_string(),
            node["lag_bytes"].as_u64().unwrap_or(0),
        )
    };
    let paused_name = cluster.name(paused);
    eventually(
        Duration::from_secs(10),
        "both replicas serve reads",
        || async {
            let status = admin_status(&lag_proxy).await;
            role_of(&status, &paused_name).0 == "replica"
        },
    )
    .await;
    let cluster = blocking(move || {
        cluster.psql(paused, "SELECT pg_wal_replay_pause()");
        cluster.psql(
            leader,
            "CREATE TABLE lag_fill AS SELECT g, repeat('x', 1000) AS filler \
             FROM generate_series(1, 4000) g",
        );
        cluster
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = admin_status(&lag_proxy).await;
        let (role, lag) = role_of(&status, &paused_name);
        if role != "replica" && lag > 1 << 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the paused replica leaves the read route within 15 s: its role is {role:?}, \
             lag {lag} bytes; nodes: {}",
            status["nodes"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cluster = blocking(move || {
        cluster.psql(paused, "SELECT pg_wal_replay_resume()");
        cluster
    })
    .await;
    eventually(
        Duration::from_secs(15),
        "it comes back once replay catches up",
        || async {
            let status = admin_status(&lag_proxy).await;
            role_of(&status, &paused_name).0 == "replica"
        },
    )
    .await;

    let switch_started = Instant::now();
    let cluster = blocking(move || {
        cluster.switchover(candidate);
        cluster
    })
    .await;
    let took = eventually(
        Duration::from_secs(30),
        "rw reaches the new leader",
        || async {
            match try_connect(rw, "app", "app_pw").await {
                Ok(client) => {
                    server_port(&client).await == cluster.pg_port(candidate)
                        && client
                            .batch_execute(
                                "insert into e2e select coalesce(max(id), 0) + 1 from e2e",
                            )
                            .await
                            .is_ok()
                }
                Err(_) => false,
            }
        },
    )
    .await;
    println!(
        "switchover: new primary reachable through rw {:?} after patronictl returned ({:?} after it started)",
        took,
        switch_started.elapsed()
    );
    eventually(
        Duration::from_secs(30),
        "the /cluster-seeded proxy follows",
        || async {
            match try_connect(seeded_rw, "app", "app_pw").await {
                Ok(client) => server_port(&client).await == cluster.pg_port(candidate),
                Err(_) => false,
            }
        },
    )
    .await;
    let (status, body) = admin_get(&proxy, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(
        body.trim(),
        format!("OK: primary {}", cluster.name(candidate))
    );
    let count: i64 = direct(cluster.pg_port(candidate))
        .await
        .query_one("select count(*) from e2e", &[])
        .await
        .expect("count")
        .get(0);
    assert!(
        count >= 2,
        "writes from before and after the switchover: {count}"
    );
}
