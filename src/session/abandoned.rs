//! Work left running for nobody: a client that disconnects (or is cut off by the
//! proxy) while its server still owes it a reply. PostgreSQL only notices a
//! vanished client when it next writes to it, so a 60-second query would run to
//! the end; the proxy sends the server a CancelRequest at once instead. What then
//! happens to the server connection (drained and reused, or closed) is the
//! caller's choice, per pool mode.

use super::relay::RelayEnd;
use super::{timeouts, SessionEnv};
use crate::server::ServerConnection;

/// Whether the server may still be working for a client this end left behind.
/// Only the server's own end (it closed or broke, not a proxy time limit on its
/// reply) leaves nothing to cancel.
pub(super) fn leaves_work_behind(end: &RelayEnd) -> bool {
    match end {
        RelayEnd::ServerGone { error: Some(e), .. } => timeouts::expired(e).is_some(),
        RelayEnd::ServerGone { error: None, .. } => false,
        RelayEnd::ClientTerminated
        | RelayEnd::ClientGone(_)
        | RelayEnd::ClientProtocol(_)
        | RelayEnd::ClientOverLimit(_)
        | RelayEnd::Shutdown
        | RelayEnd::Demoted(_) => true,
        // Stopped at an idle boundary: nothing runs.
        RelayEnd::Paused => false,
    }
}

/// Cancels what `server` is running for the session's client, bounded by
/// `server.cancel_timeout`; logs one line and counts it as
/// `switchyard_cancel_requests_total{outcome="client_gone"}`.
pub(super) async fn cancel(env: &SessionEnv, server: &ServerConnection, end: &RelayEnd) {
    let target = server.cancel_target();
    let timeout = env.config.server.cancel_timeout.0;
    let tls = &env.config.server.tls_loaded;
    match crate::server::cancel::send_cancel(target, tls, timeout).await {
        Ok(()) => tracing::info!(
            client = %env.peer,
            node = %server.node,
            backend_pid = server.backend_pid,
            end = ?end,
            "the client left while its server was busy; cancelled its query"
        ),
        Err(e) => tracing::warn!(
            client = %env.peer,
            node = %server.node,
            backend_pid = server.backend_pid,
            error = %e,
            "the client left while its server was busy; cannot cancel its query \
             (the connection is closed)"
        ),
    }
    metrics::counter!("switchyard_cancel_requests_total", "outcome" => "client_gone").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_server_that_ended_itself_leaves_nothing_to_cancel() {
        let timed_out = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            timeouts::Expired::Query(std::time::Duration::from_secs(1)),
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(leaves_work_behind(&RelayEnd::ClientGone(None)));
        assert!(leaves_work_behind(&RelayEnd::ClientTerminated));
        assert!(leaves_work_behind(&RelayEnd::Shutdown));
        assert!(leaves_work_behind(&RelayEnd::ServerGone {
            error: Some(timed_out),
            sent_error: false
        }));
        assert!(!leaves_work_behind(&RelayEnd::ServerGone {
            error: Some(reset),
            sent_error: false
        }));
        assert!(!leaves_work_behind(&RelayEnd::ServerGone {
            error: None,
            sent_error: true
        }));
    }
}
