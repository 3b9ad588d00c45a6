//! The PostgreSQL wire protocol as far as a proxy needs it: stream framing for the
//! relay ([`frame`]), pre-session packets ([`startup`]), the server messages read
//! during login ([`backend`]), builders for what the proxy writes ([`messages`]) and
//! named SQLSTATEs ([`sqlstate`]).

pub mod backend;
pub mod frame;
pub mod messages;
pub mod sqlstate;
pub mod startup;

pub use messages::{ClientError, Severity};
pub use sqlstate::SqlState;

/// A complete protocol message (type, length, body), for tests.
#[cfg(test)]
pub(crate) fn test_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}
