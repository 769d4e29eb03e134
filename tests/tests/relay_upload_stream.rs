//! Request bodies stream from the caller through the Worker, the channel's object and the
//! bridge's WebSocket to the target as they arrive: the target reads an upload's first bytes
//! while its caller still holds the rest back, small requests on the channel are answered
//! meanwhile, a large chunked upload arrives intact (sent on chunked, without a length), and
//! an upload whose caller goes away mid-body fails at the target — never a complete-looking,
//! truncated body.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;
use ccr_e2e::bridge::Bridge;
use ccr_e2e::worker::Worker;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// How long a caller holds the rest of its body back, waiting for the target to have read the
/// first part. Without streaming nobody reads it before the end: the wait runs out.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What the target saw of one upload to `/cut`.
#[derive(Debug, PartialEq)]
enum Seen {
    /// Its first bytes arrived.
    FirstBytes,
    /// The body ended normally, this long.
    Complete(usize),
    /// Reading the body failed after this many bytes.
    Failed(usize),
}

struct Target {
    url: String,
    /// Fired when `/hash` has read the first chunk of a body.
    first_read: Arc<Notify>,
    /// What `/cut` saw, in order.
    cut: tokio::sync::Mutex<mpsc::UnboundedReceiver<Seen>>,
}

/// A target that reads bodies as they arrive: `/hash` answers with the length, SHA-256 and
/// declared `content-length` of what it read (and signals its first chunk); `/cut` reports
/// what it saw, chunk by chunk; `/ping` answers at once.
async fn start_target() -> Target {
    let first_read = Arc::new(Notify::new());
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let notify = first_read.clone();
    let app = Router::new()
        .route(
            "/hash",
            post(move |headers: HeaderMap, body: Body| {
                let notify = notify.clone();
                async move {
                    let declared = headers
                        .get("content-length")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_owned();
                    let mut stream = body.into_data_stream();
                    let mut hash = Sha256::new();
                    let mut len = 0usize;
                    while let Some(chunk) = stream.next().await {
                        let Ok(chunk) = chunk else {
                            return format!("the body failed after {len} bytes");
                        };
                        if len == 0 && !chunk.is_empty() {
                            notify.notify_one();
                        }
                        len += chunk.len();
                        hash.update(&chunk);
                    }
                    format!("{len} {} {declared}", hex::encode(hash.finalize()))
                }
            }),
        )
        .route(
            "/cut",
            post(move |body: Body| {
                let seen = seen_tx.clone();
                async move {
                    let mut stream = body.into_data_stream();
                    let mut len = 0usize;
                    while let Some(chunk) = stream.next().await {
                        match chunk {
                            Ok(chunk) => {
                                if len == 0 && !chunk.is_empty() {
                                    let _ = seen.send(Seen::FirstBytes);
                                }
                                len += chunk.len();
                            }
                            Err(_) => {
                                let _ = seen.send(Seen::Failed(len));
                                return "failed".to_owned();
                            }
                        }
                    }
                    let _ = seen.send(Seen::Complete(len));
                    format!("complete {len}")
                }
            }),
        )
        .route("/ping", get(|| async { "pong" }))
        .layer(DefaultBodyLimit::disable());
    let (addr, _task) = ccr_e2e::ports::serve_loopback(app).await;
    Target {
        url: format!("http://{addr}"),
        first_read,
        cut: tokio::sync::Mutex::new(seen_rx),
    }
}

/// `len` bytes that repeat no short pattern (xorshift), so a misplaced or lost frame shows.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A Worker, the target and a bridge on the WebSocket transport, its socket connected (else
/// uploads would take the long-poll path).
async fn setup() -> (Worker, Target, Bridge) {
    let w = Worker::start_default().await.unwrap();
    let target = start_target().await;
    let bridge = Bridge::start(&w, &target.url, None, &["--transport", "ws"])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !bridge.log().contains("requests come over the WebSocket") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge's socket never connected; bridge log:\n{}",
            bridge.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = ccr_e2e::ports::client(CALL_TIMEOUT);
    let r = http.get(w.url("/proxy/ping")).send().await.unwrap();
    assert_eq!(r.status(), 200, "bridge log:\n{}", bridge.log());
    (w, target, bridge)
}

/// A request body fed through a channel, so the test decides when each part is sent.
fn channel_body() -> (mpsc::Sender<Vec<u8>>, reqwest::Body) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, std::io::Error>(bytes), rx))
    });
    (tx, reqwest::Body::wrap_stream(stream))
}

/// The caller sends 256 KiB, then waits for the target to have read them before it sends the
/// other 2 MiB; meanwhile a small request on the same channel is answered. `declared`: the
/// upload carries its `content-length` (else it is chunked).
async fn the_target_reads_an_upload_before_it_ends(declared: bool) {
    let (w, target, bridge) = setup().await;
    let http = ccr_e2e::ports::client(CALL_TIMEOUT);
    let first = noise(256 * KIB, 1);
    let rest = noise(2 * MIB, 2);
    let total = first.len() + rest.len();
    let mut whole = first.clone();
    whole.extend_from_slice(&rest);
    let want_len = if declared {
        total.to_string()
    } else {
        "none".into()
    };
    let want = format!("{total} {} {want_len}", hex::encode(Sha256::digest(&whole)));
    let (tx, body) = channel_body();
    let mut call = http.post(w.url("/proxy/hash")).body(body);
    if declared {
        call = call.header("content-length", total.to_string());
    }
    let call = tokio::spawn(call.send());
    tx.send(first).await.unwrap();
    let read_early = tokio::time::timeout(FIRST_BYTES_WAIT, target.first_read.notified())
        .await
        .is_ok();
    // The channel keeps answering while the upload is held half-way.
    let small = if read_early {
        let r = http.get(w.url("/proxy/ping")).send().await;
        Some(match r {
            Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => format!("no answer: {e}"),
        })
    } else {
        None
    };
    tx.send(rest).await.unwrap();
    drop(tx);
    let answer = match call.await.unwrap() {
        Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
        Err(e) => format!("no answer: {e}"),
    };
    assert!(
        read_early,
        "the target read nothing of the upload within {FIRST_BYTES_WAIT:?} while its caller \
         held the rest back (answer: {answer}); worker log:\n{}\nbridge log:\n{}",
        ccr_e2e::worker::tail(&w.log(), 40),
        ccr_e2e::worker::tail(&bridge.log(), 40)
    );
    assert_eq!(
        small.as_deref(),
        Some("200 OK pong"),
        "a small request while an upload was held half-way"
    );
    assert_eq!(
        answer,
        format!("200 OK {want}"),
        "bridge log:\n{}",
        ccr_e2e::worker::tail(&bridge.log(), 40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_reads_a_chunked_upload_before_it_ends() {
    the_target_reads_an_upload_before_it_ends(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_reads_an_upload_with_a_length_before_it_ends() {
    the_target_reads_an_upload_before_it_ends(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_9_mib_chunked_upload_arrives_intact() {
    let (w, _target, bridge) = setup().await;
    let http = ccr_e2e::ports::client(CALL_TIMEOUT);
    let body = noise(9 * MIB + 5, 9);
    let want = format!("{} {} none", body.len(), hex::encode(Sha256::digest(&body)));
    // Uneven pieces, so the caller's chunks and the relay's frames never line up.
    let pieces: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(100 * KIB + 13)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let r = http
        .post(w.url("/proxy/hash"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await;
    let got = match r {
        Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
        Err(e) => format!("no answer: {e}"),
    };
    assert_eq!(
        got,
        format!("200 OK {want}"),
        "bridge log:\n{}",
        ccr_e2e::worker::tail(&bridge.log(), 40)
    );
}

/// Sends the head and 512 KiB of a 4 MiB upload to `/proxy/cut` over a raw connection,
/// waits until the target has its first bytes, then drops the connection mid-body: the
/// target's request must fail.
///
/// Only with a declared length: a chunked body whose caller disconnects reaches the Worker
/// (workerd under `wrangler dev`) as a clean end, indistinguishable from a complete one —
/// see the README's limits. A chunked body cut by the relay itself (over the size limit) is
/// [`an_oversized_chunked_upload_is_cut_at_the_target`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_mid_body_fails_at_the_target() {
    let (w, target, bridge) = setup().await;
    let mut sock = tokio::net::TcpStream::connect(w.addr()).await.unwrap();
    let head = format!(
        "POST /proxy/cut HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\n\r\n",
        w.addr(),
        4 * MIB
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&noise(512 * KIB, 5)).await.unwrap();
    sock.flush().await.unwrap();
    let mut seen = target.cut.lock().await;
    let first = tokio::time::timeout(FIRST_BYTES_WAIT, seen.recv()).await;
    assert_eq!(
        first.ok().flatten(),
        Some(Seen::FirstBytes),
        "the target saw nothing of the upload while its caller was still sending; worker \
         log:\n{}\nbridge log:\n{}",
        ccr_e2e::worker::tail(&w.log(), 40),
        ccr_e2e::worker::tail(&bridge.log(), 40)
    );
    // The caller goes away mid-body.
    drop(sock);
    let end = tokio::time::timeout(CALL_TIMEOUT, seen.recv()).await;
    match end.ok().flatten() {
        Some(Seen::Failed(n)) => assert!(n < 4 * MIB, "{n}"),
        other => panic!(
            "the target's request should fail when its caller goes away mid-body, saw \
             {other:?}; worker log:\n{}\nbridge log:\n{}",
            ccr_e2e::worker::tail(&w.log(), 40),
            ccr_e2e::worker::tail(&bridge.log(), 40)
        ),
    }
}

/// An 11 MiB chunked upload (no length, its last chunk never sent) to a channel whose bridge
/// is connected: the target gets its first bytes while it streams, the caller gets 413 once it
/// passes 10 MiB — before its body ends — and the target's request fails, never ends
/// complete-looking with the first 10 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_chunked_upload_is_cut_at_the_target() {
    let (w, target, bridge) = setup().await;
    let mut sock = tokio::net::TcpStream::connect(w.addr()).await.unwrap();
    let head = format!(
        "POST /proxy/cut HTTP/1.1\r\nhost: {}\r\ntransfer-encoding: chunked\r\ncontent-type: application/octet-stream\r\n\r\n",
        w.addr()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = sock.into_split();
    let writer = tokio::spawn(async move {
        let chunk = noise(256 * KIB, 11);
        for _ in 0..44 {
            let frame = format!("{:x}\r\n", chunk.len());
            if wr.write_all(frame.as_bytes()).await.is_err()
                || wr.write_all(&chunk).await.is_err()
                || wr.write_all(b"\r\n").await.is_err()
            {
                return;
            }
        }
        // 11 MiB sent; the body never ends.
        tokio::time::sleep(CALL_TIMEOUT).await;
        drop(wr);
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(CALL_TIMEOUT, async {
        let mut buf = [0u8; 4096];
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match tokio::io::AsyncReadExt::read(&mut rd, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    let status = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("connection closed")
        .to_owned();
    assert!(
        read.is_ok() && status.starts_with("HTTP/1.1 413"),
        "{status}; worker log:\n{}",
        ccr_e2e::worker::tail(&w.log(), 30)
    );
    let mut seen = target.cut.lock().await;
    let first = tokio::time::timeout(CALL_TIMEOUT, seen.recv()).await;
    assert_eq!(
        first.ok().flatten(),
        Some(Seen::FirstBytes),
        "bridge log:\n{}",
        ccr_e2e::worker::tail(&bridge.log(), 40)
    );
    let end = tokio::time::timeout(CALL_TIMEOUT, seen.recv()).await;
    match end.ok().flatten() {
        Some(Seen::Failed(n)) => assert!(n <= 10 * MIB, "{n}"),
        other => panic!(
            "the target's request should fail when the relay refuses the body, saw {other:?}; \
             bridge log:\n{}",
            ccr_e2e::worker::tail(&bridge.log(), 40)
        ),
    }
}
