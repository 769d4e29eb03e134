//! A session as the suites that talk to one set it up (conversation, topics, files): real
//! tmux with a pane that records the raw bytes it receives, the real `ccr-agent` connected,
//! and the session registered in that pane by its SessionStart hook; and the waits on what
//! the pane received.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;

use crate::agent::Agent;
use crate::tmux::Tmux;
use crate::wait_for;

/// A registered session whose pane records raw bytes (bracketed paste on, as Claude Code
/// has it). Fields drop in order: the daemon stops before its tmux server does.
pub struct RawSession {
    /// The daemon, connected to the Worker.
    pub agent: Agent,
    /// The file the pane records every byte it receives to.
    pub record: PathBuf,
    /// The session's pane.
    pub pane: String,
    /// The tmux server the pane lives in.
    pub tmux: Tmux,
}

impl RawSession {
    /// Starts tmux with a raw-recording pane and `ccr-agent --machine-id <machine_id>`
    /// against `worker_url` with `api_key`, waits (up to `timeout`) for it to connect, then
    /// registers `session` working in `cwd` in that pane.
    pub async fn start(
        worker_url: &str,
        api_key: &str,
        machine_id: &str,
        session: &str,
        cwd: &str,
        timeout: Duration,
    ) -> anyhow::Result<RawSession> {
        let tmux = Tmux::start()?;
        let (pane, record) = tmux.add_raw_pane("claude").await?;
        let agent = Agent::start(worker_url, api_key, machine_id)?;
        agent.wait_connected(1, timeout).await?;
        agent.start_session(&tmux, &pane, session, cwd).await?;
        Ok(RawSession {
            agent,
            record,
            pane,
            tmux,
        })
    }
}

/// Waits (up to `timeout`) until the raw recording `record` holds at least `len` bytes and
/// returns them; the error of a timeout shows what it holds.
pub async fn wait_raw(record: &Path, len: usize, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    wait_for("the pane to receive the bytes", timeout, || async {
        std::fs::read(record).ok().filter(|b| b.len() >= len)
    })
    .await
    .map_err(|e| {
        let held = std::fs::read(record).unwrap_or_default();
        anyhow!("{e}: {:?}", String::from_utf8_lossy(&held))
    })
}

/// [`wait_raw`] for as many bytes as `want`, then checks that nothing more arrives (a
/// second Enter, a second paste) in the moment after; returns what arrived, for the caller
/// to compare with `want`.
pub async fn wait_raw_settled(
    record: &Path,
    want: &[u8],
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let got = wait_raw(record, want.len(), timeout).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = std::fs::read(record)?;
    if after != got {
        anyhow::bail!(
            "more bytes arrived after the first {}: {:?}",
            got.len(),
            String::from_utf8_lossy(&after)
        );
    }
    Ok(got)
}
