//! `ccr-agent`: the machine side of CCR. It keeps a socket to the Worker, stores every command
//! in a durable inbox before acknowledging it, types it exactly once into the right Claude Code
//! tmux pane, and runs as Claude Code's hooks to register sessions and send notifications.
//!
//! Layout, following the data path:
//! - [`config`]: flags and environment → validated settings; the masked [`config::Secret`].
//! - [`connection`]: the socket — connect, keepalive, store-then-ack, results, backoff.
//! - [`db`]: the SQLite file shared by the daemon, the hooks and `status`.
//! - [`inbox`]: the exactly-once state machine `stored → acked → executing → typed → done`.
//! - [`daemon`]: [`daemon::run`] wires the socket and the executor together until shutdown.
//! - [`inject`]: `tmux send-keys -l`, pause, Enter, on the session's own tmux server.
//! - [`sessions`]: session → pane records written by the hooks; the daemon's status.
//! - [`hooks`]: `ccr-agent hook <event>` as Claude Code runs it.
//! - [`api`]: the Worker's HTTP routes the hooks call.
//! - [`transcript`]: the last assistant text, read from the end of a transcript.
//! - [`settings`]: `install-hooks`, merging into Claude Code's settings.json.
//! - [`status`]: `ccr-agent status`.
//! - [`telegram_setup`]: `ccr-agent telegram setup` (`setWebhook`, `setMyCommands`).
//! - [`service`]: `ccr-agent install-service`, a systemd user unit or a launchd agent.
//! - [`doctor`]: `ccr-agent doctor`, every link of the set-up checked with its fix.
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod connection;
pub mod daemon;
pub mod db;
pub mod doctor;
pub mod hooks;
pub mod inbox;
pub mod inject;
pub mod service;
pub mod sessions;
pub mod settings;
pub mod status;
pub mod telegram_setup;
pub mod transcript;

pub use daemon::run;
