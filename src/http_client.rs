//! A minimal HTTP/1.1 GET for health checks (Patroni's REST API, `switchyard health`):
//! one fresh connection per request, the whole exchange under one timeout, so a dead
//! node shows up as a connect error or a timeout and never as a stuck task. HTTPS
//! takes a ready rustls client configuration (the CA, and a client certificate for
//! Patroni's `verify_client`); the certificate must name the URL's host.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
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
    #[error("TLS with {0} failed: {1}")]
    Tls(String, String),
}

/// A response: status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// GET `path` from `authority` (`host:port`), all within `timeout`.
pub async fn get(authority: &str, path: &str, timeout: Duration) -> Result<Response, HttpError> {
    get_over(authority, path, timeout, None).await
}

/// [`get`], over HTTPS when `tls` is given.
pub async fn get_over(
    authority: &str,
    path: &str,
    timeout: Duration,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<Response, HttpError> {
    tokio::time::timeout(timeout, get_inner(authority, path, tls))
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

async fn get_inner(
    authority: &str,
    path: &str,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<Response, HttpError> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| HttpError::Connect(authority.to_string(), e))?;
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return exchange(stream, authority, path).await;
    };
    let host = host_of(authority);
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| HttpError::Tls(authority.to_string(), format!("{host:?}: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(name, stream)
        .await
        .map_err(|e| HttpError::Tls(authority.to_string(), e.to_string()))?;
    exchange(stream, authority, path).await
}

/// An error with its causes: hyper's own message ("connection error") hides the
/// one that matters, such as a TLS alert from a server wanting a client certificate.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The host part of `host:port`, IPv6 brackets removed.
fn host_of(authority: &str) -> &str {
    match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(host, _)| host),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    }
}

async fn exchange<T>(stream: T, authority: &str, path: &str) -> Result<Response, HttpError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| HttpError::Protocol(with_causes(&e)))?;
    // The connection task ends when the response is read or the timeout drops us.
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "switchyard")
        .body(Empty::<Bytes>::new())
        .map_err(|e| HttpError::Protocol(with_causes(&e)))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| HttpError::Protocol(with_causes(&e)))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| HttpError::Protocol(with_causes(&*e)))?
            .to_bytes();
        Ok(Response { status, body })
    }
    .await;
    driver.abort();
    result
}
