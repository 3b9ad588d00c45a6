//! TLS between clients and Switchyard, with certificates made in the test (rcgen)
//! and the real clients: psql (libpq 15) through every sslmode, channel binding
//! (SCRAM-SHA-256-PLUS) with psql and tokio-postgres, client certificates and
//! `auth: cert`, `mode: require` refusing plaintext with 28000, direct TLS
//! negotiation with a raw rustls client, bad input after an SSLRequest, a
//! handshake that never finishes, cancel over TLS, and certificate reloads.

mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use harness::clients::describe;
use harness::pg::shared_cluster;
use harness::proxy::*;
use harness::raw_client::*;
use harness::tls::{psql_conninfo, Pki, RustlsConnector};
use harness::wait::{blocking, within};
use switchyard::config::Config;
use switchyard::proxy::{self, RunningProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A proxy in front of the shared cluster's primary with `tls_yaml` at the top
/// level, started from a file so it can be reloaded; `app_clear` logs in with
/// its certificate.
struct TlsProxy {
    proxy: RunningProxy,
    file: tempfile::NamedTempFile,
    yaml: String,
    _api: harness::fake_patroni::FakePatroni,
}

impl TlsProxy {
    async fn start(tls_yaml: &str) -> TlsProxy {
        let primary = shared_cluster().await.port(0);
        let (yaml, api) = config_for(
            primary,
            &format!("client: {{ startup_timeout: 2s }}\n{tls_yaml}"),
        )
        .await;
        let yaml = harness::console::with_console(&yaml);
        // `auth: cert` needs a listener that verifies client certificates.
        let yaml = if tls_yaml.contains("client_ca") {
            yaml.replace(
                "{ name: app_clear, password: app_clear_pw, require_auth: password }",
                "{ name: app_clear, password: app_clear_pw, require_auth: password, auth: cert }",
            )
        } else {
            yaml
        };
        let file = tempfile::NamedTempFile::new().expect("config file");
        std::fs::write(file.path(), &yaml).expect("write config");
        init_logging();
        let config = Config::load(file.path()).unwrap_or_else(|e| panic!("config: {e}\n{yaml}"));
        let proxy = proxy::start_with_source(config, Some(file.path().to_path_buf()))
            .await
            .expect("proxy starts");
        TlsProxy {
            proxy,
            file,
            yaml,
            _api: api,
        }
    }

    fn rw(&self) -> SocketAddr {
        self.proxy.listener_addr("rw").expect("rw listener")
    }

    /// libpq connection string to `rw` as `user`, reaching 127.0.0.1 under the
    /// host name `host` (checked by verify-full), with `extra` options.
    fn conninfo(&self, user: &str, host: &str, extra: &str) -> String {
        format!(
            "host={host} hostaddr=127.0.0.1 port={} user={user} dbname=appdb {extra}",
            self.rw().port()
        )
    }
}

/// psql from async code: Ok(stdout) or Err(stderr).
async fn psql(
    conninfo: String,
    password: &'static str,
    sql: &'static str,
) -> Result<String, String> {
    blocking(move || psql_conninfo(&conninfo, password, &[sql])).await
}

/// What `\conninfo` says about encryption: Some(protocol line) on TLS.
fn tls_line(conninfo_output: &str) -> Option<String> {
    conninfo_output
        .lines()
        .find(|l| l.starts_with("SSL connection"))
        .map(str::to_owned)
}

#[tokio::test]
async fn psql_through_every_sslmode() {
    let pki = Pki::new();
    let ca = pki.ca_file.display().to_string();
    let proxy = TlsProxy::start(&pki.tls_yaml("allow", false)).await;
    let run = |mode: &str, host: &str| {
        let conninfo = proxy.conninfo("app", host, &format!("sslmode={mode} sslrootcert={ca}"));
        psql(conninfo, "app_pw", "\\conninfo")
    };
    // (sslmode, host name, encrypted?) on an `allow` listener: libpq's allow tries
    // plaintext first and gets it.
    for (mode, tls) in [
        ("disable", false),
        ("allow", false),
        ("prefer", true),
        ("require", true),
        ("verify-ca", true),
        ("verify-full", true),
    ] {
        let out = run(mode, "localhost")
            .await
            .unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
        assert_eq!(tls_line(&out).is_some(), tls, "sslmode={mode}: {out}");
        if tls {
            let line = tls_line(&out).unwrap_or_default();
            assert!(line.contains("TLSv1.3"), "sslmode={mode}: {line}");
        }
    }
    // verify-ca does not look at the name; verify-full does.
    run("verify-ca", "wrong.example")
        .await
        .expect("verify-ca ignores the host name");
    let err = run("verify-full", "wrong.example")
        .await
        .expect_err("verify-full with the wrong host name");
    assert!(
        err.contains("does not match host name"),
        "wrong host name: {err}"
    );
    // A CA that did not sign the certificate fails verification.
    let other = Pki::new();
    let conninfo = proxy.conninfo(
        "app",
        "localhost",
        &format!("sslmode=verify-ca sslrootcert={}", other.ca_file.display()),
    );
    let err = psql(conninfo, "app_pw", "SELECT 1")
        .await
        .expect_err("unknown CA");
    // (OpenSSL words it "certificate verify failed" or, for an ECDSA chain it
    // cannot build, "SSL error: EVP lib".)
    assert!(
        err.contains("SSL error") || err.contains("certificate verify failed"),
        "unknown CA: {err}"
    );
}

#[tokio::test]
async fn require_refuses_plaintext_with_28000_and_allow_falls_back_to_tls() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(&pki.tls_yaml("require", false)).await;
    let err = psql(
        proxy.conninfo("app", "localhost", "sslmode=disable"),
        "app_pw",
        "SELECT 1",
    )
    .await
    .expect_err("plaintext refused");
    assert!(err.contains("TLS is required"), "{err}");
    // libpq's allow: plaintext first, refused, then TLS.
    let out = psql(
        proxy.conninfo("app", "localhost", "sslmode=allow"),
        "app_pw",
        "\\conninfo",
    )
    .await
    .expect("allow retries with TLS");
    assert!(tls_line(&out).is_some(), "{out}");
    // The SQLSTATE, as a driver sees it.
    let err = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=app password=app_pw dbname=appdb sslmode=disable",
            proxy.rw().port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("plaintext refused");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{}",
        describe(&err)
    );
}

#[tokio::test]
async fn channel_binding_with_psql_and_tokio_postgres() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(&pki.tls_yaml("allow", false)).await;
    let ca = pki.ca_file.display().to_string();
    // libpq refuses to finish unless the server proved the channel (PLUS).
    let out = psql(
        proxy.conninfo(
            "app",
            "localhost",
            &format!("sslmode=verify-full sslrootcert={ca} channel_binding=require"),
        ),
        "app_pw",
        "SELECT 'bound'",
    )
    .await
    .expect("channel_binding=require over TLS");
    assert_eq!(out.trim(), "bound");
    // Without TLS there is nothing to bind to: libpq refuses.
    let err = psql(
        proxy.conninfo(
            "app",
            "localhost",
            "sslmode=disable channel_binding=require",
        ),
        "app_pw",
        "SELECT 1",
    )
    .await
    .expect_err("no channel binding in plaintext");
    assert!(err.contains("channel binding"), "{err}");
    // A wrong password still fails with PLUS.
    let err = psql(
        proxy.conninfo(
            "app",
            "localhost",
            &format!("sslmode=require sslrootcert={ca} channel_binding=require"),
        ),
        "wrong",
        "SELECT 1",
    )
    .await
    .expect_err("wrong password");
    assert!(err.contains("password authentication failed"), "{err}");

    // tokio-postgres, channel binding required, through a rustls connector.
    let tls = RustlsConnector(pki.client_config(&[]));
    let mut config: tokio_postgres::Config = format!(
        "host=localhost port={} user=app password=app_pw dbname=appdb sslmode=require channel_binding=require",
        proxy.rw().port()
    )
    .parse()
    .expect("config");
    config.hostaddr(std::net::IpAddr::from([127, 0, 0, 1]));
    let (client, connection) = config
        .connect(tls.clone())
        .await
        .unwrap_or_else(|e| panic!("{}", describe(&e)));
    tokio::spawn(connection);
    let row = client.query_one("SELECT 41 + 1", &[]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 42);

    // Cancel over TLS: the cancel connection starts with an SSLRequest.
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    within(10, "cancel over TLS", token.cancel_query(tls))
        .await
        .expect("cancel sent");
    let result = within(10, "cancelled query ends", sleeper)
        .await
        .expect("task");
    let err = result.expect_err("the query was cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{}",
        describe(&err)
    );
}

#[tokio::test]
async fn client_certificates_and_cert_auth() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(&pki.tls_yaml("require", true)).await;
    let ca = pki.ca_file.display().to_string();
    let with_cert = |user: &str, cert: &Path, key: &Path| {
        proxy.conninfo(
            user,
            "localhost",
            &format!(
                "sslmode=verify-full sslrootcert={ca} sslcert={} sslkey={}",
                cert.display(),
                key.display()
            ),
        )
    };
    // app_clear is an `auth: cert` user: its certificate is its password.
    let (cert, key) = pki.client_cert("app_clear", false);
    let out = psql(
        with_cert("app_clear", &cert, &key),
        "",
        "SELECT current_user",
    )
    .await
    .expect("certificate login");
    assert_eq!(out.trim(), "app_clear");
    // A certificate for another name does not log in as app_clear.
    let (other_cert, other_key) = pki.client_cert("app", false);
    let err = psql(
        with_cert("app_clear", &other_cert, &other_key),
        "",
        "SELECT 1",
    )
    .await
    .expect_err("wrong common name");
    assert!(err.contains("certificate authentication failed"), "{err}");
    // No certificate: no login as a cert user.
    let err = psql(
        proxy.conninfo(
            "app_clear",
            "localhost",
            &format!("sslmode=require sslrootcert={ca}"),
        ),
        "app_clear_pw",
        "SELECT 1",
    )
    .await
    .expect_err("no certificate");
    assert!(err.contains("presented no certificate"), "{err}");
    // Password users may present a (valid) certificate or none.
    psql(
        with_cert("app", &other_cert, &other_key),
        "app_pw",
        "SELECT 1",
    )
    .await
    .expect("password user with a certificate");
    // A certificate from a CA the proxy does not trust gets a TLS alert.
    let (rogue_cert, rogue_key) = pki.client_cert("app_clear", true);
    let err = psql(
        with_cert("app_clear", &rogue_cert, &rogue_key),
        "",
        "SELECT 1",
    )
    .await
    .expect_err("rogue certificate");
    assert!(
        err.contains("alert") || err.contains("certificate"),
        "rogue certificate: {err}"
    );
    // The same with rustls, to see the alert itself.
    let config = pki.client_config_with_cert(&rogue_cert, &rogue_key);
    let tcp = TcpStream::connect(proxy.rw()).await.expect("connect");
    let mut tls = ssl_request_then_handshake(tcp, config).await;
    // TLS 1.3: the server checks the client certificate after the client finished,
    // so the alert arrives on the first read.
    let mut buf = [0u8; 64];
    let read = within(5, "alert", tls.read(&mut buf)).await;
    let err = read.expect_err("the server refuses the certificate");
    assert!(
        err.to_string().contains("UnknownCA")
            || err.to_string().contains("BadCertificate")
            || err.to_string().contains("alert"),
        "{err}"
    );
}

async fn ssl_request_then_handshake(
    mut tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    tcp.write_all(&SSL_REQUEST).await.expect("SSLRequest");
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"S");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    within(
        5,
        "handshake",
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("handshake")
}

#[tokio::test]
async fn direct_tls_needs_alpn_postgresql() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(&pki.tls_yaml("require", false)).await;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    // With ALPN postgresql: the handshake is the first thing, then the startup.
    let tcp = TcpStream::connect(proxy.rw()).await.expect("connect");
    let mut tls = within(
        5,
        "direct handshake",
        tokio_rustls::TlsConnector::from(pki.client_config(&[b"postgresql"]))
            .connect(name.clone(), tcp),
    )
    .await
    .expect("direct TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    tls.write_all(&startup_packet(
        196608,
        &[("user", "app"), ("database", "appdb")],
    ))
    .await
    .expect("startup");
    tls.flush().await.expect("flush");
    let mut header = [0u8; 1];
    within(5, "authentication request", tls.read_exact(&mut header))
        .await
        .expect("reply");
    assert_eq!(header[0], b'R', "an authentication request over direct TLS");
    // Without ALPN: refused before the handshake completes.
    let tcp = TcpStream::connect(proxy.rw()).await.expect("connect");
    let refused = within(
        5,
        "direct handshake without ALPN",
        tokio_rustls::TlsConnector::from(pki.client_config(&[])).connect(name, tcp),
    )
    .await;
    assert!(refused.is_err(), "direct TLS without ALPN must be refused");
}

/// Reads until EOF or an error (a TLS alert may come first); panics if the
/// connection stays open for 5 s. Returns what was read.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    within(5, "connection closed", async {
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    seen
}

#[tokio::test]
async fn bad_input_around_the_handshake_closes_the_connection() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(&pki.tls_yaml("allow", false)).await;
    // Bytes sent with the SSLRequest, before 'S' (CVE-2021-23214): no TLS, closed.
    let mut tcp = TcpStream::connect(proxy.rw()).await.expect("connect");
    let mut flight = SSL_REQUEST.to_vec();
    flight.extend_from_slice(&startup_packet(196608, &[("user", "app")]));
    tcp.write_all(&flight).await.expect("write");
    let seen = read_to_close(&mut tcp).await;
    assert!(seen.is_empty(), "nothing may be answered: {seen:?}");
    // Random bytes after 'S' (a fixed-seed generator, so failures repeat).
    let mut seed: u64 = 0x5eed_1234_abcd_0001;
    for round in 0..40 {
        let mut tcp = TcpStream::connect(proxy.rw()).await.expect("connect");
        tcp.write_all(&SSL_REQUEST).await.expect("SSLRequest");
        let mut answer = [0u8; 1];
        within(5, "answer", tcp.read_exact(&mut answer))
            .await
            .expect("answer");
        assert_eq!(&answer, b"S");
        let len = 1 + (seed % 600) as usize;
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = tcp.write_all(&garbage).await;
        let _ = tcp.shutdown().await;
        let seen = read_to_close(&mut tcp).await;
        assert!(
            seen.len() < 64,
            "round {round}: at most an alert, got {seen:?}"
        );
    }
    // A handshake that never completes ends at client.startup_timeout (2s).
    let mut tcp = TcpStream::connect(proxy.rw()).await.expect("connect");
    tcp.write_all(&SSL_REQUEST).await.expect("SSLRequest");
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"S");
    read_to_close(&mut tcp).await;
    // GSSENCRequest still gets 'N', and the proxy still serves.
    let mut tcp = TcpStream::connect(proxy.rw()).await.expect("connect");
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .expect("GSSENCRequest");
    tcp.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"N");
    let out = psql(
        proxy.conninfo("app", "localhost", "sslmode=require"),
        "app_pw",
        "SELECT 'still serving'",
    )
    .await
    .expect("still serving");
    assert_eq!(out.trim(), "still serving");
}

/// The certificate's expiry as `/status` shows it for `rw`.
async fn status_expiry(proxy: &RunningProxy) -> String {
    let status = admin_status(proxy).await;
    status["listeners"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "rw"))
        .map(|l| l["tls"]["certificate_expires_at"].to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn certificate_reload_keeps_clients_and_refuses_bad_pairs() {
    let mut pki = Pki::new();
    let first = pki.write_server_cert(Some((2090, 1, 1)));
    let proxy = TlsProxy::start(&pki.tls_yaml("require", false)).await;
    assert!(status_expiry(&proxy.proxy).await.contains("2090-01-01"));
    let (_, metrics) = admin_get(&proxy.proxy, "/metrics").await;
    // (Its value is process-wide, shared by the tests running beside this one.)
    assert!(
        metrics.contains("switchyard_tls_certificate_expiry_timestamp_seconds{listener=\"rw\"}"),
        "{metrics}"
    );
    // A TLS client that stays connected through the reloads.
    let tls = RustlsConnector(pki.client_config(&[]));
    let mut config: tokio_postgres::Config = format!(
        "host=localhost port={} user=app password=app_pw dbname=appdb sslmode=require",
        proxy.rw().port()
    )
    .parse()
    .expect("config");
    config.hostaddr(std::net::IpAddr::from([127, 0, 0, 1]));
    let (client, connection) = config
        .connect(tls)
        .await
        .unwrap_or_else(|e| panic!("{}", describe(&e)));
    tokio::spawn(connection);
    // The TLS client is in /status.
    let status = admin_status(&proxy.proxy).await.to_string();
    assert!(status.contains("TLSv1.3/TLS13_"), "{status}");

    let second = pki.write_server_cert(Some((2091, 6, 1)));
    assert_ne!(first, second);
    let summary = proxy.proxy.reload().await.expect("reload with a new pair");
    assert!(
        summary.contains("TLS certificates loaded for listeners: ro, rw"),
        "{summary}"
    );
    assert!(
        status_expiry(&proxy.proxy).await.contains("2091-06-01"),
        "{summary}"
    );
    client
        .simple_query("SELECT 1")
        .await
        .expect("old client keeps working");
    // New clients get the new certificate.
    let out = psql(
        proxy.conninfo(
            "app",
            "localhost",
            &format!("sslmode=verify-full sslrootcert={}", pki.ca_file.display()),
        ),
        "app_pw",
        "SELECT 'new pair'",
    )
    .await
    .expect("new pair");
    assert_eq!(out.trim(), "new pair");

    // An expired pair, a key of another certificate, an unreadable file: each is
    // refused, naming the file and the reason, and the running pair stays.
    let good_cert = std::fs::read(&pki.server_cert).expect("cert");
    let good_key = std::fs::read(&pki.server_key).expect("key");
    pki.write_server_cert(Some((2001, 1, 1)));
    let err = proxy.proxy.reload().await.expect_err("expired");
    assert!(
        err.contains("expired") && err.contains("server.pem"),
        "{err}"
    );
    std::fs::write(&pki.server_cert, &good_cert).expect("restore cert");
    let (_, other_key) = pki.client_cert("someone", false);
    std::fs::copy(&other_key, &pki.server_key).expect("mismatched key");
    let err = proxy.proxy.reload().await.expect_err("mismatched key");
    assert!(
        err.contains("does not belong") && err.contains("server.key"),
        "{err}"
    );
    std::fs::remove_file(&pki.server_key).expect("remove key");
    let err = proxy.proxy.reload().await.expect_err("missing key");
    assert!(
        err.contains("cannot read") && err.contains("server.key"),
        "{err}"
    );
    // `switchyard check` loads the files the same way.
    let config = Config::load(proxy.file.path()).expect("config parses");
    let err = switchyard::tls::load_for_listeners(&config).expect_err("check fails");
    assert!(err.to_string().contains("tls.key"), "{err}");
    std::fs::write(&pki.server_key, &good_key).expect("restore key");

    assert!(status_expiry(&proxy.proxy).await.contains("2091-06-01"));
    client
        .simple_query("SELECT 1")
        .await
        .expect("old client still works");
    let out = psql(
        proxy.conninfo(
            "app",
            "localhost",
            &format!("sslmode=verify-full sslrootcert={}", pki.ca_file.display()),
        ),
        "app_pw",
        "SELECT 'kept'",
    )
    .await
    .expect("the kept pair serves");
    assert_eq!(out.trim(), "kept");
    let _ = &proxy.yaml;
}

/// tokio-postgres through the rustls connector to `rw` with `sslmode` and the host
/// name `host` (the connector checks it, as verify-full does).
async fn tokio_postgres_tls(
    proxy: &TlsProxy,
    pki: &Pki,
    sslmode: &str,
    host: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = format!(
        "host={host} port={} user=app password=app_pw dbname=appdb sslmode={sslmode} connect_timeout=5",
        proxy.rw().port()
    )
    .parse()
    .expect("config");
    config.hostaddr(std::net::IpAddr::from([127, 0, 0, 1]));
    let (client, connection) = config
        .connect(RustlsConnector(pki.client_config(&[])))
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Whether the proxy sees this client on TLS: its row in SHOW CLIENTS is not
/// needed, /status counts TLS clients per listener.
async fn tls_clients(proxy: &RunningProxy) -> u64 {
    let status = admin_status(proxy).await;
    status["listeners"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "rw"))
        .and_then(|l| l["tls"]["clients_on_tls"].as_object())
        .map(|by_suite| by_suite.values().filter_map(|n| n.as_u64()).sum())
        .unwrap_or(0)
}

#[tokio::test]
async fn tokio_postgres_sslmodes_and_transaction_mode_over_tls() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(&format!(
        "{}pool: {{ mode: transaction, size: 2 }}\n",
        pki.tls_yaml("allow", false)
    ))
    .await;
    // disable: plaintext; prefer and require: TLS.
    let plain = tokio_postgres_tls(&proxy, &pki, "disable", "localhost")
        .await
        .unwrap_or_else(|e| panic!("disable: {}", describe(&e)));
    assert_eq!(tls_clients(&proxy.proxy).await, 0);
    drop(plain);
    for mode in ["prefer", "require"] {
        let client = tokio_postgres_tls(&proxy, &pki, mode, "localhost")
            .await
            .unwrap_or_else(|e| panic!("{mode}: {}", describe(&e)));
        client.simple_query("SELECT 1").await.expect("query");
        assert_eq!(tls_clients(&proxy.proxy).await, 1, "sslmode={mode}");
    }
    // The connector verifies the name, as verify-full: a wrong one fails.
    let err = tokio_postgres_tls(&proxy, &pki, "require", "wrong.example")
        .await
        .err()
        .map(|e| format!("{e:?}"))
        .expect("wrong host name refused");
    assert!(err.contains("NotValidForName"), "{err}");

    // Transaction mode over TLS: statements, a pipeline, large replies both ways,
    // several clients sharing two server connections.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(
            tokio_postgres_tls(&proxy, &pki, "require", "localhost")
                .await
                .unwrap_or_else(|e| panic!("{}", describe(&e))),
        );
    }
    let big = "x".repeat(300_000);
    let mut work = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let big = big.clone();
        work.push(async move {
            let statement = client.prepare("SELECT $1::int + 1").await.expect("prepare");
            for n in 0..20 {
                let row = client.query_one(&statement, &[&n]).await.expect("execute");
                assert_eq!(row.get::<_, i32>(0), n + 1);
            }
            let numbers: Vec<i32> = (0..10).collect();
            let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> =
                numbers.iter().map(|n| [n as _]).collect();
            let pipelined = futures_util::future::join_all(
                params
                    .iter()
                    .map(|p| client.query_one("SELECT $1::int * 2", p)),
            )
            .await;
            for (n, row) in pipelined.into_iter().enumerate() {
                assert_eq!(row.expect("pipelined").get::<_, i32>(0), 2 * n as i32);
            }
            let rows = client
                .query(
                    "SELECT g, repeat('y', 100) FROM generate_series(1, 20000) g",
                    &[],
                )
                .await
                .expect("large result");
            assert_eq!(rows.len(), 20_000);
            let echoed: String = client
                .query_one("SELECT $1::text", &[&big])
                .await
                .expect("large parameter")
                .get(0);
            assert_eq!(echoed.len(), big.len(), "client {i}");
        });
    }
    within(
        60,
        "transaction-mode work over TLS",
        futures_util::future::join_all(work),
    )
    .await;
    assert_eq!(tls_clients(&proxy.proxy).await, 4);

    // SHOW CLIENTS fills PgBouncer's tls column; a plaintext console client sees
    // the TLS sessions' version and suite, and the console itself works over TLS.
    let mut console = harness::console::RawConsole::login(proxy.rw()).await;
    let reply = console.query("SHOW CLIENTS").await;
    let on_tls = reply
        .column("tls")
        .into_iter()
        .flatten()
        .filter(|tls| tls.starts_with("TLSv1.3/TLS13_"))
        .count();
    assert_eq!(on_tls, 4, "{:?}", reply.rows);
    let out = psql(
        proxy
            .conninfo("app", "localhost", "sslmode=require")
            .replace("dbname=appdb", "dbname=pgbouncer"),
        "app_pw",
        "SHOW VERSION",
    )
    .await
    .expect("console over TLS");
    assert!(out.to_lowercase().contains("switchyard"), "{out}");
}

/// Reads messages until ReadyForQuery; returns how many bytes came before it.
async fn read_until_ready<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> usize {
    let mut total = 0;
    loop {
        let mut header = [0u8; 5];
        stream
            .read_exact(&mut header)
            .await
            .expect("message header");
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        stream.read_exact(&mut body).await.expect("message body");
        assert_ne!(header[0], b'E', "error: {}", String::from_utf8_lossy(&body));
        if header[0] == b'Z' {
            return total;
        }
        total += 1 + len;
    }
}

#[tokio::test]
async fn a_slow_reader_gets_the_whole_reply_over_tls() {
    // A reply far larger than the socket buffers, to a client that waits before
    // reading: the proxy's writes block half-way through, over and over, and the
    // whole reply still arrives. (Whether the last write of a reply finds the
    // socket full is a race, so this cannot prove that the flush after each write
    // is needed; it shows the blocked-write path works.)
    let pki = Pki::new();
    let proxy = TlsProxy::start(&format!(
        "{}pool: {{ mode: transaction }}\n",
        pki.tls_yaml("require", true)
    ))
    .await;
    let (cert, key) = pki.client_cert("app_clear", false);
    let tcp = TcpStream::connect(proxy.rw()).await.expect("connect");
    let mut tls = ssl_request_then_handshake(tcp, pki.client_config_with_cert(&cert, &key)).await;
    tls.write_all(&startup_packet(
        196608,
        &[("user", "app_clear"), ("database", "appdb")],
    ))
    .await
    .expect("startup");
    tls.flush().await.expect("flush");
    within(10, "login with the certificate", read_until_ready(&mut tls)).await;
    for round in 0..3 {
        tls.write_all(&query_msg(
            "SELECT repeat('z', 1000) FROM generate_series(1, 30000)",
        ))
        .await
        .expect("query");
        tls.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let bytes = within(30, "the whole reply", read_until_ready(&mut tls)).await;
        assert!(bytes > 30_000_000, "round {round}: {bytes} bytes");
    }
}
