//! Unit tests of [`sql_scan`](super).

use super::*;

#[test]
fn the_prefilter_never_hides_what_the_scan_finds() {
    // Random statements over a vocabulary of keywords, their prefixes and
    // harmless words, in random case and with random separators.
    #[rustfmt::skip]
    let words = [
        "set", "SeT", "reset", "set_config", "se", "t", "select", "insert", "update",
        "pg_temp", "temp", "temporary", "pg_advisory_lock", "pg_try_advisory_lock_shared",
        "advisor", "hold", "with", "into", "create", "table", "declare", "cursor",
        "listen", "notify", "discard", "all", "deallocate", "prepare", "execute", "sy_x",
        "savepoint", "rollback", "abort", "release", "to", "do", "d", "o", "load", "call", "ca",
        "role", "session", "authorization", "local", "true", "'true'", "1", "x", "\"x\"",
        "\"pg_temp\"", "$$", "'", "''", "--", "/*", "*/", "(", ")", ",", "=", ".", "\n",
        "1set", "$1", "e", "E'x'", "x", "_", "$", "é", "\"", "1e", "0x1f", "set$1", "ab",
    ];
    let separators = [" ", "", ";", "\t", ", ", "("];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    let mut hidden_checked = 0;
    for _ in 0..50_000 {
        let mut sql = String::new();
        for _ in 0..1 + next(8) {
            sql.push_str(words[next(words.len())]);
            sql.push_str(separators[next(separators.len())]);
        }
        let full = scan_statements(sql.as_bytes());
        assert_eq!(scan(sql.as_bytes()), full, "{sql:?}");
        if !may_touch_session(sql.as_bytes()) {
            hidden_checked += 1;
        }
    }
    assert!(
        hidden_checked > 1_000,
        "only {hidden_checked} texts skipped the scan"
    );
}

fn set(name: &str, value: &str) -> Action {
    Action::Change(ParamChange::Set(name.into(), value.into()))
}

fn reset(name: &str) -> Action {
    Action::Change(ParamChange::Reset(name.into()))
}

#[test]
fn tracked_changes() {
    #[rustfmt::skip]
    let cases: Vec<(&str, Action)> = vec![
        ("SET search_path TO app, public", set("search_path", "app, public")),
        ("set search_path = 'a' -- trailing", set("search_path", "'a'")),
        ("  SET SESSION TimeZone TO 'UTC';  ", set("timezone", "'UTC'")),
        ("SET application_name='x'", set("application_name", "'x'")),
        ("SET myapp.tenant = 42", set("myapp.tenant", "42")),
        ("SET search_path TO DEFAULT", reset("search_path")),
        ("RESET search_path", reset("search_path")),
        ("reset all", Action::Change(ParamChange::ResetAll)),
        ("DISCARD ALL", Action::Change(ParamChange::DiscardAll)),
        ("SET ROLE tenant_a", set("role", "tenant_a")),
        ("set role none", set("role", "none")),
        ("SET role TO 'tenant_a'", set("role", "'tenant_a'")),
        ("RESET ROLE", reset("role")),
        ("SET SESSION AUTHORIZATION app", set("session_authorization", "app")),
        ("SET SESSION AUTHORIZATION DEFAULT", reset("session_authorization")),
        ("RESET SESSION AUTHORIZATION", reset("session_authorization")),
        ("SET TIME ZONE 'Europe/Paris'", set("timezone", "'Europe/Paris'")),
        ("SET TIME ZONE LOCAL", reset("timezone")),
        ("RESET TIME ZONE", reset("timezone")),
        ("SET NAMES 'UTF8'", set("client_encoding", "'UTF8'")),
        ("SET SCHEMA 'app'", set("search_path", "'app'")),
        ("SET role.x = 'v'", set("role.x", "'v'")),
        ("set names.x to 1", set("names.x", "1")),
        ("SET session.x = 1", set("session.x", "1")),
        ("SET SESSION session.x = 1", set("session.x", "1")),
        ("SET transaction.x = 1", set("transaction.x", "1")),
        ("RESET role.x", reset("role.x")),
        ("/* why */ SET\nstatement_timeout = 5000", set("statement_timeout", "5000")),
        ("SAVEPOINT a", Action::Savepoint((*b"a").into())),
        ("ROLLBACK TO SAVEPOINT \"A\"", Action::RollbackTo((*b"A").into())),
        ("rollback work to B", Action::RollbackTo((*b"b").into())),
        ("RELEASE SAVEPOINT a", Action::Release((*b"a").into())),
        ("release a", Action::Release((*b"a").into())),
        ("savepoint \"a\"\"B\"", Action::Savepoint((*b"a\"B").into())),
        ("SAVEPOINT sssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssSSSSS",
            Action::Savepoint(b"s".repeat(63).into())),
        ("rollback to \"ééééééééééééééééééééééééééééééé\u{e9}z\"",
            Action::RollbackTo("é".repeat(31).as_bytes().into())),
        ("ROLLBACK", Action::Other),
        ("SET LOCAL search_path TO x", Action::Other),
        ("SET transaction_isolation = 'serializable'", Action::Other),
        ("SET SESSION transaction_read_only TO on", Action::Other),
        ("RESET transaction_deferrable", Action::Other),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", Action::Other),
        ("select 1", Action::Other),
    ];
    for (sql, expected) in cases {
        let scan = scan(sql.as_bytes());
        assert_eq!(scan.clone_action(), expected, "{sql}");
        let dropping = sql == "DISCARD ALL";
        assert_eq!(scan.drops_statements, dropping, "{sql}");
        assert!(
            scan.taint == taint_if(dropping, Taint::STATEMENTS) && scan.refusal.is_none(),
            "{sql}: {scan:?}"
        );
    }
}

impl Scan {
    fn clone_action(&self) -> Action {
        self.actions.first().cloned().unwrap_or_default()
    }
}

#[test]
fn taints_and_refusals() {
    let s = Taint::SETTINGS;
    #[rustfmt::skip]
    let cases: Vec<(&str, Taint, Option<Refusal>)> = vec![
        ("select set_config('app.tenant_id', '42', false)", s, None),
        ("select pg_catalog.set_config('a.b', $1, $2)", s, None),
        ("select set_config('a.b', 'x', true), 1", Taint::default(), None),
        ("select set_config('a.b', f(1, 2), 'on')", Taint::default(), None),
        ("SET search_path FROM CURRENT", s, None),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", s, None),
        ("SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE", s, None),
        ("SET XML OPTION DOCUMENT", s, None),
        ("RESET whatever extra", s, None),
        ("CREATE TEMP TABLE t (a int)", Taint::TEMP, None),
        ("create global temporary table t (a int)", Taint::TEMP, None),
        ("select * into temporary t from x", Taint::TEMP, None),
        ("insert into pg_temp.t values (1)", Taint::TEMP, None),
        ("select pg_advisory_lock(1)", Taint::ADVISORY, None),
        ("select pg_try_advisory_lock_shared(1, 2)", Taint::ADVISORY, None),
        ("select pg_advisory_xact_lock(1)", Taint::default(), None),
        ("DECLARE c CURSOR WITH HOLD FOR select 1", Taint::CURSORS, None),
        ("DECLARE c CURSOR WITHOUT HOLD FOR select 1", Taint::default(), None),
        ("PREPARE q AS select 1", Taint::STATEMENTS, None),
        ("PREPARE TRANSACTION 'x'", Taint::default(), None),
        ("DEALLOCATE ALL", Taint::STATEMENTS, None),
        ("DO $$begin perform 1; end$$", s | Taint::TEMP | Taint::ADVISORY | Taint::CURSORS, None),
        ("select 1; listen x", Taint::default(), Some(Refusal::Listen)),
        ("/* c */\nLISTEN x", Taint::default(), Some(Refusal::Listen)),
        ("DEALLOCATE sy_abc", Taint::default(), Some(Refusal::ProxyNames)),
        ("deallocate prepare \"SY_abc\"", Taint::default(), Some(Refusal::ProxyNames)),
        ("PREPARE Sy_x AS select 1", Taint::STATEMENTS, Some(Refusal::ProxyNames)),
        ("explain analyze execute sy_1", Taint::default(), Some(Refusal::ProxyNames)),
        ("select 'listen x'; select ' set_config(1) '", Taint::default(), None),
        ("select temp from weather", Taint::default(), None),
        ("CALL app.refresh(1)", s | Taint::TEMP | Taint::ADVISORY | Taint::CURSORS | Taint::STATEMENTS, None),
        ("select recall from t", Taint::default(), None),
    ];
    for (sql, taint, refusal) in cases {
        let scan = scan(sql.as_bytes());
        assert_eq!((scan.taint, scan.refusal), (taint, refusal), "{sql}");
    }
}

#[test]
fn one_action_per_statement_in_order() {
    let scan = scan(b"select 1; SET a.b = 1; -- x;\n savepoint s; select 2;");
    assert_eq!(
        scan.actions,
        vec![
            Action::Other,
            set("a.b", "1"),
            Action::Savepoint((*b"s").into()),
            Action::Other
        ]
    );
    let plain = super::scan(b"select 1; select 2; insert into t values ('set x=1')");
    assert!(plain.actions.is_empty() && plain == Scan::default());
    assert_eq!(
        super::scan(b"set a = 1").statement_effects().action,
        set("a", "1"),
        "a Parse's statement"
    );
}

#[test]
fn untracked_settings_keep_their_place_among_the_statements() {
    let scan = scan(
        b"RESET ALL; select set_config('TimeZone', 'UTC', false); CALL p(); DO $$ $$; select 1",
    );
    assert_eq!(
        scan.actions,
        vec![
            Action::Change(ParamChange::ResetAll),
            Action::Untracked(Some("timezone".into())),
            Action::Untracked(None),
            Action::Untracked(None),
            Action::Other
        ]
    );
    for (sql, named) in [
        ("select set_config('App.X', '1', false)", Some("app.x")),
        (
            "select set_config('a.b', '1', false), set_config('c.d', '1', false)",
            None,
        ),
        (
            "select set_config('a.b', '1', true), set_config('c.d', '1', false)",
            Some("c.d"),
        ),
        ("select set_config('a' || 'b', '1', false)", None),
        ("select set_config($1, '1', false)", None),
    ] {
        let named = named.map(Box::from);
        assert_eq!(
            super::scan(sql.as_bytes()).actions,
            vec![Action::Untracked(named)],
            "{sql}"
        );
    }
    let local = super::scan(b"select set_config('a.b', 'x', true)");
    assert!(local.actions.is_empty(), "{local:?}");
}

#[test]
fn both_readings_of_a_backslash_in_a_string_are_covered() {
    // standard_conforming_strings off: `'x\''` ends after the escaped quote.
    let hidden = scan(b"SELECT 'x\\''; SET app.a = 1; LISTEN c; --'");
    assert_eq!(hidden.actions, vec![], "the standard reading: one SELECT");
    assert!(hidden.taint.contains(Taint::SETTINGS), "{hidden:?}");
    assert_eq!(hidden.refusal, Some(Refusal::Listen));
    // A Windows path in a standard string: both readings agree on the SET.
    let path = scan(b"SET app.dir = 'C:\\'");
    assert_eq!(path.actions, vec![set("app.dir", "'C:\\'")]);
    assert!(path.taint.is_empty(), "{path:?}");
    // E'' strings read the same either way.
    let escaped = scan(b"SET app.a = E'x\\''; select 1");
    assert_eq!(
        escaped.actions,
        vec![set("app.a", "E'x\\''"), Action::Other]
    );
    assert!(escaped.taint.is_empty(), "{escaped:?}");
    // Shift-JIS 0x95 0x5c is one character: the literal ends at the quote.
    let sjis = scan(b"SELECT E'\x95\x5c'; SET app.a = 1; --'");
    assert_eq!(sjis.actions, vec![], "the UTF-8 reading: one SELECT");
    assert!(sjis.taint.contains(Taint::SETTINGS), "{sjis:?}");
    // UTF-8 text before an escape reads the same both ways.
    let utf8 = scan("SET app.a = E'\u{e9}\\n'".as_bytes());
    assert_eq!(utf8.actions, vec![set("app.a", "E'\u{e9}\\n'")]);
    assert!(utf8.taint.is_empty(), "{utf8:?}");
}

#[test]
fn non_utf8_values_are_not_tracked() {
    let scan = scan(b"SET application_name = '\xff'");
    assert_eq!(scan.actions, vec![Action::Untracked(None)]);
    assert_eq!(scan.taint, Taint::SETTINGS);
}

#[test]
fn random_bytes_never_panic() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let words: [&[u8]; 14] = [
        b"set ",
        b"reset ",
        b"role ",
        b"to ",
        b"= ",
        b"set_config(",
        b",",
        b")",
        b"savepoint ",
        b"rollback ",
        b"'",
        b"$$",
        b";",
        b"\xfe",
    ];
    for _ in 0..20_000 {
        let mut text = Vec::new();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 24) as usize;
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            text.extend_from_slice(words[(state % words.len() as u64) as usize]);
        }
        let _ = scan(&text);
    }
}
