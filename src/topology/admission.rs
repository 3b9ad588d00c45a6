//! Which members learned from Patroni's `/cluster` may be used: with
//! `cluster.allowed_hosts` set, a member whose PostgreSQL host or REST API host is
//! not an address inside one of its ranges is left out of the node list (so neither
//! traffic nor health probes go to it), logged with a warning at most once per
//! [`WARN_EVERY`] per member, and listed in `/status` as an ignored member. A
//! `/cluster` answer comes from the DCS, which is less trusted than this config:
//! a member injected there must not receive clients' passwords or queries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{ApiEndpoint, Cidr};

use super::members::Member;

/// How often the warning about one ignored member repeats while it stays listed.
pub const WARN_EVERY: Duration = Duration::from_secs(300);

/// A member `/cluster` named that is not used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IgnoredMember {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub api: Option<String>,
    pub reason: String,
}

/// The allowed ranges, and when each ignored member was last warned about.
pub struct MemberAdmission {
    allowed: Vec<Cidr>,
    warned: HashMap<String, Instant>,
}

impl MemberAdmission {
    /// Ranges that do not parse are skipped (validation refused them already).
    pub fn new(allowed_hosts: &[String]) -> MemberAdmission {
        MemberAdmission {
            allowed: allowed_hosts
                .iter()
                .filter_map(|r| Cidr::parse(r).ok())
                .collect(),
            warned: HashMap::new(),
        }
    }

    /// Splits `members` into those that may be used and those ignored, warning
    /// about the ignored ones (rate-limited).
    pub fn admit(
        &mut self,
        members: Vec<Member>,
        now: Instant,
    ) -> (Vec<Member>, Vec<IgnoredMember>) {
        let mut admitted = Vec::with_capacity(members.len());
        let mut ignored = Vec::new();
        for member in members {
            match self.refusal(&member) {
                None => admitted.push(member),
                Some(reason) => ignored.push(IgnoredMember {
                    name: member.name,
                    host: member.host,
                    port: member.port,
                    api: member.api,
                    reason,
                }),
            }
        }
        // Forget members no longer ignored, so a return warns again at once.
        self.warned
            .retain(|key, _| ignored.iter().any(|m| warn_key(m) == *key));
        for member in &ignored {
            let due = self
                .warned
                .get(&warn_key(member))
                .is_none_or(|last| now.duration_since(*last) >= WARN_EVERY);
            if due {
                tracing::warn!(
                    member = %member.name,
                    host = %member.host,
                    api = member.api.as_deref().unwrap_or("none"),
                    reason = %member.reason,
                    "membership: ignoring a member Patroni's /cluster names"
                );
                self.warned.insert(warn_key(member), now);
            }
        }
        (admitted, ignored)
    }

    fn refusal(&self, member: &Member) -> Option<String> {
        if self.allowed.is_empty() {
            return None;
        }
        if let Some(reason) = self.host_refusal("host", &member.host) {
            return Some(reason);
        }
        let api = member.api.as_deref()?;
        match ApiEndpoint::parse(api) {
            Ok(endpoint) => self.host_refusal("REST API host", &endpoint.host),
            Err(e) => Some(format!("REST API URL: {e}")),
        }
    }

    fn host_refusal(&self, what: &str, host: &str) -> Option<String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(address) if self.allowed.iter().any(|r| r.contains(address)) => None,
            Ok(_) => Some(format!("{what} {host} is outside cluster.allowed_hosts")),
            Err(_) => Some(format!(
                "{what} {host:?} is a name; cluster.allowed_hosts admits addresses only"
            )),
        }
    }
}

fn warn_key(member: &IgnoredMember) -> String {
    format!(
        "{}\u{0}{}\u{0}{}",
        member.name,
        member.host,
        member.api.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::members::MemberRole;

    fn member(name: &str, host: &str, api: Option<&str>) -> Member {
        Member {
            name: name.into(),
            host: host.into(),
            port: 5432,
            api: api.map(String::from),
            role: MemberRole::Replica,
        }
    }

    #[test]
    fn members_outside_the_ranges_are_ignored_with_a_reason() {
        let mut admission = MemberAdmission::new(&["10.0.0.0/24".into(), "fd00::/8".into()]);
        let (admitted, ignored) = admission.admit(
            vec![
                member("ok", "10.0.0.5", Some("http://10.0.0.5:8008")),
                member("v6", "fd00::5", Some("http://[fd00::5]:8008")),
                member("outside", "192.168.1.5", Some("http://10.0.0.5:8008")),
                member("api-outside", "10.0.0.6", Some("http://169.254.169.254:80")),
                member("named", "db.example", None),
            ],
            Instant::now(),
        );
        let names: Vec<&str> = admitted.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["ok", "v6"]);
        let reasons: Vec<(&str, &str)> = ignored
            .iter()
            .map(|m| (m.name.as_str(), m.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (
                    "outside",
                    "host 192.168.1.5 is outside cluster.allowed_hosts"
                ),
                (
                    "api-outside",
                    "REST API host 169.254.169.254 is outside cluster.allowed_hosts"
                ),
                (
                    "named",
                    "host \"db.example\" is a name; cluster.allowed_hosts admits addresses only"
                ),
            ]
        );
    }

    #[test]
    fn without_ranges_every_member_is_admitted() {
        let mut admission = MemberAdmission::new(&[]);
        let (admitted, ignored) =
            admission.admit(vec![member("any", "db.example", None)], Instant::now());
        assert_eq!(admitted.len(), 1);
        assert!(ignored.is_empty());
    }

    #[test]
    fn the_warning_repeats_only_after_warn_every_or_a_return() {
        let mut admission = MemberAdmission::new(&["10.0.0.0/8".into()]);
        let bad = || vec![member("x", "192.168.0.1", None)];
        let start = Instant::now();
        let key = warn_key(&admission.admit(bad(), start).1[0]);
        assert_eq!(admission.warned.get(&key), Some(&start));
        admission.admit(bad(), start + Duration::from_secs(1));
        assert_eq!(
            admission.warned.get(&key),
            Some(&start),
            "not warned again within WARN_EVERY"
        );
        let later = start + WARN_EVERY;
        admission.admit(bad(), later);
        assert_eq!(admission.warned.get(&key), Some(&later));
        admission.admit(Vec::new(), later);
        assert!(admission.warned.is_empty(), "forgotten once it leaves");
    }
}
