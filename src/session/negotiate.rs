//! TLS negotiation on a listener that offers TLS, before the startup packet: an
//! SSLRequest answered 'S' and the handshake, a direct TLS ClientHello (PostgreSQL
//! 17's `sslnegotiation=direct`, ALPN `postgresql` required), GSSENCRequest
//! answered 'N', or a plaintext client whose first bytes stay in the reader. The
//! SSLRequest is read exactly (CVE-2021-23214). Listeners without TLS skip this.

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::handshake::{write_byte, HandshakeFailure};
use crate::protocol::startup::{Negotiation, StartupReader};
use crate::protocol::{tag, ClientError, SqlState};
use crate::tls::{ClientStream, ClientTls, ALPN_POSTGRESQL};

/// How a client on a TLS listener opened.
enum Start {
    /// Plaintext: its first packet (or its start) is in the reader.
    Plain,
    /// SSLRequest, answered 'S': the handshake follows.
    SslRequest,
    /// The first byte is a TLS record (a ClientHello): direct TLS negotiation.
    Direct,
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// On a listener with TLS: negotiates, then runs the TLS handshake when the client
/// asked for it, all before `deadline`. None when the connection ended here; the
/// reason was logged or told to the client.
pub(super) async fn start_tls(
    mut tcp: TcpStream,
    tls: &ClientTls,
    reader: &mut StartupReader,
    deadline: Instant,
    startup_timeout: std::time::Duration,
) -> Option<ClientStream> {
    let client = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let start = match tokio::time::timeout_at(deadline, negotiate(&mut tcp, reader)).await {
        Ok(Ok(start)) => start,
        Ok(Err(failure)) => {
            super::handshake_failed(&mut ClientStream::Plain(tcp), failure).await;
            return None;
        }
        Err(_) => {
            super::startup_timed_out(&mut ClientStream::Plain(tcp), startup_timeout).await;
            return None;
        }
    };
    let direct = match start {
        Start::Plain => return Some(ClientStream::Plain(tcp)),
        Start::SslRequest => false,
        Start::Direct => true,
    };
    match tokio::time::timeout_at(deadline, accept(tcp, tls, direct)).await {
        Ok(Ok(stream)) => Some(ClientStream::Tls(Box::new(stream))),
        Ok(Err(reason)) => {
            tracing::info!(%client, "TLS refused: {reason}");
            None
        }
        Err(_) => {
            tracing::info!(%client, "TLS refused: the handshake did not finish within {startup_timeout:?}");
            None
        }
    }
}

/// Reads the client's negotiation requests: GSSENCRequest gets 'N' (once),
/// SSLRequest gets 'S', a ClientHello is direct TLS; anything else is plaintext.
async fn negotiate(
    tcp: &mut TcpStream,
    reader: &mut StartupReader,
) -> Result<Start, HandshakeFailure> {
    let mut gss_answered = false;
    loop {
        let mut first = [0u8; 1];
        let peeked = tcp
            .peek(&mut first)
            .await
            .map_err(|e| HandshakeFailure::Gone(e.to_string()))?;
        if peeked == 0 {
            return Err(HandshakeFailure::Gone(
                "connection closed during startup".into(),
            ));
        }
        if first[0] == TLS_HANDSHAKE_RECORD {
            return Ok(Start::Direct);
        }
        match reader.negotiation_request(tcp).await? {
            Some(Negotiation::Ssl) => {
                if bytes_waiting(tcp) {
                    // Whatever came with the SSLRequest was sent in the clear and
                    // must not be read as if it came over TLS (CVE-2021-23214).
                    return Err(HandshakeFailure::Close(
                        "client sent data after its SSLRequest before TLS started; \
                         refusing TLS and closing"
                            .into(),
                    ));
                }
                write_byte(tcp, tag::ENCRYPTION_ACCEPTED).await?;
                return Ok(Start::SslRequest);
            }
            Some(Negotiation::GssEnc) if !gss_answered => {
                gss_answered = true;
                write_byte(tcp, tag::ENCRYPTION_REFUSED).await?;
            }
            Some(Negotiation::GssEnc) => {
                return Err(HandshakeFailure::Refuse(ClientError::fatal(
                    SqlState::ProtocolViolation,
                    "duplicate GSS negotiation request",
                )))
            }
            None => return Ok(Start::Plain),
        }
    }
}

/// Whether the client's socket holds unread bytes now (a non-blocking peek).
fn bytes_waiting(tcp: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(socket2::SockRef::from(tcp).peek(&mut probe), Ok(n) if n > 0)
}

/// The TLS handshake. Direct negotiation requires the client to offer ALPN
/// `postgresql`, as PostgreSQL 17 does; it is checked on the ClientHello, before
/// any key exchange.
async fn accept(
    tcp: TcpStream,
    tls: &ClientTls,
    direct: bool,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    let failed = |e: std::io::Error| format!("TLS handshake failed: {e}");
    if !direct {
        return tokio_rustls::TlsAcceptor::from(tls.server_config())
            .accept(tcp)
            .await
            .map_err(failed);
    }
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
        .await
        .map_err(failed)?;
    let offers_postgresql = start
        .client_hello()
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ALPN_POSTGRESQL));
    if !offers_postgresql {
        return Err(
            "direct TLS negotiation without ALPN \"postgresql\" (PostgreSQL requires it)".into(),
        );
    }
    start.into_stream(tls.server_config()).await.map_err(failed)
}
