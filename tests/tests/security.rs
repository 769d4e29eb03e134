//! The security matrix: every authenticated route and the socket × every kind of credential
//! → the expected status, in one table. Plus: webhook secrets, /cmd tokens across chats, and
//! no secret value in any log the processes wrote.

use std::time::Duration;

use ccr_e2e::socket::TestSocket;
use ccr_e2e::telegram::Update;
use ccr_e2e::worker::{
    channel_token, machine_key, start_with_bot, Worker, WorkerOptions, TEST_API_KEY,
    TEST_BOT_TOKEN, TEST_RELAY_TOKEN, TEST_WEBHOOK_SECRET,
};
use serde_json::{json, Value};

const CHAT: i64 = 4242;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cred {
    None,
    Wrong,
    OtherMachine,
    ThisMachine,
    Admin,
}

const CREDS: [Cred; 5] = [
    Cred::None,
    Cred::Wrong,
    Cred::OtherMachine,
    Cred::ThisMachine,
    Cred::Admin,
];

/// (key, machine header) a caller acting for machine `devbox` presents.
fn presented(c: Cred) -> (Option<String>, Option<&'static str>) {
    match c {
        Cred::None => (None, None),
        Cred::Wrong => (Some("not-the-key".into()), Some("devbox")),
        // laptop's key, used to act for devbox.
        Cred::OtherMachine => (Some(machine_key("laptop")), Some("devbox")),
        Cred::ThisMachine => (Some(machine_key("devbox")), Some("devbox")),
        Cred::Admin => (Some(TEST_API_KEY.into()), None),
    }
}

#[tokio::test]
async fn credential_matrix() {
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    // A photo sent to s-dev (its command stays queued: no agent takes it), for /files.
    w.register("s-dev", "devbox", None).await.unwrap();
    let note = w.notify("s-dev", "n").await.unwrap().message_id;
    bot.add_file("mx-photo", "photos/mx.jpg", b"jpeg bytes".to_vec());
    let photo = Update::message(900, CHAT)
        .photo_sizes(&[("mx-photo", 10, 1, 1)])
        .reply_to(note);
    assert_eq!(w.send_update(&photo).await.unwrap().status(), 200);

    // (route, method, body, expected status per credential in CREDS order)
    let table: Vec<(&str, reqwest::Method, Option<Value>, [u16; 5])> = vec![
        (
            "/sessions",
            reqwest::Method::GET,
            None,
            [401, 401, 401, 200, 200],
        ),
        (
            "/sessions/register",
            reqwest::Method::POST,
            Some(json!({"sessionId": "s-dev", "machineId": "devbox"})),
            [401, 401, 401, 200, 200],
        ),
        (
            "/notifications/send",
            reqwest::Method::POST,
            Some(json!({"sessionId": "s-dev", "text": "hello"})),
            [401, 401, 401, 200, 200],
        ),
        (
            "/files/mx-photo",
            reqwest::Method::GET,
            None,
            [401, 401, 401, 200, 200],
        ),
        (
            "/sessions/unregister",
            reqwest::Method::POST,
            Some(json!({"sessionId": "s-dev"})),
            [401, 401, 401, 200, 200],
        ),
    ];
    let mut report = vec![];
    let mut wrong = vec![];
    for (path, method, body, want) in &table {
        for (i, cred) in CREDS.iter().enumerate() {
            // Each cell starts from the same state: s-dev registered to devbox.
            w.register("s-dev", "devbox", None).await.unwrap();
            let (key, machine) = presented(*cred);
            let mut req = w.api_request(method.clone(), path, key.as_deref(), machine);
            if let Some(b) = body {
                req = req.json(b);
            }
            let got = req.send().await.unwrap().status().as_u16();
            report.push(format!("{path:22} {cred:?}: {got}"));
            if got != want[i] {
                wrong.push(format!("{path} with {cred:?}: got {got}, want {}", want[i]));
            }
        }
    }
    // The socket for devbox.
    let socket_want = [401, 401, 401, 101, 101];
    for (i, cred) in CREDS.iter().enumerate() {
        let (key, _) = presented(*cred);
        let result = match &key {
            Some(k) => w.socket("devbox", k).await,
            None => TestSocket::connect_with(&w.ws_url(""), "devbox", None).await,
        };
        let got = match result {
            Ok(s) => {
                s.close().await;
                101
            }
            Err(r) => r.status,
        };
        report.push(format!("{:22} {cred:?}: {got}", "/ws?machineId=devbox"));
        if got != socket_want[i] {
            wrong.push(format!(
                "/ws with {cred:?}: got {got}, want {}",
                socket_want[i]
            ));
        }
    }
    println!("{}", report.join("\n"));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // A machine key may not act for another machine's session even naming its own machine.
    w.register("s-dev", "devbox", None).await.unwrap();
    let laptop = machine_key("laptop");
    let cross = w
        .api_request(
            reqwest::Method::POST,
            "/notifications/send",
            Some(&laptop),
            Some("laptop"),
        )
        .json(&json!({"sessionId": "s-dev", "text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);

    // Webhook: right header + wrong path, wrong header + right path, both right.
    let update = Update::message(1, CHAT).text("/help").json();
    for (path, header, want) in [
        ("wrong", TEST_WEBHOOK_SECRET, 401),
        (TEST_WEBHOOK_SECRET, "wrong", 401),
        (TEST_WEBHOOK_SECRET, TEST_WEBHOOK_SECRET, 200),
    ] {
        let got = w
            .webhook_post(path, Some(header))
            .json(&update)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(got, want, "path {path} header {header}");
    }

    // No secret value in anything the Worker printed during the suite. One exception, by
    // design and asserted as such: wrangler's own access log prints request paths, and the
    // webhook's path carries TELEGRAM_WEBHOOK_SECRET (the route is `/webhook/telegram/{secret}`).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = w.log();
    assert!(
        log.contains("[wrangler:info]"),
        "the access log was captured"
    );
    let access_line = |l: &str| l.starts_with("[wrangler:info] POST /webhook/telegram/");
    for secret in [
        TEST_API_KEY,
        TEST_BOT_TOKEN,
        TEST_WEBHOOK_SECRET,
        TEST_RELAY_TOKEN,
        &machine_key("devbox"),
        &machine_key("laptop"),
    ] {
        let leaks: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(secret) && !(secret == TEST_WEBHOOK_SECRET && access_line(l)))
            .collect();
        assert!(
            leaks.is_empty(),
            "a secret appears in the Worker's log ({} chars long) on these lines:\n{}",
            secret.len(),
            leaks.join("\n").replace(secret, "<SECRET>")
        );
    }
}

/// The relay's bridge routes × {none, wrong, another channel's token, the admin API key,
/// the channel's own token}: only the channel's own token opens its queue.
#[tokio::test]
async fn relay_credential_matrix() {
    let w = Worker::start_default().await.unwrap();
    let creds: [(&str, Option<String>); 5] = [
        ("none", None),
        ("wrong", Some("not-a-token".into())),
        ("other channel", Some(channel_token("other"))),
        ("admin API key", Some(TEST_API_KEY.into())),
        ("own", None), // filled per route below
    ];
    // (route, method, the route's own token, status with the own token)
    let routes = [
        (
            "/proxy/_poll?wait=0",
            reqwest::Method::GET,
            TEST_RELAY_TOKEN.to_owned(),
            200,
        ),
        (
            "/proxy/_respond",
            reqwest::Method::POST,
            TEST_RELAY_TOKEN.to_owned(),
            404,
        ),
        (
            "/relay/team/_poll?wait=0",
            reqwest::Method::GET,
            channel_token("team"),
            200,
        ),
        (
            "/relay/team/_respond",
            reqwest::Method::POST,
            channel_token("team"),
            404,
        ),
    ];
    let mut wrong = vec![];
    for (path, method, own, own_status) in &routes {
        for (name, token) in &creds {
            let token = if *name == "own" {
                Some(own.clone())
            } else {
                token.clone()
            };
            let mut req = w.http().request(method.clone(), w.url(path));
            if let Some(t) = &token {
                req = req.header("x-relay-token", t);
            }
            if *method == reqwest::Method::POST {
                req = req.json(&json!({"id": "no-such-request", "status": 200}));
            }
            let got = req.send().await.unwrap().status().as_u16();
            let want = if *name == "own" { *own_status } else { 401 };
            println!("{path:28} {name:14}: {got}");
            if got != want {
                wrong.push(format!("{path} with {name}: got {got}, want {want}"));
            }
        }
    }
    // The default channel's token does not open a named channel, and the seed's x-token
    // header works like X-Relay-Token.
    let master_on_named = w
        .http()
        .get(w.url("/relay/team/_poll?wait=0"))
        .header("x-relay-token", TEST_RELAY_TOKEN)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(master_on_named, 401);
    let seed_header = w
        .http()
        .get(w.url("/proxy/_poll?wait=0"))
        .header("x-token", TEST_RELAY_TOKEN)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(seed_header, 200);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let log = w.log();
    for secret in [
        TEST_RELAY_TOKEN,
        &channel_token("team"),
        &channel_token("other"),
    ] {
        assert!(
            !log.contains(secret),
            "a relay token appears in the Worker's log"
        );
    }
}
