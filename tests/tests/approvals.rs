//! Permission requests decided from Telegram, end to end: the hooks installed into a
//! temporary `$HOME` by `ccr-agent install-hooks`, the configured PermissionRequest command run
//! the way Claude Code runs it (documented stdin JSON, stdout read byte for byte), the real
//! Worker on workerd, the Bot API stand-in, and the real daemon.

use std::process::Stdio;
use std::time::Duration;

use ccr_e2e::agent::{binary, Agent};
use ccr_e2e::telegram::{BotApi, Update, TEST_USER_ID};
use ccr_e2e::wait_for;
use ccr_e2e::worker::{start_with_bot, Worker, WorkerOptions, TEST_API_KEY};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

const CHAT: i64 = 4242;
/// Generous: workerd and the agent share two cores with other test processes.
const T: Duration = Duration::from_secs(30);
const STRANGER: i64 = 999;

async fn start() -> (Worker, BotApi) {
    let opts = WorkerOptions::default().var("ALLOWED_USER_IDS", TEST_USER_ID.to_string());
    start_with_bot(opts, &[CHAT]).await.unwrap()
}

/// The Worker and its Bot API stand-in, the daemon `devbox` connected, and
/// `ccr-agent install-hooks` run into a temporary `$HOME` (dropped with the returned
/// directory); the PermissionRequest handler it configured.
async fn start_with_hooks() -> (Worker, BotApi, Agent, tempfile::TempDir, Value) {
    let (w, bot) = start().await;
    let agent = Agent::start(&w.base_url(), TEST_API_KEY, "devbox").unwrap();
    agent.wait_connected(1, T).await.unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary())
        .arg("--data-dir")
        .arg(agent.data_dir())
        .args(["install-hooks", "--permission-timeout", "7200"])
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let command = handler(home.path(), "PermissionRequest");
    (w, bot, agent, home, command)
}

/// The command handler `install-hooks` configured for `event` in `home`'s settings.
fn handler(home: &std::path::Path, event: &str) -> Value {
    let text = std::fs::read_to_string(home.join(".claude/settings.json")).unwrap();
    let settings: Value = serde_json::from_str(&text).unwrap();
    settings["hooks"][event][0]["hooks"][0].clone()
}

/// Runs a configured command hook handler as Claude Code does, JSON on stdin: with `args`
/// (exec form) the program itself with those arguments, no shell; without, the command line
/// through `sh -c` (`exec`, so the child is the hook and a test's signal reaches it).
async fn spawn_hook(handler: &Value, input: &Value) -> Child {
    assert_eq!(handler["type"], "command", "{handler}");
    let command = handler["command"].as_str().unwrap();
    let mut cmd = match handler["args"].as_array() {
        Some(args) => {
            let mut cmd = Command::new(command);
            cmd.args(args.iter().map(|a| a.as_str().unwrap()));
            cmd
        }
        None => {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", &format!("exec {command}")]);
            cmd
        }
    };
    let mut child = cmd
        .env_remove("CCR_WORKER_URL")
        .env_remove("CCR_API_KEY")
        .env_remove("CCR_MACHINE_ID")
        .env_remove("CCR_DATA_DIR")
        .env_remove("TMUX")
        .env_remove("TMUX_PANE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    child
}

/// The hook's stdout once it exits (within `T`).
async fn stdout_of(child: Child) -> String {
    let out = tokio::time::timeout(T, child.wait_with_output())
        .await
        .expect("the hook exits once the chat decided")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn permission_input(session: &str, tool: &str, tool_input: Value, suggestions: Value) -> Value {
    json!({
        "session_id": session,
        "transcript_path": format!("/home/u/.claude/projects/p/{session}.jsonl"),
        "cwd": "/home/u/p",
        "permission_mode": "default",
        "hook_event_name": "PermissionRequest",
        "tool_name": tool,
        "tool_input": tool_input,
        "permission_suggestions": suggestions,
    })
}

/// The card (a sendMessage containing `needle`): its message id and its buttons' data.
async fn card(bot: &BotApi, needle: &str) -> (i64, Vec<String>, String) {
    let call = wait_for("the card", T, || async {
        bot.calls_of("sendMessage").into_iter().find(|c| {
            c.ok && c.params["text"]
                .as_str()
                .is_some_and(|t| t.contains(needle))
        })
    })
    .await
    .unwrap();
    let data = call.params["reply_markup"]["inline_keyboard"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter())
        .map(|b| b["callback_data"].as_str().unwrap().to_owned())
        .collect();
    let text = call.params["text"].as_str().unwrap().to_owned();
    (call.message_id.unwrap(), data, text)
}

/// The card's button whose callback data ends with `suffix` (`:a` allow, `:d` deny, …).
fn button(data: &[String], suffix: &str) -> String {
    data.iter()
        .find(|d| d.ends_with(suffix))
        .unwrap_or_else(|| panic!("no button {suffix} in {data:?}"))
        .clone()
}

async fn tap(w: &Worker, update_id: i64, message_id: i64, query: &str, data: &str, from: i64) {
    let update = Update::callback(update_id, CHAT, query, data)
        .message_id(message_id)
        .from(from);
    w.deliver(&update).await;
}

/// The text of the answerCallbackQuery for query `id`.
async fn toast(bot: &BotApi, id: &str) -> String {
    wait_for(&format!("the answer to {id}"), T, || async {
        bot.calls_of("answerCallbackQuery")
            .into_iter()
            .find(|c| c.params["callback_query_id"] == id)
            .map(|c| c.params["text"].as_str().unwrap_or_default().to_owned())
    })
    .await
    .unwrap()
}

/// The card's last edit.
async fn edited(bot: &BotApi, message_id: i64, needle: &str) -> Value {
    wait_for("the card's edit", T, || async {
        bot.calls_of("editMessageText")
            .into_iter()
            .map(|c| c.params)
            .find(|p| {
                p["message_id"] == message_id
                    && p["text"].as_str().is_some_and(|t| t.contains(needle))
            })
    })
    .await
    .unwrap()
}

fn suggestion() -> Value {
    json!({"type":"addRules","rules":[{"toolName":"Bash","ruleContent":"npm test"}],
           "behavior":"allow","destination":"localSettings"})
}

#[tokio::test]
async fn bash_always_allow_first_tap_wins_and_strangers_do_nothing() {
    let (w, bot, agent, _home, command) = start_with_hooks().await;
    assert_eq!(command["timeout"], 7200);
    // Exec form: the agent itself, no shell, pointed at this agent's data directory.
    assert_eq!(command["command"], binary().to_str().unwrap(), "{command}");
    assert_eq!(
        command["args"],
        json!([
            "--data-dir",
            agent.data_dir().to_str().unwrap(),
            "hook",
            "permission-request"
        ])
    );

    let input = permission_input(
        "sess-bash",
        "Bash",
        json!({"command": "npm test", "description": "Run the tests"}),
        json!([suggestion()]),
    );
    let hook = spawn_hook(&command, &input).await;
    let (card_id, data, text) = card(&bot, "npm test").await;
    assert!(
        text.contains("<pre>npm test</pre>\nRun the tests"),
        "{text}"
    );
    assert!(text.contains("devbox") && text.contains("Bash"), "{text}");
    let always = button(&data, ":s0");
    let deny = button(&data, ":d");
    assert!(data.iter().all(|d| d.len() <= 64));

    // A stranger's tap does nothing, not even a toast.
    tap(&w, 1, card_id, "q-stranger", &deny, STRANGER).await;
    tap(&w, 2, card_id, "q-1", &always, TEST_USER_ID).await;
    assert_eq!(
        stdout_of(hook).await,
        format!(
            r#"{{"hookSpecificOutput":{{"hookEventName":"PermissionRequest","decision":{{"behavior":"allow","updatedPermissions":[{}]}}}}}}"#,
            suggestion()
        )
    );
    assert!(toast(&bot, "q-1").await.starts_with("allowed"));
    let edit = edited(&bot, card_id, "allowed").await;
    assert!(edit.get("reply_markup").is_none(), "the buttons are gone");
    // A second tap is told who won.
    tap(&w, 3, card_id, "q-2", &deny, TEST_USER_ID).await;
    assert!(toast(&bot, "q-2")
        .await
        .starts_with("Already answered: allowed"));
    assert!(!bot
        .calls_of("answerCallbackQuery")
        .iter()
        .any(|c| c.params["callback_query_id"] == "q-stranger"));
}

#[tokio::test]
async fn a_text_reply_to_an_edit_card_denies_with_that_text() {
    let (w, bot, _agent, _home, command) = start_with_hooks().await;
    let input = permission_input(
        "sess-edit",
        "Edit",
        json!({"file_path": "/home/u/p/src/main.rs", "old_string": "foo()", "new_string": "bar()"}),
        json!([]),
    );
    let hook = spawn_hook(&command, &input).await;
    let (card_id, _, text) = card(&bot, "main.rs").await;
    assert!(text.contains("foo()") && text.contains("bar()"), "{text}");
    // /pending lists it, with its age.
    let pending = Update::message(9, CHAT).text("/pending");
    w.deliver(&pending).await;
    let list = bot.wait_message("open request", T).await.unwrap();
    let list = list["text"].as_str().unwrap();
    assert!(list.contains("on devbox: Edit, waiting"), "{list}");
    let update = Update::reply(10, CHAT, card_id, "rename it in lib.rs instead");
    w.deliver(&update).await;
    assert_eq!(
        stdout_of(hook).await,
        r#"{"hookSpecificOutput":{"hookEventName":"PermissionRequest","decision":{"behavior":"deny","message":"rename it in lib.rs instead","interrupt":false}}}"#
    );
    edited(&bot, card_id, "denied").await;
}

#[tokio::test]
async fn a_decision_reaches_a_hook_across_an_agent_crash_while_the_machine_is_offline() {
    let (w, bot, mut agent, _home, command) = start_with_hooks().await;
    let input = permission_input(
        "sess-mcp",
        "mcp__github__create_issue",
        json!({"title": "Flaky test", "body": "see CI"}),
        json!([]),
    );
    let hook = spawn_hook(&command, &input).await;
    let (card_id, data, text) = card(&bot, "create_issue").await;
    assert!(
        text.contains("<b>github</b>") && text.contains("Flaky test"),
        "{text}"
    );
    agent.kill9().await;
    let allow = button(&data, ":a");
    tap(&w, 20, card_id, "q-off", &allow, TEST_USER_ID).await;
    assert_eq!(toast(&bot, "q-off").await, "allowed");
    agent.restart().unwrap();
    assert_eq!(
        stdout_of(hook).await,
        r#"{"hookSpecificOutput":{"hookEventName":"PermissionRequest","decision":{"behavior":"allow"}}}"#
    );
    agent
        .wait_log("decision stored and acked", 1, T)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_hook_waiting_across_a_worker_restart_gets_deny_and_stop() {
    let (mut w, bot, agent, _home, command) = start_with_hooks().await;
    let input = permission_input(
        "sess-web",
        "WebFetch",
        json!({"url": "https://example.com/docs", "prompt": "summarise"}),
        json!([]),
    );
    let hook = spawn_hook(&command, &input).await;
    let (card_id, data, _) = card(&bot, "https://example.com/docs").await;
    w.restart().await.unwrap();
    agent.wait_connected(2, T).await.unwrap();
    let stop = button(&data, ":x");
    tap(&w, 30, card_id, "q-stop", &stop, TEST_USER_ID).await;
    assert_eq!(
        stdout_of(hook).await,
        r#"{"hookSpecificOutput":{"hookEventName":"PermissionRequest","decision":{"behavior":"deny","message":"Denied from Telegram; stop and wait for instructions.","interrupt":true}}}"#
    );
}

#[tokio::test]
async fn questions_are_answered_by_a_pick_and_multi_select_toggles() {
    let (w, bot, _agent, _home, command) = start_with_hooks().await;
    let questions = json!([
        {"question": "Which database?", "header": "DB", "multiSelect": false,
         "options": [{"label": "Postgres", "description": "robust"}, {"label": "SQLite"}]},
        {"question": "Which features?", "header": "Features", "multiSelect": true,
         "options": [{"label": "Auth"}, {"label": "Search"}, {"label": "Billing"}]}
    ]);
    let input = permission_input(
        "sess-ask",
        "AskUserQuestion",
        json!({"questions": questions}),
        json!([]),
    );
    let hook = spawn_hook(&command, &input).await;
    let (card_id, data, text) = card(&bot, "Which database?").await;
    assert!(
        text.contains("Which features?") && text.contains("robust"),
        "{text}"
    );
    let press = |suffix: &str| button(&data, suffix);
    tap(&w, 40, card_id, "q-a1", &press(":q0o1"), TEST_USER_ID).await;
    tap(&w, 41, card_id, "q-a2", &press(":q1o0"), TEST_USER_ID).await;
    tap(&w, 42, card_id, "q-a3", &press(":q1o2"), TEST_USER_ID).await;
    tap(&w, 43, card_id, "q-a4", &press(":q1o1"), TEST_USER_ID).await;
    tap(&w, 44, card_id, "q-a5", &press(":q1o1"), TEST_USER_ID).await;
    assert_eq!(toast(&bot, "q-a5").await, "☐ Search");
    tap(&w, 45, card_id, "q-a6", &press(":q1s"), TEST_USER_ID).await;
    let mut updated = json!({"questions": questions});
    updated["answers"] = json!({"Which database?": "SQLite", "Which features?": "Auth, Billing"});
    assert_eq!(
        stdout_of(hook).await,
        format!(
            r#"{{"hookSpecificOutput":{{"hookEventName":"PermissionRequest","decision":{{"behavior":"allow","updatedInput":{updated}}}}}}}"#
        )
    );
    assert!(!bot.calls_of("editMessageReplyMarkup").is_empty());
    edited(&bot, card_id, "answered").await;
}

#[tokio::test]
async fn a_plan_is_approved_with_its_input_echoed() {
    let (w, bot, _agent, _home, command) = start_with_hooks().await;
    let plan_input = json!({"plan": "# Plan\n1. Add the table\n2. <Test> it", "planFilePath": "/home/u/.claude/plans/p.md"});
    let input = permission_input("sess-plan", "ExitPlanMode", plan_input.clone(), json!([]));
    let hook = spawn_hook(&command, &input).await;
    let (card_id, data, text) = card(&bot, "Add the table").await;
    assert!(text.contains("&lt;Test&gt;"), "{text}");
    let approve = button(&data, ":a");
    tap(&w, 50, card_id, "q-p", &approve, TEST_USER_ID).await;
    assert_eq!(
        stdout_of(hook).await,
        format!(
            r#"{{"hookSpecificOutput":{{"hookEventName":"PermissionRequest","decision":{{"behavior":"allow","updatedInput":{plan_input}}}}}}}"#
        )
    );
    edited(&bot, card_id, "plan approved").await;
}

/// Runs another hook of the session (`post-tool-use`, `user-prompt-submit`) from the
/// configured settings, as Claude Code would; waits for it to exit.
async fn run_other_hook(home: &std::path::Path, event: &str, input: &Value) {
    let hook = handler(home, event);
    assert_eq!(hook["timeout"], 10, "{event} is a quick hook");
    let child = spawn_hook(&hook, input).await;
    assert_eq!(stdout_of(child).await, "");
}

#[tokio::test]
async fn a_card_answered_at_the_terminal_is_closed_and_a_late_tap_is_told() {
    let (w, bot, _agent, home, command) = start_with_hooks().await;
    let tool_input = json!({"command": "cargo build", "description": "Build"});
    let input = permission_input("sess-term", "Bash", tool_input.clone(), json!([]));
    let hook = spawn_hook(&command, &input).await;
    let (card_id, data, _) = card(&bot, "cargo build").await;
    // The person allowed it in the terminal: the tool ran, Claude Code runs PostToolUse.
    let post = json!({
        "session_id": "sess-term", "transcript_path": "/t.jsonl", "cwd": "/home/u/p",
        "permission_mode": "default", "hook_event_name": "PostToolUse", "tool_name": "Bash",
        "tool_input": tool_input, "tool_response": {"stdout": "ok"}
    });
    run_other_hook(home.path(), "PostToolUse", &post).await;
    assert_eq!(
        stdout_of(hook).await,
        "",
        "no decision: the terminal answered"
    );
    let edit = edited(&bot, card_id, "answered at the terminal").await;
    assert!(edit.get("reply_markup").is_none());
    let allow = button(&data, ":a");
    tap(&w, 60, card_id, "q-late", &allow, TEST_USER_ID).await;
    assert_eq!(
        toast(&bot, "q-late").await,
        "Already answered: answered at the terminal"
    );
}

#[tokio::test]
async fn a_killed_hook_s_card_closes_when_the_session_moves_on_and_a_stopped_one_expires() {
    let (_w, bot, _agent, home, command) = start_with_hooks().await;

    // SIGKILL: the hook cannot say anything; the session's next prompt closes the card.
    let input = permission_input(
        "sess-kill",
        "Write",
        json!({"file_path": "/p/a.txt", "content": "hello\nworld"}),
        json!([]),
    );
    let mut hook = spawn_hook(&command, &input).await;
    let (card_id, _, text) = card(&bot, "a.txt").await;
    assert!(
        text.contains("11 bytes") && text.contains("hello"),
        "{text}"
    );
    hook.kill().await.unwrap();
    let prompt = json!({"session_id": "sess-kill", "transcript_path": "/t.jsonl", "cwd": "/p",
        "hook_event_name": "UserPromptSubmit", "prompt": "never mind"});
    run_other_hook(home.path(), "UserPromptSubmit", &prompt).await;
    edited(&bot, card_id, "answered at the terminal").await;

    // SIGTERM (Claude Code's timeout): the hook closes its own card as expired.
    let input = permission_input(
        "sess-term2",
        "WebFetch",
        json!({"url": "https://example.org/x"}),
        json!([]),
    );
    let hook = spawn_hook(&command, &input).await;
    let (card_id, _, _) = card(&bot, "https://example.org/x").await;
    let pid = hook.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    edited(&bot, card_id, "expired").await;
    drop(hook);
}

#[tokio::test]
async fn stop_tells_the_truth_and_a_permission_prompt_is_not_sent_twice() {
    let (w, bot, agent, home, command) = start_with_hooks().await;
    let run = |event: &str, input: Value| {
        let handler = handler(home.path(), event);
        async move { stdout_of(spawn_hook(&handler, &input).await).await }
    };
    // Stop: the final text from the hook input (the transcript does not exist).
    run(
        "Stop",
        json!({"session_id": "sess-stop", "transcript_path": "/nonexistent.jsonl", "cwd": "/p",
               "hook_event_name": "Stop", "stop_hook_active": false,
               "last_assistant_message": "All 42 tests pass."}),
    )
    .await;
    bot.wait_message("All 42 tests pass.", T).await.unwrap();
    // StopFailure: the API error reaches the chat.
    run(
        "StopFailure",
        json!({"session_id": "sess-stop", "transcript_path": "/nonexistent.jsonl", "cwd": "/p",
               "hook_event_name": "StopFailure", "error": "rate_limit",
               "last_assistant_message": "API Error: Rate limit reached"}),
    )
    .await;
    bot.wait_message("Claude stopped: API Error: Rate limit reached", T)
        .await
        .unwrap();
    // A permission prompt while its card is out is not sent again with useless y/n buttons.
    let input = permission_input(
        "sess-stop",
        "Bash",
        json!({"command": "make deploy"}),
        json!([]),
    );
    let hook = spawn_hook(&command, &input).await;
    let (card_id, data, _) = card(&bot, "make deploy").await;
    run(
        "Notification",
        json!({"session_id": "sess-stop", "transcript_path": "/nonexistent.jsonl", "cwd": "/p",
               "hook_event_name": "Notification", "notification_type": "permission_prompt",
               "message": "Claude needs your permission to use Bash"}),
    )
    .await;
    wait_for("the prompt to be skipped", T, || async {
        agent.hooks_log().contains("not sent twice").then_some(())
    })
    .await
    .unwrap();
    assert!(!bot.calls_of("sendMessage").iter().any(|c| c.params["text"]
        .as_str()
        .unwrap_or("")
        .contains("needs your permission")));
    let allow = button(&data, ":a");
    tap(&w, 70, card_id, "q-s", &allow, TEST_USER_ID).await;
    assert!(stdout_of(hook).await.contains(r#""behavior":"allow""#));
}

/// The hook hands its card's request to the daemon, which sends it on the machine socket it
/// holds open; with the daemon stopped (its socket file left behind) the hook opens the card
/// over HTTP itself, and the decision still reaches it once the daemon is back.
#[tokio::test]
async fn the_daemon_carries_a_card_s_request_and_http_does_when_it_is_down() {
    let (w, bot, mut agent, _home, command) = start_with_hooks().await;

    let input = permission_input(
        "sess-hand",
        "Bash",
        json!({"command": "cargo build --release", "description": "Build"}),
        json!([]),
    );
    let hook = spawn_hook(&command, &input).await;
    let (card_id, data, _) = card(&bot, "cargo build --release").await;
    wait_for("the hook's log line", T, || async {
        agent
            .hooks_log()
            .contains("card opened through the daemon")
            .then_some(())
    })
    .await
    .unwrap();
    assert!(
        !agent.hooks_log().contains("over HTTP"),
        "{}",
        agent.hooks_log()
    );
    let allow = button(&data, ":a");
    tap(&w, 40, card_id, "q-hand", &allow, TEST_USER_ID).await;
    assert_eq!(
        stdout_of(hook).await,
        r#"{"hookSpecificOutput":{"hookEventName":"PermissionRequest","decision":{"behavior":"allow"}}}"#
    );

    // SIGKILL: the daemon's socket file stays, nobody answers on it.
    agent.kill9().await;
    assert!(agent.data_dir().join("hook.sock").exists());
    let input = permission_input(
        "sess-hand",
        "Bash",
        json!({"command": "cargo publish --dry-run", "description": "Publish"}),
        json!([]),
    );
    let hook = spawn_hook(&command, &input).await;
    let (card_id, data, _) = card(&bot, "cargo publish --dry-run").await;
    wait_for("the hook's log line", T, || async {
        agent
            .hooks_log()
            .contains("card opened over HTTP")
            .then_some(())
    })
    .await
    .unwrap();
    let deny = button(&data, ":d");
    tap(&w, 41, card_id, "q-hand-2", &deny, TEST_USER_ID).await;
    agent.restart().unwrap();
    let out = stdout_of(hook).await;
    assert!(out.contains(r#""behavior":"deny""#), "{out}");
    // The restarted daemon took the socket over from the dead one's file.
    let input = permission_input(
        "sess-hand",
        "Bash",
        json!({"command": "cargo doc --open", "description": "Docs"}),
        json!([]),
    );
    agent.wait_connected(2, T).await.unwrap();
    let hook = spawn_hook(&command, &input).await;
    let (card_id, data, _) = card(&bot, "cargo doc --open").await;
    wait_for("the third card's log line", T, || async {
        (agent
            .hooks_log()
            .matches("card opened through the daemon")
            .count()
            == 2)
            .then_some(())
    })
    .await
    .unwrap();
    let allow = button(&data, ":a");
    tap(&w, 42, card_id, "q-hand-3", &allow, TEST_USER_ID).await;
    assert!(stdout_of(hook).await.contains(r#""behavior":"allow""#));
}
