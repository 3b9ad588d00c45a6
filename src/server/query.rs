//! Queries the proxy runs on a server connection for its own purposes (bringing
//! session parameters in line with a client, the session-mode reset query, the SQL
//! health probe, the `auth_query` lookup; also the `switchyard-demo` binary's
//! clients). Their replies are read here and never reach a client. Values that
//! come from outside (a client's user name) go as parameters of the extended
//! protocol, never into the SQL text.

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

    /// Runs `sql` with `params` (text values for `$1`, `$2`, ...) through the
    /// extended protocol (Parse, Bind, Execute, Sync on the unnamed statement) and
    /// returns the first row, like [`ServerConnection::query_row`]. The values
    /// never become SQL text, so no quoting can go wrong.
    pub async fn query_row_with_params(
        &mut self,
        sql: &str,
        params: &[&str],
        timeout: Duration,
    ) -> Result<Option<Row>, ServerError> {
        let mut message = BytesMut::with_capacity(sql.len() + 64);
        let mut parse = BytesMut::with_capacity(sql.len() + 3);
        parse.extend_from_slice(sql.as_bytes());
        // NUL after the text, then no parameter types: the server infers them.
        parse.extend_from_slice(&[0, 0, 0]);
        messages::parse(&mut message, b"", &parse);
        let count = i16::try_from(params.len())
            .map_err(|_| ServerError::Protocol("too many query parameters".into()))?;
        let mut bind = BytesMut::new();
        // No parameter format codes: all text.
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind.extend_from_slice(&count.to_be_bytes());
        for value in params {
            let len = i32::try_from(value.len())
                .map_err(|_| ServerError::Protocol("query parameter too long".into()))?;
            bind.extend_from_slice(&len.to_be_bytes());
            bind.extend_from_slice(value.as_bytes());
        }
        // No result format codes: all text.
        bind.extend_from_slice(&0i16.to_be_bytes());
        messages::bind(&mut message, b"", b"", &bind);
        messages::execute(&mut message, b"");
        messages::sync(&mut message);
        self.exchange(message, timeout, true, None).await
    }

    async fn simple_query(
        &mut self,
        sql: &str,
        timeout: Duration,
        want_row: bool,
        notifications: Option<&mut BytesMut>,
    ) -> Result<Option<Row>, ServerError> {
        let mut message = BytesMut::with_capacity(sql.len() + 6);
        messages::query(&mut message, sql);
        self.exchange(message, timeout, want_row, notifications)
            .await
    }

    /// Sends `message` (ending in Query or Sync) and reads every reply up to
    /// ReadyForQuery; the first DataRow when `want_row`; NotificationResponses
    /// appended to `notifications` when given.
    async fn exchange(
        &mut self,
        message: BytesMut,
        timeout: Duration,
        want_row: bool,
        mut notifications: Option<&mut BytesMut>,
    ) -> Result<Option<Row>, ServerError> {
        let exchange = async {
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
