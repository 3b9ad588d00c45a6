//! SCRAM-SHA-256-PLUS with `tls-server-end-point`: the server side on a TLS
//! connection, the GS2 flags RFC 5802 section 6 requires it to check, and
//! downgrade attempts.

use super::*;

const END_POINT: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A server on a "TLS connection" (channel binding offered), `plus` selected or not.
fn bound_server(plus: bool) -> ScramServer {
    let verifier = ScramVerifier::parse(LIBPQ_VERIFIER).expect("verifier");
    let mut server = ScramServer::with_nonce(verifier, "srv");
    server.bind_channel(END_POINT.to_vec(), plus);
    server
}

/// The client-final-message for password "postgres" (LIBPQ_VERIFIER) with
/// `cbind_input` (GS2 header plus channel-binding data) as `c=`.
fn final_with_binding(client_first_bare: &str, server_first: &str, cbind_input: &[u8]) -> String {
    let verifier = ScramVerifier::parse(LIBPQ_VERIFIER).expect("verifier");
    let (client_key, _) = derive_keys(b"postgres", &verifier.salt, verifier.iterations);
    let nonce = server_first
        .split(',')
        .next()
        .and_then(|f| f.strip_prefix("r="))
        .expect("nonce");
    let without_proof = format!("c={},r={nonce}", BASE64.encode(cbind_input));
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac_sha256(&sha256(&client_key), &[auth_message.as_bytes()]);
    let proof = xor(&client_key, &signature);
    format!("{without_proof},p={}", BASE64.encode(proof))
}

#[test]
fn plus_with_the_right_end_point_logs_in() {
    let mut server = bound_server(true);
    let first = server
        .handle_client_first(b"p=tls-server-end-point,,n=,r=abc")
        .expect("client first");
    let first = String::from_utf8(first).expect("utf8");
    let mut cbind = b"p=tls-server-end-point,,".to_vec();
    cbind.extend_from_slice(END_POINT);
    let client_final = final_with_binding("n=,r=abc", &first, &cbind);
    server
        .handle_client_final(client_final.as_bytes())
        .expect("proof with the bound channel");
    assert!(server.client_key().is_some());
}

#[test]
fn plus_with_another_end_point_fails() {
    let mut server = bound_server(true);
    let first = server
        .handle_client_first(b"p=tls-server-end-point,,n=,r=abc")
        .expect("client first");
    let first = String::from_utf8(first).expect("utf8");
    // The certificate a man in the middle would present.
    let mut cbind = b"p=tls-server-end-point,,".to_vec();
    cbind.extend_from_slice(b"another certificate's hash......");
    let client_final = final_with_binding("n=,r=abc", &first, &cbind);
    assert_eq!(
        server.handle_client_final(client_final.as_bytes()),
        Err(AuthError::ChannelBindingMismatch)
    );
}

#[test]
fn gs2_flags_follow_rfc_5802_section_6() {
    let cases: [(Option<bool>, &[u8], Option<AuthError>); 8] = [
        // On TLS, plain SCRAM chosen: 'n' is fine, 'y' is a downgrade.
        (Some(false), b"n,,n=,r=abc", None),
        (
            Some(false),
            b"y,,n=,r=abc",
            Some(AuthError::ChannelBindingDowngrade),
        ),
        (
            Some(false),
            b"p=tls-server-end-point,,n=,r=abc",
            Some(AuthError::Malformed(
                "SCRAM-SHA-256 was selected but the message asks for channel binding",
            )),
        ),
        // PLUS chosen: binding data is mandatory, and only tls-server-end-point.
        (
            Some(true),
            b"n,,n=,r=abc",
            Some(AuthError::Malformed(
                "SCRAM-SHA-256-PLUS was selected but the message has no channel binding",
            )),
        ),
        (
            Some(true),
            b"y,,n=,r=abc",
            Some(AuthError::Malformed(
                "SCRAM-SHA-256-PLUS was selected but the message has no channel binding",
            )),
        ),
        (
            Some(true),
            b"p=tls-unique,,n=,r=abc",
            Some(AuthError::UnsupportedChannelBinding),
        ),
        // Not on TLS: 'y' is right (we offered no PLUS), 'p' impossible.
        (None, b"y,,n=,r=abc", None),
        (
            None,
            b"p=tls-server-end-point,,n=,r=abc",
            Some(AuthError::UnsupportedChannelBinding),
        ),
    ];
    for (plus, message, expected) in cases {
        let mut server = match plus {
            Some(plus) => bound_server(plus),
            None => ScramServer::with_nonce(
                ScramVerifier::parse(LIBPQ_VERIFIER).expect("verifier"),
                "srv",
            ),
        };
        let result = server.handle_client_first(message).err();
        assert_eq!(
            result,
            expected,
            "plus {plus:?}, {}",
            String::from_utf8_lossy(message)
        );
    }
}
