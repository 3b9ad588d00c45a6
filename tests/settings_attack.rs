//! Hostile sequences against transaction-mode settings tracking (issue #19). Each
//! case sends the same raw protocol messages straight to PostgreSQL (the control)
//! and through a transaction-mode proxy, then compares what the client sees: every
//! reply of the sequence (command tags, errors, warnings, rows, transaction status),
//! the settings its session has afterwards (SHOW values, current_user, custom GUCs)
//! and the parameters it has been told by ParameterStatus. Through the proxy the
//! client looks twice: at once (on the server the sequence ran on) and again after
//! another client has used that server (pool size 1) or while another client holds
//! a server in a transaction (pool size 2, so it runs on the other one): its
//! settings must have been carried; the other client must see exactly a fresh
//! session. Where README documents a difference, the test asserts that instead.

mod harness;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use harness::clients::su_sql;
use harness::pg::{self, shared_cluster};
use harness::proxy::proxy_for;
use harness::raw_client::*;
use harness::wait::blocking;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Parameters PostgreSQL 15 reports with ParameterStatus that a client can change.
const REPORTED: [&str; 8] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "default_transaction_read_only",
    "session_authorization",
    "is_superuser",
];

/// What the probe reads, in its column order.
const PROBED: [(&str, &str); 19] = [
    ("search_path", "current_setting('search_path')"),
    ("TimeZone", "current_setting('TimeZone')"),
    ("DateStyle", "current_setting('DateStyle')"),
    ("IntervalStyle", "current_setting('IntervalStyle')"),
    ("statement_timeout", "current_setting('statement_timeout')"),
    ("application_name", "current_setting('application_name')"),
    ("client_encoding", "current_setting('client_encoding')"),
    ("work_mem", "current_setting('work_mem')"),
    ("current_user", "current_user::text"),
    ("session_user", "session_user::text"),
    // A placeholder that was once set reads '' afterwards, one never set reads
    // NULL: which server ran the SET is not what is compared.
    ("app.a", "coalesce(current_setting('app.a', true), '')"),
    ("app.b", "coalesce(current_setting('app.b', true), '')"),
    // Custom parameters whose first part is a word SET gives a meaning to.
    ("local.x", "coalesce(current_setting('local.x', true), '')"),
    ("role.x", "coalesce(current_setting('role.x', true), '')"),
    ("names.x", "coalesce(current_setting('names.x', true), '')"),
    (
        "session.x",
        "coalesce(current_setting('session.x', true), '')",
    ),
    (
        "schema.x",
        "coalesce(current_setting('schema.x', true), '')",
    ),
    (
        "transaction.x",
        "coalesce(current_setting('transaction.x', true), '')",
    ),
    (
        "default_transaction_read_only",
        "current_setting('default_transaction_read_only')",
    ),
];

/// What the client sees of its session.
#[derive(Debug, PartialEq, Eq)]
struct View {
    /// The session's real values.
    settings: BTreeMap<String, String>,
    /// What ParameterStatus told it, for the reported parameters.
    told: BTreeMap<String, String>,
}

/// A raw session as `app_md5` that remembers every ParameterStatus it was sent.
struct Session {
    stream: TcpStream,
    reported: BTreeMap<String, String>,
    who: String,
}

impl Session {
    async fn login(addr: SocketAddr, startup: &[(&str, &str)], who: &str) -> Session {
        let mut stream = raw_connect(addr).await;
        let mut params = vec![("user", "app_md5"), ("database", "appdb")];
        params.extend_from_slice(startup);
        stream
            .write_all(&startup_packet(196608, &params))
            .await
            .expect("startup");
        let (tag, body) = read_message(&mut stream).await;
        assert_eq!(
            (tag, &body[..4]),
            (b'R', &5u32.to_be_bytes()[..]),
            "{who}: MD5 request"
        );
        let salt = [body[4], body[5], body[6], body[7]];
        let response = switchyard::auth::md5::md5_response("app_md5", "app_md5_pw", salt);
        stream
            .write_all(&password_msg(&response))
            .await
            .expect("password");
        let mut session = Session {
            stream,
            reported: BTreeMap::new(),
            who: who.to_string(),
        };
        let login = session.read(&Until::Ready(1)).await;
        assert!(
            !login.iter().any(|l| l.starts_with("E ")),
            "{who}: login failed: {login:?}"
        );
        session
    }

    /// Reads replies up to `until`; a line per message, ParameterStatus noted and
    /// left out (the proxy sends its own at checkout).
    async fn read(&mut self, until: &Until) -> Vec<String> {
        let mut lines = Vec::new();
        let mut ready = 0;
        loop {
            let (tag, body) = read_message(&mut self.stream).await;
            let text =
                |b: &[u8]| String::from_utf8_lossy(b.strip_suffix(b"\0").unwrap_or(b)).into_owned();
            let line = match tag {
                b'S' => {
                    let mut parts = body.split(|&b| b == 0);
                    let name = text(parts.next().unwrap_or_default());
                    let value = text(parts.next().unwrap_or_default());
                    self.reported.insert(name.clone(), value.clone());
                    // What the proxy says at checkout comes before any reply; what
                    // the server says comes after one (PostgreSQL reports just
                    // before ReadyForQuery) and must match.
                    (!lines.is_empty()).then(|| format!("S {name}={value}"))
                }
                b'C' => Some(format!("C {}", text(&body))),
                b'E' | b'N' => Some(format!("{} {}", tag as char, sqlstate(&body))),
                b'Z' => {
                    ready += 1;
                    Some(format!("Z {}", body[0] as char))
                }
                b'D' => Some(format!("D {:?}", data_rows(&[(tag, body.clone())]))),
                b'K' | b'R' => None,
                other => Some((other as char).to_string()),
            };
            lines.extend(line);
            let done = match until {
                Until::Ready(n) => tag == b'Z' && ready == *n,
                Until::Tag(t) => tag == *t,
            };
            if done {
                return lines;
            }
        }
    }

    async fn run(&mut self, step: &Step) -> Vec<String> {
        self.stream
            .write_all(&step.bytes)
            .await
            .unwrap_or_else(|e| panic!("{}: write: {e}", self.who));
        self.read(&step.until).await
    }

    async fn view(&mut self) -> View {
        let columns: Vec<&str> = PROBED.iter().map(|(_, sql)| *sql).collect();
        let sql = format!("select {}", columns.join(", "));
        self.stream
            .write_all(&query_msg(&sql))
            .await
            .expect("probe");
        let mut messages = Vec::new();
        loop {
            let m = read_message(&mut self.stream).await;
            if m.0 == b'S' {
                let mut parts = m.1.split(|&b| b == 0);
                let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let value = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                self.reported.insert(name, value);
            }
            let done = m.0 == b'Z';
            messages.push(m);
            if done {
                break;
            }
        }
        let mut rows = data_rows(&messages);
        assert_eq!(
            rows.len(),
            1,
            "{}: probe: {:?}",
            self.who,
            error_responses(&messages)
        );
        let row = rows.pop().unwrap_or_default();
        let settings = PROBED
            .iter()
            .zip(row)
            .map(|((name, _), value)| (name.to_string(), value.unwrap_or_else(|| "NULL".into())))
            .collect();
        let told = REPORTED
            .iter()
            .map(|name| {
                let value = self.reported.get(*name).cloned().unwrap_or_default();
                (name.to_string(), value)
            })
            .collect();
        View { settings, told }
    }

    async fn close(mut self) {
        let _ = self.stream.write_all(&message(b'X', &[])).await;
    }
}

enum Until {
    /// This many ReadyForQuery.
    Ready(usize),
    /// The first message of this type.
    Tag(u8),
}

struct Step {
    bytes: Vec<u8>,
    until: Until,
}

/// A simple Query.
fn q(sql: &str) -> Step {
    Step {
        bytes: query_msg(sql),
        until: Until::Ready(1),
    }
}

/// A simple Query of raw bytes (text in a client encoding other than UTF-8).
fn q_bytes(sql: &[u8]) -> Step {
    let mut body = sql.to_vec();
    body.push(0);
    Step {
        bytes: message(b'Q', &body),
        until: Until::Ready(1),
    }
}

/// Parse/Bind/Execute of the unnamed statement for each of `sqls`, one Sync.
fn ext(sqls: &[&str]) -> Step {
    let mut bytes = Vec::new();
    for sql in sqls {
        bytes.extend(parse_msg("", sql));
        bytes.extend(bind_msg("", &[]));
        bytes.extend(execute_msg());
    }
    bytes.extend(sync_msg());
    Step {
        bytes,
        until: Until::Ready(1),
    }
}

/// Raw messages, read up to `until`.
fn raw(parts: &[Vec<u8>], until: Until) -> Step {
    Step {
        bytes: parts.concat(),
        until,
    }
}

/// Bind portal `portal` to `statement`, no parameters.
fn bind_portal(portal: &str, statement: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal);
    cstr(&mut body, statement);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    message(b'B', &body)
}

/// Execute portal `portal`, at most `rows` rows (0: all).
fn execute_portal(portal: &str, rows: i32) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal);
    body.extend_from_slice(&rows.to_be_bytes());
    message(b'E', &body)
}

fn describe_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    cstr(&mut body, name);
    message(b'D', &body)
}

/// A sequence of steps, what it is called, and the startup parameters it logs in with.
struct Case {
    what: &'static str,
    startup: &'static [(&'static str, &'static str)],
    steps: Vec<Step>,
    /// README documents that the replies differ (a RESET of a startup parameter
    /// shows the server's default until the request ends): they must differ, and
    /// nothing else may.
    replies_differ: bool,
}

fn case(what: &'static str, steps: Vec<Step>) -> Case {
    Case {
        what,
        startup: &[],
        steps,
        replies_differ: false,
    }
}

/// A case with startup parameters whose RESET differs as README documents.
fn reset_of_startup(
    what: &'static str,
    startup: &'static [(&'static str, &'static str)],
    steps: Vec<Step>,
) -> Case {
    Case {
        what,
        startup,
        steps,
        replies_differ: true,
    }
}

/// Runs every case straight to PostgreSQL and through transaction-mode proxies
/// with one and with two servers; returns the divergences, one line each.
async fn attack(cases: Vec<Case>) -> Vec<String> {
    let mut divergences = Vec::new();
    for size in [1, 2] {
        let (proxy, api, rw, pg) = setup(size).await;
        for case in &cases {
            divergences.extend(compare(rw, pg, case, size).await);
        }
        drop(api);
        drop(proxy);
    }
    divergences
}

/// The test roles and routines, and a transaction-mode proxy with `size` servers:
/// the proxy, its fake Patroni API, its address and PostgreSQL's.
async fn setup(
    size: u32,
) -> (
    switchyard::proxy::RunningProxy,
    harness::fake_patroni::FakePatroni,
    SocketAddr,
    SocketAddr,
) {
    let cluster = shared_cluster().await;
    let port = cluster.port(0);
    su_sql(
        port,
        "DO $$BEGIN CREATE ROLE sy_tenant_a; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END$$; \
         GRANT sy_tenant_a TO app_md5",
    )
    .await;
    // Session state set where no statement of the client names it.
    let routines = "CREATE OR REPLACE FUNCTION sy_attack_fn() RETURNS int LANGUAGE plpgsql \
                    AS $$BEGIN SET app.a = 'from a function'; RETURN 1; END$$; \
                    CREATE OR REPLACE PROCEDURE sy_attack_proc() LANGUAGE plpgsql \
                    AS $$BEGIN SET app.b = 'from a procedure'; COMMIT; END$$";
    // Once per test binary: concurrent CREATE OR REPLACE of one routine can fail.
    static ROUTINES: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ROUTINES
        .get_or_init(|| async move {
            blocking(move || {
                pg::try_psql(
                    port,
                    pg::SUPERUSER,
                    pg::SUPERUSER_PASSWORD,
                    "appdb",
                    &[routines],
                )
            })
            .await
            .unwrap_or_else(|e| panic!("creating the routines: {e}"));
        })
        .await;
    let (proxy, api) = proxy_for(
        port,
        &format!("runtime: {{ workers: 1 }}\npool: {{ mode: transaction, size: {size} }}\n"),
    )
    .await;
    let rw = proxy.listener_addr("rw").expect("rw");
    let pg: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    (proxy, api, rw, pg)
}

/// Runs one case both ways; its divergences. With one server, B uses A's server
/// between A's two looks; with two, B holds a server in a transaction while A
/// looks again, so A runs on the other one (B most likely holds A's former server,
/// idle servers being reused most recent first; either way both must hold).
async fn compare(rw: SocketAddr, pg: SocketAddr, case: &Case, size: u32) -> Vec<String> {
    let mut divergences = Vec::new();
    {
        let what = format!("{} (pool size {size})", case.what);
        eprintln!("case: {what}");
        let mut direct = Session::login(pg, case.startup, "direct").await;
        let mut direct_replies = Vec::new();
        for step in &case.steps {
            direct_replies.push(direct.run(step).await);
        }
        let expected = direct.view().await;
        direct.close().await;
        let mut fresh = Session::login(pg, case.startup, "fresh").await;
        let clean = fresh.view().await;
        fresh.close().await;

        let mut a = Session::login(rw, case.startup, "A").await;
        let mut replies = Vec::new();
        for step in &case.steps {
            replies.push(a.run(step).await);
        }
        if case.replies_differ && replies == direct_replies {
            divergences.push(format!(
                "{what}: README says the replies differ, but they match: update README\n  {replies:?}"
            ));
        } else if replies != direct_replies && !case.replies_differ {
            divergences.push(format!(
                "{what}: replies differ\n  direct: {direct_replies:?}\n  proxy:  {replies:?}"
            ));
        }
        let at_once = a.view().await;
        let mut b = Session::login(rw, case.startup, "B").await;
        let (other, carried) = if size == 1 {
            let other = b.view().await;
            (other, a.view().await)
        } else {
            b.run(&q("BEGIN")).await;
            let other = b.view().await;
            let carried = a.view().await;
            b.run(&q("COMMIT")).await;
            (other, carried)
        };
        b.close().await;
        a.close().await;
        for (when, seen) in [("at once", &at_once), ("on its next server", &carried)] {
            if *seen != expected {
                divergences.push(format!(
                    "{what}: the client's view {when} differs\n  direct: {expected:?}\n  proxy:  {seen:?}"
                ));
            }
        }
        if other != clean {
            divergences.push(format!(
                "{what}: the next client does not see a clean session\n  fresh: {clean:?}\n  seen:  {other:?}"
            ));
        }
    }
    divergences
}

fn assert_none(divergences: Vec<String>) {
    assert!(
        divergences.is_empty(),
        "{} divergences:\n{}",
        divergences.len(),
        divergences.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_ends_in_simple_queries() {
    let cases = vec![
        case(
            "commit mid-query, error after it",
            vec![q("BEGIN; SET app.a = 'kept'; COMMIT; SET app.b = 'lost'; SELECT 1/0")],
        ),
        case(
            "commit without a transaction in a multi-statement query",
            vec![q("SET app.a = 'kept'; COMMIT; SET app.b = 'lost'; SELECT 1/0")],
        ),
        case(
            "rollback without a transaction in a multi-statement query",
            vec![q("SET app.a = 'lost'; ROLLBACK; SET app.b = 'kept'")],
        ),
        case(
            "start transaction, commit and no chain",
            vec![
                q("START TRANSACTION ISOLATION LEVEL READ COMMITTED"),
                q("SET app.a = 'x'"),
                q("COMMIT AND NO CHAIN"),
            ],
        ),
        case(
            "rollback and chain, then commit",
            vec![
                q("BEGIN"),
                q("SET app.a = 'lost'"),
                q("ROLLBACK AND CHAIN"),
                q("SET app.b = 'kept'"),
                q("COMMIT"),
            ],
        ),
        case(
            "end transaction, abort work, mixed case and comments",
            vec![
                q("begin; set app.a = 'kept'; end transaction"),
                q("BeGiN /* x */; SeT /* y */ app.b = 'lost'; AbOrT /* z */ WoRk"),
            ],
        ),
        case(
            "commit of a failed transaction",
            vec![q("BEGIN"), q("SET app.a = 'lost'"), q("SELECT 1/0"), q("COMMIT")],
        ),
        case(
            "commit and chain of a failed transaction",
            vec![
                q("BEGIN"),
                q("SET app.a = 'lost'"),
                q("SELECT 1/0"),
                q("COMMIT AND CHAIN"),
                q("SET app.b = 'kept'"),
                q("COMMIT"),
            ],
        ),
        case(
            // A temporary table lasts only as long as its transaction here.
            "a COPY between SETs of one query",
            vec![
                raw(
                    &[
                        query_msg(
                            "BEGIN; CREATE TEMP TABLE sy_copy (a int); SET app.a = 'kept'; \
                             COPY sy_copy FROM STDIN; SET app.b = 'kept'",
                        ),
                        message(b'd', b"1\n"),
                        message(b'c', &[]),
                    ],
                    Until::Ready(1),
                ),
                q("COMMIT"),
                raw(
                    &[query_msg(
                        "BEGIN; CREATE TEMP TABLE sy_copy2 (a int); SET app.a = 'lost'; \
                         COPY sy_copy2 FROM STDIN",
                    )],
                    Until::Tag(b'G'),
                ),
                raw(&[message(b'f', b"given up\0")], Until::Ready(1)),
                q("ROLLBACK"),
            ],
        ),
        case(
            "a COMMIT that fails on a deferred constraint",
            vec![
                q("SET app.a = 'kept'"),
                q(
                    "BEGIN; CREATE TEMP TABLE sy_deferred (a int UNIQUE DEFERRABLE INITIALLY DEFERRED); \
                     INSERT INTO sy_deferred VALUES (1), (1); SET app.b = 'lost'; SET app.a = 'lost'",
                ),
                q("COMMIT"),
            ],
        ),
        case(
            "set then error in one implicit transaction",
            vec![q("SET statement_timeout = 1234; SET search_path = x; SELECT 1/0")],
        ),
        case(
            "prepare transaction (disabled on the test servers)",
            vec![q("BEGIN"), q("SET app.a = 'x'"), q("PREPARE TRANSACTION 'sy_attack'")],
        ),
        case(
            "set transaction and set local never carried",
            vec![q(
                "BEGIN; SET TRANSACTION READ ONLY; SET LOCAL app.a = 'x'; SET LOCAL statement_timeout = 99; COMMIT",
            )],
        ),
    ];
    assert_none(attack(cases).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn savepoints() {
    let cases = vec![
        case(
            "same name twice: rollback to the later one",
            vec![q(
                "BEGIN; SAVEPOINT s; SET app.a = 'one'; SAVEPOINT s; SET app.b = 'two'; ROLLBACK TO s; COMMIT",
            )],
        ),
        case(
            "same name twice: release the later, rollback to the earlier",
            vec![q(
                "BEGIN; SAVEPOINT s; SET app.a = 'one'; SAVEPOINT s; SET app.b = 'two'; RELEASE s; ROLLBACK TO s; COMMIT",
            )],
        ),
        case(
            "quoted names with case",
            vec![q(
                "BEGIN; SAVEPOINT \"S\"; SET app.a = 'one'; SAVEPOINT s; SET app.b = 'two'; ROLLBACK TO SAVEPOINT \"S\"; COMMIT",
            )],
        ),
        case(
            "release of an outer savepoint keeps the inner changes",
            vec![q(
                "BEGIN; SAVEPOINT outer_sp; SAVEPOINT inner_sp; SET app.a = 'kept'; RELEASE SAVEPOINT outer_sp; COMMIT",
            )],
        ),
        case(
            "rollback to, more sets, commit",
            vec![
                q("BEGIN; SET app.a = 'kept'; SAVEPOINT s; SET app.b = 'lost'"),
                q("ROLLBACK TO SAVEPOINT s"),
                q("SET app.b = 'kept'; SET search_path = sy_after"),
                q("COMMIT"),
            ],
        ),
        case(
            "rollback to an unknown name fails the transaction",
            vec![
                q("BEGIN; SET app.a = 'lost'"),
                q("ROLLBACK TO nowhere"),
                q("COMMIT"),
            ],
        ),
        case(
            "error inside a savepoint, rollback to it, commit",
            vec![
                q("BEGIN; SET app.a = 'kept'; SAVEPOINT s; SET app.b = 'lost'; SELECT 1/0"),
                q("ROLLBACK TO s"),
                q("COMMIT"),
            ],
        ),
        case(
            "rollback to a released savepoint fails",
            vec![
                q("BEGIN; SAVEPOINT s; SET app.a = 'x'; RELEASE s"),
                q("ROLLBACK TO s"),
                q("ROLLBACK"),
            ],
        ),
        case(
            "names longer than an identifier are truncated",
            vec![q(&format!(
                "BEGIN; SET app.a = 'kept'; SAVEPOINT {}; SET app.b = 'lost'; ROLLBACK TO {}; COMMIT",
                "s".repeat(70),
                "s".repeat(64)
            ))],
        ),
        case(
            "rollback to an outer savepoint, release it, commit",
            vec![q(
                "BEGIN; SAVEPOINT a; SET app.a = 'lost'; SAVEPOINT b; SET app.b = 'lost'; ROLLBACK TO a; RELEASE a; SET statement_timeout = 4321; COMMIT",
            )],
        ),
        case(
            "release then more sets then rollback to the outer one",
            vec![q(
                "BEGIN; SAVEPOINT a; SAVEPOINT b; SET app.a = 'lost'; RELEASE b; SET app.b = 'lost'; ROLLBACK TO a; COMMIT",
            )],
        ),
        case(
            "quoted name with a doubled quote",
            vec![q(
                "BEGIN; SET app.a = 'kept'; SAVEPOINT \"x\"\"y\"; SET app.b = 'lost'; ROLLBACK TO \"x\"\"y\"; COMMIT",
            )],
        ),
        case(
            "savepoint outside a transaction",
            vec![q("SAVEPOINT s"), q("SET app.a = 'kept'")],
        ),
    ];
    assert_none(attack(cases).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol() {
    let named_set = parse_msg("set_a", "SET app.a = 'named'");
    let cases = vec![
        case(
            "sets then an error then Sync: the implicit transaction keeps nothing",
            vec![ext(&[
                "SET app.a = 'lost'",
                "SET search_path = sy_lost",
                "SELECT 1/0",
            ])],
        ),
        case(
            "two Syncs in one pipeline, the second fails",
            vec![raw(
                &[
                    ext(&["SET app.a = 'kept'"]).bytes,
                    ext(&["SET app.b = 'lost'", "SELECT 1/0"]).bytes,
                ],
                Until::Ready(2),
            )],
        ),
        case(
            "a named SET statement in a rolled-back transaction, then in autocommit",
            vec![
                raw(&[named_set.clone(), sync_msg()], Until::Ready(1)),
                q("BEGIN"),
                raw(
                    &[bind_portal("", "set_a"), execute_portal("", 0), sync_msg()],
                    Until::Ready(1),
                ),
                q("ROLLBACK"),
                q("SET app.b = 'between'"),
                raw(
                    &[bind_portal("", "set_a"), execute_portal("", 0), sync_msg()],
                    Until::Ready(1),
                ),
            ],
        ),
        case(
            "portal suspended around a SET",
            vec![
                q("BEGIN"),
                raw(
                    &[
                        parse_msg("rows", "select generate_series(1, 3)"),
                        bind_portal("p1", "rows"),
                        execute_portal("p1", 1),
                        parse_msg("", "SET app.a = 'kept'"),
                        bind_portal("p2", ""),
                        execute_portal("p2", 0),
                        execute_portal("p1", 1),
                        sync_msg(),
                    ],
                    Until::Ready(1),
                ),
                q("COMMIT"),
            ],
        ),
        case(
            "Parse, Describe and Flush without Sync, then Bind/Execute/Sync",
            vec![
                q("BEGIN"),
                raw(
                    &[
                        parse_msg("async_set", "SET app.a = 'flushed'"),
                        describe_statement("async_set"),
                        flush_msg(),
                    ],
                    Until::Tag(b'n'),
                ),
                raw(
                    &[
                        bind_portal("", "async_set"),
                        execute_portal("", 0),
                        sync_msg(),
                    ],
                    Until::Ready(1),
                ),
                q("COMMIT"),
            ],
        ),
        case(
            "extended BEGIN, SET, COMMIT in one batch, then a failing batch",
            vec![
                ext(&["BEGIN", "SET app.a = 'kept'", "COMMIT"]),
                ext(&["SET app.b = 'lost'", "SELECT 1/0"]),
            ],
        ),
        case(
            "savepoints through the extended protocol",
            vec![
                ext(&[
                    "BEGIN",
                    "SET app.a = 'kept'",
                    "SAVEPOINT s",
                    "SET app.b = 'lost'",
                ]),
                ext(&[
                    "ROLLBACK TO SAVEPOINT s",
                    "SAVEPOINT t",
                    "SET search_path = sy_kept",
                    "RELEASE t",
                ]),
                ext(&["COMMIT"]),
            ],
        ),
        case(
            "a named SET statement prepared in autocommit, run in a committed transaction",
            vec![
                raw(&[named_set.clone(), sync_msg()], Until::Ready(1)),
                q("SET app.a = 'before'"),
                q("BEGIN"),
                raw(
                    &[bind_portal("", "set_a"), execute_portal("", 0), sync_msg()],
                    Until::Ready(1),
                ),
                q("COMMIT"),
            ],
        ),
        case(
            "extended SET in a transaction, error, ROLLBACK",
            vec![
                ext(&["BEGIN", "SET app.a = 'lost'"]),
                ext(&["SELECT 1/0"]),
                ext(&["ROLLBACK"]),
            ],
        ),
        case(
            "a function that sets a parameter in a rolled-back transaction",
            vec![q("BEGIN; SELECT sy_attack_fn(); ROLLBACK")],
        ),
        case(
            "COMMIT inside an extended implicit transaction",
            vec![ext(&[
                "SET app.a = 'kept'",
                "COMMIT",
                "SET app.b = 'lost'",
                "SELECT 1/0",
            ])],
        ),
        case(
            "ROLLBACK inside an extended implicit transaction",
            vec![ext(&[
                "SET app.a = 'lost'",
                "ROLLBACK",
                "SET app.b = 'kept'",
            ])],
        ),
        case(
            "a Bind error after a SET in the same batch",
            vec![raw(
                &[
                    parse_msg("", "SET app.a = 'lost'"),
                    bind_msg("", &[]),
                    execute_msg(),
                    parse_msg("", "select $1::int"),
                    bind_msg("", &["not a number"]),
                    execute_msg(),
                    sync_msg(),
                ],
                Until::Ready(1),
            )],
        ),
        case(
            "a SET with a bad value fails its transaction",
            vec![
                ext(&["BEGIN", "SET app.a = 'lost'"]),
                ext(&["SET statement_timeout = 'soon'"]),
                ext(&["COMMIT"]),
            ],
        ),
        case(
            "set_config in an implicit transaction that fails",
            vec![ext(&[
                "SELECT set_config('TimeZone', 'Asia/Tokyo', false)",
                "SELECT 1/0",
            ])],
        ),
    ];
    assert_none(attack(cases).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn resets_and_roles() {
    let cases = vec![
        case(
            "reset all inside a committed transaction",
            vec![
                q("SET app.a = 'x'; SET search_path = sy_x"),
                q("BEGIN; RESET ALL; COMMIT"),
            ],
        ),
        case(
            "reset all inside a rolled-back transaction",
            vec![q("SET app.a = 'x'"), q("BEGIN; RESET ALL; ROLLBACK")],
        ),
        case(
            "reset x and set x to default",
            vec![
                q("SET app.a = 'x'; SET statement_timeout = 777"),
                q("BEGIN; RESET app.a; SET statement_timeout TO DEFAULT; COMMIT"),
            ],
        ),
        case(
            "discard all outside a transaction",
            vec![
                q("SET app.a = 'x'; SET TimeZone = 'Asia/Tokyo'"),
                q("DISCARD ALL"),
            ],
        ),
        case(
            "set role committed",
            vec![q("BEGIN; SET ROLE sy_tenant_a; COMMIT")],
        ),
        case(
            "set role rolled back",
            vec![q("BEGIN; SET ROLE sy_tenant_a; ROLLBACK")],
        ),
        case(
            "reset role committed",
            vec![q("SET ROLE sy_tenant_a"), q("BEGIN; RESET ROLE; COMMIT")],
        ),
        case(
            "set session authorization (refused to a non-superuser)",
            vec![
                q("BEGIN; SET SESSION AUTHORIZATION sy_tenant_a"),
                q("COMMIT"),
            ],
        ),
        case(
            "reset all leaves the role",
            vec![
                q("SET ROLE sy_tenant_a; SET app.a = 'x'"),
                q("BEGIN; RESET ALL; COMMIT"),
            ],
        ),
        reset_of_startup(
            "reset of a startup parameter in a transaction",
            &[("TimeZone", "Asia/Tokyo"), ("application_name", "attack")],
            vec![
                q("SET TimeZone = 'Europe/Paris'; SET application_name = 'other'"),
                q("BEGIN; RESET TimeZone; RESET application_name; COMMIT"),
            ],
        ),
        case(
            "set session authorization to oneself drops the role",
            vec![
                q("SET ROLE sy_tenant_a"),
                q("BEGIN; SET SESSION AUTHORIZATION app_md5; COMMIT"),
            ],
        ),
        case(
            "set session authorization default in a rolled-back transaction",
            vec![
                q("SET ROLE sy_tenant_a"),
                q("BEGIN; SET SESSION AUTHORIZATION DEFAULT; ROLLBACK"),
            ],
        ),
        case(
            "generic role forms",
            vec![q("BEGIN; SET role = sy_tenant_a; SET ROLE NONE; SET role TO 'sy_tenant_a'; COMMIT")],
        ),
        case(
            "untracked set forms committed",
            vec![q(
                "BEGIN; SET app.a = 'kept'; SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE; COMMIT",
            )],
        ),
        case(
            "set session and set to default",
            vec![
                q("SET SESSION statement_timeout = 1000; SET app.a = 'x'"),
                q("BEGIN; SET app.a TO DEFAULT; SET SESSION statement_timeout TO DEFAULT; ROLLBACK"),
            ],
        ),
        reset_of_startup(
            "startup options reset and set again",
            &[("options", "-c search_path=sy_opt -c statement_timeout=2500")],
            vec![
                q("SET search_path = sy_other"),
                q("BEGIN; RESET search_path; SET statement_timeout = 100; RESET statement_timeout; SHOW search_path; COMMIT"),
            ],
        ),
        reset_of_startup(
            "reset of a startup parameter seen in its own transaction",
            &[("TimeZone", "Asia/Tokyo")],
            vec![q("SET TimeZone = 'Europe/Paris'"), q("BEGIN; RESET TimeZone; SHOW TimeZone; COMMIT")],
        ),
        reset_of_startup(
            "reset all, then set_config of another parameter",
            &[("TimeZone", "Asia/Tokyo")],
            vec![
                q("SET TimeZone = 'Europe/Paris'"),
                q("BEGIN; RESET ALL; SELECT set_config('application_name', 'after reset', false); COMMIT"),
            ],
        ),
        reset_of_startup(
            "reset all with startup parameters",
            &[("TimeZone", "Asia/Tokyo"), ("DateStyle", "SQL, DMY")],
            vec![
                q("SET TimeZone = 'Europe/Paris'; SET DateStyle = 'German'"),
                q("RESET ALL"),
            ],
        ),
    ];
    assert_none(attack(cases).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn reported_parameters() {
    let cases = vec![
        case(
            "reported parameters set in a rolled-back transaction",
            vec![q(
                "BEGIN; SET client_encoding = 'LATIN1'; SET DateStyle = 'German'; SET TimeZone = 'Asia/Tokyo'; ROLLBACK",
            )],
        ),
        case(
            "reported parameters set in a committed transaction",
            vec![q(
                "BEGIN; SET DateStyle = 'German'; SET TimeZone = 'Asia/Tokyo'; SET IntervalStyle = 'iso_8601'; COMMIT",
            )],
        ),
        case(
            "set_config of a reported parameter, local, committed",
            vec![q("BEGIN; SELECT set_config('TimeZone', 'Asia/Tokyo', true); COMMIT")],
        ),
        case(
            "set_config of a reported parameter, session, committed",
            vec![q("BEGIN; SELECT set_config('TimeZone', 'Asia/Tokyo', false); COMMIT")],
        ),
        case(
            "set_config of a reported parameter, session, rolled back",
            vec![q("BEGIN; SELECT set_config('TimeZone', 'Asia/Tokyo', false); ROLLBACK")],
        ),
        case(
            "set_config after reset all in one transaction",
            vec![
                q("SET TimeZone = 'Asia/Tokyo'"),
                q("BEGIN; RESET ALL; SELECT set_config('TimeZone', 'Europe/Paris', false); COMMIT"),
            ],
        ),
        case(
            "set_config after reset in one transaction",
            vec![
                q("SET application_name = 'one'"),
                q("BEGIN; RESET application_name; SELECT set_config('application_name', 'two', false); COMMIT"),
            ],
        ),
        case(
            "set then set_config local of the same parameter",
            vec![q(
                "BEGIN; SET TimeZone = 'Asia/Tokyo'; SELECT set_config('TimeZone', 'Europe/Paris', true); COMMIT",
            )],
        ),
        Case {
            what: "a non-ASCII startup application_name around a rolled-back SET",
            startup: &[("application_name", "caf\u{e9} \u{2615}"), ("DateStyle", "SQL, DMY")],
            steps: vec![
                q("BEGIN; SET application_name = 'x'; SET DateStyle = 'ISO'; ROLLBACK"),
                q("BEGIN; SET application_name = 'y'; COMMIT"),
                // The documented difference: RESET shows the server's default
                // until the transaction ends.
                q("RESET application_name"),
            ],
            replies_differ: true,
        },
        case(
            "set names and set time zone local",
            vec![q("BEGIN; SET NAMES 'LATIN1'; SET TIME ZONE LOCAL; COMMIT")],
        ),
    ];
    assert_none(attack(cases).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn more_changes_than_are_followed() {
    // Above the tracker's bound of 10,000 pending changes in one transaction.
    let mut sql = String::from("BEGIN; SET app.a = 'first';");
    for i in 0..10_050 {
        sql.push_str(&format!("SET app.b = '{i}';"));
    }
    sql.push_str("SET search_path = sy_last; COMMIT");
    let mut chained = String::from("BEGIN;");
    for i in 0..3_000 {
        chained.push_str(&format!(
            "SET application_name = 'run {i}'; SET app.a = '{i}'; COMMIT AND CHAIN;"
        ));
    }
    chained.push_str("SET app.b = 'rolled back'; ROLLBACK");
    let cases = vec![
        case("10,050 SETs in one transaction", vec![q(&sql)]),
        // One attach: the proxy applies what each commit keeps as it goes.
        case("3,000 chained transactions in one query", vec![q(&chained)]),
    ];
    assert_none(attack(cases).await);

    // 5,100 savepoints each followed by a SET: past the 10,000 entries followed
    // (README: the proxy stops following and resets the server after it), so the
    // SETs after that are not carried; nobody else sees any of them.
    let mut sql = String::from("BEGIN; SET app.a = 'first';");
    for i in 0..5_100 {
        sql.push_str(&format!("SAVEPOINT s; SET app.b = '{i}';"));
    }
    sql.push_str("SET app.b = 'last'; COMMIT");
    let mut divergences = attack(vec![case("5,100 savepoints", vec![q(&sql)])]).await;
    let documented = |d: &String| {
        d.contains("the client's view") && d.matches("\"app.b\": \"last\"").count() == 1
    };
    let count = divergences.iter().filter(|d| documented(d)).count();
    if count != 4 {
        divergences.push(format!(
            "README: SETs past 10,000 followed entries are not carried ({count} of 4 views show it)"
        ));
    }
    divergences.retain(|d| !documented(d));
    assert_none(divergences);
}

/// Routines that change settings where no statement of the client names them
/// follow README's documented rules: a CALL is treated like a DO block (the
/// server is reset after it, so what the procedure set is not carried and reaches
/// nobody else); a function called from a query is invisible to the proxy, so a
/// setting it makes outside the parameters PostgreSQL reports stays on the server
/// (README: "Settings made inside functions").
#[tokio::test(flavor = "multi_thread")]
async fn routines_follow_the_documented_rules() {
    let (proxy, api, rw, pg) = setup(1).await;
    let call = case(
        "a procedure that sets a parameter and commits",
        vec![q("CALL sy_attack_proc()")],
    );
    let divergences = compare(rw, pg, &call, 1).await;
    assert_eq!(divergences.len(), 2, "{}", divergences.join("\n"));
    assert!(
        divergences.iter().all(|d| d.contains("the client's view")),
        "only the caller's own untracked setting is lost, nobody else sees it:\n{}",
        divergences.join("\n")
    );
    let mut a = Session::login(rw, &[], "A").await;
    a.run(&q("CALL sy_attack_proc()")).await;
    let seen = a.view().await;
    assert_eq!(
        seen.settings["app.b"], "",
        "the procedure's setting is reset"
    );
    a.close().await;

    let mut a = Session::login(rw, &[], "A").await;
    let replies = a.run(&ext(&["SELECT sy_attack_fn()"])).await;
    assert!(!replies.iter().any(|r| r.starts_with("E ")), "{replies:?}");
    a.close().await;
    let mut b = Session::login(rw, &[], "B").await;
    assert_eq!(
        b.view().await.settings["app.a"],
        "from a function",
        "documented: a function's own SET stays on the server"
    );
    b.close().await;
    drop(api);
    drop(proxy);
}

/// With `standard_conforming_strings` off a backslash escapes a quote in a plain
/// string literal, and in Shift-JIS (and BIG5, GBK, ...) 0x5c may be the second
/// byte of a character, so the same text splits into other statements. The proxy
/// knows neither of the session: as README documents, what only the other
/// reading runs is reset after the transaction (the client loses a SET hidden that
/// way, nobody else sees it) and LISTEN is refused under either reading.
#[tokio::test(flavor = "multi_thread")]
async fn backslashes_in_strings_without_standard_conforming_strings() {
    let hidden = "SELECT 'x\\''; SET app.a = 'hidden'; --'";
    let cases = vec![
        case(
            "a SET after an escaped quote",
            vec![q("SET standard_conforming_strings = off"), q(hidden)],
        ),
        case(
            "a SET after an escaped quote in a committed transaction",
            vec![
                q("BEGIN; SET standard_conforming_strings = off; COMMIT"),
                q(&format!("BEGIN; {hidden}")),
                q("COMMIT"),
            ],
        ),
        case(
            // 0x95 0x5c is one Shift-JIS character; its second byte is a backslash
            // to a reader that does not know the encoding.
            "a SET after a Shift-JIS character ending in 0x5c in an E'' string",
            vec![
                q("SET client_encoding = 'SJIS'"),
                q_bytes(b"SELECT E'\x95\x5c'; SET app.a = 'hidden'; --'"),
                q("RESET client_encoding"),
            ],
        ),
        case(
            "the same text with standard_conforming_strings on",
            vec![q(hidden)],
        ),
    ];
    let mut divergences = attack(cases).await;
    let lost = |d: &String| {
        d.starts_with("a SET after ")
            && d.contains("the client's view")
            && d.contains("\"app.a\": \"hidden\"")
    };
    let documented = divergences.iter().filter(|d| lost(d)).count();
    // Three cases, two looks each, with one and with two servers.
    if documented != 12 {
        divergences.push(format!(
            "README: a SET hidden behind a backslash is lost to its client ({documented} of 12 views show it)"
        ));
    }
    divergences.retain(|d| !lost(d));
    let (proxy, api, rw, _) = setup(1).await;
    let mut a = Session::login(rw, &[], "A").await;
    a.run(&q("SET standard_conforming_strings = off")).await;
    let replies = a.run(&q("SELECT 'x\\''; LISTEN sy_hidden; --'")).await;
    if !replies.iter().any(|r| r == "E 0A000") {
        divergences.push(format!(
            "LISTEN after an escaped quote was not refused: {replies:?}"
        ));
    }
    a.close().await;
    drop(api);
    drop(proxy);
    assert_none(divergences);
}

/// SET forms whose words could be read more than one way.
#[tokio::test(flavor = "multi_thread")]
async fn set_forms() {
    let mut cases = Vec::new();
    for prefix in ["local", "role", "names", "session", "schema", "transaction"] {
        let committed: &'static str =
            Box::leak(format!("SET {prefix}.x committed").into_boxed_str());
        let sql = format!("BEGIN; SET {prefix}.x = 'v'; COMMIT");
        cases.push(case(committed, vec![q(&sql)]));
        let plain: &'static str =
            Box::leak(format!("SET {prefix}.x in autocommit").into_boxed_str());
        cases.push(case(plain, vec![q(&format!("SET {prefix}.x TO 'w'"))]));
    }
    cases.push(case(
        "an escaped quote in a SET value without standard_conforming_strings",
        vec![
            q("SET standard_conforming_strings = off"),
            q("SET app.a = 'it\\'s'"),
        ],
    ));
    cases.push(case(
        "a backslash in a SET value with standard_conforming_strings",
        vec![q("SET app.a = 'C:\\'"), q("SET search_path = 'a\\b'")],
    ));
    cases.push(case(
        "a backslash in a SET value, then standard_conforming_strings off",
        vec![
            q("BEGIN; SET app.a = 'C:\\temp'; COMMIT"),
            q("SET standard_conforming_strings = off"),
            q("SET app.b = 'tab\\there'"),
        ],
    ));
    cases.push(Case {
        what: "transaction-scoped parameters set as session ones",
        startup: &[("application_name", "attack")],
        steps: vec![
            q("SELECT set_config('application_name', 'reported', false)"),
            q("SET transaction_isolation = 'repeatable read'"),
            q("SET SESSION transaction_read_only TO on; SET transaction_deferrable = on"),
            q("BEGIN; SET transaction_isolation = 'serializable'; COMMIT"),
        ],
        replies_differ: false,
    });
    cases.push(case(
        "a function called begin, then a SET",
        vec![q(
            "CREATE FUNCTION pg_temp.begin() RETURNS int LANGUAGE sql RETURN 1; SET app.a = 'after begin'",
        )],
    ));
    cases.push(case(
        "a BEGIN ATOMIC body with CASE, then a SET",
        vec![q(
            "CREATE FUNCTION pg_temp.f(i int) RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN i > 0 THEN 1 ELSE 0 END; END; SET app.b = 'after atomic'",
        )],
    ));
    assert_none(attack(cases).await);
}
