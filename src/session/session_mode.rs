//! Session pooling: the client keeps one server connection for its whole session,
//! with bytes relayed untouched both ways. When the client leaves cleanly (server
//! idle, nothing owed) the connection is reset with `reset_query` and goes back to
//! the pool; otherwise it is closed, which rolls back whatever was in progress.

use std::time::Duration;

use tokio::net::TcpStream;

use super::relay::{self, RelayEnd};
use super::{Session, SessionEnd};
use crate::cancel::Registration;
use crate::pool::PooledServer;

/// How long the reset query may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn run(
    session: &mut Session,
    socket: &mut TcpStream,
    mut server: PooledServer,
    registration: &Registration,
) -> SessionEnd {
    registration.set_target(Some(server.cancel_target()));
    let max_message = session.ctx.config.client.max_message_size.0 as usize;
    let end = {
        let (mut client_reader, mut client_writer) = socket.split();
        let (mut server_reader, mut server_writer) = server.stream.split();
        relay::relay(
            (&mut client_reader, &mut client_writer),
            (&mut server_reader, &mut server_writer),
            max_message,
            &session.ctx.shutdown,
            &mut session.stats,
        )
        .await
    };
    registration.set_target(None);
    let clean = matches!(end, RelayEnd::ClientTerminated | RelayEnd::ClientGone(None))
        && session.stats.server_idle();
    if clean {
        return_to_pool(server, &session.pooling.reset_query).await;
    } else {
        drop(server);
    }
    session.finish(socket, &end).await;
    SessionEnd::Relay(end)
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
