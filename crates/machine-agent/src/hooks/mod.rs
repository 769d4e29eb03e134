//! `ccr-agent hook <event>`: what Claude Code runs at session start, stop, notification and
//! session end, with the hook's JSON on stdin and `$TMUX`/`$TMUX_PANE` in the environment. A
//! hook must never block Claude for long nor fail it.
//!
//! - `entry`: the process — log file, stdin with a deadline, the overall deadline, exit 0.
//! - `event`: the events and their names on the command line and in settings.json.
//! - `events`: what each event does (record the pane, register, notify, unregister).
//! - `api`: the Worker's HTTP routes the hooks call.
//! - `permission`: the PermissionRequest hook: open a card, wait for the chat's decision in
//!   the agent's database, print it.
//! - `transcript`: the last assistant text, read from the end of a transcript.

mod api;
mod entry;
mod event;
mod events;
mod permission;
mod transcript;

pub(crate) use entry::run;
pub(crate) use event::HookEvent;
