//! SHOW CLIENTS, CONFIG, MEM, VERSION, STATE and HELP in PgBouncer's shapes, and
//! Switchyard's own SHOW NODES and SHOW ROUTES.

use std::time::SystemTime;

use bytes::BytesMut;
use serde_json::Value;

use super::show_pools::pool_mode_name;
use super::table::{self, timestamp, v, Table};
use crate::config::{Fallback, Route};
use crate::context::ProxyContext;
use crate::control::ClientState;
use crate::protocol::result_set;

pub(super) fn clients(ctx: &ProxyContext) -> Table {
    let mut table = Table::with_extra(table::SOCKETS, table::CLIENTS_EXTRA);
    let now = SystemTime::now();
    for client in ctx.client_registry().all() {
        let state = client.state();
        let waiting = matches!(state, ClientState::Waiting | ClientState::Paused);
        let wait = client
            .request_time()
            .filter(|_| waiting)
            .and_then(|at| now.duration_since(at).ok())
            .map_or(0, |d| d.as_micros() as u64);
        let info = &client.info;
        table.row(vec![
            v("C"),
            v(&info.user),
            v(&info.database),
            v(if waiting { "waiting" } else { "active" }),
            v(info.addr.ip()),
            v(info.addr.port()),
            v(info.local.ip()),
            v(info.local.port()),
            timestamp(client.connected_at),
            timestamp(client.request_time().unwrap_or(client.connected_at)),
            v(wait / 1_000_000),
            v(wait % 1_000_000),
            v(0),
            v(format!("0x{:x}", client.id)),
            v(""),
            v(0),
            v(&info.tls),
            v(&info.application_name),
            v(client.id),
            v(&info.listener),
        ]);
    }
    table
}

/// The effective configuration as dotted keys, secrets redacted.
fn flatten(value: &Value, prefix: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(child, &path, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Null => out.push((prefix.to_string(), String::new())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// Keys a reload does not change (they need a restart).
fn changeable(key: &str) -> bool {
    !(key == "admin.listen" || key.starts_with("log."))
}

pub(super) fn config(ctx: &ProxyContext) -> Table {
    let mut table = Table::new(table::CONFIG);
    let mut flat = Vec::new();
    match serde_json::to_value(&*ctx.config()) {
        Ok(value) => flatten(&value, "", &mut flat),
        Err(e) => tracing::warn!(error = %e, "cannot list the configuration"),
    }
    flat.sort();
    for (key, value) in flat {
        let yes = changeable(&key);
        table.row(vec![
            v(key),
            v(value),
            None,
            v(if yes { "yes" } else { "no" }),
        ]);
    }
    table
}

/// PgBouncer's slab caches do not exist here: the columns, no rows.
pub(super) fn mem() -> Table {
    Table::new(table::MEM)
}

pub(super) fn version() -> Table {
    let mut table = Table::new(table::VERSION);
    table.row(vec![v(version_string())]);
    table
}

/// What SHOW VERSION says: PgBouncer's format first, for tools that parse it.
pub(super) fn version_string() -> String {
    format!(
        "PgBouncer 1.18.0 (Switchyard {} console)",
        env!("CARGO_PKG_VERSION")
    )
}

pub(super) fn state(ctx: &ProxyContext) -> Table {
    let (all, databases) = ctx.pause_gate().paused();
    let yes_no = |b: bool| v(if b { "yes" } else { "no" });
    let mut table = Table::new(table::STATE);
    table.row(vec![
        v("active"),
        yes_no(!all && !ctx.draining().is_cancelled()),
    ]);
    table.row(vec![v("paused"), yes_no(all)]);
    table.row(vec![v("suspended"), yes_no(false)]);
    table.row(vec![v("paused_databases"), v(databases.join(","))]);
    table.row(vec![v("draining"), yes_no(ctx.draining().is_cancelled())]);
    table
}

pub(super) fn nodes(ctx: &ProxyContext) -> Table {
    let topology = ctx.topology().load();
    let mut table = Table::new(table::NODES);
    let health = |up: bool| v(if up { "up" } else { "down" });
    for node in &topology.nodes {
        let (host, port) = node
            .address
            .rsplit_once(':')
            .unwrap_or((&node.address, "0"));
        let last = node.history.iter().last();
        table.row(vec![
            v(&node.name),
            v(host),
            v(port),
            v(node.role()),
            health(node.primary.up),
            health(node.replica.up),
            node.timeline.map(|t| t.to_string()),
            node.lag_bytes.map(|l| l.to_string()),
            v(node.sessions.load(std::sync::atomic::Ordering::Relaxed)),
            node.last_check.and_then(timestamp),
            last.and_then(|c| c.at).and_then(timestamp),
            last.map(|c| {
                format!(
                    "{} -> {}{}",
                    c.from,
                    c.to,
                    c.reason
                        .as_ref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )
            }),
            node.last_error.clone(),
        ]);
    }
    table
}

pub(super) fn routes(ctx: &ProxyContext) -> Table {
    let config = ctx.config();
    let topology = ctx.topology().load();
    let mut table = Table::new(table::ROUTES);
    for listener in ctx.listeners().iter() {
        let lc = &listener.config;
        let node = match lc.route {
            Route::Primary => topology
                .primary_node()
                .map(|i| topology.nodes[i].name.clone()),
            Route::Replica => {
                let replicas: Vec<&str> = topology
                    .replicas()
                    .map(|i| topology.nodes[i].name.as_str())
                    .collect();
                (!replicas.is_empty()).then(|| replicas.join(","))
            }
        };
        let counters = &listener.counters;
        let load =
            |a: &std::sync::atomic::AtomicUsize| v(a.load(std::sync::atomic::Ordering::Relaxed));
        table.row(vec![
            v(&lc.name),
            v(listener.local_addr.ip()),
            v(listener.local_addr.port()),
            v(match lc.route {
                Route::Primary => "primary",
                Route::Replica => "replica",
            }),
            v(match lc.fallback {
                Fallback::Primary => "primary",
                Fallback::None => "none",
            }),
            v(pool_mode_name(config.pooling_for(lc).mode)),
            node,
            load(&counters.clients),
            load(&counters.active),
            load(&counters.waiting),
        ]);
    }
    table
}

/// SHOW HELP: a notice listing the commands, as PgBouncer sends it.
pub(super) fn help(out: &mut BytesMut) {
    result_set::notice(
        out,
        "Console usage",
        "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION|STATE\
         \n\tSHOW LISTS|MEM|STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\
         \n\tSHOW NODES|ROUTES (Switchyard)\
         \n\tRELOAD\n\tPAUSE [<db>]\n\tRESUME [<db>]\n\tDISABLE <db>\n\tENABLE <db>\
         \n\tRECONNECT [<db>]\n\tKILL <db>\n\tKILL_CLIENT <id>\n\tWAIT_CLOSE [<db>]\
         \n\tSHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS]",
    );
    result_set::command_complete(out, "SHOW");
}
