//! Rise/fall health accounting for one role (primary or replica) of one node, as
//! HAProxy does it, with one difference that matters for writes: an explicit "no"
//! from the node (Patroni's 503) removes the role at once instead of after `fall`.

use serde::Serialize;

/// One check's outcome for one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The endpoint answered 200: the node holds the role.
    Yes,
    /// The endpoint answered, but not 200: the node says it does not hold the role.
    No(u16),
    /// No usable answer (connect error, timeout, garbage).
    Failed(String),
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
                vec![Yes, Yes, No(503)],
                vec![true, true, false],
            ),
            (
                "after a no it takes rise successes",
                vec![Yes, No(503), Yes, Yes],
                vec![true, false, false, true],
            ),
        ];
        for (name, checks, expected) in cases {
            assert_eq!(run(&checks), expected, "{name}");
        }
    }
}
