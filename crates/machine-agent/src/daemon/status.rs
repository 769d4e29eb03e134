//! The daemon's connection state, and `ccr-agent status`, which shows it.
//!
//! The socket task is the one writer of the state ([`record`], [`record_pong`]); `status` and
//! `doctor` read it back typed ([`ConnectionStatus::read`]) and judge whether the daemon is
//! alive with the one rule [`ConnectionStatus::is_live`], so they cannot disagree. The values
//! live in the database's `status` table, since the daemon, the hooks and `status` are
//! separate processes.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use tracing::{debug, warn};

use super::inbox::Inbox;
use super::sessions::Sessions;
use crate::db::{now_ms, Db};

/// A daemon that records itself connected but has not heard from the Worker for longer than
/// this is taken for dead (killed without a chance to record it): a live one pings every
/// `PING_INTERVAL_SECS` and drops a connection that stays silent for the pong timeout, so its
/// record is never older than that.
pub(crate) const LIVE_DAEMON_SILENCE: Duration =
    Duration::from_secs(ccr_protocol::PONG_TIMEOUT_SECS);

/// The `status` keys: the state, its detail, and the last pong.
const KEY_STATE: &str = "connection";
const KEY_DETAIL: &str = "connection_detail";
const KEY_PONG: &str = "last_pong";

/// Where the daemon's socket to the Worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Connection {
    /// Connected and serving.
    Connected,
    /// Lost or not yet reached; reconnecting with backoff.
    Disconnected,
    /// The Worker rejected the API key (401); retrying slowly.
    Unauthorized,
    /// Another agent took over this machine id (close 4000); retrying slowly.
    Replaced,
    /// The daemon shut down.
    Stopped,
}

impl Connection {
    const ALL: [Connection; 5] = [
        Connection::Connected,
        Connection::Disconnected,
        Connection::Unauthorized,
        Connection::Replaced,
        Connection::Stopped,
    ];

    /// The word stored and shown.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Connection::Connected => "connected",
            Connection::Disconnected => "disconnected",
            Connection::Unauthorized => "unauthorized",
            Connection::Replaced => "replaced",
            Connection::Stopped => "stopped",
        }
    }

    fn parse(s: &str) -> Option<Connection> {
        Connection::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Records a new connection state with its detail (why, or empty). A failure to record is
/// logged: the socket keeps running.
pub(crate) fn record(sessions: &Sessions, state: Connection, detail: &str) {
    let now = now_ms();
    let r = sessions
        .set_status(KEY_STATE, state.as_str(), now)
        .and_then(|_| sessions.set_status(KEY_DETAIL, detail, now));
    if let Err(e) = r {
        warn!("recording status: {e}");
    }
}

/// Records that the Worker answered a ping just now.
pub(crate) fn record_pong(sessions: &Sessions) {
    if let Err(e) = sessions.set_status(KEY_PONG, "", now_ms()) {
        debug!("recording pong: {e}");
    }
}

/// The connection state as the daemon last recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectionStatus {
    /// The state.
    pub(crate) state: Connection,
    /// When it was entered (ms).
    pub(crate) since: i64,
    /// Why, or empty.
    pub(crate) detail: String,
    /// The last pong (ms), from this connection or an earlier one.
    pub(crate) last_pong: Option<i64>,
}

impl ConnectionStatus {
    /// The recorded state; `None` if the daemon never recorded one (or recorded a state this
    /// version does not know).
    pub(crate) fn read(sessions: &Sessions) -> rusqlite::Result<Option<ConnectionStatus>> {
        let Some((state, since)) = sessions.status(KEY_STATE)? else {
            return Ok(None);
        };
        let Some(state) = Connection::parse(&state) else {
            return Ok(None);
        };
        let detail = sessions
            .status(KEY_DETAIL)?
            .map(|(d, _)| d)
            .unwrap_or_default();
        let last_pong = sessions.status(KEY_PONG)?.map(|(_, at)| at);
        Ok(Some(ConnectionStatus {
            state,
            since,
            detail,
            last_pong,
        }))
    }

    /// When the daemon last heard from the Worker: the last pong of this connection, else
    /// when it connected.
    pub(crate) fn last_heard(&self) -> i64 {
        self.last_pong.unwrap_or(self.since).max(self.since)
    }

    /// How long the daemon has not heard from the Worker, at `now` (ms).
    pub(crate) fn silence(&self, now: i64) -> Duration {
        Duration::from_millis(u64::try_from(now - self.last_heard()).unwrap_or(0))
    }

    /// Whether a daemon is connected right now: it recorded `connected` and has heard from
    /// the Worker within [`LIVE_DAEMON_SILENCE`] (counted in whole seconds).
    pub(crate) fn is_live(&self, now: i64) -> bool {
        self.state == Connection::Connected
            && self.silence(now).as_secs() <= LIVE_DAEMON_SILENCE.as_secs()
    }
}

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
    match ConnectionStatus::read(&sessions)? {
        Some(status) => {
            let detail = Some(&status.detail)
                .filter(|d| !d.is_empty())
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "connection:   {} since {} ago{detail}",
                status.state.as_str(),
                ago(now - status.since)
            );
            if status.state == Connection::Connected {
                // A daemon killed without a chance to record it leaves "connected" behind; an
                // old pong gives it away.
                let _ = writeln!(
                    out,
                    "last pong:    {} ago{}",
                    ago(now - status.last_heard()),
                    if status.is_live(now) {
                        ""
                    } else {
                        " (stale: is the daemon still running?)"
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
        let mut pane = match (&s.pane_id, &s.tmux_socket) {
            (Some(p), Some(sock)) => format!("pane {p} on {}", sock.display()),
            (Some(p), None) => format!("pane {p}"),
            _ => "not in tmux".into(),
        };
        if let Some((_, why)) = &s.gone {
            pane.push_str(&format!(" (gone: {why})"));
        } else if s.pane_id.is_some() && s.identity.is_none() {
            pane.push_str(" (unverified: replies refused until its next notification)");
        }
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
                    keys: None,
                    project: None,
                    file: None,
                },
                None,
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
                identity: crate::daemon::inject::PaneIdentity::decode("%2 1 2 3 -"),
                gone: None,
                input_dirty: false,
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

    #[test]
    fn one_writer_typed_readers_and_one_liveness_rule() {
        let s = Sessions::new(Db::open_in_memory().unwrap());
        assert_eq!(ConnectionStatus::read(&s).unwrap(), None);
        record(
            &s,
            Connection::Unauthorized,
            "the Worker rejected the API key",
        );
        let st = ConnectionStatus::read(&s).unwrap().unwrap();
        assert_eq!(st.state, Connection::Unauthorized);
        assert_eq!(st.detail, "the Worker rejected the API key");
        assert!(!st.is_live(now_ms()));
        record(&s, Connection::Connected, "");
        let st = ConnectionStatus::read(&s).unwrap().unwrap();
        assert!(st.is_live(st.since));
        // Silent for exactly the limit: live; a second longer: taken for dead.
        let limit = LIVE_DAEMON_SILENCE.as_millis() as i64;
        assert!(st.is_live(st.since + limit + 999));
        assert!(!st.is_live(st.since + limit + 1000));
        // A pong from an earlier connection does not make a fresh one look silent.
        let earlier = ConnectionStatus {
            last_pong: Some(st.since - 10 * limit),
            ..st.clone()
        };
        assert_eq!(earlier.last_heard(), st.since);
        record_pong(&s);
        assert!(ConnectionStatus::read(&s)
            .unwrap()
            .unwrap()
            .last_pong
            .is_some());
        for c in Connection::ALL {
            assert_eq!(Connection::parse(c.as_str()), Some(c));
        }
    }
}
