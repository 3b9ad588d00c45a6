//! The client-side TLS settings (`tls:` at the top level, overridable per
//! listener) and their shape checks. Whether the files exist and hold a usable
//! certificate and key is checked where they are loaded (the top-level `tls`
//! module): by `switchyard check`, at start and on every reload.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};

/// Whether clients may or must use TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// SSLRequest is answered 'N'; direct TLS is refused (the default).
    #[default]
    Disable,
    /// TLS is offered; plaintext clients are accepted too.
    Allow,
    /// TLS is offered; a plaintext StartupMessage gets FATAL 28000.
    Require,
}

/// Lowest TLS protocol version accepted from clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "TLSv1.2")]
    Tls12,
    #[serde(rename = "TLSv1.3")]
    Tls13,
}

/// `tls:`: the certificate clients see and how TLS is negotiated with them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    #[serde(default)]
    pub mode: ClientTlsMode,
    /// PEM file: the server certificate, then any intermediates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM file: the private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// PEM file of CA certificates: clients presenting a certificate must have one
    /// signed by these (verify-ca); enables `auth: cert` users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub min_version: TlsVersion,
}

impl ClientTlsConfig {
    pub fn is_enabled(&self) -> bool {
        self.mode != ClientTlsMode::Disable
    }
}

impl Config {
    /// The TLS settings for a listener: its own `tls:` replaces the top-level one
    /// whole.
    pub fn tls_for<'a>(&'a self, listener: &'a super::ListenerConfig) -> &'a ClientTlsConfig {
        listener.tls.as_ref().unwrap_or(&self.tls)
    }
}

pub(super) fn validate_tls(config: &Config) -> Result<(), ConfigError> {
    check_shape(&config.tls, "tls")?;
    for (i, listener) in config.listeners.iter().enumerate() {
        if let Some(tls) = &listener.tls {
            check_shape(tls, &format!("listeners[{i}].tls"))?;
        }
    }
    for (i, user) in config.users.iter().enumerate() {
        if user.auth != super::ClientAuthMethod::Cert {
            continue;
        }
        let usable = config
            .listeners
            .iter()
            .any(|l| config.tls_for(l).client_ca.is_some());
        if !usable {
            return Err(ConfigError::invalid(
                format!("users[{i}].auth"),
                "`cert` needs a listener whose tls: sets client_ca (no client certificate \
                 could ever be verified)",
            ));
        }
    }
    Ok(())
}

fn check_shape(tls: &ClientTlsConfig, key: &str) -> Result<(), ConfigError> {
    if tls.is_enabled() {
        if tls.cert.is_none() {
            return Err(ConfigError::invalid(
                format!("{key}.cert"),
                "required when mode is allow or require",
            ));
        }
        if tls.key.is_none() {
            return Err(ConfigError::invalid(
                format!("{key}.key"),
                "required when mode is allow or require",
            ));
        }
    } else if tls.client_ca.is_some() {
        return Err(ConfigError::invalid(
            format!("{key}.client_ca"),
            "client certificates need TLS: set mode to allow or require",
        ));
    }
    Ok(())
}
