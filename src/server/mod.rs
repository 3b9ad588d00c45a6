//! One connection to a PostgreSQL server: opened, logged in ([`login`]) and then
//! handed to a session for relaying. The session owns it while it uses it; this is
//! the seam a pool takes over (check out a logged-in connection, give it back).

mod login;

use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::cancel::CancelTarget;
use crate::protocol::backend::ErrorFields;
use crate::protocol::{ClientError, SqlState};

pub use login::{connect, LoginRequest};

/// A logged-in server connection, idle (ReadyForQuery seen).
pub struct ServerConnection {
    pub stream: TcpStream,
    pub node: String,
    pub address: String,
    /// ParameterStatus values the server reported during login, in order.
    pub params: Vec<(String, String)>,
    pub backend_pid: i32,
    pub backend_secret: i32,
}

impl ServerConnection {
    pub fn cancel_target(&self) -> CancelTarget {
        CancelTarget {
            address: self.address.clone(),
            pid: self.backend_pid,
            secret: self.backend_secret,
        }
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
    #[error("cannot authenticate to the server: {0}")]
    Auth(String),
    #[error("protocol error from server: {0}")]
    Protocol(String),
}

impl ServerError {
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

    /// The server's own ErrorResponse, when it refused the login.
    pub fn raw_error(&self) -> Option<&Bytes> {
        match self {
            ServerError::Rejected { raw, .. } => Some(raw),
            _ => None,
        }
    }
}
