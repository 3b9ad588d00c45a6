//! PostgreSQL's legacy MD5 password challenge/response.
//!
//! Owns computing the response a client sends for `AuthenticationMD5Password`
//! and verifying such a response in constant time. The scheme is
//! `"md5" + hex(md5(hex(md5(password ++ user)) ++ salt))`.

use std::fmt::Write as _;

use ::md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// Appends lowercase hex, as PostgreSQL writes it.
fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
}

/// The password message body (without the trailing NUL) a client sends in
/// answer to `AuthenticationMD5Password` with the given 4-byte `salt`.
pub fn md5_response(user: &str, password: &str, salt: [u8; 4]) -> String {
    md5_response_from_hash(&md5_hash(user, password), salt)
}

/// The hash PostgreSQL stores for MD5 passwords: `"md5" + hex(md5(password ++ user))`.
pub fn md5_hash(user: &str, password: &str) -> String {
    let inner = Md5::new()
        .chain_update(password.as_bytes())
        .chain_update(user.as_bytes())
        .finalize();
    let mut hash = String::with_capacity(35);
    hash.push_str("md5");
    push_hex(&mut hash, &inner);
    hash
}

/// The response to a challenge with `salt`, from a stored hash (see [`md5_hash`]):
/// what lets a proxy that only has the hash log in, and check clients.
pub fn md5_response_from_hash(hash: &str, salt: [u8; 4]) -> String {
    let inner_hex = hash.strip_prefix("md5").unwrap_or(hash);
    let outer = Md5::new()
        .chain_update(inner_hex.as_bytes())
        .chain_update(salt)
        .finalize();
    let mut out = String::with_capacity(35);
    out.push_str("md5");
    push_hex(&mut out, &outer);
    out
}

/// Checks a client's MD5 password response in constant time.
///
/// `response` is the password message body without its trailing NUL. Only
/// the exact lowercase form PostgreSQL clients send is accepted.
pub fn verify_md5_response(user: &str, password: &str, salt: [u8; 4], response: &[u8]) -> bool {
    verify_md5_response_from_hash(&md5_hash(user, password), salt, response)
}

/// [`verify_md5_response`] against a stored hash (see [`md5_hash`]).
pub fn verify_md5_response_from_hash(hash: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let expected = md5_response_from_hash(hash, salt);
    bool::from(expected.as_bytes().ct_eq(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // Computed independently with python3 hashlib.
        assert_eq!(
            md5_response("postgres", "postgres", [1, 2, 3, 4]),
            "md568be9ed08db75f318087ab337aaea044"
        );
        assert_eq!(
            md5_response("alice", "s3cr3t", [0xde, 0xad, 0xbe, 0xef]),
            "md5f4ae1027427ba7f70c4ff1f49b2de6b2"
        );
    }

    #[test]
    fn formula_by_hand() {
        // Inner hash is what pg_authid stores: md5(password ++ user).
        let mut inner = String::new();
        push_hex(&mut inner, &Md5::digest(b"s3cr3talice"));
        assert_eq!(inner, "8505fe3f3de8521be02f7b633dae545d");
        let mut salted = inner.into_bytes();
        salted.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let mut expected = String::from("md5");
        push_hex(&mut expected, &Md5::digest(&salted));
        assert_eq!(
            md5_response("alice", "s3cr3t", [0xde, 0xad, 0xbe, 0xef]),
            expected
        );
    }

    #[test]
    fn verify_accepts_right_and_rejects_wrong() {
        let salt = [1, 2, 3, 4];
        let good = md5_response("postgres", "postgres", salt);
        assert!(verify_md5_response(
            "postgres",
            "postgres",
            salt,
            good.as_bytes()
        ));
        assert!(!verify_md5_response(
            "postgres",
            "wrong",
            salt,
            good.as_bytes()
        ));
        assert!(!verify_md5_response(
            "postgres",
            "postgres",
            [4, 3, 2, 1],
            good.as_bytes()
        ));
        assert!(!verify_md5_response("postgres", "postgres", salt, b""));
        assert!(!verify_md5_response(
            "postgres",
            "postgres",
            salt,
            &good.as_bytes()[..34]
        ));
        let mut with_nul = good.clone().into_bytes();
        with_nul.push(0);
        assert!(!verify_md5_response(
            "postgres", "postgres", salt, &with_nul
        ));
        assert!(!verify_md5_response(
            "postgres",
            "postgres",
            salt,
            good.to_uppercase().as_bytes()
        ));
        assert!(!verify_md5_response(
            "postgres",
            "postgres",
            salt,
            &[0xff, 0xfe, 0x00]
        ));
    }
}
