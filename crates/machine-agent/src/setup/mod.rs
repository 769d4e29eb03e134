//! Setting a machine up, each a one-shot subcommand that prints what it did:
//!
//! - `claude_settings`: `install-hooks`, merging our hooks into Claude Code's settings.json.
//! - `service`: `install-service`, a systemd user unit or a launchd agent for the daemon.
//! - `telegram`: `telegram setup`, the bot's webhook and command menu.
//! - `doctor`: `doctor`, every link of the set-up checked, each problem with its fix.

pub(crate) mod claude_settings;
pub(crate) mod doctor;
pub(crate) mod service;
pub(crate) mod telegram;
