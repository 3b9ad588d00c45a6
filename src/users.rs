//! The users clients may log in as, with what Switchyard needs to check them and to
//! log in to PostgreSQL for them: the stored password ([`ServerSecret`]: plaintext,
//! a SCRAM secret or an MD5 hash, with the ClientKey a client proved) and a SCRAM
//! verifier computed once at load, plus a mock verifier so unknown users go
//! through the same exchange as known ones and learn nothing from it. Users that
//! `auth.query` finds get the same entries (see the `auth_query` module).

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::scram::ScramVerifier;
use crate::auth::stored::{ServerSecret, StoredPassword};
use crate::config::{ClientAuthMethod, Config, Secret};

pub struct UserEntry {
    pub name: String,
    /// As configured (compared on reload).
    pub password: Secret,
    pub method: ClientAuthMethod,
    /// What clients are checked against with SCRAM; None for an MD5 hash, which
    /// can only check MD5 logins.
    pub verifier: Option<ScramVerifier>,
    /// What the user's pools log in with; kept across reloads while the
    /// password stays the same, so a ClientKey learned for pass-through stays.
    pub secret: Arc<ServerSecret>,
}

pub struct UserDb {
    users: HashMap<String, UserEntry>,
}

impl UserDb {
    /// The users of `config`; `previous` (the users before a reload) gives back
    /// the secrets of users whose password did not change.
    pub fn from_config(config: &Config, previous: Option<&UserDb>) -> UserDb {
        let users = config
            .users
            .iter()
            .map(|u| {
                let kept = previous
                    .and_then(|db| db.get(&u.name))
                    .filter(|old| old.password == u.password);
                let entry = match kept {
                    Some(old) => UserEntry {
                        name: u.name.clone(),
                        password: u.password.clone(),
                        method: u.auth,
                        verifier: old.verifier.clone(),
                        secret: Arc::clone(&old.secret),
                    },
                    None => new_entry(&u.name, &u.password, u.auth),
                };
                (u.name.clone(), entry)
            })
            .collect();
        UserDb { users }
    }

    pub fn get(&self, name: &str) -> Option<&UserEntry> {
        self.users.get(name)
    }
}

fn new_entry(name: &str, password: &Secret, method: ClientAuthMethod) -> UserEntry {
    // Validation refused unparsable secrets; should one slip through, it is
    // treated as a plaintext password nobody knows.
    let stored = StoredPassword::parse(password.expose())
        .unwrap_or_else(|_| StoredPassword::Plain(password.expose().to_string()));
    UserEntry::from_stored(name, password.clone(), stored, method)
}

impl UserEntry {
    /// An entry for `stored` (parsed from `password`). A plaintext password
    /// derives a SCRAM verifier here (PBKDF2): call it off the async workers then.
    pub fn from_stored(
        name: &str,
        password: Secret,
        stored: StoredPassword,
        method: ClientAuthMethod,
    ) -> UserEntry {
        let verifier = match &stored {
            StoredPassword::Plain(plain) => Some(ScramVerifier::generate(plain)),
            StoredPassword::ScramSecret(verifier) => Some(verifier.clone()),
            StoredPassword::Md5Hash(_) => None,
        };
        UserEntry {
            name: name.to_string(),
            password,
            method,
            verifier,
            secret: Arc::new(ServerSecret::new(stored)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(password: &str) -> Config {
        let yaml = format!(
            "listeners:\n  - {{ name: rw, listen: \"127.0.0.1:5000\", route: primary }}\n\
             cluster:\n  nodes:\n    - {{ name: n1, host: 127.0.0.1, port: 5432, api: \"http://127.0.0.1:8008\" }}\n\
             users:\n  - {{ name: app, password: \"{password}\" }}\n"
        );
        Config::from_yaml_str_with_env(&yaml, &|_| None).expect("valid")
    }

    #[test]
    fn a_reload_keeps_the_secret_and_its_learned_key_while_the_password_stays() {
        let secret = ScramVerifier::from_password("pw", b"salt", 4096).to_postgres_string();
        let first = UserDb::from_config(&config(&secret), None);
        let entry = first.get("app").expect("app");
        entry.secret.learn_client_key([9; 32]);
        let reloaded = UserDb::from_config(&config(&secret), Some(&first));
        let kept = reloaded.get("app").expect("app");
        assert!(
            Arc::ptr_eq(&kept.secret, &entry.secret),
            "same secret, same key"
        );
        assert!(
            kept.secret.credential().is_ok(),
            "the learned key is still there"
        );
        let changed = UserDb::from_config(&config("new-password"), Some(&reloaded));
        assert!(!Arc::ptr_eq(
            &changed.get("app").expect("app").secret,
            &entry.secret
        ));
    }
}
