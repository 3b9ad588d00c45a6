//! Asks one node's Patroni REST API which role it holds: `GET /primary` and
//! `GET /replica` (200 = yes, 503 = no), plus `GET /patroni` for the timeline when the
//! node claims the primary role, so two claimants can be told apart.

use std::time::Duration;

use crate::config::ApiEndpoint;
use crate::http_client;

use super::health::Check;

/// One health round's findings for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub primary: Check,
    pub replica: Check,
    pub timeline: Option<u64>,
}

impl Probe {
    /// A one-line description of what went wrong, if anything did.
    pub fn error(&self) -> Option<String> {
        match (&self.primary, &self.replica) {
            (Check::Failed(e), _) | (_, Check::Failed(e)) => Some(e.clone()),
            _ => None,
        }
    }
}

/// Probes one node. With `max_lag`, the replica check is Patroni's
/// `/replica?lag=<bytes>`, which answers 503 for a replica further behind than that.
pub async fn probe(api: &ApiEndpoint, timeout: Duration, max_lag: Option<u64>) -> Probe {
    let authority = api.authority();
    let replica_path = match max_lag {
        Some(bytes) => api.path(&format!("/replica?lag={bytes}")),
        None => api.path("/replica"),
    };
    let primary_path = api.path("/primary");
    let (primary, replica) = tokio::join!(
        check(&authority, &primary_path, timeout),
        check(&authority, &replica_path, timeout),
    );
    let timeline = if primary == Check::Yes {
        timeline(&authority, &api.path("/patroni"), timeout).await
    } else {
        None
    };
    Probe {
        primary,
        replica,
        timeline,
    }
}

async fn check(authority: &str, path: &str, timeout: Duration) -> Check {
    match http_client::get(authority, path, timeout).await {
        Ok(response) if response.status == 200 => Check::Yes,
        Ok(response) => Check::No(response.status),
        Err(e) => Check::Failed(format!("GET {path}: {e}")),
    }
}

async fn timeline(authority: &str, path: &str, timeout: Duration) -> Option<u64> {
    let response = http_client::get(authority, path, timeout).await.ok()?;
    if response.status != 200 {
        return None;
    }
    parse_timeline(&response.body)
}

/// The `timeline` field of Patroni's `/patroni` document.
pub fn parse_timeline(body: &[u8]) -> Option<u64> {
    let document: serde_json::Value = serde_json::from_slice(body).ok()?;
    document.get("timeline")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_timeline_from_patroni_status() {
        let body =
            br#"{"state":"running","role":"master","timeline":4,"patroni":{"version":"3.0.2"}}"#;
        assert_eq!(parse_timeline(body), Some(4));
        assert_eq!(parse_timeline(b"{}"), None);
        assert_eq!(parse_timeline(b"not json"), None);
    }
}
