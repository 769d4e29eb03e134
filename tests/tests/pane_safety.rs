//! A reply is typed only into the pane of its session: the real Worker, the real agent and
//! real tmux, where the session's tmux server is killed and a new one started on the same
//! socket path — as after a reboot or `tmux kill-server` — whose pane has the session's old
//! pane id. A reply to the old notification must reach no pane; the chat is told why and how
//! to go on, the session is listed as gone and refuses further replies, and its next
//! SessionStart (in the new pane) makes it usable again.

use std::time::Duration;

use ccr_e2e::agent::Agent;
use ccr_e2e::telegram::{BotApi, Update};
use ccr_e2e::tmux::Tmux;
use ccr_e2e::wait_for;
use ccr_e2e::worker::{start_with_bot, Worker, WorkerOptions, TEST_API_KEY};
use serde_json::Value;

const CHAT: i64 = 4242;
/// Generous: workerd and the agent share two cores with other test processes.
const T: Duration = Duration::from_secs(30);

/// The `GET /sessions` row of `session`.
async fn session_row(w: &Worker, session: &str) -> Value {
    let all = w.sessions().await.unwrap();
    all["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sessionId"] == session)
        .cloned()
        .unwrap_or_else(|| panic!("{session} listed: {all}"))
}

/// sendMessage texts so far that contain `needle`.
fn messages_with(bot: &BotApi, needle: &str) -> Vec<String> {
    bot.calls_of("sendMessage")
        .into_iter()
        .filter_map(|c| c.params["text"].as_str().map(str::to_owned))
        .filter(|t| t.contains(needle))
        .collect()
}

#[tokio::test]
async fn a_reply_to_a_session_whose_tmux_server_was_replaced_reaches_no_pane() {
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    let mut tmux = Tmux::start().unwrap();
    let agent = Agent::start(&w.base_url(), TEST_API_KEY, "devbox").unwrap();
    agent.wait_connected(1, T).await.unwrap();
    agent
        .start_session(&tmux, &tmux.pane_id, "sess-old", "/home/ada/api")
        .await
        .unwrap();
    let msg = w.notify("sess-old", "done").await.unwrap().message_id;

    // The healthy path: the identity check passes and the reply lands.
    w.reply(CHAT, 1, msg, "before the restart").await;
    assert_eq!(
        tmux.wait_for_lines(1, T).await.unwrap(),
        ["before the restart"]
    );
    let old_pane = tmux.pane_id.clone();
    let old_record = tmux.record_path();

    // Reboot / kill-server: a new server on the same socket path, whose recording pane has
    // the same id the session recorded (in real life: somebody's shell).
    tmux.restart_server().unwrap();
    assert_eq!(tmux.pane_id, old_pane, "tmux numbers panes from %0 again");
    assert_ne!(tmux.record_path(), old_record);

    w.reply(CHAT, 2, msg, "git push --force").await;
    let told = bot.wait_message("pane is gone", T).await.unwrap();
    let text = told["text"].as_str().unwrap_or_default();
    assert!(text.contains("tmux server was restarted"), "{text}");
    assert!(text.contains("start Claude Code again in tmux"), "{text}");
    assert!(text.contains("next notification"), "{text}");
    // Long past when the text would have arrived: the new pane received nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(tmux.lines().is_empty(), "typed into the new server's pane");
    let old_lines = std::fs::read_to_string(&old_record).unwrap();
    assert_eq!(
        old_lines.lines().collect::<Vec<_>>(),
        ["before the restart"]
    );
    assert!(agent.log().contains("pane is gone"), "{}", agent.log());

    // The Worker knows: listed as gone, and a further reply is answered, not queued.
    let row = wait_for("the session listed as gone", T, || async {
        let row = session_row(&w, "sess-old").await;
        (row["gone"] == true).then_some(row)
    })
    .await
    .unwrap();
    assert_eq!(row["machineId"], "devbox");
    let sessions = w
        .send_update(&Update::message(3, CHAT).text("/sessions"))
        .await
        .unwrap();
    assert_eq!(sessions.status(), 200);
    bot.wait_message("pane gone", T).await.unwrap();
    w.reply(CHAT, 4, msg, "rm -rf build").await;
    let refused = bot
        .wait_message("Not sent: the tmux pane", T)
        .await
        .unwrap();
    assert!(
        refused["text"]
            .as_str()
            .unwrap_or_default()
            .contains("Start Claude Code again in tmux"),
        "{refused}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(tmux.lines().is_empty());
    assert_eq!(
        agent.log().matches("command stored and acked").count(),
        2,
        "the refused reply never reached the agent:\n{}",
        agent.log()
    );
    assert_eq!(messages_with(&bot, "pane is gone").len(), 1);

    // Claude Code started again in the new pane: its SessionStart registers the session
    // again, with the new pane's identity, and its next notification's reply lands there.
    agent
        .start_session(&tmux, &tmux.pane_id, "sess-old", "/home/ada/api")
        .await
        .unwrap();
    assert_eq!(session_row(&w, "sess-old").await["gone"], false);
    let msg2 = w.notify("sess-old", "back").await.unwrap().message_id;
    w.reply(CHAT, 5, msg2, "after the restart").await;
    assert_eq!(
        tmux.wait_for_lines(1, T).await.unwrap(),
        ["after the restart"]
    );
}

/// A pane closed on a live server (its id is never reused there): the reply is refused and
/// the session marked gone the same way.
#[tokio::test]
async fn a_reply_to_a_closed_pane_is_refused() {
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    let tmux = Tmux::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (pane_b, record_b) = ccr_e2e::agent::add_recording_pane(&tmux, dir.path(), "b").unwrap();
    let agent = Agent::start(&w.base_url(), TEST_API_KEY, "closebox").unwrap();
    agent.wait_connected(1, T).await.unwrap();
    agent
        .start_session(&tmux, &pane_b, "sess-b", "/w/beta")
        .await
        .unwrap();
    let msg = w.notify("sess-b", "done").await.unwrap().message_id;
    tmux.tmux(&["kill-pane", "-t", &pane_b]).unwrap();

    w.reply(CHAT, 1, msg, "anything").await;
    let told = bot.wait_message("pane is gone", T).await.unwrap();
    assert!(
        told["text"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("pane {pane_b} no longer exists")),
        "{told}"
    );
    wait_for("sess-b listed as gone", T, || async {
        (session_row(&w, "sess-b").await["gone"] == true).then_some(())
    })
    .await
    .unwrap();
    assert!(tmux.lines().is_empty());
    assert!(ccr_e2e::agent::recorded_lines(&record_b).is_empty());
}
