//! Queries the proxy runs on a server connection for its own purposes (bringing
//! session parameters in line with a client, the session-mode reset query). Their
//! replies are read here and never reach a client.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::protocol::backend;
use crate::protocol::startup::read_message;

use super::{ServerConnection, ServerError};

const MAX_REPLY_MESSAGE: usize = 1 << 20;

impl ServerConnection {
    /// Runs `sql` as a simple query and reads every reply up to ReadyForQuery. Fails
    /// if the server reports an error or does not end idle. ParameterStatus replies
    /// update `params`.
    pub async fn run_internal_query(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<(), ServerError> {
        let exchange = async {
            let mut message = Vec::with_capacity(sql.len() + 6);
            message.push(b'Q');
            message.extend_from_slice(&(sql.len() as u32 + 5).to_be_bytes());
            message.extend_from_slice(sql.as_bytes());
            message.push(0);
            self.stream
                .write_all(&message)
                .await
                .map_err(|source| ServerError::Io {
                    address: self.address.clone(),
                    source,
                })?;
            let mut failure = None;
            loop {
                let (tag, body) = read_message(&mut self.stream, MAX_REPLY_MESSAGE)
                    .await
                    .map_err(|e| ServerError::Protocol(e.to_string()))?;
                match tag {
                    b'E' if failure.is_none() => failure = Some(ServerError::rejected(&body)),
                    b'S' => {
                        if let Ok((name, value)) = backend::parse_parameter_status(&body) {
                            self.note_parameter(name, value);
                        }
                    }
                    b'Z' => {
                        return match (failure, body.first()) {
                            (Some(error), _) => Err(error),
                            (None, Some(b'I')) => Ok(()),
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
