//! The real `ccr-agent` binary as a test runs it: built once per test process, started
//! without `$TMUX` (as a service would be) against a test Worker, killable with SIGKILL or
//! stopped with SIGTERM, and its hooks run the way Claude Code runs them.

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::tmux::{Tmux, RECORDER};
use crate::wait_for;

/// The `ccr-agent` binary of this checkout, built (debug, or release with
/// `CCR_E2E_RELEASE=1`) on first use.
pub fn binary() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| crate::bins::build("machine-agent", "ccr-agent"))
        .clone()
}

/// Environment variables a test's own environment must not leak into the agent.
const SCRUBBED: [&str; 8] = [
    "CCR_WORKER_URL",
    "CCR_API_KEY",
    "CCR_MACHINE_ID",
    "CCR_DATA_DIR",
    "CCR_HOLD_COMMANDS",
    "CCR_INJECT_DELAY_MS",
    "TMUX",
    "TMUX_PANE",
];

/// A `ccr-agent` daemon with its own data directory, restartable on the same state.
pub struct Agent {
    child: Option<Child>,
    dir: tempfile::TempDir,
    worker_url: String,
    api_key: String,
    machine_id: String,
    starts: u32,
    /// Extra environment for the next start (e.g. `CCR_HOLD_COMMANDS=1`).
    pub env: Vec<(String, String)>,
}

impl Agent {
    /// Starts `ccr-agent --machine-id <machine_id>` against `worker_url`.
    pub fn start(worker_url: &str, api_key: &str, machine_id: &str) -> anyhow::Result<Agent> {
        Self::start_with(worker_url, api_key, machine_id, Vec::new())
    }

    /// Like [`Agent::start`] with extra environment.
    pub fn start_with(
        worker_url: &str,
        api_key: &str,
        machine_id: &str,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Agent> {
        let mut agent = Agent {
            child: None,
            dir: tempfile::Builder::new().prefix("ccr-agent-").tempdir()?,
            worker_url: worker_url.to_owned(),
            api_key: api_key.to_owned(),
            machine_id: machine_id.to_owned(),
            starts: 0,
            env,
        };
        agent.spawn()?;
        Ok(agent)
    }

    /// The agent's data directory (inbox, sessions, the hooks' settings).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The machine id it runs as.
    pub fn machine_id(&self) -> &str {
        &self.machine_id
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("agent-{start}.log"))
    }

    /// Everything the daemon logged, across restarts.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .filter_map(|i| std::fs::read_to_string(self.log_path(i)).ok())
            .collect()
    }

    /// Everything the hooks logged.
    pub fn hooks_log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("hooks.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts))?;
        let mut cmd = Command::new(binary());
        for name in SCRUBBED {
            cmd.env_remove(name);
        }
        cmd.arg("--machine-id")
            .arg(&self.machine_id)
            .env("CCR_WORKER_URL", &self.worker_url)
            .env("CCR_API_KEY", &self.api_key)
            .env("CCR_DATA_DIR", self.data_dir())
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        self.child = Some(cmd.spawn().context("starting ccr-agent")?);
        Ok(())
    }

    /// Starts the daemon again on the same data directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("the agent is still running");
        }
        self.spawn()
    }

    /// SIGKILL, like a crash or a power cut; waits for it to be gone.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, as a service manager stops it; returns its exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("the agent is not running");
        };
        let pid = child.id().context("the agent has no pid")?;
        StdCommand::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                let _ = child.start_kill();
                bail!("the agent did not exit within 15 s of SIGTERM")
            }
        }
    }

    /// Waits until the log shows the `n`th successful connection (across restarts).
    pub async fn wait_connected(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let r = wait_for(
            &format!("connection #{n} of the agent"),
            timeout,
            || async { (self.log().matches("connected to the Worker").count() >= n).then_some(()) },
        )
        .await;
        r.with_context(|| format!("agent log:\n{}", self.log()))
    }

    /// Waits until the log contains `needle` at least `n` times.
    pub async fn wait_log(&self, needle: &str, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let r = wait_for(
            &format!("{n}× {needle:?} in the agent log"),
            timeout,
            || async { (self.log().matches(needle).count() >= n).then_some(()) },
        )
        .await;
        r.with_context(|| format!("agent log:\n{}", self.log()))
    }

    /// Runs `ccr-agent hook <event>` the way Claude Code does: the hook JSON on stdin, the
    /// environment of a Claude Code running in `pane` of `tmux` (`$TMUX`, `$TMUX_PANE`), and
    /// no `CCR_*` settings but the data directory (the hook reads the daemon's saved settings).
    pub async fn run_hook(
        &self,
        event: &str,
        input: &serde_json::Value,
        tmux: Option<(&Tmux, &str)>,
    ) -> anyhow::Result<std::process::Output> {
        let mut cmd = Command::new(binary());
        for name in SCRUBBED {
            cmd.env_remove(name);
        }
        cmd.args(["hook", event])
            .env("CCR_DATA_DIR", self.data_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some((t, pane)) = tmux {
            cmd.env("TMUX", t.tmux_env()).env("TMUX_PANE", pane);
        }
        let mut child = cmd.spawn().context("starting ccr-agent hook")?;
        let mut stdin = child.stdin.take().context("hook stdin")?;
        stdin.write_all(input.to_string().as_bytes()).await?;
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
            .await
            .context("the hook ran longer than 15 s")??;
        Ok(out)
    }

    /// Runs the session-start hook as Claude Code in `pane` of `tmux` would (no transcript
    /// yet), registering `session`; fails unless the hook succeeded and logged the
    /// registration.
    pub async fn start_session(
        &self,
        tmux: &Tmux,
        pane: &str,
        session: &str,
        cwd: &str,
    ) -> anyhow::Result<()> {
        let input = hook_input(
            "SessionStart",
            session,
            cwd,
            Path::new("/nonexistent.jsonl"),
        );
        let out = self
            .run_hook("session-start", &input, Some((tmux, pane)))
            .await?;
        if !out.status.success() || !self.hooks_log().contains("session registered") {
            bail!(
                "the session-start hook failed: {out:?}\nhooks log:\n{}\nstderr: {}",
                self.hooks_log(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// Claude Code's hook input for `event` (e.g. `SessionStart`) in `session`, run in `cwd`.
pub fn hook_input(event: &str, session: &str, cwd: &str, transcript: &Path) -> serde_json::Value {
    serde_json::json!({
        "session_id": session,
        "transcript_path": transcript,
        "cwd": cwd,
        "hook_event_name": event,
        "source": "startup",
        "permission_mode": "default"
    })
}

/// Adds a second recording pane to `tmux` (a new window running the same recorder); returns
/// its pane id and the file it records to (inside `dir`).
pub fn add_recording_pane(
    tmux: &Tmux,
    dir: &Path,
    name: &str,
) -> anyhow::Result<(String, PathBuf)> {
    let record = dir.join(format!("{name}.txt"));
    let pane = tmux.add_window(RECORDER, &record)?;
    Ok((pane, record))
}

/// The lines a recording file holds.
pub fn recorded_lines(record: &Path) -> Vec<String> {
    std::fs::read_to_string(record)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}
