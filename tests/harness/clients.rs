//! Owns the client side of the tests above the wire protocol: tokio-postgres
//! connections through a proxy listener (as `app` to `appdb` by default, with
//! chosen startup parameters, or keeping the connection task to kill it) or
//! straight to a PostgreSQL server, a readable form of driver errors, one-value
//! queries (`simple_value`, `show`, `server_port`, `backend_pid`), the backend key a
//! client was given (`cancel_key`), and psql as superuser called from async code
//! (`su_sql`, `su_count`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;
use tokio_postgres::{CancelToken, Client, NoTls, SimpleQueryMessage};

use super::pg;
use super::wait::blocking;

/// libpq-style connection string through a listener.
pub fn conn_str(addr: SocketAddr, user: &str, password: &str, db: &str) -> String {
    format!(
        "host={} port={} user={user} password={password} dbname={db} connect_timeout=10",
        addr.ip(),
        addr.port()
    )
}

/// A readable description of a driver error (the DbError's fields if any).
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "{} {}: {} (detail: {:?}, hint: {:?})",
            db.severity(),
            db.code().code(),
            db.message(),
            db.detail(),
            db.hint()
        ),
        None => format!("{error:?}"),
    }
}

/// Connects as `user` to `appdb` through `addr`; panics with the server's error
/// spelled out.
pub async fn connect(addr: SocketAddr, user: &str, password: &str) -> Client {
    try_connect(addr, user, password)
        .await
        .unwrap_or_else(|e| panic!("connect as {user} via {addr}: {}", describe(&e)))
}

pub async fn try_connect(
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&conn_str(addr, user, password, "appdb"), NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Connects as `app` through `addr` and keeps the connection task's handle, so the
/// test can kill the client's socket abruptly.
pub async fn connect_killable(addr: SocketAddr) -> (Client, JoinHandle<()>) {
    let (client, connection) =
        tokio_postgres::connect(&conn_str(addr, "app", "app_pw", "appdb"), NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect via {addr}: {}", describe(&e)));
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

/// Connects as `app` through `addr` with the given startup parameters.
pub async fn connect_with(
    addr: SocketAddr,
    application_name: Option<&str>,
    options: Option<&str>,
) -> Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user("app")
        .password("app_pw")
        .dbname("appdb")
        .connect_timeout(Duration::from_secs(10));
    if let Some(name) = application_name {
        config.application_name(name);
    }
    if let Some(options) = options {
        config.options(options);
    }
    let (client, connection) = config.connect(NoTls).await.unwrap_or_else(|e| {
        panic!(
            "connect via {addr} (application_name {application_name:?}, options {options:?}): {}",
            describe(&e)
        )
    });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A tokio-postgres connection as `app` straight to a PostgreSQL node (not through
/// the proxy), for setting up and checking test data.
pub async fn direct(pg_port: u16) -> Client {
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={pg_port} user=app password=app_pw dbname=appdb connect_timeout=10"
        ),
        NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("direct connection to port {pg_port}: {}", describe(&e)));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The port of the PostgreSQL server a client ended up on.
pub async fn server_port(client: &Client) -> u16 {
    let row = client
        .query_one("select inet_server_port()", &[])
        .await
        .expect("inet_server_port");
    row.get::<_, i32>(0) as u16
}

/// The pid of the server backend a client's statement ran on.
pub async fn backend_pid(client: &Client, who: &str) -> i32 {
    client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap_or_else(|e| panic!("{who}: select pg_backend_pid(): {}", describe(&e)))
        .get(0)
}

/// The backend key (BackendKeyData: pid, secret) a client was given at login, as
/// its cancel token carries it: read from the CancelRequest the token writes into
/// an in-memory stream.
pub async fn cancel_key(token: &CancelToken) -> (i32, [u8; 4]) {
    let (ours, mut theirs) = tokio::io::duplex(64);
    let sender = tokio::spawn({
        let token = token.clone();
        async move { token.cancel_query_raw(ours, NoTls).await }
    });
    let mut request = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(5), theirs.read_exact(&mut request))
        .await
        .expect("cancel request written in time")
        .expect("16-byte cancel request");
    drop(theirs);
    let _ = tokio::time::timeout(Duration::from_secs(5), sender).await;
    let pid = i32::from_be_bytes([request[8], request[9], request[10], request[11]]);
    (pid, [request[12], request[13], request[14], request[15]])
}

/// First column of the first row of a simple query (None for SQL NULL).
pub async fn simple_value(client: &Client, sql: &str, who: &str) -> Option<String> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{who}: {sql}: {}", describe(&e)));
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{who}: {sql}: no row"))
}

/// `SHOW setting` as the client sees it.
pub async fn show(client: &Client, setting: &str, who: &str) -> String {
    simple_value(client, &format!("show {setting}"), who)
        .await
        .unwrap_or_default()
}

/// psql as superuser in database `postgres` on the server at `pg_port`.
pub async fn su_sql(pg_port: u16, sql: &str) -> String {
    let owned = sql.to_string();
    blocking(move || {
        pg::try_psql(
            pg_port,
            pg::SUPERUSER,
            pg::SUPERUSER_PASSWORD,
            "postgres",
            &[&owned],
        )
    })
    .await
    .unwrap_or_else(|e| panic!("superuser psql failed: {e}\nSQL: {sql}"))
}

/// [`su_sql`] of a query that returns one number.
pub async fn su_count(pg_port: u16, sql: &str) -> i64 {
    let out = su_sql(pg_port, sql).await;
    out.parse()
        .unwrap_or_else(|e| panic!("not a count: {out:?} ({e})\nSQL: {sql}"))
}
