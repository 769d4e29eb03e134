//! A request is never lost to a bridge that is gone: a long-poll left over from a bridge that
//! was SIGKILLed (or whose network dropped) may still be registered in the channel's object
//! when the next request arrives. The relay hands requests to the newest waiting poll first,
//! and what it hands to a confirming bridge stays leased until that bridge confirms it: an
//! unconfirmed request goes back to the front of the queue for the next poll.

use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use ccr_e2e::bridge::Bridge;
use ccr_e2e::worker::{Worker, TEST_RELAY_TOKEN};
use serde_json::Value;

const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// These cases are the long-poll hand-over (leases, polls left behind): over the WebSocket
/// transport a request goes to the live socket only, and a dropped one's get a 502.
const POLL: &[&str] = &["--transport", "poll"];

async fn start_target() -> String {
    let app = Router::new().route(
        "/id/{n}",
        get(|Path(n): Path<String>| async move { format!("response for {n}") }),
    );
    let (addr, _task) = ccr_e2e::ports::serve_loopback(app).await;
    format!("http://{addr}")
}

fn client() -> reqwest::Client {
    ccr_e2e::ports::client(CALL_TIMEOUT)
}

/// How many polls `bridge` has started (its debug log says "polling" before each).
fn polls(bridge: &Bridge) -> usize {
    bridge.log().matches("polling").count()
}

/// Waits until `bridge` has started more than `n` polls.
async fn wait_polls_over(bridge: &Bridge, n: usize) {
    ccr_e2e::wait_for("the bridge to poll", CALL_TIMEOUT, || {
        let seen = polls(bridge);
        async move { (seen > n).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; bridge log:\n{}", bridge.log()));
}

/// GETs `path` and returns (status, body, how long it took).
async fn timed_get(http: &reqwest::Client, url: String) -> (u16, String, Duration) {
    let started = Instant::now();
    let r = http.get(&url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap(), started.elapsed())
}

#[tokio::test]
async fn a_bridge_killed_while_polling_does_not_take_the_next_request() {
    tokio::task::spawn_blocking(ccr_e2e::bins::relay_bridge)
        .await
        .unwrap();
    let w = Worker::start_default().await.unwrap();
    let target = start_target().await;
    let http = client();
    let mut old = Bridge::start(&w, &target, None, POLL).await.unwrap();
    // One request through it; then its next long-poll is pending in the channel's object.
    let (status, text, _) = timed_get(&http, w.url("/proxy/id/warm")).await;
    assert_eq!((status, text.as_str()), (200, "response for warm"));
    let before = polls(&old);
    wait_polls_over(&old, before.max(1)).await;
    old.kill().await;
    // The timing: the new bridge starts a second after the old one died.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let new = Bridge::start(&w, &target, None, POLL).await.unwrap();
    wait_polls_over(&new, 0).await;

    let (status, text, took) = timed_get(&http, w.url("/proxy/id/after-kill")).await;
    println!(
        "after a SIGKILL mid-poll: {status} in {} ms",
        took.as_millis()
    );
    assert_eq!(
        (status, text.as_str()),
        (200, "response for after-kill"),
        "took {took:?}; new bridge log:\n{}",
        new.log()
    );
}

#[tokio::test]
async fn a_request_handed_to_a_poll_that_never_confirms_goes_to_the_next_bridge() {
    // Built first: the timing below is the relay's, not cargo's.
    tokio::task::spawn_blocking(ccr_e2e::bins::relay_bridge)
        .await
        .unwrap();
    let w = Worker::start_default().await.unwrap();
    let target = start_target().await;
    let http = client();
    // A confirming bridge's long-poll (it sends `ack`) whose client dies with the answer:
    // nobody ever confirms what it receives.
    let lost_poll = {
        let http = http.clone();
        let url = w.url("/proxy/_poll?wait=20&ack=");
        tokio::spawn(async move {
            let r = http
                .get(&url)
                .header("x-relay-token", TEST_RELAY_TOKEN)
                .send()
                .await
                .unwrap();
            let v: Value = r.json().await.unwrap();
            (Instant::now(), v)
        })
    };
    // Only that poll waits: the request goes to it.
    let caller = {
        let http = http.clone();
        let url = w.url("/proxy/id/leased");
        tokio::spawn(async move { timed_get(&http, url).await })
    };
    let (handed_at, batch) = lost_poll.await.unwrap();
    assert_eq!(batch["requests"][0]["path"], "/id/leased", "{batch}");
    // A new bridge starts: the request must reach it, not wait out the caller's 25 s.
    let new = Bridge::start(&w, &target, None, POLL).await.unwrap();
    let (status, text, _) = caller.await.unwrap();
    let after_hand_over = handed_at.elapsed();
    println!(
        "after a hand-over nobody confirmed: {status} {} ms after the hand-over",
        after_hand_over.as_millis()
    );
    assert_eq!(
        (status, text.as_str()),
        (200, "response for leased"),
        "bridge log:\n{}",
        new.log()
    );
    assert!(
        after_hand_over < Duration::from_secs(10),
        "{after_hand_over:?}; bridge log:\n{}\nworker log:\n{}",
        new.log(),
        ccr_e2e::worker::tail(&w.log(), 40)
    );

    // A seed-protocol poll (no `ack`) confirms nothing and needs nothing: what it receives is
    // its own, and its answer is the caller's.
    drop(new);
    let caller = {
        let http = http.clone();
        let url = w.url("/proxy/id/seed");
        tokio::spawn(async move { timed_get(&http, url).await })
    };
    let req = ccr_e2e::wait_for("the seed poll to see the request", CALL_TIMEOUT, || {
        let http = http.clone();
        let url = w.url("/proxy/_poll");
        async move {
            let r = http
                .get(&url)
                .header("x-token", TEST_RELAY_TOKEN)
                .send()
                .await
                .ok()?;
            let v: Value = r.json().await.ok()?;
            v["requests"].as_array()?.first().cloned()
        }
    })
    .await
    .unwrap();
    assert_eq!(req["path"], "/id/seed");
    // Well past a lease: the request was not handed to anyone else meanwhile.
    let again = http
        .get(w.url("/proxy/_poll?wait=3&ack="))
        .header("x-relay-token", TEST_RELAY_TOKEN)
        .send()
        .await
        .unwrap();
    let v: Value = again.json().await.unwrap();
    assert_eq!(v["requests"], serde_json::json!([]), "{v}");
    let resp = http
        .post(w.url("/proxy/_respond"))
        .header("x-token", TEST_RELAY_TOKEN)
        .json(&serde_json::json!({"id": req["id"], "status": 200, "body": "seed answer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, text, _) = caller.await.unwrap();
    assert_eq!((status, text.as_str()), (200, "seed answer"));
}
