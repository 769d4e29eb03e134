//! `ccr-agent status`: what the daemon last recorded (connection and since when, last
//! command), inbox counts and the sessions the hooks recorded, read from the database.

use std::fmt::Write;
use std::path::Path;

use super::inbox::Inbox;
use super::sessions::Sessions;
use crate::db::{now_ms, Db};

/// The status report for the data directory `data_dir`.
pub fn report(data_dir: &Path) -> anyhow::Result<String> {
    if !Db::path(data_dir).exists() {
        return Ok(format!(
            "no agent state in {} yet: the daemon has not run with this data directory\n",
            data_dir.display()
        ));
    }
    let db = Db::open(data_dir)?;
    let inbox = Inbox::new(db.clone());
    let sessions = Sessions::new(db);
    let now = now_ms();
    let mut out = String::new();
    let _ = writeln!(out, "data dir:     {}", data_dir.display());
    match sessions.status("connection")? {
        Some((state, since)) => {
            let detail = sessions
                .status("connection_detail")?
                .map(|(d, _)| d)
                .filter(|d| !d.is_empty())
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "connection:   {state} since {} ago{detail}",
                ago(now - since)
            );
            if state == "connected" {
                // A daemon killed without a chance to record it leaves "connected" behind; an
                // old pong gives it away.
                let heard = sessions
                    .status("last_pong")?
                    .map(|(_, at)| at)
                    .unwrap_or(since);
                let silent = now - heard;
                let stale = silent > 2 * (ccr_protocol::PONG_TIMEOUT_SECS as i64) * 1000;
                let _ = writeln!(
                    out,
                    "last pong:    {} ago{}",
                    ago(silent),
                    if stale {
                        " (stale: is the daemon still running?)"
                    } else {
                        ""
                    }
                );
            }
        }
        None => {
            let _ = writeln!(out, "connection:   never connected");
        }
    }
    match inbox.last()? {
        Some(last) => {
            let result = match &last.outcome {
                Some(o) if o.success => "typed".to_owned(),
                Some(o) => format!("failed: {}", o.error.as_deref().unwrap_or("")),
                None => format!("{:?}", last.state).to_lowercase(),
            };
            let _ = writeln!(
                out,
                "last command: {} for session {}, {} ago, {result}",
                last.command_id,
                last.session_id,
                ago(now - last.received_at)
            );
        }
        None => {
            let _ = writeln!(out, "last command: none");
        }
    }
    let c = inbox.counts()?;
    let _ = writeln!(
        out,
        "inbox:        {} stored, {} acked, {} executing, {} done",
        c.stored, c.acked, c.executing, c.done
    );
    let all = sessions.all()?;
    let _ = writeln!(out, "sessions:     {}", all.len());
    for s in all {
        let pane = match (&s.pane_id, &s.tmux_socket) {
            (Some(p), Some(sock)) => format!("pane {p} on {}", sock.display()),
            (Some(p), None) => format!("pane {p}"),
            _ => "not in tmux".into(),
        };
        let _ = writeln!(
            out,
            "  {}  {}  {}  {}",
            s.session_id,
            s.label.as_deref().unwrap_or("-"),
            pane,
            s.cwd.as_deref().unwrap_or("")
        );
    }
    Ok(out)
}

fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::inbox::{Command, Outcome};
    use crate::daemon::sessions::SessionRecord;

    #[test]
    fn report_shows_connection_last_command_counts_and_sessions() {
        let dir = tempfile::tempdir().unwrap();
        assert!(report(dir.path()).unwrap().contains("has not run"));
        let db = Db::open(dir.path()).unwrap();
        let inbox = Inbox::new(db.clone());
        let sessions = Sessions::new(db);
        let now = now_ms();
        sessions
            .set_status("connection", "connected", now - 90_000)
            .unwrap();
        inbox
            .store(
                &Command {
                    command_id: "c9".into(),
                    session_id: "s1".into(),
                    command: "x".into(),
                    chat_id: "1".into(),
                },
                now,
            )
            .unwrap();
        assert!(inbox.begin("c9", now).unwrap());
        inbox.finish("c9", &Outcome::ok(), now).unwrap();
        sessions
            .upsert(&SessionRecord {
                session_id: "s1".into(),
                pane_id: Some("%2".into()),
                tmux_socket: Some("/tmp/sock".into()),
                cwd: Some("/w/api".into()),
                label: Some("api".into()),
                transcript_path: None,
                updated_at: now,
            })
            .unwrap();
        let text = report(dir.path()).unwrap();
        assert!(text.contains("connected since 1m30s ago"), "{text}");
        assert!(text.contains("last command: c9 for session s1"), "{text}");
        assert!(text.contains("typed"), "{text}");
        assert!(
            text.contains("0 stored, 0 acked, 0 executing, 1 done"),
            "{text}"
        );
        assert!(
            text.contains("s1  api  pane %2 on /tmp/sock  /w/api"),
            "{text}"
        );
        assert!(text.contains("last pong:    1m30s ago\n"), "{text}");
        sessions
            .set_status("connection", "connected", now - 600_000)
            .unwrap();
        let text = report(dir.path()).unwrap();
        assert!(text.contains("stale"), "{text}");
        assert_eq!(ago(3_700_000), "1h1m");
    }
}
