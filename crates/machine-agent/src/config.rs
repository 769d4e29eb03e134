//! Command line, environment and the validated settings each subcommand runs with.
//!
//! Every setting is a flag and an environment variable (`CCR_*`); a missing or malformed one
//! is a [`ConfigError`] whose message names the setting and how to fix it (exit code 2).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use url::Url;

/// A secret string: `Debug` and `Display` print `MASKED`, so it never reaches a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

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
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(s))
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
        event: HookEvent,
    },
    /// Merge the hooks into Claude Code's settings.json (idempotent; writes a backup first).
    InstallHooks {
        /// The settings file; default: ~/.claude/settings.json
        #[arg(long)]
        settings: Option<PathBuf>,
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
    InstallService(crate::service::ServiceArgs),
    /// Check the set-up: settings, Worker, key, socket, clock, tmux, hooks, data dir.
    ///
    /// Each problem is printed with its fix. Exit 0 when all pass, 1 otherwise.
    Doctor(crate::doctor::DoctorArgs),
}

/// `ccr-agent telegram …`.
#[derive(Debug, Subcommand)]
pub enum TelegramCommand {
    /// Point the bot's webhook at the Worker (`setWebhook`) and set its command menu
    /// (`setMyCommands`).
    Setup(crate::telegram_setup::SetupArgs),
}

/// The Claude Code hook events `ccr-agent hook` handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HookEvent {
    /// `SessionStart`: record the session's pane and register it with the Worker.
    SessionStart,
    /// `Stop`: send the last assistant text as a notification.
    Stop,
    /// `Notification`: send the hook's message.
    Notification,
    /// `SessionEnd`: unregister the session.
    SessionEnd,
}

impl HookEvent {
    /// Every event, in install order.
    pub const ALL: [HookEvent; 4] = [
        HookEvent::SessionStart,
        HookEvent::Stop,
        HookEvent::Notification,
        HookEvent::SessionEnd,
    ];

    /// The argument on the command line (`session-start`).
    pub fn arg(self) -> &'static str {
        match self {
            HookEvent::SessionStart => "session-start",
            HookEvent::Stop => "stop",
            HookEvent::Notification => "notification",
            HookEvent::SessionEnd => "session-end",
        }
    }

    /// Claude Code's name for the event in settings.json (`SessionStart`).
    pub fn claude_name(self) -> &'static str {
        match self {
            HookEvent::SessionStart => "SessionStart",
            HookEvent::Stop => "Stop",
            HookEvent::Notification => "Notification",
            HookEvent::SessionEnd => "SessionEnd",
        }
    }
}

/// A setting that is missing or malformed: one line naming it and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Timings of the socket; the defaults follow the protocol's constants, tests shorten them.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How often to send a ping.
    pub ping_interval: Duration,
    /// Drop a connection that has not heard from the Worker for this long.
    pub pong_timeout: Duration,
    /// Limit on TCP + TLS + WebSocket handshake.
    pub connect_timeout: Duration,
    /// First reconnect delay cap; doubles per failure.
    pub backoff_base: Duration,
    /// Largest reconnect delay cap.
    pub backoff_max: Duration,
    /// A connection up this long counts as healthy and resets the backoff.
    pub healthy_after: Duration,
    /// Wait after the Worker refused the key (401).
    pub unauthorized_retry: Duration,
    /// Wait after another agent took over this machine id (close 4000).
    pub replaced_retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(ccr_protocol::PING_INTERVAL_SECS),
            pong_timeout: Duration::from_secs(ccr_protocol::PONG_TIMEOUT_SECS),
            connect_timeout: Duration::from_secs(15),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(10),
            unauthorized_retry: Duration::from_secs(60),
            replaced_retry: Duration::from_secs(60),
        }
    }
}

/// How to reach the Worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The Worker's base URL (http or https).
    pub url: Url,
    /// The admin key or this machine's key.
    pub api_key: Secret,
    /// This machine's id.
    pub machine_id: String,
}

impl WorkerConfig {
    /// The socket URL: `ws(s)://…/ws?machineId=<id>`.
    pub fn socket_url(&self) -> Url {
        let mut url = self.url.clone();
        // Only http and https are accepted by `parse_worker_url`, and both have a ws twin.
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        let _ = url.set_scheme(scheme);
        let path = format!("{}/ws", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.set_query(None);
        url.query_pairs_mut()
            .append_pair("machineId", &self.machine_id);
        url
    }

    /// `base + path` for an HTTP route such as `/sessions/register`.
    pub fn http_url(&self, route: &str) -> Url {
        let mut url = self.url.clone();
        let path = format!("{}{}", url.path().trim_end_matches('/'), route);
        url.set_path(&path);
        url.set_query(None);
        url
    }
}

/// Everything the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Worker.
    pub worker: WorkerConfig,
    /// The data directory (inbox, sessions, status).
    pub data_dir: PathBuf,
    /// Pause between the text and Enter.
    pub inject_delay: Duration,
    /// Store and ack, but do not execute.
    pub hold_commands: bool,
    /// The tmux program.
    pub tmux: PathBuf,
    /// Socket timings.
    pub timing: Timing,
}

impl Config {
    /// The daemon's settings from flags and environment.
    pub fn from_args(args: &CommonArgs) -> Result<Config, ConfigError> {
        Ok(Config {
            worker: worker_from_args(args)?,
            data_dir: data_dir(args)?,
            inject_delay: Duration::from_millis(args.inject_delay_ms),
            hold_commands: args.hold_commands,
            tmux: PathBuf::from("tmux"),
            timing: Timing::default(),
        })
    }

    /// The daemon's settings: flags and environment first, then the settings file a previous
    /// run or `install-service` saved in the data dir (how a service with no environment
    /// finds them).
    pub fn from_args_or_saved(args: &CommonArgs) -> Result<Config, ConfigError> {
        let data_dir = data_dir(args)?;
        Ok(Config {
            worker: hook_worker(args, &data_dir)?,
            data_dir,
            inject_delay: Duration::from_millis(args.inject_delay_ms),
            hold_commands: args.hold_commands,
            tmux: PathBuf::from("tmux"),
            timing: Timing::default(),
        })
    }
}

/// The Worker settings; every one must be present and valid.
pub fn worker_from_args(args: &CommonArgs) -> Result<WorkerConfig, ConfigError> {
    let raw_url = args.worker_url.as_deref().map(str::trim).unwrap_or("");
    if raw_url.is_empty() {
        return Err(ConfigError(
            "CCR_WORKER_URL is not set: pass --worker-url or set CCR_WORKER_URL to the Worker's \
             base URL, e.g. https://ccr.example.workers.dev"
                .into(),
        ));
    }
    let url = parse_worker_url(raw_url)?;
    let api_key =
        match &args.api_key {
            Some(k) if !k.expose().trim().is_empty() => Secret::new(k.expose().trim()),
            _ => return Err(ConfigError(
                "CCR_API_KEY is not set: pass --api-key or set CCR_API_KEY to the admin key or \
                 this machine's key (`ccr-agent machine-key --machine-id <id>` prints it)"
                    .into(),
            )),
        };
    let machine_id = machine_id(args)?;
    Ok(WorkerConfig {
        url,
        api_key,
        machine_id,
    })
}

/// Parses the Worker's base URL: http or https, with a host.
pub fn parse_worker_url(raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw).map_err(|e| {
        ConfigError(format!(
            "CCR_WORKER_URL {raw:?} is not a URL ({e}): use the Worker's base URL, e.g. \
             https://ccr.example.workers.dev"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError(format!(
            "CCR_WORKER_URL {raw:?} must be an http:// or https:// URL with a host, e.g. \
             https://ccr.example.workers.dev"
        )));
    }
    Ok(url)
}

/// The machine id: the flag/env, else the hostname made valid; checked by the protocol rule.
pub fn machine_id(args: &CommonArgs) -> Result<String, ConfigError> {
    let id = match args.machine_id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => hostname_machine_id().ok_or_else(|| {
            ConfigError(
                "CCR_MACHINE_ID is not set and the hostname could not be read: pass \
                 --machine-id or set CCR_MACHINE_ID (letters, digits and '-')"
                    .into(),
            )
        })?,
    };
    ccr_protocol::validate::machine_id(&id).map_err(|e| {
        ConfigError(format!(
            "CCR_MACHINE_ID {id:?} is invalid: {e}; pass --machine-id or set CCR_MACHINE_ID"
        ))
    })?;
    Ok(id)
}

/// The hostname's first label with anything but letters, digits and '-' replaced by '-'.
fn hostname_machine_id() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| {
            std::process::Command::new("hostname")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        })?;
    let first = raw.trim().split('.').next().unwrap_or("");
    let id: String = first
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    (!id.is_empty()).then_some(id)
}

/// The data directory: the flag/env, else `$XDG_STATE_HOME/ccr-agent`, else
/// `~/.local/state/ccr-agent`.
pub fn data_dir(args: &CommonArgs) -> Result<PathBuf, ConfigError> {
    if let Some(dir) = &args.data_dir {
        if dir.as_os_str().is_empty() {
            return Err(ConfigError(
                "CCR_DATA_DIR is empty: pass --data-dir or unset CCR_DATA_DIR".into(),
            ));
        }
        return Ok(dir.clone());
    }
    default_data_dir().ok_or_else(|| {
        ConfigError(
            "neither CCR_DATA_DIR, XDG_STATE_HOME nor HOME is set: pass --data-dir or set \
             CCR_DATA_DIR"
                .into(),
        )
    })
}

fn default_data_dir() -> Option<PathBuf> {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        let state = PathBuf::from(state);
        if state.is_absolute() {
            return Some(state.join("ccr-agent"));
        }
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty())?;
    Some(Path::new(&home).join(".local/state/ccr-agent"))
}

/// This machine's key: lowercase hex HMAC-SHA256(key = admin key, message = machine id).
pub fn machine_key(admin_key: &Secret, machine_id: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(admin_key.expose().as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(machine_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Where the daemon leaves the Worker settings for the hooks (which Claude Code starts with
/// its own environment, usually without `CCR_*`). Written with mode 0600.
pub fn hook_config_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent.json")
}

/// The file at [`hook_config_path`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookConfigFile {
    /// The Worker's base URL.
    pub worker_url: String,
    /// The key the daemon uses.
    pub api_key: Secret,
    /// This machine's id.
    pub machine_id: String,
}

/// Writes the hooks' settings file (mode 0600, replaced atomically).
pub fn write_hook_config(data_dir: &Path, worker: &WorkerConfig) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file = HookConfigFile {
        worker_url: worker.url.to_string(),
        api_key: worker.api_key.clone(),
        machine_id: worker.machine_id.clone(),
    };
    let text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    let path = hook_config_path(data_dir);
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)
}

/// The Worker settings for a hook: flags/env first, then the daemon's file in the data dir.
pub fn hook_worker(args: &CommonArgs, data_dir: &Path) -> Result<WorkerConfig, ConfigError> {
    let mut merged = args.clone();
    if merged.worker_url.is_none() || merged.api_key.is_none() || merged.machine_id.is_none() {
        if let Ok(text) = std::fs::read_to_string(hook_config_path(data_dir)) {
            if let Ok(file) = serde_json::from_str::<HookConfigFile>(&text) {
                merged.worker_url.get_or_insert(file.worker_url);
                merged.api_key.get_or_insert(file.api_key);
                merged.machine_id.get_or_insert(file.machine_id);
            }
        }
    }
    worker_from_args(&merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: Option<&str>, key: Option<&str>, id: Option<&str>) -> CommonArgs {
        CommonArgs {
            worker_url: url.map(Into::into),
            api_key: key.map(Secret::new),
            machine_id: id.map(Into::into),
            data_dir: Some("/tmp/x".into()),
            inject_delay_ms: 100,
            hold_commands: false,
        }
    }

    #[test]
    fn secret_is_masked() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "MASKED MASKED");
        let c = Config::from_args(&args(Some("http://h"), Some("hunter2"), Some("m"))).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn missing_and_bad_settings_name_the_variable() {
        let e = Config::from_args(&args(None, Some("k"), Some("m"))).unwrap_err();
        assert!(e.0.contains("CCR_WORKER_URL"), "{e}");
        let e = Config::from_args(&args(Some("ftp://x"), Some("k"), Some("m"))).unwrap_err();
        assert!(e.0.contains("http"), "{e}");
        let e = Config::from_args(&args(Some("not a url"), Some("k"), Some("m"))).unwrap_err();
        assert!(e.0.contains("CCR_WORKER_URL"), "{e}");
        let e = Config::from_args(&args(Some("http://h"), None, Some("m"))).unwrap_err();
        assert!(e.0.contains("CCR_API_KEY"), "{e}");
        let e = Config::from_args(&args(Some("http://h"), Some("k"), Some("dev box"))).unwrap_err();
        assert!(e.0.contains("CCR_MACHINE_ID"), "{e}");
        assert!(!e.0.contains('\n'));
    }

    #[test]
    fn urls_are_derived_from_the_base() {
        let c = worker_from_args(&args(
            Some("https://w.example/base/"),
            Some("k"),
            Some("dev"),
        ))
        .unwrap();
        assert_eq!(
            c.socket_url().as_str(),
            "wss://w.example/base/ws?machineId=dev"
        );
        assert_eq!(
            c.http_url("/sessions/register").as_str(),
            "https://w.example/base/sessions/register"
        );
        let c =
            worker_from_args(&args(Some("http://127.0.0.1:8787"), Some("k"), Some("d"))).unwrap();
        assert_eq!(
            c.socket_url().as_str(),
            "ws://127.0.0.1:8787/ws?machineId=d"
        );
    }

    #[test]
    fn machine_key_is_hex_hmac() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            machine_key(&Secret::new("Jefe"), "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

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
                event: HookEvent::SessionStart
            })
        ));
    }

    #[test]
    fn hook_settings_fall_back_to_the_daemons_file() {
        let dir = tempfile::tempdir().unwrap();
        let w = worker_from_args(&args(Some("http://h:1"), Some("key"), Some("m1"))).unwrap();
        write_hook_config(dir.path(), &w).unwrap();
        let got = hook_worker(&args(None, None, None), dir.path()).unwrap();
        assert_eq!(got.machine_id, "m1");
        assert_eq!(got.api_key.expose(), "key");
        // The daemon falls back to the same file (a service has no environment); flags win.
        let mut a = args(None, None, None);
        a.data_dir = Some(dir.path().to_owned());
        let daemon = Config::from_args_or_saved(&a).unwrap();
        assert_eq!(daemon.worker.url.as_str(), "http://h:1/");
        assert_eq!(daemon.data_dir, dir.path());
        a.machine_id = Some("m2".into());
        assert_eq!(
            Config::from_args_or_saved(&a).unwrap().worker.machine_id,
            "m2"
        );
        assert!(Config::from_args(&args(None, None, None)).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(hook_config_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
