//! Patroni's REST API over HTTPS: a real Patroni 3.0.2 (with etcd) whose REST API
//! serves only HTTPS with a certificate from a test CA and requires a client
//! certificate (`verify_client: required`). The proxy, given `https://` API URLs
//! and `cluster.api_tls`, finds the primary with the node listed and with the
//! member learned from `/cluster`; without a client certificate Patroni refuses
//! it and no primary is found.

mod harness;

use std::time::Duration;

use harness::certs::TestCa;
use harness::clients::*;
use harness::patroni::{PatroniCluster, RestApiTls};
use harness::proc;
use harness::proxy::*;
use harness::wait::*;
use switchyard::proxy::RunningProxy;

fn proxy_yaml(nodes: &str, api_tls: &str) -> String {
    format!(
        "listeners:\n  - {{ name: rw, listen: \"127.0.0.1:0\", route: primary }}\n\
         admin:\n  listen: \"127.0.0.1:0\"\n\
         cluster:\n  health: {FAST_HEALTH}\n  api_tls: {api_tls}\n  nodes:\n{nodes}{USERS_YAML}"
    )
}

async fn primary_is(proxy: &RunningProxy, name: &str) -> bool {
    admin_status(proxy).await["primary"] == name
}

#[tokio::test(flavor = "multi_thread")]
async fn polls_patroni_over_https_with_a_client_certificate() {
    let ca = TestCa::new("switchyard test CA");
    let restapi = ca.server(&["127.0.0.1"]);
    let ca_pem = ca.pem();
    let cluster = blocking(move || {
        PatroniCluster::start_one_with_api_tls(|base| {
            let files = restapi.write(base, "restapi");
            let ca = base.join("restapi-ca.crt");
            std::fs::write(&ca, &ca_pem).expect("write CA");
            proc::give_to_postgres(&files.key, 0o600);
            proc::give_to_postgres(&files.cert, 0o644);
            proc::give_to_postgres(&ca, 0o644);
            RestApiTls {
                cert: files.cert,
                key: files.key,
                ca,
            }
        })
    })
    .await;
    let api = cluster.api_url(0);
    assert!(api.starts_with("https://"), "{api}");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = ca.write(dir.path(), "ca.crt").display().to_string();
    let client = ca.client("switchyard").write(dir.path(), "switchyard");
    let api_tls = format!(
        "{{ ca: {ca_file}, cert: {}, key: {} }}",
        client.cert.display(),
        client.key.display()
    );

    // The node listed with its https API.
    let node = format!(
        "    - {{ name: {}, host: 127.0.0.1, port: {}, api: \"{api}\" }}\n",
        cluster.name(0),
        cluster.pg_port(0)
    );
    let proxy = start_proxy(&proxy_yaml(&node, &api_tls)).await;
    eventually(
        Duration::from_secs(20),
        "the proxy sees node1 as primary over HTTPS",
        || primary_is(&proxy, "node1"),
    )
    .await;
    let db = connect(proxy.listener_addr("rw").expect("rw"), "app", "app_pw").await;
    assert_eq!(
        simple_value(&db, "SELECT pg_is_in_recovery()", "recovery")
            .await
            .as_deref(),
        Some("f")
    );

    // Only the API as a seed: the member comes from /cluster over HTTPS.
    let seed = format!("    - {{ api: \"{api}\" }}\n");
    let learned = start_proxy(&proxy_yaml(&seed, &api_tls)).await;
    eventually(
        Duration::from_secs(20),
        "members learned over HTTPS",
        || primary_is(&learned, "node1"),
    )
    .await;

    // Without a client certificate Patroni refuses the TLS connection.
    let no_cert = format!("{{ ca: {ca_file} }}");
    let refused = start_proxy(&proxy_yaml(&node, &no_cert)).await;
    eventually(
        Duration::from_secs(20),
        "the check fails without a client certificate",
        || async {
            let status = admin_status(&refused).await;
            let error = status["nodes"][0]["last_error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            error.contains("CertificateRequired") && status["primary"].is_null()
        },
    )
    .await;
}
