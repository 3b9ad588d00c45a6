//! The YAML configuration: its schema with defaults, loading (with `${ENV}` expansion
//! in secrets) and validation. A `Config` is an immutable snapshot; nothing in the
//! proxy reads configuration from anywhere else.

mod units;
mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use units::{ByteSize, HumanDuration};
pub use validate::ApiEndpoint;

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
    #[serde(default)]
    pub client: ClientConfig,
    #[serde(default)]
    pub server: ServerConfig,
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
}

fn default_fallback() -> Fallback {
    Fallback::Primary
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// HTTP listener for /health and /status.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub nodes: Vec<NodeConfig>,
    #[serde(default)]
    pub health: HealthConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Patroni REST API base URL, e.g. `http://10.0.0.3:8008`.
    pub api: String,
    /// Parsed form of `api`, filled in by validation.
    #[serde(skip)]
    pub api_endpoint: Option<ApiEndpoint>,
}

impl NodeConfig {
    /// `host:port` of the PostgreSQL server, as used to connect.
    pub fn pg_address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn default_pg_port() -> u16 {
    5432
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
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Used both to check clients and to log in to PostgreSQL as this user.
    pub password: Secret,
    #[serde(default = "default_client_auth")]
    pub auth: ClientAuthMethod,
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
pub struct ClientConfig {
    /// A client must finish TLS negotiation, startup and authentication within this.
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout: HumanDuration,
    /// Largest message a client may send; larger ones end the session with 08P01.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: ByteSize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            startup_timeout: default_startup_timeout(),
            max_message_size: default_max_message_size(),
        }
    }
}

fn default_startup_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_max_message_size() -> ByteSize {
    ByteSize(64 << 20)
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            connect_timeout: default_connect_timeout(),
            cancel_timeout: default_cancel_timeout(),
        }
    }
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_cancel_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(3))
}

impl Config {
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
        let mut config: Config =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
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
