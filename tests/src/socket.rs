//! A plain WebSocket client speaking the machine protocol, for tests that play the agent's
//! side by hand (the real agent has its own tests).

use ccr_protocol::wire::{header, query, route, subprotocols};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use ccr_protocol::socket::SocketMessage;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// What a read saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A text frame that decoded.
    Msg(SocketMessage),
    /// A text frame that did not.
    Text(String),
    /// The server closed with this code.
    Closed(u16),
}

/// A connected test socket.
pub struct TestSocket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The subprotocol the server chose.
    pub protocol: Option<String>,
}

/// Connect outcome when the upgrade is refused.
#[derive(Debug)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// Body text.
    pub body: String,
}

impl TestSocket {
    /// Opens `/ws?machineId=<machine>` with subprotocol `ccr, <key>`.
    pub async fn connect(ws_base: &str, machine: &str, key: &str) -> Result<TestSocket, Refused> {
        Self::connect_with(ws_base, machine, Some(&subprotocols(key))).await
    }

    /// Opens the socket with an arbitrary `Sec-WebSocket-Protocol` (or none).
    pub async fn connect_with(
        ws_base: &str,
        machine: &str,
        protocol: Option<&str>,
    ) -> Result<TestSocket, Refused> {
        let url = format!(
            "{ws_base}{}?{}={machine}",
            route::MACHINE_SOCKET,
            query::MACHINE_ID
        );
        let mut req = url.into_client_request().map_err(|e| Refused {
            status: 0,
            body: e.to_string(),
        })?;
        if let Some(p) = protocol {
            if let Ok(v) = HeaderValue::from_str(p) {
                req.headers_mut().insert(header::WEBSOCKET_PROTOCOL, v);
            }
        }
        let fut = tokio_tungstenite::connect_async(req);
        match tokio::time::timeout(Duration::from_secs(20), fut).await {
            Err(_) => Err(Refused {
                status: 0,
                body: "timed out".into(),
            }),
            Ok(Ok((ws, resp))) => Ok(TestSocket {
                ws,
                protocol: resp
                    .headers()
                    .get(header::WEBSOCKET_PROTOCOL)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            }),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => Err(Refused {
                status: resp.status().as_u16(),
                body: resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            }),
            Ok(Err(e)) => Err(Refused {
                status: 0,
                body: e.to_string(),
            }),
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &SocketMessage) -> anyhow::Result<()> {
        self.send_text(&msg.encode()).await
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .context("sending a frame")
    }

    /// The next event, or an error after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Event> {
        loop {
            let item = tokio::time::timeout(timeout, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {timeout:?}"))?;
            match item {
                None => return Ok(Event::Closed(1006)),
                Some(Err(e)) => bail!("socket error: {e}"),
                Some(Ok(Message::Text(t))) => {
                    return Ok(match SocketMessage::decode(&t) {
                        Ok(m) => Event::Msg(m),
                        Err(_) => Event::Text(t.to_string()),
                    })
                }
                Some(Ok(Message::Close(frame))) => {
                    return Ok(Event::Closed(frame.map_or(1005, |f| u16::from(f.code))))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next command frame (skipping pongs), as (id, session, command).
    pub async fn next_command(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<(String, String, String)> {
        loop {
            match self.next(timeout).await? {
                Event::Msg(SocketMessage::Command {
                    command_id,
                    session_id,
                    command,
                    ..
                }) => return Ok((command_id, session_id, command)),
                Event::Msg(SocketMessage::Pong) => continue,
                other => bail!("expected a command, got {other:?}"),
            }
        }
    }

    /// Asserts nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(quiet, self.ws.next()).await {
            Err(_) => Ok(()),
            Ok(item) => bail!("expected silence, got {item:?}"),
        }
    }

    /// Closes normally.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }

    /// Drops the TCP connection without a close frame.
    pub fn abort(self) {
        drop(self.ws);
    }
}
