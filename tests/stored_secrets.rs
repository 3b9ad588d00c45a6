//! Users configured with what PostgreSQL stores instead of a plaintext password,
//! against real PostgreSQL: a SCRAM-SHA-256 secret read from `pg_authid` checks
//! clients and logs in to the server with the keys the client proved (SCRAM
//! pass-through); an MD5 hash checks MD5 clients and answers the server's MD5
//! challenge; a secret that is not the server's own gets a clear error, not a hang.

mod harness;

use harness::clients::*;
use harness::pg::PgCluster;
use harness::proxy::*;
use harness::raw_client::*;
use harness::wait::blocking;

/// The proxy config of `config_for`, with `user`'s password replaced by `stored`.
async fn config_with_stored(
    pg_port: u16,
    user_line: &str,
    replacement: &str,
) -> (String, harness::fake_patroni::FakePatroni) {
    let (yaml, api) = config_for(pg_port, "pool: { mode: transaction, size: 2 }\n").await;
    assert!(
        yaml.contains(user_line),
        "the test users include {user_line}"
    );
    (yaml.replace(user_line, replacement), api)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scram_secret_checks_clients_and_passes_their_keys_to_the_server() {
    let cluster = blocking(|| PgCluster::start(0)).await;
    let port = cluster.port(0);
    let secret = su_sql(
        port,
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'",
    )
    .await;
    assert!(secret.starts_with("SCRAM-SHA-256$"), "{secret}");
    let (yaml, _api) = config_with_stored(
        port,
        "{ name: app, password: app_pw }",
        &format!("{{ name: app, password: \"{secret}\" }}"),
    )
    .await;
    let proxy = start_proxy(&yaml).await;
    let rw = proxy.listener_addr("rw").expect("rw");

    let client = connect(rw, "app", "app_pw").await;
    assert_eq!(
        simple_value(&client, "SELECT current_user", "pass-through")
            .await
            .as_deref(),
        Some("app"),
        "logged in to PostgreSQL with the client's keys"
    );
    // A second client, after the first is gone, uses the kept keys.
    drop(client);
    let again = connect(rw, "app", "app_pw").await;
    assert_eq!(
        simple_value(&again, "SELECT 1", "again").await.as_deref(),
        Some("1")
    );

    let wrong = try_connect(rw, "app", "not_the_password").await;
    let code = wrong
        .err()
        .and_then(|e| e.as_db_error().map(|db| db.code().code().to_string()));
    assert_eq!(
        code.as_deref(),
        Some("28P01"),
        "a wrong password is refused"
    );
    drop(proxy);
    blocking(move || drop(cluster)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_md5_hash_checks_md5_clients_and_answers_the_servers_md5_challenge() {
    let cluster = blocking(|| PgCluster::start(0)).await;
    let port = cluster.port(0);
    // Stored as MD5 on the server, so its `md5` pg_hba rule really asks for MD5.
    su_sql(
        port,
        "SET password_encryption = 'md5'; ALTER ROLE app_md5 PASSWORD 'app_md5_pw'",
    )
    .await;
    let hash = su_sql(
        port,
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'app_md5'",
    )
    .await;
    assert!(hash.starts_with("md5") && hash.len() == 35, "{hash}");
    let (yaml, _api) = config_with_stored(
        port,
        "{ name: app_md5, password: app_md5_pw, auth: md5, require_auth: md5 }",
        &format!("{{ name: app_md5, password: \"{hash}\", auth: md5, require_auth: md5 }}"),
    )
    .await;
    let proxy = start_proxy(&yaml).await;
    let mut client = RawClient::login(proxy.listener_addr("rw").expect("rw"), "md5").await;
    let rows = client.round_trip(&query_msg("SELECT current_user")).await;
    assert_eq!(error_responses(&rows), Vec::<String>::new());
    assert_eq!(data_rows(&rows), row(&["app_md5"]));
    drop(proxy);
    blocking(move || drop(cluster)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_that_is_not_the_servers_own_is_a_clear_error() {
    let cluster = blocking(|| PgCluster::start(0)).await;
    let port = cluster.port(0);
    // The right password, but a different salt than the server's secret: the
    // proxy accepts the client, the server rejects the keys.
    let other = switchyard::auth::scram::ScramVerifier::generate("app_pw").to_postgres_string();
    let (yaml, _api) = config_with_stored(
        port,
        "{ name: app, password: app_pw }",
        &format!("{{ name: app, password: \"{other}\" }}"),
    )
    .await;
    let proxy = start_proxy(&yaml).await;
    // The first client of a pool may be refused at connect (its greeting needs a
    // server) or at its first query: either way with the reason.
    let rw = proxy.listener_addr("rw").expect("rw");
    let error = match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        try_connect(rw, "app", "app_pw"),
    )
    .await
    .expect("an answer at connect, not a hang")
    {
        Err(error) => error,
        Ok(client) => tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.simple_query("SELECT 1"),
        )
        .await
        .expect("an answer, not a hang")
        .expect_err("the server refuses keys of another secret"),
    };
    let db = error.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28000", "{db:?}");
    let detail = db.detail().unwrap_or_default();
    assert!(
        detail.contains("SCRAM") || detail.contains("verifier") || detail.contains("salt"),
        "the detail says why: {detail}"
    );
    drop(proxy);
    blocking(move || drop(cluster)).await;
}
