//! Settings: what the daemon, the hooks and the set-up commands run with, validated.
//!
//! Every setting is a flag and an environment variable (`CCR_*`, parsed by the `cli` module
//! into a [`RawSettings`]); a missing one falls back to the settings file a previous run saved
//! (`saved`: `<data dir>/agent.json`), then to what the host offers (`host`: the hostname, the
//! XDG state directory). A missing or malformed one is a [`ConfigError`] whose message names
//! the setting and how to fix it (exit code 2).
//!
//! - `resolve`: raw → validated ([`WorkerConfig`], the data dir, the machine id).
//! - `daemon_config`: the daemon's [`Config`] and socket [`Timing`].
//! - `saved`: the 0600 settings file the daemon and `install-service` write for the hooks.
//! - `machine_key`: a machine's own key derived from the admin key.
//! - `host`: the hostname and the XDG state directory.

mod daemon_config;
mod host;
mod launch;
mod machine_key;
mod resolve;
mod saved;

pub use daemon_config::{Config, Timing};
pub use launch::{Launch, Project};
pub(crate) use machine_key::machine_key;
pub(crate) use resolve::{data_dir, machine_id, parse_worker_url, RawSettings};
pub use resolve::{ConfigError, WorkerConfig};
pub(crate) use saved::{
    hook_config_path, hook_worker, saved_launch, write_hook_config, write_settings, HookConfigFile,
};

#[cfg(test)]
mod tests {
    use super::*;
    use ccr_native::Secret;
    use resolve::worker_from_args;

    fn args(url: Option<&str>, key: Option<&str>, id: Option<&str>) -> RawSettings {
        RawSettings {
            worker_url: url.map(Into::into),
            api_key: key.map(Secret::new),
            machine_id: id.map(Into::into),
            data_dir: Some("/tmp/x".into()),
            inject_delay_ms: 100,
            hold_commands: false,
            ..Default::default()
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
        // `/new`'s settings: saved by the daemon, found again by a run without flags, kept
        // when `install-service` rewrites the Worker settings.
        let project = tempfile::tempdir().unwrap();
        let mut with = a.clone();
        with.projects = vec![format!("api={}", project.path().display())];
        with.new_session_command = Some("claude --verbose".into());
        let launch = Config::from_args_or_saved(&with).unwrap().launch;
        assert_eq!(launch.names(), vec!["api".to_owned()]);
        write_settings(dir.path(), &w, Some(&launch)).unwrap();
        write_hook_config(dir.path(), &w).unwrap();
        let again = Config::from_args_or_saved(&a).unwrap().launch;
        assert_eq!(again, launch);
        assert_eq!(again.command, vec!["claude", "--verbose"]);
        with.projects = vec!["api=/nonexistent/ccr-project".into()];
        let e = Config::from_args_or_saved(&with).unwrap_err();
        assert!(e.0.contains("not an existing directory"), "{e}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(hook_config_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
