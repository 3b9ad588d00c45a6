//! Owns Switchyard started in-process for the tests (`proxy::start`): the config
//! YAML (listeners `rw` and `ro` on port 0, admin on port 0, the test users, fast
//! health checks) for a set of nodes, each with its Patroni API URL; single-node
//! proxies behind a fake Patroni API; node lists from fake APIs or a real Patroni
//! cluster; the admin API (`admin_get`, `/status` as JSON); and the check that a
//! failover under load landed.

use std::time::Duration;

use serde_json::Value;
use switchyard::config::Config;
use switchyard::proxy::{self, RunningProxy};

use super::fake_patroni::{FakePatroni, FakeRole};
use super::patroni::PatroniCluster;
use super::pg::PgCluster;
use super::write_load;

/// A node as the proxy config sees it.
pub struct NodeSpec {
    pub name: String,
    pub port: u16,
    pub api: String,
}

/// The test users. The servers ask `app_md5` for MD5, `app_clear` for a cleartext
/// password and `app_trust` for nothing (see `pg::PG_HBA`), so each allows just
/// that method in `require_auth`; `app` logs in with SCRAM, the default.
pub const USERS_YAML: &str = r#"
users:
  - { name: app, password: app_pw }
  - { name: app_md5, password: app_md5_pw, auth: md5, require_auth: md5 }
  - { name: app_clear, password: app_clear_pw, require_auth: password }
  - { name: app_trust, password: trust_pw, require_auth: none }
"#;

/// Health checks of [`config_yaml`]: fast, so tests do not wait for roles.
pub const FAST_HEALTH: &str = "{ interval: 100ms, timeout: 500ms, rise: 2, fall: 3 }";

/// YAML for a proxy with listeners `rw` (primary) and `ro` (replica, fallback as
/// given) on port 0, admin on port 0, health every 100 ms.
pub fn config_yaml(nodes: &[NodeSpec], ro_fallback: &str, extra: &str) -> String {
    config_yaml_with_health(nodes, ro_fallback, FAST_HEALTH, extra)
}

/// [`config_yaml`] with `cluster.health` as given (a YAML flow mapping).
pub fn config_yaml_with_health(
    nodes: &[NodeSpec],
    ro_fallback: &str,
    health: &str,
    extra: &str,
) -> String {
    let mut yaml = format!(
        "listeners:\n  - {{ name: rw, listen: \"127.0.0.1:0\", route: primary }}\n  - {{ name: ro, listen: \"127.0.0.1:0\", route: replica, fallback: {ro_fallback} }}\nadmin:\n  listen: \"127.0.0.1:0\"\ncluster:\n  health: {health}\n  nodes:\n"
    );
    for node in nodes {
        yaml.push_str(&format!(
            "    - {{ name: {}, host: 127.0.0.1, port: {}, api: \"{}\" }}\n",
            node.name, node.port, node.api
        ));
    }
    yaml.push_str(USERS_YAML);
    yaml.push_str(extra);
    yaml
}

/// Sends the proxy's logs to the test output, filtered by `RUST_LOG` (once per
/// test binary): `RUST_LOG=switchyard=debug cargo test -- --nocapture`.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Starts a proxy from config YAML, in this process.
pub async fn start_proxy(yaml: &str) -> RunningProxy {
    init_logging();
    let config = Config::from_yaml_str(yaml).unwrap_or_else(|e| panic!("config: {e}\n{yaml}"));
    proxy::start(config).await.expect("proxy starts")
}

/// The node list of a proxy whose only node, `node1`, is the server on `pg_port`
/// with its Patroni API at `api`.
pub fn single_node(pg_port: u16, api: &FakePatroni) -> [NodeSpec; 1] {
    [NodeSpec {
        name: "node1".into(),
        port: pg_port,
        api: api.url(),
    }]
}

/// The config YAML (and its fake Patroni API, a primary on timeline 1) for a proxy
/// whose only node is the server on `pg_port`; `extra` is appended at the top level
/// (e.g. the `pool:` section).
pub async fn config_for(pg_port: u16, extra: &str) -> (String, FakePatroni) {
    let api = FakePatroni::start(FakeRole::Primary, 1).await;
    let yaml = config_yaml(&single_node(pg_port, &api), "primary", extra);
    (yaml, api)
}

/// A proxy whose only node is the server on `pg_port` (see [`config_for`]).
pub async fn proxy_for(pg_port: u16, extra: &str) -> (RunningProxy, FakePatroni) {
    let (yaml, api) = config_for(pg_port, extra).await;
    (start_proxy(&yaml).await, api)
}

/// GET a path on an admin listener at `authority` ("host:port"): (status, body),
/// or the client's error.
pub async fn admin_get_at(authority: &str, path: &str) -> Result<(u16, String), String> {
    let response = switchyard::http_client::get(authority, path, Duration::from_secs(5))
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok((
        response.status,
        String::from_utf8_lossy(&response.body).into_owned(),
    ))
}

/// GET a path on the admin listener: (status, body).
pub async fn admin_get(proxy: &RunningProxy, path: &str) -> (u16, String) {
    admin_get_at(&proxy.admin_addr.to_string(), path)
        .await
        .unwrap_or_else(|e| panic!("admin GET: {e}"))
}

/// `GET /status` as JSON; `Null` if it is not JSON (for checks that retry).
pub async fn admin_status(proxy: &RunningProxy) -> Value {
    serde_json::from_str(&admin_get(proxy, "/status").await.1).unwrap_or_default()
}

/// One fake Patroni API per PostgreSQL port, in the given roles (timeline 1), and the
/// node list for `config_yaml` (named node1, node2, ...).
pub async fn fake_apis(ports: &[u16], roles: &[FakeRole]) -> (Vec<FakePatroni>, Vec<NodeSpec>) {
    let mut apis = Vec::new();
    let mut nodes = Vec::new();
    for (i, (&port, &role)) in ports.iter().zip(roles).enumerate() {
        let api = FakePatroni::start(role, 1).await;
        nodes.push(NodeSpec {
            name: format!("node{}", i + 1),
            port,
            api: api.url(),
        });
        apis.push(api);
    }
    (apis, nodes)
}

/// The node list for `config_yaml` of a real Patroni cluster.
pub fn patroni_nodes(cluster: &PatroniCluster) -> Vec<NodeSpec> {
    (0..3)
        .map(|i| NodeSpec {
            name: cluster.name(i),
            port: cluster.pg_port(i),
            api: cluster.api_url(i),
        })
        .collect()
}

/// After a failover under load: every acknowledged id is in `table` on the new
/// primary (`node` of the Patroni cluster), and the proxy reports it as primary.
pub async fn assert_failover_landed(
    proxy: &RunningProxy,
    cluster: &PatroniCluster,
    node: usize,
    table: &str,
    acknowledged: &[i64],
    what: &str,
) {
    let direct = format!(
        "host=127.0.0.1 port={} user=app password=app_pw dbname=appdb",
        cluster.pg_port(node)
    );
    let present = write_load::count_present(&direct, table, acknowledged).await;
    assert_eq!(present as usize, acknowledged.len(), "{what}");
    let (status, body) = admin_get(proxy, "/health").await;
    assert_eq!(
        (status, body.trim().to_string()),
        (200, format!("OK: primary {}", cluster.name(node)))
    );
}

/// A planned switchover of a two-node [`PgCluster`] behind fake Patroni APIs:
/// node1 stops, node2 is promoted and reported as the primary on timeline 2.
/// Returns the cluster once the proxy's `/health` names node2.
pub async fn switch_over_to_node2(
    cluster: PgCluster,
    apis: &[FakePatroni],
    proxy: &RunningProxy,
) -> PgCluster {
    let cluster = super::wait::blocking(move || {
        cluster.stop(0);
        cluster.promote(1);
        cluster
    })
    .await;
    apis[0].set_role(FakeRole::NotRunning);
    apis[1].set_role(FakeRole::Primary);
    apis[1].set_timeline(2);
    super::wait::eventually(
        Duration::from_secs(10),
        "the proxy sees the new primary",
        || async { admin_get(proxy, "/health").await.1.trim() == "OK: primary node2" },
    )
    .await;
    cluster
}
