//! A tmux server on a private socket with one pane that records every line typed into it.

use std::path::{Path, PathBuf};
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

/// The raw recording pane's program (`sh -c RAW_RECORDER recorder <file>`): puts its
/// terminal in raw mode, turns bracketed paste on (as Claude Code does), prints `READY` and
/// appends every byte it reads to the file — paste brackets, CR for Enter, ESC.
pub(crate) const RAW_RECORDER: &str =
    r#"stty raw -echo; printf '\033[?2004hREADY'; exec cat >> "$1""#;

/// A private tmux server (`tmux -L <unique>`). Dropping it kills the server.
pub struct Tmux {
    socket_name: String,
    dir: tempfile::TempDir,
    /// The file the current server's pane records to.
    record: PathBuf,
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
        let mut t = Tmux {
            socket_name,
            dir,
            record,
            pane_id: String::new(),
            socket_path: PathBuf::new(),
        };
        t.new_server()?;
        Ok(t)
    }

    /// Starts the server and its recording pane (recording to `self.record`).
    fn new_server(&mut self) -> anyhow::Result<()> {
        let record = self.record.clone();
        std::fs::write(&record, "")?;
        self.tmux(&[
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
        self.pane_id = self.tmux(&["display-message", "-p", "-t", "main", "#{pane_id}"])?;
        self.socket_path =
            PathBuf::from(self.tmux(&["display-message", "-p", "#{socket_path}"])?);
        Ok(())
    }

    /// What a reboot or `tmux kill-server` does: the server and every pane end, and a new
    /// server starts on the same socket path — its pane gets the same `%N` id again. The new
    /// pane records to a new file ([`Tmux::record_path`] from now on, [`Tmux::lines`]); the
    /// old file stays where it was.
    pub fn restart_server(&mut self) -> anyhow::Result<()> {
        let pid = self.tmux(&["display-message", "-p", "#{pid}"])?;
        self.tmux(&["kill-server"])?;
        // `kill-server` answers before the server has exited; a client started meanwhile
        // reaches the dying server ("server exited unexpectedly").
        let exited = (0..200).any(|_| {
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
            if alive {
                std::thread::sleep(Duration::from_millis(25));
            }
            !alive
        });
        if !exited {
            bail!("tmux server {pid} did not exit within 5 s of kill-server");
        }
        let n = std::fs::read_dir(self.dir.path())?.count();
        self.record = self.dir.path().join(format!("received-{n}.txt"));
        self.new_server()
    }

    /// The `-L` name of the server.
    pub fn socket_name(&self) -> &str {
        &self.socket_name
    }

    /// The value `$TMUX` has inside the pane (`<socket>,<server pid>,<session>`).
    pub fn tmux_env(&self) -> String {
        let pid = self
            .tmux(&["display-message", "-p", "#{pid}"])
            .unwrap_or_else(|_| "0".into());
        format!("{},{pid},0", self.socket_path.display())
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

    /// Adds a pane (a new window) running the recorder `script` (`sh -c`) with `record`
    /// (created empty) as its `$1`; returns the pane id.
    pub(crate) fn add_window(&self, script: &str, record: &Path) -> anyhow::Result<String> {
        std::fs::write(record, "")?;
        self.tmux(&[
            "new-window",
            "-d",
            "-P",
            "-F",
            "#{pane_id}",
            "sh",
            "-c",
            script,
            "recorder",
            &record.to_string_lossy(),
        ])
    }

    /// Adds a pane (a new window) that records raw bytes ([`RAW_RECORDER`]) to a file in
    /// this server's directory; returns its pane id and the file, once the program is
    /// ready (bracketed paste on).
    pub async fn add_raw_pane(&self, name: &str) -> anyhow::Result<(String, PathBuf)> {
        let record = self.dir.path().join(format!("{name}.raw"));
        let pane = self.add_window(RAW_RECORDER, &record)?;
        // tmux reads a pane's output in order: once READY shows, bracketed paste is on.
        wait_for(
            "the raw recorder to start",
            Duration::from_secs(10),
            || async {
                self.tmux(&["capture-pane", "-p", "-t", &pane])
                    .ok()
                    .filter(|screen| screen.contains("READY"))
            },
        )
        .await?;
        Ok((pane, record))
    }

    /// The file the pane records to.
    pub fn record_path(&self) -> PathBuf {
        self.record.clone()
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
