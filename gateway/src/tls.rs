//! TLS termination with rustls, for `wss://` without a proxy in front.
//!
//! [`TlsListener`] accepts TCP connections and runs each handshake in its own task, bounded in number
//! and time, so a slow or hostile client cannot stall accepting. Finished handshakes are handed to
//! axum through its `Listener` trait.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

/// Handshakes in progress at once.
const MAX_HANDSHAKES: usize = 1024;
/// Longest a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a rustls server config (TLS 1.2 and 1.3, HTTP/1.1) from PEM files.
pub fn server_config(cert_path: &str, key_path: &str) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("opening GATEWAY_TLS_CERT={cert_path}"))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading certificates from {cert_path}"))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "GATEWAY_TLS_CERT={cert_path} holds no certificate"
    );
    let key = match PrivateKeyDer::from_pem_file(key_path) {
        Err(pem::Error::NoItemsFound) => {
            anyhow::bail!("GATEWAY_TLS_KEY={key_path} holds no private key")
        }
        other => {
            other.with_context(|| format!("reading the key from GATEWAY_TLS_KEY={key_path}"))?
        }
    };
    let mut cfg = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A listener that yields TLS streams.
pub struct TlsListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Frames are small and latency matters: no Nagle delay on client sockets.
                let _ = tcp.set_nodelay(true);
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                if tx.is_closed() {
                    return;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                    drop(slot);
                });
            }
        });
        Ok(Self { local, rx })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
