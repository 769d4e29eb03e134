//! `ccr-agent`: the machine side of CCR. It keeps a socket to the Worker, stores every command
//! in a durable inbox before acknowledging it, types it exactly once into the right Claude Code
//! tmux pane, and runs as Claude Code's hooks to register sessions and send notifications.
//!
//! Layout, by role (each folder is one; no module imports one that imports it back):
//! - [`cli`]: the clap grammar only; it converts what it parsed into the plain values below.
//! - `app`: runs one subcommand and returns its failure as one [`AppError`], which `main.rs`
//!   alone turns into an exit code.
//! - `settings/`: flags and environment → validated settings: the Worker ([`WorkerConfig`]),
//!   the daemon's [`Config`], the saved 0600 settings file, the machine key.
//! - `daemon/`: the data path, Worker socket → inbox → tmux pane. [`run`] wires the socket
//!   (`connection`: connect, keepalive, store-then-ack, results, backoff) and the executor
//!   together; `inbox` is the exactly-once state machine `stored → acked → executing → typed →
//!   done`; `inject` types into a pane; `sessions` holds the session → pane records the hooks
//!   write; `status` is the connection state (one writer, typed readers) and `ccr-agent status`.
//! - `hooks/`: `ccr-agent hook <event>` as Claude Code runs it — the process plumbing (log file,
//!   stdin and overall deadlines, exit 0), each event's work, the Worker API client, the
//!   transcript reader.
//! - `setup/`: one-shot set-up commands — `install-hooks` (Claude Code's settings.json),
//!   `install-service`, `telegram setup`, `doctor`.
//! - `db`: the SQLite file shared by the daemon, the hooks and `status` ([`Db`], [`now_ms`]).
//! - `runtime`: the tokio runtime the async subcommands share.
//!
//! The public surface is what `main.rs` and the integration tests (`tests/socket.rs`) use;
//! everything else is crate-private.
#![deny(missing_docs)]

mod app;
pub mod cli;
mod daemon;
mod db;
mod hooks;
mod runtime;
mod settings;
mod setup;

pub use app::{run as run_cli, AppError};
pub use ccr_native::Secret;
pub use daemon::inbox::{Command, Inbox, Receipt, State};
pub use daemon::inject::PaneIdentity;
pub use daemon::run;
pub use daemon::sessions::{SessionRecord, Sessions};
pub use daemon::status::report as status_report;
pub use db::{now_ms, Db};
pub use settings::{Config, ConfigError, Launch, Project, Timing, WorkerConfig};
