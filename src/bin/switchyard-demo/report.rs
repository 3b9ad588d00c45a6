//! What the drill's clients saw, summed up: writes and reads that succeeded or
//! failed, which nodes served them before and after the failover, the longest pause
//! a writer saw, and a one-line verdict. Pure: built from the clients' logs and the
//! failover's timeline, rendered as text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Autocommit INSERTs through the `rw` listener.
    Writer,
    /// SELECTs through the `ro` listener.
    Reader,
}

/// One acknowledged statement: when (since the drill started) and which server
/// (its `inet_server_port()`) ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub at: Duration,
    pub port: u16,
}

/// Everything one client saw.
#[derive(Debug, Clone)]
pub struct ClientLog {
    pub role: Role,
    pub index: usize,
    pub acks: Vec<Ack>,
    /// Row ids of acknowledged INSERTs (writers only).
    pub ids: Vec<i64>,
    /// One entry per failed attempt (login or statement).
    pub failures: Vec<String>,
}

impl ClientLog {
    pub fn new(role: Role, index: usize) -> ClientLog {
        ClientLog {
            role,
            index,
            acks: Vec::new(),
            ids: Vec::new(),
            failures: Vec::new(),
        }
    }
}

/// The operator's side of the drill.
#[derive(Debug, Clone)]
pub struct FailoverLog {
    pub old_primary: String,
    pub new_primary: String,
    /// When `pg_ctl stop -m immediate` was started.
    pub stop_started: Duration,
    /// When `pg_ctl promote` returned (the new primary accepts writes).
    pub promoted: Duration,
    /// The other replicas, and whether each was streaming from the new primary in time.
    pub followers: Vec<(String, bool)>,
}

pub struct Outcome<'a> {
    pub duration: Duration,
    pub logs: &'a [ClientLog],
    pub failover: &'a FailoverLog,
    /// Node names and their PostgreSQL ports.
    pub nodes: &'a [(String, u16)],
    /// The replicas before the failover.
    pub replicas_before: &'a [String],
    /// Acknowledged writes missing on the new primary afterwards, when checked.
    pub lost_writes: Option<u64>,
}

pub struct Report {
    pub text: String,
    pub passed: bool,
}

fn node_name(nodes: &[(String, u16)], port: u16) -> String {
    nodes
        .iter()
        .find(|(_, p)| *p == port)
        .map_or_else(|| format!("port {port}"), |(name, _)| name.clone())
}

/// Acks per node name, in name order.
fn by_node<'a>(
    nodes: &[(String, u16)],
    acks: impl Iterator<Item = &'a Ack>,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for ack in acks {
        *counts.entry(node_name(nodes, ack.port)).or_insert(0) += 1;
    }
    counts
}

fn list(counts: &BTreeMap<String, usize>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(name, n)| format!("{name} ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The longest time a writer went without an acknowledged write (between two
/// acks, or from its last ack to the end), and which writer that was.
fn longest_pause(logs: &[ClientLog], end: Duration) -> Option<(Duration, usize)> {
    logs.iter()
        .filter(|log| log.role == Role::Writer)
        .filter_map(|log| {
            let mut times: Vec<Duration> = log.acks.iter().map(|a| a.at).collect();
            times.sort();
            let last = *times.last()?;
            let gaps = times.windows(2).map(|w| w[1].saturating_sub(w[0]));
            let worst = gaps.chain([end.saturating_sub(last)]).max()?;
            Some((worst, log.index))
        })
        .max()
}

/// The most frequent failure messages, most frequent first.
fn top_failures<'a>(
    logs: impl Iterator<Item = &'a ClientLog>,
    limit: usize,
) -> Vec<(usize, String)> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for failure in logs.flat_map(|log| log.failures.iter()) {
        *counts.entry(failure.as_str()).or_insert(0) += 1;
    }
    let mut sorted: Vec<(usize, String)> = counts
        .into_iter()
        .map(|(message, n)| (n, message.to_string()))
        .collect();
    sorted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    sorted.truncate(limit);
    sorted
}

pub fn build(outcome: &Outcome) -> Report {
    let nodes = outcome.nodes;
    let failover = outcome.failover;
    let role_logs = |role| outcome.logs.iter().filter(move |l| l.role == role);
    let writes = || role_logs(Role::Writer).flat_map(|l| l.acks.iter());
    let reads = || role_logs(Role::Reader).flat_map(|l| l.acks.iter());
    // The old primary was dead before promotion began, and the new one refused
    // writes until promotion ended, so this split has no grey zone.
    let writes_before = by_node(nodes, writes().filter(|a| a.at < failover.promoted));
    let writes_after = by_node(nodes, writes().filter(|a| a.at >= failover.promoted));
    let reads_before = by_node(nodes, reads().filter(|a| a.at < failover.stop_started));
    let reads_after = by_node(nodes, reads().filter(|a| a.at >= failover.stop_started));
    let failed = |role| role_logs(role).map(|l| l.failures.len()).sum::<usize>();
    let (write_failures, read_failures) = (failed(Role::Writer), failed(Role::Reader));
    let pause = longest_pause(outcome.logs, outcome.duration);

    let mut text = String::new();
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let writers = role_logs(Role::Writer).count();
    let readers = role_logs(Role::Reader).count();
    let _ = writeln!(
        text,
        "Drill results ({}, {writers} writers through rw, {readers} readers through ro)",
        secs(outcome.duration)
    );
    let following: Vec<String> = failover
        .followers
        .iter()
        .map(|(name, ok)| format!("{name} follows it: {}", if *ok { "yes" } else { "NO" }))
        .collect();
    let _ = writeln!(
        text,
        "  failover: {} stopped at +{}, {} promoted at +{}; {}",
        failover.old_primary,
        secs(failover.stop_started),
        failover.new_primary,
        secs(failover.promoted),
        following.join(", ")
    );
    let total_writes = writes().count();
    let pause_text = pause.map_or("none measured".to_string(), |(d, writer)| {
        format!("{} (writer {writer})", secs(d))
    });
    let _ = writeln!(
        text,
        "  writes: {total_writes} ok, {write_failures} failed; longest write pause {pause_text}"
    );
    let _ = writeln!(text, "    before the promotion: {}", list(&writes_before));
    let _ = writeln!(text, "    after the promotion:  {}", list(&writes_after));
    for (n, message) in top_failures(role_logs(Role::Writer), 3) {
        let _ = writeln!(text, "    failed {n}x: {message}");
    }
    match outcome.lost_writes {
        Some(0) => {
            let _ = writeln!(
                text,
                "    every acknowledged write is on {}",
                failover.new_primary
            );
        }
        Some(lost) => {
            let _ = writeln!(
                text,
                "    {lost} acknowledged writes are missing on {}: asynchronous replication \
                 had not shipped them when the primary died (synchronous_commit with \
                 synchronous_standby_names prevents that)",
                failover.new_primary
            );
        }
        None => {}
    }
    let _ = writeln!(
        text,
        "  reads: {} ok, {read_failures} failed; served by {}",
        reads().count(),
        list(&by_node(nodes, reads()))
    );
    let _ = writeln!(text, "    before the failover: {}", list(&reads_before));
    let _ = writeln!(text, "    after the failover:  {}", list(&reads_after));
    for (n, message) in top_failures(role_logs(Role::Reader), 3) {
        let _ = writeln!(text, "    failed {n}x: {message}");
    }

    let problems = problems(
        outcome,
        &writes_before,
        &writes_after,
        &reads_before,
        &reads_after,
    );
    let passed = problems.is_empty();
    if passed {
        let _ = writeln!(
            text,
            "VERDICT: PASS: failover from {} to {} completed; writes moved with it \
             ({write_failures} failed, longest pause {}) and reads kept coming from replicas",
            failover.old_primary,
            failover.new_primary,
            pause.map_or("n/a".to_string(), |(d, _)| secs(d))
        );
    } else {
        let _ = writeln!(text, "VERDICT: FAIL: {}", problems.join("; "));
    }
    Report { text, passed }
}

fn problems(
    outcome: &Outcome,
    writes_before: &BTreeMap<String, usize>,
    writes_after: &BTreeMap<String, usize>,
    reads_before: &BTreeMap<String, usize>,
    reads_after: &BTreeMap<String, usize>,
) -> Vec<String> {
    let failover = outcome.failover;
    let mut problems = Vec::new();
    for (name, following) in &failover.followers {
        if !following {
            problems.push(format!(
                "{name} did not stream from {} in time",
                failover.new_primary
            ));
        }
    }
    let only =
        |counts: &BTreeMap<String, usize>, name: &str| counts.keys().all(|node| node == name);
    if writes_before.is_empty() {
        problems.push("no write succeeded before the failover".into());
    } else if !only(writes_before, &failover.old_primary) {
        problems.push(format!(
            "writes before the promotion went to {}",
            list(writes_before)
        ));
    }
    if writes_after.is_empty() {
        problems.push("no write succeeded after the failover".into());
    } else if !only(writes_after, &failover.new_primary) {
        problems.push(format!(
            "writes after the promotion went to {}",
            list(writes_after)
        ));
    }
    if reads_before.is_empty() || reads_after.is_empty() {
        problems.push("reads did not keep flowing through the failover".into());
    }
    if reads_before
        .keys()
        .any(|node| !outcome.replicas_before.contains(node))
    {
        problems.push(format!(
            "reads before the failover went to {}, not only to replicas",
            list(reads_before)
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: [(&str, u16); 3] = [("node1", 1), ("node2", 2), ("node3", 3)];

    fn nodes() -> Vec<(String, u16)> {
        NODES.iter().map(|(n, p)| (n.to_string(), *p)).collect()
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn log(role: Role, index: usize, acks: &[(u64, u16)], failures: usize) -> ClientLog {
        let mut log = ClientLog::new(role, index);
        log.acks = acks
            .iter()
            .map(|&(at, port)| Ack { at: ms(at), port })
            .collect();
        log.failures = vec!["I/O error talking to 127.0.0.1:5000: reset".into(); failures];
        log
    }

    fn failover(following: bool) -> FailoverLog {
        FailoverLog {
            old_primary: "node1".into(),
            new_primary: "node2".into(),
            stop_started: ms(5000),
            promoted: ms(5600),
            followers: vec![("node3".into(), following)],
        }
    }

    fn report(logs: &[ClientLog], failover: &FailoverLog, lost: Option<u64>) -> Report {
        let nodes = nodes();
        let replicas = ["node2".to_string(), "node3".to_string()];
        build(&Outcome {
            duration: ms(12_000),
            logs,
            failover,
            nodes: &nodes,
            replicas_before: &replicas,
            lost_writes: lost,
        })
    }

    #[test]
    fn a_clean_failover_passes_and_says_what_clients_saw() {
        let logs = [
            log(
                Role::Writer,
                1,
                &[(100, 1), (4900, 1), (6200, 2), (11_900, 2)],
                1,
            ),
            log(Role::Writer, 2, &[(200, 1), (6100, 2), (11_950, 2)], 0),
            log(Role::Reader, 1, &[(100, 2), (4000, 3), (7000, 3)], 0),
        ];
        let report = report(&logs, &failover(true), Some(0));
        assert!(report.passed, "{}", report.text);
        let text = &report.text;
        assert!(
            text.contains("writes: 7 ok, 1 failed; longest write pause 5.90 s (writer 2)"),
            "{text}"
        );
        assert!(text.contains("before the promotion: node1 (3)"), "{text}");
        assert!(text.contains("after the promotion:  node2 (4)"), "{text}");
        assert!(text.contains("failed 1x: I/O error"), "{text}");
        assert!(
            text.contains("every acknowledged write is on node2"),
            "{text}"
        );
        assert!(text.contains("served by node2 (1), node3 (2)"), "{text}");
        assert!(text.contains("node3 follows it: yes"), "{text}");
        assert!(
            text.lines()
                .last()
                .unwrap_or("")
                .starts_with("VERDICT: PASS: failover from node1 to node2"),
            "{text}"
        );
    }

    #[test]
    fn misrouted_or_missing_traffic_fails_with_reasons() {
        let logs = [
            log(Role::Writer, 1, &[(100, 1), (6000, 3)], 0),
            log(Role::Reader, 1, &[(100, 1)], 4),
        ];
        let report = report(&logs, &failover(false), Some(2));
        assert!(!report.passed);
        let verdict = report.text.lines().last().unwrap_or("").to_string();
        assert!(verdict.starts_with("VERDICT: FAIL: "), "{verdict}");
        for expected in [
            "node3 did not stream from node2",
            "writes after the promotion went to node3 (1)",
            "reads did not keep flowing",
            "reads before the failover went to node1 (1)",
        ] {
            assert!(verdict.contains(expected), "{expected}: {verdict}");
        }
        assert!(report
            .text
            .contains("2 acknowledged writes are missing on node2"));
    }

    #[test]
    fn the_longest_pause_counts_a_writer_that_stopped_getting_answers() {
        let logs = [
            log(Role::Writer, 1, &[(0, 1), (100, 1)], 0),
            log(Role::Writer, 2, &[(0, 1), (5000, 2), (11_990, 2)], 0),
            log(Role::Writer, 3, &[], 3),
        ];
        assert_eq!(longest_pause(&logs, ms(12_000)), Some((ms(11_900), 1)));
    }
}
