//! What the hooks learned about each Claude Code session (its tmux pane and server, cwd,
//! label) and what the daemon reports about itself, both in the agent's database so the daemon,
//! the hooks and `ccr-agent status` — separate processes — share them.

use std::path::PathBuf;

use rusqlite::{params, OptionalExtension};

use super::inject::Pane;
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
        self.db.with(|c| {
            c.execute(
                "INSERT INTO sessions (session_id, pane_id, tmux_socket, cwd, label, \
                 transcript_path, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (session_id) DO UPDATE SET pane_id = excluded.pane_id, \
                 tmux_socket = excluded.tmux_socket, cwd = excluded.cwd, label = excluded.label, \
                 transcript_path = excluded.transcript_path, updated_at = excluded.updated_at",
                params![
                    s.session_id,
                    s.pane_id,
                    s.tmux_socket
                        .as_ref()
                        .map(|p| p.to_string_lossy().into_owned()),
                    s.cwd,
                    s.label,
                    s.transcript_path,
                    s.updated_at
                ],
            )
            .map(drop)
        })
    }

    /// One session.
    pub(crate) fn get(&self, session_id: &str) -> rusqlite::Result<Option<SessionRecord>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT session_id, pane_id, tmux_socket, cwd, label, transcript_path, \
                 updated_at FROM sessions WHERE session_id = ?1",
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
                 updated_at FROM sessions ORDER BY updated_at DESC",
            )?;
            let rows = st.query_map([], row)?;
            rows.collect()
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
}
