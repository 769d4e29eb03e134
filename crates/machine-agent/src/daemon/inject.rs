//! Typing a command into a tmux pane: `send-keys -l` (literal, so no key names are
//! interpreted), a short pause, then Enter. tmux is run directly with an argument vector —
//! no shell ever sees the command text — and with `-S <socket>`, so the daemon reaches a pane
//! on any tmux server although it runs outside tmux.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// A pane on a particular tmux server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pane {
    /// The pane id, e.g. `%3`.
    pub(crate) pane_id: String,
    /// The server's socket; `None` = the default server.
    pub(crate) socket: Option<PathBuf>,
}

/// The socket path in a `$TMUX` value (`<socket>,<server pid>,<session index>`).
pub(crate) fn socket_from_tmux_env(tmux: &str) -> Option<PathBuf> {
    // The path itself may contain commas; the last two fields never do.
    let mut parts = tmux.rsplitn(3, ',');
    let (_, _, path) = (parts.next()?, parts.next()?, parts.next()?);
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// Why a command could not be typed, in words a person understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InjectError {
    /// No tmux program.
    #[error("tmux is not installed on this machine (or not on the agent's PATH)")]
    TmuxMissing,
    /// The server the session ran on is gone.
    #[error("the tmux server of this session is no longer running ({0})")]
    ServerGone(String),
    /// The pane is gone.
    #[error("the session's tmux pane {0} no longer exists (was its terminal closed?)")]
    PaneGone(String),
    /// tmux did not answer in time.
    #[error("tmux did not answer within {0:?}")]
    Timeout(Duration),
    /// Anything else tmux said.
    #[error("tmux failed: {0}")]
    Failed(String),
}

/// Types into panes.
#[derive(Debug, Clone)]
pub(crate) struct Injector {
    tmux: PathBuf,
    pause: Duration,
    timeout: Duration,
}

impl Injector {
    /// `tmux` is the program; `pause` goes between the text and Enter.
    pub(crate) fn new(tmux: impl Into<PathBuf>, pause: Duration) -> Self {
        Self {
            tmux: tmux.into(),
            pause,
            timeout: Duration::from_secs(5),
        }
    }

    /// Types `text` into `pane` and presses Enter; an empty text is Enter alone.
    #[cfg(test)]
    pub(crate) async fn type_into(&self, pane: &Pane, text: &str) -> Result<(), InjectError> {
        self.type_with(pane, text, || {}).await
    }

    /// Types `text` into `pane` and presses Enter (an empty text is Enter alone), calling
    /// `typed` once the text is in the pane and only Enter is missing (so a crash after that
    /// point can be finished with Enter alone).
    pub(crate) async fn type_with(
        &self,
        pane: &Pane,
        text: &str,
        typed: impl FnOnce(),
    ) -> Result<(), InjectError> {
        // A gone pane fails the first `send-keys -t` ("can't find pane" → PaneGone) before
        // anything is typed, so no separate check: one tmux call fewer per command, a third
        // of the agent's share of webhook → pane (docs/PERFORMANCE.md).
        if !text.is_empty() {
            self.run(pane, &["send-keys", "-t", &pane.pane_id, "-l", "--", text])
                .await?;
            typed();
            tokio::time::sleep(self.pause).await;
        }
        self.enter(pane).await
    }

    /// Presses Enter in `pane` (PaneGone if it no longer exists).
    pub(crate) async fn press_enter(&self, pane: &Pane) -> Result<(), InjectError> {
        self.enter(pane).await
    }

    async fn enter(&self, pane: &Pane) -> Result<(), InjectError> {
        self.run(pane, &["send-keys", "-t", &pane.pane_id, "Enter"])
            .await
            .map(drop)
    }

    async fn run(&self, pane: &Pane, args: &[&str]) -> Result<String, InjectError> {
        let mut cmd = Command::new(&self.tmux);
        if let Some(socket) = &pane.socket {
            cmd.arg("-S").arg(socket);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(self.timeout, cmd.output()).await {
            Err(_) => return Err(InjectError::Timeout(self.timeout)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(InjectError::TmuxMissing)
            }
            Ok(Err(e)) => return Err(InjectError::Failed(e.to_string())),
            Ok(Ok(out)) => out,
        };
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(classify(
            &String::from_utf8_lossy(&out.stderr),
            pane,
            pane.socket.as_deref(),
        ))
    }
}

fn classify(stderr: &str, pane: &Pane, socket: Option<&Path>) -> InjectError {
    let msg = stderr.trim();
    let lower = msg.to_lowercase();
    if lower.contains("no server running")
        || lower.contains("error connecting to")
        || lower.contains("server exited")
        || lower.contains("lost server")
    {
        let server = socket
            .map(|s| s.display().to_string())
            .unwrap_or_else(|| "default server".into());
        InjectError::ServerGone(server)
    } else if lower.contains("can't find pane")
        || lower.contains("can't find window")
        || lower.contains("can't find session")
    {
        InjectError::PaneGone(pane.pane_id.clone())
    } else {
        InjectError::Failed(msg.chars().take(300).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_is_read_from_tmux_env() {
        assert_eq!(
            socket_from_tmux_env("/tmp/tmux-1000/default,1234,0"),
            Some(PathBuf::from("/tmp/tmux-1000/default"))
        );
        assert_eq!(
            socket_from_tmux_env("/tmp/odd,name/sock,1,2"),
            Some(PathBuf::from("/tmp/odd,name/sock"))
        );
        assert_eq!(socket_from_tmux_env(""), None);
        assert_eq!(socket_from_tmux_env("nonsense"), None);
    }

    fn pane() -> Pane {
        Pane {
            pane_id: "%9".into(),
            socket: Some("/tmp/nope/sock".into()),
        }
    }

    #[tokio::test]
    async fn missing_tmux_is_explained() {
        let inj = Injector::new("/nonexistent/tmux-binary", Duration::ZERO);
        let err = inj.type_into(&pane(), "hi").await.unwrap_err();
        assert_eq!(err, InjectError::TmuxMissing);
        assert!(err.to_string().contains("not installed"));
    }

    #[test]
    fn tmux_errors_are_classified() {
        let p = pane();
        assert!(matches!(
            classify(
                "error connecting to /tmp/nope/sock (No such file or directory)",
                &p,
                p.socket.as_deref()
            ),
            InjectError::ServerGone(_)
        ));
        assert_eq!(
            classify("can't find pane: %9", &p, None),
            InjectError::PaneGone("%9".into())
        );
        assert!(matches!(
            classify("weird", &p, None),
            InjectError::Failed(_)
        ));
    }

    fn tmux_available() -> bool {
        std::process::Command::new("tmux")
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Real tmux on a private socket: literal text arrives as typed (no key names, no shell),
    /// empty text is Enter alone, and a closed pane is reported.
    #[tokio::test]
    async fn types_literally_into_a_real_pane() {
        if !tmux_available() {
            eprintln!("tmux not installed; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let rec = dir.path().join("rec.txt");
        std::fs::write(&rec, "").unwrap();
        let script = r#"while IFS= read -r line; do printf '%s\n' "$line" >> "$1"; done"#;
        let st = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "200",
                "-y",
                "50",
            ])
            .args(["sh", "-c", script, "rec"])
            .arg(&rec)
            .status()
            .unwrap();
        assert!(st.success());
        let out = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .args(["display-message", "-p", "#{pane_id}"])
            .output()
            .unwrap();
        let pane = Pane {
            pane_id: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            socket: Some(sock.clone()),
        };
        let inj = Injector::new("tmux", Duration::from_millis(50));
        let tricky = "-l Enter C-c $(touch /tmp/pwned) `id` 'q' \"d\" ; \\ end";
        inj.type_into(&pane, tricky).await.unwrap();
        inj.type_into(&pane, "").await.unwrap();
        let mut lines = Vec::new();
        for _ in 0..100 {
            lines = std::fs::read_to_string(&rec)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>();
            if lines.len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(lines, vec![tricky.to_string(), String::new()]);
        let gone = Pane {
            pane_id: "%999".into(),
            socket: Some(sock.clone()),
        };
        assert_eq!(
            inj.type_into(&gone, "x").await.unwrap_err(),
            InjectError::PaneGone("%999".into())
        );
        let _ = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .arg("kill-server")
            .status();
        let err = inj.type_into(&pane, "x").await.unwrap_err();
        assert!(matches!(err, InjectError::ServerGone(_)), "{err:?}");
    }
}
