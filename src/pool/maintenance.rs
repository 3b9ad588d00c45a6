//! The pool housekeeping loop: once a second it closes idle connections past their
//! idle timeout or lifetime, opens connections up to `min_idle` for nodes that are
//! in the topology, and drains pools of nodes that no longer hold any role.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::PoolSet;
use crate::topology::TopologyHandle;

pub async fn run(pools: Arc<PoolSet>, topology: Arc<TopologyHandle>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let snapshot = topology.load();
        for pool in pools.all() {
            let node = snapshot.nodes.iter().find(|n| n.name == pool.key.node);
            let available = node.is_some_and(|n| n.primary.up || n.replica.up);
            if !available {
                let closed = pool.drain();
                if closed > 0 {
                    tracing::info!(node = %pool.key.node, closed, "node left the topology; pool drained");
                }
                continue;
            }
            let pruned = pool.prune();
            if pruned > 0 {
                tracing::debug!(node = %pool.key.node, pruned, "closed idle server connections");
            }
            pool.top_up().await;
        }
    }
}
