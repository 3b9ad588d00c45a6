//! The failover hold: while writes have no primary, or the primary refuses new
//! connections (shutting down, starting as a standby), a client waits for the
//! topology to change instead of getting an error, up to `failover.hold_timeout`.
//! One loop serves both cases: the caller routes and checks out, and asks the
//! [`Hold`] to wait whenever the answer was "not yet".

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Refusal, SessionEnv};
use crate::context::HeldGuard;
use crate::protocol::{ClientError, SqlState};

/// How long a primary that refuses connections is given before trying it again,
/// when the topology says nothing new.
const REFUSING_RETRY: Duration = Duration::from_millis(250);

/// The end of the hold for a client that starts waiting at `now`.
pub(super) fn deadline(env: &SessionEnv, now: Instant) -> tokio::time::Instant {
    tokio::time::Instant::from_std(now) + env.config.failover.hold_timeout.0
}

/// Why a client waits.
pub(super) enum Wait {
    /// The topology names no primary.
    NoPrimary(Refusal),
    /// The routed primary refused the connection.
    Refusing(Refusal),
}

/// One client's hold, across however many waits it takes.
pub(super) struct Hold {
    deadline: tokio::time::Instant,
    /// Subscribed at the first wait only (the hot path never pays for it); the
    /// caller routes once more after subscribing, so no change slips between.
    changes: Option<watch::Receiver<u64>>,
    held_since: Option<tokio::time::Instant>,
}

impl Hold {
    pub(super) fn until(deadline: tokio::time::Instant) -> Hold {
        Hold {
            deadline,
            changes: None,
            held_since: None,
        }
    }

    /// Waits for the topology to change (or, for a refusing primary, a short
    /// pause); Err with the refusal to send when the hold is over.
    pub(super) async fn wait(&mut self, env: &SessionEnv, why: Wait) -> Result<(), Refusal> {
        let now = tokio::time::Instant::now();
        let (refusal, until, counted) = match why {
            Wait::NoPrimary(refusal) => (refusal, self.deadline, true),
            Wait::Refusing(refusal) => (refusal, (now + REFUSING_RETRY).min(self.deadline), false),
        };
        if now >= self.deadline {
            return Err(refusal);
        }
        let Some(changes) = self.changes.as_mut() else {
            self.changes = Some(env.ctx.topology().subscribe());
            return Ok(());
        };
        if self.held_since.is_none() {
            self.held_since = Some(now);
            tracing::info!(
                client = %env.peer,
                user = %env.client.user,
                reason = %refusal.error,
                "holding the client for up to {:?}",
                env.config.failover.hold_timeout.0
            );
        }
        let _held = counted.then(|| Held::enter(env));
        // Boxed: holding is rare, and its timer would otherwise make every
        // checkout's future (built once per transaction) larger.
        let waited = Box::pin(async {
            tokio::select! {
                changed = tokio::time::timeout_at(until, changes.changed()) => {
                    // Err: the topology publisher is gone, the proxy is shutting down.
                    !matches!(changed, Ok(Err(_)))
                }
                _ = env.ctx.shutdown().cancelled() => false,
            }
        })
        .await;
        if env.ctx.shutdown().is_cancelled() {
            return Err(Refusal::from(ClientError::fatal(
                SqlState::AdminShutdown,
                "terminating connection because Switchyard is shutting down",
            )));
        }
        if waited {
            Ok(())
        } else {
            Err(refusal)
        }
    }

    /// The client got a server: log how long it was held, if it was.
    pub(super) fn resumed(&self, env: &SessionEnv) {
        if let Some(since) = self.held_since {
            let held: Duration = tokio::time::Instant::now() - since;
            tracing::info!(
                client = %env.peer,
                user = %env.client.user,
                held_ms = held.as_millis() as u64,
                "held client resumes"
            );
        }
    }
}

/// Counts a client waiting for a primary (in /status, and as waiting on its
/// listener) while alive.
struct Held<'a> {
    _proxy: HeldGuard<'a>,
    listener_waiting: &'a std::sync::atomic::AtomicUsize,
}

impl<'a> Held<'a> {
    fn enter(env: &'a SessionEnv) -> Held<'a> {
        let listener_waiting = &env.listener.counters.waiting;
        listener_waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Held {
            _proxy: env.ctx.hold_client(),
            listener_waiting,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.listener_waiting
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
