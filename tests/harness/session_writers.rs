//! Owns long-lived writers for the session-mode PAUSE tests: N clients, each on
//! one connection for the whole run (never reconnecting), each with its own
//! `application_name` and `statement_timeout` set by `SET` and a named prepared
//! INSERT (tokio-postgres `prepare`), inserting unique ids in a loop. At the end
//! each reports what it saw and checks, on the same connection, that its settings
//! and prepared statement are still there and which server it is on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use super::clients::describe;

/// What one writer saw.
#[derive(Debug)]
pub struct WriterLog {
    pub index: usize,
    pub acknowledged: Vec<(i64, Instant)>,
    /// The first error, after which the writer stopped.
    pub failure: Option<String>,
    /// After the run, on the same connection: (application_name,
    /// statement_timeout) as `SHOW` reports them.
    pub settings: Option<(String, String)>,
    /// After the run: the prepared INSERT still executes.
    pub statement_works: bool,
    /// After the run: the server port the connection is on.
    pub server_port: Option<u16>,
}

impl WriterLog {
    /// The settings this writer set at the start.
    pub fn expected_settings(&self) -> (String, String) {
        expected_settings(self.index)
    }
}

fn expected_settings(index: usize) -> (String, String) {
    (format!("writer {index}"), format!("{}s", 40 + index))
}

pub struct SessionWriters {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<WriterLog>>,
}

impl SessionWriters {
    /// Connects `clients` writers to `conn_str` (each sets itself up before this
    /// returns) inserting into `table` (a `bigint primary key` column `id`).
    pub async fn start(conn_str: &str, table: &str, clients: usize, op_timeout: Duration) -> Self {
        let stop = CancellationToken::new();
        let mut tasks = Vec::with_capacity(clients);
        for index in 0..clients {
            let client = setup(conn_str, index).await;
            let writer = Writer {
                client,
                index,
                table: Arc::from(table),
                stop: stop.clone(),
                op_timeout,
            };
            tasks.push(tokio::spawn(writer.run()));
        }
        SessionWriters { stop, tasks }
    }

    /// Stops the writers, then has each check its connection.
    pub async fn stop(self) -> Vec<WriterLog> {
        self.stop.cancel();
        let mut logs = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            logs.push(task.await.expect("writer task"));
        }
        logs
    }
}

async fn setup(conn_str: &str, index: usize) -> Client {
    let (client, connection) = tokio_postgres::connect(conn_str, NoTls)
        .await
        .unwrap_or_else(|e| panic!("writer {index}: connect: {}", describe(&e)));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let (name, timeout) = expected_settings(index);
    client
        .batch_execute(&format!(
            "set application_name = '{name}'; set statement_timeout = '{timeout}'"
        ))
        .await
        .unwrap_or_else(|e| panic!("writer {index}: set: {}", describe(&e)));
    client
}

struct Writer {
    client: Client,
    index: usize,
    table: Arc<str>,
    stop: CancellationToken,
    op_timeout: Duration,
}

impl Writer {
    async fn run(self) -> WriterLog {
        let mut log = WriterLog {
            index: self.index,
            acknowledged: Vec::new(),
            failure: None,
            settings: None,
            statement_works: false,
            server_port: None,
        };
        let sql = format!("insert into {}(id) values ($1)", self.table);
        let statement = match self.client.prepare(&sql).await {
            Ok(statement) => statement,
            Err(e) => {
                log.failure = Some(format!("prepare: {}", describe(&e)));
                return log;
            }
        };
        let mut n = 0i64;
        loop {
            n += 1;
            let id = (self.index as i64) * 100_000_000 + n;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
            let insert =
                tokio::time::timeout(self.op_timeout, self.client.execute(&statement, &params));
            let result = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                result = insert => result,
            };
            match result {
                Ok(Ok(_)) => log.acknowledged.push((id, Instant::now())),
                Ok(Err(e)) => {
                    log.failure = Some(describe(&e));
                    return log;
                }
                Err(_) => {
                    log.failure = Some(format!("no answer within {:?}", self.op_timeout));
                    return log;
                }
            }
        }
        // The same connection, after the run: its session state and server.
        let show = |setting: &'static str| {
            let client = &self.client;
            async move {
                client
                    .query_one(&format!("show {setting}"), &[])
                    .await
                    .map(|row| row.get::<_, String>(0))
            }
        };
        if let (Ok(name), Ok(timeout)) = (
            show("application_name").await,
            show("statement_timeout").await,
        ) {
            log.settings = Some((name, timeout));
        }
        let extra = (self.index as i64) * 100_000_000 + n + 1;
        if self.client.execute(&statement, &[&extra]).await.is_ok() {
            log.statement_works = true;
            log.acknowledged.push((extra, Instant::now()));
        }
        if let Ok(row) = self
            .client
            .query_one("select inet_server_port()", &[])
            .await
        {
            log.server_port = Some(row.get::<_, i32>(0) as u16);
        }
        log
    }
}
