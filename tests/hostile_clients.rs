//! Hostile clients against a running proxy (real PostgreSQL behind it): a flood of
//! idle unauthenticated sockets, connections that trickle their startup, random
//! bytes, a flood of failed logins, oversized messages at each stage. Throughout,
//! a normal client from another address logs in and queries, the proxy never
//! panics, and what it holds stays bounded.

mod harness;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use harness::pg::shared_cluster;
use harness::proxy::*;
use harness::raw_client::*;
use switchyard::proxy::RunningProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics anywhere in the process (a proxy task's panic is otherwise only
/// a log line).
fn count_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to `addr` from the loopback address `source`.
async fn connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// Logs in as app_md5 from `source` and runs `select 41 + 1`.
async fn normal_client(source: IpAddr, addr: SocketAddr) {
    let mut stream = connect_from(source, addr)
        .await
        .expect("normal client connects");
    stream
        .write_all(&startup_packet(
            196608,
            &[("user", "app_md5"), ("database", "appdb")],
        ))
        .await
        .expect("startup");
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!(
        tag,
        b'R',
        "normal client: {:?}",
        String::from_utf8_lossy(&body)
    );
    let salt = [body[4], body[5], body[6], body[7]];
    let response = switchyard::auth::md5::md5_response("app_md5", "app_md5_pw", salt);
    stream
        .write_all(&password_msg(&response))
        .await
        .expect("password");
    let mut client = RawClient {
        stream,
        name: "normal client",
    };
    let login = client.until_ready().await;
    assert!(
        error_responses(&login).is_empty(),
        "{:?}",
        error_responses(&login)
    );
    let reply = client.round_trip(&query_msg("select 41 + 1")).await;
    assert_eq!(data_rows(&reply), row(&["42"]));
}

/// What the proxy sends before closing, read until EOF (at most 10 s).
async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all)).await;
    all
}

fn sqlstate_of(reply: &[u8]) -> Option<String> {
    (reply.first() == Some(&b'E') && reply.len() > 5).then(|| sqlstate(&reply[5..]))
}

/// The value of the series `series` (name and labels as exported).
fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Raises this process's soft file-descriptor limit to `wanted` (or the hard
/// limit, whichever is lower), failing clearly when that is too low.
fn raise_fd_limit(wanted: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let target = limit.maximum.map_or(wanted, |hard| hard.min(wanted));
    if limit.current.is_some_and(|soft| soft < target) {
        let raised = Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        setrlimit(Resource::Nofile, raised).expect("raise the soft fd limit");
    }
    assert!(
        target >= 6_000,
        "this test needs 6,000 file descriptors; the hard limit is {:?}",
        limit.maximum
    );
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

async fn status_number(proxy: &RunningProxy, field: &str) -> u64 {
    let (_, body) = admin_get(proxy, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("status json");
    status[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn five_thousand_idle_sockets_from_one_address_do_not_lock_others_out() {
    count_panics();
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(
        cluster.port(0),
        "pool: { mode: transaction, size: 2 }\nclient: { startup_timeout: 300s }\n",
    )
    .await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let fds_before = open_fds();

    // In batches the listen backlog holds; each batch is answered before the next.
    let mut flood = Vec::new();
    let mut answered = Vec::new();
    // The test process holds all 5,000 client ends (and the proxy, in-process,
    // its own): a soft limit of 1,024 would not do.
    raise_fd_limit(12_000);
    for batch in 0..20 {
        let connects = (0..250).map(|_| connect_from(loopback(1), rw));
        for stream in futures_util::future::join_all(connects).await {
            flood.push(stream.unwrap_or_else(|e| panic!("flood batch {batch}: {e}")));
            answered.push(false);
        }
        // The default per-address limit (100) admits the first ones to arrive;
        // the rest are told why and closed at once.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            for (stream, answered) in flood.iter().zip(answered.iter_mut()) {
                let mut reply = [0u8; 512];
                match stream.try_read(&mut reply) {
                    _ if *answered => {}
                    Ok(n) => {
                        assert_eq!(sqlstate_of(&reply[..n]).as_deref(), Some("53300"));
                        *answered = true;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("flood socket: {e}"),
                }
            }
            let done = answered.iter().filter(|a| **a).count() + 100 >= flood.len();
            if done || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let refused = answered.iter().filter(|a| **a).count();
    assert_eq!(refused, 4_900, "refused at accept");
    assert_eq!(status_number(&proxy, "unauthenticated_clients").await, 100);

    // Another address logs in and queries while the 100 sit there.
    normal_client(loopback(2), rw).await;
    // The proxy holds ~100 sockets, not 5,000 (the test itself holds 5,000).
    let proxy_fds = open_fds().saturating_sub(fds_before + flood.len());
    assert!(proxy_fds < 300, "the proxy holds {proxy_fds} descriptors");

    drop(flood);
    harness::wait::eventually(Duration::from_secs(10), "places come back", || async {
        status_number(&proxy, "unauthenticated_clients").await == 0
    })
    .await;
    // The recorder is process-wide: other tests of this binary add to it.
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    let refusals = counter(
        &metrics,
        "switchyard_client_refusals_total{listener=\"rw\",reason=\"source_limit\"}",
    );
    assert!(refusals >= 4_900.0, "{metrics}");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_total_limit_holds_across_addresses() {
    count_panics();
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(
        cluster.port(0),
        "pool: { mode: transaction, size: 2 }\nclient: { max_unauthenticated: 20, startup_timeout: 60s }\n",
    )
    .await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let mut flood = Vec::new();
    for i in 0..25u8 {
        flood.push(connect_from(loopback(10 + i), rw).await.expect("connect"));
    }
    let mut last = flood.pop().expect("25 sockets");
    let reply = read_to_end(&mut last).await;
    assert_eq!(sqlstate_of(&reply).as_deref(), Some("53300"));
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("client.max_unauthenticated is 20"), "{text}");
    assert_eq!(status_number(&proxy, "unauthenticated_clients").await, 20);
    drop(flood);
    harness::wait::eventually(Duration::from_secs(10), "places come back", || async {
        status_number(&proxy, "unauthenticated_clients").await == 0
    })
    .await;
    normal_client(loopback(2), rw).await;
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn trickled_startups_random_bytes_and_oversized_messages_are_cut_off() {
    count_panics();
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(
        cluster.port(0),
        "pool: { mode: transaction, size: 2 }\nclient: { startup_timeout: 2s, max_message_size: 1MB }\n",
    )
    .await;
    let rw = proxy.listener_addr("rw").expect("rw");

    // Slowloris: a startup packet one byte every 300 ms is cut at startup_timeout.
    let packet = startup_packet(196608, &[("user", "app_md5"), ("database", "appdb")]);
    let mut slow = connect_from(loopback(3), rw).await.expect("connect");
    let trickle = async {
        for byte in &packet {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(8), trickle).await;
    let reply = read_to_end(&mut slow).await;
    let text = String::from_utf8_lossy(&reply);
    assert_eq!(sqlstate_of(&reply).as_deref(), Some("08P01"), "{text}");
    assert!(text.contains("startup did not finish within 2s"), "{text}");

    // Random bytes right after connect: every connection ends, none hangs.
    let mut state: u64 = 0x853c_49e6_748f_ea9b;
    for round in 0..200 {
        let bytes: Vec<u8> = (0..1 + round % 64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let mut stream = connect_from(loopback(4), rw).await.expect("connect");
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
        let reply = tokio::time::timeout(Duration::from_secs(5), async {
            let mut all = Vec::new();
            let _ = stream.read_to_end(&mut all).await;
            all
        })
        .await
        .unwrap_or_else(|_| panic!("round {round}: {bytes:?} left the connection open"));
        if let Some(code) = sqlstate_of(&reply) {
            assert!(
                matches!(
                    code.as_str(),
                    "08P01" | "28000" | "3D000" | "28P01" | "0A000"
                ),
                "round {round}: {bytes:?} got {code}"
            );
        }
    }

    // A startup packet claiming 1 GB: refused at once, nothing allocated for it.
    let mut huge = connect_from(loopback(5), rw).await.expect("connect");
    huge.write_all(&(1u32 << 30).to_be_bytes())
        .await
        .expect("length");
    huge.write_all(&196608u32.to_be_bytes())
        .await
        .expect("version");
    let reply = read_to_end(&mut huge).await;
    assert_eq!(sqlstate_of(&reply).as_deref(), Some("08P01"), "{reply:?}");

    // A password message claiming 100 MB during MD5 authentication.
    let (mut stream, _) = md5_login_started(rw).await;
    let mut header = vec![b'p'];
    header.extend_from_slice(&(100u32 << 20).to_be_bytes());
    stream.write_all(&header).await.expect("header");
    let reply = read_to_end(&mut stream).await;
    assert_eq!(sqlstate_of(&reply).as_deref(), Some("08P01"), "{reply:?}");

    // A query message past client.max_message_size after logging in.
    let mut client = RawClient::login(rw, "oversized").await;
    let mut header = vec![b'Q'];
    header.extend_from_slice(&(2u32 << 20).to_be_bytes());
    client.send(&header).await;
    let reply = read_to_end(&mut client.stream).await;
    assert!(
        matches!(sqlstate_of(&reply).as_deref(), Some("08P01" | "54000")),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );

    normal_client(loopback(2), rw).await;
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_failed_logins_is_slowed_counted_and_bounded() {
    count_panics();
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(
        cluster.port(0),
        "pool: { mode: transaction, size: 2 }\n\
         client: { max_unauthenticated_per_source: 10, auth_failure_delay: 1s }\n",
    )
    .await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let attempt = |i: usize| async move {
        let started = std::time::Instant::now();
        let mut stream = connect_from(loopback(6), rw).await.expect("connect");
        let _ = stream
            .write_all(&startup_packet(
                196608,
                &[("user", "app_md5"), ("database", "appdb")],
            ))
            .await;
        let mut first = [0u8; 1];
        if stream.read_exact(&mut first).await.is_err() || first[0] != b'R' {
            // Refused at accept (53300 before anything else) or closed.
            let mut rest = first.to_vec();
            rest.extend(read_to_end(&mut stream).await);
            return (sqlstate_of(&rest), started.elapsed());
        }
        let mut rest = [0u8; 12];
        stream.read_exact(&mut rest).await.expect("md5 request");
        let salt = [rest[8], rest[9], rest[10], rest[11]];
        let wrong = switchyard::auth::md5::md5_response("app_md5", &format!("guess{i}"), salt);
        stream
            .write_all(&password_msg(&wrong))
            .await
            .expect("password");
        let reply = read_to_end(&mut stream).await;
        (sqlstate_of(&reply), started.elapsed())
    };
    let results = futures_util::future::join_all((0..30).map(attempt)).await;
    let failed: Vec<_> = results
        .iter()
        .filter(|(code, _)| code.as_deref() == Some("28P01"))
        .collect();
    let refused = results
        .iter()
        .filter(|(code, _)| code.as_deref() == Some("53300"))
        .count();
    assert_eq!(failed.len() + refused, 30, "{results:?}");
    assert!(failed.len() >= 10 && refused >= 1, "{results:?}");
    assert!(
        failed
            .iter()
            .all(|(_, took)| *took >= Duration::from_secs(1)),
        "every failure waits auth_failure_delay: {results:?}"
    );
    // Meanwhile another address is not slowed or refused.
    normal_client(loopback(2), rw).await;
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    let counted = counter(&metrics, "switchyard_auth_failures_total{listener=\"rw\"}");
    assert!(counted >= failed.len() as f64, "{metrics}");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}
