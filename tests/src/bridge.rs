//! The real `relay-bridge` binary, started against a test Worker and a local target.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::worker::{channel_token, Worker, TEST_RELAY_TOKEN};

/// The transport a bridge uses unless its test names one (`--transport` in `extra`):
/// `CCR_E2E_RELAY_TRANSPORT` (`ws`, `poll`, `auto`), by default `ws`, so the relay suites run
/// over either transport unchanged (`make e2e` runs the relay suite once more with `poll`).
pub fn default_transport() -> String {
    std::env::var("CCR_E2E_RELAY_TRANSPORT")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| "ws".to_owned())
}

/// A running `relay-bridge` logging to its own file. Dropping it kills it.
pub struct Bridge {
    child: Option<Child>,
    log: PathBuf,
}

impl Bridge {
    /// Starts a bridge from `worker`'s relay to `target`, on `channel` (or the default
    /// channel) with that channel's token, passing `extra` arguments (e.g. `--concurrency`).
    pub async fn start(
        worker: &Worker,
        target: &str,
        channel: Option<&str>,
        extra: &[&str],
    ) -> anyhow::Result<Bridge> {
        Self::start_with_env(worker, target, channel, extra, &[]).await
    }

    /// Like [`Bridge::start`]; `env` comes last, so it can replace the defaults
    /// (`RUST_LOG=relay_bridge=debug`, `NO_PROXY=127.0.0.1,localhost`).
    pub async fn start_with_env(
        worker: &Worker,
        target: &str,
        channel: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Bridge> {
        let log = std::env::temp_dir().join(format!(
            "relay-bridge-{}-{}.log",
            std::process::id(),
            crate::ports::free_port()
        ));
        let token = match channel {
            Some(c) => channel_token(c),
            None => TEST_RELAY_TOKEN.to_owned(),
        };
        // Built off the runtime's thread: a blocked runtime would let pooled connections die
        // unnoticed while cargo runs.
        let bin = tokio::task::spawn_blocking(crate::bins::relay_bridge).await?;
        let mut cmd = Command::new(bin);
        if !extra.iter().any(|a| a.starts_with("--transport")) {
            cmd.arg("--transport").arg(default_transport());
        }
        // A test may point the bridge elsewhere (a proxy in front of the Worker).
        if !extra.iter().any(|a| a.starts_with("--relay-url")) {
            cmd.arg("--relay-url").arg(worker.base_url());
        }
        cmd.arg("--target")
            .arg(target)
            .args(extra)
            .env("RELAY_TOKEN", token)
            .env("RUST_LOG", "relay_bridge=debug")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env_remove("RELAY_CHANNEL")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true);
        if let Some(c) = channel {
            cmd.env("RELAY_CHANNEL", c);
        }
        let child = cmd.spawn().context("starting relay-bridge")?;
        Ok(Bridge {
            child: Some(child),
            log,
        })
    }

    /// Everything it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL; waits for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// SIGTERM, then its exit status (within 60 s).
    pub async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("the bridge is not running");
        };
        let pid = c.id().context("the bridge has no pid")?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        let status = tokio::time::timeout(Duration::from_secs(60), c.wait())
            .await
            .context("the bridge did not exit within 60 s of SIGTERM")??;
        Ok(status)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}
