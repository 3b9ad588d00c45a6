//! Getting a server for a session: route to a node (the primary for write routes;
//! for read routes, stay on the current replica while it is healthy), check a
//! connection out of that node's pool, and bring its session parameters in line
//! with the client's.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;

use super::{Refusal, Session};
use crate::config::Route;
use crate::context::ProxyContext;
use crate::pool::{CheckoutError, PoolKey, PooledServer};
use crate::protocol::{messages, ClientError, SqlState};
use crate::router;
use crate::topology::Topology;

/// The node a session is bound to, counted for least-connections routing while held.
/// Nodes are known by name: a reload may renumber them.
pub(super) struct Binding {
    sessions: Arc<AtomicU32>,
    pub pool: Arc<crate::pool::ServerPool>,
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

fn checkout_refusal(pool: &crate::pool::ServerPool, e: CheckoutError) -> Refusal {
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

/// Counts a client waiting for a primary (in /status, and as waiting on its
/// listener) while alive.
struct HeldClient<'a>(
    #[allow(dead_code)] crate::context::HeldGuard<'a>,
    &'a AtomicUsize,
);

impl<'a> HeldClient<'a> {
    fn enter(ctx: &'a ProxyContext, listener_waiting: &'a AtomicUsize) -> HeldClient<'a> {
        listener_waiting.fetch_add(1, Ordering::Relaxed);
        HeldClient(ctx.hold_client(), listener_waiting)
    }
}

impl Drop for HeldClient<'_> {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Session {
    /// The pool of the node this session should use now (routing again if needed).
    /// While writes have no primary the client is held, up to `hold_timeout`, until
    /// the topology names one.
    pub(super) async fn current_pool(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<crate::pool::ServerPool>, Refusal> {
        let hold = self.config.failover.hold_timeout.0;
        // Subscribed only once a hold starts (the hot path never pays for it); the
        // loop routes once more after subscribing, so no change can slip between.
        let mut changes: Option<tokio::sync::watch::Receiver<u64>> = None;
        let mut held_since = None;
        loop {
            let topology = self.ctx.topology().load();
            let error = match self.route(&topology) {
                Ok(node) => {
                    if let Some(since) = held_since {
                        let held: std::time::Duration = tokio::time::Instant::now() - since;
                        tracing::info!(
                            client = %self.peer,
                            user = %self.params.user,
                            held_ms = held.as_millis() as u64,
                            "held client resumes on the new primary"
                        );
                    }
                    return self.pool_for(&topology, node);
                }
                Err(error) => error,
            };
            if !matches!(error, router::RouteError::NoPrimary { .. })
                || tokio::time::Instant::now() >= deadline
            {
                return Err(Refusal::from(
                    error.to_client_error(&self.listener.config.name),
                ));
            }
            let Some(changes) = changes.as_mut() else {
                changes = Some(self.ctx.topology().subscribe());
                continue;
            };
            if held_since.is_none() {
                held_since = Some(tokio::time::Instant::now());
                tracing::info!(client = %self.peer, user = %self.params.user, "no primary: holding the client for up to {hold:?}");
            }
            let _held = HeldClient::enter(&self.ctx, &self.listener.counters.waiting);
            // Boxed: holding is rare, and its timer would otherwise make every
            // checkout's future (built once per transaction) larger.
            let waited = Box::pin(async {
                tokio::select! {
                    changed = tokio::time::timeout_at(deadline, changes.changed()) => {
                        // Err: the topology publisher is gone, the proxy is shutting down.
                        if matches!(changed, Ok(Err(_))) { Err(false) } else { Ok(()) }
                    }
                    _ = self.ctx.shutdown().cancelled() => Err(true),
                }
            })
            .await;
            match waited {
                Ok(()) => {}
                Err(false) => {
                    return Err(Refusal::from(
                        error.to_client_error(&self.listener.config.name),
                    ))
                }
                Err(true) => {
                    return Err(Refusal::from(ClientError::fatal(
                        SqlState::AdminShutdown,
                        "terminating connection because Switchyard is shutting down",
                    )))
                }
            }
        }
    }

    fn pool_for(
        &mut self,
        topology: &Topology,
        node: usize,
    ) -> Result<Arc<crate::pool::ServerPool>, Refusal> {
        match &self.binding {
            Some(binding) if binding.index_in(topology) == Some(node) => {
                Ok(Arc::clone(&binding.pool))
            }
            _ => self.bind(topology, node),
        }
    }

    /// The end of the hold for a client that starts waiting at `now`.
    pub(super) fn hold_deadline(&self, now: std::time::Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(now) + self.config.failover.hold_timeout.0
    }

    /// A server connection for the next piece of work, parameters synced, with the
    /// wait counted for /status and metrics and the client marked active.
    pub(super) async fn checkout(&mut self) -> Result<PooledServer, Refusal> {
        // The listener's shared counters are touched only when the state changes or
        // a client actually waits: the common checkout costs no shared writes here.
        // One clock read at each end serves the hold deadline, the pool's staleness
        // checks, the wait metric and the transaction's start.
        let started = std::time::Instant::now();
        let result = self.find_server(started).await;
        let finished = std::time::Instant::now();
        self.checked_out_at = finished;
        let counters = &self.listener.counters;
        counters
            .metrics
            .record_checkout_wait(finished.saturating_duration_since(started));
        if result.is_ok() && !self.active {
            counters.active.fetch_add(1, Ordering::Relaxed);
            self.active = true;
        }
        result
    }

    /// The client holds no server now (transaction mode, between transactions).
    pub(super) fn mark_idle(&mut self) {
        if self.active {
            self.listener
                .counters
                .active
                .fetch_sub(1, Ordering::Relaxed);
            self.active = false;
        }
    }

    /// During a failover a primary that refuses connections (shutting down, gone)
    /// is waited out like a missing one, within the hold.
    async fn find_server(&mut self, started: std::time::Instant) -> Result<PooledServer, Refusal> {
        let deadline = self.hold_deadline(started);
        let mut now = started;
        loop {
            let pool = self.current_pool(deadline).await?;
            match self.checkout_from(&pool, now).await {
                Err(failure) if failure.transient && tokio::time::Instant::now() < deadline => {
                    tracing::info!(client = %self.peer, node = %pool.key.node, "node refuses connections; holding the client");
                    let mut changes = self.ctx.topology().subscribe();
                    let pause = tokio::time::Instant::now() + std::time::Duration::from_millis(250);
                    let _ = Box::pin(tokio::time::timeout_at(
                        pause.min(deadline),
                        changes.changed(),
                    ))
                    .await;
                    now = std::time::Instant::now();
                }
                result => return result.map_err(|failure| failure.refusal),
            }
        }
    }

    async fn checkout_from(
        &mut self,
        pool: &Arc<crate::pool::ServerPool>,
        now: std::time::Instant,
    ) -> Result<PooledServer, CheckoutFailure> {
        let waiting = &self.listener.counters.waiting;
        let mut server = match pool
            .checkout(self.pooling.checkout_timeout, waiting, now)
            .await
        {
            Ok(server) => server,
            Err(e) => {
                let transient = match &e {
                    CheckoutError::Connect(e) => {
                        self.listener.config.route == Route::Primary && e.is_transient()
                    }
                    CheckoutError::Timeout { .. } => false,
                };
                return Err(CheckoutFailure {
                    transient,
                    refusal: checkout_refusal(pool, e),
                });
            }
        };
        if self.listener.config.route == Route::Primary && server.is_standby() {
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
        self.sync_params(&mut server)
            .await
            .map_err(|refusal| CheckoutFailure {
                transient: false,
                refusal,
            })?;
        Ok(server)
    }

    fn route(&mut self, topology: &Topology) -> Result<usize, router::RouteError> {
        let config = &self.listener.config;
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
        let rotation = self.ctx.next_rotation();
        router::choose_node(config.route, config.fallback, topology, &sessions, rotation)
    }

    fn bind(
        &mut self,
        topology: &Topology,
        node: usize,
    ) -> Result<Arc<crate::pool::ServerPool>, Refusal> {
        let users = self.ctx.users();
        let user = users.get(&self.params.user).ok_or_else(|| {
            Refusal::from(ClientError::fatal(
                SqlState::InvalidPassword,
                "user no longer configured",
            ))
        })?;
        let state = &topology.nodes[node];
        let key = PoolKey {
            node: state.name.clone(),
            database: self.params.database.clone(),
            user: user.name.clone(),
        };
        let pool = self.ctx.pools().get(key, &state.address, &user.password);
        state.sessions.fetch_add(1, Ordering::Relaxed);
        self.binding = Some(Binding {
            sessions: Arc::clone(&state.sessions),
            pool: Arc::clone(&pool),
        });
        self.node = Some(state.name.clone());
        tracing::Span::current().record("node", state.name.as_str());
        Ok(pool)
    }

    async fn sync_params(&mut self, server: &mut PooledServer) -> Result<(), Refusal> {
        let Some(sql) = self.desired.sync_sql(&server.applied) else {
            return Ok(());
        };
        let timeout = self.config.server.connect_timeout.0;
        // Boxed: most checkouts need no sync, and this keeps them from carrying
        // the query's future.
        match Box::pin(server.run_internal_query(&sql, timeout)).await {
            Ok(()) => {
                server.applied = self.desired.clone();
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

    /// ParameterStatus messages for values on `server` the client has not been told.
    pub(super) fn parameter_updates(&mut self, server: &PooledServer, out: &mut BytesMut) {
        if self.reported_from == Some(server.params_digest) {
            return;
        }
        self.reported_from = Some(server.params_digest);
        for (name, value) in &server.params {
            match self.reported.iter_mut().find(|(n, _)| n == name) {
                Some((_, known)) if known == value => {}
                Some((_, known)) => {
                    *known = value.clone();
                    messages::parameter_status(out, name, value);
                }
                None => {
                    self.reported.push((name.clone(), value.clone()));
                    messages::parameter_status(out, name, value);
                }
            }
        }
    }

    /// Records a ParameterStatus body the client was sent through the relay.
    pub(super) fn note_reported(&mut self, body: &[u8]) {
        self.reported_from = None;
        if let Ok((name, value)) = crate::protocol::backend::parse_parameter_status(body) {
            match self.reported.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = value,
                None => self.reported.push((name, value)),
            }
        }
    }
}
