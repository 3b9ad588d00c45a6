//! TLS towards clients, on rustls with the ring crypto provider ([`provider`]):
//! loading a listener's certificate, key and client CA from PEM files with errors
//! that name the file and the reason ([`ClientTls::load`]), the acceptor
//! configuration built from them, and the facts sessions and `/status` need
//! (channel-binding hash, expiry). The client socket that is either plain TCP or
//! TLS lives in [`stream`]. What a reload does with a new [`ClientTls`] is
//! `reload`'s business: this module never swaps anything itself.
//!
//! Not here: negotiating TLS on a connection (`session::handshake`), TLS towards
//! PostgreSQL servers (`server`).

pub mod stream;
pub mod x509;

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientTlsConfig, ClientTlsMode, Config, TlsVersion};

pub use stream::{ClientStream, TlsInfo};

/// The ALPN protocol PostgreSQL 17 requires with direct TLS negotiation.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// A file that cannot serve as the listener's TLS material, and why.
#[derive(Debug, thiserror::Error)]
#[error("{key}{}: {reason}", if path.is_empty() { String::new() } else { format!(" ({path})") })]
pub struct TlsError {
    /// The config key that names the file (`tls.cert`, `listeners[0].tls.key`).
    pub key: String,
    pub path: String,
    pub reason: String,
}

/// A listener's TLS acceptor and what is known about its certificate. Immutable:
/// a reload builds a new one, and sessions keep the one they negotiated with.
#[derive(Debug)]
pub struct ClientTls {
    mode: ClientTlsMode,
    config: Arc<ServerConfig>,
    /// `tls-server-end-point` data of the certificate this acceptor presents.
    end_point: Vec<u8>,
    /// The certificate's notAfter, in seconds since the Unix epoch.
    expires_at: i64,
    verifies_clients: bool,
}

impl ClientTls {
    /// Loads the files `settings` names; `key` is its place in the config, for
    /// errors (`tls`, `listeners[1].tls`). None when TLS is disabled.
    pub fn load(settings: &ClientTlsConfig, key: &str) -> Result<Option<ClientTls>, TlsError> {
        if !settings.is_enabled() {
            return Ok(None);
        }
        let (Some(cert_path), Some(key_path)) = (&settings.cert, &settings.key) else {
            // Validation requires both; this only keeps the error clear.
            return Err(TlsError {
                key: key.into(),
                path: String::new(),
                reason: "cert and key are required when mode is allow or require".into(),
            });
        };
        let cert_key = format!("{key}.cert");
        let chain = load_certificates(cert_path, &cert_key)?;
        let private_key = load_key(key_path, &format!("{key}.key"))?;
        let provider = crate::config::tls_provider();
        check_key_matches(&chain, &private_key, &provider, cert_path, key_path, key)?;
        let leaf = &chain[0];
        let expires_at = x509::not_after(leaf).map_err(|e| error(&cert_key, cert_path, e))?;
        if expires_at <= unix_now() {
            return Err(error(
                &cert_key,
                cert_path,
                format!("the certificate expired ({})", describe_time(expires_at)),
            ));
        }
        let end_point = x509::end_point_hash(leaf).map_err(|e| error(&cert_key, cert_path, e))?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions(settings.min_version))
            .map_err(|e| error(key, Path::new(""), e))?;
        let builder = match &settings.client_ca {
            Some(ca_path) => {
                let verifier = client_verifier(ca_path, &format!("{key}.client_ca"), &provider)?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, private_key)
            .map_err(|e| error(&cert_key, cert_path, e))?;
        // Clients that offer ALPN must offer postgresql (libpq 17 does); older
        // clients offer none, which is accepted after an SSLRequest.
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(Some(ClientTls {
            mode: settings.mode,
            config: Arc::new(config),
            end_point,
            expires_at,
            verifies_clients: settings.client_ca.is_some(),
        }))
    }

    pub fn mode(&self) -> ClientTlsMode {
        self.mode
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    /// Channel-binding data for SCRAM-SHA-256-PLUS on connections this acceptor
    /// served.
    pub fn end_point(&self) -> &[u8] {
        &self.end_point
    }

    /// The certificate's notAfter, in seconds since the Unix epoch.
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// Seconds until the certificate expires (negative once it has).
    pub fn expires_in(&self) -> i64 {
        self.expires_at - unix_now()
    }

    pub fn verifies_clients(&self) -> bool {
        self.verifies_clients
    }
}

/// Every listener's TLS, loaded from the files `config` names: what `check`,
/// start and reload run, so a bad file stops all three with the same message.
/// Listeners without TLS are left out.
pub fn load_for_listeners(
    config: &Config,
) -> Result<std::collections::HashMap<String, Arc<ClientTls>>, TlsError> {
    let mut loaded = std::collections::HashMap::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        let key = match &listener.tls {
            Some(_) => format!("listeners[{i}].tls"),
            None => "tls".to_string(),
        };
        if let Some(tls) = ClientTls::load(config.tls_for(listener), &key)? {
            loaded.insert(listener.name.clone(), Arc::new(tls));
        }
    }
    Ok(loaded)
}

/// Publishes the certificate expiry of each listener's TLS now in force (after a
/// start or a reload went through, not when files were merely loaded).
pub fn record_expiry(listener: &str, tls: &ClientTls) {
    metrics::gauge!(
        "switchyard_tls_certificate_expiry_timestamp_seconds",
        "listener" => listener.to_string()
    )
    .set(tls.expires_at as f64);
}

static TLS12_AND_UP: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];
static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match min {
        TlsVersion::Tls12 => &TLS12_AND_UP,
        TlsVersion::Tls13 => &TLS13_ONLY,
    }
}

fn error(key: &str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError {
        key: key.into(),
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(key, path, format!("cannot read the file: {e}")))
}

fn load_certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, key)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(key, path, format!("not a valid PEM file: {e}")))?;
    if certificates.is_empty() {
        return Err(error(key, path, "no CERTIFICATE block in the file"));
    }
    Ok(certificates)
}

fn load_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, key)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => error(
            key,
            path,
            "no unencrypted private key (PKCS#8, PKCS#1 or SEC1 PEM block) in the file",
        ),
        e => error(key, path, format!("not a valid PEM private key: {e}")),
    })
}

fn check_key_matches(
    chain: &[CertificateDer<'static>],
    private_key: &PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
    key: &str,
) -> Result<(), TlsError> {
    let signing_key = provider
        .key_provider
        .load_private_key(private_key.clone_key())
        .map_err(|e| error(&format!("{key}.key"), key_path, e))?;
    match CertifiedKey::new(chain.to_vec(), signing_key).keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(e) => Err(error(
            &format!("{key}.key"),
            key_path,
            format!(
                "the key does not belong to the certificate in {} ({e})",
                cert_path.display()
            ),
        )),
    }
}

fn client_verifier(
    path: &Path,
    key: &str,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in load_certificates(path, key)? {
        roots
            .add(certificate)
            .map_err(|e| error(key, path, format!("not a usable CA certificate: {e}")))?;
    }
    // Clients without a certificate may still log in with a password; one that
    // presents a certificate not signed by these CAs gets a TLS alert.
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .allow_unauthenticated()
        .build()
        .map_err(|e| error(key, path, e))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC` for messages.
pub fn describe_time(unix: i64) -> String {
    humantime::format_rfc3339_seconds(
        UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64),
    )
    .to_string()
}
