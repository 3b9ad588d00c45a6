//! `auth_query`: users that are not in `users:` are looked up on the cluster
//! (`auth.query`, run by [`fetch`]), and the answers cached ([`cache`]). A found
//! user gets a [`UserEntry`] like a configured one: clients are checked against
//! its SCRAM secret or MD5 hash, and pools log in with it (SCRAM pass-through,
//! or the MD5 hash). Concurrent logins of one name share one lookup; a login
//! that fails against a cached secret refetches it (rate-limited per user), so
//! a changed password takes effect without a reload; when no node answers, the
//! last secret found is used. Session code decides what a client is told.

pub mod cache;
pub mod fetch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::auth::kdf;
use crate::auth::stored::StoredPassword;
use crate::config::{AuthQueryConfig, ClientAuthMethod, Secret, ServerConfig};
use crate::topology::Topology;
use crate::users::UserEntry;

use cache::{Cache, Cached};
use fetch::{Answer, Fetcher};

/// PostgreSQL's longest role name in bytes (NAMEDATALEN - 1).
const MAX_ROLE_NAME: usize = 63;

/// What a lookup found.
pub enum Lookup {
    Found(Arc<UserEntry>),
    /// The query knows no such user (or it cannot log in).
    NotFound,
    /// No node answered and nothing was cached; why, for the log and the client.
    Unavailable(String),
}

/// `switchyard_auth_query_total` by result, created once.
struct Counters {
    hit: metrics::Counter,
    negative_hit: metrics::Counter,
    fetched: metrics::Counter,
    not_found: metrics::Counter,
    stale: metrics::Counter,
    error: metrics::Counter,
}

impl Counters {
    fn new() -> Counters {
        let counter = |result: &'static str| metrics::counter!("switchyard_auth_query_total", "result" => result);
        Counters {
            hit: counter("hit"),
            negative_hit: counter("negative_hit"),
            fetched: counter("fetched"),
            not_found: counter("not_found"),
            stale: counter("stale"),
            error: counter("error"),
        }
    }
}

pub struct AuthQuery {
    cache: Mutex<Cache>,
    fetcher: Fetcher,
    /// One gate per name being looked up: who comes while a lookup runs waits
    /// for it and takes its answer from the cache.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    counters: Counters,
}

impl AuthQuery {
    pub fn new(config: &AuthQueryConfig) -> AuthQuery {
        AuthQuery {
            cache: Mutex::new(Cache::new(
                config.cache_ttl.0,
                config.negative_cache_ttl.0,
                config.refetch_interval.0,
            )),
            fetcher: Fetcher::new(config),
            in_flight: Mutex::new(HashMap::new()),
            counters: Counters::new(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry for `user`: from the cache while fresh, else asked of the node
    /// `topology` names (`server`: how server connections are made).
    pub async fn lookup(&self, user: &str, server: &ServerConfig, topology: &Topology) -> Lookup {
        if user.len() > MAX_ROLE_NAME {
            // No role has such a name; neither asking nor remembering it is
            // worth a server round trip or up to 10 kB of cache per attempt.
            self.counters.negative_hit.increment(1);
            return Lookup::NotFound;
        }
        if let Some(fresh) = self.fresh(user) {
            return fresh;
        }
        let gate = self.gate(user);
        let turn = gate.lock().await;
        // Whoever held the gate before may have just answered.
        let result = match self.fresh(user) {
            Some(fresh) => fresh,
            None => self.fetch(user, server, topology).await,
        };
        drop(turn);
        self.release_gate(user, gate);
        result
    }

    /// A client failed to prove `user`'s cached secret: asks again (at most once
    /// per `auth.refetch_interval` per user), so the next login sees a changed
    /// password. The failed login stays failed: its proof was made against the
    /// old salt.
    pub async fn login_failed(&self, user: &str, server: &ServerConfig, topology: &Topology) {
        if !self
            .cache()
            .claim_refetch_after_failure(user, Instant::now())
        {
            return;
        }
        tracing::info!(user = %crate::log_text::Escaped(user), "login failed against the cached secret; asking auth.query again");
        let gate = self.gate(user);
        let turn = gate.lock().await;
        self.fetch(user, server, topology).await;
        drop(turn);
        self.release_gate(user, gate);
    }

    /// The last entry found for `user`, fresh or not: what its pools log in with.
    pub fn last_found(&self, user: &str) -> Option<Arc<UserEntry>> {
        self.cache().last_found(user)
    }

    fn fresh(&self, user: &str) -> Option<Lookup> {
        match self.cache().look(user, Instant::now()) {
            Cached::Fresh(Some(entry)) => {
                self.counters.hit.increment(1);
                Some(Lookup::Found(entry))
            }
            Cached::Fresh(None) => {
                self.counters.negative_hit.increment(1);
                Some(Lookup::NotFound)
            }
            Cached::Expired | Cached::Absent => None,
        }
    }

    /// Runs the query and records its answer; on failure falls back to the last
    /// entry found.
    async fn fetch(&self, user: &str, server: &ServerConfig, topology: &Topology) -> Lookup {
        let shown = crate::log_text::Escaped(user);
        let answer = match self.fetcher.fetch(user, server, topology).await {
            Ok(Answer::Found(text)) => self.entry_for(user, text).await,
            Ok(Answer::NotFound) => Ok(None),
            Err(e) => Err(e.to_string()),
        };
        let now = Instant::now();
        match answer {
            Ok(Some(entry)) => {
                tracing::debug!(user = %shown, stored = entry.secret.stored().kind(), "auth.query found the user");
                self.counters.fetched.increment(1);
                self.cache().found(user, Arc::clone(&entry), now);
                Lookup::Found(entry)
            }
            Ok(None) => {
                tracing::debug!(user = %shown, "auth.query knows no such user");
                self.counters.not_found.increment(1);
                self.cache().not_found(user, now);
                Lookup::NotFound
            }
            Err(reason) => match self.cache().last_found(user) {
                Some(entry) => {
                    self.counters.stale.increment(1);
                    tracing::warn!(user = %shown, error = %reason, "auth.query failed; using the secret found before");
                    Lookup::Found(entry)
                }
                None => {
                    self.counters.error.increment(1);
                    tracing::warn!(user = %shown, error = %reason, "auth.query failed and nothing is cached");
                    Lookup::Unavailable(reason)
                }
            },
        }
    }

    /// The entry for a stored password the query returned: the cached one when
    /// the password is unchanged (its ServerSecret, with the ClientKey a client
    /// proved, is what the user's pools use), else a new one. Errors never show
    /// the text.
    async fn entry_for(&self, user: &str, text: String) -> Result<Option<Arc<UserEntry>>, String> {
        if let Some(cached) = self.cache().last_found(user) {
            if cached.password.expose() == text {
                return Ok(Some(cached));
            }
        }
        let stored = StoredPassword::parse(&text).map_err(|e| {
            format!("auth.query returned a password that starts like a SCRAM secret but is not one ({e})")
        })?;
        // An MD5 hash can only check MD5 logins; a SCRAM secret is checked with
        // SCRAM whatever the method (as PostgreSQL does).
        let method = match stored {
            StoredPassword::Md5Hash(_) => ClientAuthMethod::Md5,
            _ => ClientAuthMethod::ScramSha256,
        };
        let name = user.to_string();
        let entry = match stored {
            // A plaintext password derives a verifier: off the async workers.
            StoredPassword::Plain(_) => {
                kdf::run(move || UserEntry::from_stored(&name, Secret::new(text), stored, method))
                    .await
                    .map_err(|e| e.to_string())?
            }
            _ => UserEntry::from_stored(&name, Secret::new(text), stored, method),
        };
        Ok(Some(Arc::new(entry)))
    }

    fn gate(&self, user: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(in_flight.entry(user.to_string()).or_default())
    }

    /// Forgets the gate once nobody else holds it, so the map only has names
    /// being looked up now.
    fn release_gate(&self, user: &str, gate: Arc<tokio::sync::Mutex<()>>) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let last = in_flight
            .get(user)
            .is_some_and(|held| Arc::ptr_eq(held, &gate) && Arc::strong_count(held) == 2);
        if last {
            in_flight.remove(user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthQueryConfig {
        let yaml = "listeners:\n  - { name: rw, listen: \"127.0.0.1:5000\", route: primary }\n\
             cluster:\n  nodes:\n    - { name: n1, host: 127.0.0.1, port: 5432, api: \"http://127.0.0.1:8008\" }\n\
             users: []\nauth: { user: switchyard_auth, password: pw }\n";
        let config = crate::config::Config::from_yaml_str_with_env(yaml, &|_| None).expect("valid");
        config.auth.expect("auth")
    }

    #[tokio::test]
    async fn names_longer_than_any_role_are_unknown_without_asking() {
        let lookup = AuthQuery::new(&config());
        // No node is known: a lookup that asked would be Unavailable.
        let nowhere = Topology::unknown(Vec::new());
        let server = ServerConfig::default();
        let long = "x".repeat(MAX_ROLE_NAME + 1);
        assert!(matches!(
            lookup.lookup(&long, &server, &nowhere).await,
            Lookup::NotFound
        ));
        assert!(lookup.last_found(&long).is_none());
        let longest = "x".repeat(MAX_ROLE_NAME);
        assert!(matches!(
            lookup.lookup(&longest, &server, &nowhere).await,
            Lookup::Unavailable(_)
        ));
    }
}
