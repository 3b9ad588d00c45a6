//! Time limits on the two waits of a session that holds a server connection:
//! the client's next message while it sits idle inside a transaction
//! (`pool.idle_transaction_timeout`, SQLSTATE 25P03), and the server's next bytes
//! while it owes a reply (`server.query_timeout`, 57014). Each wraps one read; a read
//! that runs out ends with an I/O error of kind `TimedOut` carrying an [`Expired`],
//! so the relays end the session through their ordinary error paths (the server
//! connection is closed, never returned) and [`expired`] finds the reason again for
//! the client's ErrorResponse. With both limits off a read is awaited unwrapped.
//!
//! Whether the clock runs is asked of the caller (`waiting`) when the read starts
//! and then every [`step`]: the state changes while the read is pending (the
//! server's ReadyForQuery arrives on the other direction). A limit therefore fires
//! between `limit` and `limit + step` after the wait began.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::either::Either;

use crate::config::Config;
use crate::protocol::{tag, ClientError, SqlState};
use crate::session::ledger::Ledger;

/// The limits in force for a session; `None` is off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    pub idle_transaction: Option<Duration>,
    pub query: Option<Duration>,
}

/// A limit that ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Expired {
    #[error("the client was idle in a transaction for {0:?} (pool.idle_transaction_timeout)")]
    IdleInTransaction(Duration),
    #[error("the server sent nothing for {0:?} while a reply was owed (server.query_timeout)")]
    Query(Duration),
}

impl Expired {
    /// The FATAL the client gets; `node` names the server for a query timeout.
    pub fn to_client_error(self, node: &str) -> ClientError {
        match self {
            Expired::IdleInTransaction(limit) => ClientError::fatal(
                SqlState::IdleInTransactionTimeout,
                format!("terminating connection due to idle-in-transaction timeout ({limit:?})"),
            ),
            Expired::Query(limit) => ClientError::fatal(
                SqlState::QueryCanceled,
                format!(
                    "query timeout: node \"{node}\" sent nothing for {limit:?}; \
                     terminating connection"
                ),
            ),
        }
    }
}

/// The [`Expired`] an I/O error carries, if a limit of this module caused it.
pub fn expired(error: &io::Error) -> Option<Expired> {
    error.get_ref()?.downcast_ref::<Expired>().copied()
}

/// Transaction mode: the server is attached, every request is answered and the
/// last ReadyForQuery said 'T' or 'E': the client is idle in a transaction.
pub fn ledger_idle_in_transaction(ledger: &Ledger) -> Option<u64> {
    let in_transaction = matches!(
        ledger.status(),
        tag::STATUS_IN_TRANSACTION | tag::STATUS_FAILED
    );
    (in_transaction && ledger.owes_nothing()).then_some(0)
}

/// Transaction mode: the server owes the client a reply.
pub fn ledger_owed(ledger: &Ledger) -> Option<u64> {
    (!ledger.owes_nothing()).then_some(0)
}

impl Timeouts {
    pub fn from_config(config: &Config) -> Timeouts {
        Timeouts {
            idle_transaction: config.pool.idle_transaction_timeout.0,
            query: config.server.query_timeout.0,
        }
    }

    /// The client's read, ended with [`Expired::IdleInTransaction`] once
    /// `idle_in_transaction` has said so for the whole limit. Without a limit it
    /// is the bare read: this runs for every read of every transaction.
    pub fn client_read<'a, F, T: 'a>(
        &self,
        read: F,
        idle_in_transaction: impl FnMut() -> Option<u64> + 'a,
    ) -> Either<F, impl Future<Output = io::Result<T>> + 'a>
    where
        F: Future<Output = io::Result<T>> + 'a,
    {
        match self.idle_transaction {
            None => Either::Left(read),
            Some(limit) => Either::Right(bounded(
                read,
                limit,
                idle_in_transaction,
                Expired::IdleInTransaction,
            )),
        }
    }

    /// The server's read, ended with [`Expired::Query`] once `owed` has said a
    /// reply is owed for the whole limit with no byte from the server. Without a
    /// limit it is the bare read.
    pub fn server_read<'a, F, T: 'a>(
        &self,
        read: F,
        owed: impl FnMut() -> Option<u64> + 'a,
    ) -> Either<F, impl Future<Output = io::Result<T>> + 'a>
    where
        F: Future<Output = io::Result<T>> + 'a,
    {
        match self.query {
            None => Either::Left(read),
            Some(limit) => Either::Right(bounded(read, limit, owed, Expired::Query)),
        }
    }
}

/// How often the waiting state is asked again.
fn step(limit: Duration) -> Duration {
    (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Awaits `read` unless `waiting` keeps answering `Some` with the same mark for
/// `limit` (a new mark, such as more client bytes, starts the clock again).
async fn bounded<F, T>(
    read: F,
    limit: Duration,
    mut waiting: impl FnMut() -> Option<u64>,
    expired: fn(Duration) -> Expired,
) -> io::Result<T>
where
    F: Future<Output = io::Result<T>>,
{
    let step = step(limit);
    let mut read = std::pin::pin!(read);
    let mut since: Option<(Instant, u64)> = None;
    loop {
        let now = Instant::now();
        let next = match (waiting(), since) {
            (Some(mark), Some((started, seen))) if mark == seen => {
                if now.duration_since(started) >= limit {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, expired(limit)));
                }
                (started + limit).min(now + step)
            }
            (Some(mark), _) => {
                since = Some((now, mark));
                now + step.min(limit)
            }
            (None, _) => {
                since = None;
                now + step
            }
        };
        tokio::select! {
            biased;
            done = read.as_mut() => return done,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    fn limits() -> Timeouts {
        Timeouts {
            idle_transaction: Some(LIMIT),
            query: Some(LIMIT),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fires_after_the_limit_of_continuous_waiting() {
        let started = Instant::now();
        let read = limits()
            .client_read(std::future::pending::<io::Result<()>>(), || Some(0))
            .await;
        let error = read.expect_err("the limit fires");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(expired(&error), Some(Expired::IdleInTransaction(LIMIT)));
        let took = started.elapsed();
        assert!(took >= LIMIT && took <= LIMIT + step(LIMIT), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_starts_when_waiting_begins_and_restarts_on_a_new_mark() {
        let started = Instant::now();
        let checks = Cell::new(0u64);
        // Not waiting for the first 5s, then waiting with a mark that changes once.
        let waiting = || {
            let elapsed = started.elapsed();
            checks.set(checks.get() + 1);
            match elapsed {
                e if e < Duration::from_secs(5) => None,
                e if e < Duration::from_secs(8) => Some(1),
                _ => Some(2),
            }
        };
        let error = limits()
            .server_read(std::future::pending::<io::Result<()>>(), waiting)
            .await
            .expect_err("the limit fires");
        assert_eq!(expired(&error), Some(Expired::Query(LIMIT)));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(18) && took <= Duration::from_secs(18) + 2 * step(LIMIT),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_that_completes_wins_and_off_never_fires() {
        let read = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, io::Error>(7)
        };
        assert_eq!(limits().client_read(read, || Some(0)).await.ok(), Some(7));
        let off = Timeouts::default();
        let read = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, io::Error>(8)
        };
        assert_eq!(off.server_read(read, || Some(0)).await.ok(), Some(8));
    }

    #[test]
    fn other_errors_carry_no_expiry() {
        let error = io::Error::new(io::ErrorKind::TimedOut, "keepalive gave up");
        assert_eq!(expired(&error), None);
    }
}
