//! The relay end to end: the real Worker on workerd, the real `relay-bridge` binary, and a real
//! local HTTP server (axum) as the bridge's target.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use ccr_e2e::bridge::Bridge;
use ccr_e2e::json_of;
use ccr_e2e::worker::{channel_token, Worker, WorkerOptions, TEST_RELAY_TOKEN};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// Generous: this runs on a slow shared machine. The relay's own wait is 25 s.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The target: a local HTTP server.

/// The local server the bridge forwards to. Dropping it stops it.
struct Target {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Target {
    async fn start() -> Target {
        let app = Router::new()
            .route("/hello", get(hello))
            .route("/echo", any(echo))
            .route("/status/{code}", any(status))
            .route("/slow", get(slow))
            .route("/id/{n}", get(id))
            .route("/gate", get(gate))
            .route("/scope", get(scope));
        let (addr, task) = ccr_e2e::ports::serve_loopback(app).await;
        Target { addr, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn hello(Query(q): Query<Vec<(String, String)>>, headers: HeaderMap) -> Response {
    let custom = headers
        .get("x-custom")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut resp =
        axum::Json(json!({"message": "hi", "query": q, "seenCustom": custom})).into_response();
    let h = resp.headers_mut();
    h.insert("x-target", HeaderValue::from_static("yes"));
    h.append("set-cookie", HeaderValue::from_static("a=1"));
    h.append("set-cookie", HeaderValue::from_static("b=2"));
    resp
}

/// Answers the request's own body and says what it saw in headers.
async fn echo(req: Request) -> Response {
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or("").to_owned();
    let ct = req.headers().get("content-type").cloned();
    let bytes = axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let mut resp = Response::new(Body::from(bytes));
    let h = resp.headers_mut();
    h.insert("x-echo-method", HeaderValue::from_str(&method).unwrap());
    h.insert("x-echo-query", HeaderValue::from_str(&query).unwrap());
    if let Some(ct) = ct {
        h.insert("content-type", ct);
    }
    resp
}

async fn status(Path(code): Path<u16>) -> Response {
    let code = StatusCode::from_u16(code).unwrap();
    (code, format!("status {}", code.as_u16())).into_response()
}

async fn slow(Query(q): Query<Vec<(String, String)>>) -> String {
    let ms: u64 = q
        .iter()
        .find(|(k, _)| k == "ms")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slow {ms} done")
}

/// Requests inside `/gate` right now, and the most there ever were (only one test calls it).
static GATE_ACTIVE: AtomicUsize = AtomicUsize::new(0);
static GATE_PEAK: AtomicUsize = AtomicUsize::new(0);

async fn gate() -> &'static str {
    let now = GATE_ACTIVE.fetch_add(1, Ordering::SeqCst) + 1;
    GATE_PEAK.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    GATE_ACTIVE.fetch_sub(1, Ordering::SeqCst);
    "through the gate"
}

/// Tries to act outside its channel: cookies for `/` and another domain, a Service Worker
/// scope over the whole origin, and says which `Referer` it saw.
async fn scope(headers: HeaderMap) -> Response {
    let referer = headers
        .get("referer")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut resp = referer.into_response();
    let h = resp.headers_mut();
    for cookie in [
        "s=1; Path=/; HttpOnly",
        "d=2; Domain=127.0.0.1; Path=/",
        "n=3",
    ] {
        h.append("set-cookie", HeaderValue::from_static(cookie));
    }
    h.insert("service-worker-allowed", HeaderValue::from_static("/"));
    resp
}

async fn id(Path(n): Path<String>) -> String {
    format!("response for {n}")
}

fn client() -> reqwest::Client {
    ccr_e2e::ports::client(CALL_TIMEOUT)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn requests_and_responses_cross_intact() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let bridge = Bridge::start(&w, &target.url(), None, &[]).await.unwrap();
    let http = client();

    let ping = http.get(w.url("/ping")).send().await.unwrap();
    assert_eq!(ping.status(), 200);
    assert_eq!(ping.text().await.unwrap(), "ok");

    // GET with a query; a header goes in, headers (two cookies) come back.
    let resp = http
        .get(w.url("/proxy/hello?name=ccr&x=1%202"))
        .header("X-Custom", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "bridge log:\n{}", bridge.log());
    assert_eq!(resp.headers()["x-target"], "yes");
    let cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    let body = json_of(resp).await;
    assert_eq!(body["message"], "hi");
    assert_eq!(body["query"], json!([["name", "ccr"], ["x", "1 2"]]));
    assert_eq!(body["seenCustom"], "abc");

    // POST with a binary body, small (kept in the object's memory) and large (through KV).
    for len in [1000usize, 300 * 1024, 6 * 1024 * 1024] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        let resp = http
            .post(w.url("/proxy/echo?k=v"))
            .header("content-type", "application/octet-stream")
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "len {len}");
        assert_eq!(resp.headers()["x-echo-method"], "POST");
        assert_eq!(resp.headers()["x-echo-query"], "k=v");
        assert_eq!(resp.headers()["content-type"], "application/octet-stream");
        assert_eq!(
            resp.bytes().await.unwrap().as_ref(),
            &bytes[..],
            "len {len}"
        );
    }

    // Other methods and the target's own errors pass through.
    let put = http
        .put(w.url("/proxy/echo"))
        .body("text body")
        .send()
        .await
        .unwrap();
    assert_eq!(put.headers()["x-echo-method"], "PUT");
    assert_eq!(put.text().await.unwrap(), "text body");
    let missing = http.get(w.url("/proxy/no/such/path")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let failing = http.get(w.url("/proxy/status/500")).send().await.unwrap();
    assert_eq!(failing.status(), 500);
    assert_eq!(failing.text().await.unwrap(), "status 500");
    let created = http.post(w.url("/proxy/status/201")).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let empty = http
        .delete(w.url("/proxy/status/204"))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 204);

    // Limits: a body over 10 MiB is refused before it is queued.
    let huge = vec![0u8; 10 * 1024 * 1024 + 1];
    let resp = http
        .post(w.url("/proxy/echo"))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(json_of(resp).await["ok"], false);
}

#[tokio::test]
async fn slow_target_gives_504_then_result_and_absent_bridge_gives_504() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let http = client();

    // No bridge on channel "nobody": a clean 504 with the id, within the deadline.
    let started = std::time::Instant::now();
    let resp = http
        .get(w.url("/relay/nobody/anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(45));
    let body = json_of(resp).await;
    assert_eq!(body["ok"], false);
    let id = body["id"].as_str().unwrap().to_owned();
    // It never reached a bridge, so there is nothing to retrieve.
    let result = http
        .get(w.url(&format!("/relay/nobody/_result/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 404);

    // A target slower than the caller's wait: 504 with the id, then the answer at _result.
    let bridge = Bridge::start(&w, &target.url(), None, &[]).await.unwrap();
    let resp = http
        .get(w.url("/proxy/slow?ms=29000"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504, "bridge log:\n{}", bridge.log());
    let body = json_of(resp).await;
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(body["resultPath"], format!("/proxy/_result/{id}"));
    let result_url = w.url(&format!("/proxy/_result/{id}"));
    // Right after the 504 the target is still working: pending (or, on a slow day, done).
    let early = http.get(&result_url).send().await.unwrap();
    match early.status().as_u16() {
        202 => assert_eq!(json_of(early).await["pending"], true),
        200 => {}
        other => panic!("_result right after the 504: {other}"),
    }
    let result = ccr_e2e::wait_for("the late result", Duration::from_secs(60), || {
        let http = http.clone();
        let url = result_url.clone();
        async move {
            let r = http.get(&url).send().await.ok()?;
            (r.status() == 200).then_some(r)
        }
    })
    .await
    .unwrap();
    assert_eq!(result.text().await.unwrap(), "slow 29000 done");

    // That id is answered: a second response is a conflict; an unknown id is 404.
    let respond = |body: Value| {
        http.post(w.url("/proxy/_respond"))
            .header("x-relay-token", TEST_RELAY_TOKEN)
            .json(&body)
            .send()
    };
    let again = respond(json!({"id": id, "status": 200, "body": "again"}))
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let unknown = respond(json!({"id": "0".repeat(32), "status": 200}))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(json_of(unknown).await["ok"], false);
}

#[tokio::test]
async fn many_concurrent_callers_each_get_their_own_response() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let bridge = Bridge::start(&w, &target.url(), None, &["--concurrency", "16"])
        .await
        .unwrap();
    let http = client();

    let calls = (0..100).map(|i| {
        let http = http.clone();
        let url = w.url(&format!("/proxy/id/{i}"));
        async move {
            let r = http.get(&url).send().await.unwrap();
            (i, r.status().as_u16(), r.text().await.unwrap())
        }
    });
    let results = futures_util::future::join_all(calls).await;
    for (i, status, text) in results {
        assert_eq!(
            status,
            200,
            "caller {i}: {text}\nbridge log tail:\n{}",
            tail(&bridge.log())
        );
        assert_eq!(text, format!("response for {i}"));
    }

    // --concurrency bounds what the target sees at once, and requests do overlap up to it.
    let gated = Bridge::start(&w, &target.url(), Some("gated"), &["--concurrency", "3"])
        .await
        .unwrap();
    let calls = (0..12).map(|_| {
        let http = http.clone();
        let url = w.url("/relay/gated/gate");
        async move {
            let r = http.get(&url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    });
    for (status, text) in futures_util::future::join_all(calls).await {
        assert_eq!(
            status,
            200,
            "{text}\nbridge log tail:\n{}",
            tail(&gated.log())
        );
        assert_eq!(text, "through the gate");
    }
    let peak = GATE_PEAK.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&peak),
        "peak concurrency at the target: {peak}"
    );
}

#[tokio::test]
async fn a_channel_cannot_reach_past_its_prefix_in_a_browser() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let bridge = Bridge::start(&w, &target.url(), Some("iso"), &[])
        .await
        .unwrap();
    let referer = w.url("/relay/iso/page?_relay_key=secret-key&x=1");
    let resp = client()
        .get(w.url("/relay/iso/scope"))
        .header("referer", &referer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "bridge log:\n{}", bridge.log());
    assert!(
        resp.headers().get("service-worker-allowed").is_none(),
        "{:?}",
        resp.headers()
    );
    let cookies: Vec<_> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        cookies,
        ["s=1; HttpOnly; Path=/relay/iso/", "n=3; Path=/relay/iso/"]
    );
    // The target saw the page it was called from, without the relay's key.
    assert_eq!(
        resp.text().await.unwrap(),
        w.url("/relay/iso/page?x=1"),
        "the relay key reached the target"
    );
}

#[tokio::test]
async fn a_channel_on_its_own_host() {
    let w = Worker::start(WorkerOptions::default().var("RELAY_HOST_SUFFIX", "relay.test"))
        .await
        .unwrap();
    let target = Target::start().await;
    // The bridge polls the Worker's own host as usual.
    let bridge = Bridge::start(&w, &target.url(), Some("alpha"), &[])
        .await
        .unwrap();
    let host = format!("alpha.relay.test:{}", w.addr().port());
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(CALL_TIMEOUT)
        .resolve("alpha.relay.test", w.addr())
        .build()
        .unwrap();
    let resp = http
        .get(format!("http://{host}/id/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "bridge log:\n{}", bridge.log());
    assert_eq!(resp.text().await.unwrap(), "response for 7");
    // Every path of the host is the channel's: another channel's prefix is just a path, and
    // the target's cookies for `/` stay the host's `/`.
    let resp = http
        .get(format!("http://{host}/relay/beta/id/8"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "the target's own 404");
    assert!(resp.headers().get("x-ccr-relay-instance").is_some());
    let resp = http
        .get(format!("http://{host}/scope"))
        .send()
        .await
        .unwrap();
    let cookies: Vec<_> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(cookies, ["s=1; HttpOnly; Path=/", "n=3; Path=/"]);
    // The path form still reaches the same channel.
    let resp = client()
        .get(w.url("/relay/alpha/id/9"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "response for 9");
}

#[tokio::test]
async fn bridge_killed_and_restarted_mid_run() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let mut bridge = Bridge::start(&w, &target.url(), None, &[]).await.unwrap();
    let http = client();

    // Callers whose requests take a while at the target, so some are in the bridge when it dies.
    let calls: Vec<_> = (0..30)
        .map(|i| {
            let http = http.clone();
            let url = w.url(&format!("/proxy/slow?ms={}", 300 + i * 50));
            tokio::spawn(async move {
                let r = http.get(&url).send().await.unwrap();
                (i, r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    bridge.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bridge = Bridge::start(&w, &target.url(), None, &[]).await.unwrap();

    let mut answered = 0;
    for call in calls {
        let (i, status, text) = call.await.unwrap();
        if status == 200 {
            assert_eq!(text, format!("slow {} done", 300 + i * 50), "caller {i}");
            answered += 1;
        } else {
            // A clean error: JSON with ok=false, never someone else's answer.
            assert!(matches!(status, 502 | 504), "caller {i}: {status} {text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["ok"], false);
        }
    }
    assert!(answered > 0, "bridge log:\n{}", bridge.log());
    // The restarted bridge serves new requests.
    let resp = http.get(w.url("/proxy/id/after")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "response for after");
}

#[tokio::test]
async fn named_channels_are_isolated_and_target_failures_are_502() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let http = client();
    let alpha = channel_token("alpha");

    let poll = |path: &str, token: &str| {
        http.get(w.url(path))
            .header("x-relay-token", token.to_owned())
            .send()
    };
    assert_eq!(
        poll("/relay/alpha/_poll", &alpha).await.unwrap().status(),
        200
    );
    for (path, token) in [
        ("/relay/beta/_poll", alpha.as_str()),
        ("/proxy/_poll", alpha.as_str()),
        ("/relay/alpha/_poll", TEST_RELAY_TOKEN),
        ("/relay/alpha/_poll", "wrong"),
    ] {
        let r = poll(path, token).await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(json_of(r).await["ok"], false);
    }
    let none = http.get(w.url("/proxy/_poll")).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let respond = http
        .post(w.url("/relay/beta/_respond"))
        .header("x-relay-token", alpha.clone())
        .json(&json!({"id": "x", "status": 200}))
        .send()
        .await
        .unwrap();
    assert_eq!(respond.status(), 401);

    // Waiting long-polls per channel are bounded: one too many is refused, not queued.
    let crowded = channel_token("crowded");
    let polls = (0..9).map(|_| {
        let http = http.clone();
        let url = w.url("/relay/crowded/_poll?wait=10");
        let token = crowded.clone();
        async move {
            let r = http
                .get(&url)
                .header("x-relay-token", token)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.headers().contains_key("retry-after"))
        }
    });
    let results = futures_util::future::join_all(polls).await;
    let refused = results.iter().filter(|(s, _)| *s == 429).count();
    assert!(refused >= 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|(s, ra)| *s == 200 || (*s == 429 && *ra)),
        "{results:?}"
    );

    // A bridge on "alpha" serves /relay/alpha/... and nothing else.
    let bridge = Bridge::start(&w, &target.url(), Some("alpha"), &[])
        .await
        .unwrap();
    let resp = http.get(w.url("/relay/alpha/id/7")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "bridge log:\n{}", bridge.log());
    assert_eq!(resp.text().await.unwrap(), "response for 7");

    // A bridge whose target is down answers 502 JSON.
    let dead = format!("http://127.0.0.1:{}", ccr_e2e::ports::free_port());
    let down = Bridge::start(&w, &dead, Some("down"), &[]).await.unwrap();
    let resp = http.get(w.url("/relay/down/x")).send().await.unwrap();
    assert_eq!(resp.status(), 502, "bridge log:\n{}", down.log());
    let body = json_of(resp).await;
    assert_eq!(body["ok"], false);
    assert!(body["error"].as_str().unwrap().contains("target"));
}

#[tokio::test]
async fn a_seed_protocol_client_still_works_and_sigterm_drains() {
    let w = Worker::start_default().await.unwrap();
    let http = client();

    // The seed's bridge: GET /proxy/_poll with x-token (no wait), then POST /proxy/_respond
    // with {id,status,body,content_type}.
    let caller = {
        let http = http.clone();
        let url = w.url("/proxy/echo?seed=1");
        tokio::spawn(async move {
            let r = http
                .post(&url)
                .header("content-type", "application/json")
                .body(r#"{"q":"hello"}"#)
                .send()
                .await
                .unwrap();
            let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
            (r.status().as_u16(), ct, r.text().await.unwrap())
        })
    };
    let batch = ccr_e2e::wait_for("the seed poll to see the request", CALL_TIMEOUT, || {
        let http = http.clone();
        let url = w.url("/proxy/_poll");
        async move {
            let r = http
                .get(&url)
                .header("x-token", TEST_RELAY_TOKEN)
                .send()
                .await
                .ok()?;
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.ok()?;
            let reqs = v["requests"].as_array()?.clone();
            (!reqs.is_empty()).then_some(reqs)
        }
    })
    .await
    .unwrap();
    assert_eq!(batch.len(), 1);
    let req = &batch[0];
    assert_eq!(req["method"], "POST");
    assert_eq!(req["path"], "/echo");
    assert_eq!(req["body"], r#"{"q":"hello"}"#);
    let resp = http
        .post(w.url("/proxy/_respond"))
        .header("x-token", TEST_RELAY_TOKEN)
        .json(
            &json!({"id": req["id"], "status": 200, "body": "{\"m\":\"hi\"}",
                      "content_type": "application/json"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, ct, text) = caller.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(ct, "application/json");
    assert_eq!(text, r#"{"m":"hi"}"#);

    // SIGTERM: the bridge finishes the request it holds, then exits 0.
    let target = Target::start().await;
    let mut bridge = Bridge::start(&w, &target.url(), None, &[]).await.unwrap();
    let slow = {
        let http = http.clone();
        let url = w.url("/proxy/slow?ms=3000");
        tokio::spawn(async move {
            let r = http.get(&url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    ccr_e2e::wait_for("the bridge to take the slow request", CALL_TIMEOUT, || {
        let log = bridge.log();
        async move { log.contains("forwarding").then_some(()) }
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}; bridge log:\n{}\nworker log:\n{}",
            bridge.log(),
            tail(&w.log())
        )
    });
    let exit = bridge.terminate().await.unwrap();
    assert!(exit.success(), "exit {exit:?}; log:\n{}", bridge.log());
    assert_eq!(slow.await.unwrap(), (200, "slow 3000 done".to_string()));
}

fn tail(text: &str) -> String {
    ccr_e2e::worker::tail(text, 30)
}

#[tokio::test]
async fn public_key_and_queue_limit() {
    let opts = ccr_e2e::worker::WorkerOptions::default().secret("RELAY_PUBLIC_KEY", "public-key-1");
    let w = Worker::start(opts).await.unwrap();
    let target = Target::start().await;
    let bridge = Bridge::start(&w, &target.url(), None, &[]).await.unwrap();
    let http = client();

    // With RELAY_PUBLIC_KEY set, public calls need it (header or query parameter, which is
    // not forwarded); the bridge's routes still take only the token.
    let none = http.get(w.url("/proxy/echo")).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(json_of(none).await["ok"], false);
    let wrong = http
        .get(w.url("/proxy/echo"))
        .header("x-relay-key", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let by_header = http
        .get(w.url("/proxy/echo?a=1"))
        .header("x-relay-key", "public-key-1")
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), 200, "bridge log:\n{}", bridge.log());
    assert_eq!(by_header.headers()["x-echo-query"], "a=1");
    let by_param = http
        .get(w.url("/proxy/echo?a=1&_relay_key=public-key-1&b=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_param.status(), 200);
    assert_eq!(by_param.headers()["x-echo-query"], "a=1&b=2");
    let result = http
        .get(w.url(&format!("/proxy/_result/{}", "0".repeat(32))))
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 401);

    // More callers than a channel queues: the extra ones get 503 with Retry-After at once;
    // the queued ones a 504 when no bridge takes them.
    let extra = 4;
    let calls = (0..ccr_queue_limit() + extra).map(|i| {
        let http = http.clone();
        let url = w.url(&format!("/relay/unserved/n/{i}"));
        async move {
            let r = http
                .get(&url)
                .header("x-relay-key", "public-key-1")
                .send()
                .await
                .unwrap();
            let retry_after = r.headers().get("retry-after").is_some();
            (r.status().as_u16(), retry_after)
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let busy = results.iter().filter(|(s, _)| *s == 503).count();
    let timed_out = results.iter().filter(|(s, _)| *s == 504).count();
    assert_eq!(busy, extra, "{results:?}");
    assert_eq!(timed_out, ccr_queue_limit(), "{results:?}");
    assert!(results.iter().filter(|(s, _)| *s == 503).all(|(_, ra)| *ra));
}

/// The Worker's per-channel queue bound (`router_worker::relay::MAX_QUEUED`).
fn ccr_queue_limit() -> usize {
    256
}

/// A plain-HTTP forward proxy (absolute-form requests) that records the paths it carried.
struct ForwardProxy {
    addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ForwardProxy {
    async fn start() -> ForwardProxy {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let upstream = reqwest::Client::builder().no_proxy().build().unwrap();
        let app = Router::new().fallback(move |req: Request| {
            let record = record.clone();
            let upstream = upstream.clone();
            async move {
                let uri = req.uri().clone();
                if uri.scheme().is_none() {
                    return (StatusCode::BAD_REQUEST, "not a proxy request").into_response();
                }
                record.lock().unwrap().push(
                    uri.path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                );
                let method = req.method().clone();
                let headers = req.headers().clone();
                let body = axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024)
                    .await
                    .unwrap_or_default();
                let sent = upstream
                    .request(method, uri.to_string())
                    .headers(headers)
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) => {
                        let status = r.status();
                        let headers = r.headers().clone();
                        let bytes = r.bytes().await.unwrap_or_default();
                        let mut resp = Response::new(Body::from(bytes));
                        *resp.status_mut() = status;
                        for (k, v) in &headers {
                            if k != "transfer-encoding" && k != "content-length" {
                                resp.headers_mut().append(k, v.clone());
                            }
                        }
                        resp
                    }
                    Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
                }
            }
        });
        let (addr, task) = ccr_e2e::ports::serve_loopback(app).await;
        ForwardProxy { addr, seen, task }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn the_bridge_reaches_the_relay_through_the_environment_proxy() {
    let w = Worker::start_default().await.unwrap();
    let target = Target::start().await;
    let proxy = ForwardProxy::start().await;
    let proxy_url = format!("http://{}", proxy.addr);
    // The relay URL is http here, so HTTP_PROXY applies (HTTPS_PROXY for an https relay, by
    // the same mechanism); the local target is never proxied.
    let bridge = Bridge::start_with_env(
        &w,
        &target.url(),
        None,
        // `auto`: with a proxy configured for the relay, the bridge long-polls through it.
        &["--transport", "auto"],
        &[("HTTP_PROXY", proxy_url.as_str()), ("NO_PROXY", "")],
    )
    .await
    .unwrap();
    let resp = client().get(w.url("/proxy/id/p")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "bridge log:\n{}", bridge.log());
    assert_eq!(resp.text().await.unwrap(), "response for p");
    let seen = proxy.seen();
    assert!(
        seen.iter().any(|p| p.starts_with("/proxy/_poll")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|p| p == "/proxy/_respond"), "{seen:?}");
    assert!(!seen.iter().any(|p| p.starts_with("/id/")), "{seen:?}");
}

#[tokio::test]
async fn bad_bridge_settings_exit_2_with_the_reason() {
    let bin = tokio::task::spawn_blocking(ccr_e2e::bins::relay_bridge)
        .await
        .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(&bin)
            .args(args)
            .env_remove("RELAY_URL")
            .env_remove("RELAY_TOKEN")
            .env_remove("RELAY_CHANNEL")
            .output()
            .unwrap()
    };
    let bad_channel = run(&[
        "--relay-url",
        "http://127.0.0.1:9",
        "--token",
        "t",
        "--channel",
        "Not Valid",
    ]);
    assert_eq!(bad_channel.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad_channel.stderr);
    assert!(stderr.contains("--channel"), "{stderr}");
    // The token is required.
    let no_token = run(&["--relay-url", "http://127.0.0.1:9"]);
    assert_eq!(no_token.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("--token"));
}
