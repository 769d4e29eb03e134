//! `ccr-agent install-service`: a systemd user unit (Linux) or a launchd agent (macOS) that
//! keeps the daemon running.
//!
//! The service file holds no secret, so it is an ordinary 0644 file: the Worker URL, the API
//! key and the machine id go to the agent's own settings file, `<data dir>/agent.json` (mode
//! 0600, the file the hooks already read), and the service runs `ccr-agent --data-dir <dir>
//! run`, which reads them from there. Running it again with the same settings changes nothing.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::settings::{
    data_dir, hook_config_path, hook_worker, write_hook_config, ConfigError, HookConfigFile,
    RawSettings, WorkerConfig,
};

/// `--inject-delay-ms`'s default, left out of the service's command line.
const DEFAULT_INJECT_DELAY_MS: u64 = 100;

/// The service file holds no secret: readable by all, like any unit or plist.
const SERVICE_FILE_MODE: u32 = 0o644;

/// The launchd label (also the plist's file name).
pub(crate) const LAUNCHD_LABEL: &str = "dev.ccr.agent";
/// The systemd unit's name.
pub(crate) const SYSTEMD_UNIT: &str = "ccr-agent.service";

/// Which service manager to write for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Platform {
    /// A systemd user unit.
    Linux,
    /// A launchd user agent.
    Macos,
}

impl Platform {
    /// The platform this program runs on.
    pub(crate) fn current() -> Platform {
        if cfg!(target_os = "macos") {
            Platform::Macos
        } else {
            Platform::Linux
        }
    }
}

/// What `install-service` was asked for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// Which service to write; default: this system's.
    pub(crate) platform: Option<Platform>,
    /// Where to write it; default: the platform's place under the home directory.
    pub(crate) path: Option<PathBuf>,
    /// The home directory the default path is under; default $HOME.
    pub(crate) home: Option<PathBuf>,
}

/// What the service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceSpec {
    /// The `ccr-agent` program.
    pub(crate) exe: PathBuf,
    /// Its data directory (absolute).
    pub(crate) data_dir: PathBuf,
    /// `--inject-delay-ms`, when not the default.
    pub(crate) inject_delay_ms: Option<u64>,
    /// The `PATH` the service gets, so it finds tmux (launchd's default lacks Homebrew's).
    pub(crate) path_env: Option<String>,
}

impl ServiceSpec {
    /// The daemon's argument vector after the program.
    pub(crate) fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--data-dir".to_owned(),
            self.data_dir.to_string_lossy().into_owned(),
        ];
        if let Some(ms) = self.inject_delay_ms {
            args.push("--inject-delay-ms".into());
            args.push(ms.to_string());
        }
        args.push("run".into());
        args
    }
}

/// The default file for `platform` under `home`; systemd's honours `$XDG_CONFIG_HOME` when
/// `xdg_config_home` is given.
pub(crate) fn default_path(
    platform: Platform,
    home: &Path,
    xdg_config_home: Option<&Path>,
) -> PathBuf {
    match platform {
        Platform::Linux => xdg_config_home
            .filter(|p| p.is_absolute())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| home.join(".config"))
            .join("systemd/user")
            .join(SYSTEMD_UNIT),
        Platform::Macos => home
            .join("Library/LaunchAgents")
            .join(format!("{LAUNCHD_LABEL}.plist")),
    }
}

/// One word of a systemd command line or assignment: `%` and `$` escaped, quoted when needed.
fn systemd_word(word: &str) -> String {
    let escaped = word.replace('%', "%%").replace('$', "$$");
    let plain = !escaped.is_empty()
        && escaped
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,=@%$".contains(&b));
    if plain {
        escaped
    } else {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The systemd user unit.
pub(crate) fn systemd_unit(spec: &ServiceSpec) -> String {
    let mut exec = systemd_word(&spec.exe.to_string_lossy());
    for a in spec.args() {
        exec.push(' ');
        exec.push_str(&systemd_word(&a));
    }
    let mut out = String::new();
    out.push_str(
        "# Written by `ccr-agent install-service`; running it again rewrites this file.\n",
    );
    out.push_str("[Unit]\n");
    out.push_str("Description=CCR agent: Telegram replies into Claude Code tmux panes\n");
    out.push_str("After=network-online.target\n");
    out.push_str("Wants=network-online.target\n\n");
    out.push_str("[Service]\n");
    out.push_str(&format!(
        "# The Worker URL, API key and machine id are in {} (mode 0600), not here.\n",
        hook_config_path(&spec.data_dir).display()
    ));
    out.push_str(&format!("ExecStart={exec}\n"));
    if let Some(path) = &spec.path_env {
        out.push_str(&format!(
            "Environment={}\n",
            systemd_word(&format!("PATH={path}"))
        ));
    }
    out.push_str("Restart=always\n");
    out.push_str("RestartSec=5\n\n");
    out.push_str("[Install]\n");
    out.push_str("WantedBy=default.target\n");
    out
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The launchd agent's plist.
pub(crate) fn launchd_plist(spec: &ServiceSpec) -> String {
    let mut program = format!(
        "    <string>{}</string>\n",
        xml(&spec.exe.to_string_lossy())
    );
    for a in spec.args() {
        program.push_str(&format!("    <string>{}</string>\n", xml(&a)));
    }
    let env = spec
        .path_env
        .as_deref()
        .map(|p| {
            format!(
                "  <key>EnvironmentVariables</key>\n  <dict>\n    <key>PATH</key>\n    \
                 <string>{}</string>\n  </dict>\n",
                xml(p)
            )
        })
        .unwrap_or_default();
    let log = xml(&spec.data_dir.join("agent.log").to_string_lossy());
    // `Umask` 63 = 0o077: launchd itself creates agent.log in the private data directory.
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
         \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <!-- Written by `ccr-agent install-service`; running it again rewrites this file. \
         The Worker URL, API key and machine id are in agent.json (mode 0600) in the data \
         directory, not here. -->\n\
         <plist version=\"1.0\">\n\
         <dict>\n  \
         <key>Label</key>\n  <string>{LAUNCHD_LABEL}</string>\n  \
         <key>ProgramArguments</key>\n  <array>\n{program}  </array>\n\
         {env}  \
         <key>RunAtLoad</key>\n  <true/>\n  \
         <key>KeepAlive</key>\n  <true/>\n  \
         <key>ThrottleInterval</key>\n  <integer>5</integer>\n  \
         <key>Umask</key>\n  <integer>63</integer>\n  \
         <key>StandardOutPath</key>\n  <string>{log}</string>\n  \
         <key>StandardErrorPath</key>\n  <string>{log}</string>\n\
         </dict>\n\
         </plist>\n"
    )
}

/// Everything [`install`] needs, from the command line and the environment.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Which service manager.
    pub(crate) platform: Platform,
    /// The service file to write.
    pub(crate) path: PathBuf,
    /// What it runs.
    pub(crate) spec: ServiceSpec,
    /// The settings to save for it.
    pub(crate) worker: WorkerConfig,
}

/// Works out the plan: the settings come from flags and environment, then the data dir's
/// saved file (so running it again needs no environment); `exe` is the program to run.
pub(crate) fn plan(
    common: &RawSettings,
    args: &Options,
    exe: PathBuf,
) -> Result<Plan, ConfigError> {
    let data_dir = data_dir(common)?;
    let data_dir = std::path::absolute(&data_dir).map_err(|e| {
        ConfigError(format!(
            "CCR_DATA_DIR {} cannot be made absolute ({e}): pass an absolute --data-dir",
            data_dir.display()
        ))
    })?;
    let worker = hook_worker(common, &data_dir)?;
    let platform = args.platform.unwrap_or_else(Platform::current);
    let path = match &args.path {
        Some(p) => p.clone(),
        None => {
            let home = args
                .home
                .clone()
                .or_else(|| {
                    std::env::var_os("HOME")
                        .filter(|h| !h.is_empty())
                        .map(PathBuf::from)
                })
                .ok_or_else(|| ConfigError("HOME is not set: pass --home or --path".into()))?;
            // An explicit --home means "under this home": $XDG_CONFIG_HOME is for the real one.
            let xdg = match args.home {
                Some(_) => None,
                None => std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
            };
            default_path(platform, &home, xdg.as_deref())
        }
    };
    let spec = ServiceSpec {
        exe,
        data_dir,
        inject_delay_ms: (common.inject_delay_ms != DEFAULT_INJECT_DELAY_MS)
            .then_some(common.inject_delay_ms),
        path_env: std::env::var("PATH").ok().filter(|p| !p.is_empty()),
    };
    Ok(Plan {
        platform,
        path,
        spec,
        worker,
    })
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Installed {
    /// The service file.
    pub(crate) path: PathBuf,
    /// Whether the service file was (re)written.
    pub(crate) service_changed: bool,
    /// The settings file.
    pub(crate) settings_path: PathBuf,
    /// Whether the settings file was (re)written.
    pub(crate) settings_changed: bool,
}

/// Saves the settings (mode 0600) and writes the service file (mode 0644), each only when it
/// differs from what is there.
pub(crate) fn install(
    platform: Platform,
    path: &Path,
    spec: &ServiceSpec,
    worker: &WorkerConfig,
) -> anyhow::Result<Installed> {
    use std::os::unix::fs::PermissionsExt;
    crate::db::ensure_private_dir(&spec.data_dir)
        .with_context(|| format!("creating {}", spec.data_dir.display()))?;
    let settings_path = hook_config_path(&spec.data_dir);
    let saved = std::fs::read_to_string(&settings_path)
        .ok()
        .and_then(|t| serde_json::from_str::<HookConfigFile>(&t).ok());
    let mode_ok = std::fs::metadata(&settings_path)
        .map(|m| m.permissions().mode() & 0o077 == 0)
        .unwrap_or(false);
    let same = saved.is_some_and(|s| {
        s.worker_url == worker.url.as_str()
            && s.api_key == worker.api_key
            && s.machine_id == worker.machine_id
    });
    let settings_changed = !(same && mode_ok);
    if settings_changed {
        write_hook_config(&spec.data_dir, worker)
            .with_context(|| format!("writing {}", settings_path.display()))?;
    }
    let text = match platform {
        Platform::Linux => systemd_unit(spec),
        Platform::Macos => launchd_plist(spec),
    };
    let service_changed = std::fs::read_to_string(path).ok().as_deref() != Some(text.as_str());
    if service_changed {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        ccr_native::write_atomic(path, text.as_bytes(), SERVICE_FILE_MODE)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Installed {
        path: path.to_owned(),
        service_changed,
        settings_path,
        settings_changed,
    })
}

/// The lines telling the user what happened and how to start (or restart) the service.
pub(crate) fn next_steps(platform: Platform, installed: &Installed) -> Vec<String> {
    let mut out = Vec::new();
    let changed = installed.service_changed || installed.settings_changed;
    out.push(if installed.settings_changed {
        format!(
            "saved the Worker URL, API key and machine id to {} (mode 0600)",
            installed.settings_path.display()
        )
    } else {
        format!("{}: settings unchanged", installed.settings_path.display())
    });
    out.push(if installed.service_changed {
        format!("wrote {}", installed.path.display())
    } else {
        format!("{}: already installed, unchanged", installed.path.display())
    });
    // (command, comment): the comments line up in one column.
    let mut steps: Vec<(String, &str)> = Vec::new();
    match platform {
        Platform::Linux => {
            steps.push(("systemctl --user daemon-reload".into(), ""));
            steps.push(("systemctl --user enable --now ccr-agent.service".into(), ""));
            if changed {
                steps.push((
                    "systemctl --user restart ccr-agent.service".into(),
                    "if it was already running",
                ));
            }
            steps.push(("journalctl --user -u ccr-agent -f".into(), "its log"));
            steps.push((
                "loginctl enable-linger \"$USER\"".into(),
                "keep it running while you are logged out",
            ));
        }
        Platform::Macos => {
            steps.push((
                format!(
                    "launchctl bootstrap gui/$(id -u) {}",
                    installed.path.display()
                ),
                "",
            ));
            if changed {
                steps.push((
                    format!("launchctl kickstart -k gui/$(id -u)/{LAUNCHD_LABEL}"),
                    "if it was already running",
                ));
            }
            steps.push((
                format!("launchctl bootout gui/$(id -u)/{LAUNCHD_LABEL}"),
                "to stop it",
            ));
        }
    }
    out.push("start it now and at every login:".into());
    let width = steps
        .iter()
        .filter(|(_, c)| !c.is_empty())
        .map(|(s, _)| s.len())
        .max()
        .unwrap_or(0);
    for (step, comment) in steps {
        if comment.is_empty() {
            out.push(format!("  {step}"));
        } else {
            out.push(format!("  {step:<width$}   # {comment}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccr_native::Secret;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            exe: "/home/ada/.cargo/bin/ccr-agent".into(),
            data_dir: "/home/ada/.local/state/ccr-agent".into(),
            inject_delay_ms: None,
            path_env: Some("/usr/local/bin:/usr/bin:/bin".into()),
        }
    }

    #[test]
    fn systemd_unit_runs_the_daemon_with_its_data_dir() {
        let unit = systemd_unit(&spec());
        assert!(unit.contains(
            "\nExecStart=/home/ada/.cargo/bin/ccr-agent --data-dir /home/ada/.local/state/ccr-agent run\n"
        ), "{unit}");
        assert!(unit.contains("\nEnvironment=PATH=/usr/local/bin:/usr/bin:/bin\n"));
        assert!(unit.contains("\nRestart=always\n"));
        assert!(unit.contains("\nWantedBy=default.target\n"));
        let odd = ServiceSpec {
            exe: "/opt/my tools/ccr-agent".into(),
            data_dir: "/d/100%".into(),
            inject_delay_ms: Some(250),
            path_env: None,
        };
        let unit = systemd_unit(&odd);
        assert!(unit.contains(
            "\nExecStart=\"/opt/my tools/ccr-agent\" --data-dir /d/100%% --inject-delay-ms 250 run\n"
        ), "{unit}");
        assert!(!unit.contains("Environment="));
    }

    #[test]
    fn launchd_plist_is_escaped_xml() {
        let mut s = spec();
        s.exe = "/Users/a&b/ccr-agent".into();
        let plist = launchd_plist(&s);
        assert!(
            plist.contains("<string>/Users/a&amp;b/ccr-agent</string>"),
            "{plist}"
        );
        assert!(plist.contains("<key>Label</key>\n  <string>dev.ccr.agent</string>"));
        assert!(plist.contains("<string>--data-dir</string>\n    <string>/home/ada/.local/state/ccr-agent</string>\n    <string>run</string>"));
        assert!(plist.contains("<key>KeepAlive</key>\n  <true/>"));
        assert_eq!(
            plist.matches("<dict>").count(),
            plist.matches("</dict>").count()
        );
    }

    #[test]
    fn default_paths() {
        let home = Path::new("/home/ada");
        assert_eq!(
            default_path(Platform::Linux, home, None),
            Path::new("/home/ada/.config/systemd/user/ccr-agent.service")
        );
        assert_eq!(
            default_path(Platform::Linux, home, Some(Path::new("/x/cfg"))),
            Path::new("/x/cfg/systemd/user/ccr-agent.service")
        );
        assert_eq!(
            default_path(Platform::Macos, home, None),
            Path::new("/home/ada/Library/LaunchAgents/dev.ccr.agent.plist")
        );
    }

    #[test]
    fn install_is_idempotent_and_keeps_the_key_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec();
        s.data_dir = dir.path().join("data");
        let worker = WorkerConfig {
            url: "https://w.example/".parse().unwrap(),
            api_key: Secret::new("k3y"),
            machine_id: "devbox".into(),
        };
        let path = dir.path().join("unit/ccr-agent.service");
        let r = install(Platform::Linux, &path, &s, &worker).unwrap();
        assert!(r.service_changed && r.settings_changed);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o644);
        assert_eq!(mode(&r.settings_path), 0o600);
        assert!(!std::fs::read_to_string(&path).unwrap().contains("k3y"));
        let r = install(Platform::Linux, &path, &s, &worker).unwrap();
        assert!(!r.service_changed && !r.settings_changed);
        assert!(next_steps(Platform::Linux, &r)
            .iter()
            .any(|l| l.contains("already installed")));
        // A new key is saved; a loosened mode is repaired.
        std::fs::set_permissions(&r.settings_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let r = install(Platform::Linux, &path, &s, &worker).unwrap();
        assert!(r.settings_changed && !r.service_changed);
        assert_eq!(mode(&r.settings_path), 0o600);
    }
}
