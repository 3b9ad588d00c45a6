//! Checks a parsed config for what the schema cannot express (unique names, usable
//! URLs, sane health settings) and expands `${VAR}` references in secrets. Every
//! error names the offending key.

use crate::auth::stored::StoredPassword;
use std::collections::HashSet;

use super::api::ApiEndpoint;
use super::{Config, ConfigError, Discovery, Secret};

/// Replaces `${NAME}` in every secret with the environment variable's value.
pub(super) fn expand_secrets(
    config: &mut Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (i, user) in config.users.iter_mut().enumerate() {
        let key = format!("users[{i}].password");
        user.password = Secret::new(expand(user.password.expose(), env, &key)?);
    }
    if let Some(probe) = config.cluster.probe.as_mut() {
        let expanded = expand(probe.password.expose(), env, "cluster.probe.password")?;
        probe.password = Secret::new(expanded);
    }
    if let Some(auth) = config.auth.as_mut() {
        auth.password = Secret::new(expand(auth.password.expose(), env, "auth.password")?);
    }
    if let Some(token) = config.admin.token.as_mut() {
        *token = Secret::new(expand(token.expose(), env, "admin.token")?);
    }
    Ok(())
}

fn expand(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    key: &str,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ConfigError::invalid(key, "unterminated ${ in value"))?;
        let name = &after[..end];
        if name.is_empty() {
            return Err(ConfigError::invalid(key, "empty ${} in value"));
        }
        let value = env(name).ok_or_else(|| {
            ConfigError::invalid(key, format!("environment variable {name} is not set"))
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub(super) fn validate(config: &mut Config) -> Result<(), ConfigError> {
    validate_listeners(config)?;
    validate_cluster(config)?;
    validate_users(config)?;
    if let Some(auth) = &config.auth {
        super::auth_query::validate(auth)?;
    }
    super::access::validate(config)?;
    validate_pool(config)?;
    super::tls::validate_tls(config)?;
    super::peers::validate_peers(config)?;
    config.server.tls_loaded = super::server_tls::resolve_server_tls(config)?;
    let https = config
        .cluster
        .nodes
        .iter()
        .any(|n| n.api_endpoint.as_ref().is_some_and(|e| e.https));
    config.cluster.api_tls_loaded = super::server_tls::resolve_api_tls(config, https)?;
    if config.client.max_message_size.0 < 1024 {
        return Err(ConfigError::invalid(
            "client.max_message_size",
            "must be at least 1kB",
        ));
    }
    for (key, value) in [
        (
            "client.max_unauthenticated",
            config.client.max_unauthenticated,
        ),
        (
            "client.max_unauthenticated_per_source",
            config.client.max_unauthenticated_per_source,
        ),
    ] {
        if value == 0 {
            return Err(ConfigError::invalid(key, "must be at least 1"));
        }
    }
    for (i, range) in config.admin.reload_allowed_from.iter().enumerate() {
        super::Cidr::parse(range)
            .map_err(|e| ConfigError::invalid(format!("admin.reload_allowed_from[{i}]"), e))?;
    }
    if config
        .admin
        .token
        .as_ref()
        .is_some_and(|t| t.expose().len() < 16)
    {
        // A short token is guessable over the network; the message never shows it.
        return Err(ConfigError::invalid(
            "admin.token",
            "must be at least 16 characters (e.g. `openssl rand -hex 32`)",
        ));
    }
    if config.admin.max_connections == 0 {
        return Err(ConfigError::invalid(
            "admin.max_connections",
            "must be at least 1",
        ));
    }
    for (i, range) in config.admin.console_allowed_from.iter().enumerate() {
        super::Cidr::parse(range)
            .map_err(|e| ConfigError::invalid(format!("admin.console_allowed_from[{i}]"), e))?;
    }
    for (key, names) in [
        ("admin.console_users", &config.admin.console_users),
        (
            "admin.console_stats_users",
            &config.admin.console_stats_users,
        ),
    ] {
        if let Some(name) = names.iter().find(|n| config.user(n).is_none()) {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "\"{name}\" is not in users: (console users log in with a configured password)"
                ),
            ));
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        return Err(ConfigError::invalid("log.level", e.to_string()));
    }
    if !(1..=super::MAX_WORKERS).contains(&config.runtime.workers) {
        return Err(ConfigError::invalid(
            "runtime.workers",
            format!("must be between 1 and {}", super::MAX_WORKERS),
        ));
    }
    validate_keepalive(&config.server.keepalive)?;
    for (key, value) in [
        ("shutdown_timeout", config.shutdown_timeout),
        ("client.startup_timeout", config.client.startup_timeout),
        ("server.connect_timeout", config.server.connect_timeout),
        ("server.cancel_timeout", config.server.cancel_timeout),
    ] {
        if value.0.is_zero() {
            return Err(ConfigError::invalid(key, "must be greater than zero"));
        }
    }
    Ok(())
}

fn validate_keepalive(keepalive: &super::KeepaliveConfig) -> Result<(), ConfigError> {
    // The kernel takes whole seconds, at least one.
    for (key, value) in [
        ("server.keepalive.idle", keepalive.idle),
        ("server.keepalive.interval", keepalive.interval),
    ] {
        if value.0 < std::time::Duration::from_secs(1) {
            return Err(ConfigError::invalid(key, "must be at least 1s"));
        }
    }
    if keepalive.count == 0 {
        return Err(ConfigError::invalid(
            "server.keepalive.count",
            "must be at least 1",
        ));
    }
    Ok(())
}

fn validate_pool(config: &Config) -> Result<(), ConfigError> {
    let pool = &config.pool;
    if pool.size == 0 {
        return Err(ConfigError::invalid("pool.size", "must be at least 1"));
    }
    if pool.min_idle > pool.size {
        return Err(ConfigError::invalid(
            "pool.min_idle",
            format!("{} is more than pool.size ({})", pool.min_idle, pool.size),
        ));
    }
    if pool.max_client_connections == 0 {
        return Err(ConfigError::invalid(
            "pool.max_client_connections",
            "must be at least 1",
        ));
    }
    if pool.checkout_timeout.0.is_zero() {
        return Err(ConfigError::invalid(
            "pool.checkout_timeout",
            "must be greater than zero",
        ));
    }
    if pool.max_pools == 0 {
        return Err(ConfigError::invalid("pool.max_pools", "must be at least 1"));
    }
    if pool.max_prepared_statements == 0 {
        return Err(ConfigError::invalid(
            "pool.max_prepared_statements",
            "must be at least 1",
        ));
    }
    Ok(())
}

fn validate_listeners(config: &Config) -> Result<(), ConfigError> {
    if config.listeners.is_empty() {
        return Err(ConfigError::invalid(
            "listeners",
            "at least one listener is needed",
        ));
    }
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        if listener.name.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("listeners[{i}].name"),
                "must not be empty",
            ));
        }
        if !names.insert(listener.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("listeners[{i}].name"),
                format!("duplicate listener name {:?}", listener.name),
            ));
        }
        if listener.listen.port() != 0 && !addresses.insert(listener.listen) {
            return Err(ConfigError::invalid(
                format!("listeners[{i}].listen"),
                format!("{} is used by another listener", listener.listen),
            ));
        }
    }
    Ok(())
}

fn validate_cluster(config: &mut Config) -> Result<(), ConfigError> {
    let cluster = &mut config.cluster;
    if cluster.nodes.is_empty() {
        return Err(ConfigError::invalid(
            "cluster.nodes",
            "at least one node is needed",
        ));
    }
    for (i, range) in cluster.allowed_hosts.iter().enumerate() {
        super::Cidr::parse(range)
            .map_err(|e| ConfigError::invalid(format!("cluster.allowed_hosts[{i}]"), e))?;
    }
    let seeds = cluster.nodes.iter().filter(|n| n.is_seed()).count();
    if seeds > 0 {
        return validate_seeds(cluster);
    }
    let mut names = HashSet::new();
    for (i, node) in cluster.nodes.iter_mut().enumerate() {
        if node.name.trim().is_empty() || !names.insert(node.name.clone()) {
            return Err(ConfigError::invalid(
                format!("cluster.nodes[{i}].name"),
                format!("node names must be unique and not empty ({:?})", node.name),
            ));
        }
        if node.host.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("cluster.nodes[{i}].host"),
                "must not be empty",
            ));
        }
        if node.port == 0 {
            return Err(ConfigError::invalid(
                format!("cluster.nodes[{i}].port"),
                "must not be 0",
            ));
        }
        let key = || format!("cluster.nodes[{i}].api");
        node.api_endpoint = match (&node.api, cluster.discovery) {
            // With SQL discovery an `api` is unused, but still has to make sense.
            (Some(url), _) => Some(
                ApiEndpoint::parse(url).map_err(|reason| ConfigError::invalid(key(), reason))?,
            ),
            (None, Discovery::Patroni) => {
                return Err(ConfigError::invalid(
                    key(),
                    "required with cluster.discovery: patroni (the node's Patroni REST API \
                     URL, like http://10.0.0.3:8008)",
                ))
            }
            (None, Discovery::Sql) => None,
        };
    }
    validate_probe(cluster)?;
    validate_health(cluster)
}

fn validate_health(cluster: &super::ClusterConfig) -> Result<(), ConfigError> {
    let health = &cluster.health;
    if health.interval.0.is_zero() || health.timeout.0.is_zero() {
        return Err(ConfigError::invalid(
            "cluster.health",
            "interval and timeout must be greater than zero",
        ));
    }
    if health.rise == 0 || health.fall == 0 {
        return Err(ConfigError::invalid(
            "cluster.health",
            "rise and fall must be at least 1",
        ));
    }
    Ok(())
}

/// Nodes listed by API only: members come from Patroni's `/cluster`, so every
/// entry must be such a seed, and discovery must be Patroni.
fn validate_seeds(cluster: &mut super::ClusterConfig) -> Result<(), ConfigError> {
    if cluster.discovery != Discovery::Patroni {
        return Err(ConfigError::invalid(
            "cluster.nodes",
            "nodes listed without host need cluster.discovery: patroni (members are read \
             from Patroni's /cluster)",
        ));
    }
    for (i, node) in cluster.nodes.iter_mut().enumerate() {
        if !node.is_seed() || !node.name.is_empty() {
            return Err(ConfigError::invalid(
                format!("cluster.nodes[{i}]"),
                "either list every node with name and host, or only Patroni API endpoints \
                 ({ api: http://host:8008 }) to learn members from /cluster; not both",
            ));
        }
        let url = node.api.as_deref().ok_or_else(|| {
            ConfigError::invalid(
                format!("cluster.nodes[{i}].api"),
                "a node without host must have an api",
            )
        })?;
        node.api_endpoint =
            Some(ApiEndpoint::parse(url).map_err(|reason| {
                ConfigError::invalid(format!("cluster.nodes[{i}].api"), reason)
            })?);
    }
    validate_health(cluster)
}

fn validate_probe(cluster: &super::ClusterConfig) -> Result<(), ConfigError> {
    match (&cluster.probe, cluster.discovery) {
        (None, Discovery::Sql) => Err(ConfigError::invalid(
            "cluster.probe",
            "required with cluster.discovery: sql (user and password the probe logs in with)",
        )),
        (Some(probe), _) if probe.user.trim().is_empty() => Err(ConfigError::invalid(
            "cluster.probe.user",
            "must not be empty",
        )),
        (Some(probe), _) if probe.password.expose().is_empty() => Err(ConfigError::invalid(
            "cluster.probe.password",
            "must not be empty",
        )),
        (Some(probe), _) if probe.database.trim().is_empty() => Err(ConfigError::invalid(
            "cluster.probe.database",
            "must not be empty",
        )),
        _ => Ok(()),
    }
}

/// What `check` tells about a valid configuration that may still surprise: an admin
/// API open beyond loopback without a token, and users whose stored password limits
/// how Switchyard can log in to PostgreSQL.
pub fn notes(config: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    let admin = &config.admin;
    if admin.token.is_none() && !admin.listen.ip().is_loopback() {
        notes.push(format!(
            "admin.listen is {} (not loopback) and admin.token is not set: anyone who can \
             reach it can read /status and /metrics; set admin.token (e.g. \
             \"${{SWITCHYARD_ADMIN_TOKEN}}\") or listen on 127.0.0.1",
            admin.listen
        ));
    }
    if !config.cluster.allowed_hosts.is_empty() && !config.cluster.members_from_patroni() {
        notes.push(
            "cluster.allowed_hosts limits members learned from Patroni's /cluster; with \
             nodes listed in full it has no effect"
                .into(),
        );
    }
    notes.extend(user_notes(config));
    notes.extend(config.users.iter().filter_map(|user| {
        let md5_only = matches!(
            StoredPassword::parse(user.password.expose()),
            Ok(StoredPassword::Md5Hash(_))
        );
        let allowed = user.server_require_auth(&config.server);
        (md5_only && !allowed.allows(crate::auth::require::ServerAuthMethod::Md5)).then(|| {
            format!(
                "user {:?}: an MD5 hash can only answer a server's MD5 request, and \
                 require_auth ({allowed}) does not allow md5: it cannot log in to any server",
                user.name
            )
        })
    }));
    notes.extend(server_tls_note(config));
    notes.extend(super::access::notes(config));
    notes.extend(auth_query_note(config));
    notes
}

/// Roles found by `auth.query` whose stored password is an MD5 hash log in to
/// servers with MD5, which the default `server.require_auth` refuses.
fn auth_query_note(config: &Config) -> Option<String> {
    config.auth.as_ref()?;
    let allowed = config.server.require_auth;
    (!allowed.allows(crate::auth::require::ServerAuthMethod::Md5)).then(|| {
        format!(
            "auth: roles whose stored password is an MD5 hash are looked up but cannot log              in to servers: server.require_auth ({allowed}) does not allow md5 (SCRAM-stored              roles log in with SCRAM pass-through)"
        )
    })
}

/// Servers reached over TLS without authenticating them.
fn server_tls_note(config: &Config) -> Option<String> {
    let server = &config.server;
    let unverified = match (server.tls, &server.tls_ca) {
        (super::ServerTlsMode::Prefer, None) => "TLS when a server offers it, else plaintext",
        (super::ServerTlsMode::Require, None) => "TLS",
        _ => return None,
    };
    Some(format!(
        "server.tls is {}: {unverified}, but servers are not authenticated; in production \
         set server.tls: verify-full with server.tls_ca",
        server.tls.as_str()
    ))
}

fn user_notes(config: &Config) -> impl Iterator<Item = String> + '_ {
    config
        .users
        .iter()
        .filter_map(|user| match StoredPassword::parse(user.password.expose()) {
            Ok(StoredPassword::Md5Hash(_)) => Some(format!(
                "user {:?}: an MD5 hash logs in to PostgreSQL only where the server asks for \
                 MD5; a server that asks for SCRAM-SHA-256 refuses it (MD5 cannot pass through \
                 to SCRAM): store the password or the server's SCRAM secret instead",
                user.name
            )),
            Ok(StoredPassword::ScramSecret(_)) => Some(format!(
                "user {:?}: a SCRAM secret logs in to PostgreSQL with the keys of a client that \
                 proved it (pass-through): it must be the server's own secret for that role, and \
                 servers are reached only after such a client logged in",
                user.name
            )),
            _ => None,
        })
}

fn validate_users(config: &Config) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, user) in config.users.iter().enumerate() {
        if user.name.is_empty() || !names.insert(user.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("users[{i}].name"),
                format!("user names must be unique and not empty ({:?})", user.name),
            ));
        }
        if user.password.expose().is_empty() {
            return Err(ConfigError::invalid(
                format!("users[{i}].password"),
                "must not be empty",
            ));
        }
        // The messages name the form, never the value.
        match StoredPassword::parse(user.password.expose()) {
            Err(e) => {
                return Err(ConfigError::invalid(
                    format!("users[{i}].password"),
                    format!("starts like a SCRAM-SHA-256 secret but is not one ({e})"),
                ))
            }
            Ok(StoredPassword::Md5Hash(_)) if user.auth == super::ClientAuthMethod::ScramSha256 => {
                return Err(ConfigError::invalid(
                    format!("users[{i}].password"),
                    "an MD5 hash can only check MD5 logins: set `auth: md5`, or configure \
                     the password or its SCRAM-SHA-256 secret",
                ))
            }
            Ok(StoredPassword::ScramSecret(_)) if user.auth == super::ClientAuthMethod::Cert => {
                return Err(ConfigError::invalid(
                    format!("users[{i}].password"),
                    "a `cert` user's password logs in to PostgreSQL, and a SCRAM secret \
                     can only do that after a client proved the password: configure the \
                     password itself",
                ))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
listeners:
  - { name: rw, listen: "127.0.0.1:5000", route: primary }
  - { name: ro, listen: "127.0.0.1:5001", route: replica, fallback: none }
cluster:
  nodes:
    - { name: node1, host: 10.0.0.3, port: 5432, api: "http://10.0.0.3:8008" }
  health: { interval: 500ms, timeout: 1s, rise: 2, fall: 3 }
users:
  - { name: app, password: "${APP_PW}" }
"#;

    fn env(name: &str) -> Option<String> {
        (name == "APP_PW").then(|| "s3cret".to_string())
    }

    #[test]
    fn stored_passwords_are_checked_without_showing_them() {
        let with_password = |password: &str, auth: &str| {
            MINIMAL.replace(
                r#"{ name: app, password: "${APP_PW}" }"#,
                &format!("{{ name: app, password: \"{password}\", auth: {auth} }}"),
            )
        };
        let hash = "md5aabbccddeeff00112233445566778899";
        let error = Config::from_yaml_str_with_env(&with_password(hash, "scram-sha-256"), &env)
            .expect_err("an MD5 hash cannot check SCRAM");
        assert!(error.to_string().contains("auth: md5"), "{error}");
        assert!(!error.to_string().contains("aabbcc"), "{error}");
        let config = Config::from_yaml_str_with_env(&with_password(hash, "md5"), &env)
            .expect("an MD5 hash with MD5 clients");
        let said = notes(&config);
        assert!(said[0].contains("MD5 cannot pass through"), "{said:?}");
        assert!(
            said[1].contains("require_auth (scram-sha-256) does not allow md5"),
            "{said:?}"
        );
        let listed =
            with_password(hash, "md5").replace("auth: md5 }", "auth: md5, require_auth: md5 }");
        let config = Config::from_yaml_str_with_env(&listed, &env).expect("valid");
        let about_users: Vec<String> = notes(&config)
            .into_iter()
            .filter(|note| note.starts_with("user "))
            .collect();
        assert_eq!(about_users.len(), 1, "{about_users:?}");
        let broken = "SCRAM-SHA-256$4096:c2FsdA==$bm90LWEta2V5";
        let error = Config::from_yaml_str_with_env(&with_password(broken, "scram-sha-256"), &env)
            .expect_err("not a SCRAM secret");
        assert!(!error.to_string().contains("bm90LWEta2V5"), "{error}");
    }

    #[test]
    fn minimal_config_loads_with_defaults_and_env() {
        let config = Config::from_yaml_str_with_env(MINIMAL, &env).expect("valid");
        assert_eq!(config.users[0].password.expose(), "s3cret");
        assert_eq!(
            config.listeners[0].fallback,
            super::super::Fallback::Primary
        );
        assert_eq!(config.listeners[1].fallback, super::super::Fallback::None);
        assert_eq!(
            config.cluster.health.interval.0,
            std::time::Duration::from_millis(500)
        );
        assert_eq!(config.admin.listen.port(), 8080);
        let endpoint = config.cluster.nodes[0]
            .api_endpoint
            .clone()
            .expect("parsed");
        assert_eq!(endpoint.authority(), "10.0.0.3:8008");
        let effective = config.to_effective_yaml();
        assert!(effective.contains("<redacted>"), "{effective}");
        assert!(!effective.contains("s3cret"));
        assert!(effective.contains("startup_timeout"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = MINIMAL.replace("rise: 2", "rise: 2, rize: 3");
        let err = Config::from_yaml_str_with_env(&text, &env).expect_err("unknown key");
        let message = err.to_string();
        assert!(message.contains("unknown field `rize`"), "{message}");
        assert!(message.contains("line 8"), "{message}");
    }

    #[test]
    fn missing_env_var_is_named() {
        let err = Config::from_yaml_str_with_env(MINIMAL, &|_| None).expect_err("no env");
        assert_eq!(
            err.to_string(),
            "users[0].password: environment variable APP_PW is not set"
        );
    }

    #[test]
    fn bad_values_are_rejected_with_their_key() {
        let cases = [
            ("interval: 500ms", "interval: soon", "invalid duration"),
            ("route: primary", "route: sideways", "unknown variant"),
            (
                "http://10.0.0.3:8008",
                "https://10.0.0.3:8008",
                "cluster.api_tls.ca: required for https://",
            ),
            (
                "http://10.0.0.3:8008",
                "http://10.0.0.3",
                "cluster.nodes[0].api",
            ),
            ("rise: 2", "rise: 0", "cluster.health"),
            ("name: ro,", "name: rw,", "duplicate listener name"),
        ];
        for (from, to, expected) in cases {
            let text = MINIMAL.replacen(from, to, 1);
            let err = Config::from_yaml_str_with_env(&text, &env).expect_err(to);
            assert!(err.to_string().contains(expected), "{to}: {err}");
        }
    }

    const SQL_DISCOVERY: &str = r#"
listeners:
  - { name: rw, listen: "127.0.0.1:5000", route: primary }
cluster:
  discovery: sql
  probe: { user: monitor, password: "${PROBE_PW}" }
  nodes:
    - { name: node1, host: 10.0.0.3 }
    - { name: node2, host: 10.0.0.4, api: "http://10.0.0.4:8008" }
users:
  - { name: app, password: app }
"#;

    #[test]
    fn sql_discovery_needs_a_probe_and_no_api() {
        let env = |name: &str| (name == "PROBE_PW").then(|| "pr0be".to_string());
        let config = Config::from_yaml_str_with_env(SQL_DISCOVERY, &env).expect("valid");
        assert_eq!(config.cluster.discovery, Discovery::Sql);
        let probe = config.cluster.probe.as_ref().expect("probe");
        assert_eq!(probe.password.expose(), "pr0be");
        assert_eq!(probe.database, "postgres", "default database");
        assert!(config.cluster.nodes[0].api_endpoint.is_none());
        assert!(config.cluster.nodes[1].api_endpoint.is_some());
        let effective = config.to_effective_yaml();
        assert!(effective.contains("discovery: sql"), "{effective}");
        assert!(!effective.contains("pr0be"), "{effective}");

        let missing = Config::from_yaml_str_with_env(SQL_DISCOVERY, &|_| None).expect_err("env");
        assert_eq!(
            missing.to_string(),
            "cluster.probe.password: environment variable PROBE_PW is not set"
        );
        let cases = [
            (
                "  probe: { user: monitor, password: \"${PROBE_PW}\" }\n",
                "",
                "cluster.probe: required",
            ),
            ("user: monitor", "user: \"\"", "cluster.probe.user"),
            (
                "user: monitor",
                "user: monitor, port: 5",
                "unknown field `port`",
            ),
            (
                "discovery: sql",
                "discovery: patroni",
                "cluster.nodes[0].api: required",
            ),
            ("discovery: sql", "discovery: consul", "unknown variant"),
        ];
        for (from, to, expected) in cases {
            let text = SQL_DISCOVERY.replacen(from, to, 1);
            let err = Config::from_yaml_str_with_env(&text, &env).expect_err(to);
            assert!(err.to_string().contains(expected), "{to}: {err}");
        }
    }

    #[test]
    fn patroni_discovery_names_the_node_without_an_api() {
        let text = MINIMAL.replace(
            "  health:",
            "    - { name: node2, host: 10.0.0.4 }\n  health:",
        );
        let err = Config::from_yaml_str_with_env(&text, &env).expect_err("no api");
        assert!(
            err.to_string()
                .starts_with("cluster.nodes[1].api: required"),
            "{err}"
        );
        let config = Config::from_yaml_str_with_env(MINIMAL, &env).expect("valid");
        assert_eq!(config.cluster.discovery, Discovery::Patroni);
        assert!(config.cluster.probe.is_none());
    }
}
