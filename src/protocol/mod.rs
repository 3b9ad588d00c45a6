//! The PostgreSQL wire protocol as far as a proxy needs it: stream framing for the
//! relay ([`frame`]), pre-session packets ([`startup`]), the server messages read
//! during login ([`backend`]), builders for what the proxy writes ([`messages`], and [`result_set`] for
//! the replies it answers itself) and
//! named SQLSTATEs ([`sqlstate`]).

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod messages;
pub mod result_set;
pub mod sqlstate;
pub mod startup;
pub mod tag;

pub use messages::ClientError;
pub use sqlstate::SqlState;

/// Splits a NUL-terminated string off the front of `bytes`.
pub fn split_cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..nul], &bytes[nul + 1..]))
}

/// A complete protocol message (type, length, body), for tests.
#[cfg(test)]
pub(crate) fn test_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}
