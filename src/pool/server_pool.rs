//! One pool of server connections for a (node, database, user): at most `size`
//! open, idle ones reused most-recently-used first (each worker thread first takes
//! those it left itself, whose sockets its own event loop watches), checkout with a
//! timeout, and an
//! RAII guard whose drop discards the connection unless it was explicitly released
//! as clean, so no error path can hand a broken or mid-transaction connection to the
//! next client.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use std::collections::HashMap;

use super::failures::ConnectFailures;
use super::welcome::Welcomes;
use super::PoolKey;
use crate::auth::require::RequireAuth;
use crate::auth::stored::ServerSecret;
use crate::server::params::ParamSet;
use crate::server::statements::StatementDef;
use crate::server::{self, LoginRequest, ServerConnection, ServerError};

/// Settings shared by every pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub size: usize,
    pub min_idle: usize,
    pub connect_timeout: Duration,
    pub keepalive: crate::config::KeepaliveConfig,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    /// Pools that may exist at once (see [`super::PoolSet::get`]).
    pub max_pools: usize,
    /// `server.require_auth`, and the users that override it.
    pub require_auth: RequireAuth,
    pub require_auth_by_user: Arc<HashMap<String, RequireAuth>>,
    /// TLS toward each node (`server.tls` and the nodes' overrides).
    pub tls: crate::config::ServerTls,
    /// Worker threads (`runtime.workers`): one idle list each.
    pub workers: usize,
}

impl PoolSettings {
    pub fn from_config(config: &crate::config::Config) -> PoolSettings {
        PoolSettings {
            size: config.pool.size as usize,
            min_idle: config.pool.min_idle as usize,
            connect_timeout: config.server.connect_timeout.0,
            keepalive: config.server.keepalive,
            idle_timeout: config.pool.server_idle_timeout.0,
            lifetime: config.pool.server_lifetime.0,
            max_pools: config.pool.max_pools as usize,
            require_auth: config.server.require_auth,
            require_auth_by_user: Arc::new(
                config
                    .users
                    .iter()
                    .filter_map(|u| u.require_auth.map(|r| (u.name.clone(), r)))
                    .collect(),
            ),
            tls: config.server.tls_loaded.clone(),
            workers: config.runtime.workers as usize,
        }
    }

    /// The methods a server may ask `user`'s logins to use.
    pub fn require_auth_for(&self, user: &str) -> RequireAuth {
        self.require_auth_by_user
            .get(user)
            .copied()
            .unwrap_or(self.require_auth)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("timed out after {waited:?} waiting for a server connection to node \"{node}\" (pool of {size}, all in use)")]
    Timeout {
        node: String,
        waited: Duration,
        size: usize,
    },
    #[error(transparent)]
    Connect(#[from] ServerError),
}

pub struct ServerPool {
    pub key: PoolKey,
    address: String,
    /// What the pool logs in with (shared with the user's entry).
    secret: Arc<ServerSecret>,
    /// Swapped by a reload; see [`ServerPool::reconfigure`] for the size.
    settings: ArcSwap<PoolSettings>,
    /// One permit per connection the pool may have in use. A checkout takes one
    /// and forgets it, and the checked-out connection adds it back: no reference
    /// count on a shared `Arc` per transaction, as an owned permit would need.
    slots: Semaphore,
    /// Permits to retire as they come back, after a reload shrank the pool while
    /// they were in use.
    excess_permits: AtomicUsize,
    resize: Mutex<()>,
    /// Idle connections, one list per worker thread, by the worker whose event
    /// loop their socket is registered with (see [`ServerPool::take_idle`]).
    /// Boxed, here and in [`PooledServer`]: a connection changes hands at every
    /// checkout and release, and moving a box is moving a pointer.
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// Connections open now (idle and in use).
    open: AtomicUsize,
    /// Clients waiting in checkout now.
    waiting: AtomicUsize,
    /// Bumped by `drain`: connections from an older epoch are closed, not reused.
    epoch: AtomicU64,
    /// ParameterStatus values to greet new clients with, per set of startup
    /// parameters, without waiting for a connection.
    welcomes: Welcomes,
    /// Statements a server of this pool prepared successfully, by server name.
    known: Mutex<HashMap<String, Arc<StatementDef>>>,
    /// Since when the pool has been seen unused (no clients, no connections).
    unused_since: Mutex<Option<Instant>>,
    /// Where failed logins are reported (shared by the pool set, for /status).
    failures: Arc<ConnectFailures>,
}

/// An idle connection and the pool epoch it was opened in.
type Idle = (Box<ServerConnection>, u64);

/// Bound on remembered statements per pool; past it the memory starts over.
const MAX_KNOWN_STATEMENTS: usize = 10_000;

/// A snapshot of a pool's counters, for /status and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStats {
    pub node: String,
    pub database: String,
    pub user: String,
    pub size: usize,
    pub open: usize,
    pub idle: usize,
    pub in_use: usize,
    pub waiting: usize,
}

impl ServerPool {
    pub fn new(
        key: PoolKey,
        address: String,
        secret: Arc<ServerSecret>,
        settings: PoolSettings,
        failures: Arc<ConnectFailures>,
    ) -> ServerPool {
        let idle_lists = (0..settings.workers.max(1))
            .map(|_| Mutex::new(Vec::new()))
            .collect();
        ServerPool {
            key,
            address,
            secret,
            slots: Semaphore::new(settings.size),
            settings: ArcSwap::from_pointee(settings),
            excess_permits: AtomicUsize::new(0),
            resize: Mutex::new(()),
            idle: idle_lists,
            open: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            welcomes: Welcomes::default(),
            known: Mutex::new(HashMap::new()),
            unused_since: Mutex::new(None),
            failures,
        }
    }

    /// Remembers a statement a server prepared without error.
    pub fn remember_statement(&self, def: &Arc<StatementDef>) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_KNOWN_STATEMENTS {
            known.clear();
        }
        known.insert(def.server_name.clone(), Arc::clone(def));
    }

    /// Whether a server of this pool prepared exactly this statement before.
    pub fn knows_statement(&self, def: &StatementDef) -> bool {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(&def.server_name)
            .is_some_and(|k| k.body == def.body)
    }

    /// The parameters a server of this pool reports to a client that started with
    /// `params`, once a server has reported them (see [`Welcomes`]).
    pub fn welcome(&self, params: &ParamSet) -> Option<Vec<(String, String)>> {
        self.welcomes.get(params)
    }

    /// What a server of this pool reported with a client's startup `params` applied.
    pub fn remember_welcome(&self, params: &ParamSet, reported: &[(String, String)]) {
        self.welcomes.remember(params, reported);
    }

    /// The idle list of connections registered with `worker`'s event loop (those
    /// opened off the workers share the first list).
    fn idle(&self, worker: Option<usize>) -> MutexGuard<'_, Vec<Idle>> {
        let list = &self.idle[worker.unwrap_or(0) % self.idle.len()];
        // Each critical section is a push, pop or drain: a panic cannot leave the
        // list half-changed, so a poisoned lock is still consistent.
        list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Idle connections across every worker's list.
    fn idle_count(&self) -> usize {
        (0..self.idle.len()).map(|w| self.idle(Some(w)).len()).sum()
    }

    /// Takes every idle connection out of every list.
    fn take_all_idle(&self) -> Vec<Idle> {
        (0..self.idle.len())
            .flat_map(|w| std::mem::take(&mut *self.idle(Some(w))))
            .collect()
    }

    /// The most recently used idle connection of this worker's own list, else
    /// another worker's (a checkout never waits while a connection is idle).
    fn pop_idle(&self, here: Option<usize>) -> Option<Idle> {
        if let Some(own) = self.idle(here).pop() {
            return Some(own);
        }
        let lists = self.idle.len();
        let start = here.unwrap_or(0);
        (1..lists).find_map(|step| self.idle(Some(start + step)).pop())
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether this pool logs in with `secret` (a reload keeps a user's secret
    /// while the password stays the same).
    pub fn uses_secret(&self, secret: &Arc<ServerSecret>) -> bool {
        Arc::ptr_eq(&self.secret, secret)
    }

    /// Applies new settings. A larger size frees slots at once; a smaller one
    /// retires free slots now and busy ones as their clients give them back, so no
    /// client loses the connection it holds.
    pub fn reconfigure(&self, settings: PoolSettings) {
        let _resizing = self.resize.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.settings.swap(Arc::new(settings.clone()));
        if settings.size > old.size {
            let mut grow = settings.size - old.size;
            let cancelled = self.retire_pending(grow);
            grow -= cancelled;
            self.slots.add_permits(grow);
        } else if settings.size < old.size {
            let shrink = old.size - settings.size;
            let retired = self.slots.forget_permits(shrink);
            self.excess_permits
                .fetch_add(shrink - retired, Ordering::Relaxed);
        }
    }

    /// Takes back up to `n` pending retirements; returns how many.
    fn retire_pending(&self, n: usize) -> usize {
        let mut taken = 0;
        let _ = self
            .excess_permits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |pending| {
                taken = pending.min(n);
                Some(pending - taken)
            });
        taken
    }

    /// Gives a slot back, or retires it when the pool was shrunk while it was busy.
    fn return_slot(&self) {
        if self.excess_permits.load(Ordering::Relaxed) > 0 && self.retire_pending(1) == 1 {
            return;
        }
        self.slots.add_permits(1);
    }

    pub fn size(&self) -> usize {
        self.settings.load().size
    }

    /// A logged-in, idle server connection, waiting at most `timeout` for a slot.
    /// `waiting` counts the caller (its listener's waiting clients) while it waits;
    /// `now` is the caller's clock reading, for the staleness checks.
    pub async fn checkout(
        self: &Arc<Self>,
        timeout: Duration,
        waiting: &AtomicUsize,
        mut now: Instant,
    ) -> Result<PooledServer, CheckoutError> {
        match self.slots.try_acquire() {
            Ok(permit) => permit.forget(),
            // Only a client that has to wait pays for a timer.
            Err(_) => {
                let counted = Waiting::count(waiting);
                // Boxed, like `connect` below: the uncontended checkout, made once
                // per transaction, stays a small future.
                let slot = Box::pin(self.wait_for_slot(timeout)).await;
                drop(counted);
                slot?;
                now = Instant::now();
            }
        }
        if let Some((connection, epoch)) = self.take_idle(now) {
            return Ok(self.guard(connection, epoch));
        }
        let epoch = self.epoch.load(Ordering::Relaxed);
        // The slot is ours from here: give it back if the login fails or the
        // client leaves while it runs.
        let slot = SlotGuard(self);
        let connection = Box::pin(self.connect()).await?;
        std::mem::forget(slot);
        Ok(self.guard(connection, epoch))
    }

    async fn wait_for_slot(&self, timeout: Duration) -> Result<(), CheckoutError> {
        let started = Instant::now();
        let counted = Waiting::count(&self.waiting);
        let acquired = tokio::time::timeout(timeout, self.slots.acquire()).await;
        drop(counted);
        match acquired {
            Ok(Ok(permit)) => {
                permit.forget();
                Ok(())
            }
            // The semaphore is never closed; treat it like a timeout all the same.
            Ok(Err(_)) | Err(_) => Err(CheckoutError::Timeout {
                node: self.key.node.clone(),
                waited: started.elapsed(),
                size: self.size(),
            }),
        }
    }

    fn guard(self: &Arc<Self>, connection: Box<ServerConnection>, epoch: u64) -> PooledServer {
        PooledServer {
            connection: Some(connection),
            pool: Arc::clone(self),
            epoch,
        }
    }

    /// Pops a reusable idle connection, closing stale or broken ones on the way.
    /// One taken from another worker's list moves to this worker's event loop.
    fn take_idle(&self, now: Instant) -> Option<Idle> {
        let current = self.epoch.load(Ordering::Relaxed);
        let here = crate::workers::current();
        loop {
            let (mut connection, epoch) = self.pop_idle(here)?;
            // Checked every time (one non-blocking read): during a failover a
            // connection idle for milliseconds may already hold the server's FATAL,
            // and once a request is written after it, a TCP reset can discard that
            // evidence and leave an ambiguous broken connection instead.
            if epoch == current && self.is_fresh(&connection, now) && connection.looks_healthy() {
                match connection.move_here() {
                    Ok(()) => return Some((connection, epoch)),
                    Err(e) => {
                        tracing::warn!(node = %self.key.node, error = %e, "cannot move an idle server connection to this worker; closing it");
                    }
                }
            }
            self.close(connection);
        }
    }

    /// The pool's user and database, with what the user's secret logs in with.
    fn login_request(&self) -> Result<LoginRequest<'_>, ServerError> {
        Ok(LoginRequest {
            user: &self.key.user,
            credential: self
                .secret
                .credential()
                .map_err(|e| ServerError::Auth(e.to_string()))?,
            database: &self.key.database,
            params: &[],
            require_auth: self.settings.load().require_auth_for(&self.key.user),
        })
    }

    async fn connect(&self) -> Result<Box<ServerConnection>, ServerError> {
        let login = self.login_request()?;
        let settings = self.settings.load_full();
        let connection = server::connect_with(
            &self.key.node,
            &self.address,
            &login,
            settings.connect_timeout,
            &settings.keepalive,
            settings.tls.for_address(&self.address),
        )
        .await
        .inspect_err(|e| self.login_failed(e))?;
        if self.failures.clear(&self.key.node) {
            tracing::info!(node = %self.key.node, "server logins succeed again");
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        self.welcomes.note_login(&connection.params);
        tracing::debug!(node = %self.key.node, database = %self.key.database, user = %self.key.user, tls = ?connection.stream.tls_description(), "server connection opened");
        Ok(Box::new(connection))
    }

    /// Logs in once more and hangs up, to learn whether the node still accepts
    /// connections (after one of its backends ended with FATAL 57P01). Not counted
    /// as a pool connection; bounded by the connect timeout, at most 2 s.
    pub async fn probe_login(&self) -> Result<(), ServerError> {
        let login = self.login_request()?;
        let timeout = self
            .settings
            .load()
            .connect_timeout
            .min(std::time::Duration::from_secs(2));
        let settings = self.settings.load();
        let tls = settings.tls.for_address(&self.address);
        let mut connection = server::connect(&self.key.node, &self.address, &login, timeout, tls)
            .await
            .inspect_err(|e| self.login_failed(e))?;
        connection.say_goodbye();
        Ok(())
    }

    /// Keeps a failed login for /status and logs it when it is not the same
    /// failure again. A TLS failure is an error (a configuration or certificate
    /// problem that will not go away by itself).
    fn login_failed(&self, error: &ServerError) {
        if !self.failures.record(&self.key.node, error.to_string()) {
            return;
        }
        if matches!(error, ServerError::Tls { .. }) {
            tracing::error!(node = %self.key.node, address = %self.address, error = %error, "server TLS failed");
        } else {
            tracing::warn!(node = %self.key.node, database = %self.key.database, user = %self.key.user, error = %error, "server login failed");
        }
    }

    fn is_fresh(&self, connection: &ServerConnection, now: Instant) -> bool {
        let settings = self.settings.load();
        now.duration_since(connection.created_at) < settings.lifetime
            && now.duration_since(connection.idle_since) < settings.idle_timeout
    }

    fn give_back(&self, mut connection: Box<ServerConnection>, epoch: u64, now: Instant) {
        if epoch != self.epoch.load(Ordering::Relaxed)
            || now.duration_since(connection.created_at) >= self.settings.load().lifetime
        {
            return self.close(connection);
        }
        connection.idle_since = now;
        self.idle(connection.home).push((connection, epoch));
    }

    fn close(&self, mut connection: Box<ServerConnection>) {
        connection.say_goodbye();
        self.open.fetch_sub(1, Ordering::Relaxed);
        drop(connection);
    }

    /// Closes idle connections past their idle timeout or lifetime, and idle ones
    /// beyond the pool size (after a reload shrank it). Returns how many.
    pub fn prune(&self) -> usize {
        let now = Instant::now();
        let size = self.size();
        let mut over = self.open.load(Ordering::Relaxed).saturating_sub(size);
        let mut stale: Vec<Box<ServerConnection>> = Vec::new();
        for worker in 0..self.idle.len() {
            let mut idle = self.idle(Some(worker));
            let (mut keep, closing): (Vec<_>, Vec<_>) =
                idle.drain(..).partition(|(c, _)| self.is_fresh(c, now));
            // The least recently used sit at the front.
            let surplus = over.min(keep.len());
            over -= surplus;
            stale.extend(
                closing
                    .into_iter()
                    .chain(keep.drain(..surplus))
                    .map(|(c, _)| c),
            );
            *idle = keep;
        }
        let closed = stale.len();
        stale.into_iter().for_each(|c| self.close(c));
        closed
    }

    /// Opens connections until `min_idle` are idle, without making clients wait.
    pub async fn top_up(&self) {
        while self.idle_count() < self.settings.load().min_idle {
            let Ok(permit) = self.slots.try_acquire() else {
                return;
            };
            permit.forget();
            // Given back (or retired, after a shrink) however this round ends.
            let _slot = SlotGuard(self);
            let epoch = self.epoch.load(Ordering::Relaxed);
            match self.connect().await {
                Ok(connection) => self.give_back(connection, epoch, Instant::now()),
                Err(e) => {
                    tracing::warn!(node = %self.key.node, error = %e, "cannot open a server connection for min_idle");
                    return;
                }
            }
        }
    }

    /// Closes every idle connection and makes those in use close when returned.
    pub fn drain(&self) -> usize {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        let idle = self.take_all_idle();
        let closed = idle.len();
        idle.into_iter().for_each(|(c, _)| self.close(c));
        closed
    }

    /// How long the pool has been unused (nobody else holds it — `unshared` — no
    /// connection is open and nobody waits), counted from the first call that saw
    /// it so; None while it is in use, which also restarts the count.
    pub fn unused_for(&self, unshared: bool, now: Instant) -> Option<Duration> {
        let unused = unshared
            && self.open.load(Ordering::Relaxed) == 0
            && self.waiting.load(Ordering::Relaxed) == 0;
        let mut since = self.unused_since.lock().unwrap_or_else(|p| p.into_inner());
        if !unused {
            *since = None;
            return None;
        }
        Some(now.saturating_duration_since(*since.get_or_insert(now)))
    }

    pub fn stats(&self) -> PoolStats {
        let open = self.open.load(Ordering::Relaxed);
        let idle = self.idle_count();
        PoolStats {
            node: self.key.node.clone(),
            database: self.key.database.clone(),
            user: self.key.user.clone(),
            size: self.size(),
            open,
            idle,
            in_use: open.saturating_sub(idle),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }
}

/// A checked-out server connection. Dropping it closes the connection; only
/// [`release`](PooledServer::release) returns it to the pool. It holds one of the
/// pool's slots for as long as it lives: the drop gives the slot back, after a
/// release has put the connection in the idle list, so a waiter woken by the slot
/// finds it there.
pub struct PooledServer {
    connection: Option<Box<ServerConnection>>,
    pool: Arc<ServerPool>,
    epoch: u64,
}

impl PooledServer {
    /// Returns a clean, idle connection to the pool.
    pub fn release(self) {
        self.release_at(Instant::now());
    }

    /// [`release`](Self::release) with the caller's clock reading.
    pub fn release_at(mut self, now: Instant) {
        if let Some(connection) = self.connection.take() {
            self.pool.give_back(connection, self.epoch, now);
        }
    }

    pub fn pool(&self) -> &Arc<ServerPool> {
        &self.pool
    }

    /// The pool and the connection together, for code that needs both at once.
    pub fn parts_mut(&mut self) -> (&ServerPool, &mut ServerConnection) {
        let connection = self
            .connection
            .as_mut()
            .unwrap_or_else(|| unreachable!("connection taken before drop"));
        (&self.pool, connection)
    }
}

/// One waiting client on a counter, for as long as it waits: also when the wait
/// is abandoned (a cancel ends a transaction-mode client's wait for a server).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(counter: &'a AtomicUsize) -> Waiting<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A slot taken for a connection still being opened: given back if the opening
/// fails or is abandoned.
struct SlotGuard<'a>(&'a ServerPool);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.return_slot();
    }
}

impl Deref for PooledServer {
    type Target = ServerConnection;
    fn deref(&self) -> &ServerConnection {
        // Invariant: `connection` is only taken in `release` and `drop`, which consume self.
        self.connection
            .as_ref()
            .unwrap_or_else(|| unreachable!("connection taken before drop"))
    }
}

impl DerefMut for PooledServer {
    fn deref_mut(&mut self) -> &mut ServerConnection {
        self.connection
            .as_mut()
            .unwrap_or_else(|| unreachable!("connection taken before drop"))
    }
}

impl Drop for PooledServer {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            tracing::debug!(node = %self.pool.key.node, "server connection discarded");
            self.pool.close(connection);
        }
        self.pool.return_slot();
    }
}
