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
