//! A real `redis-server`, for tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context, bail};

/// The binary to run: `$REDIS_SERVER_BIN`, or `redis-server` on `PATH`.
pub fn redis_server_bin() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_owned())
}

/// Ports tried before giving up on starting a server.
const START_ATTEMPTS: usize = 5;

/// A running redis-server without persistence, on a loopback port of its own. Killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers `PING`.
    pub fn start() -> anyhow::Result<Self> {
        // redis-server cannot report an ephemeral port, so pick one the kernel just handed out.
        // Another process (a parallel test) may take it before redis binds it: try a few ports.
        crate::retry(START_ATTEMPTS, Duration::ZERO, || {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            Ok(Self {
                child: Some(spawn(port)?),
                port,
            })
        })
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server abruptly (SIGKILL), as a crash would. Its data is gone: it has no persistence.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.child = Some(crate::retry(50, Duration::from_millis(100), || {
            spawn(self.port)
        })?);
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(port: u16) -> anyhow::Result<Child> {
    let bin = redis_server_bin();
    let mut child = Command::new(&bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!("starting `{bin}` (apt-get install redis-server, or set REDIS_SERVER_BIN)")
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("redis-server exited at start: {status}");
        }
        if ping(port) {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("redis-server on port {port} did not answer PING")
}

/// Sends an inline `PING` and expects `+PONG`.
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
