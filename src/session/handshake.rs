//! The pre-session phase of a client connection: answer SSLRequest/GSSENCRequest
//! (with 'N': this build has no TLS on the client side), then take a CancelRequest
//! (passed on to whoever owns the key) or a StartupMessage, check the startup
//! parameters a session needs, and authenticate the client.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::client_auth;
use crate::cancel::{self, CancelRoute};
use crate::context::ProxyContext;
use crate::protocol::messages;
use crate::protocol::startup::{FirstPacket, StartupError, StartupParams, StartupReader};
use crate::protocol::{ClientError, SqlState};
use crate::server::cancel::send_cancel as cancel_on_server;

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
/// GSSENCRequest is answered 'N' at most once, as PostgreSQL does.
pub async fn read_opening(
    socket: &mut TcpStream,
    reader: &mut StartupReader,
) -> Result<Opening, HandshakeFailure> {
    let (mut ssl_answered, mut gss_answered) = (false, false);
    loop {
        match reader.first_packet(socket).await? {
            FirstPacket::SslRequest if !ssl_answered => {
                ssl_answered = true;
                write_refusal(socket).await?;
            }
            FirstPacket::GssEncRequest if !gss_answered => {
                gss_answered = true;
                write_refusal(socket).await?;
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

async fn write_refusal(socket: &mut TcpStream) -> Result<(), HandshakeFailure> {
    socket
        .write_all(b"N")
        .await
        .map_err(|e| HandshakeFailure::Gone(e.to_string()))
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
    if let Some(replication) = startup.get("replication") {
        check_replication(replication)?;
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
/// replication connection, which is refused; a false boolean is an ordinary one.
fn check_replication(value: &str) -> Result<(), ClientError> {
    let replication = value == "database"
        || parse_bool(value).ok_or_else(|| {
            ClientError::fatal(
                SqlState::InvalidParameterValue,
                format!("invalid value for parameter \"replication\": \"{value}\""),
            )
            .with_hint("Valid values are: \"false\", 0, \"true\", 1, \"database\".")
        })?;
    if replication {
        return Err(ClientError::fatal(
            SqlState::FeatureNotSupported,
            "replication connections are not supported through Switchyard",
        )
        .with_hint("Connect replication clients to the PostgreSQL node directly."));
    }
    Ok(())
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
}

/// Handshake and client authentication; None when the connection was a cancel
/// request.
pub(super) async fn open(
    socket: &mut TcpStream,
    ctx: &ProxyContext,
) -> Result<Option<Opened>, HandshakeFailure> {
    let mut reader = StartupReader::default();
    let startup = match read_opening(socket, &mut reader).await? {
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
    let params = session_params(&startup).map_err(HandshakeFailure::Refuse)?;
    if let Some(negotiation) = protocol_negotiation(&startup, &params) {
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
        CancelRoute::Local(target) => match cancel_on_server(&target, tls, timeout).await {
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
