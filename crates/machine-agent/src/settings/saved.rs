//! The settings file `<data dir>/agent.json` (mode 0600): the daemon saves its Worker settings
//! there for the hooks (which Claude Code starts with its own environment, usually without
//! `CCR_*`) and for a service started with no environment; `install-service` writes it too.

use std::path::{Path, PathBuf};

use ccr_native::Secret;
use serde::{Deserialize, Serialize};

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
}

/// Writes the hooks' settings file (mode 0600, replaced atomically).
pub(crate) fn write_hook_config(data_dir: &Path, worker: &WorkerConfig) -> std::io::Result<()> {
    let file = HookConfigFile {
        worker_url: worker.url.to_string(),
        api_key: worker.api_key.clone(),
        machine_id: worker.machine_id.clone(),
    };
    let text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    ccr_native::write_atomic(&hook_config_path(data_dir), &text, 0o600)
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
