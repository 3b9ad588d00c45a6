//! TLS toward PostgreSQL servers (`server.tls`, `server.tls_ca`, `server.tls_cert`,
//! `server.tls_key`, overridable per node) and toward Patroni's REST API
//! (`cluster.api_tls`): the settings' vocabulary and their resolution, at load time,
//! into ready rustls client configurations held by the config snapshot. Loading the
//! files here means `check` and a reload refuse a bad file before anything uses it,
//! and a connection never reads a file. The TLS exchange itself is `server::tls`.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::ClientConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::tls_files::{client_config, TlsFiles, Verify};
use super::{Config, ConfigError};

/// libpq's `sslmode` values, with libpq's meanings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Plaintext; no SSLRequest is sent.
    Disable,
    /// TLS when the server offers it, plaintext when it answers 'N'.
    #[default]
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS with a certificate signed by `tls_ca`.
    VerifyCa,
    /// TLS with a certificate signed by `tls_ca` and naming the node's host.
    VerifyFull,
}

impl ServerTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerTlsMode::Disable => "disable",
            ServerTlsMode::Prefer => "prefer",
            ServerTlsMode::Require => "require",
            ServerTlsMode::VerifyCa => "verify-ca",
            ServerTlsMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a server answering 'N' is acceptable.
    pub fn allows_plaintext(self) -> bool {
        matches!(self, ServerTlsMode::Disable | ServerTlsMode::Prefer)
    }
}

/// `cluster.api_tls`: the CA that signed Patroni's REST API certificate, and the
/// client certificate Patroni's `restapi.verify_client` asks for.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// How connections to one server are made.
pub struct TlsPolicy {
    pub mode: ServerTlsMode,
    /// `None` exactly when `mode` is `disable`.
    pub connector: Option<Arc<ClientConfig>>,
}

impl TlsPolicy {
    /// `disable`: plain TCP, no SSLRequest.
    pub fn plaintext() -> TlsPolicy {
        TlsPolicy {
            mode: ServerTlsMode::Disable,
            connector: None,
        }
    }
}

impl std::fmt::Debug for TlsPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.mode.as_str())
    }
}

/// The resolved server TLS settings of one config snapshot: a policy per node
/// address with an override, the global one for every other (discovered) node.
#[derive(Clone)]
pub struct ServerTls {
    default: Arc<TlsPolicy>,
    by_address: Arc<HashMap<String, Arc<TlsPolicy>>>,
    /// Modes and file contents: equal fingerprints mean nothing changed.
    fingerprint: [u8; 32],
}

impl ServerTls {
    /// The policy for the server at `address` (`host:port`).
    pub fn for_address(&self, address: &str) -> &Arc<TlsPolicy> {
        self.by_address.get(address).unwrap_or(&self.default)
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }
}

impl Default for ServerTls {
    /// `prefer` without files: what a config that says nothing about TLS gets.
    fn default() -> Self {
        let mut digest = Sha256::new();
        let files = TlsFiles {
            ca: None,
            cert: None,
            key: None,
        };
        let connector = client_config(&files, Verify::Nothing, &mut digest)
            .ok()
            .map(Arc::new);
        ServerTls {
            default: Arc::new(TlsPolicy {
                mode: ServerTlsMode::Prefer,
                connector,
            }),
            by_address: Arc::default(),
            fingerprint: digest.finalize().into(),
        }
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("default", &self.default)
            .field("by_address", &self.by_address)
            .finish()
    }
}

/// A built client configuration for Patroni's REST API.
#[derive(Clone)]
pub struct ApiTls {
    pub connector: Arc<ClientConfig>,
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiTls")
    }
}

/// A file setting with the config key it came from (for error messages).
type KeyedPath = Option<(String, String)>;

fn keyed(key: &str, path: &Option<String>) -> KeyedPath {
    path.clone().map(|path| (key.to_string(), path))
}

/// One set of server TLS settings (global or a node's, overrides applied).
struct Settings {
    mode: ServerTlsMode,
    ca: KeyedPath,
    cert: KeyedPath,
    key: KeyedPath,
}

fn policy(
    settings: &Settings,
    mode_key: &str,
    digest: &mut Sha256,
) -> Result<TlsPolicy, ConfigError> {
    digest.update(settings.mode.as_str().as_bytes());
    let verify = match (settings.mode, &settings.ca) {
        (ServerTlsMode::Disable, _) => return Ok(TlsPolicy::plaintext()),
        (ServerTlsMode::VerifyFull, Some(_)) => Verify::ChainAndName,
        // libpq: with a root certificate, even prefer and require check the chain.
        (_, Some(_)) => Verify::Chain,
        (ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull, None) => {
            return Err(ConfigError::invalid(
                mode_key,
                format!(
                    "{} needs tls_ca (the CA certificate that signed the servers' certificates)",
                    settings.mode.as_str()
                ),
            ))
        }
        (_, None) => Verify::Nothing,
    };
    let files = TlsFiles {
        ca: settings.ca.clone(),
        cert: settings.cert.clone(),
        key: settings.key.clone(),
    };
    let config = client_config(&files, verify, digest)?;
    Ok(TlsPolicy {
        mode: settings.mode,
        connector: Some(Arc::new(config)),
    })
}

/// Resolves `server.tls*` and the nodes' overrides; errors name the key and file.
pub(super) fn resolve_server_tls(config: &Config) -> Result<ServerTls, ConfigError> {
    let server = &config.server;
    let mut digest = Sha256::new();
    let global = Settings {
        mode: server.tls,
        ca: keyed("server.tls_ca", &server.tls_ca),
        cert: keyed("server.tls_cert", &server.tls_cert),
        key: keyed("server.tls_key", &server.tls_key),
    };
    let default = Arc::new(policy(&global, "server.tls", &mut digest)?);
    let mut by_address = HashMap::new();
    for (i, node) in config.cluster.nodes.iter().enumerate() {
        if !node.overrides_tls() {
            continue;
        }
        let key = |name: &str| format!("cluster.nodes[{i}].{name}");
        let own = Settings {
            mode: node.tls.unwrap_or(server.tls),
            ca: keyed(&key("tls_ca"), &node.tls_ca).or_else(|| global.ca.clone()),
            cert: keyed(&key("tls_cert"), &node.tls_cert).or_else(|| global.cert.clone()),
            key: keyed(&key("tls_key"), &node.tls_key).or_else(|| global.key.clone()),
        };
        digest.update(node.pg_address().as_bytes());
        let resolved = policy(&own, &key("tls"), &mut digest)?;
        by_address.insert(node.pg_address(), Arc::new(resolved));
    }
    Ok(ServerTls {
        default,
        by_address: Arc::new(by_address),
        fingerprint: digest.finalize().into(),
    })
}

/// Builds `cluster.api_tls`; `https` says whether any `api:` URL needs it.
pub(super) fn resolve_api_tls(config: &Config, https: bool) -> Result<Option<ApiTls>, ConfigError> {
    let Some(api) = &config.cluster.api_tls else {
        if https {
            return Err(ConfigError::invalid(
                "cluster.api_tls.ca",
                "required for https:// api URLs (the CA that signed Patroni's REST API \
                 certificate)",
            ));
        }
        return Ok(None);
    };
    let Some(ca) = &api.ca else {
        return Err(ConfigError::invalid(
            "cluster.api_tls.ca",
            "required: the CA that signed Patroni's REST API certificate",
        ));
    };
    let mut digest = Sha256::new();
    let files = TlsFiles {
        ca: keyed("cluster.api_tls.ca", &Some(ca.clone())),
        cert: keyed("cluster.api_tls.cert", &api.cert),
        key: keyed("cluster.api_tls.key", &api.key),
    };
    let connector = client_config(&files, Verify::ChainAndName, &mut digest)?;
    Ok(Some(ApiTls {
        connector: Arc::new(connector),
        fingerprint: digest.finalize().into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
listeners:
  - { name: rw, listen: "127.0.0.1:5000", route: primary }
cluster:
  nodes:
    - { name: a, host: db1.example.net, api: "http://10.0.0.3:8008" NODE }
    - { name: b, host: 10.0.0.4, api: "http://10.0.0.4:8008" }
users:
  - { name: app, password: pw }
server:
SERVER"#;

    fn load(node: &str, server: &str) -> Result<Config, ConfigError> {
        let text = BASE.replace("NODE", node).replace("SERVER", server);
        Config::from_yaml_str_with_env(&text, &|_| None)
    }

    /// A CA certificate, a client certificate and key it signed, and a key that
    /// belongs to neither, written to a temp dir.
    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            let dir = tempfile::tempdir().expect("temp dir");
            let ca_key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = params.self_signed(&ca_key).expect("CA");
            let key = rcgen::KeyPair::generate().expect("key");
            let client = rcgen::CertificateParams::new(vec!["app".to_string()])
                .expect("params")
                .signed_by(&key, &ca, &ca_key)
                .expect("client cert");
            let other = rcgen::KeyPair::generate().expect("key");
            let write = |name: &str, text: String| {
                std::fs::write(dir.path().join(name), text).expect("write");
            };
            write("ca.crt", ca.pem());
            write("client.crt", client.pem());
            write("client.key", key.serialize_pem());
            write("other.key", other.serialize_pem());
            write("garbage.crt", "not a certificate\n".to_string());
            Files { dir }
        }

        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).to_string_lossy().into_owned()
        }
    }

    fn error(node: &str, server: &str) -> String {
        load(node, server).expect_err("refused").to_string()
    }

    #[test]
    fn the_default_is_prefer_without_files() {
        let config = load("", "  connect_timeout: 5s\n").expect("valid");
        let policy = config.server.tls_loaded.for_address("10.0.0.4:5432");
        assert_eq!(policy.mode, ServerTlsMode::Prefer);
        assert!(policy.connector.is_some());
    }

    #[test]
    fn check_notes_unauthenticated_servers() {
        let unauthenticated = |config: &Config| {
            crate::config::notes(config)
                .iter()
                .any(|n| n.contains("servers are not authenticated"))
        };
        assert!(unauthenticated(
            &load("", "  connect_timeout: 5s\n").expect("valid")
        ));
        assert!(unauthenticated(
            &load("", "  tls: require\n").expect("valid")
        ));
        assert!(!unauthenticated(
            &load("", "  tls: disable\n").expect("valid")
        ));
        let files = Files::new();
        let verified = format!("  tls: verify-full\n  tls_ca: {}\n", files.path("ca.crt"));
        assert!(!unauthenticated(&load("", &verified).expect("valid")));
    }

    #[test]
    fn verification_needs_a_ca() {
        let message = error("", "  tls: verify-full\n");
        assert!(
            message.starts_with("server.tls: verify-full needs tls_ca"),
            "{message}"
        );
        let message = error(", tls: verify-ca", "  tls: disable\n");
        assert!(
            message.starts_with("cluster.nodes[0].tls: verify-ca needs tls_ca"),
            "{message}"
        );
    }

    #[test]
    fn file_errors_name_the_key_the_file_and_the_reason() {
        let files = Files::new();
        let missing = files.path("missing.crt");
        let message = error("", &format!("  tls: require\n  tls_ca: {missing}\n"));
        assert!(
            message.starts_with("server.tls_ca: cannot read"),
            "{message}"
        );
        assert!(
            message.contains("missing.crt") && message.contains("No such file"),
            "{message}"
        );

        let garbage = files.path("garbage.crt");
        let message = error("", &format!("  tls: verify-ca\n  tls_ca: {garbage}\n"));
        assert!(message.contains("holds no PEM certificate"), "{message}");

        let (cert, other) = (files.path("client.crt"), files.path("other.key"));
        let message = error("", &format!("  tls_cert: {cert}\n  tls_key: {other}\n"));
        assert!(message.starts_with("server.tls_key:"), "{message}");
        assert!(message.contains("does not go with"), "{message}");

        let message = error("", &format!("  tls_cert: {cert}\n"));
        assert!(message.contains("needs both"), "{message}");
    }

    #[test]
    fn a_node_overrides_what_it_sets_and_inherits_the_rest() {
        let files = Files::new();
        let server = format!(
            "  tls: disable\n  tls_ca: {}\n  tls_cert: {}\n  tls_key: {}\n",
            files.path("ca.crt"),
            files.path("client.crt"),
            files.path("client.key")
        );
        let config = load(", tls: verify-full", &server).expect("valid");
        let tls = &config.server.tls_loaded;
        let own = tls.for_address("db1.example.net:5432");
        assert_eq!(own.mode, ServerTlsMode::VerifyFull);
        assert!(own
            .connector
            .as_ref()
            .is_some_and(|c| c.client_auth_cert_resolver.has_certs()));
        let other = tls.for_address("10.0.0.4:5432");
        assert_eq!(other.mode, ServerTlsMode::Disable);
        assert!(other.connector.is_none());
    }

    #[test]
    fn https_apis_need_api_tls_and_changed_files_change_the_fingerprint() {
        let files = Files::new();
        let https = ", api: \"https://10.0.0.3:8008\"";
        let text = BASE
            .replace("api: \"http://10.0.0.3:8008\" NODE", &https[2..])
            .replace("SERVER", "  tls: disable\n");
        let message = Config::from_yaml_str_with_env(&text, &|_| None)
            .expect_err("no api_tls")
            .to_string();
        assert!(
            message.starts_with("cluster.api_tls.ca: required"),
            "{message}"
        );

        let with_tls = text.replace(
            "cluster:\n",
            &format!("cluster:\n  api_tls: {{ ca: {} }}\n", files.path("ca.crt")),
        );
        let fingerprint = |text: &str| {
            Config::from_yaml_str_with_env(text, &|_| None)
                .expect("valid")
                .cluster
                .api_tls_loaded
                .map(|t| t.fingerprint)
        };
        let before = fingerprint(&with_tls);
        assert!(before.is_some());
        std::fs::copy(files.path("client.crt"), files.path("ca.crt")).expect("replace file");
        assert_ne!(before, fingerprint(&with_tls), "a file changed in place");
    }
}
