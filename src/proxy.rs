//! Wiring: builds the shared context from a config, starts the topology monitor,
//! binds the listeners and the admin server, and hands back a [`RunningProxy`] that
//! knows the bound addresses (port 0 works, for tests) and can shut everything down.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cancel::CancelRegistry;
use crate::config::{Config, ListenerConfig};
use crate::pool::{self, PoolSet, PoolSettings};
use crate::topology::{monitor, Topology, TopologyHandle};
use crate::users::UserDb;
use crate::{admin, listener};

/// What every session and background task shares. Immutable but for counters.
pub struct ProxyContext {
    pub config: Arc<Config>,
    pub users: UserDb,
    pub topology: Arc<TopologyHandle>,
    pub cancels: Arc<CancelRegistry>,
    /// Live sessions per node (same order as `config.cluster.nodes`).
    pub node_sessions: Vec<AtomicU32>,
    /// Round-robin tie-breaker for replica choice.
    pub rotation: AtomicUsize,
    pub pools: Arc<PoolSet>,
    /// Client connections open now, across listeners (for max_client_connections).
    pub clients: AtomicUsize,
    /// Clients waiting for a primary to appear (failover hold).
    pub held_clients: AtomicUsize,
    pub shutdown: CancellationToken,
}

/// A bound listener and its live client count.
pub struct ListenerState {
    pub config: ListenerConfig,
    pub local_addr: SocketAddr,
    pub clients: AtomicUsize,
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
    pub listeners: Vec<Arc<ListenerState>>,
    pub admin_addr: SocketAddr,
    tasks: TaskTracker,
}

impl RunningProxy {
    /// The bound address of the listener with this name.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.config.name == name)
            .map(|l| l.local_addr)
    }

    /// Resolves when something asked the proxy to stop.
    pub async fn stopped(&self) {
        self.context.shutdown.cancelled().await
    }

    /// Stops accepting, ends sessions and waits (bounded) for every task.
    pub async fn shutdown(self, deadline: Duration) {
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

fn pool_settings(config: &Config) -> PoolSettings {
    PoolSettings {
        size: config.pool.size as usize,
        min_idle: config.pool.min_idle as usize,
        connect_timeout: config.server.connect_timeout.0,
        idle_timeout: config.pool.server_idle_timeout.0,
        lifetime: config.pool.server_lifetime.0,
    }
}

/// Starts the proxy. The first topology round is awaited (bounded by the health
/// timeout) before listeners open, so the first clients already have a route.
pub async fn start(config: Config) -> Result<RunningProxy, StartError> {
    let config = Arc::new(config);
    let topology = TopologyHandle::new(Topology::unknown(monitor::initial_nodes(&config.cluster)));
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let context = Arc::new(ProxyContext {
        users: UserDb::from_config(&config),
        topology: Arc::clone(&topology),
        cancels: Arc::new(CancelRegistry::default()),
        node_sessions: config
            .cluster
            .nodes
            .iter()
            .map(|_| AtomicU32::new(0))
            .collect(),
        rotation: AtomicUsize::new(0),
        pools: Arc::new(PoolSet::new(pool_settings(&config))),
        clients: AtomicUsize::new(0),
        held_clients: AtomicUsize::new(0),
        shutdown: shutdown.clone(),
        config: Arc::clone(&config),
    });

    tasks.spawn(monitor::run(
        config.cluster.clone(),
        Arc::clone(&topology),
        shutdown.clone(),
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

    let mut listeners = Vec::new();
    let mut sockets = Vec::new();
    for listener_config in &config.listeners {
        let socket = TcpListener::bind(listener_config.listen)
            .await
            .map_err(|source| StartError::Bind {
                name: listener_config.name.clone(),
                address: listener_config.listen,
                source,
            })?;
        let local_addr = socket.local_addr().unwrap_or(listener_config.listen);
        let state = Arc::new(ListenerState {
            config: listener_config.clone(),
            local_addr,
            clients: AtomicUsize::new(0),
        });
        tracing::info!(listener = %listener_config.name, address = %local_addr, route = ?listener_config.route, "listening");
        listeners.push(Arc::clone(&state));
        sockets.push((socket, state));
    }
    let admin_socket = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| StartError::Bind {
            name: "admin".into(),
            address: config.admin.listen,
            source,
        })?;
    let admin_addr = admin_socket.local_addr().unwrap_or(config.admin.listen);
    tracing::info!(address = %admin_addr, "admin HTTP listening");

    for (socket, state) in sockets {
        tasks.spawn(listener::accept_loop(
            socket,
            state,
            Arc::clone(&context),
            tasks.clone(),
        ));
    }
    tasks.spawn(admin::serve(
        admin_socket,
        Arc::clone(&context),
        listeners.clone(),
    ));
    Ok(RunningProxy {
        context,
        listeners,
        admin_addr,
        tasks,
    })
}
