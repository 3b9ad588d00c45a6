//! Attacks on session transparency (issue #14): things a hostile or unusual client
//! does, each compared with PostgreSQL directly (the control), through Switchyard
//! in session and transaction mode, with raw bytes where drivers would not send
//! them:
//!
//! - startup packets: duplicate parameters (the last wins), odd-case names, bytes
//!   after the terminator, an empty name, `options` mixes, escapes and malformed
//!   or unknown switches, unknown settings and bad values, no user, non-UTF-8
//!   values, a packet at and over the size cap (two documented differences);
//! - client encodings other than UTF-8, round-tripped byte for byte;
//! - two clients with different startup parameters sharing one server;
//! - cancels with a wrong secret, extra bytes, a departed client's key, an idle
//!   client's key, cancels racing the end of a transaction (which must never reach
//!   the next client of the same server), and a cancel of a transaction-mode
//!   client waiting for a server (it ends the wait with 57014);
//! - the server ending a session mid-COPY, mid-batch or while the client streams
//!   a large query, and a backend killed with SIGKILL (the postmaster restarts
//!   every backend);
//! - a client leaving mid-COPY, mid-batch without Sync, or with a large result it
//!   never reads.

mod harness;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::clients::*;
use harness::fake_patroni::FakePatroni;
use harness::login::{read_message_or_eof, Login};
use harness::pg::{shared_cluster, PgCluster};
use harness::proxy::{admin_status, proxy_for};
use harness::raw_client::*;
use harness::wait::*;
use switchyard::proxy::RunningProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROTOCOL_3_0: u32 = 3 << 16;

/// Where a raw client connects: the proxy's `rw` listener or PostgreSQL itself.
struct Targets {
    handle: RunningProxy,
    /// The node's Patroni API: without it the proxy soon has no primary.
    _api: FakePatroni,
    proxy: SocketAddr,
    direct: SocketAddr,
}

async fn targets_on(port: u16, mode: &str, size: usize) -> Targets {
    let (proxy, api) = proxy_for(port, &format!("pool: {{ mode: {mode}, size: {size} }}\n")).await;
    let rw = proxy.listener_addr("rw").expect("rw");
    Targets {
        handle: proxy,
        _api: api,
        proxy: rw,
        direct: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

async fn targets(mode: &str, size: usize) -> Targets {
    targets_on(shared_cluster().await.port(0), mode, size).await
}

const MODES: [&str; 2] = ["session", "transaction"];

/// A StartupMessage (protocol 3.0) whose parameter area is exactly `area`
/// (names, values and the terminator as given, so malformed ones too).
fn raw_startup(area: &[u8]) -> Vec<u8> {
    let mut packet = ((8 + area.len()) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    packet.extend_from_slice(area);
    packet
}

/// A parameter area from name/value pairs, with its terminator.
fn area(params: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in params {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out.push(0);
    out
}

/// What a login came to, in terms that must be equal directly and through the
/// proxy: refused (severity and SQLSTATE), closed without a word, or a session
/// with its greeting and what it shows.
#[derive(Debug, PartialEq)]
enum Outcome {
    Refused(String, String),
    Closed,
    /// Asked for an authentication method other than MD5 (its code).
    AskedFor(u32),
    Session {
        greeting: std::collections::BTreeMap<String, String>,
        shown: Vec<String>,
    },
}

const SHOWN_SQL: &[&str] = &[
    "select current_user",
    "select current_database()",
    "show application_name",
    "show TimeZone",
    "show search_path",
    "show extra_float_digits",
    "show client_encoding",
];

async fn outcome(addr: SocketAddr, packet: &[u8]) -> Outcome {
    let mut login = Login::open_packet(addr, packet).await;
    if let Some((severity, code, _)) = login.error() {
        return Outcome::Refused(severity, code);
    }
    if login.closed {
        return Outcome::Closed;
    }
    if let Some((b'R', body)) = login.messages.last() {
        return Outcome::AskedFor(u32::from_be_bytes([body[0], body[1], body[2], body[3]]));
    }
    let mut shown = Vec::new();
    for sql in SHOWN_SQL {
        shown.push(login.value(sql).await);
    }
    Outcome::Session {
        greeting: login.greeting(),
        shown,
    }
}

/// Startup packets PostgreSQL reads in its own way; each as (label, packet).
fn odd_startup_packets() -> Vec<(&'static str, Vec<u8>)> {
    let base: [(&[u8], &[u8]); 2] = [(b"user", b"app_md5"), (b"database", b"appdb")];
    let with = |extra: &[(&'static [u8], &'static [u8])]| {
        let mut all: Vec<(&[u8], &[u8])> = base.to_vec();
        all.extend_from_slice(extra);
        raw_startup(&area(&all))
    };
    let long_name = format!("-c application_name={}", "n".repeat(9000)).into_bytes();
    let long_name: &'static [u8] = Box::leak(long_name.into_boxed_slice());
    let too_long = format!("-c application_name={}", "n".repeat(10_000)).into_bytes();
    let too_long: &'static [u8] = Box::leak(too_long.into_boxed_slice());
    vec![
        ("plain", with(&[])),
        (
            "unknown setting in options",
            with(&[(b"options", b"-c no_such_setting=1")]),
        ),
        (
            "unknown setting as --name",
            with(&[(b"options", b"--no-such-setting=1")]),
        ),
        ("bad value", with(&[(b"options", b"-c work_mem=bogus")])),
        ("odd-case name", with(&[(b"Application_Name", b"odd")])),
        ("upper-case TimeZone", with(&[(b"TIMEZONE", b"Asia/Tokyo")])),
        (
            "duplicate application_name",
            with(&[
                (b"application_name", b"first"),
                (b"application_name", b"second"),
            ]),
        ),
        (
            "same setting in two cases",
            with(&[
                (b"TimeZone", b"Asia/Tokyo"),
                (b"timezone", b"Europe/Paris"),
                (b"TimeZone", b"America/New_York"),
            ]),
        ),
        (
            "duplicate user: the last counts",
            raw_startup(&area(&[
                (b"user", b"no_such_user"),
                (b"database", b"appdb"),
                (b"user", b"app_md5"),
            ])),
        ),
        (
            "duplicate database: the last counts",
            with(&[(b"database", b"no_such_db"), (b"database", b"appdb")]),
        ),
        (
            "duplicate options: the last counts",
            with(&[
                (b"options", b"-c search_path=first"),
                (b"options", b"-c extra_float_digits=1"),
            ]),
        ),
        (
            "duplicate replication: the last counts",
            with(&[(b"replication", b"true"), (b"replication", b"false")]),
        ),
        (
            "options ending in a backslash",
            with(&[(b"options", b"-c application_name=x\\")]),
        ),
        (
            "options mixing --name and -c",
            with(&[(
                b"options",
                b"--application-name=mixed -c TimeZone=UTC --search_path=a,b",
            )]),
        ),
        (
            "options near the size cap",
            with(&[(b"options", long_name)]),
        ),
        ("packet over the size cap", with(&[(b"options", too_long)])),
        (
            "-c joined to its value",
            with(&[(b"options", b"-capplication_name=joined")]),
        ),
        ("-c without a value", with(&[(b"options", b"-c")])),
        (
            "-c without =",
            with(&[(b"options", b"-c application_name")]),
        ),
        (
            "--name without =",
            with(&[(b"options", b"--application_name")]),
        ),
        ("an unknown switch", with(&[(b"options", b"-Z")])),
        ("a postmaster-only switch", with(&[(b"options", b"-B 100")])),
        (
            "a setting fixed at server start",
            with(&[(b"options", b"-c shared_buffers=100")]),
        ),
        (
            "a superuser-only setting",
            with(&[(b"options", b"-c log_min_messages=debug1")]),
        ),
        (
            "a superuser-only setting as a parameter",
            with(&[(b"log_min_messages", b"debug1")]),
        ),
        (
            "session_authorization in options",
            with(&[(b"options", b"-c session_authorization=postgres")]),
        ),
        ("User in odd case", with(&[(b"User", b"app_md5")])),
        ("Database in odd case", with(&[(b"Database", b"appdb")])),
        ("_PQ_ in odd case", with(&[(b"_PQ_.thing", b"1")])),
        (
            "Options in odd case",
            with(&[(b"Options", b"-c application_name=x")]),
        ),
        (
            "client_encoding auto",
            with(&[(b"client_encoding", b"auto")]),
        ),
        (
            "client_encoding LATIN1",
            with(&[(b"client_encoding", b"LATIN1")]),
        ),
        (
            "client_encoding SQL_ASCII",
            with(&[(b"client_encoding", b"SQL_ASCII")]),
        ),
        ("no user", raw_startup(&area(&[(b"database", b"appdb")]))),
        ("bytes after the terminator", {
            let mut packet = area(&base);
            packet.extend_from_slice(b"application_name\0late\0\0");
            raw_startup(&packet)
        }),
        ("an empty name before the end", {
            let mut packet = b"user\0app_md5\0\0orphan\0".to_vec();
            packet.extend_from_slice(&area(&[(b"database", b"appdb")]));
            raw_startup(&packet)
        }),
        (
            "non-UTF-8 application_name",
            with(&[(b"application_name", b"caf\xe9")]),
        ),
        (
            "non-UTF-8 in options",
            with(&[(b"options", b"-c application_name=caf\xe9")]),
        ),
    ]
}

/// Every odd startup packet comes to the same outcome through the proxy as
/// directly: the same refusal, or a session greeted and set up the same way.
async fn startup_packets_are_read_as_postgres_reads_them(mode: &str) {
    let targets = targets(mode, 2).await;
    let mut differences = Vec::new();
    for round in 1..=2 {
        for (label, packet) in odd_startup_packets() {
            let direct = outcome(targets.direct, &packet).await;
            let mut proxied = outcome(targets.proxy, &packet).await;
            if label == "packet over the size cap" {
                // Documented: PostgreSQL closes without a word (it only logs
                // "invalid length of startup packet"); Switchyard says why.
                assert_eq!(direct, Outcome::Closed, "{label}: direct");
                assert_eq!(
                    proxied,
                    Outcome::Refused("FATAL".into(), "08P01".into()),
                    "{label}: proxied"
                );
                continue;
            }
            if label.starts_with("non-UTF-8") {
                // Documented: Switchyard reads startup values as UTF-8, each
                // invalid sequence becoming U+FFFD, which PostgreSQL 15 then
                // reports as "???" where it reports the raw byte as "?".
                if let Outcome::Session { greeting, shown } = &mut proxied {
                    for value in greeting.values_mut().chain(shown.iter_mut()) {
                        if value == "caf???" {
                            *value = "caf?".into();
                        }
                    }
                }
            }
            if direct != proxied {
                differences.push(format!(
                    "{label} (round {round}):\n  direct  {direct:?}\n  proxied {proxied:?}"
                ));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{mode} mode: {} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_packets_are_read_as_postgres_reads_them_in_session_mode() {
    startup_packets_are_read_as_postgres_reads_them("session").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_packets_are_read_as_postgres_reads_them_in_transaction_mode() {
    startup_packets_are_read_as_postgres_reads_them("transaction").await;
}

// ---------------------------------------------------------------------------
// Client encodings
// ---------------------------------------------------------------------------

/// The raw DataRow bodies and errors of a simple query given as bytes.
async fn raw_rows(login: &mut Login, sql: &[u8]) -> Vec<Message> {
    let mut body = sql.to_vec();
    body.push(0);
    login
        .stream
        .write_all(&message(b'Q', &body))
        .await
        .expect("query");
    let mut kept = Vec::new();
    loop {
        let m = read_message(&mut login.stream).await;
        match m.0 {
            b'Z' => return kept,
            b'D' | b'E' => kept.push(m),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn single_byte_client_encodings_round_trip_byte_for_byte() {
    for mode in MODES {
        let targets = targets(mode, 2).await;
        for encoding in ["LATIN1", "SQL_ASCII", "WIN1252"] {
            // 'café' in the client's encoding, plus the server's own conversion.
            let sql: &[u8] = b"select 'caf\xe9' || chr(233), length('caf\xe9')";
            let params = [("database", "appdb"), ("client_encoding", encoding)];
            let mut direct = Login::open(targets.direct, PROTOCOL_3_0, &params).await;
            direct.assert_ready(&format!("direct {encoding}"));
            let expected = raw_rows(&mut direct, sql).await;
            for round in 1..=3 {
                let what = format!("{mode} mode, {encoding}, client #{round}");
                let mut proxied = Login::open(targets.proxy, PROTOCOL_3_0, &params).await;
                proxied.assert_ready(&what);
                assert_eq!(raw_rows(&mut proxied, sql).await, expected, "{what}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Two clients, one server
// ---------------------------------------------------------------------------

/// The ParameterStatus values among `messages`.
fn statuses(messages: &[Message]) -> Vec<(String, String)> {
    messages
        .iter()
        .filter(|(tag, _)| *tag == b'S')
        .map(|(_, body)| {
            let mut parts = body.split(|&b| b == 0);
            let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let value = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            (name, value)
        })
        .collect()
}

/// Pool size 1 in transaction mode: two clients with different startup
/// parameters take turns on the one server 20 times; each sees its own values,
/// and a SET by one is never reported to, or seen by, the other.
#[tokio::test(flavor = "multi_thread")]
async fn two_clients_sharing_one_server_keep_their_own_parameters() {
    let targets = targets("transaction", 1).await;
    let a_params = [
        ("database", "appdb"),
        ("TimeZone", "Asia/Tokyo"),
        ("application_name", "client_a"),
    ];
    let b_params = [
        ("database", "appdb"),
        ("timezone", "UTC"),
        ("DateStyle", "German, DMY"),
        (
            "options",
            "-c application_name=client_b -c search_path=b_path",
        ),
    ];
    let mut a = Login::open(targets.proxy, PROTOCOL_3_0, &a_params).await;
    a.assert_ready("A");
    let mut b = Login::open(targets.proxy, PROTOCOL_3_0, &b_params).await;
    b.assert_ready("B");
    let (a_greeting, b_greeting) = (a.greeting(), b.greeting());
    assert_eq!(a_greeting["TimeZone"], "Asia/Tokyo");
    assert_eq!(a_greeting["application_name"], "client_a");
    assert_eq!(b_greeting["TimeZone"], "UTC");
    assert_eq!(b_greeting["DateStyle"], "German, DMY");
    assert_eq!(b_greeting["application_name"], "client_b");
    let mut a_zone = "Asia/Tokyo";
    for round in 0..20 {
        if round == 10 {
            let messages = a.query("set TimeZone = 'Europe/Paris'").await;
            assert!(error_responses(&messages).is_empty());
            assert!(
                statuses(&messages).contains(&("TimeZone".into(), "Europe/Paris".into())),
                "A is told its new TimeZone: {:?}",
                statuses(&messages)
            );
            a_zone = "Europe/Paris";
        }
        let sql = "select current_setting('TimeZone'), current_setting('application_name'), \
                   current_setting('DateStyle'), current_setting('search_path')";
        let a_messages = a.query(sql).await;
        assert_eq!(
            data_rows(&a_messages),
            row(&[a_zone, "client_a", "ISO, MDY", "\"$user\", public"]),
            "A, round {round}"
        );
        for (name, value) in statuses(&a_messages) {
            let expected = match name.as_str() {
                "TimeZone" => a_zone,
                "application_name" => "client_a",
                "DateStyle" => "ISO, MDY",
                _ => continue,
            };
            assert_eq!(value, expected, "A is told {name}, round {round}");
        }
        let b_messages = b.query(sql).await;
        assert_eq!(
            data_rows(&b_messages),
            row(&["UTC", "client_b", "German, DMY", "b_path"]),
            "B, round {round}"
        );
        for (name, value) in statuses(&b_messages) {
            let expected = match name.as_str() {
                "TimeZone" => "UTC",
                "application_name" => "client_b",
                "DateStyle" => "German, DMY",
                _ => continue,
            };
            assert_eq!(value, expected, "B is told {name}, round {round}");
        }
    }
}

/// Pool size 1 in session mode: clients with different startup parameters (and
/// one that changes its own with SET) connect one after another on the one server;
/// each is greeted with, and shows, its own values, never the last client's.
#[tokio::test(flavor = "multi_thread")]
async fn session_mode_clients_one_after_another_on_one_server_see_their_own() {
    let targets = targets("session", 1).await;
    let sets: [&[(&str, &str)]; 3] = [
        &[("database", "appdb"), ("TimeZone", "Asia/Tokyo")],
        &[("database", "appdb")],
        &[
            ("database", "appdb"),
            ("options", "-c TimeZone=America/Lima"),
        ],
    ];
    let mut direct_zone = Vec::new();
    for params in sets {
        let mut direct = Login::open(targets.direct, PROTOCOL_3_0, params).await;
        direct.assert_ready("direct");
        direct_zone.push(direct.value("show TimeZone").await);
    }
    for round in 0..4 {
        for (i, params) in sets.iter().enumerate() {
            let what = format!("round {round}, client {i}");
            let mut login = Login::open(targets.proxy, PROTOCOL_3_0, params).await;
            login.assert_ready(&what);
            assert_eq!(
                login.greeting()["TimeZone"],
                direct_zone[i],
                "{what}: greeted"
            );
            assert_eq!(login.value("show TimeZone").await, direct_zone[i], "{what}");
            // Leaves a change of its own behind, which must not reach the next.
            assert!(
                error_responses(&login.query("set TimeZone = 'Africa/Cairo'").await).is_empty()
            );
            login
                .stream
                .write_all(&message(b'X', b""))
                .await
                .expect("terminate");
            until_closed(&mut login.stream).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Cancels
// ---------------------------------------------------------------------------

/// Sends raw CancelRequest bytes to `addr` and waits for the connection to close
/// (the proxy closes it once it has passed the request on); never an answer.
async fn send_raw_cancel(addr: SocketAddr, request: &[u8]) {
    let mut stream = raw_connect(addr).await;
    stream.write_all(request).await.expect("cancel request");
    let mut rest = Vec::new();
    within(
        10,
        "the cancel connection closes",
        stream.read_to_end(&mut rest),
    )
    .await
    .ok();
    assert!(rest.is_empty(), "a cancel gets no answer: {rest:?}");
}

fn cancel_with_extra_bytes(pid: i32, secret: [u8; 4]) -> Vec<u8> {
    let mut request = 20u32.to_be_bytes().to_vec();
    request.extend_from_slice(&80_877_102u32.to_be_bytes());
    request.extend_from_slice(&pid.to_be_bytes());
    request.extend_from_slice(&secret);
    request.extend_from_slice(&[0, 0, 0, 0]);
    request
}

/// Runs `select pg_sleep(1)` on `login` and, while it runs, sends each of the
/// `attacks`; returns what the query came to.
async fn sleep_under_attack(
    login: &mut Login,
    port: u16,
    marker: &str,
    to: SocketAddr,
    attacks: &[Vec<u8>],
) -> Vec<Message> {
    login
        .stream
        .write_all(&query_msg(&format!("select pg_sleep(1) /* {marker} */")))
        .await
        .expect("query");
    wait_active(port, marker).await;
    for attack in attacks {
        send_raw_cancel(to, attack).await;
    }
    let mut messages = Vec::new();
    loop {
        let m = read_message(&mut login.stream).await;
        let done = m.0 == b'Z';
        messages.push(m);
        if done {
            return messages;
        }
    }
}

async fn wait_active(port: u16, marker: &str) {
    let running =
        format!("state = 'active' and query like '%/* {marker} */%' and pid <> pg_backend_pid()");
    eventually(Duration::from_secs(10), "the query runs", || {
        let running = running.clone();
        async move {
            su_count(
                port,
                &format!("select count(*) from pg_stat_activity where {running}"),
            )
            .await
                > 0
        }
    })
    .await;
}

/// A wrong secret, a key with extra bytes, a departed client's key and an idle
/// transaction-mode client's key cancel nothing, as directly; the right key
/// (the control) does cancel.
#[tokio::test(flavor = "multi_thread")]
async fn cancels_with_wrong_keys_cancel_nothing() {
    let port = shared_cluster().await.port(0);
    for mode in MODES {
        let targets = targets_on(port, mode, 2).await;
        let params = [("database", "appdb")];
        let departed = Login::open(targets.proxy, PROTOCOL_3_0, &params).await;
        let (departed_pid, departed_secret) = departed.key().expect("key");
        drop(departed);
        for (side, addr) in [("direct", targets.direct), ("proxied", targets.proxy)] {
            let what = format!("{mode} mode, {side}");
            let mut victim = Login::open(addr, PROTOCOL_3_0, &params).await;
            victim.assert_ready(&what);
            let (pid, secret) = victim.key().expect("key");
            let mut wrong = secret;
            wrong[3] ^= 1;
            let marker = format!("sy_attack_wrong_{mode}_{side}");
            let attacks = [
                cancel_request(pid, wrong),
                cancel_with_extra_bytes(pid, secret),
                cancel_request(departed_pid, departed_secret),
            ];
            let messages = sleep_under_attack(&mut victim, port, &marker, addr, &attacks).await;
            assert_eq!(
                error_responses(&messages),
                Vec::<String>::new(),
                "{what}: nothing was cancelled"
            );
            // The control: the right key cancels.
            let marker = format!("{marker}_right");
            let messages = sleep_under_attack(
                &mut victim,
                port,
                &marker,
                addr,
                &[cancel_request(pid, secret)],
            )
            .await;
            let errors = error_responses(&messages);
            assert!(
                errors.len() == 1 && errors[0].starts_with("57014"),
                "{what}: the right key cancels: {errors:?}"
            );
            // A cancel for an idle client: nothing happens, nobody hears of it.
            send_raw_cancel(addr, &cancel_request(pid, secret)).await;
            assert_eq!(victim.value("select 'still here'").await, "still here");
        }
    }
}

/// Transaction mode, one server: while client A runs short transactions and its
/// cancels fire at random moments, client B runs on the same server between A's
/// transactions. A cancel aimed at A may stop A's query (as directly), but never
/// B's: directly, A's key cannot reach B's backend.
#[tokio::test(flavor = "multi_thread")]
async fn cancels_racing_a_transactions_end_never_reach_the_next_client() {
    let targets = targets("transaction", 1).await;
    let params = [("database", "appdb")];
    let mut a = Login::open(targets.proxy, PROTOCOL_3_0, &params).await;
    a.assert_ready("A");
    let mut b = Login::open(targets.proxy, PROTOCOL_3_0, &params).await;
    b.assert_ready("B");
    let (pid, secret) = a.key().expect("A's key");
    let done = Arc::new(AtomicBool::new(false));
    let canceller = tokio::spawn({
        let done = Arc::clone(&done);
        let proxy = targets.proxy;
        async move {
            let mut sent = 0u32;
            while !done.load(Ordering::Relaxed) {
                send_raw_cancel(proxy, &cancel_request(pid, secret)).await;
                sent += 1;
            }
            sent
        }
    });
    let a_task = tokio::spawn({
        let done = Arc::clone(&done);
        async move {
            let mut cancelled = 0;
            while !done.load(Ordering::Relaxed) {
                let messages = a.query("select pg_sleep(0.001)").await;
                cancelled += error_responses(&messages)
                    .iter()
                    .filter(|e| e.starts_with("57014"))
                    .count();
            }
            cancelled
        }
    });
    let mut b_errors = Vec::new();
    for _ in 0..400 {
        let messages = b.query("select pg_sleep(0.002)").await;
        b_errors.extend(error_responses(&messages));
    }
    done.store(true, Ordering::Relaxed);
    let sent = within(30, "the canceller stops", canceller)
        .await
        .expect("canceller");
    let a_cancelled = within(30, "A stops", a_task).await.expect("A");
    eprintln!("{sent} cancels sent for A; {a_cancelled} of A's queries cancelled");
    assert!(sent > 0);
    assert_eq!(
        b_errors,
        Vec::<String>::new(),
        "B's queries are never cancelled"
    );
}

/// Transaction mode, one server held by A's open transaction: B's request waits
/// for a server, and B's cancel ends the wait as a cancel ends a query directly
/// (ERROR 57014, then ReadyForQuery), for a simple query and an extended batch;
/// nothing of it runs later, and B carries on once the server is free.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_ends_a_wait_for_a_server() {
    let targets = targets("transaction", 1).await;
    let params = [("database", "appdb")];
    let mut a = Login::open(targets.proxy, PROTOCOL_3_0, &params).await;
    a.assert_ready("A");
    let mut b = Login::open(targets.proxy, PROTOCOL_3_0, &params).await;
    b.assert_ready("B");
    let (pid, secret) = b.key().expect("B's key");
    assert!(error_responses(&a.query("begin").await).is_empty());
    let mut extended = parse_msg("", "select 'extended'");
    extended.extend(bind_msg("", &[]));
    extended.extend(execute_msg());
    extended.extend(sync_msg());
    for (what, request) in [
        ("simple query", query_msg("select 'simple'")),
        ("extended batch", extended),
    ] {
        b.stream.write_all(&request).await.expect("B's request");
        eventually(
            Duration::from_secs(10),
            "B waits for the server",
            || async {
                let status = admin_status(&targets.handle).await;
                status["pools"]
                    .as_array()
                    .is_some_and(|pools| pools.iter().any(|p| p["waiting"].as_u64() == Some(1)))
            },
        )
        .await;
        send_raw_cancel(targets.proxy, &cancel_request(pid, secret)).await;
        let mut answer = Vec::new();
        loop {
            let m = read_message(&mut b.stream).await;
            let done = m.0 == b'Z';
            answer.push(m);
            if done {
                break;
            }
        }
        assert_eq!(
            severities(&answer),
            vec![("ERROR".to_string(), "57014".to_string())],
            "{what}: cancelled"
        );
        assert_eq!(answer.last().map(|m| m.1.clone()), Some(b"I".to_vec()));
        assert!(data_rows(&answer).is_empty(), "{what}: {answer:?}");
    }
    assert!(error_responses(&a.query("commit").await).is_empty());
    assert_eq!(b.value("select 'after'").await, "after");
}

// ---------------------------------------------------------------------------
// The server ends the session
// ---------------------------------------------------------------------------

/// Reads until the connection closes (at most 10 s per message); every message.
async fn until_closed(stream: &mut TcpStream) -> Vec<Message> {
    let mut messages = Vec::new();
    while let Some(m) = read_message_or_eof(stream).await {
        messages.push(m);
    }
    messages
}

/// The severity and SQLSTATE of every ErrorResponse.
fn severities(messages: &[Message]) -> Vec<(String, String)> {
    messages
        .iter()
        .filter(|(tag, _)| *tag == b'E')
        .map(|(_, body)| {
            (
                harness::login::field(body, b'V'),
                harness::login::field(body, b'C'),
            )
        })
        .collect()
}

async fn terminate_marked(port: u16, marker: &str) {
    let sql = format!(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity \
         where query like '%/* {marker} */%' and pid <> pg_backend_pid()"
    );
    assert_eq!(su_count(port, &sql).await, 1, "{marker}: one backend ended");
}

/// pg_terminate_backend while the client is in COPY FROM STDIN, and while it
/// waits on an extended-protocol batch it has not synced: the client gets the
/// server's FATAL and the connection closes, as directly.
#[tokio::test(flavor = "multi_thread")]
async fn the_servers_fatal_reaches_a_client_mid_copy_and_mid_batch() {
    let port = shared_cluster().await.port(0);
    for mode in MODES {
        let targets = targets_on(port, mode, 2).await;
        for (side, addr) in [("direct", targets.direct), ("proxied", targets.proxy)] {
            let what = format!("{mode} mode, {side}");
            // Mid-COPY.
            let marker = format!("sy_attack_fatal_copy_{mode}_{side}");
            let mut login = Login::open(addr, PROTOCOL_3_0, &[("database", "appdb")]).await;
            login.assert_ready(&what);
            login
                .stream
                .write_all(&query_msg(&format!(
                    "begin; create temp table sy_copy (x text); \
                     copy sy_copy from stdin /* {marker} */"
                )))
                .await
                .expect("copy");
            let started = RawUntil::tag(&mut login.stream, b'G').await;
            assert!(error_responses(&started).is_empty(), "{what}: {started:?}");
            login
                .stream
                .write_all(&message(b'd', b"one\ntwo\n"))
                .await
                .expect("copy data");
            terminate_marked(port, &marker).await;
            let ended = until_closed(&mut login.stream).await;
            assert_eq!(
                severities(&ended),
                vec![("FATAL".to_string(), "57P01".to_string())],
                "{what}: mid-COPY"
            );
            // Mid-batch: Parse/Bind/Execute, Flush, no Sync.
            let marker = format!("sy_attack_fatal_batch_{mode}_{side}");
            let mut login = Login::open(addr, PROTOCOL_3_0, &[("database", "appdb")]).await;
            login.assert_ready(&what);
            let mut batch = parse_msg("", &format!("select pg_sleep(60) /* {marker} */"));
            batch.extend(bind_msg("", &[]));
            batch.extend(execute_msg());
            batch.extend(flush_msg());
            login.stream.write_all(&batch).await.expect("batch");
            wait_active(port, &marker).await;
            terminate_marked(port, &marker).await;
            let ended = until_closed(&mut login.stream).await;
            assert_eq!(
                severities(&ended),
                vec![("FATAL".to_string(), "57P01".to_string())],
                "{what}: mid-batch"
            );
        }
    }
}

/// The server is ended while the client is halfway through sending a 4 MB query
/// (inside a transaction, so transaction mode keeps its server): the client gets
/// the server's FATAL alone, as directly (or, if its next write fails first, the
/// end of the connection), never a hang and never a second error of the proxy's.
#[tokio::test(flavor = "multi_thread")]
async fn the_servers_fatal_reaches_a_client_streaming_a_large_query() {
    let port = shared_cluster().await.port(0);
    for mode in MODES {
        let targets = targets_on(port, mode, 2).await;
        for (side, addr) in [("direct", targets.direct), ("proxied", targets.proxy)] {
            let what = format!("{mode} mode, {side}");
            let mut login = Login::open(addr, PROTOCOL_3_0, &[("database", "appdb")]).await;
            login.assert_ready(&what);
            assert!(error_responses(&login.query("begin").await).is_empty());
            let pid = login.value("select pg_backend_pid()").await;
            let mut sql = "select length('".to_string();
            sql.push_str(&"x".repeat(4 << 20));
            sql.push_str("')");
            let query = query_msg(&sql);
            let half = query.len() / 2;
            login
                .stream
                .write_all(&query[..half])
                .await
                .expect("first half");
            let ended = su_sql(port, &format!("select pg_terminate_backend({pid})")).await;
            assert_eq!(ended, "t", "{what}: the backend was ended");
            // The rest may or may not be taken, depending on when the socket closes.
            let _ = login.stream.write_all(&query[half..]).await;
            let messages = until_closed(&mut login.stream).await;
            let errors = severities(&messages);
            assert!(
                errors.is_empty() || errors == vec![("FATAL".to_string(), "57P01".to_string())],
                "{what}: {errors:?}"
            );
            assert!(
                data_rows(&messages).is_empty(),
                "{what}: the query never ran"
            );
        }
    }
}

/// Reading raw messages up to a tag.
struct RawUntil;

impl RawUntil {
    async fn tag(stream: &mut TcpStream, tag: u8) -> Vec<Message> {
        let mut messages = Vec::new();
        loop {
            let m = read_message(stream).await;
            let done = m.0 == tag || m.0 == b'Z';
            messages.push(m);
            if done {
                return messages;
            }
        }
    }
}

/// SIGKILL of one backend makes the postmaster end every backend and restart:
/// each client, direct or through the proxy in either mode, learns its session
/// ended (an error or the connection closing) rather than hanging, and the proxy
/// serves new clients once PostgreSQL is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_killed_with_sigkill_ends_every_session_clearly() {
    let cluster = blocking(|| PgCluster::start(0)).await;
    let port = cluster.port(0);
    let session = targets_on(port, "session", 2).await;
    let transaction = targets_on(port, "transaction", 2).await;
    let sides = [
        ("direct", session.direct),
        ("session", session.proxy),
        ("transaction", transaction.proxy),
    ];
    let mut logins = Vec::new();
    for (side, addr) in sides {
        let mut login = Login::open(addr, PROTOCOL_3_0, &[("database", "appdb")]).await;
        login.assert_ready(side);
        let marker = format!("sy_attack_sigkill_{side}");
        login
            .stream
            .write_all(&query_msg(&format!("select pg_sleep(60) /* {marker} */")))
            .await
            .expect("query");
        wait_active(port, &marker).await;
        logins.push((side, login));
    }
    let victim = su_sql(
        port,
        "select pid from pg_stat_activity where query like '%/* sy_attack_sigkill_session */%' \
         and pid <> pg_backend_pid()",
    )
    .await;
    let victim: i32 = victim.trim().parse().expect("a pid");
    let status = std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    for (side, mut login) in logins {
        // An error (FATAL 57P02 for the survivors' sessions) or the end of the
        // connection; read_message_or_eof fails the test after 10 s of silence.
        let mut messages = Vec::new();
        while let Some(m) = read_message_or_eof(&mut login.stream).await {
            let last = m.0 == b'Z';
            messages.push(m);
            if last {
                break;
            }
        }
        assert!(
            data_rows(&messages).is_empty(),
            "{side}: the query did not finish: {messages:?}"
        );
        eprintln!("{side}: {:?}", error_responses(&messages));
    }
    for (mode, addr) in [
        ("session", session.proxy),
        ("transaction", transaction.proxy),
    ] {
        eventually(
            Duration::from_secs(30),
            &format!("{mode} mode serves again after the crash restart"),
            || async move {
                let mut login = Login::open(addr, PROTOCOL_3_0, &[("database", "appdb")]).await;
                if !login.is_ready() {
                    return false;
                }
                let messages = login.query("select 1").await;
                error_responses(&messages).is_empty()
            },
        )
        .await;
    }
    drop(cluster);
}

// ---------------------------------------------------------------------------
// The client leaves
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Leaving {
    MidCopy,
    MidBatchWithoutSync,
    WithUnreadResult,
}

/// A client leaves (its socket closes) mid-COPY, mid-batch, or while the server
/// is blocked writing a result it never reads: its work stops on the server, no
/// server connection is left behind, and the pool keeps serving.
async fn a_client_leaving_leaves_nothing_behind(mode: &str, leaving: Leaving) {
    let port = shared_cluster().await.port(0);
    let targets = targets_on(port, mode, 2).await;
    let marker = format!("sy_attack_leave_{mode}_{leaving:?}");
    let mut login = Login::open(targets.proxy, PROTOCOL_3_0, &[("database", "appdb")]).await;
    login.assert_ready("leaving client");
    match leaving {
        Leaving::MidCopy => {
            login
                .stream
                .write_all(&query_msg(&format!(
                    "begin; create temp table sy_copy (x text); \
                     copy sy_copy from stdin /* {marker} */"
                )))
                .await
                .expect("copy");
            RawUntil::tag(&mut login.stream, b'G').await;
            login
                .stream
                .write_all(&message(b'd', b"one\n"))
                .await
                .expect("copy data");
            wait_active(port, &marker).await;
        }
        Leaving::MidBatchWithoutSync => {
            let mut batch = parse_msg("", &format!("select pg_sleep(60) /* {marker} */"));
            batch.extend(bind_msg("", &[]));
            batch.extend(execute_msg());
            batch.extend(flush_msg());
            login.stream.write_all(&batch).await.expect("batch");
            wait_active(port, &marker).await;
        }
        Leaving::WithUnreadResult => {
            login
                .stream
                .write_all(&query_msg(&format!(
                    "select repeat('x', 1000) from generate_series(1, 10000000) /* {marker} */"
                )))
                .await
                .expect("query");
            // The server blocks writing once the proxy stops reading it.
            let blocked = format!(
                "select count(*) from pg_stat_activity where wait_event = 'ClientWrite' \
                 and query like '%/* {marker} */%'"
            );
            eventually(Duration::from_secs(20), "the server blocks writing", || {
                let blocked = blocked.clone();
                async move { su_count(port, &blocked).await > 0 }
            })
            .await;
        }
    }
    drop(login);
    let left = std::time::Instant::now();
    let trace = format!(
        "select count(*) from pg_stat_activity where query like '%/* {marker} */%' \
         and state <> 'idle' and pid <> pg_backend_pid()"
    );
    eventually(
        Duration::from_secs(2),
        &format!("{mode} mode, {leaving:?}: the client's work stops on the server"),
        || {
            let (trace, marker) = (trace.clone(), marker.clone());
            async move {
                let left_behind = su_count(port, &trace).await;
                if left_behind > 0 {
                    let rows = su_sql(
                        port,
                        &format!(
                            "select state, wait_event, backend_xid is not null from pg_stat_activity \
                             where query like '%/* {marker} */%' and pid <> pg_backend_pid()"
                        ),
                    )
                    .await;
                    eprintln!("{:?} after the client left: {rows}", left.elapsed());
                }
                left_behind == 0
            }
        },
    )
    .await;
    // No server connection left behind: none in use once the client is gone.
    eventually(
        Duration::from_secs(5),
        &format!("{mode} mode, {leaving:?}: no server in use after the client left"),
        || async {
            let status = admin_status(&targets.handle).await;
            status["pools"].as_array().is_some_and(|pools| {
                pools.iter().all(|p| {
                    p["in_use"].as_u64() == Some(0)
                        && p["open"].as_u64().is_some_and(|open| open <= 2)
                })
            })
        },
    )
    .await;
    for round in 0..3 {
        let mut next = Login::open(targets.proxy, PROTOCOL_3_0, &[("database", "appdb")]).await;
        next.assert_ready(&format!(
            "{mode} mode, {leaving:?}: a client after, #{round}"
        ));
        assert_eq!(next.value("select 'served'").await, "served");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_leaving_mid_copy_leaves_nothing_behind() {
    for mode in MODES {
        a_client_leaving_leaves_nothing_behind(mode, Leaving::MidCopy).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_leaving_mid_batch_leaves_nothing_behind() {
    for mode in MODES {
        a_client_leaving_leaves_nothing_behind(mode, Leaving::MidBatchWithoutSync).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_leaving_an_unread_result_leaves_nothing_behind() {
    for mode in MODES {
        a_client_leaving_leaves_nothing_behind(mode, Leaving::WithUnreadResult).await;
    }
}
