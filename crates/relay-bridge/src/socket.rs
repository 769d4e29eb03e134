//! The WebSocket transport: one socket to the channel's relay object (`{prefix}/_ws`), over
//! which the relay pushes requests as they arrive and the bridge sends responses back — whole
//! (a small `content-length` body, one text frame) or streamed (a head, binary chunks of at
//! most [`STREAM_CHUNK_BYTES`], an end), each stream within a window of
//! [`STREAM_WINDOW_BYTES`] that the relay refills as its caller reads. So a download of any
//! size passes with bounded memory on both sides, and an event stream's events reach the
//! caller as the target writes them.
//!
//! A socket that drops is reconnected with jittered backoff; the requests it carried are
//! abandoned here (the relay answers their callers 502 itself). An upgrade the relay — or a
//! proxy in between — refuses (any HTTP answer but 101) ends this transport in `auto` mode:
//! the bridge long-polls instead.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ccr_native::{Backoff, Jitter};
use ccr_protocol::relay::{
    chunk_frame, sendable_close_code, split_chunk_frame, target_socket_header, BridgeUp, RelayDown,
    RelayRequest, RelayResponse, SOCKET_BACKLOG_BYTES, SOCKET_MESSAGE_BYTES, SOCKET_OVERFLOW_CODE,
    SOCKET_WINDOW_BYTES, STREAM_CHUNK_BYTES, STREAM_WINDOW_BYTES, WHOLE_RESPONSE_BYTES,
};
use ccr_protocol::wire::{header, route};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{debug, info, warn};
use url::Url;

use crate::{forward, Config, Shared};

/// How long opening the socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A ping this often keeps idle-closing proxies away and finds a dead connection.
const PING_EVERY: Duration = Duration::from_secs(20);
/// No frame at all (not even a pong) for this long: the connection is dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(70);
/// Outgoing frames queued for the writer; a full queue holds back the senders (so a target
/// faster than the relay's link waits instead of filling memory).
const OUTGOING_FRAMES: usize = 32;
/// A socket that lived this long resets the reconnect backoff.
const HEALTHY_FOR: Duration = Duration::from_secs(10);
/// A streamed response whose window stays exhausted this long (its caller read nothing) is
/// given up: a caller that went away is not always reported to the relay (workerd does not
/// cancel a Durable Object's response stream when the caller disconnects), and its slot and
/// the target's connection must not be held for ever.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// Most bytes of responses in one batched `respond` frame (one response alone may be larger:
/// a whole body of up to [`WHOLE_RESPONSE_BYTES`] in base64).
const BATCH_BYTES: usize = 1024 * 1024;
/// Largest frame accepted from the relay (a request carries at most a 10 MiB body in base64).
const MAX_FRAME_BYTES: usize = 32 * 1024 * 1024;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How the transport ended.
pub(crate) enum Ended {
    /// Shutdown was requested (in-flight requests are drained).
    Shutdown,
    /// The socket cannot be used here (why); long-poll instead.
    Unavailable(String),
}

/// Why a connection attempt failed.
enum ConnectError {
    /// An HTTP answer other than 101: upgrades are refused on this path.
    Refused(String),
    /// Anything else (network, TLS, timeout): worth retrying.
    Failed(String),
}

/// The socket URL: the relay endpoint with `ws`/`wss` for `http`/`https`.
pub(crate) fn socket_url(cfg: &Config) -> anyhow::Result<Url> {
    let mut url = Url::parse(&cfg.relay_endpoint(route::BRIDGE_SOCKET))?;
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .map_err(|()| anyhow::anyhow!("cannot make a WebSocket URL of {url}"))?;
    Ok(url)
}

/// Whether the environment sends the relay's traffic through a proxy (`HTTPS_PROXY`,
/// `HTTP_PROXY`, `ALL_PROXY`, less `NO_PROXY`). The socket is dialled directly, so with a
/// proxy in the way `auto` long-polls (through the proxy, like every other call).
pub(crate) fn proxy_applies(relay: &Url, env: impl Fn(&str) -> Option<String>) -> bool {
    let get = |name: &str| {
        env(name)
            .or_else(|| env(&name.to_ascii_lowercase()))
            .filter(|v| !v.trim().is_empty())
    };
    let proxy = match relay.scheme() {
        "https" => get("HTTPS_PROXY"),
        _ => get("HTTP_PROXY"),
    }
    .or_else(|| get("ALL_PROXY"));
    if proxy.is_none() {
        return false;
    }
    let host = relay.host_str().unwrap_or_default().to_ascii_lowercase();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let bypassed = get("NO_PROXY").is_some_and(|list| {
        list.split(',').map(str::trim).any(|entry| {
            let entry = entry.trim_start_matches('.').to_ascii_lowercase();
            entry == "*"
                || (!entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}"))))
        })
    });
    !bypassed
}

async fn connect(cfg: &Config) -> Result<Socket, ConnectError> {
    let url = socket_url(cfg).map_err(|e| ConnectError::Refused(format!("{e:#}")))?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Refused(e.to_string()))?;
    let token = HeaderValue::from_str(cfg.token.expose())
        .map_err(|_| ConnectError::Refused("the token is not a valid header value".into()))?;
    request.headers_mut().insert(header::RELAY_TOKEN, token);
    request.headers_mut().insert(
        "user-agent",
        HeaderValue::from_static(concat!("relay-bridge/", env!("CARGO_PKG_VERSION"))),
    );
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let opened = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
    )
    .await;
    match opened {
        Err(_) => Err(ConnectError::Failed(format!(
            "no answer within {CONNECT_TIMEOUT:?}"
        ))),
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tungstenite::Error::Http(resp))) => Err(ConnectError::Refused(format!(
            "the upgrade was answered {}",
            resp.status()
        ))),
        Ok(Err(e)) => Err(ConnectError::Failed(e.to_string())),
    }
}

/// Runs the WebSocket transport until shutdown (then drains), or until it turns out unusable
/// and `auto` says to long-poll instead. With `auto` off, a refused upgrade is retried like
/// any other failure.
pub(crate) async fn run<F: Future<Output = ()>>(
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    auto: bool,
    mut shutdown: Pin<&mut F>,
) -> Ended {
    let cfg = &shared.config;
    if auto && proxy_applies(&cfg.relay_url, |k| std::env::var(k).ok()) {
        return Ended::Unavailable("a proxy is configured for the relay".into());
    }
    let mut backoff = Backoff::new(
        crate::POLL_BACKOFF_BASE,
        crate::POLL_BACKOFF_MAX,
        Jitter::UpperHalf,
    );
    loop {
        let connected = tokio::select! {
            biased;
            () = shutdown.as_mut() => return Ended::Shutdown,
            c = connect(cfg) => c,
        };
        match connected {
            Ok(socket) => {
                info!(relay = %cfg.relay_endpoint(route::BRIDGE_SOCKET), "connected: requests come over the WebSocket");
                let since = tokio::time::Instant::now();
                if serve(socket, &shared, &permits, shutdown.as_mut()).await {
                    return Ended::Shutdown;
                }
                if since.elapsed() >= HEALTHY_FOR {
                    backoff.reset();
                }
            }
            Err(ConnectError::Refused(why)) if auto => return Ended::Unavailable(why),
            Err(ConnectError::Refused(why) | ConnectError::Failed(why)) => {
                warn!("opening the relay's WebSocket failed: {why}");
            }
        }
        let pause = backoff.next_delay(&mut rand::rng());
        warn!("reconnecting the WebSocket in {pause:?}");
        tokio::select! {
            biased;
            () = shutdown.as_mut() => return Ended::Shutdown,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// The streams in flight on one socket: each one's window and how to stop it.
#[derive(Default)]
struct Streams(Mutex<HashMap<String, (Arc<Semaphore>, AbortHandle)>>);

impl Streams {
    fn credit(&self, id: &str, bytes: u64) {
        if let Ok(map) = self.0.lock() {
            if let Some((window, _)) = map.get(id) {
                // Never more than a few windows ahead, whatever the relay says.
                let room =
                    (STREAM_WINDOW_BYTES as usize * 4).saturating_sub(window.available_permits());
                window.add_permits(usize::try_from(bytes).unwrap_or(usize::MAX).min(room));
            }
        }
    }

    /// Stops `id`'s task; whether it was still running.
    fn cancel(&self, id: &str) -> bool {
        let entry = self.0.lock().ok().and_then(|mut map| map.remove(id));
        let Some((_, abort)) = entry else {
            return false;
        };
        debug!(%id, "the caller went away: stopping");
        abort.abort();
        true
    }

    fn insert(&self, id: String, window: Arc<Semaphore>, abort: AbortHandle) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(id, (window, abort));
        }
    }

    fn remove(&self, id: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(id);
        }
    }
}

/// Callers' WebSockets carried on one bridge socket: connection id → its flow state.
#[derive(Default)]
struct CallerSockets(Mutex<HashMap<String, CallerConn>>);

/// What the socket's reader and a carried connection's task share. Memory per connection is
/// bounded both ways: caller → target by `backlog` (at most [`SOCKET_BACKLOG_BYTES`] wait for
/// the target; the relay sends no more than the credits granted back, and a relay that does is
/// closed with [`SOCKET_OVERFLOW_CODE`]), target → caller by `window` (the task reads the
/// target's next message only once the previous one fitted in the relay's grant, so a target
/// faster than its caller waits in TCP).
#[derive(Clone)]
struct CallerConn {
    /// The caller's messages, to write to the target.
    tx: mpsc::UnboundedSender<ToTarget>,
    /// Bytes in `tx` not yet written to the target.
    backlog: Arc<AtomicU64>,
    /// Bytes the bridge may still send towards the caller ([`SOCKET_WINDOW_BYTES`] at most).
    window: Arc<Semaphore>,
}

/// What the reader hands a carried connection's task.
#[derive(Debug)]
enum ToTarget {
    /// A message from the caller.
    Message(Message),
    /// More of the caller's bytes arrived than may wait: close both sides.
    Overflow,
}

/// Bytes a WebSocket message counts against a window: its payload.
fn message_bytes(message: &Message) -> u64 {
    match message {
        Message::Text(t) => t.len() as u64,
        Message::Binary(b) => b.len() as u64,
        _ => 0,
    }
}

impl CallerSockets {
    /// Hands a caller's message to its connection's task, within the backlog: past it, the
    /// connection is closed ([`ToTarget::Overflow`]) and forgotten, never queued further.
    fn send(&self, id: &str, message: Message) {
        let Ok(mut map) = self.0.lock() else {
            return;
        };
        let Some(conn) = map.get(id) else {
            return;
        };
        let n = message_bytes(&message);
        let waiting = conn.backlog.load(Ordering::SeqCst);
        if waiting.saturating_add(n) > SOCKET_BACKLOG_BYTES {
            warn!(%id, waiting, "the caller sent more than {SOCKET_BACKLOG_BYTES} bytes ahead of the target: closing");
            let _ = conn.tx.send(ToTarget::Overflow);
            map.remove(id);
            return;
        }
        conn.backlog.fetch_add(n, Ordering::SeqCst);
        if conn.tx.send(ToTarget::Message(message)).is_err() {
            map.remove(id);
        }
    }

    /// The relay passed `bytes` more on to the caller: the window grows back, never past
    /// [`SOCKET_WINDOW_BYTES`] whatever the relay says.
    fn credit(&self, id: &str, bytes: u64) {
        let window = self
            .0
            .lock()
            .ok()
            .and_then(|map| map.get(id).map(|c| c.window.clone()));
        if let Some(window) = window {
            let room = (SOCKET_WINDOW_BYTES as usize).saturating_sub(window.available_permits());
            window.add_permits(usize::try_from(bytes).unwrap_or(usize::MAX).min(room));
        }
    }

    /// Registers connection `id`; its task's half.
    fn open(&self, id: String) -> (mpsc::UnboundedReceiver<ToTarget>, CallerConn) {
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = CallerConn {
            tx,
            backlog: Arc::new(AtomicU64::new(0)),
            window: Arc::new(Semaphore::new(SOCKET_WINDOW_BYTES as usize)),
        };
        if let Ok(mut map) = self.0.lock() {
            map.insert(id, conn.clone());
        }
        (rx, conn)
    }

    fn remove(&self, id: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(id);
        }
    }
}

/// Request bodies arriving as binary frames after their envelopes (`bodyFollows`,
/// `bodyStreams`): request id → where its bytes go and how many are still to come (none: until
/// `bodyEnd`). The socket's reader only hands each frame on, so it keeps reading (credits,
/// other requests, other uploads' frames) while uploads cross.
#[derive(Default)]
struct Uploads(Mutex<HashMap<String, Upload>>);

/// Where an upload's pieces go, and how many bytes are still to come (none: unknown).
type Upload = (mpsc::UnboundedSender<forward::Piece>, Option<u64>);

impl Uploads {
    /// Starts receiving `len` bytes for request `id`, all in the relay's memory already.
    fn open(&self, id: &str, len: u64) -> forward::Upload {
        let (tx, chunks) = mpsc::unbounded_channel();
        if len > 0 {
            if let Ok(mut map) = self.0.lock() {
                map.insert(id.to_owned(), (tx, Some(len)));
            }
        } else {
            let _ = tx.send(forward::Piece::End);
        }
        forward::Upload {
            chunks,
            len: Some(len),
            credit: None,
        }
    }

    /// Starts receiving a body that streams from its caller (`bodyStreams`): `len` when
    /// declared; it ends with `bodyEnd`. As the target reads it, the relay is granted more
    /// window over `out`.
    fn open_stream(
        &self,
        id: &str,
        len: Option<u64>,
        out: mpsc::Sender<Message>,
    ) -> forward::Upload {
        let (tx, chunks) = mpsc::unbounded_channel();
        if let Ok(mut map) = self.0.lock() {
            map.insert(id.to_owned(), (tx, len));
        }
        forward::Upload {
            chunks,
            len,
            credit: Some(forward::UploadCredit {
                id: id.to_owned(),
                out,
                pending: 0,
            }),
        }
    }

    /// Hands a chunk to its upload; `false` when `id` is no upload's (a caller's socket).
    /// The last chunk of a known length (or one its request no longer wants) closes the
    /// upload; more bytes than announced break it off.
    fn chunk(&self, id: &str, bytes: &[u8]) -> bool {
        let Ok(mut map) = self.0.lock() else {
            return false;
        };
        let Some((tx, left)) = map.get_mut(id) else {
            return false;
        };
        let n = bytes.len() as u64;
        let close = match left {
            Some(l) if n > *l => {
                let _ = tx.send(forward::Piece::Abort(
                    "the relay sent more than the body's length".into(),
                ));
                true
            }
            Some(l) => {
                *l -= n;
                let delivered = tx.send(forward::Piece::Bytes(bytes.to_vec())).is_ok();
                if *l == 0 {
                    let _ = tx.send(forward::Piece::End);
                }
                !delivered || *l == 0
            }
            None => tx.send(forward::Piece::Bytes(bytes.to_vec())).is_err(),
        };
        if close {
            map.remove(id);
        }
        true
    }

    /// A streamed body is complete (`bodyEnd`); one shorter than its length breaks off.
    fn end(&self, id: &str) {
        let entry = self.0.lock().ok().and_then(|mut map| map.remove(id));
        if let Some((tx, left)) = entry {
            let piece = match left {
                Some(l) if l > 0 => {
                    forward::Piece::Abort("the body ended before its length".into())
                }
                _ => forward::Piece::End,
            };
            let _ = tx.send(piece);
        }
    }

    /// A streamed body broke off (`bodyAbort`): the target's request fails.
    fn abort(&self, id: &str, error: String) {
        let entry = self.0.lock().ok().and_then(|mut map| map.remove(id));
        if let Some((tx, _)) = entry {
            debug!(%id, "the request body broke off: {error}");
            let _ = tx.send(forward::Piece::Abort(error));
        }
    }
}

/// A close frame with `code` (made sendable) and `reason`.
fn close_frame(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(sendable_close_code(code)),
        reason: reason.into(),
    }))
}

/// Carries one caller's WebSocket to the target: opens the target's socket (the caller's
/// headers but the handshake's own), then relays messages both ways until either side
/// closes, and passes the close on. Each direction runs on its own, so a target that is slow
/// to read never holds back its messages to the caller, nor the other way round.
async fn caller_socket(
    shared: Arc<Shared>,
    id: String,
    (path, query, headers): (String, String, Vec<(String, String)>),
    (mut from_caller, conn): (mpsc::UnboundedReceiver<ToTarget>, CallerConn),
    out: mpsc::Sender<Message>,
    sockets: Arc<CallerSockets>,
) {
    let cfg = &shared.config;
    let close_up = |code: u16, reason: String| BridgeUp::SocketClose {
        id: id.clone(),
        code,
        reason,
    };
    let opened = async {
        let mut url = forward::target_url(&cfg.target, &path, &query)?;
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .map_err(|()| anyhow::anyhow!("no WebSocket URL for {url}"))?;
        let mut request = url.as_str().into_client_request()?;
        for (name, value) in &headers {
            if !target_socket_header(name) {
                continue;
            }
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                request.headers_mut().append(n, v);
            }
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(SOCKET_MESSAGE_BYTES))
            .max_frame_size(Some(SOCKET_MESSAGE_BYTES));
        let (socket, _) = tokio::time::timeout(
            cfg.target_timeout,
            tokio_tungstenite::connect_async_with_config(request, Some(config), false),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {:?}", cfg.target_timeout))??;
        anyhow::Ok(socket)
    };
    let target = match opened.await {
        Ok(t) => t,
        Err(e) => {
            warn!(%id, "the target refused the WebSocket {path}: {e:#}");
            send_up(
                &out,
                &close_up(1011, format!("the target refused the WebSocket: {e:#}")),
            )
            .await;
            sockets.remove(&id);
            return;
        }
    };
    info!(%id, "WebSocket {path} open to the target");
    let (mut to_target, mut from_target) = target.split();
    // Target → caller: a message is read only once the previous one fitted in the window.
    let up = async {
        loop {
            let m = from_target.next().await;
            let n = match &m {
                Some(Ok(m)) => message_bytes(m),
                _ => 0,
            };
            if n > 0 {
                let want = u32::try_from(n.min(SOCKET_WINDOW_BYTES)).unwrap_or(u32::MAX);
                match conn.window.acquire_many(want).await {
                    Ok(p) => p.forget(),
                    Err(_) => return,
                }
            }
            match m {
                Some(Ok(Message::Text(text))) => {
                    let frame = BridgeUp::SocketText {
                        id: id.clone(),
                        text: text.as_str().to_owned(),
                    };
                    if !send_up(&out, &frame).await {
                        return;
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    if out
                        .send(Message::binary(chunk_frame(&id, &bytes)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                        .unwrap_or((1000, String::new()));
                    send_up(&out, &close_up(code, reason)).await;
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    warn!(%id, "the target sent a message over {SOCKET_MESSAGE_BYTES} bytes: {e}");
                    send_up(
                        &out,
                        &close_up(1009, format!("the target's message is too big: {e}")),
                    )
                    .await;
                    return;
                }
                Some(Err(e)) => {
                    send_up(
                        &out,
                        &close_up(1011, format!("the target's socket failed: {e}")),
                    )
                    .await;
                    return;
                }
                None => {
                    send_up(&out, &close_up(1000, String::new())).await;
                    return;
                }
            }
        }
    };
    // Caller → target: what the target took is granted back to the relay.
    let down = async {
        let mut granted = 0u64;
        while let Some(item) = from_caller.recv().await {
            match item {
                ToTarget::Message(Message::Close(frame)) => {
                    let _ = to_target.send(Message::Close(frame)).await;
                    return;
                }
                ToTarget::Message(m) => {
                    let n = message_bytes(&m);
                    if to_target.send(m).await.is_err() {
                        send_up(&out, &close_up(1011, "the target's socket failed".into())).await;
                        return;
                    }
                    conn.backlog.fetch_sub(n, Ordering::SeqCst);
                    granted += n;
                    // Granted in batches while more waits, at once when the target caught up.
                    if granted > 0
                        && (from_caller.is_empty() || granted >= SOCKET_BACKLOG_BYTES / 8)
                    {
                        let credit = BridgeUp::SocketCredit {
                            id: id.clone(),
                            bytes: granted,
                        };
                        granted = 0;
                        if !send_up(&out, &credit).await {
                            return;
                        }
                    }
                }
                ToTarget::Overflow => {
                    let reason = "too much data waiting for the target";
                    let _ = to_target
                        .send(close_frame(SOCKET_OVERFLOW_CODE, reason.into()))
                        .await;
                    send_up(&out, &close_up(SOCKET_OVERFLOW_CODE, reason.into())).await;
                    return;
                }
            }
        }
        let _ = to_target
            .send(close_frame(1001, "the relay went away".into()))
            .await;
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
    debug!(%id, "WebSocket {path} closed");
    sockets.remove(&id);
}

/// Serves one connected socket until it drops (`false`) or shutdown (`true`, after draining).
async fn serve<F: Future<Output = ()>>(
    socket: Socket,
    shared: &Arc<Shared>,
    permits: &Arc<Semaphore>,
    mut shutdown: Pin<&mut F>,
) -> bool {
    let (sink, mut incoming) = socket.split();
    let (out, outgoing) = mpsc::channel::<Message>(OUTGOING_FRAMES);
    let (answers, answered) = mpsc::channel::<RelayResponse>(OUTGOING_FRAMES);
    let writer = tokio::spawn(write_frames(sink, outgoing, answered));
    let streams = Arc::new(Streams::default());
    let callers = Arc::new(CallerSockets::default());
    let uploads = Uploads::default();
    // Callers' sockets live as long as this bridge socket; they are not drained.
    let mut socket_tasks = JoinSet::new();
    let mut tasks = JoinSet::new();
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut last_heard = tokio::time::Instant::now();
    let mut on_frame = |frame: Message, tasks: &mut JoinSet<()>| {
        let text = match frame {
            Message::Text(text) => text,
            Message::Binary(bytes) => {
                if let Some((id, bytes)) = split_chunk_frame(&bytes) {
                    if !uploads.chunk(id, bytes) {
                        callers.send(id, Message::binary(bytes.to_vec()));
                    }
                }
                return;
            }
            _ => return,
        };
        match serde_json::from_str::<RelayDown>(text.as_str()) {
            Ok(RelayDown::Requests { requests }) => {
                for request in requests {
                    let window = Arc::new(Semaphore::new(STREAM_WINDOW_BYTES as usize));
                    let id = request.id.clone();
                    let upload = if request.body_streams {
                        Some(uploads.open_stream(&id, request.body_follows, out.clone()))
                    } else {
                        request.body_follows.map(|len| uploads.open(&id, len))
                    };
                    let abort = tasks.spawn(relay_one(
                        shared.clone(),
                        permits.clone(),
                        (request, upload),
                        out.clone(),
                        answers.clone(),
                        window.clone(),
                        streams.clone(),
                    ));
                    streams.insert(id, window, abort);
                }
            }
            Ok(RelayDown::Credit { id, bytes }) => streams.credit(&id, bytes),
            Ok(RelayDown::Cancel { id }) => {
                if streams.cancel(&id) {
                    // The stopped task sends nothing more: this ends the stream at the relay.
                    let abort = BridgeUp::Abort {
                        id,
                        error: "the caller went away".into(),
                    };
                    if let Ok(text) = serde_json::to_string(&abort) {
                        let _ = out.try_send(Message::text(text));
                    }
                }
            }
            Ok(RelayDown::SocketOpen {
                id,
                path,
                query,
                headers,
            }) => {
                let carried = callers.open(id.clone());
                socket_tasks.spawn(caller_socket(
                    shared.clone(),
                    id,
                    (path, query, headers),
                    carried,
                    out.clone(),
                    callers.clone(),
                ));
            }
            Ok(RelayDown::SocketText { id, text }) => callers.send(&id, Message::text(text)),
            Ok(RelayDown::SocketClose { id, code, reason }) => {
                callers.send(&id, close_frame(code, reason));
            }
            Ok(RelayDown::SocketCredit { id, bytes }) => callers.credit(&id, bytes),
            Ok(RelayDown::BodyEnd { id }) => uploads.end(&id),
            Ok(RelayDown::BodyAbort { id, error }) => uploads.abort(&id, error),
            Err(e) => warn!("an unreadable frame from the relay: {e}"),
        }
    };
    let shut = loop {
        while tasks.try_join_next().is_some() {}
        let frame = tokio::select! {
            biased;
            () = shutdown.as_mut() => break true,
            _ = ping.tick() => {
                if last_heard.elapsed() > SILENCE_LIMIT {
                    warn!("the relay's WebSocket went silent");
                    break false;
                }
                if out.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break false;
                }
                continue;
            }
            f = incoming.next() => f,
        };
        last_heard = tokio::time::Instant::now();
        match frame {
            Some(Ok(Message::Close(close))) => {
                info!("the relay closed the WebSocket: {close:?}");
                break false;
            }
            Some(Ok(frame)) => on_frame(frame, &mut tasks),
            Some(Err(e)) => {
                warn!("the relay's WebSocket failed: {e}");
                break false;
            }
            None => {
                warn!("the relay's WebSocket ended");
                break false;
            }
        }
    };
    if shut {
        // No more requests to this socket; finish the ones it has (credits still arrive).
        send_up(&out, &BridgeUp::Draining).await;
        info!(
            in_flight = tasks.len(),
            "relay-bridge stopping: finishing in-flight requests"
        );
        let deadline = tokio::time::Instant::now() + shared.config.drain_timeout;
        loop {
            tokio::select! {
                joined = tasks.join_next() => if joined.is_none() { break },
                f = incoming.next() => match f {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(frame)) => on_frame(frame, &mut tasks),
                },
                () = tokio::time::sleep_until(deadline) => {
                    warn!(abandoned = tasks.len(), "in-flight requests did not finish within {:?}", shared.config.drain_timeout);
                    break;
                }
            }
        }
    }
    // Whatever is still running answered no one in time, or its socket is gone: the relay
    // gives those callers a 502 when the socket closes.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    socket_tasks.abort_all();
    while socket_tasks.join_next().await.is_some() {}
    drop(answers);
    drop(out);
    let _ = writer.await;
    shut
}

/// The socket's one writer: every frame, in the order sent, and the whole responses as
/// `respond` frames — each holding every response that finished while the previous write was
/// under way (at most [`BATCH_BYTES`] of them), so a busy bridge writes one socket message,
/// and the relay handles one event, for many small answers.
async fn write_frames(
    mut sink: futures_util::stream::SplitSink<Socket, Message>,
    mut outgoing: mpsc::Receiver<Message>,
    mut answered: mpsc::Receiver<RelayResponse>,
) {
    // An answer taken that did not fit in the last batch: the next one starts with it.
    let mut carried: Option<String> = None;
    loop {
        let frame = if let Some(first) = carried.take() {
            let (frame, rest) = respond_batch(first, &mut answered);
            carried = rest;
            frame
        } else {
            tokio::select! {
                f = outgoing.recv() => match f {
                    Some(f) => f,
                    None => break,
                },
                Some(r) = answered.recv() => match serde_json::to_string(&r) {
                    Ok(first) => {
                        let (frame, rest) = respond_batch(first, &mut answered);
                        carried = rest;
                        frame
                    }
                    Err(_) => continue,
                },
            }
        };
        if let Err(e) = sink.send(frame).await {
            debug!("writing to the WebSocket failed: {e}");
            let _ = sink.close().await;
            return;
        }
    }
    // The frames are done; answers that finished last still go.
    while let Some(first) = carried.take().or_else(|| {
        answered
            .try_recv()
            .ok()
            .and_then(|r| serde_json::to_string(&r).ok())
    }) {
        let (frame, rest) = respond_batch(first, &mut answered);
        carried = rest;
        if sink.send(frame).await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
}

/// One `respond` frame ([`BridgeUp::Respond`]) of `first` (a serialized [`RelayResponse`])
/// and the answers already waiting behind it, within [`BATCH_BYTES`]; the first one that did
/// not fit, for the next frame.
fn respond_batch(
    first: String,
    more: &mut mpsc::Receiver<RelayResponse>,
) -> (Message, Option<String>) {
    let mut parts = vec![first];
    let mut size = parts.iter().map(String::len).sum::<usize>();
    let mut rest = None;
    while let Ok(r) = more.try_recv() {
        let Ok(next) = serde_json::to_string(&r) else {
            continue;
        };
        if size + next.len() + 1 > BATCH_BYTES {
            rest = Some(next);
            break;
        }
        size += next.len() + 1;
        parts.push(next);
    }
    if parts.len() > 1 {
        debug!(
            answers = parts.len(),
            "one respond frame for several answers"
        );
    }
    let frame = format!(r#"{{"type":"respond","responses":[{}]}}"#, parts.join(","));
    (Message::text(frame), rest)
}

/// Sends one text frame; `false` when the socket is gone.
async fn send_up(out: &mpsc::Sender<Message>, frame: &BridgeUp) -> bool {
    match serde_json::to_string(frame) {
        Ok(text) => out.send(Message::text(text)).await.is_ok(),
        Err(_) => false,
    }
}

/// Forwards one pushed request (within the bridge's concurrency) and sends its response
/// back: whole when the target declares a small body, else streamed within `window`.
async fn relay_one(
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    (request, upload): (RelayRequest, Option<forward::Upload>),
    out: mpsc::Sender<Message>,
    answers: mpsc::Sender<RelayResponse>,
    window: Arc<Semaphore>,
    streams: Arc<Streams>,
) {
    let Ok(_permit) = permits.acquire_owned().await else {
        return;
    };
    let cfg = &shared.config;
    let id = request.id.clone();
    debug!(%id, method = %request.method, path = %request.path, "forwarding");
    let started = tokio::time::Instant::now();
    let deadline = started + cfg.target_timeout;
    let sent = forward::send(
        &shared.target,
        &cfg.target,
        cfg.target_timeout,
        &request,
        upload,
    );
    let resp = match sent.await {
        Ok(resp) => resp,
        Err(bad) => {
            info!(
                "{} {} → 502 in {} ms",
                request.method,
                request.path,
                started.elapsed().as_millis()
            );
            let _ = answers.send(bad).await;
            streams.remove(&id);
            return;
        }
    };
    let status = resp.status().as_u16();
    info!(
        "{} {} → {status} in {} ms",
        request.method,
        request.path,
        started.elapsed().as_millis()
    );
    if resp
        .content_length()
        .is_some_and(|n| n <= WHOLE_RESPONSE_BYTES)
    {
        let answer = forward::whole(&id, &cfg.target, cfg.target_timeout, deadline, resp).await;
        let _ = answers.send(answer).await;
        streams.remove(&id);
        return;
    }
    let head = BridgeUp::Head {
        id: id.clone(),
        status,
        headers: forward::response_headers(&resp),
    };
    if !send_up(&out, &head).await {
        return;
    }
    let end = stream_body(&id, resp, &out, &window).await;
    send_up(&out, &end).await;
    streams.remove(&id);
}

/// Sends a response body as binary frames, each waiting for window; the frame that ends it.
async fn stream_body(
    id: &str,
    mut resp: reqwest::Response,
    out: &mpsc::Sender<Message>,
    window: &Semaphore,
) -> BridgeUp {
    loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => {
                for piece in bytes.chunks(STREAM_CHUNK_BYTES) {
                    let n = u32::try_from(piece.len()).unwrap_or(u32::MAX);
                    match tokio::time::timeout(STALL_LIMIT, window.acquire_many(n)).await {
                        Ok(Ok(p)) => p.forget(),
                        Ok(Err(_)) => {
                            return BridgeUp::Abort {
                                id: id.to_owned(),
                                error: "stopped".into(),
                            }
                        }
                        Err(_) => {
                            info!(%id, "the caller read nothing for {STALL_LIMIT:?}: giving up");
                            return BridgeUp::Abort {
                                id: id.to_owned(),
                                error: format!("the caller read nothing for {STALL_LIMIT:?}"),
                            };
                        }
                    }
                    if out
                        .send(Message::binary(chunk_frame(id, piece)))
                        .await
                        .is_err()
                    {
                        return BridgeUp::Abort {
                            id: id.to_owned(),
                            error: "the socket closed".into(),
                        };
                    }
                }
            }
            Ok(None) => return BridgeUp::End { id: id.to_owned() },
            Err(e) => {
                warn!(%id, "the target's body broke off: {e}");
                return BridgeUp::Abort {
                    id: id.to_owned(),
                    error: format!("the target's body broke off: {e}"),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;

    #[test]
    fn a_carried_connection_is_bounded_both_ways() {
        let callers = CallerSockets::default();
        let (mut rx, conn) = callers.open("c".into());
        let big = Message::binary(vec![0u8; (SOCKET_BACKLOG_BYTES / 2) as usize]);
        callers.send("c", big.clone());
        callers.send("c", big.clone());
        assert_eq!(conn.backlog.load(Ordering::SeqCst), SOCKET_BACKLOG_BYTES);
        // One byte more than may wait: the connection closes instead of queueing it.
        callers.send("c", Message::binary(vec![1u8]));
        assert!(matches!(rx.try_recv(), Ok(ToTarget::Message(_))));
        assert!(matches!(rx.try_recv(), Ok(ToTarget::Message(_))));
        assert!(matches!(rx.try_recv(), Ok(ToTarget::Overflow)));
        // Forgotten: nothing more is queued for it.
        callers.send("c", Message::text("late"));
        assert!(rx.try_recv().is_err());
        // The window never grows past its size, whatever the relay grants.
        let (_rx, conn) = callers.open("d".into());
        callers.credit("d", u64::MAX);
        assert_eq!(
            conn.window.available_permits(),
            SOCKET_WINDOW_BYTES as usize
        );
        conn.window.try_acquire_many(1000).unwrap().forget();
        callers.credit("d", 400);
        assert_eq!(
            conn.window.available_permits(),
            SOCKET_WINDOW_BYTES as usize - 600
        );
        callers.credit("d", 5000);
        assert_eq!(
            conn.window.available_permits(),
            SOCKET_WINDOW_BYTES as usize
        );
    }

    #[tokio::test]
    async fn answers_waiting_together_go_as_one_respond_frame() {
        let answer = |id: &str, body: usize| RelayResponse {
            id: id.into(),
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body_base64: Some("a".repeat(body)),
            body: None,
            content_type: None,
        };
        let (tx, mut rx) = mpsc::channel(8);
        for (id, len) in [
            ("b", 10),
            ("c", BATCH_BYTES / 2),
            ("d", BATCH_BYTES / 2),
            ("e", 1),
        ] {
            tx.send(answer(id, len)).await.unwrap();
        }
        let first = serde_json::to_string(&answer("a", 3)).unwrap();
        let (frame, rest) = respond_batch(first, &mut rx);
        let Message::Text(text) = frame else {
            panic!("a text frame")
        };
        let Ok(BridgeUp::Respond { responses }) = serde_json::from_str(text.as_str()) else {
            panic!("a respond frame: {text}")
        };
        assert_eq!(
            responses,
            vec![
                answer("a", 3),
                answer("b", 10),
                answer("c", BATCH_BYTES / 2)
            ]
        );
        // The one that did not fit starts the next frame, then what still waits.
        let (frame, rest) = respond_batch(rest.unwrap(), &mut rx);
        let Message::Text(text) = frame else {
            panic!("a text frame")
        };
        let Ok(BridgeUp::Respond { responses }) = serde_json::from_str(text.as_str()) else {
            panic!("a respond frame: {text}")
        };
        assert_eq!(
            responses,
            vec![answer("d", BATCH_BYTES / 2), answer("e", 1)]
        );
        assert!(rest.is_none());
    }

    #[test]
    fn socket_urls() {
        let mut c = Config::new(
            Url::parse("https://relay.example/").unwrap(),
            Secret::new("t"),
            Url::parse("http://127.0.0.1:8000").unwrap(),
        );
        assert_eq!(
            socket_url(&c).unwrap().as_str(),
            "wss://relay.example/proxy/_ws"
        );
        c.relay_url = Url::parse("http://127.0.0.1:8787").unwrap();
        c.channel = Some("alpha".into());
        assert_eq!(
            socket_url(&c).unwrap().as_str(),
            "ws://127.0.0.1:8787/relay/alpha/_ws"
        );
    }

    #[test]
    fn proxies_in_the_environment() {
        let relay = Url::parse("https://ccr.example.workers.dev").unwrap();
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(!proxy_applies(&relay, env(&[])));
        assert!(proxy_applies(
            &relay,
            env(&[("HTTPS_PROXY", "http://p:3128")])
        ));
        assert!(proxy_applies(
            &relay,
            env(&[("https_proxy", "http://p:3128")])
        ));
        assert!(!proxy_applies(
            &relay,
            env(&[("HTTP_PROXY", "http://p:3128")])
        ));
        assert!(!proxy_applies(
            &relay,
            env(&[
                ("HTTPS_PROXY", "http://p:3128"),
                ("NO_PROXY", "localhost,.workers.dev")
            ])
        ));
        let local = Url::parse("http://127.0.0.1:8787").unwrap();
        assert!(!proxy_applies(
            &local,
            env(&[
                ("ALL_PROXY", "http://p:3128"),
                ("NO_PROXY", "127.0.0.1,localhost")
            ])
        ));
    }
}
