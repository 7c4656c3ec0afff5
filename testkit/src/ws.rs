//! A JSON-frame WebSocket client for tests.

use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long [`WsClient::recv`] waits by default.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended, as seen by the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed(Option<u16>),
    Reset,
}

impl WsClient {
    /// Connects to `ws://<addr>/ws` with the token in the `Authorization` header and the `chat.v1`
    /// subprotocol, and returns the client together with its `welcome` frame.
    pub async fn connect(addr: std::net::SocketAddr, token: &str) -> anyhow::Result<(Self, Value)> {
        let mut req = format!("ws://{addr}/ws").into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        req.headers_mut()
            .insert("sec-websocket-protocol", "chat.v1".parse()?);
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .context("ws connect")?;
        let proto = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok());
        if proto != Some("chat.v1") {
            bail!("server did not echo the subprotocol: {proto:?}");
        }
        let mut client = Self { ws };
        let welcome = client.recv().await?;
        if welcome["type"] != "welcome" {
            bail!("expected welcome, got {welcome}");
        }
        Ok((client, welcome))
    }

    /// Like [`connect`](Self::connect), over a socket with a tiny receive buffer, so a client that stops
    /// reading pushes back on the server quickly (for slow-consumer tests).
    pub async fn connect_small_buffer(
        addr: std::net::SocketAddr,
        token: &str,
    ) -> anyhow::Result<Self> {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.set_recv_buffer_size(4096)?;
        let tcp = sock.connect(addr).await?;
        let mut req = format!("ws://{addr}/ws").into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)).await?;
        let mut client = Self { ws };
        let welcome = client.recv().await?;
        anyhow::ensure!(
            welcome["type"] == "welcome",
            "expected welcome, got {welcome}"
        );
        Ok(client)
    }

    /// Sends one JSON value as a text frame.
    pub async fn send(&mut self, v: Value) -> anyhow::Result<()> {
        self.ws.send(Message::text(v.to_string())).await?;
        Ok(())
    }

    /// Sends raw text as a text frame.
    pub async fn send_text(&mut self, s: impl Into<String>) -> anyhow::Result<()> {
        self.ws.send(Message::text(s.into())).await?;
        Ok(())
    }

    /// The next JSON text frame, skipping control frames.
    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        self.recv_timeout(RECV_TIMEOUT).await
    }

    pub async fn recv_timeout(&mut self, t: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .context("timed out waiting for a frame")?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
                Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("ws error: {e}"),
                None => bail!("stream ended"),
            }
        }
    }

    /// Receives frames until one has the given `type`, returning it (earlier frames are discarded).
    pub async fn recv_type(&mut self, ty: &str) -> anyhow::Result<Value> {
        loop {
            let v = self.recv().await?;
            if v["type"] == ty {
                return Ok(v);
            }
        }
    }

    /// Waits until the server ends the connection, ignoring data frames, and reports how.
    pub async fn closed(&mut self, t: Duration) -> anyhow::Result<Ended> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .context("timed out waiting for close")?;
            match msg {
                Some(Ok(Message::Close(c))) => {
                    return Ok(Ended::Closed(c.map(|c: CloseFrame| c.code.into())));
                }
                Some(Ok(_)) => continue,
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                ))
                | None => {
                    return Ok(Ended::Closed(None));
                }
                Some(Err(_)) => return Ok(Ended::Reset),
            }
        }
    }

    /// The underlying stream, for tests that need raw control (for example to stop reading).
    pub fn inner(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.ws
    }
}
