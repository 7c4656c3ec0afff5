//! A real `nats-server` with JetStream, for tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::TempDir;

/// The binary to run: `$NATS_SERVER_BIN`, or `nats-server` on `PATH`.
pub fn nats_server_bin() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned())
}

/// A running nats-server. Killed, and its store removed, on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: TempDir,
}

impl NatsServer {
    /// Starts a server with JetStream on a random loopback port and a fresh store directory.
    pub fn start() -> anyhow::Result<Self> {
        let store = crate::temp_dir("liaotian-nats")?;
        let (child, port) = spawn(store.path(), None)?;
        Ok(Self {
            child: Some(child),
            port,
            store,
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs (for benchmarks that read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Kills the server abruptly (SIGKILL), keeping its store, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        // The port was ours a moment ago; retry briefly in case the kernel has not released it yet.
        let (child, _) = crate::retry(50, Duration::from_millis(100), || {
            spawn(self.store.path(), Some(self.port))
        })?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(store: &std::path::Path, port: Option<u16>) -> anyhow::Result<(Child, u16)> {
    let bin = nats_server_bin();
    let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
    let mut child = Command::new(&bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("starting `{bin}` (install nats-server >= 2.11 or set NATS_SERVER_BIN)")
        })?;
    match ready(&mut child, true)? {
        Some(port) => Ok((child, port)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("nats-server did not become ready")
        }
    }
}

/// Drains the log of `child` (a nats-server with piped stderr) for the life of the process, so the
/// pipe never fills, and waits up to 20 s for "Server is ready": `Some(client port)` then (0 when
/// the log named none), `None` on a fatal error (`[FTL]`, and `[ERR]` when `err_is_fatal`) or the
/// timeout. A cluster node passes false: route errors while its peers come up are expected.
pub(crate) fn ready(child: &mut Child, err_is_fatal: bool) -> anyhow::Result<Option<u16>> {
    let stderr = child.stderr.take().context("nats-server stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut port = None;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                port = rest
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.trim().parse::<u16>().ok());
            }
            if line.contains("Server is ready") {
                let _ = tx.send(Some(port.unwrap_or(0)));
            }
            if line.contains("[FTL]") || (err_is_fatal && line.contains("[ERR]")) {
                let _ = tx.send(None);
            }
        }
    });
    Ok(rx.recv_timeout(Duration::from_secs(20)).ok().flatten())
}
