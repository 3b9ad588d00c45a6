//! The demo's PostgreSQL cluster in a temporary directory: a primary (initdb with
//! SCRAM passwords, a demo user and database, a replication role, a probe role) and
//! streaming replicas (`pg_basebackup -R`) on free loopback ports, all run as the
//! [`RunAs`] user. Also what an operator does to it in a failover (stop, promote,
//! repoint a replica) and its teardown, which runs on drop too, so an error or a
//! signal never leaves servers or files behind.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use switchyard::auth::stored::Credential;
use switchyard::config::TlsPolicy;

use rand::distributions::Alphanumeric;
use rand::Rng;

use switchyard::server::{self, LoginRequest, ServerConnection};

use super::postgres::{self, PgBin, RunAs};
use super::DemoError;

/// The demo's application login; shown to the user, so deliberately trivial.
pub const DEMO_USER: &str = "demo";
pub const DEMO_PASSWORD: &str = "demo";
pub const DEMO_DB: &str = "demo";
/// The role Switchyard's SQL probe logs in as: no privileges beyond LOGIN.
pub const PROBE_USER: &str = "switchyard_probe";
const SUPERUSER: &str = "postgres";
const REPLICATION_USER: &str = "replicator";

/// Bounds initdb and pg_basebackup; pg_ctl's own waits are bounded by `-t`.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
const PG_CTL_WAIT: &str = "60";
const SQL_TIMEOUT: Duration = Duration::from_secs(15);

/// One row's columns in text format; `None` for NULL.
pub type Row = Vec<Option<String>>;

/// One PostgreSQL server of the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub port: u16,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Node {
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

pub struct Cluster {
    pub bin: PgBin,
    pub run_as: RunAs,
    /// The temporary directory holding everything; removed at teardown.
    pub base: PathBuf,
    /// Node 0 is the first primary. Only nodes whose server may have been started.
    pub nodes: Vec<Node>,
    superuser_password: String,
    replication_password: String,
    pub probe_password: String,
    torn_down: bool,
}

fn random_password() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

fn setup_error(what: &str, e: impl std::fmt::Display) -> DemoError {
    DemoError::Setup(format!("{what}: {e}"))
}

/// Parses a PostgreSQL LSN written `X/Y` (two hexadecimal halves) into a byte offset.
fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.trim().split_once('/')?;
    // from_str_radix alone would accept a sign ("+1").
    let hex = |part: &str| {
        if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(part, 16).ok()
    };
    Some(u64::from(hex(high)?) << 32 | u64::from(hex(low)?))
}

/// `n` distinct free ports on 127.0.0.1 (held open together while choosing, so
/// they differ; a server binds each a moment later).
pub fn free_ports(n: usize) -> Result<Vec<u16>, DemoError> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| setup_error("cannot find a free port on 127.0.0.1", e))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| setup_error("cannot find a free port on 127.0.0.1", e))
}

fn append(path: &Path, text: &str) -> Result<(), DemoError> {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| setup_error(&format!("cannot write {}", path.display()), e))
}

impl Cluster {
    /// An empty cluster: just its temporary directory, owned by the server user.
    pub fn new(bin: PgBin, run_as: RunAs) -> Result<Cluster, DemoError> {
        let base = std::env::temp_dir().join(format!(
            "switchyard-demo-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir(&base)
            .map_err(|e| setup_error(&format!("cannot create {}", base.display()), e))?;
        let cluster = Cluster {
            bin,
            run_as,
            base,
            nodes: Vec::new(),
            superuser_password: random_password(),
            replication_password: random_password(),
            probe_password: random_password(),
            torn_down: false,
        };
        fs::set_permissions(&cluster.base, fs::Permissions::from_mode(0o700))
            .map_err(|e| setup_error("cannot restrict the demo directory", e))?;
        cluster.run_as.give(&cluster.base)?;
        Ok(cluster)
    }

    fn pg_command(&self, program: &str) -> std::process::Command {
        self.run_as.command(&self.bin.path(program), &self.base)
    }

    fn node_at(&self, name: &str, port: u16) -> Node {
        Node {
            name: name.to_string(),
            port,
            dir: self.base.join(name),
            log: self.base.join(format!("{name}.log")),
        }
    }

    /// Builds a primary and `replicas` streaming replicas, named node1, node2, ...
    /// `say` reports progress.
    pub async fn build(&mut self, replicas: usize, say: &dyn Fn(&str)) -> Result<(), DemoError> {
        let ports = free_ports(replicas + 1)?;
        say(&format!("initdb node1 (primary, port {})", ports[0]));
        self.init_primary(ports[0]).await?;
        self.start(0).await?;
        self.create_roles().await?;
        for (i, &port) in ports.iter().enumerate().skip(1) {
            let name = format!("node{}", i + 1);
            say(&format!("pg_basebackup {name} (replica, port {port})"));
            self.clone_replica(&name, port).await?;
            self.start(i).await?;
        }
        say("waiting for the replicas to stream");
        let names: Vec<String> = self.nodes[1..].iter().map(|n| n.name.clone()).collect();
        if !self
            .wait_streaming(0, &names, Duration::from_secs(60))
            .await
        {
            return Err(DemoError::Setup(format!(
                "the replicas did not start streaming within 60 s; see the logs in {}",
                self.base.display()
            )));
        }
        Ok(())
    }

    async fn init_primary(&mut self, port: u16) -> Result<(), DemoError> {
        let node = self.node_at("node1", port);
        let pwfile = self.base.join("superuser.pw");
        fs::write(&pwfile, format!("{}\n", self.superuser_password))
            .and_then(|_| fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600)))
            .map_err(|e| setup_error("cannot write the password file", e))?;
        self.run_as.give(&pwfile)?;
        let mut initdb = self.pg_command("initdb");
        initdb
            .arg("-D")
            .arg(&node.dir)
            .args(["-U", SUPERUSER])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .args(["-E", "UTF8", "--locale=C", "--no-sync"]);
        let result = postgres::run(initdb, "initdb", STEP_TIMEOUT).await;
        let _ = fs::remove_file(&pwfile);
        result?;
        // Replicas copy this file, so it holds what every node needs; each replica
        // then appends its own port and name (the last setting wins).
        let settings = format!(
            "\n# switchyard demo\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{base}'\n\
             cluster_name = 'node1'\n\
             password_encryption = 'scram-sha-256'\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             hot_standby = on\n\
             wal_keep_size = 128MB\n\
             wal_receiver_status_interval = 1s\n\
             fsync = off\n\
             shared_buffers = 32MB\n\
             max_connections = 100\n\
             log_min_messages = warning\n",
            base = self.base.display()
        );
        append(&node.dir.join("postgresql.conf"), &settings)?;
        self.nodes.push(node);
        Ok(())
    }

    async fn clone_replica(&mut self, name: &str, port: u16) -> Result<(), DemoError> {
        let node = self.node_at(name, port);
        let primary_port = self.nodes[0].port.to_string();
        let mut backup = self.pg_command("pg_basebackup");
        backup
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port,
                "-U",
                REPLICATION_USER,
            ])
            .arg("-D")
            .arg(&node.dir)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .env("PGPASSWORD", &self.replication_password);
        postgres::run(backup, &format!("pg_basebackup for {name}"), STEP_TIMEOUT).await?;
        append(
            &node.dir.join("postgresql.conf"),
            &format!("\n# replica {name}\nport = {port}\ncluster_name = '{name}'\n"),
        )?;
        self.nodes.push(node);
        Ok(())
    }

    async fn pg_ctl(&self, i: usize, args: &[&str], what: &str) -> Result<(), DemoError> {
        let node = &self.nodes[i];
        let mut command = self.pg_command("pg_ctl");
        command
            .args(args)
            .arg("-D")
            .arg(&node.dir)
            .args(["-w", "-t", PG_CTL_WAIT, "-s"]);
        postgres::run(command, &format!("{what} {}", node.name), STEP_TIMEOUT)
            .await
            .map(|_| ())
    }

    async fn start(&self, i: usize) -> Result<(), DemoError> {
        let log = self.nodes[i].log.display().to_string();
        self.pg_ctl(i, &["start", "-l", &log], "pg_ctl start").await
    }

    /// Stops node `i` the way a crash would (`pg_ctl stop -m immediate`).
    pub async fn stop_immediate(&self, i: usize) -> Result<(), DemoError> {
        self.pg_ctl(i, &["stop", "-m", "immediate"], "pg_ctl stop")
            .await
    }

    /// `pg_ctl promote`, waiting until the server has left recovery.
    pub async fn promote(&self, i: usize) -> Result<(), DemoError> {
        self.pg_ctl(i, &["promote"], "pg_ctl promote").await
    }

    async fn superuser(&self, i: usize, database: &str) -> Result<ServerConnection, DemoError> {
        let node = &self.nodes[i];
        let login = LoginRequest {
            user: SUPERUSER,
            credential: Credential::Password(&self.superuser_password),
            database,
            params: &[],
            require_auth: Default::default(),
        };
        server::connect(
            &node.name,
            &node.address(),
            &login,
            SQL_TIMEOUT,
            &TlsPolicy::plaintext(),
        )
        .await
        .map_err(|e| setup_error(&format!("connecting to {}", node.name), e))
    }

    /// Runs `sql` on node `i` as the superuser.
    pub async fn execute(&self, i: usize, database: &str, sql: &str) -> Result<(), DemoError> {
        let mut connection = self.superuser(i, database).await?;
        let result = connection.run_internal_query(sql, SQL_TIMEOUT).await;
        connection.say_goodbye();
        result.map_err(|e| setup_error(&format!("on {}", self.nodes[i].name), e))
    }

    /// The first row of `sql` on node `i`, as the superuser.
    pub async fn query(
        &self,
        i: usize,
        database: &str,
        sql: &str,
    ) -> Result<Option<Row>, DemoError> {
        let mut connection = self.superuser(i, database).await?;
        let result = connection.query_row(sql, SQL_TIMEOUT).await;
        connection.say_goodbye();
        result.map_err(|e| setup_error(&format!("on {}", self.nodes[i].name), e))
    }

    async fn create_roles(&self) -> Result<(), DemoError> {
        let roles = format!(
            "CREATE ROLE {REPLICATION_USER} WITH REPLICATION LOGIN PASSWORD '{}'; \
             CREATE ROLE {PROBE_USER} LOGIN PASSWORD '{}'; \
             CREATE ROLE {DEMO_USER} LOGIN PASSWORD '{DEMO_PASSWORD}'",
            self.replication_password, self.probe_password
        );
        self.execute(0, "postgres", &roles).await?;
        self.execute(
            0,
            "postgres",
            &format!("CREATE DATABASE {DEMO_DB} OWNER {DEMO_USER}"),
        )
        .await
    }

    /// How much WAL node `i` has received from its primary, as a byte offset.
    pub async fn received_wal(&self, i: usize) -> Option<u64> {
        let row = self
            .query(i, "postgres", "SELECT pg_last_wal_receive_lsn()::text")
            .await
            .ok()??;
        row.first()?.as_deref().and_then(parse_lsn)
    }

    /// Points replica `i` at `primary`, as an operator would after a failover:
    /// `primary_conninfo` is reloadable (PostgreSQL 13+), and the default
    /// `recovery_target_timeline = latest` follows the new timeline.
    pub async fn follow(&self, i: usize, primary: usize) -> Result<(), DemoError> {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={REPLICATION_USER} password={} application_name={}",
            self.nodes[primary].port, self.replication_password, self.nodes[i].name
        );
        self.execute(
            i,
            "postgres",
            &format!("ALTER SYSTEM SET primary_conninfo TO '{conninfo}'"),
        )
        .await?;
        self.execute(i, "postgres", "SELECT pg_reload_conf()").await
    }

    /// Waits until `primary` shows every one of `names` as a streaming replica.
    pub async fn wait_streaming(&self, primary: usize, names: &[String], within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let sql = "SELECT string_agg(application_name, ',') FROM pg_stat_replication \
                   WHERE state = 'streaming'";
        loop {
            if let Ok(Some(row)) = self.query(primary, "postgres", sql).await {
                let streaming = row.first().cloned().flatten().unwrap_or_default();
                let listed: Vec<&str> = streaming.split(',').collect();
                if names.iter().all(|n| listed.contains(&n.as_str())) {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every server (`pg_ctl stop -m fast`) and removes the directory.
    /// Returns what went wrong, if anything; safe to call more than once.
    pub fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        // Stop them all at once, then wait for each.
        let stopping: Vec<(String, std::io::Result<std::process::Child>)> = self
            .nodes
            .iter()
            .filter(|node| node.dir.join("postmaster.pid").exists())
            .map(|node| {
                let mut command = self.pg_command("pg_ctl");
                command
                    .args(["stop", "-m", "fast", "-w", "-t", "30", "-s", "-D"])
                    .arg(&node.dir)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
                (node.name.clone(), command.spawn())
            })
            .collect();
        for (name, child) in stopping {
            // A failed stop (say, of a node already stopped the hard way) matters only
            // if the server is still there, which is checked next.
            if let Err(e) = child.and_then(|mut c| c.wait()) {
                tracing::warn!(node = %name, error = %e, "cannot run pg_ctl stop");
            }
        }
        for node in &self.nodes {
            if let Some(pid) = running_postmaster(&node.dir) {
                problems.push(format!(
                    "{} (pid {pid}) is still running; its files are left in {}",
                    node.name,
                    self.base.display()
                ));
            }
        }
        if problems.is_empty() {
            if let Err(e) = fs::remove_dir_all(&self.base) {
                problems.push(format!("cannot remove {}: {e}", self.base.display()));
            }
        }
        problems
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        eprintln!(
            "switchyard demo: stopping PostgreSQL and removing {}",
            self.base.display()
        );
        for problem in self.teardown() {
            eprintln!("switchyard demo: {problem}");
        }
    }
}

/// The pid in `dir/postmaster.pid`, when that process is alive and still the
/// postmaster of `dir` (a stale file's pid may belong to anything by now).
fn running_postmaster(dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let dir = dir.as_os_str().as_encoded_bytes();
    let found = !dir.is_empty() && cmdline.windows(dir.len()).any(|w| w == dir);
    found.then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_as_postgres_writes_them() {
        assert_eq!(parse_lsn("3/148"), Some(0x3_0000_0148));
        assert_eq!(parse_lsn(" 0/0\n"), Some(0));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        for bad in ["", "3", "3/", "/1", "+3/1", "3/-1", "3/1G", "100000000/0"] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }
}
