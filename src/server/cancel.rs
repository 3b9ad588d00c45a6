//! Cancelling a query on a PostgreSQL server: a CancelRequest on a fresh
//! connection, over TLS when the node's policy says so (as libpq 17 does when the
//! main connection was encrypted). Cancels passed to peer instances are not server
//! connections and use `crate::cancel::send_cancel`.

use std::io;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::cancel::CancelTarget;
use crate::config::ServerTls;
use crate::protocol::messages;

/// Sends the CancelRequest for `target` and waits (bounded by `timeout`) for the
/// server to close the connection, which it does without a reply.
pub async fn send_cancel(
    target: &CancelTarget,
    tls: &ServerTls,
    timeout: Duration,
) -> io::Result<()> {
    let exchange = async {
        let tcp = TcpStream::connect(&target.address).await?;
        let policy = tls.for_address(&target.address);
        let mut stream = super::tls::negotiate(tcp, policy, &target.address)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        stream
            .send(&messages::cancel_request(target.pid, target.secret))
            .await?;
        let mut sink = [0u8; 64];
        loop {
            match stream.read(&mut sink).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                // A TLS server may close without close_notify: the request was sent.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "cancel timed out"))?
}
