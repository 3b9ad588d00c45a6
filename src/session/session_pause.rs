//! PAUSE in session mode: a session the relay stopped at an idle boundary
//! ([`RelayEnd::Paused`]) waits here until RESUME, then either goes on with the
//! server connection it had, or, when that connection died or its node is no longer
//! where the route leads (a switchover happened during the pause), moves to a new
//! server connection on the current target and rebuilds its session there from
//! the [`Snapshot`] taken while its old server was still up. The client sees a
//! pause; a session whose state cannot move gets a FATAL naming why.
//!
//! Only PAUSE moves sessions: a server lost without a PAUSE (an unplanned
//! failover) ends the session as before, since no snapshot was taken while its
//! server was up.

use bytes::BytesMut;

use super::relay::RelayEnd;
use super::session_snapshot::Snapshot;
use super::Session;
use crate::config::Route;
use crate::control::ClientState;
use crate::log_text::Escaped;
use crate::pool::PooledServer;
use crate::protocol::{ClientError, SqlState};
use crate::server::ServerError;

/// How a hold ended.
pub(super) enum Held {
    /// Relay on with this server (the one the session had, or its replacement),
    /// after sending the client these notifications, which arrived while the
    /// proxy used the connection for its own queries.
    Relay(PooledServer, BytesMut),
    /// The session cannot go on; the client gets this FATAL.
    Refused(ClientError),
    /// The proxy is draining: the session ends here, at its boundary.
    Ended(RelayEnd),
}

/// Holds a paused session until RESUME, then keeps or replaces its server.
pub(super) async fn hold(session: &mut Session, mut server: PooledServer) -> Held {
    let timeout = session.env.config.server.connect_timeout.0;
    // Read before the session counts as paused (PAUSE returns only once every
    // session is), so the server is still up for it.
    let mut notifications = BytesMut::new();
    let snapshot = Snapshot::take(&mut server, timeout, &mut notifications).await;
    if let Err(e) = &snapshot {
        tracing::warn!(client = %session.env.peer, node = %server.node, error = %e,
            "session mode: could not read the session's state during PAUSE; it cannot move");
    }
    session.client.set_state(ClientState::Paused);
    let gate = session.env.ctx.pause_gate();
    tokio::select! {
        biased;
        _ = session.signals.draining.fired() => return Held::Ended(RelayEnd::Shutdown),
        _ = gate.wait_resumed(&session.env.client.database) => {}
    }
    session.client.set_state(ClientState::Active);
    if still_usable(session, &mut server, &mut notifications).await {
        return Held::Relay(server, notifications);
    }
    let from = server.node.clone();
    // The old connection is closed, not pooled: its node is gone or demoted.
    drop(server);
    match move_session(session, &from, snapshot).await {
        Held::Relay(server, _) => Held::Relay(server, notifications),
        other => other,
    }
}

/// The session's server answers and its node is still the route's target (and,
/// for writes, not a standby).
async fn still_usable(
    session: &mut Session,
    server: &mut PooledServer,
    notifications: &mut BytesMut,
) -> bool {
    if !session.servers.is_current(&session.env) {
        tracing::info!(client = %session.env.peer, node = %server.node,
            "session mode: the route leads elsewhere after PAUSE");
        return false;
    }
    let timeout = session.env.config.server.connect_timeout.0;
    match server
        .run_internal_query_keeping_notifications("SELECT 1", timeout, notifications)
        .await
    {
        Ok(()) => session.env.listener.config.route != Route::Primary || !server.is_standby(),
        Err(e) => {
            tracing::info!(client = %session.env.peer, node = %server.node, error = %e,
                "session mode: the server connection did not survive the PAUSE");
            false
        }
    }
}

/// Opens a server connection on the current target and replays the snapshot.
async fn move_session(
    session: &mut Session,
    from: &str,
    snapshot: Result<Snapshot, ServerError>,
) -> Held {
    let snapshot = match snapshot {
        Ok(snapshot) => snapshot,
        Err(e) => {
            return refused(
                session,
                from,
                "the session's state could not be read during PAUSE",
                &e.to_string(),
            )
        }
    };
    if let Some(why) = snapshot.pinned_by() {
        return refused(session, from, &format!("the session {why}"), "");
    }
    let mut server = match session.checkout().await {
        Ok(server) => server,
        Err(refusal) => return failed(session, from, "no new server connection", refusal.error),
    };
    if !snapshot.replay.is_empty() {
        let timeout = session.env.config.server.connect_timeout.0;
        if let Err(e) = server.run_internal_query(&snapshot.replay, timeout).await {
            let error = ClientError::fatal(
                SqlState::ConnectionFailure,
                format!(
                    "terminating connection: the session could not be restored on node \"{}\" \
                     after PAUSE (replaying its settings and prepared statements failed)",
                    server.node
                ),
            )
            .with_detail(replay_error(&e));
            return failed(session, from, "replay failed", error);
        }
    }
    moves("moved");
    tracing::info!(
        client = %session.env.peer,
        from = %from,
        to = %server.node,
        settings = snapshot.settings,
        prepared_statements = snapshot.statements,
        "session mode: session moved to a new server connection after PAUSE"
    );
    Held::Relay(server, BytesMut::new())
}

/// The server's own words when it refused a replayed statement.
fn replay_error(e: &ServerError) -> String {
    match e {
        ServerError::Rejected { fields, .. } => format!("{}: {}", fields.code, fields.message),
        other => other.to_string(),
    }
}

fn refused(session: &Session, from: &str, why: &str, detail: &str) -> Held {
    moves("refused");
    tracing::warn!(client = %session.env.peer, node = %from, reason = %why, detail = %Escaped(detail),
        "session mode: session cannot move after PAUSE; closing it");
    let error = ClientError::fatal(
        SqlState::AdminShutdown,
        format!(
            "terminating connection: its server connection on node \"{from}\" ended during \
             PAUSE and {why}; it cannot move to the new server"
        ),
    );
    Held::Refused(if detail.is_empty() {
        error
    } else {
        error.with_detail(detail.to_string())
    })
}

fn failed(session: &Session, from: &str, what: &str, error: ClientError) -> Held {
    moves("failed");
    tracing::warn!(client = %session.env.peer, node = %from, %error,
        "session mode: moving the session after PAUSE failed ({what}); closing it");
    Held::Refused(error)
}

fn moves(result: &'static str) {
    metrics::counter!("switchyard_session_moves_total", "result" => result).increment(1);
}
