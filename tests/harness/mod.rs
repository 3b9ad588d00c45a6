//! The one harness of switchyard's integration tests (each test binary includes it
//! with `mod harness;`; the failover benchmark includes it too). Its parts:
//!
//! - `proc`: supervised server processes that die (and are cleaned up) with the
//!   test process, free ports, running commands as the `postgres` user, a blocking
//!   `http_get`, log tails, polling, and running a client program with a deadline.
//! - `pg`: a real PostgreSQL primary + streaming replicas, the test roles and
//!   database, psql as superuser.
//! - `patroni`: a real Patroni + etcd cluster of three nodes.
//! - `fake_patroni`: an in-process fake Patroni REST API with switchable answers,
//!   and a minimal async HTTP client.
//! - `proxy`: Switchyard started in-process (`proxy::start`) from a test config
//!   YAML (listeners `rw` and `ro`, the test users, fast health checks), the node
//!   lists for it, and the admin API.
//! - `console`: the admin console: a config with console users and a raw console
//!   client that sees column names and type OIDs.
//! - `certs`: a throwaway CA (rcgen) and the server and client certificates it
//!   signs, written as PEM files.
//! - `clients`: tokio-postgres clients (through the proxy or straight to a server),
//!   readable driver errors, one-value queries, psql as superuser from async code.
//! - `python`: the Python venv of the driver tests (`target/pyenv`, from
//!   `tests/python/requirements.txt`), PyPI source distributions cached under
//!   `target/pysdist`, and running scripts / one-case-per-process case scripts from
//!   `tests/python/` with a deadline.
//! - `login`: raw logins as `app_md5` that keep the greeting, the backend key or
//!   the refusal, for comparing Switchyard with PostgreSQL packet by packet.
//! - `raw_client`: the wire protocol as bytes, for what drivers cannot do: message
//!   builders, reading and parsing replies, a raw MD5 login and a `RawClient`.
//! - `session_writers`: long-lived session-mode writers that keep one connection,
//!   with their own settings and prepared INSERT, checked after the run.
//! - `tls`: a throwaway CA and certificates (rcgen), psql with a connection string,
//!   a tokio-postgres connector on rustls with channel binding.
//! - `wait`: async waiting (`eventually`, `within`) and blocking calls off the
//!   runtime (`blocking`).
//! - `write_load`: a write load for the failover tests and the failover benchmark.

// Every test binary includes the whole harness but uses only part of it, so
// unused items are expected in each binary.
#![allow(dead_code)]

pub mod certs;
pub mod clients;
pub mod console;
pub mod fake_patroni;
pub mod login;
pub mod patroni;
pub mod pg;
pub mod proc;
pub mod proxy;
pub mod python;
pub mod raw_client;
pub mod session_writers;
pub mod tls;
pub mod wait;
pub mod write_load;
