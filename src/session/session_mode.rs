//! Session pooling: the client keeps one server connection for its whole session
//! (checked out at login, so the client's BackendKeyData carries that server's
//! pid), with bytes relayed untouched both ways. When the client leaves cleanly
//! (server idle, nothing owed) the connection is reset with `reset_query` and goes
//! back to the pool; otherwise it is closed, which rolls back whatever was in
//! progress. A client that leaves while its query runs has that query cancelled
//! first ([`abandoned`](super::abandoned)).

use std::time::Duration;

use crate::tls::ClientStream;
use bytes::BytesMut;

use super::abandoned;
use super::relay::{self, RelayEnd};
use super::session_pause::{self, Held};
use super::{Session, SessionEnd};
use crate::cancel::Registration;
use crate::config::Route;
use crate::pool::PooledServer;
use crate::protocol::frame::FrameScanner;
use crate::protocol::tag;
use crate::topology::TopologyHandle;

/// How long the reset query may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client's last requests, sent just before its Terminate (drivers
/// often end with Close+Sync), may take before they are cancelled.
const TERMINATE_GRACE: Duration = Duration::from_millis(100);

pub(super) async fn run(
    session: &mut Session,
    socket: &mut ClientStream,
    mut server: PooledServer,
    mut pending: BytesMut,
    registration: &Registration,
) -> SessionEnd {
    let end = loop {
        registration.set_target(Some(server.cancel_target()));
        let end = relay_on(session, socket, &mut server, pending).await;
        registration.set_target(None);
        // A cancel for this client's query must not reach the server's next user.
        registration.settle().await;
        if !matches!(end, RelayEnd::Paused) {
            break end;
        }
        // Held at an idle boundary by PAUSE; client bytes wait in the socket.
        pending = BytesMut::new();
        match session_pause::hold(session, server).await {
            Held::Relay(next, notifications) => {
                server = next;
                if !notifications.is_empty() {
                    if let Err(e) = super::send_all(socket, &notifications).await {
                        drop(server);
                        let end = RelayEnd::ClientGone(Some(e));
                        return SessionEnd::Relay(end);
                    }
                }
            }
            Held::Refused(error) => {
                super::refuse(socket, &error).await;
                return SessionEnd::Refused(error);
            }
            Held::Ended(end) => {
                session.finish(socket, &end).await;
                return SessionEnd::Relay(end);
            }
        }
    };
    let clean = settle(session, &mut server, &end).await;
    if clean {
        return_to_pool(server, &session.env.pooling.reset_query).await;
    } else {
        drop(server);
    }
    session.finish(socket, &end).await;
    SessionEnd::Relay(end)
}

/// One stretch of relaying on `server`: until either side stops, the node is
/// demoted (write route), or a PAUSE holds the session at an idle boundary.
async fn relay_on(
    session: &mut Session,
    socket: &mut ClientStream,
    server: &mut PooledServer,
    pending: BytesMut,
) -> RelayEnd {
    let topology = std::sync::Arc::clone(session.env.ctx.topology());
    let node = server.node.clone();
    let (mut client_reader, mut client_writer) = socket.split();
    let (mut server_reader, mut server_writer) = server.stream.split();
    let settings = relay::RelaySettings {
        max_message_size: session.env.config.client.max_message_size.0 as usize,
        shutdown: session.env.ctx.shutdown(),
        draining: session.env.ctx.draining(),
        metrics: &session.env.listener.counters.metrics,
        timeouts: super::timeouts::Timeouts::from_config(&session.env.config),
        pause: Some(relay::PauseWatch {
            gate: session.env.ctx.pause_gate(),
            database: &session.env.client.database,
        }),
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

/// Decides whether the server can go back to the pool once the relay ended, and
/// cancels whatever it still runs for a client that is gone. A client that left
/// on a message boundary (both ways) with replies outstanding (drivers often send a last
/// Close+Sync right before Terminate) gets its replies drained: at once after a
/// cancel if it vanished without Terminate, after a short grace if it said
/// Terminate; the server is clean if it then reports idle.
async fn settle(session: &Session, server: &mut PooledServer, end: &RelayEnd) -> bool {
    let stats = session.counters.stats;
    let client_left = matches!(end, RelayEnd::ClientTerminated | RelayEnd::ClientGone(None));
    let busy = stats.requests > stats.ready;
    // Mid-batch without Sync or mid-COPY: no ReadyForQuery is coming to drain to,
    // and a COPY FROM STDIN ignores cancels while it waits for data (PostgreSQL
    // holds them off to keep the protocol in sync). The connection is closed after
    // the cancel, which also ends such a COPY at once.
    let unsynced = stats.client_unsynced;
    let drainable =
        client_left && stats.client_at_boundary && stats.server_at_boundary && busy && !unsynced;
    let mut clean = client_left && stats.server_idle() && !unsynced;
    if drainable {
        let mut drain = Drain::new(stats.requests - stats.ready);
        let within_grace = matches!(end, RelayEnd::ClientTerminated)
            && tokio::time::timeout(TERMINATE_GRACE, drain.run(server))
                .await
                .is_ok();
        if !within_grace {
            abandoned::cancel(&session.env, server, end).await;
        }
        clean = tokio::time::timeout(RESET_TIMEOUT, drain.run(server))
            .await
            .ok()
            .flatten()
            == Some(tag::STATUS_IDLE);
    } else if (busy || unsynced) && abandoned::leaves_work_behind(end) {
        abandoned::cancel(&session.env, server, end).await;
    }
    tracing::debug!(
        clean,
        requests = stats.requests,
        ready = stats.ready,
        status = %(stats.transaction_status as char),
        at_boundary = stats.client_at_boundary,
        "session mode: relay ended"
    );
    clean
}

/// Reads and discards the ReadyForQuery-terminated replies a server still owes.
/// Resumable: a run cut short by a timeout keeps what it counted.
struct Drain {
    outstanding: u64,
    seen: u64,
    status: u8,
    scanner: FrameScanner,
    buffer: BytesMut,
}

impl Drain {
    fn new(outstanding: u64) -> Drain {
        Drain {
            outstanding,
            seen: 0,
            status: tag::STATUS_IDLE,
            scanner: FrameScanner::new(u32::MAX as usize, |t| t == tag::READY_FOR_QUERY),
            buffer: BytesMut::with_capacity(8192),
        }
    }

    /// The final transaction status once every reply is in and the server stopped
    /// on a message boundary; None if it broke.
    async fn run(&mut self, server: &mut PooledServer) -> Option<u8> {
        use tokio::io::AsyncReadExt;
        while self.seen < self.outstanding {
            self.buffer.clear();
            // Cancel-safe: a read cut short by a timeout has taken no bytes.
            if server.stream.read_buf(&mut self.buffer).await.ok()? == 0 {
                return None;
            }
            let (seen, status) = (&mut self.seen, &mut self.status);
            self.scanner
                .scan(&self.buffer, |frame| {
                    if frame.tag == tag::READY_FOR_QUERY {
                        *seen += 1;
                        *status = frame.body.first().copied().unwrap_or(tag::STATUS_IDLE);
                    }
                })
                .ok()?;
        }
        self.scanner.at_boundary().then_some(self.status)
    }
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
