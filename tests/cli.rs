//! The `switchyard` binary itself: `check` on good and bad configs, and `health`
//! against a running instance with and without a primary.

mod harness;

use std::process::Command;
use std::time::Duration;

use harness::fake_patroni::{FakePatroni, FakeRole};
use harness::proc::free_port;
use harness::proxy::*;
use harness::wait::*;

fn switchyard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("SWITCHYARD_APP_PASSWORD", "from-env")
        .output()
        .expect("run switchyard")
}

#[test]
fn check_accepts_the_shipped_example_and_prints_defaults() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/switchyard.yaml");
    let output = switchyard(&["check", "--config", config]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("startup_timeout"), "{stdout}");
    assert!(
        stdout.contains("<redacted>"),
        "passwords are never printed: {stdout}"
    );
    assert!(!stdout.contains("from-env"));
}

#[test]
fn check_names_an_unknown_key_with_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/switchyard.yaml"))
            .expect("example")
            .replace("    fall: 3 ", "    fall: 3\n    fail: 4\n   ");
    std::fs::write(&path, text).expect("write");
    let output = switchyard(&["check", "--config", path.to_str().expect("utf8 path")]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown field `fail`"), "{stderr}");
    let line = 1
        + std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/switchyard.yaml"))
            .expect("example")
            .lines()
            .position(|l| l.starts_with("    fall: 3 "))
            .expect("fall line")
        + 1;
    assert!(stderr.contains(&format!("line {line}")), "{stderr}");
}

#[test]
fn check_reports_a_missing_environment_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/switchyard.yaml"),
        ])
        .env_remove("SWITCHYARD_APP_PASSWORD")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .contains("users[0].password: environment variable SWITCHYARD_APP_PASSWORD is not set"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_the_write_route() {
    let api = FakePatroni::start(FakeRole::Primary, 1).await;
    let proxy = start_proxy(&config_yaml(&single_node(free_port(), &api), "primary", "")).await;
    let admin = proxy.admin_addr.to_string();
    let run = |admin: String| blocking(move || switchyard(&["health", "--admin", &admin]));

    let output = run(admin.clone()).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "OK: primary node1"
    );

    api.set_role(FakeRole::NotRunning);
    eventually(
        Duration::from_secs(2),
        "health fails without a primary",
        || {
            let admin = admin.clone();
            async move { !run(admin).await.status.success() }
        },
    )
    .await;
    let output = run(admin.clone()).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("UNHEALTHY (503): no write route"),
        "{stdout}"
    );

    let unreachable = format!("127.0.0.1:{}", free_port());
    let output = run(unreachable).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("cannot reach switchyard admin"));
}

#[test]
fn check_reads_the_tls_files_and_names_the_bad_one() {
    use harness::tls::Pki;
    let mut pki = Pki::new();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/switchyard.yaml"))
            .expect("example");
    let path = pki.dir.path().join("switchyard.yaml");
    let check = |text: String| {
        std::fs::write(&path, text).expect("write");
        switchyard(&["check", "--config", path.to_str().expect("utf8 path")])
    };
    let with_tls = |pki: &Pki| format!("{example}\n{}", pki.tls_yaml("require", true));
    let output = check(with_tls(&pki));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // An expired certificate: the key, the file and the reason.
    pki.write_server_cert(Some((2001, 1, 1)));
    let output = check(with_tls(&pki));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tls.cert") && stderr.contains("server.pem") && stderr.contains("expired"),
        "{stderr}"
    );
    // A CA file that is not PEM.
    pki.write_server_cert(None);
    std::fs::write(&pki.ca_file, "not a certificate\n").expect("break the CA");
    let output = check(with_tls(&pki));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tls.client_ca") && stderr.contains("no CERTIFICATE"),
        "{stderr}"
    );
    // Shape errors come from the config itself: require without a key.
    let output = check(format!(
        "{example}\ntls:\n  mode: require\n  cert: {}\n",
        pki.server_cert.display()
    ));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tls.key: required"), "{stderr}");
}
