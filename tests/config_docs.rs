//! The configuration reference stays true: every option the code accepts (found by
//! serializing a config that sets everything) has a row in README.md's
//! "Configuration reference" and appears in the annotated conf/switchyard.yaml,
//! and every option the README documents exists in the code.

// Only the CA and client certificates are needed here.
#[allow(dead_code)]
#[path = "harness/certs.rs"]
mod certs;

use std::collections::BTreeSet;

use serde_json::Value;
use switchyard::config::Config;

/// A config that sets every optional section, so serialization shows every key.
const EVERYTHING: &str = r#"
listeners:
  - name: rw
    listen: 127.0.0.1:5000
    route: primary
    fallback: none
    pool: { mode: transaction, checkout_timeout: 5s, reset_query: "DISCARD ALL" }
    tls: { mode: require, cert: /etc/switchyard/rw.pem, key: /etc/switchyard/rw.key, client_ca: /etc/switchyard/ca.pem, min_version: TLSv1.3 }
tls:
  mode: allow
  cert: /etc/switchyard/server.pem
  key: /etc/switchyard/server.key
  client_ca: /etc/switchyard/client-ca.pem
  min_version: TLSv1.2
admin:
  listen: 127.0.0.1:8080
  reload_allowed_from: [10.0.0.0/8]
  console_users: [app]
  console_stats_users: [app]
  console_allowed_from: [10.0.0.0/8]
  token: an-admin-token-of-some-length
  max_connections: 64
cluster:
  discovery: sql
  probe: { user: monitor, password: pw, database: postgres, require_auth: "scram-sha-256" }
  nodes:
    - { name: a, host: 127.0.0.1, port: 5432, api: "https://127.0.0.1:8008", tls: verify-full, tls_ca: "@CA@", tls_cert: "@CERT@", tls_key: "@KEY@" }
  api_tls: { ca: "@CA@", cert: "@CERT@", key: "@KEY@" }
  health: { interval: 1s, timeout: 1s, rise: 2, fall: 3 }
  max_replica_lag: 16MB
  allowed_hosts: [10.0.0.0/24]
users:
  - { name: app, password: pw, auth: md5, require_auth: [md5, scram-sha-256] }
auth:
  query: "SELECT usename, passwd FROM switchyard.get_auth($1)"
  user: switchyard_auth
  password: auth-pw
  database: postgres
  cache_ttl: 60s
  negative_cache_ttl: 5s
  query_timeout: 5s
  max_fetches: 2
  refetch_interval: 1s
access:
  - { source: 10.0.0.0/8, user: app, database: appdb, listener: rw, tls: any, method: md5 }
client: { startup_timeout: 10s, max_message_size: 64MB }
server:
  connect_timeout: 5s
  cancel_timeout: 3s
  keepalive: { idle: 10s, interval: 5s, count: 3 }
  query_timeout: 1m
  require_auth: scram-sha-256,md5
  tls: verify-ca
  tls_ca: "@CA@"
  tls_cert: "@CERT@"
  tls_key: "@KEY@"
pool:
  mode: session
  size: 20
  min_idle: 0
  max_client_connections: 100
  checkout_timeout: 30s
  server_idle_timeout: 10m
  server_lifetime: 1h
  reset_query: DISCARD ALL
  max_prepared_statements: 500
  idle_transaction_timeout: 30s
  max_pools: 1000
failover: { hold_timeout: 30s }
shutdown_timeout: 30s
log: { format: json, level: info }
peer_id: 1
peers:
  - { id: 2, address: "10.0.0.12:5000" }
"#;

fn leaf_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_paths(child, &path, out);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for item in items {
                leaf_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// EVERYTHING with its TLS file names pointing at real PEM files (a CA, and a
/// certificate and key it signed), which loading the config reads.
fn everything() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = certs::TestCa::new("config docs CA");
    let ca_path = ca.write(dir.path(), "ca.crt");
    let client = ca.client("app").write(dir.path(), "client");
    let yaml = EVERYTHING
        .replace("@CA@", &ca_path.to_string_lossy())
        .replace("@CERT@", &client.cert.to_string_lossy())
        .replace("@KEY@", &client.key.to_string_lossy());
    (yaml, dir)
}

fn options() -> BTreeSet<String> {
    let (yaml, _files) = everything();
    let config = Config::from_yaml_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let value = serde_json::to_value(&config).expect("config serializes");
    let mut paths = BTreeSet::new();
    leaf_paths(&value, "", &mut paths);
    paths
}

fn read(relative: &str) -> String {
    let path = format!("{}/{relative}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The keys in the first column of the README's configuration table.
fn readme_keys() -> BTreeSet<String> {
    let readme = read("README.md");
    let section = readme
        .split("## Configuration reference")
        .nth(1)
        .expect("README has a Configuration reference section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(String::from)
        .collect()
}

#[test]
fn every_option_is_in_the_readme_and_every_documented_option_exists() {
    let options = options();
    assert!(options.len() > 40, "{options:?}");
    let documented = readme_keys();
    let undocumented: Vec<&String> = options.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "options missing from README.md's Configuration reference: {undocumented:?}"
    );
    let unknown: Vec<&String> = documented.difference(&options).collect();
    assert!(
        unknown.is_empty(),
        "README.md documents options the code does not have: {unknown:?}"
    );
}

#[test]
fn every_option_appears_in_the_annotated_example() {
    let example = read("conf/switchyard.yaml");
    let missing: Vec<String> = options()
        .into_iter()
        .filter(|path| {
            let key = path.rsplit(['.', ']']).next().unwrap_or(path);
            !example.contains(&format!("{key}:"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "options missing from conf/switchyard.yaml (set or commented out): {missing:?}"
    );
}
