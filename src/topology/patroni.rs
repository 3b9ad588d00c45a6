//! Asks one node's Patroni REST API which role it holds: `GET /primary` and
//! `GET /replica` (200 = yes, 503 = no), plus `GET /patroni` for the timeline when the
//! node claims the primary role, so two claimants can be told apart. The WAL
//! positions for replica lag come from the bodies of the first two answers, which
//! carry the same document as `/patroni`, so lag costs no extra request.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use crate::config::ApiEndpoint;
use crate::http_client;

use super::health::{Check, Refusal};
use super::probe::{Probe, Wal};

/// Probes one node. With `max_lag`, the replica check is Patroni's
/// `/replica?lag=<bytes>`, which answers 503 for a replica further behind than that.
/// `tls` is `cluster.api_tls`, used for `https://` endpoints.
pub async fn probe(
    api: &ApiEndpoint,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
    max_lag: Option<u64>,
) -> Probe {
    let tls = match tls_for(api, tls) {
        Ok(tls) => tls,
        Err(reason) => return Probe::failed(reason),
    };
    let authority = api.authority();
    let replica_path = match max_lag {
        Some(bytes) => api.path(&format!("/replica?lag={bytes}")),
        None => api.path("/replica"),
    };
    let primary_path = api.path("/primary");
    let ((primary, primary_wal), (replica, replica_wal)) = tokio::join!(
        check(&authority, &primary_path, timeout, tls),
        check(&authority, &replica_path, timeout, tls),
    );
    let timeline = if primary == Check::Yes {
        timeline(&authority, &api.path("/patroni"), timeout, tls).await
    } else {
        None
    };
    // Both answers describe the same node a moment apart; prefer the one whose
    // endpoint matches the role the position belongs to.
    let wal = Wal {
        current: primary_wal.current.or(replica_wal.current),
        replayed: replica_wal.replayed.or(primary_wal.replayed),
    };
    Probe {
        primary,
        replica,
        timeline,
        wal,
    }
}

/// The TLS configuration an endpoint needs: none for `http://`, `cluster.api_tls`
/// for `https://` (an https URL learned from `/cluster` without it cannot be used).
pub fn tls_for<'a>(
    api: &ApiEndpoint,
    tls: Option<&'a Arc<ClientConfig>>,
) -> Result<Option<&'a Arc<ClientConfig>>, String> {
    match (api.https, tls) {
        (false, _) => Ok(None),
        (true, Some(tls)) => Ok(Some(tls)),
        (true, None) => Err(format!(
            "{} is an https:// API, and cluster.api_tls is not configured",
            api.authority()
        )),
    }
}

async fn check(
    authority: &str,
    path: &str,
    timeout: Duration,
    tls: Option<&Arc<ClientConfig>>,
) -> (Check, Wal) {
    match http_client::get_over(authority, path, timeout, tls).await {
        Ok(response) => {
            let wal = parse_wal(&response.body);
            if response.status == 200 {
                (Check::Yes, wal)
            } else {
                (Check::No(Refusal::Http(response.status)), wal)
            }
        }
        Err(e) => (Check::Failed(format!("GET {path}: {e}")), Wal::default()),
    }
}

async fn timeline(
    authority: &str,
    path: &str,
    timeout: Duration,
    tls: Option<&Arc<ClientConfig>>,
) -> Option<u64> {
    let response = http_client::get_over(authority, path, timeout, tls)
        .await
        .ok()?;
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

/// WAL positions from a Patroni status document: `xlog.location` on a primary,
/// `xlog.replayed_location` on a replica (both in bytes). Anything missing or
/// malformed is simply unknown.
pub fn parse_wal(body: &[u8]) -> Wal {
    let Ok(document) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Wal::default();
    };
    let xlog = document.get("xlog");
    let field = |name: &str| xlog.and_then(|x| x.get(name)).and_then(|v| v.as_u64());
    Wal {
        current: field("location"),
        replayed: field("replayed_location"),
    }
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

    #[test]
    fn reads_wal_positions_from_patroni_status() {
        let primary = br#"{"role":"master","xlog":{"location":83886080},"timeline":1}"#;
        assert_eq!(
            parse_wal(primary),
            Wal {
                current: Some(83_886_080),
                replayed: None
            }
        );
        let replica = br#"{"role":"replica","xlog":{"received_location":90,"replayed_location":80,"paused":false}}"#;
        assert_eq!(
            parse_wal(replica),
            Wal {
                current: None,
                replayed: Some(80)
            }
        );
        let stopped = br#"{"state":"stopped","role":"replica"}"#;
        assert_eq!(parse_wal(stopped), Wal::default());
        assert_eq!(parse_wal(br#"{"xlog":{"location":-1}}"#), Wal::default());
        assert_eq!(parse_wal(b""), Wal::default());
    }
}
