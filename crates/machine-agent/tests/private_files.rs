//! The data directory is 0700 and its files 0600 whoever creates them first, under the usual
//! umask 022: each creator is the real `ccr-agent` binary run through `sh -c 'umask 022; …'`
//! (the umask is the child's own, so these tests do not race the other tests' files).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ccr-agent");

/// A `ccr-agent` command run by `sh` under `umask 022`, with no `CCR_*` from the test's own
/// environment, the data directory `data` and a Worker nobody listens on.
fn agent(data: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"umask 022; exec "$0" "$@""#)
        .arg(BIN)
        .args(args)
        .env_remove("CCR_API_KEY")
        .env_remove("CCR_MACHINE_ID")
        .env_remove("TMUX")
        .env_remove("TMUX_PANE")
        .env("CCR_DATA_DIR", data)
        .env("CCR_WORKER_URL", "http://127.0.0.1:9")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn run(mut cmd: Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every entry of `data`: (path, mode).
fn entries(data: &Path) -> Vec<(PathBuf, u32)> {
    std::fs::read_dir(data)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let m = mode(&p);
            (p, m)
        })
        .collect()
}

/// The data directory is 0700 and every file in it 0600; `expected` files exist.
fn assert_private(data: &Path, expected: &[&str]) {
    assert_eq!(mode(data), 0o700, "{}", data.display());
    for name in expected {
        assert!(
            data.join(name).exists(),
            "{name} missing: {:?}",
            entries(data)
        );
    }
    for (path, m) in entries(data) {
        assert_eq!(m, 0o600, "{} has mode {m:o}", path.display());
    }
}

fn hook_input(session: &str) -> String {
    serde_json::json!({
        "session_id": session,
        "transcript_path": "/nonexistent.jsonl",
        "cwd": "/tmp",
        "hook_event_name": "SessionStart",
        "source": "startup",
    })
    .to_string()
}

#[test]
fn the_sh_umask_really_is_022() {
    // The premise of the file: a plain file created under this `sh` is 0644.
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"umask 022; : > "$0""#)
        .arg(&probe)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(mode(&probe), 0o644);
}

#[test]
fn a_hook_that_runs_first_creates_a_private_directory_log_and_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fresh/data");
    let out = run(agent(&data, &["hook", "session-start"]), &hook_input("s1"));
    // A hook always exits 0 (here its Worker is down and its key unset).
    assert!(out.status.success(), "{out:?}");
    assert_private(&data, &["hooks.log", "agent.sqlite"]);
    // The missing parent it created is private too.
    assert_eq!(mode(&dir.path().join("fresh")), 0o700);
}

#[test]
fn status_creates_nothing_readable_by_others() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = run(agent(&data, &["status"]), "");
    assert!(out.status.success(), "{out:?}");
    if data.exists() {
        assert_private(&data, &[]);
    }
    // With the daemon's database there, status opens it: still private.
    run(agent(&data, &["hook", "session-start"]), &hook_input("s1"));
    let out = run(agent(&data, &["status"]), "");
    assert!(out.status.success(), "{out:?}");
    assert_private(&data, &["agent.sqlite"]);
}

#[test]
fn doctor_creates_a_private_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = agent(&data, &["doctor", "--timeout", "1"]);
    cmd.env("CCR_API_KEY", "k").env("CCR_MACHINE_ID", "m1");
    let out = run(cmd, "");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("is writable"), "{report}");
    assert_private(&data, &[]);
}

#[test]
fn install_service_creates_a_private_directory_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let unit = dir.path().join("ccr-agent.service");
    let mut cmd = agent(
        &data,
        &[
            "--machine-id",
            "m1",
            "install-service",
            "--platform",
            "linux",
            "--path",
            &unit.to_string_lossy(),
        ],
    );
    cmd.env("CCR_API_KEY", "k");
    let out = run(cmd, "");
    assert!(out.status.success(), "{out:?}");
    assert_private(&data, &["agent.json"]);
    // The unit holds no secret and is a normal file.
    assert_eq!(mode(&unit), 0o644);
}

#[test]
fn the_running_daemon_keeps_its_database_wal_and_shm_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = agent(&data, &["--machine-id", "m1", "run"]);
    cmd.env("CCR_API_KEY", "k")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut daemon = cmd.spawn().unwrap();
    // While it runs, SQLite's WAL and shared-memory files exist beside the database.
    let deadline = Instant::now() + Duration::from_secs(20);
    let want = [
        "agent.sqlite",
        "agent.sqlite-wal",
        "agent.sqlite-shm",
        "agent.json",
    ];
    while !want.iter().all(|f| data.join(f).exists()) {
        assert!(Instant::now() < deadline, "files: {:?}", entries(&data));
        std::thread::sleep(Duration::from_millis(50));
    }
    let checked = std::panic::catch_unwind(|| assert_private(&data, &want));
    let _ = daemon.kill();
    let _ = daemon.wait();
    if let Err(e) = checked {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn files_an_older_version_left_readable_are_tightened() {
    // What an older hook left under umask 022: a 0755 directory with 0644 files.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run(agent(&data, &["hook", "session-start"]), &hook_input("s1"));
    std::fs::write(data.join("agent.sqlite-journal"), "").unwrap();
    for (name, m) in [
        (".", 0o755),
        ("hooks.log", 0o644),
        ("agent.sqlite", 0o644),
        ("agent.sqlite-journal", 0o644),
    ] {
        std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(m)).unwrap();
    }
    let out = run(agent(&data, &["hook", "session-start"]), &hook_input("s1"));
    assert!(out.status.success(), "{out:?}");
    // The stale journal is SQLite's to remove (a hot journal is rolled back); whatever is
    // left is private.
    assert_private(&data, &["hooks.log", "agent.sqlite"]);
}

#[test]
fn install_hooks_keeps_an_edited_settings_files_mode_and_creates_a_new_one_0600() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let edited = dir.path().join("edited.json");
    std::fs::write(&edited, "{\"model\": \"opus\"}").unwrap();
    std::fs::set_permissions(&edited, std::fs::Permissions::from_mode(0o640)).unwrap();
    let fresh = dir.path().join("claude/settings.json");
    for path in [&edited, &fresh] {
        let out = run(
            agent(
                &data,
                &["install-hooks", "--settings", &path.to_string_lossy()],
            ),
            "",
        );
        assert!(out.status.success(), "{out:?}");
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains("session-start"), "{text}");
    }
    assert_eq!(mode(&edited), 0o640);
    assert!(std::fs::read_to_string(&edited).unwrap().contains("opus"));
    assert_eq!(mode(&fresh), 0o600);
}
