//! Routing: a pure function from (listener route, fallback, topology, sessions per
//! node) to the node a new session is bound to. Replicas are chosen by fewest active
//! sessions, ties broken round-robin by a caller-supplied rotation counter.

use crate::config::{Fallback, Route};
use crate::protocol::{ClientError, SqlState};
use crate::topology::Topology;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Writes have nowhere to go: no primary, or a split brain.
    NoPrimary { reason: String },
    /// A replica route with `fallback: none` and no healthy replica.
    NoReplica,
}

impl RouteError {
    pub fn to_client_error(&self, listener: &str) -> ClientError {
        match self {
            RouteError::NoPrimary { reason } => ClientError::fatal(
                SqlState::CannotConnectNow,
                format!("no primary available for listener \"{listener}\" (route primary)"),
            )
            .with_detail(reason.clone())
            .with_hint("The cluster may be failing over; retry shortly."),
            RouteError::NoReplica => ClientError::fatal(
                SqlState::CannotConnectNow,
                format!("no healthy replica available for listener \"{listener}\" (route replica, fallback none)"),
            ),
        }
    }
}

/// Picks a node index for a new session.
pub fn choose_node(
    route: Route,
    fallback: Fallback,
    topology: &Topology,
    sessions_per_node: &[u32],
    rotation: usize,
) -> Result<usize, RouteError> {
    match route {
        Route::Primary => primary(topology),
        Route::Replica => {
            let candidates: Vec<usize> = topology.replicas().collect();
            match least_loaded(&candidates, sessions_per_node, rotation) {
                Some(node) => Ok(node),
                None => match fallback {
                    Fallback::Primary => primary(topology),
                    Fallback::None => Err(RouteError::NoReplica),
                },
            }
        }
    }
}

fn primary(topology: &Topology) -> Result<usize, RouteError> {
    topology
        .primary_node()
        .ok_or_else(|| RouteError::NoPrimary {
            reason: topology.write_blocker().unwrap_or_default(),
        })
}

fn least_loaded(candidates: &[usize], sessions: &[u32], rotation: usize) -> Option<usize> {
    let load = |node: usize| sessions.get(node).copied().unwrap_or(0);
    let fewest = candidates.iter().map(|&n| load(n)).min()?;
    let tied: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|&n| load(n) == fewest)
        .collect();
    tied.get(rotation % tied.len()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::health::{Check, Refusal};
    use crate::topology::snapshot::NodeState;

    /// Builds a topology from (primary, replica) flags per node.
    fn topology(roles: &[(bool, bool)]) -> Topology {
        let nodes: Vec<NodeState> = roles
            .iter()
            .enumerate()
            .map(|(i, &(p, r))| {
                let mut node = NodeState::unknown(format!("n{i}"), String::new(), None);
                node.timeline = Some(1);
                let check = |yes| {
                    if yes {
                        Check::Yes
                    } else {
                        Check::No(Refusal::Http(503))
                    }
                };
                node.primary.observe(&check(p), 2, 3);
                node.replica.observe(&check(r), 2, 3);
                node
            })
            .collect();
        Topology::resolved(nodes)
    }

    /// (name, route, fallback, topology, sessions per node, rotation, expected node)
    type Case<'a> = (
        &'a str,
        Route,
        Fallback,
        &'a Topology,
        [u32; 3],
        usize,
        Result<usize, ()>,
    );

    #[test]
    fn routing_table() {
        let healthy = topology(&[(true, false), (false, true), (false, true)]);
        let no_replicas = topology(&[(true, false), (false, false), (false, false)]);
        let no_primary = topology(&[(false, false), (false, true), (false, true)]);
        let split = topology(&[(true, false), (true, false), (false, true)]);
        let (rw, ro) = (Route::Primary, Route::Replica);
        let (to_primary, refuse) = (Fallback::Primary, Fallback::None);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("writes go to the primary",         rw, to_primary, &healthy,     [0, 0, 0], 0, Ok(0)),
            ("reads rotate on ties (0)",         ro, to_primary, &healthy,     [0, 0, 0], 0, Ok(1)),
            ("reads rotate on ties (1)",         ro, to_primary, &healthy,     [0, 0, 0], 1, Ok(2)),
            ("reads prefer the least loaded",    ro, to_primary, &healthy,     [0, 5, 2], 0, Ok(2)),
            ("reads fall back to the primary",   ro, to_primary, &no_replicas, [0, 0, 0], 0, Ok(0)),
            ("fallback none refuses",            ro, refuse,     &no_replicas, [0, 0, 0], 0, Err(())),
            ("no primary refuses writes",        rw, to_primary, &no_primary,  [0, 0, 0], 0, Err(())),
            ("reads survive without a primary",  ro, to_primary, &no_primary,  [0, 0, 0], 3, Ok(2)),
            ("split brain refuses writes",       rw, to_primary, &split,       [0, 0, 0], 0, Err(())),
        ];
        for (name, route, fallback, topology, load, rotation, expected) in cases {
            let got = choose_node(route, fallback, topology, &load, rotation).map_err(|_| ());
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn errors_name_the_listener_and_reason() {
        let no_primary = topology(&[(false, true)]);
        let err = choose_node(Route::Primary, Fallback::Primary, &no_primary, &[0], 0)
            .expect_err("no primary");
        let client = err.to_client_error("rw");
        assert_eq!(client.code, SqlState::CannotConnectNow);
        assert!(client.message.contains("\"rw\""));
        assert!(client
            .detail
            .unwrap_or_default()
            .contains("n0: not primary"));
    }
}
