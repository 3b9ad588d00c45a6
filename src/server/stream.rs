//! The socket of a server connection: plain TCP or TLS over TCP. An enum rather
//! than a boxed trait object, so the plaintext relay costs one match per poll and
//! nothing else; the split halves the relays use are enums the same way (plain TCP
//! keeps tokio's borrowed halves, TLS uses `tokio::io::split`, whose lock is
//! uncontended with one reader and one writer).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type Tls = TlsStream<TcpStream>;

pub enum ServerStream {
    Plain(TcpStream),
    /// Boxed: the TLS state is large and a connection moves on every checkout.
    Tls(Box<Tls>),
}

impl ServerStream {
    /// Borrowed read and write halves, usable at the same time.
    pub fn split(&mut self) -> (ServerReadHalf<'_>, ServerWriteHalf<'_>) {
        match self {
            ServerStream::Plain(stream) => {
                let (read, write) = stream.split();
                (ServerReadHalf::Plain(read), ServerWriteHalf::Plain(write))
            }
            ServerStream::Tls(stream) => {
                let (read, write) = tokio::io::split(&mut **stream);
                (ServerReadHalf::Tls(read), ServerWriteHalf::Tls(write))
            }
        }
    }

    /// The TCP socket underneath (socket options, addresses).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ServerStream::Plain(stream) => stream,
            ServerStream::Tls(stream) => stream.get_ref().0,
        }
    }

    /// Writes all of `bytes` and flushes: with TLS, written bytes can wait in the
    /// TLS layer until a flush (plain TCP flushes for free).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.write_all(bytes).await?;
        self.flush().await
    }

    /// The protocol version and cipher suite, when TLS is in use (for logs).
    pub fn tls_description(&self) -> Option<String> {
        match self {
            ServerStream::Plain(_) => None,
            ServerStream::Tls(stream) => {
                let (_, session) = stream.get_ref();
                let version = session
                    .protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default();
                let suite = session
                    .negotiated_cipher_suite()
                    .map(|s| format!("{:?}", s.suite()))
                    .unwrap_or_default();
                Some(format!("{version} {suite}"))
            }
        }
    }

    /// True when a read without waiting finds nothing (no data, no EOF, no
    /// error). With TLS, records that carry no data (session tickets, key updates)
    /// are consumed on the way; the waker is a no-op, nobody waits on this read.
    /// Whatever it finds is consumed: a connection that is not quiet is closed.
    pub fn is_quiet(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match self {
            ServerStream::Plain(stream) => {
                matches!(stream.try_read(&mut probe), Err(ref e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            ServerStream::Tls(stream) => {
                let mut cx = Context::from_waker(Waker::noop());
                let mut buf = ReadBuf::new(&mut probe);
                Pin::new(&mut **stream)
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }

    /// Moves the socket to the event loop of the calling thread (a worker taking a
    /// connection another thread opened or left idle): the descriptor is
    /// duplicated, the copy registered here, the original deregistered and closed.
    /// The TLS state, and anything buffered in it, stays as it is.
    pub fn rehome(&mut self) -> io::Result<()> {
        use std::os::fd::AsFd;
        let tcp = match self {
            ServerStream::Plain(stream) => stream,
            ServerStream::Tls(stream) => stream.get_mut().0,
        };
        // The copy shares the open file description, O_NONBLOCK included, which
        // `from_std` requires.
        let copy = std::net::TcpStream::from(tcp.as_fd().try_clone_to_owned()?);
        *tcp = TcpStream::from_std(copy)?;
        Ok(())
    }

    /// Writes `bytes` without waiting, best effort (a goodbye nobody waits for).
    pub fn write_now(&mut self, bytes: &[u8]) {
        match self {
            ServerStream::Plain(stream) => {
                let _ = stream.try_write(bytes);
            }
            ServerStream::Tls(stream) => {
                let mut cx = Context::from_waker(Waker::noop());
                let mut stream = Pin::new(&mut **stream);
                let _ = stream.as_mut().poll_write(&mut cx, bytes);
                // Sends the Terminate and then close_notify, as far as the socket takes them.
                let _ = stream.as_mut().poll_shutdown(&mut cx);
            }
        }
    }
}

macro_rules! delegate_read {
    ($type:ty) => {
        impl AsyncRead for $type {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($type:ty) => {
        impl AsyncWrite for $type {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    Self::Plain(s) => s.is_write_vectored(),
                    Self::Tls(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_flush(cx),
                    Self::Tls(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_read!(ServerStream);
delegate_write!(ServerStream);

pub enum ServerReadHalf<'a> {
    Plain(tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut Tls>),
}

pub enum ServerWriteHalf<'a> {
    Plain(tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut Tls>),
}

impl ServerWriteHalf<'_> {
    /// Writes all of `bytes`; with TLS also flushes (written bytes can wait in the
    /// TLS layer until a flush). Plain TCP writes exactly as before.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        match self {
            ServerWriteHalf::Plain(write) => write.write_all(bytes).await,
            ServerWriteHalf::Tls(write) => {
                write.write_all(bytes).await?;
                write.flush().await
            }
        }
    }
}

delegate_read!(ServerReadHalf<'_>);
delegate_write!(ServerWriteHalf<'_>);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A socket opened on one event loop keeps working on another after `rehome`,
    /// even once the first is gone (without the move, its wake-ups would have
    /// nowhere to come from).
    #[test]
    fn a_rehomed_socket_outlives_the_event_loop_it_was_opened_on() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let opened_on = runtime();
        let mut stream = opened_on
            .block_on(async { ServerStream::Plain(TcpStream::connect(address).await.unwrap()) });
        let (mut peer, _) = listener.accept().unwrap();
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let used_on = runtime();
        used_on.block_on(async {
            stream.rehome().expect("rehome");
        });
        drop(opened_on);
        used_on.block_on(async {
            peer.write_all(b"ping").unwrap();
            let mut got = [0u8; 4];
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream.read_exact(&mut got),
            )
            .await
            .expect("the read is woken on the new event loop")
            .expect("read");
            assert_eq!(&got, b"ping");
            stream.send(b"pong").await.expect("write");
        });
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
    }
}
