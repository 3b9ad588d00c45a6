//! SHOW POOLS, SERVERS, DATABASES, USERS and LISTS: Switchyard's pools (one per
//! node, database and user) in PgBouncer's shapes.

use std::collections::BTreeSet;
use std::time::SystemTime;

use super::table::{self, v, Table};
use crate::config::PoolMode;
use crate::context::ProxyContext;
use crate::control::ClientState;
use crate::pool::PoolStats;

pub(super) fn pool_mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    }
}

fn node_role(ctx: &ProxyContext, node: &str) -> &'static str {
    let topology = ctx.topology().load();
    topology
        .nodes
        .iter()
        .find(|n| n.name == node)
        .map_or("removed", |n| n.role())
}

/// The longest wait now of a client of (database, user), in microseconds.
fn max_wait_micros(ctx: &ProxyContext, database: &str, user: &str) -> u64 {
    let now = SystemTime::now();
    ctx.client_registry()
        .all()
        .iter()
        .filter(|c| c.info.database == database && c.info.user == user)
        .filter(|c| c.state() == ClientState::Waiting)
        .filter_map(|c| now.duration_since(c.request_time()?).ok())
        .map(|d| d.as_micros() as u64)
        .max()
        .unwrap_or(0)
}

pub(super) fn pools(ctx: &ProxyContext) -> Table {
    let mut table = Table::with_extra(table::POOLS, table::POOLS_EXTRA);
    let mode = pool_mode_name(ctx.config().pool.mode);
    for pool in ctx.pools().stats() {
        let wait = max_wait_micros(ctx, &pool.database, &pool.user);
        let PoolStats {
            node,
            database,
            user,
            idle,
            in_use,
            waiting,
            ..
        } = pool;
        table.row(vec![
            v(&database),
            v(&user),
            v(in_use),
            v(waiting),
            v(0),
            v(0),
            v(in_use),
            v(0),
            v(0),
            v(idle),
            v(0),
            v(0),
            v(0),
            v(wait / 1_000_000),
            v(wait % 1_000_000),
            v(mode),
            v(&node),
            v(node_role(ctx, &node)),
        ]);
    }
    table
}

/// One row per server connection: PgBouncer lists sockets, Switchyard knows how
/// many connections each pool has idle and in use.
pub(super) fn servers(ctx: &ProxyContext) -> Table {
    let mut table = Table::with_extra(table::SOCKETS, table::SERVERS_EXTRA);
    for pool in ctx.pools().all() {
        let stats = pool.stats();
        let (host, port) = split_address(pool.address());
        let states = std::iter::repeat_n("active", stats.in_use)
            .chain(std::iter::repeat_n("idle", stats.idle));
        for state in states {
            table.row(vec![
                v("S"),
                v(&stats.user),
                v(&stats.database),
                v(state),
                v(&host),
                v(port),
                None,
                None,
                None,
                None,
                v(0),
                v(0),
                v(0),
                None,
                None,
                v(0),
                v(""),
                v(""),
                v(&stats.node),
            ]);
        }
    }
    table
}

fn split_address(address: &str) -> (String, u16) {
    match address.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port.parse().unwrap_or(0),
        ),
        None => (address.to_string(), 0),
    }
}

/// The databases clients use now (those with pools, those paused or disabled)
/// and the console's own.
fn databases_in_use(ctx: &ProxyContext) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ctx
        .pools()
        .stats()
        .into_iter()
        .map(|p| p.database)
        .collect();
    names.extend(ctx.pause_gate().paused().1);
    names
}

pub(super) fn databases(ctx: &ProxyContext) -> Table {
    let config = ctx.config();
    let topology = ctx.topology().load();
    let primary = topology
        .primary_node()
        .map(|i| split_address(&topology.nodes[i].address));
    let (all_paused, _) = ctx.pause_gate().paused();
    let stats = ctx.pools().stats();
    let mut table = Table::new(table::DATABASES);
    for name in databases_in_use(ctx) {
        let open: usize = stats
            .iter()
            .filter(|p| p.database == name)
            .map(|p| p.open)
            .sum();
        let paused = all_paused || ctx.pause_gate().is_paused(&name);
        table.row(vec![
            v(&name),
            primary.as_ref().map(|(host, _)| host.clone()),
            primary.as_ref().map(|(_, port)| port.to_string()),
            v(&name),
            None,
            v(config.pool.size),
            v(config.pool.min_idle),
            v(0),
            v(pool_mode_name(config.pool.mode)),
            v(0),
            v(open),
            v(u8::from(paused)),
            v(u8::from(ctx.pause_gate().is_disabled(&name))),
        ]);
    }
    let console_port = ctx.listeners().first().map_or(0, |l| l.local_addr.port());
    for console in super::CONSOLE_DATABASES {
        table.row(vec![
            v(console),
            None,
            v(console_port),
            v(console),
            v(console),
            v(2),
            v(0),
            v(0),
            v("statement"),
            v(0),
            v(0),
            v(0),
            v(0),
        ]);
    }
    table
}

pub(super) fn users(ctx: &ProxyContext) -> Table {
    let mut table = Table::new(table::USERS);
    let mut names: Vec<String> = ctx.config().users.iter().map(|u| u.name.clone()).collect();
    names.sort();
    for name in names {
        table.row(vec![v(name), None]);
    }
    table
}

pub(super) fn lists(ctx: &ProxyContext) -> Table {
    let config = ctx.config();
    let stats = ctx.pools().stats();
    let used_servers: usize = stats.iter().map(|p| p.open).sum();
    let mut table = Table::new(table::LISTS);
    let rows: [(&str, usize); 12] = [
        (
            "databases",
            databases_in_use(ctx).len() + super::CONSOLE_DATABASES.len(),
        ),
        ("users", config.users.len()),
        ("pools", stats.len()),
        ("free_clients", 0),
        ("used_clients", ctx.client_registry().all().len()),
        ("login_clients", 0),
        ("free_servers", 0),
        ("used_servers", used_servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    for (name, items) in rows {
        table.row(vec![v(name), v(items)]);
    }
    table
}
