//! Every client session, registered while it lives: who it is (user, database,
//! listener, addresses, application_name, connect time), what it is doing now
//! (idle, in a transaction, waiting for a server, held by a pause) and a token that
//! ends it (KILL, KILL_CLIENT). A session writes only its own entry's atomics; the
//! registry's lock is taken when a session starts and ends, and by the console.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::stop_signal::StopSignal;

use super::pause::{PauseGate, PauseScope};

/// What a client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Between transactions (transaction mode) or idle at a boundary.
    Idle = 0,
    /// Inside a transaction, holding a server (session mode: relaying).
    Active = 1,
    /// Waiting for a server connection or a primary.
    Waiting = 2,
    /// Held by PAUSE at a transaction boundary.
    Paused = 3,
}

impl ClientState {
    fn from_u8(value: u8) -> ClientState {
        match value {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            3 => ClientState::Paused,
            _ => ClientState::Idle,
        }
    }

    /// Counts against a PAUSE until it reaches a boundary.
    pub fn is_busy(self) -> bool {
        matches!(self, ClientState::Active | ClientState::Waiting)
    }
}

/// Who a client is; fixed for the session.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub user: String,
    pub database: String,
    pub listener: String,
    pub addr: SocketAddr,
    pub local: SocketAddr,
    pub application_name: String,
    /// `TLSv1.3/TLS13_AES_256_GCM_SHA384` on TLS, empty in plaintext (SHOW CLIENTS'
    /// `tls` column, as PgBouncer fills it).
    pub tls: String,
}

pub struct ClientEntry {
    pub id: u64,
    pub info: ClientInfo,
    pub connected_at: SystemTime,
    /// `connected_at` on the monotonic clock, which sessions already read.
    connected_instant: Instant,
    state: AtomicU8,
    /// Microseconds after `connected_instant` of the last transaction start, plus
    /// one (0: none yet).
    request_micros: AtomicU64,
    /// Fired by KILL / KILL_CLIENT. A StopSignal, not a CancellationToken: the
    /// session polls it on every wake-up, and a token's poll takes a lock.
    kill: Arc<StopSignal>,
}

impl ClientEntry {
    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::SeqCst))
    }

    pub fn set_state(&self, state: ClientState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// When the last transaction started, if one did.
    pub fn request_time(&self) -> Option<SystemTime> {
        match self.request_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(self.connected_at + Duration::from_micros(micros - 1)),
        }
    }

    /// A transaction started at `at` (a clock reading the session took anyway).
    pub fn mark_request(&self, at: Instant) {
        let micros = at
            .saturating_duration_since(self.connected_instant)
            .as_micros() as u64;
        self.request_micros.store(micros + 1, Ordering::Relaxed);
    }

    /// Marks the start of a transaction and waits while `gate` pauses the client's
    /// database. The SeqCst store before the gate's SeqCst load pairs with
    /// PAUSE's store then scan: a client either sees the pause here or is seen busy.
    pub async fn enter_transaction(&self, gate: &PauseGate) {
        loop {
            self.state
                .store(ClientState::Waiting as u8, Ordering::SeqCst);
            if !gate.is_paused(&self.info.database) {
                break;
            }
            self.set_state(ClientState::Paused);
            gate.wait_resumed(&self.info.database).await;
        }
    }

    /// Ends the session (KILL / KILL_CLIENT).
    pub fn kill(&self) {
        self.kill.fire();
    }

    /// Resolves when the session was killed.
    pub fn killed(&self) -> &Arc<StopSignal> {
        &self.kill
    }
}

#[derive(Default)]
pub struct ClientRegistry {
    next_id: AtomicU64,
    clients: Mutex<BTreeMap<u64, Arc<ClientEntry>>>,
}

/// A registered client; dropping it removes the entry.
pub struct Registered {
    entry: Arc<ClientEntry>,
    registry: Arc<ClientRegistry>,
}

impl std::ops::Deref for Registered {
    type Target = ClientEntry;
    fn deref(&self) -> &ClientEntry {
        &self.entry
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.clients().remove(&self.entry.id);
    }
}

impl ClientRegistry {
    fn clients(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<ClientEntry>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(self: &Arc<Self>, info: ClientInfo) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(ClientEntry {
            id,
            info,
            connected_at: SystemTime::now(),
            connected_instant: Instant::now(),
            state: AtomicU8::new(ClientState::Idle as u8),
            request_micros: AtomicU64::new(0),
            kill: Arc::new(StopSignal::default()),
        });
        self.clients().insert(id, Arc::clone(&entry));
        Registered {
            entry,
            registry: Arc::clone(self),
        }
    }

    /// Every client now, by id.
    pub fn all(&self) -> Vec<Arc<ClientEntry>> {
        self.clients().values().cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<Arc<ClientEntry>> {
        self.clients().get(&id).cloned()
    }

    /// Clients of `scope` inside a transaction or waiting for a server.
    pub fn busy_in(&self, scope: &PauseScope) -> usize {
        self.clients()
            .values()
            .filter(|c| scope.covers(&c.info.database) && c.state().is_busy())
            .count()
    }

    /// Ends every client of `database`; returns how many.
    pub fn kill_database(&self, database: &str) -> usize {
        let clients = self.clients();
        let mut killed = 0;
        for client in clients.values().filter(|c| c.info.database == database) {
            client.kill();
            killed += 1;
        }
        killed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(database: &str) -> ClientInfo {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        ClientInfo {
            user: "app".into(),
            database: database.into(),
            listener: "rw".into(),
            addr,
            local: addr,
            application_name: String::new(),
            tls: String::new(),
        }
    }

    #[tokio::test]
    async fn a_busy_client_holds_a_pause_until_it_is_idle() {
        let registry = Arc::new(ClientRegistry::default());
        let gate = PauseGate::default();
        let a = registry.register(info("a"));
        let b = registry.register(info("b"));
        a.enter_transaction(&gate).await;
        a.set_state(ClientState::Active);
        assert_eq!(registry.busy_in(&PauseScope::All), 1);
        assert_eq!(registry.busy_in(&PauseScope::Database("b".into())), 0);
        a.set_state(ClientState::Idle);
        assert_eq!(registry.busy_in(&PauseScope::All), 0);
        assert_eq!(registry.kill_database("b"), 1);
        assert!(b.killed().is_fired() && !a.killed().is_fired());
        drop(b);
        assert_eq!(registry.all().len(), 1);
    }
}
