//! The pre-session phase of a client connection after any TLS negotiation
//! (`super::negotiate`): SSLRequest/GSSENCRequest answered 'N' where the listener
//! offers no TLS, then a CancelRequest (passed on to whoever owns the key) or a
//! StartupMessage, the startup parameters a session needs, and client
//! authentication (with `tls: require`, only over TLS).

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::client_auth::TlsFacts;
use crate::cancel::{self, CancelRoute};
use crate::config::{
    decide_access, AccessDecision, AccessMethod, AccessRequest, ClientAuthMethod, ClientTlsMode,
};
use crate::context::ProxyContext;
use crate::log_text::Escaped;
use crate::protocol::messages;
use crate::protocol::startup::{FirstPacket, StartupError, StartupParams, StartupReader};
use crate::protocol::{tag, ClientError, SqlState};
use crate::server::cancel::send_cancel as cancel_on_server;
use crate::tls::{ClientStream, ClientTls, TlsInfo};

/// What a client connection turned out to be.
pub enum Opening {
    Startup(StartupParams),
    Cancel { pid: i32, secret: Vec<u8> },
}

/// Why the handshake ended without a session.
pub enum HandshakeFailure {
    /// The client went away; nothing to say to it.
    Gone(String),
    /// Tell the client this, then close.
    Refuse(ClientError),
    /// Close without a word (nothing can be said safely), logging why.
    Close(String),
}

impl From<StartupError> for HandshakeFailure {
    fn from(e: StartupError) -> HandshakeFailure {
        match e {
            StartupError::Closed | StartupError::Io(_) => HandshakeFailure::Gone(e.to_string()),
            StartupError::UnsupportedProtocol { .. } => HandshakeFailure::Refuse(
                ClientError::fatal(SqlState::FeatureNotSupported, e.to_string()),
            ),
            StartupError::BadLength(_)
            | StartupError::Malformed(_)
            | StartupError::UnexpectedMessage(_) => HandshakeFailure::Refuse(ClientError::fatal(
                SqlState::ProtocolViolation,
                e.to_string(),
            )),
        }
    }
}

/// Reads packets until a StartupMessage or CancelRequest. Each of SSLRequest and
/// GSSENCRequest is answered 'N' at most once, as PostgreSQL does; `negotiated`:
/// TLS negotiation already took place (`super::negotiate`), so neither may come now.
pub async fn read_opening(
    socket: &mut ClientStream,
    reader: &mut StartupReader,
    negotiated: bool,
) -> Result<Opening, HandshakeFailure> {
    let (mut ssl_answered, mut gss_answered) = (negotiated, negotiated);
    loop {
        match reader.first_packet(socket).await? {
            FirstPacket::SslRequest if !ssl_answered => {
                ssl_answered = true;
                write_byte(socket, tag::ENCRYPTION_REFUSED).await?;
            }
            FirstPacket::GssEncRequest if !gss_answered => {
                gss_answered = true;
                write_byte(socket, tag::ENCRYPTION_REFUSED).await?;
            }
            FirstPacket::SslRequest | FirstPacket::GssEncRequest => {
                return Err(HandshakeFailure::Refuse(ClientError::fatal(
                    SqlState::ProtocolViolation,
                    "duplicate SSL or GSS negotiation request",
                )))
            }
            FirstPacket::Cancel { pid, secret } => return Ok(Opening::Cancel { pid, secret }),
            FirstPacket::Startup(params) => return Ok(Opening::Startup(params)),
        }
    }
}

pub(super) async fn write_byte<W: tokio::io::AsyncWrite + Unpin>(
    socket: &mut W,
    byte: u8,
) -> Result<(), HandshakeFailure> {
    let gone = |e: std::io::Error| HandshakeFailure::Gone(e.to_string());
    socket.write_all(&[byte]).await.map_err(gone)?;
    socket.flush().await.map_err(gone)
}

/// The parameters a session needs from a StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    pub user: String,
    pub database: String,
    /// Everything else the server should see (application_name, options, ...).
    pub passthrough: Vec<(String, String)>,
    /// `_pq_.` protocol options the client asked for (we support none).
    pub protocol_options: Vec<String>,
}

pub fn session_params(startup: &StartupParams) -> Result<SessionParams, ClientError> {
    let user = match startup.get("user") {
        Some(user) if !user.is_empty() => user.to_string(),
        _ => {
            return Err(ClientError::fatal(
                SqlState::InvalidAuthorization,
                "no PostgreSQL user name specified in startup packet",
            ))
        }
    };
    // PostgreSQL reads every `replication` value in turn (a bad one is refused
    // wherever it is) and the last one decides.
    let mut replication = false;
    for (_, value) in startup.params.iter().filter(|(k, _)| k == "replication") {
        replication = wants_replication(value)?;
    }
    if replication {
        return Err(ClientError::fatal(
            SqlState::FeatureNotSupported,
            "replication connections are not supported through Switchyard",
        )
        .with_hint("Connect replication clients to the PostgreSQL node directly."));
    }
    let database = match startup.get("database") {
        Some(db) if !db.is_empty() => db.to_string(),
        _ => user.clone(),
    };
    let mut passthrough = Vec::new();
    let mut protocol_options = Vec::new();
    for (key, value) in &startup.params {
        match key.as_str() {
            "user" | "database" | "replication" => {}
            k if k.starts_with("_pq_.") => protocol_options.push(key.clone()),
            _ => passthrough.push((key.clone(), value.clone())),
        }
    }
    Ok(SessionParams {
        user,
        database,
        passthrough,
        protocol_options,
    })
}

/// `replication` as PostgreSQL reads it: `database` or a true boolean asks for a
/// replication connection (which Switchyard refuses), a false boolean for an
/// ordinary one; anything else is refused.
fn wants_replication(value: &str) -> Result<bool, ClientError> {
    if value == "database" {
        return Ok(true);
    }
    parse_bool(value).ok_or_else(|| {
        ClientError::fatal(
            SqlState::InvalidParameterValue,
            format!("invalid value for parameter \"replication\": \"{value}\""),
        )
        .with_hint("Valid values are: \"false\", 0, \"true\", 1, \"database\".")
    })
}

/// PostgreSQL's `parse_bool`: any unambiguous prefix of true/false/yes/no, on/off
/// (at least two letters), 1/0; case-insensitive.
fn parse_bool(value: &str) -> Option<bool> {
    let value = value.to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| value.len() >= min && word.starts_with(&value);
    if prefix_of("true", 1) || prefix_of("yes", 1) || value == "on" || value == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || value == "0" {
        Some(false)
    } else {
        None
    }
}

/// For a client asking for protocol 3.x with x > 0 or `_pq_.` options: the
/// NegotiateProtocolVersion message PostgreSQL would send, else None.
pub fn protocol_negotiation(
    startup: &StartupParams,
    params: &SessionParams,
) -> Option<bytes::Bytes> {
    (startup.minor_version > 0 || !params.protocol_options.is_empty())
        .then(|| messages::negotiate_protocol_version(&params.protocol_options))
}

/// A client that logged in.
pub(super) struct Opened {
    pub params: SessionParams,
    /// What to send once a server is ready (AuthenticationOk and friends).
    pub greeting: BytesMut,
    /// What the client sent after its last authentication message, without waiting
    /// for the answer: the session's first input.
    pub unread: BytesMut,
    /// The client's TLS version and cipher suite; None in plaintext.
    pub tls: Option<TlsInfo>,
}

/// Startup and client authentication, after any TLS negotiation
/// (`super::negotiate::start_tls`);
/// None when the connection was a cancel request. `tls`: the listener's TLS, if
/// it offers any.
pub(super) async fn open(
    socket: &mut ClientStream,
    ctx: &ProxyContext,
    tls: Option<&Arc<ClientTls>>,
    listener: &str,
    mut reader: StartupReader,
) -> Result<Option<Opened>, HandshakeFailure> {
    let startup = match read_opening(socket, &mut reader, tls.is_some()).await? {
        Opening::Cancel { pid, secret } => {
            // Plaintext cancels are taken even where TLS is required, as PostgreSQL
            // does: libpq before 17 always sends them in the clear.
            let from = socket
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            forward_cancel(ctx, pid, &secret, &from).await;
            return Ok(None);
        }
        Opening::Startup(startup) => startup,
    };
    if tls.is_some_and(|t| t.mode() == ClientTlsMode::Require) && !socket.is_tls() {
        return Err(HandshakeFailure::Refuse(
            ClientError::fatal(
                SqlState::InvalidAuthorization,
                "TLS is required: this listener refuses unencrypted connections",
            )
            .with_hint("Connect with sslmode=require (or verify-ca, verify-full)."),
        ));
    }
    let params = session_params(&startup).map_err(HandshakeFailure::Refuse)?;
    if let Some(negotiation) = protocol_negotiation(&startup, &params) {
        socket
            .write_all(&negotiation)
            .await
            .map_err(|e| HandshakeFailure::Gone(e.to_string()))?;
    }
    let rule_method = access_method(ctx, socket, &params, listener)?;
    let facts = match tls {
        Some(tls) if socket.is_tls() => TlsFacts {
            end_point: Some(tls.end_point()),
            verifies_clients: tls.verifies_clients(),
        },
        _ => TlsFacts::default(),
    };
    let mut greeting = BytesMut::with_capacity(512);
    super::user_lookup::authenticate(
        socket,
        &mut reader,
        ctx,
        &params.user,
        rule_method,
        facts,
        &mut greeting,
    )
    .await?;
    // After authentication, as PostgreSQL reads `options` once the user is known.
    if let Some(options) = startup.get("options") {
        super::startup_options::check(options).map_err(HandshakeFailure::Refuse)?;
    }
    Ok(Some(Opened {
        params,
        greeting,
        unread: reader.into_unread(),
        tls: socket.tls_info(),
    }))
}

/// Tries the `access:` rules: the method the matching rule asks for (None: no
/// rules, the user's own `auth` applies), or the refusal. Console connections
/// are subject to them too, as pg_hba.conf applies to every database.
fn access_method(
    ctx: &ProxyContext,
    socket: &ClientStream,
    params: &SessionParams,
    listener: &str,
) -> Result<Option<ClientAuthMethod>, HandshakeFailure> {
    let config = ctx.config();
    let Ok(peer) = socket.peer_addr() else {
        return Err(HandshakeFailure::Gone("no peer address".into()));
    };
    let request = AccessRequest {
        source: peer.ip(),
        user: &params.user,
        database: &params.database,
        listener,
        tls: socket.is_tls(),
    };
    let who = || {
        format!(
            "host \"{}\", user \"{}\", database \"{}\", {}",
            peer.ip(),
            Escaped(&params.user),
            Escaped(&params.database),
            if request.tls { "TLS" } else { "no TLS" }
        )
    };
    let refuse = |message: String| {
        HandshakeFailure::Refuse(ClientError::fatal(SqlState::InvalidAuthorization, message))
    };
    match decide_access(&config.access, &request) {
        AccessDecision::Unrestricted => Ok(None),
        AccessDecision::NoRule => Err(refuse(format!("no access rule for {}", who()))),
        AccessDecision::Method(i, AccessMethod::Reject) => Err(refuse(format!(
            "access rule {} rejects the connection for {}",
            i + 1,
            who()
        ))),
        AccessDecision::Method(_, AccessMethod::ScramSha256) => {
            Ok(Some(ClientAuthMethod::ScramSha256))
        }
        AccessDecision::Method(_, AccessMethod::Md5) => Ok(Some(ClientAuthMethod::Md5)),
        AccessDecision::Method(_, AccessMethod::Cert) => Ok(Some(ClientAuthMethod::Cert)),
    }
}

/// Sends a CancelRequest where it belongs: the server one of our clients uses, or
/// the peer instance that issued the key (see `cancel` for the key layout).
/// Logs one line either way.
async fn forward_cancel(ctx: &ProxyContext, pid: i32, secret: &[u8], from: &str) {
    let config = ctx.config();
    let peering = cancel::Peering {
        own_id: config.peer_id,
        peers: &config.peers,
    };
    let timeout = config.server.cancel_timeout.0;
    let tls = &config.server.tls_loaded;
    let outcome = match ctx.cancels().route(pid, secret, &peering) {
        // `local` holds the client's server for it until the request is delivered.
        CancelRoute::Local(local) => match cancel_on_server(&local.target, tls, timeout).await {
            Ok(()) => {
                tracing::info!(%from, server = %local.target.address, "cancel request forwarded");
                "forwarded"
            }
            Err(e) => {
                tracing::warn!(
                    %from,
                    server = %local.target.address,
                    error = %e,
                    "cannot forward cancel request"
                );
                "failed"
            }
        },
        CancelRoute::Waiting(request) => {
            request.cancel();
            tracing::info!(%from, "cancel request: the client's request was waiting for a server; it is cancelled there");
            "waiting"
        }
        CancelRoute::Peer { peer, target } => match cancel::send_cancel(&target, timeout).await {
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
        },
        CancelRoute::Ignore(reason) => {
            tracing::info!(%from, pid, "cancel request ignored: {reason}");
            "ignored"
        }
    };
    metrics::counter!("switchyard_cancel_requests_total", "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> StartupParams {
        StartupParams {
            minor_version: 0,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn database_defaults_to_user_and_extras_pass_through() {
        let params = session_params(&startup(&[
            ("user", "app"),
            ("application_name", "psql"),
            ("_pq_.compression", "on"),
        ]))
        .expect("valid");
        assert_eq!(params.database, "app");
        assert_eq!(
            params.passthrough,
            vec![("application_name".into(), "psql".into())]
        );
        assert_eq!(
            params.protocol_options,
            vec!["_pq_.compression".to_string()]
        );
    }

    #[test]
    fn missing_user_and_replication_are_refused() {
        let err = session_params(&startup(&[("database", "x")])).expect_err("no user");
        assert_eq!(err.code, SqlState::InvalidAuthorization);
        let err = session_params(&startup(&[("user", "a"), ("replication", "database")]))
            .expect_err("replication");
        assert_eq!(err.code, SqlState::FeatureNotSupported);
        for off in ["false", "off", "0", "no", "f", "OFF", "n", "fals"] {
            assert!(
                session_params(&startup(&[("user", "a"), ("replication", off)])).is_ok(),
                "replication={off} is an ordinary connection"
            );
        }
        for on in ["true", "on", "1", "yes", "database", "T"] {
            let err = session_params(&startup(&[("user", "a"), ("replication", on)]))
                .expect_err("replication");
            assert_eq!(err.code, SqlState::FeatureNotSupported, "replication={on}");
        }
        // Several: each is read, the last decides.
        let twice = |a, b| {
            session_params(&startup(&[
                ("user", "u"),
                ("replication", a),
                ("replication", b),
            ]))
        };
        assert!(twice("true", "false").is_ok());
        assert_eq!(
            twice("false", "database")
                .expect_err("last is database")
                .code,
            SqlState::FeatureNotSupported
        );
        assert_eq!(
            twice("maybe", "false")
                .expect_err("a bad one anywhere")
                .code,
            SqlState::InvalidParameterValue
        );
        for bad in ["maybe", "o", "", "Database", "2"] {
            let err = session_params(&startup(&[("user", "a"), ("replication", bad)]))
                .expect_err("bad value");
            assert_eq!(
                err.code,
                SqlState::InvalidParameterValue,
                "replication={bad}"
            );
        }
    }
}
