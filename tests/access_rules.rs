//! `access:` rules (pg_hba.conf's idea) against a real PostgreSQL behind the proxy:
//! the first matching rule decides, `reject` and "no rule" refuse with 28000
//! before any authentication, a rule's method replaces the user's own (an `md5`
//! rule makes an unknown user look like an MD5 user), rules change on reload, and
//! `check` names rules that can never match.

mod harness;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use harness::clients::*;
use harness::pg::shared_cluster;
use harness::proxy::*;
use harness::raw_client::*;
use switchyard::config::Config;
use switchyard::proxy;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

const RULES: &str = "access:
  - { source: 127.0.0.2, method: reject }
  - { user: app_md5, method: md5 }
  - { database: appdb, user: all, source: 127.0.0.0/8, listener: rw, tls: required, method: cert }
  - { source: 127.0.0.0/8, database: appdb, method: scram-sha-256 }
  - { database: md5db, method: md5 }
";

/// The first authentication request (code) or the error a startup as `user` to
/// `database` from `source` gets.
async fn first_answer(
    addr: SocketAddr,
    source: u8,
    user: &str,
    database: &str,
) -> Result<u32, String> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, source)),
            0,
        ))
        .expect("bind");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream
        .write_all(&startup_packet(
            196608,
            &[("user", user), ("database", database)],
        ))
        .await
        .expect("startup");
    let (tag, body) = read_message(&mut stream).await;
    match tag {
        b'R' => Ok(u32::from_be_bytes([body[0], body[1], body[2], body[3]])),
        _ => Err(format!(
            "{} {}",
            sqlstate(&body),
            String::from_utf8_lossy(&body).replace('\0', " ")
        )),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_matching_rule_decides_and_rules_reload() {
    let cluster = shared_cluster().await;
    let (yaml, _api) = config_for(cluster.port(0), "pool: { mode: transaction, size: 2 }\n").await;
    let file = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(file.path(), format!("{yaml}{RULES}")).expect("write");
    init_logging();
    let config = Config::load(file.path()).expect("config with rules");
    let running = proxy::start_with_source(config, Some(file.path().to_path_buf()))
        .await
        .expect("proxy starts");
    let rw = running.listener_addr("rw").expect("rw");

    // Rule 1: everything from 127.0.0.2 is refused before authentication.
    let refused = first_answer(rw, 2, "app", "appdb")
        .await
        .expect_err("rejected");
    assert!(refused.starts_with("28000"), "{refused}");
    assert!(
        refused.contains(r#"access rule 1 rejects the connection for host "127.0.0.2", user "app", database "appdb", no TLS"#),
        "{refused}"
    );
    // Rule 2: app_md5 logs in with MD5 (its own method too) and queries.
    let mut md5 = RawClient::login(rw, "md5 rule").await;
    let rows = md5.round_trip(&query_msg("select current_user")).await;
    assert_eq!(data_rows(&rows), row(&["app_md5"]));
    // Rule 3 needs TLS: a plaintext client falls through to rule 4 (SCRAM).
    assert_eq!(first_answer(rw, 1, "app", "appdb").await, Ok(10), "SASL");
    let app = connect(rw, "app", "app_pw").await;
    let one = app.query_one("select 1", &[]).await.expect("query");
    assert_eq!(one.get::<_, i32>(0), 1);
    // Rule 5: an md5 rule asks everyone for MD5, known or not: an unknown name
    // gets the same first message as app_md5 does.
    assert_eq!(
        first_answer(rw, 1, "ghost", "md5db").await,
        Ok(5),
        "MD5 for an unknown user"
    );
    assert_eq!(first_answer(rw, 1, "app_md5", "md5db").await, Ok(5));
    // No rule for this database: refused, named.
    let none = first_answer(rw, 1, "app", "otherdb")
        .await
        .expect_err("no rule");
    assert!(none.starts_with("28000"), "{none}");
    assert!(
        none.contains(r#"no access rule for host "127.0.0.1", user "app", database "otherdb""#),
        "{none}"
    );

    // A reload that drops rule 1 lets 127.0.0.2 in.
    let without_reject = RULES.replace("  - { source: 127.0.0.2, method: reject }\n", "");
    std::fs::write(file.path(), format!("{yaml}{without_reject}")).expect("rewrite");
    assert!(running.reload().await.is_ok(), "reload");
    assert_eq!(first_answer(rw, 2, "app", "appdb").await, Ok(10));
    // Without any rules, the user's own method applies again everywhere.
    std::fs::write(file.path(), &yaml).expect("rewrite");
    assert!(running.reload().await.is_ok(), "reload");
    assert_eq!(first_answer(rw, 1, "app", "otherdb").await, Ok(10));
}

#[test]
fn check_names_rules_that_can_never_match_and_refuses_bad_ones() {
    let base = "listeners:\n  - { name: rw, listen: \"127.0.0.1:0\", route: primary }\n\
                cluster:\n  nodes:\n    - { name: node1, host: 127.0.0.1, port: 5432, api: \"http://127.0.0.1:8008\" }\n\
                users:\n  - { name: app, password: app_pw }\n";
    let shadowed = format!(
        "{base}access:\n  - {{ source: 10.0.0.0/8, method: scram-sha-256 }}\n  \
         - {{ source: 10.1.0.0/16, user: app, method: reject }}\n  \
         - {{ tls: required, method: md5 }}\n  - {{ method: cert }}\n"
    );
    let config = Config::from_yaml_str(&shadowed).expect("valid rules");
    let notes = switchyard::config::notes(&config);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("access[1] can never match: access[0] before it")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("access[2] can never match: it requires TLS")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("access[3] (method cert) can never let anyone in")),
        "{notes:?}"
    );
    let bad_cidr = format!("{base}access:\n  - {{ source: 10.0.0.0/33, method: md5 }}\n");
    let error = Config::from_yaml_str(&bad_cidr).expect_err("bad CIDR");
    assert!(error.to_string().contains("access[0].source"), "{error}");
    let bad_listener = format!("{base}access:\n  - {{ listener: ro, method: md5 }}\n");
    let error = Config::from_yaml_str(&bad_listener).expect_err("unknown listener");
    assert!(
        error.to_string().contains("no listener is named \"ro\""),
        "{error}"
    );
}
