//! The benchmark's "tokio-relay" target: the least a proxy built on tokio's
//! multi-threaded runtime can do per transaction. Each client gets its own
//! PostgreSQL connection and bytes are copied both ways, with no pooling, no
//! parsing, no metrics and no logging. Its CPU per transaction, measured in the same
//! run as Switchyard, PgBouncer and HAProxy, is the floor that a tokio-based proxy
//! pays in runtime and syscalls before doing any work of its own.
//!
//! Usage: tokio_relay LISTEN_ADDR UPSTREAM_ADDR
//!
//! `TOKIO_RELAY_FLAVOR=current_thread` runs it on a single-threaded runtime instead,
//! to measure what the multi-threaded scheduler itself costs.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

fn usage() -> ! {
    eprintln!("usage: tokio_relay LISTEN_ADDR UPSTREAM_ADDR");
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), None) = (args.next(), args.next(), args.next()) else {
        usage()
    };
    let (Ok(listen), Ok(upstream)) = (listen.parse::<SocketAddr>(), upstream.parse::<SocketAddr>())
    else {
        usage()
    };
    let mut builder = match std::env::var("TOKIO_RELAY_FLAVOR").as_deref() {
        Ok("current_thread") => tokio::runtime::Builder::new_current_thread(),
        Ok("multi_thread") | Err(_) => tokio::runtime::Builder::new_multi_thread(),
        Ok(other) => {
            eprintln!("tokio_relay: TOKIO_RELAY_FLAVOR must be multi_thread or current_thread, not {other:?}");
            std::process::exit(2)
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tokio_relay: cannot start the runtime: {e}");
            std::process::exit(1)
        }
    };
    if let Err(e) = runtime.block_on(serve(listen, upstream)) {
        eprintln!("tokio_relay: {e}");
        std::process::exit(1)
    }
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                eprintln!("tokio_relay: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(relay(client, upstream));
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr) {
    let connected =
        tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(upstream)).await;
    let mut server = match connected {
        Ok(Ok(server)) => server,
        Ok(Err(e)) => return eprintln!("tokio_relay: cannot connect to {upstream}: {e}"),
        Err(_) => return eprintln!("tokio_relay: connecting to {upstream} timed out"),
    };
    // Like every proxy in the comparison: small protocol messages go out at once.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
