//! The ParameterStatus values a pool greets new clients with, so a client is
//! greeted without waiting for a server: for clients that sent no startup
//! parameters, what a server reported at login; for each set of startup
//! parameters seen, what a server reported once that set was applied (a server's
//! word, never our guess: it normalises values like DateStyle and client_encoding,
//! and rejects bad ones, which are never remembered). Bounded; past the bound the
//! oldest set is forgotten, and its next client waits for a server to learn it again.

use std::sync::Mutex;

use crate::server::params::ParamSet;

/// Most parameter sets remembered per pool.
const MAX_SETS: usize = 64;

type Reported = Vec<(String, String)>;

#[derive(Default)]
pub(super) struct Welcomes {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// What the first successful login reported.
    login: Option<Reported>,
    /// Per set of startup parameters, oldest first.
    by_params: Vec<(ParamSet, Reported)>,
}

impl Welcomes {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section is a lookup, push or remove: a panic cannot
        // leave it half done.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a client with startup parameters `params` should be told, if known.
    pub(super) fn get(&self, params: &ParamSet) -> Option<Reported> {
        let inner = self.inner();
        if params.is_empty() {
            return inner.login.clone();
        }
        inner
            .by_params
            .iter()
            .find(|(set, _)| set == params)
            .map(|(_, reported)| reported.clone())
    }

    /// Keeps the first login's parameters.
    pub(super) fn note_login(&self, reported: &[(String, String)]) {
        self.inner().login.get_or_insert_with(|| reported.to_vec());
    }

    /// Keeps what a server reported with `params` applied.
    pub(super) fn remember(&self, params: &ParamSet, reported: &[(String, String)]) {
        let mut inner = self.inner();
        if params.is_empty() {
            inner.login.get_or_insert_with(|| reported.to_vec());
            return;
        }
        inner.by_params.retain(|(set, _)| set != params);
        if inner.by_params.len() >= MAX_SETS {
            inner.by_params.remove(0);
        }
        inner.by_params.push((params.clone(), reported.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::params::ParamValue;

    fn reported(value: &str) -> Reported {
        vec![("DateStyle".into(), value.into())]
    }

    fn set(value: &str) -> ParamSet {
        let mut set = ParamSet::default();
        set.set("DateStyle", ParamValue::Raw(value.into()));
        set
    }

    #[test]
    fn greets_each_set_with_what_a_server_reported_for_it() {
        let welcomes = Welcomes::default();
        assert_eq!(welcomes.get(&ParamSet::default()), None);
        welcomes.note_login(&reported("ISO, MDY"));
        welcomes.note_login(&reported("later logins change nothing"));
        assert_eq!(
            welcomes.get(&ParamSet::default()),
            Some(reported("ISO, MDY"))
        );
        assert_eq!(welcomes.get(&set("german")), None, "not learned yet");
        welcomes.remember(&set("german"), &reported("German, DMY"));
        assert_eq!(welcomes.get(&set("german")), Some(reported("German, DMY")));
        assert_eq!(welcomes.get(&set("sql")), None);
    }

    #[test]
    fn forgets_the_oldest_set_past_the_bound() {
        let welcomes = Welcomes::default();
        for i in 0..=MAX_SETS {
            welcomes.remember(&set(&i.to_string()), &reported(&i.to_string()));
        }
        assert_eq!(welcomes.get(&set("0")), None);
        assert_eq!(welcomes.get(&set("1")), Some(reported("1")));
        let last = MAX_SETS.to_string();
        assert_eq!(welcomes.get(&set(&last)), Some(reported(&last)));
    }
}
