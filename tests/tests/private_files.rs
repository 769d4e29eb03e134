//! Private files stay private: Claude Code runs the `SessionStart` hook before the daemon
//! ever ran, under the usual umask 022, into a data directory that does not exist yet. The
//! hook registers the session with the real Worker and leaves the directory 0700 and every
//! file in it 0600; the daemon started next (same umask) keeps it so, SQLite's `-wal` and
//! `-shm` included.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ccr_e2e::agent::{binary, hook_input};
use ccr_e2e::tmux::Tmux;
use ccr_e2e::wait_for;
use ccr_e2e::worker::{Worker, TEST_API_KEY};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const T: Duration = Duration::from_secs(30);

/// `ccr-agent <args>` under `umask 022`, with the Worker's settings in its environment.
fn under_umask_022(w: &Worker, data: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"umask 022; exec "$0" "$@""#)
        .arg(binary())
        .args(args)
        .env("CCR_DATA_DIR", data)
        .env("CCR_WORKER_URL", w.base_url())
        .env("CCR_API_KEY", TEST_API_KEY)
        .env("CCR_MACHINE_ID", "umaskbox")
        .env_remove("CCR_HOLD_COMMANDS")
        .env_remove("CCR_INJECT_DELAY_MS")
        .env_remove("TMUX")
        .env_remove("TMUX_PANE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The directory is 0700, `expected` exist, and every file is 0600.
fn assert_private(data: &Path, expected: &[&str]) {
    assert_eq!(mode(data), 0o700, "{}", data.display());
    let files: Vec<(String, u32)> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                mode(&e.path()),
            )
        })
        .collect();
    for name in expected {
        assert!(files.iter().any(|(f, _)| f == name), "{name}: {files:?}");
    }
    for (name, m) in &files {
        assert_eq!(*m, 0o600, "{name} has mode {m:o}: {files:?}");
    }
}

#[tokio::test]
async fn the_first_hook_under_umask_022_leaves_the_data_directory_private() {
    let w = Worker::start_default().await.unwrap();
    let tmux = Tmux::start().unwrap();
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join(".local/share/ccr");

    // Claude Code starts in the pane: its SessionStart hook is the first thing to run.
    let mut hook = under_umask_022(&w, &data, &["hook", "session-start"]);
    hook.env("TMUX", tmux.tmux_env())
        .env("TMUX_PANE", &tmux.pane_id);
    let mut child = hook.spawn().unwrap();
    let input = hook_input(
        "SessionStart",
        "sess-u",
        "/w/u",
        Path::new("/nonexistent.jsonl"),
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(T, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let log = std::fs::read_to_string(data.join("hooks.log")).unwrap();
    assert!(log.contains("session registered"), "{log}");
    let sessions = w.sessions().await.unwrap();
    assert!(sessions.to_string().contains("sess-u"), "{sessions}");
    assert_private(&data, &["hooks.log", "agent.sqlite"]);
    // The parents it had to create are private too.
    assert_eq!(mode(&home.path().join(".local/share")), 0o700);

    // Then the daemon starts (a service, same umask): it connects, saves the hooks'
    // settings, and SQLite's WAL files exist while it runs.
    let mut daemon = under_umask_022(&w, &data, &["run"]).spawn().unwrap();
    let want = ["agent.sqlite-wal", "agent.sqlite-shm", "agent.json"];
    wait_for("the daemon's files", T, || async {
        want.iter().all(|f| data.join(f).exists()).then_some(())
    })
    .await
    .unwrap();
    assert_private(&data, &want);
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
}
