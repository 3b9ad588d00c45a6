//! Session pooling: the client keeps one server connection for its whole session,
//! with bytes relayed untouched both ways. When the client leaves cleanly (server
//! idle, nothing owed) the connection is reset with `reset_query` and goes back to
//! the pool; otherwise it is closed, which rolls back whatever was in progress.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::relay::{self, RelayEnd};
use super::{Session, SessionEnd};
use crate::cancel::Registration;
use crate::config::Route;
use crate::pool::PooledServer;
use crate::protocol::tag;
use crate::topology::TopologyHandle;

/// How long the reset query may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn run(
    session: &mut Session,
    socket: &mut TcpStream,
    server: Option<PooledServer>,
    mut pending: BytesMut,
    registration: &Registration,
) -> SessionEnd {
    let mut server = match server {
        Some(server) => server,
        None => match first_server(session, socket, &mut pending).await {
            Ok(server) => server,
            Err(end) => return end,
        },
    };
    registration.set_target(Some(server.cancel_target()));
    let topology = std::sync::Arc::clone(session.env.ctx.topology());
    let node = server.node.clone();
    let end = {
        let (mut client_reader, mut client_writer) = socket.split();
        let (mut server_reader, mut server_writer) = server.stream.split();
        let settings = relay::RelaySettings {
            max_message_size: session.env.config.client.max_message_size.0 as usize,
            shutdown: session.env.ctx.shutdown(),
            draining: session.env.ctx.draining(),
            metrics: &session.env.listener.counters.metrics,
            timeouts: super::timeouts::Timeouts::from_config(&session.env.config),
        };
        let relay = relay::relay(
            (&mut client_reader, &mut client_writer),
            (&mut server_reader, &mut server_writer),
            pending,
            &settings,
            &mut session.counters.stats,
        );
        if session.env.listener.config.route == Route::Primary {
            tokio::select! {
                end = relay => end,
                node = demoted(&topology, &node) => RelayEnd::Demoted(node),
            }
        } else {
            relay.await
        }
    };
    registration.set_target(None);
    let client_left = matches!(end, RelayEnd::ClientTerminated | RelayEnd::ClientGone(None));
    let stats = session.counters.stats;
    let mut clean = client_left && stats.server_idle();
    if client_left && !clean && stats.client_at_boundary && stats.requests > stats.ready {
        // Drivers often send a last Close+Sync right before Terminate: let the
        // server finish answering, then judge.
        clean = drain_replies(&mut server, stats.requests - stats.ready).await
            == Some(tag::STATUS_IDLE);
    }
    tracing::debug!(
        clean,
        requests = stats.requests,
        ready = stats.ready,
        status = %(stats.transaction_status as char),
        at_boundary = stats.client_at_boundary,
        "session mode: client left"
    );
    if clean {
        return_to_pool(server, &session.env.pooling.reset_query).await;
    } else {
        drop(server);
    }
    session.finish(socket, &end).await;
    SessionEnd::Relay(end)
}

/// Resolves once `node` is confirmed demoted: another node is the confirmed
/// primary, or the node is trusted as a replica. Like HAProxy's
/// `on-marked-down shutdown-sessions`, but only on that evidence: a node that is
/// merely unreachable, or a moment with no primary at all, does not end sessions.
async fn demoted(topology: &TopologyHandle, node: &str) -> String {
    let mut changes = topology.subscribe();
    loop {
        let snapshot = topology.load();
        let state = snapshot.nodes.iter().find(|n| n.name == node);
        let other_primary = snapshot
            .primary_node()
            .is_some_and(|i| snapshot.nodes[i].name != node);
        let now_replica = state.is_some_and(|n| n.replica.up && !n.primary.up);
        if other_primary || now_replica {
            tracing::info!(node, "closing a session-mode session on a demoted primary");
            return node.to_string();
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Reads and discards `outstanding` ReadyForQuery-terminated replies; returns the
/// final transaction status, or None if the server broke or took too long.
async fn drain_replies(server: &mut PooledServer, outstanding: u64) -> Option<u8> {
    use crate::protocol::frame::FrameScanner;
    use tokio::io::AsyncReadExt;
    let drain = async {
        let mut scanner = FrameScanner::new(u32::MAX as usize, |t| t == tag::READY_FOR_QUERY);
        let mut buffer = BytesMut::with_capacity(8192);
        let (mut seen, mut status) = (0u64, tag::STATUS_IDLE);
        while seen < outstanding {
            buffer.clear();
            if server.stream.read_buf(&mut buffer).await.ok()? == 0 {
                return None;
            }
            scanner
                .scan(&buffer, |frame| {
                    if frame.tag == tag::READY_FOR_QUERY {
                        seen += 1;
                        status = frame.body.first().copied().unwrap_or(tag::STATUS_IDLE);
                    }
                })
                .ok()?;
        }
        scanner.at_boundary().then_some(status)
    };
    tokio::time::timeout(RESET_TIMEOUT, drain)
        .await
        .ok()
        .flatten()
}

/// Waits for the client's first request, then checks out its server and tells the
/// client about parameters that differ from the greeting.
async fn first_server(
    session: &mut Session,
    socket: &mut TcpStream,
    pending: &mut BytesMut,
) -> Result<PooledServer, SessionEnd> {
    match session.wait_for_request(socket, pending).await {
        Ok(true) => {}
        Ok(false) => return Err(SessionEnd::Relay(RelayEnd::ClientTerminated)),
        Err(end) => {
            session.finish(socket, &end).await;
            return Err(SessionEnd::Relay(end));
        }
    }
    let server = match session.checkout().await {
        Ok(server) => server,
        Err(refusal) => {
            refusal.send(socket).await;
            return Err(SessionEnd::Refused(refusal.error));
        }
    };
    let mut updates = BytesMut::new();
    session.params.parameter_updates(&server, &mut updates);
    if !updates.is_empty() && socket.write_all(&updates).await.is_err() {
        return Err(SessionEnd::Relay(RelayEnd::ClientGone(None)));
    }
    Ok(server)
}

async fn return_to_pool(mut server: PooledServer, reset_query: &str) {
    if !reset_query.trim().is_empty() {
        if let Err(e) = server.run_internal_query(reset_query, RESET_TIMEOUT).await {
            tracing::warn!(error = %e, "reset query failed; closing the server connection");
            return;
        }
        // DISCARD ALL (the default) drops settings and prepared statements; any
        // reset query is assumed to return the session to its login state.
        server.applied = Default::default();
        server.statements.clear();
    }
    server.release();
}
