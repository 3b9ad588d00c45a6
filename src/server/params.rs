//! Parameter sets: the settings a session has beyond a server's login defaults, as
//! the client gave them (startup packet values, applied with `set_config`, which
//! reads them the way the startup packet does; or the SQL of a `SET`, re-run as
//! written). Pure: builds the SQL that brings a server in line with a client. Which
//! statements change a set is the session's business (`session::settings`).

/// How a parameter's value was given, which decides how it is re-applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ParamValue {
    /// A raw value string, as in a startup packet: `set_config(name, value, false)`.
    Raw(String),
    /// The SQL the client wrote after `SET name TO`: re-run as written.
    Sql(String),
}

/// Parameters set on a session beyond the server's login defaults, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamSet {
    entries: Vec<(String, ParamValue)>,
    /// [`keyed_digest`](crate::keyed_digest) of `entries` (0 when empty), renewed
    /// by every change. Each checkout compares the client's set with the one its
    /// server last had: comparing the strings themselves reads several heap lines
    /// that another core wrote last.
    digest: u128,
}

impl ParamSet {
    pub fn get(&self, name: &str) -> Option<&ParamValue> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    pub fn set(&mut self, name: &str, value: ParamValue) {
        match self
            .entries
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(slot) => slot.1 = value,
            None => self.entries.push((name.to_string(), value)),
        }
        self.rehash();
    }

    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.rehash();
    }

    fn rehash(&mut self) {
        if self.entries.is_empty() {
            self.digest = 0;
            return;
        }
        self.digest = crate::keyed_digest::keyed_digest(&self.entries);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(String, ParamValue)> {
        self.entries.iter()
    }

    /// The client's startup parameters as a set; `options` (`-c name=value` and
    /// `--name=value`) is unpacked into its parameters. As in PostgreSQL, the
    /// packet's own parameters win over the same ones in `options`.
    pub fn from_startup(params: &[(String, String)]) -> ParamSet {
        let mut set = ParamSet::default();
        // Only the last `options` counts: PostgreSQL keeps one, each overwriting
        // the one before.
        if let Some((_, value)) = params.iter().rfind(|(name, _)| name == "options") {
            for (k, v) in parse_options(value) {
                set.set(&k, ParamValue::Raw(v));
            }
        }
        for (name, value) in params {
            if name != "options" && is_identifier(name) {
                set.set(name, ParamValue::Raw(value.clone()));
            }
        }
        set
    }

    /// SQL that changes a server with `current` into one with `self`, or None.
    pub fn sync_sql(&self, current: &ParamSet) -> Option<String> {
        // The usual case, once per transaction: the server was last synced to an
        // identical set, built in the same order.
        if self.digest == current.digest {
            return None;
        }
        let mut statements = Vec::new();
        // A new session authorization also sets the role back to NONE, so it goes
        // first and the role is then set again.
        let authorization = self.get(AUTHORIZATION);
        let new_authorization = authorization != current.get(AUTHORIZATION);
        if new_authorization {
            statements.push(match authorization {
                Some(value) => set_sql(AUTHORIZATION, value),
                None => format!("RESET {AUTHORIZATION}"),
            });
        }
        for (name, value) in &self.entries {
            if name.eq_ignore_ascii_case(AUTHORIZATION) {
                continue;
            }
            let role_again = new_authorization && name.eq_ignore_ascii_case("role");
            if role_again || current.get(name) != Some(value) {
                statements.push(set_sql(name, value));
            }
        }
        for (name, _) in &current.entries {
            if self.get(name).is_none() && !name.eq_ignore_ascii_case(AUTHORIZATION) {
                statements.push(format!("RESET {name}"));
            }
        }
        (!statements.is_empty()).then(|| statements.join(";"))
    }
}

const AUTHORIZATION: &str = "session_authorization";

fn set_sql(name: &str, value: &ParamValue) -> String {
    match value {
        ParamValue::Raw(raw) => format!(
            "SELECT pg_catalog.set_config({}, {}, false)",
            quote_literal(name),
            quote_literal(raw)
        ),
        ParamValue::Sql(sql) => format!("SET {name} TO {sql}"),
    }
}

/// Parameter names we are willing to put into SQL unquoted.
pub(crate) fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// `-c name=value` and `--name=value` pairs of the startup `options` parameter,
/// split as PostgreSQL's `pg_split_opts` does: at ASCII white space, where a
/// backslash takes the next character (a space, or a backslash) literally.
fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut iter = split_options(options).into_iter();
    while let Some(word) = iter.next() {
        let setting = if word == "-c" {
            iter.next()
        } else if let Some(rest) = word.strip_prefix("--") {
            Some(rest.to_string())
        } else {
            word.strip_prefix("-c").map(str::to_string)
        };
        if let Some((name, value)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            let name = name.replace('-', "_");
            if is_identifier(&name) {
                pairs.push((name, value.to_string()));
            }
        }
    }
    pairs
}

/// The words of the startup `options` parameter, split as PostgreSQL's
/// `pg_split_opts` does: at ASCII white space, where a backslash takes the next
/// character (a space, or a backslash) literally.
pub fn split_options(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r' => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// A SQL string literal for any value (E'' form when it holds backslashes).
pub fn quote_literal(value: &str) -> String {
    let escaped = value.replace('\'', "''");
    if escaped.contains('\\') {
        format!("E'{}'", escaped.replace('\\', "\\\\"))
    } else {
        format!("'{escaped}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_options_are_unpacked() {
        let set = ParamSet::from_startup(&[
            ("application_name".into(), "psql".into()),
            (
                "options".into(),
                "-c search_path=a,b --statement-timeout=5s -c x\\ y=1".into(),
            ),
        ]);
        assert_eq!(
            set.get("application_name"),
            Some(&ParamValue::Raw("psql".into()))
        );
        assert_eq!(set.get("search_path"), Some(&ParamValue::Raw("a,b".into())));
        assert_eq!(
            set.get("statement_timeout"),
            Some(&ParamValue::Raw("5s".into()))
        );
        assert_eq!(set.get("x y"), None, "not an identifier");
        let set = ParamSet::from_startup(&[(
            "options".into(),
            "-c application_name=a\\ b\\\\c\t-capplication_name=x\u{a0}y".into(),
        )]);
        assert_eq!(
            set.get("application_name"),
            Some(&ParamValue::Raw("x\u{a0}y".into())),
            "the last one wins; a no-break space is not a separator"
        );
        let set =
            ParamSet::from_startup(&[("options".into(), "-c application_name=a\\ b\\\\c".into())]);
        assert_eq!(
            set.get("application_name"),
            Some(&ParamValue::Raw("a b\\c".into()))
        );
        let set = ParamSet::from_startup(&[
            ("TimeZone".into(), "UTC".into()),
            ("options".into(), "-c timezone=Asia/Tokyo".into()),
        ]);
        assert_eq!(
            set.get("timezone"),
            Some(&ParamValue::Raw("UTC".into())),
            "the packet's own parameter wins over options"
        );
        let set = ParamSet::from_startup(&[
            ("options".into(), "-c search_path=first".into()),
            ("options".into(), "-c work_mem=1MB".into()),
        ]);
        assert_eq!(set.get("search_path"), None, "only the last options counts");
        assert_eq!(set.get("work_mem"), Some(&ParamValue::Raw("1MB".into())));
    }

    #[test]
    fn sync_sql_sets_what_differs_and_resets_the_rest() {
        let mut wanted = ParamSet::default();
        wanted.set("application_name", ParamValue::Raw("it's".into()));
        wanted.set("search_path", ParamValue::Sql("app, public".into()));
        let mut current = ParamSet::default();
        current.set("search_path", ParamValue::Sql("app, public".into()));
        current.set("timezone", ParamValue::Raw("UTC".into()));
        assert_eq!(
            wanted.sync_sql(&current).as_deref(),
            Some("SELECT pg_catalog.set_config('application_name', 'it''s', false);RESET timezone")
        );
        assert_eq!(wanted.sync_sql(&wanted), None);
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }

    #[test]
    fn sync_sql_follows_every_change_to_either_set() {
        let mut client = ParamSet::default();
        client.set("search_path", ParamValue::Sql("a".into()));
        client.set("timezone", ParamValue::Raw("UTC".into()));
        let mut server = client.clone();
        assert_eq!(client.sync_sql(&server), None);
        client.set("search_path", ParamValue::Sql("b".into()));
        assert_eq!(
            client.sync_sql(&server).as_deref(),
            Some("SET search_path TO b")
        );
        client.set("search_path", ParamValue::Sql("a".into()));
        assert_eq!(client.sync_sql(&server), None, "changed back");
        server.remove("timezone");
        assert_eq!(
            client.sync_sql(&server).as_deref(),
            Some("SELECT pg_catalog.set_config('timezone', 'UTC', false)")
        );
        // The same parameters set in another order need nothing either.
        let mut reordered = ParamSet::default();
        reordered.set("timezone", ParamValue::Raw("UTC".into()));
        reordered.set("search_path", ParamValue::Sql("a".into()));
        assert_eq!(client.sync_sql(&reordered), None);
        client.remove("timezone");
        client.remove("search_path");
        assert_eq!(client.sync_sql(&ParamSet::default()), None);
    }

    #[test]
    fn a_new_session_authorization_goes_first_and_the_role_is_set_again() {
        let mut client = ParamSet::default();
        client.set("role", ParamValue::Sql("tenant_a".into()));
        client.set("session_authorization", ParamValue::Sql("app".into()));
        let mut server = ParamSet::default();
        server.set("role", ParamValue::Sql("tenant_a".into()));
        assert_eq!(
            client.sync_sql(&server).as_deref(),
            Some("SET session_authorization TO app;SET role TO tenant_a")
        );
        assert_eq!(
            ParamSet::default().sync_sql(&client).as_deref(),
            Some("RESET session_authorization;RESET role")
        );
    }
}
