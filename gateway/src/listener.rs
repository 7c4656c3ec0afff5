//! Binding the gateway's listening socket with an accept queue deep enough for a reconnect storm.
//!
//! `tokio::net::TcpListener::bind` asks the kernel for a queue of 1,024 connections. When a
//! gateway restarts, or a network blip drops many clients at once, they come back faster than one
//! busy core accepts them; once the queue is full the kernel drops the handshake's last packet and
//! the client's connection waits for a retransmit, one second later. At 5,000 connects/s that was
//! the handshake p99 (docs/benchmarks.md, eighth round). The kernel caps the depth at
//! `net.core.somaxconn` (4,096 by default since Linux 5.4).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Accept queue depth unless `GATEWAY_LISTEN_BACKLOG` says otherwise.
pub const DEFAULT_BACKLOG: u32 = 4096;

/// Binds `addr` (resolved; the first address that binds wins) with an accept queue of `backlog`.
pub async fn bind(addr: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        match bind_one(a, backlog) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}

fn bind_one(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted gateway can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Connects `n` clients at once while nothing accepts, then counts the connections the
    /// listener hands out within a short deadline: those its accept queue held. A handshake the
    /// kernel dropped waits a second for its retransmit, past both deadlines.
    async fn queued(listener: TcpListener, n: usize) -> usize {
        let addr = listener.local_addr().unwrap();
        let clients: Vec<_> = (0..n)
            .map(|_| {
                tokio::spawn(tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio::net::TcpStream::connect(addr),
                ))
            })
            .collect();
        let mut held = Vec::with_capacity(n);
        for c in clients {
            held.push(c.await.unwrap());
        }
        let mut accepted = Vec::new();
        while let Ok(Ok((s, _))) =
            tokio::time::timeout(Duration::from_millis(300), listener.accept()).await
        {
            accepted.push(s);
        }
        accepted.len()
    }

    #[tokio::test]
    async fn the_accept_queue_holds_a_burst_past_tokios_default() {
        let l = bind("127.0.0.1:0", 2048).await.unwrap();
        assert_eq!(queued(l, 1500).await, 1500);
    }

    #[tokio::test]
    async fn a_shallow_queue_drops_the_same_burst() {
        // The yardstick: the same burst against a queue of 64 leaves most handshakes waiting for
        // a retransmit, so the test above measures the depth it asked for.
        let l = bind("127.0.0.1:0", 64).await.unwrap();
        assert!(queued(l, 1500).await < 1000);
    }

    #[tokio::test]
    async fn an_address_that_does_not_parse_is_an_error() {
        assert!(bind("not an address", 16).await.is_err());
    }
}
