//! The PgBouncer-style admin console against a real PostgreSQL behind the proxy:
//! who may open it, every SHOW command's columns (names, order, type OIDs) as
//! PgBouncer 1.18 sends them (pinned below from Debian's pgbouncer 1.18.0, and
//! compared live with that PgBouncer when it is installed), values that follow
//! the proxy's state, and the commands.

mod harness;

use std::time::Duration;

use harness::clients::*;
use harness::console::*;
use harness::pg::shared_cluster;
use harness::proxy::*;
use harness::wait::*;

const TEXT: u32 = 25;
const INT4: u32 = 23;
const INT8: u32 = 20;
const NUMERIC: u32 = 1700;

/// PgBouncer 1.18.0's columns, as its admin console sent them (see the module doc).
fn pgbouncer_columns(show: &str) -> Vec<(&'static str, u32)> {
    let sockets = vec![
        ("type", TEXT),
        ("user", TEXT),
        ("database", TEXT),
        ("state", TEXT),
        ("addr", TEXT),
        ("port", INT4),
        ("local_addr", TEXT),
        ("local_port", INT4),
        ("connect_time", TEXT),
        ("request_time", TEXT),
        ("wait", INT4),
        ("wait_us", INT4),
        ("close_needed", INT4),
        ("ptr", TEXT),
        ("link", TEXT),
        ("remote_pid", INT4),
        ("tls", TEXT),
        ("application_name", TEXT),
    ];
    let stats_parts = vec![
        ("database", TEXT),
        ("xact_count", NUMERIC),
        ("query_count", NUMERIC),
        ("bytes_received", NUMERIC),
        ("bytes_sent", NUMERIC),
        ("xact_time", NUMERIC),
        ("query_time", NUMERIC),
        ("wait_time", NUMERIC),
    ];
    match show {
        "POOLS" => vec![
            ("database", TEXT),
            ("user", TEXT),
            ("cl_active", INT4),
            ("cl_waiting", INT4),
            ("cl_active_cancel_req", INT4),
            ("cl_waiting_cancel_req", INT4),
            ("sv_active", INT4),
            ("sv_active_cancel", INT4),
            ("sv_being_canceled", INT4),
            ("sv_idle", INT4),
            ("sv_used", INT4),
            ("sv_tested", INT4),
            ("sv_login", INT4),
            ("maxwait", INT4),
            ("maxwait_us", INT4),
            ("pool_mode", TEXT),
        ],
        "CLIENTS" | "SERVERS" => sockets,
        "STATS" => vec![
            ("database", TEXT),
            ("total_xact_count", NUMERIC),
            ("total_query_count", NUMERIC),
            ("total_received", NUMERIC),
            ("total_sent", NUMERIC),
            ("total_xact_time", NUMERIC),
            ("total_query_time", NUMERIC),
            ("total_wait_time", NUMERIC),
            ("avg_xact_count", NUMERIC),
            ("avg_query_count", NUMERIC),
            ("avg_recv", NUMERIC),
            ("avg_sent", NUMERIC),
            ("avg_xact_time", NUMERIC),
            ("avg_query_time", NUMERIC),
            ("avg_wait_time", NUMERIC),
        ],
        "STATS_TOTALS" | "STATS_AVERAGES" => stats_parts,
        "TOTALS" => vec![("name", TEXT), ("value", NUMERIC)],
        "DATABASES" => vec![
            ("name", TEXT),
            ("host", TEXT),
            ("port", INT4),
            ("database", TEXT),
            ("force_user", TEXT),
            ("pool_size", INT4),
            ("min_pool_size", INT4),
            ("reserve_pool", INT4),
            ("pool_mode", TEXT),
            ("max_connections", INT4),
            ("current_connections", INT4),
            ("paused", INT4),
            ("disabled", INT4),
        ],
        "USERS" => vec![("name", TEXT), ("pool_mode", TEXT)],
        "CONFIG" => vec![
            ("key", TEXT),
            ("value", TEXT),
            ("default", TEXT),
            ("changeable", TEXT),
        ],
        "LISTS" => vec![("list", TEXT), ("items", INT4)],
        "MEM" => vec![
            ("name", TEXT),
            ("size", INT4),
            ("used", INT4),
            ("free", INT4),
            ("memtotal", INT4),
        ],
        "VERSION" => vec![("version", TEXT)],
        // Not in 1.18: PgBouncer 1.21's key/value rows.
        "STATE" => vec![("key", TEXT), ("value", TEXT)],
        other => panic!("no pinned columns for SHOW {other}"),
    }
}

/// Switchyard's columns after PgBouncer's.
fn extra_columns(show: &str) -> Vec<(&'static str, u32)> {
    match show {
        "POOLS" => vec![("node", TEXT), ("role", TEXT)],
        "CLIENTS" => vec![("id", INT8), ("listener", TEXT)],
        "SERVERS" => vec![("node", TEXT)],
        "STATS" => vec![("total_requests", NUMERIC)],
        _ => vec![],
    }
}

const PGBOUNCER_SHOWS: [&str; 14] = [
    "POOLS",
    "CLIENTS",
    "SERVERS",
    "STATS",
    "STATS_TOTALS",
    "STATS_AVERAGES",
    "TOTALS",
    "DATABASES",
    "USERS",
    "CONFIG",
    "LISTS",
    "MEM",
    "VERSION",
    "STATE",
];

fn owned(columns: Vec<(&str, u32)>) -> Vec<(String, u32)> {
    columns
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect()
}

async fn console_proxy(
    extra: &str,
) -> (
    switchyard::proxy::RunningProxy,
    harness::fake_patroni::FakePatroni,
) {
    let cluster = shared_cluster().await;
    let (yaml, api) = config_for(cluster.port(0), extra).await;
    (start_proxy(&with_console(&yaml)).await, api)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_show_command_has_pgbouncer_118_columns_then_switchyard_extras() {
    let (proxy, _api) = console_proxy("pool: { mode: transaction }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    // Some traffic, so pools, servers, clients and stats have rows.
    let app = connect(rw, "app", "app_pw").await;
    app.simple_query("select 1").await.expect("select");
    let mut console = RawConsole::login(rw).await;
    for show in PGBOUNCER_SHOWS {
        let reply = console.query(&format!("SHOW {show};")).await;
        assert_eq!(reply.error, None, "SHOW {show}");
        assert_eq!(reply.tag.as_deref(), Some("SHOW"), "SHOW {show}");
        let mut expected = owned(pgbouncer_columns(show));
        expected.extend(owned(extra_columns(show)));
        assert_eq!(reply.columns, expected, "SHOW {show}");
    }
    let pools = console.query("SHOW POOLS").await;
    assert_eq!(pools.column("database"), [Some("appdb".to_string())]);
    assert_eq!(pools.column("user"), [Some("app".to_string())]);
    assert_eq!(pools.column("node"), [Some("node1".to_string())]);
    assert_eq!(pools.column("role"), [Some("primary".to_string())]);
    assert_eq!(pools.column("pool_mode"), [Some("transaction".to_string())]);
    assert_eq!(pools.column("sv_idle"), [Some("1".to_string())]);
    let clients = console.query("SHOW CLIENTS").await;
    assert_eq!(
        clients.rows.len(),
        1,
        "the app client; consoles are not listed"
    );
    assert_eq!(clients.column("database"), [Some("appdb".to_string())]);
    assert_eq!(clients.column("listener"), [Some("rw".to_string())]);
    let stats = console.query("SHOW STATS").await;
    let rw_row = stats
        .column("database")
        .iter()
        .position(|d| d.as_deref() == Some("rw"))
        .expect("rw row");
    let xacts: u64 = stats.column("total_xact_count")[rw_row]
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("count");
    assert!(xacts >= 1, "{xacts}");
    let version = console.query("SHOW VERSION").await;
    assert!(
        version.rows[0][0]
            .as_deref()
            .is_some_and(|v| v.starts_with("PgBouncer 1.18.0 ")),
        "{version:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn show_nodes_routes_and_help_are_switchyard_s_own() {
    let (proxy, _api) = console_proxy("").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let mut console = RawConsole::login(rw).await;
    let nodes = console.query("show nodes").await;
    assert_eq!(
        nodes.column_names(),
        [
            "name",
            "host",
            "port",
            "role",
            "primary_health",
            "replica_health",
            "timeline",
            "lag_bytes",
            "sessions",
            "last_check",
            "last_change",
            "last_change_reason",
            "last_error"
        ]
    );
    assert_eq!(nodes.column("role"), [Some("primary".to_string())]);
    let routes = console.query("SHOW ROUTES").await;
    assert_eq!(
        routes.column("listener"),
        [Some("rw".to_string()), Some("ro".to_string())]
    );
    assert_eq!(
        routes.column("route"),
        [Some("primary".to_string()), Some("replica".to_string())]
    );
    assert_eq!(routes.column("node")[0].as_deref(), Some("node1"));
    let help = console.query("SHOW HELP").await;
    assert_eq!((help.tag.as_deref(), help.error), (Some("SHOW"), None));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_unsupported_commands_get_clear_errors() {
    let (proxy, _api) = console_proxy("").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let mut console = RawConsole::login(rw).await;
    for (sql, code) in [
        ("select 1", "42601"),
        ("SHOW FOO", "42601"),
        ("SUSPEND", "0A000"),
        ("SET default_pool_size = 5", "0A000"),
        ("RESUME", "55000"),
        ("KILL_CLIENT 999999", "42704"),
    ] {
        let reply = console.query(sql).await;
        let (got, message) = reply.error.unwrap_or_else(|| panic!("{sql}: no error"));
        assert_eq!(got, code, "{sql}: {message}");
    }
    // The session goes on after errors.
    assert_eq!(console.query("SHOW VERSION").await.rows.len(), 1);
    // An empty query is answered as PostgreSQL does.
    let empty = console.query("").await;
    assert_eq!((empty.tag, empty.error), (None, None));
}

#[tokio::test(flavor = "multi_thread")]
async fn only_console_users_open_it_and_stats_users_only_read() {
    let (proxy, _api) = console_proxy("").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    // A user not listed: refused after authenticating.
    let refused = try_connect_db(rw, "app_trust", "trust_pw", "pgbouncer")
        .await
        .expect_err("not a console user");
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("42501"),
        "{}",
        describe(&refused)
    );
    // A wrong password is a wrong password, console or not.
    let refused = try_connect_db(rw, "app", "nope", "switchyard")
        .await
        .expect_err("bad password");
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("28P01")
    );
    // A stats user reads but may not change anything.
    let stats = try_connect_db(rw, "app_clear", "app_clear_pw", "pgbouncer")
        .await
        .expect("stats user");
    stats.simple_query("SHOW POOLS").await.expect("SHOW works");
    let error = stats
        .simple_query("PAUSE")
        .await
        .expect_err("PAUSE needs admin");
    assert_eq!(error.as_db_error().map(|e| e.code().code()), Some("42501"));
    // The alias works and tokio-postgres's simple_query reads the rows.
    let admin = try_connect_db(rw, "app", "app_pw", "switchyard")
        .await
        .expect("admin");
    let rows = admin.simple_query("SHOW LISTS").await.expect("SHOW LISTS");
    let lists: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(lists[..3], ["databases", "users", "pools"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_client_ends_that_client_and_disable_refuses_new_ones() {
    let (proxy, _api) = console_proxy("pool: { mode: transaction }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let victim = connect(rw, "app", "app_pw").await;
    victim.simple_query("select 1").await.expect("select");
    let mut console = RawConsole::login(rw).await;
    let id = console.query("SHOW CLIENTS").await.column("id")[0]
        .clone()
        .expect("id");
    let reply = console.query(&format!("KILL_CLIENT {id}")).await;
    assert_eq!(
        (reply.tag.as_deref(), reply.error),
        (Some("KILL_CLIENT"), None)
    );
    let error = within(
        10,
        "the killed client notices",
        victim.simple_query("select 1"),
    )
    .await
    .expect_err("killed");
    assert!(
        error.is_closed()
            || error
                .as_db_error()
                .is_some_and(|e| e.code().code() == "57P01"),
        "{}",
        describe(&error)
    );
    eventually(
        Duration::from_secs(5),
        "the killed client leaves SHOW CLIENTS",
        || async {
            RawConsole::login(rw)
                .await
                .query("SHOW CLIENTS")
                .await
                .rows
                .is_empty()
        },
    )
    .await;

    assert_eq!(
        console.query("DISABLE appdb").await.tag.as_deref(),
        Some("DISABLE")
    );
    let refused = try_connect(rw, "app", "app_pw")
        .await
        .expect_err("disabled");
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("57P03")
    );
    let databases = console.query("SHOW DATABASES").await;
    let row = databases
        .column("name")
        .iter()
        .position(|n| n.as_deref() == Some("appdb"))
        .expect("appdb");
    assert_eq!(databases.column("disabled")[row].as_deref(), Some("1"));
    assert_eq!(
        console.query("ENABLE appdb").await.tag.as_deref(),
        Some("ENABLE")
    );
    connect(rw, "app", "app_pw")
        .await
        .simple_query("select 1")
        .await
        .expect("enabled again");
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnect_closes_idle_server_connections() {
    let (proxy, _api) = console_proxy("pool: { mode: transaction }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let app = connect(rw, "app", "app_pw").await;
    let before = server_pid_via(&app).await;
    let mut console = RawConsole::login(rw).await;
    assert_eq!(
        console.query("RECONNECT appdb").await.tag.as_deref(),
        Some("RECONNECT")
    );
    assert_eq!(
        console.query("WAIT_CLOSE appdb").await.tag.as_deref(),
        Some("WAIT_CLOSE")
    );
    let after = server_pid_via(&app).await;
    assert_ne!(before, after, "a new server connection after RECONNECT");
    let reply = console.query("RELOAD").await;
    // Started without a file: the reload is refused with the reason, clearly.
    assert_eq!(reply.error.map(|e| e.0).as_deref(), Some("F0000"));
}

async fn server_pid_via(client: &tokio_postgres::Client) -> String {
    simple_value(client, "select pg_backend_pid()::text", "app")
        .await
        .expect("pid")
}

/// Connects to `db` (not appdb) through `addr`.
async fn try_connect_db(
    addr: std::net::SocketAddr,
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&conn_str(addr, user, password, db), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}
