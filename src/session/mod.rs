//! One client connection from accept to close: TLS negotiation (`negotiate`),
//! the handshake and authentication ([`handshake`], [`client_auth`]), then the
//! greeting and one of the two pool-mode relays ([`session_mode`],
//! [`transaction`]). Each session runs in its own task under a tracing span, and
//! logs exactly one line when it ends.
//!
//! The parts a session is made of, each in its own file: what it was started with
//! ([`SessionEnv`], here), where its servers come from ([`checkout`]: routing, the
//! pool and the failover [`hold`]), the parameters the client has set
//! ([`client_params`]), its prepared statements ([`statements`]) and its figures
//! ([`counters`]). A session-mode session held by PAUSE waits in
//! [`session_pause`], which moves it to a new server after a switchover using
//! what [`session_snapshot`] read.

mod abandoned;
mod checkout;
pub mod client_auth;
mod client_params;
mod console;
mod counters;
pub mod handshake;
mod hold;
pub mod ledger;
mod negotiate;
pub mod relay;
mod session_mode;
mod session_pause;
mod session_snapshot;
pub mod settings;
pub mod sql_lex;
mod sql_prefilter;
pub mod sql_scan;
mod startup_options;
pub mod statements;
pub(crate) mod timeouts;
mod transaction;
pub mod translate;
pub mod tx_settings;
mod user_lookup;
mod waiting;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::accept_limits::LoggingIn;
use crate::config::{Config, PoolMode, SessionPooling};
use crate::context::{ListenerState, ProxyContext};
use crate::control::{ClientInfo, ClientState, Registered};
use crate::log_text::Escaped;
use crate::pool::PooledServer;
use crate::protocol::frame::complete_message_len;
use crate::protocol::startup::StartupReader;
use crate::protocol::{messages, tag, ClientError, SqlState};
use crate::stop_signal::StopWaiter;
use crate::tls::{ClientStream, TlsInfo};

use checkout::ServerSource;
use client_params::ClientParams;
use counters::SessionCounters;
use handshake::{HandshakeFailure, Opened, SessionParams};
use relay::RelayEnd;
use statements::ClientStatements;

/// Runs a client connection to completion. Never panics on client input; every
/// failure ends in an ErrorResponse to the client or a log line.
pub async fn run(
    socket: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ProxyContext>,
    listener: Arc<ListenerState>,
    logging_in: LoggingIn,
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
    run_in_span(socket, peer, ctx, listener, logging_in)
        .instrument(span)
        .await
}

async fn run_in_span(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ProxyContext>,
    listener: Arc<ListenerState>,
    logging_in: LoggingIn,
) {
    let started = Instant::now();
    let startup_timeout = ctx.config().client.startup_timeout.0;
    // TLS negotiation, startup and authentication share one deadline.
    let deadline = tokio::time::Instant::now() + startup_timeout;
    let mut reader = StartupReader::default();
    let mut socket = match &listener.tls {
        Some(tls) => {
            match negotiate::start_tls(tcp, tls, &mut reader, deadline, startup_timeout).await {
                Some(socket) => socket,
                None => return,
            }
        }
        None => ClientStream::Plain(tcp),
    };
    // Startup and checkout futures are boxed so that their state (SCRAM, login,
    // hold) is only allocated while they run: an idle client's task stays small.
    let opened = tokio::time::timeout_at(
        deadline,
        Box::pin(handshake::open(
            &mut socket,
            &ctx,
            listener.tls.as_ref(),
            &listener.config.name,
            reader,
        )),
    )
    .await;
    let Opened {
        params,
        greeting,
        unread,
        tls,
    } = match opened {
        Ok(Ok(Some(opened))) => opened,
        Ok(Ok(None)) => return, // a cancel request, already handled
        Ok(Err(failure)) => {
            if let Some(code) = failure_code(&failure) {
                crate::metrics::record_error(&listener.config.name, code);
            }
            if matches!(&failure, HandshakeFailure::Refuse(error) if error.code == SqlState::InvalidPassword)
            {
                // Answered late, still holding its admission place: guessing is
                // slowed per address (auth_delay's idea).
                metrics::counter!(
                    "switchyard_auth_failures_total",
                    "listener" => listener.config.name.clone()
                )
                .increment(1);
                tokio::time::sleep(ctx.config().client.auth_failure_delay.0).await;
            }
            return handshake_failed(&mut socket, failure).await;
        }
        Err(_) => {
            crate::metrics::record_error(&listener.config.name, SqlState::ProtocolViolation.code());
            return startup_timed_out(&mut socket, startup_timeout).await;
        }
    };
    // Logged in (or a console session): its admission place goes back.
    drop(logging_in);
    let span = tracing::Span::current();
    span.record("user", params.user.as_str());
    span.record("database", params.database.as_str());
    if console::is_console_database(&params.database) {
        return console::serve(&mut socket, peer, &ctx, &params, greeting, unread).await;
    }
    if let Some(error) = disabled(&ctx, &params.database) {
        return refuse(&mut socket, &error).await;
    }
    let mut session = Session::new(ctx, listener, params, peer, started, tls);
    let kill = session.client.killed().subscribe();
    let end = tokio::select! {
        biased;
        end = session.serve(&mut socket, greeting, unread) => end,
        _ = kill.fired() => SessionEnd::Refused(killed(&mut socket).await),
    };
    session.log_end(&end);
}

/// The SQLSTATE a failed handshake counts under in the error metric; a client
/// that simply left is no error.
fn failure_code(failure: &HandshakeFailure) -> Option<&'static str> {
    match failure {
        HandshakeFailure::Refuse(error) => Some(error.code.code()),
        HandshakeFailure::Close(_) => Some(SqlState::ProtocolViolation.code()),
        HandshakeFailure::Gone(_) => None,
    }
}

/// Ends a connection whose handshake failed: tells the client why when there is
/// something to tell, logs it otherwise.
async fn handshake_failed(socket: &mut ClientStream, failure: HandshakeFailure) {
    match failure {
        HandshakeFailure::Gone(reason) => tracing::debug!(%reason, "client left during startup"),
        HandshakeFailure::Close(reason) => {
            let client = socket
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            // A flood of garbage connections must not flood the log.
            if let Some(left_out) = crate::log_text::refusals().allow() {
                tracing::info!(%client, refusals_not_logged = left_out, "connection closed during startup: {reason}");
            }
        }
        HandshakeFailure::Refuse(error) => refuse(socket, &error).await,
    }
}

async fn startup_timed_out(socket: &mut ClientStream, timeout: std::time::Duration) {
    let error = ClientError::fatal(
        SqlState::ProtocolViolation,
        format!("startup did not finish within {timeout:?}"),
    );
    refuse(socket, &error).await;
}

/// The refusal for a client of a database the console disabled (DISABLE).
fn disabled(ctx: &ProxyContext, database: &str) -> Option<ClientError> {
    ctx.pause_gate().is_disabled(database).then(|| {
        ClientError::fatal(
            SqlState::CannotConnectNow,
            format!("database \"{database}\" is disabled (admin console DISABLE)"),
        )
    })
}

/// Ends a session an operator killed (KILL, KILL_CLIENT); its server connection,
/// if it held one mid-transaction, was closed when the session's future dropped.
async fn killed(socket: &mut ClientStream) -> ClientError {
    let error = ClientError::fatal(
        SqlState::AdminShutdown,
        "terminating connection due to an administrator command (KILL)",
    );
    refuse(socket, &error).await;
    error
}

/// Writes `bytes` to the client and flushes them (which only TLS needs).
async fn send_all(socket: &mut ClientStream, bytes: &[u8]) -> std::io::Result<()> {
    socket.write_all(bytes).await?;
    socket.flush().await
}

async fn refuse(socket: &mut ClientStream, error: &ClientError) {
    let client = socket
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    if let Some(left_out) = crate::log_text::refusals().allow() {
        // The message may quote names the client chose.
        let text = error.to_string();
        let error = Escaped(&text);
        tracing::info!(%client, refusals_not_logged = left_out, %error, "client refused");
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = socket.write_all(&error.encode()).await;
        let _ = socket.shutdown().await;
    })
    .await;
}

/// What a session was started with; none of it changes while it runs.
pub(crate) struct SessionEnv {
    ctx: Arc<ProxyContext>,
    /// The configuration when the session started; a reload does not change it.
    config: Arc<Config>,
    listener: Arc<ListenerState>,
    client: SessionParams,
    peer: SocketAddr,
    pooling: SessionPooling,
    /// The client's TLS version and cipher suite; None in plaintext.
    tls: Option<TlsInfo>,
}

pub(crate) struct Session {
    env: SessionEnv,
    servers: ServerSource,
    params: ClientParams,
    statements: ClientStatements,
    counters: SessionCounters,
    signals: StopSignals,
    /// This session in the client registry (SHOW CLIENTS, KILL, PAUSE).
    client: Registered,
}

/// The proxy's drain and shutdown signals, subscribed once per session: a session
/// waits on them between and during every transaction.
struct StopSignals {
    draining: StopWaiter,
    shutdown: StopWaiter,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.counters.mark_idle(&self.env.listener);
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
        client: SessionParams,
        peer: SocketAddr,
        started: Instant,
        tls: Option<TlsInfo>,
    ) -> Session {
        let config = ctx.config();
        let (draining, shutdown) = ctx.session_stop_waiters();
        let registered = ctx.client_registry().register(ClientInfo {
            user: client.user.clone(),
            database: client.database.clone(),
            listener: listener.config.name.clone(),
            addr: peer,
            local: listener.local_addr,
            application_name: client
                .passthrough
                .iter()
                .find(|(k, _)| k == "application_name")
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            tls: tls
                .as_ref()
                .map(|t| format!("{}/{}", t.version, t.cipher))
                .unwrap_or_default(),
        });
        Session {
            client: registered,
            params: ClientParams::from_startup(&client.passthrough),
            env: SessionEnv {
                pooling: config.pooling_for(&listener.config),
                config,
                ctx,
                listener,
                client,
                peer,
                tls,
            },
            servers: ServerSource::default(),
            statements: ClientStatements::default(),
            counters: SessionCounters::new(started),
            signals: StopSignals { draining, shutdown },
        }
    }

    /// `out`: the greeting so far (AuthenticationOk); `unread`: client bytes read
    /// during authentication, the first input.
    async fn serve(
        &mut self,
        socket: &mut ClientStream,
        mut out: BytesMut,
        unread: BytesMut,
    ) -> SessionEnd {
        let max_clients = self.env.config.pool.max_client_connections;
        if self.env.ctx.open_clients() > max_clients as usize {
            let error = ClientError::fatal(
                SqlState::TooManyConnections,
                format!("too many client connections (max_client_connections is {max_clients})"),
            );
            refuse(socket, &error).await;
            return SessionEnd::Refused(error);
        }
        let first_server = match Box::pin(self.greet(&mut out)).await {
            Ok(server) => server,
            Err(refusal) => {
                refusal.send(socket).await;
                return SessionEnd::Refused(refusal.error);
            }
        };
        // Session mode: the one server backing the client gives the key its real pid.
        let backend_pid = match self.env.pooling.mode {
            PoolMode::Session => first_server.as_ref().map(|server| server.backend_pid),
            PoolMode::Transaction => None,
        };
        let registration = self
            .env
            .ctx
            .cancels()
            .register(self.env.config.peer_id, backend_pid);
        messages::backend_key_data(&mut out, registration.pid, registration.secret);
        messages::ready_for_query_idle(&mut out);
        if let Err(e) = send_all(socket, &out).await {
            if let Some(server) = first_server {
                server.release();
            }
            return SessionEnd::Relay(RelayEnd::ClientGone(Some(e)));
        }
        drop(out);
        match self.env.pooling.mode {
            PoolMode::Session => {
                let Some(server) = first_server else {
                    // greet() checks the server out in session mode.
                    let error = ClientError::fatal(
                        SqlState::Internal,
                        "session mode: no server connection was checked out at login",
                    );
                    tracing::error!(%error, "session without a server");
                    refuse(socket, &error).await;
                    return SessionEnd::Refused(error);
                };
                Box::pin(session_mode::run(
                    self,
                    socket,
                    server,
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

    /// Adds the server's parameters to the greeting: what a server reports with
    /// the client's startup parameters applied. In transaction mode, once a server
    /// of the pool has reported them for the same startup parameters, new clients
    /// are greeted with that at once and wait for a server only when they send
    /// work. Otherwise a server is checked out now, which also proves the database
    /// exists and the parameters are accepted (one the server rejects ends the
    /// connection with the server's error, made FATAL, as a direct connection's);
    /// session mode keeps it: the client's BackendKeyData carries its real pid.
    async fn greet(&mut self, out: &mut BytesMut) -> Result<Option<PooledServer>, Refusal> {
        let deadline = hold::deadline(&self.env, Instant::now());
        let pool = self.servers.current_pool(&self.env, deadline).await?;
        let key = self.params.welcome_key();
        if self.env.pooling.mode == PoolMode::Transaction {
            if let Some(params) = pool.welcome(&key.params) {
                self.params.greet_from_cache(params, &key, out);
                return Ok(None);
            }
        }
        let server = self.checkout().await.map_err(Refusal::at_connect)?;
        server.pool().remember_welcome(&key.params, &server.params);
        self.params.parameter_updates(&server, out);
        Ok(Some(server))
    }

    /// A server connection for the next piece of work, parameters synced, with the
    /// wait counted for /status and metrics and the client marked active.
    async fn checkout(&mut self) -> Result<PooledServer, Refusal> {
        // A paused database holds the transaction here (admin console PAUSE).
        self.client
            .enter_transaction(self.env.ctx.pause_gate())
            .await;
        // One clock read at each end serves the hold deadline, the pool's staleness
        // checks, the wait metric and the transaction's start.
        let started = Instant::now();
        self.client.mark_request(started);
        let result = self
            .servers
            .checkout(&self.env, self.params.desired(), started)
            .await;
        self.counters
            .checked_out(&self.env.listener, started, result.is_ok());
        self.client.set_state(match result {
            Ok(_) => ClientState::Active,
            Err(_) => ClientState::Idle,
        });
        result
    }

    /// The client holds no server now (transaction mode, between transactions).
    fn mark_idle(&mut self) {
        self.counters.mark_idle(&self.env.listener);
        self.client.set_state(ClientState::Idle);
    }

    /// Waits until the inbox holds a complete message. Ok(false): the client said
    /// Terminate. Reading waits for readability first so an idle client holds no buffer.
    /// A draining proxy ends the session here, at a transaction boundary.
    async fn wait_for_request(
        &mut self,
        socket: &mut ClientStream,
        inbox: &mut BytesMut,
    ) -> Result<bool, RelayEnd> {
        let max_message = self.env.config.client.max_message_size.0 as usize;
        loop {
            match complete_message_len(inbox, max_message) {
                Ok(Some(_)) if inbox.first() == Some(&tag::TERMINATE) => return Ok(false),
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
            read_available(socket, inbox).await?;
        }
    }

    /// Tells the client why the session ended when the proxy ended it.
    async fn finish(&self, socket: &mut ClientStream, end: &RelayEnd) {
        let to_client = match end {
            RelayEnd::ClientGone(Some(e)) | RelayEnd::ServerGone { error: Some(e), .. }
                if timeouts::expired(e).is_some() =>
            {
                timeouts::expired(e)
                    .map(|expired| expired.to_client_error(self.servers.node_name().unwrap_or("?")))
            }
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
                    self.servers.node_name().unwrap_or("?")
                ),
            )),
            RelayEnd::ClientOverLimit(why) => Some(ClientError::fatal(
                SqlState::ProgramLimitExceeded,
                why.clone(),
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
            crate::metrics::record_error(&self.env.listener.config.name, error.code.code());
            refuse(socket, &error).await;
        }
    }

    fn log_end(&self, end: &SessionEnd) {
        let reason = match end {
            SessionEnd::Refused(error) => {
                crate::metrics::record_error(&self.env.listener.config.name, error.code.code());
                format!("refused: {error}")
            }
            SessionEnd::Relay(
                RelayEnd::ClientGone(Some(e)) | RelayEnd::ServerGone { error: Some(e), .. },
            ) if timeouts::expired(e).is_some() => format!("timed out: {e}"),
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
            SessionEnd::Relay(RelayEnd::ClientOverLimit(why)) => {
                format!("client over a limit: {why}")
            }
            SessionEnd::Relay(RelayEnd::Shutdown) => "proxy shutdown".into(),
            SessionEnd::Relay(RelayEnd::Demoted(node)) => {
                format!("node {node} was demoted (session-mode sessions on it are closed)")
            }
            // session_mode holds a paused session and relays on; it never ends one.
            SessionEnd::Relay(RelayEnd::Paused) => "paused".into(),
        };
        let env = &self.env;
        let counters = &self.counters;
        tracing::info!(
            client = %env.peer,
            listener = %env.listener.config.name,
            user = %Escaped(&env.client.user),
            database = %Escaped(&env.client.database),
            route = ?env.listener.config.route,
            mode = ?env.pooling.mode,
            tls = %env.tls.as_ref().map_or_else(|| "off".to_string(), TlsInfo::to_string),
            node = self.servers.node_name().unwrap_or("-"),
            duration_ms = counters.started.elapsed().as_millis() as u64,
            transactions = counters.transactions,
            bytes_from_client = counters.stats.client_bytes,
            bytes_from_server = counters.stats.server_bytes,
            "session ended: {}",
            Escaped(&reason)
        );
    }
}

/// A refusal after authentication: our own error, or the server's raw ErrorResponse.
pub(crate) struct Refusal {
    error: ClientError,
    raw: Option<bytes::Bytes>,
}

impl Refusal {
    async fn send(&self, socket: &mut ClientStream) {
        match &self.raw {
            Some(raw) => {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), send_all(socket, raw))
                        .await;
            }
            None => refuse(socket, &self.error).await,
        }
    }
}

impl Refusal {
    /// At connect, a server's ERROR (a startup parameter it rejects) ends the
    /// connection as FATAL.
    fn at_connect(mut self) -> Refusal {
        self.raw = self.raw.map(|raw| messages::error_as_fatal(&raw));
        self
    }
}

impl From<ClientError> for Refusal {
    fn from(error: ClientError) -> Refusal {
        Refusal { error, raw: None }
    }
}

/// Reads what the client has sent, once the socket is readable; Err when the
/// client closed its socket or broke it.
async fn read_available(socket: &mut ClientStream, inbox: &mut BytesMut) -> Result<(), RelayEnd> {
    if inbox.capacity() - inbox.len() < 1024 {
        inbox.reserve(16 * 1024);
    }
    // Read through poll_read rather than try_read: a short read tells tokio the
    // socket is drained, which spares the relay a read that would only say EAGAIN
    // (one syscall per transaction).
    let read = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(tokio_util::io::poll_read_buf(
            std::pin::Pin::new(&mut *socket),
            cx,
            inbox,
        ))
    })
    .await;
    match read {
        std::task::Poll::Ready(Ok(0)) => Err(RelayEnd::ClientGone(None)),
        std::task::Poll::Ready(Ok(_)) | std::task::Poll::Pending => Ok(()),
        std::task::Poll::Ready(Err(e)) => Err(RelayEnd::ClientGone(Some(e))),
    }
}
