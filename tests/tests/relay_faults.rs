//! The relay under faults: 200 concurrent callers with distinct payloads while the bridge is
//! SIGKILLed and restarted twice. Every caller must receive its own response or a clean
//! 502/504 JSON error — never another caller's body. Prints the counts.

use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use ccr_e2e::bins::relay_bridge;
use ccr_e2e::bridge::Bridge;
use ccr_e2e::worker::Worker;
use serde_json::Value;

const CALLERS: usize = 200;

/// The local server: echoes the body after a delay the body asks for, so requests are in
/// flight inside the bridge when it dies.
async fn start_target() -> String {
    let app = Router::new().route(
        "/echo",
        post(|body: Bytes| async move {
            let text = String::from_utf8_lossy(&body).to_string();
            let ms: u64 = text
                .rsplit(':')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            format!("echo {text}")
        }),
    );
    let (addr, _task) = ccr_e2e::ports::serve_loopback(app).await;
    format!("http://{addr}")
}

async fn start_bridge(w: &Worker, target: &str) -> Bridge {
    Bridge::start_with_env(
        w,
        target,
        None,
        // Long-poll: this is the leased hand-over at work (a killed bridge's requests go to
        // its successor). Over the WebSocket a dropped socket's requests get a clean 502
        // instead — relay_stream.rs covers that.
        &["--concurrency", "64", "--transport", "poll"],
        &[("RUST_LOG", "warn")],
    )
    .await
    .unwrap()
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Own,
    CleanError(u16),
    Wrong(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_gets_its_own_answer_or_a_clean_error() {
    // Build the bridge off the runtime's threads before any connection exists.
    tokio::task::spawn_blocking(relay_bridge).await.unwrap();
    let w = Worker::start_default().await.unwrap();
    let target = start_target().await;
    let mut bridge = start_bridge(&w, &target).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    let calls: Vec<_> = (0..CALLERS)
        .map(|i| {
            let http = http.clone();
            let url = w.url("/proxy/echo");
            // Distinct payloads; delays spread over ~2 s so the kills land mid-flight.
            let payload = format!("caller-{i}-{}:{}", i * 7919 % 1000, (i * 37) % 2000);
            tokio::spawn(async move {
                let resp = http.post(&url).body(payload.clone()).send().await;
                let outcome = match resp {
                    Err(e) => Outcome::Wrong(format!("no answer: {e}")),
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let text = r.text().await.unwrap_or_default();
                        match status {
                            200 if text == format!("echo {payload}") => Outcome::Own,
                            502 | 504 => match serde_json::from_str::<Value>(&text) {
                                Ok(v) if v["ok"] == false && v["error"].is_string() => {
                                    Outcome::CleanError(status)
                                }
                                _ => Outcome::Wrong(format!("{status} not JSON: {text}")),
                            },
                            _ => Outcome::Wrong(format!("{status}: {text}")),
                        }
                    }
                };
                (i, outcome)
            })
        })
        .collect();

    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        bridge.kill().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        bridge = start_bridge(&w, &target).await;
    }

    let (mut own, mut e502, mut e504, mut wrong) = (0, 0, 0, vec![]);
    for call in calls {
        let (i, outcome) = call.await.unwrap();
        match outcome {
            Outcome::Own => own += 1,
            Outcome::CleanError(502) => e502 += 1,
            Outcome::CleanError(_) => e504 += 1,
            Outcome::Wrong(why) => wrong.push(format!("caller {i}: {why}")),
        }
    }
    println!(
        "\n| relay under faults ({CALLERS} callers, 2 bridge SIGKILLs) | count |\n|---|---|\n\
         | own response | {own} |\n| clean 502 | {e502} |\n| clean 504 | {e504} |\n\
         | wrong or missing body | {} |\n",
        wrong.len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(own > 0, "no caller got through at all");
    // The relay still serves after the faults.
    let resp = http
        .post(w.url("/proxy/echo"))
        .body("after:0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "echo after:0");
    drop(bridge);
}
