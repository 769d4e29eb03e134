//! The foundation's end-to-end checks: the real Worker on workerd answers real HTTP, guards
//! its API with the key, and keeps Durable Object state across a restart.

use ccr_e2e::json_of;
use ccr_e2e::telegram::{BotApi, Fault};
use ccr_e2e::tmux::Tmux;
use ccr_e2e::worker::{Worker, TEST_API_KEY, TEST_BOT_TOKEN};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn health_answers_ok() {
    let w = Worker::start_default().await.unwrap();
    let resp = w.http().get(w.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");
    // Unknown routes and wrong methods get JSON errors, not HTML or a hang.
    let resp = w.http().get(w.url("/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(json_of(resp).await["ok"], false);
    let resp = w.http().post(w.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert!(json_of(resp).await["error"]
        .as_str()
        .unwrap()
        .contains("GET"));
}

#[tokio::test]
async fn sessions_need_the_api_key() {
    let w = Worker::start_default().await.unwrap();
    let url = w.url("/sessions");

    let none = w.http().get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let body = json_of(none).await;
    assert_eq!(body["ok"], false);
    assert!(body["error"].as_str().unwrap().contains("missing"));

    let wrong = w
        .http()
        .get(&url)
        .header("X-API-Key", "wrong-key")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(json_of(wrong).await["error"], "invalid API key");

    let wrong_bearer = w
        .http()
        .get(&url)
        .bearer_auth("wrong-key")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_bearer.status(), 401);

    for req in [
        w.http().get(&url).header("X-API-Key", TEST_API_KEY),
        w.http().get(&url).bearer_auth(TEST_API_KEY),
    ] {
        let ok = req.send().await.unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(json_of(ok).await, json!({"ok": true, "sessions": []}));
    }
}

#[tokio::test]
async fn state_survives_a_worker_restart() {
    let mut w = Worker::start_default().await.unwrap();
    w.register("sess-1", "devbox", Some("api")).await.unwrap();

    w.restart().await.unwrap();

    let body = w.sessions().await.unwrap();
    let sessions = body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{body}");
    assert_eq!(sessions[0]["sessionId"], "sess-1");
    assert_eq!(sessions[0]["machineId"], "devbox");
    assert_eq!(sessions[0]["label"], "api");
    assert_eq!(sessions[0]["online"], false);
}

#[tokio::test]
async fn bad_registrations_are_refused_and_change_nothing() {
    let w = Worker::start_default().await.unwrap();
    let post = |body: String| {
        w.admin(Method::POST, "/sessions/register")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases = [
        ("", "empty"),
        ("{", "invalid JSON"),
        (r#"{"sessionId":"s"}"#, "machineId"),
        (r#"{"sessionId":"s","machineId":"dev box"}"#, "machineId"),
        (r#"{"sessionId":"","machineId":"m"}"#, "sessionId"),
        (
            r#"{"sessionId":"s","machineId":"m","label":7}"#,
            "invalid JSON",
        ),
        (r#"{"sessionId":"s","machineId":"m","extra":1}"#, "extra"),
    ];
    for (body, needle) in cases {
        let resp = post(body.to_owned()).await.unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let err = json_of(resp).await;
        assert!(
            err["error"].as_str().unwrap().contains(needle),
            "{body}: {err}"
        );
    }
    assert_eq!(w.sessions().await.unwrap()["sessions"], json!([]));
}

/// The Bot API stand-in answers like Telegram, records calls and fails on demand.
#[tokio::test]
async fn bot_api_stand_in_behaves_like_telegram() {
    let bot = BotApi::start(TEST_BOT_TOKEN).await.unwrap();
    let http = reqwest::Client::new();
    let url = |m: &str| format!("{}/bot{}/{m}", bot.base_url(), TEST_BOT_TOKEN);
    let first = json_of(
        http.post(url("sendMessage"))
            .json(&json!({"chat_id": 42, "text": "hi"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let second = json_of(
        http.post(url("sendMessage"))
            .json(&json!({"chat_id": 42, "text": "again"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(first["ok"], true);
    assert!(second["result"]["message_id"].as_i64() > first["result"]["message_id"].as_i64());

    bot.fail_next("sendMessage", Fault::TooManyRequests { retry_after: 3 });
    let resp = http
        .post(url("sendMessage"))
        .json(&json!({"chat_id": 42, "text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(json_of(resp).await["parameters"]["retry_after"], 3);

    bot.fail_next(
        "sendMessage",
        Fault::BadRequest("Bad Request: chat not found".into()),
    );
    let resp = http
        .post(url("sendMessage"))
        .json(&json!({"chat_id": 1, "text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        json_of(resp).await["description"],
        "Bad Request: chat not found"
    );

    let resp = http
        .post(format!("{}/botWRONG/getMe", bot.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let calls = bot.calls_of("sendMessage");
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[1].params["text"], "again");
}

/// The tmux fixture's pane records each line typed into it, byte for byte.
#[tokio::test]
async fn tmux_pane_records_typed_lines() {
    let t = Tmux::start().unwrap();
    for text in ["hello world", r"$(echo no) \n 'quoted'"] {
        t.tmux(&["send-keys", "-t", &t.pane_id, "-l", text])
            .unwrap();
        t.tmux(&["send-keys", "-t", &t.pane_id, "Enter"]).unwrap();
    }
    let lines = t.wait_for_lines(2, Duration::from_secs(10)).await.unwrap();
    assert_eq!(lines, vec!["hello world", r"$(echo no) \n 'quoted'"]);
    assert!(t.socket_path.exists());
}
