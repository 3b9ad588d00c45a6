//! The immutable topology snapshot sessions route by, and the pure rule that picks
//! the primary from the nodes' health, refusing to guess when two nodes claim it.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::health::RoleHealth;

/// What the proxy knows about one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeState {
    pub name: String,
    /// `host:port` of its PostgreSQL server.
    pub address: String,
    /// Its Patroni REST API URL, when configured.
    pub api: Option<String>,
    pub primary: RoleHealth,
    pub replica: RoleHealth,
    /// The timeline it reported when it last claimed the primary role (Patroni's
    /// `/patroni`, or the SQL probe's WAL file name).
    pub timeline: Option<u64>,
    /// How far its replay is behind the primary, in bytes, as of the last round;
    /// `None` for the primary itself and whenever it could not be measured (no
    /// single confirmed primary in that round, or no position reported).
    pub lag_bytes: Option<u64>,
    #[serde(serialize_with = "serialize_time")]
    pub last_check: Option<SystemTime>,
    pub last_error: Option<String>,
    /// Sessions bound to this node now (least-connections routing). Shared by every
    /// snapshot of the node, and carried over a reload while the node stays the same.
    #[serde(skip)]
    pub sessions: Arc<AtomicU32>,
    /// Its most recent role changes, oldest first (for /status).
    pub history: RoleHistory,
}

/// One change of a node's role as the proxy saw it.
#[derive(Debug, Clone, Serialize)]
pub struct RoleChange {
    #[serde(serialize_with = "serialize_time")]
    pub at: Option<SystemTime>,
    pub from: &'static str,
    pub to: &'static str,
    /// What the last check said, when it failed or refused.
    pub reason: Option<String>,
}

/// The last few role changes of a node; bounded so a flapping node cannot grow it.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct RoleHistory(std::collections::VecDeque<RoleChange>);

impl RoleHistory {
    const KEPT: usize = 10;

    pub fn record(&mut self, change: RoleChange) {
        if self.0.len() == Self::KEPT {
            self.0.pop_front();
        }
        self.0.push_back(change);
    }

    pub fn iter(&self) -> impl Iterator<Item = &RoleChange> {
        self.0.iter()
    }
}

impl NodeState {
    /// A node nothing is known about yet: no role, no checks, no sessions.
    pub fn unknown(name: String, address: String, api: Option<String>) -> NodeState {
        NodeState {
            name,
            address,
            api,
            primary: RoleHealth::default(),
            replica: RoleHealth::default(),
            timeline: None,
            lag_bytes: None,
            last_check: None,
            last_error: None,
            sessions: Arc::default(),
            history: RoleHistory::default(),
        }
    }

    /// A member learned from Patroni's `/cluster`: like [`NodeState::unknown`], but
    /// each role takes `rise` successful checks before it carries traffic.
    pub fn learned(name: String, address: String, api: Option<String>) -> NodeState {
        NodeState {
            primary: RoleHealth::needing_rise(),
            replica: RoleHealth::needing_rise(),
            ..NodeState::unknown(name, address, api)
        }
    }

    pub fn role(&self) -> &'static str {
        if self.primary.up {
            "primary"
        } else if self.replica.up {
            "replica"
        } else {
            "unavailable"
        }
    }
}

/// Who takes writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PrimaryState {
    /// No health round has finished yet.
    Unknown,
    Confirmed {
        node: usize,
    },
    None {
        reason: String,
    },
    /// Several nodes claim the primary role and timelines do not settle it.
    SplitBrain {
        nodes: Vec<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    /// Bumped whenever routing (the primary or the replica set) changes.
    pub generation: u64,
    pub nodes: Vec<NodeState>,
    pub primary: PrimaryState,
    #[serde(serialize_with = "serialize_time")]
    pub changed_at: Option<SystemTime>,
}

impl Topology {
    pub fn unknown(nodes: Vec<NodeState>) -> Topology {
        Topology {
            generation: 0,
            nodes,
            primary: PrimaryState::Unknown,
            changed_at: None,
        }
    }

    /// A topology whose primary is resolved from `nodes` as the monitor would.
    #[cfg(test)]
    pub(crate) fn resolved(nodes: Vec<NodeState>) -> Topology {
        Topology {
            generation: 1,
            primary: resolve_primary(&nodes),
            nodes,
            changed_at: None,
        }
    }

    pub fn primary_node(&self) -> Option<usize> {
        match self.primary {
            PrimaryState::Confirmed { node } => Some(node),
            _ => None,
        }
    }

    /// Nodes trusted for reads: healthy replicas other than the primary.
    pub fn replicas(&self) -> impl Iterator<Item = usize> + '_ {
        let primary = self.primary_node();
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(i, n)| n.replica.up && Some(*i) != primary)
            .map(|(i, _)| i)
    }

    /// A one-line reason why writes cannot be routed, or None when they can.
    pub fn write_blocker(&self) -> Option<String> {
        match &self.primary {
            PrimaryState::Confirmed { .. } => None,
            PrimaryState::Unknown => {
                Some("topology not known yet (first health round pending)".into())
            }
            PrimaryState::None { reason } => Some(reason.clone()),
            PrimaryState::SplitBrain { nodes } => Some(format!(
                "split brain: {} all claim the primary role; refusing writes",
                nodes.join(", ")
            )),
        }
    }
}

/// Picks the primary: the one node that confirms the role; among several, the one on
/// the highest timeline when every claimant reported one and it is unique.
pub fn resolve_primary(nodes: &[NodeState]) -> PrimaryState {
    let claims: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].primary.up).collect();
    match claims.as_slice() {
        [] => PrimaryState::None {
            reason: no_primary_reason(nodes),
        },
        [only] => PrimaryState::Confirmed { node: *only },
        _ => {
            let timelines: Option<Vec<u64>> = claims.iter().map(|&i| nodes[i].timeline).collect();
            if let Some(timelines) = timelines {
                let max = timelines.iter().copied().max().unwrap_or(0);
                let winners: Vec<usize> = claims
                    .iter()
                    .zip(&timelines)
                    .filter(|(_, &t)| t == max)
                    .map(|(&i, _)| i)
                    .collect();
                if let [winner] = winners.as_slice() {
                    return PrimaryState::Confirmed { node: *winner };
                }
            }
            PrimaryState::SplitBrain {
                nodes: claims.iter().map(|&i| nodes[i].name.clone()).collect(),
            }
        }
    }
}

fn no_primary_reason(nodes: &[NodeState]) -> String {
    let parts: Vec<String> = nodes
        .iter()
        .map(|n| match &n.last_error {
            Some(error) => format!("{}: {error}", n.name),
            None => format!("{}: not primary", n.name),
        })
        .collect();
    format!("no node confirms the primary role ({})", parts.join("; "))
}

pub(crate) fn serialize_time<S: serde::Serializer>(
    time: &Option<SystemTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(t) => serializer.serialize_str(&humantime::format_rfc3339_millis(*t).to_string()),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::health::{Check, Refusal};

    fn node(name: &str, primary: bool, replica: bool, timeline: Option<u64>) -> NodeState {
        let mut state = NodeState::unknown(name.into(), format!("{name}:5432"), None);
        state.timeline = timeline;
        let check = |yes| {
            if yes {
                Check::Yes
            } else {
                Check::No(Refusal::Http(503))
            }
        };
        state.primary.observe(&check(primary), 2, 3);
        state.replica.observe(&check(replica), 2, 3);
        state
    }

    #[test]
    fn primary_resolution_table() {
        let cases = vec![
            (
                "one primary",
                vec![
                    node("a", true, false, Some(1)),
                    node("b", false, true, None),
                ],
                PrimaryState::Confirmed { node: 0 },
            ),
            (
                "higher timeline wins",
                vec![
                    node("a", true, false, Some(1)),
                    node("b", true, false, Some(2)),
                ],
                PrimaryState::Confirmed { node: 1 },
            ),
            (
                "same timeline is split brain",
                vec![
                    node("a", true, false, Some(2)),
                    node("b", true, false, Some(2)),
                ],
                PrimaryState::SplitBrain {
                    nodes: vec!["a".into(), "b".into()],
                },
            ),
            (
                "unknown timeline is split brain",
                vec![
                    node("a", true, false, Some(3)),
                    node("b", true, false, None),
                ],
                PrimaryState::SplitBrain {
                    nodes: vec!["a".into(), "b".into()],
                },
            ),
        ];
        for (name, nodes, expected) in cases {
            assert_eq!(resolve_primary(&nodes), expected, "{name}");
        }
        let none = resolve_primary(&[node("a", false, true, None)]);
        assert!(
            matches!(none, PrimaryState::None { ref reason } if reason.contains("a: not primary"))
        );
    }

    #[test]
    fn replicas_exclude_the_primary() {
        let topology = Topology {
            generation: 1,
            nodes: vec![
                node("a", true, true, Some(1)),
                node("b", false, true, None),
                node("c", false, false, None),
            ],
            primary: PrimaryState::Confirmed { node: 0 },
            changed_at: None,
        };
        assert_eq!(topology.replicas().collect::<Vec<_>>(), vec![1]);
        assert_eq!(topology.write_blocker(), None);
    }
}
