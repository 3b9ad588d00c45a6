//! The admin HTTP server (hyper, HTTP/1.1): `GET /health` for Keepalived and load
//! balancers (200 when the listeners are up and writes have a primary, else 503 with
//! the reason), and `GET /status` with the topology and listeners as JSON.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::proxy::{ListenerState, ProxyContext};
use crate::topology::{NodeState, Topology};

pub async fn serve(
    socket: TcpListener,
    ctx: Arc<ProxyContext>,
    listeners: Vec<Arc<ListenerState>>,
) {
    let listeners = Arc::new(listeners);
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = ctx.shutdown.cancelled() => return,
        };
        let (stream, _) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        let listeners = Arc::clone(&listeners);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = handle(&request, &ctx, &listeners);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
        });
    }
}

fn handle(
    request: &Request<Incoming>,
    ctx: &ProxyContext,
    listeners: &[Arc<ListenerState>],
) -> Response<Full<Bytes>> {
    let readable = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    match (readable, request.uri().path()) {
        (true, "/health") => health(ctx),
        (true, "/status") => status(ctx, listeners),
        (false, "/health" | "/status") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /health or /status\n".into(),
        ),
    }
}

/// The health verdict: Ok(summary) when this instance can route writes.
pub fn health_verdict(ctx: &ProxyContext) -> Result<String, String> {
    if ctx.shutdown.is_cancelled() {
        return Err("shutting down".into());
    }
    let topology = ctx.topology.load();
    match topology.primary_node() {
        Some(node) => Ok(format!("OK: primary {}", topology.nodes[node].name)),
        None => Err(format!(
            "no write route: {}",
            topology.write_blocker().unwrap_or_default()
        )),
    }
}

fn health(ctx: &ProxyContext) -> Response<Full<Bytes>> {
    match health_verdict(ctx) {
        Ok(summary) => text(StatusCode::OK, format!("{summary}\n")),
        Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

#[derive(Serialize)]
struct Status<'a> {
    primary: Option<&'a str>,
    primary_state: &'a crate::topology::PrimaryState,
    write_blocker: Option<String>,
    topology_generation: u64,
    #[serde(serialize_with = "crate::topology::snapshot::serialize_time")]
    topology_changed_at: Option<std::time::SystemTime>,
    nodes: Vec<NodeStatus<'a>>,
    listeners: Vec<ListenerStatus<'a>>,
    clients: usize,
    /// Clients waiting for a primary (failover hold).
    held_clients: usize,
    pools: Vec<crate::pool::PoolStats>,
}

#[derive(Serialize)]
struct NodeStatus<'a> {
    role: &'static str,
    sessions: u32,
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
}

fn status(ctx: &ProxyContext, listeners: &[Arc<ListenerState>]) -> Response<Full<Bytes>> {
    let topology: Arc<Topology> = ctx.topology.load();
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
            .enumerate()
            .map(|(i, node)| NodeStatus {
                role: node.role(),
                sessions: ctx
                    .node_sessions
                    .get(i)
                    .map_or(0, |c| c.load(Ordering::Relaxed)),
                state: node,
            })
            .collect(),
        listeners: listeners
            .iter()
            .map(|l| ListenerStatus {
                name: &l.config.name,
                listen: l.local_addr.to_string(),
                route: l.config.route,
                fallback: l.config.fallback,
                pool_mode: ctx.config.pooling_for(&l.config).mode,
                clients: l.clients.load(Ordering::Relaxed),
            })
            .collect(),
        clients: ctx.clients.load(Ordering::Relaxed),
        held_clients: ctx.held_clients.load(Ordering::Relaxed),
        pools: ctx.pools.stats(),
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

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
