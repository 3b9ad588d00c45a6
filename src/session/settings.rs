//! The client's own SET/RESET statements: recognising them in query text and
//! applying a recognised change to a parameter set (the client's, or what a pooled
//! server has set). Pure.

use crate::server::params::{is_identifier, ParamSet, ParamValue};

/// A change to tracked parameters recognised in a simple query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamChange {
    Set(String, String),
    Reset(String),
    ResetAll,
}

impl ParamChange {
    /// Applies the change to the client's parameters; `startup` gives the values a
    /// RESET returns to, as PostgreSQL resets to the session's startup values.
    pub fn apply(&self, params: &mut ParamSet, startup: &ParamSet) {
        match self {
            ParamChange::Set(name, sql) => params.set(name, ParamValue::Sql(sql.clone())),
            ParamChange::Reset(name) => match startup.get(name) {
                Some(value) => params.set(name, value.clone()),
                None => params.remove(name),
            },
            ParamChange::ResetAll => *params = startup.clone(),
        }
    }

    /// Applies the change to what a pooled server has set beyond its login
    /// defaults (RESET returns a server to its login value, not the client's).
    pub fn apply_to_server(&self, applied: &mut ParamSet) {
        match self {
            ParamChange::Set(name, sql) => applied.set(name, ParamValue::Sql(sql.clone())),
            ParamChange::Reset(name) => applied.remove(name),
            ParamChange::ResetAll => *applied = ParamSet::default(),
        }
    }
}

/// Recognises one `SET [SESSION] name {TO|=} value`, `RESET name`, `RESET ALL` or
/// `DISCARD ALL` statement (optionally ending with `;`). Anything else, including
/// `SET LOCAL` and multi-statement strings, is not tracked.
pub fn parse_param_change(query: &[u8]) -> Option<ParamChange> {
    let text = std::str::from_utf8(query).ok()?;
    let text = text.trim_end_matches('\0').trim();
    let text = text.strip_suffix(';').unwrap_or(text).trim();
    if text.contains(';') || text.contains("--") || text.contains("/*") {
        return None;
    }
    let (keyword, rest) = split_word(text)?;
    match keyword.to_ascii_lowercase().as_str() {
        "set" => {
            let (mut name, mut rest) = split_word(rest)?;
            if name.eq_ignore_ascii_case("session") {
                (name, rest) = split_word(rest)?;
            }
            if name.eq_ignore_ascii_case("local") || !is_identifier(name) {
                return None;
            }
            let rest = rest.trim_start();
            let value = rest
                .strip_prefix('=')
                .or_else(|| strip_keyword(rest, "to"))?
                .trim();
            if value.is_empty() || strip_keyword(value, "default").is_some_and(str::is_empty) {
                return Some(ParamChange::Reset(name.to_ascii_lowercase()));
            }
            Some(ParamChange::Set(
                name.to_ascii_lowercase(),
                value.to_string(),
            ))
        }
        "reset" => {
            let (name, rest) = split_word(rest)?;
            if !rest.trim().is_empty() {
                return None;
            }
            if name.eq_ignore_ascii_case("all") {
                Some(ParamChange::ResetAll)
            } else {
                is_identifier(name).then(|| ParamChange::Reset(name.to_ascii_lowercase()))
            }
        }
        "discard" => {
            let (what, rest) = split_word(rest)?;
            (what.eq_ignore_ascii_case("all") && rest.trim().is_empty())
                .then_some(ParamChange::ResetAll)
        }
        _ => None,
    }
}

fn split_word(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start();
    let end = text
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(text.len());
    (end > 0).then(|| (&text[..end], &text[end..]))
}

fn strip_keyword<'a>(text: &'a str, keyword: &str) -> Option<&'a str> {
    let text = text.trim_start();
    let (word, rest) = split_word(text)?;
    word.eq_ignore_ascii_case(keyword).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_set_statements() {
        let set = |name: &str, value: &str| Some(ParamChange::Set(name.into(), value.into()));
        #[rustfmt::skip]
        let cases: Vec<(&str, Option<ParamChange>)> = vec![
            ("SET search_path TO app, public", set("search_path", "app, public")),
            ("set search_path = 'a'", set("search_path", "'a'")),
            ("  SET SESSION TimeZone TO 'UTC';  ", set("timezone", "'UTC'")),
            ("SET application_name='x'", set("application_name", "'x'")),
            ("SET myapp.tenant = 42", set("myapp.tenant", "42")),
            ("SET search_path TO DEFAULT", Some(ParamChange::Reset("search_path".into()))),
            ("RESET search_path", Some(ParamChange::Reset("search_path".into()))),
            ("reset all", Some(ParamChange::ResetAll)),
            ("DISCARD ALL", Some(ParamChange::ResetAll)),
            ("SET LOCAL search_path TO x", None),
            ("SET search_path TO x; DROP TABLE t", None),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", None),
            ("SELECT 1", None),
            ("SET", None),
        ];
        for (query, expected) in cases {
            assert_eq!(parse_param_change(query.as_bytes()), expected, "{query}");
        }
    }

    #[test]
    fn reset_returns_to_startup_values() {
        let startup = ParamSet::from_startup(&[("timezone".into(), "UTC".into())]);
        let mut params = startup.clone();
        ParamChange::Set("timezone".into(), "'Europe/Paris'".into()).apply(&mut params, &startup);
        ParamChange::Set("search_path".into(), "x".into()).apply(&mut params, &startup);
        ParamChange::Reset("timezone".into()).apply(&mut params, &startup);
        assert_eq!(params.get("timezone"), Some(&ParamValue::Raw("UTC".into())));
        ParamChange::ResetAll.apply(&mut params, &startup);
        assert_eq!(params, startup);
    }
}
