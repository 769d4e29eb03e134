//! Talking to a session like a chat: the real Worker, the real agent and real tmux, with a
//! pane whose program turns bracketed paste on (as Claude Code does) and records the raw
//! bytes it receives.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccr_e2e::agent::Agent;
use ccr_e2e::session::{wait_raw_settled, RawSession};
use ccr_e2e::telegram::{BotApi, Update};
use ccr_e2e::tmux::Tmux;
use ccr_e2e::wait_for;
use ccr_e2e::worker::{start_with_bot, Worker, WorkerOptions, TEST_API_KEY};

const CHAT: i64 = 4242;
/// Generous: workerd and the agent share two cores with other test processes.
const T: Duration = Duration::from_secs(30);

/// Waits until the raw recording holds as many bytes as `want` and nothing more arrives.
async fn wait_raw(record: &Path, want: &[u8]) -> Vec<u8> {
    wait_raw_settled(record, want, T)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The Worker and its bot, and `session` registered from a raw-recording pane (`RawSession`,
/// kept alive by the caller) working in `/home/ada/api`; the pane's recording.
async fn chat_session(session: &str) -> (Worker, BotApi, RawSession, PathBuf) {
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    let s = RawSession::start(
        &w.base_url(),
        TEST_API_KEY,
        "devbox",
        session,
        "/home/ada/api",
        T,
    )
    .await
    .unwrap();
    let record = s.record.clone();
    (w, bot, s, record)
}

#[tokio::test]
async fn a_multi_line_reply_is_one_prompt_and_long_text_arrives_whole() {
    let (w, _bot, _s, record) = chat_session("sess-chat").await;
    let msg = w.notify("sess-chat", "done").await.unwrap().message_id;

    // Three lines: one bracketed paste, then one Enter — one prompt, not three.
    w.reply(CHAT, 1, msg, "fix the bug\nthen run the tests\nand commit")
        .await;
    let got = wait_raw(
        &record,
        b"\x1b[200~fix the bug\rthen run the tests\rand commit\x1b[201~\r",
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "\x1b[200~fix the bug\rthen run the tests\rand commit\x1b[201~\r"
    );

    // 4,000 characters over many lines (Telegram allows 4,096): whole, in order.
    std::fs::write(&record, "").unwrap();
    let long: String = (0..200)
        .map(|i| format!("step {i:03}: {}\n", "ü".repeat(28)))
        .collect::<String>()
        .chars()
        .take(4000)
        .collect();
    let want = format!("\x1b[200~{}\x1b[201~\r", long.replace('\n', "\r"));
    w.reply(CHAT, 2, msg, &long).await;
    let got = wait_raw(&record, want.as_bytes()).await;
    assert_eq!(String::from_utf8_lossy(&got), want);

    // A single line is still typed (no paste brackets) and one Enter.
    std::fs::write(&record, "").unwrap();
    w.reply(CHAT, 3, msg, "one line").await;
    let got = wait_raw(&record, b"one line\r").await;
    assert_eq!(got, b"one line\r");
}

#[tokio::test]
async fn esc_presses_one_escape_and_an_unknown_key_is_refused_before_queueing() {
    let (w, bot, _s, record) = chat_session("sess-keys").await;
    let note = w.notify("sess-keys", "working…").await.unwrap();
    let msg = note.message_id;

    // An unknown name: the chat is told at once, nothing is queued (no ack, no reaction).
    w.reply(CHAT, 1, msg, "/keys Enter F13").await;
    let refusal = bot.wait_message("is not a key", T).await.unwrap();
    assert_eq!(
        refusal["reply_parameters"]["message_id"],
        1 + 10_000,
        "{refusal}"
    );

    // /esc: exactly one ESC byte reaches the pane, and the ack is reacted to.
    w.reply(CHAT, 2, msg, "/esc").await;
    assert_eq!(wait_raw(&record, b"\x1b").await, b"\x1b");
    let reaction = bot.wait_call("setMessageReaction", T).await.unwrap();
    assert_eq!(reaction.params["message_id"], 2 + 10_000);

    // /keys: named keys in order (Down, Down, Enter = ESC[B ESC[B CR in the pane's raw mode).
    std::fs::write(&record, "").unwrap();
    w.reply(CHAT, 3, msg, "/keys down Down 2 enter").await;
    assert_eq!(
        wait_raw(&record, b"\x1b[B\x1b[B2\r").await,
        b"\x1b[B\x1b[B2\r"
    );
    wait_for("the second reaction", T, || async {
        (bot.calls_of("setMessageReaction").len() >= 2).then_some(())
    })
    .await
    .unwrap();
    let reacted: Vec<_> = bot
        .calls_of("setMessageReaction")
        .iter()
        .map(|c| c.params["message_id"].clone())
        .collect();
    assert_eq!(
        reacted,
        [2 + 10_000, 3 + 10_000],
        "the refused /keys was never queued"
    );

    // The ⏹ Stop button under the notification: Escape as well.
    std::fs::write(&record, "").unwrap();
    let data = format!("cmd:{}:stop", note.token);
    let resp = w
        .send_update(&Update::callback(4, CHAT, "cb-stop", &data).message_id(msg))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(wait_raw(&record, b"\x1b").await, b"\x1b");
}

#[tokio::test]
async fn peek_shows_the_pane_and_an_offline_machine_is_answered() {
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    let tmux = Tmux::start().unwrap();
    let mut agent = Agent::start(&w.base_url(), TEST_API_KEY, "devbox").unwrap();
    agent.wait_connected(1, T).await.unwrap();
    agent
        .start_session(&tmux, &tmux.pane_id, "sess-peek", "/home/ada/api")
        .await
        .unwrap();
    let note = w.notify("sess-peek", "done").await.unwrap();
    let (msg, token) = (note.message_id, note.token);

    // Something on the screen (the recorder's terminal echoes what is typed).
    w.reply(CHAT, 1, msg, "echo <b>hi</b> & bye").await;
    tmux.wait_for_lines(1, T).await.unwrap();

    w.reply(CHAT, 2, msg, "/peek").await;
    let shown = bot.wait_message("<pre>", T).await.unwrap();
    let text = shown["text"].as_str().unwrap();
    assert!(
        text.contains("echo &lt;b&gt;hi&lt;/b&gt; &amp; bye"),
        "the screen, HTML-escaped: {text}"
    );
    assert!(
        text.starts_with("<pre>") && text.ends_with("</pre>"),
        "{text}"
    );
    assert_eq!(shown["reply_parameters"]["message_id"], 2 + 10_000);
    assert_eq!(shown["parse_mode"], "HTML");

    // The 👀 button under the notification: the same screen, replying to the notification.
    let before = bot.calls_of("sendMessage").len();
    let data = format!("cmd:{token}:peek");
    let resp = w
        .send_update(&Update::callback(4, CHAT, "cb-peek", &data).message_id(msg))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let again = wait_for("the 👀 answer", T, || async {
        bot.calls_of("sendMessage")
            .into_iter()
            .skip(before)
            .map(|c| c.params)
            .find(|p| p["text"].as_str().is_some_and(|t| t.starts_with("<pre>")))
    })
    .await
    .unwrap();
    assert!(
        again["text"].as_str().unwrap().contains("&amp; bye"),
        "{again}"
    );
    assert_eq!(again["reply_parameters"]["message_id"], msg);

    // The machine offline: a clear answer at once, nothing waits.
    agent.terminate().await.unwrap();
    wait_for("devbox to be offline", T, || async {
        let all = w.sessions().await.ok()?;
        let online = all["sessions"].as_array()?.first()?["online"].as_bool()?;
        (!online).then_some(())
    })
    .await
    .unwrap();
    w.reply(CHAT, 3, msg, "/peek").await;
    bot.wait_message("No screen: devbox is offline", T)
        .await
        .unwrap();
}

/// The Bot API stand-in answers the forum topic methods as Telegram does (for the topic per
/// session still to come): only in a chat with topics, ids from the message counter, and
/// TOPIC_NOT_MODIFIED for a change that changes nothing.
#[tokio::test]
async fn the_bot_api_stand_in_keeps_forum_topics_like_telegram() {
    let bot = ccr_e2e::telegram::BotApi::start("123:abc").await.unwrap();
    let http = reqwest::Client::new();
    let call = |method: &str, params: serde_json::Value| {
        let url = format!("{}/bot{}/{method}", bot.base_url(), bot.token());
        let req = http.post(url).json(&params);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = call(
        "createForumTopic",
        serde_json::json!({"chat_id": CHAT, "name": "api · devbox"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["description"], "Bad Request: the chat is not a forum");

    bot.enable_topics(CHAT);
    let (status, body) = call(
        "createForumTopic",
        serde_json::json!({"chat_id": CHAT, "name": "api · devbox"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let thread = body["result"]["message_thread_id"].as_i64().unwrap();
    assert_eq!(body["result"]["name"], "api · devbox");
    let t = |name: &str, closed: bool| {
        vec![(
            thread,
            ccr_e2e::telegram::Topic {
                name: name.into(),
                closed,
            },
        )]
    };
    assert_eq!(bot.topics(CHAT), t("api · devbox", false));

    let edit =
        serde_json::json!({"chat_id": CHAT, "message_thread_id": thread, "name": "web · devbox"});
    assert_eq!(call("editForumTopic", edit.clone()).await.0, 200);
    let (status, body) = call("editForumTopic", edit).await;
    assert_eq!(
        (status, body["description"].as_str()),
        (400, Some("Bad Request: TOPIC_NOT_MODIFIED"))
    );
    let id = serde_json::json!({"chat_id": CHAT, "message_thread_id": thread});
    assert_eq!(call("closeForumTopic", id.clone()).await.0, 200);
    assert_eq!(bot.topics(CHAT), t("web · devbox", true));
    assert_eq!(call("closeForumTopic", id.clone()).await.0, 400);
    assert_eq!(call("reopenForumTopic", id.clone()).await.0, 200);
    assert_eq!(call("reopenForumTopic", id).await.0, 400);
    assert_eq!(bot.topics(CHAT), t("web · devbox", false));
    let (status, body) = call(
        "closeForumTopic",
        serde_json::json!({"chat_id": CHAT, "message_thread_id": 999_999}),
    )
    .await;
    assert_eq!(
        (status, body["description"].as_str()),
        (400, Some("Bad Request: TOPIC_ID_INVALID"))
    );
}
