//! The relay's WebSocket transport and streaming, end to end: the real Worker on workerd, the
//! real `relay-bridge` binary, a local axum target. Server-sent events cross one by one, a
//! 300 MB download crosses with the bridge's memory bounded, a caller that goes away stops the
//! bridge reading the target, a socket that drops answers its callers 502, and a proxy that
//! refuses upgrades makes `auto` long-poll.
//!
//! The streaming cases run over the transport `CCR_E2E_RELAY_TRANSPORT` names (`ws` by
//! default; `make e2e` runs them again with `poll`, where a response streams as bounded
//! `_stream` calls); the WebSocket-only cases always use `ws`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use ccr_e2e::bridge::Bridge;
use ccr_e2e::worker::Worker;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Generous: this runs on a slow shared machine.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Events the SSE endpoint writes.
const EVENTS: usize = 5;

fn client() -> reqwest::Client {
    ccr_e2e::ports::client(Duration::from_secs(600))
}

/// What the target shares with the test.
struct Shared {
    /// The SSE endpoint writes its next event when a permit is added here.
    go: Semaphore,
    /// Events written so far.
    written: AtomicUsize,
    /// Requests that reached `/hold`.
    held: AtomicUsize,
    /// `/endless` bodies the target stopped producing (their reader went away).
    endless_dropped: AtomicUsize,
    /// `/late` answers when a permit is added here.
    late_go: Semaphore,
    /// Requests that reached `/late`.
    late_waiting: AtomicUsize,
    /// Bytes every `/endless` body handed to the server so far.
    endless_bytes: AtomicUsize,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            go: Semaphore::new(0),
            written: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            endless_dropped: AtomicUsize::new(0),
            late_go: Semaphore::new(0),
            late_waiting: AtomicUsize::new(0),
            endless_bytes: AtomicUsize::new(0),
        }
    }
}

/// The local server the bridge forwards to. Dropping it stops it.
struct Target {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Target {
    async fn start() -> Target {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/events", get(events))
            .route("/big", get(big))
            .route("/hold", get(hold))
            .route("/endless", get(endless))
            .route("/late", get(late))
            .route("/hello", get(|| async { "hello" }))
            .with_state(shared.clone());
        let (addr, task) = ccr_e2e::ports::serve_loopback(app).await;
        Target { addr, shared, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// `text/event-stream`: event 0 at once, then each next one only when the test says so.
async fn events(State(shared): State<Arc<Shared>>) -> Response {
    let stream = futures_util::stream::unfold(0usize, move |i| {
        let shared = shared.clone();
        async move {
            if i == EVENTS {
                return None;
            }
            if i > 0 {
                shared.go.acquire().await.ok()?.forget();
            }
            shared.written.store(i + 1, Ordering::SeqCst);
            let event = Bytes::from(format!("data: event {i}\n\n"));
            Some((Ok::<_, std::io::Error>(event), i + 1))
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// The byte at `offset` of every `/big` body.
fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// `?mb=N`: N MiB of [`pattern`], produced a MiB at a time, with its `content-length`.
async fn big(Query(q): Query<Vec<(String, String)>>) -> Response {
    let mb: u64 = q
        .iter()
        .find(|(k, _)| k == "mb")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(1);
    const MIB: u64 = 1024 * 1024;
    let stream = futures_util::stream::iter(0..mb).map(|i| {
        let chunk: Vec<u8> = (i * MIB..(i + 1) * MIB).map(pattern).collect();
        Ok::<_, std::io::Error>(Bytes::from(chunk))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, (mb * MIB).to_string())
        .body(Body::from_stream(stream))
        .unwrap()
}

/// Counts an `/endless` body dropped by the server (its connection closed).
struct DropFlag(Arc<Shared>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.endless_dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// A body that never ends: 64 KiB chunks for as long as someone reads.
async fn endless(State(shared): State<Arc<Shared>>) -> Response {
    let flag = DropFlag(shared);
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let stream = futures_util::stream::repeat(chunk).map(move |c| {
        flag.0.endless_bytes.fetch_add(c.len(), Ordering::SeqCst);
        Ok::<_, std::io::Error>(c)
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// Answers only when the test says so, then like `/endless`: an unsized body that goes on for
/// as long as someone reads it.
async fn late(State(shared): State<Arc<Shared>>) -> Response {
    shared.late_waiting.fetch_add(1, Ordering::SeqCst);
    if let Ok(p) = shared.late_go.acquire().await {
        p.forget();
    }
    endless(State(shared)).await
}

/// Never answers (within any test's patience).
async fn hold(State(shared): State<Arc<Shared>>) -> &'static str {
    shared.held.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(600)).await;
    "held"
}

/// The transport the streaming cases run over (`CCR_E2E_RELAY_TRANSPORT`, `ws` by default).
fn transport() -> String {
    ccr_e2e::bridge::default_transport()
}

/// Starts a bridge over [`transport`] and waits until it is serving: connected over the
/// WebSocket, or polling.
async fn streaming_bridge(w: &Worker, target: &str, channel: Option<&str>) -> Bridge {
    let transport = transport();
    let bridge = Bridge::start(w, target, channel, &["--transport", &transport])
        .await
        .unwrap();
    if transport == "poll" {
        ccr_e2e::wait_for("the bridge to poll", CALL_TIMEOUT, || async {
            bridge.log().contains("polling").then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nbridge log:\n{}", bridge.log()));
    } else {
        connected(&bridge).await;
    }
    bridge
}

/// Waits until the bridge's log says it is connected over the WebSocket.
async fn connected(bridge: &Bridge) {
    ccr_e2e::wait_for("the bridge's WebSocket", CALL_TIMEOUT, || async {
        bridge
            .log()
            .contains("requests come over the WebSocket")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nbridge log:\n{}", bridge.log()));
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let bridge = streaming_bridge(&w, &target.url(), None).await;
    let resp = tokio::time::timeout(CALL_TIMEOUT, client().get(w.url("/proxy/events")).send())
        .await
        .expect("the head arrives")
        .unwrap();
    assert_eq!(resp.status(), 200, "bridge log:\n{}", bridge.log());
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE.as_str()],
        "text/event-stream"
    );
    let mut body = resp;
    let mut seen = String::new();
    for i in 0..EVENTS {
        let want = format!("data: event {i}\n\n");
        while !seen.contains(&want) {
            let chunk = tokio::time::timeout(CALL_TIMEOUT, body.chunk())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "event {i} never reached the caller (got {seen:?}): held back until \
                         the target writes more?\nbridge log:\n{}",
                        bridge.log()
                    )
                })
                .unwrap()
                .expect("the stream ended early");
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        // The target writes event i+1 only after this signal: event i crossed on its own.
        assert_eq!(target.shared.written.load(Ordering::SeqCst), i + 1);
        target.shared.go.add_permits(1);
    }
    assert!(
        tokio::time::timeout(CALL_TIMEOUT, body.chunk())
            .await
            .unwrap()
            .unwrap()
            .is_none(),
        "the body ends after the last event"
    );
    let expected: String = (0..EVENTS)
        .map(|i| format!("data: event {i}\n\n"))
        .collect();
    assert_eq!(seen, expected);
}

/// The bridge's peak resident memory (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_300_mb_download_streams_with_the_bridge_memory_bounded() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let bridge = streaming_bridge(&w, &target.url(), Some("dl")).await;
    let pid = bridge.pid().unwrap();
    let before = peak_rss_kib(pid);
    const MB: u64 = 300;
    let resp = client()
        .get(w.url(&format!("/relay/dl/big?mb={MB}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "bridge log:\n{}", bridge.log());
    let mut body = resp;
    let mut offset = 0u64;
    while let Some(chunk) = body
        .chunk()
        .await
        .unwrap_or_else(|e| panic!("at byte {offset}: {e}"))
    {
        for (i, b) in chunk.iter().enumerate() {
            if *b != pattern(offset + i as u64) {
                panic!("byte {} differs", offset + i as u64);
            }
        }
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, MB * 1024 * 1024, "every byte arrived");
    let peak = peak_rss_kib(pid);
    let transport = transport();
    println!("bridge VmHWM over {transport}: {before} KiB before, {peak} KiB after {MB} MB");
    assert!(
        peak < 64 * 1024,
        "the bridge peaked at {peak} KiB resident during a {MB} MB download over {transport}"
    );
}

#[tokio::test]
async fn a_socket_that_drops_answers_its_callers_502() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let mut bridge = Bridge::start(&w, &target.url(), Some("drop"), &["--transport", "ws"])
        .await
        .unwrap();
    connected(&bridge).await;
    let url = w.url("/relay/drop/hold");
    let caller = tokio::spawn(async move {
        let resp = client().get(url).send().await.unwrap();
        let status = resp.status();
        (status, resp.text().await.unwrap())
    });
    let shared = target.shared.clone();
    ccr_e2e::wait_for("the request to reach the target", CALL_TIMEOUT, || async {
        (shared.held.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await
    .unwrap();
    bridge.kill().await;
    let (status, body) = tokio::time::timeout(CALL_TIMEOUT, caller)
        .await
        .expect("the caller is answered")
        .unwrap();
    // 502 at once, not the 504 the relay gives a request still waiting for a bridge.
    assert_eq!(status, 502, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().unwrap().contains("connection dropped"),
        "{body}"
    );
    // A new bridge serves the channel again.
    let bridge = Bridge::start(&w, &target.url(), Some("drop"), &["--transport", "ws"])
        .await
        .unwrap();
    connected(&bridge).await;
    let resp = client()
        .get(w.url("/relay/drop/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "bridge log:\n{}", bridge.log());
    assert_eq!(resp.text().await.unwrap(), "hello");
}

/// A reverse proxy in front of the Worker that refuses every WebSocket upgrade (403) and
/// passes everything else through. Dropping it stops it.
struct NoUpgradeProxy {
    addr: SocketAddr,
    refused: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for NoUpgradeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NoUpgradeProxy {
    async fn start(upstream: String) -> NoUpgradeProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = Arc::new(AtomicUsize::new(0));
        let count = refused.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    if text.contains("upgrade: websocket") {
                        count.fetch_add(1, Ordering::SeqCst);
                        let _ = sock
                            .write_all(
                                b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                            )
                            .await;
                        return;
                    }
                    let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    if up.write_all(&head).await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut sock, &mut up).await;
                });
            }
        });
        NoUpgradeProxy {
            addr,
            refused,
            task,
        }
    }
}

#[tokio::test]
async fn auto_falls_back_to_long_polling_when_upgrades_are_refused() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let upstream = w.base_url().trim_start_matches("http://").to_owned();
    let proxy = NoUpgradeProxy::start(upstream).await;
    let via = format!("http://{}", proxy.addr);
    let bridge = Bridge::start(
        &w,
        &target.url(),
        Some("fb"),
        &["--relay-url", &via, "--transport", "auto"],
    )
    .await
    .unwrap();
    let resp = tokio::time::timeout(CALL_TIMEOUT, client().get(w.url("/relay/fb/hello")).send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200, "bridge log:\n{}", bridge.log());
    assert_eq!(resp.text().await.unwrap(), "hello");
    assert!(proxy.refused.load(Ordering::SeqCst) >= 1);
    let log = bridge.log();
    assert!(log.contains("long-polling instead"), "{log}");
    assert!(!log.contains("requests come over the WebSocket"), "{log}");
    // Forced to the WebSocket, the same bridge does not fall back: it keeps retrying.
    let forced = Bridge::start(
        &w,
        &target.url(),
        Some("forced"),
        &["--relay-url", &via, "--transport", "ws"],
    )
    .await
    .unwrap();
    ccr_e2e::wait_for("a refused upgrade to be retried", CALL_TIMEOUT, || async {
        (forced
            .log()
            .matches("opening the relay's WebSocket failed")
            .count()
            >= 2)
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", forced.log()));
    assert!(!forced.log().contains("long-polling instead"));
}

/// A handshake the echo target saw: its path and query, and the subprotocol offered.
type Handshake = (String, Option<String>);

/// A WebSocket echo server as the bridge's target: `echo: {text}` for text, the same bytes
/// for binary; `close-me` makes it close with 4000 "bye". It records each handshake's path and
/// offered subprotocol, and the closes callers sent it.
struct EchoTarget {
    addr: SocketAddr,
    handshakes: Arc<std::sync::Mutex<Vec<Handshake>>>,
    closes_seen: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for EchoTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoTarget {
    async fn start() -> EchoTarget {
        use tokio_tungstenite::tungstenite::handshake::server::{Request, Response as WsResponse};
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        use tokio_tungstenite::tungstenite::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let closes_seen = Arc::new(AtomicUsize::new(0));
        let (log, closes) = (handshakes.clone(), closes_seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (log, closes) = (log.clone(), closes.clone());
                tokio::spawn(async move {
                    #[allow(clippy::result_large_err)] // tungstenite's callback type
                    let callback = |req: &Request, mut resp: WsResponse| {
                        let protocol = req
                            .headers()
                            .get("sec-websocket-protocol")
                            .map(|v| v.to_str().unwrap().to_owned());
                        let path = req.uri().to_string();
                        if let Some(p) = &protocol {
                            resp.headers_mut()
                                .insert("sec-websocket-protocol", p.parse().unwrap());
                        }
                        log.lock().unwrap().push((path, protocol));
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(sock, callback).await
                    else {
                        return;
                    };
                    while let Some(Ok(m)) = ws.next().await {
                        let reply = match m {
                            Message::Text(t) if t.as_str() == "close-me" => {
                                let _ = ws
                                    .close(Some(CloseFrame {
                                        code: CloseCode::from(4000),
                                        reason: "bye".into(),
                                    }))
                                    .await;
                                continue;
                            }
                            Message::Text(t) => Message::text(format!("echo: {}", t.as_str())),
                            Message::Binary(b) => Message::Binary(b),
                            Message::Close(_) => {
                                closes.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            _ => continue,
                        };
                        if futures_util::SinkExt::send(&mut ws, reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        EchoTarget {
            addr,
            handshakes,
            closes_seen,
            task,
        }
    }
}

/// The next message on a caller's socket (within [`CALL_TIMEOUT`]).
async fn next_message<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
) -> tokio_tungstenite::tungstenite::Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(CALL_TIMEOUT, ws.next())
        .await
        .expect("a message arrives")
        .expect("the socket is open")
        .unwrap()
}

#[tokio::test]
async fn a_browser_style_websocket_crosses_the_relay_both_ways() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let w = Worker::start_default().await.unwrap();
    let target = EchoTarget::start().await;
    let target_url = format!("http://{}", target.addr);
    let bridge = Bridge::start(&w, &target_url, Some("hmr"), &["--transport", "ws"])
        .await
        .unwrap();
    connected(&bridge).await;
    let open = || async {
        let url = w
            .url("/relay/hmr/socket?token=1")
            .replacen("http://", "ws://", 1);
        let mut req = url.into_client_request().unwrap();
        // What a browser sends for a dev server's hot-reload socket.
        req.headers_mut()
            .insert("sec-websocket-protocol", "vite-hmr".parse().unwrap());
        req.headers_mut()
            .insert("origin", w.base_url().parse().unwrap());
        tokio::time::timeout(CALL_TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .expect("the upgrade is answered")
            .unwrap_or_else(|e| panic!("{e}\nbridge log:\n{}", bridge.log()))
    };
    let (mut ws, resp) = open().await;
    assert_eq!(resp.headers()["sec-websocket-protocol"], "vite-hmr");
    for i in 0..3 {
        futures_util::SinkExt::send(&mut ws, Message::text(format!("hello {i}")))
            .await
            .unwrap();
        assert_eq!(
            next_message(&mut ws).await,
            Message::text(format!("echo: hello {i}"))
        );
    }
    let bytes: Vec<u8> = (0..=255u8).collect();
    futures_util::SinkExt::send(&mut ws, Message::binary(bytes.clone()))
        .await
        .unwrap();
    assert_eq!(next_message(&mut ws).await, Message::binary(bytes));
    // The target saw the caller's path, query and subprotocol.
    let seen = target.handshakes.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![("/socket?token=1".to_owned(), Some("vite-hmr".to_owned()))]
    );
    // The caller's close reaches the target.
    ws.close(None).await.unwrap();
    let closes = target.closes_seen.clone();
    ccr_e2e::wait_for("the target to see the close", CALL_TIMEOUT, || async {
        (closes.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nbridge log:\n{}", bridge.log()));
    // The target's close reaches the caller, code and reason.
    let (mut ws, _) = open().await;
    futures_util::SinkExt::send(&mut ws, Message::text("close-me"))
        .await
        .unwrap();
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4000);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected the target's close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_caller_that_goes_away_stops_the_bridge_reading_the_target() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let bridge = streaming_bridge(&w, &target.url(), Some("gone")).await;
    let mut resp = client()
        .get(w.url("/relay/gone/endless"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "bridge log:\n{}", bridge.log());
    let mut read = 0usize;
    while read < 4 * 1024 * 1024 {
        read += resp.chunk().await.unwrap().expect("an endless body").len();
    }
    assert_eq!(target.shared.endless_dropped.load(Ordering::SeqCst), 0);
    drop(resp);
    // The bridge stops reading the target: on the relay's cancel, or once the caller has read
    // nothing for 30 s (workerd does not always report a caller that went away). The target
    // sees its reader go.
    let shared = target.shared.clone();
    ccr_e2e::wait_for(
        "the target's body to be dropped",
        CALL_TIMEOUT * 2,
        || async { (shared.endless_dropped.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nbridge log:\n{}", bridge.log()));
    // The channel still serves.
    let resp = client()
        .get(w.url("/relay/gone/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "hello");
}

#[tokio::test]
async fn over_long_poll_a_stream_whose_caller_had_its_504_is_dropped() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    // The target answers only after the caller's 504 (25 s): the bridge waits longer for it.
    let bridge = Bridge::start(
        &w,
        &target.url(),
        Some("late"),
        &["--transport", "poll", "--target-timeout", "300"],
    )
    .await
    .unwrap();
    let resp = client()
        .get(w.url("/relay/late/late"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504, "bridge log:\n{}", bridge.log());
    let v: serde_json::Value = resp.json().await.unwrap();
    let result_path = v["resultPath"]
        .as_str()
        .unwrap_or_else(|| panic!("the bridge had the request: {v}"))
        .to_owned();
    assert_eq!(target.shared.late_waiting.load(Ordering::SeqCst), 1);
    assert_eq!(target.shared.endless_dropped.load(Ordering::SeqCst), 0);
    // Now the target answers with a body that never ends: nobody waits for it, so the relay
    // refuses the stream and the bridge stops reading the target.
    target.shared.late_go.add_permits(1);
    let shared = target.shared.clone();
    ccr_e2e::wait_for("the target's body to be dropped", CALL_TIMEOUT, || async {
        (shared.endless_dropped.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nbridge log:\n{}", bridge.log()));
    assert!(
        bridge.log().contains("stopped streaming the response"),
        "{}",
        bridge.log()
    );
    // The late answer was not kept whole; its result says so.
    let kept = client().get(w.url(&result_path)).send().await.unwrap();
    assert_eq!(kept.status(), 502);
    let body: serde_json::Value = kept.json().await.unwrap();
    assert_eq!(body["ok"], false);
    assert!(
        body["error"].as_str().unwrap().contains("not kept"),
        "{body}"
    );
    // The channel still serves.
    let resp = client()
        .get(w.url("/relay/late/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "bridge log:\n{}", bridge.log());
    assert_eq!(resp.text().await.unwrap(), "hello");
}

#[tokio::test]
async fn over_long_poll_a_bridge_killed_mid_response_ends_the_callers_body() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let mut bridge = Bridge::start(&w, &target.url(), Some("cut"), &["--transport", "poll"])
        .await
        .unwrap();
    let mut resp = client()
        .get(w.url("/relay/cut/endless"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "bridge log:\n{}", bridge.log());
    let mut read = 0usize;
    while read < 2 * 1024 * 1024 {
        read += resp.chunk().await.unwrap().expect("an endless body").len();
    }
    bridge.kill().await;
    // No connection tells the relay that a long-polling bridge died: the relay ends the body
    // with an error once the bridge has made no call for 75 s, instead of leaving the caller
    // waiting for ever (the target's body never ends, so nothing else can end it). Local
    // workerd passes an errored body on as a clean end of the chunked response, so the test
    // asserts the end, not how it looks.
    let ended = tokio::time::timeout(CALL_TIMEOUT * 4, async {
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => read += c.len(),
                Ok(None) | Err(_) => return read,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the caller still waits for a response whose bridge died, after {read} bytes"
    );
}

#[tokio::test]
async fn a_slow_caller_slows_the_bridge_reads_of_the_target() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let bridge = streaming_bridge(&w, &target.url(), Some("slow")).await;
    let mut resp = client()
        .get(w.url("/relay/slow/endless"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "bridge log:\n{}", bridge.log());
    const MIB: usize = 1024 * 1024;
    let mut read = 0usize;
    while read < MIB {
        read += resp.chunk().await.unwrap().expect("an endless body").len();
    }
    // The caller pauses. Without flow control the bridge would go on reading the target as
    // fast as the relay took the bytes (hundreds of MB in this pause); with it the target
    // gets no further than the caller plus a few windows and the buffers of the TCP hops on
    // the way (loopback autotuning lets each hold several MB: about 20–27 MB were seen).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let produced = target.shared.endless_bytes.load(Ordering::SeqCst);
    let transport = transport();
    println!("over {transport}: the caller read {read} B, the target produced {produced} B");
    assert!(
        produced < read + 64 * MIB,
        "over {transport} the target produced {produced} B while the caller had read {read} B"
    );
    // The stream goes on once the caller reads again.
    let resumed = read;
    while read < resumed + 4 * MIB {
        read += resp.chunk().await.unwrap().expect("an endless body").len();
    }
    assert_eq!(target.shared.endless_dropped.load(Ordering::SeqCst), 0);
}
