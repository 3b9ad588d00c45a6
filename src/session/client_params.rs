//! The parameters a client has: what its startup packet asked for (what RESET
//! returns to), what every server it uses must have (startup values plus the SETs
//! it ran outside a transaction), and which ParameterStatus values it has been told,
//! starting with its greeting: what a server reported with its startup parameters
//! applied, cached per pool under a [`WelcomeKey`].

use bytes::BytesMut;

use super::settings::ParamChange;
use crate::pool::PooledServer;
use crate::protocol::messages;
use crate::server::params::{ParamSet, ParamValue};

/// Most parameter names a client's set may hold.
const MAX_PARAMS: usize = 1000;
/// Most bytes of names and values a client's set may hold.
const MAX_PARAM_BYTES: usize = 64 * 1024;

const APPLICATION_NAME: &str = "application_name";

/// Where a client's greeting is found in its pool's cache: its startup parameters,
/// less an application_name PostgreSQL reports exactly as given, which is put into
/// the greeting instead (clients often differ only in it, and each new set costs
/// a server checkout at connect).
pub(super) struct WelcomeKey {
    pub(super) params: ParamSet,
    application_name: Option<String>,
}

/// Whether PostgreSQL reports an application_name as given: printable ASCII (it
/// replaces or escapes anything else, by version) shorter than NAMEDATALEN (it
/// truncates to 63 bytes).
fn reported_verbatim(name: &str) -> bool {
    name.len() < 64 && name.bytes().all(|b| (0x20..0x7f).contains(&b))
}

pub(super) struct ClientParams {
    /// Parameters from the startup packet: what RESET returns to.
    startup: ParamSet,
    /// Parameters every server this client uses must have.
    desired: ParamSet,
    /// ParameterStatus values the client has been told.
    reported: Vec<(String, String)>,
    /// The params digest of the server `reported` was last checked against.
    reported_from: Option<u128>,
    /// A change past the limits was logged.
    over_limit_logged: bool,
}

impl ClientParams {
    pub(super) fn from_startup(passthrough: &[(String, String)]) -> ClientParams {
        let startup = ParamSet::from_startup(passthrough);
        ClientParams {
            desired: startup.clone(),
            startup,
            reported: Vec::new(),
            reported_from: None,
            over_limit_logged: false,
        }
    }

    pub(super) fn desired(&self) -> &ParamSet {
        &self.desired
    }

    /// A SET/RESET the client ran (outside a transaction, or committed) now holds.
    /// Past [`MAX_PARAMS`] names or [`MAX_PARAM_BYTES`] of values the change is
    /// not carried: the server that ran it is brought back in line (its `applied`
    /// has it, the client's set does not) before anyone else uses it, and the
    /// client's later transactions run without it.
    pub(super) fn apply(&mut self, change: &ParamChange) {
        let mut next = self.desired.clone();
        change.apply(&mut next, &self.startup);
        let bytes: usize = next
            .iter()
            .map(|(name, value)| {
                name.len()
                    + match value {
                        ParamValue::Raw(v) | ParamValue::Sql(v) => v.len(),
                    }
            })
            .sum();
        if next.iter().count() > MAX_PARAMS || bytes > MAX_PARAM_BYTES {
            // Once per session: a client looping over SET must not flood the log.
            if !self.over_limit_logged {
                self.over_limit_logged = true;
                tracing::warn!(
                    params = next.iter().count(),
                    bytes,
                    "the client's session parameters exceed the limit; changes past it are not carried to its next transactions (logged once per session)"
                );
            }
            return;
        }
        self.desired = next;
    }

    /// What the client's greeting is cached under in its pool
    /// ([`ServerPool::welcome`](crate::pool::ServerPool::welcome)).
    pub(super) fn welcome_key(&self) -> WelcomeKey {
        let mut params = self.startup.clone();
        let application_name = match self.startup.get(APPLICATION_NAME) {
            Some(ParamValue::Raw(name)) if reported_verbatim(name) => {
                params.remove(APPLICATION_NAME);
                Some(name.clone())
            }
            _ => None,
        };
        WelcomeKey {
            params,
            application_name,
        }
    }

    /// ParameterStatus from what the pool's servers reported for this client's
    /// startup parameters, with its application_name put back (see [`WelcomeKey`]).
    pub(super) fn greet_from_cache(
        &mut self,
        mut params: Vec<(String, String)>,
        key: &WelcomeKey,
        out: &mut BytesMut,
    ) {
        if let Some(name) = &key.application_name {
            if let Some(slot) = params.iter_mut().find(|(n, _)| n == APPLICATION_NAME) {
                slot.1 = name.clone();
            }
        }
        for (name, value) in &params {
            messages::parameter_status(out, name, value);
        }
        self.reported = params;
        self.reported_from = None;
    }

    /// ParameterStatus messages for values on `server` the client has not been told.
    pub(super) fn parameter_updates(&mut self, server: &PooledServer, out: &mut BytesMut) {
        if self.reported_from == Some(server.params_digest) {
            return;
        }
        self.reported_from = Some(server.params_digest);
        for (name, value) in &server.params {
            match self.reported.iter_mut().find(|(n, _)| n == name) {
                Some((_, known)) if known == value => {}
                Some((_, known)) => {
                    *known = value.clone();
                    messages::parameter_status(out, name, value);
                }
                None => {
                    self.reported.push((name.clone(), value.clone()));
                    messages::parameter_status(out, name, value);
                }
            }
        }
    }

    /// The client has been told `standard_conforming_strings` is off.
    pub(super) fn nonstandard_strings(&self) -> bool {
        self.reported
            .iter()
            .any(|(name, value)| name == "standard_conforming_strings" && value == "off")
    }

    /// Records a ParameterStatus body the client was sent through the relay.
    pub(super) fn note_reported(&mut self, body: &[u8]) {
        self.reported_from = None;
        if let Ok((name, value)) = crate::protocol::backend::parse_parameter_status(body) {
            match self.reported.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = value,
                None => self.reported.push((name, value)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(params: &[(&str, &str)]) -> ClientParams {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ClientParams::from_startup(&params)
    }

    #[test]
    fn a_plain_application_name_is_left_out_of_the_welcome_key() {
        let a = client(&[("application_name", "a"), ("DateStyle", "german")]);
        let b = client(&[("DateStyle", "german"), ("application_name", "b")]);
        assert_eq!(a.welcome_key().params, b.welcome_key().params);
        assert_eq!(a.welcome_key().application_name.as_deref(), Some("a"));
        let mut out = BytesMut::new();
        let mut a = a;
        let key = a.welcome_key();
        a.greet_from_cache(
            vec![("application_name".into(), "b".into())],
            &key,
            &mut out,
        );
        assert_eq!(a.reported, vec![("application_name".into(), "a".into())]);
        assert!(client(&[]).welcome_key().params.is_empty());
    }

    #[test]
    fn an_application_name_postgres_changes_is_part_of_the_key() {
        let long = "x".repeat(64);
        for name in [long.as_str(), "caf\u{e9}", "tab\there"] {
            let key = client(&[("application_name", name)]).welcome_key();
            assert!(key.application_name.is_none(), "{name:?}");
            assert!(!key.params.is_empty(), "{name:?}");
        }
        assert!(reported_verbatim(&"x".repeat(63)));
    }
}
