//! What the host offers when a setting is not given: the hostname (for the machine id) and
//! the XDG state directory (for the data dir).

use std::path::{Path, PathBuf};

/// The hostname's first label with anything but letters, digits and '-' replaced by '-'.
pub(super) fn hostname_machine_id() -> Option<String> {
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

/// `$XDG_STATE_HOME/ccr-agent` when that is absolute, else `~/.local/state/ccr-agent`.
pub(super) fn default_data_dir() -> Option<PathBuf> {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        let state = PathBuf::from(state);
        if state.is_absolute() {
            return Some(state.join("ccr-agent"));
        }
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty())?;
    Some(Path::new(&home).join(".local/state/ccr-agent"))
}
