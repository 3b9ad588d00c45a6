//! The `peer_id` / `peers:` part of the config: the other Switchyard instances
//! (typically the other half of a Keepalived pair) that cancel requests are passed
//! to when a client's CancelRequest reaches the instance that does not own the
//! session. The key encoding that makes this possible lives in the `cancel` module.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};

/// Largest `peer_id`: cancel keys carry it in 7 bits (see the `cancel` module).
pub const MAX_PEER_ID: u32 = 127;

/// Another Switchyard instance that accepts cancel requests.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// That instance's own `peer_id`.
    pub id: u32,
    /// `host:port` of any of its client listeners (they all take CancelRequests).
    pub address: String,
}

pub(super) fn validate_peers(config: &Config) -> Result<(), ConfigError> {
    if config.peer_id > MAX_PEER_ID {
        return Err(ConfigError::invalid(
            "peer_id",
            format!(
                "must be between 0 and {MAX_PEER_ID} (it is carried in 7 bits of each cancel key)"
            ),
        ));
    }
    if !config.peers.is_empty() && config.peer_id == 0 {
        return Err(ConfigError::invalid(
            "peer_id",
            "peers are configured, so this instance needs its own non-zero peer_id",
        ));
    }
    let mut ids = HashSet::new();
    for (i, peer) in config.peers.iter().enumerate() {
        let key = |field: &str| format!("peers[{i}].{field}");
        if peer.id == 0 || peer.id > MAX_PEER_ID {
            return Err(ConfigError::invalid(
                key("id"),
                format!("must be between 1 and {MAX_PEER_ID}"),
            ));
        }
        if peer.id == config.peer_id {
            return Err(ConfigError::invalid(
                key("id"),
                format!("{} is this instance's own peer_id", peer.id),
            ));
        }
        if !ids.insert(peer.id) {
            return Err(ConfigError::invalid(
                key("id"),
                format!("duplicate peer id {}", peer.id),
            ));
        }
        if super::api::split_host_port(&peer.address).is_none() {
            return Err(ConfigError::invalid(
                key("address"),
                format!(
                    "{:?} is not host:port (a client listener of that instance, like 10.0.0.12:5000)",
                    peer.address
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
listeners:
  - { name: rw, listen: "127.0.0.1:5000", route: primary }
cluster:
  nodes:
    - { name: node1, host: 10.0.0.3, api: "http://10.0.0.3:8008" }
users:
  - { name: app, password: pw }
"#;

    fn load(extra: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str_with_env(&format!("{BASE}{extra}"), &|_| None)
    }

    #[test]
    fn peering_is_off_by_default() {
        let config = load("").expect("valid");
        assert_eq!(config.peer_id, 0);
        assert!(config.peers.is_empty());
    }

    #[test]
    fn a_pair_loads() {
        let config = load(
            "peer_id: 1\npeers:\n  - { id: 2, address: \"10.0.0.12:5000\" }\n  - { id: 3, address: \"proxy-c.internal:5000\" }\n",
        )
        .expect("valid");
        assert_eq!(config.peer_id, 1);
        assert_eq!(config.peers[1].address, "proxy-c.internal:5000");
        let effective = config.to_effective_yaml();
        assert!(effective.contains("peer_id: 1"), "{effective}");
    }

    #[test]
    fn bad_peering_is_named() {
        let cases = [
            ("peer_id: 128\n", "peer_id: must be between 0 and 127"),
            (
                "peers: [{ id: 2, address: \"10.0.0.12:5000\" }]\n",
                "peer_id: peers are configured",
            ),
            (
                "peer_id: 1\npeers: [{ id: 1, address: \"10.0.0.12:5000\" }]\n",
                "peers[0].id: 1 is this instance's own peer_id",
            ),
            (
                "peer_id: 1\npeers: [{ id: 0, address: \"10.0.0.12:5000\" }]\n",
                "peers[0].id: must be between 1 and 127",
            ),
            (
                "peer_id: 1\npeers: [{ id: 2, address: \"a:1\" }, { id: 2, address: \"b:1\" }]\n",
                "peers[1].id: duplicate peer id 2",
            ),
            (
                "peer_id: 1\npeers: [{ id: 2, address: \"10.0.0.12\" }]\n",
                "peers[0].address",
            ),
            (
                "peer_id: 1\npeers: [{ id: 2, address: \"10.0.0.12:0\" }]\n",
                "peers[0].address",
            ),
            (
                "peer_id: 1\npeers: [{ id: 2, addr: \"10.0.0.12:5000\" }]\n",
                "unknown field `addr`",
            ),
        ];
        for (extra, expected) in cases {
            let err = load(extra).expect_err(extra);
            assert!(err.to_string().contains(expected), "{extra}: {err}");
        }
    }
}
