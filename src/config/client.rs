//! The `client:` section: what every client connection is held to while it
//! starts, logs in and sends requests (time, message size, bytes held for it, and
//! the limits on connections that have not finished logging in).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{ByteSize, HumanDuration};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// A client must finish TLS negotiation, startup and authentication within this.
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout: HumanDuration,
    /// Largest message a client may send; larger ones end the session with 08P01.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: ByteSize,
    /// All clients together may have this much held by the proxy beyond its read
    /// buffers (request copies kept for a failover resend, replies held back to
    /// judge them); past it requests are simply not resendable.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: ByteSize,
    /// Connections that have not finished authentication, all listeners together;
    /// more are refused at accept (53300), so a flood of idle sockets cannot take
    /// the proxy's connections or file descriptors from real clients.
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated: u32,
    /// The same, per client IP address.
    #[serde(default = "default_max_unauthenticated_per_source")]
    pub max_unauthenticated_per_source: u32,
    /// A failed login (28P01) is answered only after this long, holding the
    /// connection's place under the limits above: password guessing from one
    /// address is slowed to `max_unauthenticated_per_source` tries per delay.
    #[serde(default = "default_auth_failure_delay")]
    pub auth_failure_delay: HumanDuration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            startup_timeout: default_startup_timeout(),
            max_message_size: default_max_message_size(),
            max_buffered_bytes: default_max_buffered_bytes(),
            max_unauthenticated: default_max_unauthenticated(),
            max_unauthenticated_per_source: default_max_unauthenticated_per_source(),
            auth_failure_delay: default_auth_failure_delay(),
        }
    }
}

fn default_max_unauthenticated() -> u32 {
    1_000
}
fn default_max_unauthenticated_per_source() -> u32 {
    100
}
fn default_auth_failure_delay() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
}

fn default_startup_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_max_message_size() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_max_buffered_bytes() -> ByteSize {
    ByteSize(256 << 20)
}
