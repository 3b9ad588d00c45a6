//! One connection to a PostgreSQL server: opened, logged in ([`login`]) and then
//! handed to a session for relaying. The session owns it while it uses it; this is
//! the seam a pool takes over (check out a logged-in connection, give it back).

mod authenticate;
pub mod cancel;
mod login;
pub mod params;
mod query;
pub mod socket;
pub mod statements;
pub mod stream;
pub mod tls;

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::cancel::CancelTarget;
use crate::protocol::backend::ErrorFields;
use crate::protocol::{ClientError, SqlState};
use params::ParamSet;
use statements::ServerStatements;

pub use login::{connect, connect_with, LoginRequest};
pub use query::Row;
pub use stream::ServerStream;

fn params_digest(params: &[(String, String)]) -> u128 {
    crate::keyed_digest::keyed_digest(params)
}

/// A logged-in server connection, idle (ReadyForQuery seen).
pub struct ServerConnection {
    pub stream: ServerStream,
    pub node: String,
    pub address: String,
    /// ParameterStatus values as the server last reported them, in order.
    pub params: Vec<(String, String)>,
    /// A digest of `params`, kept current by [`note_parameter`](Self::note_parameter):
    /// servers reporting the same values share it, so a session moving between them
    /// skips comparing the lists value by value.
    pub params_digest: u128,
    /// ParameterStatus `in_hot_standby` is `on` (PostgreSQL 14 and later; older
    /// servers do not say, and count as not).
    standby: bool,
    pub backend_pid: i32,
    pub backend_secret: i32,
    /// Where a cancel for a query on this connection goes (built once at login).
    pub cancel: CancelTarget,
    pub created_at: Instant,
    /// When it last went back to a pool.
    pub idle_since: Instant,
    /// Session parameters set on it beyond its login defaults.
    pub applied: ParamSet,
    /// Statements prepared on it by the proxy (transaction mode).
    pub statements: ServerStatements,
    /// The worker whose event loop the socket is registered with (None: a thread
    /// that is no worker, such as the pool's housekeeping).
    pub home: Option<usize>,
}

impl ServerConnection {
    /// Registers the socket with the calling worker's event loop when it is
    /// registered elsewhere, so its wake-ups reach the thread that uses it.
    pub fn move_here(&mut self) -> std::io::Result<()> {
        let here = crate::workers::current();
        if here.is_some() && here != self.home {
            self.stream.rehome()?;
            self.home = here;
        }
        Ok(())
    }

    /// Records a ParameterStatus the server sent.
    pub fn note_parameter(&mut self, name: String, value: String) {
        match self.params.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) if slot.1 == value => return,
            Some(slot) => slot.1 = value,
            None => self.params.push((name, value)),
        }
        self.params_digest = params_digest(&self.params);
        self.standby = self
            .params
            .iter()
            .any(|(name, value)| name == "in_hot_standby" && value == "on");
    }

    /// The server says it is a hot standby.
    pub fn is_standby(&self) -> bool {
        self.standby
    }

    /// True when the idle socket shows no sign of trouble: no EOF and no unexpected
    /// bytes (an idle server has nothing to say; anything it says, such as a FATAL
    /// before closing, makes the connection unusable).
    pub fn looks_healthy(&mut self) -> bool {
        self.stream.is_quiet()
    }

    /// Sends Terminate without waiting (best effort) so the server logs a clean exit.
    pub fn say_goodbye(&mut self) {
        self.stream
            .write_now(&crate::protocol::messages::terminate());
    }

    pub fn cancel_target(&self) -> &CancelTarget {
        &self.cancel
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("connecting to {address} timed out after {after:?}")]
    Timeout { address: String, after: Duration },
    #[error("I/O error talking to {address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    /// The server refused the login with an ErrorResponse (kept raw for the client).
    #[error("server refused login: {} {}", fields.code, fields.message)]
    Rejected { fields: ErrorFields, raw: Bytes },
    /// TLS was required and failed: refused, a handshake error, or a certificate
    /// that does not verify (`reason` says which).
    #[error("TLS to {address} failed: {reason}")]
    Tls { address: String, reason: String },
    #[error("cannot authenticate to the server: {0}")]
    Auth(String),
    #[error("protocol error from server: {0}")]
    Protocol(String),
}

impl ServerError {
    /// From the body of an ErrorResponse the server sent.
    pub fn rejected(body: &[u8]) -> ServerError {
        let mut raw = bytes::BytesMut::with_capacity(body.len() + 5);
        raw.extend_from_slice(b"E");
        raw.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        raw.extend_from_slice(body);
        ServerError::Rejected {
            fields: crate::protocol::backend::parse_error_fields(body),
            raw: raw.freeze(),
        }
    }

    /// What the client is told. `Rejected` is better forwarded raw (see `raw_error`).
    pub fn to_client_error(&self, node: &str) -> ClientError {
        let code = match self {
            ServerError::Auth(_) => SqlState::InvalidAuthorization,
            _ => SqlState::ConnectionFailure,
        };
        ClientError::fatal(
            code,
            format!("cannot open a server connection to node \"{node}\""),
        )
        .with_detail(self.to_string())
    }

    /// Whether the node may accept connections again soon: it refused or dropped
    /// the connection, or said it is starting up or shutting down. Wrong
    /// credentials or a missing database are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            ServerError::Connect { .. } | ServerError::Timeout { .. } | ServerError::Io { .. } => {
                true
            }
            ServerError::Rejected { fields, .. } => {
                matches!(fields.code.as_str(), "57P01" | "57P02" | "57P03")
                    || fields.code.starts_with("08")
            }
            ServerError::Auth(_) | ServerError::Protocol(_) | ServerError::Tls { .. } => false,
        }
    }

    /// Whether the node refuses new logins because it is going away: the
    /// connection is refused or reset, or the server says it is shutting down or
    /// not accepting connections. A timeout proves nothing (a busy node is slow).
    pub fn says_node_is_leaving(&self) -> bool {
        match self {
            ServerError::Connect { .. } | ServerError::Io { .. } => true,
            ServerError::Rejected { fields, .. } => {
                matches!(fields.code.as_str(), "57P01" | "57P03")
            }
            _ => false,
        }
    }

    /// The server's own ErrorResponse, when it refused the login.
    pub fn raw_error(&self) -> Option<&Bytes> {
        match self {
            ServerError::Rejected { raw, .. } => Some(raw),
            _ => None,
        }
    }
}
