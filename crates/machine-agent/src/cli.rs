//! The command line: the clap grammar of `ccr-agent` and nothing else.
//!
//! Every flag is also an environment variable (`CCR_*`). Nothing in the library imports this
//! module: each subcommand receives the plain values it needs ([`RawSettings`], an options
//! struct, a [`HookEvent`]), built here by a conversion, so the grammar can change without the
//! code behind it knowing about clap.

use std::path::PathBuf;
use std::time::Duration;

use ccr_native::Secret;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::hooks::HookEvent;
use crate::settings::RawSettings;
use crate::setup::{doctor, service, telegram};

/// `ccr-agent`: types Telegram replies into the right Claude Code tmux pane.
///
/// Without a subcommand it runs the daemon (same as `ccr-agent run`).
#[derive(Debug, Parser)]
#[command(name = "ccr-agent", version, about, long_about = None)]
pub struct Cli {
    /// Settings shared by every subcommand.
    #[command(flatten)]
    pub common: CommonArgs,
    /// What to do (default: `run`).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Settings shared by every subcommand; each is also an environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// Base URL of the CCR Worker, e.g. https://ccr.example.workers.dev
    #[arg(long, env = "CCR_WORKER_URL", global = true)]
    pub worker_url: Option<String>,
    /// API key: the admin key or this machine's key (`ccr-agent machine-key`).
    #[arg(long, env = "CCR_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<Secret>,
    /// This machine's id (letters, digits, '-'); default: the hostname.
    #[arg(long, env = "CCR_MACHINE_ID", global = true)]
    pub machine_id: Option<String>,
    /// Where the inbox, session records and status live; default: $XDG_STATE_HOME/ccr-agent
    /// (~/.local/state/ccr-agent).
    #[arg(long, env = "CCR_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Pause between typing a command and pressing Enter, in ms (Claude Code's TUI treats a
    /// burst ending in Enter as a paste).
    #[arg(
        long,
        env = "CCR_INJECT_DELAY_MS",
        global = true,
        default_value_t = 100
    )]
    pub inject_delay_ms: u64,
    /// Store and acknowledge commands but do not execute them until a run without this flag
    /// (maintenance and crash tests).
    #[arg(
        long,
        env = "CCR_HOLD_COMMANDS",
        global = true,
        hide = true,
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub hold_commands: bool,
    /// A project root `/new` may start Claude Code in, as NAME=/absolute/path (repeat the
    /// flag; in the environment, comma-separated). Names: letters, digits, '_', '.', '-'.
    /// Saved in the data dir's agent.json; nothing outside these roots is ever started.
    #[arg(
        long = "project",
        env = "CCR_PROJECTS",
        global = true,
        value_delimiter = ','
    )]
    pub projects: Vec<String>,
    /// The command `/new` runs in the project's directory, split on spaces (no shell); the
    /// chat's prompt is passed as one more argument. Default: claude.
    #[arg(long, env = "CCR_NEW_SESSION_COMMAND", global = true)]
    pub new_session_command: Option<String>,
    /// The tmux server's socket that `/new` starts windows on (in its session `ccr`, created
    /// when missing); default: tmux's default server.
    #[arg(long, env = "CCR_TMUX_SOCKET", global = true)]
    pub tmux_socket: Option<PathBuf>,
}

impl CommonArgs {
    /// The settings as given, for the code that validates and completes them.
    pub(crate) fn raw(&self) -> RawSettings {
        RawSettings {
            worker_url: self.worker_url.clone(),
            api_key: self.api_key.clone(),
            machine_id: self.machine_id.clone(),
            data_dir: self.data_dir.clone(),
            inject_delay_ms: self.inject_delay_ms,
            hold_commands: self.hold_commands,
            projects: self.projects.clone(),
            new_session_command: self.new_session_command.clone(),
            tmux_socket: self.tmux_socket.clone(),
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: keep the socket to the Worker and type commands into tmux panes.
    Run,
    /// Run as a Claude Code hook (reads the hook's JSON on stdin; never fails Claude).
    Hook {
        /// Which hook event this is.
        event: HookEventArg,
    },
    /// Merge the hooks into Claude Code's settings.json (idempotent; writes a backup first).
    InstallHooks {
        /// The settings file; default: ~/.claude/settings.json
        #[arg(long)]
        settings: Option<PathBuf>,
        /// Seconds Claude Code lets the PermissionRequest hook wait for the chat's decision
        /// before the terminal's dialog decides alone.
        #[arg(long, default_value_t = 14_400, value_parser = clap::value_parser!(u64).range(30..=604_800))]
        permission_timeout: u64,
    },
    /// Show the connection, the last command, inbox counts and known sessions.
    Status,
    /// Print this machine's key: hex HMAC-SHA256(admin CCR_API_KEY, machine id).
    MachineKey,
    /// Telegram bot set-up.
    Telegram {
        /// What to do.
        #[command(subcommand)]
        command: TelegramCommand,
    },
    /// Write a systemd user unit (Linux) or launchd agent (macOS) that runs the daemon.
    ///
    /// Idempotent. The settings (with the key) go to the data dir's agent.json (mode 0600),
    /// never into the unit.
    InstallService(ServiceArgs),
    /// Check the set-up: settings, Worker, key, socket, clock, tmux, hooks, data dir.
    ///
    /// Each problem is printed with its fix. Exit 0 when all pass, 1 otherwise.
    Doctor(DoctorArgs),
}

/// `ccr-agent telegram …`.
#[derive(Debug, Subcommand)]
pub enum TelegramCommand {
    /// Point the bot's webhook at the Worker (`setWebhook`) and set its command menu
    /// (`setMyCommands`).
    Setup(SetupArgs),
}

/// The Claude Code hook events `ccr-agent hook` handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HookEventArg {
    /// `SessionStart`: record the session's pane and register it with the Worker.
    SessionStart,
    /// `Stop`: send the last assistant text as a notification.
    Stop,
    /// `Notification`: send the hook's message.
    Notification,
    /// `SessionEnd`: unregister the session.
    SessionEnd,
    /// `PermissionRequest`: ask the chat, wait for its decision, print it.
    PermissionRequest,
    /// `PostToolUse`: close a card answered at the terminal.
    PostToolUse,
    /// `PermissionDenied`: close a card answered at the terminal.
    PermissionDenied,
    /// `UserPromptSubmit`: close the session's cards answered at the terminal.
    UserPromptSubmit,
    /// `StopFailure`: tell the chat the turn ended on an API error.
    StopFailure,
}

impl From<HookEventArg> for HookEvent {
    fn from(arg: HookEventArg) -> HookEvent {
        match arg {
            HookEventArg::SessionStart => HookEvent::SessionStart,
            HookEventArg::Stop => HookEvent::Stop,
            HookEventArg::Notification => HookEvent::Notification,
            HookEventArg::SessionEnd => HookEvent::SessionEnd,
            HookEventArg::PermissionRequest => HookEvent::PermissionRequest,
            HookEventArg::PostToolUse => HookEvent::PostToolUse,
            HookEventArg::PermissionDenied => HookEvent::PermissionDenied,
            HookEventArg::UserPromptSubmit => HookEvent::UserPromptSubmit,
            HookEventArg::StopFailure => HookEvent::StopFailure,
        }
    }
}

/// Which service manager to write for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlatformArg {
    /// A systemd user unit.
    Linux,
    /// A launchd user agent.
    Macos,
}

impl From<PlatformArg> for service::Platform {
    fn from(arg: PlatformArg) -> service::Platform {
        match arg {
            PlatformArg::Linux => service::Platform::Linux,
            PlatformArg::Macos => service::Platform::Macos,
        }
    }
}

/// `ccr-agent install-service` flags.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// Which service to write: linux (systemd user unit) or macos (launchd agent); default:
    /// this system's.
    #[arg(long, value_enum)]
    pub platform: Option<PlatformArg>,
    /// Where to write it; default ~/.config/systemd/user/ccr-agent.service or
    /// ~/Library/LaunchAgents/dev.ccr.agent.plist.
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// The home directory the default path is under; default $HOME.
    #[arg(long)]
    pub home: Option<PathBuf>,
}

impl ServiceArgs {
    /// The options `install-service` runs with.
    pub(crate) fn options(&self) -> service::Options {
        service::Options {
            platform: self.platform.map(Into::into),
            path: self.path.clone(),
            home: self.home.clone(),
        }
    }
}

/// `ccr-agent doctor` flags.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// The Claude Code settings file to look for the hooks in; default ~/.claude/settings.json
    #[arg(long)]
    pub settings: Option<PathBuf>,
    /// Seconds each check may take.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

impl DoctorArgs {
    /// The options `doctor` runs with.
    pub(crate) fn options(&self) -> doctor::Options {
        doctor::Options {
            settings: self.settings.clone(),
            timeout: Duration::from_secs(self.timeout.max(1)),
        }
    }
}

/// `ccr-agent telegram setup` flags (the Worker URL is the shared `--worker-url`).
#[derive(Debug, Clone, Args)]
pub struct SetupArgs {
    /// The bot's token from @BotFather (never printed; prefer the environment variable, as a
    /// flag shows in `ps`).
    #[arg(long, env = "TELEGRAM_BOT_TOKEN", hide_env_values = true)]
    pub bot_token: Option<Secret>,
    /// The Worker's TELEGRAM_WEBHOOK_SECRET: 1-256 of A-Z a-z 0-9 _ - (never printed).
    #[arg(long, env = "TELEGRAM_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<Secret>,
    /// The Bot API server.
    #[arg(long, env = "TELEGRAM_API_BASE", default_value = telegram::DEFAULT_API_BASE)]
    pub api_base: String,
}

impl SetupArgs {
    /// The values `telegram setup` checks and runs with.
    pub(crate) fn inputs(&self) -> telegram::Inputs {
        telegram::Inputs {
            bot_token: self.bot_token.clone(),
            webhook_secret: self.webhook_secret.clone(),
            api_base: self.api_base.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_run_flags_with_and_without_subcommand() {
        let cli = Cli::try_parse_from(["ccr-agent", "--machine-id", "devbox"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.common.machine_id.as_deref(), Some("devbox"));
        let cli = Cli::try_parse_from(["ccr-agent", "run", "--machine-id", "devbox"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Run)));
        assert_eq!(cli.common.machine_id.as_deref(), Some("devbox"));
        let cli = Cli::try_parse_from(["ccr-agent", "--hold-commands"]).unwrap();
        assert!(cli.common.hold_commands);
        let cli = Cli::try_parse_from(["ccr-agent", "hook", "session-start"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Hook {
                event: HookEventArg::SessionStart
            })
        ));
    }

    #[test]
    fn hook_event_names_on_the_command_line_are_the_ones_install_hooks_writes() {
        for arg in HookEventArg::value_variants() {
            let name = arg.to_possible_value().unwrap();
            assert_eq!(name.get_name(), HookEvent::from(*arg).arg());
        }
        assert_eq!(HookEventArg::value_variants().len(), HookEvent::ALL.len());
    }

    #[test]
    fn clap_grammar_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
