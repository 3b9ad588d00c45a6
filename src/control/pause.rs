//! The pause gate: PAUSE holds new transactions of every database or of one, until
//! RESUME; DISABLE refuses new client connections to a database until ENABLE.
//! Sessions ask [`PauseGate::is_paused`] at each transaction start (one relaxed-cost
//! load while nothing is paused) and wait in [`PauseGate::wait_resumed`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::stop_signal::StopSignal;

/// What a PAUSE or RESUME applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseScope {
    All,
    Database(String),
}

impl PauseScope {
    pub fn from_arg(db: Option<&str>) -> PauseScope {
        match db {
            Some(db) => PauseScope::Database(db.to_string()),
            None => PauseScope::All,
        }
    }

    pub fn covers(&self, database: &str) -> bool {
        match self {
            PauseScope::All => true,
            PauseScope::Database(db) => db == database,
        }
    }
}

#[derive(Default)]
struct State {
    all: bool,
    databases: BTreeSet<String>,
    disabled: BTreeSet<String>,
}

/// Why a RESUME did nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResumeError {
    #[error("not paused")]
    NotPaused,
    #[error("every database is paused; RESUME without a database name resumes them")]
    PausedAll,
}

pub struct PauseGate {
    /// Something is paused; the only thing a session reads while nothing is.
    any: AtomicBool,
    state: Mutex<State>,
    /// Bumped on every change, for waiting sessions.
    changes: watch::Sender<u64>,
    /// Fired and replaced by every PAUSE.
    next_pause: Mutex<Arc<StopSignal>>,
}

impl Default for PauseGate {
    fn default() -> Self {
        PauseGate {
            any: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            changes: watch::channel(0).0,
            next_pause: Mutex::default(),
        }
    }
}

impl PauseGate {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self, state: &State) {
        // SeqCst: pairs with the session's SeqCst store of its own state before it
        // reads this (see `ClientEntry::enter_transaction`), so either the session
        // sees the pause or the pauser sees the session busy.
        self.any
            .store(state.all || !state.databases.is_empty(), Ordering::SeqCst);
        self.changes.send_modify(|n| *n += 1);
    }

    pub fn pause(&self, scope: &PauseScope) {
        let mut state = self.state();
        match scope {
            PauseScope::All => state.all = true,
            PauseScope::Database(db) => {
                state.databases.insert(db.clone());
            }
        }
        self.changed(&state);
        drop(state);
        // Replaced before it fires: a relay that subscribes to the new one
        // already sees this pause in the state.
        let fired = std::mem::take(&mut *self.next_pause.lock().unwrap_or_else(|p| p.into_inner()));
        fired.fire();
    }

    pub fn resume(&self, scope: &PauseScope) -> Result<(), ResumeError> {
        let mut state = self.state();
        match scope {
            PauseScope::All if state.all || !state.databases.is_empty() => {
                state.all = false;
                state.databases.clear();
            }
            PauseScope::Database(_) if state.all => return Err(ResumeError::PausedAll),
            PauseScope::Database(db) if state.databases.remove(db) => {}
            _ => return Err(ResumeError::NotPaused),
        }
        self.changed(&state);
        Ok(())
    }

    /// New transactions of `database` must wait.
    pub fn is_paused(&self, database: &str) -> bool {
        if !self.any.load(Ordering::SeqCst) {
            return false;
        }
        let state = self.state();
        state.all || state.databases.contains(database)
    }

    /// Resolves once `database` is not paused.
    pub async fn wait_resumed(&self, database: &str) {
        let mut changes = self.changes.subscribe();
        while self.is_paused(database) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Fires at the next PAUSE (of any database): for a session-mode relay that
    /// must notice a pause while it waits on its sockets. A [`StopSignal`]
    /// rather than the watch channel: the relay polls it on every wake-up, and
    /// waiting on it costs an atomic load, not a lock.
    pub fn next_pause(&self) -> Arc<StopSignal> {
        Arc::clone(&self.next_pause.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether everything is paused, and the databases paused one by one.
    pub fn paused(&self) -> (bool, Vec<String>) {
        let state = self.state();
        (state.all, state.databases.iter().cloned().collect())
    }

    pub fn set_disabled(&self, database: &str, disabled: bool) {
        let mut state = self.state();
        if disabled {
            state.disabled.insert(database.to_string());
        } else {
            state.disabled.remove(database);
        }
    }

    /// New client connections to `database` are refused (DISABLE).
    pub fn is_disabled(&self, database: &str) -> bool {
        let state = self.state();
        !state.disabled.is_empty() && state.disabled.contains(database)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pause_one_database_then_resume_it() {
        let gate = std::sync::Arc::new(PauseGate::default());
        assert!(!gate.is_paused("a"));
        gate.pause(&PauseScope::Database("a".into()));
        assert!(gate.is_paused("a") && !gate.is_paused("b"));
        let waiter = tokio::spawn({
            let gate = std::sync::Arc::clone(&gate);
            async move { gate.wait_resumed("a").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "held while paused");
        gate.resume(&PauseScope::Database("a".into()))
            .expect("paused");
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("resumed")
            .expect("join");
    }

    #[test]
    fn resume_refuses_what_is_not_paused() {
        let gate = PauseGate::default();
        assert_eq!(gate.resume(&PauseScope::All), Err(ResumeError::NotPaused));
        gate.pause(&PauseScope::All);
        assert!(gate.is_paused("x"));
        assert_eq!(
            gate.resume(&PauseScope::Database("x".into())),
            Err(ResumeError::PausedAll)
        );
        assert_eq!(gate.resume(&PauseScope::All), Ok(()));
        assert!(!gate.is_paused("x"));
    }
}
