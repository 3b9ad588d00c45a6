//! The client side of SCRAM-SHA-256: the proxy authenticating itself to a
//! PostgreSQL server, with a password or with the ClientKey a client proved
//! (pass-through). A pure state machine, like the server side in the parent
//! module, whose primitives and parsers it shares.

use std::fmt;

use super::*;

pub(super) enum ClientSecret {
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

pub(super) enum ClientState {
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
    pub(super) secret: ClientSecret,
    pub(super) nonce: String,
    pub(super) client_first_bare: String,
    pub(super) state: ClientState,
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

    /// Whether [`handle_server_first`](Self::handle_server_first) runs PBKDF2
    /// (a password; pass-through keys need none), so the caller can run it off
    /// the async workers.
    pub fn derives_keys(&self) -> bool {
        matches!(self.secret, ClientSecret::Password(_))
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
        let nonce = attr(first, ATTR_NONCE, "expected nonce attribute (r=)")?;
        let salt = attr(fields.next(), ATTR_SALT, "expected salt attribute (s=)")?;
        let iterations = attr(
            fields.next(),
            ATTR_ITERATIONS,
            "expected iteration attribute (i=)",
        )?;
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
        let signature = attr(
            fields.next(),
            ATTR_VERIFIER,
            "expected verifier attribute (v=)",
        )?;
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
