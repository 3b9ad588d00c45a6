//! Who may use the admin HTTP API, with real HTTP requests to an in-process proxy:
//! `admin.token` guards every endpoint but `/health`; without a token a POST needs a
//! JSON content type (what a browser form cannot send); `admin.max_connections`
//! caps connections at once; `switchyard check` warns about an admin listener open
//! beyond loopback without a token, and reads the token from the environment.

mod harness;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use harness::fake_patroni::{http_request_with, FakePatroni, FakeRole, HttpResponse};
use harness::proc::free_port;
use harness::proxy::*;
use harness::wait::eventually;
use switchyard::proxy::RunningProxy;

const TOKEN: &str = "test-admin-token-0123456789";
const WAIT: Duration = Duration::from_secs(10);

/// A proxy (its one node needs no server: only the admin API is used) whose
/// `admin:` section is `admin`.
async fn proxy_with_admin(admin: &str) -> (RunningProxy, FakePatroni) {
    let api = FakePatroni::start(FakeRole::Primary, 1).await;
    let nodes = [NodeSpec {
        name: "node1".into(),
        port: free_port(),
        api: api.url(),
    }];
    let yaml = config_yaml(&nodes, "primary", "");
    let default_admin = "admin:\n  listen: \"127.0.0.1:0\"\n";
    assert!(yaml.contains(default_admin), "{yaml}");
    let proxy = start_proxy(&yaml.replace(default_admin, admin)).await;
    (proxy, api)
}

async fn request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    http_request_with(admin, method, path, headers, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn header<'r>(response: &'r HttpResponse, name: &str) -> Option<&'r str> {
    response
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_every_endpoint_but_health_needs_it() {
    let (proxy, _api) = proxy_with_admin(&format!(
        "admin:\n  listen: \"127.0.0.1:0\"\n  token: \"{TOKEN}\"\n"
    ))
    .await;
    let admin = proxy.admin_addr;
    let bearer = format!("Bearer {TOKEN}");
    let with_token = [("Authorization", bearer.as_str())];

    eventually(WAIT, "/health answers 200 without a token", || async {
        request(admin, "GET", "/health", &[]).await.status == 200
    })
    .await;

    for path in ["/status", "/metrics"] {
        let refused = request(admin, "GET", path, &[]).await;
        assert_eq!(refused.status, 401, "{path}: {}", refused.body);
        assert_eq!(
            header(&refused, "www-authenticate"),
            Some("Bearer realm=\"switchyard\"")
        );
        let wrong = request(
            admin,
            "GET",
            path,
            &[("Authorization", "Bearer test-admin-token-0123456788")],
        )
        .await;
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
        let allowed = request(admin, "GET", path, &with_token).await;
        assert_eq!(allowed.status, 200, "{path}: {}", allowed.body);
    }
    let status = request(admin, "GET", "/status", &with_token).await;
    assert!(status.json().get("nodes").is_some(), "{}", status.body);

    // POSTs: refused without the token even with a JSON body type; with it they
    // reach the endpoint (this proxy has no config file to reload).
    let json = [("Content-Type", "application/json")];
    let refused = request(admin, "POST", "/reload", &json).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    let reload = request(admin, "POST", "/reload", &with_token).await;
    assert_eq!(reload.status, 422, "{}", reload.body);
    assert!(
        reload.body.contains("without a config file"),
        "{}",
        reload.body
    );
    let resume = request(admin, "POST", "/resume", &with_token).await;
    assert_ne!(resume.status, 401, "{}", resume.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_a_post_needs_a_json_content_type() {
    let (proxy, _api) = proxy_with_admin("admin:\n  listen: \"127.0.0.1:0\"\n").await;
    let admin = proxy.admin_addr;
    // What a cross-origin form or fetch without preflight can send.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|c| vec![("Content-Type", c)])
            .unwrap_or_default();
        for path in ["/reload", "/pause?timeout_ms=100", "/resume"] {
            let refused = request(admin, "POST", path, &headers).await;
            assert_eq!(
                refused.status, 415,
                "POST {path} with {content_type:?}: {}",
                refused.body
            );
            assert!(
                refused.body.contains("application/json"),
                "{}",
                refused.body
            );
        }
    }
    let status = harness::proxy::admin_get(&proxy, "/status").await;
    assert_eq!(status.0, 200, "GETs need nothing without a token");
    // The refused /pause paused nothing: a JSON /resume finds nothing to resume.
    let json = [("Content-Type", "application/json")];
    let resume = request(admin, "POST", "/resume", &json).await;
    assert_eq!(resume.status, 409, "{}", resume.body);
    let reload = request(
        admin,
        "POST",
        "/reload",
        &[("Content-Type", "application/json; charset=utf-8")],
    )
    .await;
    assert_eq!(reload.status, 422, "{}", reload.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_admin_max_connections_get_503_until_one_ends() {
    let (proxy, _api) =
        proxy_with_admin("admin:\n  listen: \"127.0.0.1:0\"\n  max_connections: 2\n").await;
    let admin = proxy.admin_addr;
    eventually(WAIT, "/health answers", || async {
        request(admin, "GET", "/health", &[]).await.status == 200
    })
    .await;
    // Two connections that send nothing hold both places (until the 5 s header
    // read timeout, far longer than the next request takes).
    let first = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    let second = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    let refused = request(admin, "GET", "/health", &[]).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused.body.contains("too many admin connections"),
        "{}",
        refused.body
    );
    drop(first);
    drop(second);
    eventually(WAIT, "a place frees once a connection ends", || async {
        request(admin, "GET", "/health", &[]).await.status == 200
    })
    .await;
}

fn check(config: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("switchyard.yaml");
    std::fs::write(&path, config).expect("write config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command.args(["check", "--config", path.to_str().expect("utf8 path")]);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("run switchyard check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_warns_about_an_open_admin_listener_without_a_token() {
    let base = "listeners:\n  - { name: rw, listen: \"127.0.0.1:5000\", route: primary }\n\
                cluster:\n  nodes:\n    - { name: n1, host: 127.0.0.1, api: \"http://127.0.0.1:8008\" }\n\
                users:\n  - { name: app, password: pw }\n";
    let open = format!("{base}admin:\n  listen: \"0.0.0.0:8080\"\n");
    let (ok, _, stderr) = check(&open, &[]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("admin.listen is 0.0.0.0:8080 (not loopback) and admin.token is not set"),
        "{stderr}"
    );

    let loopback = format!("{base}admin:\n  listen: \"127.0.0.1:8080\"\n");
    let (ok, _, stderr) = check(&loopback, &[]);
    assert!(ok && !stderr.contains("admin.token"), "{stderr}");

    let with_token = format!(
        "{base}admin:\n  listen: \"0.0.0.0:8080\"\n  token: \"${{SWITCHYARD_ADMIN_TOKEN}}\"\n"
    );
    let (ok, stdout, stderr) = check(&with_token, &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)]);
    assert!(ok && !stderr.contains("admin.token"), "{stderr}");
    assert!(
        !stdout.contains(TOKEN),
        "the token is never printed: {stdout}"
    );
    assert!(stdout.contains("token: <redacted>"), "{stdout}");

    let (ok, _, stderr) = check(&with_token, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("admin.token: environment variable SWITCHYARD_ADMIN_TOKEN is not set"),
        "{stderr}"
    );
    let (ok, _, stderr) = check(&with_token, &[("SWITCHYARD_ADMIN_TOKEN", "short")]);
    assert!(!ok && stderr.contains("at least 16 characters"), "{stderr}");
    assert!(!stderr.contains("short\""), "{stderr}");
}
