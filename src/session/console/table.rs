//! A console reply as a table (columns with types, rows of text values) and its
//! encoding, plus PgBouncer 1.18's column lists, pinned from a running PgBouncer
//! 1.18.0 (Debian's package): tools that parse SHOW output find the same names,
//! order and types. Switchyard's own additions go after PgBouncer's columns.

use bytes::BytesMut;

use crate::protocol::result_set::{self, ColumnType};

use ColumnType::{Int4, Int8, Numeric, Text};

pub type Columns = &'static [(&'static str, ColumnType)];

pub const POOLS: Columns = &[
    ("database", Text),
    ("user", Text),
    ("cl_active", Int4),
    ("cl_waiting", Int4),
    ("cl_active_cancel_req", Int4),
    ("cl_waiting_cancel_req", Int4),
    ("sv_active", Int4),
    ("sv_active_cancel", Int4),
    ("sv_being_canceled", Int4),
    ("sv_idle", Int4),
    ("sv_used", Int4),
    ("sv_tested", Int4),
    ("sv_login", Int4),
    ("maxwait", Int4),
    ("maxwait_us", Int4),
    ("pool_mode", Text),
];
/// After [`POOLS`]: the node of the pool and its role now.
pub const POOLS_EXTRA: Columns = &[("node", Text), ("role", Text)];

/// SHOW CLIENTS and SHOW SERVERS share PgBouncer's socket columns.
pub const SOCKETS: Columns = &[
    ("type", Text),
    ("user", Text),
    ("database", Text),
    ("state", Text),
    ("addr", Text),
    ("port", Int4),
    ("local_addr", Text),
    ("local_port", Int4),
    ("connect_time", Text),
    ("request_time", Text),
    ("wait", Int4),
    ("wait_us", Int4),
    ("close_needed", Int4),
    ("ptr", Text),
    ("link", Text),
    ("remote_pid", Int4),
    ("tls", Text),
    ("application_name", Text),
];
/// After [`SOCKETS`] in SHOW CLIENTS: the id KILL_CLIENT takes, the listener.
pub const CLIENTS_EXTRA: Columns = &[("id", Int8), ("listener", Text)];
/// After [`SOCKETS`] in SHOW SERVERS: the node.
pub const SERVERS_EXTRA: Columns = &[("node", Text)];

pub const STATS: Columns = &[
    ("database", Text),
    ("total_xact_count", Numeric),
    ("total_query_count", Numeric),
    ("total_received", Numeric),
    ("total_sent", Numeric),
    ("total_xact_time", Numeric),
    ("total_query_time", Numeric),
    ("total_wait_time", Numeric),
    ("avg_xact_count", Numeric),
    ("avg_query_count", Numeric),
    ("avg_recv", Numeric),
    ("avg_sent", Numeric),
    ("avg_xact_time", Numeric),
    ("avg_query_time", Numeric),
    ("avg_wait_time", Numeric),
];
/// After [`STATS`]: PgBouncer 1.7's name for the query count, which Debian's
/// prometheus-pgbouncer-exporter (1.7) still reads.
pub const STATS_EXTRA: Columns = &[("total_requests", Numeric)];

/// SHOW STATS_TOTALS and SHOW STATS_AVERAGES.
pub const STATS_PARTS: Columns = &[
    ("database", Text),
    ("xact_count", Numeric),
    ("query_count", Numeric),
    ("bytes_received", Numeric),
    ("bytes_sent", Numeric),
    ("xact_time", Numeric),
    ("query_time", Numeric),
    ("wait_time", Numeric),
];

pub const TOTALS: Columns = &[("name", Text), ("value", Numeric)];

pub const DATABASES: Columns = &[
    ("name", Text),
    ("host", Text),
    ("port", Int4),
    ("database", Text),
    ("force_user", Text),
    ("pool_size", Int4),
    ("min_pool_size", Int4),
    ("reserve_pool", Int4),
    ("pool_mode", Text),
    ("max_connections", Int4),
    ("current_connections", Int4),
    ("paused", Int4),
    ("disabled", Int4),
];

pub const USERS: Columns = &[("name", Text), ("pool_mode", Text)];
pub const CONFIG: Columns = &[
    ("key", Text),
    ("value", Text),
    ("default", Text),
    ("changeable", Text),
];
pub const LISTS: Columns = &[("list", Text), ("items", Int4)];
pub const MEM: Columns = &[
    ("name", Text),
    ("size", Int4),
    ("used", Int4),
    ("free", Int4),
    ("memtotal", Int4),
];
pub const VERSION: Columns = &[("version", Text)];
/// SHOW STATE is PgBouncer 1.21's: one row per state, `yes` or `no`.
pub const STATE: Columns = &[("key", Text), ("value", Text)];

/// Switchyard's own: the nodes and what discovery says about them.
pub const NODES: Columns = &[
    ("name", Text),
    ("host", Text),
    ("port", Int4),
    ("role", Text),
    ("primary_health", Text),
    ("replica_health", Text),
    ("timeline", Int8),
    ("lag_bytes", Int8),
    ("sessions", Int4),
    ("last_check", Text),
    ("last_change", Text),
    ("last_change_reason", Text),
    ("last_error", Text),
];

/// Switchyard's own: the listeners, their routes and where they lead now.
pub const ROUTES: Columns = &[
    ("listener", Text),
    ("addr", Text),
    ("port", Int4),
    ("route", Text),
    ("fallback", Text),
    ("pool_mode", Text),
    ("node", Text),
    ("clients", Int4),
    ("active", Int4),
    ("waiting", Int4),
];

/// A reply to one SHOW.
pub struct Table {
    columns: Vec<(&'static str, ColumnType)>,
    rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub fn new(columns: Columns) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn with_extra(columns: Columns, extra: Columns) -> Table {
        let mut table = Table::new(columns);
        table.columns.extend_from_slice(extra);
        table
    }

    /// Adds a row; its length must match the columns (checked in debug builds,
    /// padded with NULLs or cut otherwise).
    pub fn row(&mut self, mut values: Vec<Option<String>>) {
        debug_assert_eq!(values.len(), self.columns.len(), "{:?}", self.columns);
        values.resize(self.columns.len(), None);
        self.rows.push(values);
    }

    /// RowDescription, the DataRows and CommandComplete `SHOW`.
    pub fn encode(&self, out: &mut BytesMut) {
        result_set::row_description(out, &self.columns);
        for row in &self.rows {
            let values: Vec<Option<&str>> = row.iter().map(|v| v.as_deref()).collect();
            result_set::data_row(out, &values);
        }
        result_set::command_complete(out, "SHOW");
    }
}

/// A value cell.
pub fn v(value: impl ToString) -> Option<String> {
    Some(value.to_string())
}

/// PgBouncer's timestamp format: `2026-12-04 14:05:36 UTC`.
pub fn timestamp(at: std::time::SystemTime) -> Option<String> {
    let secs = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    Some(format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_as_pgbouncer_writes_them() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_393_136);
        assert_eq!(timestamp(at).as_deref(), Some("2026-12-04 14:05:36 UTC"));
        assert_eq!(
            timestamp(std::time::UNIX_EPOCH).as_deref(),
            Some("1970-01-01 00:00:00 UTC")
        );
    }
}
