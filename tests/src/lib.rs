//! End-to-end harness: fixtures that run the real processes on loopback.
//!
//! - [`worker::Worker`]: the real Worker under `wrangler dev` (workerd) on free ports, with
//!   its own persist directory; restartable; kills its process group when dropped.
//! - [`telegram::BotApi`]: a local stand-in for Telegram's Bot API that records every call
//!   and can be told to fail (429 with `retry_after`, 400 with a description).
//! - [`tmux::Tmux`]: a tmux server on a private socket with a pane that records every line
//!   typed into it.
//!
//! Tests need a built Worker (`scripts/build-worker.sh`, which `make test` runs first).

pub mod agent;
pub mod bins;
pub mod ports;
pub mod proxy;
pub mod socket;
pub mod telegram;
pub mod tmux;
pub mod worker;

use std::path::PathBuf;
use std::time::Duration;

/// The workspace root (where wrangler.toml lives).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
