//! Owns process supervision for the test harness: every server the harness
//! starts (postgres, etcd, patroni) runs under a tiny `sh` wrapper whose stdin
//! is a pipe held by the test process. When the test process exits for any
//! reason (normal exit, panic, SIGKILL) the pipe closes, the wrapper sees EOF,
//! stops the server (stop signal, then SIGKILL after a grace period) and
//! removes the directory it was told to clean up. Also owns port allocation
//! (`free_port`), running commands as the `postgres` OS user, running a
//! client program with a deadline (`run_with_deadline`), a blocking `http_get`,
//! log tails for panic messages and polling helpers.

use std::collections::HashSet;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Default timeout of every harness wait.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll interval of every harness wait.
pub const POLL: Duration = Duration::from_millis(100);

/// The wrapper. Positional parameters:
/// `$1` wrapper pid file, `$2` log file, `$3` dir to remove on EOF (or ""),
/// `$4` extra pid file whose first line is a second process to stop with
/// SIGINT/SIGKILL (e.g. a postmaster that patroni detached) (or ""),
/// `$5` stop signal name, `$6` grace in tenths of a second, then the command.
///
/// A line `keep` on stdin stops the server without removing `$3`; EOF (the
/// test process is gone or dropped us) stops it and removes `$3`.
const WRAPPER: &str = r#"
pidfile=$1; log=$2; cleanup=$3; extra=$4; sig=$5; grace=$6; shift 6
# sh starts background jobs with SIGINT/SIGQUIT ignored; undo that (GNU env).
if env --default-signal=INT true 2>/dev/null; then
  set -- env --default-signal=INT,QUIT "$@"
fi
"$@" </dev/null >>"$log" 2>&1 &
pid=$!
echo "$pid" >"$pidfile.tmp" && mv "$pidfile.tmp" "$pidfile"
cmd=eof
IFS= read -r cmd || cmd=eof
alive() {
  [ -r "/proc/$1/stat" ] || return 1
  st=$(sed -n 's/.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
xpid=""
if [ -n "$extra" ] && [ -r "$extra" ]; then
  xpid=$(head -n 1 "$extra" 2>/dev/null | tr -dc 0-9)
fi
kill -"$sig" "$pid" 2>/dev/null
[ -n "$xpid" ] && kill -INT "$xpid" 2>/dev/null
i=0
while alive "$pid" && [ $i -lt "$grace" ]; do sleep 0.1; i=$((i+1)); done
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
# The supervisor may have started a new postmaster while it was stopping (patroni
# restarting a demoted node): read the pid file again now that it is gone.
if [ -n "$extra" ] && [ -r "$extra" ]; then
  later=$(head -n 1 "$extra" 2>/dev/null | tr -dc 0-9)
  if [ -n "$later" ] && [ "$later" != "$xpid" ]; then
    kill -INT "$later" 2>/dev/null
    xpid="$xpid $later"
  fi
fi
for p in $xpid; do
  i=0
  while alive "$p" && [ $i -lt "$grace" ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$p" 2>/dev/null
done
rm -f "$pidfile"
if [ "$cmd" != keep ] && [ -n "$cleanup" ]; then rm -rf "$cleanup"; fi
exit 0
"#;

/// Janitor script: on EOF waits until every wrapper pid file (`*.wpid`) in the
/// base dir is gone (bounded), then removes the whole base dir.
const JANITOR: &str = r#"
base=$1
IFS= read -r cmd || cmd=eof
i=0
while [ $i -lt 300 ]; do
  set -- "$base"/*.wpid
  [ -e "$1" ] || break
  sleep 0.1; i=$((i+1))
done
rm -rf "$base"
exit 0
"#;

/// True when the test process runs as root (then postgres-owned things must
/// run via `runuser -u postgres`).
pub fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// uid/gid of the `postgres` OS user (from /etc/passwd).
pub fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3 && f[0] == "postgres" {
                return (
                    f[2].parse().expect("postgres uid"),
                    f[3].parse().expect("postgres gid"),
                );
            }
        }
        panic!("no `postgres` user in /etc/passwd (install postgresql)");
    })
}

/// Make `path` owned by the postgres user (when we are root) with `mode`.
pub fn give_to_postgres(path: &Path, mode: u32) {
    if is_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A fresh directory under the system temp dir, owned by the postgres user
/// (mode 0700; root can still read it), that is NOT removed on drop: removal
/// is the job of a [`Janitor`] or of the owner's `Drop`.
pub fn postgres_temp_dir(prefix: &str) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir")
        .keep();
    give_to_postgres(&dir, 0o700);
    dir
}

/// A `Command` for `program` that runs as the postgres OS user: through
/// `runuser -u postgres --` when we are root, directly otherwise.
pub fn command_as_postgres(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

/// Run a command to completion; panic with its stderr/stdout when it fails.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {cmd:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    out
}

/// Runs `command` to completion, killing it if it outlives `deadline`; the output
/// (via temp files, so a chatty child cannot block) and whether it was killed.
pub fn run_with_deadline(command: &mut Command, deadline: Duration) -> (Output, bool) {
    use std::io::Seek;
    let mut stdout = tempfile::tempfile().expect("temp file");
    let mut stderr = tempfile::tempfile().expect("temp file");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("clone"))
        .stderr(stderr.try_clone().expect("clone"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |f: &mut fs::File| {
        let mut buf = Vec::new();
        f.rewind().expect("rewind");
        f.read_to_end(&mut buf).expect("read output");
        buf
    };
    let output = Output {
        status,
        stdout: read(&mut stdout),
        stderr: read(&mut stderr),
    };
    (output, timed_out)
}

/// The last `lines` lines of a file (or a note that it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Tails of several logs, each under a header, for panic messages.
pub fn tails(logs: &[&Path], lines: usize) -> String {
    let mut s = String::new();
    for p in logs {
        s.push_str(&format!(
            "\n===== tail of {} =====\n{}\n",
            p.display(),
            tail(p, lines)
        ));
    }
    s
}

/// Poll `f` every [`POLL`] until it returns `Some`, or panic after `timeout`
/// with `what` and whatever `context()` returns (e.g. log tails).
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    context: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}{}",
                context()
            );
        }
        std::thread::sleep(POLL);
    }
}

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A free TCP port on 127.0.0.1, never the same twice in one process.
///
/// Ports are picked at random below the kernel's ephemeral range (so that
/// outgoing connections made meanwhile cannot grab the port before the
/// server binds it) and checked by binding 127.0.0.1:port; if that range is
/// unusable it falls back to binding 127.0.0.1:0.
pub fn free_port() -> u16 {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let used = USED.get_or_init(|| Mutex::new(HashSet::new()));
    let mut used = used.lock().unwrap_or_else(|e| e.into_inner());
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(32768u16);
    let (lo, hi) = (10000u16, low.max(10001));
    if hi > lo + 1000 {
        for _ in 0..200 {
            let port = lo + (random_u64() % u64::from(hi - lo)) as u16;
            if used.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                used.insert(port);
                return port;
            }
        }
    }
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        drop(l);
        if used.insert(port) {
            return port;
        }
    }
    panic!("free_port: no free port found");
}

/// Blocking HTTP/1.1 GET of `url` ("http://host:port/path"). Returns
/// `(status, body)` or `None` on any connection / protocol error / timeout.
pub fn http_get(url: &str, timeout: Duration) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = hostport.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size_line, rest) = s.split_once("\r\n")?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        s = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// How to start a supervised server; kept so it can be started again.
#[derive(Clone, Debug)]
struct Spec {
    program: String,
    args: Vec<String>,
    as_postgres_user: bool,
    log_path: PathBuf,
    cleanup_dir: Option<PathBuf>,
    extra_pid_file: Option<PathBuf>,
    stop_signal: &'static str,
    grace: Duration,
    env: Vec<(String, String)>,
}

/// Extra knobs for [`Supervised::spawn_with`].
#[derive(Clone, Debug, Default)]
pub struct SpawnOpts {
    /// A file whose first line is the pid of a second process that must be
    /// stopped (SIGINT, then SIGKILL) with the server, e.g. the
    /// `postmaster.pid` of a postgres that patroni runs detached.
    pub extra_pid_file: Option<PathBuf>,
    /// Signal name sent to the server on stop (default `INT`).
    pub stop_signal: Option<&'static str>,
    /// How long to wait after the stop signal before SIGKILL (default 5 s).
    pub grace: Option<Duration>,
    /// Extra environment variables for the server.
    pub env: Vec<(String, String)>,
}

/// A server process tied to the lifetime of the test process (see module doc).
pub struct Supervised {
    spec: Spec,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    pid_file: PathBuf,
}

impl Supervised {
    /// Start `program args…` under a wrapper. Output goes to `log_path`
    /// (appended); the wrapper's pid file is `log_path` with extension
    /// `wpid`. `cleanup_dir` is removed when the server is stopped because
    /// the test process went away or this value was dropped.
    pub fn spawn(
        program: &str,
        args: &[&str],
        as_postgres_user: bool,
        log_path: &Path,
        cleanup_dir: Option<&Path>,
    ) -> Supervised {
        Self::spawn_with(
            program,
            args,
            as_postgres_user,
            log_path,
            cleanup_dir,
            SpawnOpts::default(),
        )
    }

    /// [`Supervised::spawn`] with extra options.
    pub fn spawn_with(
        program: &str,
        args: &[&str],
        as_postgres_user: bool,
        log_path: &Path,
        cleanup_dir: Option<&Path>,
        opts: SpawnOpts,
    ) -> Supervised {
        let spec = Spec {
            program: program.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            as_postgres_user,
            log_path: log_path.to_path_buf(),
            cleanup_dir: cleanup_dir.map(Path::to_path_buf),
            extra_pid_file: opts.extra_pid_file,
            stop_signal: opts.stop_signal.unwrap_or("INT"),
            grace: opts.grace.unwrap_or(Duration::from_secs(5)),
            env: opts.env,
        };
        let mut s = Supervised {
            pid_file: log_path.with_extension("wpid"),
            spec,
            child: None,
            stdin: None,
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let _ = fs::remove_file(&self.pid_file);
        let spec = &self.spec;
        let mut cmd = if spec.as_postgres_user {
            command_as_postgres("sh")
        } else {
            Command::new("sh")
        };
        let tenths = (spec.grace.as_millis() / 100).max(1).to_string();
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg("switchyard-test-wrapper")
            .arg(&self.pid_file)
            .arg(&spec.log_path)
            .arg(spec.cleanup_dir.as_deref().unwrap_or(Path::new("")))
            .arg(spec.extra_pid_file.as_deref().unwrap_or(Path::new("")))
            .arg(spec.stop_signal)
            .arg(tenths)
            .arg(&spec.program)
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C on the terminal must not kill the
            // wrapper before it can clean up (the server gets stopped by it).
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn wrapper for {}: {e}", spec.program));
        self.stdin = child.stdin.take();
        self.child = Some(child);
    }

    /// Pid of the server process itself (not the wrapper); waits up to 5 s for
    /// the wrapper to record it. `None` when not running.
    pub fn server_pid(&self) -> Option<u32> {
        self.child.as_ref()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(pid) = fs::read_to_string(&self.pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return Some(pid);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server process is currently alive (not a zombie).
    pub fn is_server_alive(&self) -> bool {
        self.server_pid().is_some_and(pid_alive)
    }

    /// Log file of the server.
    pub fn log_path(&self) -> &Path {
        &self.spec.log_path
    }

    /// SIGKILL the server itself (and the extra pid, if any). The wrapper
    /// stays until [`Supervised::stop`], [`Supervised::start`] or drop.
    pub fn kill_hard(&mut self) {
        if let Some(pid) = self.server_pid() {
            kill("KILL", pid);
        }
        if let Some(pid) = self.spec.extra_pid_file.as_deref().and_then(read_pid_file) {
            kill("KILL", pid);
        }
    }

    /// Stop the server (stop signal, SIGKILL after the grace period) and wait
    /// for it, keeping the cleanup dir so it can be started again.
    pub fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"keep\n");
        }
        self.wait_exit(self.spec.grace + Duration::from_secs(10));
    }

    /// Start the server again with the same arguments (stops the old wrapper
    /// first if it is still there, keeping the cleanup dir).
    pub fn start(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.launch();
    }

    /// Close the wrapper's stdin: the server is stopped and the cleanup dir
    /// removed, asynchronously. Pair with [`Supervised::wait_exit`].
    pub fn begin_shutdown(&mut self) {
        self.stdin.take();
    }

    /// Wait up to `timeout` for the wrapper to exit (after `stop` or
    /// `begin_shutdown`). Returns true when it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        self.stdin.take();
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => {
                    self.child = None;
                    return true;
                }
                Ok(None) if Instant::now() >= deadline => return false,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.begin_shutdown();
        let grace = self.spec.grace;
        self.wait_exit(grace + Duration::from_secs(5));
    }
}

/// Removes a base directory once every [`Supervised`] wrapper that keeps its
/// pid file (`*.wpid`) in it is gone; triggered by drop or process exit.
pub struct Janitor {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Janitor {
    /// Watch `base` (must be writable by the postgres user when root).
    pub fn new(base: &Path) -> Janitor {
        let mut child = command_as_postgres("sh")
            .arg("-c")
            .arg(JANITOR)
            .arg("switchyard-test-janitor")
            .arg(base)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn janitor");
        let stdin = child.stdin.take();
        Janitor {
            child: Some(child),
            stdin,
        }
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        self.stdin.take();
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(35);
            while let Ok(None) = child.try_wait() {
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// First line of a pid file (e.g. `postmaster.pid`) as a pid.
pub fn read_pid_file(path: &Path) -> Option<u32> {
    fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is a live (non-zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    match stat.rfind(')') {
        Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
        None => false,
    }
}

/// Send signal `sig` (name, e.g. "KILL") to `pid` via kill(1).
pub fn kill(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
