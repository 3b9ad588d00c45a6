//! Opening a server connection: TCP connect, StartupMessage (protocol 3.0), answering
//! the authentication the server asks for if `require_auth` allows it
//! ([`super::authenticate`]), then collecting ParameterStatus and BackendKeyData
//! until ReadyForQuery. The whole exchange runs under one timeout; the socket gets
//! TCP keepalive ([`super::socket`]) and, before the StartupMessage, TLS as the
//! node's policy says ([`super::tls::open`]).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncRead;

use crate::auth::require::RequireAuth;
use crate::auth::stored::Credential;
use crate::config::{KeepaliveConfig, TlsPolicy};
use crate::protocol::backend;
use crate::protocol::messages;
use crate::protocol::startup::{read_message, StartupError};
use crate::protocol::tag;

use super::authenticate::authenticate;
use super::{ServerConnection, ServerError};

/// Server messages during login are small, but an ErrorResponse or a NoticeResponse
/// can carry a long detail; this bounds what a broken server can make us allocate.
const MAX_LOGIN_MESSAGE: usize = 1 << 20;

/// Who to log in as, and the startup parameters to pass on.
pub struct LoginRequest<'a> {
    pub user: &'a str,
    /// A password, an MD5 hash, or a client's SCRAM keys (pass-through).
    pub credential: Credential<'a>,
    pub database: &'a str,
    /// Extra startup parameters (application_name, options, ...), not user/database.
    pub params: &'a [(String, String)],
    /// The authentication methods the server may ask for (`server.require_auth`).
    pub require_auth: RequireAuth,
}

/// [`connect_with`] the default TCP keepalive.
pub async fn connect(
    node: &str,
    address: &str,
    login: &LoginRequest<'_>,
    timeout: Duration,
    tls: &TlsPolicy,
) -> Result<ServerConnection, ServerError> {
    connect_with(
        node,
        address,
        login,
        timeout,
        &KeepaliveConfig::default(),
        tls,
    )
    .await
}

/// Connects and logs in within `timeout`; the socket gets `keepalive`, then TLS as
/// `tls` says.
pub async fn connect_with(
    node: &str,
    address: &str,
    login: &LoginRequest<'_>,
    timeout: Duration,
    keepalive: &KeepaliveConfig,
    tls: &TlsPolicy,
) -> Result<ServerConnection, ServerError> {
    let attempt = connect_inner(node, address, login, keepalive, tls);
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ServerError::Timeout {
            address: address.to_string(),
            after: timeout,
        }),
    }
}

async fn connect_inner(
    node: &str,
    address: &str,
    login: &LoginRequest<'_>,
    keepalive: &KeepaliveConfig,
    tls: &TlsPolicy,
) -> Result<ServerConnection, ServerError> {
    let mut stream = super::tls::open(address, keepalive, tls).await?;
    let io_error = |source| ServerError::Io {
        address: address.to_string(),
        source,
    };
    let mut params = vec![
        ("user".to_string(), login.user.to_string()),
        ("database".to_string(), login.database.to_string()),
    ];
    params.extend(login.params.iter().cloned());
    stream
        .send(&messages::startup(&params))
        .await
        .map_err(io_error)?;
    authenticate(&mut stream, address, login).await?;
    let now = std::time::Instant::now();
    let mut connection = ServerConnection {
        stream,
        node: node.to_string(),
        address: address.to_string(),
        params: Vec::new(),
        params_digest: super::params_digest(&[]),
        standby: false,
        backend_pid: 0,
        backend_secret: 0,
        cancel: Default::default(),
        created_at: now,
        idle_since: now,
        applied: Default::default(),
        statements: Default::default(),
        home: crate::workers::current(),
    };
    collect_until_ready(&mut connection).await?;
    Ok(connection)
}

/// Reads one message of the login (at most 1 MiB); an ErrorResponse becomes
/// [`ServerError::Rejected`].
pub(super) async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    address: &str,
) -> Result<(u8, BytesMut), ServerError> {
    let (tag, body) = read_message(stream, MAX_LOGIN_MESSAGE)
        .await
        .map_err(|e| match e {
            StartupError::Io(source) => ServerError::Io {
                address: address.to_string(),
                source,
            },
            other => ServerError::Protocol(other.to_string()),
        })?;
    if tag == tag::ERROR_RESPONSE {
        return Err(ServerError::rejected(&body));
    }
    Ok((tag, body))
}

async fn collect_until_ready(connection: &mut ServerConnection) -> Result<(), ServerError> {
    loop {
        let (tag, body) = read(&mut connection.stream, &connection.address).await?;
        let malformed = |e: backend::MalformedServerMessage| ServerError::Protocol(e.to_string());
        match tag {
            tag::PARAMETER_STATUS => {
                let (name, value) = backend::parse_parameter_status(&body).map_err(malformed)?;
                connection.note_parameter(name, value);
            }
            tag::BACKEND_KEY_DATA => {
                let (pid, secret) = backend::parse_backend_key_data(&body).map_err(malformed)?;
                connection.backend_pid = pid;
                connection.backend_secret = secret;
                connection.cancel = crate::cancel::CancelTarget {
                    address: connection.address.clone(),
                    pid,
                    secret,
                };
            }
            tag::READY_FOR_QUERY => return Ok(()),
            // NoticeResponse and NegotiateProtocolVersion need no action.
            tag::NOTICE_RESPONSE | tag::NEGOTIATE_PROTOCOL_VERSION => {}
            other => {
                return Err(ServerError::Protocol(format!(
                    "unexpected message type {:?} during login",
                    other as char
                )))
            }
        }
    }
}
