//! Owns a write load for the failover tests and the failover benchmark: N clients, each
//! inserting unique ids into one table through one address, one autocommit INSERT
//! at a time. Records what each client saw: the ids acknowledged (and when), every
//! failed attempt by SQLSTATE or error kind, and the longest gap between two
//! acknowledgements. It knows nothing about what sits behind the address (a proxy,
//! a pooler, PostgreSQL itself).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;

/// How a client sends its INSERT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Simple query protocol, the id written into the SQL text.
    Simple,
    /// A named statement prepared once per connection, then Bind/Execute per insert.
    Prepared,
    /// Extended protocol with the unnamed statement (Parse/Bind/Execute/Sync in one
    /// round trip): what a transaction pooler without prepared-statement support,
    /// such as PgBouncer 1.18, can carry.
    Unnamed,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// libpq-style `key=value` connection string of the address under test.
    pub conn_str: String,
    /// Table with a `bigint primary key` column `id`.
    pub table: String,
    pub clients: usize,
    /// Client `i` uses `protocols[i % protocols.len()]`.
    pub protocols: Vec<Protocol>,
    /// `Some(delay)`: after a failure wait `delay` and go on, reconnecting when the
    /// connection is gone (what an application with a retry loop does). `None`: a
    /// client stops at the first connection it loses.
    pub reconnect: Option<Duration>,
    /// Ids are `id_base + client * 100_000_000 + n`, so runs can share a table.
    pub id_base: i64,
    /// A connect or an insert taking longer than this counts as failed ("timeout")
    /// and its connection is abandoned.
    pub op_timeout: Duration,
}

/// One failed attempt.
#[derive(Clone, Debug)]
pub struct Failure {
    pub at: Instant,
    /// The SQLSTATE when the server (or a proxy) sent an ErrorResponse; otherwise a
    /// short kind: `closed`, `timeout`, `io ConnectionRefused`, ...
    pub kind: String,
    pub message: String,
    /// True when setting a connection up failed (connect, login, prepare); false
    /// for an INSERT that was sent and failed: a failed transaction.
    pub connecting: bool,
}

/// What one client saw.
#[derive(Debug, Default)]
pub struct ClientLog {
    pub acknowledged: Vec<(i64, Instant)>,
    pub failures: Vec<Failure>,
    /// Longest time between two acknowledgements of this client, counting from its
    /// first one, and (when it kept going to the end) from its last one to the stop.
    pub longest_pause: Duration,
    /// When that longest pause began.
    pub longest_pause_from: Option<Instant>,
    /// The client stopped early: it lost its connection and `reconnect` was `None`.
    pub gave_up: bool,
}

impl ClientLog {
    fn note_pause(&mut self, from: Instant, to: Instant) {
        let pause = to.saturating_duration_since(from);
        if pause > self.longest_pause {
            self.longest_pause = pause;
            self.longest_pause_from = Some(from);
        }
    }
}

/// A running load; [`WriteLoad::stop`] ends it and returns what happened.
pub struct WriteLoad {
    stop: CancellationToken,
    started: Instant,
    /// Nanoseconds from `started` to the latest acknowledgement of any client (0: none).
    latest_ack: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<ClientLog>>,
}

impl WriteLoad {
    /// Starts the clients as tasks on the current tokio runtime.
    pub fn start(spec: LoadSpec) -> WriteLoad {
        assert!(!spec.protocols.is_empty(), "at least one protocol");
        let spec = Arc::new(spec);
        let stop = CancellationToken::new();
        let started = Instant::now();
        let latest_ack = Arc::new(AtomicU64::new(0));
        let tasks = (0..spec.clients)
            .map(|index| {
                let client = LoadClient {
                    spec: Arc::clone(&spec),
                    index,
                    stop: stop.clone(),
                    started,
                    latest_ack: Arc::clone(&latest_ack),
                };
                tokio::spawn(client.run())
            })
            .collect();
        WriteLoad {
            stop,
            started,
            latest_ack,
            tasks,
        }
    }

    /// When any client last had a write acknowledged.
    pub fn last_ack(&self) -> Option<Instant> {
        match self.latest_ack.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(self.started + Duration::from_nanos(nanos)),
        }
    }

    /// Stops every client (an INSERT in flight is abandoned: neither acknowledged
    /// nor failed) and collects their logs.
    pub async fn stop(self) -> LoadReport {
        self.stop.cancel();
        let stopped = Instant::now();
        let mut clients = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            clients.push(task.await.expect("load client task"));
        }
        LoadReport {
            clients,
            started: self.started,
            stopped,
        }
    }
}

/// The logs of every client of one load.
pub struct LoadReport {
    pub clients: Vec<ClientLog>,
    pub started: Instant,
    pub stopped: Instant,
}

impl LoadReport {
    /// Every acknowledged id.
    pub fn acknowledged(&self) -> Vec<i64> {
        self.clients
            .iter()
            .flat_map(|c| c.acknowledged.iter().map(|&(id, _)| id))
            .collect()
    }

    pub fn failures(&self) -> impl Iterator<Item = &Failure> {
        self.clients.iter().flat_map(|c| c.failures.iter())
    }

    /// INSERTs that were sent and failed.
    pub fn failed_transactions(&self) -> usize {
        self.failures().filter(|f| !f.connecting).count()
    }

    /// Connection attempts (connect, login, prepare) that failed.
    pub fn failed_connects(&self) -> usize {
        self.failures().filter(|f| f.connecting).count()
    }

    /// Failures by kind, separately for transactions and connection attempts.
    pub fn failure_kinds(&self, connecting: bool) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for f in self.failures().filter(|f| f.connecting == connecting) {
            *kinds.entry(f.kind.clone()).or_insert(0) += 1;
        }
        kinds
    }

    /// The longest pause any client saw, and when it began.
    pub fn longest_pause(&self) -> (Duration, Option<Instant>) {
        self.clients
            .iter()
            .map(|c| (c.longest_pause, c.longest_pause_from))
            .max_by_key(|&(pause, _)| pause)
            .unwrap_or((Duration::ZERO, None))
    }

    /// The first acknowledgement of any client after `t`.
    pub fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.clients
            .iter()
            .filter_map(|c| c.acknowledged.iter().map(|&(_, at)| at).find(|&at| at > t))
            .min()
    }
}

/// `count(*)` of `ids` present in `table`, through a direct connection to
/// `conn_str` (the primary after the run).
pub async fn count_present(conn_str: &str, table: &str, ids: &[i64]) -> i64 {
    let (client, connection) = tokio_postgres::connect(conn_str, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {conn_str}: {e}"));
    tokio::spawn(connection);
    client
        .query_one(
            &format!("select count(*) from {table} where id = any($1)"),
            &[&ids],
        )
        .await
        .unwrap_or_else(|e| panic!("count acknowledged ids in {table}: {e}"))
        .get(0)
}

/// One open connection of a client.
struct Conn {
    client: Client,
    /// The prepared INSERT, for [`Protocol::Prepared`].
    statement: Option<Statement>,
}

/// How one guarded step ended.
enum Step<T> {
    Done(T),
    Failed(Failure, bool),
    Stopped,
}

struct LoadClient {
    spec: Arc<LoadSpec>,
    index: usize,
    stop: CancellationToken,
    started: Instant,
    latest_ack: Arc<AtomicU64>,
}

impl LoadClient {
    fn protocol(&self) -> Protocol {
        self.spec.protocols[self.index % self.spec.protocols.len()]
    }

    async fn run(self) -> ClientLog {
        let mut log = ClientLog::default();
        let mut conn: Option<Conn> = None;
        let mut last_ack: Option<Instant> = None;
        let mut n = 0i64;
        loop {
            let (failure, gone) = match conn.as_ref() {
                None => match self.guarded(true, self.open()).await {
                    Step::Done(c) => {
                        conn = Some(c);
                        continue;
                    }
                    Step::Stopped => break,
                    Step::Failed(failure, gone) => (failure, gone),
                },
                Some(c) => {
                    n += 1;
                    let id = self.spec.id_base + (self.index as i64) * 100_000_000 + n;
                    match self.guarded(false, self.insert(c, id)).await {
                        Step::Done(()) => {
                            let now = Instant::now();
                            if let Some(prev) = last_ack {
                                log.note_pause(prev, now);
                            }
                            last_ack = Some(now);
                            log.acknowledged.push((id, now));
                            let nanos = (now - self.started).as_nanos() as u64;
                            self.latest_ack.fetch_max(nanos.max(1), Ordering::Relaxed);
                            continue;
                        }
                        Step::Stopped => break,
                        Step::Failed(failure, gone) => (failure, gone),
                    }
                }
            };
            log.failures.push(failure);
            if gone {
                conn = None;
            }
            match self.spec.reconnect {
                // Without reconnects a client goes on with the next insert on the
                // same connection while it lasts.
                None if conn.is_none() => {
                    log.gave_up = true;
                    break;
                }
                None => {}
                Some(delay) => {
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // A client still writing at the end was paused since its last acknowledgement.
        if let (false, Some(prev)) = (log.gave_up, last_ack) {
            log.note_pause(prev, Instant::now());
        }
        log
    }

    /// Runs `op` under the stop token and the operation timeout. The bool of a
    /// failure says whether the connection is gone (closed, FATAL, timed out).
    async fn guarded<T>(
        &self,
        connecting: bool,
        op: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Step<T> {
        let result = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return Step::Stopped,
            result = tokio::time::timeout(self.spec.op_timeout, op) => result,
        };
        match result {
            Ok(Ok(value)) => Step::Done(value),
            Ok(Err(e)) => {
                let (kind, message, gone) = classify(&e);
                let failure = Failure {
                    at: Instant::now(),
                    kind,
                    message,
                    connecting,
                };
                Step::Failed(failure, gone || connecting)
            }
            Err(_) => Step::Failed(
                Failure {
                    at: Instant::now(),
                    kind: "timeout".to_string(),
                    message: format!("no answer within {:?}", self.spec.op_timeout),
                    connecting,
                },
                true,
            ),
        }
    }

    async fn open(&self) -> Result<Conn, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&self.spec.conn_str, NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let statement = match self.protocol() {
            Protocol::Prepared => Some(client.prepare(&self.insert_sql()).await?),
            Protocol::Simple | Protocol::Unnamed => None,
        };
        Ok(Conn { client, statement })
    }

    fn insert_sql(&self) -> String {
        format!("insert into {}(id) values ($1)", self.spec.table)
    }

    async fn insert(&self, conn: &Conn, id: i64) -> Result<(), tokio_postgres::Error> {
        match (self.protocol(), &conn.statement) {
            (Protocol::Prepared, Some(statement)) => {
                conn.client.execute(statement, &[&id]).await.map(|_| ())
            }
            (Protocol::Unnamed, _) => conn
                .client
                .query_typed(&self.insert_sql(), &[(&id, Type::INT8)])
                .await
                .map(|_| ()),
            _ => {
                let sql = format!("insert into {}(id) values ({id})", self.spec.table);
                conn.client.batch_execute(&sql).await
            }
        }
    }
}

/// (kind, message, connection gone) of a client error.
fn classify(e: &tokio_postgres::Error) -> (String, String, bool) {
    if let Some(db) = e.as_db_error() {
        // After a FATAL the server (or proxy) closes the connection.
        let fatal = matches!(db.severity(), "FATAL" | "PANIC");
        return (
            db.code().code().to_string(),
            format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
            fatal,
        );
    }
    if e.is_closed() {
        return ("closed".to_string(), e.to_string(), true);
    }
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    let kind = match io {
        Some(io) => format!("io {:?}", io.kind()),
        None => "other".to_string(),
    };
    // Whatever else went wrong (I/O, an unexpected message), the connection is not
    // trusted again.
    (kind, e.to_string(), true)
}

impl LoadReport {
    /// After PAUSE at `paused_at` and RESUME at `resumed_at` under this load: no
    /// client saw an error, nothing was acknowledged while paused (after 100 ms for
    /// the acknowledgements of transactions that finished as PAUSE returned), and
    /// writes went on after RESUME.
    pub fn assert_held_without_errors(&self, paused_at: Instant, resumed_at: Instant) {
        let errors: Vec<String> = self
            .failures()
            .map(|f| format!("{}: {}", f.kind, f.message))
            .collect();
        assert!(errors.is_empty(), "clients saw errors: {errors:?}");
        let during_pause = self
            .clients
            .iter()
            .flat_map(|c| c.acknowledged.iter().map(|&(_, at)| at))
            .filter(|at| *at > paused_at + Duration::from_millis(100) && *at < resumed_at)
            .count();
        assert_eq!(during_pause, 0, "nothing is acknowledged while paused");
        assert!(
            self.first_ack_after(resumed_at).is_some(),
            "writes go on after RESUME"
        );
    }
}
