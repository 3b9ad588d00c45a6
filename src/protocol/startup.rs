//! The pre-session packets a client may open with (SSLRequest, GSSENCRequest,
//! CancelRequest, StartupMessage), the messages read whole during authentication
//! (a client's through `StartupReader`, a server's through `read_message`), and safe
//! parsers for the client's password/SASL messages.

use super::split_cstr;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Startup-phase packets are small; PostgreSQL caps them at 10000 bytes.
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("connection closed during startup")]
    Closed,
    #[error("I/O error during startup: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid startup packet length {0}")]
    BadLength(u32),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("expected a password message, got message type {0:?}")]
    UnexpectedMessage(char),
}

/// The first packet of a client connection.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: Vec<u8> },
    Startup(StartupParams),
}

/// An encryption request a client may open with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiation {
    Ssl,
    GssEnc,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartupParams {
    pub minor_version: u16,
    /// In the order the client sent them, duplicates included.
    pub params: Vec<(String, String)>,
}

impl StartupParams {
    /// The value of `key` (case-sensitive, as PostgreSQL compares `user`,
    /// `database`, `options` and `replication`); the last one when the client sent
    /// it more than once, since PostgreSQL lets each occurrence overwrite the last.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rfind(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// First read of a client connection: more than a typical StartupMessage or SASL
/// message, so each of the client's flights arrives in one short read.
const STARTUP_READ: usize = 1024;

/// Reads a client's packets until its session starts. Each read takes whatever the
/// socket holds, so a flight of the client (SSLRequest, StartupMessage, each SASL
/// message) costs one recv instead of two exact reads plus a third that only learns
/// the socket is empty. Bytes past the current packet stay for the next call, and
/// `into_unread` hands the rest to the session as its first input.
///
/// With TLS refused ('N'), bytes a client sent after its SSLRequest are simply its
/// next packet. Where TLS is offered, [`StartupReader::negotiation_request`] reads
/// the request exactly, so nothing sent in the clear is buffered when TLS starts.
#[derive(Debug, Default)]
pub struct StartupReader {
    buffer: BytesMut,
}

impl StartupReader {
    /// Reads one untyped packet (length-prefixed) and classifies it.
    pub async fn first_packet<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<FirstPacket, StartupError> {
        self.fill(reader, 4).await?;
        let len = u32::from_be_bytes([
            self.buffer[0],
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
        ]);
        if !(8..=MAX_STARTUP_PACKET as u32).contains(&len) {
            return Err(StartupError::BadLength(len));
        }
        self.fill(reader, len as usize).await?;
        let packet = self.buffer.split_to(len as usize);
        parse_first_packet(&packet[4..])
    }

    /// On a listener offering TLS: reads exactly 8 bytes, never more, and says
    /// whether they are an SSLRequest or GSSENCRequest (then consumed). Anything
    /// else stays buffered as the start of the client's next packet. Reading no
    /// further keeps bytes a client sent after its SSLRequest in the socket, where
    /// the caller can see them and refuse TLS (CVE-2021-23214). Call with nothing
    /// buffered.
    pub async fn negotiation_request<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<Option<Negotiation>, StartupError> {
        while self.buffer.len() < 8 {
            let budget = (8 - self.buffer.len()) as u64;
            self.buffer.reserve(STARTUP_READ);
            if (&mut *reader)
                .take(budget)
                .read_buf(&mut self.buffer)
                .await?
                == 0
            {
                return Err(StartupError::Closed);
            }
        }
        let head = &self.buffer[..8];
        if head[..4] != 8u32.to_be_bytes() {
            return Ok(None);
        }
        let request = match u32::from_be_bytes([head[4], head[5], head[6], head[7]]) {
            SSL_REQUEST => Negotiation::Ssl,
            GSSENC_REQUEST => Negotiation::GssEnc,
            _ => return Ok(None),
        };
        self.buffer.advance(8);
        Ok(Some(request))
    }

    /// Reads the client's next 'p' message (password, SASL initial or SASL
    /// response) and returns its body.
    pub async fn password_message<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<BytesMut, StartupError> {
        self.fill(reader, 5).await?;
        let tag = self.buffer[0];
        let len = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]);
        if tag != b'p' {
            return Err(StartupError::UnexpectedMessage(tag as char));
        }
        if !(4..=MAX_STARTUP_PACKET as u32).contains(&len) {
            return Err(StartupError::BadLength(len));
        }
        self.fill(reader, 1 + len as usize).await?;
        let mut body = self.buffer.split_to(1 + len as usize);
        body.advance(5);
        Ok(body)
    }

    /// What the client sent after its last packet; an empty buffer holds no
    /// allocation, so an idle session keeps nothing of the startup reads.
    pub fn into_unread(self) -> BytesMut {
        if self.buffer.is_empty() {
            BytesMut::new()
        } else {
            self.buffer
        }
    }

    /// Reads until `need` bytes are buffered. `need` is at most one packet, which
    /// the callers cap at MAX_STARTUP_PACKET (plus its 5-byte header).
    async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        need: usize,
    ) -> Result<(), StartupError> {
        while self.buffer.len() < need {
            self.buffer
                .reserve(STARTUP_READ.max(need - self.buffer.len()));
            if reader.read_buf(&mut self.buffer).await? == 0 {
                return Err(StartupError::Closed);
            }
        }
        Ok(())
    }
}

async fn read_exact_or_closed<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), StartupError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(StartupError::Closed),
        Err(e) => Err(StartupError::Io(e)),
    }
}

/// Classifies a first packet's body (everything after the length word).
pub fn parse_first_packet(body: &[u8]) -> Result<FirstPacket, StartupError> {
    let (code, rest) = split_u32(body).ok_or(StartupError::Malformed("startup packet"))?;
    match code {
        SSL_REQUEST => Ok(FirstPacket::SslRequest),
        GSSENC_REQUEST => Ok(FirstPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let (pid, secret) = split_u32(rest).ok_or(StartupError::Malformed("cancel request"))?;
            if !(4..=256).contains(&secret.len()) {
                return Err(StartupError::Malformed("cancel request"));
            }
            Ok(FirstPacket::Cancel {
                pid: pid as i32,
                secret: secret.to_vec(),
            })
        }
        version => {
            let (major, minor) = ((version >> 16) as u16, (version & 0xffff) as u16);
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            Ok(FirstPacket::Startup(StartupParams {
                minor_version: minor,
                params: parse_params(rest)?,
            }))
        }
    }
}

fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head), rest))
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let (key, after_key) = split_cstr(rest).ok_or(StartupError::Malformed("startup packet"))?;
        if key.is_empty() {
            // PostgreSQL refuses a packet whose terminator is not its last byte
            // (including an empty name followed by more parameters).
            if !after_key.is_empty() {
                return Err(StartupError::Malformed(
                    "startup packet layout: expected terminator as last byte",
                ));
            }
            return Ok(params);
        }
        let (value, after_value) =
            split_cstr(after_key).ok_or(StartupError::Malformed("startup packet"))?;
        params.push((
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
        rest = after_value;
    }
}

/// Reads one typed message whole (type byte, length, body) from a server during its
/// login or a query the proxy runs itself, with a size cap. Returns the type and the
/// body. Exact reads: the bytes after it stay in the socket for the relay.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: usize,
) -> Result<(u8, BytesMut), StartupError> {
    let mut header = [0u8; 5];
    read_exact_or_closed(reader, &mut header).await?;
    let len = super::frame::length_field(&header);
    if len < 4 || len as usize > max_len {
        return Err(StartupError::BadLength(len));
    }
    let mut body = BytesMut::zeroed(len as usize - 4);
    read_exact_or_closed(reader, &mut body).await?;
    Ok((header[0], body))
}

/// A PasswordMessage body: the password (or MD5 response) without its NUL.
pub fn parse_password(body: &[u8]) -> Result<&[u8], StartupError> {
    split_cstr(body)
        .map(|(password, _)| password)
        .ok_or(StartupError::Malformed("password message"))
}

/// A SASLInitialResponse body: mechanism name and the initial client data.
pub fn parse_sasl_initial(body: &[u8]) -> Result<(&[u8], &[u8]), StartupError> {
    let malformed = StartupError::Malformed("SASLInitialResponse");
    let (mechanism, rest) =
        split_cstr(body).ok_or(StartupError::Malformed("SASLInitialResponse"))?;
    let (len, data) = split_u32(rest).ok_or(malformed)?;
    let len = len as i32;
    if len < 0 || len as usize != data.len() {
        return Err(StartupError::Malformed("SASLInitialResponse"));
    }
    Ok((mechanism, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(rest);
        body
    }

    #[test]
    fn classifies_first_packets() {
        assert_eq!(
            parse_first_packet(&packet(SSL_REQUEST, b"")).ok(),
            Some(FirstPacket::SslRequest)
        );
        assert_eq!(
            parse_first_packet(&packet(GSSENC_REQUEST, b"")).ok(),
            Some(FirstPacket::GssEncRequest)
        );
        let mut cancel = 77i32.to_be_bytes().to_vec();
        cancel.extend_from_slice(&5i32.to_be_bytes());
        assert_eq!(
            parse_first_packet(&packet(CANCEL_REQUEST, &cancel)).ok(),
            Some(FirstPacket::Cancel {
                pid: 77,
                secret: 5i32.to_be_bytes().to_vec()
            })
        );
        let startup =
            parse_first_packet(&packet(196608, b"user\0app\0database\0db\0\0")).expect("startup");
        match startup {
            FirstPacket::Startup(p) => {
                assert_eq!(p.get("user"), Some("app"));
                assert_eq!(p.get("database"), Some("db"));
                assert_eq!(p.minor_version, 0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_packets() {
        assert!(matches!(
            parse_first_packet(&packet(2 << 16, b"\0")),
            Err(StartupError::UnsupportedProtocol { major: 2, minor: 0 })
        ));
        assert!(parse_first_packet(&packet(196608, b"user\0app")).is_err());
        assert!(parse_first_packet(&packet(CANCEL_REQUEST, b"\0\0")).is_err());
        assert!(parse_first_packet(b"\0\0").is_err());
        // The terminator must be the last byte: nothing after it, no empty name
        // before more parameters.
        assert!(parse_first_packet(&packet(196608, b"user\0app\0\0x\0y\0\0")).is_err());
        assert!(parse_first_packet(&packet(196608, b"user\0app\0\0\0")).is_err());
        assert!(parse_first_packet(&packet(196608, b"\0orphan\0user\0app\0\0")).is_err());
    }

    #[test]
    fn the_last_of_duplicate_parameters_counts() {
        let FirstPacket::Startup(p) =
            parse_first_packet(&packet(196608, b"user\0a\0database\0d\0user\0b\0\0"))
                .expect("startup")
        else {
            panic!("not a startup packet");
        };
        assert_eq!(p.get("user"), Some("b"));
        assert_eq!(p.get("User"), None, "names are compared as PostgreSQL does");
        assert_eq!(p.params.len(), 3, "every occurrence is kept, in order");
    }

    #[test]
    fn parses_sasl_initial_response_safely() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&3u32.to_be_bytes());
        body.extend_from_slice(b"abc");
        assert_eq!(
            parse_sasl_initial(&body).ok(),
            Some((&b"SCRAM-SHA-256"[..], &b"abc"[..]))
        );
        body.pop();
        assert!(parse_sasl_initial(&body).is_err());
        assert!(parse_sasl_initial(b"SCRAM").is_err());
        let mut negative = b"M\0".to_vec();
        negative.extend_from_slice(&(-1i32).to_be_bytes());
        assert!(parse_sasl_initial(&negative).is_err());
    }

    fn startup_packet(params: &[u8]) -> Vec<u8> {
        let mut bytes = ((8 + params.len()) as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&196608u32.to_be_bytes());
        bytes.extend_from_slice(params);
        bytes
    }

    fn password(body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![b'p'];
        bytes.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[tokio::test]
    async fn splits_a_flight_into_packets_and_keeps_the_rest() {
        let mut flight = 8u32.to_be_bytes().to_vec();
        flight.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        flight.extend_from_slice(&startup_packet(b"user\0app\0\0"));
        flight.extend_from_slice(&password(b"secret\0"));
        flight.extend_from_slice(b"Q\0\0\0\x0dselect 1\0");
        let mut client = &flight[..];
        let mut reader = StartupReader::default();
        assert_eq!(
            reader.first_packet(&mut client).await.ok(),
            Some(FirstPacket::SslRequest)
        );
        assert!(matches!(
            reader.first_packet(&mut client).await,
            Ok(FirstPacket::Startup(p)) if p.get("user") == Some("app")
        ));
        let body = reader
            .password_message(&mut client)
            .await
            .expect("password");
        assert_eq!(&body[..], b"secret\0");
        assert_eq!(&reader.into_unread()[..], b"Q\0\0\0\x0dselect 1\0");
    }

    #[tokio::test]
    async fn negotiation_requests_are_read_exactly() {
        // SSLRequest followed by bytes: only the 8 request bytes are taken.
        let mut flight = 8u32.to_be_bytes().to_vec();
        flight.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        flight.extend_from_slice(b"\x16\x03\x01 after");
        let mut client = &flight[..];
        let mut reader = StartupReader::default();
        assert_eq!(
            reader.negotiation_request(&mut client).await.ok(),
            Some(Some(Negotiation::Ssl))
        );
        assert_eq!(client, b"\x16\x03\x01 after", "the rest stays unread");
        assert!(reader.into_unread().is_empty());
        // A StartupMessage: its first 8 bytes stay buffered for first_packet.
        let packet = startup_packet(b"user\0app\0\0");
        let mut client = &packet[..];
        let mut reader = StartupReader::default();
        assert_eq!(
            reader.negotiation_request(&mut client).await.ok(),
            Some(None)
        );
        assert!(matches!(
            reader.first_packet(&mut client).await,
            Ok(FirstPacket::Startup(p)) if p.get("user") == Some("app")
        ));
        // GSSENCRequest, and a connection that ends early.
        let mut gss = 8u32.to_be_bytes().to_vec();
        gss.extend_from_slice(&GSSENC_REQUEST.to_be_bytes());
        let mut reader = StartupReader::default();
        assert_eq!(
            reader.negotiation_request(&mut &gss[..]).await.ok(),
            Some(Some(Negotiation::GssEnc))
        );
        let mut reader = StartupReader::default();
        assert!(matches!(
            reader.negotiation_request(&mut &gss[..5]).await,
            Err(StartupError::Closed)
        ));
    }

    #[tokio::test]
    async fn reads_packets_that_arrive_in_pieces() {
        let flight = [startup_packet(b"user\0app\0\0"), password(b"pw\0")].concat();
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for byte in flight {
                server.write_all(&[byte]).await.expect("write");
                server.flush().await.expect("flush");
                tokio::task::yield_now().await;
            }
            server
        });
        let mut reader = StartupReader::default();
        assert!(matches!(
            reader.first_packet(&mut client).await,
            Ok(FirstPacket::Startup(_))
        ));
        let body = reader
            .password_message(&mut client)
            .await
            .expect("password");
        assert_eq!(&body[..], b"pw\0");
        drop(writer.await.expect("writer"));
        let unread = reader.into_unread();
        assert!(unread.is_empty());
        assert_eq!(unread.capacity(), 0, "an empty rest holds no allocation");
    }

    #[tokio::test]
    async fn refuses_bad_lengths_and_other_messages_before_reading_them() {
        let mut reader = StartupReader::default();
        let huge = (MAX_STARTUP_PACKET as u32 + 1).to_be_bytes();
        assert!(matches!(
            reader.first_packet(&mut &huge[..]).await,
            Err(StartupError::BadLength(_))
        ));
        let mut reader = StartupReader::default();
        assert!(matches!(
            reader.password_message(&mut &b"Q\0\0\0\x05x"[..]).await,
            Err(StartupError::UnexpectedMessage('Q'))
        ));
        let mut reader = StartupReader::default();
        assert!(matches!(
            reader.password_message(&mut &b"p\0\0\0\x02"[..]).await,
            Err(StartupError::BadLength(2))
        ));
        let mut reader = StartupReader::default();
        assert!(matches!(
            reader.password_message(&mut &b"p\0\0\0\x09ab"[..]).await,
            Err(StartupError::Closed)
        ));
    }
}
