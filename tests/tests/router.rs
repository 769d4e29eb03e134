//! The router end to end: the real Worker on workerd, the Bot API stand-in, and a test
//! socket client playing the machine's side.

use std::time::Duration;

use ccr_e2e::socket::{Event, TestSocket};
use ccr_e2e::telegram::{BotApi, Fault};
use ccr_e2e::wait_for;
use ccr_e2e::worker::{
    machine_key, Worker, WorkerOptions, TEST_API_KEY, TEST_BOT_TOKEN, TEST_WEBHOOK_SECRET,
};
use ccr_protocol::socket::{SocketMessage, PING_FRAME, PONG_FRAME};
use serde_json::{json, Value};

const CHAT: i64 = 4242;
const OTHER_CHAT: i64 = 5151;
const USER: i64 = 77;
const T: Duration = Duration::from_secs(20);

struct Env {
    w: Worker,
    bot: BotApi,
}

async fn start_with(opts: WorkerOptions) -> Env {
    let bot = BotApi::start(TEST_BOT_TOKEN).await.unwrap();
    let opts = opts
        .var("TELEGRAM_API_BASE", bot.base_url())
        .var("ALLOWED_CHAT_IDS", format!("{CHAT},{OTHER_CHAT}"));
    let w = Worker::start(opts).await.unwrap();
    Env { w, bot }
}

async fn start() -> Env {
    start_with(WorkerOptions::default()).await
}

impl Env {
    async fn call(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        let resp = self
            .w
            .http()
            .post(self.w.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
        )
    }

    async fn register(&self, session: &str, machine: &str, label: &str) {
        let (s, b) = self
            .call(
                "/sessions/register",
                TEST_API_KEY,
                json!({"sessionId": session, "machineId": machine, "label": label}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }

    /// Sends a notification for `session`; returns (first message id, token).
    async fn notify(&self, session: &str, text: &str) -> (i64, String) {
        let (s, b) = self
            .call(
                "/notifications/send",
                TEST_API_KEY,
                json!({"sessionId": session, "text": text}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        (
            b["messageId"].as_i64().unwrap(),
            b["token"].as_str().unwrap().to_owned(),
        )
    }

    async fn webhook(&self, update: &Value) -> u16 {
        self.w
            .http()
            .post(
                self.w
                    .url(&format!("/webhook/telegram/{TEST_WEBHOOK_SECRET}")),
            )
            .header("X-Telegram-Bot-Api-Secret-Token", TEST_WEBHOOK_SECRET)
            .json(update)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn socket(&self, machine: &str) -> TestSocket {
        TestSocket::connect(&self.w.ws_url(""), machine, TEST_API_KEY)
            .await
            .unwrap()
    }

    /// Waits for a sendMessage whose text contains `needle`.
    async fn wait_message(&self, needle: &str) -> Value {
        wait_for(&format!("a message containing {needle:?}"), T, || async {
            self.bot
                .calls_of("sendMessage")
                .into_iter()
                .map(|c| c.params)
                .find(|p| p["text"].as_str().is_some_and(|t| t.contains(needle)))
        })
        .await
        .unwrap()
    }
}

fn reply(update_id: i64, chat: i64, to: i64, text: &str) -> Value {
    json!({"update_id": update_id, "message": {
        "message_id": update_id + 10_000, "date": 1_700_000_000,
        "chat": {"id": chat, "type": "private"},
        "from": {"id": USER, "is_bot": false, "first_name": "Ada"},
        "text": text,
        "reply_to_message": {"message_id": to, "date": 1_700_000_000,
            "chat": {"id": chat, "type": "private"},
            "from": {"id": 1, "is_bot": true, "first_name": "CCR"}, "text": "notification"}
    }})
}

fn text_message(update_id: i64, chat: i64, text: &str) -> Value {
    json!({"update_id": update_id, "message": {
        "message_id": update_id + 10_000, "date": 1_700_000_000,
        "chat": {"id": chat, "type": "private"},
        "from": {"id": USER, "is_bot": false, "first_name": "Ada"}, "text": text}})
}

#[tokio::test]
async fn notification_reply_reaches_the_machine_and_ack_is_shown() {
    let e = start().await;
    e.register("s1", "devbox", "api").await;
    let mut sock = e.socket("devbox").await;
    assert_eq!(sock.protocol.as_deref(), Some("ccr"));

    let (msg_id, token) = e.notify("s1", "Task done: <ok> & more").await;
    let sent = e.bot.calls_of("sendMessage");
    assert_eq!(sent.len(), 1);
    let p = &sent[0].params;
    assert_eq!(p["chat_id"], CHAT);
    assert_eq!(p["parse_mode"], "HTML");
    assert_eq!(p["text"], "<b>api</b>\nTask done: &lt;ok&gt; &amp; more");
    let buttons = p["reply_markup"]["inline_keyboard"][0].as_array().unwrap();
    assert_eq!(buttons.len(), 4);
    assert_eq!(buttons[0]["callback_data"], format!("cmd:{token}:continue"));

    assert_eq!(
        e.webhook(&reply(1, CHAT, msg_id, "run the tests")).await,
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
    let reaction = wait_for("a reaction", T, || async {
        e.bot.calls_of("setMessageReaction").pop()
    })
    .await
    .unwrap();
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
    e.wait_message("pane %3 is gone").await;

    // Keepalive: the exact ping frame gets the exact pong frame.
    sock.send_text(PING_FRAME).await.unwrap();
    assert_eq!(sock.next(T).await.unwrap(), Event::Msg(SocketMessage::Pong));
    let _ = PONG_FRAME;
}

#[tokio::test]
async fn offline_machine_gets_its_queue_on_connect_and_unacked_is_redelivered() {
    let e = start().await;
    e.register("s1", "devbox", "api").await;
    let (msg_id, _) = e.notify("s1", "waiting").await;
    for (i, text) in ["first", "second", "third"].iter().enumerate() {
        assert_eq!(
            e.webhook(&reply(10 + i as i64, CHAT, msg_id, text)).await,
            200
        );
    }
    e.wait_message("devbox is offline").await;

    let mut sock = e.socket("devbox").await;
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
    wait_for("the first ack's reaction", T, || async {
        e.bot.calls_of("setMessageReaction").pop()
    })
    .await
    .unwrap();
    sock.abort();

    let mut again = e.socket("devbox").await;
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
    let e = start().await;
    e.register("s1", "devbox", "api").await;
    let (msg_id, _) = e.notify("s1", "n").await;
    let mut sock = e.socket("devbox").await;
    e.webhook(&reply(20, CHAT, msg_id, "retry me")).await;
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
    let e = start().await;
    let mut old = e.socket("devbox").await;
    let _new = e.socket("devbox").await;
    let ev = old.next(T).await.unwrap();
    assert_eq!(ev, Event::Closed(4000));
}

#[tokio::test]
async fn pending_commands_survive_a_worker_restart() {
    let mut e = start().await;
    e.register("s1", "devbox", "api").await;
    let (msg_id, _) = e.notify("s1", "n").await;
    e.webhook(&reply(30, CHAT, msg_id, "after restart")).await;
    e.w.restart().await.unwrap();
    let mut sock = e.socket("devbox").await;
    let (_, _, command) = sock.next_command(T).await.unwrap();
    assert_eq!(command, "after restart");
}

#[tokio::test]
async fn replayed_update_never_makes_a_second_command() {
    let e = start().await;
    e.register("s1", "devbox", "api").await;
    let (msg_id, _) = e.notify("s1", "n").await;
    let mut sock = e.socket("devbox").await;
    let update = reply(40, CHAT, msg_id, "once");
    assert_eq!(e.webhook(&update).await, 200);
    let (cid, _, _) = sock.next_command(T).await.unwrap();
    sock.send(&SocketMessage::Ack { command_id: cid })
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(e.webhook(&update).await, 200);
    }
    sock.expect_silence(Duration::from_millis(2000))
        .await
        .unwrap();
}

#[tokio::test]
async fn webhook_needs_both_secrets() {
    let e = start().await;
    e.register("s1", "devbox", "api").await;
    let (msg_id, _) = e.notify("s1", "n").await;
    let update = reply(50, CHAT, msg_id, "x");
    let cases = [
        (
            format!("/webhook/telegram/{TEST_WEBHOOK_SECRET}"),
            Some("wrong"),
        ),
        (
            "/webhook/telegram/wrong".to_owned(),
            Some(TEST_WEBHOOK_SECRET),
        ),
        (format!("/webhook/telegram/{TEST_WEBHOOK_SECRET}"), None),
    ];
    for (path, header) in cases {
        let mut req = e.w.http().post(e.w.url(&path)).json(&update);
        if let Some(h) = header {
            req = req.header("X-Telegram-Bot-Api-Secret-Token", h);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path} {header:?}");
    }
    // Nothing was touched: the same update_id is still new and queues a command.
    let mut sock = e.socket("devbox").await;
    assert_eq!(e.webhook(&update).await, 200);
    assert_eq!(sock.next_command(T).await.unwrap().2, "x");
}

#[tokio::test]
async fn cmd_tokens_buttons_and_bot_commands() {
    let e = start().await;
    e.register("s1", "devbox", "api").await;
    let (_, token) = e.notify("s1", "n").await;
    let mut sock = e.socket("devbox").await;

    e.webhook(&text_message(60, CHAT, &format!("/cmd {token} git status")))
        .await;
    let (cid, _, command) = sock.next_command(T).await.unwrap();
    assert_eq!(command, "git status");
    sock.send(&SocketMessage::Ack { command_id: cid })
        .await
        .unwrap();

    // The token was issued in CHAT: from another allowed chat it is refused.
    e.webhook(&text_message(
        61,
        OTHER_CHAT,
        &format!("/cmd {token} rm -rf /"),
    ))
    .await;
    e.wait_message("Unknown or expired token").await;

    let press = json!({"update_id": 62, "callback_query": {"id": "cbq-1", "chat_instance": "x",
        "from": {"id": USER, "is_bot": false, "first_name": "Ada"},
        "message": {"message_id": 101, "date": 1, "chat": {"id": CHAT, "type": "private"}, "text": "n"},
        "data": format!("cmd:{token}:yes")}});
    e.webhook(&press).await;
    let (cid, _, command) = sock.next_command(T).await.unwrap();
    assert_eq!(command, "y");
    sock.send(&SocketMessage::Ack { command_id: cid })
        .await
        .unwrap();
    let answered = wait_for("answerCallbackQuery", T, || async {
        e.bot.calls_of("answerCallbackQuery").pop()
    })
    .await
    .unwrap();
    assert_eq!(answered.params["callback_query_id"], "cbq-1");

    e.webhook(&text_message(63, CHAT, "/start")).await;
    e.wait_message(&format!("<code>{CHAT}</code>")).await;
    e.webhook(&text_message(64, CHAT, "/sessions")).await;
    e.wait_message("🟢 online").await;

    let photo = json!({"update_id": 65, "message": {"message_id": 9, "date": 1,
        "chat": {"id": CHAT, "type": "private"}, "from": {"id": USER, "is_bot": false, "first_name": "A"},
        "photo": [{"file_id": "f", "file_unique_id": "u", "width": 9, "height": 9}], "caption": "see this",
        "reply_to_message": {"message_id": 101, "date": 1, "chat": {"id": CHAT, "type": "private"}}}});
    e.webhook(&photo).await;
    e.wait_message("Only text").await;
    let edited = json!({"update_id": 66, "edited_message": {"message_id": 9, "date": 1, "edit_date": 2,
        "chat": {"id": CHAT, "type": "private"}, "from": {"id": USER, "is_bot": false, "first_name": "A"}, "text": "x"}});
    e.webhook(&edited).await;
    e.wait_message("Edits are not sent").await;
    e.webhook(&reply(67, CHAT, 999_999, "to nowhere")).await;
    e.wait_message("don't know which session").await;
    // None of those produced a command.
    sock.expect_silence(Duration::from_millis(1500))
        .await
        .unwrap();
}

#[tokio::test]
async fn chats_outside_the_allow_list_are_ignored() {
    let e = start().await;
    e.register("s1", "devbox", "api").await;
    let (msg_id, _) = e.notify("s1", "n").await;
    let mut sock = e.socket("devbox").await;
    let before = e.bot.calls().len();
    assert_eq!(e.webhook(&reply(70, 999, msg_id, "intruder")).await, 200);
    sock.expect_silence(Duration::from_millis(1500))
        .await
        .unwrap();
    assert_eq!(e.bot.calls().len(), before, "no answer to a stranger");
    wait_for("the ignore logged", T, || async {
        e.w.log().contains("not allowed").then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn notifications_split_escape_retry_and_fail_clearly() {
    let e = start().await;
    e.register("s1", "devbox", "ünï-label").await;

    // Long text: split under 4096, every part maps back to the session.
    let long = format!("{}\n{}", "<&*_ привет 👋 ".repeat(300), "end".repeat(500));
    let (s, b) = e
        .call(
            "/notifications/send",
            TEST_API_KEY,
            json!({"sessionId": "s1", "text": long}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let ids = b["messageIds"].as_array().unwrap();
    assert!(ids.len() >= 2, "{b}");
    let parts = e.bot.calls_of("sendMessage");
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
    let mut sock = e.socket("devbox").await;
    e.webhook(&reply(80, CHAT, ids[1].as_i64().unwrap(), "from part two"))
        .await;
    assert_eq!(sock.next_command(T).await.unwrap().2, "from part two");

    // 429 with retry_after is waited out.
    e.bot
        .fail_next("sendMessage", Fault::TooManyRequests { retry_after: 1 });
    let (s, b) = e
        .call(
            "/notifications/send",
            TEST_API_KEY,
            json!({"sessionId": "s1", "text": "after 429", "buttons": false}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let last = e.bot.calls_of("sendMessage").pop().unwrap();
    assert!(last.params.get("reply_markup").is_none());

    // Telegram's refusal is a 502 carrying its description.
    e.bot.fail_next(
        "sendMessage",
        Fault::BadRequest("Bad Request: chat not found".into()),
    );
    let (s, b) = e
        .call(
            "/notifications/send",
            TEST_API_KEY,
            json!({"sessionId": "s1", "text": "x"}),
        )
        .await;
    assert_eq!(s, 502);
    assert!(
        b["error"].as_str().unwrap().contains("chat not found"),
        "{b}"
    );

    // A chat outside the allow-list, an unknown session, an empty text.
    let (s, _) = e
        .call(
            "/notifications/send",
            TEST_API_KEY,
            json!({"sessionId": "s1", "text": "x", "chatId": 1}),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = e
        .call(
            "/notifications/send",
            TEST_API_KEY,
            json!({"sessionId": "nope", "text": "x"}),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = e
        .call(
            "/notifications/send",
            TEST_API_KEY,
            json!({"sessionId": "s1", "text": "  "}),
        )
        .await;
    assert_eq!(s, 400);
    // The original clients' raw replyMarkup passes through.
    let markup = json!({"inline_keyboard": [[{"text": "A", "callback_data": "x"}]]});
    let (s, b) = e.call("/notifications/send", TEST_API_KEY, json!({"sessionId": "s1", "text": "x", "replyMarkup": markup, "chatId": OTHER_CHAT.to_string()})).await;
    assert_eq!(s, 200, "{b}");
    let last = e.bot.calls_of("sendMessage").pop().unwrap();
    assert_eq!(last.params["reply_markup"], markup);
    assert_eq!(last.params["chat_id"], OTHER_CHAT);
}

#[tokio::test]
async fn machine_keys_act_only_for_their_machine() {
    let e = start().await;
    let devbox = machine_key("devbox");
    let call_as = |path: &'static str, machine: &'static str, body: Value| {
        let req =
            e.w.http()
                .post(e.w.url(path))
                .bearer_auth(&devbox)
                .header("X-CCR-Machine-Id", machine)
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
    e.register("c", "laptop", "other").await;
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

    let mine =
        e.w.http()
            .get(e.w.url("/sessions"))
            .bearer_auth(&devbox)
            .header("X-CCR-Machine-Id", "devbox")
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
    assert!(TestSocket::connect(&e.w.ws_url(""), "devbox", &devbox)
        .await
        .is_ok());
    assert_eq!(
        TestSocket::connect(&e.w.ws_url(""), "laptop", &devbox)
            .await
            .err()
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        TestSocket::connect(&e.w.ws_url(""), "devbox", "nope")
            .await
            .err()
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        TestSocket::connect_with(&e.w.ws_url(""), "devbox", None)
            .await
            .err()
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        TestSocket::connect(&e.w.ws_url(""), "bad%20id", TEST_API_KEY)
            .await
            .err()
            .unwrap()
            .status,
        400
    );
}

#[tokio::test]
async fn unknown_and_oversized_frames_are_refused_without_harm() {
    let e = start().await;
    let mut sock = e.socket("devbox").await;
    let mut other = e.socket("laptop").await;
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
    let e = start_with(WorkerOptions::default().var("COMMAND_TTL_SECS", "2")).await;
    e.register("s1", "devbox", "api").await;
    let (msg_id, _) = e.notify("s1", "n").await;
    e.webhook(&reply(90, CHAT, msg_id, "too late")).await;
    let report = e.wait_message("Not delivered").await;
    assert!(report["text"].as_str().unwrap().contains("too late"));
    assert_eq!(report["reply_parameters"]["message_id"], 10_090);
    // Once dead it is not delivered on connect.
    let mut sock = e.socket("devbox").await;
    sock.expect_silence(Duration::from_millis(1500))
        .await
        .unwrap();
}
