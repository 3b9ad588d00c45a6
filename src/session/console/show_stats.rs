//! SHOW STATS, STATS_TOTALS, STATS_AVERAGES and TOTALS. Switchyard counts per
//! listener, so each row's `database` is a listener's name. Averages are over the
//! process's life (PgBouncer's are over its last `stats_period`), and query time is
//! the transaction time (Switchyard does not time single queries).

use std::time::Instant;

use super::table::{self, v, Table};
use crate::context::ProxyContext;
use crate::metrics::Totals;

/// Per-second rates and per-transaction / per-query times, PgBouncer's averages.
struct Averages {
    xact_count: u64,
    query_count: u64,
    received: u64,
    sent: u64,
    xact_time: u64,
    query_time: u64,
    wait_time: u64,
}

fn averages(totals: &Totals, seconds: u64) -> Averages {
    let per = |n: u64, d: u64| n.checked_div(d).unwrap_or(0);
    Averages {
        xact_count: per(totals.transactions, seconds),
        query_count: per(totals.queries, seconds),
        received: per(totals.received_bytes, seconds),
        sent: per(totals.sent_bytes, seconds),
        xact_time: per(totals.transaction_micros, totals.transactions),
        query_time: per(totals.transaction_micros, totals.queries),
        wait_time: per(totals.wait_micros, totals.transactions),
    }
}

/// The seven total_* columns of SHOW STATS and STATS_TOTALS (query time is the
/// transaction time: queries are not timed one by one).
fn total_cells(t: &Totals) -> [Option<String>; 7] {
    [
        v(t.transactions),
        v(t.queries),
        v(t.received_bytes),
        v(t.sent_bytes),
        v(t.transaction_micros),
        v(t.transaction_micros),
        v(t.wait_micros),
    ]
}

/// The seven avg_* columns of SHOW STATS and STATS_AVERAGES.
fn average_cells(a: &Averages) -> [Option<String>; 7] {
    [
        v(a.xact_count),
        v(a.query_count),
        v(a.received),
        v(a.sent),
        v(a.xact_time),
        v(a.query_time),
        v(a.wait_time),
    ]
}

fn per_listener(ctx: &ProxyContext) -> Vec<(String, Totals)> {
    ctx.listeners()
        .iter()
        .map(|l| (l.config.name.clone(), l.counters.metrics.totals()))
        .collect()
}

fn uptime_seconds(started: Instant) -> u64 {
    started.elapsed().as_secs().max(1)
}

pub(super) fn stats(ctx: &ProxyContext, started: Instant) -> Table {
    let seconds = uptime_seconds(started);
    let mut table = Table::with_extra(table::STATS, table::STATS_EXTRA);
    for (name, t) in per_listener(ctx) {
        let mut row = vec![v(name)];
        row.extend(total_cells(&t));
        row.extend(average_cells(&averages(&t, seconds)));
        // The exporter's `total_requests` (gone from PgBouncer since 1.8).
        row.push(v(t.queries));
        table.row(row);
    }
    table
}

pub(super) fn stats_totals(ctx: &ProxyContext) -> Table {
    let mut table = Table::new(table::STATS_PARTS);
    for (name, t) in per_listener(ctx) {
        let mut row = vec![v(name)];
        row.extend(total_cells(&t));
        table.row(row);
    }
    table
}

pub(super) fn stats_averages(ctx: &ProxyContext, started: Instant) -> Table {
    let seconds = uptime_seconds(started);
    let mut table = Table::new(table::STATS_PARTS);
    for (name, t) in per_listener(ctx) {
        let mut row = vec![v(name)];
        row.extend(average_cells(&averages(&t, seconds)));
        table.row(row);
    }
    table
}

pub(super) fn totals(ctx: &ProxyContext, started: Instant) -> Table {
    let mut sum = Totals::default();
    for (_, t) in per_listener(ctx) {
        sum.transactions += t.transactions;
        sum.queries += t.queries;
        sum.received_bytes += t.received_bytes;
        sum.sent_bytes += t.sent_bytes;
        sum.transaction_micros += t.transaction_micros;
        sum.wait_micros += t.wait_micros;
    }
    let a = averages(&sum, uptime_seconds(started));
    let mut table = Table::new(table::TOTALS);
    let rows = [
        ("total_xact_count", sum.transactions),
        ("total_query_count", sum.queries),
        ("total_client_bytes", sum.received_bytes),
        ("total_server_bytes", sum.sent_bytes),
        ("total_xact_time", sum.transaction_micros),
        ("total_query_time", sum.transaction_micros),
        ("total_wait_time", sum.wait_micros),
        ("avg_xact_count", a.xact_count),
        ("avg_query_count", a.query_count),
        ("avg_client_bytes", a.received),
        ("avg_server_bytes", a.sent),
        ("avg_xact_time", a.xact_time),
        ("avg_query_time", a.query_time),
        ("avg_wait_time", a.wait_time),
    ];
    for (name, value) in rows {
        table.row(vec![v(name), v(value)]);
    }
    table
}
