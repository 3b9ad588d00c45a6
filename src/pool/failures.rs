//! The last failed server login per node, kept for `/status` until a login to that
//! node succeeds: when clients get 08006 (a TLS certificate that does not verify, a
//! refused connection), the operator sees why on the node itself.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

/// One failed login.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectFailure {
    #[serde(serialize_with = "crate::topology::snapshot::serialize_time")]
    pub at: Option<SystemTime>,
    pub error: String,
}

#[derive(Default)]
pub struct ConnectFailures {
    by_node: Mutex<HashMap<String, ConnectFailure>>,
}

impl ConnectFailures {
    fn nodes(&self) -> MutexGuard<'_, HashMap<String, ConnectFailure>> {
        // Single insert/remove/clone sections: consistent even if poisoned.
        self.by_node.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a failed login; true when it differs from the node's last one (so
    /// the caller logs a repeated failure once, not at every attempt).
    pub fn record(&self, node: &str, error: String) -> bool {
        let failure = ConnectFailure {
            at: Some(SystemTime::now()),
            error,
        };
        let previous = self.nodes().insert(node.to_string(), failure.clone());
        previous.is_none_or(|p| p.error != failure.error)
    }

    /// A login to `node` succeeded; true when a failure was recorded until now.
    /// Cheap when nothing was recorded.
    pub fn clear(&self, node: &str) -> bool {
        let mut nodes = self.nodes();
        !nodes.is_empty() && nodes.remove(node).is_some()
    }

    pub fn last(&self, node: &str) -> Option<ConnectFailure> {
        self.nodes().get(node).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_failure_is_new_once_and_a_success_clears_it() {
        let failures = ConnectFailures::default();
        assert!(!failures.clear("a"), "nothing recorded yet");
        assert!(failures.record("a", "TLS failed".into()));
        assert!(!failures.record("a", "TLS failed".into()), "the same again");
        assert!(failures.record("a", "refused".into()), "a different one");
        assert!(failures.record("b", "refused".into()), "another node");
        assert_eq!(failures.last("a").map(|f| f.error), Some("refused".into()));
        assert!(failures.clear("a"));
        assert!(failures.last("a").is_none());
        assert!(failures.last("b").is_some());
    }
}
