//! Server connection pools, one per (node, database, user), shared by every listener
//! and session. [`PoolSet`] finds or creates a pool; [`maintenance`] keeps pools
//! tidy (idle timeouts, lifetimes, `min_idle`, draining nodes that left the topology).

pub mod maintenance;
mod server_pool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

pub use server_pool::{CheckoutError, PoolSettings, PoolStats, PooledServer, ServerPool};

use crate::config::Secret;
use crate::users::UserDb;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub node: String,
    pub database: String,
    pub user: String,
}

pub struct PoolSet {
    pools: Mutex<HashMap<PoolKey, Arc<ServerPool>>>,
    settings: ArcSwap<PoolSettings>,
}

impl PoolSet {
    pub fn new(settings: PoolSettings) -> PoolSet {
        PoolSet {
            pools: Mutex::new(HashMap::new()),
            settings: ArcSwap::from_pointee(settings),
        }
    }

    fn pools(&self) -> MutexGuard<'_, HashMap<PoolKey, Arc<ServerPool>>> {
        // Single insert/get/remove critical sections: consistent even if poisoned.
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool for `key`, created on first use.
    pub fn get(&self, key: PoolKey, address: &str, password: &Secret) -> Arc<ServerPool> {
        let mut pools = self.pools();
        if let Some(pool) = pools.get(&key) {
            if pool.address() == address && pool.uses_password(password) {
                return Arc::clone(pool);
            }
            // The node moved or the password changed (a config reload).
            pool.drain();
        }
        let pool = Arc::new(ServerPool::new(
            key.clone(),
            address.to_string(),
            password.clone(),
            PoolSettings::clone(&self.settings.load()),
        ));
        pools.insert(key, Arc::clone(&pool));
        pool
    }

    /// Applies reloaded settings to every pool, and retires the pools of users
    /// that were removed or whose password changed: their idle connections close
    /// now, busy ones when their clients give them back.
    pub fn reconfigure(&self, settings: PoolSettings, users: &UserDb) {
        self.settings.store(Arc::new(settings.clone()));
        let mut pools = self.pools();
        pools.retain(|key, pool| {
            let current = users
                .get(&key.user)
                .is_some_and(|u| pool.uses_password(&u.password));
            if !current {
                let closed = pool.drain();
                tracing::info!(user = %key.user, node = %key.node, closed, "user removed or password changed: pool retired");
                return false;
            }
            pool.reconfigure(settings.clone());
            true
        });
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
