//! The pre-session packets a client may open with (SSLRequest, GSSENCRequest,
//! CancelRequest, StartupMessage), the messages read whole during authentication,
//! and safe parsers for the client's password/SASL messages. Reads here never
//! buffer past the current packet, so a TLS upgrade can follow an SSLRequest safely.

use bytes::BytesMut;
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

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartupParams {
    pub minor_version: u16,
    /// In the order the client sent them.
    pub params: Vec<(String, String)>,
}

impl StartupParams {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one untyped packet (length-prefixed) and classifies it.
pub async fn read_first_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<FirstPacket, StartupError> {
    let mut len_bytes = [0u8; 4];
    read_exact_or_closed(reader, &mut len_bytes).await?;
    let len = u32::from_be_bytes(len_bytes);
    if !(8..=MAX_STARTUP_PACKET as u32).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    let mut body = vec![0u8; len as usize - 4];
    read_exact_or_closed(reader, &mut body).await?;
    parse_first_packet(&body)
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

/// Splits a NUL-terminated string off the front of `bytes`.
pub fn split_cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..nul], &bytes[nul + 1..]))
}

/// Reads one typed message whole (type byte, length, body) during startup, with a
/// size cap. Returns the type and the body.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: usize,
) -> Result<(u8, BytesMut), StartupError> {
    let mut header = [0u8; 5];
    read_exact_or_closed(reader, &mut header).await?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 || len as usize > max_len {
        return Err(StartupError::BadLength(len));
    }
    let mut body = BytesMut::zeroed(len as usize - 4);
    read_exact_or_closed(reader, &mut body).await?;
    Ok((header[0], body))
}

/// Reads the client's next 'p' message (password, SASL initial or SASL response).
pub async fn read_password_message<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<BytesMut, StartupError> {
    let (tag, body) = read_message(reader, MAX_STARTUP_PACKET).await?;
    if tag != b'p' {
        return Err(StartupError::UnexpectedMessage(tag as char));
    }
    Ok(body)
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

    #[tokio::test]
    async fn reads_a_packet_without_reading_past_it() {
        let mut bytes = 8u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        bytes.extend_from_slice(b"\x16\x03\x01");
        let mut reader = &bytes[..];
        assert_eq!(
            read_first_packet(&mut reader).await.ok(),
            Some(FirstPacket::SslRequest)
        );
        assert_eq!(reader, b"\x16\x03\x01");
    }
}
