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

    pub fn record(&self, node: &str, error: String) {
        let failure = ConnectFailure {
            at: Some(SystemTime::now()),
            error,
        };
        self.nodes().insert(node.to_string(), failure);
    }

    /// A login to `node` succeeded. Cheap when nothing was recorded.
    pub fn clear(&self, node: &str) {
        let mut nodes = self.nodes();
        if !nodes.is_empty() {
            nodes.remove(node);
        }
    }

    pub fn last(&self, node: &str) -> Option<ConnectFailure> {
        self.nodes().get(node).cloned()
    }
}
