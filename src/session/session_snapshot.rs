//! What a session-mode session owns on its server, read while PAUSE holds it at
//! an idle boundary, so that it can be rebuilt on another server if its own goes
//! away (a switchover): the replay SQL for its session-level settings, its role
//! and its prepared statements, and the state that cannot move (temporary
//! relations, session advisory locks, LISTEN, WITH HOLD cursors). One query on the
//! session's own connection; its reply never reaches the client.
//!
//! Not captured, and lost by a move: sequences' `currval`/`lastval`, the backend
//! pid (`pg_backend_pid()`), libraries `LOAD`ed by hand, temporary functions
//! outside `pg_class`, and anything an extension keeps in backend memory.

use std::time::Duration;

use bytes::BytesMut;

use super::sql_lex::{Kind, Lexer, Splitter, Token};
use crate::server::{ServerConnection, ServerError};

/// One row: the replay script and the counts. The script is built by the server
/// (`format` with `%I`/`%L`), so names and values are quoted by PostgreSQL's own
/// rules. Statements are joined by a newline before the `;` so a statement text
/// ending in a `--` comment cannot swallow the next one.
///
/// - Settings: `pg_settings` rows whose source is `session`, as `set_config` with
///   their `current_setting` text (units included).
/// - `SET SESSION AUTHORIZATION` when it differs from the user the backend logged
///   in as (`pg_stat_activity.usename`), then `SET ROLE` when one is set (both are
///   hidden from `pg_settings`).
/// - Prepared statements: a protocol-level one becomes `PREPARE name(types) AS
///   text`. For an SQL one `pg_prepared_statements.statement` holds the whole
///   query string the client sent (perhaps several statements), so it comes back
///   as JSON `[name, text]` pairs and its own PREPARE is cut out of the text here
///   ([`prepare_in`]).
const SNAPSHOT_SQL: &str = r#"SELECT
  concat_ws(E'\n;',
    (SELECT string_agg(format('SELECT pg_catalog.set_config(%L, %L, false)', name,
                              pg_catalog.current_setting(name)), E'\n;' ORDER BY name)
       FROM pg_catalog.pg_settings WHERE source = 'session'),
    (SELECT format('SET SESSION AUTHORIZATION %L', pg_catalog.current_setting('session_authorization'))
      WHERE pg_catalog.current_setting('session_authorization') IS DISTINCT FROM
            (SELECT usename FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid())),
    (SELECT format('SET ROLE %L', pg_catalog.current_setting('role'))
      WHERE pg_catalog.current_setting('role') <> 'none'),
    (SELECT string_agg(format('PREPARE %I%s AS %s', name,
                CASE WHEN pg_catalog.cardinality(parameter_types) > 0
                     THEN '(' || pg_catalog.array_to_string(parameter_types::text[], ',') || ')'
                     ELSE '' END,
                statement), E'\n;' ORDER BY name)
       FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql)
  ),
  (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(name, statement) ORDER BY name)
     FROM pg_catalog.pg_prepared_statements WHERE from_sql),
  (SELECT count(*) FROM pg_catalog.pg_settings WHERE source = 'session'),
  (SELECT count(*) FROM pg_catalog.pg_prepared_statements),
  (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()),
  (SELECT count(*) FROM pg_catalog.pg_locks
    WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()),
  (SELECT count(*) FROM pg_catalog.pg_listening_channels()),
  (SELECT count(*) FROM pg_catalog.pg_cursors)"#;

/// A session's movable state and what pins it to its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Snapshot {
    /// SQL that rebuilds the settings, role and prepared statements; may be empty.
    pub replay: String,
    pub settings: u64,
    pub statements: u64,
    temp_relations: u64,
    advisory_locks: u64,
    listening: u64,
    cursors: u64,
}

impl Snapshot {
    /// Reads the snapshot on the session's own (idle) connection.
    /// Notifications that arrive meanwhile go to `notifications`, for the client.
    pub(super) async fn take(
        server: &mut ServerConnection,
        timeout: Duration,
        notifications: &mut BytesMut,
    ) -> Result<Snapshot, ServerError> {
        let row = server
            .query_row_keeping_notifications(SNAPSHOT_SQL, timeout, notifications)
            .await?
            .ok_or_else(|| ServerError::Protocol("session snapshot returned no row".into()))?;
        Snapshot::from_row(&row)
    }

    fn from_row(row: &[Option<String>]) -> Result<Snapshot, ServerError> {
        let count = |i: usize| -> Result<u64, ServerError> {
            row.get(i)
                .and_then(|v| v.as_deref())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| ServerError::Protocol(format!("session snapshot: column {i}")))
        };
        let mut replay = row.first().cloned().flatten().unwrap_or_default();
        if let Some(json) = row.get(1).and_then(|v| v.as_deref()) {
            let pairs: Vec<(String, String)> = serde_json::from_str(json).map_err(|e| {
                ServerError::Protocol(format!("session snapshot: prepared statements: {e}"))
            })?;
            for (name, text) in &pairs {
                let prepare = prepare_in(text, name).ok_or_else(|| {
                    ServerError::Protocol(format!(
                        "session snapshot: no PREPARE of \"{name}\" in its query text"
                    ))
                })?;
                if !replay.is_empty() {
                    replay.push_str("\n;");
                }
                replay.push_str(prepare);
            }
        }
        Ok(Snapshot {
            replay,
            settings: count(2)?,
            statements: count(3)?,
            temp_relations: count(4)?,
            advisory_locks: count(5)?,
            listening: count(6)?,
            cursors: count(7)?,
        })
    }

    /// Why the session cannot move to another server, if it cannot: "had
    /// temporary tables and held advisory locks".
    pub(super) fn pinned_by(&self) -> Option<String> {
        let reasons: Vec<&str> = [
            (self.temp_relations, "had temporary tables"),
            (self.advisory_locks, "held session advisory locks"),
            (self.listening, "was listening for notifications (LISTEN)"),
            (self.cursors, "had open WITH HOLD cursors"),
        ]
        .into_iter()
        .filter(|&(n, _)| n > 0)
        .map(|(_, why)| why)
        .collect();
        match reasons.as_slice() {
            [] => None,
            [one] => Some(one.to_string()),
            [rest @ .., last] => Some(format!("{} and {last}", rest.join(", "))),
        }
    }
}

/// The `PREPARE name ...` statement of `sql` (a query string that may hold
/// several statements) that prepares `name`, by PostgreSQL's identifier rules:
/// unquoted names fold to lower case, quoted ones are taken as written.
fn prepare_in<'a>(sql: &'a str, name: &str) -> Option<&'a str> {
    let bytes = sql.as_bytes();
    let prepares = |leading: &[Token]| {
        matches!(leading, [keyword, named]
            if keyword.is(bytes, b"prepare") && names(named, bytes, name))
    };
    let mut splitter = Splitter::default();
    // The statement's first two tokens, and where its last token ends.
    let mut leading: Vec<Token> = Vec::with_capacity(2);
    let mut end = 0;
    for token in Lexer::new(bytes) {
        if splitter.ends_statement(&token, bytes) {
            if prepares(&leading) {
                return sql.get(leading[0].start..end);
            }
            leading.clear();
        } else {
            if leading.len() < 2 {
                leading.push(token);
            }
            end = token.end;
        }
    }
    if prepares(&leading) {
        return sql.get(leading[0].start..end);
    }
    None
}

/// Whether `token` is the identifier `name`.
fn names(token: &Token, sql: &[u8], name: &str) -> bool {
    let text = token.text(sql);
    match token.kind {
        Kind::Word => text.to_ascii_lowercase() == name.as_bytes(),
        Kind::Quoted => {
            let inner = &text[1.min(text.len())..text.len().saturating_sub(1)];
            String::from_utf8_lossy(inner).replace("\"\"", "\"") == name
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(str::to_string)).collect()
    }

    #[test]
    fn a_plain_session_can_move_and_a_pinned_one_says_why() {
        let plain = Snapshot::from_row(&row(&[
            Some("SELECT 1"),
            Some(r#"[["p", "select 0; prepare P as select 1"]]"#),
            Some("1"),
            Some("0"),
            Some("0"),
            Some("0"),
            Some("0"),
            Some("0"),
        ]))
        .expect("row");
        assert_eq!(plain.pinned_by(), None);
        assert_eq!(plain.replay, "SELECT 1\n;prepare P as select 1");
        let pinned = Snapshot::from_row(&row(&[
            None,
            None,
            Some("0"),
            Some("0"),
            Some("2"),
            Some("1"),
            Some("0"),
            Some("1"),
        ]))
        .expect("row");
        assert_eq!(pinned.replay, "");
        assert_eq!(
            pinned.pinned_by().as_deref(),
            Some(
                "had temporary tables, held session advisory locks and had open WITH HOLD cursors"
            )
        );
    }

    #[test]
    fn the_prepare_of_a_name_is_cut_out_of_a_multi_statement_query_string() {
        let sql = "create table t(x int); PREPARE a(int) AS select $1 -- a\n; \
                   prepare \"B\"\"c\" as select ';' ; prepare Other as select (1;2)";
        assert_eq!(prepare_in(sql, "a"), Some("PREPARE a(int) AS select $1"));
        assert_eq!(
            prepare_in(sql, "B\"c"),
            Some("prepare \"B\"\"c\" as select ';'")
        );
        assert_eq!(
            prepare_in(sql, "other"),
            Some("prepare Other as select (1;2)")
        );
        assert_eq!(prepare_in(sql, "t"), None);
        assert_eq!(
            prepare_in(sql, "Other"),
            None,
            "unquoted names fold to lower case"
        );
    }

    #[test]
    fn a_malformed_row_is_an_error_not_a_panic() {
        assert!(Snapshot::from_row(&row(&[Some("x"), None, Some("one")])).is_err());
        assert!(Snapshot::from_row(&row(&[Some("x"), Some("not json")])).is_err());
        assert!(Snapshot::from_row(&[]).is_err());
    }
}
