//! `GET /status`: the topology, listeners, pools and reload history as JSON.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use serde::Serialize;

use super::text;
use crate::context::ProxyContext;
use crate::topology::{NodeState, Topology};

#[derive(Serialize)]
struct Status<'a> {
    primary: Option<&'a str>,
    primary_state: &'a crate::topology::PrimaryState,
    write_blocker: Option<String>,
    topology_generation: u64,
    #[serde(serialize_with = "crate::topology::snapshot::serialize_time")]
    topology_changed_at: Option<std::time::SystemTime>,
    nodes: Vec<NodeStatus<'a>>,
    /// Members Patroni's `/cluster` names that `cluster.allowed_hosts` keeps out.
    ignored_members: &'a [crate::topology::admission::IgnoredMember],
    listeners: Vec<ListenerStatus<'a>>,
    clients: usize,
    /// Connections that have not finished logging in (client.max_unauthenticated).
    unauthenticated_clients: usize,
    /// Clients waiting for a primary (failover hold).
    held_clients: usize,
    /// Bytes held for clients (resend copies, held replies) and the limit.
    client_buffered_bytes: usize,
    client_buffered_limit: usize,
    pools: Vec<crate::pool::PoolStats>,
    /// The worker threads serving clients (`runtime.workers` at start).
    runtime: RuntimeStatus,
    draining: bool,
    reloads: ReloadInfo,
}

#[derive(Serialize)]
struct RuntimeStatus {
    workers: usize,
    /// Client sessions each worker serves now.
    sessions_per_worker: Vec<usize>,
}

#[derive(Serialize)]
struct ReloadInfo {
    succeeded: u64,
    failed: u64,
    last_succeeded: bool,
    last_error: Option<String>,
}

#[derive(Serialize)]
struct NodeStatus<'a> {
    role: &'static str,
    sessions: u32,
    /// The last failed server login to the node (a TLS certificate that does not
    /// verify, a refused connection), until a login succeeds again.
    last_connect_error: Option<crate::pool::ConnectFailure>,
    #[serde(flatten)]
    state: &'a NodeState,
}

#[derive(Serialize)]
struct ListenerStatus<'a> {
    name: &'a str,
    listen: String,
    route: crate::config::Route,
    fallback: crate::config::Fallback,
    pool_mode: crate::config::PoolMode,
    clients: usize,
    active: usize,
    waiting: usize,
    /// Absent when the listener offers no TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<ListenerTls>,
}

#[derive(Serialize)]
struct ListenerTls {
    mode: crate::config::ClientTlsMode,
    certificate_expires_at: String,
    certificate_expires_in_seconds: i64,
    verifies_client_certificates: bool,
    /// Clients of this listener on TLS now, by version and cipher suite.
    clients_on_tls: std::collections::BTreeMap<String, usize>,
}

fn listener_tls(
    ctx: &ProxyContext,
    listener: &crate::context::ListenerState,
) -> Option<ListenerTls> {
    let tls = listener.tls.as_ref()?;
    let mut clients_on_tls = std::collections::BTreeMap::new();
    for client in ctx.client_registry().all() {
        if client.info.listener == listener.config.name && !client.info.tls.is_empty() {
            *clients_on_tls.entry(client.info.tls.clone()).or_insert(0) += 1;
        }
    }
    Some(ListenerTls {
        mode: tls.mode(),
        certificate_expires_at: crate::tls::describe_time(tls.expires_at()),
        certificate_expires_in_seconds: tls.expires_in(),
        verifies_client_certificates: tls.verifies_clients(),
        clients_on_tls,
    })
}

pub(super) fn status(ctx: &ProxyContext) -> Response<Full<Bytes>> {
    let topology: Arc<Topology> = ctx.topology().load();
    let ignored_members = ctx.topology().ignored_members();
    let listeners = ctx.listeners();
    let config = ctx.config();
    let status = Status {
        primary: topology
            .primary_node()
            .map(|i| topology.nodes[i].name.as_str()),
        primary_state: &topology.primary,
        write_blocker: topology.write_blocker(),
        topology_generation: topology.generation,
        topology_changed_at: topology.changed_at,
        nodes: topology
            .nodes
            .iter()
            .map(|node| NodeStatus {
                role: node.role(),
                sessions: node.sessions.load(Ordering::Relaxed),
                last_connect_error: ctx.pools().last_connect_failure(&node.name),
                state: node,
            })
            .collect(),
        ignored_members: &ignored_members,
        listeners: listeners
            .iter()
            .map(|l| ListenerStatus {
                name: &l.config.name,
                listen: l.local_addr.to_string(),
                route: l.config.route,
                fallback: l.config.fallback,
                pool_mode: config.pooling_for(&l.config).mode,
                clients: l.clients(),
                active: l.counters.active.load(Ordering::Relaxed),
                waiting: l.counters.waiting.load(Ordering::Relaxed),
                tls: listener_tls(ctx, l),
            })
            .collect(),
        clients: ctx.open_clients(),
        unauthenticated_clients: ctx.admission().logging_in(),
        held_clients: ctx.held_clients(),
        client_buffered_bytes: ctx.client_buffers().used(),
        client_buffered_limit: ctx.client_buffers().limit(),
        pools: ctx.pools().stats(),
        runtime: RuntimeStatus {
            workers: ctx.workers().count(),
            sessions_per_worker: ctx.workers().sessions_per_worker(),
        },
        draining: ctx.draining().is_cancelled(),
        reloads: ReloadInfo {
            succeeded: ctx.reload_status().successes(),
            failed: ctx.reload_status().failures(),
            last_succeeded: ctx.reload_status().last_succeeded(),
            last_error: ctx.reload_status().last_error(),
        },
    };
    match serde_json::to_vec_pretty(&status) {
        Ok(body) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| {
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot build response\n".into(),
                )
            }),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render status: {e}\n"),
        ),
    }
}
