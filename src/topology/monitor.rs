//! The discovery loop: every `health.interval` it probes every node at once (through
//! Patroni or the SQL probe, per `cluster.discovery`), folds the answers into
//! rise/fall health, resolves the primary, publishes a new snapshot and logs one line
//! per routing change.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::{ApiEndpoint, ClusterConfig, Discovery, HealthConfig, ServerTls};

use super::admission::MemberAdmission;
use super::health::Check;
use super::patroni;
use super::probe::{refuse_lagging, replica_lags, Probe};
use super::snapshot::{resolve_primary, NodeState, PrimaryState, RoleChange, Topology};
use super::sql_probe::SqlProber;
use super::TopologyHandle;
use super::{members, reconfigure};

/// Initial node states (nothing known yet) for a cluster config. With API seeds
/// only, there are none until `/cluster` names the members.
pub fn initial_nodes(cluster: &ClusterConfig) -> Vec<NodeState> {
    if cluster.members_from_patroni() {
        return Vec::new();
    }
    cluster
        .nodes
        .iter()
        .map(|n| NodeState::unknown(n.name.clone(), n.pg_address(), n.api.clone()))
        .collect()
}

/// Asks every node for its role, one probe per node, in node order.
enum Prober {
    /// Patroni REST APIs (`None` for a node without `api`, which validation refuses),
    /// with `cluster.api_tls` for the https ones.
    Patroni(Vec<Option<ApiEndpoint>>, Option<ApiTlsConfig>),
    Sql(SqlProber),
}

/// A built `cluster.api_tls`, as the HTTP client takes it.
type ApiTlsConfig = Arc<rustls::ClientConfig>;

impl Prober {
    /// Patroni probes for the nodes of a learned member list.
    fn for_nodes(nodes: &[NodeState], tls: Option<ApiTlsConfig>) -> Prober {
        Prober::Patroni(
            nodes
                .iter()
                .map(|n| {
                    n.api
                        .as_deref()
                        .and_then(|url| ApiEndpoint::parse(url).ok())
                })
                .collect(),
            tls,
        )
    }

    fn new(cluster: &ClusterConfig, server_tls: &ServerTls) -> Prober {
        match cluster.discovery {
            Discovery::Patroni => Prober::Patroni(
                cluster
                    .nodes
                    .iter()
                    .map(|n| n.api_endpoint.clone())
                    .collect(),
                api_tls(cluster),
            ),
            Discovery::Sql => Prober::Sql(SqlProber::new(cluster, server_tls)),
        }
    }

    /// One probe per node, in node order, with how long each took.
    async fn round(
        &mut self,
        timeout: Duration,
        max_lag: Option<u64>,
    ) -> (Vec<Probe>, Vec<Duration>) {
        match self {
            Prober::Patroni(endpoints, tls) => {
                let (mut probes, took) = probe_patroni(endpoints, tls, timeout, max_lag).await;
                if let Some(max) = max_lag {
                    refuse_lagging(&mut probes, max);
                }
                (probes, took)
            }
            Prober::Sql(prober) => prober.round(timeout, max_lag).await,
        }
    }
}

fn api_tls(cluster: &ClusterConfig) -> Option<ApiTlsConfig> {
    cluster
        .api_tls_loaded
        .as_ref()
        .map(|t| Arc::clone(&t.connector))
}

/// Probes all nodes until `shutdown`. The first round runs at once. `server_tls` is
/// how the SQL probe connects (`server.tls`).
pub async fn run(
    cluster: ClusterConfig,
    server_tls: ServerTls,
    handle: Arc<TopologyHandle>,
    shutdown: CancellationToken,
) {
    let mut membership = Membership::new(&cluster);
    // With learned members, probes follow the published node list (which a reload
    // carries over), not the seeds.
    let mut prober = match membership {
        Some(_) => Prober::for_nodes(&handle.load().nodes, api_tls(&cluster)),
        None => Prober::new(&cluster, &server_tls),
    };
    let mut ticker = tokio::time::interval(cluster.health.interval.0);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let max_lag = cluster.max_replica_lag.0.map(|size| size.0);
    let mut primary_lost_at: Option<SystemTime> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if let Some(membership) = membership.as_mut() {
            let updated = tokio::select! {
                updated = membership.refresh(&handle, cluster.health.timeout.0) => updated,
                _ = shutdown.cancelled() => return,
            };
            if updated {
                prober = Prober::for_nodes(&handle.load().nodes, api_tls(&cluster));
            }
        }
        let (probes, took) = tokio::select! {
            round = prober.round(cluster.health.timeout.0, max_lag) => round,
            _ = shutdown.cancelled() => return,
        };
        let previous = handle.load();
        for ((node, probe), took) in previous.nodes.iter().zip(&probes).zip(took) {
            crate::metrics::record_health_check(&node.name, took, probe.error().is_some());
        }
        let now = SystemTime::now();
        let next = apply_round(&previous, &probes, &cluster.health, now);
        log_changes(&previous, &next, primary_lost_at);
        let new_primary = next.primary_node().map(|i| &next.nodes[i].name);
        // The first primary found at startup is not a change.
        let known_before = previous.primary != PrimaryState::Unknown;
        if known_before
            && new_primary.is_some()
            && previous.primary_node().map(|i| &previous.nodes[i].name) != new_primary
        {
            let without_primary = primary_lost_at.and_then(|lost| now.duration_since(lost).ok());
            crate::metrics::record_primary_change(without_primary);
        }
        match (previous.primary_node(), next.primary_node()) {
            (Some(_), None) => primary_lost_at = Some(now),
            (_, Some(_)) => primary_lost_at = None,
            _ => {}
        }
        handle.publish(next);
    }
}

/// Membership learned from Patroni's `/cluster` (API seeds configured).
struct Membership {
    seeds: Vec<ApiEndpoint>,
    tls: Option<ApiTlsConfig>,
    /// Which seed to ask first: the one that answered last time.
    next_seed: usize,
    failing: bool,
    admission: MemberAdmission,
}

impl Membership {
    fn new(cluster: &ClusterConfig) -> Option<Membership> {
        cluster.members_from_patroni().then(|| Membership {
            seeds: cluster
                .nodes
                .iter()
                .filter_map(|n| n.api_endpoint.clone())
                .collect(),
            tls: api_tls(cluster),
            next_seed: 0,
            failing: false,
            admission: MemberAdmission::new(&cluster.allowed_hosts),
        })
    }

    /// Asks `/cluster` and, when the member list changed, publishes a topology with
    /// the new node list (known nodes keep their state). Returns whether it changed.
    /// When no seed answers, the last known members stay.
    async fn refresh(&mut self, handle: &TopologyHandle, timeout: Duration) -> bool {
        let members =
            match members::fetch(&self.seeds, self.next_seed, timeout, self.tls.as_ref()).await {
                Ok(members) => members,
                Err(e) => {
                    if !self.failing {
                        tracing::warn!(error = %e, "membership: keeping the last known members");
                    }
                    self.failing = true;
                    self.next_seed = (self.next_seed + 1) % self.seeds.len().max(1);
                    return false;
                }
            };
        if self.failing {
            tracing::info!("membership: /cluster answers again");
            self.failing = false;
        }
        let (members, ignored) = self.admission.admit(members, std::time::Instant::now());
        handle.set_ignored_members(ignored);
        let fresh = members::nodes_from(&members);
        let current = handle.load();
        if members::same_nodes(&current.nodes, &fresh) {
            return false;
        }
        let names =
            |nodes: &[NodeState]| -> Vec<String> { nodes.iter().map(|n| n.name.clone()).collect() };
        let (before, after) = (names(&current.nodes), names(&fresh));
        let joined: Vec<&String> = after.iter().filter(|n| !before.contains(n)).collect();
        let left: Vec<&String> = before.iter().filter(|n| !after.contains(n)).collect();
        tracing::info!(
            joined = ?joined,
            left = ?left,
            leader = members
                .iter()
                .find(|m| m.role == members::MemberRole::Leader)
                .map_or("none", |m| m.name.as_str()),
            "membership: members changed (from Patroni /cluster)"
        );
        handle.replace(reconfigure::carry_over(&current, fresh, SystemTime::now()));
        true
    }
}

async fn probe_patroni(
    endpoints: &[Option<ApiEndpoint>],
    tls: &Option<ApiTlsConfig>,
    timeout: Duration,
    max_lag: Option<u64>,
) -> (Vec<Probe>, Vec<Duration>) {
    let mut set = JoinSet::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let Some(endpoint) = endpoint.clone() else {
            continue;
        };
        let tls = tls.clone();
        set.spawn(async move {
            let started = std::time::Instant::now();
            let probe = patroni::probe(&endpoint, tls.as_ref(), timeout, max_lag).await;
            (i, probe, started.elapsed())
        });
    }
    let mut probes: Vec<Option<Probe>> = vec![None; endpoints.len()];
    let mut took = vec![Duration::ZERO; endpoints.len()];
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, probe, elapsed)) => {
                probes[i] = Some(probe);
                took[i] = elapsed;
            }
            Err(e) => tracing::error!(error = %e, "health probe task failed"),
        }
    }
    let probes = probes
        .into_iter()
        .zip(endpoints)
        .map(|(probe, endpoint)| match (probe, endpoint) {
            (Some(probe), _) => probe,
            (None, None) => Probe::failed("no Patroni API configured for this node"),
            (None, Some(_)) => Probe::failed("probe task failed"),
        })
        .collect();
    (probes, took)
}

/// Folds one round of probes into the previous snapshot (pure, for tests).
pub fn apply_round(
    previous: &Topology,
    probes: &[Probe],
    health: &HealthConfig,
    now: SystemTime,
) -> Topology {
    let mut nodes = previous.nodes.clone();
    // When no node answers at all, the likely fault is between the proxy and the
    // nodes (or, with Patroni, in the DCS layer), not in every database: replicas
    // keep serving the reads they served, while the primary role still falls as
    // usual, since writes must never rest on an assumption.
    let no_api_answers = !probes.is_empty()
        && probes.iter().all(|p| {
            matches!(
                (&p.primary, &p.replica),
                (Check::Failed(_), Check::Failed(_))
            )
        });
    let lags = replica_lags(probes);
    for ((node, probe), lag) in nodes.iter_mut().zip(probes).zip(lags) {
        let role_before = node.role();
        node.lag_bytes = lag;
        node.primary
            .observe(&probe.primary, health.rise, health.fall);
        if !no_api_answers {
            node.replica
                .observe(&probe.replica, health.rise, health.fall);
        }
        if probe.timeline.is_some() {
            node.timeline = probe.timeline;
        }
        node.last_check = Some(now);
        node.last_error = probe.error();
        if node.role() != role_before && node.last_check.is_some() {
            node.history.record(RoleChange {
                at: Some(now),
                from: role_before,
                to: node.role(),
                reason: node.last_error.clone(),
            });
        }
    }
    let primary = resolve_primary(&nodes);
    let mut next = Topology {
        generation: previous.generation,
        nodes,
        primary,
        changed_at: previous.changed_at,
    };
    if routing_changed(previous, &next) {
        next.generation += 1;
        next.changed_at = Some(now);
    }
    next
}

fn routing_changed(a: &Topology, b: &Topology) -> bool {
    a.primary != b.primary || !a.replicas().eq(b.replicas())
}

fn log_changes(old: &Topology, new: &Topology, primary_lost_at: Option<SystemTime>) {
    if old.primary != new.primary {
        let name = |t: &Topology| {
            t.primary_node()
                .map(|i| t.nodes[i].name.clone())
                .unwrap_or_else(|| "none".into())
        };
        // How long writes had no primary: from the round that lost it to this one.
        let without_primary_ms = primary_lost_at
            .and_then(|lost| SystemTime::now().duration_since(lost).ok())
            .map_or(0, |d| d.as_millis() as u64);
        match &new.primary {
            PrimaryState::Confirmed { .. } => tracing::warn!(
                old = %name(old),
                new = %name(new),
                without_primary_ms,
                "topology: primary is now {}",
                name(new)
            ),
            PrimaryState::SplitBrain { nodes } => tracing::error!(
                claimants = %nodes.join(","),
                "topology: SPLIT BRAIN, several nodes claim the primary role; writes refused"
            ),
            PrimaryState::None { reason } => {
                tracing::warn!(old = %name(old), "topology: no primary: {reason}")
            }
            PrimaryState::Unknown => {}
        }
    }
    for (before, after) in old.nodes.iter().zip(&new.nodes) {
        if before.role() != after.role() {
            tracing::info!(
                node = %after.name,
                from = before.role(),
                to = after.role(),
                error = after.last_error.as_deref().unwrap_or(""),
                "topology: node role changed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::health::{Check, Refusal};

    fn cluster() -> ClusterConfig {
        let yaml = r#"
nodes:
  - { name: a, host: 127.0.0.1, port: 1, api: "http://127.0.0.1:9" }
  - { name: b, host: 127.0.0.1, port: 2, api: "http://127.0.0.1:9" }
health: { interval: 1s, timeout: 1s, rise: 2, fall: 3 }
"#;
        serde_saphyr::from_str(yaml).expect("cluster yaml")
    }

    fn probe(primary: Check, replica: Check, timeline: Option<u64>) -> Probe {
        Probe {
            primary,
            replica,
            timeline,
            wal: Default::default(),
        }
    }

    /// One round's answers of a healthy cluster: a primary (timeline 1), b replica.
    fn a_primary_b_replica() -> [Probe; 2] {
        [
            probe(Check::Yes, Check::No(Refusal::Http(503)), Some(1)),
            probe(Check::No(Refusal::Http(503)), Check::Yes, None),
        ]
    }

    #[test]
    fn failover_moves_the_primary_after_rise_rounds() {
        let config = cluster();
        let now = SystemTime::now();
        let round = |t: &Topology, probes: &[Probe]| apply_round(t, probes, &config.health, now);
        let mut topology = round(
            &Topology::unknown(initial_nodes(&config)),
            &a_primary_b_replica(),
        );
        assert_eq!(topology.primary, PrimaryState::Confirmed { node: 0 });
        assert_eq!(topology.replicas().collect::<Vec<_>>(), vec![1]);
        let generation = topology.generation;

        // a is demoted and says so; b is promoted: a leaves at once, b needs rise=2.
        let flipped = [
            probe(Check::No(Refusal::Http(503)), Check::Yes, None),
            probe(Check::Yes, Check::No(Refusal::Http(503)), Some(2)),
        ];
        topology = round(&topology, &flipped);
        assert!(matches!(topology.primary, PrimaryState::None { .. }));
        assert!(topology.generation > generation);
        topology = round(&topology, &flipped);
        assert_eq!(topology.primary, PrimaryState::Confirmed { node: 1 });
        let a = &topology.nodes[0].history;
        let changes: Vec<(&str, &str)> = a.iter().map(|c| (c.from, c.to)).collect();
        // a needs `rise` replica answers after its earlier 503s before it serves reads.
        assert_eq!(
            changes,
            [
                ("unavailable", "primary"),
                ("primary", "unavailable"),
                ("unavailable", "replica")
            ]
        );
    }

    #[test]
    fn with_every_api_down_reads_keep_their_replicas_and_writes_lose_the_primary() {
        let config = cluster();
        let now = SystemTime::now();
        let round = |t: &Topology, probes: &[Probe]| apply_round(t, probes, &config.health, now);
        let mut topology = round(
            &Topology::unknown(initial_nodes(&config)),
            &a_primary_b_replica(),
        );
        let down = || {
            probe(
                Check::Failed("refused".into()),
                Check::Failed("refused".into()),
                None,
            )
        };
        for _ in 0..3 {
            topology = round(&topology, &[down(), down()]);
        }
        assert!(
            matches!(topology.primary, PrimaryState::None { .. }),
            "no write route"
        );
        assert_eq!(
            topology.replicas().collect::<Vec<_>>(),
            vec![1],
            "reads continue"
        );

        // One API answering again means the others are judged as usual.
        let mut topology2 = round(
            &topology,
            &[
                down(),
                probe(Check::No(Refusal::Http(503)), Check::Yes, None),
            ],
        );
        assert_eq!(topology2.replicas().collect::<Vec<_>>(), vec![1]);
        for _ in 0..3 {
            topology2 = round(
                &topology2,
                &[
                    probe(Check::Yes, Check::No(Refusal::Http(503)), Some(2)),
                    down(),
                ],
            );
        }
        assert!(
            topology2.replicas().next().is_none(),
            "node b fell after fall failures"
        );
    }

    #[test]
    fn a_dead_old_primary_loses_to_the_higher_timeline() {
        let config = cluster();
        let now = SystemTime::now();
        let round = |t: &Topology, probes: &[Probe]| apply_round(t, probes, &config.health, now);
        let mut topology = round(
            &Topology::unknown(initial_nodes(&config)),
            &a_primary_b_replica(),
        );
        let dead = || Check::Failed("connection refused".into());
        let promoted = [
            probe(dead(), dead(), None),
            probe(Check::Yes, Check::No(Refusal::Http(503)), Some(2)),
        ];
        topology = round(&topology, &promoted);
        // a still counts as primary (1 of 3 failures), b not yet risen.
        assert_eq!(topology.primary, PrimaryState::Confirmed { node: 0 });
        topology = round(&topology, &promoted);
        assert_eq!(topology.primary, PrimaryState::Confirmed { node: 1 });
        assert_eq!(
            topology.nodes[0].last_error.as_deref(),
            Some("connection refused")
        );
    }

    #[test]
    fn a_round_records_each_replicas_lag() {
        let config = cluster();
        let now = SystemTime::now();
        let topology = Topology::unknown(initial_nodes(&config));
        let mut primary = probe(Check::Yes, Check::No(Refusal::Http(503)), Some(1));
        primary.wal.current = Some(5000);
        let mut replica = probe(Check::No(Refusal::Http(503)), Check::Yes, None);
        replica.wal.replayed = Some(4000);
        let topology = apply_round(&topology, &[primary, replica], &config.health, now);
        assert_eq!(topology.nodes[0].lag_bytes, None, "the primary has no lag");
        assert_eq!(topology.nodes[1].lag_bytes, Some(1000));

        let unknown = [
            Probe::failed("down"),
            probe(Check::No(Refusal::Http(503)), Check::Yes, None),
        ];
        let topology = apply_round(&topology, &unknown, &config.health, now);
        assert_eq!(topology.nodes[1].lag_bytes, None, "no primary, no lag");
    }

    #[tokio::test]
    async fn patroni_probes_stay_aligned_with_nodes() {
        let (probes, _) =
            probe_patroni(&[None, None], &None, Duration::from_millis(200), None).await;
        assert_eq!(probes.len(), 2);
        for probe in probes {
            let error = probe.error().unwrap_or_default();
            assert!(error.contains("no Patroni API"), "{error}");
        }
    }
}
