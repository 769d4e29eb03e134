//! What the hooks learned about each Claude Code session (its tmux pane and server, cwd,
//! label) and what the daemon reports about itself, both in the agent's database so the daemon,
//! the hooks and `ccr-agent status` — separate processes — share them.

use std::path::PathBuf;

use rusqlite::{params, OptionalExtension};

use super::inject::{Pane, PaneIdentity};
use crate::db::Db;

/// One session as recorded by its `session-start` hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Claude Code's session id.
    pub session_id: String,
    /// `$TMUX_PANE`, e.g. `%3`, if Claude runs in tmux.
    pub pane_id: Option<String>,
    /// The tmux server's socket, from `$TMUX`.
    pub tmux_socket: Option<PathBuf>,
    /// The session's working directory.
    pub cwd: Option<String>,
    /// The label shown in Telegram (the directory's name).
    pub label: Option<String>,
    /// The transcript JSONL.
    pub transcript_path: Option<String>,
    /// Last update (ms).
    pub updated_at: i64,
    /// The pane's identity when a hook last ran in it; `None` = unverifiable (recorded by an
    /// agent older than identities, or tmux could not be asked), so nothing is typed there.
    pub identity: Option<PaneIdentity>,
    /// When the daemon found the pane gone (and why): nothing is typed for the session until
    /// a hook runs in it again.
    pub gone: Option<(i64, String)>,
    /// The input line may hold the text of a command whose typing was interrupted: clear it
    /// before typing the next command.
    pub input_dirty: bool,
}

impl SessionRecord {
    /// The pane to type into, if the session runs in tmux.
    pub(crate) fn pane(&self) -> Option<Pane> {
        self.pane_id.as_ref().map(|id| Pane {
            pane_id: id.clone(),
            socket: self.tmux_socket.clone(),
        })
    }
}

/// Sessions and status over the agent's database.
#[derive(Clone)]
pub struct Sessions {
    db: Db,
}

impl Sessions {
    /// Over `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Inserts or replaces a session's record.
    pub fn upsert(&self, s: &SessionRecord) -> rusqlite::Result<()> {
        // A hook ran for the session, in its pane: it is not gone (any more). The dirty flag is
        // the daemon's and stays.
        self.db.with(|c| {
            c.execute(
                "INSERT INTO sessions (session_id, pane_id, tmux_socket, cwd, label, \
                 transcript_path, updated_at, pane_identity) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (session_id) DO UPDATE SET pane_id = excluded.pane_id, \
                 tmux_socket = excluded.tmux_socket, cwd = excluded.cwd, label = excluded.label, \
                 transcript_path = excluded.transcript_path, updated_at = excluded.updated_at, \
                 pane_identity = excluded.pane_identity, gone_at = NULL, gone_reason = NULL, \
                 gone_reported = 1",
                params![
                    s.session_id,
                    s.pane_id,
                    s.tmux_socket
                        .as_ref()
                        .map(|p| p.to_string_lossy().into_owned()),
                    s.cwd,
                    s.label,
                    s.transcript_path,
                    s.updated_at,
                    s.identity.as_ref().map(PaneIdentity::encode),
                ],
            )
            .map(drop)
        })
    }

    /// One session.
    pub fn get(&self, session_id: &str) -> rusqlite::Result<Option<SessionRecord>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT session_id, pane_id, tmux_socket, cwd, label, transcript_path, \
                 updated_at, pane_identity, gone_at, gone_reason, input_dirty \
                 FROM sessions WHERE session_id = ?1",
                [session_id],
                row,
            )
            .optional()
        })
    }

    /// Every session, most recent first.
    pub(crate) fn all(&self) -> rusqlite::Result<Vec<SessionRecord>> {
        self.db.with(|c| {
            let mut st = c.prepare(
                "SELECT session_id, pane_id, tmux_socket, cwd, label, transcript_path, \
                 updated_at, pane_identity, gone_at, gone_reason, input_dirty \
                 FROM sessions ORDER BY updated_at DESC",
            )?;
            let rows = st.query_map([], row)?;
            rows.collect()
        })
    }

    /// Records that the session's pane is gone (`reason` for a person) and queues the
    /// report to the Worker; false when it was already marked.
    pub(crate) fn mark_gone(
        &self,
        session_id: &str,
        reason: &str,
        now: i64,
    ) -> rusqlite::Result<bool> {
        self.db.with(|c| {
            c.execute(
                "UPDATE sessions SET gone_at = ?2, gone_reason = ?3, gone_reported = 0 \
                 WHERE session_id = ?1 AND gone_at IS NULL",
                params![session_id, now, reason],
            )
            .map(|n| n == 1)
        })
    }

    /// Gone sessions whose report has not been handed to the socket: (session, reason).
    pub(crate) fn unreported_gone(&self) -> rusqlite::Result<Vec<(String, String)>> {
        self.db.with(|c| {
            let mut st = c.prepare(
                "SELECT session_id, COALESCE(gone_reason, '') FROM sessions \
                 WHERE gone_at IS NOT NULL AND gone_reported = 0 ORDER BY gone_at",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    /// Records that a gone report was handed to the socket.
    pub(crate) fn mark_gone_reported(&self, session_id: &str) -> rusqlite::Result<()> {
        self.db.with(|c| {
            c.execute(
                "UPDATE sessions SET gone_reported = 1 WHERE session_id = ?1",
                [session_id],
            )
            .map(drop)
        })
    }

    /// Sets or clears the session's "input line may hold interrupted text" flag.
    pub(crate) fn set_input_dirty(&self, session_id: &str, dirty: bool) -> rusqlite::Result<()> {
        self.db.with(|c| {
            c.execute(
                "UPDATE sessions SET input_dirty = ?2 WHERE session_id = ?1",
                params![session_id, dirty],
            )
            .map(drop)
        })
    }

    /// At start-up, before the inbox finishes them as failed: the sessions of commands a
    /// previous run left `executing` (killed while tmux was being handed the text, so part
    /// or all of it may sit in the input line) get their input line cleared before the next
    /// command. Returns how many sessions were marked.
    pub(crate) fn mark_interrupted_inputs_dirty(&self) -> rusqlite::Result<usize> {
        self.db.with(|c| {
            c.execute(
                "UPDATE sessions SET input_dirty = 1 WHERE input_dirty = 0 AND session_id IN \
                 (SELECT session_id FROM inbox WHERE state = 'executing')",
                [],
            )
        })
    }

    /// Forgets a session.
    pub(crate) fn remove(&self, session_id: &str) -> rusqlite::Result<()> {
        self.db.with(|c| {
            c.execute("DELETE FROM sessions WHERE session_id = ?1", [session_id])
                .map(drop)
        })
    }

    /// Deletes sessions not updated for `max_age_ms` (a session that ended without its
    /// `session-end` hook, e.g. a killed terminal).
    pub(crate) fn prune(&self, now: i64, max_age_ms: i64) -> rusqlite::Result<usize> {
        self.db.with(|c| {
            c.execute(
                "DELETE FROM sessions WHERE updated_at < ?1",
                [now - max_age_ms],
            )
        })
    }

    /// Sets a status value. The daemon's connection state is written only through
    /// `status::record` and `status::record_pong`, which own the keys.
    pub(super) fn set_status(&self, key: &str, value: &str, now: i64) -> rusqlite::Result<()> {
        self.db.with(|c| {
            c.execute(
                "INSERT INTO status (key, value, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 updated_at = excluded.updated_at",
                params![key, value, now],
            )
            .map(drop)
        })
    }

    /// A status value and when it was set.
    pub(super) fn status(&self, key: &str) -> rusqlite::Result<Option<(String, i64)>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT value, updated_at FROM status WHERE key = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        session_id: r.get(0)?,
        pane_id: r.get(1)?,
        tmux_socket: r.get::<_, Option<String>>(2)?.map(PathBuf::from),
        cwd: r.get(3)?,
        label: r.get(4)?,
        transcript_path: r.get(5)?,
        updated_at: r.get(6)?,
        identity: r
            .get::<_, Option<String>>(7)?
            .as_deref()
            .and_then(PaneIdentity::decode),
        gone: match (r.get::<_, Option<i64>>(8)?, r.get::<_, Option<String>>(9)?) {
            (Some(at), reason) => Some((at, reason.unwrap_or_default())),
            (None, _) => None,
        },
        input_dirty: r.get(10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_upsert_get_remove_prune() {
        let s = Sessions::new(Db::open_in_memory().unwrap());
        let mut rec = SessionRecord {
            session_id: "s1".into(),
            pane_id: Some("%1".into()),
            tmux_socket: Some("/tmp/tmux-1/default".into()),
            cwd: Some("/home/a/api".into()),
            label: Some("api".into()),
            transcript_path: None,
            updated_at: 1,
            identity: PaneIdentity::decode("%1 10 1700000000 11 12"),
            gone: None,
            input_dirty: false,
        };
        s.upsert(&rec).unwrap();
        rec.pane_id = Some("%7".into());
        rec.updated_at = 5;
        s.upsert(&rec).unwrap();
        assert_eq!(s.get("s1").unwrap(), Some(rec.clone()));
        assert_eq!(s.get("s1").unwrap().unwrap().pane().unwrap().pane_id, "%7");
        assert_eq!(s.all().unwrap().len(), 1);
        assert_eq!(s.prune(20, 6).unwrap(), 1);
        assert_eq!(s.get("s1").unwrap(), None);
        s.upsert(&rec).unwrap();
        s.remove("s1").unwrap();
        assert!(s.all().unwrap().is_empty());
        s.set_status("connection", "connected", 3).unwrap();
        assert_eq!(
            s.status("connection").unwrap(),
            Some(("connected".into(), 3))
        );
    }

    #[test]
    fn a_gone_pane_is_recorded_reported_once_and_cleared_by_a_hook() {
        let s = Sessions::new(Db::open_in_memory().unwrap());
        let rec = SessionRecord {
            session_id: "s1".into(),
            pane_id: Some("%0".into()),
            tmux_socket: Some("/tmp/sock".into()),
            cwd: None,
            label: None,
            transcript_path: None,
            updated_at: 1,
            identity: PaneIdentity::decode("%0 10 1700000000 11 -"),
            gone: None,
            input_dirty: false,
        };
        s.upsert(&rec).unwrap();
        assert!(s.unreported_gone().unwrap().is_empty());
        assert!(s.mark_gone("s1", "tmux server restarted", 5).unwrap());
        assert!(!s.mark_gone("s1", "again", 6).unwrap(), "marked once");
        assert_eq!(
            s.get("s1").unwrap().unwrap().gone,
            Some((5, "tmux server restarted".into()))
        );
        assert_eq!(
            s.unreported_gone().unwrap(),
            vec![("s1".to_string(), "tmux server restarted".to_string())]
        );
        s.mark_gone_reported("s1").unwrap();
        assert!(s.unreported_gone().unwrap().is_empty());
        assert!(s.get("s1").unwrap().unwrap().gone.is_some());
        // A hook ran in the session's (new) pane: not gone any more.
        s.upsert(&rec).unwrap();
        assert_eq!(s.get("s1").unwrap().unwrap().gone, None);
        assert!(s.unreported_gone().unwrap().is_empty());
    }

    #[test]
    fn sessions_of_interrupted_commands_get_a_dirty_input_line() {
        use crate::daemon::inbox::{Command, Inbox};
        let db = Db::open_in_memory().unwrap();
        let s = Sessions::new(db.clone());
        let inbox = Inbox::new(db);
        for id in ["s1", "s2"] {
            s.upsert(&SessionRecord {
                session_id: id.into(),
                pane_id: Some("%0".into()),
                tmux_socket: None,
                cwd: None,
                label: None,
                transcript_path: None,
                updated_at: 1,
                identity: None,
                gone: None,
                input_dirty: false,
            })
            .unwrap();
        }
        let cmd = |id: &str, session: &str| Command {
            command_id: id.into(),
            session_id: session.into(),
            command: "x".into(),
            chat_id: "1".into(),
            keys: None,
            project: None,
            file: None,
        };
        inbox.store(&cmd("c1", "s1"), None, 1).unwrap();
        inbox.store(&cmd("c2", "s2"), None, 1).unwrap();
        assert!(inbox.begin("c1", 2).unwrap());
        // Killed while typing c1: at start-up s1's line is dirty, s2's is not.
        assert_eq!(s.mark_interrupted_inputs_dirty().unwrap(), 1);
        assert!(s.get("s1").unwrap().unwrap().input_dirty);
        assert!(!s.get("s2").unwrap().unwrap().input_dirty);
        // A hook's upsert keeps the flag; clearing the line clears it.
        let mut rec = s.get("s1").unwrap().unwrap();
        rec.input_dirty = false;
        s.upsert(&rec).unwrap();
        assert!(s.get("s1").unwrap().unwrap().input_dirty);
        s.set_input_dirty("s1", false).unwrap();
        assert!(!s.get("s1").unwrap().unwrap().input_dirty);
    }

    /// A file written by the first schema (sessions without pane identities) opens with the
    /// new columns, its rows intact and unverifiable.
    #[test]
    fn an_old_file_migrates_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = rusqlite::Connection::open(Db::path(dir.path())).unwrap();
            conn.execute_batch(crate::db::MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO sessions (session_id, pane_id, tmux_socket, updated_at) \
                 VALUES ('old', '%3', '/tmp/sock', 1)",
                [],
            )
            .unwrap();
        }
        let db = Db::open(dir.path()).unwrap();
        let sessions = Sessions::new(db.clone());
        let rec = sessions.get("old").unwrap().unwrap();
        assert_eq!(rec.pane_id.as_deref(), Some("%3"));
        assert_eq!(rec.identity, None);
        assert_eq!(rec.gone, None);
        assert!(!rec.input_dirty);
        assert!(sessions.unreported_gone().unwrap().is_empty());
        // Opening again (another process) runs nothing twice.
        drop(db);
        Db::open(dir.path()).unwrap();
    }
}
