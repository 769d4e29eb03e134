//! Permission decisions from the chat, shared by the daemon (which stores each one before it
//! acks it) and the waiting PermissionRequest hook (which takes it once and prints it).

use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension};
use serde_json::Value;

use crate::db::{ensure_private_dir, Db};

/// Taken or unclaimed decisions are forgotten after this long (ms).
const RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// Stores a decision (a redelivery of a stored one changes nothing).
pub(crate) fn store(db: &Db, request_id: &str, decision: &Value, now: i64) -> rusqlite::Result<()> {
    db.with(|c| {
        c.execute(
            "INSERT INTO decisions (request_id, decision, received_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (request_id) DO NOTHING",
            params![request_id, decision.to_string(), now],
        )?;
        c.execute(
            "DELETE FROM decisions WHERE received_at < ?1",
            params![now - RETENTION_MS],
        )
        .map(drop)
    })
}

/// Takes the decision for `request_id` once: `None` while there is none, or when it was
/// taken already.
pub(crate) fn take(db: &Db, request_id: &str, now: i64) -> rusqlite::Result<Option<Value>> {
    db.with(|c| {
        let tx = c.transaction()?;
        let text: Option<String> = tx
            .query_row(
                "SELECT decision FROM decisions WHERE request_id = ?1 AND taken_at IS NULL",
                params![request_id],
                |r| r.get(0),
            )
            .optional()?;
        if text.is_some() {
            tx.execute(
                "UPDATE decisions SET taken_at = ?2 WHERE request_id = ?1",
                params![request_id, now],
            )?;
        }
        tx.commit()?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    })
}

/// Remembers a request the hook is waiting on (so the session's next hooks can tell it moved
/// on without the chat).
pub(crate) fn remember_open(
    db: &Db,
    request_id: &str,
    session_id: &str,
    tool_name: &str,
    tool_input: &Value,
    now: i64,
) -> rusqlite::Result<()> {
    db.with(|c| {
        c.execute(
            "INSERT OR REPLACE INTO open_requests (request_id, session_id, tool_name, tool_input, opened_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![request_id, session_id, tool_name, tool_input.to_string(), now],
        )
        .map(drop)
    })
}

/// The hook is done with a request.
pub(crate) fn forget(db: &Db, request_id: &str) -> rusqlite::Result<()> {
    db.with(|c| {
        c.execute(
            "DELETE FROM open_requests WHERE request_id = ?1",
            params![request_id],
        )
        .map(drop)
    })
}

/// Whether the session moved on from the request (closed by [`moved_on`], or forgotten).
pub(crate) fn is_closed(db: &Db, request_id: &str) -> rusqlite::Result<bool> {
    db.with(|c| {
        let open: Option<i64> = c
            .query_row(
                "SELECT 1 FROM open_requests WHERE request_id = ?1 AND closed_at IS NULL",
                params![request_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(open.is_none())
    })
}

/// Whether the session has a request whose card is out and undecided.
pub(crate) fn has_open(db: &Db, session_id: &str) -> rusqlite::Result<bool> {
    db.with(|c| {
        let n: i64 = c.query_row(
            "SELECT COUNT(*) FROM open_requests WHERE session_id = ?1 AND closed_at IS NULL",
            params![session_id],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    })
}

/// The session moved on: closes its open requests (only those for this tool call when
/// `tool` is given) and returns their ids.
pub(crate) fn moved_on(
    db: &Db,
    session_id: &str,
    tool: Option<(&str, &Value)>,
    now: i64,
) -> rusqlite::Result<Vec<String>> {
    db.with(|c| {
        let tx = c.transaction()?;
        let rows: Vec<(String, String, String)> = {
            let mut stmt = tx.prepare(
                "SELECT request_id, tool_name, tool_input FROM open_requests
                 WHERE session_id = ?1 AND closed_at IS NULL",
            )?;
            let rows = stmt.query_map(params![session_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut ids = Vec::new();
        for (id, name, input) in rows {
            let matches = match tool {
                None => true,
                Some((n, i)) => {
                    n == name && serde_json::from_str::<Value>(&input).is_ok_and(|v| &v == i)
                }
            };
            if matches {
                tx.execute(
                    "UPDATE open_requests SET closed_at = ?2 WHERE request_id = ?1",
                    params![id, now],
                )?;
                ids.push(id);
            }
        }
        tx.commit()?;
        Ok(ids)
    })
}

/// The folder of the waiting hooks' wake-up sockets, in the data directory.
const WAKE_DIR: &str = "wake";

/// The wake-up socket of the hook waiting on `request_id`, or `None` for an id that is not
/// 1–64 hex digits (ids come from the Worker: never a path of their choosing).
fn wake_path(data_dir: &Path, request_id: &str) -> Option<PathBuf> {
    let hex = !request_id.is_empty()
        && request_id.len() <= 64
        && request_id.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then(|| data_dir.join(WAKE_DIR).join(request_id))
}

/// A waiting hook's wake-up socket: a Unix datagram socket the daemon sends one byte to once
/// it has stored the hook's decision, so the decision is printed at once rather than at the
/// hook's next look at the database. Only a shortcut: the hook still reads the database on
/// its own every so often (a daemon that cannot reach the socket changes nothing but the
/// delay). The socket file goes when this is dropped.
pub(crate) struct Wake {
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
}

impl Wake {
    /// Listens for `request_id`'s decision (fails on a path too long for a Unix socket, a
    /// read-only data directory…: the hook then only polls).
    pub(crate) fn listen(data_dir: &Path, request_id: &str) -> std::io::Result<Wake> {
        let path = wake_path(data_dir, request_id)
            .ok_or_else(|| std::io::Error::other("not a request id"))?;
        if let Some(dir) = path.parent() {
            ensure_private_dir(dir)?;
        }
        // A socket file left by a hook that was killed (same id: never reused, but harmless).
        let _ = std::fs::remove_file(&path);
        let socket = tokio::net::UnixDatagram::bind(&path)?;
        Ok(Wake { socket, path })
    }

    /// Returns when the daemon said a decision is in.
    pub(crate) async fn rung(&self) {
        let mut buf = [0u8; 8];
        let _ = self.socket.recv(&mut buf).await;
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Tells the hook waiting on `request_id` (if one listens) that its decision is stored. Never
/// blocks and never fails: nobody listening is the common case after a restart.
pub(crate) fn wake(data_dir: &Path, request_id: &str) {
    let Some(path) = wake_path(data_dir, request_id) else {
        return;
    };
    if !path.exists() {
        return;
    }
    if let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = socket.set_nonblocking(true);
        let _ = socket.send_to(b"1", &path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_stored_decision_wakes_its_hook_and_odd_ids_are_no_paths() {
        let dir = tempfile::tempdir().unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let listening = Wake::listen(dir.path(), id).unwrap();
        wake(dir.path(), "ffff"); // another request: nobody listens, nothing happens
        wake(dir.path(), id);
        tokio::time::timeout(std::time::Duration::from_secs(5), listening.rung())
            .await
            .expect("woken");
        let path = dir.path().join("wake").join(id);
        assert!(path.exists());
        drop(listening);
        assert!(!path.exists(), "the socket file goes with the listener");
        for odd in ["", "../x", "a/b", "xyz", &"a".repeat(65)] {
            assert_eq!(wake_path(dir.path(), odd), None, "{odd:?}");
            assert!(Wake::listen(dir.path(), odd).is_err());
        }
    }

    #[test]
    fn a_decision_is_taken_once_and_a_redelivery_changes_nothing() {
        let db = Db::open_in_memory().unwrap();
        assert_eq!(take(&db, "r1", 1).unwrap(), None);
        store(&db, "r1", &json!({"behavior": "allow"}), 2).unwrap();
        store(&db, "r1", &json!({"behavior": "deny"}), 3).unwrap();
        assert_eq!(
            take(&db, "r1", 4).unwrap(),
            Some(json!({"behavior": "allow"}))
        );
        assert_eq!(take(&db, "r1", 5).unwrap(), None);
        store(&db, "r1", &json!({"behavior": "allow"}), 6).unwrap();
        assert_eq!(take(&db, "r1", 7).unwrap(), None);
    }

    #[test]
    fn the_sessions_next_hooks_close_its_open_requests() {
        let db = Db::open_in_memory().unwrap();
        let ls = json!({"command": "ls"});
        remember_open(&db, "r1", "s1", "Bash", &ls, 1).unwrap();
        remember_open(&db, "r2", "s1", "Bash", &json!({"command": "pwd"}), 1).unwrap();
        remember_open(&db, "r3", "s2", "Bash", &ls, 1).unwrap();
        assert!(!is_closed(&db, "r1").unwrap());
        assert_eq!(moved_on(&db, "s1", Some(("Bash", &ls)), 2).unwrap(), ["r1"]);
        assert!(is_closed(&db, "r1").unwrap());
        assert!(moved_on(&db, "s1", Some(("Bash", &ls)), 3)
            .unwrap()
            .is_empty());
        assert_eq!(moved_on(&db, "s1", None, 4).unwrap(), ["r2"]);
        forget(&db, "r3").unwrap();
        assert!(is_closed(&db, "r3").unwrap());
    }
}
