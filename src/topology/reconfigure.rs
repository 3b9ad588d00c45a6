//! Applying a reloaded `cluster:` section to the live topology: nodes that stay
//! (same name, address and API) keep their health, timeline and session counts, so a
//! reload never makes the proxy forget the primary; new nodes start unknown and
//! removed ones drop out (their pools are drained by pool maintenance).

use std::time::SystemTime;

use super::snapshot::{resolve_primary, NodeState, PrimaryState, Topology};

/// The topology for a new node list, keeping what is known about unchanged nodes.
pub fn carry_over(previous: &Topology, fresh: Vec<NodeState>, now: SystemTime) -> Topology {
    let nodes: Vec<NodeState> = fresh
        .into_iter()
        .map(|node| {
            previous
                .nodes
                .iter()
                .find(|old| {
                    old.name == node.name && old.address == node.address && old.api == node.api
                })
                .cloned()
                .unwrap_or(node)
        })
        .collect();
    let primary = match previous.primary {
        // Nothing was known before: the next health round decides.
        PrimaryState::Unknown => PrimaryState::Unknown,
        _ => resolve_primary(&nodes),
    };
    Topology {
        generation: previous.generation + 1,
        nodes,
        primary,
        changed_at: Some(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::health::Check;

    fn node(name: &str, port: u16) -> NodeState {
        NodeState::unknown(
            name.into(),
            format!("127.0.0.1:{port}"),
            Some(format!("http://127.0.0.1:{}", port + 1000)),
        )
    }

    #[test]
    fn unchanged_nodes_keep_their_roles_and_new_ones_start_unknown() {
        let mut a = node("a", 1);
        a.primary.observe(&Check::Yes, 2, 3);
        let mut b = node("b", 2);
        b.replica.observe(&Check::Yes, 2, 3);
        let nodes = vec![a, b];
        let previous = Topology {
            generation: 7,
            primary: resolve_primary(&nodes),
            nodes,
            changed_at: None,
        };
        assert_eq!(previous.primary, PrimaryState::Confirmed { node: 0 });

        // b removed, c added before a: a keeps the primary role at its new index.
        let next = carry_over(
            &previous,
            vec![node("c", 3), node("a", 1)],
            SystemTime::now(),
        );
        assert_eq!(next.generation, 8);
        assert_eq!(next.primary, PrimaryState::Confirmed { node: 1 });
        assert!(!next.nodes[0].replica.up && !next.nodes[0].primary.up);
        assert!(std::sync::Arc::ptr_eq(
            &next.nodes[1].sessions,
            &previous.nodes[0].sessions
        ));

        // a moved to another port: it is a new node, nothing carried over.
        let moved = carry_over(&previous, vec![node("a", 9)], SystemTime::now());
        assert!(matches!(moved.primary, PrimaryState::None { .. }));
    }
}
