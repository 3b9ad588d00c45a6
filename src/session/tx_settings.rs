//! PostgreSQL's rule for settings made inside a transaction, followed as the
//! server's replies arrive: a session-level SET/RESET takes effect for the client's
//! later transactions when its transaction commits and is discarded when it rolls
//! back, savepoints included; a failed transaction keeps nothing. Commit and
//! rollback are read from the server's command tags (COMMIT of a failed transaction
//! answers ROLLBACK), the savepoint names from the client's statements. Values the
//! server reports in ParameterStatus are taken as its word once the transaction is
//! over. Pure: it only says which changes now hold.

use super::settings::ParamChange;
use super::sql_lex::portable_literals;
use super::sql_scan::Action;
use crate::protocol::tag;

/// Parameters PostgreSQL reports with ParameterStatus that a client may change;
/// their reported value is what the client's next server must have.
const FOLLOWED: [&str; 8] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
    "default_transaction_read_only",
    "search_path",
];

/// More changes than this in one transaction are not followed one by one: the
/// server is reset instead (bounds memory for a client looping over SET).
const MAX_PENDING: usize = 10_000;

#[derive(Debug)]
enum Pending {
    Change(ParamChange),
    Savepoint(Box<[u8]>),
    /// A statement changed settings the proxy does not follow (this one, when
    /// known): a RESET before it no longer explains what the server reports.
    Untracked(Option<Box<str>>),
}

#[derive(Debug, Default)]
pub struct TxSettings {
    /// Changes and savepoints of the open transaction (or implicit one), in order.
    pending: Vec<Pending>,
    /// An ErrorResponse arrived since the last ReadyForQuery.
    error: bool,
    /// A reply did not match the statement it answers: what the server has set is
    /// no longer known, and it must be reset before another client uses it.
    pub lost: bool,
    /// Followed parameters the server reported, latest value per name.
    reported: Vec<(String, String)>,
    /// Changes committed since the last idle ReadyForQuery reset these names (or
    /// all): the server then reports its login value, not the client's.
    reset_names: Vec<String>,
    reset_all: bool,
    /// Names an untracked change may have set after the RESET ALL.
    set_after_reset_all: Vec<String>,
    /// The session's `standard_conforming_strings` is off: how backslashes in the
    /// SET values it runs read (see [`portable_literals`]).
    pub nonstandard_strings: bool,
}

impl TxSettings {
    /// A CommandComplete with `command_tag` answered a statement classified as
    /// `action`. Changes that now hold are added to `out`.
    pub fn completed(&mut self, action: Action, command_tag: &[u8], out: &mut Vec<ParamChange>) {
        let command_tag = command_tag.strip_suffix(b"\0").unwrap_or(command_tag);
        match (command_tag, action) {
            (b"COMMIT", _) => self.commit(out),
            (b"ROLLBACK", Action::RollbackTo(name)) => self.rollback_to(&name),
            (b"ROLLBACK", _) => self.pending.clear(),
            (b"PREPARE TRANSACTION", _) => {
                // The transaction now belongs to no session; what it set is not
                // worth modelling.
                self.lost |= !self.pending.is_empty();
                self.pending.clear();
            }
            (_, Action::Other) => {}
            // Whatever its tag (SELECT, CALL, DO, SET): once is enough in a row.
            (_, Action::Untracked(name)) => {
                let repeated =
                    matches!(self.pending.last(), Some(Pending::Untracked(n)) if *n == name);
                if !repeated {
                    if self.pending.len() >= MAX_PENDING {
                        self.lost = true;
                    } else {
                        self.pending.push(Pending::Untracked(name));
                    }
                }
            }
            (b"SET" | b"RESET" | b"DISCARD ALL", Action::Change(change)) => {
                let change = self.portable(change);
                self.replace_earlier(&change);
                if self.pending.len() >= MAX_PENDING {
                    self.lost = true;
                } else {
                    self.pending.push(Pending::Change(change));
                }
            }
            (b"SAVEPOINT", Action::Savepoint(name)) => {
                if self.pending.len() >= MAX_PENDING {
                    self.lost = true;
                } else {
                    self.pending.push(Pending::Savepoint(name));
                }
            }
            (b"RELEASE", Action::Release(name)) => match self.savepoint(&name) {
                // Releasing keeps the changes and forgets this savepoint and the
                // ones after it.
                Some(at) => {
                    let mut index = 0;
                    self.pending.retain(|p| {
                        index += 1;
                        index <= at || !matches!(p, Pending::Savepoint(_))
                    });
                }
                None => self.lost = true,
            },
            _ => self.lost = true,
        }
    }

    /// The server sent an ErrorResponse.
    pub fn error(&mut self) {
        self.error = true;
    }

    /// A SET whose value holds a backslash in a plain literal, written so that it
    /// means the same when re-run where `standard_conforming_strings` differs.
    fn portable(&self, change: ParamChange) -> ParamChange {
        match change {
            ParamChange::Set(name, sql) if sql.contains('\\') => {
                let rewritten = portable_literals(sql.as_bytes(), !self.nonstandard_strings)
                    .and_then(|v| String::from_utf8(v).ok());
                ParamChange::Set(name, rewritten.unwrap_or(sql))
            }
            other => other,
        }
    }

    /// The server reported a parameter value.
    pub fn reported(&mut self, name: String, value: String) {
        if name == "standard_conforming_strings" {
            // PostgreSQL reports at the end of a query, before the next one is read.
            self.nonstandard_strings = value == "off";
        }
        if !FOLLOWED.iter().any(|f| f.eq_ignore_ascii_case(&name)) {
            return;
        }
        match self.reported.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.reported.push((name, value)),
        }
    }

    /// ReadyForQuery with `status`. Outside any transaction block what is still
    /// pending ran in an autocommit statement or an implicit transaction: it holds
    /// unless an error ended it.
    pub fn ready(&mut self, status: u8, out: &mut Vec<ParamChange>) {
        if status == tag::STATUS_IDLE {
            if self.error {
                self.pending.clear();
            } else {
                self.commit(out);
            }
            for (name, value) in self.reported.drain(..) {
                let named =
                    |names: &Vec<String>| names.iter().any(|n| n.eq_ignore_ascii_case(&name));
                let reset =
                    self.reset_all && !named(&self.set_after_reset_all) || named(&self.reset_names);
                if !reset {
                    out.push(ParamChange::Report(name, value));
                }
            }
            self.reset_names.clear();
            self.reset_all = false;
            self.set_after_reset_all.clear();
        }
        self.error = false;
    }

    fn commit(&mut self, out: &mut Vec<ParamChange>) {
        for pending in self.pending.drain(..) {
            match pending {
                Pending::Change(change) => {
                    match &change {
                        ParamChange::ResetAll | ParamChange::DiscardAll => {
                            self.reset_all = true;
                            self.reset_names.clear();
                            self.set_after_reset_all.clear();
                        }
                        ParamChange::Reset(name) => {
                            self.reset_names.push(name.clone());
                            self.set_after_reset_all
                                .retain(|n| !n.eq_ignore_ascii_case(name));
                        }
                        _ => {}
                    }
                    out.push(change);
                }
                // PostgreSQL reports at the end of a query, so a value reported
                // after this may be what the statement set: the server's word.
                Pending::Untracked(None) => {
                    self.reset_names.clear();
                    self.reset_all = false;
                    self.set_after_reset_all.clear();
                }
                Pending::Untracked(Some(name)) => {
                    self.reset_names.retain(|n| !n.eq_ignore_ascii_case(&name));
                    if self.reset_all {
                        self.set_after_reset_all.push(name.into());
                    }
                }
                Pending::Savepoint(_) => {}
            }
        }
    }

    /// Drops a pending change of the same parameter that `change` overrides: one
    /// made since the last savepoint, RESET ALL and DISCARD ALL (a savepoint may be
    /// rolled back to, and the others change every parameter). A loop of SETs in
    /// one transaction then keeps one entry per parameter, not one per SET. Order
    /// between different parameters does not matter, even for `role` and
    /// `session_authorization`: the later authorization drops the role either way.
    fn replace_earlier(&mut self, change: &ParamChange) {
        let Some(name) = change.name() else {
            return;
        };
        let earlier = self.pending.iter().rposition(|p| match p {
            Pending::Savepoint(_) => true,
            Pending::Change(c) => c.name().is_none_or(|n| n.eq_ignore_ascii_case(name)),
            Pending::Untracked(_) => false,
        });
        if let Some(at) = earlier {
            if matches!(&self.pending[at], Pending::Change(c) if c.name().is_some()) {
                self.pending.remove(at);
            }
        }
    }

    /// The index of the latest savepoint called `name`.
    fn savepoint(&self, name: &[u8]) -> Option<usize> {
        self.pending
            .iter()
            .rposition(|p| matches!(p, Pending::Savepoint(n) if **n == *name))
    }

    /// ROLLBACK TO keeps the savepoint itself and drops everything after it.
    fn rollback_to(&mut self, name: &[u8]) {
        match self.savepoint(name) {
            Some(at) => self.pending.truncate(at + 1),
            None => self.lost = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str) -> Action {
        Action::Change(ParamChange::Set(name.into(), "1".into()))
    }

    fn sp(name: &str) -> Box<[u8]> {
        name.as_bytes().into()
    }

    enum Step {
        Done(Action, &'static str),
        Error,
        Ready(u8),
    }
    use Step::*;

    fn run(steps: Vec<Step>) -> (Vec<String>, bool) {
        let mut tracker = TxSettings::default();
        let mut out = Vec::new();
        for step in steps {
            match step {
                Done(action, tag) => tracker.completed(action, tag.as_bytes(), &mut out),
                Error => tracker.error(),
                Ready(status) => tracker.ready(status, &mut out),
            }
        }
        let names = out
            .iter()
            .filter_map(|c| c.name().map(str::to_string))
            .collect();
        (names, tracker.lost)
    }

    #[test]
    fn transactions_keep_what_commits() {
        let t = tag::STATUS_IN_TRANSACTION;
        let i = tag::STATUS_IDLE;
        let e = tag::STATUS_FAILED;
        let begin = || Done(Action::Other, "BEGIN");
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<Step>, Vec<&str>)> = vec![
            ("autocommit", vec![Done(set("a"), "SET"), Ready(i)], vec!["a"]),
            ("commit", vec![begin(), Done(set("a"), "SET"), Ready(t), Done(Action::Other, "COMMIT"), Ready(i)], vec!["a"]),
            ("rollback", vec![begin(), Done(set("a"), "SET"), Ready(t), Done(Action::Other, "ROLLBACK"), Ready(i)], vec![]),
            ("failed commit", vec![begin(), Done(set("a"), "SET"), Error, Ready(e), Done(Action::Other, "ROLLBACK"), Ready(i)], vec![]),
            ("implicit transaction with an error", vec![Done(set("a"), "SET"), Error, Ready(i)], vec![]),
            ("savepoint rolled back to", vec![begin(), Done(set("a"), "SET"), Done(Action::Savepoint(sp("s")), "SAVEPOINT"),
                Done(set("b"), "SET"), Done(Action::RollbackTo(sp("s")), "ROLLBACK"), Done(set("c"), "SET"),
                Done(Action::Other, "COMMIT"), Ready(i)], vec!["a", "c"]),
            ("release keeps", vec![begin(), Done(Action::Savepoint(sp("s")), "SAVEPOINT"), Done(set("b"), "SET"),
                Done(Action::Release(sp("s")), "RELEASE"), Done(Action::Other, "COMMIT"), Ready(i)], vec!["b"]),
            ("error then rollback to", vec![begin(), Done(set("a"), "SET"), Done(Action::Savepoint(sp("s")), "SAVEPOINT"),
                Done(set("b"), "SET"), Error, Ready(e), Done(Action::RollbackTo(sp("s")), "ROLLBACK"), Ready(t),
                Done(Action::Other, "COMMIT"), Ready(i)], vec!["a"]),
            ("commit and chain", vec![begin(), Done(set("a"), "SET"), Done(Action::Other, "COMMIT"), Ready(t),
                Done(set("b"), "SET"), Done(Action::Other, "ROLLBACK"), Ready(i)], vec!["a"]),
            ("set local is not an action", vec![begin(), Done(Action::Other, "SET"), Done(Action::Other, "COMMIT"), Ready(i)], vec![]),
        ];
        for (what, steps, expected) in cases {
            assert_eq!(
                run(steps),
                (expected.iter().map(|s| s.to_string()).collect(), false),
                "{what}"
            );
        }
    }

    #[test]
    fn a_loop_of_sets_keeps_one_entry_per_parameter() {
        let mut tracker = TxSettings::default();
        let mut out = Vec::new();
        tracker.completed(Action::Other, b"BEGIN\0", &mut out);
        for i in 0..3 * MAX_PENDING {
            let change = ParamChange::Set(format!("app.{}", i % 3), i.to_string());
            tracker.completed(Action::Change(change), b"SET\0", &mut out);
        }
        tracker.completed(Action::Savepoint(sp("s")), b"SAVEPOINT\0", &mut out);
        let reset = ParamChange::Reset("APP.0".into());
        tracker.completed(Action::Change(reset.clone()), b"RESET\0", &mut out);
        tracker.completed(Action::Other, b"COMMIT\0", &mut out);
        assert!(!tracker.lost);
        let last = |i: usize| ParamChange::Set(format!("app.{}", i % 3), i.to_string());
        let n = 3 * MAX_PENDING;
        assert_eq!(out, vec![last(n - 3), last(n - 2), last(n - 1), reset]);
    }

    #[test]
    fn replies_that_do_not_match_lose_track() {
        let i = tag::STATUS_IDLE;
        assert!(run(vec![Done(set("a"), "SELECT 1"), Ready(i)]).1);
        assert!(run(vec![Done(Action::RollbackTo(sp("x")), "ROLLBACK")]).1);
        assert!(run(vec![Done(Action::Release(sp("x")), "RELEASE")]).1);
    }

    #[test]
    fn reported_values_follow_unless_reset() {
        let mut tracker = TxSettings::default();
        let mut out = Vec::new();
        tracker.reported("TimeZone".into(), "UTC".into());
        tracker.reported("is_superuser".into(), "on".into());
        tracker.ready(tag::STATUS_IN_TRANSACTION, &mut out);
        assert!(out.is_empty(), "not before the transaction is over");
        tracker.reported("TimeZone".into(), "Asia/Tokyo".into());
        tracker.ready(tag::STATUS_IDLE, &mut out);
        assert_eq!(
            out,
            vec![ParamChange::Report("TimeZone".into(), "Asia/Tokyo".into())]
        );
        out.clear();
        tracker.completed(Action::Change(ParamChange::ResetAll), b"RESET\0", &mut out);
        tracker.reported("TimeZone".into(), "GMT".into());
        tracker.ready(tag::STATUS_IDLE, &mut out);
        assert_eq!(out, vec![ParamChange::ResetAll]);
    }

    #[test]
    #[rustfmt::skip]
    fn a_value_reported_after_an_untracked_change_is_taken_even_after_a_reset() {
        let untracked = |name: &str| Action::Untracked(Some(name.into()));
        let report = ParamChange::Report("TimeZone".into(), "Europe/Paris".into());
        let reset = ParamChange::Reset("timezone".into());
        // RESET, then set_config: the reported value is set_config's.
        // set_config, then RESET: the reported value is the server's login value.
        for (first, second, expected) in [
            (Action::Change(reset.clone()), Action::Untracked(None), vec![reset.clone(), report.clone()]),
            (Action::Change(reset.clone()), untracked("timezone"), vec![reset.clone(), report.clone()]),
            (Action::Change(reset.clone()), untracked("app.x"), vec![reset.clone()]),
            (Action::Untracked(None), Action::Change(reset.clone()), vec![reset.clone()]),
            (Action::Change(ParamChange::ResetAll), untracked("app.x"), vec![ParamChange::ResetAll]),
            (Action::Change(ParamChange::ResetAll), untracked("timezone"), vec![ParamChange::ResetAll, report.clone()]),
        ] {
            let mut tracker = TxSettings::default();
            let mut out = Vec::new();
            tracker.completed(Action::Other, b"BEGIN\0", &mut out);
            tracker.completed(first, b"RESET\0", &mut out);
            tracker.completed(second, b"RESET\0", &mut out);
            tracker.completed(Action::Other, b"COMMIT\0", &mut out);
            tracker.reported("TimeZone".into(), "Europe/Paris".into());
            tracker.ready(tag::STATUS_IDLE, &mut out);
            assert_eq!(out, expected);
            assert!(!tracker.lost);
        }
        // Rolled back to a savepoint, the untracked change explains nothing.
        let mut tracker = TxSettings::default();
        let mut out = Vec::new();
        tracker.completed(Action::Other, b"BEGIN\0", &mut out);
        tracker.completed(Action::Change(reset.clone()), b"RESET\0", &mut out);
        tracker.completed(Action::Savepoint(sp("s")), b"SAVEPOINT\0", &mut out);
        tracker.completed(Action::Untracked(None), b"SELECT 1\0", &mut out);
        tracker.completed(Action::RollbackTo(sp("s")), b"ROLLBACK\0", &mut out);
        tracker.completed(Action::Other, b"COMMIT\0", &mut out);
        tracker.reported("TimeZone".into(), "UTC".into());
        tracker.ready(tag::STATUS_IDLE, &mut out);
        assert_eq!(out, vec![reset]);
    }
}
