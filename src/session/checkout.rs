//! Where a session's servers come from: route to a node (the primary for write
//! routes; for read routes, stay on the current replica while it is healthy), check
//! a connection out of that node's pool, and bring its session parameters in line
//! with the client's. While there is no usable primary the client is held (see
//! [`hold`](super::hold)).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::hold::{self, Hold, Wait};
use super::{Refusal, SessionEnv};
use crate::config::Route;
use crate::pool::{CheckoutError, PoolKey, PooledServer, ServerPool};
use crate::protocol::{ClientError, SqlState};
use crate::router;
use crate::server::params::ParamSet;
use crate::topology::Topology;

/// The node a session is bound to, counted for least-connections routing while held.
/// Nodes are known by name: a reload may renumber them.
pub(super) struct Binding {
    sessions: Arc<AtomicU32>,
    pub pool: Arc<ServerPool>,
}

impl Binding {
    fn node_name(&self) -> &str {
        &self.pool.key.node
    }

    /// The bound node's index in `topology`, if it is still there at the same address.
    fn index_in(&self, topology: &Topology) -> Option<usize> {
        topology
            .nodes
            .iter()
            .position(|n| n.name == self.node_name() && n.address == self.pool.address())
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a checkout failed, and whether waiting for the topology may help.
struct CheckoutFailure {
    transient: bool,
    refusal: Refusal,
}

fn checkout_refusal(pool: &ServerPool, e: CheckoutError) -> Refusal {
    match e {
        CheckoutError::Timeout { .. } => {
            tracing::warn!(error = %e, "checkout timed out");
            Refusal::from(ClientError::fatal(
                SqlState::TooManyConnections,
                e.to_string(),
            ))
        }
        CheckoutError::Connect(e) => {
            tracing::warn!(node = %pool.key.node, error = %e, "server login failed");
            Refusal {
                error: e.to_client_error(&pool.key.node),
                raw: e.raw_error().cloned(),
            }
        }
    }
}

/// The node a session is bound to, and the checkouts from its pool.
#[derive(Default)]
pub(super) struct ServerSource {
    binding: Option<Binding>,
}

impl ServerSource {
    /// The name of the node last used, for log lines.
    pub(super) fn node_name(&self) -> Option<&str> {
        self.binding.as_ref().map(Binding::node_name)
    }

    /// The pool of the bound node, if any (for the answered-without-a-server path).
    pub(super) fn bound_pool(&self) -> Option<&Arc<ServerPool>> {
        self.binding.as_ref().map(|b| &b.pool)
    }

    /// Whether the bound node is still where the route leads now (session mode,
    /// after a PAUSE): false when routing picks another node or finds none.
    pub(super) fn is_current(&self, env: &SessionEnv) -> bool {
        let topology = env.ctx.topology().load();
        let Some(binding) = &self.binding else {
            return false;
        };
        match self.route(env, &topology) {
            Ok(node) => binding.index_in(&topology) == Some(node),
            Err(_) => false,
        }
    }

    /// The pool of the node this session should use now (routing again if needed),
    /// holding the client while writes have no primary.
    pub(super) async fn current_pool(
        &mut self,
        env: &SessionEnv,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<ServerPool>, Refusal> {
        let mut hold = Hold::until(deadline);
        let pool = self.pool_within(env, &mut hold).await?;
        hold.resumed(env);
        Ok(pool)
    }

    async fn pool_within(
        &mut self,
        env: &SessionEnv,
        hold: &mut Hold,
    ) -> Result<Arc<ServerPool>, Refusal> {
        loop {
            let topology = env.ctx.topology().load();
            match self.route(env, &topology) {
                Ok(node) => return self.pool_for(env, &topology, node),
                Err(error @ router::RouteError::NoPrimary { .. }) => {
                    let refusal = Refusal::from(error.to_client_error(&env.listener.config.name));
                    hold.wait(env, Wait::NoPrimary(refusal)).await?;
                }
                Err(error) => {
                    return Err(Refusal::from(
                        error.to_client_error(&env.listener.config.name),
                    ))
                }
            }
        }
    }

    /// A server connection for the next piece of work with `desired` parameters.
    /// During a failover a primary that is missing or refuses connections
    /// (shutting down, gone, a standby) is waited out within the hold.
    pub(super) async fn checkout(
        &mut self,
        env: &SessionEnv,
        desired: &ParamSet,
        started: Instant,
    ) -> Result<PooledServer, Refusal> {
        let mut hold = Hold::until(hold::deadline(env, started));
        let mut now = started;
        loop {
            let pool = self.pool_within(env, &mut hold).await?;
            match checkout_from(env, &pool, desired, now).await {
                Err(failure) if failure.transient => {
                    tracing::info!(client = %env.peer, node = %pool.key.node, "node refuses connections");
                    hold.wait(env, Wait::Refusing(failure.refusal)).await?;
                    now = Instant::now();
                }
                result => {
                    hold.resumed(env);
                    return result.map_err(|failure| failure.refusal);
                }
            }
        }
    }

    fn pool_for(
        &mut self,
        env: &SessionEnv,
        topology: &Topology,
        node: usize,
    ) -> Result<Arc<ServerPool>, Refusal> {
        match &self.binding {
            Some(binding) if binding.index_in(topology) == Some(node) => {
                Ok(Arc::clone(&binding.pool))
            }
            _ => self.bind(env, topology, node),
        }
    }

    fn route(&self, env: &SessionEnv, topology: &Topology) -> Result<usize, router::RouteError> {
        let config = &env.listener.config;
        if let Some(binding) = &self.binding {
            // Reads stay on their replica while it stays healthy (monotonic reads).
            if config.route == Route::Replica {
                if let Some(node) = binding.index_in(topology) {
                    if topology.replicas().any(|r| r == node) {
                        return Ok(node);
                    }
                }
            }
        }
        if config.route == Route::Primary {
            // The common case, once per transaction in transaction mode: no load
            // figures needed.
            return router::choose_node(config.route, config.fallback, topology, &[], 0);
        }
        let sessions: Vec<u32> = topology
            .nodes
            .iter()
            .map(|n| n.sessions.load(Ordering::Relaxed))
            .collect();
        let rotation = env.ctx.next_rotation();
        router::choose_node(config.route, config.fallback, topology, &sessions, rotation)
    }

    fn bind(
        &mut self,
        env: &SessionEnv,
        topology: &Topology,
        node: usize,
    ) -> Result<Arc<ServerPool>, Refusal> {
        // A configured user, or one auth_query found.
        let secret = env.ctx.server_secret(&env.client.user).ok_or_else(|| {
            Refusal::from(ClientError::fatal(
                SqlState::InvalidPassword,
                "user no longer configured",
            ))
        })?;
        let state = &topology.nodes[node];
        let key = PoolKey {
            node: state.name.clone(),
            database: env.client.database.clone(),
            user: env.client.user.clone(),
        };
        let pool = env
            .ctx
            .pools()
            .get(key, &state.address, &secret)
            .map_err(|e| {
                tracing::warn!(error = %e, "pool limit reached");
                Refusal::from(ClientError::fatal(
                    SqlState::ConfigurationLimitExceeded,
                    e.to_string(),
                ))
            })?;
        state.sessions.fetch_add(1, Ordering::Relaxed);
        self.binding = Some(Binding {
            sessions: Arc::clone(&state.sessions),
            pool: Arc::clone(&pool),
        });
        tracing::Span::current().record("node", state.name.as_str());
        Ok(pool)
    }
}

async fn checkout_from(
    env: &SessionEnv,
    pool: &Arc<ServerPool>,
    desired: &ParamSet,
    now: Instant,
) -> Result<PooledServer, CheckoutFailure> {
    let waiting = &env.listener.counters.waiting;
    let mut server = match pool
        .checkout(env.pooling.checkout_timeout, waiting, now)
        .await
    {
        Ok(server) => server,
        Err(e) => {
            let transient = match &e {
                CheckoutError::Connect(e) => {
                    env.listener.config.route == Route::Primary && e.is_transient()
                }
                CheckoutError::Timeout { .. } => false,
            };
            return Err(CheckoutFailure {
                transient,
                refusal: checkout_refusal(pool, e),
            });
        }
    };
    if env.listener.config.route == Route::Primary && server.is_standby() {
        // The server's own word beats the API's: during a switchover Patroni
        // restarts the old primary as a standby a moment before its /primary
        // says 503. Its connections must not take writes; hold and route again.
        tracing::info!(node = %pool.key.node, "node reports in_hot_standby=on; not using it for writes");
        pool.drain();
        drop(server);
        return Err(CheckoutFailure {
            transient: true,
            refusal: Refusal::from(ClientError::fatal(
                SqlState::CannotConnectNow,
                format!(
                    "node \"{}\" is a standby; no primary available for writes",
                    pool.key.node
                ),
            )),
        });
    }
    sync_params(env, &mut server, desired)
        .await
        .map_err(|refusal| CheckoutFailure {
            transient: false,
            refusal,
        })?;
    Ok(server)
}

/// Brings a server's session parameters in line with the client's.
async fn sync_params(
    env: &SessionEnv,
    server: &mut PooledServer,
    desired: &ParamSet,
) -> Result<(), Refusal> {
    let Some(sql) = desired.sync_sql(&server.applied) else {
        return Ok(());
    };
    let timeout = env.config.server.connect_timeout.0;
    // Boxed: most checkouts need no sync, and this keeps them from carrying
    // the query's future.
    match Box::pin(server.run_internal_query(&sql, timeout)).await {
        Ok(()) => {
            server.applied = desired.clone();
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot apply the client's session parameters");
            Err(Refusal {
                error: e.to_client_error(&server.node),
                raw: e.raw_error().cloned(),
            })
        }
    }
}
