//! `/new`: starting the configured command in a new tmux window in a project's directory.
//!
//! The request names a project; the directory is the one this machine's owner configured for
//! that name (`settings::Launch`), checked again here — the Worker is not trusted with paths
//! and sends none. tmux runs the command from an argument vector (`new-window … -- argv…`):
//! the prompt from the chat is one argument and never passes through a shell, and never an
//! option either (one starting with `-` gets a leading space). (tmux hands a
//! command of exactly one word, i.e. the configured command with no prompt, to the shell;
//! that word comes from the owner's settings, never from the chat.)
//!
//! The window goes to the tmux session [`TMUX_SESSION`] on the configured server (`-S`), or
//! the default one; the session (and the server) is created when missing. It is started
//! detached (`-d`): a terminal attached to that session keeps showing what it showed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::inbox::Outcome;
use crate::settings::Launch;

/// The tmux session new windows go to.
pub(crate) const TMUX_SESSION: &str = "ccr";
/// The format tmux prints for the new window (`-P -F`).
const WINDOW_FORMAT: &str = "#{session_name}:#{window_index}";
/// Longest a tmux call may take.
const TMUX_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts `project`'s command (with `prompt` as its last argument) in a new window; the
/// outcome's `detail` is the window (`ccr:3`).
pub(crate) async fn start(
    tmux: &Path,
    launch: &Launch,
    project: &str,
    prompt: Option<&str>,
) -> Outcome {
    let Some(p) = launch.project(project) else {
        return Outcome::failed(format!(
            "no project named {project:?} is configured on this machine (ccr-agent --project \
             NAME=/path); nothing was started"
        ));
    };
    if !p.dir.is_dir() {
        return Outcome::failed(format!(
            "the directory of project {project:?} ({}) no longer exists; nothing was started",
            p.dir.display()
        ));
    }
    let prompt = prompt.map(prompt_arg);
    let mut argv: Vec<&str> = launch.command.iter().map(String::as_str).collect();
    if let Some(prompt) = &prompt {
        argv.push(prompt);
    }
    let dir = p.dir.to_string_lossy();
    let target = format!("{TMUX_SESSION}:");
    let mut window = vec![
        "new-window",
        "-d",
        "-P",
        "-F",
        WINDOW_FORMAT,
        "-t",
        &target,
        "-n",
        project,
        "-c",
        &dir,
        "--",
    ];
    window.extend(&argv);
    let started = match tmux_run(tmux, launch, &window).await {
        Err(e) if no_session(&e) => {
            // No such session (or no server yet): create it, with this window as its first.
            let mut session = vec![
                "new-session",
                "-d",
                "-P",
                "-F",
                WINDOW_FORMAT,
                "-s",
                TMUX_SESSION,
                "-n",
                project,
                "-c",
                &dir,
                "--",
            ];
            session.extend(&argv);
            tmux_run(tmux, launch, &session).await
        }
        other => other,
    };
    match started {
        Ok(window) => Outcome {
            success: true,
            error: None,
            detail: Some(window.trim().to_owned()),
        },
        Err(e) => Outcome::failed(format!("tmux could not start the window: {e}")),
    }
}

/// The prompt as the command's last argument: a prompt that starts with `-` gets a leading
/// space, so the chat can never pass the command an option (`--dangerously-…`) — only text.
fn prompt_arg(prompt: &str) -> String {
    if prompt.starts_with('-') {
        format!(" {prompt}")
    } else {
        prompt.to_owned()
    }
}

/// Whether tmux's refusal means the session or the server is missing.
fn no_session(stderr: &str) -> bool {
    let lower = stderr.to_lowercase();
    [
        "can't find session",
        "no server running",
        "error connecting to",
    ]
    .iter()
    .any(|n| lower.contains(n))
}

/// Runs tmux (on the configured server) with `args`; its stdout, or its stderr as the error.
async fn tmux_run(tmux: &Path, launch: &Launch, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(tmux);
    if let Some(socket) = &launch.tmux_socket {
        cmd.arg("-S").arg(socket);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(TMUX_TIMEOUT, cmd.output()).await {
        Err(_) => return Err(format!("tmux did not answer within {TMUX_TIMEOUT:?}")),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("tmux is not installed (or not on the agent's PATH)".into())
        }
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Project;

    fn tmux_available() -> bool {
        std::process::Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    #[test]
    fn a_prompt_is_never_an_option() {
        assert_eq!(prompt_arg("fix it"), "fix it");
        assert_eq!(prompt_arg("--model opus"), " --model opus");
        assert_eq!(prompt_arg("-p"), " -p");
        assert_eq!(prompt_arg(" -p"), " -p");
    }

    #[tokio::test]
    async fn unknown_projects_start_nothing() {
        let launch = Launch::default();
        let out = start(Path::new("/nonexistent/tmux"), &launch, "api", None).await;
        assert!(!out.success);
        assert!(out.error.unwrap().contains("no project named \"api\""));
        let gone = Launch {
            projects: vec![Project {
                name: "api".into(),
                dir: "/nonexistent/ccr-project".into(),
            }],
            ..Launch::default()
        };
        let out = start(Path::new("/nonexistent/tmux"), &gone, "api", None).await;
        assert!(out.error.unwrap().contains("no longer exists"));
    }

    #[tokio::test]
    async fn starts_the_command_in_the_directory_with_the_prompt_as_one_argument() {
        if !tmux_available() {
            eprintln!("tmux not installed; skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("proj");
        std::fs::create_dir(&project).unwrap();
        let socket = dir.path().join("tmux.sock");
        let record = dir.path().join("argv.txt");
        let script = dir.path().join("record.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nf={r}.$#\npwd > $f.tmp; for a in \"$@\"; do printf '%s\\n' \"$a\" >> $f.tmp; done; mv $f.tmp $f; sleep 30\n",
                r = record.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let launch = Launch {
            projects: vec![Project {
                name: "proj".into(),
                dir: project.clone(),
            }],
            command: vec![script.display().to_string(), "--flag".into()],
            tmux_socket: Some(socket.clone()),
        };
        let prompt = "hello; $(touch /tmp/ccr-pwned) 'world'";
        let first = start(Path::new("tmux"), &launch, "proj", Some(prompt)).await;
        assert!(first.success, "{first:?}");
        assert!(first.detail.as_deref().unwrap().starts_with("ccr:"));
        // The session exists now: the next one is a new window in it.
        let second = start(Path::new("tmux"), &launch, "proj", None).await;
        let kill = || {
            let _ = std::process::Command::new("tmux")
                .arg("-S")
                .arg(&socket)
                .arg("kill-server")
                .output();
        };
        if !second.success {
            kill();
        }
        assert!(second.success, "{second:?}");
        assert_ne!(first.detail, second.detail);
        assert!(second.detail.as_deref().unwrap().starts_with("ccr:"));
        let read = |n: usize| -> Vec<String> {
            let path = format!("{}.{n}", record.display());
            (0..400)
                .find_map(|_| {
                    let text = std::fs::read_to_string(&path).ok();
                    if text.is_none() {
                        std::thread::sleep(Duration::from_millis(25));
                    }
                    text
                })
                .expect("the command ran")
                .lines()
                .map(str::to_owned)
                .collect()
        };
        let cwd = project.canonicalize().unwrap().display().to_string();
        let (with_prompt, without) = (read(2), read(1));
        kill();
        assert_eq!(
            with_prompt,
            vec![cwd.clone(), "--flag".into(), prompt.into()]
        );
        assert_eq!(without, vec![cwd, "--flag".to_owned()]);
    }
}
