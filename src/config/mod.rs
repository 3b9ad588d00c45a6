//! The YAML configuration: its schema with defaults, loading (with `${ENV}` expansion
//! in secrets) and validation. A `Config` is an immutable snapshot; nothing in the
//! proxy reads configuration from anywhere else.

mod access;
mod api;
mod auth_query;
mod cidr;
mod client;
mod peers;
mod redact;
mod server_tls;
mod tls;
mod tls_files;
mod units;
mod validate;
pub use validate::notes;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::require::RequireAuth;

pub use access::{
    decide as decide_access, AccessDecision, AccessMethod, AccessRequest, AccessRule, AccessTls,
};
pub use api::{host_port, split_host, ApiEndpoint};
pub use auth_query::{AuthQueryConfig, DEFAULT_AUTH_QUERY};
pub use cidr::Cidr;
pub use client::ClientConfig;
pub use peers::{PeerConfig, MAX_PEER_ID};
pub use server_tls::{ApiTls, ApiTlsConfig, ServerTls, ServerTlsMode, TlsPolicy};
pub use tls::{ClientTlsConfig, ClientTlsMode, TlsVersion};
pub use tls_files::provider as tls_provider;
pub use units::{ByteSize, HumanDuration, Limit, MaxLag};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    pub cluster: ClusterConfig,
    pub users: Vec<UserConfig>,
    /// Looks up users that are not in `users:` on the cluster (`auth_query`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthQueryConfig>,
    /// Who may connect and how they authenticate, tried in order before
    /// authentication (pg_hba.conf's idea); none: anyone may try, each user with
    /// its own `auth`.
    #[serde(default)]
    pub access: Vec<AccessRule>,
    /// TLS towards clients; each listener may replace it with its own `tls:`.
    #[serde(default)]
    pub tls: ClientTlsConfig,
    #[serde(default)]
    pub client: ClientConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
    /// On SIGTERM, how long clients may take to finish their current transaction
    /// before they are disconnected (57P01).
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: HumanDuration,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// This instance's id among its peers, carried in every cancel key it mints;
    /// 0 (the default) means no peering.
    #[serde(default)]
    pub peer_id: u32,
    /// The other instances: cancel requests for keys they minted are passed on.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
}

fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// `RUST_LOG`-style filter (`info`, `switchyard=debug,info`); the `RUST_LOG`
    /// environment variable wins when set. Read at startup only.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

/// The threads that serve clients (see `crate::workers`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads, each running its own event loop; default: the CPUs this
    /// process may use. Read at startup.
    #[serde(default = "default_workers")]
    pub workers: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: default_workers(),
        }
    }
}

/// Upper bound on `runtime.workers`: far beyond any useful count, low enough that
/// a typo cannot start thousands of threads.
pub const MAX_WORKERS: u32 = 256;

fn default_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
        .min(MAX_WORKERS)
}

fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_log_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// A client that needs the primary while there is none (failover, switchover,
    /// split brain) waits this long for one before it gets 57P03.
    #[serde(default = "default_hold_timeout")]
    pub hold_timeout: HumanDuration,
    /// Send a request again on the new primary when the old one shut down before
    /// running it (see README, Failover). Off: the client gets the server's error.
    #[serde(default = "default_resend")]
    pub resend: bool,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            hold_timeout: default_hold_timeout(),
            resend: default_resend(),
        }
    }
}

fn default_resend() -> bool {
    true
}

fn default_hold_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// Which nodes a listener sends its sessions to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// The confirmed primary only.
    Primary,
    /// Healthy replicas, least-connections with round-robin ties.
    Replica,
}

/// Where a replica route goes when no replica is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    Primary,
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub route: Route,
    #[serde(default = "default_fallback")]
    pub fallback: Fallback,
    /// Overrides of the global `pool:` settings for this listener's sessions.
    #[serde(default, skip_serializing_if = "PoolOverride::is_empty")]
    pub pool: PoolOverride,
    /// Replaces the top-level `tls:` for this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsConfig>,
}

fn default_fallback() -> Fallback {
    Fallback::Primary
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// HTTP listener for /health, /status, /metrics and POST /reload.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Networks (CIDR) allowed to POST /reload; loopback is always allowed.
    #[serde(default)]
    pub reload_allowed_from: Vec<String>,
    /// Users (from `users:`) who may open the PgBouncer-style admin console by
    /// connecting to the database `pgbouncer` or `switchyard`: every command.
    #[serde(default)]
    pub console_users: Vec<String>,
    /// Users who may open the console for the SHOW commands only.
    #[serde(default)]
    pub console_stats_users: Vec<String>,
    /// Networks (CIDR) the console may be opened from; loopback is always allowed.
    #[serde(default)]
    pub console_allowed_from: Vec<String>,
    /// When set, every endpoint but `/health` needs `Authorization: Bearer <token>`.
    /// `${VAR}` parts come from the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Admin HTTP connections served at once; more get 503 until one ends.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            reload_allowed_from: Vec::new(),
            console_users: Vec::new(),
            console_stats_users: Vec::new(),
            console_allowed_from: Vec::new(),
            token: None,
            max_connections: default_admin_max_connections(),
        }
    }
}

fn default_admin_max_connections() -> u32 {
    64
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// Where node roles come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// Each node's Patroni REST API (`/primary`, `/replica`).
    #[default]
    Patroni,
    /// Each PostgreSQL server itself, over a persistent connection
    /// (`pg_is_in_recovery()`): for repmgr, pg_auto_failover or hand-run clusters.
    Sql,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `patroni` (the default) or `sql`.
    #[serde(default)]
    pub discovery: Discovery,
    /// How the SQL probe logs in; required with `discovery: sql`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeConfig>,
    pub nodes: Vec<NodeConfig>,
    #[serde(default)]
    pub health: HealthConfig,
    /// Replicas further behind the primary than this (as Patroni measures it)
    /// leave the read route; `off` (the default) disables the check.
    #[serde(default)]
    pub max_replica_lag: MaxLag,
    /// CIDR ranges members learned from Patroni's `/cluster` must be in (their
    /// host and REST API host); empty: any.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// TLS for `https://` Patroni API URLs: the CA, and a client certificate for
    /// Patroni's `restapi.verify_client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_tls: Option<ApiTlsConfig>,
    /// `api_tls` loaded, filled in by validation.
    #[serde(skip)]
    pub api_tls_loaded: Option<ApiTls>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Empty only for an API-only seed (members then come from Patroni's /cluster).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Patroni REST API base URL, e.g. `http://10.0.0.3:8008`. Required with
    /// `discovery: patroni`; allowed but unused with `discovery: sql`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// Parsed form of `api`, filled in by validation.
    #[serde(skip)]
    pub api_endpoint: Option<ApiEndpoint>,
    /// This node's own `server.tls` (and `tls_ca`, `tls_cert`, `tls_key`); unset
    /// ones come from `server:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
}

impl NodeConfig {
    /// `host:port` of the PostgreSQL server, as used to connect.
    pub fn pg_address(&self) -> String {
        host_port(&self.host, self.port)
    }

    /// Sets any of its own TLS settings.
    pub fn overrides_tls(&self) -> bool {
        self.tls.is_some()
            || self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
    }

    /// Listed only by its Patroni API: a seed for membership discovery.
    pub fn is_seed(&self) -> bool {
        self.host.is_empty()
    }
}

impl ClusterConfig {
    /// Nodes are learned from Patroni's `/cluster` (the config lists API seeds only).
    pub fn members_from_patroni(&self) -> bool {
        self.discovery == Discovery::Patroni && self.nodes.iter().all(NodeConfig::is_seed)
    }
}

fn default_pg_port() -> u16 {
    5432
}

/// The login the SQL probe uses on every node. It needs no privileges beyond
/// logging in to `database`: the functions it calls are executable by everyone.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    pub user: String,
    /// `${VAR}` parts come from the environment, as for users' passwords.
    pub password: Secret,
    #[serde(default = "default_probe_database")]
    pub database: String,
    /// Authentication methods a server may ask the probe to use (as
    /// `server.require_auth`, which the cluster section does not see).
    #[serde(default)]
    pub require_auth: RequireAuth,
}

fn default_probe_database() -> String {
    "postgres".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    #[serde(default = "default_interval")]
    pub timeout: HumanDuration,
    /// Consecutive successes before a node is trusted in a role.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failed checks (no answer) before a node loses its role.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: default_interval(),
            timeout: default_interval(),
            rise: default_rise(),
            fall: default_fall(),
        }
    }
}

fn default_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

/// How a client must prove its password to Switchyard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ClientAuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    /// A TLS client certificate, verified against `tls.client_ca`, whose common
    /// name (CN) is the user name. The password is still used for server logins.
    #[serde(rename = "cert")]
    Cert,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Used both to check clients and to log in to PostgreSQL as this user.
    pub password: Secret,
    #[serde(default = "default_client_auth")]
    pub auth: ClientAuthMethod,
    /// Overrides `server.require_auth` for this user's server logins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_auth: Option<RequireAuth>,
}

impl UserConfig {
    /// The methods a server may use to log this user in.
    pub fn server_require_auth(&self, server: &ServerConfig) -> RequireAuth {
        self.require_auth.unwrap_or(server.require_auth)
    }
}

fn default_client_auth() -> ClientAuthMethod {
    ClientAuthMethod::ScramSha256
}

/// A secret from the config. `${NAME}` parts are replaced from the environment at
/// load time; it never prints its value.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Connecting and logging in to a PostgreSQL node must finish within this.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Sending a cancel request to a node must finish within this.
    #[serde(default = "default_cancel_timeout")]
    pub cancel_timeout: HumanDuration,
    /// TCP keepalive on server connections, so a node that vanished without a
    /// reset (a partition, a powered-off host) is noticed within seconds.
    #[serde(default)]
    pub keepalive: KeepaliveConfig,
    /// A server that owes a reply and sends nothing for this long is given up on:
    /// the client gets 57014 and both connections are closed. Off by default.
    #[serde(default)]
    pub query_timeout: Limit,
    /// Authentication methods a server may ask Switchyard to use (libpq's
    /// `require_auth`); by default SCRAM-SHA-256 only.
    #[serde(default)]
    pub require_auth: RequireAuth,
    /// TLS to PostgreSQL servers, with libpq's `sslmode` meanings.
    #[serde(default)]
    pub tls: ServerTlsMode,
    /// CA certificate(s) (PEM) the servers' certificates must be signed by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    /// Client certificate and key (PEM) for servers that ask for one (`cert` auth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
    /// The above (and the nodes' overrides) loaded, filled in by validation.
    #[serde(skip)]
    pub tls_loaded: ServerTls,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            connect_timeout: default_connect_timeout(),
            cancel_timeout: default_cancel_timeout(),
            keepalive: KeepaliveConfig::default(),
            query_timeout: Limit::default(),
            require_auth: RequireAuth::default(),
            tls: ServerTlsMode::default(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_loaded: ServerTls::default(),
        }
    }
}

/// TCP keepalive for server connections: the first probe after `idle` without
/// traffic, then one every `interval`; after `count` unanswered probes the kernel
/// drops the connection. On Linux, TCP_USER_TIMEOUT is set to the same total
/// (`idle + interval * count`), so a write nobody acknowledges fails as soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveConfig {
    #[serde(default = "default_keepalive_idle")]
    pub idle: HumanDuration,
    #[serde(default = "default_keepalive_interval")]
    pub interval: HumanDuration,
    #[serde(default = "default_keepalive_count")]
    pub count: u32,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        KeepaliveConfig {
            idle: default_keepalive_idle(),
            interval: default_keepalive_interval(),
            count: default_keepalive_count(),
        }
    }
}

impl KeepaliveConfig {
    /// How long a dead peer goes unnoticed at most: the keepalive probes' total,
    /// also used as TCP_USER_TIMEOUT.
    pub fn give_up_after(&self) -> Duration {
        self.idle.0 + self.interval.0 * self.count
    }
}

fn default_keepalive_idle() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_keepalive_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_keepalive_count() -> u32 {
    3
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_cancel_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(3))
}

/// How client sessions share server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A server connection per client session, returned (after `reset_query`) when
    /// the client leaves. Everything PostgreSQL offers works.
    Session,
    /// A server connection per transaction: held from a transaction's first message
    /// until ReadyForQuery says idle. Session state is limited to what Switchyard
    /// tracks (startup parameters, SET outside transactions, prepared statements).
    Transaction,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default = "default_pool_mode")]
    pub mode: PoolMode,
    /// Server connections per (node, database, user).
    #[serde(default = "default_pool_size")]
    pub size: u32,
    /// Idle server connections kept open per pool even without clients.
    #[serde(default)]
    pub min_idle: u32,
    /// Client connections accepted across all listeners; more get 53300.
    #[serde(default = "default_max_clients")]
    pub max_client_connections: u32,
    /// A client waiting longer than this for a server connection gets an error.
    #[serde(default = "default_checkout_timeout")]
    pub checkout_timeout: HumanDuration,
    /// Idle server connections older than this (unused) are closed.
    #[serde(default = "default_server_idle_timeout")]
    pub server_idle_timeout: HumanDuration,
    /// Server connections are closed (when idle) after this long.
    #[serde(default = "default_server_lifetime")]
    pub server_lifetime: HumanDuration,
    /// Run on a session-mode server connection before it goes back to the pool.
    #[serde(default = "default_reset_query")]
    pub reset_query: String,
    /// Prepared statements kept per server connection (transaction mode), LRU.
    #[serde(default = "default_max_prepared")]
    pub max_prepared_statements: u32,
    /// A client idle inside a transaction (its server attached, waiting for the
    /// client) this long is disconnected with 25P03 and its server closed. Off by
    /// default, as in PgBouncer.
    #[serde(default)]
    pub idle_transaction_timeout: Limit,
    /// Pools (one per node, database and user) that may exist at once; a client
    /// whose database would need another gets 53400. Empty pools are removed after
    /// `server_idle_timeout`.
    #[serde(default = "default_max_pools")]
    pub max_pools: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            mode: default_pool_mode(),
            size: default_pool_size(),
            min_idle: 0,
            max_client_connections: default_max_clients(),
            checkout_timeout: default_checkout_timeout(),
            server_idle_timeout: default_server_idle_timeout(),
            server_lifetime: default_server_lifetime(),
            reset_query: default_reset_query(),
            max_prepared_statements: default_max_prepared(),
            idle_transaction_timeout: Limit::default(),
            max_pools: default_max_pools(),
        }
    }
}

fn default_pool_mode() -> PoolMode {
    PoolMode::Session
}
fn default_pool_size() -> u32 {
    20
}
fn default_max_clients() -> u32 {
    10_000
}
fn default_checkout_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_server_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_server_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
fn default_reset_query() -> String {
    "DISCARD ALL".into()
}
fn default_max_prepared() -> u32 {
    500
}
fn default_max_pools() -> u32 {
    1000
}

/// Per-listener pool settings; unset fields come from the global `pool:`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PoolMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout_timeout: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_query: Option<String>,
}

impl PoolOverride {
    pub fn is_empty(&self) -> bool {
        self.mode.is_none() && self.checkout_timeout.is_none() && self.reset_query.is_none()
    }
}

/// The pool settings that apply to one listener's sessions.
#[derive(Debug, Clone)]
pub struct SessionPooling {
    pub mode: PoolMode,
    pub checkout_timeout: Duration,
    pub reset_query: String,
}

impl Config {
    /// Pool settings for a listener: its overrides on top of the global ones.
    pub fn pooling_for(&self, listener: &ListenerConfig) -> SessionPooling {
        SessionPooling {
            mode: listener.pool.mode.unwrap_or(self.pool.mode),
            checkout_timeout: listener
                .pool
                .checkout_timeout
                .unwrap_or(self.pool.checkout_timeout)
                .0,
            reset_query: listener
                .pool
                .reset_query
                .clone()
                .unwrap_or_else(|| self.pool.reset_query.clone()),
        }
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_yaml_str(&text)
    }

    /// Parses and validates YAML text, using the process environment for `${VAR}`.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str_with_env(text, &|name| std::env::var(name).ok())
    }

    pub fn from_yaml_str_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config: Config = serde_saphyr::from_str(text)
            .map_err(|e| ConfigError::Parse(redact::parse_error(text, &e)))?;
        validate::expand_secrets(&mut config, env)?;
        validate::validate(&mut config)?;
        Ok(config)
    }

    /// The effective configuration (defaults filled in, secrets redacted) as YAML.
    pub fn to_effective_yaml(&self) -> String {
        serde_saphyr::to_string(self)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }

    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }
}
