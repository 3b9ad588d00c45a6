//! Live cluster topology: which node is primary, which replicas are healthy. The
//! [`monitor`] loop probes nodes (through Patroni's REST API, [`patroni`], or by
//! asking each server, [`sql_probe`]) and publishes immutable [`Topology`] snapshots through
//! a [`TopologyHandle`]: sessions read the latest with one atomic load (arc-swap) and
//! can wait for routing changes on a watch channel.

pub mod admission;
pub mod health;
pub mod members;
pub mod monitor;
pub mod patroni;
pub mod probe;
pub mod reconfigure;
pub mod snapshot;
pub mod sql_probe;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

pub use snapshot::{NodeState, PrimaryState, Topology};

pub struct TopologyHandle {
    current: ArcSwap<Topology>,
    /// Carries the generation of the latest snapshot with a routing change.
    changes: watch::Sender<u64>,
    /// Count of finished health rounds, so starters can wait for the first.
    rounds: watch::Sender<u64>,
    /// Members `/cluster` names that `cluster.allowed_hosts` keeps out (for `/status`).
    ignored: ArcSwap<Vec<admission::IgnoredMember>>,
}

impl TopologyHandle {
    pub fn new(initial: Topology) -> Arc<TopologyHandle> {
        Arc::new(TopologyHandle {
            current: ArcSwap::from_pointee(initial),
            changes: watch::channel(0).0,
            rounds: watch::channel(0).0,
            ignored: ArcSwap::from_pointee(Vec::new()),
        })
    }

    pub fn load(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// Publishes the result of a health round.
    pub fn publish(&self, topology: Topology) {
        self.replace(topology);
        self.rounds.send_modify(|r| *r += 1);
    }

    /// Publishes a snapshot that is not a health round's (a new node list from a
    /// reload or from membership), so it does not count as one.
    pub fn replace(&self, topology: Topology) {
        let generation = topology.generation;
        self.current.store(Arc::new(topology));
        self.changes.send_if_modified(|g| {
            let changed = *g != generation;
            *g = generation;
            changed
        });
    }

    /// The members the last `/cluster` answer named that are not used.
    pub fn ignored_members(&self) -> Arc<Vec<admission::IgnoredMember>> {
        self.ignored.load_full()
    }

    pub fn set_ignored_members(&self, ignored: Vec<admission::IgnoredMember>) {
        if **self.ignored.load() != ignored {
            self.ignored.store(Arc::new(ignored));
        }
    }

    /// Resolves at each routing change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Waits until at least one health round has finished.
    pub async fn first_round(&self) {
        let mut rounds = self.rounds.subscribe();
        let _ = rounds.wait_for(|r| *r > 0).await;
    }
}
