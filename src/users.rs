//! The users clients may log in as, with what Switchyard needs to check them: the
//! password (also used to log in to PostgreSQL) and a SCRAM verifier computed once at
//! load, plus a mock verifier so unknown users go through the same exchange as known
//! ones and learn nothing from it.

use std::collections::HashMap;

use crate::auth::scram::ScramVerifier;
use crate::config::{ClientAuthMethod, Config, Secret};

pub struct UserEntry {
    pub name: String,
    pub password: Secret,
    pub method: ClientAuthMethod,
    pub verifier: ScramVerifier,
}

pub struct UserDb {
    users: HashMap<String, UserEntry>,
    mock: ScramVerifier,
}

impl UserDb {
    pub fn from_config(config: &Config) -> UserDb {
        let users = config
            .users
            .iter()
            .map(|u| {
                let entry = UserEntry {
                    name: u.name.clone(),
                    password: u.password.clone(),
                    method: u.auth,
                    verifier: ScramVerifier::generate(u.password.expose()),
                };
                (u.name.clone(), entry)
            })
            .collect();
        let mock_password: String = {
            use rand::Rng;
            let bytes: [u8; 24] = rand::thread_rng().gen();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        };
        UserDb {
            users,
            mock: ScramVerifier::generate(&mock_password),
        }
    }

    pub fn get(&self, name: &str) -> Option<&UserEntry> {
        self.users.get(name)
    }

    /// A verifier no password matches, for users that do not exist.
    pub fn mock_verifier(&self) -> &ScramVerifier {
        &self.mock
    }
}
