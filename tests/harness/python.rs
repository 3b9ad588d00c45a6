//! Owns the Python side of the driver tests: the venv in `target/pyenv` (built by
//! `tests/python/ensure_venv.sh` from `tests/python/requirements.txt`, once per
//! change of that file, under a file lock), source distributions fetched once from
//! PyPI into `target/pysdist` (`fetch_sdist.sh`), and running a script from
//! `tests/python/` with environment variables and a deadline (killed when it
//! passes, and reported with its output). Case scripts (`asyncpg_cases.py`,
//! `psycopg_cases.py`) run one case per process: [`run_case`] and
//! [`assert_cases_passed`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::proc::run_with_deadline;

/// `tests/python/` of this repository.
pub fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}

/// Runs a bash helper from `tests/python/` and returns its last stdout line (a
/// path), or panics with its output.
fn helper_path(script: &str, args: &[&str], deadline: Duration) -> PathBuf {
    let mut command = Command::new("bash");
    command.arg(python_dir().join(script)).args(args);
    let (out, timed_out) = run_with_deadline(&mut command, deadline);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !timed_out,
        "{script} {args:?} failed ({}; timed out: {timed_out}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default().trim();
    PathBuf::from(last)
}

/// The venv's python, building the venv first if needed (once per process).
pub fn venv_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| helper_path("ensure_venv.sh", &[], Duration::from_secs(900)))
        .clone()
}

/// The unpacked source distribution of `package==version` (downloaded once).
pub fn sdist_dir(package: &str, version: &str) -> PathBuf {
    helper_path(
        "fetch_sdist.sh",
        &[package, version],
        Duration::from_secs(900),
    )
}

/// What a Python run produced.
#[derive(Debug, Clone)]
pub struct PyRun {
    pub what: String,
    pub stdout: String,
    pub stderr: String,
    /// Exit code (None if killed by a signal).
    pub code: Option<i32>,
    /// Killed at the deadline.
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl PyRun {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// Everything it printed, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- {} (exit {:?}{}, {:.1} s)\n--- stdout:\n{}\n--- stderr:\n{}",
            self.what,
            self.code,
            if self.timed_out {
                ", KILLED at the deadline"
            } else {
                ""
            },
            self.elapsed.as_secs_f64(),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs the venv's python with `args` (the first is usually a script path) in
/// `cwd`, with `env` added (libpq `PG*` variables removed), killing it after
/// `deadline`. Blocking: call it through `wait::blocking` from async tests.
pub fn run_python(
    args: &[&str],
    cwd: &Path,
    env: &[(String, String)],
    deadline: Duration,
) -> PyRun {
    let python = venv_python();
    let mut command = Command::new(&python);
    command
        .args(args)
        .current_dir(cwd)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    for var in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "PGOPTIONS",
        "PGSERVICE",
        "PGSSLMODE",
    ] {
        command.env_remove(var);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let started = Instant::now();
    let (out, timed_out) = run_with_deadline(&mut command, deadline);
    PyRun {
        what: format!("python {}", args.join(" ")),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
        timed_out,
        elapsed: started.elapsed(),
    }
}

/// Runs `tests/python/<script>` with `args` and `env` (see [`run_python`]).
pub fn run_script(
    script: &str,
    args: &[&str],
    env: &[(String, String)],
    deadline: Duration,
) -> PyRun {
    let path = python_dir().join(script);
    let path = path.to_string_lossy().into_owned();
    let mut all = vec![path.as_str()];
    all.extend_from_slice(args);
    run_python(&all, &python_dir(), env, deadline)
}

/// [`run_script`] that panics with the output unless the script exits 0 in time.
pub fn run_script_ok(
    script: &str,
    args: &[&str],
    env: &[(String, String)],
    deadline: Duration,
) -> PyRun {
    let run = run_script(script, args, env, deadline);
    assert!(run.success(), "{}", run.transcript());
    run
}

/// Where a case script's clients connect (the `SY_*` variables of
/// `tests/python/sy_cases.py`).
#[derive(Debug, Clone)]
pub struct DbTarget {
    /// `direct`, `session` or `transaction`: labels messages only.
    pub label: String,
    pub port: u16,
    /// The PostgreSQL server itself, for side checks.
    pub direct_port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

impl DbTarget {
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("SY_HOST", "127.0.0.1".to_string()),
            ("SY_PORT", self.port.to_string()),
            ("SY_DIRECT_PORT", self.direct_port.to_string()),
            ("SY_USER", self.user.clone()),
            ("SY_PASSWORD", self.password.clone()),
            ("SY_DBNAME", self.dbname.clone()),
            ("SY_LABEL", self.label.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// How one case of a case script ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// The script's watchdog or a driver timeout fired (exit 3), or the harness
    /// killed it at the deadline.
    Timeout,
}

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub case: String,
    pub label: String,
    pub outcome: Outcome,
    pub run: PyRun,
}

impl CaseResult {
    /// The script's verdict line (PASS / FAIL / TIMEOUT ...), or a note.
    pub fn verdict(&self) -> String {
        self.run
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with("PASS") || l.starts_with("FAIL") || l.starts_with("TIMEOUT"))
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "{:?} [{}] {}: no verdict line (exit {:?}, killed: {})",
                    self.outcome, self.label, self.case, self.run.code, self.run.timed_out
                )
            })
    }
}

/// Runs one case of a case script against `target`; the script's own watchdog
/// ends it after `case_timeout`, the harness kills it 20 s later.
pub fn run_case(script: &str, case: &str, target: &DbTarget, case_timeout: Duration) -> CaseResult {
    let mut env = target.env();
    env.push((
        "SY_CASE_TIMEOUT".into(),
        case_timeout.as_secs_f64().to_string(),
    ));
    let run = run_script(
        script,
        &[case],
        &env,
        case_timeout + Duration::from_secs(20),
    );
    let outcome = match (run.code, run.timed_out) {
        (_, true) | (Some(3), _) => Outcome::Timeout,
        (Some(0), false) => Outcome::Pass,
        _ => Outcome::Fail,
    };
    CaseResult {
        case: case.to_string(),
        label: target.label.clone(),
        outcome,
        run,
    }
}

/// Prints one line per case, then panics with the transcripts of the cases that
/// did not pass.
pub fn assert_cases_passed(what: &str, results: &[CaseResult]) {
    println!("{what}:");
    for r in results {
        println!("  {:<8} {}", format!("{:?}", r.outcome), r.verdict());
    }
    let failed: Vec<&CaseResult> = results
        .iter()
        .filter(|r| r.outcome != Outcome::Pass)
        .collect();
    if failed.is_empty() {
        return;
    }
    let mut message = format!(
        "{what}: {} of {} cases did not pass:\n",
        failed.len(),
        results.len()
    );
    for r in &failed {
        message.push_str(&format!("  {}\n", r.verdict()));
    }
    for r in &failed {
        message.push_str(&format!("\n{}\n", r.run.transcript()));
    }
    panic!("{message}");
}

/// Where a driver case runs: straight to PostgreSQL (the control), or through a
/// proxy listener in session or transaction mode with a pool of the given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Direct,
    Session(u32),
    Transaction(u32),
}

impl Via {
    pub fn label(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Session(_) => "session",
            Via::Transaction(_) => "transaction",
        }
    }

    /// The proxy's `pool:` section for this mode (None for direct).
    pub fn pool_yaml(self) -> Option<String> {
        match self {
            Via::Direct => None,
            Via::Session(size) => Some(format!("pool: {{ mode: session, size: {size} }}\n")),
            Via::Transaction(size) => {
                Some(format!("pool: {{ mode: transaction, size: {size} }}\n"))
            }
        }
    }
}

/// Runs each case of `script` as `app` in `appdb` against the PostgreSQL server on
/// `pg_port` via `via`: every case gets a fresh proxy (so state one case leaves on
/// a pooled server cannot affect another); up to four cases run at a time.
pub async fn run_cases_via(
    script: &'static str,
    cases: &[&'static str],
    pg_port: u16,
    via: Via,
    case_timeout: Duration,
) -> Vec<CaseResult> {
    use futures_util::stream::{self, StreamExt};
    let runs = cases
        .iter()
        .map(|&case| run_one_case_via(script, case, pg_port, via, case_timeout));
    stream::iter(runs).buffered(4).collect().await
}

async fn run_one_case_via(
    script: &'static str,
    case: &'static str,
    pg_port: u16,
    via: Via,
    case_timeout: Duration,
) -> CaseResult {
    let proxy = match via.pool_yaml() {
        Some(pool) => Some(super::proxy::proxy_for(pg_port, &pool).await),
        None => None,
    };
    let port = match &proxy {
        Some((proxy, _api)) => proxy.listener_addr("rw").expect("rw listener").port(),
        None => pg_port,
    };
    let target = DbTarget {
        label: via.label().to_string(),
        port,
        direct_port: pg_port,
        user: super::pg::APP_USER.into(),
        password: super::pg::APP_PASSWORD.into(),
        dbname: super::pg::APP_DB.into(),
    };
    let result = super::wait::blocking(move || run_case(script, case, &target, case_timeout)).await;
    if let Some((proxy, _api)) = proxy {
        proxy.shutdown(Duration::from_secs(2)).await;
    }
    result
}

/// One primary without replicas for the driver tests of a test binary (started on
/// first use; its files go with the process, as with `pg::PgCluster::shared`).
pub async fn driver_cluster() -> &'static super::pg::PgCluster {
    static CLUSTER: OnceLock<super::pg::PgCluster> = OnceLock::new();
    super::wait::blocking(|| CLUSTER.get_or_init(|| super::pg::PgCluster::start(0))).await
}
