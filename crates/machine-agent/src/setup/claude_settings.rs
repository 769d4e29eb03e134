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

/// Our hook handler for `event`, in Claude Code's exec form: `command` is the program and
/// `args` its arguments, run without a shell, e.g.
/// `{"type":"command","command":"/usr/local/bin/ccr-agent","args":["hook","stop"],"timeout":10}`.
///
/// Exec form rather than a shell command line: a path with spaces or quotes needs no quoting,
/// no shell starts before each hook, and the signal Claude Code sends a hook it gives up on
/// reaches `ccr-agent` itself (the PermissionRequest hook reads it as "answered at the
/// terminal"). A command hook rather than an http hook to the daemon: a waiting hook outlives
/// a daemon restart (its decision is redelivered to it), and the daemon needs no listening
/// port that every local process could call.
pub(crate) fn hook_entry(
    exe: &Path,
    data_dir: Option<&Path>,
    event: HookEvent,
    timeout: u64,
) -> Value {
    let mut args = Vec::new();
    if let Some(dir) = data_dir {
        args.push(Value::String("--data-dir".into()));
        args.push(Value::String(dir.to_string_lossy().into_owned()));
    }
    args.push(Value::String("hook".into()));
    args.push(Value::String(event.arg().into()));
    json!({
        "type": "command",
        "command": exe.to_string_lossy(),
        "args": args,
        "timeout": timeout,
    })
}

/// Whether the hook handler `entry` is ours for `event`: exec form (`command` is a
/// `ccr-agent` program, `args` end with `hook <event>`) or the shell command line earlier
/// versions installed (`ccr-agent … hook <event>`), which [`merge`] rewrites in exec form.
pub(crate) fn is_ours(entry: &Value, event: HookEvent) -> bool {
    let Some(command) = entry.get("command").and_then(Value::as_str) else {
        return false;
    };
    match entry.get("args").and_then(Value::as_array) {
        Some(args) => {
            let program = Path::new(command)
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            let tail: Vec<&str> = args
                .iter()
                .rev()
                .take(2)
                .filter_map(Value::as_str)
                .collect();
            program.contains("ccr-agent") && tail == [event.arg(), "hook"]
        }
        None => {
            command.contains("ccr-agent")
                && command
                    .trim_end()
                    .ends_with(&format!(" hook {}", event.arg()))
        }
    }
}

/// The program our hook handler `entry` runs: `command` in exec form, else the first word
/// of the shell command line (unquoted).
pub(crate) fn hook_program(entry: &Value) -> String {
    let command = entry.get("command").and_then(Value::as_str).unwrap_or("");
    if entry.get("args").is_some() {
        return command.to_owned();
    }
    shell_word(command)
}

/// The first word of a shell command line, unquoted (`'…'` with `'` written as `'\''`, as
/// earlier versions quoted it).
fn shell_word(command: &str) -> String {
    let command = command.trim_start();
    if let Some(rest) = command.strip_prefix('\'') {
        let mut out = String::new();
        let mut rest = rest;
        loop {
            match rest.find('\'') {
                None => return out + rest,
                Some(i) => {
                    out.push_str(&rest[..i]);
                    rest = &rest[i + 1..];
                    if let Some(r) = rest.strip_prefix("\\''") {
                        out.push('\'');
                        rest = r;
                    } else {
                        return out;
                    }
                }
            }
        }
    }
    command.split_whitespace().next().unwrap_or("").to_owned()
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
        // The PermissionRequest hook waits for a person: hours, not seconds.
        let timeout = match event {
            HookEvent::PermissionRequest => permission_timeout,
            _ => HOOK_TIMEOUT_SECS,
        };
        let wanted = hook_entry(exe, data_dir, event, timeout);
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
                if !is_ours(entry, event) {
                    continue;
                }
                found = true;
                // Ours is rewritten whole (a moved binary, a new timeout, the shell form of
                // earlier versions); anything else the user put in it (`if`, `statusMessage`)
                // stays.
                let Some(fields) = entry.as_object_mut() else {
                    continue;
                };
                if fields.get("args").is_none() {
                    fields.remove("command");
                }
                for key in ["type", "command", "args", "timeout"] {
                    if fields.get(key) != wanted.get(key) {
                        fields.insert(key.to_owned(), wanted[key].clone());
                        changed = true;
                    }
                }
            }
        }
        if !found {
            groups.push(json!({ "hooks": [wanted] }));
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

    /// Each handler of `event` as one line: the command, then its exec-form arguments.
    fn commands(v: &Value, event: &str) -> Vec<String> {
        v["hooks"][event]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["hooks"].as_array().unwrap().iter())
            .map(|h| {
                let mut line = h["command"].as_str().unwrap().to_owned();
                for a in h["args"].as_array().into_iter().flatten() {
                    line.push_str(&format!(" [{}]", a.as_str().unwrap()));
                }
                line
            })
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
            ["say done", "/opt/ccr/bin/ccr-agent [hook] [stop]"]
        );
        assert_eq!(
            v["hooks"]["Stop"][1]["hooks"][0],
            json!({"type": "command", "command": EXE, "args": ["hook", "stop"], "timeout": 10}),
            "exec form: no shell"
        );
        for (event, arg) in [
            ("SessionStart", "session-start"),
            ("Notification", "notification"),
            ("SessionEnd", "session-end"),
        ] {
            assert_eq!(commands(&v, event), [format!("{EXE} [hook] [{arg}]")]);
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
            [
                "say done",
                "/new place/ccr-agent [--data-dir] [/d] [hook] [stop]"
            ]
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
    fn the_shell_form_of_earlier_versions_is_rewritten_in_exec_form() {
        let mut v = json!({"hooks": {"Stop": [{"hooks": [
            {"type": "command", "command": "say done"},
            {"type": "command", "command": "'/old place/ccr-agent' hook stop",
             "timeout": 10, "statusMessage": "telling the phone"}
        ]}]}});
        assert!(merge(&mut v, Path::new(EXE), None, 3600).unwrap());
        assert_eq!(
            v["hooks"]["Stop"][0]["hooks"][1],
            json!({"type": "command", "command": EXE, "args": ["hook", "stop"], "timeout": 10,
                   "statusMessage": "telling the phone"}),
            "updated in place, the user's own field kept"
        );
        assert_eq!(v["hooks"]["Stop"].as_array().unwrap().len(), 1);
        assert!(!merge(&mut v, Path::new(EXE), None, 3600).unwrap());
    }

    #[test]
    fn ours_is_recognised_in_both_forms_and_only_for_its_event() {
        let exec = hook_entry(
            Path::new("/a b/ccr-agent"),
            Some(Path::new("/d")),
            HookEvent::Stop,
            10,
        );
        assert!(is_ours(&exec, HookEvent::Stop));
        assert!(!is_ours(&exec, HookEvent::SessionEnd));
        assert_eq!(hook_program(&exec), "/a b/ccr-agent");
        let shell = json!({"command": "'/a b/it'\\''s/ccr-agent' hook stop"});
        assert!(is_ours(&shell, HookEvent::Stop));
        assert_eq!(hook_program(&shell), "/a b/it's/ccr-agent");
        assert_eq!(
            hook_program(&json!({"command": "/bin/ccr-agent hook stop"})),
            "/bin/ccr-agent"
        );
        assert!(!is_ours(
            &json!({"command": "/bin/other", "args": ["hook", "stop"]}),
            HookEvent::Stop
        ));
        assert!(!is_ours(&json!({"command": "say done"}), HookEvent::Stop));
        assert!(!is_ours(
            &json!({"args": ["hook", "stop"]}),
            HookEvent::Stop
        ));
    }
}
