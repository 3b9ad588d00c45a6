//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it.
//!
//! Owns the stored verifier format ([`ScramVerifier`]), the server side of
//! the exchange used when the proxy authenticates a connecting client
//! ([`ScramServer`]), and the client side used when the proxy authenticates
//! itself to a PostgreSQL server ([`ScramClient`], in `client.rs`). These are pure state
//! machines: the caller moves the SASL payloads in and out of
//! `AuthenticationSASL*` / `SASLInitialResponse` / `SASLResponse` messages.
//!
//! On a TLS connection the server side also offers `SCRAM-SHA-256-PLUS` with
//! `tls-server-end-point` channel binding ([`ScramServer::bind_channel`]) and
//! checks the GS2 flags as RFC 5802 section 6 says; the client side never asks for
//! channel binding. Authorization identities are rejected, exactly like
//! PostgreSQL. Every error puts the exchange into a terminal failed state; a
//! failed exchange cannot be resumed.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AuthError;

/// The SASL mechanism name to advertise and to expect.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The channel-binding variant, offered on TLS connections only.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The one channel-binding type offered (RFC 5929), as PostgreSQL.
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// Iteration count used by [`ScramVerifier::generate`] (PostgreSQL's default).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Largest iteration count [`ScramClient`] accepts from a server, so that a
/// hostile (or misconfigured) server cannot make the proxy spin on PBKDF2: 25
/// times PostgreSQL's default of 4096, and PBKDF2 at this count takes tens of
/// milliseconds of one core per login.
pub const MAX_ITERATIONS: u32 = 100_000;

/// Random salt length for [`ScramVerifier::generate`] (as PostgreSQL).
const SALT_LEN: usize = 16;
/// Random nonce length in bytes before base64 (as PostgreSQL and libpq).
const NONCE_LEN: usize = 18;
/// Longest `e=` text from a server that we keep in [`AuthError::ServerError`].
const MAX_SERVER_ERROR_CHARS: usize = 256;
/// Prefix of PostgreSQL's stored verifier format.
const VERIFIER_PREFIX: &str = "SCRAM-SHA-256$";

type Key = [u8; 32];

// Attribute names (RFC 5802 section 5.1): each attribute is `<letter>=<value>`.
/// `a=`: authorization identity (GS2 header).
const ATTR_AUTHZID: char = 'a';
/// `n=`: user name.
const ATTR_USERNAME: char = 'n';
/// `m=`: reserved for mandatory extensions.
const ATTR_MANDATORY_EXTENSION: char = 'm';
/// `r=`: nonce.
const ATTR_NONCE: char = 'r';
/// `c=`: channel binding data.
const ATTR_CHANNEL_BINDING: char = 'c';
/// `s=`: salt.
const ATTR_SALT: char = 's';
/// `i=`: iteration count.
const ATTR_ITERATIONS: char = 'i';
/// `p=`: client proof.
const ATTR_PROOF: char = 'p';
/// `v=`: server signature (verifier).
const ATTR_VERIFIER: char = 'v';
/// `e=`: server error.
const ATTR_ERROR: char = 'e';

// ---------------------------------------------------------------------------
// Primitives
// ---------------------------------------------------------------------------

/// HMAC-SHA-256 over the concatenation of `parts`, keyed with a 32-byte key.
fn hmac_sha256(key: &Key, parts: &[&[u8]]) -> Key {
    // HMAC zero-pads keys shorter than the 64-byte SHA-256 block (RFC 2104),
    // so filling a zeroed block is exactly HMAC keyed with `key`; this avoids
    // the fallible slice constructor.
    let mut block = hmac::digest::Key::<Hmac<Sha256>>::default();
    for (dst, src) in block.iter_mut().zip(key) {
        *dst = *src;
    }
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&block);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

fn xor(a: &Key, b: &Key) -> Key {
    let mut out = [0u8; 32];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// SASLprep the password; if that fails, use the raw bytes, as PostgreSQL
/// and libpq do.
fn prepare_password(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(prepared) => prepared.as_bytes().to_vec(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

/// Returns (ClientKey, ServerKey) for a prepared password.
fn derive_keys(prepared_password: &[u8], salt: &[u8], iterations: u32) -> (Key, Key) {
    let salted: Key = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(prepared_password, salt, iterations);
    (
        hmac_sha256(&salted, &[b"Client Key"]),
        hmac_sha256(&salted, &[b"Server Key"]),
    )
}

fn random_nonce() -> String {
    let raw: [u8; NONCE_LEN] = rand::random();
    BASE64.encode(raw)
}

// ---------------------------------------------------------------------------
// Parsing helpers (all input untrusted)
// ---------------------------------------------------------------------------

fn utf8(msg: &[u8]) -> Result<&str, AuthError> {
    std::str::from_utf8(msg).map_err(|_| AuthError::Malformed("message is not valid UTF-8"))
}

/// The value of `field` if it is `<name>=<value>`.
fn attr<'a>(field: Option<&'a str>, name: char, what: &'static str) -> Result<&'a str, AuthError> {
    field
        .and_then(|f| f.strip_prefix(name))
        .and_then(|f| f.strip_prefix('='))
        .ok_or(AuthError::Malformed(what))
}

/// Nonces are non-empty runs of printable ASCII other than ','.
fn validate_nonce(nonce: &str) -> Result<(), AuthError> {
    if !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        Ok(())
    } else {
        Err(AuthError::Malformed("nonce is empty or not printable"))
    }
}

/// Optional trailing extensions: each must look like `<letter>=...` and must
/// not repeat a core attribute; their content is ignored.
fn validate_extensions<'a>(fields: impl Iterator<Item = &'a str>) -> Result<(), AuthError> {
    for field in fields {
        let mut chars = field.chars();
        let name = chars.next();
        let eq = chars.next();
        match (name, eq) {
            (Some(ATTR_MANDATORY_EXTENSION), _) => {
                return Err(AuthError::Malformed("unsupported mandatory extension (m=)"))
            }
            (
                Some(
                    ATTR_CHANNEL_BINDING | ATTR_NONCE | ATTR_PROOF | ATTR_SALT | ATTR_ITERATIONS
                    | ATTR_VERIFIER | ATTR_ERROR | ATTR_USERNAME | ATTR_AUTHZID,
                ),
                Some('='),
            ) => return Err(AuthError::Malformed("duplicate or misplaced attribute")),
            (Some(n), Some('=')) if n.is_ascii_alphabetic() => {}
            _ => return Err(AuthError::Malformed("invalid attribute")),
        }
    }
    Ok(())
}

/// Strict iteration-count parser: ASCII digits only.
fn parse_digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Decodes base64 that must hold exactly 32 bytes.
fn decode_key(b64: &str) -> Option<Key> {
    let raw = BASE64.decode(b64).ok()?;
    Key::try_from(raw.as_slice()).ok()
}

fn sanitize_server_error(text: &str) -> String {
    text.chars()
        .take(MAX_SERVER_ERROR_CHARS)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Stored verifier
// ---------------------------------------------------------------------------

/// A SCRAM-SHA-256 password verifier, as stored in `pg_authid.rolpassword`.
///
/// `Debug` does not print the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// `SHA256(ClientKey)`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &BASE64.encode(&self.salt))
            .finish_non_exhaustive()
    }
}

impl ScramVerifier {
    /// Derives the verifier for `password` (SASLprepped, or raw bytes if
    /// SASLprep rejects it, as PostgreSQL does). An `iterations` of 0 is
    /// computed like 1; PostgreSQL never produces it.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        let (client_key, server_key) = derive_keys(&prepare_password(password), salt, iterations);
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key,
        }
    }

    /// A verifier no password matches, for a user that does not exist. Its salt
    /// is derived from the name under a key drawn once per process, so asking
    /// twice for one unknown name shows the same salt (as a real user's stored
    /// secret does) and two unknown names show different ones: the salt does not
    /// tell a prober which names exist.
    pub fn mock_for(user: &str) -> ScramVerifier {
        static KEY: std::sync::OnceLock<Key> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(rand::random);
        let digest = hmac_sha256(key, &[b"switchyard mock salt\0", user.as_bytes()]);
        ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: digest[..SALT_LEN].to_vec(),
            // Random keys: no proof can match them.
            stored_key: rand::random(),
            server_key: rand::random(),
        }
    }

    /// A fresh verifier with a random 16-byte salt and 4096 iterations.
    pub fn generate(password: &str) -> ScramVerifier {
        let salt: [u8; SALT_LEN] = rand::random();
        Self::from_password(password, &salt, DEFAULT_ITERATIONS)
    }

    /// Parses PostgreSQL's stored format
    /// `SCRAM-SHA-256$<iterations>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>`.
    ///
    /// Error texts never include the input.
    pub fn parse(s: &str) -> Result<ScramVerifier, AuthError> {
        let bad = |why: &str| AuthError::BadVerifier(why.to_owned());
        let rest = s
            .strip_prefix(VERIFIER_PREFIX)
            .ok_or_else(|| bad("missing SCRAM-SHA-256$ prefix"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or_else(|| bad("missing '$' between parameters and keys"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or_else(|| bad("missing ':' between iterations and salt"))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or_else(|| bad("missing ':' between StoredKey and ServerKey"))?;
        let iterations = parse_digits(iterations)
            .filter(|&i| i > 0)
            .ok_or_else(|| bad("iteration count is not a positive integer"))?;
        let salt = BASE64
            .decode(salt)
            .map_err(|_| bad("salt is not valid base64"))?;
        let stored_key =
            decode_key(stored_key).ok_or_else(|| bad("StoredKey is not 32 bytes of base64"))?;
        let server_key =
            decode_key(server_key).ok_or_else(|| bad("ServerKey is not 32 bytes of base64"))?;
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Formats the verifier in PostgreSQL's stored format (see [`Self::parse`]).
    pub fn to_postgres_string(&self) -> String {
        format!(
            "{VERIFIER_PREFIX}{}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

// ---------------------------------------------------------------------------
// Server side: the proxy authenticating a connecting client
// ---------------------------------------------------------------------------

enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal {
        /// What `c=` must decode to: the GS2 header the client sent, followed by
        /// the channel-binding data when it chose channel binding.
        binding: Vec<u8>,
        client_first_bare: String,
        server_first: String,
        /// Client nonce followed by our nonce.
        nonce: String,
    },
    Done {
        client_key: Key,
    },
    Failed,
}

/// Server side of a SCRAM-SHA-256 exchange.
///
/// Call [`handle_client_first`](Self::handle_client_first) with the
/// `SASLInitialResponse` payload and send the result in
/// `AuthenticationSASLContinue`; then call
/// [`handle_client_final`](Self::handle_client_final) with the
/// `SASLResponse` payload and send the result in `AuthenticationSASLFinal`.
pub struct ScramServer {
    verifier: ScramVerifier,
    server_nonce: String,
    state: ServerState,
    channel: Channel,
}

/// Channel binding as far as this exchange is concerned.
enum Channel {
    /// Not on TLS: only `SCRAM-SHA-256` was offered.
    Unavailable,
    /// On TLS: both mechanisms were offered; `plus` says which one the client chose.
    Offered { end_point: Vec<u8>, plus: bool },
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ServerState::AwaitingClientFirst => "AwaitingClientFirst",
            ServerState::AwaitingClientFinal { .. } => "AwaitingClientFinal",
            ServerState::Done { .. } => "Done",
            ServerState::Failed => "Failed",
        };
        f.debug_struct("ScramServer")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// A new exchange against `verifier`, with a random 18-byte server nonce.
    pub fn new(verifier: ScramVerifier) -> Self {
        Self::with_nonce(verifier, &random_nonce())
    }

    /// A new exchange with a fixed server nonce part (for tests). The nonce
    /// must be printable ASCII without ','.
    pub fn with_nonce(verifier: ScramVerifier, server_nonce: &str) -> Self {
        ScramServer {
            verifier,
            server_nonce: server_nonce.to_owned(),
            state: ServerState::AwaitingClientFirst,
            channel: Channel::Unavailable,
        }
    }

    /// On a TLS connection, where both mechanisms were offered: `end_point` is the
    /// `tls-server-end-point` data of the certificate the client saw, `plus` whether
    /// the client selected `SCRAM-SHA-256-PLUS`.
    pub fn bind_channel(&mut self, end_point: Vec<u8>, plus: bool) {
        self.channel = Channel::Offered { end_point, plus };
    }

    /// Consumes the client-first-message and returns the server-first-message
    /// `r=<client nonce><server nonce>,s=<b64 salt>,i=<iterations>`.
    pub fn handle_client_first(&mut self, client_first: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(self.state, ServerState::AwaitingClientFirst) {
            return Err(AuthError::OutOfOrder(
                "client-first-message already handled",
            ));
        }
        match self.client_first_inner(client_first) {
            Ok((reply, next)) => {
                self.state = next;
                Ok(reply)
            }
            Err(e) => {
                self.state = ServerState::Failed;
                Err(e)
            }
        }
    }

    fn client_first_inner(&self, msg: &[u8]) -> Result<(Vec<u8>, ServerState), AuthError> {
        let text = utf8(msg)?;

        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (cbind_flag, rest) = text
            .split_once(',')
            .ok_or(AuthError::Malformed("missing GS2 header"))?;
        let binding = self.check_binding_flag(cbind_flag)?;
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(AuthError::Malformed("missing GS2 header"))?;
        if authzid.starts_with("a=") {
            return Err(AuthError::UnsupportedAuthzid);
        }
        if !authzid.is_empty() {
            return Err(AuthError::Malformed("invalid GS2 header"));
        }

        // client-first-message-bare = [reserved-mext ","] username "," nonce
        //                             ["," extensions]
        let mut fields = bare.split(',');
        let first = fields.next();
        if first.is_some_and(|f| f.starts_with("m=")) {
            return Err(AuthError::Malformed("unsupported mandatory extension (m=)"));
        }
        // PostgreSQL uses the startup packet's user; libpq sends "n=".
        attr(first, ATTR_USERNAME, "expected username attribute (n=)")?;
        let client_nonce = attr(fields.next(), ATTR_NONCE, "expected nonce attribute (r=)")?;
        validate_nonce(client_nonce)?;
        validate_extensions(fields)?;

        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let reply = server_first.clone().into_bytes();
        Ok((
            reply,
            ServerState::AwaitingClientFinal {
                binding,
                client_first_bare: bare.to_owned(),
                server_first,
                nonce,
            },
        ))
    }

    /// The GS2 channel-binding flag against what was offered and chosen (RFC 5802
    /// section 6); returns what the client's `c=` must decode to.
    fn check_binding_flag(&self, flag: &str) -> Result<Vec<u8>, AuthError> {
        let plus = matches!(self.channel, Channel::Offered { plus: true, .. });
        match (flag, &self.channel) {
            ("n" | "y", _) if plus => Err(AuthError::Malformed(
                "SCRAM-SHA-256-PLUS was selected but the message has no channel binding",
            )),
            ("n", _) => Ok(b"n,,".to_vec()),
            // The client can bind but believes we cannot; on TLS we offered
            // SCRAM-SHA-256-PLUS, so someone removed it on the way.
            ("y", Channel::Offered { .. }) => Err(AuthError::ChannelBindingDowngrade),
            ("y", Channel::Unavailable) => Ok(b"y,,".to_vec()),
            (flag, channel) if flag.starts_with("p=") => {
                let Channel::Offered { end_point, .. } = channel else {
                    return Err(AuthError::UnsupportedChannelBinding);
                };
                if !plus {
                    return Err(AuthError::Malformed(
                        "SCRAM-SHA-256 was selected but the message asks for channel binding",
                    ));
                }
                if &flag[2..] != TLS_SERVER_END_POINT {
                    return Err(AuthError::UnsupportedChannelBinding);
                }
                let mut binding = format!("{flag},,").into_bytes();
                binding.extend_from_slice(end_point);
                Ok(binding)
            }
            _ => Err(AuthError::Malformed("invalid channel binding flag")),
        }
    }

    /// Consumes the client-final-message, verifies the client's proof and
    /// returns the server-final-message `v=<b64 ServerSignature>`.
    pub fn handle_client_final(&mut self, client_final: &[u8]) -> Result<Vec<u8>, AuthError> {
        let result = match &self.state {
            ServerState::AwaitingClientFinal {
                binding,
                client_first_bare,
                server_first,
                nonce,
            } => Self::client_final_inner(
                &self.verifier,
                binding,
                client_first_bare,
                server_first,
                nonce,
                client_final,
            ),
            ServerState::AwaitingClientFirst => {
                return Err(AuthError::OutOfOrder(
                    "client-final-message before client-first-message",
                ))
            }
            ServerState::Done { .. } => {
                return Err(AuthError::OutOfOrder("exchange already completed"))
            }
            ServerState::Failed => return Err(AuthError::OutOfOrder("exchange already failed")),
        };
        match result {
            Ok((reply, client_key)) => {
                self.state = ServerState::Done { client_key };
                Ok(reply)
            }
            Err(e) => {
                self.state = ServerState::Failed;
                Err(e)
            }
        }
    }

    fn client_final_inner(
        verifier: &ScramVerifier,
        expected_binding: &[u8],
        client_first_bare: &str,
        server_first: &str,
        nonce: &str,
        msg: &[u8],
    ) -> Result<(Vec<u8>, Key), AuthError> {
        let text = utf8(msg)?;

        // client-final-message = channel-binding "," nonce ["," extensions]
        //                        "," proof
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(AuthError::Malformed("expected proof attribute (p=)"))?;
        if proof.contains(',') {
            return Err(AuthError::Malformed("proof must be the last attribute"));
        }
        let mut fields = without_proof.split(',');
        let binding = attr(
            fields.next(),
            ATTR_CHANNEL_BINDING,
            "expected channel binding attribute (c=)",
        )?;
        let binding = BASE64
            .decode(binding)
            .map_err(|_| AuthError::Malformed("channel binding is not valid base64"))?;
        if !ct_eq(&binding, expected_binding) {
            return Err(AuthError::ChannelBindingMismatch);
        }
        let final_nonce = attr(fields.next(), ATTR_NONCE, "expected nonce attribute (r=)")?;
        if final_nonce != nonce {
            return Err(AuthError::NonceMismatch);
        }
        validate_extensions(fields)?;
        let proof =
            decode_key(proof).ok_or(AuthError::Malformed("proof is not 32 bytes of base64"))?;

        let auth_message: [&[u8]; 5] = [
            client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_signature = hmac_sha256(&verifier.stored_key, &auth_message);
        let client_key = xor(&proof, &client_signature);
        if !ct_eq(&sha256(&client_key), &verifier.stored_key) {
            return Err(AuthError::InvalidProof);
        }
        let server_signature = hmac_sha256(&verifier.server_key, &auth_message);
        let reply = format!("v={}", BASE64.encode(server_signature)).into_bytes();
        Ok((reply, client_key))
    }

    /// After a successful [`handle_client_final`](Self::handle_client_final),
    /// the client's recovered ClientKey (usable for SCRAM pass-through with
    /// [`ScramClient::from_client_key`]); `None` otherwise.
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match self.state {
            ServerState::Done { client_key } => Some(client_key),
            _ => None,
        }
    }
}

mod client;

pub use client::ScramClient;

#[cfg(test)]
mod tests;
