//! SQL-probe discovery (`cluster.discovery: sql`): for clusters without Patroni
//! (repmgr, pg_auto_failover, managed by hand) each PostgreSQL server is asked
//! itself which role it holds. One persistent connection per node, logged in as
//! `cluster.probe`, runs one query per round: `pg_is_in_recovery()`, the current WAL
//! position and timeline of a server that is not in recovery, the replayed position
//! of one that is. The answer becomes the same [`Probe`] the Patroni checks produce,
//! so the same rise/fall and split-brain rules apply. Any error drops the connection;
//! the next round opens a new one.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::config::{ClusterConfig, ServerTls, TlsPolicy};
use crate::server::{self, LoginRequest, Row, ServerConnection, ServerError};

use super::health::{Check, Refusal};
use super::probe::{parse_lsn, refuse_lagging, Probe, Wal};

/// `r` is evaluated once (a volatile function keeps the subquery from being
/// inlined), so a promotion during the query cannot mix the two branches, and
/// `pg_walfile_name`, which fails during recovery, only runs on a server that is
/// not in recovery. The first 8 hex digits of a WAL file name are its timeline.
const PROBE_SQL: &str = "SELECT r, \
     CASE WHEN NOT r THEN pg_current_wal_lsn()::text END, \
     CASE WHEN NOT r THEN substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END, \
     CASE WHEN r THEN pg_last_wal_replay_lsn()::text END \
     FROM (SELECT pg_is_in_recovery() AS r) AS probe";

/// Shown in `pg_stat_activity.application_name` for the probe's sessions.
const APPLICATION_NAME: &str = "switchyard-probe";

/// A node as the probe connects to it.
struct Target {
    name: String,
    address: String,
    tls: Arc<TlsPolicy>,
}

struct Login {
    user: String,
    password: String,
    database: String,
    params: Vec<(String, String)>,
    require_auth: crate::auth::require::RequireAuth,
}

/// The persistent probe connections of one cluster, aligned with its nodes by index.
pub struct SqlProber {
    targets: Arc<[Target]>,
    /// `None` only when `cluster.probe` is missing, which validation refuses.
    login: Option<Arc<Login>>,
    connections: Vec<Option<ServerConnection>>,
}

impl SqlProber {
    /// `tls` is `server.tls` with the nodes' overrides.
    pub fn new(cluster: &ClusterConfig, tls: &ServerTls) -> SqlProber {
        let targets: Arc<[Target]> = cluster
            .nodes
            .iter()
            .map(|n| Target {
                name: n.name.clone(),
                address: n.pg_address(),
                tls: Arc::clone(tls.for_address(&n.pg_address())),
            })
            .collect();
        let login = cluster.probe.as_ref().map(|probe| {
            Arc::new(Login {
                user: probe.user.clone(),
                password: probe.password.expose().to_string(),
                database: probe.database.clone(),
                params: vec![("application_name".into(), APPLICATION_NAME.into())],
                require_auth: probe.require_auth,
            })
        });
        SqlProber {
            connections: targets.iter().map(|_| None).collect(),
            targets,
            login,
        }
    }

    /// Probes every node at once; each within `timeout` (connect included). With
    /// `max_lag`, a replica further behind than that is refused the replica role.
    /// One probe per node, in node order, with how long each took.
    pub async fn round(
        &mut self,
        timeout: Duration,
        max_lag: Option<u64>,
    ) -> (Vec<Probe>, Vec<Duration>) {
        let Some(login) = self.login.clone() else {
            let probes = self
                .targets
                .iter()
                .map(|_| Probe::failed("cluster.probe is not configured"))
                .collect();
            return (probes, vec![Duration::ZERO; self.targets.len()]);
        };
        let mut set = JoinSet::new();
        for (i, connection) in self.connections.iter_mut().enumerate() {
            let mut connection = connection.take();
            let targets = Arc::clone(&self.targets);
            let login = Arc::clone(&login);
            set.spawn(async move {
                let started = std::time::Instant::now();
                let probe = probe_node(&mut connection, &targets[i], &login, timeout).await;
                (i, connection, probe, started.elapsed())
            });
        }
        let mut probes: Vec<Option<Probe>> = vec![None; self.targets.len()];
        let mut took = vec![Duration::ZERO; self.targets.len()];
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, connection, probe, elapsed)) => {
                    self.connections[i] = connection;
                    probes[i] = Some(probe);
                    took[i] = elapsed;
                }
                Err(e) => tracing::error!(error = %e, "SQL probe task failed"),
            }
        }
        let mut probes: Vec<Probe> = probes
            .into_iter()
            .map(|p| p.unwrap_or_else(|| Probe::failed("probe task failed")))
            .collect();
        if let Some(max) = max_lag {
            refuse_lagging(&mut probes, max);
        }
        (probes, took)
    }
}

impl Drop for SqlProber {
    fn drop(&mut self) {
        // So the servers log a clean disconnect rather than an unexpected EOF.
        for connection in self.connections.iter_mut().flatten() {
            connection.say_goodbye();
        }
    }
}

/// One node's probe. Leaves `connection` open for the next round only when the
/// exchange went well.
async fn probe_node(
    connection: &mut Option<ServerConnection>,
    target: &Target,
    login: &Login,
    timeout: Duration,
) -> Probe {
    let outcome = tokio::time::timeout(timeout, query(connection, target, login, timeout)).await;
    let probe = match outcome {
        Ok(Ok(Some(row))) => probe_from_row(&row),
        Ok(Ok(None)) => Probe::failed("SQL probe: the query returned no row"),
        Ok(Err(e)) => probe_from_error(&e, &login.user),
        Err(_) => Probe::failed(format!("SQL probe: no answer within {timeout:?}")),
    };
    if matches!(
        probe.primary,
        Check::Failed(_) | Check::No(Refusal::Unavailable(_))
    ) {
        *connection = None;
    }
    probe
}

async fn query(
    connection: &mut Option<ServerConnection>,
    target: &Target,
    login: &Login,
    timeout: Duration,
) -> Result<Option<Row>, ServerError> {
    // A connection the server closed while idle (restart, idle_session_timeout)
    // is replaced now rather than counted as a failed check.
    if connection.as_mut().is_some_and(|c| !c.looks_healthy()) {
        *connection = None;
    }
    let open = match connection {
        Some(open) => open,
        None => {
            let request = LoginRequest {
                user: &login.user,
                credential: crate::auth::stored::Credential::Password(&login.password),
                database: &login.database,
                params: &login.params,
                require_auth: login.require_auth,
            };
            let fresh = server::connect(
                &target.name,
                &target.address,
                &request,
                timeout,
                &target.tls,
            )
            .await?;
            connection.insert(fresh)
        }
    };
    open.query_row(PROBE_SQL, timeout).await
}

/// Maps the probe query's row onto the two role checks.
pub fn probe_from_row(row: &[Option<String>]) -> Probe {
    let column = |i: usize| row.get(i).and_then(|c| c.as_deref());
    match column(0) {
        Some("f") => Probe {
            primary: Check::Yes,
            replica: Check::No(Refusal::NotInRecovery),
            timeline: column(2)
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .map(u64::from),
            wal: Wal {
                current: column(1).and_then(parse_lsn),
                replayed: None,
            },
        },
        Some("t") => Probe {
            primary: Check::No(Refusal::InRecovery),
            replica: Check::Yes,
            timeline: None,
            wal: Wal {
                current: None,
                replayed: column(3).and_then(parse_lsn),
            },
        },
        other => Probe::failed(format!(
            "SQL probe: unexpected pg_is_in_recovery() value {other:?}"
        )),
    }
}

/// A server that answers it is starting up or shutting down is an explicit "no"
/// for both roles (it cannot serve either now); anything else is a failed check.
pub fn probe_from_error(error: &ServerError, user: &str) -> Probe {
    if let ServerError::Rejected { fields, .. } = error {
        if matches!(fields.code.as_str(), "57P01" | "57P02" | "57P03") {
            let refusal = Refusal::Unavailable(format!(
                "SQL probe: server says {} ({})",
                fields.message, fields.code
            ));
            return Probe {
                primary: Check::No(refusal.clone()),
                replica: Check::No(refusal),
                timeline: None,
                wal: Wal::default(),
            };
        }
    }
    match error {
        // Login problems are about the probe's own credentials: name the role.
        ServerError::Rejected { .. } | ServerError::Auth(_) => {
            Probe::failed(format!("SQL probe as {user:?}: {error}"))
        }
        _ => Probe::failed(format!("SQL probe: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backend::ErrorFields;

    fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(str::to_string)).collect()
    }

    #[test]
    fn a_server_not_in_recovery_is_a_primary_with_its_timeline() {
        let probe = probe_from_row(&row(&[
            Some("f"),
            Some("0/3000148"),
            Some("0000000A"),
            None,
        ]));
        assert_eq!(probe.primary, Check::Yes);
        assert_eq!(probe.replica, Check::No(Refusal::NotInRecovery));
        assert_eq!(probe.timeline, Some(10));
        assert_eq!(probe.wal.current, Some(0x300_0148));
        assert_eq!(probe.error(), None);
    }

    #[test]
    fn a_server_in_recovery_is_a_replica_with_its_replay_position() {
        let probe = probe_from_row(&row(&[Some("t"), None, None, Some("1/10")]));
        assert_eq!(probe.primary, Check::No(Refusal::InRecovery));
        assert_eq!(probe.replica, Check::Yes);
        assert_eq!(probe.timeline, None);
        assert_eq!(probe.wal.replayed, Some((1 << 32) + 16));
        // A replica that has replayed nothing yet still is one.
        let fresh = probe_from_row(&row(&[Some("t"), None, None, None]));
        assert_eq!(fresh.replica, Check::Yes);
        assert_eq!(fresh.wal.replayed, None);
    }

    #[test]
    fn odd_answers_and_errors_fail_both_roles() {
        for bad in [row(&[]), row(&[None]), row(&[Some("maybe")])] {
            let probe = probe_from_row(&bad);
            assert!(matches!(probe.primary, Check::Failed(_)), "{bad:?}");
            assert!(matches!(probe.replica, Check::Failed(_)), "{bad:?}");
        }
        let refused = ServerError::Rejected {
            fields: ErrorFields {
                severity: "FATAL".into(),
                code: "28P01".into(),
                message: "password authentication failed for user \"probe\"".into(),
            },
            raw: Default::default(),
        };
        let probe = probe_from_error(&refused, "probe");
        let error = probe.error().unwrap_or_default();
        assert!(error.contains("password authentication failed"), "{error}");
        assert!(matches!(probe.replica, Check::Failed(_)));
    }

    #[test]
    fn a_server_shutting_down_is_an_explicit_no() {
        let shutting_down = ServerError::Rejected {
            fields: ErrorFields {
                severity: "FATAL".into(),
                code: "57P03".into(),
                message: "the database system is shutting down".into(),
            },
            raw: Default::default(),
        };
        let probe = probe_from_error(&shutting_down, "probe");
        assert!(matches!(probe.primary, Check::No(Refusal::Unavailable(_))));
        assert!(matches!(probe.replica, Check::No(Refusal::Unavailable(_))));
        assert!(probe
            .error()
            .unwrap_or_default()
            .contains("shutting down (57P03)"));
    }

    #[test]
    fn replicas_beyond_the_limit_lose_the_replica_role() {
        let mut round = vec![
            probe_from_row(&row(&[Some("f"), Some("0/A000"), Some("00000001"), None])),
            probe_from_row(&row(&[Some("t"), None, None, Some("0/9000")])),
            probe_from_row(&row(&[Some("t"), None, None, Some("0/1000")])),
        ];
        refuse_lagging(&mut round, 0x1000);
        assert_eq!(round[0].primary, Check::Yes);
        assert_eq!(
            round[1].replica,
            Check::Yes,
            "0x1000 behind is within the limit"
        );
        assert_eq!(
            round[2].replica,
            Check::No(Refusal::Lagging {
                lag_bytes: 0x9000,
                max_bytes: 0x1000
            })
        );
    }
}
