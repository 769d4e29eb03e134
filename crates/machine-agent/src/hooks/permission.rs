//! `ccr-agent hook permission-request`: Claude Code is about to show a permission dialog.
//!
//! The hook records the session (as the other hooks do), asks the Worker for a card in the
//! chat (`POST /approvals`, retried while the Worker is unreachable, up to [`OPEN_GIVE_UP`]),
//! then waits for the decision: the Worker pushes it over the daemon's socket, the daemon
//! stores it in the shared database before acking, and this hook takes it from there once and
//! prints exactly `{"hookSpecificOutput":{"hookEventName":"PermissionRequest","decision":…}}`.
//! Giving up prints nothing (exit 0): the terminal's dialog decides. Claude Code kills the hook
//! at the `timeout` `install-hooks` wrote; the hook itself stops at [`MAX_WAIT`].

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ccr_protocol::api::OpenApproval;
use serde::Deserialize;
use serde_json::Value;
use tracing::{info, warn};

use super::api::WorkerApi;
use super::event::HookEvent;
use super::events::{self, HookEnv};
use crate::daemon::{decisions, handover};
use crate::db::{now_ms, Db};
use crate::settings::{hook_worker, RawSettings};

/// Opening the card is retried this long while the Worker cannot be reached.
const OPEN_GIVE_UP: Duration = Duration::from_secs(120);
/// Each HTTP call gives up after this long.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the database is read for the decision (the daemon also wakes the hook the
/// moment it stores one: `decisions::Wake`).
const POLL: Duration = Duration::from_millis(200);
/// The longest wait, whatever Claude Code's timeout (a week).
const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The PermissionRequest input fields this hook uses.
#[derive(Debug, Clone, Deserialize)]
struct PermissionInput {
    session_id: String,
    tool_name: String,
    #[serde(default)]
    tool_input: Value,
    #[serde(default)]
    permission_suggestions: Vec<Value>,
}

/// The order Claude Code's documentation writes a decision's fields in.
const DECISION_ORDER: [&str; 5] = [
    "behavior",
    "updatedInput",
    "updatedPermissions",
    "message",
    "interrupt",
];

/// The exact stdout of a decision, fields in the documented order:
/// `{"hookSpecificOutput":{"hookEventName":"PermissionRequest","decision":{"behavior":…}}}`.
pub(super) fn output(decision: &Value) -> String {
    let mut fields: Vec<String> = Vec::new();
    if let Some(obj) = decision.as_object() {
        let known = DECISION_ORDER.iter().filter_map(|k| obj.get_key_value(*k));
        let others = obj
            .iter()
            .filter(|(k, _)| !DECISION_ORDER.contains(&k.as_str()));
        for (k, v) in known.chain(others) {
            fields.push(format!("{}:{v}", Value::String(k.clone())));
        }
    }
    format!(
        r#"{{"hookSpecificOutput":{{"hookEventName":"PermissionRequest","decision":{{{}}}}}}}"#,
        fields.join(",")
    )
}

/// A new request id: 32 hex digits.
fn new_request_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// Runs the hook; `Ok(Some(stdout))` when the chat decided.
pub(super) async fn run(
    raw: &RawSettings,
    data_dir: &Path,
    input: &str,
    env: &HookEnv,
) -> anyhow::Result<Option<String>> {
    // First of all: Claude Code may stop this hook at any moment from now on (the terminal's
    // dialog was answered, or its timeout), and a SIGTERM before the handler exists would kill
    // the hook without closing its card. A signal that comes early is kept for the wait below.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let parsed: PermissionInput =
        serde_json::from_str(input).context("the hook input is not a PermissionRequest")?;
    // Record the pane and register the session (bounded like any hook).
    match tokio::time::timeout(
        Duration::from_secs(10),
        events::run_hook(HookEvent::PermissionRequest, raw, data_dir, input, env),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("recording the session: {e:#}"),
        Err(_) => warn!("recording the session took too long"),
    }
    // Built only when needed: loading the system's root certificates and opening a new
    // connection is most of a hook's start when the daemon carries the request.
    let http_api = || -> anyhow::Result<WorkerApi> {
        let worker = hook_worker(raw, data_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
        WorkerApi::new(worker, HTTP_TIMEOUT)
    };
    let body = OpenApproval {
        request_id: new_request_id(),
        session_id: parsed.session_id.clone(),
        tool_name: parsed.tool_name.clone(),
        tool_input: parsed.tool_input.clone(),
        permission_suggestions: parsed.permission_suggestions.clone(),
    };
    // Recorded before the card exists: the session may move on at any moment.
    let db = Db::open_for_hook(data_dir)?;
    let id = body.request_id.as_str();
    if let Err(e) = decisions::remember_open(
        &db,
        id,
        &body.session_id,
        &body.tool_name,
        &body.tool_input,
        now_ms(),
    ) {
        warn!("recording the open request: {e}");
    }
    // The daemon's socket first (no new process-wide TLS set-up, no new connection); HTTP
    // when it does not confirm the request is stored (opening it twice is a no-op).
    let via_daemon = handover::open_approval(data_dir, &body).await;
    if let Err(why) = &via_daemon {
        info!("the daemon did not open the card ({why}); opening it over HTTP");
    }
    let started = Instant::now();
    let mut pause = Duration::from_millis(500);
    let api = match via_daemon {
        Ok(()) => None,
        Err(_) => match http_api() {
            Ok(api) => Some(api),
            Err(e) => {
                warn!("{e:#}; the terminal decides");
                let _ = decisions::forget(&db, id);
                return Ok(None);
            }
        },
    };
    while let Some(api) = &api {
        match api.open_approval(&body).await {
            Ok(_) => break,
            Err(e) if started.elapsed() < OPEN_GIVE_UP => {
                warn!("opening the card: {e:#}; trying again in {pause:?}");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = term.recv() => {
                        // Stopped before any card could be opened: nothing to close.
                        info!("stopped while the Worker was unreachable; the terminal decides");
                        let _ = decisions::forget(&db, id);
                        return Ok(None);
                    }
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                warn!("opening the card: {e:#}; giving up, the terminal decides");
                let _ = decisions::forget(&db, id);
                return Ok(None);
            }
        }
    }
    let how = if api.is_some() {
        "over HTTP"
    } else {
        "through the daemon"
    };
    info!(request_id = %body.request_id, tool = %body.tool_name, "card opened {how}; waiting for the chat");
    let wake = decisions::Wake::listen(data_dir, id)
        .map_err(|e| warn!("no wake-up socket ({e}); reading the database every {POLL:?}"))
        .ok();
    let rung = || async {
        match &wake {
            Some(w) => w.rung().await,
            None => std::future::pending().await,
        }
    };
    let deadline = Instant::now() + MAX_WAIT;
    let mut why = "expired";
    while Instant::now() < deadline {
        match decisions::take(&db, id, now_ms()) {
            Ok(Some(decision)) => {
                info!(request_id = %id, "the chat decided");
                let _ = decisions::forget(&db, id);
                return Ok(Some(output(&decision)));
            }
            Ok(None) => {}
            Err(e) => warn!("reading decisions: {e}"),
        }
        if decisions::is_closed(&db, id).unwrap_or(false) {
            // The session's next hook saw it answered at the terminal and told the Worker;
            // told again here, in case that came before the card existed.
            why = "answered at the terminal";
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = rung() => {}
            _ = term.recv() => {
                // Claude Code stops a hook it no longer waits for (its timeout).
                why = "expired (the hook was stopped)";
                break;
            }
        }
    }
    info!(request_id = %id, "{why}; the terminal decides");
    let _ = decisions::forget(&db, id);
    let closed = match api {
        Some(api) => api.close_approvals(vec![id.to_owned()], why).await,
        None => match http_api() {
            Ok(api) => api.close_approvals(vec![id.to_owned()], why).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = closed {
        warn!("closing the card: {e:#}");
    }
    Ok(None)
}

/// The fields of a later hook of the session that tell whether it moved on.
#[derive(Debug, Deserialize)]
struct MovedOnInput {
    session_id: String,
    #[serde(default)]
    tool_name: Option<String>,
    #[serde(default)]
    tool_input: Option<Value>,
}

/// PostToolUse / PermissionDenied (this tool call) or UserPromptSubmit / Stop (everything):
/// the session moved on, so its cards still open were answered at the terminal. Cheap: one
/// local query, and a Worker call only when a card is open.
pub(super) async fn moved_on(
    raw: &RawSettings,
    data_dir: &Path,
    input: &str,
    event: HookEvent,
) -> anyhow::Result<()> {
    let parsed: MovedOnInput =
        serde_json::from_str(input).context("the hook input is not Claude Code's hook JSON")?;
    let db = Db::open_for_hook(data_dir)?;
    let tool = match (event, &parsed.tool_name, &parsed.tool_input) {
        (HookEvent::PostToolUse | HookEvent::PermissionDenied, Some(n), Some(i)) => {
            Some((n.as_str(), i))
        }
        _ => None,
    };
    let ids = decisions::moved_on(&db, &parsed.session_id, tool, now_ms())?;
    if ids.is_empty() {
        return Ok(());
    }
    info!(session_id = %parsed.session_id, count = ids.len(), "open card(s) answered at the terminal");
    let worker = hook_worker(raw, data_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    WorkerApi::new(worker, Duration::from_secs(4))?
        .close_approvals(ids, "answered at the terminal")
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_output_is_the_documented_shape() {
        assert_eq!(
            output(&json!({"behavior": "allow"})),
            r#"{"hookSpecificOutput":{"hookEventName":"PermissionRequest","decision":{"behavior":"allow"}}}"#
        );
        assert_eq!(
            output(&json!({"interrupt": false, "message": "no", "behavior": "deny"})),
            r#"{"hookSpecificOutput":{"hookEventName":"PermissionRequest","decision":{"behavior":"deny","message":"no","interrupt":false}}}"#
        );
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
