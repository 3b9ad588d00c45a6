//! Switchyard: a PostgreSQL wire-protocol proxy that follows a Patroni cluster (or
//! asks the servers themselves) and splits writes (to the primary) from reads
//! (across healthy replicas).
//!
//! # Layout
//! The data path, in the order a client meets it:
//! - [`listener`]: accept loops, one per configured listener, one task per client.
//! - [`session`]: the client's life: [`session::handshake`] (SSLRequest, cancel,
//!   startup), [`session::client_auth`] (SCRAM-SHA-256 / MD5 against [`users`]),
//!   routing via [`router`], a server connection from [`server`], then
//!   [`session::relay`] until either side leaves.
//! - [`router`]: a pure function from listener route and [`topology`] snapshot to a node.
//! - [`server`]: opening and logging in to a PostgreSQL node.
//! - [`protocol`]: framing (never decoding what is only forwarded), startup packets,
//!   message builders and SQLSTATEs. [`auth`]: SCRAM and MD5 primitives.
//! - [`cancel`]: proxy-minted cancel keys mapped to the server in use, or to the
//!   peer instance (the other half of a Keepalived pair) that minted them.
//!
//! Beside the data path: [`topology`] (Patroni polling, rise/fall health, snapshots),
//! [`admin`] (HTTP /health, /status, /metrics, POST /reload), [`metrics`]
//! (Prometheus), [`config`] (YAML schema and validation), [`reload`] (applying a
//! changed config to the running proxy) and [`proxy`] (wiring it all together and
//! shutting it down, gracefully or at once).

pub(crate) mod admin;
pub mod auth;
pub(crate) mod cancel;
pub mod config;
pub mod context;
pub mod http_client;
pub(crate) mod keyed_digest;
pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod pool;
pub(crate) mod protocol;
pub mod proxy;
pub(crate) mod reload;
pub(crate) mod router;
pub mod server;
pub(crate) mod session;
pub(crate) mod stop_signal;
pub mod topology;
pub(crate) mod users;
