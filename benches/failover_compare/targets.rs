//! The three things the failover benchmark writes through, each started fresh for a
//! run in front of the Patroni cluster: Switchyard (its release binary, transaction
//! pooling), HAProxy configured as the Patroni guides do, and PgBouncer in front of
//! that HAProxy. Owns their configuration files and the check that a target routes
//! to the leader before the load starts; knows nothing about the load itself.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::patroni::PatroniCluster;
use crate::harness::proc::{self, Supervised};

/// Switchyard's health checks in the benchmark: what the README recommends for
/// failover (`interval: 500ms`, `rise: 2`), not the tests' 100 ms.
pub const SWITCHYARD_HEALTH: &str = "{ interval: 500ms, timeout: 1s, rise: 2, fall: 3 }";
/// Server connections per pool, for Switchyard and PgBouncer alike.
pub const POOL_SIZE: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Switchyard,
    Haproxy,
    /// PgBouncer (transaction pooling) whose only server is the HAProxy listener.
    Pgbouncer,
}

impl Target {
    pub fn parse(name: &str) -> Option<Target> {
        match name.trim() {
            "switchyard" => Some(Target::Switchyard),
            "haproxy" => Some(Target::Haproxy),
            "pgbouncer" => Some(Target::Pgbouncer),
            _ => None,
        }
    }

    /// Name in the report.
    pub fn label(self) -> &'static str {
        match self {
            Target::Switchyard => "Switchyard",
            Target::Haproxy => "HAProxy",
            Target::Pgbouncer => "PgBouncer → HAProxy",
        }
    }
}

/// A started target: the port clients connect to and its processes, which stop
/// when this is dropped.
pub struct Running {
    pub port: u16,
    /// The configuration files written for it, as (file name, text).
    pub configs: Vec<(String, String)>,
    procs: Vec<Supervised>,
}

impl Running {
    /// Copies each process's log into `dir` under `prefix`, for a look after the run.
    pub fn keep_logs(&self, dir: &Path, prefix: &str) {
        for p in &self.procs {
            let name = p
                .log_path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = fs::copy(p.log_path(), dir.join(format!("{prefix}-{name}")));
        }
    }
}

/// Starts `target` in `dir` (postgres-owned) and waits until fresh connections
/// through it reach the current leader and nothing else.
pub fn start(
    target: Target,
    cluster: &PatroniCluster,
    dir: &Path,
    run: usize,
    haproxy_inter: &str,
    rt: &tokio::runtime::Runtime,
) -> Result<Running, String> {
    let leader = cluster.leader().ok_or("no Patroni leader")?;
    let running = match target {
        Target::Switchyard => start_switchyard(cluster, dir, run)?,
        Target::Haproxy => {
            let haproxy = start_haproxy(cluster, dir, run, haproxy_inter)?;
            rt.block_on(wait_routes_to_leader(haproxy.port, cluster.pg_port(leader)))?;
            haproxy
        }
        Target::Pgbouncer => {
            // PgBouncer keeps its server connections: it must not open any while
            // HAProxy still considers the replicas up (they start as up).
            let mut haproxy = start_haproxy(cluster, dir, run, haproxy_inter)?;
            rt.block_on(wait_routes_to_leader(haproxy.port, cluster.pg_port(leader)))?;
            let mut pgbouncer = start_pgbouncer(haproxy.port, dir, run)?;
            pgbouncer.procs.append(&mut haproxy.procs);
            pgbouncer.configs.append(&mut haproxy.configs);
            pgbouncer
        }
    };
    rt.block_on(wait_routes_to_leader(running.port, cluster.pg_port(leader)))?;
    Ok(running)
}

/// (name, PostgreSQL port, Patroni API port) of every node.
fn nodes(cluster: &PatroniCluster) -> Vec<(String, u16, u16)> {
    (0..3)
        .map(|i| {
            let api = cluster.api_url(i);
            let api_port = api.rsplit(':').next().and_then(|p| p.parse().ok());
            (cluster.name(i), cluster.pg_port(i), api_port.unwrap_or(0))
        })
        .collect()
}

fn switchyard_yaml(nodes: &[(String, u16, u16)], port: u16, admin: u16) -> String {
    let mut yaml = format!(
        "listeners:\n  - {{ name: rw, listen: \"127.0.0.1:{port}\", route: primary }}\n\
         admin: {{ listen: \"127.0.0.1:{admin}\" }}\n\
         cluster:\n  health: {SWITCHYARD_HEALTH}\n  nodes:\n"
    );
    for (name, pg, api) in nodes {
        let _ = writeln!(
            yaml,
            "    - {{ name: {name}, host: 127.0.0.1, port: {pg}, api: \"http://127.0.0.1:{api}\" }}"
        );
    }
    let _ = write!(
        yaml,
        "users:\n  - {{ name: app, password: app_pw }}\n\
         pool: {{ mode: transaction, size: {POOL_SIZE} }}\n\
         failover: {{ hold_timeout: 30s }}\n\
         shutdown_timeout: 1s\n"
    );
    yaml
}

/// HAProxy as the Patroni documentation and most guides set it up for the
/// primary; `inter` is the check interval (the guides' `1s` unless overridden).
fn haproxy_cfg(nodes: &[(String, u16, u16)], port: u16, inter: &str) -> String {
    let mut cfg = format!(
        "global\n    maxconn 100\n\n\
         defaults\n    mode tcp\n    retries 2\n    timeout client 30m\n    timeout connect 4s\n\
         \x20   timeout server 30m\n    timeout check 5s\n\n\
         listen primary\n    bind 127.0.0.1:{port}\n    option httpchk OPTIONS /primary\n\
         \x20   http-check expect status 200\n\
         \x20   default-server inter {inter} fall 3 rise 2 on-marked-down shutdown-sessions\n"
    );
    for (name, pg, api) in nodes {
        let _ = writeln!(
            cfg,
            "    server {name} 127.0.0.1:{pg} maxconn 100 check port {api}"
        );
    }
    cfg
}

/// PgBouncer with its defaults except what the setup needs: transaction pooling,
/// the same pool size as Switchyard's, SCRAM for clients.
fn pgbouncer_ini(port: u16, haproxy: u16, dir: &Path) -> String {
    format!(
        "[databases]\nappdb = host=127.0.0.1 port={haproxy} dbname=appdb\n\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
         auth_type = scram-sha-256\nauth_file = {}\npool_mode = transaction\n\
         default_pool_size = {POOL_SIZE}\nmax_client_conn = 1000\n\
         ignore_startup_parameters = extra_float_digits\n",
        dir.join("userlist.txt").display()
    )
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

fn start_switchyard(cluster: &PatroniCluster, dir: &Path, run: usize) -> Result<Running, String> {
    let (port, admin) = (proc::free_port(), proc::free_port());
    let config = dir.join(format!("switchyard-{run}.yaml"));
    let text = switchyard_yaml(&nodes(cluster), port, admin);
    write(&config, &text)?;
    let config = config.to_string_lossy().into_owned();
    let sy = Supervised::spawn(
        env!("CARGO_BIN_EXE_switchyard"),
        &["run", "--config", &config],
        false,
        &dir.join(format!("switchyard-{run}.log")),
        None,
    );
    let health = format!("http://127.0.0.1:{admin}/health");
    wait(Duration::from_secs(30), || {
        proc::http_get(&health, Duration::from_secs(1)).is_some_and(|(status, _)| status == 200)
    })
    .map_err(|()| log_error("switchyard /health never answered 200", sy.log_path()))?;
    Ok(Running {
        port,
        configs: vec![("switchyard.yaml".to_string(), text)],
        procs: vec![sy],
    })
}

fn start_haproxy(
    cluster: &PatroniCluster,
    dir: &Path,
    run: usize,
    inter: &str,
) -> Result<Running, String> {
    let port = proc::free_port();
    let config = dir.join(format!("haproxy-{run}.cfg"));
    let text = haproxy_cfg(&nodes(cluster), port, inter);
    write(&config, &text)?;
    let check = Command::new("haproxy")
        .args(["-c", "-q", "-f"])
        .arg(&config)
        .output()
        .map_err(|e| format!("run haproxy -c: {e}"))?;
    if !check.status.success() {
        return Err(format!(
            "haproxy rejected its config: {}",
            String::from_utf8_lossy(&check.stderr)
        ));
    }
    let config = config.to_string_lossy().into_owned();
    let haproxy = Supervised::spawn(
        "haproxy",
        &["-db", "-f", &config],
        false,
        &dir.join(format!("haproxy-{run}.log")),
        None,
    );
    Ok(Running {
        port,
        configs: vec![("haproxy.cfg".to_string(), text)],
        procs: vec![haproxy],
    })
}

fn start_pgbouncer(haproxy: u16, dir: &Path, run: usize) -> Result<Running, String> {
    let port = proc::free_port();
    // A plain-text password lets PgBouncer do SCRAM both with clients and with
    // the server.
    write(&dir.join("userlist.txt"), "\"app\" \"app_pw\"\n")?;
    let config: PathBuf = dir.join(format!("pgbouncer-{run}.ini"));
    let text = pgbouncer_ini(port, haproxy, dir);
    write(&config, &text)?;
    let config = config.to_string_lossy().into_owned();
    // PgBouncer refuses to run as root.
    let pgbouncer = Supervised::spawn(
        "pgbouncer",
        &[&config],
        true,
        &dir.join(format!("pgbouncer-{run}.log")),
        None,
    );
    Ok(Running {
        port,
        configs: vec![("pgbouncer.ini".to_string(), text)],
        procs: vec![pgbouncer],
    })
}

fn log_error(what: &str, log: &Path) -> String {
    format!("{what}; its log ends with:\n{}", proc::tail(log, 20))
}

fn wait(timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Waits until 10 fresh connections in a row through `port` reach the server on
/// `leader_port` and find it out of recovery: HAProxy starts every server as up,
/// and only its checks take the replicas out.
async fn wait_routes_to_leader(port: u16, leader_port: u16) -> Result<(), String> {
    let conn_str = format!(
        "host=127.0.0.1 port={port} user=app password=app_pw dbname=appdb connect_timeout=5"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut streak = 0;
    let mut last = String::new();
    while streak < 10 {
        if Instant::now() > deadline {
            return Err(format!(
                "port {port}: no 10 logins in a row on the leader (port {leader_port}) \
                 within 60 s; last: {last}"
            ));
        }
        match where_am_i(&conn_str).await {
            Ok((server, false)) if server == leader_port => {
                streak += 1;
                continue;
            }
            Ok((server, in_recovery)) => {
                last = format!("reached port {server}, in recovery: {in_recovery}");
            }
            Err(e) => last = e.to_string(),
        }
        streak = 0;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

async fn where_am_i(conn_str: &str) -> Result<(u16, bool), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let row = client
        .query_one("select inet_server_port(), pg_is_in_recovery()", &[])
        .await?;
    Ok((row.get::<_, i32>(0) as u16, row.get(1)))
}
