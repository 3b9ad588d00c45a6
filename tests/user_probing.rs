//! What a client that does not know the password can learn about which user names
//! exist: nothing from the SCRAM salt. A configured SCRAM user shows the same salt
//! on every attempt; so must an unknown name (derived from the name under a
//! per-process key), and two unknown names must show different salts, as two real
//! users do. Both fail with the same 28P01.

mod harness;

use harness::pg::shared_cluster;
use harness::proxy::*;
use harness::raw_client::*;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;

/// Starts a SCRAM exchange as `user` and returns the salt of the server-first
/// message, then sends a wrong proof and returns the SQLSTATE it gets.
async fn salt_then_failure(addr: SocketAddr, user: &str) -> (String, String) {
    let mut stream = raw_connect(addr).await;
    stream
        .write_all(&startup_packet(
            196608,
            &[("user", user), ("database", "appdb")],
        ))
        .await
        .expect("startup");
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!(tag, b'R', "{user}: an authentication request");
    assert_eq!(&body[..4], &10u32.to_be_bytes(), "{user}: asked for SASL");
    assert!(
        body.windows(13).any(|w| w == b"SCRAM-SHA-256"),
        "{user}: SCRAM offered"
    );
    let (tag, body) = send_probe_client_first(&mut stream).await;
    assert_eq!(tag, b'R', "{user}: SASLContinue");
    assert_eq!(&body[..4], &11u32.to_be_bytes(), "{user}: SASLContinue");
    let server_first = String::from_utf8(body[4..].to_vec()).expect("utf-8 server-first");
    let salt = server_first
        .split(',')
        .find_map(|field| field.strip_prefix("s="))
        .unwrap_or_else(|| panic!("{user}: no salt in {server_first:?}"))
        .to_string();
    assert!(
        server_first.contains(",i=4096"),
        "{user}: the usual iteration count, {server_first:?}"
    );
    let nonce = server_first
        .split(',')
        .find_map(|field| field.strip_prefix("r="))
        .expect("nonce");
    let proof = format!("c=biws,r={nonce},p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    stream
        .write_all(&message(b'p', proof.as_bytes()))
        .await
        .expect("SASLResponse");
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!(tag, b'E', "{user}: a wrong proof is refused");
    (salt, sqlstate(&body))
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_names_show_stable_distinct_salts_like_real_users() {
    let cluster = shared_cluster().await;
    let (proxy, _api) = proxy_for(cluster.port(0), "pool: { mode: transaction, size: 2 }\n").await;
    let rw = proxy.listener_addr("rw").expect("rw");

    let (real_1, real_failure) = salt_then_failure(rw, "app").await;
    let (real_2, _) = salt_then_failure(rw, "app").await;
    assert_eq!(real_1, real_2, "a configured user's salt is its stored one");

    let (ghost_1, ghost_failure) = salt_then_failure(rw, "ghost_a").await;
    let (ghost_2, _) = salt_then_failure(rw, "ghost_a").await;
    let (other_ghost, _) = salt_then_failure(rw, "ghost_b").await;
    assert_eq!(ghost_1, ghost_2, "an unknown name keeps its salt");
    assert_ne!(ghost_1, other_ghost, "two unknown names differ");
    assert_ne!(ghost_1, real_1);
    assert_eq!(real_failure, "28P01");
    assert_eq!(
        ghost_failure, "28P01",
        "unknown users fail like wrong passwords"
    );
}
