//! Cluster membership from Patroni's `GET /cluster`, for configs that list only API
//! endpoints (seeds): each round asks the seeds in turn until one answers and turns
//! its members (name, host, port, REST API) into the node list, so a member added to
//! the Patroni cluster is routed to without editing Switchyard's config. Roles are
//! still taken from each member's own `/primary` and `/replica`: the `role` field
//! (`leader`/`master` in Patroni 3, `primary` in Patroni 4, `standby_leader`,
//! `replica`, `sync_standby`) is parsed for logs only, never routed on.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ApiEndpoint;
use crate::http_client;

use super::snapshot::NodeState;

/// What a member's `role` says, across Patroni versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    /// Holds the leader key of a regular cluster (Patroni 3 `leader`/`master`,
    /// Patroni 4 `primary`).
    Leader,
    /// The leader of a standby cluster: replicating from elsewhere, not writable.
    StandbyLeader,
    Replica,
    Unknown,
}

impl MemberRole {
    pub fn parse(role: &str) -> MemberRole {
        match role {
            "leader" | "master" | "primary" => MemberRole::Leader,
            "standby_leader" => MemberRole::StandbyLeader,
            "replica" | "sync_standby" | "quorum_standby" => MemberRole::Replica,
            _ => MemberRole::Unknown,
        }
    }
}

/// One member as `/cluster` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Base URL of its REST API (`api_url` without the `/patroni` suffix).
    pub api: Option<String>,
    pub role: MemberRole,
}

#[derive(Deserialize)]
struct ClusterDocument {
    members: Vec<RawMember>,
}

#[derive(Deserialize)]
struct RawMember {
    name: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    api_url: Option<String>,
    #[serde(default)]
    role: Option<String>,
}

/// Parses a `/cluster` document. Members without a host are skipped (Patroni
/// omits it for members it knows nothing about yet).
pub fn parse_cluster(body: &[u8]) -> Result<Vec<Member>, String> {
    let document: ClusterDocument =
        serde_json::from_slice(body).map_err(|e| format!("unexpected /cluster document: {e}"))?;
    let mut members: Vec<Member> = document
        .members
        .into_iter()
        .filter_map(|m| {
            let host = m.host.filter(|h| !h.is_empty())?;
            Some(Member {
                name: m.name,
                host,
                port: m.port.unwrap_or(5432),
                api: m.api_url.map(|url| {
                    url.trim_end_matches('/')
                        .trim_end_matches("/patroni")
                        .to_string()
                }),
                role: MemberRole::parse(m.role.as_deref().unwrap_or("")),
            })
        })
        .collect();
    // A stable order keeps node indexes (and the logs) steady between rounds.
    members.sort_by(|a, b| a.name.cmp(&b.name));
    members.dedup_by(|a, b| a.name == b.name);
    Ok(members)
}

/// Asks the seeds in turn, starting at `start`, until one answers `/cluster`.
/// `tls` is `cluster.api_tls`, used for `https://` seeds.
pub async fn fetch(
    seeds: &[ApiEndpoint],
    start: usize,
    timeout: Duration,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Vec<Member>, String> {
    let mut errors = Vec::new();
    for k in 0..seeds.len() {
        let seed = &seeds[(start + k) % seeds.len()];
        let tls = match super::patroni::tls_for(seed, tls) {
            Ok(tls) => tls,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let answer =
            http_client::get_over(&seed.authority(), &seed.path("/cluster"), timeout, tls).await;
        match answer {
            Ok(response) if response.status == 200 => match parse_cluster(&response.body) {
                Ok(members) if !members.is_empty() => return Ok(members),
                Ok(_) => errors.push(format!("{}: no members", seed.authority())),
                Err(e) => errors.push(format!("{}: {e}", seed.authority())),
            },
            Ok(response) => errors.push(format!(
                "{}: /cluster answered {}",
                seed.authority(),
                response.status
            )),
            Err(e) => errors.push(format!("{}: {e}", seed.authority())),
        }
    }
    Err(format!("no seed answered /cluster ({})", errors.join("; ")))
}

/// Fresh node states for the members, each needing `rise` checks before it is
/// trusted in a role (a node already known keeps its state, see
/// [`super::reconfigure::carry_over`]).
pub fn nodes_from(members: &[Member]) -> Vec<NodeState> {
    members
        .iter()
        .map(|m| {
            let address = crate::config::host_port(&m.host, m.port);
            NodeState::learned(m.name.clone(), address, m.api.clone())
        })
        .collect()
}

/// Whether two node lists name the same nodes at the same places.
pub fn same_nodes(a: &[NodeState], b: &[NodeState]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.name == y.name && x.address == y.address && x.api == y.api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_patroni_3_and_4_documents() {
        let patroni3 = br#"{"members":[
            {"name":"pg2","role":"replica","state":"streaming","api_url":"http://10.0.0.4:8008/patroni","host":"10.0.0.4","port":5432,"timeline":3,"lag":0},
            {"name":"pg1","role":"leader","state":"running","api_url":"http://10.0.0.3:8008/patroni","host":"10.0.0.3","port":5432,"timeline":3},
            {"name":"pg3","role":"sync_standby","state":"streaming","api_url":"http://10.0.0.5:8008/patroni","host":"10.0.0.5","port":6432}
        ],"scope":"demo"}"#;
        let members = parse_cluster(patroni3).expect("parses");
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["pg1", "pg2", "pg3"], "sorted by name");
        assert_eq!(members[0].role, MemberRole::Leader);
        assert_eq!(members[0].api.as_deref(), Some("http://10.0.0.3:8008"));
        assert_eq!(members[2].port, 6432);
        assert_eq!(members[2].role, MemberRole::Replica);

        let patroni4 = br#"{"members":[{"name":"a","role":"primary","host":"h","port":5432,"api_url":"http://h:8008/patroni"}]}"#;
        assert_eq!(
            parse_cluster(patroni4).expect("parses")[0].role,
            MemberRole::Leader
        );
        assert_eq!(MemberRole::parse("master"), MemberRole::Leader);
        assert_eq!(
            MemberRole::parse("standby_leader"),
            MemberRole::StandbyLeader
        );
    }

    #[test]
    fn skips_members_without_a_host_and_refuses_garbage() {
        let partial = br#"{"members":[{"name":"new","role":"replica"},{"name":"ok","host":"h"}]}"#;
        let members = parse_cluster(partial).expect("parses");
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].port, 5432, "default port");
        assert!(parse_cluster(b"<html>").is_err());
        assert!(parse_cluster(br#"{"scope":"x"}"#).is_err());
    }
}
