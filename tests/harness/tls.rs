//! TLS material and clients for the TLS tests: a throwaway CA with server and
//! client certificates made by rcgen in a temporary directory (`Pki`), psql with
//! a libpq connection string (`psql_conninfo`), a tokio-postgres connector on
//! tokio-rustls that supports `tls-server-end-point` channel binding
//! (`RustlsConnector`), and a raw rustls client config (`client_config`).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedKey, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use super::pg::pg_bin;

/// A CA and the certificates the tests use, as PEM files in a temporary
/// directory. The server certificate names `localhost` only.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedKey,
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn ca(name: &str) -> CertifiedKey {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("CA certificate");
    CertifiedKey {
        cert,
        key_pair: key,
    }
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = ca("Switchyard test CA");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert.pem()).expect("write CA");
        let mut pki = Pki {
            server_cert: dir.path().join("server.pem"),
            server_key: dir.path().join("server.key"),
            dir,
            ca,
            ca_file,
        };
        pki.write_server_cert(None);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A server certificate for `localhost` signed by the CA, valid until
    /// `not_after` (year, month, day) or rcgen's default, written over the server
    /// files. Returns the certificate's DER.
    pub fn write_server_cert(&mut self, not_after: Option<(i32, u8, u8)>) -> Vec<u8> {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".into()]).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        if let Some((y, m, d)) = not_after {
            params.not_before = rcgen::date_time_ymd(y.min(2022) - 2, 1, 1);
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let cert = params
            .signed_by(&key, &self.ca.cert, &self.ca.key_pair)
            .expect("server certificate");
        std::fs::write(&self.server_cert, cert.pem()).expect("write server cert");
        std::fs::write(&self.server_key, key.serialize_pem()).expect("write server key");
        cert.der().to_vec()
    }

    /// A client certificate with common name `cn`, signed by this CA or (with
    /// `rogue`) by a CA the proxy does not know. Returns (cert file, key file).
    pub fn client_cert(&self, cn: &str, rogue: bool) -> (PathBuf, PathBuf) {
        let other;
        let signer = if rogue {
            other = ca("Rogue CA");
            &other
        } else {
            &self.ca
        };
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params
            .signed_by(&key, &signer.cert, &signer.key_pair)
            .expect("client certificate");
        let tag = if rogue { "rogue" } else { "client" };
        let (cert_file, key_file) = (
            self.path(&format!("{tag}-{cn}.pem")),
            self.path(&format!("{tag}-{cn}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).expect("write client cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write client key");
        // libpq refuses a key file others may read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
            .expect("key file mode");
        (cert_file, key_file)
    }

    /// The `tls:` YAML block for these files.
    pub fn tls_yaml(&self, mode: &str, client_ca: bool) -> String {
        let mut yaml = format!(
            "tls:\n  mode: {mode}\n  cert: {}\n  key: {}\n",
            self.server_cert.display(),
            self.server_key.display()
        );
        if client_ca {
            yaml.push_str(&format!("  client_ca: {}\n", self.ca_file.display()));
        }
        yaml
    }

    /// A rustls client trusting this CA, with ALPN as given.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.cert.der().to_vec()))
            .expect("root");
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// The same with a client certificate.
    pub fn client_config_with_cert(&self, cert: &Path, key: &Path) -> Arc<ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.cert.der().to_vec()))
            .expect("root");
        let chain = vec![CertificateDer::from_pem_file(cert).expect("client cert")];
        let key = PrivateKeyDer::from_pem_file(key).expect("client key");
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .expect("client auth");
        Arc::new(config)
    }
}

/// Runs psql with a libpq connection string (`-c` each SQL); Ok(stdout) or
/// Err(stderr). No password file or environment leaks in.
pub fn psql_conninfo(conninfo: &str, password: &str, sqls: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(pg_bin("psql"));
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        conninfo,
    ]);
    for sql in sqls {
        cmd.args(["-c", sql]);
    }
    cmd.env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .env_remove("PGSSLMODE")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null());
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        Err(e) => Err(format!("cannot run psql: {e}")),
    }
}

/// tokio-postgres over tokio-rustls, with `tls-server-end-point` channel binding
/// (SHA-256 of the server certificate: rcgen signs with ECDSA P-256 SHA-256).
#[derive(Clone)]
pub struct RustlsConnector(pub Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for RustlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            config: Arc::clone(&self.0),
            name,
        })
    }
}

pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

pub struct RustlsStream<S>(pub tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        match self.0.get_ref().1.peer_certificates() {
            Some([leaf, ..]) => {
                ChannelBinding::tls_server_end_point(Sha256::digest(leaf.as_ref()).to_vec())
            }
            _ => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
