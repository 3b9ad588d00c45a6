//! TCP options of a server connection: keepalive probes and, on Linux,
//! TCP_USER_TIMEOUT, so a server that vanished without a reset (a network
//! partition, a host that lost power) breaks the connection within seconds instead
//! of hanging its session until the kernel gives up hours later. Failing to set an
//! option is logged, never fatal: the connection works without it.

use tokio::net::TcpStream;

use crate::config::KeepaliveConfig;

/// Applies `keepalive` to a freshly connected server socket.
pub fn apply_keepalive(stream: &TcpStream, keepalive: &KeepaliveConfig, address: &str) {
    let socket = socket2::SockRef::from(stream);
    let params = socket2::TcpKeepalive::new()
        .with_time(keepalive.idle.0)
        .with_interval(keepalive.interval.0)
        .with_retries(keepalive.count);
    if let Err(e) = socket.set_tcp_keepalive(&params) {
        tracing::warn!(address, error = %e, "cannot set TCP keepalive on a server connection");
    }
    // Keepalive only probes an idle connection; data sent and never acknowledged
    // is retransmitted for ~15 minutes unless this bounds it too.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket.set_tcp_user_timeout(Some(keepalive.give_up_after())) {
        tracing::warn!(address, error = %e, "cannot set TCP_USER_TIMEOUT on a server connection");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::HumanDuration;

    #[tokio::test]
    async fn options_read_back_as_configured() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let stream = TcpStream::connect(address).await.expect("connect");
        let keepalive = KeepaliveConfig {
            idle: HumanDuration(Duration::from_secs(7)),
            interval: HumanDuration(Duration::from_secs(2)),
            count: 4,
        };
        apply_keepalive(&stream, &keepalive, "test");
        let socket = socket2::SockRef::from(&stream);
        assert!(socket.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            socket.tcp_keepalive_time().expect("idle"),
            Duration::from_secs(7)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().expect("interval"),
            Duration::from_secs(2)
        );
        assert_eq!(socket.tcp_keepalive_retries().expect("count"), 4);
        #[cfg(target_os = "linux")]
        assert_eq!(
            socket.tcp_user_timeout().expect("user timeout"),
            Some(Duration::from_secs(15))
        );
    }
}
