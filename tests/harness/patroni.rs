//! Owns the real Patroni harness: one etcd plus three Patroni-managed
//! PostgreSQL nodes on loopback ports (REST API and PostgreSQL on free
//! ports), with helpers to find the leader, switch over, kill nodes and run
//! SQL; and a one-node variant whose REST API serves HTTPS only and requires a
//! client certificate (`restapi.certfile`/`keyfile`/`cafile`, `verify_client:
//! required`). Every process runs as the `postgres` OS user under `proc.rs`
//! supervision, so it dies (and its files are removed) with the test process.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::pg::{self, pg_bindir, try_psql, SUPERUSER, SUPERUSER_PASSWORD};
use super::proc::{self, http_get, Janitor, SpawnOpts, Supervised};

/// Patroni scope (cluster name) of the test cluster.
pub const SCOPE: &str = "switchyard-test";
pub const REWIND_USER: &str = "rewind_user";
pub const REWIND_PASSWORD: &str = "rewind_pw";
const NODES: usize = 3;
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for a node to bootstrap / clone and start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One Patroni node.
struct Node {
    name: String,
    api_port: u16,
    pg_port: u16,
    data_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    proc: Option<Supervised>,
}

/// Patroni's REST API over HTTPS: its certificate and key, and the CA client
/// certificates must be signed by (`verify_client: required`).
pub struct RestApiTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// etcd + 3 Patroni nodes (node1..node3, indices 0..2) on 127.0.0.1.
pub struct PatroniCluster {
    pub base_dir: PathBuf,
    pub etcd_port: u16,
    nodes: Vec<Node>,
    api_tls: Option<RestApiTls>,
    etcd: Option<Supervised>,
    etcd_log: PathBuf,
    janitor: Option<Janitor>,
}

/// The DCS section used for Patroni: `etcd3` (v3 gRPC gateway) by default;
/// `SWITCHYARD_PATRONI_DCS=etcd` selects the v2 API (etcd started with
/// `--enable-v2`).
fn dcs_kind() -> String {
    std::env::var("SWITCHYARD_PATRONI_DCS").unwrap_or_else(|_| "etcd3".to_string())
}

impl PatroniCluster {
    /// Start etcd, then node1 (waits until it is the leader and creates the
    /// app roles/database on it), then node2 and node3 together; returns when
    /// there is a leader and two streaming replicas.
    pub fn start() -> PatroniCluster {
        let t0 = Instant::now();
        let mut cluster = Self::boot(NODES, |_| None);
        let t_etcd = t0.elapsed();
        cluster.spawn_node(0);
        cluster.wait_leader(0, START_TIMEOUT);
        cluster.wait_pg_ready(0);
        pg::create_app_db(cluster.pg_port(0));
        let t_leader = t0.elapsed();

        cluster.spawn_node(1);
        cluster.spawn_node(2);
        cluster.wait_streaming_replicas(&[1, 2], START_TIMEOUT);
        eprintln!(
            "[harness] PatroniCluster::start ({}): etcd ready in {:.2?}, node1 leader in {:.2?}, \
             2 streaming replicas in {:.2?} ({})",
            dcs_kind(),
            t_etcd,
            t_leader,
            t0.elapsed(),
            cluster.base_dir.display()
        );
        cluster
    }

    /// etcd and one Patroni node whose REST API serves only HTTPS with the files
    /// `tls` writes into the cluster's directory (readable by the postgres user).
    /// Returns once PostgreSQL is up and out of recovery (the REST API is not used
    /// to wait: it wants a client certificate).
    pub fn start_one_with_api_tls(tls: impl FnOnce(&Path) -> RestApiTls) -> PatroniCluster {
        let mut cluster = Self::boot(1, |base| Some(tls(base)));
        cluster.spawn_node(0);
        cluster.wait_pg_ready(0);
        proc::wait_for(
            "node1 to be out of recovery",
            START_TIMEOUT,
            || (cluster.psql(0, "SELECT pg_is_in_recovery()") == "f").then_some(()),
            || cluster.log_tails(),
        );
        pg::create_app_db(cluster.pg_port(0));
        cluster
    }

    /// Starts etcd and writes the configs of `count` nodes (none started yet).
    fn boot(count: usize, api_tls: impl FnOnce(&Path) -> Option<RestApiTls>) -> PatroniCluster {
        let base = proc::postgres_temp_dir("switchyard-patroni-");
        let janitor = Janitor::new(&base);
        let etcd_port = proc::free_port();
        let peer_port = proc::free_port();
        let etcd_dir = base.join("etcd");
        let etcd_log = base.join("etcd.log");
        let client = format!("http://127.0.0.1:{etcd_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut etcd_args = vec![
            "--name".to_string(),
            "default".to_string(),
            "--data-dir".to_string(),
            etcd_dir.to_string_lossy().into_owned(),
            "--listen-client-urls".to_string(),
            client.clone(),
            "--advertise-client-urls".to_string(),
            client.clone(),
            "--listen-peer-urls".to_string(),
            peer.clone(),
            "--initial-advertise-peer-urls".to_string(),
            peer.clone(),
            "--initial-cluster".to_string(),
            format!("default={peer}"),
            "--log-level".to_string(),
            "warn".to_string(),
        ];
        if dcs_kind() == "etcd" {
            etcd_args.push("--enable-v2".to_string());
        }
        let etcd_args: Vec<&str> = etcd_args.iter().map(String::as_str).collect();
        let etcd = Supervised::spawn_with(
            "etcd",
            &etcd_args,
            true,
            &etcd_log,
            Some(&etcd_dir),
            SpawnOpts {
                stop_signal: Some("TERM"),
                ..SpawnOpts::default()
            },
        );

        let api_tls = api_tls(&base);
        let nodes = (1..=count)
            .map(|n| {
                let name = format!("node{n}");
                Node {
                    api_port: proc::free_port(),
                    pg_port: proc::free_port(),
                    data_dir: base.join(&name),
                    config: base.join(format!("{name}.yml")),
                    log: base.join(format!("{name}.log")),
                    name,
                    proc: None,
                }
            })
            .collect();
        let cluster = PatroniCluster {
            base_dir: base,
            etcd_port,
            nodes,
            api_tls,
            etcd: Some(etcd),
            etcd_log,
            janitor: Some(janitor),
        };
        proc::wait_for(
            "etcd to become healthy",
            Duration::from_secs(30),
            || {
                let (st, body) = http_get(&format!("{client}/health"), HTTP_TIMEOUT)?;
                (st == 200 && body.contains("true")).then_some(())
            },
            || cluster.log_tails(),
        );
        for i in 0..count {
            cluster.write_config(i);
        }
        cluster
    }

    fn write_config(&self, i: usize) {
        let n = &self.nodes[i];
        let base = self.base_dir.to_string_lossy();
        let api = format!("127.0.0.1:{}", n.api_port);
        let pgaddr = format!("127.0.0.1:{}", n.pg_port);
        let dcs_key = dcs_kind();
        let cfg = json!({
            "scope": SCOPE,
            "namespace": "/service/",
            "name": n.name,
            "log": {"level": "INFO"},
            "restapi": self.restapi(&api),
            (dcs_key): {"hosts": format!("127.0.0.1:{}", self.etcd_port)},
            "bootstrap": {
                "dcs": {
                    "ttl": 10,
                    "loop_wait": 1,
                    "retry_timeout": 5,
                    "maximum_lag_on_failover": 1048576,
                    "postgresql": {
                        "use_pg_rewind": true,
                        "parameters": {
                            "password_encryption": "scram-sha-256",
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_log_hints": "on",
                            "wal_keep_size": "64MB",
                            "max_connections": 100,
                            "shared_buffers": "32MB",
                            "fsync": "off"
                        }
                    }
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "data-checksums"],
                "pg_hba": [
                    "local all all trust",
                    "host replication replicator 127.0.0.1/32 scram-sha-256",
                    "host all all 127.0.0.1/32 scram-sha-256"
                ]
            },
            "postgresql": {
                "listen": pgaddr,
                "connect_address": pgaddr,
                "data_dir": n.data_dir,
                "bin_dir": pg_bindir(),
                "pgpass": format!("{base}/pgpass{}", i + 1),
                "use_unix_socket": true,
                "authentication": {
                    "superuser": {"username": SUPERUSER, "password": SUPERUSER_PASSWORD},
                    "replication": {
                        "username": pg::REPLICATION_USER,
                        "password": pg::REPLICATION_PASSWORD
                    },
                    "rewind": {"username": REWIND_USER, "password": REWIND_PASSWORD}
                },
                // Patroni writes pg_hba.conf from this on every node. Without it,
                // initdb's own `trust` lines come first and decide, and the proxy
                // (server.require_auth: scram-sha-256 by default) refuses the nodes.
                "pg_hba": [
                    "local all all trust",
                    "host replication replicator 127.0.0.1/32 scram-sha-256",
                    "host all all 127.0.0.1/32 scram-sha-256"
                ],
                "basebackup": [{"checkpoint": "fast"}],
                "parameters": {"unix_socket_directories": base}
            },
            "tags": {"nofailover": false, "noloadbalance": false, "clonefrom": false, "nosync": false}
        });
        // JSON is valid YAML, and keeps quoting right ("on" stays a string).
        let text = serde_json::to_string_pretty(&cfg).expect("serialize patroni config");
        fs::write(&n.config, text).expect("write patroni config");
    }

    /// The `restapi` section: plain HTTP, or HTTPS requiring a client certificate.
    fn restapi(&self, address: &str) -> Value {
        match &self.api_tls {
            None => json!({"listen": address, "connect_address": address}),
            Some(tls) => json!({
                "listen": address,
                "connect_address": address,
                "certfile": tls.cert,
                "keyfile": tls.key,
                "cafile": tls.ca,
                "verify_client": "required"
            }),
        }
    }

    fn spawn_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let config = n.config.to_string_lossy().into_owned();
        n.proc = Some(Supervised::spawn_with(
            "patroni",
            &[&config],
            true,
            &n.log,
            Some(&n.data_dir),
            SpawnOpts {
                // Patroni detaches postgres (setsid): stop it via its pid file.
                extra_pid_file: Some(n.data_dir.join("postmaster.pid")),
                stop_signal: Some("TERM"),
                grace: Some(Duration::from_secs(10)),
                env: vec![("PYTHONUNBUFFERED".to_string(), "1".to_string())],
            },
        ));
    }

    /// Tails of the etcd and Patroni logs (for panic messages).
    pub fn log_tails(&self) -> String {
        let mut logs: Vec<&Path> = vec![self.etcd_log.as_path()];
        logs.extend(self.nodes.iter().map(|n| n.log.as_path()));
        proc::tails(&logs, 40)
    }

    /// "http://127.0.0.1:PORT" of node `i`'s REST API ("https://" with TLS).
    pub fn api_url(&self, i: usize) -> String {
        let scheme = if self.api_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.nodes[i].api_port)
    }

    pub fn pg_port(&self, i: usize) -> u16 {
        self.nodes[i].pg_port
    }

    /// Patroni member name of node `i` ("node1" for i = 0).
    pub fn name(&self, i: usize) -> String {
        self.nodes[i].name.clone()
    }

    /// Patroni config file of node `i` (for patronictl).
    pub fn config_path(&self, i: usize) -> &Path {
        &self.nodes[i].config
    }

    /// etcd client URL.
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// `GET /cluster` from the first node that answers.
    pub fn cluster_json(&self) -> Option<Value> {
        (0..self.nodes.len()).find_map(|i| {
            let (st, body) = http_get(&format!("{}/cluster", self.api_url(i)), HTTP_TIMEOUT)?;
            if st != 200 {
                return None;
            }
            serde_json::from_str(&body).ok()
        })
    }

    fn members(&self) -> Vec<Value> {
        self.cluster_json()
            .and_then(|v| v.get("members").and_then(Value::as_array).cloned())
            .unwrap_or_default()
    }

    /// Index of the current leader according to `/cluster`.
    pub fn leader(&self) -> Option<usize> {
        self.member_with_role(&self.members(), "leader")
    }

    /// Index of the first of `members` (from `/cluster`) with `role`.
    fn member_with_role(&self, members: &[Value], role: &str) -> Option<usize> {
        members
            .iter()
            .find(|m| m["role"] == role)
            .and_then(|m| m["name"].as_str())
            .and_then(|n| self.index_of(n))
    }

    /// Status code of `GET <node i>/<path>` (None when unreachable).
    pub fn api_status(&self, i: usize, path: &str) -> Option<u16> {
        http_get(&format!("{}{}", self.api_url(i), path), HTTP_TIMEOUT).map(|(s, _)| s)
    }

    /// Wait until `/cluster` says node `i` is the leader and its `/primary`
    /// answers 200.
    pub fn wait_leader(&self, i: usize, timeout: Duration) {
        proc::wait_for(
            &format!("{} to be the Patroni leader", self.nodes[i].name),
            timeout,
            || {
                (self.leader() == Some(i) && self.api_status(i, "/primary") == Some(200))
                    .then_some(())
            },
            || format!("\n/cluster: {:?}{}", self.cluster_json(), self.log_tails()),
        );
    }

    fn wait_pg_ready(&self, i: usize) {
        pg::wait_accepting(
            self.pg_port(i),
            &format!("{} postgres to accept connections", self.nodes[i].name),
            START_TIMEOUT,
            || self.log_tails(),
        );
    }

    /// Wait until nodes `replicas` are running replicas in `/cluster`,
    /// answer 200 on `/replica`, and the leader's pg_stat_replication shows
    /// them streaming.
    pub fn wait_streaming_replicas(&self, replicas: &[usize], timeout: Duration) {
        proc::wait_for(
            &format!("replicas {replicas:?} to stream from the leader"),
            timeout,
            || {
                let members = self.members();
                let leader = self.member_with_role(&members, "leader")?;
                for &r in replicas {
                    let m = members.iter().find(|m| m["name"] == self.nodes[r].name)?;
                    let running = m["role"] == "replica"
                        && matches!(m["state"].as_str(), Some("running" | "streaming"));
                    if !running || self.api_status(r, "/replica") != Some(200) {
                        return None;
                    }
                }
                let out = try_psql(
                    self.pg_port(leader),
                    SUPERUSER,
                    SUPERUSER_PASSWORD,
                    "postgres",
                    &["SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"],
                )
                .ok()?;
                let names: Vec<&str> = out.lines().map(str::trim).collect();
                replicas
                    .iter()
                    .all(|&r| names.contains(&self.nodes[r].name.as_str()))
                    .then_some(())
            },
            || format!("\n/cluster: {:?}{}", self.cluster_json(), self.log_tails()),
        );
    }

    /// `patronictl switchover --leader <current> --candidate <node> --force`;
    /// returns when patronictl returns (use [`PatroniCluster::wait_leader`]
    /// to wait for the new leader to be fully up).
    pub fn switchover(&self, candidate: usize) {
        let current = self
            .leader()
            .unwrap_or_else(|| panic!("switchover: no leader{}", self.log_tails()));
        let cfg = self.nodes[candidate].config.clone();
        let out = Command::new("patronictl")
            .arg("-c")
            .arg(&cfg)
            .args(["switchover", "--leader", &self.name(current)])
            .args(["--candidate", &self.name(candidate), "--force"])
            .stdin(Stdio::null())
            .output()
            .expect("run patronictl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains("Successfully switched over") {
            panic!(
                "patronictl switchover to {} failed ({}):\n{stdout}\n{}{}",
                self.name(candidate),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.log_tails()
            );
        }
    }

    /// `patronictl edit-config --set key=value ... --force`: changes the dynamic
    /// configuration in the DCS, which every member applies within a loop_wait.
    pub fn edit_config(&self, settings: &[&str]) {
        let mut cmd = Command::new("patronictl");
        cmd.arg("-c").arg(&self.nodes[0].config).arg("edit-config");
        for s in settings {
            cmd.args(["--set", s]);
        }
        let out = cmd
            .args(["--force", "--quiet"])
            .stdin(Stdio::null())
            .output()
            .expect("run patronictl");
        if !out.status.success() {
            panic!(
                "patronictl edit-config {settings:?} failed ({}):\n{}{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tails()
            );
        }
    }

    /// With `synchronous_mode` on: waits until `/cluster` names a `sync_standby`
    /// and the leader's pg_stat_replication shows it as `sync`; returns its index.
    pub fn wait_sync_standby(&self, timeout: Duration) -> usize {
        proc::wait_for(
            "a synchronous standby",
            timeout,
            || {
                let members = self.members();
                let leader = self.member_with_role(&members, "leader")?;
                let sync = self.member_with_role(&members, "sync_standby")?;
                let out = try_psql(
                    self.pg_port(leader),
                    SUPERUSER,
                    SUPERUSER_PASSWORD,
                    "postgres",
                    &["SELECT application_name FROM pg_stat_replication WHERE sync_state = 'sync'"],
                )
                .ok()?;
                out.lines()
                    .any(|l| l.trim() == self.nodes[sync].name)
                    .then_some(sync)
            },
            || format!("\n/cluster: {:?}{}", self.cluster_json(), self.log_tails()),
        )
    }

    /// `psql -XAtqc sql` as superuser against node `i`.
    pub fn psql(&self, i: usize, sql: &str) -> String {
        try_psql(
            self.pg_port(i),
            SUPERUSER,
            SUPERUSER_PASSWORD,
            "postgres",
            &[sql],
        )
        .unwrap_or_else(|e| {
            panic!(
                "psql on {} failed: {e}\nSQL: {sql}{}",
                self.nodes[i].name,
                proc::tail(&self.nodes[i].log, 40)
            )
        })
    }

    /// SIGKILL node `i`'s Patroni and its postmaster (no clean shutdown).
    /// The data dir stays until the cluster is dropped.
    pub fn kill_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let postmaster = proc::read_pid_file(&n.data_dir.join("postmaster.pid"));
        if let Some(p) = n.proc.as_mut() {
            p.kill_hard();
        }
        if let Some(pid) = postmaster {
            proc::kill("KILL", pid);
        }
    }

    /// Start node `i`'s Patroni again after [`PatroniCluster::kill_node`]
    /// (same config and data dir); returns immediately, use
    /// [`PatroniCluster::wait_streaming_replicas`] or
    /// [`PatroniCluster::wait_leader`] to wait for it.
    pub fn start_node(&mut self, i: usize) {
        match self.nodes[i].proc.as_mut() {
            Some(p) => p.start(),
            None => self.spawn_node(i),
        }
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        // Stop all Patroni nodes together, then etcd (Patroni wants the DCS
        // while shutting down), then let the janitor remove the base dir.
        for n in &mut self.nodes {
            if let Some(p) = n.proc.as_mut() {
                p.begin_shutdown();
            }
        }
        for n in &mut self.nodes {
            if let Some(mut p) = n.proc.take() {
                p.wait_exit(Duration::from_secs(25));
            }
        }
        if let Some(mut e) = self.etcd.take() {
            e.wait_exit(Duration::from_secs(10));
        }
        self.janitor.take();
    }
}
