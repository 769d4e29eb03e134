//! `ccr-agent` end to end: the real Worker on workerd, the Bot API stand-in, the real agent
//! binary started without `$TMUX` (as a service would be), and real tmux panes on a private
//! server whose program records every line it receives.

use std::time::Duration;

use ccr_e2e::agent::{add_recording_pane, hook_input, recorded_lines, Agent};
use ccr_e2e::telegram::BotApi;
use ccr_e2e::tmux::Tmux;
use ccr_e2e::wait_for;
use ccr_e2e::worker::{start_with_bot, Worker, WorkerOptions, TEST_API_KEY};
use serde_json::{json, Value};

const CHAT: i64 = 4242;
/// Generous: workerd and the agent share two cores with other test processes.
const T: Duration = Duration::from_secs(30);

async fn start() -> (Worker, BotApi) {
    start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap()
}

fn agent(w: &Worker, machine: &str) -> Agent {
    Agent::start(&w.base_url(), TEST_API_KEY, machine).unwrap()
}

/// Asserts `lines()` stays exactly `want` for a while (nothing typed twice).
async fn stays(what: &str, want: &[&str], lines: impl Fn() -> Vec<String>) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(lines(), want, "{what}");
}

#[tokio::test]
async fn a_telegram_reply_lands_in_the_pane_exactly_once() {
    let (w, _bot) = start().await;
    let tmux = Tmux::start().unwrap();
    let agent = agent(&w, "devbox");
    agent.wait_connected(1, T).await.unwrap();
    agent
        .start_session(&tmux, &tmux.pane_id, "sess-1", "/home/ada/api")
        .await
        .unwrap();

    let msg = w.notify("sess-1", "done").await.unwrap().message_id;
    w.reply(CHAT, 1, msg, "run the tests; echo $HOME 'quoted'")
        .await;
    let lines = tmux.wait_for_lines(1, T).await.unwrap();
    assert_eq!(lines, ["run the tests; echo $HOME 'quoted'"]);
    // The same update again (Telegram retries) and time for any redelivery: still once.
    w.reply(CHAT, 1, msg, "run the tests; echo $HOME 'quoted'")
        .await;
    stays("the pane", &["run the tests; echo $HOME 'quoted'"], || {
        tmux.lines()
    })
    .await;
    agent.wait_log("command typed", 1, T).await.unwrap();
    assert_eq!(agent.log().matches("command typed").count(), 1);

    // `ccr-agent status` shows it all.
    let out = std::process::Command::new(ccr_e2e::agent::binary())
        .arg("status")
        .env("CCR_DATA_DIR", agent.data_dir())
        .output()
        .unwrap();
    assert!(out.status.success());
    let status = String::from_utf8(out.stdout).unwrap();
    assert!(status.contains("connection:   connected since"), "{status}");
    assert!(status.contains("for session sess-1"), "{status}");
    assert!(status.contains("typed"), "{status}");
    assert!(
        status.contains("0 stored, 0 acked, 0 executing, 1 done"),
        "{status}"
    );
    assert!(
        status.contains(&format!("sess-1  api  pane {}", tmux.pane_id)),
        "{status}"
    );
}

#[test]
fn install_hooks_merges_into_settings_json() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("settings.json");
    std::fs::write(
        &settings,
        r#"{"model":"opus","hooks":{"Stop":[{"hooks":[{"type":"command","command":"say done"}]}]}}"#,
    )
    .unwrap();
    let install = || {
        std::process::Command::new(ccr_e2e::agent::binary())
            .args(["install-hooks", "--settings"])
            .arg(&settings)
            .output()
            .unwrap()
    };
    let out = install();
    assert!(out.status.success(), "{out:?}");
    let merged: Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert_eq!(merged["model"], "opus");
    let stop: Vec<&Value> = merged["hooks"]["Stop"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["hooks"].as_array().unwrap())
        .collect();
    assert_eq!(stop.len(), 2, "{merged}");
    assert_eq!(stop[0]["command"], "say done");
    assert!(
        stop[1]["command"].as_str().unwrap().ends_with("/ccr-agent"),
        "{}",
        stop[1]
    );
    assert_eq!(stop[1]["args"], json!(["hook", "stop"]), "exec form");
    for event in ["SessionStart", "Notification", "SessionEnd"] {
        assert_eq!(
            merged["hooks"][event].as_array().unwrap().len(),
            1,
            "{event}"
        );
    }
    let backups = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("settings.json.bak-")
            })
            .count()
    };
    assert_eq!(backups(), 1);
    // Again: nothing changes, no new backup.
    let before = std::fs::read_to_string(&settings).unwrap();
    let out = install();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("already installed"));
    assert_eq!(std::fs::read_to_string(&settings).unwrap(), before);
    assert_eq!(backups(), 1);
}

#[test]
fn missing_settings_exit_2_with_one_clear_line() {
    let out = std::process::Command::new(ccr_e2e::agent::binary())
        .args(["--machine-id", "devbox"])
        .env_remove("CCR_WORKER_URL")
        .env_remove("CCR_API_KEY")
        .env("CCR_DATA_DIR", "/tmp/ccr-agent-unused")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("CCR_WORKER_URL"), "{err}");
    let out = std::process::Command::new(ccr_e2e::agent::binary())
        .args([
            "--machine-id",
            "dev box",
            "--worker-url",
            "http://127.0.0.1:1",
        ])
        .env("CCR_API_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CCR_MACHINE_ID"));
}

#[tokio::test]
async fn a_command_stored_before_a_crash_runs_once_after_restart() {
    let (w, _bot) = start().await;
    let tmux = Tmux::start().unwrap();
    // The first run stores and acks commands but does not execute them, so SIGKILL lands
    // exactly between storing and executing.
    let mut agent = Agent::start_with(
        &w.base_url(),
        TEST_API_KEY,
        "crashbox",
        vec![("CCR_HOLD_COMMANDS".into(), "1".into())],
    )
    .unwrap();
    agent.wait_connected(1, T).await.unwrap();
    agent
        .start_session(&tmux, &tmux.pane_id, "sess-c", "/w/crash")
        .await
        .unwrap();
    let msg = w.notify("sess-c", "ready").await.unwrap().message_id;
    w.reply(CHAT, 2, msg, "survive the crash").await;
    agent
        .wait_log("command stored and acked", 1, T)
        .await
        .unwrap();
    agent.kill9().await;
    assert!(tmux.lines().is_empty());

    agent.env.clear();
    agent.restart().unwrap();
    let lines = tmux.wait_for_lines(1, T).await.unwrap();
    assert_eq!(lines, ["survive the crash"]);
    stays("the pane", &["survive the crash"], || tmux.lines()).await;
}

#[tokio::test]
async fn the_agent_reconnects_after_a_worker_restart() {
    let (mut w, _bot) = start().await;
    let tmux = Tmux::start().unwrap();
    let agent = agent(&w, "restartbox");
    agent.wait_connected(1, T).await.unwrap();
    agent
        .start_session(&tmux, &tmux.pane_id, "sess-r", "/w/r")
        .await
        .unwrap();
    let msg = w.notify("sess-r", "before").await.unwrap().message_id;
    w.reply(CHAT, 3, msg, "first").await;
    tmux.wait_for_lines(1, T).await.unwrap();

    w.restart().await.unwrap();
    agent
        .wait_connected(2, Duration::from_secs(90))
        .await
        .unwrap();
    let msg = w.notify("sess-r", "after").await.unwrap().message_id;
    w.reply(CHAT, 4, msg, "second").await;
    let lines = tmux.wait_for_lines(2, T).await.unwrap();
    assert_eq!(lines, ["first", "second"]);
}

#[tokio::test]
async fn two_sessions_on_two_panes_get_only_their_own_replies() {
    let (w, _bot) = start().await;
    let tmux = Tmux::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (pane_b, record_b) = add_recording_pane(&tmux, dir.path(), "b").unwrap();
    let agent = agent(&w, "twobox");
    agent.wait_connected(1, T).await.unwrap();
    agent
        .start_session(&tmux, &tmux.pane_id, "sess-a", "/w/alpha")
        .await
        .unwrap();
    agent
        .start_session(&tmux, &pane_b, "sess-b", "/w/beta")
        .await
        .unwrap();

    let msg_a = w.notify("sess-a", "alpha done").await.unwrap().message_id;
    let msg_b = w.notify("sess-b", "beta done").await.unwrap().message_id;
    w.reply(CHAT, 5, msg_b, "for beta").await;
    w.reply(CHAT, 6, msg_a, "for alpha").await;
    w.reply(CHAT, 7, msg_b, "beta again").await;

    tmux.wait_for_lines(1, T).await.unwrap();
    wait_for("two lines in pane b", T, || async {
        (recorded_lines(&record_b).len() >= 2).then_some(())
    })
    .await
    .unwrap();
    stays("pane a", &["for alpha"], || tmux.lines()).await;
    assert_eq!(recorded_lines(&record_b), ["for beta", "beta again"]);
}

#[tokio::test]
async fn hooks_run_as_claude_code_runs_them() {
    let (w, bot) = start().await;
    let tmux = Tmux::start().unwrap();
    let agent = agent(&w, "hookbox");
    agent.wait_connected(1, T).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let transcript = dir.path().join("sess-h.jsonl");
    let lines = [
        json!({"type":"user","message":{"role":"user","content":"fix the build"},"isSidechain":false}),
        json!({"type":"assistant","isSidechain":false,"message":{"id":"msg_1","role":"assistant",
            "content":[{"type":"thinking","thinking":"look first","signature":"s"}]}}),
        json!({"type":"assistant","isSidechain":false,"message":{"id":"msg_1","role":"assistant",
            "content":[{"type":"tool_use","id":"toolu_1","name":"Bash","input":{"command":"make"}}]}}),
        json!({"type":"user","isSidechain":false,"message":{"role":"user","content":[
            {"type":"tool_result","tool_use_id":"toolu_1","content":"ok"}]}}),
        json!({"type":"assistant","isSidechain":false,"message":{"id":"msg_2","role":"assistant",
            "content":[{"type":"text","text":"The build is green again."}]}}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&transcript, text).unwrap();
    let cwd = "/home/ada/projects/webshop";

    let out = agent
        .run_hook(
            "session-start",
            &hook_input("SessionStart", "sess-h", cwd, &transcript),
            Some((&tmux, &tmux.pane_id)),
        )
        .await
        .unwrap();
    assert!(out.status.success());
    let sessions = w.sessions().await.unwrap();
    let s = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sessionId"] == "sess-h")
        .unwrap_or_else(|| panic!("registered: {sessions}"));
    assert_eq!(s["machineId"], "hookbox");
    assert_eq!(s["label"], "webshop");

    let out = agent
        .run_hook(
            "stop",
            &hook_input("Stop", "sess-h", cwd, &transcript),
            Some((&tmux, &tmux.pane_id)),
        )
        .await
        .unwrap();
    assert!(out.status.success());
    let sent = bot.wait_text("The build is green again.", T).await.unwrap();
    assert!(sent.contains("webshop"), "{sent}");
    assert!(sent.contains(cwd), "{sent}");
    assert!(
        !sent.contains("look first") && !sent.contains("make"),
        "{sent}"
    );

    let mut notification = hook_input("Notification", "sess-h", cwd, &transcript);
    notification["message"] = json!("Claude needs your permission to use Bash");
    let out = agent
        .run_hook("notification", &notification, Some((&tmux, &tmux.pane_id)))
        .await
        .unwrap();
    assert!(out.status.success());
    bot.wait_text("Claude needs your permission to use Bash", T)
        .await
        .unwrap();

    // The reply to the stop notification reaches the pane the hook recorded.
    let stop_msg = w.notify("sess-h", "direct").await.unwrap().message_id;
    w.reply(CHAT, 8, stop_msg, "ship it").await;
    assert_eq!(tmux.wait_for_lines(1, T).await.unwrap(), ["ship it"]);

    let out = agent
        .run_hook(
            "session-end",
            &hook_input("SessionEnd", "sess-h", cwd, &transcript),
            None,
        )
        .await
        .unwrap();
    assert!(out.status.success());
    let sessions = w.sessions().await.unwrap();
    assert!(
        !sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["sessionId"] == "sess-h"),
        "{sessions}"
    );

    // A hook never fails Claude: garbage input and an unreachable Worker still exit 0, fast.
    let started = std::time::Instant::now();
    let out = agent
        .run_hook("stop", &json!("not hook json"), None)
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(started.elapsed() < Duration::from_secs(9));
}

#[tokio::test]
async fn sigterm_closes_cleanly_and_a_wrong_key_is_reported() {
    let (w, _bot) = start().await;
    let mut agent = agent(&w, "termbox");
    agent.wait_connected(1, T).await.unwrap();
    let status = agent.terminate().await.unwrap();
    assert!(status.success(), "{status:?}\n{}", agent.log());
    assert!(agent.log().contains("SIGTERM"), "{}", agent.log());

    let bad = Agent::start(&w.base_url(), "not-the-key", "badkey").unwrap();
    bad.wait_log("rejected the API key", 1, T).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Not retried fast: one attempt in these seconds.
    assert_eq!(bad.log().matches("rejected the API key").count(), 1);

    // The machine key derived from the admin key works for its own machine.
    let key = std::process::Command::new(ccr_e2e::agent::binary())
        .args(["machine-key", "--machine-id", "keybox"])
        .env("CCR_API_KEY", TEST_API_KEY)
        .output()
        .unwrap();
    assert!(key.status.success());
    let key = String::from_utf8(key.stdout).unwrap();
    let scoped = Agent::start(&w.base_url(), key.trim(), "keybox").unwrap();
    scoped.wait_connected(1, T).await.unwrap();
}
