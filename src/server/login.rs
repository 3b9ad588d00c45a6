//! Opening a server connection: TCP connect, StartupMessage (protocol 3.0), answering
//! whatever authentication the server asks for (SCRAM-SHA-256, MD5, cleartext,
//! trust), then collecting ParameterStatus and BackendKeyData until ReadyForQuery.
//! The whole exchange runs under one timeout; the socket gets TCP keepalive
//! ([`super::socket`]) and, before the StartupMessage, TLS as the node's policy
//! says ([`super::tls::open`]).

use std::time::Duration;

use bytes::BytesMut;

use crate::auth::stored::Credential;
use crate::auth::{md5, scram};
use crate::config::{KeepaliveConfig, TlsPolicy};
use crate::protocol::backend::{self, AuthRequest};
use crate::protocol::messages;
use crate::protocol::startup::{read_message, StartupError};
use crate::protocol::tag;

use super::stream::ServerStream;
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
    };
    collect_until_ready(&mut connection).await?;
    Ok(connection)
}

pub(super) async fn read(
    stream: &mut ServerStream,
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

/// The server asks for a method the configured credential cannot answer.
fn cannot_answer(method: &str) -> ServerError {
    ServerError::Auth(format!(
        "the server asks for {method}, which the stored form of this user's password \
         cannot answer (a SCRAM secret answers only SCRAM, an MD5 hash only MD5)"
    ))
}

async fn authenticate(
    stream: &mut ServerStream,
    address: &str,
    login: &LoginRequest<'_>,
) -> Result<(), ServerError> {
    let mut scram: Option<scram::ScramClient> = None;
    loop {
        let (tag, body) = read(stream, address).await?;
        if tag != tag::AUTHENTICATION {
            return Err(ServerError::Protocol(format!(
                "expected an authentication request, got message type {:?}",
                tag as char
            )));
        }
        let request =
            backend::parse_auth_request(&body).map_err(|e| ServerError::Protocol(e.to_string()))?;
        let reply = match request {
            AuthRequest::Ok => return Ok(()),
            AuthRequest::Cleartext => match login.credential {
                Credential::Password(password) => messages::password(password),
                _ => return Err(cannot_answer("a cleartext password")),
            },
            AuthRequest::Md5 { salt } => match login.credential {
                Credential::Password(password) => {
                    messages::password(&md5::md5_response(login.user, password, salt))
                }
                Credential::Md5Hash(hash) => {
                    messages::password(&md5::md5_response_from_hash(hash, salt))
                }
                Credential::ScramKeys { .. } => return Err(cannot_answer("MD5")),
            },
            AuthRequest::Sasl { mechanisms } => {
                if !mechanisms
                    .iter()
                    .any(|m| *m == scram::SCRAM_SHA_256.as_bytes())
                {
                    return Err(ServerError::Auth(
                        "server offers no SASL mechanism we support (need SCRAM-SHA-256)".into(),
                    ));
                }
                let client = match login.credential {
                    Credential::Password(password) => scram::ScramClient::new(password),
                    Credential::ScramKeys {
                        client_key,
                        verifier,
                    } => scram::ScramClient::from_client_key(client_key, verifier),
                    Credential::Md5Hash(_) => return Err(cannot_answer("SCRAM-SHA-256")),
                };
                let first = client.client_first();
                scram = Some(client);
                messages::sasl_initial_response(scram::SCRAM_SHA_256, first)
            }
            AuthRequest::SaslContinue(data) => {
                let client = scram.as_mut().ok_or_else(|| {
                    ServerError::Protocol("SASL continue before SASL start".into())
                })?;
                let final_message = client
                    .handle_server_first(data)
                    .map_err(|e| ServerError::Auth(e.to_string()))?;
                messages::sasl_response(final_message)
            }
            AuthRequest::SaslFinal(data) => {
                let client = scram
                    .as_ref()
                    .ok_or_else(|| ServerError::Protocol("SASL final before SASL start".into()))?;
                client
                    .verify_server_final(data)
                    .map_err(|e| ServerError::Auth(format!("server signature: {e}")))?;
                continue;
            }
            AuthRequest::Unsupported(code) => {
                return Err(ServerError::Auth(format!(
                    "server asks for authentication method {code}, which a proxy cannot use"
                )))
            }
        };
        stream
            .send(&reply)
            .await
            .map_err(|source| ServerError::Io {
                address: address.to_string(),
                source,
            })?;
    }
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
