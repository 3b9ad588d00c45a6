//! Startup packets as clients really send them, through Switchyard in both pool
//! modes and straight to PostgreSQL (the control), with raw bytes: the greeting's
//! ParameterStatus values for every startup parameter (issue #14 item 2), values
//! the server rejects, and the edge cases of item 5 (protocol 3.2 and `_pq_.`
//! options negotiated down, `replication=false`, escaped spaces in `options`, a
//! long application_name, an empty database name).

mod harness;

use std::net::SocketAddr;

use harness::clients::{su_count, su_sql};
use harness::fake_patroni::FakePatroni;
use harness::login::Login;
use harness::pg::shared_cluster;
use harness::proxy::proxy_for;
use switchyard::proxy::RunningProxy;

const PROTOCOL_3_0: u32 = 3 << 16;
const PROTOCOL_3_2: u32 = (3 << 16) | 2;

/// Where a raw client connects: the proxy's `rw` listener or PostgreSQL itself.
struct Targets {
    _proxy: RunningProxy,
    /// The node's Patroni API: without it the proxy soon has no primary.
    _api: FakePatroni,
    proxy: SocketAddr,
    direct: SocketAddr,
}

async fn targets(mode: &str) -> Targets {
    let port = shared_cluster().await.port(0);
    let (proxy, api) = proxy_for(port, &format!("pool: {{ mode: {mode}, size: 2 }}\n")).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    Targets {
        _proxy: proxy,
        _api: api,
        proxy: rw,
        direct: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// Parameters the greeting and SHOW are compared for.
const SHOWN: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "application_name",
    "standard_conforming_strings",
    "search_path",
    "extra_float_digits",
];

/// A client's startup parameters, with values PostgreSQL normalises (lower-case
/// encoding and zone names, DateStyle keywords), truncates or cleans.
fn startup_sets() -> Vec<Vec<(&'static str, String)>> {
    let long_name = "n".repeat(80);
    let options = "-c standard_conforming_strings=off -c search_path=a,\\ public \
                   --extra-float-digits=2";
    vec![
        vec![
            ("database", "appdb".into()),
            ("client_encoding", "euc_jp".into()),
            ("DateStyle", "german".into()),
            ("TimeZone", "asia/tokyo".into()),
            ("IntervalStyle", "sql_standard".into()),
            ("application_name", long_name),
            ("options", options.into()),
        ],
        // Only an application_name: plain, escaped in options, non-ASCII.
        vec![
            ("database", "appdb".into()),
            ("application_name", "plain".into()),
        ],
        vec![
            ("database", "appdb".into()),
            ("application_name", "other".into()),
        ],
        vec![
            ("database", "appdb".into()),
            ("options", "-c application_name=a\\ b\\\\c".into()),
        ],
        vec![
            ("database", "appdb".into()),
            ("application_name", "caf\u{e9}".into()),
        ],
        // The packet's own parameter wins over the same one in options.
        vec![
            ("database", "appdb".into()),
            ("options", "-c TimeZone=UTC".into()),
            ("timezone", "Europe/Paris".into()),
        ],
    ]
}

fn borrowed<'a>(set: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    set.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Each set, twice (the second client is greeted from the pool's memory of the
/// first), through the proxy after a client without parameters made the pool log
/// in: the greeting equals a direct connection's, and SHOW agrees with it.
async fn greeting_reports_the_session(mode: &str) {
    let targets = targets(mode).await;
    Login::open(targets.proxy, PROTOCOL_3_0, &[("database", "appdb")])
        .await
        .assert_ready("a client without parameters");
    for set in startup_sets() {
        let params = borrowed(&set);
        let mut direct = Login::open(targets.direct, PROTOCOL_3_0, &params).await;
        direct.assert_ready(&format!("direct {params:?}"));
        for round in 1..=2 {
            let what = format!("{mode} mode, client #{round} with {params:?}");
            let mut proxied = Login::open(targets.proxy, PROTOCOL_3_0, &params).await;
            proxied.assert_ready(&what);
            assert_eq!(
                proxied.greeting(),
                direct.greeting(),
                "{what}: the greeting's ParameterStatus values"
            );
            for name in SHOWN {
                let shown = proxied.value(&format!("show {name}")).await;
                assert_eq!(
                    shown,
                    direct.value(&format!("show {name}")).await,
                    "{what}: SHOW {name}"
                );
                if let Some(greeted) = proxied.greeting().get(*name) {
                    assert_eq!(greeted, &shown, "{what}: greeted {name} vs SHOW");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn greeting_reports_the_session_in_session_mode() {
    greeting_reports_the_session("session").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn greeting_reports_the_session_in_transaction_mode() {
    greeting_reports_the_session("transaction").await;
}

/// A value PostgreSQL rejects at startup ends the connection with its FATAL
/// error, whether or not the pool has greeted clients before.
async fn rejected_values_end_the_connection(mode: &str) {
    let targets = targets(mode).await;
    let bad: &[&[(&str, &str)]] = &[
        &[("database", "appdb"), ("options", "-c DateStyle=nonsense")],
        &[("database", "appdb"), ("TimeZone", "Nowhere/Special")],
        &[
            ("database", "appdb"),
            ("client_encoding", "no_such_encoding"),
        ],
    ];
    for round in 1..=2 {
        for params in bad {
            let what = format!("{mode} mode, round {round}, {params:?}");
            let direct = Login::open(targets.direct, PROTOCOL_3_0, params).await;
            let proxied = Login::open(targets.proxy, PROTOCOL_3_0, params).await;
            let expected = direct.error().expect("PostgreSQL refuses it");
            assert_eq!(expected.0, "FATAL", "{what}: direct");
            assert_eq!(proxied.error(), Some(expected), "{what}");
        }
        Login::open(targets.proxy, PROTOCOL_3_0, &[("database", "appdb")])
            .await
            .assert_ready("a client without parameters");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_values_end_the_connection_in_session_mode() {
    rejected_values_end_the_connection("session").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_values_end_the_connection_in_transaction_mode() {
    rejected_values_end_the_connection("transaction").await;
}

/// Protocol 3.2 (libpq 18's `max_protocol_version=latest`) and `_pq_.` options
/// get the NegotiateProtocolVersion PostgreSQL sends (protocol 3.0, the options
/// it does not know), and the session goes on in 3.0.
#[tokio::test(flavor = "multi_thread")]
async fn newer_protocols_and_protocol_options_are_negotiated_down() {
    let targets = targets("transaction").await;
    let cases: &[(u32, &[(&str, &str)])] = &[
        (PROTOCOL_3_2, &[("database", "appdb")]),
        (
            PROTOCOL_3_0,
            &[("database", "appdb"), ("_pq_.test_option", "on")],
        ),
        (
            PROTOCOL_3_2,
            &[("_pq_.one", "1"), ("database", "appdb"), ("_pq_.two", "2")],
        ),
    ];
    for (version, params) in cases {
        let what = format!("version {:#x}, {params:?}", version);
        let mut direct = Login::open(targets.direct, *version, params).await;
        let mut proxied = Login::open(targets.proxy, *version, params).await;
        direct.assert_ready(&format!("direct {what}"));
        proxied.assert_ready(&what);
        let negotiation = direct.negotiation().expect("PostgreSQL negotiates");
        assert_eq!(&negotiation[..4], &PROTOCOL_3_0.to_be_bytes(), "direct");
        assert_eq!(proxied.negotiation(), Some(negotiation), "{what}");
        assert_eq!(proxied.value("select 1").await, "1", "{what}");
        assert_eq!(direct.value("select 1").await, "1");
    }
}

/// `replication` as PostgreSQL reads it: false values are ordinary sessions;
/// `database` or true is refused (0A000); anything else is 22023, as directly.
#[tokio::test(flavor = "multi_thread")]
async fn replication_false_is_an_ordinary_session() {
    let targets = targets("session").await;
    for off in ["false", "off", "no", "0", "f"] {
        let params = [("database", "appdb"), ("replication", off)];
        let mut direct = Login::open(targets.direct, PROTOCOL_3_0, &params).await;
        direct.assert_ready(&format!("direct replication={off}"));
        let mut proxied = Login::open(targets.proxy, PROTOCOL_3_0, &params).await;
        proxied.assert_ready(&format!("replication={off}"));
        assert_eq!(proxied.value("select 1").await, "1");
        assert_eq!(direct.value("select 1").await, "1");
    }
    for on in ["database", "true", "on"] {
        let params = [("database", "appdb"), ("replication", on)];
        let proxied = Login::open(targets.proxy, PROTOCOL_3_0, &params).await;
        let (severity, code, _) = proxied.error().expect("refused");
        assert_eq!(
            (severity.as_str(), code.as_str()),
            ("FATAL", "0A000"),
            "{on}"
        );
    }
    let params = [("database", "appdb"), ("replication", "maybe")];
    let direct = Login::open(targets.direct, PROTOCOL_3_0, &params).await;
    let proxied = Login::open(targets.proxy, PROTOCOL_3_0, &params).await;
    assert_eq!(proxied.error(), direct.error());
    assert_eq!(
        direct.error().map(|e| e.1),
        Some("22023".to_string()),
        "direct"
    );
}

/// An empty or missing database name means the database named like the user.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_database_name_is_the_user_name() {
    let targets = targets("transaction").await;
    let port = targets.direct.port();
    if su_count(
        port,
        "select count(*) from pg_database where datname = 'app_md5'",
    )
    .await
        == 0
    {
        su_sql(port, "CREATE DATABASE app_md5 OWNER app_md5").await;
    }
    for params in [&[("database", "")][..], &[]] {
        for addr in [targets.direct, targets.proxy] {
            let mut login = Login::open(addr, PROTOCOL_3_0, params).await;
            login.assert_ready(&format!("{addr} {params:?}"));
            assert_eq!(login.value("select current_database()").await, "app_md5");
        }
    }
}
