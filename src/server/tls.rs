//! The TLS step of connecting to a PostgreSQL server, as libpq does it for each
//! `sslmode`: send an SSLRequest, read the one-byte answer, and on 'S' run the
//! rustls handshake with the node's configured client configuration
//! (`config::ServerTls`). Exactly one byte is read before the handshake and
//! anything the server sent beyond it refuses the connection (CVE-2021-23222: a
//! man in the middle must not get bytes accepted as if they came over TLS).
//! Used for logins and for cancel requests alike.

use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::TlsPolicy;
use crate::protocol::{messages, tag};

use super::stream::ServerStream;
use super::ServerError;

/// Negotiates TLS on a fresh connection to `address` (`host:port`) as `policy` says.
/// The caller bounds the time.
pub async fn negotiate(
    mut tcp: TcpStream,
    policy: &TlsPolicy,
    address: &str,
) -> Result<ServerStream, ServerError> {
    let Some(connector) = &policy.connector else {
        return Ok(ServerStream::Plain(tcp));
    };
    let io_error = |source| ServerError::Io {
        address: address.to_string(),
        source,
    };
    tcp.write_all(&messages::ssl_request())
        .await
        .map_err(io_error)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io_error)?;
    match answer[0] {
        tag::ENCRYPTION_ACCEPTED => {}
        tag::ENCRYPTION_REFUSED if policy.mode.allows_plaintext() => {
            return Ok(ServerStream::Plain(tcp));
        }
        tag::ENCRYPTION_REFUSED => {
            return Err(tls_error(
                address,
                format!(
                    "the server does not accept TLS (it answered 'N' to SSLRequest) and \
                     server.tls is {}",
                    policy.mode.as_str()
                ),
            ))
        }
        tag::ERROR_RESPONSE => {
            return Err(tls_error(
                address,
                "the server answered SSLRequest with an error (a server older than 7.0?)",
            ))
        }
        other => {
            return Err(ServerError::Protocol(format!(
                "{address} answered SSLRequest with byte {other:#04x}, neither 'S' nor 'N'"
            )))
        }
    }
    refuse_early_bytes(&tcp, address)?;
    let name = server_name(address)?;
    let handshake = TlsConnector::from(Arc::clone(connector)).connect(name, tcp);
    match handshake.await {
        Ok(stream) => Ok(ServerStream::Tls(Box::new(stream))),
        Err(e) => Err(tls_error(
            address,
            format!(
                "TLS handshake failed (server.tls: {}): {e}",
                policy.mode.as_str()
            ),
        )),
    }
}

/// After 'S' the server must wait for our ClientHello; bytes already waiting were
/// not sent over TLS and must not be read as if they were.
fn refuse_early_bytes(tcp: &TcpStream, address: &str) -> Result<(), ServerError> {
    let mut probe = [0u8; 1];
    match tcp.try_read(&mut probe) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Ok(0) => Err(tls_error(
            address,
            "the server closed the connection after 'S'",
        )),
        Ok(_) => Err(tls_error(
            address,
            "the server sent data after 'S' before the TLS handshake (CVE-2021-23222); refused",
        )),
        Err(source) => Err(ServerError::Io {
            address: address.to_string(),
            source,
        }),
    }
}

/// The name the certificate must carry: the host part of `address` (a DNS name or
/// an IP address, checked against the certificate's subjectAltName).
fn server_name(address: &str) -> Result<ServerName<'static>, ServerError> {
    let host = crate::config::split_host(address).unwrap_or(address);
    ServerName::try_from(host.to_string()).map_err(|e| {
        tls_error(
            address,
            format!("{host:?} is not a usable TLS server name: {e}"),
        )
    })
}

fn tls_error(address: &str, reason: impl Into<String>) -> ServerError {
    ServerError::Tls {
        address: address.to_string(),
        reason: reason.into(),
    }
}
