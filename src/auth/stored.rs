//! A user's password as the configuration gives it: plaintext, or what PostgreSQL's
//! `pg_authid.rolpassword` stores (a SCRAM-SHA-256 secret, an MD5 hash). What each
//! can do:
//!
//! | stored as | checks a client with | logs in to a server with |
//! |---|---|---|
//! | plaintext | SCRAM-SHA-256 or MD5 | SCRAM, MD5 or cleartext, as the server asks |
//! | SCRAM secret | SCRAM-SHA-256 (also for `auth: md5`, as PostgreSQL does) | SCRAM only, with the ClientKey a client of that user proved (pass-through) |
//! | MD5 hash | MD5 | MD5 only |
//!
//! [`ServerSecret`] keeps a user's stored password with the ClientKey learned from
//! the last client that proved it, shared by the user's pools.

use std::sync::Mutex;

use super::scram::ScramVerifier;
use super::AuthError;

/// The stored form of a password.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredPassword {
    Plain(String),
    ScramSecret(ScramVerifier),
    /// `md5` followed by 32 lowercase hex digits: md5(password || user).
    Md5Hash(String),
}

impl std::fmt::Debug for StoredPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl StoredPassword {
    /// Recognises a SCRAM secret (`SCRAM-SHA-256$...`) or an MD5 hash (`md5` and
    /// 32 hex digits); anything else is a plaintext password. A text that starts
    /// like a SCRAM secret but is not a valid one is an error (the message never
    /// shows the text).
    pub fn parse(text: &str) -> Result<StoredPassword, AuthError> {
        if text.starts_with("SCRAM-SHA-256$") {
            return ScramVerifier::parse(text).map(StoredPassword::ScramSecret);
        }
        let hash = text
            .strip_prefix("md5")
            .filter(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        Ok(match hash {
            Some(hex) => StoredPassword::Md5Hash(format!("md5{}", hex.to_ascii_lowercase())),
            None => StoredPassword::Plain(text.to_string()),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            StoredPassword::Plain(_) => "a plaintext password",
            StoredPassword::ScramSecret(_) => "a SCRAM-SHA-256 secret",
            StoredPassword::Md5Hash(_) => "an MD5 hash",
        }
    }
}

/// What the proxy logs in to a server with.
pub enum Credential<'a> {
    Password(&'a str),
    /// `md5` + hex of md5(password || user): answers an MD5 challenge only.
    Md5Hash(&'a str),
    /// SCRAM pass-through: a client's ClientKey and the secret it was checked
    /// against (which must be the server's own).
    ScramKeys {
        client_key: [u8; 32],
        verifier: &'a ScramVerifier,
    },
}

/// Why there is no credential to log in with yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "only a SCRAM secret is configured for this user: servers are logged in to with the keys \
     of a client that proved the password, and none has since Switchyard started"
)]
pub struct NoClientKeyYet;

/// A user's stored password, with the ClientKey the last client of that user
/// proved (for SCRAM pass-through). Shared by the user's pools.
pub struct ServerSecret {
    stored: StoredPassword,
    client_key: Mutex<Option<[u8; 32]>>,
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSecret")
            .field("stored", &self.stored)
            .finish_non_exhaustive()
    }
}

impl ServerSecret {
    pub fn new(stored: StoredPassword) -> ServerSecret {
        ServerSecret {
            stored,
            client_key: Mutex::new(None),
        }
    }

    pub fn stored(&self) -> &StoredPassword {
        &self.stored
    }

    /// A client proved the SCRAM secret: its ClientKey can log in to servers.
    pub fn learn_client_key(&self, client_key: [u8; 32]) {
        if matches!(self.stored, StoredPassword::ScramSecret(_)) {
            *self.client_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(client_key);
        }
    }

    /// What to log in to a server with.
    pub fn credential(&self) -> Result<Credential<'_>, NoClientKeyYet> {
        match &self.stored {
            StoredPassword::Plain(password) => Ok(Credential::Password(password)),
            StoredPassword::Md5Hash(hash) => Ok(Credential::Md5Hash(hash)),
            StoredPassword::ScramSecret(verifier) => {
                let key = *self.client_key.lock().unwrap_or_else(|p| p.into_inner());
                key.map(|client_key| Credential::ScramKeys {
                    client_key,
                    verifier,
                })
                .ok_or(NoClientKeyYet)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_forms_are_recognised() {
        let verifier = ScramVerifier::from_password("pw", b"0123456789abcdef", 4096);
        let secret = verifier.to_postgres_string();
        assert_eq!(
            StoredPassword::parse(&secret),
            Ok(StoredPassword::ScramSecret(verifier))
        );
        assert!(StoredPassword::parse("SCRAM-SHA-256$4096:broken").is_err());
        assert_eq!(
            StoredPassword::parse("md5AABBCCDDEEFF00112233445566778899"),
            Ok(StoredPassword::Md5Hash(
                "md5aabbccddeeff00112233445566778899".into()
            ))
        );
        for plain in ["md5", "md5-not-hex-00112233445566778899aa", "hunter2", ""] {
            assert_eq!(
                StoredPassword::parse(plain),
                Ok(StoredPassword::Plain(plain.into())),
                "{plain}"
            );
        }
        let error = StoredPassword::parse("SCRAM-SHA-256$x").expect_err("bad");
        assert!(!error.to_string().contains("$x"), "{error}");
    }

    #[test]
    fn a_scram_secret_logs_in_only_after_a_client_proved_it() {
        let verifier = ScramVerifier::from_password("pw", b"salt", 4096);
        let secret = ServerSecret::new(StoredPassword::ScramSecret(verifier));
        assert_eq!(secret.credential().err(), Some(NoClientKeyYet));
        secret.learn_client_key([7; 32]);
        assert!(matches!(
            secret.credential(),
            Ok(Credential::ScramKeys {
                client_key: [7, ..],
                ..
            })
        ));
        let plain = ServerSecret::new(StoredPassword::Plain("pw".into()));
        plain.learn_client_key([7; 32]);
        assert!(matches!(plain.credential(), Ok(Credential::Password("pw"))));
    }
}
