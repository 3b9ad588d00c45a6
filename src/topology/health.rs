//! Rise/fall health accounting for one role (primary or replica) of one node, as
//! HAProxy does it, with one difference that matters for writes: an explicit "no"
//! from the node (Patroni's 503, or the server itself saying it is in recovery)
//! removes the role at once instead of after `fall`.

use std::fmt;

use serde::Serialize;

/// One check's outcome for one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The node holds the role (Patroni answered 200, or the server's own state says so).
    Yes,
    /// The node answered, and does not hold the role.
    No(Refusal),
    /// No usable answer (connect error, timeout, garbage).
    Failed(String),
}

/// Why a node that answered does not hold a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Patroni answered with this HTTP status (503) instead of 200.
    Http(u16),
    /// The server is in recovery (asked about the primary role).
    InRecovery,
    /// The server is not in recovery (asked about the replica role).
    NotInRecovery,
    /// The replica replays further behind the primary than `cluster.max_replica_lag`.
    Lagging { lag_bytes: u64, max_bytes: u64 },
    /// The server answered that it cannot serve now (starting up, shutting down).
    Unavailable(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Http(status) => write!(f, "HTTP {status}"),
            Refusal::InRecovery => f.write_str("in recovery"),
            Refusal::NotInRecovery => f.write_str("not in recovery"),
            Refusal::Lagging {
                lag_bytes,
                max_bytes,
            } => write!(f, "{lag_bytes} bytes behind (max_replica_lag {max_bytes})"),
            Refusal::Unavailable(message) => f.write_str(message),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoleHealth {
    /// Whether the node is trusted in this role now.
    pub up: bool,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    /// False until the first check; the very first "yes" is trusted at once so a
    /// freshly started proxy can route without waiting `rise` intervals.
    #[serde(skip)]
    observed: bool,
}

impl RoleHealth {
    /// A role that, unlike [`RoleHealth::default`], is not trusted on its first
    /// "yes": it takes `rise` of them (members learned from Patroni's `/cluster`).
    pub fn needing_rise() -> RoleHealth {
        RoleHealth {
            observed: true,
            ..RoleHealth::default()
        }
    }

    pub fn observe(&mut self, check: &Check, rise: u32, fall: u32) {
        match check {
            Check::Yes => {
                self.consecutive_failures = 0;
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                if !self.up && (self.consecutive_successes >= rise || !self.observed) {
                    self.up = true;
                }
            }
            Check::No(_) => {
                self.consecutive_successes = 0;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.up = false;
            }
            Check::Failed(_) => {
                self.consecutive_successes = 0;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures >= fall {
                    self.up = false;
                }
            }
        }
        self.observed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(checks: &[Check]) -> Vec<bool> {
        let mut health = RoleHealth::default();
        checks
            .iter()
            .map(|c| {
                health.observe(c, 2, 3);
                health.up
            })
            .collect()
    }

    fn failed() -> Check {
        Check::Failed("timeout".into())
    }

    #[test]
    fn table() {
        use Check::*;
        let cases: Vec<(&str, Vec<Check>, Vec<bool>)> = vec![
            ("first yes is trusted at once", vec![Yes], vec![true]),
            (
                "after a failure it takes rise successes",
                vec![failed(), Yes, Yes],
                vec![false, false, true],
            ),
            (
                "fall failures take the role away",
                vec![Yes, failed(), failed(), failed()],
                vec![true, true, true, false],
            ),
            (
                "a success resets the failure count",
                vec![Yes, failed(), failed(), Yes, failed(), failed()],
                vec![true, true, true, true, true, true],
            ),
            (
                "an explicit no is immediate",
                vec![Yes, Yes, No(Refusal::Http(503))],
                vec![true, true, false],
            ),
            (
                "after a no it takes rise successes",
                vec![Yes, No(Refusal::InRecovery), Yes, Yes],
                vec![true, false, false, true],
            ),
        ];
        for (name, checks, expected) in cases {
            assert_eq!(run(&checks), expected, "{name}");
        }
    }

    #[test]
    fn a_role_needing_rise_is_not_trusted_on_its_first_yes() {
        let mut health = RoleHealth::needing_rise();
        health.observe(&Check::Yes, 2, 3);
        assert!(!health.up);
        health.observe(&Check::Yes, 2, 3);
        assert!(health.up);
    }
}
