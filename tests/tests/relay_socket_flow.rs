//! Flow control of callers' WebSockets through the relay, end to end: the real Worker on
//! workerd, the real `relay-bridge` binary over its WebSocket transport, a local WebSocket
//! target. A target flooding a caller that does not read for a while: the bridge's memory
//! stays bounded, the channel keeps serving, and the caller, once it reads, gets every
//! message in order. A caller flooding a target that does not read is closed with 1013 past
//! the documented backlog, the bridge's memory bounded; one that keeps within it (waiting for
//! its target's acknowledgements) passes every byte.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ccr_e2e::bridge::Bridge;
use ccr_e2e::worker::Worker;
use ccr_protocol::relay::{SOCKET_BACKLOG_BYTES, SOCKET_OVERFLOW_CODE};
use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response as WsResponse};
use tokio_tungstenite::tungstenite::Message;

/// Generous: this runs on a slow shared machine.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Size of each flood message.
const MESSAGE: usize = 64 * 1024;
/// The bound on the bridge's peak resident memory (as for a 300 MB download).
const BRIDGE_RSS_KIB: u64 = 64 * 1024;

/// The byte at `offset` of message `seq`: both sides can check any message's content.
fn pattern(seq: u64, offset: usize) -> u8 {
    (seq.wrapping_mul(31).wrapping_add(offset as u64 * 7) % 251) as u8
}

/// Message `seq` of a flood: its number (8 bytes, big-endian), then its pattern.
fn flood_message(seq: u64) -> Vec<u8> {
    let mut m: Vec<u8> = (0..MESSAGE).map(|i| pattern(seq, i)).collect();
    m[..8].copy_from_slice(&seq.to_be_bytes());
    m
}

/// Whether `m` is exactly message `seq`.
fn is_flood_message(m: &[u8], seq: u64) -> bool {
    m.len() == MESSAGE
        && m[..8] == seq.to_be_bytes()
        && m[8..]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern(seq, i + 8))
}

/// What the target counts.
#[derive(Default)]
struct Counters {
    /// Flood messages written to the socket (the write returned).
    sent: AtomicU64,
    /// Bytes of caller messages read (`/sink`).
    received: AtomicU64,
    /// `/sink` messages that were not the expected ones.
    corrupt: AtomicU64,
}

/// The local WebSocket server the bridge forwards to. By path:
/// - `/flood?n=N`: on the caller's first message, writes N binary messages ([`flood_message`]),
///   then the text `done`;
/// - `/sink?ack=B`: reads binary messages (checking each), and after every B bytes answers
///   the text `got {total}`;
/// - `/stall`: never reads;
/// - anything else: echoes.
struct Target {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Target {
    async fn start() -> Target {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let counters = shared.clone();
                tokio::spawn(async move {
                    if !is_upgrade(&sock).await {
                        plain(sock).await;
                        return;
                    }
                    let path = Arc::new(std::sync::Mutex::new(String::new()));
                    let seen = path.clone();
                    #[allow(clippy::result_large_err)] // tungstenite's callback type
                    let callback = move |req: &Request, resp: WsResponse| {
                        *seen.lock().unwrap() = req.uri().to_string();
                        Ok(resp)
                    };
                    let Ok(ws) = tokio_tungstenite::accept_hdr_async(sock, callback).await else {
                        return;
                    };
                    let path = path.lock().unwrap().clone();
                    serve(ws, &path, &counters).await;
                });
            }
        });
        Target {
            addr,
            counters,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Whether the request waiting on `sock` asks for a WebSocket (its head, peeked).
async fn is_upgrade(sock: &tokio::net::TcpStream) -> bool {
    let mut buf = vec![0u8; 8192];
    loop {
        let Ok(n) = sock.peek(&mut buf).await else {
            return false;
        };
        let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        if n == 0 || head.contains("\r\n\r\n") || n == buf.len() {
            return head.contains("upgrade: websocket");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Answers a plain HTTP request `plain`.
async fn plain(mut sock: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 8192];
    let _ = sock.read(&mut buf).await;
    let _ = sock
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nplain")
        .await;
    let _ = sock.shutdown().await;
}

/// The number after `name=` in `path`'s query.
fn param(path: &str, name: &str) -> u64 {
    path.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn serve(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    path: &str,
    counters: &Counters,
) {
    if path.starts_with("/flood") {
        let n = param(path, "n");
        if ws.next().await.is_none() {
            return;
        }
        for seq in 0..n {
            if ws.send(Message::binary(flood_message(seq))).await.is_err() {
                return;
            }
            counters.sent.fetch_add(1, Ordering::SeqCst);
        }
        let _ = ws.send(Message::text("done")).await;
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    } else if path.starts_with("/sink") {
        let ack = param(path, "ack").max(1);
        let mut seq = 0u64;
        let mut next_ack = ack;
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Binary(b) => {
                    if !is_flood_message(&b, seq) {
                        counters.corrupt.fetch_add(1, Ordering::SeqCst);
                    }
                    seq += 1;
                    let total = counters
                        .received
                        .fetch_add(b.len() as u64, Ordering::SeqCst)
                        + b.len() as u64;
                    if total >= next_ack {
                        next_ack += ack;
                        if ws
                            .send(Message::text(format!("got {total}")))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                Message::Close(_) => return,
                _ => {}
            }
        }
    } else if path.starts_with("/stall") {
        // Holds the connection without ever reading it.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(ws);
    } else {
        while let Some(Ok(m)) = ws.next().await {
            let reply = match m {
                Message::Text(t) => Message::text(format!("echo: {}", t.as_str())),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    }
}

/// A process's resident memory figure `field` (`VmHWM`, `VmRSS`), in KiB.
fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The `workerd` processes started by this test process (its descendants), for the figures.
fn our_workerd_pids() -> Vec<u32> {
    let me = std::process::id();
    let parent = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "workerd")
        })
        .filter(|pid| {
            let mut p = *pid;
            for _ in 0..16 {
                match parent(p) {
                    Some(q) if q == me => return true,
                    Some(q) if q > 1 => p = q,
                    _ => return false,
                }
            }
            false
        })
        .collect()
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

type Caller =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A caller's WebSocket to `path` on `channel` through the relay.
async fn open(w: &Worker, bridge: &Bridge, channel: &str, path: &str) -> Caller {
    let url = w
        .url(&format!("/relay/{channel}{path}"))
        .replacen("http://", "ws://", 1);
    let req = url.into_client_request().unwrap();
    let (ws, _) = tokio::time::timeout(CALL_TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("the upgrade is answered")
        .unwrap_or_else(|e| panic!("{e}\nbridge log:\n{}", bridge.log()));
    ws
}

/// The next message on a caller's socket (within [`CALL_TIMEOUT`]), pings and pongs skipped.
async fn next_message(ws: &mut Caller, bridge: &Bridge) -> Message {
    loop {
        let m = tokio::time::timeout(CALL_TIMEOUT, ws.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no message within {CALL_TIMEOUT:?}\nbridge log:\n{}",
                    bridge.log()
                )
            })
            .expect("the socket is open")
            .unwrap_or_else(|e| {
                panic!(
                    "the caller's socket failed: {e}\nbridge log:\n{}",
                    bridge.log()
                )
            });
        if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
            return m;
        }
    }
}

/// The channel serves other callers while a flood crosses it: an HTTP request is answered,
/// and a second caller's socket echoes.
async fn channel_still_serves(w: &Worker, bridge: &Bridge, channel: &str) {
    let resp = ccr_e2e::ports::client(CALL_TIMEOUT)
        .get(w.url(&format!("/relay/{channel}/plain")))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "plain"),
        "a plain request on the channel\nbridge log:\n{}",
        bridge.log()
    );
    let mut other = open(w, bridge, channel, "/echo").await;
    other.send(Message::text("ping")).await.unwrap();
    assert_eq!(
        next_message(&mut other, bridge).await,
        Message::text("echo: ping")
    );
    other.close(None).await.unwrap();
}

#[tokio::test]
async fn a_target_flooding_a_slow_caller_keeps_the_bridge_bounded_and_loses_nothing() {
    const N: u64 = 200 * 1024 * 1024 / MESSAGE as u64; // 200 MiB
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let bridge = Bridge::start(&w, &target.url(), Some("flood"), &["--transport", "ws"])
        .await
        .unwrap();
    connected(&bridge).await;
    let pid = bridge.pid().unwrap();
    let before = rss_kib(pid, "VmHWM");
    let workerd = our_workerd_pids();
    let workerd_before: u64 = workerd.iter().map(|p| rss_kib(*p, "VmRSS")).sum();
    let mut ws = open(&w, &bridge, "flood", &format!("/flood?n={N}")).await;
    ws.send(Message::text("go")).await.unwrap();
    // The caller reads nothing for a while; the channel keeps serving meanwhile.
    let sent = target.counters.clone();
    ccr_e2e::wait_for("the target to start writing", CALL_TIMEOUT, || async {
        (sent.sent.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nbridge log:\n{}", bridge.log()));
    channel_still_serves(&w, &bridge, "flood").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let sent_while_unread = target.counters.sent.load(Ordering::SeqCst);
    let workerd_paused: u64 = workerd.iter().map(|p| rss_kib(*p, "VmRSS")).sum();
    // Now it reads: every message, in order, then the target's `done`.
    for seq in 0..N {
        match next_message(&mut ws, &bridge).await {
            Message::Binary(b) => assert!(
                is_flood_message(&b, seq),
                "message {seq} is not the target's message {seq} (seq {:?}, {} bytes)",
                b.get(..8),
                b.len()
            ),
            other => panic!("message {seq}: expected the flood, got {other:?}"),
        }
    }
    assert_eq!(next_message(&mut ws, &bridge).await, Message::text("done"));
    let peak = rss_kib(pid, "VmHWM");
    println!(
        "bridge VmHWM: {before} KiB before, {peak} KiB after {} MiB to a caller that read \
         nothing for 5 s; the target had written {} MiB by then; workerd RSS {} → {} KiB \
         (paused)",
        N * MESSAGE as u64 / (1024 * 1024),
        sent_while_unread * MESSAGE as u64 / (1024 * 1024),
        workerd_before,
        workerd_paused
    );
    assert!(
        peak < BRIDGE_RSS_KIB,
        "the bridge peaked at {peak} KiB resident while a target flooded a slow caller"
    );
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn a_caller_flooding_a_target_that_does_not_read_is_closed_with_1013() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let bridge = Bridge::start(&w, &target.url(), Some("stall"), &["--transport", "ws"])
        .await
        .unwrap();
    connected(&bridge).await;
    let pid = bridge.pid().unwrap();
    let before = rss_kib(pid, "VmHWM");
    let ws = open(&w, &bridge, "stall", "/stall").await;
    let (mut tx, mut rx) = ws.split();
    // Far more than the backlog: 64 MiB at most, until the relay closes the socket.
    let flood = tokio::spawn(async move {
        let mut sent = 0u64;
        for seq in 0..(64 * 1024 * 1024 / MESSAGE as u64) {
            if tx.send(Message::binary(flood_message(seq))).await.is_err() {
                break;
            }
            sent += MESSAGE as u64;
        }
        sent
    });
    let close = loop {
        let m = tokio::time::timeout(CALL_TIMEOUT, rx.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the flooding caller was never closed\nbridge log:\n{}",
                    bridge.log()
                )
            });
        match m {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!(
                "the socket ended without a close frame: {other:?}\nbridge log:\n{}",
                bridge.log()
            ),
        }
    };
    let frame = close.expect("the close carries a code");
    assert_eq!(u16::from(frame.code), SOCKET_OVERFLOW_CODE);
    assert_eq!(
        frame.reason.as_str(),
        "too much data waiting for the target"
    );
    let sent = tokio::time::timeout(CALL_TIMEOUT, flood)
        .await
        .expect("the flood stops once the socket closed")
        .unwrap();
    let peak = rss_kib(pid, "VmHWM");
    println!(
        "bridge VmHWM: {before} KiB before, {peak} KiB after a caller sent {} MiB to a \
         target that reads nothing (backlog {} MiB)",
        sent / (1024 * 1024),
        SOCKET_BACKLOG_BYTES / (1024 * 1024)
    );
    assert!(
        sent > SOCKET_BACKLOG_BYTES,
        "closed after only {sent} bytes"
    );
    assert!(
        peak < BRIDGE_RSS_KIB,
        "the bridge peaked at {peak} KiB resident while a caller flooded a stalled target"
    );
    // The channel still serves.
    channel_still_serves(&w, &bridge, "stall").await;
}

#[tokio::test]
async fn a_caller_within_the_backlog_passes_every_byte_to_a_slower_target() {
    // 32 MiB in steps of 2 MiB (half the backlog), each step sent once the target
    // acknowledged the one before: however slow the target, the caller never runs more than
    // the backlog ahead of it.
    const STEP: u64 = SOCKET_BACKLOG_BYTES / 2;
    const TOTAL: u64 = 32 * 1024 * 1024;
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let bridge = Bridge::start(&w, &target.url(), Some("sink"), &["--transport", "ws"])
        .await
        .unwrap();
    connected(&bridge).await;
    let mut ws = open(&w, &bridge, "sink", &format!("/sink?ack={STEP}")).await;
    let mut seq = 0u64;
    let mut sent = 0u64;
    while sent < TOTAL {
        for _ in 0..STEP / MESSAGE as u64 {
            ws.send(Message::binary(flood_message(seq))).await.unwrap();
            seq += 1;
            sent += MESSAGE as u64;
        }
        assert_eq!(
            next_message(&mut ws, &bridge).await,
            Message::text(format!("got {sent}"))
        );
    }
    assert_eq!(target.counters.received.load(Ordering::SeqCst), TOTAL);
    assert_eq!(target.counters.corrupt.load(Ordering::SeqCst), 0);
    ws.close(None).await.unwrap();
}
