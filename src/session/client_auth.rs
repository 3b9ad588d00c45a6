//! Authenticating a connecting client against the configured users, with
//! SCRAM-SHA-256 or MD5 (against a plaintext password, a SCRAM secret or an MD5
//! hash; a client that proves a SCRAM secret leaves its ClientKey for logging in
//! to servers). Unknown users run the same exchange against a mock verifier
//! and get the same 28P01 as a wrong password, so a client cannot probe for names.

use std::borrow::Cow;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::auth::stored::StoredPassword;
use crate::auth::{md5, scram};
use crate::config::ClientAuthMethod;
use crate::protocol::messages;
use crate::protocol::startup::{parse_password, parse_sasl_initial, StartupReader};
use crate::protocol::{ClientError, SqlState};
use crate::users::{UserDb, UserEntry};

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

async fn send(socket: &mut TcpStream, bytes: &[u8]) -> Result<(), HandshakeFailure> {
    socket
        .write_all(bytes)
        .await
        .map_err(|e| HandshakeFailure::Gone(e.to_string()))
}

/// Which exchange checks a user's clients.
enum Exchange<'a> {
    Scram(Cow<'a, scram::ScramVerifier>),
    Md5,
}

/// SCRAM for SCRAM users and for any user stored as a SCRAM secret (PostgreSQL
/// also answers an `md5` rule with SCRAM when it only has the secret); MD5
/// otherwise. Unknown users go through SCRAM against the mock verifier.
fn exchange_for<'u>(user: &str, entry: Option<&'u UserEntry>) -> Exchange<'u> {
    let Some(entry) = entry else {
        return Exchange::Scram(Cow::Owned(scram::ScramVerifier::mock_for(user)));
    };
    match (entry.method, entry.secret.stored(), &entry.verifier) {
        (_, StoredPassword::ScramSecret(verifier), _) => Exchange::Scram(Cow::Borrowed(verifier)),
        (ClientAuthMethod::ScramSha256, _, Some(verifier)) => {
            Exchange::Scram(Cow::Borrowed(verifier))
        }
        // An MD5 hash cannot check SCRAM (validation refuses that pairing).
        (ClientAuthMethod::ScramSha256, _, None) => {
            Exchange::Scram(Cow::Owned(scram::ScramVerifier::mock_for(user)))
        }
        (ClientAuthMethod::Md5, _, _) => Exchange::Md5,
    }
}

/// Runs the exchange; on success AuthenticationOk has been written to `out` (not yet
/// sent, so it goes out together with the session's first messages).
pub async fn authenticate<'u>(
    socket: &mut TcpStream,
    reader: &mut StartupReader,
    users: &'u UserDb,
    user: &str,
    out: &mut BytesMut,
) -> Result<&'u UserEntry, HandshakeFailure> {
    let entry = users.get(user);
    let accepted = match exchange_for(user, entry) {
        Exchange::Scram(verifier) => {
            let client_key = scram_exchange(socket, reader, verifier.into_owned(), out).await?;
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

/// The client's ClientKey when it proved the password, None when it did not.
async fn scram_exchange(
    socket: &mut TcpStream,
    reader: &mut StartupReader,
    verifier: scram::ScramVerifier,
    out: &mut BytesMut,
) -> Result<Option<[u8; 32]>, HandshakeFailure> {
    send(
        socket,
        &messages::authentication_sasl(&[scram::SCRAM_SHA_256]),
    )
    .await?;
    let initial = reader.password_message(socket).await?;
    let (mechanism, data) = parse_sasl_initial(&initial)?;
    if mechanism != scram::SCRAM_SHA_256.as_bytes() {
        return Err(protocol_violation(
            "client selected an invalid SASL authentication mechanism",
        ));
    }
    let mut server = scram::ScramServer::new(verifier);
    let server_first = server
        .handle_client_first(data)
        .map_err(|e| protocol_violation(format!("malformed SCRAM message: {e}")))?;
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
        Err(e) => Err(protocol_violation(format!("malformed SCRAM message: {e}"))),
    }
}

async fn md5_exchange(
    socket: &mut TcpStream,
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
