//! What the running proxy's tasks share: the configuration in force, users (and
//! the `auth_query` lookup with its cache), the topology, pools, cancel keys, the
//! open listeners with their counters, client counts, reload history and the stop
//! signals. Fields are private; each task reads what it needs through a narrow
//! accessor. Built by `proxy`; nothing here starts a task or does I/O.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::accept_limits::Admission;
use crate::auth::stored::ServerSecret;
use crate::auth_query::AuthQuery;
use crate::buffer_budget::BufferBudget;
use crate::cancel::CancelRegistry;
use crate::config::{Config, ListenerConfig};
use crate::control::{ClientRegistry, PauseGate};
use crate::metrics::ListenerMetrics;
use crate::pool::PoolSet;
use crate::stop_signal::{StopSignal, StopWaiter};
use crate::topology::TopologyHandle;
use crate::users::UserDb;
use crate::workers::Workers;

/// What a reload did (a summary line) or why it did nothing.
pub type ReloadOutcome = Result<String, String>;

/// A request to the reloader, answered with the outcome.
pub type ReloadRequest = oneshot::Sender<ReloadOutcome>;

pub struct ProxyContext {
    /// The configuration in force; swapped whole by a reload. Sessions take a
    /// snapshot when they start and keep it.
    config: ArcSwap<Config>,
    users: ArcSwap<UserDb>,
    /// Looks up users not in `users:` (`auth:`); kept across reloads that leave
    /// `auth:` as it was, with its cache.
    auth_query: ArcSwapOption<AuthQuery>,
    topology: Arc<TopologyHandle>,
    cancels: Arc<CancelRegistry>,
    pools: Arc<PoolSet>,
    /// Round-robin tie-breaker for replica choice.
    rotation: AtomicUsize,
    clients: ClientCounts,
    /// Listeners accepting now (a reload changes the set).
    listeners: ArcSwap<Vec<Arc<ListenerState>>>,
    reload_status: ReloadStatus,
    reload_requests: mpsc::Sender<ReloadRequest>,
    stop: StopSignals,
    /// Bytes held for clients across sessions (resend copies, held replies).
    client_buffers: BufferBudget,
    /// Places for connections that have not finished logging in.
    admission: Arc<Admission>,
    /// PAUSE/RESUME and DISABLE/ENABLE (admin console, HTTP API).
    pause_gate: PauseGate,
    /// Every client session, for SHOW CLIENTS, KILL and pausing.
    registry: Arc<ClientRegistry>,
    /// Cancelled when an operator asked for a graceful shutdown (console SHUTDOWN).
    stop_requested: CancellationToken,
    started: std::time::Instant,
    /// The threads that serve clients.
    workers: Arc<Workers>,
}

/// Client connections across listeners.
#[derive(Default)]
struct ClientCounts {
    /// Open now (for max_client_connections).
    open: AtomicUsize,
    /// Waiting for a primary to appear (failover hold).
    held: AtomicUsize,
}

/// Graceful and hard stop, as tokens (for tasks that select on them) and as
/// [`StopSignal`]s (for sessions, which wait on them on every transaction).
struct StopSignals {
    /// Graceful shutdown has begun: no new clients, /health says 503, sessions end
    /// at their next transaction boundary.
    draining: CancellationToken,
    /// Hard stop: every task ends now.
    shutdown: CancellationToken,
    session_draining: Arc<StopSignal>,
    session_shutdown: Arc<StopSignal>,
}

impl ProxyContext {
    /// A context for `config`; `shutdown` is the proxy's hard-stop token (draining
    /// follows it), `reload_requests` where reload requests go.
    pub(crate) fn new(
        config: Arc<Config>,
        topology: Arc<TopologyHandle>,
        pools: Arc<PoolSet>,
        shutdown: CancellationToken,
        reload_requests: mpsc::Sender<ReloadRequest>,
        workers: Arc<Workers>,
    ) -> ProxyContext {
        let draining = shutdown.child_token();
        let client_buffers = BufferBudget::new(config.client.max_buffered_bytes.0 as usize);
        ProxyContext {
            client_buffers,
            admission: Arc::new(Admission::default()),
            pause_gate: PauseGate::default(),
            registry: Arc::new(ClientRegistry::default()),
            stop_requested: CancellationToken::new(),
            started: std::time::Instant::now(),
            workers,
            users: ArcSwap::from_pointee(UserDb::from_config(&config, None)),
            auth_query: ArcSwapOption::new(
                config.auth.as_ref().map(|a| Arc::new(AuthQuery::new(a))),
            ),
            config: ArcSwap::new(config),
            topology,
            cancels: Arc::new(CancelRegistry::default()),
            pools,
            rotation: AtomicUsize::new(0),
            clients: ClientCounts::default(),
            listeners: ArcSwap::from_pointee(Vec::new()),
            reload_status: ReloadStatus::default(),
            reload_requests,
            stop: StopSignals {
                session_draining: StopSignal::following(&draining),
                session_shutdown: StopSignal::following(&shutdown),
                draining,
                shutdown,
            },
        }
    }

    pub fn workers(&self) -> &Arc<Workers> {
        &self.workers
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn users(&self) -> Arc<UserDb> {
        self.users.load_full()
    }

    /// Puts a new configuration in force with its users, built by
    /// [`UserDb::from_config`] (off the async workers: it derives SCRAM keys for
    /// plaintext passwords) from `config` and the current [`Self::users`].
    pub(crate) fn set_config(&self, config: Arc<Config>, users: UserDb) {
        self.users.store(Arc::new(users));
        if self.config.load().auth != config.auth {
            // A new query or login may answer differently: start with an empty cache.
            let lookup = config.auth.as_ref().map(|a| Arc::new(AuthQuery::new(a)));
            self.auth_query.store(lookup);
        }
        self.client_buffers
            .set_limit(config.client.max_buffered_bytes.0 as usize);
        self.config.store(config);
    }

    /// The `auth_query` lookup, when `auth:` is configured.
    pub(crate) fn auth_query(&self) -> Option<Arc<AuthQuery>> {
        self.auth_query.load_full()
    }

    /// What `user`'s pools log in with: a configured user's secret, else the one
    /// `auth_query` last found (fresh or not: its clients already logged in).
    pub(crate) fn server_secret(&self, user: &str) -> Option<Arc<ServerSecret>> {
        if let Some(entry) = self.users.load().get(user) {
            return Some(Arc::clone(&entry.secret));
        }
        let found = self.auth_query.load().as_ref()?.last_found(user)?;
        Some(Arc::clone(&found.secret))
    }

    /// Places for connections still logging in.
    pub(crate) fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// The proxy-wide budget for bytes held for clients.
    pub(crate) fn client_buffers(&self) -> &BufferBudget {
        &self.client_buffers
    }

    pub fn topology(&self) -> &Arc<TopologyHandle> {
        &self.topology
    }

    pub fn cancels(&self) -> &Arc<CancelRegistry> {
        &self.cancels
    }

    pub fn pools(&self) -> &Arc<PoolSet> {
        &self.pools
    }

    /// The next value of the replica round-robin.
    pub fn next_rotation(&self) -> usize {
        self.rotation.fetch_add(1, Ordering::Relaxed)
    }

    pub fn listeners(&self) -> Arc<Vec<Arc<ListenerState>>> {
        self.listeners.load_full()
    }

    pub(crate) fn set_listeners(&self, listeners: Vec<Arc<ListenerState>>) {
        self.listeners.store(Arc::new(listeners));
    }

    /// Client connections open now, across listeners.
    pub fn open_clients(&self) -> usize {
        self.clients.open.load(Ordering::Relaxed)
    }

    /// Counts a client connection until the guard drops.
    pub(crate) fn count_client(self: &Arc<Self>, listener: &Arc<ListenerState>) -> ClientGuard {
        listener.counters.clients.fetch_add(1, Ordering::Relaxed);
        self.clients.open.fetch_add(1, Ordering::Relaxed);
        ClientGuard {
            listener: Arc::clone(listener),
            ctx: Arc::clone(self),
        }
    }

    /// Clients waiting for a primary now.
    pub fn held_clients(&self) -> usize {
        self.clients.held.load(Ordering::Relaxed)
    }

    /// Counts a client as held (waiting for a primary) until the guard drops.
    pub(crate) fn hold_client(&self) -> HeldGuard<'_> {
        self.clients.held.fetch_add(1, Ordering::Relaxed);
        HeldGuard(&self.clients.held)
    }

    pub fn reload_status(&self) -> &ReloadStatus {
        &self.reload_status
    }

    /// Asks the reloader to re-read the config file; resolves with the outcome.
    pub async fn request_reload(&self) -> ReloadOutcome {
        let (reply, outcome) = oneshot::channel();
        if self.reload_requests.send(reply).await.is_err() {
            return Err("the proxy is shutting down".into());
        }
        outcome
            .await
            .unwrap_or_else(|_| Err("the proxy is shutting down".into()))
    }

    /// Cancelled when graceful shutdown begins.
    pub fn draining(&self) -> &CancellationToken {
        &self.stop.draining
    }

    /// Cancelled when every task must end now.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.stop.shutdown
    }

    /// When the proxy started (for averages over its life).
    pub fn started(&self) -> std::time::Instant {
        self.started
    }

    pub(crate) fn pause_gate(&self) -> &PauseGate {
        &self.pause_gate
    }

    pub(crate) fn client_registry(&self) -> &Arc<ClientRegistry> {
        &self.registry
    }

    /// Cancelled when an operator asked for a graceful shutdown (the console's
    /// SHUTDOWN); whoever runs the proxy then drains and stops it.
    pub fn stop_requested(&self) -> &CancellationToken {
        &self.stop_requested
    }

    /// Waiters for a session: (draining, shutdown).
    pub(crate) fn session_stop_waiters(&self) -> (StopWaiter, StopWaiter) {
        (
            self.stop.session_draining.subscribe(),
            self.stop.session_shutdown.subscribe(),
        )
    }
}

/// Keeps a client counted on its listener and in the proxy's total.
pub(crate) struct ClientGuard {
    listener: Arc<ListenerState>,
    ctx: Arc<ProxyContext>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.listener
            .counters
            .clients
            .fetch_sub(1, Ordering::Relaxed);
        self.ctx.clients.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps a client counted as held.
pub(crate) struct HeldGuard<'a>(&'a AtomicUsize);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listener as configured at one moment, with its live counters. A reload that
/// changes a listener in place makes a new state that shares the counters, so
/// sessions that started under the old settings keep them and are still counted.
pub struct ListenerState {
    pub config: ListenerConfig,
    pub local_addr: SocketAddr,
    pub counters: Arc<ListenerCounters>,
    /// The TLS acceptor when the listener offers TLS; a reload that re-reads the
    /// certificate makes a new state with a new one.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
}

impl ListenerState {
    pub fn clients(&self) -> usize {
        self.counters.clients.load(Ordering::Relaxed)
    }
}

/// Per-listener figures, kept across reloads of the same listener.
pub struct ListenerCounters {
    /// Client connections open now.
    pub clients: AtomicUsize,
    /// Clients holding a server connection now.
    pub active: AtomicUsize,
    /// Clients waiting for a server connection or for a primary now.
    pub waiting: AtomicUsize,
    pub metrics: ListenerMetrics,
}

impl ListenerCounters {
    pub fn new(listener: &str) -> ListenerCounters {
        ListenerCounters {
            clients: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            metrics: ListenerMetrics::new(listener),
        }
    }
}

/// Reload history, for /status and metrics.
pub struct ReloadStatus {
    successes: AtomicU64,
    failures: AtomicU64,
    last_succeeded: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Default for ReloadStatus {
    fn default() -> Self {
        ReloadStatus {
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_succeeded: AtomicBool::new(true),
            last_error: Mutex::new(None),
        }
    }
}

impl ReloadStatus {
    pub(crate) fn record(&self, outcome: &ReloadOutcome) {
        let result = match outcome {
            Ok(_) => {
                self.successes.fetch_add(1, Ordering::Relaxed);
                self.last_succeeded.store(true, Ordering::Relaxed);
                "success"
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.last_succeeded.store(false, Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                "failure"
            }
        };
        metrics::counter!("switchyard_config_reloads_total", "result" => result).increment(1);
    }

    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn last_succeeded(&self) -> bool {
        self.last_succeeded.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
