//! The admin HTTP server (hyper, HTTP/1.1): `GET /health` for Keepalived and load
//! balancers (200 when the listeners are up and writes have a primary, else 503 with
//! the reason; 503 at once when draining), `GET /status` with the topology, listeners
//! and pools as JSON, `GET /metrics` for Prometheus, `POST /reload` (loopback and
//! `admin.reload_allowed_from` only) to re-read the config file, and `POST /pause`
//! and `POST /resume` (same peers; see [`pause`]) around maintenance. Who may ask is
//! [`access`] (`admin.token`, JSON-only POSTs); how many connections at once,
//! [`slots`].

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

mod access;
mod gauges;
mod pause;
mod slots;
mod status;

use crate::config::Cidr;
use crate::context::ProxyContext;
use slots::{Admission, Slots};

pub async fn serve(socket: TcpListener, ctx: Arc<ProxyContext>) {
    let slots = Arc::new(Slots::default());
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = ctx.shutdown().cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let limit = ctx.config().admin.max_connections as usize;
        let ctx = Arc::clone(&ctx);
        match slots.admit(limit) {
            Admission::Serve(slot) => {
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let ctx = Arc::clone(&ctx);
                        async move { Ok::<_, Infallible>(handle(&request, &ctx, peer.ip()).await) }
                    });
                    serve_connection(stream, service, Duration::from_secs(30)).await;
                    drop(slot);
                });
            }
            Admission::Refuse(slot) => {
                tracing::debug!(%peer, limit, "admin connection refused: admin.max_connections reached");
                tokio::spawn(async move {
                    let service = service_fn(move |_request| async move {
                        Ok::<_, Infallible>(text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("too many admin connections (admin.max_connections is {limit}); try again\n"),
                        ))
                    });
                    serve_connection(stream, service, Duration::from_secs(5)).await;
                    drop(slot);
                });
            }
            Admission::Drop => drop(stream),
        }
    }
}

/// Serves one HTTP/1.1 connection (one request, no keep-alive) within `limit`.
async fn serve_connection<S>(stream: tokio::net::TcpStream, service: S, limit: Duration)
where
    S: hyper::service::Service<
        Request<Incoming>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
    >,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(limit, connection).await;
}

async fn handle(
    request: &Request<Incoming>,
    ctx: &ProxyContext,
    peer: IpAddr,
) -> Response<Full<Bytes>> {
    if let Some(refusal) = access::refusal(request, ctx.config().admin.token.as_ref()) {
        tracing::info!(%peer, path = request.uri().path(), status = %refusal.status(), "admin request refused");
        return refusal;
    }
    let readable = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    match (readable, request.uri().path()) {
        (true, "/health") => health(ctx),
        (true, "/status") => status::status(ctx),
        (true, "/metrics") => metrics(ctx),
        (false, "/reload") if request.method() == Method::POST => reload(ctx, peer).await,
        (false, "/pause" | "/resume") if request.method() == Method::POST => {
            if !control_allowed(ctx, peer) {
                tracing::warn!(%peer, "POST {} refused: peer not in admin.reload_allowed_from", request.uri().path());
                return text(
                    StatusCode::FORBIDDEN,
                    "pause and resume are allowed from loopback and admin.reload_allowed_from only\n".into(),
                );
            }
            let query = request.uri().query();
            if request.uri().path() == "/pause" {
                pause::pause(ctx, query).await
            } else {
                pause::resume(ctx, query)
            }
        }
        (true, "/reload" | "/pause" | "/resume")
        | (false, "/health" | "/status" | "/metrics" | "/reload" | "/pause" | "/resume") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /health, /status, /metrics or POST /reload, /pause, /resume\n".into(),
        ),
    }
}

fn metrics(ctx: &ProxyContext) -> Response<Full<Bytes>> {
    match gauges::render(ctx) {
        Some(body) => {
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are disabled (the recorder could not be installed)\n".into(),
        ),
    }
}

/// POST /reload, /pause and /resume: loopback and `admin.reload_allowed_from`.
fn control_allowed(ctx: &ProxyContext, peer: IpAddr) -> bool {
    peer.is_loopback()
        || peer_is_mapped_loopback(peer)
        || ctx
            .config()
            .admin
            .reload_allowed_from
            .iter()
            .filter_map(|range| Cidr::parse(range).ok())
            .any(|range| range.contains(peer))
}

async fn reload(ctx: &ProxyContext, peer: IpAddr) -> Response<Full<Bytes>> {
    if !control_allowed(ctx, peer) {
        tracing::warn!(%peer, "POST /reload refused: peer not in admin.reload_allowed_from");
        return text(
            StatusCode::FORBIDDEN,
            "reload is allowed from loopback and admin.reload_allowed_from only\n".into(),
        );
    }
    tracing::info!(%peer, "reload requested over the admin API");
    match ctx.request_reload().await {
        Ok(summary) => text(StatusCode::OK, format!("reloaded: {summary}\n")),
        Err(reason) => text(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not reloaded, the running configuration stays: {reason}\n"),
        ),
    }
}

fn peer_is_mapped_loopback(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

/// The health verdict: Ok(summary) when this instance can route writes.
pub fn health_verdict(ctx: &ProxyContext) -> Result<String, String> {
    if ctx.draining().is_cancelled() {
        return Err("shutting down (draining clients)".into());
    }
    let topology = ctx.topology().load();
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

pub(super) fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
