//! Unit tests of [`relay`](super).

use super::*;
use tokio::io::duplex;

use crate::protocol::test_message as message;

/// A relay between two in-memory pipes, with a 1 kB client message limit:
/// (client application end, server end, the relay's task).
fn spawn_relay() -> (
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<(RelayEnd, RelayStats)>,
) {
    spawn_pausable_relay(None)
}

/// [`spawn_relay`] watching `gate` for database `db` (session mode), if given.
fn spawn_pausable_relay(
    gate: Option<std::sync::Arc<PauseGate>>,
) -> (
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<(RelayEnd, RelayStats)>,
) {
    let (client_app, client_proxy) = duplex(64 * 1024);
    let (server_proxy, server_app) = duplex(64 * 1024);
    let task = tokio::spawn(async move {
        let (mut cr, mut cw) = tokio::io::split(client_proxy);
        let (mut sr, mut sw) = tokio::io::split(server_proxy);
        let mut stats = RelayStats::default();
        let shutdown = CancellationToken::new();
        let draining = CancellationToken::new();
        let metrics = ListenerMetrics::new("test");
        let settings = RelaySettings {
            max_message_size: 1024,
            shutdown: &shutdown,
            draining: &draining,
            metrics: &metrics,
            timeouts: Default::default(),
            pause: gate.as_deref().map(|gate| PauseWatch {
                gate,
                database: "db",
            }),
        };
        let end = relay(
            (&mut cr, &mut cw),
            (&mut sr, &mut sw),
            BytesMut::new(),
            &settings,
            &mut stats,
        )
        .await;
        (end, stats)
    });
    (client_app, server_app, task)
}

#[tokio::test]
async fn forwards_both_ways_and_stops_at_terminate() {
    let (mut client_app, mut server_app, relay_task) = spawn_relay();
    let query = message(tag::QUERY, b"select 1\0");
    client_app.write_all(&query).await.expect("write");
    let mut got = vec![0u8; query.len()];
    server_app.read_exact(&mut got).await.expect("read");
    assert_eq!(got, query);

    let reply = [
        message(tag::DATA_ROW, &[1u8; 5000]),
        message(tag::READY_FOR_QUERY, b"T"),
    ]
    .concat();
    server_app.write_all(&reply).await.expect("write");
    let mut got = vec![0u8; reply.len()];
    client_app.read_exact(&mut got).await.expect("read");
    assert_eq!(got, reply);

    client_app
        .write_all(&message(tag::TERMINATE, b""))
        .await
        .expect("write");
    let (end, stats) = relay_task.await.expect("join");
    assert!(matches!(end, RelayEnd::ClientTerminated), "{end:?}");
    assert_eq!(stats.transaction_status, tag::STATUS_IN_TRANSACTION);
    assert_eq!(stats.server_bytes, reply.len() as u64);
}

#[tokio::test(start_paused = true)]
async fn a_failed_server_write_waits_briefly_for_the_servers_own_end() {
    let gone = |end: &RelayEnd| matches!(end, RelayEnd::ServerGone { .. });
    // The server's FATAL was forwarded, then it closed: that end is taken.
    let told = std::pin::pin!(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        server_gone(None, true)
    });
    assert!(matches!(
        after_server_write_failed(told, gone).await,
        Some(RelayEnd::ServerGone {
            sent_error: true,
            ..
        })
    ));
    // The other direction ends otherwise, or not within the grace: no end.
    let client_left = std::pin::pin!(async { RelayEnd::ClientGone(None) });
    assert!(after_server_write_failed(client_left, gone).await.is_none());
    let silent = std::pin::pin!(std::future::pending::<RelayEnd>());
    assert!(after_server_write_failed(silent, gone).await.is_none());
}

#[tokio::test]
async fn a_client_leaving_mid_batch_or_mid_copy_is_unsynced() {
    let cases: [(&str, Vec<u8>, bool); 4] = [
        (
            "Execute, Flush",
            [
                message(tag::EXECUTE, b"\0\0\0\0\0"),
                message(tag::FLUSH, b""),
            ]
            .concat(),
            true,
        ),
        ("COPY data", message(tag::COPY_DATA, b"row\n"), true),
        (
            "Execute, Sync",
            [
                message(tag::EXECUTE, b"\0\0\0\0\0"),
                message(tag::SYNC, b""),
            ]
            .concat(),
            false,
        ),
        (
            "COPY data, CopyDone",
            [
                message(tag::COPY_DATA, b"row\n"),
                message(tag::COPY_DONE, b""),
            ]
            .concat(),
            false,
        ),
    ];
    for (what, bytes, unsynced) in cases {
        let (mut client_app, mut server_app, relay_task) = spawn_relay();
        client_app.write_all(&bytes).await.expect("write");
        let mut got = vec![0u8; bytes.len()];
        server_app.read_exact(&mut got).await.expect("read");
        drop(client_app);
        let (end, stats) = relay_task.await.expect("join");
        assert!(matches!(end, RelayEnd::ClientGone(None)), "{what}: {end:?}");
        assert_eq!(stats.client_unsynced, unsynced, "{what}");
    }
}

#[tokio::test]
async fn oversized_client_message_is_refused_before_forwarding() {
    let (mut client_app, _server_app, relay_task) = spawn_relay();
    client_app
        .write_all(&message(tag::QUERY, &b"x".repeat(2000)))
        .await
        .expect("write");
    let (end, stats) = relay_task.await.expect("join");
    assert!(
        matches!(end, RelayEnd::ClientProtocol(FrameError::TooLarge { .. })),
        "{end:?}"
    );
    assert_eq!(stats.client_bytes, 0);
}

#[tokio::test]
async fn terminate_is_kept_back_even_when_split_across_reads() {
    let (mut client_app, mut server_app, relay_task) = spawn_relay();
    let query = message(tag::QUERY, b"select 1\0");
    let terminate = message(tag::TERMINATE, b"");
    client_app
        .write_all(&[&query[..], &terminate[..2]].concat())
        .await
        .expect("write");
    // The relay stops at the Terminate's type byte; the rest may find it gone.
    let _ = client_app.write_all(&terminate[2..]).await;
    let (end, stats) = relay_task.await.expect("join");
    assert!(matches!(end, RelayEnd::ClientTerminated), "{end:?}");
    assert_eq!(stats.requests, 1);
    let mut forwarded = Vec::new();
    server_app.read_to_end(&mut forwarded).await.expect("read");
    assert_eq!(forwarded, query, "only the query reaches the server");
}

async fn forward(
    from: &mut tokio::io::DuplexStream,
    to: &mut tokio::io::DuplexStream,
    bytes: &[u8],
) {
    from.write_all(bytes).await.expect("write");
    let mut got = vec![0u8; bytes.len()];
    to.read_exact(&mut got).await.expect("read");
    assert_eq!(got, bytes);
}

#[tokio::test]
async fn an_idle_session_stops_for_a_pause_at_once() {
    let gate = std::sync::Arc::new(PauseGate::default());
    let (mut client_app, mut server_app, relay_task) =
        spawn_pausable_relay(Some(std::sync::Arc::clone(&gate)));
    let query = message(tag::QUERY, b"select 1\0");
    forward(&mut client_app, &mut server_app, &query).await;
    let reply = message(tag::READY_FOR_QUERY, b"I");
    forward(&mut server_app, &mut client_app, &reply).await;
    gate.pause(&crate::control::PauseScope::Database("other".into()));
    tokio::task::yield_now().await;
    assert!(!relay_task.is_finished(), "another database's pause");
    gate.pause(&crate::control::PauseScope::All);
    let (end, stats) = tokio::time::timeout(Duration::from_secs(5), relay_task)
        .await
        .expect("stops")
        .expect("join");
    assert!(matches!(end, RelayEnd::Paused), "{end:?}");
    assert_eq!((stats.requests, stats.ready), (1, 1));
}

#[tokio::test]
async fn a_session_in_a_transaction_stops_only_at_its_idle_ready() {
    let gate = std::sync::Arc::new(PauseGate::default());
    let (mut client_app, mut server_app, relay_task) =
        spawn_pausable_relay(Some(std::sync::Arc::clone(&gate)));
    let begin = message(tag::QUERY, b"begin\0");
    forward(&mut client_app, &mut server_app, &begin).await;
    let in_transaction = message(tag::READY_FOR_QUERY, b"T");
    forward(&mut server_app, &mut client_app, &in_transaction).await;
    gate.pause(&crate::control::PauseScope::All);
    let commit = message(tag::QUERY, b"commit\0");
    forward(&mut client_app, &mut server_app, &commit).await;
    assert!(!relay_task.is_finished(), "inside a transaction");
    let reply = message(tag::READY_FOR_QUERY, b"I");
    server_app.write_all(&reply).await.expect("write");
    let (end, _) = tokio::time::timeout(Duration::from_secs(5), relay_task)
        .await
        .expect("stops")
        .expect("join");
    assert!(matches!(end, RelayEnd::Paused), "{end:?}");
    let mut got = vec![0u8; reply.len()];
    client_app
        .read_exact(&mut got)
        .await
        .expect("the last reply reached the client");
    assert_eq!(got, reply);
}

#[tokio::test]
async fn a_session_mid_batch_stops_only_after_its_sync() {
    let gate = std::sync::Arc::new(PauseGate::default());
    let (mut client_app, mut server_app, relay_task) =
        spawn_pausable_relay(Some(std::sync::Arc::clone(&gate)));
    // A Parse without its Sync yet: half a request, though nothing is owed.
    let parse = message(tag::PARSE, b"\0select 1\0\0\0");
    forward(&mut client_app, &mut server_app, &parse).await;
    let parsed = message(tag::PARSE_COMPLETE, b"");
    forward(&mut server_app, &mut client_app, &parsed).await;
    gate.pause(&crate::control::PauseScope::All);
    // Another round trip gives the relay every chance to stop (it must not).
    let flush = message(tag::FLUSH, b"");
    forward(&mut client_app, &mut server_app, &flush).await;
    assert!(!relay_task.is_finished(), "mid extended-protocol batch");
    forward(&mut client_app, &mut server_app, &message(tag::SYNC, b"")).await;
    server_app
        .write_all(&message(tag::READY_FOR_QUERY, b"I"))
        .await
        .expect("write");
    let (end, _) = tokio::time::timeout(Duration::from_secs(5), relay_task)
        .await
        .expect("stops")
        .expect("join");
    assert!(matches!(end, RelayEnd::Paused), "{end:?}");
}

#[tokio::test]
async fn extended_protocol_copy_in_counts_only_the_sync_that_is_answered() {
    let gate = std::sync::Arc::new(PauseGate::default());
    let (mut client_app, mut server_app, relay_task) =
        spawn_pausable_relay(Some(std::sync::Arc::clone(&gate)));
    // What tokio-postgres and libpq send: the Sync after Execute reaches the
    // server in copy-in mode and is ignored; only the one after CopyDone is
    // answered.
    let start = [
        message(tag::BIND, b"\0\0\0\0\0\0\0\0"),
        message(tag::EXECUTE, b"\0\0\0\0\0"),
        message(tag::SYNC, b""),
    ]
    .concat();
    forward(&mut client_app, &mut server_app, &start).await;
    let copy_in = message(tag::COPY_IN_RESPONSE, b"\0\0\0");
    forward(&mut server_app, &mut client_app, &copy_in).await;
    let data = [
        message(tag::COPY_DATA, b"1\n"),
        message(tag::COPY_DONE, b""),
        message(tag::SYNC, b""),
    ]
    .concat();
    forward(&mut client_app, &mut server_app, &data).await;
    gate.pause(&crate::control::PauseScope::All);
    server_app
        .write_all(&message(tag::READY_FOR_QUERY, b"I"))
        .await
        .expect("write");
    let (end, stats) = tokio::time::timeout(Duration::from_secs(5), relay_task)
        .await
        .expect("stops at the one ReadyForQuery")
        .expect("join");
    assert!(matches!(end, RelayEnd::Paused), "{end:?}");
    assert_eq!((stats.requests, stats.ready), (1, 1));
}
