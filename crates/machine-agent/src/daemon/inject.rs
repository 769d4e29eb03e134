//! Typing a command into a tmux pane: a single line with `send-keys -l` (literal, so no key
//! names are interpreted), text with line breaks as one paste (`load-buffer` from stdin into
//! a buffer named for this paste alone, then `paste-buffer -p -d`: bracketed when the program
//! asked for it, as Claude Code does, so its line breaks are not Enters), then a short pause
//! and Enter. tmux is run directly with an argument vector — no shell ever sees the command
//! text — and with `-S <socket>`, so the daemon reaches a pane on any tmux server although it
//! runs outside tmux.
//!
//! A pane id alone does not name a pane for long: every new tmux server on a socket path
//! numbers its panes from `%0` again (after a reboot or `tmux kill-server`), so a recorded
//! `%3` may now be somebody's shell. [`PaneIdentity`] is what the session-start hook records
//! beside the id, and what the daemon reads again (one `display-message`) before every
//! injection: a difference means the session's pane is gone, and nothing is typed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Numbers this process's paste buffers, so two pastes never share a tmux buffer (buffers are
/// per server, and a server may hold the user's own).
static NEXT_BUFFER: AtomicU64 = AtomicU64::new(0);

/// `Some(text to paste)` when `text` has line breaks and so must be pasted as one prompt
/// (typed with `send-keys`, every line break would be an Enter: one prompt per line). Line
/// breaks become `\n` (`paste-buffer` turns them into the CR a terminal pastes), and every
/// other control character but Tab is dropped: an ESC in the text could otherwise end the
/// bracketed paste early (`ESC[201~`) and have the rest read as keys.
pub(crate) fn paste_text(text: &str) -> Option<String> {
    if !text.contains(['\n', '\r']) {
        return None;
    }
    let unified = text.replace("\r\n", "\n").replace('\r', "\n");
    Some(
        unified
            .chars()
            .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
            .collect(),
    )
}

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

/// What makes a pane the one a session was started in, beyond its reusable `%N` id: the
/// tmux server's pid and start time (a new server on the same socket differs in both), the
/// pid of the pane's first process (a new pane differs), and — where `/proc` exists — the
/// foreground process group of the pane's terminal (Claude Code's, while it runs; the shell's
/// once Claude has exited or been killed, although the pane itself lives on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaneIdentity {
    /// `#{pane_id}`, e.g. `%3`.
    pub pane_id: String,
    /// `#{pid}`: the tmux server's pid.
    pub server_pid: u32,
    /// `#{start_time}`: when the server started (seconds since the epoch).
    pub server_started: u64,
    /// `#{pane_pid}`: the pane's first process.
    pub pane_pid: u32,
    /// The foreground process group of the pane's terminal (`tpgid` of the pane's first
    /// process in `/proc`); `None` where there is no `/proc` (macOS).
    pub foreground: Option<u32>,
}

/// The tmux format [`Injector::identity`] asks for; [`PaneIdentity::from_tmux`] reads it.
const IDENTITY_FORMAT: &str = "#{pane_id} #{pid} #{start_time} #{pane_pid}";

impl PaneIdentity {
    /// Reads the answer to [`IDENTITY_FORMAT`] for `pane_id`. `None` when the pane is not
    /// there: tmux answers a `display-message -t` for a missing pane with success and empty
    /// fields, so the pane id in the answer is what proves the pane exists.
    pub(crate) fn from_tmux(pane_id: &str, answer: &str) -> Option<(String, u32, u64, u32)> {
        let mut f = answer.split_whitespace();
        let (id, server_pid, started, pane_pid) = (f.next()?, f.next()?, f.next()?, f.next()?);
        if id != pane_id || f.next().is_some() {
            return None;
        }
        Some((
            id.to_owned(),
            server_pid.parse().ok()?,
            started.parse().ok()?,
            pane_pid.parse().ok()?,
        ))
    }

    /// The stored form: `%3 <server pid> <server start> <pane pid> <foreground|->`.
    pub fn encode(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.pane_id,
            self.server_pid,
            self.server_started,
            self.pane_pid,
            self.foreground
                .map_or_else(|| "-".to_owned(), |g| g.to_string())
        )
    }

    /// Reads [`PaneIdentity::encode`]'s form; `None` for anything else.
    pub fn decode(s: &str) -> Option<PaneIdentity> {
        let mut f = s.split(' ');
        let identity = PaneIdentity {
            pane_id: f.next().filter(|p| p.starts_with('%'))?.to_owned(),
            server_pid: f.next()?.parse().ok()?,
            server_started: f.next()?.parse().ok()?,
            pane_pid: f.next()?.parse().ok()?,
            foreground: match f.next()? {
                "-" => None,
                g => Some(g.parse().ok()?),
            },
        };
        f.next().is_none().then_some(identity)
    }

    /// How `now` differs from this recorded identity, for a person; `None` when it is the
    /// same pane with the same program in the foreground.
    pub(crate) fn difference(&self, now: &PaneIdentity) -> Option<String> {
        if self.pane_id != now.pane_id {
            Some(format!("pane {} is now {}", self.pane_id, now.pane_id))
        } else if self.server_pid != now.server_pid || self.server_started != now.server_started {
            Some(format!(
                "the tmux server was restarted (pid {} started at {}, now pid {} started at {}), \
                 so {} is another pane",
                self.server_pid,
                self.server_started,
                now.server_pid,
                now.server_started,
                now.pane_id
            ))
        } else if self.pane_pid != now.pane_pid {
            Some(format!(
                "{} was closed and its id reused by a new pane",
                self.pane_id
            ))
        } else if self.foreground != now.foreground {
            Some(format!(
                "the program Claude Code ran as is no longer in the foreground of {} \
                 (it exited or was killed; a shell may be there now)",
                self.pane_id
            ))
        } else {
            None
        }
    }
}

/// The foreground process group of the terminal of process `pid` (`tpgid`, the 8th field of
/// `/proc/<pid>/stat`); `None` without `/proc` or when the process is gone.
pub(crate) fn foreground_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_tpgid(&stat)
}

fn parse_tpgid(stat: &str) -> Option<u32> {
    // `pid (comm) state ppid pgrp session tty_nr tpgid ...`; comm may hold spaces and
    // parentheses, so count from the last `)`.
    let (_, rest) = stat.rsplit_once(')')?;
    let tpgid: i64 = rest.split_whitespace().nth(5)?.parse().ok()?;
    u32::try_from(tpgid).ok().filter(|g| *g > 0)
}

/// The server pid in a `$TMUX` value (`<socket>,<server pid>,<session index>`).
pub(crate) fn server_pid_from_tmux_env(tmux: &str) -> Option<u32> {
    let mut parts = tmux.rsplitn(3, ',');
    let (_, pid, _) = (parts.next()?, parts.next()?, parts.next()?);
    pid.parse().ok().filter(|p| *p > 0)
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

    /// The tmux program.
    pub(crate) fn program(&self) -> &Path {
        &self.tmux
    }

    /// Reads `pane`'s identity now (one tmux call, plus a `/proc` read): PaneGone when the
    /// pane does not exist, ServerGone when its server does not.
    pub(crate) async fn identity(&self, pane: &Pane) -> Result<PaneIdentity, InjectError> {
        let answer = self
            .run(
                pane,
                &[
                    "display-message",
                    "-p",
                    "-t",
                    &pane.pane_id,
                    IDENTITY_FORMAT,
                ],
            )
            .await?;
        let (pane_id, server_pid, server_started, pane_pid) =
            PaneIdentity::from_tmux(&pane.pane_id, answer.trim())
                .ok_or_else(|| InjectError::PaneGone(pane.pane_id.clone()))?;
        Ok(PaneIdentity {
            pane_id,
            server_pid,
            server_started,
            pane_pid,
            foreground: foreground_group(pane_pid),
        })
    }

    /// Empties the input line of `pane` (Ctrl-U: kill to the start of the line in the tty's
    /// cooked mode, readline, and Claude Code's prompt editor; unlike Escape or Ctrl-C it
    /// never interrupts Claude). Used before typing into a pane whose input line may hold the
    /// text of a command whose typing was interrupted, so the next command is not submitted
    /// behind it.
    pub(crate) async fn clear_input(&self, pane: &Pane) -> Result<(), InjectError> {
        self.run(pane, &["send-keys", "-t", &pane.pane_id, "C-u"])
            .await
            .map(drop)
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
        // The caller has checked the pane's identity (`identity`); a pane gone since fails
        // the first `send-keys -t` / `paste-buffer -t` ("can't find pane" → PaneGone) before
        // anything is typed.
        if let Some(paste) = paste_text(text) {
            self.paste(pane, &paste).await?;
            typed();
            tokio::time::sleep(self.pause).await;
        } else if !text.is_empty() {
            self.run(pane, &["send-keys", "-t", &pane.pane_id, "-l", "--", text])
                .await?;
            typed();
            tokio::time::sleep(self.pause).await;
        }
        self.enter(pane).await
    }

    /// Pastes `text` into `pane` as one paste: whole (stdin has no length limit, unlike an
    /// argument), in order, bracketed if the program turned bracketed paste on. The buffer is
    /// deleted by the paste (`-d`), or here when the paste fails.
    async fn paste(&self, pane: &Pane, text: &str) -> Result<(), InjectError> {
        let buffer = format!(
            "ccr-{}-{}",
            std::process::id(),
            NEXT_BUFFER.fetch_add(1, Ordering::Relaxed)
        );
        self.run_with_input(
            pane,
            &["load-buffer", "-b", &buffer, "-"],
            Some(text.as_bytes()),
        )
        .await?;
        let pasted = self
            .run(
                pane,
                &[
                    "paste-buffer",
                    "-p",
                    "-d",
                    "-b",
                    &buffer,
                    "-t",
                    &pane.pane_id,
                ],
            )
            .await;
        if pasted.is_err() {
            let _ = self.run(pane, &["delete-buffer", "-b", &buffer]).await;
        }
        pasted.map(drop)
    }

    /// Presses `keys` (tmux key names from `daemon::keys`' allow-list) in `pane`, in order,
    /// with one `send-keys`.
    pub(crate) async fn press(&self, pane: &Pane, keys: &[&str]) -> Result<(), InjectError> {
        let mut args = vec!["send-keys", "-t", &pane.pane_id];
        args.extend_from_slice(keys);
        self.run(pane, &args).await.map(drop)
    }

    /// The text `pane` shows now (`capture-pane -p`: the visible screen, no escapes).
    pub(crate) async fn capture(&self, pane: &Pane) -> Result<String, InjectError> {
        self.run(pane, &["capture-pane", "-p", "-t", &pane.pane_id])
            .await
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
        self.run_with_input(pane, args, None).await
    }

    /// Runs tmux with `args`, writing `input` (if any) to its stdin.
    async fn run_with_input(
        &self,
        pane: &Pane,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<String, InjectError> {
        let mut cmd = Command::new(&self.tmux);
        if let Some(socket) = &pane.socket {
            cmd.arg("-S").arg(socket);
        }
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = async {
            let mut child = cmd.spawn()?;
            if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
                stdin.write_all(input).await?;
                // Dropped here: tmux reads to end of file.
            }
            child.wait_with_output().await
        };
        let out = match tokio::time::timeout(self.timeout, output).await {
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

    fn identity() -> PaneIdentity {
        PaneIdentity {
            pane_id: "%3".into(),
            server_pid: 4242,
            server_started: 1_700_000_000,
            pane_pid: 4300,
            foreground: Some(4310),
        }
    }

    #[test]
    fn identity_is_read_from_tmux_and_stored_losslessly() {
        assert_eq!(
            PaneIdentity::from_tmux("%3", "%3 4242 1700000000 4300"),
            Some(("%3".into(), 4242, 1_700_000_000, 4300))
        );
        // tmux answers a missing pane with success and empty fields; or another pane.
        for answer in [
            "",
            "   ",
            "%4 4242 1700000000 4300",
            "%3 x 1 2",
            "%3 1 2",
            "%3 1 2 3 4",
        ] {
            assert_eq!(PaneIdentity::from_tmux("%3", answer), None, "{answer:?}");
        }
        let id = identity();
        assert_eq!(id.encode(), "%3 4242 1700000000 4300 4310");
        assert_eq!(PaneIdentity::decode(&id.encode()), Some(id.clone()));
        let mac = PaneIdentity {
            foreground: None,
            ..id
        };
        assert_eq!(mac.encode(), "%3 4242 1700000000 4300 -");
        assert_eq!(PaneIdentity::decode(&mac.encode()), Some(mac));
        for bad in [
            "",
            "%3",
            "3 1 2 3 -",
            "%3 1 2 3",
            "%3 1 2 3 - x",
            "%3 a 2 3 -",
        ] {
            assert_eq!(PaneIdentity::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn any_difference_is_another_pane() {
        let rec = identity();
        assert_eq!(rec.difference(&identity()), None);
        let new_server = PaneIdentity {
            server_pid: 77,
            ..identity()
        };
        assert!(rec
            .difference(&new_server)
            .unwrap()
            .contains("tmux server was restarted"));
        // Same pid by chance (after a reboot), but a later start.
        let same_pid = PaneIdentity {
            server_started: 1_800_000_000,
            ..identity()
        };
        assert!(rec.difference(&same_pid).is_some());
        let new_pane = PaneIdentity {
            pane_pid: 9,
            ..identity()
        };
        assert!(rec.difference(&new_pane).unwrap().contains("reused"));
        let claude_gone = PaneIdentity {
            foreground: Some(4300),
            ..identity()
        };
        assert!(rec
            .difference(&claude_gone)
            .unwrap()
            .contains("no longer in the foreground"));
        let other = PaneIdentity {
            pane_id: "%4".into(),
            ..identity()
        };
        assert!(rec.difference(&other).is_some());
    }

    #[test]
    fn tpgid_and_server_pid_are_parsed() {
        let stat = "4300 (my (odd) sh) S 4242 4300 4300 34816 4310 4194304 316 0";
        assert_eq!(parse_tpgid(stat), Some(4310));
        assert_eq!(parse_tpgid("4300 (sh) S 1 2 3 0 -1 0"), None);
        assert_eq!(parse_tpgid("garbage"), None);
        assert_eq!(foreground_group(u32::MAX), None);
        assert_eq!(
            server_pid_from_tmux_env("/tmp/tmux-1000/default,1234,0"),
            Some(1234)
        );
        assert_eq!(server_pid_from_tmux_env("/tmp/a,b/sock,99,2"), Some(99));
        assert_eq!(server_pid_from_tmux_env("/tmp/sock,0,0"), None);
        assert_eq!(server_pid_from_tmux_env("nonsense"), None);
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
        let script = r#"while IFS= read -r line; do printf '%s\n' "$line" >> "$1"; done"#;
        let (sock, pane, rec) = pane_running(dir.path(), script, "rec.txt");
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
        // The identity names this pane; a missing pane is PaneGone, not an empty identity.
        let before = inj.identity(&pane).await.unwrap();
        assert_eq!(before.pane_id, pane.pane_id);
        assert_eq!(inj.identity(&pane).await.unwrap(), before);
        let gone = Pane {
            pane_id: "%999".into(),
            socket: Some(sock.clone()),
        };
        assert_eq!(
            inj.identity(&gone).await.unwrap_err(),
            InjectError::PaneGone("%999".into())
        );
        assert_eq!(
            inj.type_into(&gone, "x").await.unwrap_err(),
            InjectError::PaneGone("%999".into())
        );
        tmux_at(&sock, &["kill-server"]);
        let err = inj.type_into(&pane, "x").await.unwrap_err();
        assert!(matches!(err, InjectError::ServerGone(_)), "{err:?}");
        assert!(matches!(
            inj.identity(&pane).await.unwrap_err(),
            InjectError::ServerGone(_)
        ));
        // A new server on the same socket path has a pane with the same id: not the same pane.
        tmux_at(&sock, &["-f", "/dev/null", "new-session", "-d", "sh"]);
        let after = inj.identity(&pane).await.unwrap();
        assert_eq!(after.pane_id, before.pane_id);
        assert!(before.difference(&after).is_some(), "{before:?} {after:?}");
        tmux_at(&sock, &["kill-server"]);
    }

    #[test]
    fn only_text_with_line_breaks_is_pasted_and_it_cannot_end_its_paste() {
        assert_eq!(paste_text("one line"), None);
        assert_eq!(paste_text(""), None);
        assert_eq!(paste_text("a\nb").as_deref(), Some("a\nb"));
        assert_eq!(paste_text("a\r\nb\rc").as_deref(), Some("a\nb\nc"));
        assert_eq!(
            paste_text("x\n\u{1b}[201~rm -rf\t~\u{7}\u{9b}").as_deref(),
            Some("x\n[201~rm -rf\t~")
        );
    }

    /// Runs tmux with `args` on the server at `sock`; its stdout, trimmed.
    fn tmux_at(sock: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .arg("-S")
            .arg(sock)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A tmux server on a private socket in `dir` whose one pane runs `script` (`sh -c`) with
    /// the recording file `file` (in `dir`, created empty) as `$1`. Returns the socket, the
    /// pane and the file.
    fn pane_running(dir: &Path, script: &str, file: &str) -> (PathBuf, Pane, PathBuf) {
        let sock = dir.join("sock");
        let rec = dir.join(file);
        std::fs::write(&rec, "").unwrap();
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
        let pane = Pane {
            pane_id: tmux_at(&sock, &["display-message", "-p", "#{pane_id}"]),
            socket: Some(sock.clone()),
        };
        (sock, pane, rec)
    }

    /// A pane whose program turns bracketed paste on (as Claude Code does) and records every
    /// byte it reads, raw. Returns the tmux socket, the pane and the recording file.
    fn raw_recording_pane(dir: &Path) -> (PathBuf, Pane, PathBuf) {
        let script = r#"stty raw -echo; printf '\033[?2004hREADY'; exec cat >> "$1""#;
        let (sock, pane, rec) = pane_running(dir, script, "raw.bin");
        // tmux reads the pane's output in order: once READY shows, bracketed paste is on.
        for _ in 0..200 {
            if tmux_at(&sock, &["capture-pane", "-p", "-t", &pane.pane_id]).contains("READY") {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        (sock, pane, rec)
    }

    async fn wait_bytes(rec: &Path, ends_with: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        for _ in 0..200 {
            got = std::fs::read(rec).unwrap();
            if got.ends_with(ends_with) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        got
    }

    /// Real tmux: a multi-line text reaches a bracketed-paste program as one paste followed by
    /// one Enter; 4,000 characters over many lines arrive whole and in order; a single line is
    /// still typed (no paste brackets).
    #[tokio::test]
    async fn multi_line_text_is_one_bracketed_paste_then_one_enter() {
        if !tmux_available() {
            eprintln!("tmux not installed; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (sock, pane, rec) = raw_recording_pane(dir.path());
        let inj = Injector::new("tmux", Duration::from_millis(20));
        let mut typed = 0;
        inj.type_with(&pane, "first line\nsecond line\nthird `id` $(x)", || {
            typed += 1
        })
        .await
        .unwrap();
        assert_eq!(typed, 1);
        let expected = b"\x1b[200~first line\rsecond line\rthird `id` $(x)\x1b[201~\r".to_vec();
        assert_eq!(wait_bytes(&rec, b"\x1b[201~\r").await, expected);

        let long: String = (0..200)
            .map(|i| format!("line {i:03}: {}\n", "é".repeat(28)))
            .collect::<String>()
            .chars()
            .take(4000)
            .collect();
        assert_eq!(long.chars().count(), 4000);
        std::fs::write(&rec, "").unwrap();
        inj.type_into(&pane, &long).await.unwrap();
        let got = wait_bytes(&rec, b"\x1b[201~\r").await;
        let want = format!("\x1b[200~{}\x1b[201~\r", long.replace('\n', "\r"));
        assert_eq!(String::from_utf8_lossy(&got), want);

        std::fs::write(&rec, "").unwrap();
        inj.type_into(&pane, "just one line").await.unwrap();
        assert_eq!(wait_bytes(&rec, b"\r").await, b"just one line\r");
        // The paste buffers were deleted by their pastes.
        assert_eq!(tmux_at(&sock, &["list-buffers"]), "");
        tmux_at(&sock, &["kill-server"]);
    }
}
