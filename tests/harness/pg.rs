//! Owns the real-PostgreSQL part of the harness: a primary plus streaming
//! replicas (initdb + pg_basebackup) on loopback ports, the test roles and
//! database they contain, and helpers to promote / stop / restart nodes, wait
//! for a server to accept connections and run SQL through psql; the cluster
//! shared by a test binary (`shared_cluster` from async tests). Processes are
//! supervised by `proc.rs`, so they die (and their files are removed) with the
//! test process.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::proc::{self, Janitor, Supervised, WAIT_TIMEOUT};

pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "postgres_pw";
pub const REPLICATION_USER: &str = "replicator";
pub const REPLICATION_PASSWORD: &str = "replicator_pw";
/// SCRAM-SHA-256 user, owner of [`APP_DB`].
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app_pw";
/// Password stored as MD5, pg_hba method `md5`.
pub const APP_MD5_USER: &str = "app_md5";
pub const APP_MD5_PASSWORD: &str = "app_md5_pw";
/// pg_hba method `password` (cleartext on the wire).
pub const APP_CLEAR_USER: &str = "app_clear";
pub const APP_CLEAR_PASSWORD: &str = "app_clear_pw";
/// pg_hba method `trust` (no password).
pub const APP_TRUST_USER: &str = "app_trust";
pub const APP_DB: &str = "appdb";

/// pg_hba.conf of every node (replicas inherit it via pg_basebackup).
pub const PG_HBA: &str = "\
# switchyard test harness
local   all          all                        trust
host    all          app_md5      127.0.0.1/32  md5
host    all          app_clear    127.0.0.1/32  password
host    all          app_trust    127.0.0.1/32  trust
host    all          all          127.0.0.1/32  scram-sha-256
host    replication  replicator   127.0.0.1/32  scram-sha-256
";

/// Directory of the PostgreSQL server binaries: `$SWITCHYARD_PG_BINDIR`,
/// else `/usr/lib/postgresql/15/bin`, else `pg_config --bindir`.
pub fn pg_bindir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("SWITCHYARD_PG_BINDIR") {
            return PathBuf::from(d);
        }
        let deb = PathBuf::from("/usr/lib/postgresql/15/bin");
        if deb.join("postgres").exists() {
            return deb;
        }
        let out = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .expect("pg_config --bindir (is PostgreSQL installed?)");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// Path of the PostgreSQL binary `name` (e.g. "psql").
pub fn pg_bin(name: &str) -> String {
    pg_bindir().join(name).to_string_lossy().into_owned()
}

/// Run `psql -XAtq` with each of `sqls` as a separate `-c` against
/// 127.0.0.1:`port` as `user`/`password`; returns trimmed stdout or stderr.
pub fn try_psql(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    sqls: &[&str],
) -> Result<String, String> {
    let mut cmd = Command::new(pg_bin("psql"));
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", user, "-d", db]);
    for sql in sqls {
        cmd.args(["-c", sql]);
    }
    cmd.env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .env("PGSSLMODE", "disable")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .stdin(Stdio::null());
    match cmd.output() {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
        Ok(out) => Err(format!(
            "psql exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run psql: {e}")),
    }
}

/// Polls until the server on `port` answers `SELECT 1` to the superuser, or panics
/// after `timeout` with `what` and `context()` (e.g. log tails).
pub fn wait_accepting(port: u16, what: &str, timeout: Duration, context: impl FnOnce() -> String) {
    proc::wait_for(
        what,
        timeout,
        || {
            try_psql(
                port,
                SUPERUSER,
                SUPERUSER_PASSWORD,
                "postgres",
                &["SELECT 1"],
            )
            .ok()
        },
        context,
    );
}

/// [`PgCluster::shared`] called from async code.
pub async fn shared_cluster() -> &'static PgCluster {
    super::wait::blocking(PgCluster::shared).await
}

/// SQL creating the test roles (not the database; see [`create_app_db`]).
/// Does not touch the superuser or the replication role.
pub const APP_ROLES_SQL: &str = "\
CREATE ROLE app LOGIN PASSWORD 'app_pw';
SET password_encryption = 'md5';
CREATE ROLE app_md5 LOGIN PASSWORD 'app_md5_pw';
RESET password_encryption;
CREATE ROLE app_clear LOGIN PASSWORD 'app_clear_pw';
CREATE ROLE app_trust LOGIN;";

/// Create the four app roles and `appdb` (owned by `app`, all app users may
/// create tables in its public schema) through 127.0.0.1:`port` as superuser.
pub fn create_app_db(port: u16) {
    let su = |db: &str, sqls: &[&str]| {
        try_psql(port, SUPERUSER, SUPERUSER_PASSWORD, db, sqls)
            .unwrap_or_else(|e| panic!("creating app roles/db on port {port}: {e}"))
    };
    su(
        "postgres",
        &[APP_ROLES_SQL, "CREATE DATABASE appdb OWNER app"],
    );
    su(
        APP_DB,
        &["GRANT USAGE, CREATE ON SCHEMA public TO app, app_md5, app_clear, app_trust"],
    );
}

/// One PostgreSQL server of a [`PgCluster`].
pub struct PgNode {
    pub name: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    proc: Mutex<Supervised>,
    stopped: Mutex<bool>,
}

impl PgNode {
    fn supervised(&self) -> MutexGuard<'_, Supervised> {
        self.proc.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A primary (node 0) plus streaming replicas on 127.0.0.1.
pub struct PgCluster {
    pub nodes: Vec<PgNode>,
    /// Temp dir holding data dirs, logs and unix sockets.
    pub base_dir: PathBuf,
    janitor: Option<Janitor>,
}

fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn start_postgres(data_dir: &Path, log: &Path) -> Supervised {
    Supervised::spawn(
        &pg_bin("postgres"),
        &["-D", &data_dir.to_string_lossy()],
        true,
        log,
        Some(data_dir),
    )
}

impl PgCluster {
    /// Start a primary and `replicas` streaming replicas (blocking). Returns
    /// when every node accepts connections, replicas are in recovery and
    /// the primary sees all of them streaming.
    pub fn start(replicas: usize) -> PgCluster {
        let t0 = Instant::now();
        let base = proc::postgres_temp_dir("switchyard-pg-");
        let janitor = Janitor::new(&base);
        let base_s = base.to_string_lossy().into_owned();

        // --- primary ---
        let name = "node0".to_string();
        let port = proc::free_port();
        let data_dir = base.join(&name);
        let log_path = base.join(format!("{name}.log"));
        let pwfile = base.join("pwfile");
        fs::write(&pwfile, format!("{SUPERUSER_PASSWORD}\n")).expect("write pwfile");
        proc::run_ok(
            proc::command_as_postgres(&pg_bin("initdb")).args([
                "-D",
                &data_dir.to_string_lossy(),
                "-U",
                SUPERUSER,
                &format!("--pwfile={}", pwfile.display()),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]),
            "initdb",
        );
        let _ = fs::remove_file(&pwfile);
        append(
            &data_dir.join("postgresql.conf"),
            &format!(
                "\n# switchyard test harness\n\
                 listen_addresses = '127.0.0.1'\n\
                 port = {port}\n\
                 unix_socket_directories = '{base_s}'\n\
                 cluster_name = '{name}'\n\
                 wal_level = replica\n\
                 max_wal_senders = 10\n\
                 max_replication_slots = 10\n\
                 hot_standby = on\n\
                 fsync = off\n\
                 shared_buffers = 32MB\n\
                 max_connections = 200\n\
                 wal_keep_size = 64MB\n\
                 wal_receiver_status_interval = 1s\n\
                 log_min_messages = warning\n\
                 log_line_prefix = '%m [%p] %q%u@%d '\n"
            ),
        );
        fs::write(data_dir.join("pg_hba.conf"), PG_HBA).expect("write pg_hba.conf");
        let primary = PgNode {
            proc: Mutex::new(start_postgres(&data_dir, &log_path)),
            name,
            port,
            data_dir,
            log_path,
            stopped: Mutex::new(false),
        };
        let mut cluster = PgCluster {
            nodes: vec![primary],
            base_dir: base.clone(),
            janitor: Some(janitor),
        };
        cluster.wait_accepting(0);
        cluster.psql(
            0,
            &format!(
                "CREATE ROLE {REPLICATION_USER} WITH REPLICATION LOGIN PASSWORD '{REPLICATION_PASSWORD}'"
            ),
        );
        create_app_db(port);
        let t_primary = t0.elapsed();

        // --- replicas (in parallel) ---
        let new_nodes: Vec<PgNode> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..=replicas)
                .map(|i| {
                    let base = &base;
                    let base_s = &base_s;
                    s.spawn(move || {
                        let name = format!("node{i}");
                        let rport = proc::free_port();
                        let data_dir = base.join(&name);
                        let log_path = base.join(format!("{name}.log"));
                        proc::run_ok(
                            proc::command_as_postgres(&pg_bin("pg_basebackup"))
                                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                                .args(["-U", REPLICATION_USER, "-D"])
                                .arg(&data_dir)
                                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
                                .env("PGPASSWORD", REPLICATION_PASSWORD)
                                .env("PGSSLMODE", "disable"),
                            "pg_basebackup",
                        );
                        append(
                            &data_dir.join("postgresql.conf"),
                            &format!(
                                "\n# replica {name}\nport = {rport}\n\
                                 cluster_name = '{name}'\n\
                                 unix_socket_directories = '{base_s}'\n"
                            ),
                        );
                        PgNode {
                            proc: Mutex::new(start_postgres(&data_dir, &log_path)),
                            name,
                            port: rport,
                            data_dir,
                            log_path,
                            stopped: Mutex::new(false),
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        cluster.nodes.extend(new_nodes);
        for i in 1..cluster.nodes.len() {
            cluster.wait_accepting(i);
            assert!(
                cluster.is_in_recovery(i),
                "replica {i} is not in recovery{}",
                cluster.log_tails()
            );
        }
        cluster.wait_replicas_streaming();
        eprintln!(
            "[harness] PgCluster::start({replicas}): primary ready in {:.2?}, all ready in {:.2?} ({})",
            t_primary,
            t0.elapsed(),
            base.display()
        );
        cluster
    }

    /// One 1-primary-2-replica cluster per test binary, started on first use
    /// and stopped/removed by the `proc.rs` wrappers when the process exits.
    /// Tests sharing it must not promote/stop its nodes.
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(|| PgCluster::start(2))
    }

    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// A tokio-postgres / libpq key=value connection string for node `i`.
    pub fn conn_str(&self, i: usize, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db} connect_timeout=10",
            self.port(i)
        )
    }

    /// Tails of all node logs (for panic messages).
    pub fn log_tails(&self) -> String {
        let logs: Vec<&Path> = self.nodes.iter().map(|n| n.log_path.as_path()).collect();
        proc::tails(&logs, 40)
    }

    fn wait_accepting(&self, i: usize) {
        let port = self.port(i);
        wait_accepting(
            port,
            &format!("{} (port {port}) to accept connections", self.nodes[i].name),
            WAIT_TIMEOUT,
            || self.log_tails(),
        );
    }

    /// `psql -XAtqc sql` as superuser against node `i`; trimmed stdout.
    /// Panics with psql's stderr (and log tails) on failure.
    pub fn psql(&self, i: usize, sql: &str) -> String {
        self.psql_db(i, "postgres", sql)
    }

    /// Like [`PgCluster::psql`] but in database `db`.
    pub fn psql_db(&self, i: usize, db: &str, sql: &str) -> String {
        try_psql(self.port(i), SUPERUSER, SUPERUSER_PASSWORD, db, &[sql]).unwrap_or_else(|e| {
            panic!(
                "psql on {} failed: {e}\nSQL: {sql}{}",
                self.nodes[i].name,
                proc::tail(&self.nodes[i].log_path, 40)
            )
        })
    }

    pub fn is_in_recovery(&self, i: usize) -> bool {
        self.psql(i, "SELECT pg_is_in_recovery()") == "t"
    }

    /// Promote node `i` (pg_ctl promote) and wait until it leaves recovery.
    pub fn promote(&self, i: usize) {
        let node = &self.nodes[i];
        proc::run_ok(
            proc::command_as_postgres(&pg_bin("pg_ctl"))
                .args(["promote", "-w", "-t", "30", "-D"])
                .arg(&node.data_dir),
            "pg_ctl promote",
        );
        proc::wait_for(
            &format!("{} to leave recovery after promote", node.name),
            WAIT_TIMEOUT,
            || (!self.is_in_recovery(i)).then_some(()),
            || proc::tail(&node.log_path, 40),
        );
    }

    /// Fast-stop node `i` (SIGINT) and wait until it is gone; data is kept.
    pub fn stop(&self, i: usize) {
        let node = &self.nodes[i];
        node.supervised().stop();
        *node.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    /// SIGKILL node `i`'s postmaster (crash); restart it with [`PgCluster::restart`].
    pub fn kill_hard(&self, i: usize) {
        let node = &self.nodes[i];
        node.supervised().kill_hard();
        *node.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    /// Start node `i` again (same data dir and port) and wait until it
    /// accepts connections.
    pub fn restart(&self, i: usize) {
        let node = &self.nodes[i];
        {
            let mut sup = node.supervised();
            sup.start();
        }
        self.wait_accepting(i);
        *node.stopped.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }

    /// Make node `i` listen on `address` too (besides 127.0.0.1) and accept
    /// SCRAM logins from `cidr`, then restart it: for clients in network
    /// namespaces, which cannot reach this namespace's loopback. `address` must
    /// already be configured on an interface.
    pub fn listen_also(&self, i: usize, address: &str, cidr: &str) {
        let node = &self.nodes[i];
        // A later line wins in postgresql.conf, so appending overrides the harness's.
        append(
            &node.data_dir.join("postgresql.conf"),
            &format!("\nlisten_addresses = '127.0.0.1,{address}'\n"),
        );
        append(
            &node.data_dir.join("pg_hba.conf"),
            &format!("host    all          all          {cidr}  scram-sha-256\n"),
        );
        self.restart(i);
    }

    /// Wait until node 0's pg_stat_replication shows every replica that was
    /// not stopped via [`PgCluster::stop`] / [`PgCluster::kill_hard`] as
    /// `streaming` (matched by application_name = node name).
    pub fn wait_replicas_streaming(&self) {
        let expected: Vec<String> = self.nodes[1..]
            .iter()
            .filter(|n| !*n.stopped.lock().unwrap_or_else(|e| e.into_inner()))
            .map(|n| n.name.clone())
            .collect();
        proc::wait_for(
            &format!("replicas {expected:?} to be streaming from node0"),
            WAIT_TIMEOUT,
            || {
                let out = try_psql(
                    self.port(0),
                    SUPERUSER,
                    SUPERUSER_PASSWORD,
                    "postgres",
                    &["SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"],
                )
                .ok()?;
                let streaming: Vec<&str> = out.lines().map(str::trim).collect();
                expected
                    .iter()
                    .all(|n| streaming.contains(&n.as_str()))
                    .then_some(())
            },
            || self.log_tails(),
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Signal every node first, then wait, so shutdowns overlap.
        for n in &self.nodes {
            n.supervised().begin_shutdown();
        }
        for n in &self.nodes {
            n.supervised().wait_exit(Duration::from_secs(15));
        }
        // Janitor removes the base dir once all wrappers are gone.
        self.janitor.take();
    }
}
