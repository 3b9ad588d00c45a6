//! The parameters a client has: what its startup packet asked for (what RESET
//! returns to), what every server it uses must have (startup values plus the SETs
//! it ran outside a transaction), and which ParameterStatus values it has been told.

use bytes::BytesMut;

use super::settings::ParamChange;
use crate::pool::PooledServer;
use crate::protocol::messages;
use crate::server::params::{ParamSet, ParamValue};

/// Most parameter names a client's set may hold.
const MAX_PARAMS: usize = 1000;
/// Most bytes of names and values a client's set may hold.
const MAX_PARAM_BYTES: usize = 64 * 1024;

pub(super) struct ClientParams {
    /// Parameters from the startup packet: what RESET returns to.
    startup: ParamSet,
    /// Parameters every server this client uses must have.
    desired: ParamSet,
    /// ParameterStatus values the client has been told.
    reported: Vec<(String, String)>,
    /// The params digest of the server `reported` was last checked against.
    reported_from: Option<u128>,
}

impl ClientParams {
    pub(super) fn from_startup(passthrough: &[(String, String)]) -> ClientParams {
        let startup = ParamSet::from_startup(passthrough);
        ClientParams {
            desired: startup.clone(),
            startup,
            reported: Vec::new(),
            reported_from: None,
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
            tracing::warn!(
                params = next.iter().count(),
                bytes,
                "the client's session parameters exceed the limit; this change is not carried to its next transactions"
            );
            return;
        }
        self.desired = next;
    }

    /// ParameterStatus from the pool's cached login, with the client's own
    /// application_name (the value PostgreSQL would report for it).
    pub(super) fn greet_from_cache(
        &mut self,
        mut params: Vec<(String, String)>,
        out: &mut BytesMut,
    ) {
        if let Some(ParamValue::Raw(name)) = self.startup.get("application_name") {
            if let Some(slot) = params.iter_mut().find(|(n, _)| n == "application_name") {
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
