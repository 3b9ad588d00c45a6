//! Members learned from Patroni's `/cluster` are trusted less than configured nodes:
//! with fake Patroni APIs in front of the real shared PostgreSQL cluster, a member
//! outside `cluster.allowed_hosts` gets neither probes nor traffic and shows in
//! `/status` as ignored, and a member that joins takes `rise` checks before it
//! carries reads.

mod harness;

use std::time::Duration;

use serde_json::{json, Value};

use harness::clients::*;
use harness::fake_patroni::{FakePatroni, FakeRole};
use harness::pg::shared_cluster;
use harness::proxy::*;
use harness::wait::eventually;

/// Slow enough that the test sees a joiner between its first check and `rise`.
const HEALTH: &str = "{ interval: 400ms, timeout: 500ms, rise: 3, fall: 3 }";
const RISE: u64 = 3;

fn member(name: &str, host: &str, port: u16, api_url: &str, role: &str) -> Value {
    json!({
        "name": name, "role": role, "state": "running", "host": host, "port": port,
        "api_url": format!("{api_url}/patroni"),
    })
}

fn node<'s>(status: &'s Value, name: &str) -> Option<&'s Value> {
    status["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
}

#[tokio::test(flavor = "multi_thread")]
async fn members_outside_allowed_hosts_are_ignored_and_joiners_take_rise_checks() {
    let cluster = shared_cluster().await;
    let ports = [cluster.port(0), cluster.port(1), cluster.port(2)];
    let (apis, _) = fake_apis(
        &ports,
        &[FakeRole::Primary, FakeRole::Replica, FakeRole::Replica],
    )
    .await;
    let intruder_api = FakePatroni::start(FakeRole::Replica, 1).await;
    // pg1 and pg2 are genuine; "intruder" sits on a host outside the allowed
    // range; "api-intruder" has an allowed host but its REST API is elsewhere.
    let elsewhere = intruder_api.url().replace("127.0.0.1", "127.0.0.2");
    let two_and_intruders = json!([
        member("pg1", "127.0.0.1", ports[0], &apis[0].url(), "leader"),
        member("pg2", "127.0.0.1", ports[1], &apis[1].url(), "replica"),
        member(
            "intruder",
            "127.0.0.2",
            ports[2],
            &intruder_api.url(),
            "replica"
        ),
        member("api-intruder", "127.0.0.1", ports[2], &elsewhere, "replica"),
    ]);
    for api in &apis {
        api.set_cluster_members(two_and_intruders.clone());
    }
    let seeds = format!(
        "  allowed_hosts: [127.0.0.1/32]\n  nodes:\n    - {{ api: \"{}\" }}\n",
        apis[0].url()
    );
    let yaml = config_yaml_with_health(&[], "none", HEALTH, "").replace("  nodes:\n", &seeds);
    let proxy = start_proxy(&yaml).await;

    let last = std::sync::Mutex::new(Value::Null);
    eventually(Duration::from_secs(10), "pg2 takes reads", || async {
        let status = admin_status(&proxy).await;
        let up = node(&status, "pg2").is_some_and(|n| n["role"] == "replica");
        *last.lock().expect("lock") = status;
        up
    })
    .await;
    let status = last.into_inner().expect("lock");
    let names: Vec<&str> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, ["pg1", "pg2"], "{status}");
    let ignored = status["ignored_members"].as_array().expect("ignored list");
    let reasons: Vec<(&str, &str)> = ignored
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default(),
                m["reason"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "api-intruder",
                "REST API host 127.0.0.2 is outside cluster.allowed_hosts"
            ),
            (
                "intruder",
                "host 127.0.0.2 is outside cluster.allowed_hosts"
            ),
        ],
        "{status}"
    );
    assert_eq!(
        intruder_api.requests(),
        0,
        "an ignored member's API is never probed"
    );
    let ro = proxy.listener_addr("ro").expect("ro");
    for _ in 0..3 {
        let reader = connect(ro, "app", "app_pw").await;
        assert_eq!(server_port(&reader).await, ports[1], "reads stay on pg2");
    }

    // pg3 joins (inside the range): it is probed at once but carries reads only
    // after RISE consecutive successes.
    let three = json!([
        member("pg1", "127.0.0.1", ports[0], &apis[0].url(), "leader"),
        member("pg2", "127.0.0.1", ports[1], &apis[1].url(), "replica"),
        member("pg3", "127.0.0.1", ports[2], &apis[2].url(), "replica"),
    ]);
    apis[0].set_cluster_members(three);
    let seen: std::sync::Mutex<Vec<(u64, bool)>> = Default::default();
    eventually(Duration::from_secs(10), "pg3 takes reads", || async {
        let status = admin_status(&proxy).await;
        let Some(pg3) = node(&status, "pg3") else {
            return false;
        };
        let replica = &pg3["replica"];
        let observed = (
            replica["consecutive_successes"].as_u64().unwrap_or(0),
            replica["up"] == true,
        );
        let mut seen = seen.lock().expect("lock");
        if seen.last() != Some(&observed) {
            seen.push(observed);
        }
        observed.1
    })
    .await;
    let seen = seen.into_inner().expect("lock");
    assert!(
        seen.iter()
            .any(|(successes, up)| (1..RISE).contains(successes) && !up),
        "pg3 was seen answering yes without being trusted yet: {seen:?}"
    );
    assert!(
        seen.iter().all(|(successes, up)| !up || *successes >= RISE),
        "pg3 carried reads only after {RISE} checks: {seen:?}"
    );
    let status = admin_status(&proxy).await;
    assert_eq!(
        status["ignored_members"],
        json!([]),
        "the intruders left /cluster: {status}"
    );
}
