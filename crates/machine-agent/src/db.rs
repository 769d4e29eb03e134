//! The agent's one SQLite file: the inbox, the sessions the hooks recorded, and the daemon's
//! status. The daemon and the hook processes open it at the same time, so it runs in WAL mode
//! with a busy timeout; `synchronous=FULL` because an ack promises the row is on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rusqlite::Connection;

/// Versioned migrations; `user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE IF NOT EXISTS inbox (
    command_id  TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL,
    command     TEXT NOT NULL,
    chat_id     TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('stored', 'acked', 'executing', 'typed', 'done')),
    success     INTEGER,
    error       TEXT,
    result_sent INTEGER NOT NULL DEFAULT 0,
    received_at INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_state ON inbox (state, received_at);
CREATE TABLE IF NOT EXISTS sessions (
    session_id      TEXT PRIMARY KEY,
    pane_id         TEXT,
    tmux_socket     TEXT,
    cwd             TEXT,
    label           TEXT,
    transcript_path TEXT,
    updated_at      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS status (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
"#,
    // A session's pane identity (checked before every injection), whether its pane was found
    // gone (and whether the Worker was told), and whether its input line may hold the text of
    // an interrupted command. Rows from before have no identity: unverifiable, never typed into.
    r#"
ALTER TABLE sessions ADD COLUMN pane_identity TEXT;
ALTER TABLE sessions ADD COLUMN gone_at INTEGER;
ALTER TABLE sessions ADD COLUMN gone_reason TEXT;
ALTER TABLE sessions ADD COLUMN gone_reported INTEGER NOT NULL DEFAULT 1;
ALTER TABLE sessions ADD COLUMN input_dirty INTEGER NOT NULL DEFAULT 0;
"#,
];

/// A shared handle on the SQLite connection. Every statement is short, so callers run them
/// inline under the mutex.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// The database file in `data_dir`.
    pub(crate) fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("agent.sqlite")
    }

    /// Opens (creating the directory with mode 0700 and the schema) the database in
    /// `data_dir`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Db> {
        create_private_dir(data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let path = Self::path(data_dir);
        let conn = Connection::open(&path)
            .with_context(|| format!("opening the database {}", path.display()))?;
        Self::setup(conn, true).with_context(|| format!("setting up {}", path.display()))
    }

    /// An in-memory database (tests).
    #[cfg(test)]
    pub(crate) fn open_in_memory() -> anyhow::Result<Db> {
        Self::setup(Connection::open_in_memory()?, false)
    }

    fn setup(mut conn: Connection, wal: bool) -> anyhow::Result<Db> {
        conn.busy_timeout(Duration::from_secs(5))?;
        if wal {
            let _: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version < MIGRATIONS.len() {
            // The daemon and a hook may open an old file at the same moment, and `ALTER TABLE`
            // cannot run twice: migrate under the write lock, from the version read under it.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", i + 1)?;
            }
            tx.commit()?;
        }
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        // A panic while holding the lock leaves the connection itself usable (SQLite rolls
        // back an open transaction when it is next used), so a poisoned lock is taken over.
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written by the first schema (sessions without pane identities) opens with the
    /// new columns, its rows intact and unverifiable.
    #[test]
    fn an_old_file_migrates_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(Db::path(dir.path())).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO sessions (session_id, pane_id, tmux_socket, updated_at) \
                 VALUES ('old', '%3', '/tmp/sock', 1)",
                [],
            )
            .unwrap();
        }
        let db = Db::open(dir.path()).unwrap();
        let sessions = crate::daemon::sessions::Sessions::new(db.clone());
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
