//! `switchyard-demo --drill`: a short mixed workload through the proxy (writers doing
//! autocommit INSERTs through `rw`, readers doing SELECTs through `ro`), with a
//! failover halfway done the way an operator or repmgr would do it: stop the primary
//! hard, promote the replica that received the most WAL, repoint the other one. The
//! clients are ordinary PostgreSQL clients of the proxy, built on our own
//! [`switchyard::server::connect`]; what they saw goes to [`super::report`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::auth::stored::Credential;
use switchyard::config::TlsPolicy;

use tokio_util::sync::CancellationToken;

use switchyard::proxy::RunningProxy;
use switchyard::server::{self, LoginRequest, ServerConnection};
use switchyard::topology::TopologyHandle;

use super::cluster::{Cluster, DEMO_DB, DEMO_PASSWORD, DEMO_USER};
use super::report::{self, Ack, ClientLog, FailoverLog, Outcome, Role};
use super::table::{routes_line, ListenerView, View};
use super::DemoError;

const WRITERS: usize = 3;
const READERS: usize = 3;
const DURATION: Duration = Duration::from_secs(12);
const FAILOVER_AFTER: Duration = Duration::from_secs(5);
/// Between statements, so six clients leave the two cores to the servers.
const PACE: Duration = Duration::from_millis(20);
/// After a failed attempt, before the next one.
const RETRY: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than the proxy's failover hold, so a held statement is not given up on.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(20);
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(30);

fn stamp(start: Instant) -> String {
    format!("+{:.2}s", start.elapsed().as_secs_f64())
}

fn event(start: Instant, text: &str) {
    println!("{:>8}  {text}", stamp(start));
}

fn format_lsn(position: u64) -> String {
    format!("{:X}/{:X}", position >> 32, position & 0xFFFF_FFFF)
}

/// Runs the drill against a built cluster behind a running proxy. Ok(true) when
/// the verdict is a pass.
pub async fn run(
    cluster: &Cluster,
    proxy: &RunningProxy,
    listeners: &[ListenerView],
) -> Result<bool, DemoError> {
    let (Some(rw), Some(ro)) = (proxy.listener_addr("rw"), proxy.listener_addr("ro")) else {
        return Err(DemoError::Setup("the proxy has no rw/ro listener".into()));
    };
    cluster
        .execute(
            0,
            DEMO_DB,
            &format!(
                "CREATE TABLE drill_writes (id bigserial PRIMARY KEY, writer int NOT NULL, \
                 at timestamptz NOT NULL DEFAULT now()); \
                 ALTER TABLE drill_writes OWNER TO {DEMO_USER}"
            ),
        )
        .await?;
    let view = View::of(&proxy.context.topology().load());
    let replicas_before = view.replica_names();

    println!();
    println!(
        "Drill: {WRITERS} writers (INSERT ... RETURNING inet_server_port() through rw) and \
         {READERS} readers (through ro) for {} s; the primary fails after {} s.",
        DURATION.as_secs(),
        FAILOVER_AFTER.as_secs()
    );
    let start = Instant::now();
    let until = start + DURATION;
    let stop_clients = CancellationToken::new();
    let mut clients = Vec::new();
    for (role, addr, count) in [(Role::Writer, rw, WRITERS), (Role::Reader, ro, READERS)] {
        for index in 1..=count {
            let cancel = stop_clients.clone();
            let task = tokio::spawn(client(addr, role, index, start, until, cancel));
            clients.push((role, index, task));
        }
    }
    let watching = CancellationToken::new();
    let watcher = tokio::spawn(watch_routes(
        Arc::clone(proxy.context.topology()),
        listeners.to_vec(),
        start,
        watching.clone(),
    ));
    event(
        start,
        &format!("proxy routes: {}", routes_line(&view, listeners)),
    );

    let failover = failover(cluster, start).await;
    if failover.is_err() {
        stop_clients.cancel();
    }
    let mut logs = Vec::new();
    for (role, index, task) in clients {
        match task.await {
            Ok(log) => logs.push(log),
            Err(e) => {
                let mut log = ClientLog::new(role, index);
                log.failures.push(format!("client task failed: {e}"));
                logs.push(log);
            }
        }
    }
    let duration = start.elapsed();
    event(start, "workload finished");
    let (mut failover, new_primary) = failover?;

    let names: Vec<String> = failover.followers.iter().map(|(n, _)| n.clone()).collect();
    let following = cluster
        .wait_streaming(new_primary, &names, FOLLOW_TIMEOUT)
        .await;
    for follower in &mut failover.followers {
        follower.1 = following;
    }
    if following {
        event(
            start,
            &format!(
                "failover completed: {} is the primary, {} streaming from it",
                failover.new_primary,
                names.join(", ")
            ),
        );
    }
    watching.cancel();
    let _ = watcher.await;

    let lost_writes = lost_writes(cluster, new_primary, &logs).await;
    let nodes: Vec<(String, u16)> = cluster
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.port))
        .collect();
    let report = report::build(&Outcome {
        duration,
        logs: &logs,
        failover: &failover,
        nodes: &nodes,
        replicas_before: &replicas_before,
        lost_writes,
    });
    println!();
    print!("{}", report.text);
    Ok(report.passed)
}

/// The operator's part. Returns the timeline and the index of the new primary.
async fn failover(cluster: &Cluster, start: Instant) -> Result<(FailoverLog, usize), DemoError> {
    tokio::time::sleep_until((start + FAILOVER_AFTER).into()).await;
    let old = &cluster.nodes[0];
    event(
        start,
        &format!(
            "{} (the primary) goes down: pg_ctl stop -m immediate",
            old.name
        ),
    );
    let stop_started = start.elapsed();
    cluster.stop_immediate(0).await?;

    // As repmgr does: promote the replica that has received the most WAL, so the
    // others can follow it without a rewind.
    let mut best: Option<(usize, Option<u64>)> = None;
    for i in 1..cluster.nodes.len() {
        let received = cluster.received_wal(i).await;
        if best.is_none_or(|(_, most)| received > most) {
            best = Some((i, received));
        }
    }
    let Some((new, received)) = best else {
        return Err(DemoError::Setup("no replica to promote".into()));
    };
    let new_name = cluster.nodes[new].name.clone();
    let received = received.map_or("unknown".to_string(), format_lsn);
    event(
        start,
        &format!("promoting {new_name} (received WAL up to {received}): pg_ctl promote"),
    );
    cluster.promote(new).await?;
    let promoted = start.elapsed();
    event(
        start,
        &format!("{new_name} left recovery: it is a primary now"),
    );

    let mut followers = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate().skip(1) {
        if i == new {
            continue;
        }
        event(
            start,
            &format!(
                "repointing {} to {new_name}: ALTER SYSTEM SET primary_conninfo, \
                 pg_reload_conf()",
                node.name
            ),
        );
        cluster.follow(i, new).await?;
        followers.push((node.name.clone(), false));
    }
    let log = FailoverLog {
        old_primary: old.name.clone(),
        new_primary: new_name,
        stop_started,
        promoted,
        followers,
    };
    Ok((log, new))
}

/// One client: a connection through `addr`, a statement every `PACE` until `until`,
/// a new connection after any failure.
async fn client(
    addr: SocketAddr,
    role: Role,
    index: usize,
    start: Instant,
    until: Instant,
    cancel: CancellationToken,
) -> ClientLog {
    let sql = match role {
        Role::Writer => format!(
            "INSERT INTO drill_writes (writer) VALUES ({index}) RETURNING inet_server_port(), id"
        ),
        Role::Reader => "SELECT inet_server_port()".to_string(),
    };
    let kind = if role == Role::Writer {
        "writer"
    } else {
        "reader"
    };
    let params = vec![(
        "application_name".to_string(),
        format!("switchyard-drill-{kind}-{index}"),
    )];
    let address = addr.to_string();
    let mut log = ClientLog::new(role, index);
    let mut connection: Option<ServerConnection> = None;
    while Instant::now() < until && !cancel.is_cancelled() {
        let open = match connection {
            Some(ref mut open) => open,
            None => {
                let login = LoginRequest {
                    user: DEMO_USER,
                    credential: Credential::Password(DEMO_PASSWORD),
                    database: DEMO_DB,
                    params: &params,
                    require_auth: Default::default(),
                };
                match server::connect(
                    kind,
                    &address,
                    &login,
                    CONNECT_TIMEOUT,
                    &TlsPolicy::plaintext(),
                )
                .await
                {
                    Ok(fresh) => connection.insert(fresh),
                    Err(e) => {
                        log.failures.push(format!("login: {e}"));
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
        };
        match open.query_row(&sql, STATEMENT_TIMEOUT).await {
            Ok(Some(row)) => {
                let column = |i: usize| row.get(i).and_then(|c| c.as_deref());
                match column(0).and_then(|p| p.parse::<u16>().ok()) {
                    Some(port) => {
                        log.acks.push(Ack {
                            at: start.elapsed(),
                            port,
                        });
                        if let Some(id) = column(1).and_then(|id| id.parse().ok()) {
                            log.ids.push(id);
                        }
                    }
                    None => log.failures.push(format!("unexpected row {row:?}")),
                }
            }
            Ok(None) => log.failures.push("no row returned".into()),
            Err(e) => {
                log.failures.push(e.to_string());
                connection = None;
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        tokio::time::sleep(PACE).await;
    }
    if let Some(mut open) = connection {
        open.say_goodbye();
    }
    log
}

/// Prints each change of where the listeners send clients.
async fn watch_routes(
    topology: Arc<TopologyHandle>,
    listeners: Vec<ListenerView>,
    start: Instant,
    done: CancellationToken,
) {
    let mut changes = topology.subscribe();
    let mut last = routes_line(&View::of(&topology.load()), &listeners);
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = done.cancelled() => return,
        }
        let line = routes_line(&View::of(&topology.load()), &listeners);
        if line != last {
            event(start, &format!("proxy routes: {line}"));
            last = line;
        }
    }
}

/// How many acknowledged INSERTs are missing on the new primary (None if it
/// cannot be checked).
async fn lost_writes(cluster: &Cluster, new_primary: usize, logs: &[ClientLog]) -> Option<u64> {
    let ids: Vec<String> = logs
        .iter()
        .flat_map(|log| log.ids.iter().map(i64::to_string))
        .collect();
    if ids.is_empty() {
        return Some(0);
    }
    let sql = format!(
        "SELECT count(*) FROM drill_writes WHERE id = ANY('{{{}}}'::bigint[])",
        ids.join(",")
    );
    let row = cluster.query(new_primary, DEMO_DB, &sql).await.ok()??;
    let found: u64 = row.first()?.as_deref()?.parse().ok()?;
    Some((ids.len() as u64).saturating_sub(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_print_as_postgres_does() {
        assert_eq!(format_lsn(0x3_0000_0148), "3/148");
        assert_eq!(format_lsn(0), "0/0");
    }
}
