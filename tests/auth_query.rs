//! `auth_query` (issue #16 item 3) against real PostgreSQL: roles that are not in
//! `users:` are looked up with the SECURITY DEFINER function README gives (taken
//! from README itself, so the documented SQL is the tested SQL), log in with
//! SCRAM (the pool then logs in with the pass-through key) or MD5, and query;
//! wrong passwords and unknown roles get the same 28P01; a changed password takes
//! effect without a reload, and password guessing does not turn into lookups
//! (one per `auth.refetch_interval`); a user seen before still logs in while no node
//! answers the lookup; quotes in names cannot inject SQL; concurrent logins of
//! one name share one lookup, and lookups never hold more server connections
//! than `auth.max_fetches`; session mode, a replica-only topology, and reloads
//! (which keep the cache and the users' pools unless `auth:` changed) work too.

mod harness;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use harness::clients::{describe, su_count, su_sql};
use harness::fake_patroni::{FakePatroni, FakeRole};
use harness::pg::{self, shared_cluster, PgCluster};
use harness::proxy::{admin_get, single_node, start_proxy, NodeSpec, FAST_HEALTH};
use harness::raw_client::{raw_connect, read_message, send_probe_client_first, startup_packet};
use harness::wait::{blocking, eventually, within};
use switchyard::proxy::RunningProxy;
use tokio::io::AsyncWriteExt;
use tokio_postgres::NoTls;

const AUTH_USER: &str = "switchyard_auth";
const AUTH_PASSWORD: &str = "auth_lookup_pw";

/// The SQL of README's "auth_query" section (its first `sql` block), with the
/// lookup role's password set for the tests.
fn readme_function_sql() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n### auth_query\n")
        .nth(1)
        .expect("README has an auth_query section");
    let block = section
        .split("```sql\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the auth_query section has an sql block");
    assert!(
        block.contains("SECURITY DEFINER") && block.contains("REVOKE"),
        "{block}"
    );
    block.replace("'change-me'", &format!("'{AUTH_PASSWORD}'"))
}

/// Creates the lookup role and function (README's SQL) on the primary at `port`.
fn install_function(port: u16) {
    let sql = readme_function_sql();
    pg::try_psql(
        port,
        pg::SUPERUSER,
        pg::SUPERUSER_PASSWORD,
        "postgres",
        &[&sql],
    )
    .unwrap_or_else(|e| panic!("README's auth_query SQL failed: {e}\n{sql}"));
}

/// The shared cluster's primary, with README's function installed once.
async fn primary_port() -> u16 {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    let port = shared_cluster().await.port(0);
    blocking(move || *INSTALLED.get_or_init(|| install_function(port))).await;
    port
}

/// A proxy in transaction mode whose only node is the server on `pg_port` (a
/// primary), with no configured users but `auth:` as given (YAML lines under
/// `auth:`).
async fn proxy_with_auth(pg_port: u16, auth: &str) -> (RunningProxy, FakePatroni) {
    let api = FakePatroni::start(FakeRole::Primary, 1).await;
    let yaml = config_yaml(&single_node(pg_port, &api), auth);
    (start_proxy(&yaml).await, api)
}

/// Listeners `rw` (primary) and `ro` (replica, no fallback) in transaction mode.
fn config_yaml(nodes: &[NodeSpec], auth: &str) -> String {
    let mut yaml = format!(
        "listeners:\n  - {{ name: rw, listen: \"127.0.0.1:0\", route: primary }}\n  \
         - {{ name: ro, listen: \"127.0.0.1:0\", route: replica, fallback: none }}\n\
         admin:\n  listen: \"127.0.0.1:0\"\n\
         cluster:\n  health: {FAST_HEALTH}\n  nodes:\n"
    );
    for node in nodes {
        yaml.push_str(&format!(
            "    - {{ name: {}, host: 127.0.0.1, port: {}, api: \"{}\" }}\n",
            node.name, node.port, node.api
        ));
    }
    yaml.push_str(
        "users: []\n\
         pool: { mode: transaction }\n\
         server: { require_auth: \"scram-sha-256,md5\" }\n\
         client: { auth_failure_delay: 10ms }\n\
         auth:\n",
    );
    yaml.push_str(auth);
    yaml
}

fn default_auth() -> String {
    format!("  user: {AUTH_USER}\n  password: {AUTH_PASSWORD}\n")
}

fn rw(proxy: &RunningProxy) -> SocketAddr {
    proxy.listener_addr("rw").expect("rw listener")
}

/// tokio-postgres as `user` to `appdb` through `addr` (names may hold quotes).
async fn try_login(
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .password(password)
        .dbname("appdb")
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Logs in and returns `current_user` as the server saw it.
async fn current_user(addr: SocketAddr, user: &str, password: &str) -> String {
    let client = within(20, "login and query", try_login(addr, user, password))
        .await
        .unwrap_or_else(|e| panic!("login as {user:?}: {}", describe(&e)));
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap_or_else(|e| panic!("query as {user:?}: {}", describe(&e)));
    row.get(0)
}

/// The SQLSTATE and message a failed login got.
async fn login_error(addr: SocketAddr, user: &str, password: &str) -> (String, String) {
    match within(20, "failed login", try_login(addr, user, password)).await {
        Ok(_) => panic!("{user:?} logged in with {password:?}"),
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("{user:?}: not a server error: {e:?}"));
            (db.code().code().to_string(), db.message().to_string())
        }
    }
}

async fn create_role(pg_port: u16, name: &str, password: &str) {
    let quoted = name.replace('"', "\"\"");
    su_sql(
        pg_port,
        &format!("DROP ROLE IF EXISTS \"{quoted}\"; CREATE ROLE \"{quoted}\" LOGIN PASSWORD '{password}'"),
    )
    .await;
}

/// `switchyard_auth_query_total{result=...}` from the proxy's /metrics (one
/// recorder per process: tests compare before and after).
async fn lookups(proxy: &RunningProxy, result: &str) -> f64 {
    let (_, body) = admin_get(proxy, "/metrics").await;
    let prefix = format!("switchyard_auth_query_total{{result=\"{result}\"}} ");
    body.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_created_on_the_server_logs_in_with_scram_and_its_pool_passes_the_key_through() {
    let port = primary_port().await;
    create_role(port, "aq_scram", "scram_pw_1").await;
    let (proxy, _api) = proxy_with_auth(port, &default_auth()).await;
    // tokio-postgres: SCRAM with the proxy, then the pool logs in to PostgreSQL
    // with the ClientKey from the client's proof (there is no password to use).
    assert_eq!(
        current_user(rw(&proxy), "aq_scram", "scram_pw_1").await,
        "aq_scram"
    );
    // psql too (libpq), now answered from the cache.
    let addr = rw(&proxy);
    let out = blocking(move || {
        pg::try_psql(
            addr.port(),
            "aq_scram",
            "scram_pw_1",
            "appdb",
            &["SELECT current_user"],
        )
    })
    .await
    .unwrap_or_else(|e| panic!("psql through the proxy: {e}"));
    assert_eq!(out, "aq_scram");
    let server_sessions = su_count(
        port,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'aq_scram'",
    )
    .await;
    assert!(
        server_sessions >= 1,
        "the pool holds a server login as aq_scram"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_and_a_replica_when_there_is_no_primary() {
    let cluster = shared_cluster().await;
    let (primary, replica) = (primary_port().await, cluster.port(1));
    create_role(primary, "aq_reader", "reader_pw").await;
    // The role and README's function reach the replica by replication.
    eventually(
        Duration::from_secs(10),
        "the role replicated",
        || async move {
            su_count(
                replica,
                "SELECT count(*) FROM pg_roles WHERE rolname = 'aq_reader'",
            )
            .await
                == 1
        },
    )
    .await;
    // The only node is a replica: the lookup runs there.
    let api = FakePatroni::start(FakeRole::Replica, 1).await;
    let nodes = single_node(replica, &api);
    let yaml = config_yaml(&nodes, &default_auth()).replace("mode: transaction", "mode: session");
    let proxy = start_proxy(&yaml).await;
    let ro = proxy.listener_addr("ro").expect("ro listener");
    let client = within(20, "login", try_login(ro, "aq_reader", "reader_pw"))
        .await
        .unwrap_or_else(|e| panic!("login via the replica: {}", describe(&e)));
    let row = client
        .query_one("SELECT current_user::text, pg_is_in_recovery()", &[])
        .await
        .unwrap_or_else(|e| panic!("query: {}", describe(&e)));
    assert_eq!(row.get::<_, String>(0), "aq_reader");
    assert!(row.get::<_, bool>(1), "served by the replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_and_unknown_roles_get_the_same_28p01_after_the_same_first_message() {
    let port = primary_port().await;
    create_role(port, "aq_known", "known_pw").await;
    let (proxy, _api) = proxy_with_auth(port, &default_auth()).await;
    let addr = rw(&proxy);
    let wrong = login_error(addr, "aq_known", "not-the-password").await;
    let unknown = login_error(addr, "aq_nobody_at_all", "whatever").await;
    assert_eq!(wrong.0, "28P01", "{wrong:?}");
    assert_eq!(unknown.0, "28P01", "{unknown:?}");
    assert_eq!(
        wrong.1.replace("aq_known", "NAME"),
        unknown.1.replace("aq_nobody_at_all", "NAME"),
        "the same message"
    );
    // What the server sends first, and the SCRAM server-first's shape, do not
    // tell a found role from an unknown name.
    let (known_request, known_first) = scram_opening(addr, "aq_known").await;
    let (unknown_request, unknown_first) = scram_opening(addr, "aq_nobody_at_all").await;
    assert_eq!(
        known_request, unknown_request,
        "the same AuthenticationSASL"
    );
    let shape = |first: &str| -> Vec<String> {
        first
            .split(',')
            .map(|field| match field.split_once('=') {
                Some(("i", count)) => format!("i={count}"),
                Some((key, value)) => format!("{key}=<{} chars>", value.len()),
                None => field.to_string(),
            })
            .collect()
    };
    assert_eq!(shape(&known_first), shape(&unknown_first));
}

/// The body of the first authentication request for `user`, and the SCRAM
/// server-first message that follows a client-first.
async fn scram_opening(addr: SocketAddr, user: &str) -> (Vec<u8>, String) {
    let mut stream = raw_connect(addr).await;
    stream
        .write_all(&startup_packet(
            196608,
            &[("user", user), ("database", "appdb")],
        ))
        .await
        .expect("startup");
    let (tag, request) = read_message(&mut stream).await;
    assert_eq!(tag, b'R', "{user}: an authentication request");
    let (tag, body) = send_probe_client_first(&mut stream).await;
    assert_eq!(tag, b'R', "{user}: SASLContinue");
    (request, String::from_utf8_lossy(&body[4..]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_password_takes_effect_without_a_reload() {
    let port = primary_port().await;
    create_role(port, "aq_rotated", "old_pw").await;
    let (proxy, _api) = proxy_with_auth(port, &default_auth()).await;
    let addr = rw(&proxy);
    assert_eq!(
        current_user(addr, "aq_rotated", "old_pw").await,
        "aq_rotated"
    );
    su_sql(port, "ALTER ROLE aq_rotated PASSWORD 'new_pw'").await;
    // The cached secret is the old one (cache_ttl is 60s): the first login with
    // the new password fails against it and makes the proxy ask again.
    let first = login_error(addr, "aq_rotated", "new_pw").await;
    assert_eq!(first.0, "28P01", "{first:?}");
    assert_eq!(
        current_user(addr, "aq_rotated", "new_pw").await,
        "aq_rotated"
    );
    let old = login_error(addr, "aq_rotated", "old_pw").await;
    assert_eq!(old.0, "28P01", "the old password no longer works: {old:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_md5_stored_role_logs_in_and_its_pool_answers_md5_with_the_hash() {
    let port = primary_port().await;
    // The harness created app_md5 with password_encryption = md5, and pg_hba asks
    // it for MD5; it is not in this proxy's users.
    let stored = su_sql(
        port,
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'app_md5'",
    )
    .await;
    assert!(stored.starts_with("md5"), "stored as an MD5 hash: {stored}");
    let (proxy, _api) = proxy_with_auth(port, &default_auth()).await;
    let addr = rw(&proxy);
    assert_eq!(
        current_user(addr, pg::APP_MD5_USER, pg::APP_MD5_PASSWORD).await,
        pg::APP_MD5_USER
    );
    let wrong = login_error(addr, pg::APP_MD5_USER, "wrong").await;
    assert_eq!(wrong.0, "28P01", "{wrong:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_and_backslashes_in_names_reach_the_query_as_data() {
    let port = primary_port().await;
    let odd = r#"aq_o'brien\"x"#;
    create_role(port, odd, "odd_pw").await;
    create_role(port, "aq_target", "target_pw").await;
    let (proxy, _api) = proxy_with_auth(port, &default_auth()).await;
    let addr = rw(&proxy);
    // The name arrives intact: a quoting mistake would look up another name.
    assert_eq!(current_user(addr, odd, "odd_pw").await, odd);
    // Names that would turn a pasted-in query into one that finds aq_target.
    for injected in [
        "nobody' OR usename = 'aq_target",
        "nobody') UNION SELECT usename, passwd FROM pg_shadow WHERE usename = 'aq_target' --",
        "nobody\\'; SELECT 'aq_target",
    ] {
        let (code, message) = login_error(addr, injected, "target_pw").await;
        assert_eq!(code, "28P01", "{injected}: {message}");
    }
    assert_eq!(
        current_user(addr, "aq_target", "target_pw").await,
        "aq_target"
    );
}

/// `auth:` lines for the counting lookup (see [`install_counting_function`]).
const COUNTING_AUTH: &str = "  user: aq_slow_auth\n  password: slow_pw\n  \
    query: \"SELECT usename, passwd FROM switchyard.get_auth_slowly($1)\"\n";

/// Lookup roles of their own (`aq_slow_auth` for the tests that count calls,
/// `aq_bound_auth` for the one that counts connections, so no other test's
/// lookups are counted) and a function that records each call in
/// `switchyard.calls` and is slow, so lookups overlap and can be counted. Once
/// per test binary.
async fn install_counting_function(port: u16) {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            su_sql(
                port,
                "DROP ROLE IF EXISTS aq_slow_auth; CREATE ROLE aq_slow_auth LOGIN PASSWORD 'slow_pw';
                 DROP ROLE IF EXISTS aq_bound_auth; CREATE ROLE aq_bound_auth LOGIN PASSWORD 'slow_pw';
                 CREATE TABLE IF NOT EXISTS switchyard.calls (name text);
                 CREATE OR REPLACE FUNCTION switchyard.get_auth_slowly(p_usename text)
                 RETURNS TABLE (usename name, passwd text)
                 LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
                 AS $$ BEGIN
                   INSERT INTO switchyard.calls VALUES (p_usename);
                   PERFORM pg_sleep(0.3);
                   RETURN QUERY SELECT * FROM switchyard.get_auth(p_usename);
                 END $$;
                 REVOKE ALL ON FUNCTION switchyard.get_auth_slowly(text) FROM PUBLIC;
                 GRANT USAGE ON SCHEMA switchyard TO aq_slow_auth, aq_bound_auth;
                 GRANT EXECUTE ON FUNCTION switchyard.get_auth_slowly(text)
                   TO aq_slow_auth, aq_bound_auth;",
            )
            .await;
        })
        .await;
}

/// How many times the counting function looked `name` up.
async fn calls(port: u16, name: &str) -> i64 {
    su_count(
        port,
        &format!("SELECT count(*) FROM switchyard.calls WHERE name = '{name}'"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_share_one_lookup_and_lookups_stay_within_max_fetches() {
    let port = primary_port().await;
    install_counting_function(port).await;
    create_role(port, "aq_crowd", "crowd_pw").await;
    let auth = format!(
        "{}  max_fetches: 2\n",
        COUNTING_AUTH.replace("aq_slow_auth", "aq_bound_auth")
    );
    let (proxy, _api) = proxy_with_auth(port, &auth).await;
    let addr = rw(&proxy);

    // Ten logins of one name at once: one lookup.
    let logins: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { current_user(addr, "aq_crowd", "crowd_pw").await }))
        .collect();
    for login in logins {
        assert_eq!(login.await.expect("login task"), "aq_crowd");
    }
    assert_eq!(
        calls(port, "aq_crowd").await,
        1,
        "concurrent logins of one name share one lookup"
    );

    // Twelve distinct unknown names at once: every one is looked up, never more
    // than two at a time, on at most two server connections.
    let most = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (most, done) = (Arc::clone(&most), Arc::clone(&done));
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let now = su_count(
                    port,
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'aq_bound_auth'",
                )
                .await;
                most.fetch_max(now, Ordering::Relaxed);
            }
        })
    };
    let probes: Vec<_> = (0..12)
        .map(|i| {
            tokio::spawn(async move { login_error(addr, &format!("aq_random_{i}"), "x").await })
        })
        .collect();
    for probe in probes {
        let (code, message) = probe.await.expect("probe task");
        assert_eq!(code, "28P01", "{message}");
    }
    done.store(true, Ordering::Relaxed);
    watcher.await.expect("watcher");
    let random = su_count(
        port,
        "SELECT count(*) FROM switchyard.calls WHERE name LIKE 'aq\\_random\\_%'",
    )
    .await;
    assert_eq!(random, 12, "each unknown name was looked up once");
    let most = most.load(Ordering::Relaxed);
    assert!(
        (1..=2).contains(&most),
        "lookup connections seen at once: {most} (auth.max_fetches is 2)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_seen_before_logs_in_with_the_cached_secret_while_no_node_answers() {
    // A cluster of its own: this test stops its server.
    let cluster = blocking(|| PgCluster::start(0)).await;
    let port = cluster.port(0);
    blocking(move || install_function(port)).await;
    create_role(port, "aq_loyal", "loyal_pw").await;
    // cache_ttl 0: every login asks, so the one during the outage must fall back.
    let auth = format!("{}  cache_ttl: 0s\n", default_auth());
    let (proxy, _api) = proxy_with_auth(port, &auth).await;
    let addr = rw(&proxy);
    assert_eq!(current_user(addr, "aq_loyal", "loyal_pw").await, "aq_loyal");

    let cluster = Arc::new(cluster);
    let stopping = Arc::clone(&cluster);
    blocking(move || stopping.stop(0)).await;
    let stale_before = lookups(&proxy, "stale").await;
    // A name never found before cannot be checked: the client is told why.
    let (code, message) = login_error(addr, "aq_never_seen", "x").await;
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("cannot look up user"), "{message}");
    // The known user authenticates with the cached secret, then waits (the
    // failover hold) for a server to run its query on.
    let login = tokio::spawn(async move { current_user(addr, "aq_loyal", "loyal_pw").await });
    eventually(Duration::from_secs(10), "the stale secret was used", || {
        let proxy = &proxy;
        async move { lookups(proxy, "stale").await > stale_before }
    })
    .await;
    let restarting = Arc::clone(&cluster);
    blocking(move || restarting.restart(0)).await;
    assert_eq!(login.await.expect("login task"), "aq_loyal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_cache_and_the_pools_unless_auth_changed() {
    let port = primary_port().await;
    install_counting_function(port).await;
    create_role(port, "aq_reloaded", "reload_pw").await;
    let api = FakePatroni::start(FakeRole::Primary, 1).await;
    let yaml = config_yaml(&single_node(port, &api), COUNTING_AUTH);
    let file = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(file.path(), &yaml).expect("write config");
    harness::proxy::init_logging();
    let config = switchyard::config::Config::from_yaml_str(&yaml).expect("config");
    let proxy = switchyard::proxy::start_with_source(config, Some(file.path().to_path_buf()))
        .await
        .expect("proxy starts");
    let addr = rw(&proxy);
    let backend = |addr| async move {
        let client = try_login(addr, "aq_reloaded", "reload_pw")
            .await
            .unwrap_or_else(|e| panic!("login: {}", describe(&e)));
        let row = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap_or_else(|e| panic!("query: {}", describe(&e)));
        row.get::<_, i32>(0)
    };
    let before = backend(addr).await;
    assert_eq!(calls(port, "aq_reloaded").await, 1);

    // A reload that leaves auth: alone: the cached secret and the user's pool
    // (with its server connection, logged in with the pass-through key) stay.
    std::fs::write(
        file.path(),
        yaml.replace("auth_failure_delay: 10ms", "auth_failure_delay: 20ms"),
    )
    .expect("rewrite");
    proxy.reload().await.expect("reload");
    assert_eq!(
        backend(addr).await,
        before,
        "the same pooled server connection"
    );
    assert_eq!(
        calls(port, "aq_reloaded").await,
        1,
        "answered from the cache"
    );

    // A reload that changes auth: starts with an empty cache.
    std::fs::write(file.path(), format!("{yaml}  cache_ttl: 61s\n")).expect("rewrite");
    let summary = proxy.reload().await.expect("reload");
    assert!(summary.contains("auth changed"), "{summary}");
    backend(addr).await;
    assert_eq!(calls(port, "aq_reloaded").await, 2, "looked up again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_refetches_at_most_once_per_refetch_interval() {
    let port = primary_port().await;
    install_counting_function(port).await;
    create_role(port, "aq_guessed", "guessed_pw").await;
    let auth = format!("{COUNTING_AUTH}  refetch_interval: 1h\n");
    let (proxy, _api) = proxy_with_auth(port, &auth).await;
    let addr = rw(&proxy);
    assert_eq!(
        current_user(addr, "aq_guessed", "guessed_pw").await,
        "aq_guessed"
    );
    assert_eq!(calls(port, "aq_guessed").await, 1);
    for guess in 0..5 {
        let (code, message) = login_error(addr, "aq_guessed", &format!("guess-{guess}")).await;
        assert_eq!(code, "28P01", "{message}");
    }
    assert_eq!(
        calls(port, "aq_guessed").await,
        2,
        "the first failure looked the user up again, the others did not"
    );
    assert_eq!(
        current_user(addr, "aq_guessed", "guessed_pw").await,
        "aq_guessed"
    );
}
