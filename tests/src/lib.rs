//! End-to-end harness: fixtures that run the real processes on loopback.
//!
//! - [`worker::Worker`]: the real Worker under `wrangler dev` (workerd) on free ports, with
//!   its own persist directory; restartable; kills its process group when dropped. Suites
//!   reach it through it: [`worker::Worker::webhook_post`] for every webhook POST, broken
//!   ones included ([`worker::Worker::send_update`] for a well-formed update);
//!   [`worker::Worker::api_request`] for API calls with a key (the admin-key shorthands
//!   `admin`, `register`, `notify`, `sessions`; only tests of the key guard itself, the
//!   bad-input table and the bench's load loop set their own headers);
//!   [`worker::Worker::socket`] for the machine socket.
//! - [`worker::start_with_bot`]: how a suite that involves Telegram starts its Worker, with
//!   the Bot API stand-in it sends to and the chats it allows.
//! - [`telegram::BotApi`]: a local stand-in for Telegram's Bot API that records every call
//!   and can be told to fail (429 with `retry_after`, 400 with a description).
//! - [`telegram::Update`]: the one builder of Telegram updates (messages, replies, photos,
//!   edits, button presses).
//! - [`agent::Agent`]: the real `ccr-agent` daemon, its hooks run as Claude Code runs them.
//! - [`session::RawSession`]: tmux, a raw-recording pane, a connected agent and a session
//!   registered in that pane; [`session::wait_raw`] waits on what the pane received.
//! - [`bridge::Bridge`]: the real `relay-bridge` against a test Worker.
//! - [`socket::TestSocket`]: a machine-protocol client for tests that play the agent by hand.
//! - [`tmux::Tmux`]: a tmux server on a private socket with a pane that records every line
//!   typed into it.
//! - [`proxy::CutProxy`]: a TCP proxy that can cut every connection without a close frame.
//! - Machine keys and relay channel tokens derive in one place: [`worker::machine_key`],
//!   [`worker::channel_token`].
//!
//! Tests need a built Worker (`scripts/build-worker.sh`, which `make test` runs first).

pub mod agent;
pub mod bins;
pub mod bridge;
pub mod ports;
pub mod proxy;
pub mod session;
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

/// The JSON body of `resp`; panics, showing the text, when it is not JSON. For tests.
pub async fn json_of(resp: reqwest::Response) -> serde_json::Value {
    let text = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("reading a body: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
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
