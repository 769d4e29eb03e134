//! The agent's one SQLite file: the inbox, the sessions the hooks recorded, and the daemon's
//! status. The daemon and the hook processes open it at the same time, so it runs in WAL mode
//! with a busy timeout; `synchronous=FULL` because an ack promises the row is on disk.
//!
//! The data directory is private whoever creates it first — the daemon, a hook, `status`,
//! `doctor`, `install-service`: [`ensure_private_dir`] makes it 0700 and
//! [`open_private_file`] makes its files 0600, whatever the process umask. Modes are set
//! explicitly after creation rather than by changing the umask, which is process-wide (the
//! daemon's other threads create files too) and needs `unsafe` or another dependency. The
//! database file is created 0600 before SQLite opens it, and SQLite gives its `-wal`, `-shm`
//! and `-journal` files the database file's mode, so they are 0600 from their first byte;
//! files an older version left readable by others are tightened on open.

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
    // Permission decisions from the chat (`daemon::decisions`): stored before the ack, taken
    // once by the waiting PermissionRequest hook.
    r#"
CREATE TABLE IF NOT EXISTS decisions (
    request_id  TEXT PRIMARY KEY,
    decision    TEXT NOT NULL,
    taken_at    INTEGER,
    received_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS open_requests (
    request_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    tool_name  TEXT NOT NULL,
    tool_input TEXT NOT NULL,
    opened_at  INTEGER NOT NULL,
    closed_at  INTEGER
);
CREATE INDEX IF NOT EXISTS open_requests_by_session ON open_requests (session_id);
"#,
    // Named keys (`/esc`, `/keys`): a `keys` frame's names, space-separated; NULL for text.
    r#"
ALTER TABLE inbox ADD COLUMN keys TEXT;
"#,
    // `/new`: a `startSession` frame's project name (the row is a start request, not text for
    // a pane), and what its result reports besides success (the new tmux window).
    r#"
ALTER TABLE inbox ADD COLUMN project TEXT;
ALTER TABLE inbox ADD COLUMN detail TEXT;
"#,
    // A file the chat sent (`file` frame): the `FileRef` JSON; the caption is `command`.
    r#"
ALTER TABLE inbox ADD COLUMN file TEXT;
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
        ensure_private_dir(data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let path = Self::path(data_dir);
        // An existing file we may not write (someone else's) is left to SQLite, which then
        // opens it read-only or says why not.
        if let Err(e) = open_private_file(&path, false) {
            if !path.exists() {
                return Err(e).with_context(|| format!("creating the database {}", path.display()));
            }
        }
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut side = path.clone().into_os_string();
            side.push(suffix);
            tighten(Path::new(&side), 0o600);
        }
        let conn = Connection::open(&path)
            .with_context(|| format!("opening the database {}", path.display()))?;
        Self::setup(conn, true).with_context(|| format!("setting up {}", path.display()))
    }

    /// The database as a hook opens it: commits are not flushed to the disk one by one
    /// (`synchronous=NORMAL`; in WAL mode still atomic and safe against a crash of any
    /// process, only the last commits may be lost with the machine's power). A hook writes
    /// the session's pane record and its open requests, which a power loss makes moot along
    /// with the session, and an `fsync` per commit was a few milliseconds of every card's
    /// start. The daemon's connection keeps `FULL`: what it acks must survive anything.
    pub fn open_for_hook(data_dir: &Path) -> anyhow::Result<Db> {
        let db = Self::open(data_dir)?;
        db.with(|c| c.pragma_update(None, "synchronous", "NORMAL"))
            .context("setting up the hook's connection")?;
        Ok(db)
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

/// Creates `dir` (and missing parents) with mode 0700 whatever the umask; an existing one that
/// others may enter is tightened to 0700 (left as it is when that is not ours to change).
pub(crate) fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    tighten(dir, 0o700);
    Ok(())
}

/// Opens `path` for writing (appending when `append`), creating it with mode 0600 whatever the
/// umask; an existing file with another mode is set to 0600 (when it is ours to change).
pub(crate) fn open_private_file(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .append(append)
        .create(true)
        .mode(0o600)
        .open(path)?;
    // The mode at creation is filtered by the umask, and an existing file keeps its own.
    if file.metadata()?.permissions().mode() & 0o777 != 0o600 {
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
    Ok(file)
}

/// Sets `path`'s mode to `mode` when it exists with another one; failures (not our file) are
/// left to `doctor` to report.
fn tighten(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o777 != mode {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn set_mode(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn modes_are_exact_whatever_was_there() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        set_mode(&dir, 0o755);
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        let log = dir.join("hooks.log");
        std::fs::write(&log, "old line\n").unwrap();
        set_mode(&log, 0o644);
        use std::io::Write;
        open_private_file(&log, true)
            .unwrap()
            .write_all(b"new line\n")
            .unwrap();
        assert_eq!(mode(&log), 0o600);
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "old line\nnew line\n"
        );
    }

    #[test]
    fn the_database_and_its_sidecars_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        ensure_private_dir(&data).unwrap();
        let db = Db::path(&data);
        std::fs::write(&db, "").unwrap();
        set_mode(&db, 0o644);
        set_mode(&data, 0o755);
        let _open = Db::open(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        for f in ["agent.sqlite", "agent.sqlite-wal", "agent.sqlite-shm"] {
            assert_eq!(mode(&data.join(f)), 0o600, "{f}");
        }
    }
}
