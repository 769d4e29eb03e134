//! What each hook event does. A hook records the session's pane locally (for the daemon,
//! which runs outside tmux) and talks to the Worker directly; the entry in `hooks` bounds it
//! with its deadline and turns every error into a log line and exit 0.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use tracing::{info, warn};

use super::api::WorkerApi;
use super::event::HookEvent;
use crate::daemon::inject::{
    server_pid_from_tmux_env, socket_from_tmux_env, Injector, PaneIdentity,
};
use crate::daemon::sessions::{SessionRecord, Sessions};
use crate::db::{now_ms, Db};
use crate::settings::{hook_worker, RawSettings};

/// Each HTTP call to the Worker gives up after this long.
const HTTP_TIMEOUT: Duration = Duration::from_secs(4);
/// A notification carries at most this many characters of the assistant's text.
const MAX_TEXT_CHARS: usize = 3500;

/// The fields of Claude Code's hook input this agent uses (others are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct HookInput {
    /// The session.
    pub(super) session_id: String,
    /// The transcript JSONL.
    #[serde(default)]
    pub(super) transcript_path: Option<String>,
    /// The session's working directory.
    #[serde(default)]
    pub(super) cwd: Option<String>,
    /// The Notification hook's message.
    #[serde(default)]
    pub(super) message: Option<String>,
    /// The Notification hook's type (`permission_prompt`, `idle_prompt`, …).
    #[serde(default)]
    pub(super) notification_type: Option<String>,
    /// Stop / StopFailure: the final assistant text (StopFailure: the error text).
    #[serde(default)]
    pub(super) last_assistant_message: Option<String>,
    /// StopFailure: the error kind.
    #[serde(default)]
    pub(super) error: Option<String>,
}

/// The tmux variables of the hook's environment.
#[derive(Debug, Clone, Default)]
pub(super) struct HookEnv {
    /// `$TMUX`: `<socket>,<pid>,<session>`.
    pub(super) tmux: Option<String>,
    /// `$TMUX_PANE`, e.g. `%3`.
    pub(super) tmux_pane: Option<String>,
}

impl HookEnv {
    /// From this process's environment.
    pub(super) fn from_process() -> Self {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
        Self {
            tmux: var("TMUX"),
            tmux_pane: var("TMUX_PANE"),
        }
    }

    /// The pane Claude Code runs in (`$TMUX_PANE`), if it runs in tmux.
    fn pane(&self) -> Option<&str> {
        self.tmux_pane.as_deref().filter(|p| p.starts_with('%'))
    }
}

/// Runs one hook event.
pub(super) async fn run_hook(
    event: HookEvent,
    args: &RawSettings,
    data_dir: &Path,
    input: &str,
    env: &HookEnv,
) -> anyhow::Result<()> {
    let input: HookInput =
        serde_json::from_str(input).context("the hook input is not Claude Code's hook JSON")?;
    ccr_protocol::validate::session_id(&input.session_id)
        .map_err(|e| anyhow::anyhow!("the hook input's session_id is invalid: {e}"))?;
    let db = Db::open_for_hook(data_dir)?;
    let sessions = Sessions::new(db.clone());
    let known = sessions.get(&input.session_id)?;
    let mut record = refresh_record(known.as_ref(), &input, env);
    if event != HookEvent::SessionEnd && env.pane().is_some() {
        record.identity = identify(&record, env).await;
    }
    // Not registered with the Worker yet here, or reported gone to it: register (again),
    // which clears the Worker's "gone".
    let must_register = known.as_ref().is_none_or(|k| k.gone.is_some());
    let api = || -> anyhow::Result<WorkerApi> {
        let worker = hook_worker(args, data_dir).map_err(|e| {
            anyhow::anyhow!("{e} (or run the daemon once, which saves them for the hooks)")
        })?;
        WorkerApi::new(worker, HTTP_TIMEOUT)
    };
    match event {
        HookEvent::SessionStart => {
            sessions.upsert(&record)?;
            api()?
                .register(&input.session_id, record.label.as_deref())
                .await?;
            info!(session_id = %input.session_id, pane = ?record.pane_id, "session registered");
        }
        HookEvent::Stop => {
            let api = api()?;
            if must_register {
                // The start hook never ran here (e.g. hooks installed mid-session), or the
                // pane was found gone and the session is back in a pane now. Registered
                // before the record clears "gone" here, so a failed call is retried next time.
                api.register(&input.session_id, record.label.as_deref())
                    .await?;
            }
            sessions.upsert(&record)?;
            let transcript = input
                .transcript_path
                .clone()
                .or_else(|| record.transcript_path.clone());
            // Claude Code hands the final text over; the transcript may not hold it yet.
            let given = input
                .last_assistant_message
                .clone()
                .filter(|m| !m.trim().is_empty());
            let text = match (given, transcript) {
                (Some(t), _) => Some(t),
                (None, Some(path)) => {
                    let path = PathBuf::from(path);
                    tokio::task::spawn_blocking(move || {
                        super::transcript::last_assistant_text(&path)
                    })
                    .await
                    .context("reading the transcript")?
                    .unwrap_or_else(|e| {
                        warn!("reading the transcript: {e}");
                        None
                    })
                }
                (None, None) => None,
            };
            let message = stop_text(&record, text.as_deref());
            let sent = api.notify(&input.session_id, &message).await?;
            log_sent(&input.session_id, &sent, "stop notification");
        }
        HookEvent::Notification => {
            let api = api()?;
            if must_register {
                api.register(&input.session_id, record.label.as_deref())
                    .await?;
            }
            sessions.upsert(&record)?;
            let Some(message) = input.message.as_deref().filter(|m| !m.trim().is_empty()) else {
                bail!("the Notification hook input has no message");
            };
            if input.notification_type.as_deref() == Some("permission_prompt")
                && crate::daemon::decisions::has_open(&db, &input.session_id)?
            {
                // Its card is in the chat already, with the buttons that work.
                info!(session_id = %input.session_id, "permission prompt: its card is out; not sent twice");
                return Ok(());
            }
            let text = format!("🔔 {}: {}", heading(&record), message.trim());
            let sent = api.notify(&input.session_id, &text).await?;
            log_sent(&input.session_id, &sent, "notification");
        }
        HookEvent::StopFailure => {
            let api = api()?;
            if must_register {
                api.register(&input.session_id, record.label.as_deref())
                    .await?;
            }
            sessions.upsert(&record)?;
            let why = input
                .last_assistant_message
                .as_deref()
                .or(input.error.as_deref())
                .filter(|m| !m.trim().is_empty())
                .unwrap_or("the turn ended on an API error");
            let text = format!("⚠️ {}\n\nClaude stopped: {}", heading(&record), why.trim());
            let sent = api.notify(&input.session_id, &text).await?;
            log_sent(&input.session_id, &sent, "stop failure");
        }
        HookEvent::PermissionRequest => {
            // The bookkeeping before a card (`hooks::permission` does the rest): the Worker
            // must know the session to put its card in the chat.
            if must_register {
                api()?
                    .register(&input.session_id, record.label.as_deref())
                    .await?;
            }
            sessions.upsert(&record)?;
        }
        // Handled by `hooks::permission::moved_on` (cheap: no tmux, no Worker unless a card
        // is open).
        HookEvent::PostToolUse | HookEvent::PermissionDenied | HookEvent::UserPromptSubmit => {}
        HookEvent::SessionEnd => {
            sessions.remove(&input.session_id)?;
            api()?.unregister(&input.session_id).await?;
            info!(session_id = %input.session_id, "session unregistered");
        }
    }
    Ok(())
}

/// The session's record updated with what this hook call knows (the environment is Claude's,
/// so `$TMUX_PANE` is the session's pane).
fn refresh_record(
    known: Option<&SessionRecord>,
    input: &HookInput,
    env: &HookEnv,
) -> SessionRecord {
    let mut rec = known.cloned().unwrap_or(SessionRecord {
        session_id: input.session_id.clone(),
        pane_id: None,
        tmux_socket: None,
        cwd: None,
        label: None,
        transcript_path: None,
        updated_at: 0,
        identity: None,
        gone: None,
        input_dirty: false,
    });
    if let Some(pane) = env.pane() {
        rec.pane_id = Some(pane.to_owned());
        rec.tmux_socket = env.tmux.as_deref().and_then(socket_from_tmux_env);
        // Read again by the caller (`identify`) from the pane as it is now.
        rec.identity = None;
    }
    if let Some(cwd) = input.cwd.as_deref().filter(|c| !c.is_empty()) {
        rec.cwd = Some(cwd.to_owned());
        rec.label = Some(label_of(cwd));
    }
    if let Some(t) = &input.transcript_path {
        rec.transcript_path = Some(t.clone());
    }
    rec.updated_at = now_ms();
    rec
}

/// The identity of the session's pane as tmux reports it now (the hook runs inside it).
/// `None` — and so nothing will be typed into the pane — when tmux cannot be asked, or
/// when the server answering on the socket is not the one `$TMUX` names.
async fn identify(rec: &SessionRecord, env: &HookEnv) -> Option<PaneIdentity> {
    let pane = rec.pane()?;
    let asked = tokio::time::timeout(
        Duration::from_secs(2),
        Injector::new("tmux", Duration::ZERO).identity(&pane),
    )
    .await;
    let identity = match asked {
        Ok(Ok(identity)) => identity,
        Ok(Err(e)) => {
            warn!("cannot read the identity of pane {}: {e}; replies to this session will be refused until a hook can", pane.pane_id);
            return None;
        }
        Err(_) => {
            warn!("tmux did not tell the identity of pane {} in time; replies to this session will be refused until a hook can", pane.pane_id);
            return None;
        }
    };
    match env.tmux.as_deref().and_then(server_pid_from_tmux_env) {
        Some(pid) if pid != identity.server_pid => {
            warn!(
                "$TMUX names tmux server pid {pid} but pid {} answers on its socket; not recording pane {}",
                identity.server_pid, pane.pane_id
            );
            None
        }
        _ => Some(identity),
    }
}

/// The label of a working directory: its last component, valid as a label.
fn label_of(cwd: &str) -> String {
    let name = Path::new(cwd)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| cwd.to_owned());
    let clean: String = name.chars().filter(|c| !c.is_control()).take(100).collect();
    if clean.is_empty() {
        "/".into()
    } else {
        clean
    }
}

fn heading(rec: &SessionRecord) -> String {
    match (&rec.label, &rec.cwd) {
        (Some(label), Some(cwd)) => format!("{label} ({cwd})"),
        (Some(label), None) => label.clone(),
        _ => format!("session {}", rec.session_id),
    }
}

/// The Stop notification: the label and directory, then the last assistant text.
fn stop_text(rec: &SessionRecord, text: Option<&str>) -> String {
    let body = match text {
        Some(t) if t.chars().count() > MAX_TEXT_CHARS => {
            let cut: String = t.chars().take(MAX_TEXT_CHARS).collect();
            format!("{cut}…")
        }
        Some(t) => t.to_owned(),
        None => "(Claude finished without a text reply)".to_owned(),
    };
    format!("✅ {}\n\n{}", heading(rec), body)
}

/// One log line for a notification's answer.
fn log_sent(session_id: &str, answer: &ccr_protocol::api::NotificationAnswer, what: &str) {
    match answer {
        ccr_protocol::api::NotificationAnswer::Sent(sent) => {
            info!(session_id = %session_id, message_id = sent.message_id, "{what} sent");
        }
        ccr_protocol::api::NotificationAnswer::Queued(queued) => {
            info!(session_id = %session_id, id = %queued.id, "{what} queued by the Worker: Telegram cannot take it yet");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_pane_and_server_from_the_environment() {
        let input = HookInput {
            session_id: "s1".into(),
            cwd: Some("/home/me/projects/api".into()),
            transcript_path: Some("/t.jsonl".into()),
            ..Default::default()
        };
        let env = HookEnv {
            tmux: Some("/tmp/tmux-1000/work,99,0".into()),
            tmux_pane: Some("%4".into()),
        };
        let rec = refresh_record(None, &input, &env);
        assert_eq!(rec.pane_id.as_deref(), Some("%4"));
        assert_eq!(
            rec.tmux_socket.as_deref(),
            Some(Path::new("/tmp/tmux-1000/work"))
        );
        assert_eq!(rec.label.as_deref(), Some("api"));
        // A later hook outside tmux keeps what was recorded.
        let again = refresh_record(Some(&rec), &input, &HookEnv::default());
        assert_eq!(again.pane_id.as_deref(), Some("%4"));
    }

    #[test]
    fn stop_text_has_label_directory_and_is_bounded() {
        let rec = SessionRecord {
            session_id: "s".into(),
            pane_id: None,
            tmux_socket: None,
            cwd: Some("/w/api".into()),
            label: Some("api".into()),
            transcript_path: None,
            updated_at: 0,
            identity: None,
            gone: None,
            input_dirty: false,
        };
        assert_eq!(stop_text(&rec, Some("done")), "✅ api (/w/api)\n\ndone");
        let long = "é".repeat(MAX_TEXT_CHARS + 5);
        assert_eq!(
            stop_text(&rec, Some(&long)).chars().count(),
            "✅ api (/w/api)\n\n".chars().count() + MAX_TEXT_CHARS + 1
        );
        assert!(stop_text(&rec, None).contains("without a text reply"));
        assert_eq!(label_of("/"), "/");
        assert_eq!(label_of("/a/b\u{1b}c"), "bc");
    }
}
