//! Accept loops: one per configured listener. Each accepted client gets TCP options
//! set and its own session task on one of the [`workers`](crate::workers), once [`accept_limits`](crate::accept_limits) gives it a
//! place among the connections still logging in (else FATAL 53300 and close, with
//! no task); accept errors (such as running out of file descriptors) back off
//! instead of spinning. A loop stops (closing its socket) when
//! a reload removes its listener or the proxy starts draining; sessions it started
//! carry on.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept_limits::Crowded;
use crate::config::ListenerConfig;
use crate::context::{ListenerState, ProxyContext};
use crate::protocol::{ClientError, SqlState};
use crate::session;

pub async fn accept_loop(
    socket: TcpListener,
    current: Arc<ArcSwap<ListenerState>>,
    stop: CancellationToken,
    ctx: Arc<ProxyContext>,
    tasks: TaskTracker,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = stop.cancelled() => break,
            _ = ctx.draining().cancelled() => break,
        };
        let state = current.load_full();
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(10);
                pair
            }
            Err(e) => {
                tracing::error!(listener = %state.config.name, error = %e, "accept failed; backing off {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let logging_in = match ctx.admission().admit(peer.ip(), &ctx.config().client) {
            Ok(place) => place,
            Err(crowded) => {
                refuse_crowded(stream, peer, crowded, &state.config.name);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        set_keepalive(&stream);
        let guard = ctx.count_client(&state);
        let session_ctx = Arc::clone(&ctx);
        let state = Arc::clone(&state);
        ctx.workers()
            .spawn_client(&tasks, stream, move |stream| async move {
                let _guard = guard;
                session::run(stream, peer, session_ctx, state, logging_in).await;
            });
    }
    tracing::info!(listener = %current.load().config.name, "listener closed");
}

/// Refuses a connection over the admission limits without a task or a wait: the
/// FATAL goes out if the socket takes it at once (libpq shows it), and the socket
/// is closed either way.
fn refuse_crowded(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    crowded: Crowded,
    listener: &str,
) {
    metrics::counter!(
        "switchyard_client_refusals_total",
        "listener" => listener.to_string(),
        "reason" => crowded.reason()
    )
    .increment(1);
    let error = ClientError::fatal(SqlState::TooManyConnections, crowded.message());
    crate::metrics::record_error(listener, error.code.code());
    let _ = stream.try_write(&error.encode());
    if let Some(left_out) = crate::log_text::refusals().allow() {
        tracing::warn!(
            client = %peer,
            listener,
            reason = crowded.reason(),
            refusals_not_logged = left_out,
            "connection refused at accept: {}",
            crowded.message()
        );
    }
}

/// Dead clients (a laptop that closed its lid) are noticed by TCP keepalive instead
/// of holding a server connection forever.
fn set_keepalive(stream: &tokio::net::TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

/// A listener's socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} for listener {name:?}: {source}")]
pub struct BindError {
    pub name: String,
    pub address: std::net::SocketAddr,
    pub source: std::io::Error,
}

/// Binds a listener's socket.
pub async fn bind(name: &str, address: std::net::SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| BindError {
            name: name.to_string(),
            address,
            source,
        })
}

/// Binds a client listener's socket.
pub async fn bind_listener(config: &ListenerConfig) -> Result<TcpListener, BindError> {
    bind(&config.name, config.listen).await
}
