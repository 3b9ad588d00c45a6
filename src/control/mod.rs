//! Operator control over running sessions, shared through the context: the
//! [`pause`] gate (PAUSE/RESUME, DISABLE/ENABLE per database) and the [`clients`]
//! registry (every session's identity and state, for SHOW CLIENTS, KILL and for
//! knowing when a pause has taken hold). The admin console and the HTTP API drive
//! it; sessions consult it at transaction boundaries. Nothing here does I/O.

pub mod clients;
pub mod pause;

use std::time::Duration;

pub use clients::{ClientInfo, ClientRegistry, ClientState, Registered};
pub use pause::{PauseGate, PauseScope};

/// How often a waiting PAUSE looks at the sessions again.
const PAUSE_POLL: Duration = Duration::from_millis(10);

/// Pauses `scope` and waits until no session in it is inside a transaction (or
/// waiting for a server), up to `limit`; true once paused. The pause stays in
/// force either way: a PAUSE that timed out is still a PAUSE, as in PgBouncer.
pub async fn pause_and_wait(
    gate: &PauseGate,
    clients: &ClientRegistry,
    scope: &PauseScope,
    limit: Option<Duration>,
) -> bool {
    gate.pause(scope);
    let wait = async {
        while clients.busy_in(scope) > 0 {
            tokio::time::sleep(PAUSE_POLL).await;
        }
    };
    match limit {
        Some(limit) => tokio::time::timeout(limit, wait).await.is_ok(),
        None => {
            wait.await;
            true
        }
    }
}
