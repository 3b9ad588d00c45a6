//! `access:` rules, pg_hba.conf's idea for the proxy: who may connect (client
//! address, user, database, listener, whether on TLS) and how they must
//! authenticate. Rules are tried in order before authentication and the first that
//! matches decides; with rules configured, a connection no rule matches is refused.
//! Without an `access:` section every connection may try to log in, each user with
//! its own `auth` method (the behaviour before rules existed).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Cidr, ClientTlsMode, Config, ConfigError};

/// One rule; every field but `method` defaults to matching anything.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// A CIDR range (`10.0.0.0/8`, `::1/128`, a single address) or `all`.
    #[serde(default = "all")]
    pub source: String,
    /// A user name or `all`.
    #[serde(default = "all")]
    pub user: String,
    /// A database name or `all`.
    #[serde(default = "all")]
    pub database: String,
    /// A listener name or `all`.
    #[serde(default = "all")]
    pub listener: String,
    /// `required`: the rule matches TLS connections only; `any`: both.
    #[serde(default)]
    pub tls: AccessTls,
    pub method: AccessMethod,
}

fn all() -> String {
    "all".to_string()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessTls {
    #[default]
    Any,
    Required,
}

/// How a matching connection must authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum AccessMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "cert")]
    Cert,
    #[serde(rename = "reject")]
    Reject,
}

/// What a connection looks like when the rules are tried.
pub struct AccessRequest<'a> {
    pub source: IpAddr,
    pub user: &'a str,
    pub database: &'a str,
    pub listener: &'a str,
    pub tls: bool,
}

/// The outcome of trying the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessDecision {
    /// No `access:` section: the user's own `auth` method applies.
    Unrestricted,
    /// Rule `index` (0-based) matched and says how to authenticate.
    Method(usize, AccessMethod),
    /// Rules exist and none matched.
    NoRule,
}

impl AccessRule {
    fn matches(&self, request: &AccessRequest<'_>) -> bool {
        let named = |pattern: &str, value: &str| pattern == "all" || pattern == value;
        let source = self.source == "all"
            || Cidr::parse(&self.source).is_ok_and(|cidr| cidr.contains(request.source));
        source
            && named(&self.user, request.user)
            && named(&self.database, request.database)
            && named(&self.listener, request.listener)
            && (self.tls == AccessTls::Any || request.tls)
    }

    /// Whether this rule matches every connection `later` matches (so `later`,
    /// placed after it, can never decide anything).
    fn covers(&self, later: &AccessRule) -> bool {
        let field = |mine: &str, theirs: &str| mine == "all" || mine == theirs;
        let source = self.source == "all"
            || (self.source == later.source)
            || match (Cidr::parse(&self.source), Cidr::parse(&later.source)) {
                (Ok(mine), Ok(theirs)) => mine.covers(&theirs),
                _ => false,
            };
        source
            && field(&self.user, &later.user)
            && field(&self.database, &later.database)
            && field(&self.listener, &later.listener)
            && (self.tls == AccessTls::Any || later.tls == AccessTls::Required)
    }
}

/// Tries `rules` in order for `request`.
pub fn decide(rules: &[AccessRule], request: &AccessRequest<'_>) -> AccessDecision {
    if rules.is_empty() {
        return AccessDecision::Unrestricted;
    }
    rules
        .iter()
        .position(|rule| rule.matches(request))
        .map_or(AccessDecision::NoRule, |i| {
            AccessDecision::Method(i, rules[i].method)
        })
}

/// Refuses rules that cannot be read: bad CIDRs, `cert` where no listener the rule
/// covers verifies client certificates.
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    for (i, rule) in config.access.iter().enumerate() {
        if rule.source != "all" {
            Cidr::parse(&rule.source)
                .map_err(|e| ConfigError::invalid(format!("access[{i}].source"), e))?;
        }
        if rule.listener != "all" && !config.listeners.iter().any(|l| l.name == rule.listener) {
            return Err(ConfigError::invalid(
                format!("access[{i}].listener"),
                format!("no listener is named {:?}", rule.listener),
            ));
        }
    }
    Ok(())
}

/// Rules that can never decide anything, for `check`.
pub(super) fn notes(config: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    for (i, rule) in config.access.iter().enumerate() {
        if let Some(earlier) = config.access[..i].iter().position(|e| e.covers(rule)) {
            notes.push(format!(
                "access[{i}] can never match: access[{earlier}] before it matches every \
                 connection it would"
            ));
            continue;
        }
        let listeners: Vec<_> = config
            .listeners
            .iter()
            .filter(|l| rule.listener == "all" || l.name == rule.listener)
            .collect();
        let tls_of =
            |listener: &super::ListenerConfig| listener.tls.as_ref().unwrap_or(&config.tls).clone();
        if rule.tls == AccessTls::Required
            && listeners
                .iter()
                .all(|l| tls_of(l).mode == ClientTlsMode::Disable)
        {
            notes.push(format!(
                "access[{i}] can never match: it requires TLS and no listener it names offers TLS"
            ));
        } else if rule.method == AccessMethod::Cert
            && listeners.iter().all(|l| tls_of(l).client_ca.is_none())
        {
            notes.push(format!(
                "access[{i}] (method cert) can never let anyone in: no listener it names \
                 verifies client certificates (tls.client_ca)"
            ));
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> AccessRule {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    fn request<'a>(source: &str, user: &'a str, tls: bool) -> AccessRequest<'a> {
        AccessRequest {
            source: source.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            user,
            database: "appdb",
            listener: "rw",
            tls,
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let rules = vec![
            rule("{ source: 10.1.0.0/16, method: reject }"),
            rule("{ source: 10.0.0.0/8, user: app, tls: required, method: cert }"),
            rule("{ source: 10.0.0.0/8, method: scram-sha-256 }"),
            rule("{ user: ops, database: appdb, listener: rw, method: md5 }"),
        ];
        let cases = [
            (
                request("10.1.2.3", "app", true),
                AccessDecision::Method(0, AccessMethod::Reject),
            ),
            (
                request("10.2.2.3", "app", true),
                AccessDecision::Method(1, AccessMethod::Cert),
            ),
            (
                request("10.2.2.3", "app", false),
                AccessDecision::Method(2, AccessMethod::ScramSha256),
            ),
            (
                request("192.168.0.1", "ops", false),
                AccessDecision::Method(3, AccessMethod::Md5),
            ),
            (request("192.168.0.1", "app", false), AccessDecision::NoRule),
        ];
        for (request, expected) in cases {
            assert_eq!(decide(&rules, &request), expected, "{}", request.source);
        }
        assert_eq!(
            decide(&[], &request("10.0.0.1", "app", false)),
            AccessDecision::Unrestricted
        );
    }

    #[test]
    fn a_rule_behind_a_broader_one_is_found() {
        let broad = rule("{ source: 10.0.0.0/8, method: scram-sha-256 }");
        let narrow = rule("{ source: 10.1.0.0/16, user: app, method: reject }");
        assert!(broad.covers(&narrow));
        assert!(!narrow.covers(&broad));
        let tls_only = rule("{ tls: required, method: cert }");
        assert!(!tls_only.covers(&rule("{ method: md5 }")));
        assert!(rule("{ method: md5 }").covers(&tls_only));
    }
}
