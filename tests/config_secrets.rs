//! A config whose password line has a type error is refused without showing any
//! secret on each surface that reports it: `switchyard check`, the answer to `POST
//! /reload`, `/status`'s `reloads.last_error` and the process log of a running
//! `switchyard run`; the error still names the line and shows the snippet.

mod harness;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use harness::fake_patroni::{http_request, FakePatroni, FakeRole};
use harness::proc::free_port;
use harness::proxy::admin_get_at;
use harness::wait::eventually;

/// On the line with the type error.
const BAD_VALUE: &str = "S3cretInList-9a";
/// Another user's password, on the next line (inside any snippet).
const NEIGHBOUR: &str = "S3cretNeighbour-7f";
/// The first user's password while the config is still valid.
const GOOD: &str = "S3cretGood-5c";

fn config(admin_port: u16, api: &FakePatroni, app_password: &str) -> String {
    format!(
        "listeners:\n  - {{ name: rw, listen: \"127.0.0.1:0\", route: primary }}\n\
         admin:\n  listen: \"127.0.0.1:{admin_port}\"\n\
         cluster:\n  nodes:\n    - {{ name: n1, host: 127.0.0.1, port: {}, api: \"{}\" }}\n\
         users:\n  - name: app\n    password: {app_password}\n\
         \x20 - {{ name: other, password: {NEIGHBOUR}, auth: md5 }}\n",
        free_port(),
        api.url()
    )
}

fn assert_no_secret(surface: &str, text: &str) {
    for secret in [BAD_VALUE, NEIGHBOUR, GOOD] {
        assert!(
            !text.contains(secret),
            "{surface} shows a secret ({secret}):\n{text}"
        );
    }
    assert!(
        text.contains("line 10") && text.contains("<redacted>"),
        "{surface} names the line and shows the redacted snippet:\n{text}"
    );
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_type_error_shows_no_secret_in_check_reload_status_or_logs() {
    let api = FakePatroni::start(FakeRole::Primary, 1).await;
    let admin_port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("switchyard.yaml");
    let log_path = dir.path().join("switchyard.log");
    std::fs::write(&path, config(admin_port, &api, GOOD)).expect("write config");
    let bad = config(admin_port, &api, &format!("[{BAD_VALUE}]"));
    assert!(bad.lines().nth(9).is_some_and(|l| l.contains(BAD_VALUE)));

    // check
    let bad_path = dir.path().join("bad.yaml");
    std::fs::write(&bad_path, &bad).expect("write bad config");
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(&bad_path)
        .output()
        .expect("run check");
    assert!(!output.status.success());
    assert_no_secret("check", &String::from_utf8_lossy(&output.stderr));

    // A running instance, then the bad file reloaded over HTTP.
    let log = std::fs::File::create(&log_path).expect("log file");
    let _instance = Running(
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn switchyard"),
    );
    let admin = format!("127.0.0.1:{admin_port}");
    eventually(
        Duration::from_secs(20),
        "switchyard answers /health",
        || async {
            admin_get_at(&admin, "/health")
                .await
                .is_ok_and(|(status, _)| status == 200)
        },
    )
    .await;
    std::fs::write(&path, &bad).expect("rewrite config");
    let response = http_request(
        admin.parse().expect("admin address"),
        "POST",
        "/reload",
        Duration::from_secs(15),
    )
    .await
    .expect("POST /reload");
    assert_eq!(response.status, 422, "{}", response.body);
    assert_no_secret("POST /reload", &response.body);

    let (_, status) = admin_get_at(&admin, "/status").await.expect("/status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let last_error = status["reloads"]["last_error"]
        .as_str()
        .expect("a last reload error");
    assert_no_secret("/status reloads.last_error", last_error);

    let logged = std::fs::read_to_string(&log_path).expect("read log");
    let line = logged
        .lines()
        .find(|l| l.contains("NOT reloaded"))
        .unwrap_or_else(|| panic!("the failed reload is logged:\n{logged}"));
    assert!(line.contains("line 10"), "{line}");
    assert!(
        [BAD_VALUE, NEIGHBOUR, GOOD]
            .iter()
            .all(|secret| !logged.contains(secret)),
        "the log shows a secret:\n{logged}"
    );
}
