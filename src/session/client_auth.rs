//! Authenticating a connecting client against the configured users, with
//! SCRAM-SHA-256 or MD5. Unknown users run the same exchange against a mock verifier
//! and get the same 28P01 as a wrong password, so a client cannot probe for names.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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
    let method = entry.map_or(ClientAuthMethod::ScramSha256, |e| e.method);
    let accepted = match method {
        ClientAuthMethod::ScramSha256 => {
            let verifier = entry.map_or_else(|| users.mock_verifier(), |e| &e.verifier);
            scram_exchange(socket, reader, verifier.clone(), out).await?
        }
        ClientAuthMethod::Md5 => md5_exchange(socket, reader, user, entry).await?,
    };
    match entry {
        Some(entry) if accepted => {
            messages::authentication_ok(out);
            Ok(entry)
        }
        _ => Err(password_failed(user)),
    }
}

/// Returns whether the client proved the password.
async fn scram_exchange(
    socket: &mut TcpStream,
    reader: &mut StartupReader,
    verifier: scram::ScramVerifier,
    out: &mut BytesMut,
) -> Result<bool, HandshakeFailure> {
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
            Ok(true)
        }
        Err(crate::auth::AuthError::InvalidProof) => Ok(false),
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
    Ok(entry.is_some_and(|e| md5::verify_md5_response(user, e.password.expose(), salt, response)))
}
