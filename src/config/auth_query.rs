//! The `auth:` section: how Switchyard looks up users that are not in `users:`
//! (PgBouncer's `auth_query`): the query, the login it runs as, how long answers
//! are cached and how many lookups may run at once. Its validation lives here too.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::HumanDuration;
use super::{ConfigError, Secret};

/// The function form README's "auth_query" section creates: a SECURITY DEFINER
/// function, so the lookup login needs no access to `pg_authid` itself.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT usename, passwd FROM switchyard.get_auth($1)";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthQueryConfig {
    /// Returns the user name and its stored password (`pg_authid.rolpassword`: a
    /// SCRAM secret or an MD5 hash) for the name passed as `$1`; no row or a NULL
    /// password means no such user.
    #[serde(default = "default_query")]
    pub query: String,
    /// The login the query runs as.
    pub user: String,
    /// `${VAR}` parts come from the environment, as for users' passwords.
    pub password: Secret,
    /// The database the query runs in.
    #[serde(default = "default_database")]
    pub database: String,
    /// How long a found user's secret is used before it is fetched again.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: HumanDuration,
    /// How long "no such user" is remembered.
    #[serde(default = "default_negative_cache_ttl")]
    pub negative_cache_ttl: HumanDuration,
    /// The query must answer within this (the login within `server.connect_timeout`).
    #[serde(default = "default_query_timeout")]
    pub query_timeout: HumanDuration,
    /// Lookups running at once, each on its own server connection; more wait.
    #[serde(default = "default_max_fetches")]
    pub max_fetches: u32,
    /// A failed login refetches the user's secret (a changed password takes
    /// effect) at most once per this interval per user.
    #[serde(default = "default_refetch_interval")]
    pub refetch_interval: HumanDuration,
}

fn default_query() -> String {
    DEFAULT_AUTH_QUERY.into()
}
fn default_database() -> String {
    "postgres".into()
}
fn default_cache_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_negative_cache_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_query_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_max_fetches() -> u32 {
    2
}
fn default_refetch_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

/// Checks what the schema cannot: the query takes the name as `$1`, the login
/// is complete, and the bounds are usable. Messages never show the password.
pub(super) fn validate(auth: &AuthQueryConfig) -> Result<(), ConfigError> {
    if !auth.query.contains("$1") {
        return Err(ConfigError::invalid(
            "auth.query",
            "must take the user name as the parameter $1 (it is passed as a parameter, \
             never pasted into the text)",
        ));
    }
    if auth.query.contains('\0') {
        return Err(ConfigError::invalid(
            "auth.query",
            "must not contain a NUL character",
        ));
    }
    for (key, value) in [("auth.user", &auth.user), ("auth.database", &auth.database)] {
        if value.is_empty() {
            return Err(ConfigError::invalid(key, "must not be empty"));
        }
    }
    if auth.password.expose().is_empty() {
        return Err(ConfigError::invalid("auth.password", "must not be empty"));
    }
    if auth.query_timeout.0.is_zero() {
        return Err(ConfigError::invalid(
            "auth.query_timeout",
            "must be greater than zero",
        ));
    }
    if auth.max_fetches == 0 {
        return Err(ConfigError::invalid(
            "auth.max_fetches",
            "must be at least 1",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(query: &str) -> AuthQueryConfig {
        AuthQueryConfig {
            query: query.into(),
            user: "switchyard_auth".into(),
            password: Secret::new("pw"),
            database: default_database(),
            cache_ttl: default_cache_ttl(),
            negative_cache_ttl: default_negative_cache_ttl(),
            query_timeout: default_query_timeout(),
            max_fetches: default_max_fetches(),
            refetch_interval: default_refetch_interval(),
        }
    }

    #[test]
    fn the_query_must_take_the_name_as_a_parameter() {
        assert!(validate(&auth(DEFAULT_AUTH_QUERY)).is_ok());
        let error = validate(&auth(
            "SELECT usename, passwd FROM pg_shadow WHERE usename = 'x'",
        ))
        .expect_err("no $1");
        assert!(error.to_string().starts_with("auth.query:"), "{error}");
    }

    #[test]
    fn the_password_comes_from_the_environment_and_is_never_shown() {
        let yaml = "listeners:\n  - { name: rw, listen: \"127.0.0.1:5000\", route: primary }\n\
             cluster:\n  nodes:\n    - { name: n1, host: 127.0.0.1, port: 5432, api: \"http://127.0.0.1:8008\" }\n\
             users: []\n\
             auth: { user: switchyard_auth, password: \"${AUTH_PW}\" }\n";
        let env = |name: &str| (name == "AUTH_PW").then(|| "very-secret-lookup-pw".to_string());
        let config = super::super::Config::from_yaml_str_with_env(yaml, &env).expect("valid");
        let auth = config.auth.as_ref().expect("auth section");
        assert_eq!(auth.password.expose(), "very-secret-lookup-pw");
        assert_eq!(auth.query, DEFAULT_AUTH_QUERY);
        assert_eq!(auth.cache_ttl.0, Duration::from_secs(60));
        assert_eq!(auth.negative_cache_ttl.0, Duration::from_secs(5));
        let shown = format!("{}\n{config:?}", config.to_effective_yaml());
        assert!(!shown.contains("very-secret-lookup-pw"), "{shown}");
        let unset = super::super::Config::from_yaml_str_with_env(yaml, &|_| None)
            .expect_err("AUTH_PW is not set");
        assert!(unset.to_string().starts_with("auth.password:"), "{unset}");
    }

    #[test]
    fn bounds_must_be_usable() {
        let mut zero = auth(DEFAULT_AUTH_QUERY);
        zero.max_fetches = 0;
        assert!(validate(&zero).is_err());
        let mut no_password = auth(DEFAULT_AUTH_QUERY);
        no_password.password = Secret::new("");
        let error = validate(&no_password).expect_err("empty password");
        assert!(error.to_string().starts_with("auth.password:"), "{error}");
    }
}
