//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it.
//!
//! Owns the stored verifier format ([`ScramVerifier`]), the server side of
//! the exchange used when the proxy authenticates a connecting client
//! ([`ScramServer`]), and the client side used when the proxy authenticates
//! itself to a PostgreSQL server ([`ScramClient`]). These are pure state
//! machines: the caller moves the SASL payloads in and out of
//! `AuthenticationSASL*` / `SASLInitialResponse` / `SASLResponse` messages.
//!
//! Channel binding is never offered (we only advertise [`SCRAM_SHA_256`],
//! never `SCRAM-SHA-256-PLUS`), and authorization identities are rejected,
//! exactly like PostgreSQL. Every error puts the exchange into a terminal
//! failed state; a failed exchange cannot be resumed.

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

/// Iteration count used by [`ScramVerifier::generate`] (PostgreSQL's default).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Largest iteration count [`ScramClient`] accepts from a server, so that a
/// hostile server cannot make the proxy spin on PBKDF2.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// Random salt length for [`ScramVerifier::generate`] (as PostgreSQL).
const SALT_LEN: usize = 16;
/// Random nonce length in bytes before base64 (as PostgreSQL and libpq).
const NONCE_LEN: usize = 18;
/// Longest `e=` text from a server that we keep in [`AuthError::ServerError`].
const MAX_SERVER_ERROR_CHARS: usize = 256;
/// Prefix of PostgreSQL's stored verifier format.
const VERIFIER_PREFIX: &str = "SCRAM-SHA-256$";

type Key = [u8; 32];

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
        let mut bytes = field.bytes();
        let name = bytes.next();
        let eq = bytes.next();
        match (name, eq) {
            (Some(b'm'), _) => {
                return Err(AuthError::Malformed("unsupported mandatory extension (m=)"))
            }
            (Some(b'c' | b'r' | b'p' | b's' | b'i' | b'v' | b'e' | b'n' | b'a'), Some(b'=')) => {
                return Err(AuthError::Malformed("duplicate or misplaced attribute"))
            }
            (Some(n), Some(b'=')) if n.is_ascii_alphabetic() => {}
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
        /// The GS2 header the client sent, which `c=` must echo.
        gs2_header: &'static str,
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
        }
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
        let gs2_header = match cbind_flag {
            "n" => "n,,",
            // The client supports channel binding but believes we do not:
            // correct, since we never advertise SCRAM-SHA-256-PLUS.
            "y" => "y,,",
            f if f.starts_with("p=") => return Err(AuthError::UnsupportedChannelBinding),
            _ => return Err(AuthError::Malformed("invalid channel binding flag")),
        };
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
        attr(first, 'n', "expected username attribute (n=)")?;
        let client_nonce = attr(fields.next(), 'r', "expected nonce attribute (r=)")?;
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
                gs2_header,
                client_first_bare: bare.to_owned(),
                server_first,
                nonce,
            },
        ))
    }

    /// Consumes the client-final-message, verifies the client's proof and
    /// returns the server-final-message `v=<b64 ServerSignature>`.
    pub fn handle_client_final(&mut self, client_final: &[u8]) -> Result<Vec<u8>, AuthError> {
        let result = match &self.state {
            ServerState::AwaitingClientFinal {
                gs2_header,
                client_first_bare,
                server_first,
                nonce,
            } => Self::client_final_inner(
                &self.verifier,
                gs2_header,
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
        gs2_header: &str,
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
            'c',
            "expected channel binding attribute (c=)",
        )?;
        let binding = BASE64
            .decode(binding)
            .map_err(|_| AuthError::Malformed("channel binding is not valid base64"))?;
        if binding != gs2_header.as_bytes() {
            return Err(AuthError::ChannelBindingMismatch);
        }
        let final_nonce = attr(fields.next(), 'r', "expected nonce attribute (r=)")?;
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

// ---------------------------------------------------------------------------
// Client side: the proxy authenticating itself to a PostgreSQL server
// ---------------------------------------------------------------------------

enum ClientSecret {
    /// SASLprepped password bytes.
    Password(Vec<u8>),
    /// Keys recovered from a client (pass-through); only valid against a
    /// server whose verifier has the same salt and iteration count.
    Keys {
        client_key: Key,
        server_key: Key,
        salt: Vec<u8>,
        iterations: u32,
    },
}

enum ClientState {
    Initial,
    AwaitingServerFinal { server_signature: Key },
    Failed,
}

/// Client side of a SCRAM-SHA-256 exchange.
///
/// Send [`client_first`](Self::client_first) in `SASLInitialResponse`; pass
/// the `AuthenticationSASLContinue` payload to
/// [`handle_server_first`](Self::handle_server_first) and send the result in
/// `SASLResponse`; pass the `AuthenticationSASLFinal` payload to
/// [`verify_server_final`](Self::verify_server_final). Do not treat the
/// server as authenticated until that returns `Ok`.
pub struct ScramClient {
    secret: ClientSecret,
    nonce: String,
    client_first_bare: String,
    state: ClientState,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ClientState::Initial => "Initial",
            ClientState::AwaitingServerFinal { .. } => "AwaitingServerFinal",
            ClientState::Failed => "Failed",
        };
        f.debug_struct("ScramClient")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// Escapes a username as an RFC 5802 `saslname` (',' and '=').
fn saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

impl ScramClient {
    /// A new exchange for `password` with a random 18-byte nonce.
    pub fn new(password: &str) -> Self {
        Self::with_nonce(password, &random_nonce())
    }

    /// A new exchange with a fixed nonce (for tests). The nonce must be
    /// printable ASCII without ','.
    pub fn with_nonce(password: &str, nonce: &str) -> Self {
        Self::build(
            ClientSecret::Password(prepare_password(password)),
            nonce,
            "",
        )
    }

    /// With an explicit username in the client-first-message (PostgreSQL
    /// ignores it; used for the RFC 7677 test vector).
    #[cfg(test)]
    pub(crate) fn with_nonce_and_user(password: &str, nonce: &str, user: &str) -> Self {
        Self::build(
            ClientSecret::Password(prepare_password(password)),
            nonce,
            user,
        )
    }

    /// SCRAM pass-through: authenticate with a ClientKey recovered by
    /// [`ScramServer::client_key`] instead of a password. `verifier` is the
    /// one the client was checked against; it supplies the ServerKey used to
    /// check the server's signature. This only works if the backend stores
    /// the same verifier (same salt and iteration count); otherwise
    /// [`handle_server_first`](Self::handle_server_first) fails with
    /// [`AuthError::BadVerifier`].
    pub fn from_client_key(client_key: [u8; 32], verifier: &ScramVerifier) -> Self {
        Self::build(
            ClientSecret::Keys {
                client_key,
                server_key: verifier.server_key,
                salt: verifier.salt.clone(),
                iterations: verifier.iterations,
            },
            &random_nonce(),
            "",
        )
    }

    fn build(secret: ClientSecret, nonce: &str, user: &str) -> Self {
        ScramClient {
            secret,
            nonce: nonce.to_owned(),
            client_first_bare: format!("n={},r={nonce}", saslname(user)),
            state: ClientState::Initial,
        }
    }

    /// The client-first-message: `n,,n=,r=<nonce>` (empty username, like
    /// libpq; the server uses the startup packet's user).
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Consumes the server-first-message and returns the client-final-message
    /// `c=biws,r=<nonce>,p=<b64 proof>`.
    pub fn handle_server_first(&mut self, server_first: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(self.state, ClientState::Initial) {
            return Err(AuthError::OutOfOrder(
                "server-first-message already handled",
            ));
        }
        match self.server_first_inner(server_first) {
            Ok((reply, server_signature)) => {
                self.state = ClientState::AwaitingServerFinal { server_signature };
                Ok(reply)
            }
            Err(e) => {
                self.state = ClientState::Failed;
                Err(e)
            }
        }
    }

    fn server_first_inner(&self, msg: &[u8]) -> Result<(Vec<u8>, Key), AuthError> {
        let text = utf8(msg)?;
        if let Some(err) = text.strip_prefix("e=") {
            return Err(AuthError::ServerError(sanitize_server_error(err)));
        }

        // server-first-message = [reserved-mext ","] nonce "," salt ","
        //                        iteration-count ["," extensions]
        let mut fields = text.split(',');
        let first = fields.next();
        if first.is_some_and(|f| f.starts_with("m=")) {
            return Err(AuthError::Malformed("unsupported mandatory extension (m=)"));
        }
        let nonce = attr(first, 'r', "expected nonce attribute (r=)")?;
        let salt = attr(fields.next(), 's', "expected salt attribute (s=)")?;
        let iterations = attr(fields.next(), 'i', "expected iteration attribute (i=)")?;
        validate_extensions(fields)?;

        // The server must extend our nonce with its own part.
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(self.nonce.as_str()) {
            return Err(AuthError::NonceMismatch);
        }
        validate_nonce(nonce)?;
        let salt = BASE64
            .decode(salt)
            .map_err(|_| AuthError::Malformed("salt is not valid base64"))?;
        let iterations = parse_digits(iterations)
            .ok_or(AuthError::Malformed("iteration count is not a number"))?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(AuthError::BadIterationCount(iterations));
        }

        let (client_key, server_key) = match &self.secret {
            ClientSecret::Password(password) => derive_keys(password, &salt, iterations),
            ClientSecret::Keys {
                client_key,
                server_key,
                salt: our_salt,
                iterations: our_iterations,
            } => {
                if *our_salt != salt || *our_iterations != iterations {
                    return Err(AuthError::BadVerifier(
                        "server's salt or iteration count differs from the pass-through verifier"
                            .to_owned(),
                    ));
                }
                (*client_key, *server_key)
            }
        };

        let without_proof = format!("c=biws,r={nonce}");
        let auth_message: [&[u8]; 5] = [
            self.client_first_bare.as_bytes(),
            b",",
            text.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let stored_key = sha256(&client_key);
        let client_signature = hmac_sha256(&stored_key, &auth_message);
        let proof = xor(&client_key, &client_signature);
        let server_signature = hmac_sha256(&server_key, &auth_message);

        let reply = format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes();
        Ok((reply, server_signature))
    }

    /// Checks the server-final-message (`v=<b64 signature>`, or `e=<error>`).
    /// `Ok(())` means the server proved it knows the verifier.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), AuthError> {
        let expected = match &self.state {
            ClientState::AwaitingServerFinal { server_signature } => server_signature,
            ClientState::Initial => {
                return Err(AuthError::OutOfOrder(
                    "server-final-message before server-first-message",
                ))
            }
            ClientState::Failed => return Err(AuthError::OutOfOrder("exchange already failed")),
        };
        let text = utf8(server_final)?;
        if let Some(err) = text.strip_prefix("e=") {
            let err = err.split(',').next().unwrap_or_default();
            return Err(AuthError::ServerError(sanitize_server_error(err)));
        }
        let mut fields = text.split(',');
        let signature = attr(fields.next(), 'v', "expected verifier attribute (v=)")?;
        validate_extensions(fields)?;
        let signature = decode_key(signature).ok_or(AuthError::Malformed(
            "server signature is not 32 bytes of base64",
        ))?;
        if ct_eq(&signature, expected) {
            Ok(())
        } else {
            Err(AuthError::InvalidServerSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    // RFC 7677 section 3.
    const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    // Generated by libpq's PQencryptPasswordConn(conn, "postgres", "alice",
    // "scram-sha-256") (PostgreSQL 15).
    const LIBPQ_VERIFIER: &str = "SCRAM-SHA-256$4096:s1T7XBXZ2uxJE5pBZy341Q==$\
                                  gvSmMnCU9IOHtsecIpgLqBhMLxNf//w+3jsAv6D7Fow=:\
                                  oKzQ+tgXW6w/ke0JDRm/QC1vvb5Fi/WW5LTXgpJlf8s=";
    // Same, for the non-ASCII password "pässwörd ⅸ" (SASLprep maps ⅸ to "ix").
    const LIBPQ_VERIFIER_UNICODE: &str = "SCRAM-SHA-256$4096:TbjyXgRpzZ83LEcAaLiP/g==$\
                                          xHR9Fih2ZwCAXCwW9LV8oBGCg7YSCXTF2x969eFORMo=:\
                                          VtttsVbl0A4VHYlyexk8HSxAFOsWP3TGeOUlrogOFOg=";

    // A full exchange against LIBPQ_VERIFIER computed with python3
    // (hashlib.pbkdf2_hmac + hmac), independent of this module.
    const PY_CLIENT_NONCE: &str = "pyClientNonce+/=";
    const PY_SERVER_NONCE: &str = "pyServerNonce456";
    const PY_CLIENT_FIRST: &str = "n,,n=,r=pyClientNonce+/=";
    const PY_SERVER_FIRST: &str =
        "r=pyClientNonce+/=pyServerNonce456,s=s1T7XBXZ2uxJE5pBZy341Q==,i=4096";
    const PY_CLIENT_FINAL: &str = "c=biws,r=pyClientNonce+/=pyServerNonce456,\
                                   p=S2xbWGN/dbN2N1L/hFQPThjrfn0681p6zWI0RDf8ySQ=";
    const PY_SERVER_FINAL: &str = "v=X4qgdbdJm66DahoLXrPknvOW1NwvRkTom9vR+EBja1c=";
    const PY_CLIENT_KEY: &str = "eibszbOGLq8efeCfKwHvS3UHgwndoZDNT2q5fK4cwpA=";

    fn rfc_verifier() -> ScramVerifier {
        let salt = BASE64.decode(RFC_SALT).unwrap();
        ScramVerifier::from_password("pencil", &salt, 4096)
    }

    fn cheap_verifier(password: &str) -> ScramVerifier {
        ScramVerifier::from_password(password, b"test-salt", 16)
    }

    /// Drives a client and a server against each other.
    fn exchange(client: &mut ScramClient, server: &mut ScramServer) -> Result<(), AuthError> {
        let first = client.client_first();
        let server_first = server.handle_client_first(&first)?;
        let client_final = client.handle_server_first(&server_first)?;
        let server_final = server.handle_client_final(&client_final)?;
        client.verify_server_final(&server_final)
    }

    /// A server that has accepted `n,,n=,r=cnonce` and expects a final.
    fn server_after_first(verifier: &ScramVerifier) -> ScramServer {
        let mut server = ScramServer::with_nonce(verifier.clone(), "snonce");
        server.handle_client_first(b"n,,n=,r=cnonce").unwrap();
        server
    }

    #[test]
    fn mechanism_name() {
        assert_eq!(SCRAM_SHA_256, "SCRAM-SHA-256");
    }

    #[test]
    fn rfc7677_server_side() {
        let mut server = ScramServer::with_nonce(rfc_verifier(), RFC_SERVER_NONCE);
        let server_first = server
            .handle_client_first(RFC_CLIENT_FIRST.as_bytes())
            .unwrap();
        assert_eq!(server_first, RFC_SERVER_FIRST.as_bytes());
        assert_eq!(server.client_key(), None);
        let server_final = server
            .handle_client_final(RFC_CLIENT_FINAL.as_bytes())
            .unwrap();
        assert_eq!(server_final, RFC_SERVER_FINAL.as_bytes());
        assert!(server.client_key().is_some());
        // A second final is out of order.
        assert!(matches!(
            server.handle_client_final(RFC_CLIENT_FINAL.as_bytes()),
            Err(AuthError::OutOfOrder(_))
        ));
    }

    #[test]
    fn rfc7677_client_side() {
        let mut client = ScramClient::with_nonce_and_user("pencil", RFC_CLIENT_NONCE, "user");
        assert_eq!(client.client_first(), RFC_CLIENT_FIRST.as_bytes());
        let client_final = client
            .handle_server_first(RFC_SERVER_FIRST.as_bytes())
            .unwrap();
        assert_eq!(client_final, RFC_CLIENT_FINAL.as_bytes());
        assert_eq!(
            client.verify_server_final(RFC_SERVER_FINAL.as_bytes()),
            Ok(())
        );
        assert_eq!(
            client.verify_server_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(AuthError::InvalidServerSignature)
        );
    }

    #[test]
    fn rfc7677_client_against_server() {
        let mut client = ScramClient::with_nonce_and_user("pencil", RFC_CLIENT_NONCE, "user");
        let mut server = ScramServer::with_nonce(rfc_verifier(), RFC_SERVER_NONCE);
        assert_eq!(exchange(&mut client, &mut server), Ok(()));
    }

    #[test]
    fn libpq_verifier_parses_and_matches_from_password() {
        let parsed = ScramVerifier::parse(LIBPQ_VERIFIER).unwrap();
        assert_eq!(parsed.iterations, 4096);
        let ours = ScramVerifier::from_password("postgres", &parsed.salt, 4096);
        assert_eq!(ours, parsed);
        assert_eq!(parsed.to_postgres_string(), LIBPQ_VERIFIER);
    }

    #[test]
    fn libpq_verifier_saslprep() {
        let parsed = ScramVerifier::parse(LIBPQ_VERIFIER_UNICODE).unwrap();
        let ours = ScramVerifier::from_password("p\u{e4}ssw\u{f6}rd \u{2178}", &parsed.salt, 4096);
        assert_eq!(ours, parsed);
        // The decomposed spelling normalizes to the same password.
        let decomposed =
            ScramVerifier::from_password("pa\u{308}sswo\u{308}rd \u{2178}", &parsed.salt, 4096);
        assert_eq!(decomposed, parsed);
    }

    #[test]
    fn saslprep_mapping_and_raw_fallback() {
        // Soft hyphen maps to nothing; NFKC maps U+2178 to "ix".
        assert_eq!(
            cheap_verifier("I\u{ad}X").stored_key,
            cheap_verifier("IX").stored_key
        );
        assert_eq!(
            cheap_verifier("\u{2178}").stored_key,
            cheap_verifier("ix").stored_key
        );
        // A prohibited character makes SASLprep fail: raw bytes are used.
        // Reference computed with python3 hashlib over b"\x07bell".
        let v = ScramVerifier::from_password("\u{7}bell", b"salt", 4096);
        assert_eq!(
            BASE64.encode(v.stored_key),
            "lNteVAdYptCBzKY+tvPYRsw8605IgQv3jSduzJRYtGA="
        );
        assert_eq!(
            BASE64.encode(v.server_key),
            "fzQ/tu4ht45YVM6Q0qQsBDAtwQrz1Qlm7b/Hx7bnBgY="
        );
    }

    #[test]
    fn python_exchange_against_libpq_verifier() {
        let verifier = ScramVerifier::parse(LIBPQ_VERIFIER).unwrap();

        let mut server = ScramServer::with_nonce(verifier.clone(), PY_SERVER_NONCE);
        let server_first = server
            .handle_client_first(PY_CLIENT_FIRST.as_bytes())
            .unwrap();
        assert_eq!(server_first, PY_SERVER_FIRST.as_bytes());
        let server_final = server
            .handle_client_final(PY_CLIENT_FINAL.as_bytes())
            .unwrap();
        assert_eq!(server_final, PY_SERVER_FINAL.as_bytes());
        assert_eq!(
            server.client_key().map(|k| BASE64.encode(k)),
            Some(PY_CLIENT_KEY.to_owned())
        );

        let mut client = ScramClient::with_nonce("postgres", PY_CLIENT_NONCE);
        assert_eq!(client.client_first(), PY_CLIENT_FIRST.as_bytes());
        let client_final = client
            .handle_server_first(PY_SERVER_FIRST.as_bytes())
            .unwrap();
        assert_eq!(client_final, PY_CLIENT_FINAL.as_bytes());
        assert_eq!(
            client.verify_server_final(PY_SERVER_FINAL.as_bytes()),
            Ok(())
        );

        // Wrong password against the libpq verifier.
        let mut client = ScramClient::new("Postgres");
        let mut server = ScramServer::new(verifier);
        assert_eq!(
            exchange(&mut client, &mut server),
            Err(AuthError::InvalidProof)
        );
    }

    #[test]
    fn round_trip_random_nonces() {
        let verifier = ScramVerifier::generate("hunter2");
        assert_eq!(verifier.iterations, DEFAULT_ITERATIONS);
        assert_eq!(verifier.salt.len(), SALT_LEN);

        let mut client = ScramClient::new("hunter2");
        let mut server = ScramServer::new(verifier.clone());
        assert_eq!(exchange(&mut client, &mut server), Ok(()));
        let client_key = server.client_key().unwrap();
        assert_eq!(sha256(&client_key), verifier.stored_key);

        let mut client = ScramClient::new("hunter3");
        let mut server = ScramServer::new(verifier.clone());
        assert_eq!(
            exchange(&mut client, &mut server),
            Err(AuthError::InvalidProof)
        );
        assert_eq!(server.client_key(), None);
        // The failed exchange cannot be retried.
        assert!(matches!(
            server.handle_client_final(b"c=biws,r=x,p=AAAA"),
            Err(AuthError::OutOfOrder(_))
        ));

        // Nonces are random, printable and distinct.
        let a = ScramClient::new("x");
        let b = ScramClient::new("x");
        assert_ne!(a.client_first(), b.client_first());
        assert_eq!(a.nonce.len(), 24);
        assert!(validate_nonce(&a.nonce).is_ok());
    }

    #[test]
    fn client_accepting_y_flag() {
        // A client that supports channel binding but thinks we don't.
        let verifier = cheap_verifier("pw");
        let mut server = ScramServer::with_nonce(verifier, "S");
        let server_first = server.handle_client_first(b"y,,n=,r=C").unwrap();
        assert_eq!(server_first, b"r=CS,s=dGVzdC1zYWx0,i=16");

        // Build the proof by hand with c= = base64("y,,").
        let without_proof = "c=eSws,r=CS";
        let (client_key, server_key) = derive_keys(b"pw", b"test-salt", 16);
        let auth = format!("n=,r=C,r=CS,s=dGVzdC1zYWx0,i=16,{without_proof}");
        let sig = hmac_sha256(&sha256(&client_key), &[auth.as_bytes()]);
        let proof = BASE64.encode(xor(&client_key, &sig));
        let reply = server
            .handle_client_final(format!("{without_proof},p={proof}").as_bytes())
            .unwrap();
        let expected = hmac_sha256(&server_key, &[auth.as_bytes()]);
        assert_eq!(reply, format!("v={}", BASE64.encode(expected)).into_bytes());
    }

    #[test]
    fn channel_binding_must_echo_gs2_header() {
        let verifier = cheap_verifier("pw");
        // "n,," sent first, but c= claims "y,,".
        let mut server = server_after_first(&verifier);
        assert_eq!(
            server.handle_client_final(b"c=eSws,r=cnoncesnonce,p=AAAA"),
            Err(AuthError::ChannelBindingMismatch)
        );
        let mut server = server_after_first(&verifier);
        assert_eq!(
            server.handle_client_final(b"c=,r=cnoncesnonce,p=AAAA"),
            Err(AuthError::ChannelBindingMismatch)
        );
    }

    #[test]
    fn verifier_parse_format_round_trip() {
        let v = ScramVerifier::generate("secret");
        let s = v.to_postgres_string();
        assert!(s.starts_with("SCRAM-SHA-256$4096:"));
        assert_eq!(ScramVerifier::parse(&s), Ok(v.clone()));
        let custom = ScramVerifier {
            iterations: 1,
            salt: vec![],
            stored_key: [7; 32],
            server_key: [9; 32],
        };
        assert_eq!(
            ScramVerifier::parse(&custom.to_postgres_string()),
            Ok(custom)
        );
        // Debug does not leak the keys.
        let debug = format!("{v:?}");
        assert!(!debug.contains(&BASE64.encode(v.stored_key)));
        assert!(!debug.contains(&BASE64.encode(v.server_key)));
    }

    #[test]
    fn verifier_parse_rejects_garbage() {
        let good = LIBPQ_VERIFIER;
        let bad = [
            "",
            "md5abcdef",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096",
            "SCRAM-SHA-256$4096:salt",
            "SCRAM-SHA-256$4096:c2FsdA==$",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA",
            "SCRAM-SHA-256$0:c2FsdA==$gvSmMnCU9IOHtsecIpgLqBhMLxNf//w+3jsAv6D7Fow=:\
             oKzQ+tgXW6w/ke0JDRm/QC1vvb5Fi/WW5LTXgpJlf8s=",
            "SCRAM-SHA-256$-1:c2FsdA==$gvSmMnCU9IOHtsecIpgLqBhMLxNf//w+3jsAv6D7Fow=:\
             oKzQ+tgXW6w/ke0JDRm/QC1vvb5Fi/WW5LTXgpJlf8s=",
            "SCRAM-SHA-256$+5:c2FsdA==$gvSmMnCU9IOHtsecIpgLqBhMLxNf//w+3jsAv6D7Fow=:\
             oKzQ+tgXW6w/ke0JDRm/QC1vvb5Fi/WW5LTXgpJlf8s=",
            "SCRAM-SHA-256$99999999999:c2FsdA==$gvSmMnCU9IOHtsecIpgLqBhMLxNf//w+3jsAv6D7Fow=:\
             oKzQ+tgXW6w/ke0JDRm/QC1vvb5Fi/WW5LTXgpJlf8s=",
            "SCRAM-SHA-256$4096:!!!$gvSmMnCU9IOHtsecIpgLqBhMLxNf//w+3jsAv6D7Fow=:\
             oKzQ+tgXW6w/ke0JDRm/QC1vvb5Fi/WW5LTXgpJlf8s=",
            // Keys of the wrong length.
            "SCRAM-SHA-256$4096:c2FsdA==$c2FsdA==:oKzQ+tgXW6w/ke0JDRm/QC1vvb5Fi/WW5LTXgpJlf8s=",
            "SCRAM-SHA-256$4096:c2FsdA==$gvSmMnCU9IOHtsecIpgLqBhMLxNf//w+3jsAv6D7Fow=:c2FsdA==",
            // Trailing junk.
            "SCRAM-SHA-256$4096:c2FsdA==$gvSmMnCU9IOHtsecIpgLqBhMLxNf//w+3jsAv6D7Fow=:\
             oKzQ+tgXW6w/ke0JDRm/QC1vvb5Fi/WW5LTXgpJlf8s=:x",
        ];
        for s in bad {
            match ScramVerifier::parse(s) {
                Err(AuthError::BadVerifier(why)) => assert!(!why.contains("gvSm"), "{why}"),
                other => panic!("{s:?} gave {other:?}"),
            }
        }
        for len in 0..good.len() {
            if let Some(prefix) = good.get(..len) {
                assert!(ScramVerifier::parse(prefix).is_err());
            }
        }
    }

    #[test]
    fn client_first_malformed() {
        let verifier = cheap_verifier("pw");
        let cases: &[(&[u8], AuthError)] = &[
            (b"", AuthError::Malformed("missing GS2 header")),
            (b"n", AuthError::Malformed("missing GS2 header")),
            (b"n,", AuthError::Malformed("missing GS2 header")),
            (
                b"n,,",
                AuthError::Malformed("expected username attribute (n=)"),
            ),
            (
                b"n,,n=",
                AuthError::Malformed("expected nonce attribute (r=)"),
            ),
            (
                b"n,,n=,r=",
                AuthError::Malformed("nonce is empty or not printable"),
            ),
            (
                b"n,,n=,r=a b",
                AuthError::Malformed("nonce is empty or not printable"),
            ),
            (
                b"n,,n=,r=ab\x7f",
                AuthError::Malformed("nonce is empty or not printable"),
            ),
            (
                b"n,,r=abc",
                AuthError::Malformed("expected username attribute (n=)"),
            ),
            (
                b"n,,m=x,n=,r=abc",
                AuthError::Malformed("unsupported mandatory extension (m=)"),
            ),
            (
                b"x,,n=,r=abc",
                AuthError::Malformed("invalid channel binding flag"),
            ),
            (
                b"n,junk,n=,r=abc",
                AuthError::Malformed("invalid GS2 header"),
            ),
            (b"n,a=admin,n=,r=abc", AuthError::UnsupportedAuthzid),
            (
                b"p=tls-server-end-point,,n=,r=abc",
                AuthError::UnsupportedChannelBinding,
            ),
            (
                b"p=tls-unique,,n=,r=abc",
                AuthError::UnsupportedChannelBinding,
            ),
            (b"n,,n=,r=abc,", AuthError::Malformed("invalid attribute")),
            (
                b"n,,n=,r=abc,r=def",
                AuthError::Malformed("duplicate or misplaced attribute"),
            ),
            (
                b"n,,n=\xff,r=abc",
                AuthError::Malformed("message is not valid UTF-8"),
            ),
        ];
        for (input, want) in cases {
            let mut server = ScramServer::with_nonce(verifier.clone(), "S");
            assert_eq!(
                server.handle_client_first(input).as_ref(),
                Err(want),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
            // After a failure, the exchange is dead.
            assert!(matches!(
                server.handle_client_first(b"n,,n=,r=abc"),
                Err(AuthError::OutOfOrder(_))
            ));
        }
        // Extensions and a non-empty username are accepted and ignored.
        let mut server = ScramServer::with_nonce(verifier, "S");
        assert_eq!(
            server.handle_client_first(b"n,,n=someone=2Celse,r=abc,x=ext,y=more"),
            Ok(b"r=abcS,s=dGVzdC1zYWx0,i=16".to_vec())
        );
    }

    #[test]
    fn client_final_malformed() {
        let verifier = cheap_verifier("pw");
        let cases: &[(&[u8], AuthError)] = &[
            (b"", AuthError::Malformed("expected proof attribute (p=)")),
            (
                b"c=biws,r=cnoncesnonce",
                AuthError::Malformed("expected proof attribute (p=)"),
            ),
            (
                b"p=AAAA",
                AuthError::Malformed("expected proof attribute (p=)"),
            ),
            (
                b",p=AAAA",
                AuthError::Malformed("expected channel binding attribute (c=)"),
            ),
            (
                b"c=biws,p=AAAA",
                AuthError::Malformed("expected nonce attribute (r=)"),
            ),
            (
                b"r=cnoncesnonce,c=biws,p=AAAA",
                AuthError::Malformed("expected channel binding attribute (c=)"),
            ),
            (
                b"c=b!ws,r=cnoncesnonce,p=AAAA",
                AuthError::Malformed("channel binding is not valid base64"),
            ),
            (b"c=biws,r=other,p=AAAA", AuthError::NonceMismatch),
            (b"c=biws,r=cnonce,p=AAAA", AuthError::NonceMismatch),
            (b"c=biws,r=cnoncesnonceX,p=AAAA", AuthError::NonceMismatch),
            (
                b"c=biws,r=cnoncesnonce,p=!!!!",
                AuthError::Malformed("proof is not 32 bytes of base64"),
            ),
            (
                b"c=biws,r=cnoncesnonce,p=AAAA",
                AuthError::Malformed("proof is not 32 bytes of base64"),
            ),
            (
                b"c=biws,r=cnoncesnonce,p=",
                AuthError::Malformed("proof is not 32 bytes of base64"),
            ),
            (
                // 33 bytes.
                b"c=biws,r=cnoncesnonce,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                AuthError::Malformed("proof is not 32 bytes of base64"),
            ),
            (
                b"c=biws,r=cnoncesnonce,p=AAAA,x=1",
                AuthError::Malformed("proof must be the last attribute"),
            ),
            (
                b"c=biws,r=cnoncesnonce,p=AAAA,p=AAAA",
                AuthError::Malformed("duplicate or misplaced attribute"),
            ),
            (
                b"c=biws,r=cnoncesnonce,\xc3\x28,p=AAAA",
                AuthError::Malformed("message is not valid UTF-8"),
            ),
            (
                // Right shape, wrong proof.
                b"c=biws,r=cnoncesnonce,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                AuthError::InvalidProof,
            ),
            (
                // Extensions are allowed; still the wrong proof.
                b"c=biws,r=cnoncesnonce,x=1,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                AuthError::InvalidProof,
            ),
        ];
        for (input, want) in cases {
            let mut server = server_after_first(&verifier);
            assert_eq!(
                server.handle_client_final(input).as_ref(),
                Err(want),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(server.client_key(), None);
        }
    }

    #[test]
    fn server_steps_out_of_order() {
        let verifier = cheap_verifier("pw");
        let mut server = ScramServer::with_nonce(verifier.clone(), "S");
        assert!(matches!(
            server.handle_client_final(b"c=biws,r=cS,p=AAAA"),
            Err(AuthError::OutOfOrder(_))
        ));
        // Out-of-order calls don't kill a fresh exchange.
        assert!(server.handle_client_first(b"n,,n=,r=c").is_ok());
        assert!(matches!(
            server.handle_client_first(b"n,,n=,r=c"),
            Err(AuthError::OutOfOrder(_))
        ));
    }

    #[test]
    fn client_steps_and_server_messages() {
        let client = ScramClient::with_nonce("pw", "cn");
        assert!(matches!(
            client.verify_server_final(b"v=AAAA"),
            Err(AuthError::OutOfOrder(_))
        ));

        let cases: &[(&[u8], AuthError)] = &[
            (b"", AuthError::Malformed("expected nonce attribute (r=)")),
            (
                b"r=cnX",
                AuthError::Malformed("expected salt attribute (s=)"),
            ),
            (
                b"r=cnX,s=c2FsdA==",
                AuthError::Malformed("expected iteration attribute (i=)"),
            ),
            (b"r=cn,s=c2FsdA==,i=1", AuthError::NonceMismatch),
            (b"r=xxcn,s=c2FsdA==,i=1", AuthError::NonceMismatch),
            (b"r=c,s=c2FsdA==,i=1", AuthError::NonceMismatch),
            (
                b"r=cn x,s=c2FsdA==,i=1",
                AuthError::Malformed("nonce is empty or not printable"),
            ),
            (
                b"r=cnX,s=!!,i=1",
                AuthError::Malformed("salt is not valid base64"),
            ),
            (
                b"r=cnX,s=c2FsdA==,i=",
                AuthError::Malformed("iteration count is not a number"),
            ),
            (
                b"r=cnX,s=c2FsdA==,i=-1",
                AuthError::Malformed("iteration count is not a number"),
            ),
            (
                b"r=cnX,s=c2FsdA==,i=99999999999",
                AuthError::Malformed("iteration count is not a number"),
            ),
            (b"r=cnX,s=c2FsdA==,i=0", AuthError::BadIterationCount(0)),
            (
                b"r=cnX,s=c2FsdA==,i=10000001",
                AuthError::BadIterationCount(10_000_001),
            ),
            (
                b"r=cnX,s=c2FsdA==,i=4294967295",
                AuthError::BadIterationCount(u32::MAX),
            ),
            (
                b"m=x,r=cnX,s=c2FsdA==,i=1",
                AuthError::Malformed("unsupported mandatory extension (m=)"),
            ),
            (
                b"e=other-error",
                AuthError::ServerError("other-error".to_owned()),
            ),
            (
                b"r=cnX,s=c2FsdA==,i=1\xff",
                AuthError::Malformed("message is not valid UTF-8"),
            ),
        ];
        for (input, want) in cases {
            let mut client = ScramClient::with_nonce("pw", "cn");
            assert_eq!(
                client.handle_server_first(input).as_ref(),
                Err(want),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
            assert!(matches!(
                client.verify_server_final(b"v=AAAA"),
                Err(AuthError::OutOfOrder(_))
            ));
        }

        let mut client = ScramClient::with_nonce("pw", "cn");
        assert!(client.handle_server_first(b"r=cnX,s=c2FsdA==,i=2").is_ok());
        assert!(matches!(
            client.handle_server_first(b"r=cnX,s=c2FsdA==,i=2"),
            Err(AuthError::OutOfOrder(_))
        ));
        let finals: &[(&[u8], AuthError)] = &[
            (
                b"",
                AuthError::Malformed("expected verifier attribute (v=)"),
            ),
            (
                b"v=",
                AuthError::Malformed("server signature is not 32 bytes of base64"),
            ),
            (
                b"v=AAAA",
                AuthError::Malformed("server signature is not 32 bytes of base64"),
            ),
            (
                b"v=###",
                AuthError::Malformed("server signature is not 32 bytes of base64"),
            ),
            (
                b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                AuthError::InvalidServerSignature,
            ),
            (
                b"e=invalid-proof",
                AuthError::ServerError("invalid-proof".to_owned()),
            ),
            (
                b"e=bad\x01thing,x=1",
                AuthError::ServerError("bad?thing".to_owned()),
            ),
            (b"\xff", AuthError::Malformed("message is not valid UTF-8")),
        ];
        for (input, want) in finals {
            assert_eq!(
                client.verify_server_final(input).as_ref(),
                Err(want),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Very long server errors are truncated.
        let long = format!("e={}", "x".repeat(10_000));
        match client.verify_server_final(long.as_bytes()) {
            Err(AuthError::ServerError(s)) => assert_eq!(s.len(), MAX_SERVER_ERROR_CHARS),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pass_through_with_recovered_client_key() {
        let verifier = cheap_verifier("s3cret");
        let mut client = ScramClient::new("s3cret");
        let mut server = ScramServer::new(verifier.clone());
        exchange(&mut client, &mut server).unwrap();
        let client_key = server.client_key().unwrap();

        // The proxy now logs in to a backend holding the same verifier.
        let mut proxy_client = ScramClient::from_client_key(client_key, &verifier);
        let mut backend = ScramServer::new(verifier.clone());
        assert_eq!(exchange(&mut proxy_client, &mut backend), Ok(()));

        // A backend with a different salt cannot be passed through.
        let other = ScramVerifier::from_password("s3cret", b"other-salt", 16);
        let mut proxy_client = ScramClient::from_client_key(client_key, &verifier);
        let mut backend = ScramServer::new(other);
        assert!(matches!(
            exchange(&mut proxy_client, &mut backend),
            Err(AuthError::BadVerifier(_))
        ));
    }

    #[test]
    fn server_signature_checked_by_client() {
        // A server that doesn't know the verifier (different ServerKey).
        let real = cheap_verifier("pw");
        let mut impostor = real.clone();
        impostor.server_key = [0; 32];
        let mut client = ScramClient::new("pw");
        let mut server = ScramServer::new(impostor);
        assert_eq!(
            exchange(&mut client, &mut server),
            Err(AuthError::InvalidServerSignature)
        );
    }

    #[test]
    fn saslname_escaping() {
        let client = ScramClient::with_nonce_and_user("pw", "n0", "a,b=c");
        assert_eq!(client.client_first(), b"n,,n=a=2Cb=3Dc,r=n0");
    }

    fn random_message(rng: &mut StdRng) -> Vec<u8> {
        const ALPHABET: &[u8] = b"nyparcsvime=,+/ABCbiwsS0129\xff\x00\x80 ";
        let len = rng.gen_range(0..48);
        (0..len)
            .map(|_| {
                if rng.gen_bool(0.9) {
                    ALPHABET[rng.gen_range(0..ALPHABET.len())]
                } else {
                    rng.gen()
                }
            })
            .collect()
    }

    fn mutate(rng: &mut StdRng, template: &[u8]) -> Vec<u8> {
        let mut out = template.to_vec();
        for _ in 0..rng.gen_range(1..4) {
            if out.is_empty() {
                break;
            }
            let pos = rng.gen_range(0..out.len());
            match rng.gen_range(0..3) {
                0 => out[pos] = rng.gen(),
                1 => {
                    out.remove(pos);
                }
                _ => out.insert(pos, b",="[rng.gen_range(0..2)]),
            }
        }
        out
    }

    #[test]
    fn no_panics_on_garbage() {
        let verifier = cheap_verifier("pw");
        let mut rng = StdRng::seed_from_u64(0x005c_7a11);

        // Valid messages for an exchange with client nonce "cnonce".
        let client_first = b"n,,n=,r=cnonce".to_vec();
        let mut server = ScramServer::with_nonce(verifier.clone(), "snonce");
        let server_first = server.handle_client_first(&client_first).unwrap();
        let mut client = ScramClient::with_nonce("pw", "cnonce");
        let client_final = client.handle_server_first(&server_first).unwrap();
        let server_final = server.handle_client_final(&client_final).unwrap();
        assert_eq!(client.verify_server_final(&server_final), Ok(()));

        let mut inputs_first: Vec<Vec<u8>> = (0..=client_first.len())
            .map(|n| client_first[..n].to_vec())
            .collect();
        let mut inputs_final: Vec<Vec<u8>> = (0..=client_final.len())
            .map(|n| client_final[..n].to_vec())
            .collect();
        let mut inputs_server_first: Vec<Vec<u8>> = (0..=server_first.len())
            .map(|n| server_first[..n].to_vec())
            .collect();
        let mut inputs_server_final: Vec<Vec<u8>> = (0..=server_final.len())
            .map(|n| server_final[..n].to_vec())
            .collect();
        for _ in 0..1500 {
            inputs_first.push(random_message(&mut rng));
            inputs_first.push(mutate(&mut rng, &client_first));
            inputs_final.push(random_message(&mut rng));
            inputs_final.push(mutate(&mut rng, &client_final));
            inputs_server_first.push(random_message(&mut rng));
            inputs_server_final.push(random_message(&mut rng));
            inputs_server_final.push(mutate(&mut rng, &server_final));
        }
        for _ in 0..200 {
            inputs_server_first.push(mutate(&mut rng, &server_first));
        }

        for input in &inputs_first {
            let mut s = ScramServer::with_nonce(verifier.clone(), "snonce");
            let _ = s.handle_client_first(input);
            let _ = s.handle_client_final(input);
        }
        // Only the genuine messages are accepted (mutations may reproduce them).
        for input in &inputs_final {
            let mut s = ScramServer::with_nonce(verifier.clone(), "snonce");
            s.handle_client_first(&client_first).unwrap();
            if s.handle_client_final(input).is_ok() {
                assert_eq!(input, &client_final);
            }
        }
        for input in &inputs_server_first {
            let mut c = ScramClient::with_nonce("pw", "cnonce");
            if c.handle_server_first(input).is_ok() {
                let _ = c.verify_server_final(input);
            }
        }
        for input in &inputs_server_final {
            if client.verify_server_final(input).is_ok() {
                assert_eq!(input, &server_final);
            }
        }
    }
}
