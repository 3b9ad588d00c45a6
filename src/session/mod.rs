//! One client connection from accept to close: handshake, authentication, routing,
//! a server connection, then the relay. Each session runs in its own task under a
//! tracing span, and logs exactly one line when it ends.

pub mod client_auth;
pub mod handshake;
pub mod relay;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::cancel;
use crate::protocol::{messages, ClientError, SqlState};
use crate::proxy::{ListenerState, ProxyContext};
use crate::router;
use crate::server::{self, LoginRequest, ServerConnection};

use handshake::{HandshakeFailure, Opening, SessionParams};
use relay::{RelayEnd, RelayStats};

/// Runs a client connection to completion. Never panics on client input; every
/// failure ends in an ErrorResponse to the client or a log line.
pub async fn run(
    socket: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ProxyContext>,
    listener: Arc<ListenerState>,
) {
    let span = tracing::info_span!(
        "session",
        client = %peer,
        listener = %listener.config.name,
        user = tracing::field::Empty,
        database = tracing::field::Empty,
        node = tracing::field::Empty,
    );
    run_in_span(socket, ctx, listener).instrument(span).await
}

async fn run_in_span(mut socket: TcpStream, ctx: Arc<ProxyContext>, listener: Arc<ListenerState>) {
    let started = Instant::now();
    let startup_timeout = ctx.config.client.startup_timeout.0;
    let opened = tokio::time::timeout(startup_timeout, open(&mut socket, &ctx)).await;
    let (params, out) = match opened {
        Ok(Ok(Some(opened))) => opened,
        Ok(Ok(None)) => return, // a cancel request, already handled
        Ok(Err(HandshakeFailure::Gone(reason))) => {
            tracing::debug!(%reason, "client left during startup");
            return;
        }
        Ok(Err(HandshakeFailure::Refuse(error))) => return refuse(&mut socket, &error).await,
        Err(_) => {
            let error = ClientError::fatal(
                SqlState::ProtocolViolation,
                format!("startup did not finish within {startup_timeout:?}"),
            );
            return refuse(&mut socket, &error).await;
        }
    };
    let span = tracing::Span::current();
    span.record("user", params.user.as_str());
    span.record("database", params.database.as_str());
    let mut session = Session {
        ctx,
        listener,
        params,
        started,
        stats: RelayStats::default(),
        node: None,
    };
    let end = session.serve(&mut socket, out).await;
    session.log_end(&end);
}

/// Handshake and client authentication. Returns the session parameters and the
/// messages to send once a server is ready (AuthenticationOk and friends), or None
/// when the connection was a cancel request.
async fn open(
    socket: &mut TcpStream,
    ctx: &ProxyContext,
) -> Result<Option<(SessionParams, BytesMut)>, HandshakeFailure> {
    let startup = match handshake::read_opening(socket).await? {
        Opening::Cancel { pid, secret } => {
            forward_cancel(ctx, pid, &secret).await;
            return Ok(None);
        }
        Opening::Startup(startup) => startup,
    };
    let params = handshake::session_params(&startup).map_err(HandshakeFailure::Refuse)?;
    if let Some(negotiation) = handshake::protocol_negotiation(&startup, &params) {
        socket
            .write_all(&negotiation)
            .await
            .map_err(|e| HandshakeFailure::Gone(e.to_string()))?;
    }
    let mut out = BytesMut::with_capacity(512);
    client_auth::authenticate(socket, &ctx.users, &params.user, &mut out).await?;
    Ok(Some((params, out)))
}

async fn forward_cancel(ctx: &ProxyContext, pid: i32, secret: &[u8]) {
    match ctx.cancels.lookup(pid, secret) {
        Some(target) => {
            let timeout = ctx.config.server.cancel_timeout.0;
            match cancel::send_cancel(&target, timeout).await {
                Ok(()) => tracing::info!(server = %target.address, "cancel request forwarded"),
                Err(e) => {
                    tracing::warn!(server = %target.address, error = %e, "cannot forward cancel request")
                }
            }
        }
        None => tracing::info!(pid, "cancel request for an unknown or idle session ignored"),
    }
}

async fn refuse(socket: &mut TcpStream, error: &ClientError) {
    tracing::info!(%error, "client refused");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = socket.write_all(&error.encode()).await;
        let _ = socket.shutdown().await;
    })
    .await;
}

struct Session {
    ctx: Arc<ProxyContext>,
    listener: Arc<ListenerState>,
    params: SessionParams,
    started: Instant,
    stats: RelayStats,
    node: Option<String>,
}

/// How a session ended, for its log line.
enum SessionEnd {
    Relay(RelayEnd),
    Refused(ClientError),
}

impl Session {
    async fn serve(&mut self, socket: &mut TcpStream, mut out: BytesMut) -> SessionEnd {
        let (node_index, mut server) = match self.bind_server().await {
            Ok(bound) => bound,
            Err(Refusal { error, raw }) => {
                match raw {
                    Some(raw) => {
                        let _ = socket.write_all(&raw).await;
                    }
                    None => refuse(socket, &error).await,
                }
                return SessionEnd::Refused(error);
            }
        };
        let _load = SessionLoad::enter(&self.ctx, node_index);
        let registration = self.ctx.cancels.register();
        registration.set_target(Some(server.cancel_target()));
        for (name, value) in &server.params {
            messages::parameter_status(&mut out, name, value);
        }
        messages::backend_key_data(&mut out, registration.pid, registration.secret);
        messages::ready_for_query_idle(&mut out);
        if let Err(e) = socket.write_all(&out).await {
            return SessionEnd::Relay(RelayEnd::ClientGone(Some(e)));
        }
        drop(out);

        let max_message = self.ctx.config.client.max_message_size.0 as usize;
        let (mut client_reader, mut client_writer) = socket.split();
        let (mut server_reader, mut server_writer) = server.stream.split();
        let end = relay::relay(
            (&mut client_reader, &mut client_writer),
            (&mut server_reader, &mut server_writer),
            max_message,
            &self.ctx.shutdown,
            &mut self.stats,
        )
        .await;
        self.finish(socket, &mut server, &end).await;
        SessionEnd::Relay(end)
    }

    /// Routes the session and logs in to the chosen node.
    async fn bind_server(&mut self) -> Result<(usize, ServerConnection), Refusal> {
        let topology = self.ctx.topology.load();
        let sessions: Vec<u32> = self
            .ctx
            .node_sessions
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let rotation = self.ctx.rotation.fetch_add(1, Ordering::Relaxed);
        let config = &self.listener.config;
        let node_index = router::choose_node(
            config.route,
            config.fallback,
            &topology,
            &sessions,
            rotation,
        )
        .map_err(|e| Refusal::from(e.to_client_error(&config.name)))?;
        let node = &topology.nodes[node_index];
        self.node = Some(node.name.clone());
        tracing::Span::current().record("node", node.name.as_str());
        let user = self.ctx.users.get(&self.params.user).ok_or_else(|| {
            Refusal::from(ClientError::fatal(
                SqlState::InvalidPassword,
                "user vanished",
            ))
        })?;
        let login = LoginRequest {
            user: &user.name,
            password: user.password.expose(),
            database: &self.params.database,
            params: &self.params.passthrough,
        };
        let timeout = self.ctx.config.server.connect_timeout.0;
        match server::connect(&node.name, &node.address, &login, timeout).await {
            Ok(server) => Ok((node_index, server)),
            Err(e) => {
                tracing::warn!(node = %node.name, error = %e, "server login failed");
                Err(Refusal {
                    error: e.to_client_error(&node.name),
                    raw: e.raw_error().cloned(),
                })
            }
        }
    }

    /// Tells the client why the session ended when the proxy ended it, and closes
    /// the server side cleanly.
    async fn finish(&self, socket: &mut TcpStream, server: &mut ServerConnection, end: &RelayEnd) {
        let to_client = match end {
            RelayEnd::ClientProtocol(e) => Some(ClientError::fatal(
                SqlState::ProtocolViolation,
                e.to_string(),
            )),
            RelayEnd::ServerGone {
                sent_error: false, ..
            } => Some(ClientError::fatal(
                SqlState::ConnectionFailure,
                format!("server connection to node \"{}\" was lost", server.node),
            )),
            RelayEnd::Shutdown => Some(ClientError::fatal(
                SqlState::AdminShutdown,
                "terminating connection because Switchyard is shutting down",
            )),
            _ => None,
        };
        if let Some(error) = to_client {
            refuse(socket, &error).await;
        }
        if !matches!(
            end,
            RelayEnd::ClientTerminated | RelayEnd::ServerGone { .. }
        ) {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                server.stream.write_all(&messages::terminate()),
            )
            .await;
        }
    }

    fn log_end(&self, end: &SessionEnd) {
        let reason = match end {
            SessionEnd::Refused(error) => format!("refused: {error}"),
            SessionEnd::Relay(RelayEnd::ClientTerminated) => "client terminated".into(),
            SessionEnd::Relay(RelayEnd::ClientGone(None)) => "client disconnected".into(),
            SessionEnd::Relay(RelayEnd::ClientGone(Some(e))) => {
                format!("client connection error: {e}")
            }
            SessionEnd::Relay(RelayEnd::ServerGone { error, .. }) => match error {
                Some(e) => format!("server connection error: {e}"),
                None => "server closed the connection".into(),
            },
            SessionEnd::Relay(RelayEnd::ClientProtocol(e)) => {
                format!("client protocol violation: {e}")
            }
            SessionEnd::Relay(RelayEnd::Shutdown) => "proxy shutdown".into(),
        };
        tracing::info!(
            route = ?self.listener.config.route,
            node = self.node.as_deref().unwrap_or("-"),
            duration_ms = self.started.elapsed().as_millis() as u64,
            bytes_from_client = self.stats.client_bytes,
            bytes_from_server = self.stats.server_bytes,
            "session ended: {reason}"
        );
    }
}

/// A refusal after authentication: our own error, or the server's raw ErrorResponse.
struct Refusal {
    error: ClientError,
    raw: Option<bytes::Bytes>,
}

impl From<ClientError> for Refusal {
    fn from(error: ClientError) -> Refusal {
        Refusal { error, raw: None }
    }
}

/// Counts a session against its node for least-connections routing while alive.
struct SessionLoad<'a> {
    ctx: &'a ProxyContext,
    node: usize,
}

impl<'a> SessionLoad<'a> {
    fn enter(ctx: &'a ProxyContext, node: usize) -> SessionLoad<'a> {
        if let Some(counter) = ctx.node_sessions.get(node) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        SessionLoad { ctx, node }
    }
}

impl Drop for SessionLoad<'_> {
    fn drop(&mut self) {
        if let Some(counter) = self.ctx.node_sessions.get(self.node) {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
