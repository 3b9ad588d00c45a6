//! TLS from the proxy to PostgreSQL (`server.tls`), against a real PostgreSQL 15
//! with `ssl=on`, a certificate signed by a test CA and only `hostssl` lines in
//! pg_hba.conf (plaintext logins are refused): `verify-full` through the proxy with
//! tokio-postgres and psql, a wrong host name refused with 08006 and shown in
//! /status, `verify-ca` accepting it, `require` refusing a plaintext server while
//! `prefer` (the default) falls back, PostgreSQL `cert` auth with a client
//! certificate set as a per-node override, a cancel reaching the TLS-only server,
//! and a reload switching TLS on and refusing a missing file.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use harness::certs::TestCa;
use harness::clients::*;
use harness::fake_patroni::{FakePatroni, FakeRole};
use harness::pg::{self, PgCluster};
use harness::proc;
use harness::proxy::*;
use harness::wait::*;
use switchyard::config::Config;
use switchyard::proxy::RunningProxy;
use tokio_postgres::NoTls;

/// A TLS-only PostgreSQL and the files the proxy is configured with.
struct TlsServer {
    cluster: PgCluster,
    /// Holds the CA certificate and the client certificate for `app_cert`.
    files: tempfile::TempDir,
}

impl TlsServer {
    fn port(&self) -> u16 {
        self.cluster.port(0)
    }

    fn file(&self, name: &str) -> String {
        self.files.path().join(name).to_string_lossy().into_owned()
    }
}

/// The user PostgreSQL authenticates by its client certificate (`cert` in pg_hba).
const CERT_USER: &str = "app_cert";

const TLS_HBA: &str = "\
local    all  all                     trust
hostssl  all  app_cert  127.0.0.1/32  cert
hostssl  all  all       127.0.0.1/32  scram-sha-256
";

/// One TLS-only server per test binary. Its certificate names only `localhost`.
fn tls_server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let cluster = PgCluster::start(0);
        let ca = TestCa::new("switchyard test CA");
        let data_dir = &cluster.nodes[0].data_dir;
        let server = ca.server(&["localhost"]).write(data_dir, "server");
        let root = ca.write(data_dir, "root.crt");
        proc::give_to_postgres(&server.key, 0o600);
        proc::give_to_postgres(&server.cert, 0o644);
        proc::give_to_postgres(&root, 0o644);
        cluster.psql(0, &format!("CREATE ROLE {CERT_USER} LOGIN"));
        let conf = data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             ssl_ca_file = 'root.crt'\n",
        );
        std::fs::write(&conf, text).expect("write postgresql.conf");
        std::fs::write(data_dir.join("pg_hba.conf"), TLS_HBA).expect("write pg_hba.conf");
        cluster.psql(0, "SELECT pg_reload_conf()");
        let port = cluster.port(0);
        proc::wait_for(
            "the server to accept TLS logins",
            Duration::from_secs(20),
            || psql_over_tls(port, "SELECT 1").ok(),
            || cluster.log_tails(),
        );
        let files = tempfile::tempdir().expect("temp dir");
        ca.write(files.path(), "ca.crt");
        ca.client(CERT_USER).write(files.path(), CERT_USER);
        // A CA that signed nothing here: a server verified against it must fail.
        TestCa::new("some other CA").write(files.path(), "other-ca.crt");
        TlsServer { cluster, files }
    })
}

/// One plaintext PostgreSQL (`ssl=off`, the harness's pg_hba) per test binary.
fn plain_server() -> &'static PgCluster {
    static SERVER: OnceLock<PgCluster> = OnceLock::new();
    SERVER.get_or_init(|| PgCluster::start(0))
}

/// psql as superuser over TLS (libpq `sslmode=require`) straight to the server.
fn psql_over_tls(port: u16, sql: &str) -> Result<String, String> {
    let out = Command::new(pg::pg_bin("psql"))
        .args(["-X", "-A", "-t", "-q", "-c", sql])
        .arg(format!(
            "host=127.0.0.1 port={port} user={} dbname=postgres sslmode=require",
            pg::SUPERUSER
        ))
        .env("PGPASSWORD", pg::SUPERUSER_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Proxy YAML: listener `rw`, one node `node1` at `host:port` (its Patroni API
/// `api`, `node_extra` added to its entry), `server` as the `server:` section.
fn proxy_yaml(host: &str, port: u16, api: &FakePatroni, node_extra: &str, server: &str) -> String {
    format!(
        "listeners:\n  - {{ name: rw, listen: \"127.0.0.1:0\", route: primary }}\n\
         admin:\n  listen: \"127.0.0.1:0\"\n\
         cluster:\n  health: {FAST_HEALTH}\n  nodes:\n    \
         - {{ name: node1, host: {host}, port: {port}, api: \"{}\"{node_extra} }}\n\
         {USERS_YAML}  - {{ name: {CERT_USER}, password: cert_pw, require_auth: none }}\n\
         server:\n{server}",
        api.url()
    )
}

async fn start_for(
    host: &str,
    port: u16,
    node_extra: &str,
    server: &str,
) -> (RunningProxy, FakePatroni) {
    let api = FakePatroni::start(FakeRole::Primary, 1).await;
    let proxy = start_proxy(&proxy_yaml(host, port, &api, node_extra, server)).await;
    (proxy, api)
}

fn rw(proxy: &RunningProxy) -> std::net::SocketAddr {
    proxy.listener_addr("rw").expect("rw listener")
}

/// Whether the session the client is on reached its server over TLS.
async fn server_side_ssl(client: &tokio_postgres::Client) -> String {
    simple_value(
        client,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        "pg_stat_ssl",
    )
    .await
    .unwrap_or_default()
}

/// SQLSTATE and detail of a refused connection.
fn code_and_detail(error: &tokio_postgres::Error) -> (String, String) {
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {error:?}"));
    (
        db.code().code().to_string(),
        db.detail().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_reaches_a_hostssl_only_server() {
    let server = blocking(tls_server).await;
    let refused = try_connect(
        format!("127.0.0.1:{}", server.port())
            .parse()
            .expect("addr"),
        "app",
        "app_pw",
    )
    .await
    .expect_err("the server refuses plaintext logins");
    assert!(
        describe(&refused).contains("no encryption"),
        "{}",
        describe(&refused)
    );

    let tls = format!("  tls: verify-full\n  tls_ca: {}\n", server.file("ca.crt"));
    let (proxy, _api) = start_for("localhost", server.port(), "", &tls).await;
    let client = connect(rw(&proxy), "app", "app_pw").await;
    assert_eq!(
        server_side_ssl(&client).await,
        "t",
        "the proxy's server session uses TLS"
    );
    assert_eq!(
        simple_value(&client, "SELECT 40 + 2", "sum")
            .await
            .as_deref(),
        Some("42")
    );

    let port = rw(&proxy).port();
    let through_psql = blocking(move || {
        pg::try_psql(
            port,
            "app",
            "app_pw",
            "appdb",
            &["SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
        )
    })
    .await
    .unwrap_or_else(|e| panic!("psql through the proxy: {e}"));
    assert_eq!(through_psql, "t");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_host_name_gives_08006_and_shows_in_status_while_verify_ca_accepts_it() {
    let server = blocking(tls_server).await;
    let ca = server.file("ca.crt");
    // The certificate names localhost, not 127.0.0.1.
    let tls = format!("  tls: verify-full\n  tls_ca: {ca}\n");
    let (proxy, _api) = start_for("127.0.0.1", server.port(), "", &tls).await;
    let error = try_connect(rw(&proxy), "app", "app_pw")
        .await
        .expect_err("verify-full refuses a certificate for another name");
    let (code, detail) = code_and_detail(&error);
    assert_eq!(code, "08006", "{}", describe(&error));
    assert!(detail.contains("not valid for name"), "{detail}");
    let status = admin_status(&proxy).await;
    let shown = status["nodes"][0]["last_connect_error"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(shown.contains("not valid for name"), "/status: {status}");

    let tls = format!("  tls: verify-ca\n  tls_ca: {ca}\n");
    let (proxy, _api) = start_for("127.0.0.1", server.port(), "", &tls).await;
    let client = connect(rw(&proxy), "app", "app_pw").await;
    assert_eq!(server_side_ssl(&client).await, "t");

    let other = server.file("other-ca.crt");
    let tls = format!("  tls: verify-ca\n  tls_ca: {other}\n");
    let (proxy, _api) = start_for("localhost", server.port(), "", &tls).await;
    let error = try_connect(rw(&proxy), "app", "app_pw")
        .await
        .expect_err("a certificate from another CA is refused");
    let (code, detail) = code_and_detail(&error);
    assert_eq!(code, "08006", "{}", describe(&error));
    assert!(detail.contains("UnknownIssuer"), "{detail}");
}

#[tokio::test(flavor = "multi_thread")]
async fn require_refuses_a_plaintext_server_and_prefer_falls_back() {
    let plain = blocking(plain_server).await;
    let (proxy, _api) = start_for("127.0.0.1", plain.port(0), "", "  tls: require\n").await;
    let error = try_connect(rw(&proxy), "app", "app_pw")
        .await
        .expect_err("require refuses a server without TLS");
    let (code, detail) = code_and_detail(&error);
    assert_eq!(code, "08006", "{}", describe(&error));
    assert!(detail.contains("does not accept TLS"), "{detail}");

    // No server.tls at all: the default, prefer.
    let (proxy, _api) = start_for("127.0.0.1", plain.port(0), "", "  connect_timeout: 5s\n").await;
    let client = connect(rw(&proxy), "app", "app_pw").await;
    assert_eq!(server_side_ssl(&client).await, "f", "plaintext fallback");

    let server = blocking(tls_server).await;
    let (proxy, _api) = start_for("127.0.0.1", server.port(), "", "  tls: prefer\n").await;
    let client = connect(rw(&proxy), "app", "app_pw").await;
    assert_eq!(
        server_side_ssl(&client).await,
        "t",
        "prefer uses TLS when offered"
    );

    // As libpq does, prefer tries again without TLS when TLS fails (here: a CA that
    // did not sign the server's certificate); this server refuses plaintext.
    let other = format!("  tls: prefer\n  tls_ca: {}\n", server.file("other-ca.crt"));
    let (proxy, _api) = start_for("localhost", server.port(), "", &other).await;
    let error = try_connect(rw(&proxy), "app", "app_pw")
        .await
        .expect_err("the plaintext retry is refused by the hostssl-only server");
    assert!(
        describe(&error).contains("no encryption"),
        "{}",
        describe(&error)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cert_auth_with_a_client_certificate_set_per_node() {
    let server = blocking(tls_server).await;
    // TLS is off globally and on for this node, with its client certificate.
    let node = format!(
        ", tls: verify-full, tls_ca: {}, tls_cert: {}, tls_key: {}",
        server.file("ca.crt"),
        server.file(&format!("{CERT_USER}.crt")),
        server.file(&format!("{CERT_USER}.key")),
    );
    let (proxy, _api) = start_for("localhost", server.port(), &node, "  tls: disable\n").await;
    let client = connect(rw(&proxy), CERT_USER, "cert_pw").await;
    let row = simple_value(
        &client,
        "SELECT current_user || ' ' || client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        "client_dn",
    )
    .await
    .unwrap_or_default();
    assert_eq!(row, format!("{CERT_USER} /CN={CERT_USER}"));

    // Without the certificate the server refuses the login.
    let node = format!(", tls: verify-full, tls_ca: {}", server.file("ca.crt"));
    let (proxy, _api) = start_for("localhost", server.port(), &node, "  tls: disable\n").await;
    let error = try_connect(rw(&proxy), CERT_USER, "cert_pw")
        .await
        .expect_err("cert auth without a certificate");
    assert!(
        describe(&error).contains("certificate"),
        "{}",
        describe(&error)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_reaches_the_tls_only_server() {
    let server = blocking(tls_server).await;
    let tls = format!("  tls: verify-full\n  tls_ca: {}\n", server.file("ca.crt"));
    let (proxy, _api) = start_for("localhost", server.port(), "", &tls).await;
    let client = connect(rw(&proxy), "app", "app_pw").await;
    let token = client.cancel_token();
    let sleeping = tokio::spawn(async move {
        let result = client.simple_query("SELECT pg_sleep(60)").await;
        drop(client);
        result
    });
    // Cancel once the query is running on the server.
    let port = server.port();
    eventually(
        Duration::from_secs(10),
        "pg_sleep is running",
        || async move {
            blocking(move || {
                psql_over_tls(
                    port,
                    "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' \
                 AND state = 'active'",
                )
            })
            .await
            .is_ok_and(|n| n == "1")
        },
    )
    .await;
    token.cancel_query(NoTls).await.expect("send cancel");
    let result = within(15, "the cancelled query returns", sleeping)
        .await
        .expect("query task");
    let error = result.expect_err("the query was cancelled");
    let code = error.as_db_error().map(|e| e.code().code().to_string());
    assert_eq!(code.as_deref(), Some("57014"), "{}", describe(&error));
}

fn write_config(path: &Path, yaml: &str) {
    std::fs::write(path, yaml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_turns_tls_on_and_refuses_a_missing_file() {
    let server = blocking(tls_server).await;
    let api = FakePatroni::start(FakeRole::Primary, 1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path: PathBuf = dir.path().join("switchyard.yaml");
    let yaml =
        |server_section: &str| proxy_yaml("localhost", server.port(), &api, "", server_section);
    write_config(&path, &yaml("  tls: disable\n"));
    init_logging();
    let config = Config::load(&path).expect("config");
    let proxy = switchyard::proxy::start_with_source(config, Some(path.clone()))
        .await
        .expect("proxy starts");
    let error = try_connect(rw(&proxy), "app", "app_pw")
        .await
        .expect_err("plaintext is refused by the server");
    assert!(
        describe(&error).contains("no encryption"),
        "{}",
        describe(&error)
    );

    write_config(
        &path,
        &yaml(&format!(
            "  tls: verify-full\n  tls_ca: {}\n",
            server.file("ca.crt")
        )),
    );
    let outcome = proxy.reload().await;
    assert!(
        outcome.as_ref().is_ok_and(|s| s.contains("TLS")),
        "{outcome:?}"
    );
    let client = connect(rw(&proxy), "app", "app_pw").await;
    assert_eq!(server_side_ssl(&client).await, "t");

    let missing = dir.path().join("missing-ca.crt");
    write_config(
        &path,
        &yaml(&format!(
            "  tls: verify-full\n  tls_ca: {}\n",
            missing.display()
        )),
    );
    let outcome = proxy.reload().await;
    let reason = outcome.expect_err("a missing CA file refuses the reload");
    assert!(reason.contains("server.tls_ca"), "{reason}");
    assert!(reason.contains("missing-ca.crt"), "{reason}");
    let client = connect(rw(&proxy), "app", "app_pw").await;
    assert_eq!(server_side_ssl(&client).await, "t", "the old settings stay");
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_mode_moves_large_requests_and_replies_over_tls() {
    let server = blocking(tls_server).await;
    let settings = format!(
        "  tls: verify-full\n  tls_ca: {}\npool:\n  mode: transaction\n  size: 2\n",
        server.file("ca.crt")
    );
    let (proxy, _api) = start_for("localhost", server.port(), "", &settings).await;
    let client = connect(rw(&proxy), "app", "app_pw").await;
    // A request larger than any socket buffer goes out whole (it is flushed
    // through TLS), and a reply of several megabytes comes back whole.
    let big = "y".repeat(4 << 20);
    let row = within(
        30,
        "a 4 MB parameter round trip",
        client.query_one("SELECT length($1::text)", &[&big]),
    )
    .await
    .expect("large parameter");
    assert_eq!(row.get::<_, i32>(0), 4 << 20);
    let rows = within(
        30,
        "a large result",
        client.query(
            "SELECT i, repeat('x', 100) FROM generate_series(1, 50000) AS i",
            &[],
        ),
    )
    .await
    .expect("large result");
    assert_eq!(rows.len(), 50000);
    // Many short transactions reuse the pooled TLS connections.
    let statement = client.prepare("SELECT $1::int + 1").await.expect("prepare");
    for i in 0..200 {
        let row = client
            .query_one(&statement, &[&i])
            .await
            .expect("prepared query");
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }
    assert_eq!(server_side_ssl(&client).await, "t");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sql_probe_logs_in_over_tls() {
    let server = blocking(tls_server).await;
    let yaml = format!(
        "listeners:\n  - {{ name: rw, listen: \"127.0.0.1:0\", route: primary }}\n\
         admin:\n  listen: \"127.0.0.1:0\"\n\
         cluster:\n  discovery: sql\n  probe: {{ user: app, password: app_pw, database: appdb }}\n  \
         health: {FAST_HEALTH}\n  nodes:\n    - {{ name: node1, host: localhost, port: {} }}\n\
         {USERS_YAML}server:\n  tls: verify-full\n  tls_ca: {}\n",
        server.port(),
        server.file("ca.crt")
    );
    let proxy = start_proxy(&yaml).await;
    // The server takes only TLS logins: a primary found means the probe used TLS.
    eventually(
        Duration::from_secs(10),
        "the SQL probe finds the primary",
        || async { admin_status(&proxy).await["primary"] == "node1" },
    )
    .await;
    let client = connect(rw(&proxy), "app", "app_pw").await;
    assert_eq!(server_side_ssl(&client).await, "t");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_tls_connection_the_server_closed_is_not_reused() {
    let server = blocking(tls_server).await;
    let settings = format!(
        "  tls: verify-full\n  tls_ca: {}\npool:\n  mode: transaction\n  size: 1\n",
        server.file("ca.crt")
    );
    let (proxy, _api) = start_for("localhost", server.port(), "", &settings).await;
    let client = connect(rw(&proxy), "app", "app_pw").await;
    let first = simple_value(&client, "SELECT pg_backend_pid()", "pid")
        .await
        .unwrap_or_default();
    // The pooled connection is idle now; the server ends it (FATAL 57P01 over TLS,
    // then close).
    let port = server.port();
    let sql = format!("SELECT pg_terminate_backend({first})");
    let terminated = blocking(move || psql_over_tls(port, &sql)).await;
    assert_eq!(terminated.as_deref(), Ok("t"));
    let port = server.port();
    eventually(Duration::from_secs(10), "the backend is gone", || {
        let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {first}");
        async move {
            blocking(move || psql_over_tls(port, &sql))
                .await
                .is_ok_and(|n| n == "0")
        }
    })
    .await;
    // The next transaction gets a fresh connection instead of the dead one.
    let second = simple_value(&client, "SELECT pg_backend_pid()", "pid")
        .await
        .unwrap_or_default();
    assert!(!second.is_empty() && second != first, "{first} -> {second}");
    assert_eq!(server_side_ssl(&client).await, "t");
}
