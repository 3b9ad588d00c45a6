//! Owns the wire protocol as raw bytes, for what tokio-postgres cannot do (chosen
//! statement names, Flush without Sync, a query in the same packet as the password,
//! malformed input, raw CancelRequests): frontend message builders, reading one
//! backend message from a socket, parsing replies (SQLSTATE, DataRows,
//! ErrorResponses), a raw MD5 login as `app_md5`, and [`RawClient`], a logged-in
//! raw session.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One backend message: its type byte and its body.
pub type Message = (u8, Vec<u8>);

// ---------------------------------------------------------------------------
// Frontend messages
// ---------------------------------------------------------------------------

/// A message with type byte `tag` and `body` (the length is filled in).
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Appends `s` as a NUL-terminated string.
pub fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A StartupMessage with protocol `version` and the given parameters.
pub fn startup_packet(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// A CancelRequest for the backend key (`pid`, `secret`).
pub fn cancel_request(pid: i32, secret: [u8; 4]) -> Vec<u8> {
    let mut request = 16u32.to_be_bytes().to_vec();
    request.extend_from_slice(&80_877_102u32.to_be_bytes());
    request.extend_from_slice(&pid.to_be_bytes());
    request.extend_from_slice(&secret);
    request
}

/// A PasswordMessage carrying `password` (cleartext or an MD5 response).
pub fn password_msg(password: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, password);
    message(b'p', &body)
}

/// A simple-protocol Query.
pub fn query_msg(sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, sql);
    message(b'Q', &body)
}

/// Parse of `sql` into the statement `name` ("" for the unnamed one), no
/// parameter types given.
pub fn parse_msg(name: &str, sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, sql);
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'P', &body)
}

/// Bind the unnamed portal to `statement` with text parameters, text results.
pub fn bind_msg(statement: &str, params: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, "");
    cstr(&mut body, statement);
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as i32).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'B', &body)
}

/// Execute of the unnamed portal, all rows.
pub fn execute_msg() -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, "");
    body.extend_from_slice(&0i32.to_be_bytes());
    message(b'E', &body)
}

/// Close of the prepared statement `name`.
pub fn close_statement_msg(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    cstr(&mut body, name);
    message(b'C', &body)
}

pub fn sync_msg() -> Vec<u8> {
    message(b'S', &[])
}

pub fn flush_msg() -> Vec<u8> {
    message(b'H', &[])
}

// ---------------------------------------------------------------------------
// Sockets and backend messages
// ---------------------------------------------------------------------------

/// A TCP connection to `addr` with Nagle off.
pub async fn raw_connect(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("raw connect");
    stream.set_nodelay(true).expect("nodelay");
    stream.flush().await.expect("flush");
    stream
}

/// Reads one backend message (type, body) from a raw socket, with a timeout.
pub async fn read_message(stream: &mut TcpStream) -> Message {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut header = [0u8; 5];
        stream
            .read_exact(&mut header)
            .await
            .expect("message header");
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).await.expect("message body");
        (header[0], body)
    })
    .await
    .expect("a message within 10 s")
}

/// The SQLSTATE of an ErrorResponse body.
pub fn sqlstate(body: &[u8]) -> String {
    let mut fields = body.split(|&b| b == 0);
    fields
        .find(|f| f.first() == Some(&b'C'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

/// Text columns of every DataRow.
pub fn data_rows(messages: &[Message]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter(|(tag, _)| *tag == b'D')
        .map(|(_, body)| {
            let n = i16::from_be_bytes([body[0], body[1]]) as usize;
            let mut at = 2;
            let mut row = Vec::with_capacity(n);
            for _ in 0..n {
                let len = i32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
                at += 4;
                if len < 0 {
                    row.push(None);
                } else {
                    let len = len as usize;
                    row.push(Some(
                        String::from_utf8_lossy(&body[at..at + len]).into_owned(),
                    ));
                    at += len;
                }
            }
            row
        })
        .collect()
}

/// "SQLSTATE: message" of every ErrorResponse.
pub fn error_responses(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .filter(|(tag, _)| *tag == b'E')
        .map(|(_, body)| {
            let text = body
                .split(|&b| b == 0)
                .find(|f| f.first() == Some(&b'M'))
                .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                .unwrap_or_default();
            format!("{}: {text}", sqlstate(body))
        })
        .collect()
}

/// One row of text values, as [`RawClient::run_statement`] returns it.
pub fn row(values: &[&str]) -> Vec<Vec<Option<String>>> {
    vec![values.iter().map(|v| Some(v.to_string())).collect()]
}

// ---------------------------------------------------------------------------
// Logging in
// ---------------------------------------------------------------------------

/// Opens a raw connection as `app_md5` (MD5 client auth) to `appdb` and reads the
/// MD5 password request. Returns the stream and the PasswordMessage that answers it,
/// not yet sent.
pub async fn md5_login_started(addr: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut stream = raw_connect(addr).await;
    stream
        .write_all(&startup_packet(
            196608,
            &[("user", "app_md5"), ("database", "appdb")],
        ))
        .await
        .expect("startup");
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!(tag, b'R', "expected an authentication request");
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    assert_eq!(code, 5, "app_md5 must be asked for an MD5 password");
    let salt = [body[4], body[5], body[6], body[7]];
    let response = switchyard::auth::md5::md5_response("app_md5", "app_md5_pw", salt);
    (stream, password_msg(&response))
}

/// A raw session, logged in as `app_md5`; `name` labels its panics.
pub struct RawClient {
    pub stream: TcpStream,
    pub name: &'static str,
}

impl RawClient {
    /// Logs in as app_md5 (MD5 client auth) to appdb; returns after ReadyForQuery.
    pub async fn login(addr: SocketAddr, name: &'static str) -> RawClient {
        let (mut stream, password) = md5_login_started(addr).await;
        stream.write_all(&password).await.expect("password message");
        let mut client = RawClient { stream, name };
        let messages = client.until_ready().await;
        assert!(
            error_responses(&messages).is_empty(),
            "{name}: login failed: {:?}",
            error_responses(&messages)
        );
        client
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .unwrap_or_else(|e| panic!("{}: write: {e}", self.name));
    }

    /// Reads messages up to and including the next one with `tag`.
    pub async fn until(&mut self, tag: u8) -> Vec<Message> {
        let mut messages = Vec::new();
        loop {
            let m = read_message(&mut self.stream).await;
            let done = m.0 == tag;
            messages.push(m);
            if done {
                return messages;
            }
        }
    }

    pub async fn until_ready(&mut self) -> Vec<Message> {
        self.until(b'Z').await
    }

    /// Sends `bytes` (ending in Sync or a Query) and reads up to ReadyForQuery.
    pub async fn round_trip(&mut self, bytes: &[u8]) -> Vec<Message> {
        self.send(bytes).await;
        self.until_ready().await
    }

    /// Bind + Execute + Sync of `statement`; the rows, or the errors.
    pub async fn run_statement(
        &mut self,
        statement: &str,
        params: &[&str],
    ) -> Result<Vec<Vec<Option<String>>>, Vec<String>> {
        let mut bytes = bind_msg(statement, params);
        bytes.extend(execute_msg());
        bytes.extend(sync_msg());
        let messages = self.round_trip(&bytes).await;
        let errors = error_responses(&messages);
        if errors.is_empty() {
            Ok(data_rows(&messages))
        } else {
            Err(errors)
        }
    }
}

/// Answers a SCRAM-SHA-256 request with a fixed client-first message (no channel
/// binding, nonce `probeprobeprobeprobe`) and returns the server's reply: the
/// start of a SCRAM exchange, for tests that look at what a server-first says.
pub async fn send_probe_client_first(stream: &mut TcpStream) -> Message {
    let client_first = b"n,,n=,r=probeprobeprobeprobe";
    let mut initial = Vec::new();
    cstr(&mut initial, "SCRAM-SHA-256");
    initial.extend_from_slice(&(client_first.len() as i32).to_be_bytes());
    initial.extend_from_slice(client_first);
    stream
        .write_all(&message(b'p', &initial))
        .await
        .expect("SASLInitialResponse");
    read_message(stream).await
}
