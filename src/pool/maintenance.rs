//! The pool housekeeping loop: once a second it closes idle connections past their
//! idle timeout or lifetime, opens connections up to `min_idle` for nodes that are
//! in the topology, drains pools of nodes that no longer hold any role, and removes
//! pools unused for `server_idle_timeout`. On a
//! topology change it drains at once the pools of a primary that lost the role: its
//! connections die with the demotion anyway, and none must carry another write.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::PoolSet;
use crate::topology::{Topology, TopologyHandle};

fn primary_name(topology: &Topology) -> Option<String> {
    topology
        .primary_node()
        .map(|i| topology.nodes[i].name.clone())
}

fn drain_node(pools: &PoolSet, node: &str, why: &str) {
    for pool in pools.all().iter().filter(|p| p.key.node == node) {
        let closed = pool.drain();
        tracing::info!(node, closed, "{why}: pool drained");
    }
}

pub async fn run(pools: Arc<PoolSet>, topology: Arc<TopologyHandle>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut changes = topology.subscribe();
    let mut primary = primary_name(&topology.load());
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = primary_name(&topology.load());
                if let Some(old) = primary.as_deref().filter(|old| Some(*old) != now.as_deref()) {
                    drain_node(&pools, old, "lost the primary role");
                }
                primary = now;
                continue;
            }
            _ = shutdown.cancelled() => return,
        }
        let snapshot = topology.load();
        for key in pools.remove_unused(std::time::Instant::now()) {
            tracing::info!(node = %key.node, database = %key.database, user = %key.user, "pool unused for server_idle_timeout: removed");
        }
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
