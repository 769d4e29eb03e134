//! Starting and ending sessions from the chat (`/new`, `/end`): the real Worker, the real
//! agent configured with a project root, and real tmux. The agent's "Claude Code" is a
//! recorder script that writes its working directory and arguments to a file and stays up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccr_e2e::agent::Agent;
use ccr_e2e::telegram::{Update, TEST_USER_ID};
use ccr_e2e::tmux::Tmux;
use ccr_e2e::wait_for;
use ccr_e2e::worker::{start_with_bot, WorkerOptions, TEST_API_KEY};
use serde_json::Value;

const CHAT: i64 = 4343;
/// Generous: workerd and the agent share two cores with other test processes.
const T: Duration = Duration::from_secs(45);

/// Writes a recorder script into `dir`: each run writes its cwd and then one argument per
/// line to `runs/<pid>.txt`, then stays up (as Claude Code would).
fn recorder(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let runs = dir.join("runs");
    std::fs::create_dir(&runs).unwrap();
    let script = dir.join("fake-claude.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nf='{}'/$$\n{{ pwd; for a in \"$@\"; do printf '%s\\n' \"$a\"; done; }} > \"$f.tmp\"\nmv \"$f.tmp\" \"$f.txt\"\nexec sleep 600\n",
            runs.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, runs)
}

/// Every run the recorder recorded: its lines (cwd, then the arguments).
fn runs(dir: &Path) -> Vec<Vec<String>> {
    let mut all: Vec<Vec<String>> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "txt"))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .collect();
    all.sort();
    all
}

/// The windows of tmux session `ccr`: (name, the pane's current directory, its command).
fn ccr_windows(tmux: &Tmux) -> Vec<(String, String)> {
    tmux.tmux(&[
        "list-windows",
        "-t",
        "ccr",
        "-F",
        "#{window_name}|#{pane_current_path}",
    ])
    .map(|out| {
        out.lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// A `sendMessage` whose text contains `needle`, with its inline keyboard's buttons
/// (text, callback data).
async fn buttons_of(bot: &ccr_e2e::telegram::BotApi, needle: &str) -> Vec<(String, String)> {
    let msg = bot.wait_message(needle, T).await.unwrap();
    msg["reply_markup"]["inline_keyboard"]
        .as_array()
        .unwrap_or_else(|| panic!("no keyboard: {msg}"))
        .iter()
        .flat_map(|row| row.as_array().cloned().unwrap_or_default())
        .map(|b: Value| {
            (
                b["text"].as_str().unwrap().to_owned(),
                b["callback_data"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn new_starts_the_configured_command_in_the_project_and_refuses_other_names() {
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    let tmux = Tmux::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("proj");
    std::fs::create_dir(&project).unwrap();
    let project = project.canonicalize().unwrap();
    let (script, runs_dir) = recorder(dir.path());
    let agent = Agent::start_with(
        &w.base_url(),
        TEST_API_KEY,
        "devbox",
        vec![
            ("CCR_PROJECTS".into(), format!("proj={}", project.display())),
            (
                "CCR_NEW_SESSION_COMMAND".into(),
                format!("{} --from-phone", script.display()),
            ),
            (
                "CCR_TMUX_SOCKET".into(),
                tmux.socket_path.display().to_string(),
            ),
        ],
    )
    .unwrap();
    agent.wait_connected(1, T).await.unwrap();
    wait_for("the Worker to learn the machine's projects", T, || async {
        w.log()
            .contains("machine devbox announced 1 project(s)")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", w.log()));

    // A name no machine configured: refused at once, nothing queued, no window.
    w.deliver(&Update::message(1, CHAT).text("/new nosuch do it"))
        .await;
    let refusal = bot
        .wait_text("no machine has a project named", T)
        .await
        .unwrap();
    assert!(refusal.contains("<code>nosuch</code>"), "{refusal}");
    assert!(refusal.contains("<code>proj</code>"), "{refusal}");
    // A path is only an unknown name.
    w.deliver(&Update::message(2, CHAT).text("/new /etc")).await;
    bot.wait_text("named <code>/etc</code>", T).await.unwrap();

    // The configured project: a window in its directory running the command, with the
    // prompt as one argument (spaces and shell syntax intact).
    let prompt = "hello world; $(echo not-run) 'q'";
    w.deliver(&Update::message(3, CHAT).text(&format!("/new proj {prompt}")))
        .await;
    let started = bot.wait_text("✅ Started <b>proj</b>", T).await.unwrap();
    assert!(
        started.contains("on devbox in tmux window <code>ccr:"),
        "{started}"
    );
    let got = wait_for("the recorder to run", T, || async {
        let r = runs(&runs_dir);
        (!r.is_empty()).then_some(r)
    })
    .await
    .unwrap();
    assert_eq!(
        got,
        vec![vec![
            project.display().to_string(),
            "--from-phone".to_owned(),
            prompt.to_owned()
        ]]
    );
    let windows = ccr_windows(&tmux);
    assert_eq!(
        windows,
        vec![("proj".to_owned(), project.display().to_string())],
        "one new window, in the project's directory"
    );
    // The start request's ack is reacted to like a reply's.
    let reaction = bot.wait_call("setMessageReaction", T).await.unwrap();
    assert_eq!(reaction.params["message_id"], 3 + 10_000);

    // `/new` alone: machine × project as buttons; a tap starts it (no prompt), once.
    w.deliver(&Update::message(4, CHAT).text("/new")).await;
    let buttons = buttons_of(&bot, "Start Claude Code in which project?").await;
    assert_eq!(
        buttons,
        vec![("proj · devbox".to_owned(), "new:4:0".to_owned())]
    );
    let tap = Update::callback(5, CHAT, "cb-new", "new:4:0").message_id(200);
    w.deliver(&tap).await;
    wait_for("the second run", T, || async {
        (runs(&runs_dir).len() == 2).then_some(())
    })
    .await
    .unwrap();
    // A second tap on the same button starts nothing more.
    w.deliver(&Update::callback(6, CHAT, "cb-new-2", "new:4:0").message_id(200))
        .await;
    wait_for("the second tap's answer", T, || async {
        bot.calls_of("answerCallbackQuery")
            .into_iter()
            .find(|c| c.params["callback_query_id"] == "cb-new-2")
    })
    .await
    .unwrap();
    bot.wait_text("✅ Started <b>proj</b>", T).await.unwrap();
    wait_for("two started notices", T, || async {
        (bot.calls_of("sendMessage")
            .iter()
            .filter(|c| {
                c.params["text"]
                    .as_str()
                    .unwrap_or("")
                    .contains("✅ Started")
            })
            .count()
            == 2)
            .then_some(())
    })
    .await
    .unwrap();
    let all = runs(&runs_dir);
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.contains(&vec![
        project.display().to_string(),
        "--from-phone".to_owned()
    ]));
    // The refused names started nothing: two windows, for the two starts.
    assert_eq!(ccr_windows(&tmux).len(), 2);
}

#[tokio::test]
async fn end_asks_first_and_then_types_exit_into_the_sessions_pane() {
    let (w, bot) = start_with_bot(
        WorkerOptions::default().var("ALLOWED_USER_IDS", TEST_USER_ID.to_string()),
        &[CHAT],
    )
    .await
    .unwrap();
    let tmux = Tmux::start().unwrap();
    let agent = Agent::start(&w.base_url(), TEST_API_KEY, "devbox").unwrap();
    agent.wait_connected(1, T).await.unwrap();
    agent
        .start_session(&tmux, &tmux.pane_id, "sess-end", "/home/ada/api")
        .await
        .unwrap();
    let note = w.notify("sess-end", "done").await.unwrap();

    // /end in a reply: a confirmation, nothing typed yet.
    w.reply(CHAT, 1, note.message_id, "/end").await;
    let buttons = buttons_of(&bot, "End <b>").await;
    let end = format!("end:{}", note.token);
    assert_eq!(buttons[0], ("⏹ End session".to_owned(), end.clone()));

    // A stranger's tap does nothing (not even an answer).
    let stranger = Update::callback(2, CHAT, "cb-stranger", &end)
        .message_id(300)
        .from(TEST_USER_ID + 1);
    w.deliver(&stranger).await;
    // Cancel: nothing typed.
    w.deliver(&Update::callback(3, CHAT, "cb-cancel", "end-cancel").message_id(300))
        .await;
    wait_for("the cancel's answer", T, || async {
        bot.calls_of("answerCallbackQuery")
            .into_iter()
            .find(|c| c.params["callback_query_id"] == "cb-cancel")
    })
    .await
    .unwrap();
    assert!(tmux.lines().is_empty(), "{:?}", tmux.lines());

    // The owner confirms: /exit and Enter reach the session's pane, once.
    w.deliver(&Update::callback(4, CHAT, "cb-end", &end).message_id(300))
        .await;
    let lines = tmux.wait_for_lines(1, T).await.unwrap();
    assert_eq!(lines, vec!["/exit".to_owned()]);
    // Answered (cancel, then confirm): the confirmation's buttons are taken off each time.
    wait_for("the confirmation's buttons removed", T, || async {
        let edits = bot.calls_of("editMessageReplyMarkup");
        (edits.len() == 2 && edits.iter().all(|c| c.params["message_id"] == 300)).then_some(())
    })
    .await
    .unwrap();
    assert!(bot
        .calls_of("answerCallbackQuery")
        .iter()
        .all(|c| c.params["callback_query_id"] != "cb-stranger"));
}
