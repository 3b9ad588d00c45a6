//! Server connection pools, one per (node, database, user), shared by every listener
//! and session. [`PoolSet`] finds or creates a pool; [`maintenance`] keeps pools
//! tidy (idle timeouts, lifetimes, `min_idle`, draining nodes that left the topology).

pub mod maintenance;
mod server_pool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

pub use server_pool::{CheckoutError, PoolSettings, PoolStats, PooledServer, ServerPool};

use crate::config::Secret;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub node: String,
    pub database: String,
    pub user: String,
}

pub struct PoolSet {
    pools: Mutex<HashMap<PoolKey, Arc<ServerPool>>>,
    settings: PoolSettings,
}

impl PoolSet {
    pub fn new(settings: PoolSettings) -> PoolSet {
        PoolSet {
            pools: Mutex::new(HashMap::new()),
            settings,
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
            if pool.address() == address {
                return Arc::clone(pool);
            }
            // The node moved (a config reload or a new address from discovery).
            pool.drain();
        }
        let pool = Arc::new(ServerPool::new(
            key.clone(),
            address.to_string(),
            password.clone(),
            self.settings.clone(),
        ));
        pools.insert(key, Arc::clone(&pool));
        pool
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
