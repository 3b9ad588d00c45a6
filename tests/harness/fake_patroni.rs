//! Owns the in-process fake Patroni REST API: a tokio task speaking minimal
//! HTTP/1.1 on 127.0.0.1 whose answers mimic Patroni 3.0.2's health-check
//! endpoints (`/primary`, `/replica`, `/read-only`, `/health`, ...), `/patroni`
//! and `/cluster`, with role / timeline / lag switchable by the test, plus
//! misbehaving modes (`Hang`, `Refuse`) for failure tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// What the fake node pretends to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeRole {
    /// Running leader: `/primary` 200, `/replica` 503.
    Primary,
    /// Running streaming replica: `/replica` 200, `/primary` 503.
    Replica,
    /// Patroni up, PostgreSQL down: 503 on every health endpoint.
    NotRunning,
    /// Accept the connection, read the request, never answer.
    Hang,
    /// Accept the connection and close it immediately.
    Refuse,
}

/// Base WAL position reported by the fake (the "leader" position).
const BASE_LSN: u64 = 0x0500_0000;
/// How long the server waits for a complete request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 64 * 1024;

struct State {
    role: FakeRole,
    timeline: u64,
    lag: u64,
    pg_port: u16,
    members: Option<Value>,
    paths: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    requests: AtomicUsize,
    url: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fake Patroni REST API; stops when dropped.
pub struct FakePatroni {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FakePatroni {
    /// Start listening on 127.0.0.1:0 (must be called inside a tokio runtime).
    pub async fn start(role: FakeRole, timeline: u64) -> FakePatroni {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake patroni bind");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                role,
                timeline,
                lag: 0,
                pg_port: 5432,
                members: None,
                paths: Vec::new(),
            }),
            requests: AtomicUsize::new(0),
            url: format!("http://{addr}"),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        FakePatroni { addr, shared, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// "http://127.0.0.1:PORT"
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    pub fn role(&self) -> FakeRole {
        self.shared.lock().role
    }

    pub fn set_role(&self, role: FakeRole) {
        self.shared.lock().role = role;
    }

    pub fn set_timeline(&self, t: u64) {
        self.shared.lock().timeline = t;
    }

    /// Replication lag in bytes reported by a `Replica` (in `/patroni` xlog
    /// positions and `/cluster`); also used for `/replica?lag=…` checks.
    pub fn set_lag(&self, bytes: u64) {
        self.shared.lock().lag = bytes;
    }

    /// PostgreSQL port reported in the default `/cluster` member.
    pub fn set_pg_port(&self, port: u16) {
        self.shared.lock().pg_port = port;
    }

    /// Replace `/cluster`'s `members` array (a JSON array of member
    /// objects); without it `/cluster` describes just this fake node.
    pub fn set_cluster_members(&self, members: Value) {
        self.shared.lock().members = Some(members);
    }

    /// Number of requests answered (Hang/Refuse connections are not counted).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Request targets (path + query) of the answered requests, in order.
    pub fn paths(&self) -> Vec<String> {
        self.shared.lock().paths.clone()
    }
}

impl Drop for FakePatroni {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, aborting connections.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    conns.spawn(serve(stream, shared.clone()));
                }
            }
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Read the request head (up to the blank line); `None` on timeout, EOF,
/// oversize or I/O error.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let fut = async {
        let mut chunk = [0u8; 2048];
        loop {
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Some(());
            }
            if buf.len() > MAX_HEAD {
                return None;
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(HEAD_TIMEOUT, fut).await.ok()??;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    if shared.lock().role == FakeRole::Refuse {
        return; // dropping the stream closes it
    }
    let head = read_head(&mut stream).await;
    // Role may have been changed while the request was in flight.
    let role = shared.lock().role;
    match role {
        FakeRole::Refuse => return,
        FakeRole::Hang => {
            // Keep the socket open, never answer; drain until the peer goes.
            let mut sink = [0u8; 1024];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            return;
        }
        _ => {}
    }
    let (status, body) = match head.as_deref().and_then(parse_request_line) {
        Some((method, target)) => {
            let resp = respond(&shared, &method, &target);
            let mut st = shared.lock();
            st.paths.push(target);
            resp
        }
        None => (400, json!({"error": "bad request"}).to_string()),
    };
    let head_only = head
        .as_deref()
        .is_some_and(|h| h.starts_with("HEAD ") || h.starts_with("OPTIONS "));
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        501 => "Not Implemented",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: BaseHTTP/0.6 Python/3.11 (switchyard fake patroni)\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        if head_only { 0 } else { body.len() }
    );
    if !head_only {
        out.push_str(&body);
    }
    if stream.write_all(out.as_bytes()).await.is_ok() {
        let _ = stream.flush().await;
        shared.requests.fetch_add(1, Ordering::SeqCst);
    }
    let _ = stream.shutdown().await;
}

fn parse_request_line(head: &str) -> Option<(String, String)> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") || !target.starts_with('/') {
        return None;
    }
    Some((method, target))
}

/// Parse Patroni's `lag=` value: plain bytes or with kB/MB/GB units.
fn parse_lag(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1024,
        "MB" => 1024 * 1024,
        "GB" => 1024 * 1024 * 1024,
        "TB" => 1024u64 * 1024 * 1024 * 1024,
        _ => return None,
    };
    Some(n * mult)
}

fn respond(shared: &Shared, method: &str, target: &str) -> (u16, String) {
    let st = shared.lock();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = path.trim_end_matches('/');
    let path = if path.is_empty() { "/" } else { path };
    let max_lag = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("lag="))
        .and_then(parse_lag);
    let running = matches!(st.role, FakeRole::Primary | FakeRole::Replica);
    let primary = st.role == FakeRole::Primary;
    let replica = st.role == FakeRole::Replica;
    let lag_ok = max_lag.is_none_or(|m| st.lag <= m);
    let ok = |b: bool| if b { 200 } else { 503 };
    let known_get = matches!(method, "GET" | "HEAD" | "OPTIONS");
    let status_body = || patroni_json(&st, &shared.url).to_string();
    let health = |b: bool| (ok(b), status_body());
    let found = match path {
        "/" | "/primary" | "/master" | "/leader" | "/read-write" | "/standby-leader" => {
            let b = if path == "/standby-leader" {
                false
            } else {
                primary
            };
            Some(health(b))
        }
        "/replica" => Some(health(replica && lag_ok)),
        "/read-only" => Some(health(primary || (replica && lag_ok))),
        "/async" | "/asynchronous" => Some(health(replica && lag_ok)),
        "/sync" | "/synchronous" => Some(health(false)),
        "/health" => Some(health(running)),
        "/liveness" => Some((200, String::new())),
        "/readiness" => Some(health(running)),
        "/patroni" => Some(health(running)),
        "/cluster" => Some((200, cluster_json(&st, &shared.url).to_string())),
        "/history" => Some((
            200,
            Value::Array(
                (1..st.timeline)
                    .map(|t| json!([t, BASE_LSN / 2 + t, "no recovery target specified"]))
                    .collect(),
            )
            .to_string(),
        )),
        "/config" => Some((
            200,
            json!({"ttl": 30, "loop_wait": 10, "retry_timeout": 10,
                   "maximum_lag_on_failover": 1048576})
            .to_string(),
        )),
        _ => None,
    };
    match found {
        Some(_) if !known_get => (501, json!({"error": "Unsupported method"}).to_string()),
        Some(r) => r,
        None => (404, json!({"error": "not found"}).to_string()),
    }
}

fn patroni_json(st: &State, url: &str) -> Value {
    let patroni = json!({"version": "3.0.2", "scope": "test"});
    let sysid = "7290000000000000001";
    match st.role {
        FakeRole::Primary => json!({
            "state": "running",
            "postmaster_start_time": "2024-01-01 00:00:00.000000+00:00",
            "role": "master",
            "server_version": 150000,
            "xlog": {"location": BASE_LSN},
            "timeline": st.timeline,
            "replication": [],
            "dcs_last_seen": 1_700_000_000u64,
            "database_system_identifier": sysid,
            "patroni": patroni,
        }),
        FakeRole::Replica => {
            let pos = BASE_LSN.saturating_sub(st.lag);
            json!({
                "state": "running",
                "postmaster_start_time": "2024-01-01 00:00:00.000000+00:00",
                "role": "replica",
                "server_version": 150000,
                "xlog": {
                    "received_location": pos,
                    "replayed_location": pos,
                    "replayed_timestamp": null,
                    "paused": false
                },
                "timeline": st.timeline,
                "replication_state": "streaming",
                "lag": st.lag,
                "dcs_last_seen": 1_700_000_000u64,
                "database_system_identifier": sysid,
                "patroni": patroni,
            })
        }
        _ => json!({
            "state": "stopped",
            "role": "replica",
            "dcs_last_seen": 1_700_000_000u64,
            "database_system_identifier": sysid,
            "patroni": patroni,
            "api_url": format!("{url}/patroni"),
        }),
    }
}

fn cluster_json(st: &State, url: &str) -> Value {
    let members = match &st.members {
        Some(m) => m.clone(),
        None => {
            let mut m = json!({
                "name": "fake0",
                "role": if st.role == FakeRole::Primary { "leader" } else { "replica" },
                "state": if matches!(st.role, FakeRole::Primary | FakeRole::Replica) {
                    "running"
                } else {
                    "stopped"
                },
                "api_url": format!("{url}/patroni"),
                "host": "127.0.0.1",
                "port": st.pg_port,
                "timeline": st.timeline,
            });
            if st.role != FakeRole::Primary {
                m["lag"] = json!(st.lag);
            }
            json!([m])
        }
    };
    json!({"members": members, "scope": "test"})
}

/// A parsed HTTP response (see [`http_request`]).
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.body))
    }
}

/// Minimal async HTTP/1.1 client for tests: sends `METHOD path` to `addr`
/// with `Connection: close` and reads until EOF, all within `timeout`.
/// Errors: connect/read failures, `TimedOut` on timeout, `UnexpectedEof`
/// when the server closed without a complete response head.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    // Switchyard's admin API takes a POST only with a JSON content type (or its
    // token), as a script sends it; a browser form cannot.
    let headers: &[(&str, &str)] = if method == "POST" {
        &[("Content-Type", "application/json")]
    } else {
        &[]
    };
    http_request_with(addr, method, path, headers, timeout).await
}

/// [`http_request`] with exactly the extra `headers` given.
pub async fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    use std::io::{Error, ErrorKind};
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n{extra}Connection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| Error::new(ErrorKind::UnexpectedEof, "no complete response head"))?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| Error::new(ErrorKind::InvalidData, "bad status line"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(HttpResponse {
            status,
            headers,
            body: body.to_string(),
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::new(ErrorKind::TimedOut, "http request timed out"))?
}
