//! Authenticating a connecting client against its user entry (configured, or
//! found by `auth_query`: see `user_lookup`), with
//! SCRAM-SHA-256 or MD5 (against a plaintext password, a SCRAM secret or an MD5
//! hash; a client that proves a SCRAM secret leaves its ClientKey for logging in
//! to servers), or with its TLS client certificate (`auth: cert`). On TLS, SCRAM
//! also offers SCRAM-SHA-256-PLUS with channel binding. Unknown users run the same
//! exchange against a mock verifier and get the same 28P01 as a wrong password, so
//! a client cannot probe for names.

use std::borrow::Cow;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::auth::stored::StoredPassword;
use crate::auth::{md5, scram};
use crate::config::ClientAuthMethod;
use crate::protocol::messages;
use crate::protocol::startup::{parse_password, parse_sasl_initial, StartupReader};
use crate::protocol::{ClientError, SqlState};
use crate::tls::{x509, ClientStream};
use crate::users::UserEntry;

use super::handshake::HandshakeFailure;

fn password_failed(user: &str) -> HandshakeFailure {
    HandshakeFailure::Refuse(ClientError::fatal(
        SqlState::InvalidPassword,
        format!("password authentication failed for user \"{user}\""),
    ))
}

fn protocol_violation(message: impl Into<String>) -> HandshakeFailure {
    HandshakeFailure::Refuse(ClientError::fatal(SqlState::ProtocolViolation, message))
}

async fn send(socket: &mut ClientStream, bytes: &[u8]) -> Result<(), HandshakeFailure> {
    let gone = |e: std::io::Error| HandshakeFailure::Gone(e.to_string());
    socket.write_all(bytes).await.map_err(gone)?;
    socket.flush().await.map_err(gone)
}

/// What the TLS layer tells authentication: the channel-binding data of the
/// certificate the client saw (SCRAM-SHA-256-PLUS is offered only with it), and
/// whether client certificates were verified on this connection.
#[derive(Clone, Copy, Default)]
pub struct TlsFacts<'a> {
    pub end_point: Option<&'a [u8]>,
    pub verifies_clients: bool,
}

/// Which exchange checks a user's clients.
enum Exchange<'a> {
    Scram(Cow<'a, scram::ScramVerifier>),
    Md5,
    Cert,
}

/// SCRAM for SCRAM users and for any user stored as a SCRAM secret (PostgreSQL
/// also answers an `md5` rule with SCRAM when it only has the secret); MD5
/// otherwise. `method` is the user's `auth`, or the matching `access:` rule's
/// method, which overrides it. An unknown user goes through the same exchange
/// its method would give a real one (SCRAM against a mock verifier, or MD5 that
/// cannot succeed), so the first message does not tell that the name is unknown.
fn exchange_for<'u>(
    user: &str,
    entry: Option<&'u UserEntry>,
    method: ClientAuthMethod,
) -> Exchange<'u> {
    let mock = || Exchange::Scram(Cow::Owned(scram::ScramVerifier::mock_for(user)));
    let Some(entry) = entry else {
        return match method {
            ClientAuthMethod::ScramSha256 => mock(),
            ClientAuthMethod::Md5 => Exchange::Md5,
            ClientAuthMethod::Cert => Exchange::Cert,
        };
    };
    match (method, entry.secret.stored(), &entry.verifier) {
        (ClientAuthMethod::Cert, _, _) => Exchange::Cert,
        (_, StoredPassword::ScramSecret(verifier), _) => Exchange::Scram(Cow::Borrowed(verifier)),
        (ClientAuthMethod::ScramSha256, _, Some(verifier)) => {
            Exchange::Scram(Cow::Borrowed(verifier))
        }
        // An MD5 hash cannot check SCRAM (validation refuses that pairing for a
        // user's own `auth`; an access rule may still ask for it).
        (ClientAuthMethod::ScramSha256, _, None) => mock(),
        (ClientAuthMethod::Md5, _, _) => Exchange::Md5,
    }
}

/// Runs the exchange for `user`, whose entry (configured, or found by
/// `auth_query`) is `entry`, None when there is no such user; on success
/// AuthenticationOk has been written to `out` (not yet sent, so it goes out
/// together with the session's first messages).
pub async fn authenticate<'u>(
    socket: &mut ClientStream,
    reader: &mut StartupReader,
    entry: Option<&'u UserEntry>,
    user: &str,
    rule_method: Option<ClientAuthMethod>,
    tls: TlsFacts<'_>,
    out: &mut BytesMut,
) -> Result<&'u UserEntry, HandshakeFailure> {
    let method = rule_method
        .or(entry.map(|entry| entry.method))
        .unwrap_or(ClientAuthMethod::ScramSha256);
    let accepted = match exchange_for(user, entry, method) {
        Exchange::Cert => {
            check_certificate(socket, user, tls)?;
            true
        }
        Exchange::Scram(verifier) => {
            let client_key =
                scram_exchange(socket, reader, verifier.into_owned(), tls.end_point, out).await?;
            if let (Some(key), Some(entry)) = (client_key, entry) {
                // Kept for logging in to servers when only the secret is known.
                entry.secret.learn_client_key(key);
            }
            client_key.is_some()
        }
        Exchange::Md5 => md5_exchange(socket, reader, user, entry).await?,
    };
    match entry {
        Some(entry) if accepted => {
            messages::authentication_ok(out);
            Ok(entry)
        }
        _ => Err(password_failed(user)),
    }
}

/// `auth: cert`: the client presented a certificate that rustls verified against
/// the listener's `client_ca`, and its common name is the user name (PostgreSQL's
/// `cert` method without a user map).
fn check_certificate(
    socket: &ClientStream,
    user: &str,
    tls: TlsFacts<'_>,
) -> Result<(), HandshakeFailure> {
    let failed = |why: &str| {
        HandshakeFailure::Refuse(ClientError::fatal(
            SqlState::InvalidAuthorization,
            format!("certificate authentication failed for user \"{user}\": {why}"),
        ))
    };
    if !tls.verifies_clients {
        return Err(failed(
            "this listener does not verify client certificates (no tls.client_ca)",
        ));
    }
    let Some(certificate) = socket.peer_certificate() else {
        return Err(failed("the client presented no certificate"));
    };
    match x509::common_name(certificate) {
        Ok(Some(name)) if name == user => Ok(()),
        Ok(Some(name)) => Err(failed(&format!(
            "the certificate's common name is \"{name}\""
        ))),
        Ok(None) => Err(failed("the certificate has no common name")),
        Err(e) => Err(failed(&e.to_string())),
    }
}

/// The client's ClientKey when it proved the password, None when it did not.
/// `end_point`: on TLS, the channel-binding data; SCRAM-SHA-256-PLUS is then
/// offered too.
async fn scram_exchange(
    socket: &mut ClientStream,
    reader: &mut StartupReader,
    verifier: scram::ScramVerifier,
    end_point: Option<&[u8]>,
    out: &mut BytesMut,
) -> Result<Option<[u8; 32]>, HandshakeFailure> {
    let offered: &[&str] = match end_point {
        // PostgreSQL lists the PLUS variant first.
        Some(_) => &[scram::SCRAM_SHA_256_PLUS, scram::SCRAM_SHA_256],
        None => &[scram::SCRAM_SHA_256],
    };
    send(socket, &messages::authentication_sasl(offered)).await?;
    let initial = reader.password_message(socket).await?;
    let (mechanism, data) = parse_sasl_initial(&initial)?;
    if !offered.iter().any(|m| m.as_bytes() == mechanism) {
        return Err(protocol_violation(
            "client selected an invalid SASL authentication mechanism",
        ));
    }
    let mut server = scram::ScramServer::new(verifier);
    if let Some(end_point) = end_point {
        let plus = mechanism == scram::SCRAM_SHA_256_PLUS.as_bytes();
        server.bind_channel(end_point.to_vec(), plus);
    }
    let server_first = server
        .handle_client_first(data)
        .map_err(|e| protocol_violation(e.to_string()))?;
    send(
        socket,
        &messages::authentication_sasl_continue(server_first),
    )
    .await?;
    let response = reader.password_message(socket).await?;
    match server.handle_client_final(&response) {
        Ok(server_final) => {
            messages::authentication_sasl_final(out, server_final);
            Ok(server.client_key())
        }
        Err(crate::auth::AuthError::InvalidProof) => Ok(None),
        Err(e) => Err(protocol_violation(e.to_string())),
    }
}

async fn md5_exchange(
    socket: &mut ClientStream,
    reader: &mut StartupReader,
    user: &str,
    entry: Option<&UserEntry>,
) -> Result<bool, HandshakeFailure> {
    let salt: [u8; 4] = rand::random();
    send(socket, &messages::authentication_md5(salt)).await?;
    let body = reader.password_message(socket).await?;
    let response = parse_password(&body)?;
    Ok(entry.is_some_and(|e| match e.secret.stored() {
        StoredPassword::Plain(password) => md5::verify_md5_response(user, password, salt, response),
        StoredPassword::Md5Hash(hash) => md5::verify_md5_response_from_hash(hash, salt, response),
        StoredPassword::ScramSecret(_) => false,
    }))
}
