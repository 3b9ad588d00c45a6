//! Builders for the messages Switchyard writes itself (to clients and to servers),
//! encoded with pgwire's message types. Everything the proxy only forwards is never
//! built here.

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, ParameterStatus, Password, SASLInitialResponse, SASLResponse,
    SecretKey, Startup,
};
use pgwire::messages::Message;

use super::sqlstate::SqlState;
use super::tag;

/// Encodes a pgwire message. Encoding only fails for messages over pgwire's size
/// limits, which nothing built here can reach; such a message is dropped and logged
/// rather than taking the session down with a panic.
fn put<M: Message>(buf: &mut BytesMut, message: &M) {
    if let Err(e) = message.encode(buf) {
        tracing::error!(error = %e, "cannot encode a protocol message");
    }
}

fn encoded<M: Message>(message: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    put(&mut buf, message);
    buf.freeze()
}

/// Severity of an error sent to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The session ends after this error.
    Fatal,
    /// The statement failed; the session goes on.
    Error,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
        }
    }
}

/// An error the proxy reports to a client in PostgreSQL's own format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub severity: Severity,
    pub code: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ClientError {
    pub fn fatal(code: SqlState, message: impl Into<String>) -> ClientError {
        ClientError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// An error that ends the statement, not the session.
    pub fn error(code: SqlState, message: impl Into<String>) -> ClientError {
        ClientError {
            severity: Severity::Error,
            ..ClientError::fatal(code, message)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> ClientError {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> ClientError {
        self.hint = Some(hint.into());
        self
    }

    pub fn encode(&self) -> Bytes {
        let severity = self.severity.as_str().to_string();
        let mut fields = vec![
            (b'S', severity.clone()),
            (b'V', severity),
            (b'C', self.code.code().to_string()),
            (b'M', self.message.clone()),
        ];
        if let Some(detail) = &self.detail {
            fields.push((b'D', detail.clone()));
        }
        if let Some(hint) = &self.hint {
            fields.push((b'H', hint.clone()));
        }
        encoded(&ErrorResponse::new(fields))
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_str(),
            self.code.code(),
            self.message
        )?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

pub fn ready_for_query_idle(buf: &mut BytesMut) {
    put(buf, &ReadyForQuery::new(TransactionStatus::Idle));
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    put(buf, &ParameterStatus::new(name.into(), value.into()));
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    put(buf, &BackendKeyData::new(pid, SecretKey::I32(secret)));
}

pub fn authentication_ok(buf: &mut BytesMut) {
    put(buf, &Authentication::Ok);
}

pub fn authentication_sasl(mechanisms: &[&str]) -> Bytes {
    encoded(&Authentication::SASL(
        mechanisms.iter().map(|m| m.to_string()).collect(),
    ))
}

pub fn authentication_sasl_continue(data: Vec<u8>) -> Bytes {
    encoded(&Authentication::SASLContinue(Bytes::from(data)))
}

pub fn authentication_sasl_final(buf: &mut BytesMut, data: Vec<u8>) {
    put(buf, &Authentication::SASLFinal(Bytes::from(data)));
}

pub fn authentication_md5(salt: [u8; 4]) -> Bytes {
    encoded(&Authentication::MD5Password(salt.to_vec()))
}

/// NegotiateProtocolVersion: we speak 3.0 and none of the `_pq_.` options asked for.
/// The version field is the whole protocol number (3.0 is 196608), as PostgreSQL
/// sends it and libpq 18 reads it: 0 would read as "downgrade to protocol 0.0".
pub fn negotiate_protocol_version(unsupported_options: &[String]) -> Bytes {
    let body_len = 4
        + 4
        + 4
        + unsupported_options
            .iter()
            .map(|o| o.len() + 1)
            .sum::<usize>();
    let mut buf = BytesMut::with_capacity(1 + body_len);
    buf.put_u8(tag::NEGOTIATE_PROTOCOL_VERSION);
    buf.put_u32(body_len as u32);
    buf.put_u32(PROTOCOL_3_0);
    buf.put_u32(unsupported_options.len() as u32);
    for option in unsupported_options {
        buf.put_slice(option.as_bytes());
        buf.put_u8(0);
    }
    buf.freeze()
}

/// Protocol 3.0, the only version Switchyard speaks, as a StartupMessage codes it.
pub const PROTOCOL_3_0: u32 = 3 << 16;

/// A server's ErrorResponse (whole message) made FATAL: at connect, a server's
/// ERROR (a startup parameter it rejects when the proxy applies it) ends the
/// connection, as the same parameter in a direct connection's startup packet
/// would. Every other field is kept as the server wrote it.
pub fn error_as_fatal(raw: &[u8]) -> Bytes {
    let Some(body) = raw.get(5..) else {
        return Bytes::copy_from_slice(raw);
    };
    let mut fields = BytesMut::with_capacity(raw.len());
    let mut rest = body;
    while let Some((&kind, after)) = rest.split_first() {
        let Some((value, next)) = super::split_cstr(after).filter(|_| kind != 0) else {
            break;
        };
        fields.put_u8(kind);
        match kind {
            // S may be localised ("FEHLER"); V never is.
            b'S' => fields.put_slice(b"FATAL"),
            b'V' if value == b"ERROR" => fields.put_slice(b"FATAL"),
            _ => fields.put_slice(value),
        }
        fields.put_u8(0);
        rest = next;
    }
    fields.put_u8(0);
    let mut out = BytesMut::with_capacity(fields.len() + 5);
    out.put_u8(tag::ERROR_RESPONSE);
    out.put_u32(fields.len() as u32 + 4);
    out.put_slice(&fields);
    out.freeze()
}

/// StartupMessage for protocol 3.0 with the given parameters.
pub fn startup(parameters: &[(String, String)]) -> Bytes {
    let mut startup = Startup::new();
    startup.protocol_number_major = 3;
    startup.protocol_number_minor = 0;
    for (key, value) in parameters {
        startup.parameters.insert(key.clone(), value.clone());
    }
    encoded(&startup)
}

pub fn password(password: &str) -> Bytes {
    encoded(&Password::new(password.into()))
}

pub fn sasl_initial_response(mechanism: &str, data: Vec<u8>) -> Bytes {
    encoded(&SASLInitialResponse::new(
        mechanism.into(),
        Some(Bytes::from(data)),
    ))
}

pub fn sasl_response(data: Vec<u8>) -> Bytes {
    encoded(&SASLResponse::new(Bytes::from(data)))
}

pub fn cancel_request(pid: i32, secret: i32) -> Bytes {
    encoded(&CancelRequest::new(pid, SecretKey::I32(secret)))
}

/// SSLRequest: asks a server to switch to TLS before the StartupMessage.
pub fn ssl_request() -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&8u32.to_be_bytes());
    out[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    out
}

/// The request code of an SSLRequest (1234 in the high half, 5679 in the low).
const SSL_REQUEST_CODE: u32 = 80_877_103;

/// Query (simple protocol) of `sql`, which must not contain a NUL.
pub fn query(out: &mut BytesMut, sql: &str) {
    put_header(out, tag::QUERY, sql.len() + 1);
    out.put_slice(sql.as_bytes());
    out.put_u8(0);
}

/// Parse of `statement` (named, NUL-free) with `rest`: the Parse body after the
/// name (query, NUL, parameter types), as a client sent it.
pub fn parse(out: &mut BytesMut, statement: &[u8], rest: &[u8]) {
    put_header(out, tag::PARSE, statement.len() + 1 + rest.len());
    out.put_slice(statement);
    out.put_u8(0);
    out.put_slice(rest);
}

/// Bind of `portal` to `statement`; `rest` is the Bind body after the two names
/// (parameter formats and values, result formats), as the client sent it.
pub fn bind(out: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    put_header(
        out,
        tag::BIND,
        portal.len() + 1 + statement.len() + 1 + rest.len(),
    );
    out.put_slice(portal);
    out.put_u8(0);
    out.put_slice(statement);
    out.put_u8(0);
    out.put_slice(rest);
}

/// Execute of `portal`, all rows.
pub fn execute(out: &mut BytesMut, portal: &[u8]) {
    put_header(out, tag::EXECUTE, portal.len() + 1 + 4);
    out.put_slice(portal);
    out.put_u8(0);
    out.put_u32(0);
}

/// Sync.
pub fn sync(out: &mut BytesMut) {
    out.put_slice(&empty(tag::SYNC));
}

/// Close of a prepared statement.
pub fn close_statement(out: &mut BytesMut, statement: &[u8]) {
    put_target(out, tag::CLOSE, tag::TARGET_STATEMENT, statement);
}

/// Describe of a prepared statement.
pub fn describe_statement(out: &mut BytesMut, statement: &[u8]) {
    put_target(out, tag::DESCRIBE, tag::TARGET_STATEMENT, statement);
}

fn put_target(out: &mut BytesMut, message: u8, kind: u8, name: &[u8]) {
    put_header(out, message, 1 + name.len() + 1);
    out.put_u8(kind);
    out.put_slice(name);
    out.put_u8(0);
}

/// A message's type byte and length field for a body of `body_len` bytes.
fn put_header(out: &mut BytesMut, message: u8, body_len: usize) {
    out.put_u8(message);
    out.put_u32((4 + body_len) as u32);
}

/// A message with an empty body, as static bytes.
const fn empty(message: u8) -> [u8; 5] {
    [message, 0, 0, 0, 4]
}

pub const PARSE_COMPLETE: &[u8] = &empty(tag::PARSE_COMPLETE);
pub const CLOSE_COMPLETE: &[u8] = &empty(tag::CLOSE_COMPLETE);
pub const TERMINATE: &[u8] = &empty(tag::TERMINATE);

/// Terminate ('X').
pub fn terminate() -> Bytes {
    Bytes::from_static(TERMINATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_error_becomes_fatal_with_its_other_fields_kept() {
        let body = b"SERROR\0VERROR\0C22023\0Minvalid value for parameter\0Dbad\0\0";
        let raw = crate::protocol::test_message(b'E', body);
        let fatal = error_as_fatal(&raw);
        assert_eq!(
            &fatal[..],
            &crate::protocol::test_message(
                b'E',
                b"SFATAL\0VFATAL\0C22023\0Minvalid value for parameter\0Dbad\0\0"
            )[..]
        );
        assert_eq!(&error_as_fatal(&fatal)[..], &fatal[..], "FATAL stays FATAL");
        assert_eq!(&error_as_fatal(b"E\0\0")[..], b"E\0\0", "too short: as is");
    }

    #[test]
    fn negotiation_names_protocol_3_0_and_the_options() {
        let message = negotiate_protocol_version(&["_pq_.x".to_string()]);
        assert_eq!(
            &message[..],
            &crate::protocol::test_message(b'v', b"\0\x03\0\0\0\0\0\x01_pq_.x\0")[..]
        );
    }

    #[test]
    fn error_response_has_postgres_fields() {
        let bytes = ClientError::fatal(SqlState::InvalidPassword, "password authentication failed")
            .with_hint("check it")
            .encode();
        assert_eq!(bytes[0], b'E');
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len + 1, bytes.len());
        let body = &bytes[5..];
        assert!(body.windows(6).any(|w| w == b"C28P01"));
        assert!(body.windows(6).any(|w| w == b"SFATAL"));
        assert_eq!(body.last(), Some(&0));
    }

    #[test]
    fn query_is_nul_terminated_with_its_length() {
        let mut out = BytesMut::new();
        query(&mut out, "select 1");
        assert_eq!(
            &out[..],
            crate::protocol::test_message(tag::QUERY, b"select 1\0")
        );
    }

    #[test]
    fn startup_is_protocol_3_0() {
        let bytes = startup(&[("user".into(), "app".into())]);
        assert_eq!(&bytes[4..8], &[0, 3, 0, 0]);
        assert!(bytes.ends_with(b"user\0app\0\0"));
    }

    #[test]
    fn cancel_request_uses_a_four_byte_secret() {
        let bytes = cancel_request(42, 7);
        assert_eq!(bytes.len(), 16);
        assert_eq!(&bytes[4..8], &80877102u32.to_be_bytes());
    }
}
