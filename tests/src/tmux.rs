//! A tmux server on a private socket with one pane that records every line typed into it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::wait_for;

/// The recording pane's program (`sh -c RECORDER recorder <file>`): appends each line it
/// reads to the file. `read -r` keeps backslashes; IFS= keeps leading and trailing spaces.
/// The script gets the file path as $1, so nothing typed is ever part of a shell command line.
pub(crate) const RECORDER: &str =
    r#"while IFS= read -r line; do printf '%s\n' "$line" >> "$1"; done"#;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A private tmux server (`tmux -L <unique>`). Dropping it kills the server.
pub struct Tmux {
    socket_name: String,
    dir: tempfile::TempDir,
    /// The recording pane's id, e.g. `%0`.
    pub pane_id: String,
    /// The server's socket path (what `$TMUX` starts with inside the pane).
    pub socket_path: PathBuf,
}

impl Tmux {
    /// Starts a server whose pane appends each line it reads to a file.
    pub fn start() -> anyhow::Result<Tmux> {
        let dir = tempfile::Builder::new().prefix("ccr-tmux-").tempdir()?;
        let socket_name = format!(
            "ccr-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let record = dir.path().join("received.txt");
        std::fs::write(&record, "")?;
        let mut t = Tmux {
            socket_name,
            dir,
            pane_id: String::new(),
            socket_path: PathBuf::new(),
        };
        t.tmux(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            "200",
            "-y",
            "50",
            "sh",
            "-c",
            RECORDER,
            "recorder",
            &record.to_string_lossy(),
        ])?;
        t.pane_id = t.tmux(&["display-message", "-p", "-t", "main", "#{pane_id}"])?;
        t.socket_path = PathBuf::from(t.tmux(&["display-message", "-p", "#{socket_path}"])?);
        Ok(t)
    }

    /// The `-L` name of the server.
    pub fn socket_name(&self) -> &str {
        &self.socket_name
    }

    /// The value `$TMUX` has inside the pane (`<socket>,<pid>,<session>`).
    pub fn tmux_env(&self) -> String {
        format!("{},0,0", self.socket_path.display())
    }

    /// Runs a tmux command on this server and returns its trimmed stdout.
    pub fn tmux(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket_name)
            .args(args)
            .output()
            .context("running tmux (is it installed? scripts/setup.sh installs it)")?;
        if !out.status.success() {
            bail!(
                "tmux {:?} failed: {}",
                args,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The file the pane records to.
    pub fn record_path(&self) -> PathBuf {
        self.dir.path().join("received.txt")
    }

    /// Every line the pane has received so far.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.record_path())
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Waits until the pane has received at least `n` lines and returns them.
    pub async fn wait_for_lines(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<String>> {
        wait_for(&format!("{n} lines in the tmux pane"), timeout, || async {
            let lines = self.lines();
            (lines.len() >= n).then_some(lines)
        })
        .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket_name, "kill-server"])
            .output();
    }
}
