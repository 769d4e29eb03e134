//! Turning the settings as given into validated ones: each missing or malformed setting is a
//! [`ConfigError`] naming it and the fix.

use ccr_protocol::wire::{query, route};
use std::path::PathBuf;

use ccr_native::Secret;
use url::Url;

use super::host;

/// The settings as given on the command line and in the environment, not yet validated.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawSettings {
    /// `--worker-url` / `CCR_WORKER_URL`.
    pub(crate) worker_url: Option<String>,
    /// `--api-key` / `CCR_API_KEY`.
    pub(crate) api_key: Option<Secret>,
    /// `--machine-id` / `CCR_MACHINE_ID`.
    pub(crate) machine_id: Option<String>,
    /// `--data-dir` / `CCR_DATA_DIR`.
    pub(crate) data_dir: Option<PathBuf>,
    /// `--inject-delay-ms` / `CCR_INJECT_DELAY_MS`.
    pub(crate) inject_delay_ms: u64,
    /// `--hold-commands` / `CCR_HOLD_COMMANDS`.
    pub(crate) hold_commands: bool,
    /// `--project NAME=/dir` (repeated) / `CCR_PROJECTS` (comma-separated).
    pub(crate) projects: Vec<String>,
    /// `--new-session-command` / `CCR_NEW_SESSION_COMMAND`.
    pub(crate) new_session_command: Option<String>,
    /// `--tmux-socket` / `CCR_TMUX_SOCKET`.
    pub(crate) tmux_socket: Option<PathBuf>,
}

/// A setting that is missing or malformed: one line naming it and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub(crate) String);

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
    pub(crate) fn socket_url(&self) -> Url {
        let mut url = self.url.clone();
        // Only http and https are accepted by `parse_worker_url`, and both have a ws twin.
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        let _ = url.set_scheme(scheme);
        let path = format!(
            "{}{}",
            url.path().trim_end_matches('/'),
            route::MACHINE_SOCKET
        );
        url.set_path(&path);
        url.set_query(None);
        url.query_pairs_mut()
            .append_pair(query::MACHINE_ID, &self.machine_id);
        url
    }

    /// `base + path` for an HTTP route such as `/sessions/register`.
    pub(crate) fn http_url(&self, route: &str) -> Url {
        let mut url = self.url.clone();
        let path = format!("{}{}", url.path().trim_end_matches('/'), route);
        url.set_path(&path);
        url.set_query(None);
        url
    }
}

/// The Worker settings; every one must be present and valid.
pub(crate) fn worker_from_args(args: &RawSettings) -> Result<WorkerConfig, ConfigError> {
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
pub(crate) fn parse_worker_url(raw: &str) -> Result<Url, ConfigError> {
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
pub(crate) fn machine_id(args: &RawSettings) -> Result<String, ConfigError> {
    let id = match args.machine_id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => host::hostname_machine_id().ok_or_else(|| {
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

/// The data directory: the flag/env, else `$XDG_STATE_HOME/ccr-agent`, else
/// `~/.local/state/ccr-agent`.
pub(crate) fn data_dir(args: &RawSettings) -> Result<PathBuf, ConfigError> {
    if let Some(dir) = &args.data_dir {
        if dir.as_os_str().is_empty() {
            return Err(ConfigError(
                "CCR_DATA_DIR is empty: pass --data-dir or unset CCR_DATA_DIR".into(),
            ));
        }
        return Ok(dir.clone());
    }
    host::default_data_dir().ok_or_else(|| {
        ConfigError(
            "neither CCR_DATA_DIR, XDG_STATE_HOME nor HOME is set: pass --data-dir or set \
             CCR_DATA_DIR"
                .into(),
        )
    })
}
