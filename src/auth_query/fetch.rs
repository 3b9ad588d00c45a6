//! Running `auth.query` for one user name: on the current primary (a replica
//! when there is none), logged in as `auth.user`, with the name as the
//! parameter `$1` of the extended protocol. At most `auth.max_fetches` run at
//! once, each on its own server connection, and as many connections are kept
//! open between lookups: the usual lookup costs one round trip, not a login,
//! and a burst of lookups does not open and close connections.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::auth::stored::Credential;
use crate::config::{AuthQueryConfig, ServerConfig};
use crate::server::{self, LoginRequest, Row, ServerConnection, ServerError};
use crate::topology::Topology;

/// Shown in `pg_stat_activity.application_name` for the lookup sessions.
pub const APPLICATION_NAME: &str = "switchyard-auth-query";

/// What the query said about a name.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The stored password as the query returned it (a SCRAM secret or an MD5
    /// hash; not validated here).
    Found(String),
    /// No row, or a NULL or empty password.
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no node to ask: {0}")]
    NoNode(String),
    #[error("{0} lookups were already running and none finished within {1:?}")]
    Busy(u32, Duration),
    /// Boxed: a ServerError is large and this is the rare path.
    #[error("on node \"{node}\": {source}")]
    Server {
        node: String,
        source: Box<ServerError>,
    },
    #[error(
        "auth.query returned {0} column(s); it must return the user name and the stored password"
    )]
    BadRow(usize),
}

pub struct Fetcher {
    user: String,
    password: String,
    database: String,
    query: String,
    query_timeout: Duration,
    max_fetches: u32,
    slots: Semaphore,
    /// Connections kept open between lookups (at most `max_fetches`).
    idle: Mutex<Vec<ServerConnection>>,
}

impl Fetcher {
    pub fn new(config: &AuthQueryConfig) -> Fetcher {
        Fetcher {
            user: config.user.clone(),
            password: config.password.expose().to_string(),
            database: config.database.clone(),
            query: config.query.clone(),
            query_timeout: config.query_timeout.0,
            max_fetches: config.max_fetches,
            slots: Semaphore::new(config.max_fetches as usize),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Asks the node `topology` names for `user`. `server`: the timeouts, TLS
    /// and keepalive of server connections.
    pub async fn fetch(
        &self,
        user: &str,
        server: &ServerConfig,
        topology: &Topology,
    ) -> Result<Answer, FetchError> {
        let node = topology
            .primary_node()
            .or_else(|| topology.replicas().next())
            .map(|i| &topology.nodes[i])
            .ok_or_else(|| {
                FetchError::NoNode(
                    topology
                        .write_blocker()
                        .unwrap_or_else(|| "no primary and no replica".into()),
                )
            })?;
        // Waiting for a slot is bounded like a lookup itself: whoever holds one
        // finishes (or gives up) within a login and a query.
        let wait = server.connect_timeout.0 + self.query_timeout;
        let _slot = tokio::time::timeout(wait, self.slots.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(FetchError::Busy(self.max_fetches, wait))?;
        let failed = |source| FetchError::Server {
            node: node.name.clone(),
            source: Box::new(source),
        };
        let kept = self.take_idle(&node.address);
        let reused = kept.is_some();
        let mut connection = match kept {
            Some(connection) => connection,
            None => self
                .connect(&node.name, &node.address, server)
                .await
                .map_err(failed)?,
        };
        let mut result = self.ask(&mut connection, user).await;
        if reused && matches!(&result, Err(e) if !matches!(e, ServerError::Rejected { .. })) {
            // The kept connection died while idle (a restart, a timeout on the
            // server's side): one more try on a new one.
            connection = self
                .connect(&node.name, &node.address, server)
                .await
                .map_err(failed)?;
            result = self.ask(&mut connection, user).await;
        }
        match result {
            Ok(row) => {
                self.keep_idle(connection);
                answer(row)
            }
            Err(e) => Err(failed(e)),
        }
    }

    async fn ask(
        &self,
        connection: &mut ServerConnection,
        user: &str,
    ) -> Result<Option<Row>, ServerError> {
        connection
            .query_row_with_params(&self.query, &[user], self.query_timeout)
            .await
    }

    async fn connect(
        &self,
        node: &str,
        address: &str,
        server: &ServerConfig,
    ) -> Result<ServerConnection, ServerError> {
        let params = [("application_name".to_string(), APPLICATION_NAME.to_string())];
        let login = LoginRequest {
            user: &self.user,
            credential: Credential::Password(&self.password),
            database: &self.database,
            params: &params,
            require_auth: server.require_auth,
        };
        server::connect_with(
            node,
            address,
            &login,
            server.connect_timeout.0,
            &server.keepalive,
            server.tls_loaded.for_address(address),
        )
        .await
    }

    /// A kept connection to `address` that looks usable (moved to this worker's
    /// event loop); the unusable ones met on the way are closed.
    fn take_idle(&self, address: &str) -> Option<ServerConnection> {
        loop {
            let mut kept = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            // The primary moved, or the server closed it: closed here.
            let usable = kept.address == address && kept.looks_healthy();
            // A login on another worker thread takes it to that thread's event loop.
            if usable && kept.move_here().is_ok() {
                return Some(kept);
            }
            kept.say_goodbye();
        }
    }

    fn keep_idle(&self, mut connection: ServerConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_fetches as usize {
            idle.push(connection);
        } else {
            connection.say_goodbye();
        }
    }
}

impl Drop for Fetcher {
    /// A reload that changed `auth:`, or the proxy stopping: the kept
    /// connections say goodbye, so the server logs a clean exit.
    fn drop(&mut self) {
        let idle = self.idle.get_mut().unwrap_or_else(|p| p.into_inner());
        for mut connection in idle.drain(..) {
            connection.say_goodbye();
        }
    }
}

fn answer(row: Option<Row>) -> Result<Answer, FetchError> {
    let Some(row) = row else {
        return Ok(Answer::NotFound);
    };
    match row.get(1) {
        None => Err(FetchError::BadRow(row.len())),
        Some(Some(password)) if !password.is_empty() => Ok(Answer::Found(password.clone())),
        Some(_) => Ok(Answer::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_answers() {
        let row =
            |cells: &[Option<&str>]| Some(cells.iter().map(|c| c.map(String::from)).collect());
        assert_eq!(answer(None).ok(), Some(Answer::NotFound));
        assert_eq!(
            answer(row(&[Some("alice"), Some("md5abc")])).ok(),
            Some(Answer::Found("md5abc".into()))
        );
        assert_eq!(
            answer(row(&[Some("alice"), None])).ok(),
            Some(Answer::NotFound)
        );
        assert_eq!(
            answer(row(&[Some("alice"), Some("")])).ok(),
            Some(Answer::NotFound)
        );
        assert!(matches!(
            answer(row(&[Some("alice")])),
            Err(FetchError::BadRow(1))
        ));
    }
}
