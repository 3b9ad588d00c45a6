//! Wiring: builds the shared context from a config, starts the worker threads and
//! the topology monitor, binds the listeners and the admin server, and hands back a [`RunningProxy`] that
//! knows the bound addresses (port 0 works, for tests), reloads its configuration
//! and shuts down, gracefully (drain) or at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ListenerConfig};
use crate::context::{ProxyContext, ReloadOutcome};
use crate::listener::BindError;
use crate::pool::{self, PoolSet, PoolSettings};
use crate::reload::{self, Reloader};
use crate::topology::{monitor, Topology, TopologyHandle};
use crate::workers::Workers;
use crate::{admin, listener, metrics};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address} for listener {name:?}: {source}")]
    Bind {
        name: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
}

impl From<BindError> for StartError {
    fn from(e: BindError) -> StartError {
        StartError::Bind {
            name: e.name,
            address: e.address,
            source: e.source,
        }
    }
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
            .listeners()
            .iter()
            .find(|l| l.config.name == name)
            .map(|l| l.local_addr)
    }

    /// Resolves when something asked the proxy to stop.
    pub async fn stopped(&self) {
        self.context.shutdown().cancelled().await
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
        ctx.draining().cancel();
        let clients = ctx.open_clients();
        tracing::info!(
            clients,
            "draining: no new connections; sessions end at their next transaction boundary (up to {drain_timeout:?})"
        );
        let deadline = tokio::time::Instant::now() + drain_timeout;
        while ctx.open_clients() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = ctx.open_clients();
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
        self.context.draining().cancel();
        self.context.shutdown().cancel();
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not finish within {deadline:?}");
        }
        self.context.workers().stop();
    }
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
    // Certificates first: a bad one stops the start before any task runs.
    let mut tls = crate::tls::load_for_listeners(&config)?;
    let workers = Workers::start(config.runtime.workers as usize).map_err(StartError::Workers)?;
    tracing::info!(workers = workers.count(), "worker threads started");
    let config = Arc::new(config);
    let topology = TopologyHandle::new(Topology::unknown(monitor::initial_nodes(&config.cluster)));
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (reload_requests, reload_inbox) = mpsc::channel(4);
    let context = Arc::new(ProxyContext::new(
        Arc::clone(&config),
        Arc::clone(&topology),
        Arc::new(PoolSet::new(PoolSettings::from_config(&config))),
        shutdown.clone(),
        reload_requests,
        Arc::new(workers),
    ));

    let monitor_token = shutdown.child_token();
    tasks.spawn(monitor::run(
        config.cluster.clone(),
        config.server.tls_loaded.clone(),
        Arc::clone(&topology),
        monitor_token.clone(),
    ));
    tasks.spawn(pool::maintenance::run(
        Arc::clone(context.pools()),
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
        let listener_tls = tls.remove(&listener_config.name);
        reloader.open_listener(socket, listener_config.clone(), None, listener_tls);
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
        sockets.push((
            listener::bind_listener(listener_config).await?,
            listener_config,
        ));
    }
    let admin_socket = listener::bind("admin", config.admin.listen).await?;
    Ok((sockets, admin_socket))
}
