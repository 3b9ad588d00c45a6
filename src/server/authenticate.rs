//! The authentication part of a server login: answering whatever the server asks
//! for (SCRAM-SHA-256, MD5, cleartext, nothing) with the user's credential, but
//! only what `require_auth` allows ([`crate::auth::require`]), checked before
//! anything is sent; and a SCRAM exchange is finished only by a valid server
//! signature, so an `AuthenticationOk` that comes before it is refused. PBKDF2
//! runs on the bounded blocking pool ([`crate::auth::kdf`]). Generic over the
//! stream so a TLS socket logs in the same way.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::auth::require::ServerAuthMethod;
use crate::auth::stored::Credential;
use crate::auth::{kdf, md5, scram};
use crate::protocol::backend::{self, AuthRequest};
use crate::protocol::messages;
use crate::protocol::tag;

use super::{LoginRequest, ServerError};

/// How far the exchange has come.
enum Progress {
    /// The server has asked for nothing yet.
    Nothing,
    /// A password (cleartext or MD5) was sent; the server decides.
    PasswordSent,
    /// A SCRAM exchange is under way; `None` while its client is on the blocking pool.
    Scram(Option<scram::ScramClient>),
    /// The server's SCRAM signature verified.
    ScramVerified,
}

/// Runs the authentication exchange after the StartupMessage was sent, until
/// `AuthenticationOk`.
pub(super) async fn authenticate<S>(
    stream: &mut S,
    address: &str,
    login: &LoginRequest<'_>,
) -> Result<(), ServerError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut progress = Progress::Nothing;
    loop {
        let body = read_auth_request(stream, address).await?;
        let request =
            backend::parse_auth_request(&body).map_err(|e| ServerError::Protocol(e.to_string()))?;
        let reply = match request {
            AuthRequest::Ok => return accept_ok(&progress, login),
            AuthRequest::Cleartext => {
                allow(login, ServerAuthMethod::Password)?;
                first_request(&progress)?;
                progress = Progress::PasswordSent;
                match login.credential {
                    Credential::Password(password) => messages::password(password),
                    _ => return Err(cannot_answer("a cleartext password")),
                }
            }
            AuthRequest::Md5 { salt } => {
                allow(login, ServerAuthMethod::Md5)?;
                first_request(&progress)?;
                progress = Progress::PasswordSent;
                md5_reply(login, salt)?
            }
            AuthRequest::Sasl { mechanisms } => {
                allow(login, ServerAuthMethod::ScramSha256)?;
                first_request(&progress)?;
                let (client, reply) = start_scram(login, &mechanisms)?;
                progress = Progress::Scram(Some(client));
                reply
            }
            AuthRequest::SaslContinue(data) => {
                let Progress::Scram(slot) = &mut progress else {
                    return Err(ServerError::Protocol(
                        "SASL continue before SASL start".into(),
                    ));
                };
                let client = slot.take().ok_or_else(|| {
                    ServerError::Protocol("a second SASL continue message".into())
                })?;
                let (client, reply) = server_first(client, data).await?;
                *slot = Some(client);
                messages::sasl_response(reply)
            }
            AuthRequest::SaslFinal(data) => {
                let Progress::Scram(Some(client)) = &progress else {
                    return Err(ServerError::Protocol(
                        "SASL final before the SCRAM exchange reached it".into(),
                    ));
                };
                client
                    .verify_server_final(data)
                    .map_err(|e| ServerError::Auth(format!("server signature: {e}")))?;
                progress = Progress::ScramVerified;
                continue;
            }
            AuthRequest::Unsupported(code) => {
                return Err(ServerError::Auth(format!(
                    "server asks for authentication method {code}, which a proxy cannot use"
                )))
            }
        };
        stream
            .write_all(&reply)
            .await
            .map_err(|source| ServerError::Io {
                address: address.to_string(),
                source,
            })?;
    }
}

/// Reads the next message, which must be an authentication request; an
/// ErrorResponse becomes [`ServerError::Rejected`].
async fn read_auth_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    address: &str,
) -> Result<BytesMut, ServerError> {
    match super::login::read(stream, address).await? {
        (tag::AUTHENTICATION, body) => Ok(body),
        (other, _) => Err(ServerError::Protocol(format!(
            "expected an authentication request, got message type {:?}",
            other as char
        ))),
    }
}

/// A password or SASL request must be the server's first: one that switches
/// methods mid-exchange (say, to cleartext after SCRAM began) is refused.
fn first_request(progress: &Progress) -> Result<(), ServerError> {
    match progress {
        Progress::Nothing => Ok(()),
        _ => Err(ServerError::Protocol(
            "the server asked for a second authentication exchange".into(),
        )),
    }
}

fn allow(login: &LoginRequest<'_>, method: ServerAuthMethod) -> Result<(), ServerError> {
    login
        .require_auth
        .check(method)
        .map_err(|e| ServerError::Auth(e.to_string()))
}

/// `AuthenticationOk` ends the exchange only when what happened is allowed: a
/// SCRAM exchange must have verified the server's signature (a server that skips
/// it has not proved it knows the verifier), and no exchange at all is `none`.
fn accept_ok(progress: &Progress, login: &LoginRequest<'_>) -> Result<(), ServerError> {
    match progress {
        Progress::ScramVerified | Progress::PasswordSent => Ok(()),
        Progress::Scram(_) => Err(ServerError::Auth(
            "the server sent AuthenticationOk before the SCRAM exchange finished \
             (no valid server signature): it has not proved it knows the password"
                .into(),
        )),
        Progress::Nothing => allow(login, ServerAuthMethod::None),
    }
}

/// The server asks for a method the configured credential cannot answer.
fn cannot_answer(method: &str) -> ServerError {
    ServerError::Auth(format!(
        "the server asks for {method}, which the stored form of this user's password \
         cannot answer (a SCRAM secret answers only SCRAM, an MD5 hash only MD5)"
    ))
}

fn md5_reply(login: &LoginRequest<'_>, salt: [u8; 4]) -> Result<bytes::Bytes, ServerError> {
    Ok(match login.credential {
        Credential::Password(password) => {
            messages::password(&md5::md5_response(login.user, password, salt))
        }
        Credential::Md5Hash(hash) => messages::password(&md5::md5_response_from_hash(hash, salt)),
        Credential::ScramKeys { .. } => return Err(cannot_answer("MD5")),
    })
}

fn start_scram(
    login: &LoginRequest<'_>,
    mechanisms: &[&[u8]],
) -> Result<(scram::ScramClient, bytes::Bytes), ServerError> {
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
    let first = messages::sasl_initial_response(scram::SCRAM_SHA_256, client.client_first());
    Ok((client, first))
}

/// Answers the server-first-message. With a password that runs PBKDF2, so the
/// client moves to the blocking pool and back.
async fn server_first(
    mut client: scram::ScramClient,
    data: &[u8],
) -> Result<(scram::ScramClient, Vec<u8>), ServerError> {
    let auth_error = |e: crate::auth::AuthError| ServerError::Auth(e.to_string());
    if !client.derives_keys() {
        let reply = client.handle_server_first(data).map_err(auth_error)?;
        return Ok((client, reply));
    }
    let data = data.to_vec();
    let (client, reply) = kdf::run(move || {
        let reply = client.handle_server_first(&data);
        (client, reply)
    })
    .await
    .map_err(|e| ServerError::Auth(e.to_string()))?;
    Ok((client, reply.map_err(auth_error)?))
}
