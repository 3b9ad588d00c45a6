//! Queries the proxy runs on a server connection for its own purposes (bringing
//! session parameters in line with a client, the session-mode reset query, the SQL
//! health probe; also the `switchyard-demo` binary's clients). Their replies are
//! read here and never reach a client.

use std::time::Duration;

use bytes::BytesMut;

use crate::protocol::startup::read_message;
use crate::protocol::{backend, messages, tag};

use super::{ServerConnection, ServerError};

const MAX_REPLY_MESSAGE: usize = 1 << 20;

/// One row's columns in text format; `None` for NULL.
pub type Row = Vec<Option<String>>;

impl ServerConnection {
    /// Runs `sql` as a simple query and reads every reply up to ReadyForQuery. Fails
    /// if the server reports an error or does not end idle. ParameterStatus replies
    /// update `params`.
    pub async fn run_internal_query(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<(), ServerError> {
        self.simple_query(sql, timeout, false, None)
            .await
            .map(|_| ())
    }

    /// Like [`ServerConnection::run_internal_query`], and appends any
    /// NotificationResponse that arrives meanwhile (whole messages) to
    /// `notifications`: on a connection that backs a client (session mode) they
    /// are the client's, and must reach it later.
    pub async fn run_internal_query_keeping_notifications(
        &mut self,
        sql: &str,
        timeout: Duration,
        notifications: &mut BytesMut,
    ) -> Result<(), ServerError> {
        self.simple_query(sql, timeout, false, Some(notifications))
            .await
            .map(|_| ())
    }

    /// Like [`ServerConnection::run_internal_query`], and returns the first row of
    /// the result (`None` when there is none). Meant for small results off the hot
    /// path: the row is decoded.
    pub async fn query_row(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Option<Row>, ServerError> {
        self.simple_query(sql, timeout, true, None).await
    }

    /// [`ServerConnection::query_row`] that keeps notifications as
    /// [`ServerConnection::run_internal_query_keeping_notifications`] does.
    pub async fn query_row_keeping_notifications(
        &mut self,
        sql: &str,
        timeout: Duration,
        notifications: &mut BytesMut,
    ) -> Result<Option<Row>, ServerError> {
        self.simple_query(sql, timeout, true, Some(notifications))
            .await
    }

    async fn simple_query(
        &mut self,
        sql: &str,
        timeout: Duration,
        want_row: bool,
        mut notifications: Option<&mut BytesMut>,
    ) -> Result<Option<Row>, ServerError> {
        let exchange = async {
            let mut message = BytesMut::with_capacity(sql.len() + 6);
            messages::query(&mut message, sql);
            self.stream
                .send(&message)
                .await
                .map_err(|source| ServerError::Io {
                    address: self.address.clone(),
                    source,
                })?;
            let mut failure = None;
            let mut row = None;
            loop {
                let (tag, body) = match read_message(&mut self.stream, MAX_REPLY_MESSAGE).await {
                    Ok(message) => message,
                    // A server that is going away sends its FATAL error and then
                    // closes: the error says more than the closed socket.
                    Err(e) => return Err(failure.unwrap_or(ServerError::Protocol(e.to_string()))),
                };
                match tag {
                    tag::ERROR_RESPONSE if failure.is_none() => {
                        failure = Some(ServerError::rejected(&body))
                    }
                    tag::PARAMETER_STATUS => {
                        if let Ok((name, value)) = backend::parse_parameter_status(&body) {
                            self.note_parameter(name, value);
                        }
                    }
                    tag::NOTIFICATION_RESPONSE if notifications.is_some() => {
                        if let Some(out) = notifications.as_deref_mut() {
                            out.extend_from_slice(&[tag]);
                            out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
                            out.extend_from_slice(&body);
                        }
                    }
                    tag::DATA_ROW if want_row && row.is_none() => {
                        let columns = backend::parse_data_row(&body)
                            .map_err(|e| ServerError::Protocol(e.to_string()))?;
                        row = Some(columns);
                    }
                    tag::READY_FOR_QUERY => {
                        return match (failure, body.first()) {
                            (Some(error), _) => Err(error),
                            (None, Some(&tag::STATUS_IDLE)) => Ok(row),
                            (None, _) => Err(ServerError::Protocol(
                                "internal query left a transaction open".into(),
                            )),
                        };
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ServerError::Timeout {
                address: self.address.clone(),
                after: timeout,
            })?
    }
}
