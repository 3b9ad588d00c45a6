//! What a client's SET/RESET statements do to a parameter set (the client's, or
//! what a pooled server has set), with PostgreSQL's special cases: RESET ALL
//! leaves `role` and `session_authorization` alone, DISCARD ALL does not, and a
//! new session authorization also drops the role. Pure; recognising the statements
//! in query text is [`sql_scan`](super::sql_scan)'s job.

use crate::server::params::{ParamSet, ParamValue};

/// A change to tracked parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamChange {
    /// `SET name TO <sql>` (the value as the client wrote it).
    Set(String, String),
    Reset(String),
    ResetAll,
    DiscardAll,
    /// A value the server reported in ParameterStatus (what a `set_config` or a
    /// function changed): the server's word, applied as a raw value.
    Report(String, String),
}

/// Parameters RESET ALL does not touch (PostgreSQL marks them GUC_NO_RESET_ALL).
const KEPT_BY_RESET_ALL: [&str; 2] = ["role", "session_authorization"];

impl ParamChange {
    /// The parameter it names, if one.
    pub fn name(&self) -> Option<&str> {
        match self {
            ParamChange::Set(name, _) | ParamChange::Reset(name) | ParamChange::Report(name, _) => {
                Some(name)
            }
            ParamChange::ResetAll | ParamChange::DiscardAll => None,
        }
    }

    /// Applies the change to the client's parameters; `startup` gives the values a
    /// RESET returns to, as PostgreSQL resets to the session's startup values.
    pub fn apply(&self, params: &mut ParamSet, startup: &ParamSet) {
        match self {
            ParamChange::Set(name, sql) => params.set(name, ParamValue::Sql(sql.clone())),
            ParamChange::Report(name, raw) => params.set(name, ParamValue::Raw(raw.clone())),
            ParamChange::Reset(name) => match startup.get(name) {
                Some(value) => params.set(name, value.clone()),
                None => params.remove(name),
            },
            ParamChange::ResetAll => {
                let kept = kept_by_reset_all(params);
                *params = startup.clone();
                for (name, value) in kept {
                    params.set(&name, value);
                }
            }
            ParamChange::DiscardAll => *params = startup.clone(),
        }
        self.drop_role_after_authorization(params);
    }

    /// Applies the change to what a pooled server has set beyond its login
    /// defaults (RESET returns a server to its login value, not the client's).
    pub fn apply_to_server(&self, applied: &mut ParamSet) {
        match self {
            ParamChange::Set(name, sql) => applied.set(name, ParamValue::Sql(sql.clone())),
            ParamChange::Report(name, raw) => applied.set(name, ParamValue::Raw(raw.clone())),
            ParamChange::Reset(name) => applied.remove(name),
            ParamChange::ResetAll => {
                let kept = kept_by_reset_all(applied);
                *applied = ParamSet::default();
                for (name, value) in kept {
                    applied.set(&name, value);
                }
            }
            ParamChange::DiscardAll => *applied = ParamSet::default(),
        }
        self.drop_role_after_authorization(applied);
    }

    /// SET SESSION AUTHORIZATION (and its RESET) also sets the role back to NONE.
    fn drop_role_after_authorization(&self, params: &mut ParamSet) {
        if self
            .name()
            .is_some_and(|n| n.eq_ignore_ascii_case("session_authorization"))
        {
            params.remove("role");
        }
    }
}

fn kept_by_reset_all(params: &ParamSet) -> Vec<(String, ParamValue)> {
    params
        .iter()
        .filter(|(name, _)| {
            KEPT_BY_RESET_ALL
                .iter()
                .any(|k| name.eq_ignore_ascii_case(k))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn role_and_authorization_follow_postgresql() {
        let startup = ParamSet::default();
        let role = |p: &ParamSet| p.get("role").cloned();
        let mut params = ParamSet::default();
        let mut server = ParamSet::default();
        for change in [
            ParamChange::Set("role".into(), "tenant_a".into()),
            ParamChange::ResetAll,
        ] {
            change.apply(&mut params, &startup);
            change.apply_to_server(&mut server);
        }
        let tenant = Some(ParamValue::Sql("tenant_a".into()));
        assert_eq!((role(&params), role(&server)), (tenant.clone(), tenant));
        let change = ParamChange::Set("session_authorization".into(), "app".into());
        change.apply(&mut params, &startup);
        change.apply_to_server(&mut server);
        assert_eq!((role(&params), role(&server)), (None, None));
        ParamChange::DiscardAll.apply(&mut params, &startup);
        ParamChange::DiscardAll.apply_to_server(&mut server);
        assert!(params.is_empty() && server.is_empty());
    }
}
