//! Getting a server for a session: route to a node (the primary for write routes;
//! for read routes, stay on the current replica while it is healthy), check a
//! connection out of that node's pool, and bring its session parameters in line
//! with the client's.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;

use super::{Refusal, Session};
use crate::config::Route;
use crate::pool::{CheckoutError, PoolKey, PooledServer};
use crate::protocol::{messages, ClientError, SqlState};
use crate::proxy::ProxyContext;
use crate::router;
use crate::topology::Topology;

/// The node a session is bound to, counted for least-connections routing while held.
pub(super) struct Binding {
    ctx: Arc<ProxyContext>,
    pub node: usize,
    pub pool: Arc<crate::pool::ServerPool>,
}

impl Drop for Binding {
    fn drop(&mut self) {
        if let Some(counter) = self.ctx.node_sessions.get(self.node) {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Session {
    /// The pool of the node this session should use now (routing again if needed).
    pub(super) fn current_pool(&mut self) -> Result<Arc<crate::pool::ServerPool>, Refusal> {
        let topology = self.ctx.topology.load();
        let node = self.route(&topology)?;
        match &self.binding {
            Some(binding)
                if binding.node == node
                    && binding.pool.address() == topology.nodes[node].address =>
            {
                Ok(Arc::clone(&binding.pool))
            }
            _ => self.bind(&topology, node),
        }
    }

    /// A server connection for the next piece of work, parameters synced.
    pub(super) async fn checkout(&mut self) -> Result<PooledServer, Refusal> {
        let pool = self.current_pool()?;
        let mut server =
            pool.checkout(self.pooling.checkout_timeout)
                .await
                .map_err(|e| match e {
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
                })?;
        self.sync_params(&mut server).await?;
        Ok(server)
    }

    fn route(&mut self, topology: &Topology) -> Result<usize, Refusal> {
        let config = &self.listener.config;
        if let Some(binding) = &self.binding {
            // Reads stay on their replica while it stays healthy (monotonic reads).
            if config.route == Route::Replica && topology.replicas().any(|r| r == binding.node) {
                return Ok(binding.node);
            }
        }
        let sessions: Vec<u32> = self
            .ctx
            .node_sessions
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let rotation = self.ctx.rotation.fetch_add(1, Ordering::Relaxed);
        router::choose_node(config.route, config.fallback, topology, &sessions, rotation)
            .map_err(|e| Refusal::from(e.to_client_error(&config.name)))
    }

    fn bind(
        &mut self,
        topology: &Topology,
        node: usize,
    ) -> Result<Arc<crate::pool::ServerPool>, Refusal> {
        let user = self.ctx.users.get(&self.params.user).ok_or_else(|| {
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
        let pool = self.ctx.pools.get(key, &state.address, &user.password);
        if let Some(counter) = self.ctx.node_sessions.get(node) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.binding = Some(Binding {
            ctx: Arc::clone(&self.ctx),
            node,
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
        let timeout = self.ctx.config.server.connect_timeout.0;
        match server.run_internal_query(&sql, timeout).await {
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
        if let Ok((name, value)) = crate::protocol::backend::parse_parameter_status(body) {
            match self.reported.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = value,
                None => self.reported.push((name, value)),
            }
        }
    }
}
