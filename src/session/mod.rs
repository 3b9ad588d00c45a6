//! One client connection from accept to close: handshake, authentication, routing,
//! a server connection, then the relay. Each session runs in its own task under a
//! tracing span, and logs exactly one line when it ends.

mod checkout;
pub mod client_auth;
pub mod handshake;
pub mod ledger;
pub mod relay;
mod session_mode;
pub mod settings;
pub mod statements;
mod transaction;
pub mod translate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::cancel::{self, CancelRoute, KeyPid};
use crate::config::{Config, PoolMode, SessionPooling};
use crate::context::{ListenerState, ProxyContext};
use crate::protocol::startup::StartupReader;
use crate::protocol::{messages, ClientError, SqlState};
use crate::stop_signal::StopWaiter;

use crate::server::params::{ParamSet, ParamValue};
use handshake::{HandshakeFailure, Opening, SessionParams};
use relay::{RelayEnd, RelayStats};
use statements::ClientStatements;

/// Runs a client connection to completion. Never panics on client input; every
/// failure ends in an ErrorResponse to the client or a log line.
pub async fn run(
    socket: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ProxyContext>,
    listener: Arc<ListenerState>,
) {
    // A DEBUG span: entering a span on every poll costs a few percent of the hot
    // path, so at INFO the session's own log lines carry its fields explicitly.
    let span = tracing::debug_span!(
        "session",
        client = %peer,
        listener = %listener.config.name,
        user = tracing::field::Empty,
        database = tracing::field::Empty,
        node = tracing::field::Empty,
    );
    run_in_span(socket, peer, ctx, listener)
        .instrument(span)
        .await
}

async fn run_in_span(
    mut socket: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ProxyContext>,
    listener: Arc<ListenerState>,
) {
    let started = Instant::now();
    let startup_timeout = ctx.config().client.startup_timeout.0;
    // Startup and checkout futures are boxed so that their state (SCRAM, login,
    // hold) is only allocated while they run: an idle client's task stays small.
    let opened = tokio::time::timeout(startup_timeout, Box::pin(open(&mut socket, &ctx))).await;
    let Opened {
        params,
        greeting,
        unread,
    } = match opened {
        Ok(Ok(Some(opened))) => opened,
        Ok(Ok(None)) => return, // a cancel request, already handled
        Ok(Err(HandshakeFailure::Gone(reason))) => {
            tracing::debug!(%reason, "client left during startup");
            return;
        }
        Ok(Err(HandshakeFailure::Refuse(error))) => {
            crate::metrics::record_error(&listener.config.name, error.code.code());
            return refuse(&mut socket, &error).await;
        }
        Err(_) => {
            let error = ClientError::fatal(
                SqlState::ProtocolViolation,
                format!("startup did not finish within {startup_timeout:?}"),
            );
            crate::metrics::record_error(&listener.config.name, error.code.code());
            return refuse(&mut socket, &error).await;
        }
    };
    let span = tracing::Span::current();
    span.record("user", params.user.as_str());
    span.record("database", params.database.as_str());
    let mut session = Session::new(ctx, listener, params, peer);
    session.started = started;
    let end = session.serve(&mut socket, greeting, unread).await;
    session.log_end(&end);
}

/// A client that logged in.
struct Opened {
    params: SessionParams,
    /// What to send once a server is ready (AuthenticationOk and friends).
    greeting: BytesMut,
    /// What the client sent after its last authentication message, without waiting
    /// for the answer: the session's first input.
    unread: BytesMut,
}

/// Handshake and client authentication; None when the connection was a cancel
/// request.
async fn open(
    socket: &mut TcpStream,
    ctx: &ProxyContext,
) -> Result<Option<Opened>, HandshakeFailure> {
    let mut reader = StartupReader::default();
    let startup = match handshake::read_opening(socket, &mut reader).await? {
        Opening::Cancel { pid, secret } => {
            let from = socket
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            forward_cancel(ctx, pid, &secret, &from).await;
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
    let mut greeting = BytesMut::with_capacity(512);
    client_auth::authenticate(
        socket,
        &mut reader,
        &ctx.users(),
        &params.user,
        &mut greeting,
    )
    .await?;
    Ok(Some(Opened {
        params,
        greeting,
        unread: reader.into_unread(),
    }))
}

/// Sends a CancelRequest where it belongs: the server one of our clients uses, or
/// the peer instance that minted the key (see `cancel` for the key layout).
/// Logs one line either way.
async fn forward_cancel(ctx: &ProxyContext, pid: i32, secret: &[u8], from: &str) {
    let config = ctx.config();
    let peering = cancel::Peering {
        own_id: config.peer_id,
        peers: &config.peers,
    };
    let timeout = config.server.cancel_timeout.0;
    let outcome = match ctx.cancels().route(pid, secret, &peering) {
        CancelRoute::Local(target) => match cancel::send_cancel(&target, timeout).await {
            Ok(()) => {
                tracing::info!(%from, server = %target.address, "cancel request forwarded");
                "forwarded"
            }
            Err(e) => {
                tracing::warn!(
                    %from,
                    server = %target.address,
                    error = %e,
                    "cannot forward cancel request"
                );
                "failed"
            }
        },
        CancelRoute::Peer(target) => {
            let peer = KeyPid::decode(pid).peer;
            match cancel::send_cancel(&target, timeout).await {
                Ok(()) => {
                    tracing::info!(
                        %from,
                        peer,
                        address = %target.address,
                        "cancel request passed to peer"
                    );
                    "peer"
                }
                Err(e) => {
                    tracing::warn!(
                        %from,
                        peer,
                        address = %target.address,
                        error = %e,
                        "cannot pass cancel request to peer"
                    );
                    "failed"
                }
            }
        }
        CancelRoute::Ignore(reason) => {
            tracing::info!(%from, pid, "cancel request ignored: {reason}");
            "ignored"
        }
    };
    metrics::counter!("switchyard_cancel_requests_total", "outcome" => outcome).increment(1);
}

async fn refuse(socket: &mut TcpStream, error: &ClientError) {
    let client = socket
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(%client, %error, "client refused");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = socket.write_all(&error.encode()).await;
        let _ = socket.shutdown().await;
    })
    .await;
}

pub(crate) struct Session {
    ctx: Arc<ProxyContext>,
    /// The configuration when the session started; a reload does not change it.
    config: Arc<Config>,
    listener: Arc<ListenerState>,
    params: SessionParams,
    peer: SocketAddr,
    pooling: SessionPooling,
    started: Instant,
    stats: RelayStats,
    /// The node last used, for the log line.
    node: Option<String>,
    binding: Option<checkout::Binding>,
    /// Parameters from the startup packet: what RESET returns to.
    startup: ParamSet,
    /// Parameters every server this client uses must have.
    desired: ParamSet,
    /// ParameterStatus values the client has been told.
    reported: Vec<(String, String)>,
    /// The params digest of the server `reported` was last checked against.
    reported_from: Option<u128>,
    statements: ClientStatements,
    transactions: u64,
    /// Counted as active on its listener (holding a server); see `mark_idle`.
    active: bool,
    /// When the last checkout returned: the start of the work it was for.
    checked_out_at: Instant,
    signals: StopSignals,
}

/// The proxy's drain and shutdown signals, subscribed once per session: a session
/// waits on them between and during every transaction.
struct StopSignals {
    draining: StopWaiter,
    shutdown: StopWaiter,
}

impl StopSignals {
    fn new(ctx: &ProxyContext) -> StopSignals {
        let (draining, shutdown) = ctx.session_stop_waiters();
        StopSignals { draining, shutdown }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.mark_idle();
    }
}

/// How a session ended, for its log line.
enum SessionEnd {
    Relay(RelayEnd),
    Refused(ClientError),
}

impl Session {
    fn new(
        ctx: Arc<ProxyContext>,
        listener: Arc<ListenerState>,
        params: SessionParams,
        peer: SocketAddr,
    ) -> Session {
        let startup = ParamSet::from_startup(&params.passthrough);
        let config = ctx.config();
        let signals = StopSignals::new(&ctx);
        Session {
            pooling: config.pooling_for(&listener.config),
            config,
            ctx,
            listener,
            params,
            peer,
            started: Instant::now(),
            stats: RelayStats::default(),
            node: None,
            binding: None,
            desired: startup.clone(),
            startup,
            reported: Vec::new(),
            reported_from: None,
            statements: ClientStatements::default(),
            transactions: 0,
            active: false,
            checked_out_at: Instant::now(),
            signals,
        }
    }

    /// `unread`: client bytes read during authentication, the first input.
    async fn serve(
        &mut self,
        socket: &mut TcpStream,
        mut out: BytesMut,
        unread: BytesMut,
    ) -> SessionEnd {
        let over_limit = self.ctx.open_clients() > self.config.pool.max_client_connections as usize;
        if over_limit {
            let error = ClientError::fatal(
                SqlState::TooManyConnections,
                format!(
                    "too many client connections (max_client_connections is {})",
                    self.config.pool.max_client_connections
                ),
            );
            refuse(socket, &error).await;
            return SessionEnd::Refused(error);
        }
        let deadline = self.hold_deadline(Instant::now());
        let pool = match Box::pin(self.current_pool(deadline)).await {
            Ok(pool) => pool,
            Err(refusal) => {
                refusal.send(socket).await;
                return SessionEnd::Refused(refusal.error);
            }
        };
        // Once a pool has logged in somewhere, new clients are greeted with its
        // parameters at once and wait for a server only when they send work.
        // The very first login is done now, which also proves the database exists.
        let first_server = match pool.welcome() {
            Some(params) => {
                self.greet_from_cache(params, &mut out);
                None
            }
            None => match Box::pin(self.checkout()).await {
                Ok(server) => {
                    self.parameter_updates(&server, &mut out);
                    Some(server)
                }
                Err(refusal) => {
                    refusal.send(socket).await;
                    return SessionEnd::Refused(refusal.error);
                }
            },
        };
        let registration = self.ctx.cancels().register(self.config.peer_id);
        messages::backend_key_data(&mut out, registration.pid, registration.secret);
        messages::ready_for_query_idle(&mut out);
        if let Err(e) = socket.write_all(&out).await {
            if let Some(server) = first_server {
                server.release();
            }
            return SessionEnd::Relay(RelayEnd::ClientGone(Some(e)));
        }
        drop(out);
        match self.pooling.mode {
            PoolMode::Session => {
                Box::pin(session_mode::run(
                    self,
                    socket,
                    first_server,
                    unread,
                    &registration,
                ))
                .await
            }
            PoolMode::Transaction => {
                if let Some(server) = first_server {
                    server.release();
                }
                self.mark_idle();
                transaction::run(self, socket, unread, &registration).await
            }
        }
    }

    /// ParameterStatus from the pool's cached login, with the client's own
    /// application_name (the value PostgreSQL would report for it).
    fn greet_from_cache(&mut self, mut params: Vec<(String, String)>, out: &mut BytesMut) {
        if let Some(ParamValue::Raw(name)) = self.startup.get("application_name") {
            if let Some(slot) = params.iter_mut().find(|(n, _)| n == "application_name") {
                slot.1 = name.clone();
            }
        }
        for (name, value) in &params {
            messages::parameter_status(out, name, value);
        }
        self.reported = params;
        self.reported_from = None;
    }

    /// Waits until the inbox holds a complete message. Ok(false): the client said
    /// Terminate. Reading waits for readability first so an idle client holds no buffer.
    /// A draining proxy ends the session here, at a transaction boundary.
    async fn wait_for_request(
        &mut self,
        socket: &mut TcpStream,
        inbox: &mut BytesMut,
    ) -> Result<bool, RelayEnd> {
        let max_message = self.config.client.max_message_size.0 as usize;
        loop {
            match crate::protocol::frame::complete_message_len(inbox, max_message) {
                Ok(Some(_)) if inbox.first() == Some(&b'X') => return Ok(false),
                // Between transactions is where a draining proxy lets clients go:
                // nothing of this request has reached a server.
                Ok(Some(_)) if self.signals.draining.is_fired() => return Err(RelayEnd::Shutdown),
                Ok(Some(_)) => return Ok(true),
                Ok(None) => {}
                Err(e) => return Err(RelayEnd::ClientProtocol(e)),
            }
            tokio::select! {
                biased;
                ready = socket.readable() => {
                    if let Err(e) = ready {
                        return Err(RelayEnd::ClientGone(Some(e)));
                    }
                }
                _ = self.signals.draining.fired() => return Err(RelayEnd::Shutdown),
            }
            if inbox.capacity() - inbox.len() < 1024 {
                inbox.reserve(16 * 1024);
            }
            // Read through poll_read rather than try_read: a short read tells tokio
            // the socket is drained, which spares the relay a read that would only
            // say EAGAIN (one syscall per transaction).
            let read = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(tokio_util::io::poll_read_buf(
                    std::pin::Pin::new(&mut *socket),
                    cx,
                    inbox,
                ))
            })
            .await;
            match read {
                std::task::Poll::Ready(Ok(0)) => return Err(RelayEnd::ClientGone(None)),
                std::task::Poll::Ready(Ok(_)) | std::task::Poll::Pending => {}
                std::task::Poll::Ready(Err(e)) => return Err(RelayEnd::ClientGone(Some(e))),
            }
        }
    }

    /// Tells the client why the session ended when the proxy ended it.
    async fn finish(&self, socket: &mut TcpStream, end: &RelayEnd) {
        let to_client = match end {
            RelayEnd::ClientProtocol(e) => Some(ClientError::fatal(
                SqlState::ProtocolViolation,
                e.to_string(),
            )),
            RelayEnd::ServerGone {
                sent_error: false, ..
            } => Some(ClientError::fatal(
                SqlState::ConnectionFailure,
                format!(
                    "server connection to node \"{}\" was lost",
                    self.node.as_deref().unwrap_or("?")
                ),
            )),
            RelayEnd::Shutdown => Some(ClientError::fatal(
                SqlState::AdminShutdown,
                "terminating connection because Switchyard is shutting down",
            )),
            RelayEnd::Demoted(node) => Some(ClientError::fatal(
                SqlState::AdminShutdown,
                format!(
                    "terminating connection because node \"{node}\" is no longer the primary; \
                     reconnect to reach the new one"
                ),
            )),
            _ => None,
        };
        if let Some(error) = to_client {
            crate::metrics::record_error(&self.listener.config.name, error.code.code());
            refuse(socket, &error).await;
        }
    }

    fn log_end(&self, end: &SessionEnd) {
        let reason = match end {
            SessionEnd::Refused(error) => {
                crate::metrics::record_error(&self.listener.config.name, error.code.code());
                format!("refused: {error}")
            }
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
            SessionEnd::Relay(RelayEnd::Demoted(node)) => {
                format!("node {node} was demoted (session-mode sessions on it are closed)")
            }
        };
        tracing::info!(
            client = %self.peer,
            listener = %self.listener.config.name,
            user = %self.params.user,
            database = %self.params.database,
            route = ?self.listener.config.route,
            mode = ?self.pooling.mode,
            node = self.node.as_deref().unwrap_or("-"),
            duration_ms = self.started.elapsed().as_millis() as u64,
            transactions = self.transactions,
            bytes_from_client = self.stats.client_bytes,
            bytes_from_server = self.stats.server_bytes,
            "session ended: {reason}"
        );
    }
}

/// A refusal after authentication: our own error, or the server's raw ErrorResponse.
pub(crate) struct Refusal {
    error: ClientError,
    raw: Option<bytes::Bytes>,
}

impl Refusal {
    async fn send(&self, socket: &mut TcpStream) {
        match &self.raw {
            Some(raw) => {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), socket.write_all(raw))
                        .await;
            }
            None => refuse(socket, &self.error).await,
        }
    }
}

impl From<ClientError> for Refusal {
    fn from(error: ClientError) -> Refusal {
        Refusal { error, raw: None }
    }
}
