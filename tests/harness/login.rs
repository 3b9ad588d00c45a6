//! Owns raw logins as `app_md5` that keep everything the server said: the
//! greeting's ParameterStatus values, the BackendKeyData, a NegotiateProtocolVersion,
//! or the ErrorResponse a refused login ends with; then simple queries on the
//! session. For comparing Switchyard with PostgreSQL packet by packet, including
//! startup packets no driver would send ([`Login::open_packet`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::raw_client::*;

/// What a raw login got: every message but the MD5 and Ok authentication
/// requests, up to ReadyForQuery, an ErrorResponse, another authentication request
/// (kept as the last message), or the connection closing.
pub struct Login {
    pub stream: TcpStream,
    pub messages: Vec<Message>,
    /// The connection closed before ReadyForQuery or an ErrorResponse.
    pub closed: bool,
}

/// Reads one backend message, or None when the connection closes first; at most 10 s.
pub async fn read_message_or_eof(stream: &mut TcpStream) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).await.ok()?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len.checked_sub(4)?];
        stream.read_exact(&mut body).await.ok()?;
        Some((header[0], body))
    })
    .await
    .expect("a message or the end of the connection within 10 s")
}

impl Login {
    /// Logs in as `app_md5` with protocol `version` and `params` after the user.
    pub async fn open(addr: SocketAddr, version: u32, params: &[(&str, &str)]) -> Login {
        let mut all = vec![("user", "app_md5")];
        all.extend_from_slice(params);
        Login::open_packet(addr, &startup_packet(version, &all)).await
    }

    /// Sends `packet` as the startup packet and answers an MD5 request with
    /// `app_md5`'s password.
    pub async fn open_packet(addr: SocketAddr, packet: &[u8]) -> Login {
        let mut stream = raw_connect(addr).await;
        stream.write_all(packet).await.expect("startup packet");
        let mut messages = Vec::new();
        loop {
            let Some((tag, body)) = read_message_or_eof(&mut stream).await else {
                return Login {
                    stream,
                    messages,
                    closed: true,
                };
            };
            match tag {
                b'R' => {
                    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    if code == 5 {
                        let salt = [body[4], body[5], body[6], body[7]];
                        let response =
                            switchyard::auth::md5::md5_response("app_md5", "app_md5_pw", salt);
                        stream
                            .write_all(&password_msg(&response))
                            .await
                            .expect("password");
                    } else if code != 0 {
                        // Another method than `app_md5`'s: the caller sees it last.
                        messages.push((tag, body));
                        return Login {
                            stream,
                            messages,
                            closed: false,
                        };
                    }
                }
                b'Z' | b'E' => {
                    messages.push((tag, body));
                    return Login {
                        stream,
                        messages,
                        closed: false,
                    };
                }
                _ => messages.push((tag, body)),
            }
        }
    }

    /// The ParameterStatus values of the greeting.
    pub fn greeting(&self) -> BTreeMap<String, String> {
        self.messages
            .iter()
            .filter(|(tag, _)| *tag == b'S')
            .map(|(_, body)| {
                let mut parts = body.split(|&b| b == 0);
                let name = String::from_utf8_lossy(parts.next().unwrap_or_default());
                let value = String::from_utf8_lossy(parts.next().unwrap_or_default());
                (name.into_owned(), value.into_owned())
            })
            .collect()
    }

    /// The ErrorResponse the login ended with: (severity, SQLSTATE, message).
    pub fn error(&self) -> Option<(String, String, String)> {
        let (_, body) = self.messages.iter().find(|(tag, _)| *tag == b'E')?;
        Some((field(body, b'V'), field(body, b'C'), field(body, b'M')))
    }

    /// The NegotiateProtocolVersion body, if one was sent.
    pub fn negotiation(&self) -> Option<Vec<u8>> {
        self.messages
            .iter()
            .find(|(tag, _)| *tag == b'v')
            .map(|(_, body)| body.clone())
    }

    /// The BackendKeyData: (pid, secret).
    pub fn key(&self) -> Option<(i32, [u8; 4])> {
        let (_, body) = self.messages.iter().find(|(tag, _)| *tag == b'K')?;
        Some((
            i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            [body[4], body[5], body[6], body[7]],
        ))
    }

    pub fn is_ready(&self) -> bool {
        self.messages.last().map(|m| m.0) == Some(b'Z')
    }

    pub fn assert_ready(&self, what: &str) {
        assert!(
            self.is_ready(),
            "{what}: login failed: {:?} (closed: {})",
            error_responses(&self.messages),
            self.closed
        );
    }

    /// Runs a simple query; every message up to ReadyForQuery.
    pub async fn query(&mut self, sql: &str) -> Vec<Message> {
        self.stream.write_all(&query_msg(sql)).await.expect("query");
        let mut messages = Vec::new();
        loop {
            let message = read_message(&mut self.stream).await;
            let done = message.0 == b'Z';
            messages.push(message);
            if done {
                return messages;
            }
        }
    }

    /// First column of the first row of a simple query.
    pub async fn value(&mut self, sql: &str) -> String {
        let messages = self.query(sql).await;
        assert!(
            error_responses(&messages).is_empty(),
            "{sql}: {:?}",
            error_responses(&messages)
        );
        data_rows(&messages)
            .first()
            .and_then(|row| row.first().cloned().flatten())
            .unwrap_or_else(|| panic!("{sql}: no row"))
    }
}

/// A field of an ErrorResponse or NoticeResponse body.
pub fn field(body: &[u8], kind: u8) -> String {
    body.split(|&b| b == 0)
        .find(|f| f.first() == Some(&kind))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}
