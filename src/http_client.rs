//! A minimal HTTP/1.1 GET for health checks (Patroni's REST API, `switchyard health`):
//! one fresh connection per request, the whole exchange under one timeout, so a dead
//! node shows up as a connect error or a timeout and never as a stuck task.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Bodies we read are small JSON documents; anything larger is refused.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect to {0} failed: {1}")]
    Connect(String, std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP error: {0}")]
    Protocol(String),
}

/// A response: status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// GET `path` from `authority` (`host:port`), all within `timeout`.
pub async fn get(authority: &str, path: &str, timeout: Duration) -> Result<Response, HttpError> {
    tokio::time::timeout(timeout, get_inner(authority, path))
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

async fn get_inner(authority: &str, path: &str) -> Result<Response, HttpError> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| HttpError::Connect(authority.to_string(), e))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| HttpError::Protocol(e.to_string()))?;
    // The connection task ends when the response is read or the timeout drops us.
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "switchyard")
        .body(Empty::<Bytes>::new())
        .map_err(|e| HttpError::Protocol(e.to_string()))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| HttpError::Protocol(e.to_string()))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| HttpError::Protocol(e.to_string()))?
            .to_bytes();
        Ok(Response { status, body })
    }
    .await;
    driver.abort();
    result
}
