//! Wiring: builds the shared context from a config, starts the topology monitor,
//! binds the listeners and the admin server, and hands back a [`RunningProxy`] that
//! knows the bound addresses (port 0 works, for tests), reloads its configuration
//! and shuts down, gracefully (drain) or at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cancel::CancelRegistry;
use crate::config::{Config, ListenerConfig};
use crate::metrics::ListenerMetrics;
use crate::pool::{self, PoolSet, PoolSettings};
use crate::reload::{self, ReloadOutcome, ReloadStatus, Reloader};
use crate::stop_signal::StopSignal;
use crate::topology::{monitor, Topology, TopologyHandle};
use crate::users::UserDb;
use crate::{admin, listener, metrics};

/// What every session and background task shares.
pub struct ProxyContext {
    /// The configuration in force; swapped whole by a reload. Sessions take a
    /// snapshot when they start and keep it.
    config: ArcSwap<Config>,
    users: ArcSwap<UserDb>,
    pub topology: Arc<TopologyHandle>,
    pub cancels: Arc<CancelRegistry>,
    /// Round-robin tie-breaker for replica choice.
    pub rotation: AtomicUsize,
    pub pools: Arc<PoolSet>,
    /// Client connections open now, across listeners (for max_client_connections).
    pub clients: AtomicUsize,
    /// Clients waiting for a primary to appear (failover hold).
    pub held_clients: AtomicUsize,
    /// Listeners accepting now (a reload changes the set).
    pub listeners: ArcSwap<Vec<Arc<ListenerState>>>,
    pub reload_status: ReloadStatus,
    /// Graceful shutdown has begun: no new clients, /health says 503, sessions end
    /// at their next transaction boundary.
    pub draining: CancellationToken,
    /// Hard stop: every task ends now.
    pub shutdown: CancellationToken,
    /// `draining` and `shutdown` as sessions wait on them (see [`StopSignal`]).
    pub session_draining: Arc<StopSignal>,
    pub session_shutdown: Arc<StopSignal>,
    reload_requests: mpsc::Sender<oneshot::Sender<ReloadOutcome>>,
}

impl ProxyContext {
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn users(&self) -> Arc<UserDb> {
        self.users.load_full()
    }

    pub(crate) fn set_config(&self, config: Arc<Config>) {
        self.users.store(Arc::new(UserDb::from_config(&config)));
        self.config.store(config);
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
}

/// A listener as configured at one moment, with its live counters. A reload that
/// changes a listener in place makes a new state that shares the counters, so
/// sessions that started under the old settings keep them and are still counted.
pub struct ListenerState {
    pub config: ListenerConfig,
    pub local_addr: SocketAddr,
    pub counters: Arc<ListenerCounters>,
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

impl ListenerState {
    pub fn clients(&self) -> usize {
        self.counters.clients.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address} for listener {name:?}: {source}")]
    Bind {
        name: String,
        address: SocketAddr,
        source: std::io::Error,
    },
}

pub struct RunningProxy {
    pub context: Arc<ProxyContext>,
    pub admin_addr: SocketAddr,
    tasks: TaskTracker,
}

impl RunningProxy {
    /// The bound address of the listener with this name.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.context
            .listeners
            .load()
            .iter()
            .find(|l| l.config.name == name)
            .map(|l| l.local_addr)
    }

    /// Resolves when something asked the proxy to stop.
    pub async fn stopped(&self) {
        self.context.shutdown.cancelled().await
    }

    /// Re-reads the config file and applies it (see [`reload`]).
    pub async fn reload(&self) -> ReloadOutcome {
        self.context.request_reload().await
    }

    /// Graceful shutdown: stop accepting and report unhealthy at once, let every
    /// client finish its transaction (up to `drain_timeout`), then end the rest
    /// with 57P01 and stop.
    pub async fn drain_and_stop(self, drain_timeout: Duration) {
        let ctx = &self.context;
        ctx.draining.cancel();
        let clients = ctx.clients.load(Ordering::Relaxed);
        tracing::info!(
            clients,
            "draining: no new connections; sessions end at their next transaction boundary (up to {drain_timeout:?})"
        );
        let deadline = tokio::time::Instant::now() + drain_timeout;
        while ctx.clients.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = ctx.clients.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!(
                clients = left,
                "drain timeout reached; closing the remaining sessions"
            );
        } else {
            tracing::info!("every client has left");
        }
        self.shutdown(Duration::from_secs(5)).await;
    }

    /// Stops at once: ends sessions (57P01) and waits (bounded) for every task.
    pub async fn shutdown(self, deadline: Duration) {
        self.context.draining.cancel();
        self.context.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not finish within {deadline:?}");
        }
    }
}

pub(crate) fn pool_settings(config: &Config) -> PoolSettings {
    PoolSettings {
        size: config.pool.size as usize,
        min_idle: config.pool.min_idle as usize,
        connect_timeout: config.server.connect_timeout.0,
        idle_timeout: config.pool.server_idle_timeout.0,
        lifetime: config.pool.server_lifetime.0,
    }
}

/// Binds a listener's socket.
pub(crate) async fn bind_listener(config: &ListenerConfig) -> Result<TcpListener, StartError> {
    TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            name: config.name.clone(),
            address: config.listen,
            source,
        })
}

/// Starts the proxy from a config with no file behind it (reloads then fail).
pub async fn start(config: Config) -> Result<RunningProxy, StartError> {
    start_with_source(config, None).await
}

/// Starts the proxy. `source` is the file reloads re-read. The first topology
/// round is awaited (bounded by the health timeout) before listeners open, so the
/// first clients already have a route.
pub async fn start_with_source(
    config: Config,
    source: Option<PathBuf>,
) -> Result<RunningProxy, StartError> {
    metrics::install();
    let config = Arc::new(config);
    let topology = TopologyHandle::new(Topology::unknown(monitor::initial_nodes(&config.cluster)));
    let shutdown = CancellationToken::new();
    let draining = shutdown.child_token();
    let tasks = TaskTracker::new();
    let (reload_requests, reload_inbox) = mpsc::channel(4);
    let context = Arc::new(ProxyContext {
        users: ArcSwap::from_pointee(UserDb::from_config(&config)),
        topology: Arc::clone(&topology),
        cancels: Arc::new(CancelRegistry::default()),
        rotation: AtomicUsize::new(0),
        pools: Arc::new(PoolSet::new(pool_settings(&config))),
        clients: AtomicUsize::new(0),
        held_clients: AtomicUsize::new(0),
        listeners: ArcSwap::from_pointee(Vec::new()),
        reload_status: ReloadStatus::default(),
        session_draining: StopSignal::following(&draining),
        session_shutdown: StopSignal::following(&shutdown),
        draining,
        shutdown: shutdown.clone(),
        reload_requests,
        config: ArcSwap::new(Arc::clone(&config)),
    });

    let monitor_token = shutdown.child_token();
    tasks.spawn(monitor::run(
        config.cluster.clone(),
        Arc::clone(&topology),
        monitor_token.clone(),
    ));
    tasks.spawn(pool::maintenance::run(
        Arc::clone(&context.pools),
        Arc::clone(&topology),
        shutdown.clone(),
    ));
    let first_round_limit = config.cluster.health.timeout.0 * 2 + Duration::from_millis(500);
    if tokio::time::timeout(first_round_limit, topology.first_round())
        .await
        .is_err()
    {
        tracing::warn!(
            "first health round did not finish in {first_round_limit:?}; starting anyway"
        );
    }

    let bound = bind_all(&config).await;
    let (sockets, admin_socket) = match bound {
        Ok(bound) => bound,
        Err(e) => {
            // The monitor and pool maintenance are already running: stop them.
            shutdown.cancel();
            tasks.close();
            return Err(e);
        }
    };
    let admin_addr = admin_socket.local_addr().unwrap_or(config.admin.listen);
    tracing::info!(address = %admin_addr, "admin HTTP listening");

    let mut reloader = Reloader::new(Arc::clone(&context), tasks.clone(), source, monitor_token);
    for (socket, listener_config) in sockets {
        reloader.open_listener(socket, listener_config.clone(), None);
    }
    tasks.spawn(reload::serve(reloader, reload_inbox));
    tasks.spawn(admin::serve(admin_socket, Arc::clone(&context)));
    tasks.spawn(metrics::upkeep(shutdown.clone()));
    Ok(RunningProxy {
        context,
        admin_addr,
        tasks,
    })
}

type BoundSockets<'a> = (Vec<(TcpListener, &'a ListenerConfig)>, TcpListener);

/// Binds every client listener and the admin listener.
async fn bind_all(config: &Config) -> Result<BoundSockets<'_>, StartError> {
    let mut sockets = Vec::new();
    for listener_config in &config.listeners {
        sockets.push((bind_listener(listener_config).await?, listener_config));
    }
    let admin_socket = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| StartError::Bind {
            name: "admin".into(),
            address: config.admin.listen,
            source,
        })?;
    Ok((sockets, admin_socket))
}

/// Spawns the accept loop of a bound listener; it stops on `stop` or when draining.
pub(crate) fn spawn_accept_loop(
    socket: TcpListener,
    state: Arc<ArcSwap<ListenerState>>,
    stop: CancellationToken,
    ctx: Arc<ProxyContext>,
    tasks: &TaskTracker,
) {
    tasks.spawn(listener::accept_loop(
        socket,
        state,
        stop,
        ctx,
        tasks.clone(),
    ));
}
