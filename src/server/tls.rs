//! The TLS step of connecting to a PostgreSQL server, as libpq does it for each
//! `sslmode`: send an SSLRequest, read the one-byte answer, and on 'S' run the
//! rustls handshake with the node's configured client configuration
//! (`config::ServerTls`). Exactly one byte is read before the handshake and
//! anything the server sent beyond it refuses the connection (CVE-2021-23222: a
//! man in the middle must not get bytes accepted as if they came over TLS).
//! Used for logins and for cancel requests alike; for logins, `prefer` falls back
//! to a plaintext connection when the TLS attempt fails, as libpq does.

use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{KeepaliveConfig, ServerTlsMode, TlsPolicy};
use crate::protocol::{messages, tag};

use super::stream::ServerStream;
use super::ServerError;

/// Connects to `address` (TCP_NODELAY, `keepalive`) and negotiates TLS as `policy`
/// says. As libpq does for `prefer`, a failed TLS attempt is followed by a second,
/// plaintext connection. The caller bounds the time.
pub async fn open(
    address: &str,
    keepalive: &KeepaliveConfig,
    policy: &TlsPolicy,
) -> Result<ServerStream, ServerError> {
    let tcp = connect_tcp(address, keepalive).await?;
    match negotiate(tcp, policy, address).await {
        Err(ServerError::Tls { reason, .. }) if policy.mode == ServerTlsMode::Prefer => {
            tracing::warn!(%address, %reason, "TLS failed; server.tls is prefer, so connecting again without TLS");
            Ok(ServerStream::Plain(connect_tcp(address, keepalive).await?))
        }
        other => other,
    }
}

async fn connect_tcp(address: &str, keepalive: &KeepaliveConfig) -> Result<TcpStream, ServerError> {
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|source| ServerError::Connect {
            address: address.to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    super::socket::apply_keepalive(&tcp, keepalive, address);
    Ok(tcp)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ServerTls, ServerTlsMode};
    use tokio::net::TcpListener;

    /// A server that reads the 8-byte SSLRequest and answers `reply`.
    async fn answering(reply: &'static [u8]) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = vec![0u8; 8];
            socket.read_exact(&mut request).await.expect("SSLRequest");
            socket.write_all(reply).await.expect("reply");
            // Keep the socket open until the client is done with it.
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest).await;
            request
        });
        (address, server)
    }

    fn policy(mode: ServerTlsMode) -> TlsPolicy {
        let prefer = ServerTls::default();
        TlsPolicy {
            mode,
            connector: prefer.for_address("x:1").connector.clone(),
        }
    }

    async fn outcome(reply: &'static [u8], mode: ServerTlsMode) -> Result<bool, ServerError> {
        let (address, server) = answering(reply).await;
        let tcp = TcpStream::connect(&address).await.expect("connect");
        let result = negotiate(tcp, &policy(mode), &address)
            .await
            .map(|stream| matches!(stream, ServerStream::Tls(_)));
        server.abort();
        result
    }

    #[tokio::test]
    async fn prefer_falls_back_on_n_and_require_refuses() {
        assert!(!outcome(b"N", ServerTlsMode::Prefer)
            .await
            .expect("plaintext"));
        match outcome(b"N", ServerTlsMode::Require).await {
            Err(ServerError::Tls { reason, .. }) => {
                assert!(reason.contains("does not accept TLS"), "{reason}")
            }
            other => panic!("expected a TLS error, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn bytes_after_s_before_the_handshake_are_refused() {
        // 'S' followed at once by bytes that did not come over TLS.
        let (address, server) = answering(b"SE\0\0\0\x08junk").await;
        let tcp = TcpStream::connect(&address).await.expect("connect");
        // The answer and the junk go out in one write, so they arrive together.
        let result = negotiate(tcp, &policy(ServerTlsMode::Require), &address).await;
        server.abort();
        match result {
            Err(ServerError::Tls { reason, .. }) => {
                assert!(reason.contains("CVE-2021-23222"), "{reason}")
            }
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn an_answer_other_than_s_or_n_is_a_protocol_error() {
        assert!(matches!(
            outcome(b"X", ServerTlsMode::Prefer).await,
            Err(ServerError::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn disable_sends_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let tcp = TcpStream::connect(&address).await.expect("connect");
        let (mut accepted, _) = listener.accept().await.expect("accept");
        let stream = negotiate(tcp, &TlsPolicy::plaintext(), &address)
            .await
            .expect("plain");
        assert!(matches!(stream, ServerStream::Plain(_)));
        drop(stream);
        let mut sent = Vec::new();
        accepted.read_to_end(&mut sent).await.expect("read");
        assert!(sent.is_empty(), "no SSLRequest: {sent:?}");
    }
}
