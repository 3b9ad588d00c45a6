//! `switchyard-demo` end to end, as a user runs it: the binary finds PostgreSQL,
//! builds its own three-node cluster, and (with `--drill`) fails it over under load
//! and reports; without `--drill` it serves until SIGTERM. Either way nothing is left
//! behind: no server process, no data directory. Works as root (servers run as the
//! `postgres` user) and as an ordinary user.

mod harness;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use harness::proc;

/// The two tests each build a cluster; one at a time on a small machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A running `switchyard-demo`, its stdout arriving line by line.
struct Demo {
    child: Child,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard-demo"))
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run switchyard-demo");
        let (send, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr_pipe = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            text
        });
        Demo {
            child,
            lines,
            stdout: Vec::new(),
            stderr,
        }
    }

    /// Collects output until a line contains `marker` (true) or `within` passes.
    fn wait_for_line(&mut self, marker: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(marker);
                    self.stdout.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Waits for the process to exit (SIGTERM, then SIGKILL, when it takes longer
    /// than `within`); returns its success, stdout and stderr.
    fn finish(mut self, within: Duration) -> (bool, String, String) {
        let deadline = Instant::now() + within;
        let mut status = None;
        while status.is_none() {
            status = self.child.try_wait().ok().flatten();
            if status.is_none() && Instant::now() >= deadline {
                proc::kill("TERM", self.child.id());
                std::thread::sleep(Duration::from_secs(20));
                let _ = self.child.kill();
                let _ = self.child.wait();
                let output = self.stdout.join("\n");
                panic!("switchyard-demo did not finish within {within:?}:\n{output}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.stdout.extend(self.lines.try_iter());
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.stdout.push(line);
        }
        let stderr = self.stderr.join().unwrap_or_default();
        let success = status.is_some_and(|s| s.success());
        (success, self.stdout.join("\n"), stderr)
    }
}

/// The demo's data directory, from its `data directory: ...` line.
fn data_dir(stdout: &str) -> PathBuf {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("data directory: "))
        .unwrap_or_else(|| panic!("no data directory line:\n{stdout}"));
    PathBuf::from(line.trim())
}

/// Asserts the directory is gone and no process mentions it (every server the
/// demo starts has it on its command line).
fn assert_nothing_left(dir: &Path) {
    assert!(!dir.exists(), "{} is left behind", dir.display());
    let needle = dir.to_string_lossy().into_owned();
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) && proc::pid_alive(name.parse().unwrap_or(0)) {
                leftovers.push(format!("{name}: {cmdline}"));
            }
        }
    }
    assert!(
        leftovers.is_empty(),
        "processes left running: {leftovers:#?}"
    );
}

#[test]
fn the_drill_fails_over_under_load_reports_and_cleans_up() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let demo = Demo::start(&["--drill"]);
    let (success, stdout, stderr) = demo.finish(Duration::from_secs(300));
    let context = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(success, "the drill passes\n{context}");

    for node in ["node1", "node2", "node3"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(node) && l.contains("127.0.0.1:")),
            "{node} is listed\n{context}"
        );
    }
    assert!(
        stdout.contains("before the promotion: node1 ("),
        "writes went to the primary\n{context}"
    );
    let verdict = stdout
        .lines()
        .find(|l| l.starts_with("VERDICT: "))
        .unwrap_or_else(|| panic!("a verdict line\n{context}"));
    assert!(
        verdict.starts_with("VERDICT: PASS: failover from node1 to node"),
        "{verdict}"
    );
    let new_primary = if verdict.contains("to node2") {
        "node2"
    } else {
        "node3"
    };
    assert!(
        stdout.contains(&format!("after the promotion:  {new_primary} (")),
        "writes followed the promotion\n{context}"
    );
    let reads_before = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("before the failover:"))
        .unwrap_or_else(|| panic!("reads before the failover\n{context}"));
    assert!(
        !reads_before.contains("node1") && reads_before.contains("node"),
        "reads went to the replicas: {reads_before}"
    );
    assert!(
        stdout.contains("failover completed:"),
        "the other replica follows the new primary\n{context}"
    );
    assert_nothing_left(&data_dir(&stdout));
}

#[test]
fn the_live_demo_serves_until_sigterm_and_cleans_up() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut demo = Demo::start(&[]);
    let serving = demo.wait_for_line("goes to", Duration::from_secs(120));
    let so_far = demo.stdout.join("\n");
    proc::kill("TERM", demo.child.id());
    let (success, stdout, stderr) = demo.finish(Duration::from_secs(60));
    let context = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(serving, "the live table appears\n{so_far}\n{context}");
    assert!(success, "SIGTERM ends the demo cleanly\n{context}");
    assert!(
        stdout.contains("psql \"postgresql://demo:demo@127.0.0.1:"),
        "connection strings are printed\n{context}"
    );
    assert!(stdout.contains("data directory removed"), "{context}");
    assert_nothing_left(&data_dir(&stdout));
}
