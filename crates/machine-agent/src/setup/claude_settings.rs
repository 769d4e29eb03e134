//! `ccr-agent install-hooks`: merging our hooks into Claude Code's `settings.json`.
//!
//! The merge is idempotent (an entry of ours is recognised by `ccr-agent … hook <event>` in
//! its command and updated in place), keeps every other setting and hook, writes a backup of
//! the previous file first, and replaces the file atomically, keeping its mode (a new file is
//! 0600). A file that is not a JSON object
//! is left untouched with an error.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use crate::db::now_ms;
use crate::hooks::HookEvent;

/// The mode of a settings file this command creates.
const NEW_FILE_MODE: u32 = 0o600;

/// Seconds Claude Code gives each of our hooks before killing it.
pub(crate) const HOOK_TIMEOUT_SECS: u64 = 10;

/// Quotes `s` for a POSIX shell (Claude Code runs hook commands through one).
pub(crate) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,=@%".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The hook command for `event`, e.g. `/usr/local/bin/ccr-agent hook stop`.
pub(crate) fn hook_command(exe: &Path, data_dir: Option<&Path>, event: HookEvent) -> String {
    let mut cmd = shell_quote(&exe.to_string_lossy());
    if let Some(dir) = data_dir {
        cmd.push_str(" --data-dir ");
        cmd.push_str(&shell_quote(&dir.to_string_lossy()));
    }
    cmd.push_str(" hook ");
    cmd.push_str(event.arg());
    cmd
}

/// Whether `command` is our hook for `event` (`ccr-agent … hook <event>`).
pub(crate) fn is_ours(command: &str, event: HookEvent) -> bool {
    command.contains("ccr-agent")
        && command
            .trim_end()
            .ends_with(&format!(" hook {}", event.arg()))
}

/// Merges our hooks into `settings`; returns whether anything changed.
pub(crate) fn merge(
    settings: &mut Value,
    exe: &Path,
    data_dir: Option<&Path>,
    permission_timeout: u64,
) -> anyhow::Result<bool> {
    let Some(root) = settings.as_object_mut() else {
        bail!("the settings file is not a JSON object");
    };
    let hooks = root
        .entry("hooks")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(hooks) = hooks.as_object_mut() else {
        bail!("\"hooks\" in the settings file is not an object");
    };
    let mut changed = false;
    for event in HookEvent::ALL {
        let wanted = hook_command(exe, data_dir, event);
        // The PermissionRequest hook waits for a person: hours, not seconds.
        let timeout = match event {
            HookEvent::PermissionRequest => permission_timeout,
            _ => HOOK_TIMEOUT_SECS,
        };
        let groups = hooks
            .entry(event.claude_name())
            .or_insert_with(|| Value::Array(Vec::new()));
        let Some(groups) = groups.as_array_mut() else {
            bail!(
                "\"hooks.{}\" in the settings file is not a list",
                event.claude_name()
            );
        };
        let mut found = false;
        for group in groups.iter_mut() {
            let Some(entries) = group.get_mut("hooks").and_then(Value::as_array_mut) else {
                continue;
            };
            for entry in entries.iter_mut() {
                let Some(command) = entry.get("command").and_then(Value::as_str) else {
                    continue;
                };
                if !is_ours(command, event) {
                    continue;
                }
                found = true;
                if command != wanted {
                    entry["command"] = Value::String(wanted.clone());
                    changed = true;
                }
                if entry.get("timeout").and_then(Value::as_u64) != Some(timeout) {
                    entry["timeout"] = json!(timeout);
                    changed = true;
                }
            }
        }
        if !found {
            groups.push(json!({
                "hooks": [{"type": "command", "command": wanted, "timeout": timeout}]
            }));
            changed = true;
        }
    }
    Ok(changed)
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Installed {
    /// The settings file.
    pub(crate) path: PathBuf,
    /// Whether it was written (false: it already had our hooks).
    pub(crate) changed: bool,
    /// The backup of the previous file, if there was one and it changed.
    pub(crate) backup: Option<PathBuf>,
}

/// Merges our hooks into the settings file at `path` (created if missing).
pub(crate) fn install(
    path: &Path,
    exe: &Path,
    data_dir: Option<&Path>,
    permission_timeout: u64,
) -> anyhow::Result<Installed> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut settings = match &existing {
        Some(text) if !text.trim().is_empty() => {
            serde_json::from_str::<Value>(text).with_context(|| {
                format!(
                    "{} is not valid JSON; fix it first (it was not changed)",
                    path.display()
                )
            })?
        }
        _ => Value::Object(Map::new()),
    };
    let changed = merge(&mut settings, exe, data_dir, permission_timeout)
        .with_context(|| format!("{} was not changed", path.display()))?;
    if !changed {
        return Ok(Installed {
            path: path.to_owned(),
            changed: false,
            backup: None,
        });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The file keeps its mode (it may hold secrets in `env` that its owner keeps private); a
    // new one is private to its owner.
    let mode = existing_mode(path).unwrap_or(NEW_FILE_MODE);
    let mut backup = None;
    if let Some(text) = &existing {
        let stamp = now_ms();
        let b = PathBuf::from(format!("{}.bak-{stamp}", path.display()));
        ccr_native::write_atomic(&b, text.as_bytes(), mode)
            .with_context(|| format!("writing backup {}", b.display()))?;
        backup = Some(b);
    }
    let mut text = serde_json::to_string_pretty(&settings)?;
    text.push('\n');
    ccr_native::write_atomic(path, text.as_bytes(), mode)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Installed {
        path: path.to_owned(),
        changed: true,
        backup,
    })
}

/// The permission bits of the file at `path`, if it exists.
fn existing_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

/// `~/.claude/settings.json`.
pub(crate) fn default_settings_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".claude/settings.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXE: &str = "/opt/ccr/bin/ccr-agent";

    fn user_settings() -> Value {
        json!({
            "model": "opus",
            "permissions": {"allow": ["Bash(git:*)"]},
            "hooks": {
                "Stop": [{"hooks": [{"type": "command", "command": "say done"}]}],
                "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "audit"}]}]
            }
        })
    }

    fn commands(v: &Value, event: &str) -> Vec<String> {
        v["hooks"][event]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["hooks"].as_array().unwrap().iter())
            .map(|h| h["command"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn merge_adds_ours_and_keeps_everything_else() {
        let mut v = user_settings();
        assert!(merge(&mut v, Path::new(EXE), None, 3600).unwrap());
        assert_eq!(v["model"], "opus");
        assert_eq!(v["permissions"]["allow"][0], "Bash(git:*)");
        assert_eq!(commands(&v, "PreToolUse"), ["audit"]);
        assert_eq!(
            commands(&v, "Stop"),
            ["say done", "/opt/ccr/bin/ccr-agent hook stop"]
        );
        for (event, arg) in [
            ("SessionStart", "session-start"),
            ("Notification", "notification"),
            ("SessionEnd", "session-end"),
        ] {
            assert_eq!(commands(&v, event), [format!("{EXE} hook {arg}")]);
        }
        assert_eq!(
            v["hooks"]["Stop"][1]["hooks"][0]["timeout"],
            HOOK_TIMEOUT_SECS
        );
    }

    #[test]
    fn merge_is_idempotent_and_updates_a_moved_binary() {
        let mut v = user_settings();
        merge(&mut v, Path::new(EXE), None, 3600).unwrap();
        let once = v.clone();
        assert!(!merge(&mut v, Path::new(EXE), None, 3600).unwrap());
        assert_eq!(v, once);
        assert!(merge(
            &mut v,
            Path::new("/new place/ccr-agent"),
            Some(Path::new("/d")),
            3600
        )
        .unwrap());
        assert_eq!(
            v["hooks"]["PermissionRequest"][0]["hooks"][0]["timeout"], 3600,
            "the permission hook waits hours"
        );
        assert!(merge(
            &mut v,
            Path::new("/new place/ccr-agent"),
            Some(Path::new("/d")),
            7200
        )
        .unwrap());
        assert_eq!(
            v["hooks"]["PermissionRequest"][0]["hooks"][0]["timeout"],
            7200
        );
        assert_eq!(
            commands(&v, "Stop"),
            ["say done", "'/new place/ccr-agent' --data-dir /d hook stop"]
        );
        assert_eq!(commands(&v, "SessionStart").len(), 1);
    }

    #[test]
    fn merge_refuses_odd_shapes() {
        assert!(merge(&mut json!([1]), Path::new(EXE), None, 3600).is_err());
        assert!(merge(&mut json!({"hooks": 3}), Path::new(EXE), None, 3600).is_err());
        assert!(merge(
            &mut json!({"hooks": {"Stop": {}}}),
            Path::new(EXE),
            None,
            3600
        )
        .is_err());
    }

    #[test]
    fn install_writes_a_backup_first_and_only_when_changing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".claude/settings.json");
        // Missing file: created, nothing to back up.
        let r = install(&path, Path::new(EXE), None, 3600).unwrap();
        assert!(r.changed && r.backup.is_none());
        // Existing user file: backed up verbatim, then merged.
        let original = serde_json::to_string_pretty(&user_settings()).unwrap();
        std::fs::write(&path, &original).unwrap();
        let r = install(&path, Path::new(EXE), None, 3600).unwrap();
        let backup = r.backup.unwrap();
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), original);
        let merged: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(commands(&merged, "Stop").len(), 2);
        // Again: nothing to do, no new backup.
        let r = install(&path, Path::new(EXE), None, 3600).unwrap();
        assert!(!r.changed && r.backup.is_none());
        // Broken JSON is left alone.
        std::fs::write(&path, "{ not json").unwrap();
        let err = install(&path, Path::new(EXE), None, 3600).unwrap_err();
        assert!(format!("{err:#}").contains("not valid JSON"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");
    }

    #[test]
    fn install_keeps_the_files_mode_and_creates_private_ones() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        install(&path, Path::new(EXE), None, 3600).unwrap();
        assert_eq!(mode(&path), 0o600);
        let path = dir.path().join("shared.json");
        std::fs::write(&path, "{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let r = install(&path, Path::new(EXE), None, 3600).unwrap();
        assert_eq!(mode(&path), 0o640);
        assert_eq!(mode(&r.backup.unwrap()), 0o640);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/ccr-agent"), "/usr/bin/ccr-agent");
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
