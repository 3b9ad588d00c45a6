//! The failover benchmark's Markdown report: the setup (machine, versions, load,
//! configurations), medians per target and every run. Pure formatting apart from
//! asking the installed tools for their versions.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use crate::harness::pg::pg_bin;
use crate::targets::{POOL_SIZE, SWITCHYARD_HEALTH};
use crate::{Row, Settings};

/// First line of a command's output (stdout, else stderr), or "?".
fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "?".to_string())
}

/// The n-th whitespace-separated word of a tool's version line.
fn version(program: &str, args: &[&str], word: usize) -> String {
    first_line(program, args)
        .split_whitespace()
        .nth(word)
        .unwrap_or("?")
        .to_string()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".to_string());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} × {cpu}, Linux {}", first_line("uname", &["-r"]))
}

fn switchyard_commit() -> String {
    let repo = env!("CARGO_MANIFEST_DIR");
    let commit = first_line("git", &["-C", repo, "rev-parse", "--short", "HEAD"]);
    let dirty = Command::new("git")
        .args([
            "-C",
            repo,
            "status",
            "--porcelain",
            "--",
            "src",
            "Cargo.toml",
        ])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        format!("{commit} + uncommitted changes")
    } else {
        commit
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Median of the values (mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

fn kinds(map: &BTreeMap<String, usize>) -> String {
    let total: usize = map.values().sum();
    if total == 0 {
        return "0".to_string();
    }
    let parts: Vec<String> = map.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
    format!("{total} ({})", parts.join(", "))
}

fn count(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{n:.0}")
    } else {
        format!("{n:.1}")
    }
}

fn medians_table(out: &mut String, settings: &Settings, rows: &[Row]) {
    out.push_str(
        "| target | runs | failed transactions | longest write pause | acknowledged commits \
         | failed connection attempts | acknowledged writes missing afterwards |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for &target in &settings.targets {
        let runs: Vec<&Row> = rows
            .iter()
            .filter(|r| r.target == target && r.error.is_none())
            .collect();
        let failed_runs = rows
            .iter()
            .filter(|r| r.target == target && r.error.is_some())
            .count();
        let m = |f: &dyn Fn(&Row) -> f64| median(runs.iter().map(|r| f(r)).collect());
        let show = |v: Option<f64>, fmt: &dyn Fn(f64) -> String| v.map_or("–".to_string(), fmt);
        let missing: usize = runs.iter().map(|r| r.missing).sum();
        let _ = writeln!(
            out,
            "| {} | {}{} | {} | {} | {} | {} | {} |",
            target.label(),
            runs.len(),
            if failed_runs > 0 {
                format!(" (+{failed_runs} that did not start)")
            } else {
                String::new()
            },
            show(
                m(&|r| r.failed_transactions.values().sum::<usize>() as f64),
                &count
            ),
            show(m(&|r| r.longest_pause.as_secs_f64()), &|v| format!(
                "{v:.2} s"
            )),
            show(m(&|r| r.acknowledged as f64), &count),
            show(
                m(&|r| r.failed_connects.values().sum::<usize>() as f64),
                &count
            ),
            if runs.is_empty() {
                "–".to_string()
            } else {
                format!("{missing} in all runs")
            },
        );
    }
}

fn runs_table(out: &mut String, settings: &Settings, rows: &[Row]) {
    out.push_str(
        "| # | round | target | switchover | patronictl took | acknowledged | failed transactions \
         | failed connection attempts | longest pause (began at) | clients writing after it \
         | missing |\n|---:|---:|---|---|---:|---:|---|---|---:|---:|---:|\n",
    );
    for (i, r) in rows.iter().enumerate() {
        if let Some(e) = &r.error {
            let e = e.lines().next().unwrap_or("").replace('|', "/");
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | did not start: {e} | | | | | | |",
                i + 1,
                r.round,
                r.target.label(),
                r.switchover
            );
            continue;
        }
        let began = r
            .pause_began
            .map_or("?".to_string(), |b| format!("{b:+.1} s"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} ({began}) | {}/{} | {} |",
            i + 1,
            r.round,
            r.target.label(),
            r.switchover,
            secs(r.patronictl),
            r.acknowledged,
            kinds(&r.failed_transactions),
            kinds(&r.failed_connects),
            secs(r.longest_pause),
            r.clients_resumed,
            settings.clients,
            r.missing
        );
    }
}

/// One message of each failure kind per target, so the SQLSTATEs can be read.
fn messages_table(out: &mut String, settings: &Settings, rows: &[Row]) {
    let mut seen: BTreeMap<(usize, &str), &str> = BTreeMap::new();
    for r in rows {
        let t = settings
            .targets
            .iter()
            .position(|&t| t == r.target)
            .unwrap_or(0);
        for (kind, message) in &r.messages {
            seen.entry((t, kind)).or_insert(message);
        }
    }
    if seen.is_empty() {
        return;
    }
    out.push_str("Messages behind the kinds (one example each):\n\n| target | kind | message |\n|---|---|---|\n");
    for ((t, kind), message) in seen {
        let message: String = message
            .replace('|', "/")
            .replace('\n', " ")
            .chars()
            .take(160)
            .collect();
        let _ = writeln!(
            out,
            "| {} | {kind} | {message} |",
            settings.targets[t].label()
        );
    }
    out.push('\n');
}

/// The whole report.
pub fn render(settings: &Settings, rows: &[Row], configs: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let date = first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let _ = write!(
        out,
        "# Failover under write load: Switchyard, HAProxy, PgBouncer → HAProxy\n\n\
         Generated by `benches/failover_compare.sh` on {date}; Switchyard {}.\n\n\
         Machine: {}. PostgreSQL {}, Patroni {}, etcd {}, HAProxy {}, PgBouncer {}.\n\n",
        switchyard_commit(),
        machine(),
        version(&pg_bin("postgres"), &["--version"], 2),
        version("patroni", &["--version"], 1),
        version("etcd", &["--version"], 2),
        version("haproxy", &["-v"], 2),
        version("pgbouncer", &["--version"], 1),
    );
    let _ = write!(
        out,
        "Each run: a three-node Patroni cluster with etcd on loopback (`ttl: 10`, \
         `loop_wait: 1`, asynchronous replication); {} clients each insert unique ids, \
         one autocommit single-row INSERT at a time (half with the simple protocol, half \
         with the extended protocol and an unnamed statement), through the target for \
         {} s; {} s in, `patronictl switchover` moves the primary (node1 and node2 in \
         turn). A client whose INSERT or connection attempt fails waits {} ms, opens a \
         new connection if its connection is gone, and goes on. Each target is started \
         fresh for its run, and the load starts once 10 new connections in a row \
         through it reach the leader. {} round(s), the order of the targets rotating \
         from round to round.\n\n",
        settings.clients,
        settings.duration.as_secs(),
        settings.switch_at.as_secs(),
        settings.retry_delay.as_millis(),
        settings.rounds,
    );
    out.push_str("## Medians\n\n");
    medians_table(&mut out, settings, rows);
    out.push_str("\n## Every run\n\n");
    runs_table(&mut out, settings, rows);
    out.push_str(
        "\n## What the columns mean\n\n\
         - **failed transactions**: INSERTs sent that got an error instead of an \
         acknowledgement, by SQLSTATE (`57P01` the server or proxy ended the session, \
         `08006` connection failure, `25006` the write reached a read-only standby, \
         `57P03` the server is starting up or shutting down), or `closed` / `io …` when \
         the connection went away without an error message, `timeout` after 60 s.\n\
         - **failed connection attempts**: connecting, logging in (or preparing) \
         failed; each counts once per retry, so this number grows with the retry rate.\n\
         - **longest write pause**: the longest time any one client went without an \
         acknowledged write, from its first acknowledgement to the end of the run \
         (a client that had not resumed by the end counts until the end); *began at* \
         is relative to the start of `patronictl switchover`.\n\
         - **clients writing after it**: clients with a write acknowledged after \
         `patronictl` returned.\n\
         - **missing**: acknowledged ids not found on the new primary after the run.\n\n",
    );
    messages_table(&mut out, settings, rows);
    let _ = write!(
        out,
        "## Configurations\n\n\
         Switchyard: its release binary, transaction pooling, pool of {POOL_SIZE} per node, \
         health checks `{SWITCHYARD_HEALTH}`. HAProxy: the `listen` block of the Patroni \
         guides for the primary{}. PgBouncer: defaults (`server_login_retry` 15 s among \
         them) except transaction pooling, a pool of {POOL_SIZE}, and HAProxy as its only \
         server. As written for the first run of each:\n\n",
        if settings.haproxy_inter == "1s" {
            String::new()
        } else {
            format!(
                " (but checking every {} where the guides say `inter 1s`)",
                settings.haproxy_inter
            )
        }
    );
    for (name, text) in configs {
        let _ = write!(out, "`{name}`:\n\n```\n{}\n```\n\n", text.trim_end());
    }
    out.push_str(
        "## Reading the numbers\n\n\
         Everything (three PostgreSQL servers, three Patroni agents, etcd, the proxy \
         and the load generator) shares one small machine, so throughput figures \
         (acknowledged commits) move a lot from run to run and between targets. The \
         failure counts and the pauses depend much less on CPU: they come from the \
         health-check intervals and from what each proxy does with connections during \
         the switchover. A failed-transaction count also depends on how fast clients \
         retry (here: every retry delay, per client).\n",
    );
    out
}
