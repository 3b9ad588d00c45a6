//! Failover benchmark (run through `benches/failover_compare.sh`): one real
//! Patroni and etcd cluster, and for each target (Switchyard; HAProxy as the
//! Patroni guides configure it; PgBouncer in front of that HAProxy) the same write
//! load while `patronictl switchover` moves the primary, several rounds each. Records per run
//! the acknowledged commits, failed transactions and connection attempts by kind,
//! the longest write pause any client saw, and whether every acknowledged write is
//! on the new primary; writes a Markdown report (medians and every run).
//!
//! Settings come from the environment (see `Settings::from_env`). This is a
//! measurement, not a test: nothing here asserts a timing.

#[path = "../../tests/harness/mod.rs"]
mod harness;
mod report;
mod targets;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::patroni::PatroniCluster;
use harness::proc;
use harness::write_load::{count_present, LoadSpec, Protocol, WriteLoad};
use targets::Target;

const TABLE: &str = "failover_bench";

/// What to run, from the environment.
pub struct Settings {
    /// `ROUNDS` [3]: runs per target.
    pub rounds: usize,
    /// `CLIENTS` [20]: concurrent writers.
    pub clients: usize,
    /// `DURATION` [40]: seconds of load per run.
    pub duration: Duration,
    /// `SWITCH_AT` [5]: seconds into the load when `patronictl switchover` starts.
    pub switch_at: Duration,
    /// `TARGETS` [switchyard,haproxy,pgbouncer].
    pub targets: Vec<Target>,
    /// `RETRY_DELAY_MS` [100]: a client waits this long after a failure.
    pub retry_delay: Duration,
    /// `RESULTS` [benches/results/failover.md].
    pub results: PathBuf,
    /// `HAPROXY_INTER` [1s]: HAProxy's check interval (`default-server inter`).
    pub haproxy_inter: String,
    /// `KEEP_LOGS` [0]: 1 keeps the work directory with every target's log.
    pub keep_logs: bool,
}

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        _ => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let targets = std::env::var("TARGETS")
            .unwrap_or_else(|_| "switchyard,haproxy,pgbouncer".to_string())
            .split(',')
            .filter(|t| !t.trim().is_empty())
            .map(|t| Target::parse(t).unwrap_or_else(|| panic!("unknown target {t:?} in TARGETS")))
            .collect::<Vec<_>>();
        assert!(!targets.is_empty(), "TARGETS names no target");
        let settings = Settings {
            rounds: env_num("ROUNDS", 3) as usize,
            clients: env_num("CLIENTS", 20) as usize,
            duration: Duration::from_secs(env_num("DURATION", 40)),
            switch_at: Duration::from_secs(env_num("SWITCH_AT", 5)),
            targets,
            retry_delay: Duration::from_millis(env_num("RETRY_DELAY_MS", 100)),
            results: std::env::var_os("RESULTS")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/results/failover.md")
                }),
            haproxy_inter: std::env::var("HAPROXY_INTER")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "1s".to_string()),
            keep_logs: env_num("KEEP_LOGS", 0) == 1,
        };
        assert!(
            settings.switch_at < settings.duration,
            "SWITCH_AT must be less than DURATION"
        );
        settings
    }
}

/// One run: one target, one switchover.
pub struct Row {
    pub round: usize,
    pub target: Target,
    /// "node1 → node2".
    pub switchover: String,
    /// How long `patronictl switchover` took.
    pub patronictl: Duration,
    pub acknowledged: usize,
    pub failed_transactions: BTreeMap<String, usize>,
    pub failed_connects: BTreeMap<String, usize>,
    pub longest_pause: Duration,
    /// When that pause began, relative to the start of the switchover.
    pub pause_began: Option<f64>,
    /// Clients with a write acknowledged after patronictl returned.
    pub clients_resumed: usize,
    /// Acknowledged ids not found on the new primary afterwards.
    pub missing: usize,
    /// One message of each failure kind seen, for the report.
    pub messages: BTreeMap<String, String>,
    /// Why the run did not happen, when it did not.
    pub error: Option<String>,
}

impl Row {
    fn failed(round: usize, target: Target, switchover: String, error: String) -> Row {
        Row {
            round,
            target,
            switchover,
            patronictl: Duration::ZERO,
            acknowledged: 0,
            failed_transactions: BTreeMap::new(),
            failed_connects: BTreeMap::new(),
            longest_pause: Duration::ZERO,
            pause_began: None,
            clients_resumed: 0,
            missing: 0,
            messages: BTreeMap::new(),
            error: Some(error),
        }
    }
}

/// Sleeps (blocking) until `t`.
fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

fn direct_conn_str(cluster: &PatroniCluster, node: usize) -> String {
    format!(
        "host=127.0.0.1 port={} user=app password=app_pw dbname=appdb connect_timeout=10",
        cluster.pg_port(node)
    )
}

struct Bench<'a> {
    settings: &'a Settings,
    cluster: &'a PatroniCluster,
    rt: &'a tokio::runtime::Runtime,
    /// Work directory (owned by the postgres user): configs and logs.
    dir: PathBuf,
    /// The configuration files of each target's first run, for the report.
    configs: BTreeMap<String, String>,
}

impl Bench<'_> {
    fn run(&mut self, run: usize, round: usize, target: Target) -> Row {
        let leader = self.cluster.leader().expect("a Patroni leader");
        // Back and forth between node1 and node2; node3 stays a replica.
        let candidate = if leader == 0 { 1 } else { 0 };
        let switchover = format!(
            "{} → {}",
            self.cluster.name(leader),
            self.cluster.name(candidate)
        );
        let running = match targets::start(
            target,
            self.cluster,
            &self.dir,
            run,
            &self.settings.haproxy_inter,
            self.rt,
        ) {
            Ok(running) => running,
            Err(e) => {
                eprintln!("[bench] run {run}: {} did not start: {e}", target.label());
                return Row::failed(round, target, switchover, e);
            }
        };
        for (name, text) in &running.configs {
            self.configs
                .entry(name.clone())
                .or_insert_with(|| text.clone());
        }
        let s = self.settings;
        let spec = LoadSpec {
            conn_str: format!(
                "host=127.0.0.1 port={} user=app password=app_pw dbname=appdb connect_timeout=10",
                running.port
            ),
            table: TABLE.to_string(),
            clients: s.clients,
            // The unnamed statement rather than a named one: PgBouncer 1.18 in
            // transaction mode cannot carry named prepared statements, and every
            // target gets the same load.
            protocols: vec![Protocol::Simple, Protocol::Unnamed],
            reconnect: Some(s.retry_delay),
            id_base: run as i64 * 10_000_000_000,
            op_timeout: Duration::from_secs(60),
        };
        let load = self.rt.block_on(async { WriteLoad::start(spec) });
        let started = Instant::now();
        sleep_until(started + s.switch_at);
        let switch_start = Instant::now();
        self.cluster.switchover(candidate);
        let switch_end = Instant::now();
        sleep_until(started + s.duration);
        let report = self.rt.block_on(load.stop());
        running.keep_logs(&self.dir, &format!("run{run}"));
        drop(running);

        self.cluster.wait_leader(candidate, Duration::from_secs(90));
        let acknowledged = report.acknowledged();
        let present = self.rt.block_on(count_present(
            &direct_conn_str(self.cluster, candidate),
            TABLE,
            &acknowledged,
        ));
        let (longest_pause, pause_from) = report.longest_pause();
        let row = Row {
            round,
            target,
            switchover,
            patronictl: switch_end - switch_start,
            acknowledged: acknowledged.len(),
            failed_transactions: report.failure_kinds(false),
            failed_connects: report.failure_kinds(true),
            longest_pause,
            pause_began: pause_from.map(|t| signed_secs(t, switch_start)),
            clients_resumed: report
                .clients
                .iter()
                .filter(|c| {
                    c.acknowledged
                        .last()
                        .is_some_and(|&(_, at)| at > switch_end)
                })
                .count(),
            missing: acknowledged.len().saturating_sub(present as usize),
            messages: report.failures().fold(BTreeMap::new(), |mut seen, f| {
                seen.entry(f.kind.clone())
                    .or_insert_with(|| f.message.clone());
                seen
            }),
            error: None,
        };
        eprintln!(
            "[bench] run {run} ({}, {}): {} acknowledged, {} failed transactions {:?}, \
             {} failed connects, longest pause {:.2?}, {} missing",
            target.label(),
            row.switchover,
            row.acknowledged,
            row.failed_transactions.values().sum::<usize>(),
            row.failed_transactions,
            row.failed_connects.values().sum::<usize>(),
            row.longest_pause,
            row.missing
        );
        // The old primary rejoins as a replica before the next run switches again.
        let others: Vec<usize> = (0..3).filter(|&i| i != candidate).collect();
        self.cluster
            .wait_streaming_replicas(&others, Duration::from_secs(180));
        std::thread::sleep(Duration::from_secs(2));
        row
    }
}

/// `t - origin` in seconds, negative when `t` came first.
fn signed_secs(t: Instant, origin: Instant) -> f64 {
    if t >= origin {
        (t - origin).as_secs_f64()
    } else {
        -(origin - t).as_secs_f64()
    }
}

fn main() {
    let settings = Settings::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = proc::postgres_temp_dir("switchyard-failbench-");
    eprintln!(
        "[bench] {} round(s) x {:?}, {} clients, switchover at {:?}; work dir {}",
        settings.rounds,
        settings.targets,
        settings.clients,
        settings.switch_at,
        dir.display()
    );
    let cluster = PatroniCluster::start();
    let leader = cluster.leader().expect("a Patroni leader");
    rt.block_on(async {
        let (client, connection) =
            tokio_postgres::connect(&direct_conn_str(&cluster, leader), tokio_postgres::NoTls)
                .await
                .expect("connect to the leader");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("create table {TABLE}(id bigint primary key)"))
            .await
            .expect("create the table");
    });
    let mut bench = Bench {
        settings: &settings,
        cluster: &cluster,
        rt: &rt,
        dir: dir.clone(),
        configs: BTreeMap::new(),
    };
    let mut rows = Vec::new();
    let n = settings.targets.len();
    for round in 1..=settings.rounds {
        // Rotate the order from round to round, as compare.sh does.
        for k in 0..n {
            let target = settings.targets[(k + round - 1) % n];
            rows.push(bench.run(rows.len() + 1, round, target));
        }
    }
    let configs = std::mem::take(&mut bench.configs);
    drop(cluster);

    let text = report::render(&settings, &rows, &configs);
    if let Some(parent) = settings.results.parent() {
        std::fs::create_dir_all(parent).expect("create the results directory");
    }
    std::fs::write(&settings.results, &text).expect("write the report");
    println!("{text}");
    eprintln!("[bench] written to {}", settings.results.display());
    if settings.keep_logs {
        eprintln!("[bench] logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
