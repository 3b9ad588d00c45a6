//! A client connection after negotiation: plain TCP or TLS over it. One enum, so
//! the plaintext path is a match on a tag and a direct call into `TcpStream` (no
//! boxing per message, no extra copy); the TLS state is boxed once per connection.
//!
//! Writers must `flush` after a write that ends a reply: rustls may keep
//! ciphertext it could not send at once until the next write or flush (for plain
//! TCP a flush does nothing).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, TcpStream};
use tokio_rustls::server::TlsStream;

type Tls = TlsStream<TcpStream>;

pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

/// What a session logs and shows about its TLS connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: &'static str,
    /// The IANA-style suite name rustls uses, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: &'static str,
}

impl std::fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.version, self.cipher)
    }
}

impl ClientStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(tcp) => tcp,
            ClientStream::Tls(tls) => tls.get_ref().0,
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// Version and cipher suite when the client is on TLS.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        let ClientStream::Tls(tls) = self else {
            return None;
        };
        let connection = tls.get_ref().1;
        let version = match connection.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        let cipher = connection
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or("unknown");
        Some(TlsInfo { version, cipher })
    }

    /// The client's certificate (the end entity), when it presented one; rustls
    /// verified it against the listener's `client_ca` during the handshake.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        let ClientStream::Tls(tls) = self else {
            return None;
        };
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.as_ref())
    }

    /// Waits until a read would make progress. For TLS, decrypted bytes rustls
    /// already holds count; otherwise the socket must be readable.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            ClientStream::Plain(tcp) => tcp.readable().await,
            ClientStream::Tls(tls) => {
                std::future::poll_fn(|cx| {
                    let (tcp, connection) = tls.get_ref();
                    if !connection.wants_read() {
                        return Poll::Ready(Ok(()));
                    }
                    tcp.poll_read_ready(cx)
                })
                .await
            }
        }
    }

    /// Borrowed read and write halves, usable at the same time.
    pub fn split(&mut self) -> (ClientReader<'_>, ClientWriter<'_>) {
        match self {
            ClientStream::Plain(tcp) => {
                let (reader, writer) = tcp.split();
                (ClientReader::Plain(reader), ClientWriter::Plain(writer))
            }
            ClientStream::Tls(tls) => {
                let (reader, writer) = tokio::io::split(&mut **tls);
                (ClientReader::Tls(reader), ClientWriter::Tls(writer))
            }
        }
    }
}

/// The read half of a [`ClientStream`].
pub enum ClientReader<'a> {
    Plain(tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut Tls>),
}

/// The write half of a [`ClientStream`].
pub enum ClientWriter<'a> {
    Plain(tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut Tls>),
}

/// Forwards each AsyncRead/AsyncWrite call to the variant's own implementation.
macro_rules! delegate {
    ($self:ident, $inner:ident => $call:expr) => {
        match $self.get_mut() {
            Self::Plain($inner) => $call,
            Self::Tls($inner) => $call,
        }
    };
}

impl AsyncRead for ClientStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

/// AsyncWrite by delegating every call to the plain or TLS arm (the stream and
/// its write half alike).
macro_rules! delegate_async_write {
    ($stream:ty) => {
        impl AsyncWrite for $stream {
            #[inline]
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                delegate!(self, s => Pin::new(s).poll_write(cx, buf))
            }

            #[inline]
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    Self::Plain(s) => s.is_write_vectored(),
                    Self::Tls(s) => s.is_write_vectored(),
                }
            }

            #[inline]
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                delegate!(self, s => Pin::new(s).poll_flush(cx))
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                delegate!(self, s => Pin::new(s).poll_shutdown(cx))
            }
        }
    };
}

delegate_async_write!(ClientStream);

impl AsyncRead for ClientReader<'_> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

delegate_async_write!(ClientWriter<'_>);
