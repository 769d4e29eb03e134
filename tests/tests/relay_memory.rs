//! The relay's memory stays bounded: a body over the limit is refused while it is still
//! arriving (chunked uploads included), and large bodies never sit in the channel's object,
//! so big uploads on a channel cannot take down the callers waiting on it. The object's
//! instance id (`X-CCR-Relay-Instance`) shows whether it was rebuilt.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path};
use axum::routing::{get, post};
use axum::Router;
use ccr_e2e::bridge::Bridge;
use ccr_e2e::worker::Worker;
use ccr_protocol::wire::header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CALL_TIMEOUT: Duration = Duration::from_secs(90);
const MIB: usize = 1024 * 1024;

async fn start_target() -> String {
    let app = Router::new()
        .route(
            "/id/{n}",
            get(|Path(n): Path<String>| async move { format!("response for {n}") }),
        )
        .route(
            "/len",
            post(|body: Bytes| async move { format!("got {} bytes", body.len()) }),
        )
        .layer(DefaultBodyLimit::disable());
    let (addr, _task) = ccr_e2e::ports::serve_loopback(app).await;
    format!("http://{addr}")
}

fn client() -> reqwest::Client {
    ccr_e2e::ports::client(CALL_TIMEOUT)
}

/// POSTs `total` bytes to `path` chunked (no `Content-Length`) over a raw connection and
/// never sends the final chunk: the body has not ended when an answer arrives. Returns the
/// answer's status line, or why there is none.
async fn unfinished_chunked_upload(addr: SocketAddr, path: &str, total: usize) -> String {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\ncontent-type: application/octet-stream\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = sock.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 256 * 1024];
        let mut sent = 0;
        while sent < total {
            let frame = format!("{:x}\r\n", chunk.len());
            if wr.write_all(frame.as_bytes()).await.is_err()
                || wr.write_all(&chunk).await.is_err()
                || wr.write_all(b"\r\n").await.is_err()
            {
                return;
            }
            sent += chunk.len();
        }
        // Keep the connection open without ending the body.
        tokio::time::sleep(CALL_TIMEOUT).await;
        drop(wr);
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(CALL_TIMEOUT, async {
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.windows(2).any(|w| w == b"\r\n") {
                break;
            }
        }
    })
    .await;
    writer.abort();
    if read.is_err() {
        return "no answer".into();
    }
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .next()
        .unwrap_or("connection closed")
        .to_owned()
}

#[tokio::test]
async fn an_oversized_chunked_upload_is_refused_before_it_ends() {
    let w = Worker::start_default().await.unwrap();
    // 11 MiB, no Content-Length, the final chunk never sent.
    let status = unfinished_chunked_upload(w.addr(), "/proxy/len", 11 * MIB).await;
    assert!(
        status.starts_with("HTTP/1.1 413"),
        "{status}; worker log:\n{}",
        ccr_e2e::worker::tail(&w.log(), 30)
    );
}

fn instance(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(header::RELAY_INSTANCE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_do_not_cost_a_channel_its_waiting_callers() {
    upload_flood("poll").await;
}

/// The same flood over the bridge's WebSocket transport: each 9 MiB upload crosses the
/// bridge's socket as binary frames after its envelope, one push at a time, so neither the
/// channel's object nor the bridge's socket reader holds a whole upload as a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_do_not_cost_a_channel_its_waiting_callers_over_the_websocket() {
    upload_flood("ws").await;
}

/// The callers of the flood talk to the Worker's own workerd socket, not through
/// `wrangler dev`'s local proxy ([`Worker::direct_addr`]): each early 413 of an oversized
/// upload leaves that proxy holding the next request it forwards until the request's caller
/// gives up (90 s here), which looked like a stalled relay (issue 15) but happens to
/// `/health` as well. The bridge still goes through the proxy.
async fn upload_flood(transport: &str) {
    tokio::task::spawn_blocking(ccr_e2e::bins::relay_bridge)
        .await
        .unwrap();
    let w = Worker::start_default().await.unwrap();
    let target = start_target().await;
    let bridge = Bridge::start_with_env(
        &w,
        &target,
        None,
        &["--concurrency", "16", "--transport", transport],
        &[("RUST_LOG", "info")],
    )
    .await
    .unwrap();
    let http = client();
    let direct = w.direct_addr().await.unwrap();
    let url = |path: &str| format!("http://{direct}{path}");
    let first = http.get(url("/proxy/id/first")).send().await.unwrap();
    assert_eq!(first.status(), 200, "bridge log:\n{}", bridge.log());
    let before = instance(&first);
    assert!(!before.is_empty(), "no {} header", header::RELAY_INSTANCE);

    const LARGE: usize = 8;
    const OVERSIZED: usize = 4;
    let large: Vec<_> = (0..LARGE)
        .map(|i| {
            let http = http.clone();
            let url = url("/proxy/len");
            tokio::spawn(async move {
                let body = vec![b'a' + i as u8; 9 * MIB + i];
                let r = http.post(&url).body(body).send().await.unwrap();
                (i, r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    let oversized: Vec<_> = (0..OVERSIZED)
        .map(|_| unfinished_chunked_upload(direct, "/proxy/len", 11 * MIB))
        .collect();
    // Small requests on the same channel keep being answered meanwhile.
    let small = {
        let http = http.clone();
        let base = url("/proxy/id");
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for n in 0..20 {
                match http.get(format!("{base}/small-{n}")).send().await {
                    Ok(r) => {
                        let inst = instance(&r);
                        seen.push((
                            r.status().as_u16(),
                            r.text().await.unwrap_or_default(),
                            inst,
                        ));
                    }
                    Err(e) => seen.push((0, format!("no answer: {e:?}"), String::new())),
                }
            }
            seen
        })
    };
    let refused = futures_util::future::join_all(oversized).await;
    for status in &refused {
        assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    }
    for call in large {
        let (i, status, text) = call.await.unwrap();
        assert_eq!(
            (status, text.as_str()),
            (200, format!("got {} bytes", 9 * MIB + i).as_str()),
            "large upload {i}"
        );
    }
    for (n, (status, text, inst)) in small.await.unwrap().into_iter().enumerate() {
        assert_eq!(
            (status, text.as_str()),
            (200, format!("response for small-{n}").as_str()),
            "worker log:\n{}\nbridge log:\n{}",
            ccr_e2e::worker::tail(&w.log(), 400),
            ccr_e2e::worker::tail(&bridge.log(), 60)
        );
        assert_eq!(inst, before, "the channel's object was rebuilt");
    }
    let last = http.get(url("/proxy/id/last")).send().await.unwrap();
    assert_eq!(last.status(), 200);
    assert_eq!(instance(&last), before, "the channel's object was rebuilt");
}
