//! The settings file `<data dir>/agent.json` (mode 0600): the daemon saves its Worker settings
//! there for the hooks (which Claude Code starts with its own environment, usually without
//! `CCR_*`) and for a service started with no environment; `install-service` writes it too.

use std::path::{Path, PathBuf};

use ccr_native::Secret;
use serde::{Deserialize, Serialize};

use super::launch::Launch;
use super::resolve::{worker_from_args, ConfigError, RawSettings, WorkerConfig};

/// Where the daemon leaves the Worker settings for the hooks (which Claude Code starts with
/// its own environment, usually without `CCR_*`). Written with mode 0600.
pub(crate) fn hook_config_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent.json")
}

/// The file at [`hook_config_path`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HookConfigFile {
    /// The Worker's base URL.
    pub(crate) worker_url: String,
    /// The key the daemon uses.
    pub(crate) api_key: Secret,
    /// This machine's id.
    pub(crate) machine_id: String,
    /// `/new`'s project roots, `NAME=/dir` (the daemon's `--project`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) projects: Vec<String>,
    /// `/new`'s command (`--new-session-command`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) new_session_command: Option<String>,
    /// `/new`'s tmux server (`--tmux-socket`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tmux_socket: Option<PathBuf>,
}

fn read_saved(data_dir: &Path) -> Option<HookConfigFile> {
    let text = std::fs::read_to_string(hook_config_path(data_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the hooks' settings file (mode 0600, replaced atomically), keeping the `/new`
/// settings it holds.
pub(crate) fn write_hook_config(data_dir: &Path, worker: &WorkerConfig) -> std::io::Result<()> {
    write_settings(data_dir, worker, None)
}

/// Writes the settings file (mode 0600, replaced atomically): the Worker settings, and the
/// `/new` settings of `launch` (`None`: those the file holds stay).
pub(crate) fn write_settings(
    data_dir: &Path,
    worker: &WorkerConfig,
    launch: Option<&Launch>,
) -> std::io::Result<()> {
    let (projects, new_session_command, tmux_socket) = match launch {
        Some(l) => (
            l.saved_projects(),
            Some(l.command.join(" ")),
            l.tmux_socket.clone(),
        ),
        None => read_saved(data_dir)
            .map(|f| (f.projects, f.new_session_command, f.tmux_socket))
            .unwrap_or_default(),
    };
    let file = HookConfigFile {
        worker_url: worker.url.to_string(),
        api_key: worker.api_key.clone(),
        machine_id: worker.machine_id.clone(),
        projects,
        new_session_command,
        tmux_socket,
    };
    let text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    ccr_native::write_atomic(&hook_config_path(data_dir), &text, 0o600)
}

/// The daemon's `/new` settings: each from flags/env when given, else from the settings file
/// a previous run saved; validated now (a directory that no longer exists is an error).
pub(crate) fn saved_launch(args: &RawSettings, data_dir: &Path) -> Result<Launch, ConfigError> {
    let saved = read_saved(data_dir);
    let projects = if args.projects.iter().any(|p| !p.trim().is_empty()) {
        args.projects.clone()
    } else {
        saved
            .as_ref()
            .map(|f| f.projects.clone())
            .unwrap_or_default()
    };
    let command = args
        .new_session_command
        .clone()
        .or_else(|| saved.as_ref().and_then(|f| f.new_session_command.clone()));
    let socket = args
        .tmux_socket
        .clone()
        .or_else(|| saved.as_ref().and_then(|f| f.tmux_socket.clone()));
    Launch::parse(&projects, command.as_deref(), socket.as_deref())
}

/// The Worker settings for a hook: flags/env first, then the daemon's file in the data dir.
pub(crate) fn hook_worker(
    args: &RawSettings,
    data_dir: &Path,
) -> Result<WorkerConfig, ConfigError> {
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
