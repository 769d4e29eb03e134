//! The socket to the Worker: connect (with a timeout), keep alive, store-then-ack each
//! command, send results, and reconnect with full-jitter backoff for as long as the daemon
//! runs.
//!
//! Liveness is one `select!` arm: no frame from the Worker for `pong_timeout` drops the
//! connection. The backoff resets once a connection has stayed up `healthy_after`. A 401 (bad
//! key) or a close with code 4000 (another agent took over this machine id) waits a long,
//! fixed time instead of spinning.

use ccr_protocol::wire::{close, header, subprotocols};
use std::sync::Arc;
use std::time::Duration;

use ccr_native::{Backoff, Jitter};
use ccr_protocol::socket::{SocketMessage, PING_FRAME};
use futures_util::{SinkExt, StreamExt};
use rand::SeedableRng;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, error, info, warn};

use super::files::Fetcher;
use super::inbox::{Command, Inbox, Receipt, State};
use super::inject::Injector;
use super::peek;
use super::sessions::Sessions;
use super::status::{self, Connection};
use crate::db::{now_ms, Db};
use crate::settings::{Launch, Timing, WorkerConfig};

/// Results sent per flush.
const RESULT_BATCH: usize = 64;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// 401: the key is wrong.
    #[error("the Worker rejected the API key (HTTP 401): {0}")]
    Unauthorized(String),
    /// Any other failure worth a normal retry.
    #[error("{0}")]
    Other(String),
}

/// How one connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// Shutdown requested; close 1000 was sent.
    Shutdown,
    /// The Worker closed with 4000: another agent took over this machine id.
    Replaced,
    /// Closed, failed or timed out; reconnect.
    Lost(String),
}

/// What the socket loop shares with the executor.
#[derive(Clone)]
pub(crate) struct Shared {
    /// The inbox.
    pub(crate) inbox: Inbox,
    /// Session records and status.
    pub(crate) sessions: Sessions,
    /// The database permission decisions are stored in (`decisions`).
    pub(crate) decisions: Db,
    /// The data directory (where waiting hooks listen to be woken: `decisions::wake`).
    pub(crate) data_dir: std::path::PathBuf,
    /// Rung when a command is stored (wakes the executor).
    pub(crate) commands_ready: Arc<Notify>,
    /// Rung when a result is ready (wakes the socket loop).
    pub(crate) results_ready: Arc<Notify>,
    /// tmux, for `/peek` (answered on the socket task: one capture, within tmux's timeout).
    pub(crate) injector: Injector,
    /// What `/new` may start (its names are announced on each connection).
    pub(crate) launch: Arc<Launch>,
    /// Downloads the files the chat sends (`file` commands) from the Worker.
    pub(crate) files: Fetcher,
    /// `/preview`'s bridges (started on the socket task after a bounded port check).
    pub(crate) previews: super::preview::Previews,
    /// Requests the hooks hand over to be sent on this socket (`handover`).
    pub(crate) handover: super::handover::Handover,
}

/// Opens the socket: subprotocol `ccr, <key>`, within `timeout`.
async fn connect(worker: &WorkerConfig, timeout: Duration) -> Result<Ws, ConnectError> {
    let url = worker.socket_url();
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Other(format!("bad socket URL {url}: {e}")))?;
    let protocols =
        HeaderValue::from_str(&subprotocols(worker.api_key.expose())).map_err(|_| {
            ConnectError::Unauthorized(
                "the API key contains characters a header cannot carry".into(),
            )
        })?;
    request
        .headers_mut()
        .insert(header::WEBSOCKET_PROTOCOL, protocols);
    let config = WebSocketConfig::default()
        .max_message_size(Some(ccr_protocol::MAX_FRAME_BYTES))
        .max_frame_size(Some(ccr_protocol::MAX_FRAME_BYTES));
    // Nagle off: every frame here is small and someone waits for it (an ack, a result, a
    // card's request). With it on, a frame written while the previous one is unacknowledged
    // waits for the peer's delayed ACK, 40 ms on Linux.
    let attempt = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(ConnectError::Other(format!(
            "connecting to {} timed out after {timeout:?}",
            redact(&url)
        ))),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(WsError::Http(resp))) => {
            let status = resp.status();
            let body = resp
                .body()
                .as_deref()
                .map(|b| {
                    String::from_utf8_lossy(b)
                        .chars()
                        .take(200)
                        .collect::<String>()
                })
                .unwrap_or_default();
            if status.as_u16() == 401 {
                Err(ConnectError::Unauthorized(body))
            } else {
                Err(ConnectError::Other(format!(
                    "the Worker answered the socket upgrade with HTTP {status}: {body}"
                )))
            }
        }
        Ok(Err(e)) => Err(ConnectError::Other(format!(
            "connecting to {}: {e}",
            redact(&url)
        ))),
    }
}

fn redact(url: &url::Url) -> String {
    // The socket URL carries no secret (the key travels in a header), only the machine id.
    url.to_string()
}

/// Keeps a connection to the Worker until `shutdown` turns true.
pub(crate) async fn run_socket(
    worker: WorkerConfig,
    timing: Timing,
    shared: Shared,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(timing.backoff_base, timing.backoff_max, Jitter::Full);
    // A Send generator (the thread-local one cannot cross awaits in a spawned task).
    let mut rng = rand::rngs::StdRng::from_os_rng();
    // Each state change is one log line; repeats of a failing state go to debug. `None`:
    // starting, nothing recorded yet.
    let mut state: Option<Connection> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let delay = match connect(&worker, timing.connect_timeout).await {
            Ok(ws) => {
                let started = Instant::now();
                info!(machine_id = %worker.machine_id, "connected to the Worker");
                status::record(&shared.sessions, Connection::Connected, "");
                shared.handover.set_connected(true);
                let ended = serve(ws, &timing, &shared, &mut shutdown).await;
                shared.handover.set_connected(false);
                backoff.connection_ended(started.elapsed(), timing.healthy_after);
                match ended {
                    Ended::Shutdown => {
                        info!("disconnected: shutting down");
                        status::record(&shared.sessions, Connection::Stopped, "shut down");
                        return;
                    }
                    Ended::Replaced => {
                        state = Some(Connection::Replaced);
                        warn!(
                            machine_id = %worker.machine_id,
                            "disconnected: another agent took over this machine id (close {}); \
                             retrying in {:?} — stop the other agent or give this one its own --machine-id",
                            close::REPLACED,
                            timing.replaced_retry
                        );
                        status::record(
                            &shared.sessions,
                            Connection::Replaced,
                            "another agent took over this machine id",
                        );
                        timing.replaced_retry
                    }
                    Ended::Lost(why) => {
                        let d = backoff.next_delay(&mut rng);
                        warn!("disconnected: {why}; reconnecting in {d:?}");
                        state = Some(Connection::Disconnected);
                        status::record(&shared.sessions, Connection::Disconnected, &why);
                        d
                    }
                }
            }
            Err(ConnectError::Unauthorized(_)) if state == Some(Connection::Unauthorized) => {
                debug!("the Worker still rejects the API key");
                timing.unauthorized_retry
            }
            Err(ConnectError::Unauthorized(body)) => {
                state = Some(Connection::Unauthorized);
                error!(
                    "the Worker rejected the API key (HTTP 401{}): set CCR_API_KEY to the admin \
                     key or this machine's key (`ccr-agent machine-key --machine-id {}`); \
                     retrying in {:?}",
                    if body.is_empty() {
                        String::new()
                    } else {
                        format!(": {body}")
                    },
                    worker.machine_id,
                    timing.unauthorized_retry
                );
                status::record(
                    &shared.sessions,
                    Connection::Unauthorized,
                    "the Worker rejected the API key",
                );
                timing.unauthorized_retry
            }
            Err(ConnectError::Other(why)) => {
                let d = backoff.next_delay(&mut rng);
                if state == Some(Connection::Disconnected) {
                    debug!("still cannot connect: {why}; retrying in {d:?}");
                } else {
                    warn!("cannot connect: {why}; retrying in {d:?} (further failures are logged at debug level)");
                    state = Some(Connection::Disconnected);
                    status::record(&shared.sessions, Connection::Disconnected, &why);
                }
                d
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Serves one connection until it ends.
async fn serve(
    mut ws: Ws,
    timing: &Timing,
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let mut ping =
        tokio::time::interval_at(Instant::now() + timing.ping_interval, timing.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // The project names `/new` may start, once per connection (an empty list clears the
    // Worker's copy).
    let projects = SocketMessage::Projects {
        projects: shared.launch.names(),
    };
    if let Err(e) = send(&mut ws, projects.encode()).await {
        return Ended::Lost(e);
    }
    // Results finished while no socket was up go out first.
    if let Err(e) = flush_results(&mut ws, shared).await {
        return Ended::Lost(e);
    }
    let mut handed = shared.handover.receiver().await;
    loop {
        let deadline = last_heard + timing.pong_timeout;
        tokio::select! {
            _ = shutdown.changed() => {
                close(&mut ws, CloseCode::Normal, "agent shutting down").await;
                return Ended::Shutdown;
            }
            _ = tokio::time::sleep_until(deadline) => {
                close(&mut ws, CloseCode::Away, "no pong").await;
                return Ended::Lost(format!(
                    "no answer from the Worker for {:?}", timing.pong_timeout
                ));
            }
            _ = ping.tick() => {
                if let Err(e) = send(&mut ws, PING_FRAME.to_owned()).await {
                    return Ended::Lost(e);
                }
            }
            Some(request) = handed.recv() => {
                if let Some(frame) = shared.handover.sending(request) {
                    if let Err(e) = send(&mut ws, frame).await {
                        return Ended::Lost(e);
                    }
                }
            }
            _ = shared.results_ready.notified() => {
                if let Err(e) = flush_results(&mut ws, shared).await {
                    return Ended::Lost(e);
                }
            }
            frame = ws.next() => {
                let Some(frame) = frame else {
                    return Ended::Lost("the Worker closed the connection".into());
                };
                last_heard = Instant::now();
                match frame {
                    Ok(Message::Text(text)) => {
                        if let Err(e) = on_text(&mut ws, shared, text.as_str()).await {
                            return Ended::Lost(e);
                        }
                    }
                    Ok(Message::Close(frame)) => {
                        return match frame {
                            Some(f) if u16::from(f.code) == close::REPLACED => Ended::Replaced,
                            Some(f) => Ended::Lost(format!(
                                "the Worker closed the connection ({} {})",
                                u16::from(f.code),
                                f.reason
                            )),
                            None => Ended::Lost("the Worker closed the connection".into()),
                        };
                    }
                    Ok(Message::Binary(_)) => warn!("ignoring a binary frame"),
                    Ok(_) => {}
                    Err(e) => return Ended::Lost(format!("socket error: {e}")),
                }
            }
        }
    }
}

async fn on_text(ws: &mut Ws, shared: &Shared, text: &str) -> Result<(), String> {
    let msg = match SocketMessage::decode(text) {
        Ok(m) => m,
        Err(e) if e.is_unknown_type() => {
            info!("ignoring a message this agent does not know: {e}");
            return Ok(());
        }
        Err(e) => {
            warn!("ignoring a malformed message: {e}");
            return Ok(());
        }
    };
    let (cmd, expires_at) = match msg {
        SocketMessage::Pong => {
            status::record_pong(&shared.sessions);
            return Ok(());
        }
        SocketMessage::ApprovalOpened {
            request_id,
            status,
            error,
        } => {
            shared.handover.answered(&request_id, status, error);
            return Ok(());
        }
        SocketMessage::Decision {
            request_id,
            decision,
        } => {
            if let Err(e) =
                super::decisions::store(&shared.decisions, &request_id, &decision, now_ms())
            {
                // Not acked: the Worker delivers it again.
                error!(%request_id, "storing a decision failed, not acking: {e}");
                return Ok(());
            }
            super::decisions::wake(&shared.data_dir, &request_id);
            info!(%request_id, "decision stored and acked");
            return send(ws, SocketMessage::DecisionAck { request_id }.encode()).await;
        }
        SocketMessage::Command {
            command_id,
            session_id,
            command,
            chat_id,
            expires_at,
        } => (
            Command {
                command_id,
                session_id,
                command,
                chat_id,
                keys: None,
                project: None,
                file: None,
            },
            expires_at,
        ),
        // Named keys are stored, acked and executed exactly once like a command.
        SocketMessage::Keys {
            command_id,
            session_id,
            keys,
            chat_id,
            expires_at,
        } => (
            Command {
                command_id,
                session_id,
                command: String::new(),
                chat_id,
                keys: Some(keys.join(" ")),
                project: None,
                file: None,
            },
            expires_at,
        ),
        // A start request (`/new`) is stored, acked and executed exactly once like a command;
        // the executor checks the name against this machine's own list.
        SocketMessage::StartSession {
            command_id,
            project,
            prompt,
            chat_id,
            expires_at,
        } => (
            Command {
                command_id,
                session_id: String::new(),
                command: prompt.unwrap_or_default(),
                chat_id,
                keys: None,
                project: Some(project),
                file: None,
            },
            expires_at,
        ),
        // A file is stored, acked and executed exactly once like a command; executing it
        // downloads it, then types the caption and the saved path.
        SocketMessage::File {
            command_id,
            session_id,
            file,
            caption,
            chat_id,
            expires_at,
        } => (
            Command {
                command_id,
                session_id,
                command: caption,
                chat_id,
                keys: None,
                project: None,
                file: Some(file),
            },
            expires_at,
        ),
        SocketMessage::PeekRequest {
            request_id,
            session_id,
        } => {
            let answer = peek::screen(&shared.sessions, &shared.injector, &session_id).await;
            info!(%request_id, %session_id, ok = answer.is_ok(), "peek answered");
            let (screen, error) = match answer {
                Ok(screen) => (Some(screen), None),
                Err(error) => (None, Some(error)),
            };
            let msg = SocketMessage::PeekResult {
                request_id,
                screen,
                error,
            };
            return send(ws, msg.encode()).await;
        }
        SocketMessage::PreviewStart {
            channel,
            session_id,
            port,
            token,
            expires_at,
        } => {
            let ask = super::preview::Ask {
                channel: channel.clone(),
                port,
                token,
                expires_at,
            };
            let error = shared.previews.start(ask).await.err();
            info!(%channel, %session_id, port, ok = error.is_none(), "preview asked");
            let msg = SocketMessage::PreviewResult { channel, error };
            return send(ws, msg.encode()).await;
        }
        SocketMessage::PreviewStop { channel } => {
            shared.previews.stop(&channel);
            return Ok(());
        }
        other => {
            debug!("ignoring {} from the Worker", other.type_name());
            return Ok(());
        }
    };
    let receipt = match shared.inbox.store(&cmd, expires_at, now_ms()) {
        Ok(r) => r,
        Err(e) => {
            // Not acked: the Worker delivers it again, by when the disk may be back.
            error!(command_id = %cmd.command_id, "storing a command failed, not acking: {e}");
            return Ok(());
        }
    };
    let ack = SocketMessage::Ack {
        command_id: cmd.command_id.clone(),
    };
    send(ws, ack.encode()).await?;
    match receipt {
        Receipt::New => {
            info!(command_id = %cmd.command_id, session_id = %cmd.session_id, "command stored and acked");
            if let Err(e) = shared.inbox.mark_acked(&cmd.command_id, now_ms()) {
                warn!("recording the ack: {e}");
            }
            shared.commands_ready.notify_one();
        }
        Receipt::Expired => {
            warn!(
                command_id = %cmd.command_id,
                session_id = %cmd.session_id,
                "command arrived after it expired: acked, not typed, reported as failed"
            );
            shared.results_ready.notify_one();
        }
        Receipt::Duplicate(state) => {
            info!(command_id = %cmd.command_id, ?state, "command delivered again: acked, not executed again");
            if state == State::Done {
                if let Err(e) = shared.inbox.resend_result(&cmd.command_id) {
                    warn!("queueing a result again: {e}");
                }
                shared.results_ready.notify_one();
            }
        }
    }
    Ok(())
}

async fn flush_results(ws: &mut Ws, shared: &Shared) -> Result<(), String> {
    flush_gone(ws, shared).await?;
    loop {
        let batch = match shared.inbox.unsent_results(RESULT_BATCH) {
            Ok(b) => b,
            Err(e) => {
                warn!("reading results: {e}");
                return Ok(());
            }
        };
        let full = batch.len() == RESULT_BATCH;
        for (command_id, outcome, is_start) in batch {
            let msg = if is_start {
                SocketMessage::StartResult {
                    command_id: command_id.clone(),
                    success: outcome.success,
                    window: outcome.detail,
                    error: outcome.error,
                }
            } else {
                SocketMessage::CommandResult {
                    command_id: command_id.clone(),
                    success: outcome.success,
                    error: outcome.error,
                }
            };
            send(ws, msg.encode()).await?;
            if let Err(e) = shared.inbox.mark_result_sent(&command_id) {
                warn!("recording a sent result: {e}");
            }
        }
        if !full {
            return Ok(());
        }
    }
}

/// Sessions whose pane the executor found gone, reported before the results that say so.
async fn flush_gone(ws: &mut Ws, shared: &Shared) -> Result<(), String> {
    let gone = shared.sessions.unreported_gone().unwrap_or_else(|e| {
        warn!("reading gone sessions: {e}");
        Vec::new()
    });
    for (session_id, reason) in gone {
        let msg = SocketMessage::SessionGone {
            session_id: session_id.clone(),
            reason,
        };
        send(ws, msg.encode()).await?;
        if let Err(e) = shared.sessions.mark_gone_reported(&session_id) {
            warn!("recording a sent gone report: {e}");
        }
    }
    Ok(())
}

async fn send(ws: &mut Ws, text: String) -> Result<(), String> {
    // A send that cannot complete (a dead peer with full buffers) must not hang the loop.
    match tokio::time::timeout(Duration::from_secs(10), ws.send(Message::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("sending failed: {e}")),
        Err(_) => Err("sending timed out".into()),
    }
}

async fn close(ws: &mut Ws, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.to_owned().into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if ws.close(Some(frame)).await.is_ok() {
            // Wait for the peer's close reply so the close handshake completes.
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}
