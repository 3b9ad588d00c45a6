//! Switchyard: a PostgreSQL wire-protocol proxy that follows a Patroni cluster (or
//! asks the servers themselves) and splits writes (to the primary) from reads
//! (across healthy replicas).
//!
//! # Layout
//! Layers from the top; each module imports only from the layers below it (and from
//! earlier modules of its own layer), which `tests/layers.rs` checks:
//! - [`proxy`]: wiring only: builds the context, starts the tasks, binds, drains.
//! - `listener` (accept loops), `reload` (applying a new config), `admin` (HTTP
//!   /health, /status, /metrics, POST /reload, /pause, /resume).
//! - `session`: one client: handshake, authentication, greeting, then the
//!   session-mode relay (held at an idle boundary by PAUSE, and moved to the new
//!   primary after a switchover) or the transaction-mode run loop (attach, resend, fast path),
//!   or the PgBouncer-style admin console.
//! - [`context`]: what the running tasks share, behind narrow accessors.
//! - `router`: a pure function from route and [`topology`] snapshot to a node.
//! - `pool`: per-(node, database, user) server pools, reacting to the topology.
//! - `auth_query`: looking up users that are not configured on the cluster, cached.
//! - [`topology`]: Patroni polling or SQL probes, rise/fall health, snapshots.
//! - [`server`]: one logged-in PostgreSQL connection, its parameters and statements.
//! - [`config`], [`auth`] (SCRAM, MD5), [`tls`] (client TLS: certificates, the
//!   acceptor, the plain-or-TLS client stream), `users`, `metrics` (recording),
//!   `cancel` (keys), `accept_limits` (the limits on connections still logging in).
//! - `protocol` (the wire vocabulary: message names, framing, builders), and small
//!   utilities: `keyed_digest`, `log_text`, `buffer_budget`, `stop_signal`, [`http_client`],
//!   `control` (the pause gate and the client registry the admin console drives),
//!   [`workers`] (the threads, one event loop each, that serve clients).
//!
//! The binaries (`switchyard`, `switchyard-demo`) and the tests use only the public
//! modules.

pub(crate) mod accept_limits;
pub(crate) mod admin;
pub mod auth;
pub(crate) mod auth_query;
pub(crate) mod buffer_budget;
pub(crate) mod cancel;
pub mod config;
pub mod context;
pub(crate) mod control;
#[cfg(test)]
mod fuzz;
pub mod http_client;
pub(crate) mod keyed_digest;
pub(crate) mod listener;
pub(crate) mod log_text;
pub(crate) mod metrics;
pub(crate) mod pool;
pub(crate) mod protocol;
pub mod proxy;
pub(crate) mod reload;
pub(crate) mod router;
pub mod server;
pub(crate) mod session;
pub(crate) mod stop_signal;
pub mod tls;
pub mod topology;
pub(crate) mod users;
pub mod workers;
