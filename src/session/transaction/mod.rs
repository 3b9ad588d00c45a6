//! Transaction pooling. Between transactions the client holds no server; when it
//! sends the first message of the next one, the session checks a connection out,
//! relays until the server is idle again (ReadyForQuery 'I', nothing owed, no open
//! extended-protocol batch), and gives it back. The parts: this run loop, one
//! attached stretch ([`attach`]), when a request may be sent again on another server
//! ([`resend`]), and what is answered without a server ([`fast_path`]).

mod attach;
mod fast_path;
mod resend;

use crate::tls::ClientStream;
use bytes::BytesMut;

use super::abandoned;
use super::ledger::{self, Event, Ledger, Segment};
use super::relay::RelayEnd;
use super::sql_scan::Taint;
use super::waiting::{self, Waited};
use super::{Session, SessionEnd};
use crate::cancel::Registration;
use crate::control::ClientState;
use crate::pool::PooledServer;
use crate::protocol::frame::FrameScanner;

const READ_SIZE: usize = 16 * 1024;

/// How an attached stretch ended.
enum Detach {
    /// The server is idle: back to the pool, wait for the next transaction.
    Released,
    /// Nothing the client sent took effect (see [`resend`]): it is sent again on
    /// another server (after the hold, if the primary is changing).
    Retry,
    /// The session is over.
    End(RelayEnd),
}

/// Buffers a session reuses from one transaction to the next, so relaying a
/// transaction allocates nothing once they have grown to fit.
struct Buffers {
    /// Translated client messages on their way to the server.
    upstream: BytesMut,
    /// Server bytes on their way to the client.
    downstream: BytesMut,
    segments: Vec<Segment>,
    events: Vec<Event>,
    /// Reset at each attach; kept to reuse its queue's allocation.
    ledger: Ledger,
    /// Client messages sent to the server in this attach, kept while the request
    /// may be sent again (see [`resend`]).
    replay: BytesMut,
    /// Server message boundaries; its capture buffer (ReadyForQuery, ParameterStatus
    /// bodies) is reused too.
    scanner: FrameScanner,
}

impl Buffers {
    /// Gives back what one large message grew a buffer to, so a session does not
    /// keep the capacity of the largest message it ever saw.
    fn shrink(&mut self) {
        for buffer in [&mut self.upstream, &mut self.downstream, &mut self.replay] {
            if buffer.capacity() > SHRINK_ABOVE {
                *buffer = BytesMut::new();
            }
        }
        self.scanner.shrink(SHRINK_ABOVE);
    }
}

/// Buffers that grew past this are given back after the transaction.
const SHRINK_ABOVE: usize = 64 * 1024;

impl Default for Buffers {
    fn default() -> Buffers {
        Buffers {
            upstream: BytesMut::new(),
            downstream: BytesMut::new(),
            segments: Vec::new(),
            events: Vec::new(),
            ledger: Ledger::default(),
            replay: BytesMut::new(),
            scanner: FrameScanner::new(u32::MAX as usize, ledger::capture_tags),
        }
    }
}

/// `inbox`: what the client already sent (read during authentication).
pub(super) async fn run(
    session: &mut Session,
    socket: &mut ClientStream,
    mut inbox: BytesMut,
    registration: &Registration,
) -> SessionEnd {
    let mut buffers = Buffers::default();
    let mut retries = 0;
    // A cancelled extended batch whose Sync has not arrived: its messages are
    // dropped until the Sync, as PostgreSQL does after an error.
    let mut skipping_to_sync = false;
    loop {
        match session.wait_for_request(socket, &mut inbox).await {
            Ok(true) => {}
            Ok(false) => return SessionEnd::Relay(RelayEnd::ClientTerminated),
            Err(end) => {
                session.finish(socket, &end).await;
                return SessionEnd::Relay(end);
            }
        }
        if skipping_to_sync {
            let max_message = session.env.config.client.max_message_size.0 as usize;
            if waiting::skip_to_sync(&mut inbox, max_message) {
                skipping_to_sync = false;
                let mut ready = BytesMut::new();
                crate::protocol::messages::ready_for_query_idle(&mut ready);
                if super::send_all(socket, &ready).await.is_err() {
                    return SessionEnd::Relay(RelayEnd::ClientGone(None));
                }
            }
            continue;
        }
        if let Some(replies) = fast_path::answer_without_server(session, &mut inbox) {
            if let Err(e) = super::send_all(socket, &replies).await {
                return SessionEnd::Relay(RelayEnd::ClientGone(Some(e)));
            }
            continue;
        }
        let waited = waiting::checkout(session, socket, &mut inbox, registration).await;
        let mut server = match waited {
            Waited::Done(Ok(server)) => server,
            Waited::Done(Err(refusal)) => {
                refusal.send(socket).await;
                return SessionEnd::Refused(refusal.error);
            }
            Waited::Cancelled | Waited::CancelledBeforeSync => {
                tracing::info!(client = %session.env.peer, "request cancelled while it waited for a server; it did not run");
                skipping_to_sync = matches!(waited, Waited::CancelledBeforeSync);
                session.client.set_state(ClientState::Idle);
                continue;
            }
            Waited::ClientGone(end) => {
                tracing::info!(client = %session.env.peer, "client left while its request waited for a server; it did not run");
                return SessionEnd::Relay(end);
            }
        };
        let mut updates = BytesMut::new();
        session.params.parameter_updates(&server, &mut updates);
        if !updates.is_empty() && super::send_all(socket, &updates).await.is_err() {
            registration.set_target(None);
            return SessionEnd::Relay(RelayEnd::ClientGone(None));
        }
        let attached_at = session.counters.checked_out_at;
        let resend_allowed = session.env.config.failover.resend && retries < resend::MAX_RETRIES;
        let detach = attach::attach(
            session,
            socket,
            &mut server,
            &mut inbox,
            &mut buffers,
            resend_allowed,
        )
        .await;
        buffers.shrink();
        registration.set_target(None);
        // A cancel for this client's query must not reach the server's next user.
        registration.settle().await;
        session.mark_idle();
        let ledger = &buffers.ledger;
        let end = match detach {
            Detach::Released => {
                session.counters.transactions += 1;
                let metrics = &session.env.listener.counters.metrics;
                let done = std::time::Instant::now();
                metrics.record_transaction(done.saturating_duration_since(attached_at));
                retries = 0;
                if ledger.unsolicited {
                    drop(server);
                } else if ledger.needs_reset() {
                    reset_and_release(server, ledger).await;
                } else {
                    server.release_at(done);
                }
                continue;
            }
            Detach::Retry => {
                retries += 1;
                tracing::info!(node = %server.node, attempt = retries, "the node left before running the request; sending it again");
                // The node is leaving: its idle siblings go the same way.
                server.pool().drain();
                drop(server);
                let mut again = buffers.replay.split();
                again.extend_from_slice(&inbox);
                inbox = again;
                continue;
            }
            Detach::End(end) => end,
        };
        tracing::debug!(client = %session.env.peer, end = ?end, owes_nothing = ledger.owes_nothing(), "transaction-mode session ends");
        if ledger.is_idle()
            && matches!(end, RelayEnd::ClientTerminated | RelayEnd::ClientGone(None))
        {
            reset_and_release(server, ledger).await;
        } else {
            // A reply still owed: the server may be running the client's query,
            // which nobody would wait for. Cancel it, then close the connection.
            if !ledger.owes_nothing() && abandoned::leaves_work_behind(&end) {
                abandoned::cancel(&session.env, &server, &end).await;
            }
            drop(server);
        }
        session.finish(socket, &end).await;
        return SessionEnd::Relay(end);
    }
}

/// Returns a server to the pool; one left with session state the proxy does not
/// carry (see [`Taint`]) is reset first so it cannot leak to the next client, and
/// closed if the reset fails.
async fn reset_and_release(mut server: PooledServer, ledger: &Ledger) {
    let taint = ledger.reset_needed();
    if !taint.is_empty() {
        let sql = reset_sql(taint);
        if let Err(e) = server
            .run_internal_query(&sql, std::time::Duration::from_secs(5))
            .await
        {
            tracing::warn!(error = %e, reset = %sql, "cannot reset the server's session state; closing it");
            return;
        }
        if taint.contains(Taint::STATEMENTS) {
            server.statements.clear();
        }
        if taint.contains(Taint::SETTINGS) {
            server.applied = Default::default();
        }
    }
    server.release();
}

/// The statements that clear what `taint` says is left, as one query. DISCARD ALL
/// would do all of it, but cannot run in the implicit transaction of a
/// multi-statement query and drops the proxy's shared statements even when only a
/// temporary table was left behind.
fn reset_sql(taint: Taint) -> String {
    let steps = [
        (
            Taint::SETTINGS,
            "SET SESSION AUTHORIZATION DEFAULT;RESET ALL",
        ),
        (Taint::CURSORS, "CLOSE ALL"),
        (Taint::TEMP, "DISCARD TEMP"),
        (
            Taint::ADVISORY,
            "SELECT pg_catalog.pg_advisory_unlock_all()",
        ),
        (Taint::STATEMENTS, "DEALLOCATE ALL"),
    ];
    steps
        .iter()
        .filter(|(t, _)| taint.contains(*t))
        .map(|(_, sql)| *sql)
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_sql_names_each_kind_once() {
        assert_eq!(reset_sql(Taint::TEMP), "DISCARD TEMP");
        assert_eq!(
            reset_sql(Taint::SETTINGS | Taint::STATEMENTS | Taint::ADVISORY),
            "SET SESSION AUTHORIZATION DEFAULT;RESET ALL;\
             SELECT pg_catalog.pg_advisory_unlock_all();DEALLOCATE ALL"
        );
    }
}
