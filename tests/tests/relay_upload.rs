//! Request bodies through the relay arrive intact at the target, byte for byte, over both
//! transports: over the bridge's WebSocket a body over 64 KiB follows its request as binary
//! frames (`bodyFollows`) and reaches the target as a streamed body with its length; over
//! long-poll it travels inside the envelope. Sizes straddle the inline limit and the 64 KiB
//! frame boundaries, up to a 9 MiB upload.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use ccr_e2e::bridge::Bridge;
use ccr_e2e::worker::Worker;
use sha2::{Digest, Sha256};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// A target that answers each POST with what it received: the length, the SHA-256 and the
/// `content-length` it was sent with.
async fn start_target() -> String {
    let app = Router::new()
        .route(
            "/hash",
            post(|headers: HeaderMap, body: Bytes| async move {
                let declared = headers
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                format!(
                    "{} {} {declared}",
                    body.len(),
                    hex::encode(Sha256::digest(&body))
                )
            }),
        )
        .layer(DefaultBodyLimit::disable());
    let (addr, _task) = ccr_e2e::ports::serve_loopback(app).await;
    format!("http://{addr}")
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

async fn uploads_arrive_intact(transport: &str) {
    let w = Worker::start_default().await.unwrap();
    let target = start_target().await;
    let bridge = Bridge::start(&w, &target, None, &["--transport", transport])
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap();
    let sizes = [
        1,
        64 * KIB,
        64 * KIB + 1,
        3 * 64 * KIB + 7,
        MIB - 3,
        9 * MIB + 5,
    ];
    // All at once, so frames of several uploads interleave on the bridge's socket.
    let calls: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let http = http.clone();
            let url = w.url("/proxy/hash");
            tokio::spawn(async move {
                let body = noise(len, 0x9e37_79b9_7f4a_7c15 + i as u64);
                let want = format!("{len} {} {len}", hex::encode(Sha256::digest(&body)));
                let r = http.post(&url).body(body).send().await;
                let got = match r {
                    Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                    Err(e) => format!("no answer: {e}"),
                };
                (len, got, want)
            })
        })
        .collect();
    for call in calls {
        let (len, got, want) = call.await.unwrap();
        assert_eq!(
            got,
            format!("200 OK {want}"),
            "a {len}-byte upload over {transport}; bridge log:\n{}",
            ccr_e2e::worker::tail(&bridge.log(), 40)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_arrive_intact_over_the_websocket() {
    uploads_arrive_intact("ws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_arrive_intact_over_long_poll() {
    uploads_arrive_intact("poll").await;
}
