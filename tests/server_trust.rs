//! Trusting the server side of a login (`server.require_auth`, SCRAM server
//! signatures, the PBKDF2 iteration cap): hostile servers are raw TCP listeners in
//! the test that ask for what they should not or cut the SCRAM exchange short, and
//! must get nothing they could use; real PostgreSQL shows the default refuses MD5,
//! cleartext and trust servers unless a user's `require_auth` lists them, and that
//! a refusal reaches the client as a clear FATAL 28000.

mod harness;

use switchyard::config::TlsPolicy;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use harness::clients::*;
use harness::pg::PgCluster;
use harness::proxy::*;
use harness::wait::blocking;
use switchyard::auth::require::RequireAuth;
use switchyard::auth::stored::Credential;
use switchyard::server::{self, LoginRequest, ServerError};

/// One single-node cluster for this binary (the shared one has two replicas
/// these tests do not need).
async fn one_node() -> &'static PgCluster {
    static ONE: std::sync::OnceLock<PgCluster> = std::sync::OnceLock::new();
    blocking(|| ONE.get_or_init(|| PgCluster::start(0))).await
}

/// Every network wait in a fake server.
const WAIT: Duration = Duration::from_secs(10);

/// An authentication request message: 'R', length, code, payload.
fn auth_message(code: u32, payload: &[u8]) -> BytesMut {
    let mut m = BytesMut::new();
    m.put_u8(b'R');
    m.put_u32(8 + payload.len() as u32);
    m.put_u32(code);
    m.put_slice(payload);
    m
}

async fn read_startup(socket: &mut TcpStream) {
    let read = async {
        let len = socket.read_u32().await?;
        let mut rest = vec![0u8; (len as usize).saturating_sub(4)];
        socket.read_exact(&mut rest).await?;
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("startup within the wait")
        .expect("a whole startup packet");
}

/// Reads one frontend message (type byte, body).
async fn read_message(socket: &mut TcpStream) -> (u8, Vec<u8>) {
    let read = async {
        let tag = socket.read_u8().await?;
        let len = socket.read_u32().await?;
        let mut body = vec![0u8; (len as usize).saturating_sub(4)];
        socket.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>((tag, body))
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a message within the wait")
        .expect("a whole message")
}

/// Everything the client sends until it closes the connection.
async fn rest_of_stream(socket: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut all))
        .await
        .expect("the client hangs up within the wait")
        .ok();
    all
}

/// A one-connection fake server running `script` after the startup packet.
async fn fake_server<F, Fut>(script: F) -> (String, tokio::task::JoinHandle<Vec<u8>>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Vec<u8>> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let task = tokio::spawn(async move {
        let (mut socket, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("the proxy connects")
            .expect("accept");
        read_startup(&mut socket).await;
        script(socket).await
    });
    (address, task)
}

async fn login_to(address: &str, require_auth: RequireAuth) -> Result<(), ServerError> {
    let login = LoginRequest {
        user: "app",
        credential: Credential::Password("secret_pw"),
        database: "appdb",
        params: &[],
        require_auth,
    };
    server::connect("fake", address, &login, WAIT, &TlsPolicy::plaintext())
        .await
        .map(drop)
}

fn auth_error_text(result: Result<(), ServerError>) -> String {
    match result {
        Err(e @ ServerError::Auth(_)) => e.to_string(),
        other => panic!("expected an authentication error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_asking_for_a_cleartext_password_gets_nothing_by_default() {
    let (address, server) = fake_server(|mut socket| async move {
        socket.write_all(&auth_message(3, &[])).await.expect("ask");
        rest_of_stream(&mut socket).await
    })
    .await;
    let text = auth_error_text(login_to(&address, RequireAuth::default()).await);
    assert!(text.contains("a cleartext password"), "{text}");
    assert!(text.contains("require_auth (scram-sha-256)"), "{text}");
    let sent = server.await.expect("fake server");
    assert!(sent.is_empty(), "the proxy sent {sent:?} after the request");
}

#[tokio::test]
async fn a_server_asking_for_md5_gets_nothing_unless_md5_is_listed() {
    let (address, server) = fake_server(|mut socket| async move {
        socket
            .write_all(&auth_message(5, b"salt"))
            .await
            .expect("ask");
        rest_of_stream(&mut socket).await
    })
    .await;
    let text = auth_error_text(login_to(&address, RequireAuth::default()).await);
    assert!(text.contains("an MD5 password"), "{text}");
    assert!(server.await.expect("fake server").is_empty());

    // Listed, the MD5 answer goes out (a password message).
    let (address, server) = fake_server(|mut socket| async move {
        socket
            .write_all(&auth_message(5, b"salt"))
            .await
            .expect("ask");
        let (tag, body) = read_message(&mut socket).await;
        socket
            .write_all(b"E\0\0\0\x0bSFATAL\0\0")
            .await
            .expect("refuse");
        let mut seen = vec![tag];
        seen.extend(body);
        seen
    })
    .await;
    let allowed = RequireAuth::parse("scram-sha-256,md5").expect("valid");
    let result = login_to(&address, allowed).await;
    assert!(
        matches!(result, Err(ServerError::Rejected { .. })),
        "{result:?}"
    );
    let seen = server.await.expect("fake server");
    assert_eq!(seen.first(), Some(&b'p'), "an MD5 response was sent");
    assert!(seen[1..].starts_with(b"md5"), "{seen:?}");
}

#[tokio::test]
async fn a_server_that_asks_for_nothing_is_refused_unless_none_is_listed() {
    for (require, accepted) in [("scram-sha-256", false), ("scram-sha-256,none", true)] {
        let (address, _server) = fake_server(|mut socket| async move {
            socket.write_all(&auth_message(0, &[])).await.expect("ok");
            // BackendKeyData and ReadyForQuery, for the login that goes on.
            socket
                .write_all(b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02Z\0\0\0\x05I")
                .await
                .expect("ready");
            rest_of_stream(&mut socket).await
        })
        .await;
        let result = login_to(&address, RequireAuth::parse(require).expect("valid")).await;
        if accepted {
            assert!(result.is_ok(), "{require}: {result:?}");
        } else {
            let text = auth_error_text(result);
            assert!(text.contains("no authentication (trust)"), "{text}");
        }
    }
}

/// Sends AuthenticationSASL and reads the client-first-message; returns the
/// client's nonce.
async fn start_sasl(socket: &mut TcpStream) -> String {
    socket
        .write_all(&auth_message(10, b"SCRAM-SHA-256\0\0"))
        .await
        .expect("sasl");
    let (tag, body) = read_message(socket).await;
    assert_eq!(tag, b'p');
    let text = String::from_utf8_lossy(&body).into_owned();
    let nonce = text
        .split("r=")
        .nth(1)
        .expect("client-first carries a nonce")
        .to_string();
    nonce
}

#[tokio::test]
async fn authentication_ok_before_the_scram_signature_is_refused() {
    let (address, _server) = fake_server(|mut socket| async move {
        let nonce = start_sasl(&mut socket).await;
        let first = format!("r={nonce}server,s=c2FsdHNhbHQ=,i=4096");
        socket
            .write_all(&auth_message(11, first.as_bytes()))
            .await
            .expect("server-first");
        let _client_final = read_message(&mut socket).await;
        // No SASLFinal: straight to AuthenticationOk.
        socket.write_all(&auth_message(0, &[])).await.expect("ok");
        socket.write_all(b"Z\0\0\0\x05I").await.expect("ready");
        rest_of_stream(&mut socket).await
    })
    .await;
    let text = auth_error_text(login_to(&address, RequireAuth::any()).await);
    assert!(
        text.contains("AuthenticationOk before the SCRAM exchange finished"),
        "{text}"
    );
}

#[tokio::test]
async fn a_switch_to_cleartext_after_scram_began_is_refused_even_when_allowed() {
    let (address, server) = fake_server(|mut socket| async move {
        let _nonce = start_sasl(&mut socket).await;
        socket.write_all(&auth_message(3, &[])).await.expect("ask");
        rest_of_stream(&mut socket).await
    })
    .await;
    let allowed = RequireAuth::parse("scram-sha-256,password").expect("valid");
    let result = login_to(&address, allowed).await;
    match result {
        Err(ServerError::Protocol(text)) => {
            assert!(text.contains("second authentication exchange"), "{text}")
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    let sent = server.await.expect("fake server");
    assert!(sent.is_empty(), "no password was sent: {sent:?}");
}

#[tokio::test]
async fn a_wrong_scram_server_signature_is_refused() {
    let (address, _server) = fake_server(|mut socket| async move {
        let nonce = start_sasl(&mut socket).await;
        let first = format!("r={nonce}server,s=c2FsdHNhbHQ=,i=4096");
        socket
            .write_all(&auth_message(11, first.as_bytes()))
            .await
            .expect("server-first");
        let _client_final = read_message(&mut socket).await;
        // 32 zero bytes: a signature this server cannot have computed.
        let bogus = format!("v={}", "A".repeat(43) + "=");
        socket
            .write_all(&auth_message(12, bogus.as_bytes()))
            .await
            .expect("server-final");
        socket.write_all(&auth_message(0, &[])).await.expect("ok");
        rest_of_stream(&mut socket).await
    })
    .await;
    let text = auth_error_text(login_to(&address, RequireAuth::default()).await);
    assert!(text.contains("invalid SCRAM server signature"), "{text}");
}

#[tokio::test]
async fn a_server_demanding_ten_million_iterations_gets_a_clear_error_not_a_spin() {
    let (address, _server) = fake_server(|mut socket| async move {
        let nonce = start_sasl(&mut socket).await;
        let first = format!("r={nonce}server,s=c2FsdHNhbHQ=,i=10000000");
        socket
            .write_all(&auth_message(11, first.as_bytes()))
            .await
            .expect("server-first");
        rest_of_stream(&mut socket).await
    })
    .await;
    // Deriving 10,000,000 iterations would outlast the login timeout (WAIT) and
    // end as a Timeout; the cap turns it into this error before any derivation.
    let text = auth_error_text(login_to(&address, RequireAuth::default()).await);
    assert!(
        text.contains("iteration count 10000000 (Switchyard accepts 1 to 100000)"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn real_postgres_md5_cleartext_and_trust_logins_need_their_method_listed() {
    let cluster = one_node().await;
    let address = format!("127.0.0.1:{}", cluster.port(0));
    let cases = [
        ("app_md5", "app_md5_pw", "md5", "an MD5 password"),
        (
            "app_clear",
            "app_clear_pw",
            "password",
            "a cleartext password",
        ),
        ("app_trust", "", "none", "no authentication (trust)"),
    ];
    for (user, password, method, asked) in cases {
        let mut login = LoginRequest {
            user,
            credential: Credential::Password(password),
            database: "appdb",
            params: &[],
            require_auth: RequireAuth::default(),
        };
        match server::connect("node1", &address, &login, WAIT, &TlsPolicy::plaintext()).await {
            Err(e @ ServerError::Auth(_)) => {
                assert!(e.to_string().contains(asked), "{user}: {e}")
            }
            other => panic!("{user}: expected a refusal, got {:?}", other.map(drop)),
        }
        login.require_auth = RequireAuth::parse(method).expect("valid");
        let connection = server::connect("node1", &address, &login, WAIT, &TlsPolicy::plaintext())
            .await
            .unwrap_or_else(|e| panic!("{user} with require_auth {method}: {e}"));
        drop(connection);
    }
    // SCRAM, the default, verifies PostgreSQL's signature.
    let login = LoginRequest {
        user: "app",
        credential: Credential::Password("app_pw"),
        database: "appdb",
        params: &[],
        require_auth: RequireAuth::default(),
    };
    server::connect("node1", &address, &login, WAIT, &TlsPolicy::plaintext())
        .await
        .expect("SCRAM login with the default require_auth");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_whose_server_login_is_refused_gets_fatal_28000_naming_require_auth() {
    let cluster = one_node().await;
    let (yaml, _api) = config_for(cluster.port(0), "").await;
    let line = "{ name: app_md5, password: app_md5_pw, auth: md5, require_auth: md5 }";
    assert!(yaml.contains(line), "the test users include {line}");
    let yaml = yaml.replace(line, "{ name: app_md5, password: app_md5_pw, auth: md5 }");
    let proxy = start_proxy(&yaml).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let refused = try_connect(rw, "app_md5", "app_md5_pw").await;
    let Err(error) = refused else {
        panic!("the login is refused")
    };
    let db = error.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28000", "{db:?}");
    let detail = db.detail().unwrap_or_default();
    assert!(
        detail.contains("an MD5 password") && detail.contains("require_auth"),
        "{detail}"
    );
    // A SCRAM user on the same proxy is unaffected.
    let client = connect(rw, "app", "app_pw").await;
    assert_eq!(
        simple_value(&client, "SELECT 1", "scram user")
            .await
            .as_deref(),
        Some("1")
    );
    drop(client);
    drop(proxy);
}

/// Logins the responsiveness test runs at once, each deriving keys at the cap.
const SLOW_LOGINS: usize = 8;

/// A SCRAM server on its own thread and runtime (so it never competes with the
/// runtime under test) that checks `password` at [`MAX_ITERATIONS`] for
/// [`SLOW_LOGINS`] connections. `all_challenged` is notified once every one has
/// been sent its server-first-message (from then on each login derives keys);
/// `finals` counts client-final-messages received (each one a derivation done).
struct SlowScramServer {
    address: String,
    all_challenged: std::sync::Arc<tokio::sync::Notify>,
    finals: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn slow_scram_server(password: &str) -> SlowScramServer {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use switchyard::auth::scram::{ScramServer, ScramVerifier, MAX_ITERATIONS};

    let verifier = ScramVerifier::from_password(password, b"slow-salt-16byte", MAX_ITERATIONS);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let address = listener.local_addr().expect("address").to_string();
    let all_challenged = Arc::new(tokio::sync::Notify::new());
    let finals = Arc::new(AtomicUsize::new(0));
    let (notify, counter) = (Arc::clone(&all_challenged), Arc::clone(&finals));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("fake server runtime");
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            let challenged = Arc::new(AtomicUsize::new(0));
            let mut sessions = Vec::new();
            for _ in 0..SLOW_LOGINS {
                let (mut socket, _) = tokio::time::timeout(WAIT, listener.accept())
                    .await
                    .expect("every login connects")
                    .expect("accept");
                let (verifier, notify, counter, challenged) = (
                    verifier.clone(),
                    Arc::clone(&notify),
                    Arc::clone(&counter),
                    Arc::clone(&challenged),
                );
                sessions.push(tokio::spawn(async move {
                    read_startup(&mut socket).await;
                    let mut scram = ScramServer::new(verifier);
                    let nonce_request = start_sasl_raw(&mut socket).await;
                    let first = scram
                        .handle_client_first(&nonce_request)
                        .expect("client-first");
                    socket
                        .write_all(&auth_message(11, &first))
                        .await
                        .expect("server-first");
                    if challenged.fetch_add(1, Ordering::SeqCst) + 1 == SLOW_LOGINS {
                        notify.notify_one();
                    }
                    let (_, client_final) = read_message(&mut socket).await;
                    counter.fetch_add(1, Ordering::SeqCst);
                    let last = scram
                        .handle_client_final(&client_final)
                        .expect("valid proof");
                    socket
                        .write_all(&auth_message(12, &last))
                        .await
                        .expect("server-final");
                    socket.write_all(&auth_message(0, &[])).await.expect("ok");
                    socket
                        .write_all(b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02Z\0\0\0\x05I")
                        .await
                        .expect("ready");
                    rest_of_stream(&mut socket).await;
                }));
            }
            for session in sessions {
                session.await.expect("fake session");
            }
        });
    });
    SlowScramServer {
        address,
        all_challenged,
        finals,
    }
}

/// Sends AuthenticationSASL and returns the SCRAM data of the client's
/// SASLInitialResponse (mechanism, length, data).
async fn start_sasl_raw(socket: &mut TcpStream) -> Vec<u8> {
    socket
        .write_all(&auth_message(10, b"SCRAM-SHA-256\0\0"))
        .await
        .expect("sasl");
    let (tag, body) = read_message(socket).await;
    assert_eq!(tag, b'p');
    let after_name = body.iter().position(|b| *b == 0).expect("mechanism name") + 1;
    body[after_name + 4..].to_vec()
}

/// The runtime here has one thread. Were PBKDF2 run on it, each of the eight
/// logins would hold it for a whole derivation, and twenty round trips on another
/// connection (each needing the thread between two derivations) could not finish
/// before the last derivation did; run on the blocking pool, they finish while
/// most logins are still deriving.
#[tokio::test]
async fn other_connections_are_served_while_logins_derive_keys() {
    use std::sync::atomic::Ordering;
    let cluster = one_node().await;
    let address = format!("127.0.0.1:{}", cluster.port(0));
    let other = LoginRequest {
        user: "app",
        credential: Credential::Password("app_pw"),
        database: "appdb",
        params: &[],
        require_auth: RequireAuth::default(),
    };
    let mut busy = server::connect("node1", &address, &other, WAIT, &TlsPolicy::plaintext())
        .await
        .expect("the other connection logs in");

    let slow = slow_scram_server("slow_pw");
    let logins: Vec<_> = (0..SLOW_LOGINS)
        .map(|_| {
            let address = slow.address.clone();
            tokio::spawn(async move {
                let login = LoginRequest {
                    user: "slow",
                    credential: Credential::Password("slow_pw"),
                    database: "appdb",
                    params: &[],
                    require_auth: RequireAuth::default(),
                };
                server::connect(
                    "slow",
                    &address,
                    &login,
                    Duration::from_secs(120),
                    &TlsPolicy::plaintext(),
                )
                .await
                .map(drop)
            })
        })
        .collect();
    tokio::time::timeout(WAIT, slow.all_challenged.notified())
        .await
        .expect("every login gets its SCRAM challenge");

    for i in 0..20 {
        let row = busy
            .query_row("SELECT 1", WAIT)
            .await
            .unwrap_or_else(|e| panic!("round trip {i}: {e}"));
        assert!(row.is_some(), "round trip {i} returned its row");
    }
    let derived = slow.finals.load(Ordering::SeqCst);
    assert!(
        derived < SLOW_LOGINS,
        "the other connection had to wait for every derivation ({derived} of {SLOW_LOGINS} done)"
    );
    for login in logins {
        login
            .await
            .expect("login task")
            .expect("a login at the iteration cap succeeds");
    }
    assert_eq!(slow.finals.load(Ordering::SeqCst), SLOW_LOGINS);
}
