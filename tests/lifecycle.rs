//! The `switchyard run` process over its life, driven the way an operator drives it:
//! SIGHUP reloads (pool size and a new user applied while a client holds an open
//! transaction that then commits; an invalid file changes nothing), `POST /reload`
//! adding and removing listeners and nodes, SIGTERM draining (unhealthy at once, the
//! open transaction commits, then the process exits within `shutdown_timeout`), and
//! JSON logs that never carry a password.

mod harness;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::clients::*;
use harness::fake_patroni::{http_request, FakePatroni, FakeRole};
use harness::pg::{self, PgCluster};
use harness::proc::{free_port, kill};
use harness::proxy::*;
use harness::wait::*;
use serde_json::Value;

/// A `switchyard run` child process with its config file and stderr log.
struct Instance {
    child: Child,
    config_path: PathBuf,
    log_path: PathBuf,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Instance {
    async fn start(yaml: &str) -> Instance {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("switchyard.yaml");
        let log_path = dir.path().join("switchyard.log");
        std::fs::write(&config_path, yaml).expect("write config");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn switchyard");
        let admin = admin_address(yaml);
        let instance = Instance {
            child,
            config_path,
            log_path,
            admin,
            _dir: dir,
        };
        eventually(
            Duration::from_secs(20),
            "switchyard answers /health",
            || async { instance.get("/health").await.map(|(status, _)| status) == Some(200) },
        )
        .await;
        instance
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        admin_get_at(&self.admin, path).await.ok()
    }

    /// POST with an empty body (the proxy's own client only does GET).
    async fn post(&self, path: &str) -> (u16, String) {
        let admin = self.admin.parse().expect("admin address");
        let response = http_request(admin, "POST", path, Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        (response.status, response.body)
    }

    async fn status(&self) -> Value {
        let (_, body) = self.get("/status").await.expect("/status answers");
        serde_json::from_str(&body).expect("status json")
    }

    /// The bound address of a listener, from /status (listeners bind port 0).
    async fn listener(&self, name: &str) -> std::net::SocketAddr {
        let status = self.status().await;
        status["listeners"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["name"] == name))
            .and_then(|l| l["listen"].as_str())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("listener {name} in {status}"))
    }

    fn signal(&self, sig: &str) {
        kill(sig, self.child.id());
    }

    fn rewrite(&self, yaml: &str) {
        std::fs::write(&self.config_path, yaml).expect("rewrite config");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits for the process to exit; None if it did not within `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn admin_address(yaml: &str) -> String {
    yaml.lines()
        .skip_while(|l| !l.starts_with("admin:"))
        .find_map(|l| l.trim().strip_prefix("listen: "))
        .map(|a| a.trim_matches('"').to_string())
        .expect("admin listen in yaml")
}

/// Config for one primary (the shared cluster's node 0) behind a fake Patroni API,
/// admin on a fixed free port so the test can find the child process.
fn config(api: &FakePatroni, pg_port: u16, admin_port: u16, extra: &str) -> String {
    config_yaml(&single_node(pg_port, api), "primary", extra).replace(
        "admin:\n  listen: \"127.0.0.1:0\"",
        &format!("admin:\n  listen: \"127.0.0.1:{admin_port}\""),
    )
}

async fn shared_primary() -> u16 {
    blocking(|| PgCluster::shared().port(0)).await
}

fn pool_size_in(status: &Value, user: &str) -> Option<u64> {
    status["pools"]
        .as_array()?
        .iter()
        .find(|p| p["user"] == user)
        .and_then(|p| p["size"].as_u64())
}

/// Creates a login role on the shared primary (idempotent), with access to APP_DB.
async fn create_role(pg_port: u16, name: &str, password: &str) {
    let sql = format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN \
         CREATE ROLE {name} LOGIN PASSWORD '{password}'; END IF; END $$; \
         GRANT ALL ON SCHEMA public TO {name};"
    );
    let db = pg::APP_DB.to_string();
    blocking(move || {
        pg::try_psql(pg_port, pg::SUPERUSER, pg::SUPERUSER_PASSWORD, &db, &[&sql])
            .unwrap_or_else(|e| panic!("create role: {e}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_pool_size_and_a_new_user_while_a_transaction_stays_open() {
    let pg_port = shared_primary().await;
    create_role(pg_port, "app_added", "added_pw").await;
    let api = FakePatroni::start(FakeRole::Primary, 1).await;
    let admin_port = free_port();
    let pool = "pool: { mode: transaction, size: 3 }\n";
    let yaml = config(&api, pg_port, admin_port, pool);
    let instance = Instance::start(&yaml).await;
    let rw = instance.listener("rw").await;

    let client = connect(rw, "app", "app_pw").await;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS reload_probe (id text)")
        .await
        .expect("table");
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .execute("INSERT INTO reload_probe VALUES ('during-reload')", &[])
        .await
        .expect("insert in the open transaction");
    assert_eq!(
        pool_size_in(&instance.status().await, "app"),
        Some(3),
        "pool before the reload"
    );

    let added_user = "  - { name: app_added, password: added_pw }\n";
    let new_yaml = config(
        &api,
        pg_port,
        admin_port,
        "pool: { mode: transaction, size: 7 }\n",
    )
    .replace(USERS_YAML, &format!("{USERS_YAML}{added_user}"));
    assert!(new_yaml.contains("app_added"));
    instance.rewrite(&new_yaml);
    instance.signal("HUP");
    eventually(Duration::from_secs(10), "the reload is applied", || async {
        instance.status().await["reloads"]["succeeded"] == 1
    })
    .await;
    assert_eq!(pool_size_in(&instance.status().await, "app"), Some(7));

    // The new user logs in; the old client's transaction commits.
    let added = connect(rw, "app_added", "added_pw").await;
    let who: String = added
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query as the new user")
        .get(0);
    assert_eq!(who, "app_added");
    client.batch_execute("COMMIT").await.expect("commit");
    let count: i64 = client
        .query_one(
            "SELECT count(*) FROM reload_probe WHERE id = 'during-reload'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert!(
        count >= 1,
        "the transaction open across the reload committed"
    );
    assert!(
        instance.log().contains("configuration reloaded"),
        "{}",
        instance.log()
    );

    // An invalid file changes nothing and says why.
    instance.rewrite(&new_yaml.replace("size: 7", "size: seven"));
    instance.signal("HUP");
    eventually(
        Duration::from_secs(10),
        "the bad reload is refused",
        || async { instance.status().await["reloads"]["failed"] == 1 },
    )
    .await;
    let status = instance.status().await;
    assert_eq!(status["reloads"]["last_succeeded"], false);
    assert!(
        status["reloads"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("size")),
        "{status}"
    );
    assert_eq!(pool_size_in(&status, "app"), Some(7), "old config stays");
    assert!(instance.log().contains("configuration NOT reloaded"));
    let again = connect(rw, "app_added", "added_pw").await;
    again.batch_execute("SELECT 1").await.expect("still served");
    client
        .batch_execute("SELECT 1")
        .await
        .expect("old client still served");
}

#[tokio::test(flavor = "multi_thread")]
async fn post_reload_adds_and_removes_listeners_and_nodes_without_dropping_clients() {
    let pg_port = shared_primary().await;
    let (replica_port, third_port) = blocking(|| {
        let cluster = PgCluster::shared();
        (cluster.port(1), cluster.port(2))
    })
    .await;
    let (_apis, nodes) = fake_apis(
        &[pg_port, replica_port, third_port],
        &[FakeRole::Primary, FakeRole::Replica, FakeRole::Replica],
    )
    .await;
    let admin_port = free_port();
    let with_admin = |yaml: String| {
        yaml.replace(
            "admin:\n  listen: \"127.0.0.1:0\"",
            &format!("admin:\n  listen: \"127.0.0.1:{admin_port}\""),
        )
    };
    let yaml = with_admin(config_yaml(&nodes, "primary", ""));
    let instance = Instance::start(&yaml).await;
    let ro = instance.listener("ro").await;
    let reader = connect(ro, "app", "app_pw").await;
    reader.batch_execute("SELECT 1").await.expect("read");

    // Drop listener ro and node3, add listener ro2.
    let reduced = with_admin(config_yaml(&nodes[..2], "primary", "")).replace(
        "  - { name: ro, listen: \"127.0.0.1:0\", route: replica, fallback: primary }",
        "  - { name: ro2, listen: \"127.0.0.1:0\", route: replica }",
    );
    assert!(reduced.contains("ro2"));
    instance.rewrite(&reduced);
    let response = instance.post("/reload").await;
    assert_eq!(response.0, 200, "{}", response.1);
    assert!(
        response.1.contains("nodes removed: node3"),
        "{}",
        response.1
    );

    let status = instance.status().await;
    let listeners: Vec<&str> = status["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(listeners, ["rw", "ro2"]);
    let node_names: Vec<&str> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(node_names, ["node1", "node2"]);
    assert_eq!(status["primary"], "node1", "the primary is not forgotten");

    // The old listener no longer accepts; its client keeps working.
    assert!(try_connect(ro, "app", "app_pw").await.is_err());
    reader
        .batch_execute("SELECT 1")
        .await
        .expect("client of a removed listener stays");
    let ro2 = instance.listener("ro2").await;
    let fresh = connect(ro2, "app", "app_pw").await;
    let port: i32 = fresh
        .query_one("SELECT inet_server_port()", &[])
        .await
        .expect("read")
        .get(0);
    assert_eq!(port as u16, replica_port, "only node2 is left for reads");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_open_transaction_commit_then_exits() {
    let pg_port = shared_primary().await;
    let api = FakePatroni::start(FakeRole::Primary, 1).await;
    let admin_port = free_port();
    let yaml = config(
        &api,
        pg_port,
        admin_port,
        "pool: { mode: transaction }\nshutdown_timeout: 20s\n",
    );
    let instance = Instance::start(&yaml).await;
    let rw = instance.listener("rw").await;
    let busy = connect(rw, "app", "app_pw").await;
    let idle = connect(rw, "app", "app_pw").await;
    busy.batch_execute("CREATE TABLE IF NOT EXISTS drain_probe (id text)")
        .await
        .expect("table");
    busy.batch_execute("BEGIN").await.expect("begin");
    busy.execute("INSERT INTO drain_probe VALUES ('drained')", &[])
        .await
        .expect("insert");

    let signalled = Instant::now();
    instance.signal("TERM");
    eventually(Duration::from_secs(5), "/health turns 503", || async {
        matches!(instance.get("/health").await, Some((503, _)))
    })
    .await;
    // The idle client is let go at once with 57P01; new clients are refused.
    let error = idle
        .batch_execute("SELECT 1")
        .await
        .expect_err("an idle client is closed while draining");
    assert!(
        error
            .as_db_error()
            .is_some_and(|e| e.code().code() == "57P01")
            || error.is_closed(),
        "{error:?}"
    );
    assert!(
        try_connect(rw, "app", "app_pw").await.is_err(),
        "no new clients while draining"
    );
    // The open transaction carries on and commits.
    busy.execute("INSERT INTO drain_probe VALUES ('drained')", &[])
        .await
        .expect("work inside the open transaction continues");
    busy.batch_execute("COMMIT").await.expect("commit");
    let (exit, instance) = blocking(move || {
        let mut instance = instance;
        let exit = instance.wait_exit(Duration::from_secs(15));
        (exit, instance)
    })
    .await;
    let exit = exit.expect("switchyard exits once its clients are done");
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "well within shutdown_timeout"
    );
    let committed = blocking(move || {
        pg::try_psql(
            pg_port,
            pg::SUPERUSER,
            pg::SUPERUSER_PASSWORD,
            pg::APP_DB,
            &["SELECT count(*) FROM drain_probe WHERE id = 'drained'"],
        )
    })
    .await
    .expect("count");
    assert!(
        committed.parse::<i64>().expect("number") >= 2,
        "{committed}"
    );
    assert!(
        instance.log().contains("every client has left"),
        "{}",
        instance.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_a_transaction_that_outlives_shutdown_timeout() {
    let pg_port = shared_primary().await;
    let api = FakePatroni::start(FakeRole::Primary, 1).await;
    let admin_port = free_port();
    let yaml = config(&api, pg_port, admin_port, "shutdown_timeout: 1s\n");
    let instance = Instance::start(&yaml).await;
    let rw = instance.listener("rw").await;
    let stuck = connect(rw, "app", "app_pw").await;
    stuck.batch_execute("BEGIN").await.expect("begin");
    let signalled = Instant::now();
    instance.signal("TERM");
    let exited = blocking(move || {
        let mut instance = instance;
        instance.wait_exit(Duration::from_secs(10))
    })
    .await;
    assert!(exited.is_some(), "exits after shutdown_timeout");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "waited for the client: {took:?}"
    );
    let error = stuck
        .batch_execute("SELECT 1")
        .await
        .expect_err("the session was closed");
    assert!(
        error.is_closed() || error.as_db_error().is_some(),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_without_secrets() {
    let pg_port = shared_primary().await;
    let api = FakePatroni::start(FakeRole::Primary, 1).await;
    let admin_port = free_port();
    let yaml = config(&api, pg_port, admin_port, "log: { format: json }\n");
    let instance = Instance::start(&yaml).await;
    let rw = instance.listener("rw").await;
    let client = connect(rw, "app", "app_pw").await;
    client.batch_execute("SELECT 1").await.expect("query");
    drop(client);
    eventually(
        Duration::from_secs(5),
        "the session's end is logged",
        || async { instance.log().contains("session ended") },
    )
    .await;
    let log = instance.log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let object: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            object["level"].is_string() && object["message"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 3, "{log}");
    assert!(!log.contains("app_pw"), "a password reached the log: {log}");
    assert!(log.contains("\"listener\":\"rw\""), "{log}");
}
