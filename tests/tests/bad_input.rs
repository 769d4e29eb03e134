//! Bad input, table-driven: every route and the socket get malformed, mistyped, missing,
//! extra, empty, oversized, forged and replayed input. Each case must get its 4xx with a JSON
//! error (or a clean socket close code), never a 5xx or a hang, and leave stored state as it
//! was. After the table the Worker still answers and the RouterDO kept its in-memory state.

use std::time::Duration;

use ccr_e2e::socket::{Event, TestSocket};
use ccr_e2e::telegram::Update;
use ccr_e2e::worker::{
    start_with_bot, Worker, WorkerOptions, TEST_API_KEY, TEST_RELAY_TOKEN, TEST_WEBHOOK_SECRET,
};
use ccr_protocol::socket::{SocketMessage, PING_FRAME};
use reqwest::Method;
use serde_json::{json, Value};

const CHAT: i64 = 4242;
const T: Duration = Duration::from_secs(20);

/// Where a case's request goes.
enum Target {
    /// `method path` on the Worker.
    Route(Method, String),
    /// The Telegram webhook, with this secret in the path and this secret header (if any).
    Webhook {
        path_secret: String,
        header: Option<String>,
    },
}

/// One request and the status it must get.
struct Case {
    name: &'static str,
    target: Target,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
}

fn api(
    name: &'static str,
    method: Method,
    path: &str,
    body: impl Into<Vec<u8>>,
    status: u16,
) -> Case {
    Case {
        name,
        target: Target::Route(method, path.into()),
        headers: vec![
            ("x-api-key", TEST_API_KEY.into()),
            ("content-type", "application/json".into()),
        ],
        body: body.into(),
        status,
    }
}

fn hook(
    name: &'static str,
    path_secret: &str,
    header: Option<&str>,
    body: impl Into<Vec<u8>>,
    status: u16,
) -> Case {
    Case {
        name,
        target: Target::Webhook {
            path_secret: path_secret.into(),
            header: header.map(str::to_owned),
        },
        headers: vec![("content-type", "application/json".to_owned())],
        body: body.into(),
        status,
    }
}

fn relay(
    name: &'static str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: impl Into<Vec<u8>>,
    status: u16,
) -> Case {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(t) = token {
        headers.push(("x-relay-token", t.to_owned()));
    }
    Case {
        name,
        target: Target::Route(method, path.into()),
        headers,
        body: body.into(),
        status,
    }
}

fn reg(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn cases() -> Vec<Case> {
    let long = |n: usize| "x".repeat(n);
    let p = Method::POST;
    let g = Method::GET;
    let r = "/sessions/register";
    let u = "/sessions/unregister";
    let n = "/notifications/send";
    let s = TEST_WEBHOOK_SECRET;
    vec![
        // /sessions/register
        api("register: empty body", p.clone(), r, "", 400),
        api("register: truncated JSON", p.clone(), r, "{", 400),
        api("register: array", p.clone(), r, "[]", 400),
        api("register: null", p.clone(), r, "null", 400),
        api("register: number", p.clone(), r, "123", 400),
        api("register: string", p.clone(), r, "\"s\"", 400),
        api(
            "register: sessionId number",
            p.clone(),
            r,
            reg(json!({"sessionId": 1, "machineId": "m"})),
            400,
        ),
        api(
            "register: machineId null",
            p.clone(),
            r,
            reg(json!({"sessionId": "s", "machineId": null})),
            400,
        ),
        api(
            "register: missing sessionId",
            p.clone(),
            r,
            reg(json!({"machineId": "m"})),
            400,
        ),
        api(
            "register: missing machineId",
            p.clone(),
            r,
            reg(json!({"sessionId": "s"})),
            400,
        ),
        api(
            "register: extra field",
            p.clone(),
            r,
            reg(json!({"sessionId": "s", "machineId": "m", "admin": true})),
            400,
        ),
        api(
            "register: machineId with space",
            p.clone(),
            r,
            reg(json!({"sessionId": "s", "machineId": "dev box"})),
            400,
        ),
        api(
            "register: machineId 65 chars",
            p.clone(),
            r,
            reg(json!({"sessionId": "s", "machineId": long(65)})),
            400,
        ),
        api(
            "register: machineId non-ASCII",
            p.clone(),
            r,
            reg(json!({"sessionId": "s", "machineId": "dévbox"})),
            400,
        ),
        api(
            "register: machineId path",
            p.clone(),
            r,
            reg(json!({"sessionId": "s", "machineId": "../etc"})),
            400,
        ),
        api(
            "register: sessionId empty",
            p.clone(),
            r,
            reg(json!({"sessionId": "", "machineId": "m"})),
            400,
        ),
        api(
            "register: sessionId 129 chars",
            p.clone(),
            r,
            reg(json!({"sessionId": "é".repeat(129), "machineId": "m"})),
            400,
        ),
        api(
            "register: sessionId NUL",
            p.clone(),
            r,
            reg(json!({"sessionId": "a\u{0}b", "machineId": "m"})),
            400,
        ),
        api(
            "register: sessionId newline",
            p.clone(),
            r,
            reg(json!({"sessionId": "a\nb", "machineId": "m"})),
            400,
        ),
        api(
            "register: label 101 chars",
            p.clone(),
            r,
            reg(json!({"sessionId": "s", "machineId": "m", "label": long(101)})),
            400,
        ),
        api(
            "register: label escape sequence",
            p.clone(),
            r,
            reg(json!({"sessionId": "s", "machineId": "m", "label": "\u{1b}[31mred"})),
            400,
        ),
        api(
            "register: label number",
            p.clone(),
            r,
            reg(json!({"sessionId": "s", "machineId": "m", "label": 5})),
            400,
        ),
        api(
            "register: invalid UTF-8",
            p.clone(),
            r,
            vec![0xff, 0xfe, b'{'],
            400,
        ),
        api(
            "register: oversized body",
            p.clone(),
            r,
            format!("{{\"sessionId\":\"{}\"}}", long(300 * 1024)),
            413,
        ),
        api(
            "register: deeply nested",
            p.clone(),
            r,
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
            400,
        ),
        // /sessions/unregister
        api("unregister: empty", p.clone(), u, "", 400),
        api("unregister: missing sessionId", p.clone(), u, "{}", 400),
        api(
            "unregister: wrong type",
            p.clone(),
            u,
            reg(json!({"sessionId": ["s"]})),
            400,
        ),
        api(
            "unregister: extra field",
            p.clone(),
            u,
            reg(json!({"sessionId": "keep", "force": 1})),
            400,
        ),
        api(
            "unregister: unknown session",
            p.clone(),
            u,
            reg(json!({"sessionId": "nope"})),
            404,
        ),
        api(
            "unregister: control chars",
            p.clone(),
            u,
            reg(json!({"sessionId": "\u{7}"})),
            400,
        ),
        // /notifications/send
        api(
            "notify: missing text",
            p.clone(),
            n,
            reg(json!({"sessionId": "keep"})),
            400,
        ),
        api(
            "notify: empty text",
            p.clone(),
            n,
            reg(json!({"sessionId": "keep", "text": ""})),
            400,
        ),
        api(
            "notify: text number",
            p.clone(),
            n,
            reg(json!({"sessionId": "keep", "text": 1})),
            400,
        ),
        api(
            "notify: chatId not numeric",
            p.clone(),
            n,
            reg(json!({"sessionId": "keep", "text": "t", "chatId": "abc"})),
            400,
        ),
        api(
            "notify: chatId float",
            p.clone(),
            n,
            reg(json!({"sessionId": "keep", "text": "t", "chatId": 1.5})),
            400,
        ),
        api(
            "notify: chat not allowed",
            p.clone(),
            n,
            reg(json!({"sessionId": "keep", "text": "t", "chatId": 1})),
            403,
        ),
        api(
            "notify: buttons string",
            p.clone(),
            n,
            reg(json!({"sessionId": "keep", "text": "t", "buttons": "maybe"})),
            400,
        ),
        api(
            "notify: unknown button",
            p.clone(),
            n,
            reg(json!({"sessionId": "keep", "text": "t", "buttons": ["rm"]})),
            400,
        ),
        api(
            "notify: replyMarkup not object",
            p.clone(),
            n,
            reg(json!({"sessionId": "keep", "text": "t", "replyMarkup": "x"})),
            400,
        ),
        api(
            "notify: unknown session",
            p.clone(),
            n,
            reg(json!({"sessionId": "nope", "text": "t"})),
            404,
        ),
        api(
            "notify: huge Unicode text",
            p.clone(),
            n,
            reg(json!({"sessionId": "keep", "text": "👋".repeat(20_000)})),
            400,
        ),
        api(
            "notify: extra field",
            p.clone(),
            n,
            reg(json!({"sessionId": "keep", "text": "t", "parseMode": "HTML"})),
            400,
        ),
        // Credentials and methods
        Case {
            name: "sessions: no key",
            target: Target::Route(g.clone(), "/sessions".into()),
            headers: vec![],
            body: vec![],
            status: 401,
        },
        Case {
            name: "sessions: wrong key",
            target: Target::Route(g.clone(), "/sessions".into()),
            headers: vec![("x-api-key", "wrong".into())],
            body: vec![],
            status: 401,
        },
        Case {
            name: "sessions: empty bearer",
            target: Target::Route(g.clone(), "/sessions".into()),
            headers: vec![("authorization", "Bearer ".into())],
            body: vec![],
            status: 401,
        },
        Case {
            name: "sessions: basic auth",
            target: Target::Route(g.clone(), "/sessions".into()),
            headers: vec![("authorization", format!("Basic {TEST_API_KEY}"))],
            body: vec![],
            status: 401,
        },
        Case {
            name: "sessions: key with control chars",
            target: Target::Route(g.clone(), "/sessions".into()),
            headers: vec![("x-api-key", format!("{TEST_API_KEY}\t"))],
            body: vec![],
            status: 200,
        },
        api("sessions: PUT", Method::PUT, "/sessions", "", 405),
        api("register: GET", g.clone(), r, "", 405),
        api("notify: DELETE", Method::DELETE, n, "", 405),
        api("unknown route", g.clone(), "/admin", "", 404),
        api(
            "unknown nested route",
            p.clone(),
            "/sessions/register/extra",
            "{}",
            404,
        ),
        // Webhook
        hook(
            "webhook: no header",
            s,
            None,
            reg(json!({"update_id": 1})),
            401,
        ),
        hook(
            "webhook: wrong header",
            s,
            Some("wrong"),
            reg(json!({"update_id": 1})),
            401,
        ),
        hook(
            "webhook: wrong path secret",
            "wrong",
            Some(s),
            reg(json!({"update_id": 1})),
            401,
        ),
        hook(
            "webhook: empty path secret",
            "",
            Some(s),
            reg(json!({"update_id": 1})),
            404,
        ),
        hook("webhook: invalid JSON", s, Some(s), "{", 400),
        hook(
            "webhook: no update_id",
            s,
            Some(s),
            reg(json!({"message": {}})),
            400,
        ),
        hook(
            "webhook: update_id string",
            s,
            Some(s),
            reg(json!({"update_id": "1"})),
            400,
        ),
        hook(
            "webhook: message without chat",
            s,
            Some(s),
            reg(json!({"update_id": 2, "message": {"message_id": 1}})),
            400,
        ),
        hook("webhook: empty body", s, Some(s), "", 400),
        // The socket's HTTP side
        api("ws: no upgrade", g.clone(), "/ws?machineId=devbox", "", 426),
        api("ws: no machine id", g.clone(), "/ws", "", 400),
        api(
            "ws: bad machine id",
            g.clone(),
            "/ws?machineId=a%20b",
            "",
            400,
        ),
        Case {
            name: "ws: no key",
            target: Target::Route(g.clone(), "/ws?machineId=devbox".into()),
            headers: vec![("upgrade", "websocket".into())],
            body: vec![],
            status: 401,
        },
        // The relay's bridge side
        relay(
            "poll: no token",
            g.clone(),
            "/proxy/_poll?wait=0",
            None,
            "",
            401,
        ),
        relay(
            "poll: wrong token",
            g.clone(),
            "/proxy/_poll?wait=0",
            Some("wrong"),
            "",
            401,
        ),
        relay(
            "poll: wait not a number",
            g.clone(),
            "/proxy/_poll?wait=abc",
            Some(TEST_RELAY_TOKEN),
            "",
            400,
        ),
        relay(
            "poll: POST",
            p.clone(),
            "/proxy/_poll",
            Some(TEST_RELAY_TOKEN),
            "",
            405,
        ),
        relay(
            "poll: another channel's token",
            g.clone(),
            "/relay/team/_poll?wait=0",
            Some(TEST_RELAY_TOKEN),
            "",
            401,
        ),
        relay(
            "poll: invalid channel",
            g.clone(),
            "/relay/Bad_Channel/_poll?wait=0",
            Some(TEST_RELAY_TOKEN),
            "",
            400,
        ),
        relay(
            "respond: no token",
            p.clone(),
            "/proxy/_respond",
            None,
            reg(json!({"id": "x", "status": 200})),
            401,
        ),
        relay(
            "respond: empty body",
            p.clone(),
            "/proxy/_respond",
            Some(TEST_RELAY_TOKEN),
            "",
            400,
        ),
        relay(
            "respond: invalid JSON",
            p.clone(),
            "/proxy/_respond",
            Some(TEST_RELAY_TOKEN),
            "{",
            400,
        ),
        relay(
            "respond: missing status",
            p.clone(),
            "/proxy/_respond",
            Some(TEST_RELAY_TOKEN),
            reg(json!({"id": "x"})),
            400,
        ),
        relay(
            "respond: status as a string",
            p.clone(),
            "/proxy/_respond",
            Some(TEST_RELAY_TOKEN),
            reg(json!({"id": "x", "status": "200"})),
            400,
        ),
        relay(
            "respond: bad base64",
            p.clone(),
            "/proxy/_respond",
            Some(TEST_RELAY_TOKEN),
            reg(json!({"id": "x", "status": 200, "bodyBase64": "%%%"})),
            400,
        ),
        relay(
            "respond: unknown id",
            p.clone(),
            "/proxy/_respond",
            Some(TEST_RELAY_TOKEN),
            reg(json!({"id": "no-such-request", "status": 200})),
            404,
        ),
        relay(
            "respond: batch of wrong types",
            p.clone(),
            "/proxy/_respond",
            Some(TEST_RELAY_TOKEN),
            reg(json!({"responses": [{"id": 1}]})),
            400,
        ),
        relay(
            "respond: GET",
            g.clone(),
            "/proxy/_respond",
            Some(TEST_RELAY_TOKEN),
            "",
            405,
        ),
        relay(
            "result: unknown id",
            g.clone(),
            "/proxy/_result/no-such-request",
            None,
            "",
            404,
        ),
        relay(
            "public: body over 10 MiB",
            p.clone(),
            "/proxy/upload",
            None,
            vec![b'x'; 10 * 1024 * 1024 + 1],
            413,
        ),
        // GET /files/{file_id}: the id is checked before anything is asked of Telegram.
        api("files: id with a dot", g.clone(), "/files/a.b", "", 400),
        api("files: encoded slash", g.clone(), "/files/a%2Fb", "", 400),
        api(
            "files: id over 256",
            g.clone(),
            &format!("/files/{}", long(257)),
            "",
            400,
        ),
        api(
            "files: id never sent",
            g.clone(),
            "/files/never-sent",
            "",
            404,
        ),
        api("files: POST", p.clone(), "/files/x", "", 405),
    ]
}

async fn sessions(w: &Worker) -> (Value, String) {
    let resp = w.admin(Method::GET, "/sessions").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let instance = resp
        .headers()
        .get("x-ccr-instance")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    (resp.json().await.unwrap(), instance)
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let (w, _bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    // Baseline state: one session with a notification, one update already seen.
    w.register("keep", "devbox", Some("api")).await.unwrap();
    let note_id = w.notify("keep", "baseline").await.unwrap().message_id;
    let mut sock = w.socket("devbox", TEST_API_KEY).await.unwrap();
    let (before, instance) = sessions(&w).await;

    let table = cases();
    assert!(table.len() >= 50, "the table has {} cases", table.len());
    let mut failures = vec![];
    for case in &table {
        let req = match &case.target {
            Target::Route(method, path) => w.http().request(method.clone(), w.url(path)),
            Target::Webhook {
                path_secret,
                header,
            } => w.webhook_post(path_secret, header.as_deref()),
        };
        let mut req = req.timeout(Duration::from_secs(30));
        for (k, v) in &case.headers {
            req = req.header(*k, v);
        }
        let resp = match req.body(case.body.clone()).send().await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: no answer ({e})", case.name));
                continue;
            }
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if status != case.status {
            failures.push(format!(
                "{}: got {status}, want {} ({text})",
                case.name, case.status
            ));
            continue;
        }
        if status >= 400 {
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if body["ok"] != false || body["error"].as_str().is_none_or(|e| e.is_empty()) {
                failures.push(format!("{}: not a JSON error: {text}", case.name));
            }
        }
    }

    // Replayed update ids: a second delivery of a stored update is answered 200 and does nothing.
    let update = Update::reply(500, CHAT, note_id, "once");
    let post = || w.send_update(&update);
    assert_eq!(post().await.unwrap().status(), 200);
    let (id, _, cmd) = sock.next_command(T).await.unwrap();
    assert_eq!(cmd, "once");
    sock.send(&SocketMessage::Ack { command_id: id })
        .await
        .unwrap();
    let replay = post().await.unwrap();
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.json::<Value>().await.unwrap()["duplicate"], true);

    // Socket frames: unknown type, malformed, wrong-typed and binary frames are skipped; an
    // oversized frame closes that socket with 1009; a second socket's state is untouched.
    for frame in [
        r#"{"type":"hello"}"#,
        "{",
        r#"{"type":"ack","commandId":5}"#,
        r#"{"type":"commandResult","commandId":"nope","success":true}"#,
        r#"{"type":"ack","commandId":"unknown-id"}"#,
    ] {
        sock.send_text(frame).await.unwrap();
    }
    sock.send_text(PING_FRAME).await.unwrap();
    assert_eq!(sock.next(T).await.unwrap(), Event::Msg(SocketMessage::Pong));
    sock.send_text(&"x".repeat(65 * 1024)).await.unwrap();
    assert_eq!(sock.next(T).await.unwrap(), Event::Closed(1009));
    // Wrong subprotocols.
    for proto in ["ccr", "ccr, wrong", "other, key", ""] {
        let refused = TestSocket::connect_with(&w.ws_url(""), "devbox", Some(proto)).await;
        match refused {
            Err(r) if r.status == 401 => {}
            Err(r) => failures.push(format!(
                "ws subprotocol {proto:?}: got {} {}",
                r.status, r.body
            )),
            Ok(_) => failures.push(format!("ws subprotocol {proto:?}: accepted")),
        }
    }

    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );

    // Nothing changed, nothing was reset, and the Worker still answers.
    let (after, instance_after) = sessions(&w).await;
    assert_eq!(after["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(
        after["sessions"][0]["sessionId"],
        before["sessions"][0]["sessionId"]
    );
    assert_eq!(after["sessions"][0]["label"], "api");
    assert_eq!(
        instance_after, instance,
        "the RouterDO was reset (a panic?)"
    );
    let log = w.log();
    assert!(
        !log.contains("panicked"),
        "a panic in the Worker log:\n{log}"
    );
    let health = w.http().get(w.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}
