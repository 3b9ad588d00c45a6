//! Starting Switchyard in-process for integration tests: a config for a set of nodes
//! (each with its Patroni API URL), bound on port 0, with fast health checks, plus
//! client helpers (tokio-postgres connections, raw protocol bytes, psql).

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard::config::Config;
use switchyard::proxy::{self, RunningProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A node as the proxy config sees it.
pub struct NodeSpec {
    pub name: String,
    pub port: u16,
    pub api: String,
}

pub const USERS_YAML: &str = r#"
users:
  - { name: app, password: app_pw }
  - { name: app_md5, password: app_md5_pw, auth: md5 }
  - { name: app_clear, password: app_clear_pw }
  - { name: app_trust, password: trust_pw }
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

pub async fn start_proxy(yaml: &str) -> RunningProxy {
    // Logs show up with `RUST_LOG=switchyard=debug cargo test -- --nocapture`.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let config = Config::from_yaml_str(yaml).unwrap_or_else(|e| panic!("config: {e}\n{yaml}"));
    proxy::start(config).await.expect("proxy starts")
}

/// libpq-style connection string through a listener.
pub fn conn_str(addr: SocketAddr, user: &str, password: &str, db: &str) -> String {
    format!(
        "host={} port={} user={user} password={password} dbname={db} connect_timeout=10",
        addr.ip(),
        addr.port()
    )
}

pub async fn connect(addr: SocketAddr, user: &str, password: &str) -> tokio_postgres::Client {
    try_connect(addr, user, password)
        .await
        .unwrap_or_else(|e| panic!("connect as {user} via {addr}: {e}"))
}

pub async fn try_connect(
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(
        &conn_str(addr, user, password, "appdb"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The port of the PostgreSQL server a client ended up on.
pub async fn server_port(client: &tokio_postgres::Client) -> u16 {
    let row = client
        .query_one("select inet_server_port()", &[])
        .await
        .expect("inet_server_port");
    row.get::<_, i32>(0) as u16
}

/// Retries until `check` is true or `within` passes; returns the time it took.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        if start.elapsed() > within {
            panic!("{what}: not true within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads one backend message (type, body) from a raw socket, with a timeout.
pub async fn read_message(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut header = [0u8; 5];
        stream
            .read_exact(&mut header)
            .await
            .expect("message header");
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).await.expect("message body");
        (header[0], body)
    })
    .await
    .expect("a message within 10 s")
}

/// The SQLSTATE of an ErrorResponse body.
pub fn sqlstate(body: &[u8]) -> String {
    let mut fields = body.split(|&b| b == 0);
    fields
        .find(|f| f.first() == Some(&b'C'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

/// A StartupMessage with protocol `version` and the given parameters.
pub fn startup_packet(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// Opens a raw connection as `app_md5` (MD5 client auth) to `appdb` and reads the
/// MD5 password request. Returns the stream and the PasswordMessage that answers it,
/// not yet sent.
pub async fn md5_login_started(addr: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut stream = raw_connect(addr).await;
    stream
        .write_all(&startup_packet(
            196608,
            &[("user", "app_md5"), ("database", "appdb")],
        ))
        .await
        .expect("startup");
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!(tag, b'R', "expected an authentication request");
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    assert_eq!(code, 5, "app_md5 must be asked for an MD5 password");
    let salt = [body[4], body[5], body[6], body[7]];
    let response = switchyard::auth::md5::md5_response("app_md5", "app_md5_pw", salt);
    let mut password = vec![b'p'];
    password.extend_from_slice(&(4 + response.len() as u32 + 1).to_be_bytes());
    password.extend_from_slice(response.as_bytes());
    password.push(0);
    (stream, password)
}

pub async fn raw_connect(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("raw connect");
    stream.set_nodelay(true).expect("nodelay");
    stream.flush().await.expect("flush");
    stream
}

/// GET a path on the admin listener: (status, body).
pub async fn admin_get(proxy: &RunningProxy, path: &str) -> (u16, String) {
    let response =
        switchyard::http_client::get(&proxy.admin_addr.to_string(), path, Duration::from_secs(5))
            .await
            .expect("admin GET");
    (
        response.status,
        String::from_utf8_lossy(&response.body).into_owned(),
    )
}

/// Runs a blocking harness call off the async runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// One fake Patroni API per PostgreSQL port, in the given roles (timeline 1), and the
/// node list for `config_yaml` (named node1, node2, ...).
pub async fn fake_apis(
    ports: &[u16],
    roles: &[crate::common::fake_patroni::FakeRole],
) -> (Vec<crate::common::fake_patroni::FakePatroni>, Vec<NodeSpec>) {
    let mut apis = Vec::new();
    let mut nodes = Vec::new();
    for (i, (&port, &role)) in ports.iter().zip(roles).enumerate() {
        let api = crate::common::fake_patroni::FakePatroni::start(role, 1).await;
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
pub fn patroni_nodes(cluster: &crate::common::patroni::PatroniCluster) -> Vec<NodeSpec> {
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
    cluster: &crate::common::patroni::PatroniCluster,
    node: usize,
    table: &str,
    acknowledged: &[i64],
    what: &str,
) {
    let direct = format!(
        "host=127.0.0.1 port={} user=app password=app_pw dbname=appdb",
        cluster.pg_port(node)
    );
    let present = crate::common::write_load::count_present(&direct, table, acknowledged).await;
    assert_eq!(present as usize, acknowledged.len(), "{what}");
    let (status, body) = admin_get(proxy, "/health").await;
    assert_eq!(
        (status, body.trim().to_string()),
        (200, format!("OK: primary {}", cluster.name(node)))
    );
}
