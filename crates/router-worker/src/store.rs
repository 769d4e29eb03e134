//! The RouterDO's storage operations, written against a small [`Sql`] trait.
//!
//! On the edge the trait is the Durable Object's SQLite (`router_do`); in native tests it
//! is rusqlite on an in-memory database, so every statement here runs against real SQLite
//! in `cargo test`.

use ccr_protocol::api::{SessionInfo, SessionList, MAX_LISTED_SESSIONS, MAX_SESSIONS_PER_MACHINE};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::schema;

/// A value bound to a `?` placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// SQL NULL.
    Null,
    /// An integer (bools are stored as 0/1: the DO binding stores a Rust bool as text).
    Int(i64),
    /// Text.
    Text(String),
}

impl From<i64> for SqlValue {
    fn from(v: i64) -> Self {
        SqlValue::Int(v)
    }
}
impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_owned())
    }
}
impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(v)
    }
}
impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

/// A storage failure, with the statement's purpose for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

/// Synchronous SQL, as the Durable Object offers it.
pub trait Sql {
    /// Runs a statement that returns no rows.
    fn exec(&self, sql: &str, params: Vec<SqlValue>) -> Result<(), StoreError>;
    /// Runs a query and reads every row into `T` (columns by name).
    fn query<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> Result<Vec<T>, StoreError>;
    /// Runs a query and reads its first row into `T`, if it returned one.
    fn query_one<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
    /// Runs `work` as one transaction: every write it made commits when it returns `Ok`, and
    /// none does when it returns `Err` (or a statement fails). On the edge this is the Durable
    /// Object's `transactionSync` (SQL `BEGIN` is refused there); natively, a real SQLite
    /// transaction. Not nested.
    fn transaction<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        Self: Sized,
        F: FnOnce(&Self) -> Result<T, StoreError>;
}

/// Brings the schema to the latest version; returns the version it found.
pub fn migrate(db: &impl Sql) -> Result<i64, StoreError> {
    #[derive(Deserialize)]
    struct Version {
        version: i64,
    }
    db.exec(schema::VERSION_TABLE, vec![])?;
    let found = db
        .query::<Version>(schema::READ_VERSION, vec![])?
        .first()
        .map_or(0, |v| v.version);
    if found > schema::latest() {
        return Err(StoreError(format!(
            "stored schema version {found} is newer than this build's {}; deploy the newer Worker",
            schema::latest()
        )));
    }
    for (version, statements) in schema::pending(found) {
        for stmt in statements {
            db.exec(stmt, vec![])?;
        }
        db.exec(schema::WRITE_VERSION, vec![version.into()])?;
    }
    Ok(found)
}

/// Inserts or updates a session; keeps `created_at`, and the label unless a new one is given.
/// A registration means the session runs in a pane again: it is no longer gone.
pub fn upsert_session(
    db: &impl Sql,
    session_id: &str,
    machine_id: &str,
    label: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO sessions (session_id, machine_id, label, created_at, last_activity)
         VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (session_id) DO UPDATE SET
            machine_id = excluded.machine_id,
            label = COALESCE(excluded.label, sessions.label),
            last_activity = excluded.last_activity,
            gone_at = NULL,
            gone_reason = NULL",
        vec![
            session_id.into(),
            machine_id.into(),
            label.into(),
            now.into(),
            now.into(),
        ],
    )
}

/// Marks a session active now.
pub fn touch_session(db: &impl Sql, session_id: &str, now: i64) -> Result<(), StoreError> {
    db.exec(
        "UPDATE sessions SET last_activity = ? WHERE session_id = ?",
        vec![now.into(), session_id.into()],
    )
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SessionRow {
    /// Claude Code's session id.
    pub session_id: String,
    /// Its machine.
    pub machine_id: String,
    /// Its label.
    pub label: Option<String>,
    /// Last activity (ms since epoch).
    pub last_activity: i64,
    /// When its machine reported its pane gone; `None` while it is usable.
    #[serde(default)]
    pub gone_at: Option<i64>,
    /// What the machine found, for a person.
    #[serde(default)]
    pub gone_reason: Option<String>,
}

/// Looks up one session.
pub fn get_session(db: &impl Sql, session_id: &str) -> Result<Option<SessionRow>, StoreError> {
    db.query_one::<SessionRow>(
        "SELECT session_id, machine_id, label, last_activity, gone_at, gone_reason
             FROM sessions WHERE session_id = ?",
        vec![session_id.into()],
    )
}

/// What a machine's `SessionGone` report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoneReport {
    /// The session is marked gone now.
    Marked,
    /// It was already gone; the first report's time and reason stay.
    AlreadyGone,
    /// No such session.
    Unknown,
    /// The session belongs to another machine: a machine speaks only for its own sessions.
    NotOwner,
}

/// Marks `session_id` gone on the report of `machine_id`'s agent (its pane is gone or
/// belongs to something else now), if that machine owns it.
pub fn mark_session_gone(
    db: &impl Sql,
    session_id: &str,
    machine_id: &str,
    reason: &str,
    now: i64,
) -> Result<GoneReport, StoreError> {
    let Some(session) = get_session(db, session_id)? else {
        return Ok(GoneReport::Unknown);
    };
    if session.machine_id != machine_id {
        return Ok(GoneReport::NotOwner);
    }
    if session.gone_at.is_some() {
        return Ok(GoneReport::AlreadyGone);
    }
    let reason: String = reason.chars().take(500).collect();
    db.exec(
        "UPDATE sessions SET gone_at = ?, gone_reason = ? WHERE session_id = ? AND machine_id = ?",
        vec![
            now.into(),
            reason.into(),
            session_id.into(),
            machine_id.into(),
        ],
    )?;
    Ok(GoneReport::Marked)
}

/// Removes a session and its reply mappings; returns whether it existed.
pub fn delete_session(db: &impl Sql, session_id: &str) -> Result<bool, StoreError> {
    let existed = get_session(db, session_id)?.is_some();
    db.exec(
        "DELETE FROM messages WHERE session_id = ?",
        vec![session_id.into()],
    )?;
    db.exec(
        "DELETE FROM sessions WHERE session_id = ?",
        vec![session_id.into()],
    )?;
    Ok(existed)
}

/// Why `session_id` may not be registered on `machine_id`, or `None` when it may: a machine
/// has at most [`MAX_SESSIONS_PER_MACHINE`] sessions (re-registering one it has is fine).
pub fn no_room_for_session(
    db: &impl Sql,
    session_id: &str,
    machine_id: &str,
) -> Result<Option<String>, StoreError> {
    #[derive(Deserialize)]
    struct N {
        n: i64,
    }
    let others = db
        .query::<N>(
            "SELECT count(*) AS n FROM sessions WHERE machine_id = ? AND session_id != ?",
            vec![machine_id.into(), session_id.into()],
        )?
        .first()
        .map_or(0, |r| r.n);
    Ok(
        (usize::try_from(others).unwrap_or(usize::MAX) >= MAX_SESSIONS_PER_MACHINE).then(|| {
            format!(
                "machine {machine_id} already has {others} sessions, the most one machine may register ({MAX_SESSIONS_PER_MACHINE}); unregister some (POST /sessions/unregister) or let idle ones expire (30 days)"
            )
        }),
    )
}

/// `GET /sessions`: [`list_sessions`] capped at [`MAX_LISTED_SESSIONS`], saying whether more
/// exist.
pub fn session_listing(
    db: &impl Sql,
    machine: Option<&str>,
    online: impl Fn(&str) -> bool,
) -> Result<SessionList, StoreError> {
    let mut sessions = list_sessions(db, machine, online)?;
    let truncated = sessions.len() > MAX_LISTED_SESSIONS;
    sessions.truncate(MAX_LISTED_SESSIONS);
    Ok(SessionList {
        ok: true,
        sessions,
        truncated,
    })
}

/// Lists sessions, most recently active first, optionally only one machine's; `online`
/// says whether a machine's socket is connected now. At most [`MAX_LISTED_SESSIONS`] + 1 rows
/// (one more than a listing shows, so a caller can tell that more exist).
pub fn list_sessions(
    db: &impl Sql,
    machine: Option<&str>,
    online: impl Fn(&str) -> bool,
) -> Result<Vec<SessionInfo>, StoreError> {
    let rows = match machine {
        Some(m) => db.query::<SessionRow>(
            "SELECT session_id, machine_id, label, last_activity, gone_at, gone_reason
             FROM sessions WHERE machine_id = ? ORDER BY last_activity DESC, session_id LIMIT ?",
            vec![m.into(), listing_limit()],
        )?,
        None => db.query::<SessionRow>(
            "SELECT session_id, machine_id, label, last_activity, gone_at, gone_reason
             FROM sessions ORDER BY last_activity DESC, session_id LIMIT ?",
            vec![listing_limit()],
        )?,
    };
    Ok(rows
        .into_iter()
        .map(|r| SessionInfo {
            gone: r.gone_at.is_some(),
            online: online(&r.machine_id),
            session_id: r.session_id,
            machine_id: r.machine_id,
            label: r.label,
            last_activity: r.last_activity,
        })
        .collect())
}

fn listing_limit() -> SqlValue {
    i64::try_from(MAX_LISTED_SESSIONS)
        .unwrap_or(i64::MAX)
        .saturating_add(1)
        .into()
}

/// Records that `message_id` in `chat_id` is about `session_id`, with its token.
pub fn record_message(
    db: &impl Sql,
    chat_id: i64,
    message_id: i64,
    session_id: &str,
    token: &str,
    now: i64,
) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO messages (chat_id, message_id, session_id, token, created_at)
         VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (chat_id, message_id) DO UPDATE SET
            session_id = excluded.session_id, token = excluded.token",
        vec![
            chat_id.into(),
            message_id.into(),
            session_id.into(),
            token.into(),
            now.into(),
        ],
    )
}

/// The most recent `/cmd` token of `session` issued in `chat` (tokens work only in the chat
/// they were issued in), while its reply mapping is kept.
pub fn latest_token(db: &impl Sql, session: &str, chat: i64) -> Result<Option<String>, StoreError> {
    #[derive(Deserialize)]
    struct Token {
        token: String,
    }
    Ok(db
        .query_one::<Token>(
            "SELECT token FROM messages WHERE session_id = ? AND chat_id = ?
             ORDER BY created_at DESC, message_id DESC LIMIT 1",
            vec![session.into(), chat.into()],
        )?
        .map(|t| t.token))
}

#[cfg(test)]
pub(crate) mod testing {
    //! rusqlite behind the [`Sql`] trait, so store tests run on real SQLite.
    use super::*;
    use rusqlite::types::Value;

    pub struct MemDb(pub rusqlite::Connection);

    impl MemDb {
        pub fn new() -> Self {
            MemDb(rusqlite::Connection::open_in_memory().unwrap())
        }
        pub fn migrated() -> Self {
            let db = Self::new();
            migrate(&db).unwrap();
            db
        }
    }

    fn to_sql(params: Vec<SqlValue>) -> Vec<Value> {
        params
            .into_iter()
            .map(|p| match p {
                SqlValue::Null => Value::Null,
                SqlValue::Int(i) => Value::Integer(i),
                SqlValue::Text(t) => Value::Text(t),
            })
            .collect()
    }

    impl Sql for MemDb {
        fn transaction<T, F>(&self, work: F) -> Result<T, StoreError>
        where
            F: FnOnce(&Self) -> Result<T, StoreError>,
        {
            let tx = self
                .0
                .unchecked_transaction()
                .map_err(|e| StoreError(e.to_string()))?;
            let value = work(self)?; // dropping `tx` on the error path rolls back
            tx.commit().map_err(|e| StoreError(e.to_string()))?;
            Ok(value)
        }

        fn exec(&self, sql: &str, params: Vec<SqlValue>) -> Result<(), StoreError> {
            self.0
                .execute(sql, rusqlite::params_from_iter(to_sql(params)))
                .map(|_| ())
                .map_err(|e| StoreError(e.to_string()))
        }

        fn query<T: DeserializeOwned>(
            &self,
            sql: &str,
            params: Vec<SqlValue>,
        ) -> Result<Vec<T>, StoreError> {
            let err = |e: rusqlite::Error| StoreError(e.to_string());
            let mut stmt = self.0.prepare(sql).map_err(err)?;
            let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
            let mut rows = stmt
                .query(rusqlite::params_from_iter(to_sql(params)))
                .map_err(err)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(err)? {
                let mut obj = serde_json::Map::new();
                for (i, name) in names.iter().enumerate() {
                    let v = match row.get::<_, Value>(i).map_err(err)? {
                        Value::Null => serde_json::Value::Null,
                        Value::Integer(n) => n.into(),
                        Value::Real(f) => f.into(),
                        Value::Text(t) => t.into(),
                        Value::Blob(b) => b.into(),
                    };
                    obj.insert(name.clone(), v);
                }
                out.push(
                    serde_json::from_value(obj.into()).map_err(|e| StoreError(e.to_string()))?,
                );
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::MemDb;
    use super::*;

    #[test]
    fn migrate_is_idempotent_and_records_version() {
        let db = MemDb::new();
        assert_eq!(migrate(&db).unwrap(), 0);
        assert_eq!(migrate(&db).unwrap(), schema::latest());
        // Every table the design names exists.
        for table in ["sessions", "messages", "command_queue", "seen_updates"] {
            let n: i64 =
                db.0.query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "{table}");
        }
    }

    #[test]
    fn refuses_a_newer_schema() {
        let db = MemDb::migrated();
        db.exec(schema::WRITE_VERSION, vec![(schema::latest() + 1).into()])
            .unwrap();
        assert!(migrate(&db).unwrap_err().0.contains("newer"));
    }

    #[test]
    fn sessions_upsert_list_delete() {
        let db = MemDb::migrated();
        assert!(list_sessions(&db, None, |_| false).unwrap().is_empty());
        upsert_session(&db, "s1", "devbox", Some("api"), 10).unwrap();
        upsert_session(&db, "s2", "laptop", None, 20).unwrap();
        // Re-registering without a label keeps the old one and moves the machine.
        upsert_session(&db, "s1", "laptop", None, 30).unwrap();
        let all = list_sessions(&db, None, |m| m == "laptop").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].session_id, "s1");
        assert_eq!(all[0].label.as_deref(), Some("api"));
        assert_eq!(all[0].machine_id, "laptop");
        assert!(all[0].online);
        assert_eq!(
            list_sessions(&db, Some("devbox"), |_| false).unwrap().len(),
            0
        );
        assert_eq!(
            list_sessions(&db, Some("laptop"), |_| false).unwrap().len(),
            2
        );

        db.exec(
            "INSERT INTO messages (chat_id, message_id, session_id, token, created_at) VALUES (1, 2, 's1', 't', 0)",
            vec![],
        )
        .unwrap();
        assert!(delete_session(&db, "s1").unwrap());
        assert!(!delete_session(&db, "s1").unwrap());
        let left: i64 =
            db.0.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
                .unwrap();
        assert_eq!(left, 0, "reply mappings go with their session");
    }

    #[test]
    fn only_the_owning_machine_marks_a_session_gone_and_registering_clears_it() {
        let db = MemDb::migrated();
        upsert_session(&db, "s1", "devbox", Some("api"), 10).unwrap();
        assert_eq!(
            mark_session_gone(&db, "nope", "devbox", "x", 11).unwrap(),
            GoneReport::Unknown
        );
        assert_eq!(
            mark_session_gone(&db, "s1", "laptop", "x", 11).unwrap(),
            GoneReport::NotOwner
        );
        assert!(!list_sessions(&db, None, |_| true).unwrap()[0].gone);
        assert_eq!(
            mark_session_gone(&db, "s1", "devbox", "tmux server restarted", 12).unwrap(),
            GoneReport::Marked
        );
        assert_eq!(
            mark_session_gone(&db, "s1", "devbox", "later", 13).unwrap(),
            GoneReport::AlreadyGone
        );
        let s = get_session(&db, "s1").unwrap().unwrap();
        assert_eq!(s.gone_at, Some(12));
        assert_eq!(s.gone_reason.as_deref(), Some("tmux server restarted"));
        let listed = list_sessions(&db, Some("devbox"), |_| true).unwrap();
        assert!(listed[0].gone);
        // Its SessionStart registers it again: usable.
        upsert_session(&db, "s1", "devbox", None, 20).unwrap();
        let s = get_session(&db, "s1").unwrap().unwrap();
        assert_eq!((s.gone_at, s.gone_reason), (None, None));
        assert!(!list_sessions(&db, None, |_| true).unwrap()[0].gone);
        assert_eq!(s.label.as_deref(), Some("api"));
    }

    #[test]
    fn sessions_per_machine_are_capped() {
        let db = MemDb::migrated();
        db.exec(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
             INSERT INTO sessions (session_id, machine_id, created_at, last_activity)
             SELECT 's' || i, 'devbox', i, i FROM n",
            vec![i64::try_from(MAX_SESSIONS_PER_MACHINE).unwrap().into()],
        )
        .unwrap();
        let why = no_room_for_session(&db, "new", "devbox").unwrap().unwrap();
        assert!(
            why.starts_with("machine devbox already has 1000 sessions, the most one machine may register (1000)"),
            "{why}"
        );
        // Re-registering one it has is an update, not one more; other machines have room.
        assert_eq!(no_room_for_session(&db, "s5", "devbox").unwrap(), None);
        assert_eq!(no_room_for_session(&db, "new", "laptop").unwrap(), None);
    }

    #[test]
    fn listings_are_capped_and_say_so() {
        let db = MemDb::migrated();
        let listed = i64::try_from(MAX_LISTED_SESSIONS).unwrap();
        db.exec(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
             INSERT INTO sessions (session_id, machine_id, created_at, last_activity)
             SELECT 's' || i, 'm' || (i % 3), i, i FROM n",
            vec![listed.into()],
        )
        .unwrap();
        let all = session_listing(&db, None, |_| false).unwrap();
        assert_eq!(all.sessions.len(), MAX_LISTED_SESSIONS);
        assert!(!all.truncated, "exactly at the cap: everything is listed");
        upsert_session(&db, "newest", "m1", None, listed + 10).unwrap();
        let all = session_listing(&db, None, |_| false).unwrap();
        assert_eq!(all.sessions.len(), MAX_LISTED_SESSIONS);
        assert!(all.truncated);
        assert_eq!(
            all.sessions[0].session_id, "newest",
            "the most recent are kept"
        );
        let one = session_listing(&db, Some("m1"), |_| false).unwrap();
        assert!(!one.truncated && one.sessions.len() < MAX_LISTED_SESSIONS);
        // The serialized answer of an untruncated listing has no `truncated` field.
        let json = serde_json::to_value(&one).unwrap();
        assert!(json.get("truncated").is_none());
    }
}
