//! Permission decisions from the chat, shared by the daemon (which stores each one before it
//! acks it) and the waiting PermissionRequest hook (which takes it once and prints it).

use rusqlite::{params, OptionalExtension};
use serde_json::Value;

use crate::db::Db;

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
