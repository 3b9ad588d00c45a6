//! Cancel forwarding between two Switchyard instances (the two halves of a
//! Keepalived pair), both in-process in front of the shared PostgreSQL cluster: a
//! CancelRequest that reaches the instance which does not own the session still
//! cancels the query, in both directions (one of them configured by a reload), and
//! keys that belong to nobody reachable (unknown peer id, our own id, an already
//! relayed request, a wrong secret) cancel nothing and break nothing.

mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::clients::*;
use harness::fake_patroni::{FakePatroni, FakeRole};
use harness::pg::shared_cluster;
use harness::proxy::*;
use harness::raw_client::*;
use switchyard::config::Config;
use switchyard::proxy::{self, RunningProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{CancelToken, NoTls};

/// Proxy A (peer_id 1, started from a file so it can be reloaded) and proxy B
/// (peer_id 2, passing cancels for A's keys to A's `rw` listener).
struct Pair {
    a: RunningProxy,
    b: RunningProxy,
    a_file: tempfile::NamedTempFile,
    a_yaml: String,
    _api: Vec<FakePatroni>,
}

impl Pair {
    async fn start() -> Pair {
        let cluster = shared_cluster().await;
        let (api, nodes) = fake_apis(&[cluster.port(0)], &[FakeRole::Primary]).await;
        let a_yaml = config_yaml(&nodes, "primary", "peer_id: 1\n");
        let a_file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(a_file.path(), &a_yaml).expect("write A's config");
        let a = start_from_file(a_file.path()).await;
        let a_rw = a.listener_addr("rw").expect("A rw");
        let b = start_proxy(&config_yaml(
            &nodes,
            "primary",
            &format!("peer_id: 2\npeers:\n  - {{ id: 1, address: \"{a_rw}\" }}\n"),
        ))
        .await;
        Pair {
            a,
            b,
            a_file,
            a_yaml,
            _api: api,
        }
    }

    fn rw(proxy: &RunningProxy) -> SocketAddr {
        proxy.listener_addr("rw").expect("rw listener")
    }

    /// Tells A about B through a reload of A's file.
    async fn reload_a_with_b_as_peer(&self) {
        let b_rw = Pair::rw(&self.b);
        let yaml = format!(
            "{}peers:\n  - {{ id: 2, address: \"{b_rw}\" }}\n",
            self.a_yaml
        );
        std::fs::write(self.a_file.path(), yaml).expect("rewrite A's config");
        let summary = self.a.reload().await.expect("A reloads");
        assert!(summary.contains("peering now"), "{summary}");
    }
}

async fn start_from_file(path: &Path) -> RunningProxy {
    init_logging();
    let config = Config::load(path).unwrap_or_else(|e| panic!("config: {e}"));
    proxy::start_with_source(config, Some(path.to_path_buf()))
        .await
        .expect("proxy starts")
}

/// A query that runs until it is cancelled (or 30 s pass), and its cancel token.
async fn sleeping_query(
    via: SocketAddr,
) -> (
    CancelToken,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let client = connect(via, "app", "app_pw").await;
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.batch_execute("select pg_sleep(30)").await });
    // Let the query reach the server before anything tries to cancel it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    (token, sleeper)
}

async fn cancel_via(token: &CancelToken, instance: SocketAddr) {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(instance))
        .await
        .expect("connected in time")
        .expect("connect for cancel");
    tokio::time::timeout(
        Duration::from_secs(10),
        token.cancel_query_raw(stream, NoTls),
    )
    .await
    .expect("cancel request sent in time")
    .expect("cancel sent");
}

async fn assert_cancelled(
    sleeper: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    started: Instant,
) {
    let result = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the query ends soon after the cancel")
        .expect("join");
    let error = result.expect_err("the query was cancelled");
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Sends a raw CancelRequest and waits (bounded) for the instance to close the
/// connection, as it does once it has dealt with the request.
async fn raw_cancel(instance: SocketAddr, pid: i32, secret: [u8; 4]) {
    let mut stream = raw_connect(instance).await;
    stream
        .write_all(&cancel_request(pid, secret))
        .await
        .expect("send cancel");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the instance closes a cancel connection without answering: {read:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_sent_to_the_other_instance_cancels_the_query() {
    let pair = Pair::start().await;
    let (a, b) = (Pair::rw(&pair.a), Pair::rw(&pair.b));

    // Client on A, cancel to B: B passes it to A (configured at start).
    let started = Instant::now();
    let (token, sleeper) = sleeping_query(a).await;
    let (pid, secret) = cancel_key(&token).await;
    let peer = u32::from_be_bytes(secret) >> 25;
    assert_eq!(peer, 1, "A's keys carry peer id 1 in the secret ({pid})");
    cancel_via(&token, b).await;
    assert_cancelled(sleeper, started).await;

    // Client on B, cancel to A: A learns about B by a reload.
    pair.reload_a_with_b_as_peer().await;
    let started = Instant::now();
    let (token, sleeper) = sleeping_query(b).await;
    let (pid, secret) = cancel_key(&token).await;
    let peer = u32::from_be_bytes(secret) >> 25;
    assert_eq!(peer, 2, "B's keys carry peer id 2 in the secret ({pid})");
    cancel_via(&token, a).await;
    assert_cancelled(sleeper, started).await;

    // The owner still takes its own keys directly.
    let started = Instant::now();
    let (token, sleeper) = sleeping_query(a).await;
    cancel_via(&token, a).await;
    assert_cancelled(sleeper, started).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_nobody_reachable_owns_cancel_nothing() {
    let pair = Pair::start().await;
    let (a, b) = (Pair::rw(&pair.a), Pair::rw(&pair.b));
    let client = connect(a, "app", "app_pw").await;
    let token = client.cancel_token();
    let (pid, secret) = cancel_key(&token).await;
    // The secret's top 7 bits name the issuing instance; the rest is random.
    let with_peer =
        |peer: u32| ((u32::from_be_bytes(secret) & 0x01ff_ffff) | peer << 25).to_be_bytes();
    let relayed = (pid as u32 | 1 << 31) as i32;
    let mut wrong_secret = secret;
    wrong_secret[3] ^= 1;

    let sleeper = tokio::spawn(async move {
        let started = Instant::now();
        client.batch_execute("select pg_sleep(2)").await?;
        Ok::<_, tokio_postgres::Error>((client, started.elapsed()))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (instance, pid, secret, what) in [
        (b, pid, with_peer(5), "peer id 5 is not configured on B"),
        (b, pid, with_peer(2), "B's own id, no such session"),
        (b, pid, with_peer(0), "peer id 0: issued without peering"),
        (b, relayed, secret, "already relayed: B must not pass it on"),
        (b, pid, wrong_secret, "A's key with a wrong secret"),
        (
            a,
            pid,
            wrong_secret,
            "A's key with a wrong secret, sent to A",
        ),
        (b, -1, secret, "all bits set"),
    ] {
        eprintln!("cancel that must do nothing: {what}");
        raw_cancel(instance, pid, secret).await;
    }
    let (client, took) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the query finishes")
        .expect("join")
        .expect("no cancel reached the query");
    assert!(took >= Duration::from_secs(2), "{took:?}");

    // Both instances still serve.
    client.batch_execute("select 1").await.expect("A serves");
    let other = connect(b, "app", "app_pw").await;
    other.batch_execute("select 1").await.expect("B serves");
}
