//! The agent's one SQLite file: the inbox, the sessions the hooks recorded, and the daemon's
//! status. The daemon and the hook processes open it at the same time, so it runs in WAL mode
//! with a busy timeout; `synchronous=FULL` because an ack promises the row is on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rusqlite::Connection;

/// Versioned migrations; `user_version` records how many ran. New ones go at the end;
/// existing entries never change.
pub(crate) const MIGRATIONS: &[&str] = &[
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
    // Each command's expiry (ms, the Worker's `expiresAt`): a finished row is kept until then
    // plus a margin (see `daemon::inbox`). Rows of an older agent get the protocol's TTL
    // (`COMMAND_TTL_MS`, 24 h) from their arrival, what the Worker then used.
    r#"
ALTER TABLE inbox ADD COLUMN expires_at INTEGER;
UPDATE inbox SET expires_at = received_at + 86400000 WHERE expires_at IS NULL;
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

    fn setup(conn: Connection, wal: bool) -> anyhow::Result<Db> {
        conn.busy_timeout(Duration::from_secs(5))?;
        if wal {
            let _: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            conn.execute_batch(sql)?;
            conn.pragma_update(None, "user_version", i + 1)?;
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
