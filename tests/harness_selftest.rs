//! Self-tests of the integration-test harness in `tests/harness`: a real
//! primary + streaming replicas, the test roles and auth methods, the fake
//! Patroni REST API, and a real Patroni + etcd cluster with a switchover.

mod harness;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use harness::fake_patroni::{http_request, FakePatroni, FakeRole};
use harness::patroni::PatroniCluster;
use harness::pg::*;
use harness::proc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(2);

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    proc::wait_for(
        what,
        Duration::from_secs(30),
        || f().then_some(()),
        String::new,
    );
}

#[test]
fn free_port_never_repeats() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let p = proc::free_port();
        assert!(seen.insert(p), "free_port returned {p} twice");
        std::net::TcpListener::bind(("127.0.0.1", p)).expect("port handed out is bindable");
    }
}

#[test]
fn supervised_process_is_stopped_and_cleaned_up_on_drop() {
    let base = proc::postgres_temp_dir("switchyard-selftest-");
    let dir = base.join("work");
    std::fs::create_dir(&dir).unwrap();
    proc::give_to_postgres(&dir, 0o700);
    let log = base.join("sleep.log");
    let mut sup = proc::Supervised::spawn("sleep", &["600"], true, &log, Some(&dir));
    let pid = sup.server_pid().expect("server pid");
    assert!(proc::pid_alive(pid));
    // stop + start keeps the directory and runs a new server
    sup.stop();
    assert!(!proc::pid_alive(pid), "server survived stop()");
    assert!(dir.exists(), "stop() must keep the cleanup dir");
    sup.start();
    let pid2 = sup.server_pid().expect("server pid after start");
    assert_ne!(pid, pid2);
    sup.kill_hard();
    wait_until("killed server to die", || !proc::pid_alive(pid2));
    sup.start();
    let pid3 = sup.server_pid().expect("server pid after second start");
    drop(sup);
    assert!(!proc::pid_alive(pid3), "server survived drop");
    assert!(!dir.exists(), "cleanup dir not removed on drop");
    assert!(!base.join("sleep.wpid").exists());
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn pg_cluster_replicates_stops_restarts_and_promotes() {
    let t0 = Instant::now();
    let c = PgCluster::start(2);
    eprintln!("[selftest] PgCluster::start(2) took {:.2?}", t0.elapsed());
    assert_eq!(c.nodes.len(), 3);
    assert!(!c.is_in_recovery(0), "node 0 must be the primary");
    assert!(c.is_in_recovery(1));
    assert!(c.is_in_recovery(2));
    let streaming = c.psql(
        0,
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
    );
    assert_eq!(streaming, "2");
    assert_eq!(c.psql(0, "SHOW max_connections"), "200");

    c.psql_db(
        0,
        APP_DB,
        "CREATE TABLE selftest(id int primary key, v text); INSERT INTO selftest VALUES (1, 'hello')",
    );
    for i in [1, 2] {
        wait_until("row to reach replica", || {
            try_psql(
                c.port(i),
                SUPERUSER,
                SUPERUSER_PASSWORD,
                APP_DB,
                &["SELECT v FROM selftest WHERE id = 1"],
            )
            .is_ok_and(|v| v == "hello")
        });
    }
    // Replicas are read-only.
    assert!(try_psql(
        c.port(1),
        SUPERUSER,
        SUPERUSER_PASSWORD,
        APP_DB,
        &["INSERT INTO selftest VALUES (2, 'x')"]
    )
    .is_err());

    // Replica down and back.
    let t = Instant::now();
    c.stop(2);
    assert!(try_psql(
        c.port(2),
        SUPERUSER,
        SUPERUSER_PASSWORD,
        "postgres",
        &["SELECT 1"]
    )
    .is_err());
    c.psql_db(0, APP_DB, "INSERT INTO selftest VALUES (3, 'while down')");
    c.restart(2);
    c.wait_replicas_streaming();
    wait_until("row written while down to reach restarted replica", || {
        try_psql(
            c.port(2),
            SUPERUSER,
            SUPERUSER_PASSWORD,
            APP_DB,
            &["SELECT v FROM selftest WHERE id = 3"],
        )
        .is_ok_and(|v| v == "while down")
    });
    eprintln!("[selftest] stop+restart replica took {:.2?}", t.elapsed());

    // Crash a replica and bring it back.
    c.kill_hard(1);
    assert!(try_psql(
        c.port(1),
        SUPERUSER,
        SUPERUSER_PASSWORD,
        "postgres",
        &["SELECT 1"]
    )
    .is_err());
    c.restart(1);
    assert!(c.is_in_recovery(1));

    let t = Instant::now();
    c.promote(1);
    eprintln!("[selftest] promote took {:.2?}", t.elapsed());
    assert!(!c.is_in_recovery(1));
    c.psql_db(
        1,
        APP_DB,
        "INSERT INTO selftest VALUES (4, 'on new primary')",
    );

    let base = c.base_dir.clone();
    let t = Instant::now();
    drop(c);
    eprintln!("[selftest] PgCluster drop took {:.2?}", t.elapsed());
    assert!(!base.exists(), "cluster dir {} not removed", base.display());
}

async fn connect(
    port: u16,
    user: &str,
    password: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname(APP_DB)
        .connect_timeout(Duration::from_secs(10));
    if let Some(p) = password {
        cfg.password(p);
    }
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let table = format!("t_{user}");
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table}(x int)"
        ))
        .await?;
    let row = client.query_one("SELECT current_user::text", &[]).await?;
    assert_eq!(row.get::<_, String>(0), user);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_cluster_app_users_authenticate() {
    let t0 = Instant::now();
    let c = tokio::task::spawn_blocking(PgCluster::shared)
        .await
        .unwrap();
    eprintln!(
        "[selftest] PgCluster::shared() ready after {:.2?}",
        t0.elapsed()
    );
    // Same instance on the second call.
    let c2 = tokio::task::spawn_blocking(PgCluster::shared)
        .await
        .unwrap();
    assert!(std::ptr::eq(c, c2));
    let port = c.port(0);

    for (user, pw) in [
        (APP_USER, Some(APP_PASSWORD)),
        (APP_MD5_USER, Some(APP_MD5_PASSWORD)),
        (APP_CLEAR_USER, Some(APP_CLEAR_PASSWORD)),
        (APP_TRUST_USER, None),
    ] {
        connect(port, user, pw)
            .await
            .unwrap_or_else(|e| panic!("{user} cannot log in: {e}"));
    }
    // The password of app_md5 really is stored as MD5, the others as SCRAM.
    let stored = tokio::task::spawn_blocking(move || {
        c.psql(
            0,
            "SELECT string_agg(rolname || ':' || CASE WHEN rolpassword LIKE 'md5%' THEN 'md5' ELSE left(rolpassword, 5) END, ',' ORDER BY rolname) \
             FROM pg_authid WHERE rolname IN ('app', 'app_md5', 'app_clear')",
        )
    })
    .await
    .unwrap();
    assert_eq!(stored, "app:SCRAM,app_clear:SCRAM,app_md5:md5");

    for (user, bad) in [
        (APP_USER, "wrong"),
        (APP_MD5_USER, "wrong"),
        (APP_CLEAR_USER, "wrong"),
    ] {
        let err = connect(port, user, Some(bad))
            .await
            .expect_err("wrong password accepted");
        let code = err.code().map(|c| c.code().to_string());
        assert_eq!(code.as_deref(), Some("28P01"), "{user}: {err}");
    }
    // Replicas accept the app users too (read-only).
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(c.port(1))
        .user(APP_USER)
        .password(APP_PASSWORD)
        .dbname(APP_DB);
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn fake_patroni_roles_and_json() {
    let f = FakePatroni::start(FakeRole::Primary, 3).await;
    assert!(f.url().starts_with("http://127.0.0.1:"));
    let a = f.addr();

    let r = http_request(a, "GET", "/primary", T).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    for p in [
        "/master",
        "/leader",
        "/read-write",
        "/read-only",
        "/health",
        "/",
    ] {
        assert_eq!(
            http_request(a, "GET", p, T).await.unwrap().status,
            200,
            "{p}"
        );
    }
    assert_eq!(
        http_request(a, "OPTIONS", "/primary", T)
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        http_request(a, "GET", "/replica", T).await.unwrap().status,
        503
    );
    let j = http_request(a, "GET", "/patroni", T).await.unwrap().json();
    assert_eq!(j["role"], "master");
    assert_eq!(j["timeline"], 3);
    assert_eq!(j["state"], "running");
    assert_eq!(j["patroni"]["version"], "3.0.2");

    f.set_role(FakeRole::Replica);
    f.set_timeline(4);
    f.set_lag(2 * 1024 * 1024);
    assert_eq!(
        http_request(a, "GET", "/primary", T).await.unwrap().status,
        503
    );
    assert_eq!(
        http_request(a, "OPTIONS", "/primary", T)
            .await
            .unwrap()
            .status,
        503
    );
    assert_eq!(
        http_request(a, "GET", "/replica", T).await.unwrap().status,
        200
    );
    assert_eq!(
        http_request(a, "GET", "/read-only", T)
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        http_request(a, "GET", "/replica?lag=1MB", T)
            .await
            .unwrap()
            .status,
        503
    );
    assert_eq!(
        http_request(a, "GET", "/replica?lag=10MB", T)
            .await
            .unwrap()
            .status,
        200
    );
    let j = http_request(a, "GET", "/patroni", T).await.unwrap().json();
    assert_eq!(j["role"], "replica");
    assert_eq!(j["timeline"], 4);
    assert_eq!(j["replication_state"], "streaming");
    let cl = http_request(a, "GET", "/cluster", T).await.unwrap().json();
    assert_eq!(cl["members"][0]["role"], "replica");
    assert_eq!(cl["members"][0]["lag"], 2 * 1024 * 1024);

    f.set_cluster_members(serde_json::json!([
        {"name": "a", "role": "leader", "state": "running", "host": "127.0.0.1", "port": 1, "timeline": 4},
        {"name": "b", "role": "replica", "state": "running", "host": "127.0.0.1", "port": 2, "timeline": 4, "lag": 0}
    ]));
    let cl = http_request(a, "GET", "/cluster", T).await.unwrap().json();
    assert_eq!(cl["members"].as_array().unwrap().len(), 2);
    assert_eq!(cl["members"][0]["name"], "a");

    f.set_role(FakeRole::NotRunning);
    for p in ["/primary", "/replica", "/read-only", "/health", "/patroni"] {
        assert_eq!(
            http_request(a, "GET", p, T).await.unwrap().status,
            503,
            "{p}"
        );
    }
    assert_eq!(
        http_request(a, "GET", "/nope", T).await.unwrap().status,
        404
    );
    assert_eq!(
        http_request(a, "POST", "/primary", T).await.unwrap().status,
        501
    );

    // Garbage must not kill the server.
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"\x00\x01garbage\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut buf)).await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 400"));
    let before = f.requests();
    assert_eq!(
        http_request(a, "GET", "/health", T).await.unwrap().status,
        503
    );
    assert_eq!(f.requests(), before + 1);
    assert_eq!(f.paths().last().map(String::as_str), Some("/health"));
}

#[tokio::test(flavor = "multi_thread")]
async fn fake_patroni_hang_and_refuse() {
    let f = FakePatroni::start(FakeRole::Hang, 1).await;
    let a = f.addr();
    let t = Instant::now();
    let err = http_request(a, "GET", "/primary", Duration::from_millis(500))
        .await
        .expect_err("Hang must not answer");
    assert_eq!(err.kind(), ErrorKind::TimedOut);
    assert!(t.elapsed() >= Duration::from_millis(450));
    assert_eq!(f.requests(), 0);

    f.set_role(FakeRole::Refuse);
    let t = Instant::now();
    let err = http_request(a, "GET", "/primary", T)
        .await
        .expect_err("Refuse must close without answering");
    assert_ne!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(f.requests(), 0);

    f.set_role(FakeRole::Primary);
    assert_eq!(
        http_request(a, "GET", "/primary", T).await.unwrap().status,
        200
    );
    assert_eq!(f.requests(), 1);

    // Dropping the fake stops it.
    drop(f);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(http_request(a, "GET", "/primary", T).await.is_err());
}

#[test]
fn patroni_cluster_starts_and_switches_over() {
    let t0 = Instant::now();
    let mut c = PatroniCluster::start();
    eprintln!(
        "[selftest] PatroniCluster::start() took {:.2?}",
        t0.elapsed()
    );
    assert_eq!(c.leader(), Some(0));
    assert_eq!(c.name(0), "node1");
    assert_eq!(c.psql(0, "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(c.psql(1, "SELECT pg_is_in_recovery()"), "t");
    assert_eq!(c.psql(2, "SELECT pg_is_in_recovery()"), "t");
    assert_eq!(
        c.psql(
            0,
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        ),
        "2"
    );
    assert_eq!(c.api_status(0, "/primary"), Some(200));
    assert_eq!(c.api_status(1, "/replica"), Some(200));
    assert_eq!(c.api_status(1, "/primary"), Some(503));
    // app/appdb exist and were replicated.
    let app_ok = |i: usize| {
        try_psql(
            c.pg_port(i),
            APP_USER,
            APP_PASSWORD,
            APP_DB,
            &["SELECT current_user"],
        )
        .is_ok_and(|u| u == APP_USER)
    };
    assert!(app_ok(0));
    wait_until("app role to reach node3", || app_ok(2));

    let t = Instant::now();
    c.switchover(1);
    c.wait_leader(1, Duration::from_secs(60));
    eprintln!("[selftest] switchover to node2 took {:.2?}", t.elapsed());
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.psql(1, "SELECT pg_is_in_recovery()"), "f");
    let t = Instant::now();
    c.wait_streaming_replicas(&[0, 2], Duration::from_secs(60));
    eprintln!(
        "[selftest] old leader rejoined as replica after {:.2?}",
        t.elapsed()
    );
    assert_eq!(c.api_status(0, "/replica"), Some(200));

    // Crash a replica (patroni + postgres), the leader stays; bring it back.
    let t = Instant::now();
    c.kill_node(2);
    wait_until("killed node3 to stop answering", || {
        c.api_status(2, "/health").is_none()
            && try_psql(
                c.pg_port(2),
                SUPERUSER,
                SUPERUSER_PASSWORD,
                "postgres",
                &["SELECT 1"],
            )
            .is_err()
    });
    assert_eq!(c.leader(), Some(1));
    c.start_node(2);
    c.wait_streaming_replicas(&[0, 2], Duration::from_secs(60));
    eprintln!(
        "[selftest] kill + restart of node3 took {:.2?}",
        t.elapsed()
    );

    let base = c.base_dir.clone();
    let t = Instant::now();
    drop(c);
    eprintln!("[selftest] PatroniCluster drop took {:.2?}", t.elapsed());
    assert!(!base.exists(), "cluster dir {} not removed", base.display());
}
