//! A topic per session: the real Worker, the real agent and its hooks, real tmux, and the
//! Bot API stand-in with a forum chat. A session's registration creates its topic, its
//! notifications go there, a plain message in the topic reaches the session's pane with no
//! reply, the session's end closes the topic and a resume reopens it. A chat without topics
//! behaves as before.

use std::path::Path;
use std::time::Duration;

use ccr_e2e::agent::{hook_input, Agent};
use ccr_e2e::session::{wait_raw, RawSession};
use ccr_e2e::telegram::{BotApi, Topic, Update};
use ccr_e2e::tmux::Tmux;
use ccr_e2e::wait_for;
use ccr_e2e::worker::{start_with_bot, Worker, WorkerOptions, TEST_API_KEY};
use ccr_protocol::wire::route;
use reqwest::Method;
use serde_json::Value;

/// A forum supergroup.
const FORUM: i64 = -1_001_234_567_890;
/// A private chat without topics.
const PLAIN: i64 = 4242;
/// Generous: workerd and the agent share two cores with other test processes.
const T: Duration = Duration::from_secs(30);
const CWD: &str = "/home/ada/api";

/// Waits until the pane's raw recording holds `want` exactly, then clears it.
async fn typed(record: &Path, want: &[u8]) {
    let got = wait_raw(record, want.len(), T)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(want),
        "what the pane received"
    );
    std::fs::write(record, "").unwrap();
}

/// Waits for the chat's only topic to be in `state` (name, closed); returns its thread id.
async fn topic_becomes(bot: &BotApi, chat: i64, name: &str, closed: bool) -> i64 {
    let want = Topic {
        name: name.to_owned(),
        closed,
    };
    wait_for(&format!("the topic to be {want:?}"), T, || async {
        match bot.topics(chat).as_slice() {
            [(thread, t)] if *t == want => Some(*thread),
            _ => None,
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", bot.topics(chat)))
}

/// The `sendMessage` that made message `id`.
fn sent_message(bot: &BotApi, id: i64) -> Value {
    bot.calls_of("sendMessage")
        .into_iter()
        .find(|c| c.ok && c.message_id == Some(id))
        .map(|c| c.params)
        .unwrap_or_else(|| panic!("no message {id} was sent"))
}

async fn end_session(agent: &Agent, tmux: &Tmux, pane: &str, session: &str) {
    let input = hook_input("SessionEnd", session, CWD, Path::new("/nonexistent.jsonl"));
    let out = agent
        .run_hook("session-end", &input, Some((tmux, pane)))
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_for("the session to be unregistered", T, || async {
        agent
            .hooks_log()
            .contains("session unregistered")
            .then_some(())
    })
    .await
    .unwrap();
}

async fn outbox(w: &Worker) -> Value {
    let resp = w.admin(Method::GET, route::OUTBOX).send().await.unwrap();
    ccr_e2e::json_of(resp).await
}

#[tokio::test]
async fn a_session_has_its_topic_and_a_message_in_it_reaches_the_pane_without_a_reply() {
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[FORUM])
        .await
        .unwrap();
    bot.enable_topics(FORUM);
    // SessionStart registers the session: its topic is created, named label · machine.
    let RawSession {
        agent,
        record,
        pane,
        tmux,
    } = RawSession::start(&w.base_url(), TEST_API_KEY, "devbox", "sess-topic", CWD, T)
        .await
        .unwrap();
    let thread = topic_becomes(&bot, FORUM, "api · devbox", false).await;

    // Its notification goes to the topic.
    let note = w.notify("sess-topic", "tests pass").await.unwrap();
    assert_eq!(
        sent_message(&bot, note.message_id)["message_thread_id"],
        thread
    );

    // A plain message in the topic — no reply — is typed into the session's pane, and its
    // ack is reacted to.
    w.deliver(
        &Update::message(1, FORUM)
            .text("run the linter")
            .in_topic(thread),
    )
    .await;
    typed(&record, b"run the linter\r").await;
    let reaction = bot.wait_call("setMessageReaction", T).await.unwrap();
    assert_eq!(reaction.params["message_id"], 1 + 10_000);

    // /esc in the topic needs no reply either.
    w.deliver(&Update::message(2, FORUM).text("/esc").in_topic(thread))
        .await;
    typed(&record, b"\x1b").await;

    // A reply to the notification inside the topic still works.
    w.deliver(
        &Update::message(3, FORUM)
            .text("and commit")
            .in_topic(thread)
            .reply_to(note.message_id),
    )
    .await;
    typed(&record, b"and commit\r").await;

    // A re-registration under another label renames the topic.
    w.register("sess-topic", "devbox", Some("web"))
        .await
        .unwrap();
    assert_eq!(
        topic_becomes(&bot, FORUM, "web · devbox", false).await,
        thread
    );

    // The session ends: its topic is closed; a message there is answered, in the topic,
    // and typed nowhere.
    end_session(&agent, &tmux, &pane, "sess-topic").await;
    topic_becomes(&bot, FORUM, "web · devbox", true).await;
    w.deliver(
        &Update::message(4, FORUM)
            .text("still there?")
            .in_topic(thread),
    )
    .await;
    let answer = bot
        .wait_message("session of this topic has ended", T)
        .await
        .unwrap();
    assert_eq!(answer["message_thread_id"], thread, "{answer}");
    assert_eq!(std::fs::read(&record).unwrap(), b"", "nothing was typed");

    // Resumed (SessionStart again, same session): the same topic reopens and is renamed
    // back from the working directory; messages in it reach the pane again.
    agent
        .start_session(&tmux, &pane, "sess-topic", CWD)
        .await
        .unwrap();
    assert_eq!(
        topic_becomes(&bot, FORUM, "api · devbox", false).await,
        thread
    );
    w.deliver(&Update::message(5, FORUM).text("go on").in_topic(thread))
        .await;
    typed(&record, b"go on\r").await;

    // Someone closes the topic by hand: Telegram refuses the next notification there
    // (TOPIC_CLOSED), and it goes to the chat instead, at once — not lost.
    bot.close_topic(FORUM, thread);
    let note = w.notify("sess-topic", "closed under me").await.unwrap();
    let params = sent_message(&bot, note.message_id);
    assert!(params.get("message_thread_id").is_none(), "{params}");
    assert!(bot.calls_of("sendMessage").iter().any(|c| !c.ok
        && c.params["message_thread_id"] == thread
        && c.params["text"]
            .as_str()
            .unwrap_or("")
            .contains("closed under me")));

    // One topic in all, and no message lost to a topic refusal.
    assert_eq!(bot.calls_of("createForumTopic").len(), 1);
    let status = outbox(&w).await;
    assert_eq!(status["dropped"], 0, "{status}");
}

#[tokio::test]
async fn without_topics_everything_works_as_before() {
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[PLAIN])
        .await
        .unwrap();
    let RawSession {
        agent,
        record,
        pane,
        tmux,
    } = RawSession::start(&w.base_url(), TEST_API_KEY, "devbox", "sess-plain", CWD, T)
        .await
        .unwrap();

    // Telegram was asked once and refused: the notification goes to the chat.
    let note = w.notify("sess-plain", "tests pass").await.unwrap();
    let asked = bot.calls_of("createForumTopic");
    assert_eq!(asked.len(), 1);
    assert!(!asked[0].ok);
    let params = sent_message(&bot, note.message_id);
    assert!(params.get("message_thread_id").is_none(), "{params}");

    // A reply to it is typed into the pane, as always.
    w.reply(PLAIN, 1, note.message_id, "run the linter").await;
    typed(&record, b"run the linter\r").await;

    // Text that is no reply is still explained, not sent.
    w.deliver(&Update::message(2, PLAIN).text("hello?")).await;
    bot.wait_message("reply to one of its notifications", T)
        .await
        .unwrap();

    // Another session in the same chat: the refusal is remembered, Telegram is not asked
    // again; the session's end closes nothing.
    w.register("sess-other", "devbox", Some("web"))
        .await
        .unwrap();
    w.notify("sess-other", "hi").await.unwrap();
    end_session(&agent, &tmux, &pane, "sess-plain").await;
    assert_eq!(bot.calls_of("createForumTopic").len(), 1);
    assert!(bot.calls_of("closeForumTopic").is_empty());
    let status = outbox(&w).await;
    assert_eq!(
        status["dropped"], 0,
        "the refusal lost no message: {status}"
    );
}
