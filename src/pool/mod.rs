//! Server connection pools, one per (node, database, user), shared by every listener
//! and session. [`PoolSet`] finds or creates a pool, at most `pool.max_pools` of
//! them, and removes pools nobody has used for `pool.server_idle_timeout` (clients
//! choose database names, so pools must not pile up); [`maintenance`] keeps pools
//! tidy (idle timeouts, lifetimes, `min_idle`, draining nodes that left the topology).

mod failures;
pub mod maintenance;
mod server_pool;
mod welcome;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;

pub use failures::{ConnectFailure, ConnectFailures};
pub use server_pool::{CheckoutError, PoolSettings, PoolStats, PooledServer, ServerPool};

use crate::auth::stored::ServerSecret;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub node: String,
    pub database: String,
    pub user: String,
}

/// A new pool would exceed `pool.max_pools`.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open a pool for database \"{database}\": {limit} pools exist, the limit \
     (pool.max_pools); pools unused for pool.server_idle_timeout are removed"
)]
pub struct TooManyPools {
    pub database: String,
    pub limit: usize,
}

pub struct PoolSet {
    pools: Mutex<HashMap<PoolKey, Arc<ServerPool>>>,
    settings: ArcSwap<PoolSettings>,
    failures: Arc<ConnectFailures>,
}

impl PoolSet {
    pub fn new(settings: PoolSettings) -> PoolSet {
        PoolSet {
            pools: Mutex::new(HashMap::new()),
            settings: ArcSwap::from_pointee(settings),
            failures: Arc::default(),
        }
    }

    /// The last failed login to `node`, if none succeeded since (for /status).
    pub fn last_connect_failure(&self, node: &str) -> Option<ConnectFailure> {
        self.failures.last(node)
    }

    fn pools(&self) -> MutexGuard<'_, HashMap<PoolKey, Arc<ServerPool>>> {
        // Single insert/get/remove critical sections: consistent even if poisoned.
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool for `key`, created on first use unless `pool.max_pools` pools
    /// exist already (and none of them is unused, to make room).
    pub fn get(
        &self,
        key: PoolKey,
        address: &str,
        secret: &Arc<ServerSecret>,
    ) -> Result<Arc<ServerPool>, TooManyPools> {
        let mut pools = self.pools();
        match pools.get(&key) {
            Some(pool) if pool.address() == address && pool.uses_secret(secret) => {
                return Ok(Arc::clone(pool));
            }
            // The node moved or the password changed (a config reload).
            Some(pool) => {
                pool.drain();
            }
            None => {
                let limit = self.settings.load().max_pools;
                if pools.len() >= limit && !evict_one_unused(&mut pools) {
                    return Err(TooManyPools {
                        database: key.database,
                        limit,
                    });
                }
            }
        }
        let pool = Arc::new(ServerPool::new(
            key.clone(),
            address.to_string(),
            Arc::clone(secret),
            PoolSettings::clone(&self.settings.load()),
            Arc::clone(&self.failures),
        ));
        pools.insert(key, Arc::clone(&pool));
        Ok(pool)
    }

    /// Removes the pools unused (no client bound, no connection open) for
    /// `server_idle_timeout`; returns their keys.
    pub fn remove_unused(&self, now: Instant) -> Vec<PoolKey> {
        let after = self.settings.load().idle_timeout;
        let mut removed = Vec::new();
        self.pools().retain(|key, pool| {
            let unused_for = pool.unused_for(is_unshared(pool), now);
            if unused_for.is_some_and(|d| d >= after) {
                removed.push(key.clone());
                return false;
            }
            true
        });
        removed
    }

    /// Applies reloaded settings to every pool, and retires the pools of users
    /// that were removed or whose password changed (`secret_of` says what each
    /// user, configured or found by `auth_query`, logs in with now): their idle
    /// connections close now, busy ones when their clients give them back.
    pub fn reconfigure(
        &self,
        settings: PoolSettings,
        secret_of: &dyn Fn(&str) -> Option<Arc<ServerSecret>>,
    ) {
        self.settings.store(Arc::new(settings.clone()));
        let mut pools = self.pools();
        pools.retain(|key, pool| {
            let current = secret_of(&key.user).is_some_and(|secret| pool.uses_secret(&secret));
            if !current {
                let closed = pool.drain();
                tracing::info!(user = %key.user, node = %key.node, closed, "user removed or password changed: pool retired");
                return false;
            }
            pool.reconfigure(settings.clone());
            true
        });
    }

    pub fn len(&self) -> usize {
        self.pools().len()
    }

    pub fn all(&self) -> Vec<Arc<ServerPool>> {
        self.pools().values().cloned().collect()
    }

    pub fn stats(&self) -> Vec<PoolStats> {
        let mut stats: Vec<PoolStats> = self.all().iter().map(|p| p.stats()).collect();
        stats.sort_by(|a, b| (&a.node, &a.database, &a.user).cmp(&(&b.node, &b.database, &b.user)));
        stats
    }
}

/// Only the set holds the pool: no session is bound to it, no connection of it is
/// checked out, no other task is looking at it. Stays true while the set's lock is
/// held, since new references are handed out only under it.
fn is_unshared(pool: &Arc<ServerPool>) -> bool {
    Arc::strong_count(pool) == 1
}

/// Makes room for a new pool by removing one that is unused right now (the one
/// unused longest); false if every pool is in use.
fn evict_one_unused(pools: &mut HashMap<PoolKey, Arc<ServerPool>>) -> bool {
    let now = Instant::now();
    let victim = pools
        .iter()
        .filter_map(|(key, pool)| Some((pool.unused_for(is_unshared(pool), now)?, key)))
        .max_by_key(|(unused_for, _)| *unused_for)
        .map(|(_, key)| key.clone());
    match victim {
        Some(key) => {
            tracing::info!(node = %key.node, database = %key.database, user = %key.user, "pool.max_pools reached: removed an unused pool to make room");
            pools.remove(&key);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::stored::StoredPassword;

    fn set(max_pools: usize, idle_timeout: Duration) -> PoolSet {
        PoolSet::new(PoolSettings {
            size: 1,
            min_idle: 0,
            connect_timeout: Duration::from_secs(1),
            keepalive: Default::default(),
            idle_timeout,
            lifetime: Duration::from_secs(3600),
            max_pools,
            require_auth: Default::default(),
            require_auth_by_user: Default::default(),
            tls: Default::default(),
            workers: 2,
        })
    }

    fn key(database: &str) -> PoolKey {
        PoolKey {
            node: "node1".into(),
            database: database.into(),
            user: "app".into(),
        }
    }

    fn get(pools: &PoolSet, database: &str) -> Result<Arc<ServerPool>, TooManyPools> {
        // One secret for every call, as one user's entry gives it.
        static SECRET: std::sync::OnceLock<Arc<ServerSecret>> = std::sync::OnceLock::new();
        let secret =
            SECRET.get_or_init(|| Arc::new(ServerSecret::new(StoredPassword::Plain("pw".into()))));
        pools.get(key(database), "127.0.0.1:5432", secret)
    }

    #[test]
    fn the_cap_refuses_only_when_every_pool_is_in_use() {
        let pools = set(2, Duration::from_secs(600));
        let a = get(&pools, "a").expect("a");
        let b = get(&pools, "b").expect("b");
        let Err(refused) = get(&pools, "c") else {
            panic!("over the cap")
        };
        assert_eq!(refused.limit, 2);
        assert!(refused.to_string().contains("pool.max_pools"), "{refused}");
        assert!(get(&pools, "a").is_ok(), "an existing pool is not new");
        drop(b);
        let _c = get(&pools, "c").expect("b's unused pool made room");
        let mut databases: Vec<String> = pools.stats().into_iter().map(|s| s.database).collect();
        databases.sort();
        assert_eq!(databases, ["a", "c"]);
        drop(a);
    }

    #[test]
    fn unused_pools_go_after_the_idle_timeout() {
        let pools = set(10, Duration::from_secs(60));
        let held = get(&pools, "held").expect("held");
        drop(get(&pools, "gone").expect("gone"));
        let start = Instant::now();
        assert!(
            pools.remove_unused(start).is_empty(),
            "the clock starts now"
        );
        assert!(pools
            .remove_unused(start + Duration::from_secs(59))
            .is_empty());
        let removed = pools.remove_unused(start + Duration::from_secs(60));
        assert_eq!(removed, [key("gone")]);
        assert_eq!(pools.len(), 1);
        drop(held);
    }
}
