//! The router end to end: the real Worker on workerd, the Bot API stand-in, and a test
//! socket client playing the machine's side.

use std::time::Duration;

use ccr_e2e::socket::{Event, TestSocket};
use ccr_e2e::telegram::{BotApi, Fault, Update};
use ccr_e2e::wait_for;
use ccr_e2e::worker::{machine_key, start_with_bot, Worker, WorkerOptions, TEST_API_KEY};
use ccr_protocol::socket::{SocketMessage, PING_FRAME, PONG_FRAME};
use reqwest::Method;
use serde_json::{json, Value};

const CHAT: i64 = 4242;
const OTHER_CHAT: i64 = 5151;
const T: Duration = Duration::from_secs(20);

async fn start_with(opts: WorkerOptions) -> (Worker, BotApi) {
    start_with_bot(opts, &[CHAT, OTHER_CHAT]).await.unwrap()
}

async fn start() -> (Worker, BotApi) {
    start_with(WorkerOptions::default()).await
}

/// Posts `update` to the webhook; the status.
async fn post(w: &Worker, update: &Update) -> u16 {
    w.send_update(update).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn notification_reply_reaches_the_machine_and_ack_is_shown() {
    let (w, bot) = start().await;
    w.register("s1", "devbox", Some("api")).await.unwrap();
    let mut sock = w.socket("devbox", TEST_API_KEY).await.unwrap();
    assert_eq!(sock.protocol.as_deref(), Some("ccr"));

    let note = w.notify("s1", "Task done: <ok> & more").await.unwrap();
    let (msg_id, token) = (note.message_id, note.token);
    let sent = bot.calls_of("sendMessage");
    assert_eq!(sent.len(), 1);
    let p = &sent[0].params;
    assert_eq!(p["chat_id"], CHAT);
    assert_eq!(p["parse_mode"], "HTML");
    assert_eq!(p["text"], "<b>api</b>\nTask done: &lt;ok&gt; &amp; more");
    let buttons = p["reply_markup"]["inline_keyboard"][0].as_array().unwrap();
    assert_eq!(buttons.len(), 6);
    assert_eq!(buttons[0]["callback_data"], format!("cmd:{token}:continue"));

    assert_eq!(
        post(&w, &Update::reply(1, CHAT, msg_id, "run the tests")).await,
        200
    );
    let (cid, session, command) = sock.next_command(T).await.unwrap();
    assert_eq!(
        (session.as_str(), command.as_str()),
        ("s1", "run the tests")
    );

    sock.send(&SocketMessage::Ack {
        command_id: cid.clone(),
    })
    .await
    .unwrap();
    let reaction = bot.wait_call("setMessageReaction", T).await.unwrap();
    assert_eq!(reaction.params["message_id"], 10_001);
    assert_eq!(reaction.params["chat_id"], CHAT);

    // A failed injection is reported in the chat with its reason.
    sock.send(&SocketMessage::CommandResult {
        command_id: cid,
        success: false,
        error: Some("pane %3 is gone".into()),
    })
    .await
    .unwrap();
    bot.wait_message("pane %3 is gone", T).await.unwrap();

    // Keepalive: the exact ping frame gets the exact pong frame.
    sock.send_text(PING_FRAME).await.unwrap();
    assert_eq!(sock.next(T).await.unwrap(), Event::Msg(SocketMessage::Pong));
    let _ = PONG_FRAME;
}

#[tokio::test]
async fn offline_machine_gets_its_queue_on_connect_and_unacked_is_redelivered() {
    let (w, bot) = start().await;
    w.register("s1", "devbox", Some("api")).await.unwrap();
    let msg_id = w.notify("s1", "waiting").await.unwrap().message_id;
    for (i, text) in ["first", "second", "third"].iter().enumerate() {
        assert_eq!(
            post(&w, &Update::reply(10 + i as i64, CHAT, msg_id, text)).await,
            200
        );
    }
    bot.wait_message("devbox is offline", T).await.unwrap();

    let mut sock = w.socket("devbox", TEST_API_KEY).await.unwrap();
    let mut got = vec![];
    for _ in 0..3 {
        got.push(sock.next_command(T).await.unwrap());
    }
    let texts: Vec<&str> = got.iter().map(|g| g.2.as_str()).collect();
    assert_eq!(texts, vec!["first", "second", "third"], "oldest first");
    // Ack only the first; drop the connection without a close frame.
    sock.send(&SocketMessage::Ack {
        command_id: got[0].0.clone(),
    })
    .await
    .unwrap();
    bot.wait_call("setMessageReaction", T).await.unwrap();
    sock.abort();

    let mut again = w.socket("devbox", TEST_API_KEY).await.unwrap();
    let redelivered = [
        again.next_command(T).await.unwrap(),
        again.next_command(T).await.unwrap(),
    ];
    assert_eq!(
        redelivered[0].0, got[1].0,
        "same command id: the agent's inbox dedups"
    );
    assert_eq!(redelivered[1].2, "third");
    for r in &redelivered {
        again
            .send(&SocketMessage::Ack {
                command_id: r.0.clone(),
            })
            .await
            .unwrap();
    }
    again
        .expect_silence(Duration::from_millis(1500))
        .await
        .unwrap();
}

#[tokio::test]
async fn unacked_command_is_retried_on_the_open_socket() {
    let (w, _bot) = start().await;
    w.register("s1", "devbox", Some("api")).await.unwrap();
    let msg_id = w.notify("s1", "n").await.unwrap().message_id;
    let mut sock = w.socket("devbox", TEST_API_KEY).await.unwrap();
    post(&w, &Update::reply(20, CHAT, msg_id, "retry me")).await;
    let first = sock.next_command(T).await.unwrap();
    // No ack: the alarm sends it again after the backoff (1 s).
    let second = sock.next_command(T).await.unwrap();
    assert_eq!(first, second);
    sock.send(&SocketMessage::Ack {
        command_id: first.0,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_new_socket_replaces_the_old_one_with_4000() {
    let (w, _bot) = start().await;
    let mut old = w.socket("devbox", TEST_API_KEY).await.unwrap();
    let _new = w.socket("devbox", TEST_API_KEY).await.unwrap();
    let ev = old.next(T).await.unwrap();
    assert_eq!(ev, Event::Closed(4000));
}

#[tokio::test]
async fn pending_commands_survive_a_worker_restart() {
    let (mut w, _bot) = start().await;
    w.register("s1", "devbox", Some("api")).await.unwrap();
    let msg_id = w.notify("s1", "n").await.unwrap().message_id;
    post(&w, &Update::reply(30, CHAT, msg_id, "after restart")).await;
    w.restart().await.unwrap();
    let mut sock = w.socket("devbox", TEST_API_KEY).await.unwrap();
    let (_, _, command) = sock.next_command(T).await.unwrap();
    assert_eq!(command, "after restart");
}

#[tokio::test]
async fn replayed_update_never_makes_a_second_command() {
    let (w, _bot) = start().await;
    w.register("s1", "devbox", Some("api")).await.unwrap();
    let msg_id = w.notify("s1", "n").await.unwrap().message_id;
    let mut sock = w.socket("devbox", TEST_API_KEY).await.unwrap();
    let update = Update::reply(40, CHAT, msg_id, "once");
    assert_eq!(post(&w, &update).await, 200);
    let (cid, _, _) = sock.next_command(T).await.unwrap();
    sock.send(&SocketMessage::Ack { command_id: cid })
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(post(&w, &update).await, 200);
    }
    sock.expect_silence(Duration::from_millis(2000))
        .await
        .unwrap();
}

#[tokio::test]
async fn webhook_needs_both_secrets() {
    let (w, _bot) = start().await;
    w.register("s1", "devbox", Some("api")).await.unwrap();
    let msg_id = w.notify("s1", "n").await.unwrap().message_id;
    let update = Update::reply(50, CHAT, msg_id, "x");
    let secret = w.webhook_secret();
    let cases = [
        (secret, Some("wrong")),
        ("wrong", Some(secret)),
        (secret, None),
    ];
    for (path, header) in cases {
        let resp = w
            .webhook_post(path, header)
            .json(&update.json())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path} {header:?}");
    }
    // Nothing was touched: the same update_id is still new and queues a command.
    let mut sock = w.socket("devbox", TEST_API_KEY).await.unwrap();
    assert_eq!(post(&w, &update).await, 200);
    assert_eq!(sock.next_command(T).await.unwrap().2, "x");
}

#[tokio::test]
async fn cmd_tokens_buttons_and_bot_commands() {
    let (w, bot) = start().await;
    w.register("s1", "devbox", Some("api")).await.unwrap();
    let token = w.notify("s1", "n").await.unwrap().token;
    let mut sock = w.socket("devbox", TEST_API_KEY).await.unwrap();

    post(
        &w,
        &Update::message(60, CHAT).text(&format!("/cmd {token} git status")),
    )
    .await;
    let (cid, _, command) = sock.next_command(T).await.unwrap();
    assert_eq!(command, "git status");
    sock.send(&SocketMessage::Ack { command_id: cid })
        .await
        .unwrap();

    // The token was issued in CHAT: from another allowed chat it is refused.
    post(
        &w,
        &Update::message(61, OTHER_CHAT).text(&format!("/cmd {token} rm -rf /")),
    )
    .await;
    bot.wait_message("Unknown or expired token", T)
        .await
        .unwrap();

    let press = Update::callback(62, CHAT, "cbq-1", &format!("cmd:{token}:yes"))
        .message_id(101)
        .text("n");
    post(&w, &press).await;
    let (cid, _, command) = sock.next_command(T).await.unwrap();
    assert_eq!(command, "y");
    sock.send(&SocketMessage::Ack { command_id: cid })
        .await
        .unwrap();
    let answered = bot.wait_call("answerCallbackQuery", T).await.unwrap();
    assert_eq!(answered.params["callback_query_id"], "cbq-1");

    post(&w, &Update::message(63, CHAT).text("/start")).await;
    bot.wait_message(&format!("<code>{CHAT}</code>"), T)
        .await
        .unwrap();
    post(&w, &Update::message(64, CHAT).text("/sessions")).await;
    bot.wait_message("🟢 online", T).await.unwrap();

    // A photo that replies to nothing has no session (one that replies is a file command:
    // see the files suite).
    let photo = Update::message(65, CHAT).photo().caption("see this");
    post(&w, &photo).await;
    bot.wait_message("To send a file to a session", T)
        .await
        .unwrap();
    let edited = Update::message(66, CHAT).text("x").edited();
    post(&w, &edited).await;
    bot.wait_message("Edits are not sent", T).await.unwrap();
    post(&w, &Update::reply(67, CHAT, 999_999, "to nowhere")).await;
    bot.wait_message("don't know which session", T)
        .await
        .unwrap();
    // None of those produced a command.
    sock.expect_silence(Duration::from_millis(1500))
        .await
        .unwrap();
}

#[tokio::test]
async fn chats_outside_the_allow_list_are_ignored() {
    let (w, bot) = start().await;
    w.register("s1", "devbox", Some("api")).await.unwrap();
    let msg_id = w.notify("s1", "n").await.unwrap().message_id;
    let mut sock = w.socket("devbox", TEST_API_KEY).await.unwrap();
    let before = bot.calls().len();
    assert_eq!(
        post(&w, &Update::reply(70, 999, msg_id, "intruder")).await,
        200
    );
    sock.expect_silence(Duration::from_millis(1500))
        .await
        .unwrap();
    assert_eq!(bot.calls().len(), before, "no answer to a stranger");
    wait_for("the ignore logged", T, || async {
        w.log().contains("not allowed").then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn notifications_split_escape_retry_and_fail_clearly() {
    let (w, bot) = start().await;
    w.register("s1", "devbox", Some("ünï-label")).await.unwrap();

    // Long text: split under 4096, every part maps back to the session.
    let long = format!("{}\n{}", "<&*_ привет 👋 ".repeat(300), "end".repeat(500));
    let (s, b) = w
        .post_api(
            "/notifications/send",
            TEST_API_KEY,
            &json!({"sessionId": "s1", "text": long}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    let ids = b["messageIds"].as_array().unwrap();
    assert!(ids.len() >= 2, "{b}");
    let parts = bot.calls_of("sendMessage");
    let mut joined = String::new();
    for p in &parts {
        let t = p.params["text"].as_str().unwrap();
        assert!(t.encode_utf16().count() <= 4096);
        joined.push_str(t);
    }
    assert!(joined.starts_with("<b>ünï-label</b>\n&lt;&amp;*_ привет 👋 "));
    assert!(joined.ends_with("endendend"));
    assert!(
        parts.last().unwrap().params["reply_markup"].is_object(),
        "buttons on the last part"
    );
    // A reply to the second part routes too.
    let mut sock = w.socket("devbox", TEST_API_KEY).await.unwrap();
    post(
        &w,
        &Update::reply(80, CHAT, ids[1].as_i64().unwrap(), "from part two"),
    )
    .await;
    assert_eq!(sock.next_command(T).await.unwrap().2, "from part two");

    // 429 with retry_after is waited out.
    bot.fail_next("sendMessage", Fault::TooManyRequests { retry_after: 1 });
    let (s, b) = w
        .post_api(
            "/notifications/send",
            TEST_API_KEY,
            &json!({"sessionId": "s1", "text": "after 429", "buttons": false}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    let last = bot.calls_of("sendMessage").pop().unwrap();
    assert!(last.params.get("reply_markup").is_none());

    // Telegram's refusal is a 502 carrying its description.
    bot.fail_next(
        "sendMessage",
        Fault::BadRequest("Bad Request: chat not found".into()),
    );
    let (s, b) = w
        .post_api(
            "/notifications/send",
            TEST_API_KEY,
            &json!({"sessionId": "s1", "text": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(s, 502);
    assert!(
        b["error"].as_str().unwrap().contains("chat not found"),
        "{b}"
    );

    // A chat outside the allow-list, an unknown session, an empty text.
    let (s, _) = w
        .post_api(
            "/notifications/send",
            TEST_API_KEY,
            &json!({"sessionId": "s1", "text": "x", "chatId": 1}),
        )
        .await
        .unwrap();
    assert_eq!(s, 403);
    let (s, _) = w
        .post_api(
            "/notifications/send",
            TEST_API_KEY,
            &json!({"sessionId": "nope", "text": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(s, 404);
    let (s, _) = w
        .post_api(
            "/notifications/send",
            TEST_API_KEY,
            &json!({"sessionId": "s1", "text": "  "}),
        )
        .await
        .unwrap();
    assert_eq!(s, 400);
    // The original clients' raw replyMarkup passes through.
    let markup = json!({"inline_keyboard": [[{"text": "A", "callback_data": "x"}]]});
    let body = json!({"sessionId": "s1", "text": "x", "replyMarkup": markup, "chatId": OTHER_CHAT.to_string()});
    let (s, b) = w
        .post_api("/notifications/send", TEST_API_KEY, &body)
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    let last = bot.calls_of("sendMessage").pop().unwrap();
    assert_eq!(last.params["reply_markup"], markup);
    assert_eq!(last.params["chat_id"], OTHER_CHAT);
}

#[tokio::test]
async fn machine_keys_act_only_for_their_machine() {
    let (w, _bot) = start().await;
    let devbox = machine_key("devbox");
    let call_as = |path: &'static str, machine: &'static str, body: Value| {
        let req = w
            .api_request(Method::POST, path, Some(&devbox), Some(machine))
            .json(&body);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        call_as(
            "/sessions/register",
            "devbox",
            json!({"sessionId": "a", "machineId": "devbox"})
        )
        .await,
        200
    );
    // Claiming another machine with this key fails authentication; naming its own machine
    // but registering for another is forbidden.
    assert_eq!(
        call_as(
            "/sessions/register",
            "laptop",
            json!({"sessionId": "b", "machineId": "laptop"})
        )
        .await,
        401
    );
    assert_eq!(
        call_as(
            "/sessions/register",
            "devbox",
            json!({"sessionId": "b", "machineId": "laptop"})
        )
        .await,
        403
    );
    w.register("c", "laptop", Some("other")).await.unwrap();
    assert_eq!(
        call_as("/sessions/unregister", "devbox", json!({"sessionId": "c"})).await,
        403
    );
    assert_eq!(
        call_as(
            "/notifications/send",
            "devbox",
            json!({"sessionId": "c", "text": "x"})
        )
        .await,
        403
    );

    let mine = w
        .api_request(Method::GET, "/sessions", Some(&devbox), Some("devbox"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let ids: Vec<&str> = mine["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sessionId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["a"]);

    // The socket: own machine yes, another machine no, wrong key no, no subprotocol key no.
    assert!(w.socket("devbox", &devbox).await.is_ok());
    assert_eq!(w.socket("laptop", &devbox).await.err().unwrap().status, 401);
    assert_eq!(w.socket("devbox", "nope").await.err().unwrap().status, 401);
    assert_eq!(
        TestSocket::connect_with(&w.ws_url(""), "devbox", None)
            .await
            .err()
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        w.socket("bad%20id", TEST_API_KEY)
            .await
            .err()
            .unwrap()
            .status,
        400
    );
}

#[tokio::test]
async fn unknown_and_oversized_frames_are_refused_without_harm() {
    let (w, _bot) = start().await;
    let mut sock = w.socket("devbox", TEST_API_KEY).await.unwrap();
    let mut other = w.socket("laptop", TEST_API_KEY).await.unwrap();
    sock.send_text(r#"{"type":"hello","version":9}"#)
        .await
        .unwrap();
    sock.send_text("not json").await.unwrap();
    sock.send_text(PING_FRAME).await.unwrap();
    assert_eq!(
        sock.next(T).await.unwrap(),
        Event::Msg(SocketMessage::Pong),
        "still open after unknown frames"
    );
    sock.send_text(&format!(
        r#"{{"type":"ack","commandId":"{}"}}"#,
        "x".repeat(70 * 1024)
    ))
    .await
    .unwrap();
    assert_eq!(sock.next(T).await.unwrap(), Event::Closed(1009));
    other.send_text(PING_FRAME).await.unwrap();
    assert_eq!(
        other.next(T).await.unwrap(),
        Event::Msg(SocketMessage::Pong),
        "the other machine is untouched"
    );
}

#[tokio::test]
async fn undelivered_commands_are_reported_when_they_expire() {
    let (w, bot) = start_with(WorkerOptions::default().var("COMMAND_TTL_SECS", "2")).await;
    w.register("s1", "devbox", Some("api")).await.unwrap();
    let msg_id = w.notify("s1", "n").await.unwrap().message_id;
    post(&w, &Update::reply(90, CHAT, msg_id, "too late")).await;
    let report = bot.wait_message("Not delivered", T).await.unwrap();
    assert!(report["text"].as_str().unwrap().contains("too late"));
    assert_eq!(report["reply_parameters"]["message_id"], 10_090);
    // Once dead it is not delivered on connect.
    let mut sock = w.socket("devbox", TEST_API_KEY).await.unwrap();
    sock.expect_silence(Duration::from_millis(1500))
        .await
        .unwrap();
}
