//! psycopg2's own test suite (from the psycopg2 sdist on PyPI, cached under
//! `target/pysdist`) run three times: straight to PostgreSQL, through a
//! session-mode listener and through a transaction-mode listener. Every test whose
//! outcome through the proxy differs from the direct run must be listed, with a
//! reason, in `tests/python/psycopg2-suite-differences.txt`; an unlisted difference
//! fails the test (naming it), a listed entry that no longer differs is printed.
//!
//! Run: `cargo test --test psycopg2_suite -- --nocapture` (about 3 minutes on the
//! 2-core development machine; the per-test outcomes of each pass are written to
//! `target/psycopg2-suite/<pass>.json`).
//! - `SWITCHYARD_WRITE_DIFFERENCES=1` rewrites the differences file from this run,
//!   keeping the reasons of entries that stay and writing `TODO reason` for new ones.
//! - `SWITCHYARD_SUITE_PASSES=direct,transaction` runs only those passes (direct
//!   always runs: it is the baseline).
//! - `SWITCHYARD_SUITE_PER_TEST_TIMEOUT` (seconds, default 20): a test that takes
//!   longer is recorded as `timeout` and the suite goes on with the next one.
//! - `SWITCHYARD_SUITE_ONLY=test_notify,test_async` runs only the tests whose id
//!   contains one of these (entries for other tests are neither checked nor
//!   rewritten).

mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::clients::su_sql;
use harness::pg::{self, PgCluster};
use harness::proxy::proxy_for;
use harness::python::*;
use harness::wait::blocking;
use serde_json::Value;

/// Must match psycopg2-binary in tests/python/requirements.txt.
const PSYCOPG2_VERSION: &str = "2.9.13";
const DIFFERENCES_FILE: &str = "tests/python/psycopg2-suite-differences.txt";
const DATABASE: &str = "psycopg2_test";
const OVERALL_TIMEOUT_SECS: u64 = 1800;

/// The proxy passes and their pool sections (pools are shared by all listeners
/// of a proxy, so each pass gets its own proxy).
const PROXY_PASSES: &[(&str, &str)] = &[
    ("session", "pool: { mode: session, size: 20 }\n"),
    ("transaction", "pool: { mode: transaction, size: 10 }\n"),
];

/// One pass: test id -> (outcome, detail).
type Outcomes = BTreeMap<String, (String, String)>;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs the whole suite against `port`; the outcomes and how long it took.
async fn run_pass(label: &str, sdist: &Path, port: u16) -> (Outcomes, Duration) {
    let out_dir = repo_path("target/psycopg2-suite");
    std::fs::create_dir_all(&out_dir).expect("create target/psycopg2-suite");
    let out = out_dir.join(format!("{label}.json"));
    let per_test = std::env::var("SWITCHYARD_SUITE_PER_TEST_TIMEOUT").unwrap_or("20".into());
    let env: Vec<(String, String)> = [
        ("PSYCOPG2_TESTDB", DATABASE.to_string()),
        ("PSYCOPG2_TESTDB_HOST", "127.0.0.1".into()),
        ("PSYCOPG2_TESTDB_PORT", port.to_string()),
        ("PSYCOPG2_TESTDB_USER", pg::APP_USER.into()),
        ("PSYCOPG2_TESTDB_PASSWORD", pg::APP_PASSWORD.into()),
        ("PGCONNECT_TIMEOUT", "10".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let args: Vec<String> = vec![
        "--sdist".into(),
        sdist.to_string_lossy().into_owned(),
        "--out".into(),
        out.to_string_lossy().into_owned(),
        "--label".into(),
        label.into(),
        "--per-test-timeout".into(),
        per_test,
        "--overall-timeout".into(),
        OVERALL_TIMEOUT_SECS.to_string(),
        "--only".into(),
        std::env::var("SWITCHYARD_SUITE_ONLY").unwrap_or_default(),
    ];
    let started = Instant::now();
    let run = blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_script(
            "psycopg2_suite.py",
            &args,
            &env,
            Duration::from_secs(OVERALL_TIMEOUT_SECS + 300),
        )
    })
    .await;
    let elapsed = started.elapsed();
    assert!(
        run.success(),
        "psycopg2 suite [{label}]:\n{}",
        run.transcript()
    );
    print!("{}", run.stdout);
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    let mut outcomes = Outcomes::new();
    for test in json["tests"].as_array().expect("tests array") {
        outcomes.insert(
            test["id"].as_str().unwrap_or_default().to_string(),
            (
                test["outcome"].as_str().unwrap_or_default().to_string(),
                test["detail"].as_str().unwrap_or_default().to_string(),
            ),
        );
    }
    (outcomes, elapsed)
}

/// One line of the differences file: `<pass> <test id> <direct> -> <outcome> | <reason>`.
#[derive(Debug, Clone)]
struct Entry {
    direct: String,
    outcome: String,
    reason: String,
}

/// (pass, test id) -> entry.
type Differences = BTreeMap<(String, String), Entry>;

fn read_differences(path: &Path) -> Differences {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut entries = Differences::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (left, reason) = line.split_once(" | ").unwrap_or((line, ""));
        let fields: Vec<&str> = left.split_whitespace().collect();
        let [pass, id, direct, "->", outcome] = fields[..] else {
            panic!(
                "{}:{}: expected `<pass> <test id> <direct> -> <outcome> | <reason>`, got {line:?}",
                path.display(),
                n + 1
            );
        };
        entries.insert(
            (pass.to_string(), id.to_string()),
            Entry {
                direct: direct.to_string(),
                outcome: outcome.to_string(),
                reason: reason.trim().to_string(),
            },
        );
    }
    entries
}

fn write_differences(path: &Path, found: &Differences) {
    let mut text = format!(
        "# psycopg2 {PSYCOPG2_VERSION}'s own test suite through Switchyard: the tests whose outcome\n\
         # differs from a direct run against PostgreSQL, per proxy pass, with the reason.\n\
         # Checked by tests/psycopg2_suite.rs; regenerate with\n\
         #   SWITCHYARD_WRITE_DIFFERENCES=1 cargo test --test psycopg2_suite\n\
         # (reasons of entries that stay are kept; new entries get `TODO reason`).\n\
         # Outcomes: pass fail error skip xfail xpass timeout crash not-run.\n\
         # <pass> <test id> <direct outcome> -> <outcome through the proxy> | <reason>\n"
    );
    let mut last_pass = String::new();
    for ((pass, id), entry) in found {
        if *pass != last_pass {
            text.push('\n');
            last_pass = pass.clone();
        }
        text.push_str(&format!(
            "{pass} {id} {} -> {} | {}\n",
            entry.direct, entry.outcome, entry.reason
        ));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn wanted_passes() -> Vec<&'static str> {
    match std::env::var("SWITCHYARD_SUITE_PASSES") {
        Ok(list) => PROXY_PASSES
            .iter()
            .map(|(label, _)| *label)
            .filter(|label| list.split(',').any(|p| p.trim() == *label))
            .collect(),
        Err(_) => PROXY_PASSES.iter().map(|(label, _)| *label).collect(),
    }
}

/// The psycopg2 of the venv must be the version whose tests we run.
fn check_installed_version() {
    let python = venv_python();
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import psycopg2; print(psycopg2.__version__.split()[0])",
        ])
        .output()
        .expect("venv python");
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        version, PSYCOPG2_VERSION,
        "the venv's psycopg2 is {version}; the suite is from the {PSYCOPG2_VERSION} sdist (update tests/python/requirements.txt and PSYCOPG2_VERSION together)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn psycopg2_suite_differences_are_all_known() {
    let t0 = Instant::now();
    blocking(check_installed_version).await;
    let sdist = blocking(|| sdist_dir("psycopg2", PSYCOPG2_VERSION)).await;
    let cluster = blocking(|| PgCluster::start(0)).await;
    let port = cluster.port(0);
    su_sql(port, &format!("CREATE DATABASE {DATABASE} OWNER app")).await;
    // Two-phase commit on, so the suite's TPC tests run instead of skipping.
    su_sql(port, "ALTER SYSTEM SET max_prepared_transactions = 10").await;
    let _cluster = blocking(move || {
        cluster.restart(0);
        cluster
    })
    .await;
    // hstore lets the suite's hstore tests run instead of skipping (contrib is part
    // of Debian's postgresql-15).
    let hstore = blocking(move || {
        pg::try_psql(
            port,
            pg::SUPERUSER,
            pg::SUPERUSER_PASSWORD,
            DATABASE,
            &["CREATE EXTENSION IF NOT EXISTS hstore"],
        )
    })
    .await;
    if let Err(e) = hstore {
        println!("note: no hstore extension, its tests will skip: {e}");
    }
    println!(
        "setup (venv, sdist, cluster): {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let (direct, direct_time) = run_pass("direct", &sdist, port).await;
    let mut timings = vec![("direct".to_string(), direct_time)];
    let mut found = Differences::new();
    let passes = wanted_passes();
    for (label, pool) in PROXY_PASSES.iter().filter(|(l, _)| passes.contains(l)) {
        let (proxy, _api) = proxy_for(port, pool).await;
        let listener = proxy.listener_addr("rw").expect("rw").port();
        let (outcomes, time) = run_pass(label, &sdist, listener).await;
        proxy.shutdown(Duration::from_secs(5)).await;
        timings.push((label.to_string(), time));
        for (id, (direct_outcome, _)) in &direct {
            let (outcome, detail) = outcomes
                .get(id)
                .cloned()
                .unwrap_or(("missing".into(), String::new()));
            if outcome != *direct_outcome {
                found.insert(
                    (label.to_string(), id.clone()),
                    Entry {
                        direct: direct_outcome.clone(),
                        outcome,
                        reason: detail,
                    },
                );
            }
        }
    }
    report(&direct, &found, &timings, &passes);
}

/// Compares this run's differences with the file (or rewrites it), prints the
/// timings and counts, and fails on unlisted differences.
fn report(direct: &Outcomes, found: &Differences, timings: &[(String, Duration)], passes: &[&str]) {
    let path = repo_path(DIFFERENCES_FILE);
    let known = read_differences(&path);
    let mut direct_counts = BTreeMap::<&str, usize>::new();
    for (outcome, _) in direct.values() {
        *direct_counts.entry(outcome).or_default() += 1;
    }
    println!(
        "\npsycopg2 {PSYCOPG2_VERSION} suite: {} tests; direct: {direct_counts:?}",
        direct.len()
    );
    for (label, time) in timings {
        let n = found.keys().filter(|(p, _)| p == label).count();
        println!(
            "  {label:<12} {:>7.1} s, {n} tests differ from direct",
            time.as_secs_f64()
        );
    }
    let unlisted: Vec<_> = found
        .iter()
        .filter(|(k, _)| !known.contains_key(*k))
        .collect();
    let ran = |pass: &str, id: &str| passes.contains(&pass) && direct.contains_key(id);
    let stale: Vec<_> = known
        .iter()
        .filter(|((pass, id), _)| ran(pass, id))
        .filter(|(k, _)| !found.contains_key(*k))
        .collect();
    for ((pass, id), entry) in found {
        if let Some(old) = known.get(&(pass.clone(), id.clone())) {
            if old.outcome != entry.outcome || old.direct != entry.direct {
                println!(
                    "note: {pass} {id}: listed as {} -> {}, now {} -> {}",
                    old.direct, old.outcome, entry.direct, entry.outcome
                );
            }
        }
    }
    if !stale.is_empty() {
        println!(
            "\nListed in {DIFFERENCES_FILE} but no longer different ({}):",
            stale.len()
        );
        for ((pass, id), entry) in &stale {
            println!("  {pass} {id} ({})", entry.reason);
        }
    }
    if std::env::var_os("SWITCHYARD_WRITE_DIFFERENCES").is_some() {
        let mut rewritten = Differences::new();
        // Entries of passes or tests that did not run this time stay as they are.
        for (key, entry) in &known {
            if !ran(&key.0, &key.1) {
                rewritten.insert(key.clone(), entry.clone());
            }
        }
        for (key, entry) in found {
            let reason = known
                .get(key)
                .map(|old| old.reason.clone())
                .unwrap_or_else(|| format!("TODO reason ({})", one_line(&entry.reason)));
            rewritten.insert(
                key.clone(),
                Entry {
                    reason,
                    ..entry.clone()
                },
            );
        }
        write_differences(&path, &rewritten);
        println!("\nrewrote {DIFFERENCES_FILE}: {} entries", rewritten.len());
        return;
    }
    if !unlisted.is_empty() {
        let mut message = format!(
            "{} psycopg2 suite tests differ from the direct run and are not in {DIFFERENCES_FILE}:\n",
            unlisted.len()
        );
        for ((pass, id), entry) in &unlisted {
            message.push_str(&format!(
                "  {pass} {id} {} -> {}: {}\n",
                entry.direct,
                entry.outcome,
                one_line(&entry.reason)
            ));
        }
        message.push_str("(SWITCHYARD_WRITE_DIFFERENCES=1 adds them with `TODO reason`)");
        panic!("{message}");
    }
}

fn one_line(text: &str) -> String {
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    text.chars().take(160).collect()
}
