//! Turning TLS settings into rustls client configurations: reading the PEM files
//! (every error names the config key, the file and the reason, for `check` and for
//! a refused reload) and the certificate verifiers behind libpq's `sslmode`
//! meanings. One crypto provider, ring, for the whole process.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use super::ConfigError;

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Not at all (libpq's `prefer`/`require` without a root certificate): the
    /// connection is encrypted but not protected from an active attacker.
    Nothing,
    /// The chain must lead to the CA; any host name (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    ChainAndName,
}

/// What one client configuration is built from: (config key, path) of each file,
/// the key for error messages.
pub struct TlsFiles {
    pub ca: Option<(String, String)>,
    pub cert: Option<(String, String)>,
    pub key: Option<(String, String)>,
}

/// The one crypto provider of the whole tree, client and server side: ring (builds
/// quickly and without cmake or a C++ toolchain; see README "TLS").
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a client configuration; `digest` is fed every file's bytes so a reload
/// can tell that a file changed in place.
pub fn client_config(
    files: &TlsFiles,
    verify: Verify,
    digest: &mut Sha256,
) -> Result<ClientConfig, ConfigError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid("tls", e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (&files.ca, verify) {
        (None, Verify::Nothing) => Arc::new(NoVerifier(Arc::clone(&provider))),
        (None, _) => {
            return Err(ConfigError::invalid(
                "tls",
                "verifying the server certificate needs a CA file",
            ))
        }
        (Some((key, path)), verify) => {
            let roots = load_roots(key, path, digest)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| ConfigError::invalid(key, format!("{path}: {e}")))?;
            Arc::new(ChainVerifier {
                webpki,
                check_name: verify == Verify::ChainAndName,
            })
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&files.cert, &files.key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some((cert_key, cert_path)), Some((key_key, key_path))) => {
            let certs = load_certs(cert_key, cert_path, digest)?;
            let key = load_key(key_key, key_path, digest)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                ConfigError::invalid(
                    key_key,
                    format!("{key_path} does not go with {cert_path}: {e}"),
                )
            })
        }
        (Some((cert_key, _)), None) | (None, Some((cert_key, _))) => Err(ConfigError::invalid(
            cert_key,
            "a client certificate needs both the certificate and the key file",
        )),
    }
}

fn read(key: &str, path: &str, digest: &mut Sha256) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {path}: {e}")))?;
    digest.update(path.as_bytes());
    digest.update(&bytes);
    Ok(bytes)
}

pub fn load_certs(
    key: &str,
    path: &str,
    digest: &mut Sha256,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = read(key, path, digest)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ConfigError::invalid(key, format!("{path}: not a PEM certificate file: {e}"))
        })?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ));
    }
    Ok(certs)
}

fn load_key(
    key: &str,
    path: &str,
    digest: &mut Sha256,
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let bytes = read(key, path, digest)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| ConfigError::invalid(key, format!("{path}: no usable PEM private key: {e}")))
}

fn load_roots(key: &str, path: &str, digest: &mut Sha256) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(key, path, digest)? {
        roots.add(cert).map_err(|e| {
            ConfigError::invalid(key, format!("{path}: not a usable CA certificate: {e}"))
        })?;
    }
    Ok(roots)
}

/// libpq's `verify-ca` and `verify-full`: the chain is checked by webpki; a name
/// mismatch is forgiven unless the name is checked too. webpki checks the name
/// only after the chain, so a forgiven name error still means a trusted chain.
#[derive(Debug)]
struct ChainVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// libpq's `prefer` and `require` without a CA: any certificate is taken, but the
/// handshake signatures are still checked (the server must hold the key of the
/// certificate it shows).
#[derive(Debug)]
struct NoVerifier(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
