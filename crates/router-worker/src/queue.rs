//! The durable command queue: pending → sent → acked → done | failed, or dead when it was
//! not delivered in time.
//!
//! A command is written here before any send. Sends are retried with exponential backoff
//! (1 s doubling to a 5 min cap) while the machine is connected; everything unacked is sent
//! again, oldest first, when the machine connects.

use ccr_protocol::socket::FileRef;
use ccr_protocol::COMMAND_TTL_MS;
use serde::Deserialize;

use crate::store::{Sql, StoreError};

/// First retry delay.
pub const BACKOFF_BASE_MS: i64 = 1_000;
/// Longest retry delay.
pub const BACKOFF_CAP_MS: i64 = 5 * 60 * 1_000;
/// Most unacked commands one machine may have waiting.
pub const MAX_UNACKED_PER_MACHINE: i64 = 200;

/// Delay before the next attempt after `attempts` sends (1 s, 2 s, 4 s, … ≤ 5 min).
pub fn backoff_ms(attempts: i64) -> i64 {
    let exp = attempts.clamp(1, 20) - 1;
    (BACKOFF_BASE_MS << exp).min(BACKOFF_CAP_MS)
}

/// How long an undelivered command waits (ms): the `COMMAND_TTL_SECS` setting when it is a
/// positive whole number of seconds, else [`COMMAND_TTL_MS`].
pub fn ttl_ms(setting: &str) -> i64 {
    setting
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|s| *s > 0)
        .map_or(COMMAND_TTL_MS, |s| s.saturating_mul(1000))
}

/// A command to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommand {
    /// Unique id (derived from the Telegram update, so a replay cannot queue a second one).
    pub command_id: String,
    /// Target session.
    pub session_id: String,
    /// The session's machine at queueing time.
    pub machine_id: String,
    /// Chat to report back to.
    pub chat_id: i64,
    /// The user's message, for the delivery reaction (none for button presses).
    pub source_message_id: Option<i64>,
    /// Text to type.
    pub command: String,
    /// Named keys to press instead of text (`/esc`, `/keys`): space-separated names from
    /// `wire::keys::NAMES`.
    pub keys: Option<String>,
    /// A start request (`/new`): the project to start Claude Code in, pushed as a
    /// `startSession` frame; `command` is then the first prompt and `session_id` is empty.
    pub project: Option<String>,
    /// A file to download and type the path of, after `command` (the caption): pushed as a
    /// `file` frame.
    pub file: Option<FileRef>,
}

/// A queued command as stored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Queued {
    /// Unique id.
    pub command_id: String,
    /// Target session.
    pub session_id: String,
    /// Target machine.
    pub machine_id: String,
    /// Chat to report to.
    pub chat_id: i64,
    /// The user's message, if any.
    pub source_message_id: Option<i64>,
    /// Text to type.
    pub command: String,
    /// Named keys to press instead (space-separated), pushed as a `keys` frame.
    #[serde(default)]
    pub keys: Option<String>,
    /// The project of a start request (`/new`), pushed as a `startSession` frame.
    #[serde(default)]
    pub project: Option<String>,
    /// A file (the `FileRef` JSON), pushed as a `file` frame with `command` as its caption.
    #[serde(default)]
    pub file: Option<String>,
    /// State name.
    pub state: String,
    /// Sends so far.
    pub attempts: i64,
    /// When it was queued (ms).
    pub created_at: i64,
}

impl Queued {
    /// The file this command delivers, if it is a file command (a row whose JSON does not
    /// read — never written so — counts as none).
    pub fn file_ref(&self) -> Option<FileRef> {
        self.file
            .as_deref()
            .and_then(|f| serde_json::from_str(f).ok())
    }

    /// Still waiting for the agent's ack (`pending` or `sent`): may be pushed (again).
    pub fn is_unacked(&self) -> bool {
        matches!(self.state.as_str(), "pending" | "sent")
    }
}

const COLUMNS: &str = "command_id, session_id, machine_id, chat_id, source_message_id, command, \
                       keys, project, file, state, attempts, created_at";

/// Queues a command; returns false when the id was already queued (nothing changes).
pub fn enqueue(db: &impl Sql, cmd: &NewCommand, now: i64) -> Result<bool, StoreError> {
    if get(db, &cmd.command_id)?.is_some() {
        return Ok(false);
    }
    db.exec(
        "INSERT INTO command_queue (command_id, session_id, machine_id, chat_id,
            source_message_id, command, keys, project, file, file_id, state, attempts,
            next_attempt_at, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
        vec![
            cmd.command_id.as_str().into(),
            cmd.session_id.as_str().into(),
            cmd.machine_id.as_str().into(),
            cmd.chat_id.into(),
            cmd.source_message_id.into(),
            cmd.command.as_str().into(),
            cmd.keys.as_deref().into(),
            cmd.project.as_deref().into(),
            cmd.file
                .as_ref()
                .and_then(|f| serde_json::to_string(f).ok())
                .as_deref()
                .into(),
            cmd.file.as_ref().map(|f| f.file_id.as_str()).into(),
            now.into(),
            now.into(),
            now.into(),
        ],
    )?;
    Ok(true)
}

/// One command by id.
pub fn get(db: &impl Sql, command_id: &str) -> Result<Option<Queued>, StoreError> {
    db.query_one::<Queued>(
        &format!("SELECT {COLUMNS} FROM command_queue WHERE command_id = ?"),
        vec![command_id.into()],
    )
}

/// How many commands wait unacked for a machine.
pub fn unacked_count(db: &impl Sql, machine_id: &str) -> Result<i64, StoreError> {
    #[derive(Deserialize)]
    struct N {
        n: i64,
    }
    Ok(db
        .query::<N>(
            "SELECT count(*) AS n FROM command_queue
             WHERE machine_id = ? AND state IN ('pending', 'sent')",
            vec![machine_id.into()],
        )?
        .first()
        .map_or(0, |r| r.n))
}

/// Unacked commands of a machine, oldest first; with `due_by`, only those due by then.
pub fn unacked_for_machine(
    db: &impl Sql,
    machine_id: &str,
    due_by: Option<i64>,
    limit: i64,
) -> Result<Vec<Queued>, StoreError> {
    db.query::<Queued>(
        &format!(
            "SELECT {COLUMNS} FROM command_queue
             WHERE machine_id = ? AND state IN ('pending', 'sent') AND next_attempt_at <= ?
             ORDER BY created_at, command_id LIMIT ?"
        ),
        vec![
            machine_id.into(),
            due_by.unwrap_or(i64::MAX).into(),
            limit.into(),
        ],
    )
}

/// Records a send: one more attempt, next one after the backoff.
pub fn mark_sent(db: &impl Sql, command_id: &str, now: i64) -> Result<(), StoreError> {
    let attempts = get(db, command_id)?.map_or(0, |q| q.attempts) + 1;
    db.exec(
        "UPDATE command_queue SET state = 'sent', attempts = ?, next_attempt_at = ?, updated_at = ?
         WHERE command_id = ? AND state IN ('pending', 'sent')",
        vec![
            attempts.into(),
            (now + backoff_ms(attempts)).into(),
            now.into(),
            command_id.into(),
        ],
    )
}

/// Records the agent's ack; returns the command when this was its first ack.
pub fn ack(
    db: &impl Sql,
    command_id: &str,
    machine_id: &str,
    now: i64,
) -> Result<Option<Queued>, StoreError> {
    let Some(q) = get(db, command_id)? else {
        return Ok(None);
    };
    if q.machine_id != machine_id || !matches!(q.state.as_str(), "pending" | "sent" | "dead") {
        return Ok(None);
    }
    db.exec(
        "UPDATE command_queue SET state = 'acked', updated_at = ? WHERE command_id = ?",
        vec![now.into(), command_id.into()],
    )?;
    Ok(Some(q))
}

/// Records the outcome; returns the command when this was its first result.
pub fn complete(
    db: &impl Sql,
    command_id: &str,
    machine_id: &str,
    success: bool,
    error: Option<&str>,
    now: i64,
) -> Result<Option<Queued>, StoreError> {
    let Some(q) = get(db, command_id)? else {
        return Ok(None);
    };
    if q.machine_id != machine_id || matches!(q.state.as_str(), "done" | "failed") {
        return Ok(None);
    }
    db.exec(
        "UPDATE command_queue SET state = ?, last_error = ?, updated_at = ? WHERE command_id = ?",
        vec![
            if success { "done" } else { "failed" }.into(),
            error.into(),
            now.into(),
            command_id.into(),
        ],
    )?;
    Ok(Some(q))
}

/// Marks every command queued before `now - ttl_ms` and still unacked as dead; returns them.
pub fn expire(db: &impl Sql, now: i64, ttl_ms: i64) -> Result<Vec<Queued>, StoreError> {
    let cutoff = now - ttl_ms;
    let dead = db.query::<Queued>(
        &format!(
            "SELECT {COLUMNS} FROM command_queue
             WHERE state IN ('pending', 'sent') AND created_at <= ? ORDER BY created_at"
        ),
        vec![cutoff.into()],
    )?;
    db.exec(
        "UPDATE command_queue SET state = 'dead', last_error = 'not delivered in time', updated_at = ?
         WHERE state IN ('pending', 'sent') AND created_at <= ?",
        vec![now.into(), cutoff.into()],
    )?;
    Ok(dead)
}

/// When the alarm must next run: the earliest retry of a connected machine, the earliest
/// expiry, the outbox's earliest due call (`outbox::next_due`), or `fallback` (the
/// retention sweep), whichever is first.
pub fn next_wake(
    db: &impl Sql,
    ttl_ms: i64,
    online: impl Fn(&str) -> bool,
    fallback: i64,
) -> Result<i64, StoreError> {
    #[derive(Deserialize)]
    struct Due {
        machine_id: String,
        due: i64,
        oldest: i64,
    }
    let rows = db.query::<Due>(
        "SELECT machine_id, MIN(next_attempt_at) AS due, MIN(created_at) AS oldest
         FROM command_queue WHERE state IN ('pending', 'sent') GROUP BY machine_id",
        vec![],
    )?;
    let mut wake = crate::outbox::next_due(db)?.map_or(fallback, |due| due.min(fallback));
    for r in rows {
        wake = wake.min(r.oldest + ttl_ms);
        if online(&r.machine_id) {
            wake = wake.min(r.due);
        }
    }
    Ok(wake)
}

/// Retention: finished commands after 7 days; dedup rows after 7 days but never before the
/// command their update queued; reply mappings after 7 days; sessions after 30 days
/// without activity.
///
/// The rule between `seen_updates` and `command_queue`: a command's id is `tg-<update_id>`,
/// and an update's dedup row is pruned no earlier than that command's row. While either row
/// is there, a replay of the update cannot run the command again: the dedup row answers
/// "duplicate", and a finished command row is never pushed again (`router`). Deleting the
/// command rows first, in the same sweep, keeps the order within one run too.
pub fn prune(db: &impl Sql, now: i64) -> Result<(), StoreError> {
    const DAY: i64 = 24 * 60 * 60 * 1000;
    let week_ago = now - 7 * DAY;
    db.exec(
        "DELETE FROM command_queue WHERE state IN ('acked', 'done', 'failed', 'dead') AND updated_at < ?",
        vec![week_ago.into()],
    )?;
    db.exec(
        "DELETE FROM seen_updates WHERE seen_at < ? AND NOT EXISTS
            (SELECT 1 FROM command_queue WHERE command_id = 'tg-' || seen_updates.update_id)",
        vec![week_ago.into()],
    )?;
    db.exec(
        "DELETE FROM messages WHERE created_at < ?",
        vec![week_ago.into()],
    )?;
    let month_ago = now - 30 * DAY;
    db.exec(
        "DELETE FROM messages WHERE session_id IN (SELECT session_id FROM sessions WHERE last_activity < ?)",
        vec![month_ago.into()],
    )?;
    db.exec(
        "DELETE FROM sessions WHERE last_activity < ?",
        vec![month_ago.into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_setting() {
        assert_eq!(ttl_ms(""), COMMAND_TTL_MS);
        assert_eq!(ttl_ms(" 90 "), 90_000);
        assert_eq!(ttl_ms("0"), COMMAND_TTL_MS);
        assert_eq!(ttl_ms("-5"), COMMAND_TTL_MS);
        assert_eq!(ttl_ms("1.5"), COMMAND_TTL_MS);
        assert_eq!(ttl_ms("ten"), COMMAND_TTL_MS);
        assert_eq!(ttl_ms(&i64::MAX.to_string()), i64::MAX);
    }
    use crate::store::testing::MemDb;

    fn cmd(id: &str, machine: &str) -> NewCommand {
        NewCommand {
            command_id: id.into(),
            session_id: "s".into(),
            machine_id: machine.into(),
            chat_id: 42,
            source_message_id: Some(7),
            command: format!("echo {id}"),
            keys: None,
            project: None,
            file: None,
        }
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff_ms(1), 1_000);
        assert_eq!(backoff_ms(2), 2_000);
        assert_eq!(backoff_ms(5), 16_000);
        assert_eq!(backoff_ms(9), 256_000);
        assert_eq!(backoff_ms(10), BACKOFF_CAP_MS);
        assert_eq!(backoff_ms(1_000), BACKOFF_CAP_MS);
        assert_eq!(backoff_ms(0), 1_000);
    }

    #[test]
    fn lifecycle_pending_sent_acked_done() {
        let db = MemDb::migrated();
        assert!(enqueue(&db, &cmd("a", "m"), 0).unwrap());
        assert!(
            !enqueue(&db, &cmd("a", "m"), 5).unwrap(),
            "same id queues once"
        );
        assert_eq!(unacked_count(&db, "m").unwrap(), 1);
        assert_eq!(unacked_for_machine(&db, "m", Some(0), 10).unwrap().len(), 1);

        mark_sent(&db, "a", 100).unwrap();
        // Not due again until the backoff passes.
        assert!(unacked_for_machine(&db, "m", Some(1_099), 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            unacked_for_machine(&db, "m", Some(1_100), 10)
                .unwrap()
                .len(),
            1
        );
        // On connect everything unacked goes, due or not.
        assert_eq!(unacked_for_machine(&db, "m", None, 10).unwrap().len(), 1);
        mark_sent(&db, "a", 1_100).unwrap();
        assert_eq!(get(&db, "a").unwrap().unwrap().attempts, 2);

        // Another machine's ack does nothing.
        assert!(ack(&db, "a", "other", 1_200).unwrap().is_none());
        assert!(ack(&db, "a", "m", 1_200).unwrap().is_some());
        assert!(
            ack(&db, "a", "m", 1_300).unwrap().is_none(),
            "second ack is a no-op"
        );
        assert_eq!(unacked_count(&db, "m").unwrap(), 0);
        mark_sent(&db, "a", 1_400).unwrap();
        assert_eq!(
            get(&db, "a").unwrap().unwrap().state,
            "acked",
            "acked is never resent"
        );

        assert!(complete(&db, "a", "m", false, Some("pane gone"), 1_500)
            .unwrap()
            .is_some());
        assert!(complete(&db, "a", "m", true, None, 1_600)
            .unwrap()
            .is_none());
        assert_eq!(get(&db, "a").unwrap().unwrap().state, "failed");
    }

    #[test]
    fn oldest_first_and_per_machine() {
        let db = MemDb::migrated();
        enqueue(&db, &cmd("b", "m"), 20).unwrap();
        enqueue(&db, &cmd("a", "m"), 10).unwrap();
        enqueue(&db, &cmd("c", "n"), 5).unwrap();
        let ids: Vec<String> = unacked_for_machine(&db, "m", None, 10)
            .unwrap()
            .into_iter()
            .map(|q| q.command_id)
            .collect();
        assert_eq!(ids, vec!["a", "b"]);
    }

    #[test]
    fn expiry_and_wake() {
        let db = MemDb::migrated();
        enqueue(&db, &cmd("old", "off"), 0).unwrap();
        enqueue(&db, &cmd("new", "on"), 500).unwrap();
        mark_sent(&db, "new", 600).unwrap();
        // Wake: the online machine's retry at 1_600, before old's expiry at 1_000? No: 1_000.
        assert_eq!(
            next_wake(&db, 1_000, |m| m == "on", i64::MAX).unwrap(),
            1_000
        );
        let dead = expire(&db, 1_000, 1_000).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].command_id, "old");
        assert_eq!(get(&db, "old").unwrap().unwrap().state, "dead");
        assert_eq!(
            next_wake(&db, 1_000, |m| m == "on", i64::MAX).unwrap(),
            1_500
        );
        assert_eq!(
            next_wake(&db, 10_000, |m| m == "on", i64::MAX).unwrap(),
            1_600
        );
        assert_eq!(next_wake(&db, 10_000, |_| false, 9_999).unwrap(), 9_999);
        // A call waiting in the outbox wakes the alarm when it is due.
        let call = crate::telegram::BotCall::send(42, "x", None);
        crate::outbox::add_or_drop(&db, &[call], 7_000).unwrap();
        assert_eq!(next_wake(&db, 10_000, |_| false, 9_999).unwrap(), 7_000);
        // A late ack of a dead command still counts as delivered.
        assert!(ack(&db, "old", "off", 2_000).unwrap().is_some());
    }

    #[test]
    fn prune_keeps_live_rows() {
        let db = MemDb::migrated();
        enqueue(&db, &cmd("live", "m"), 0).unwrap();
        enqueue(&db, &cmd("done", "m"), 0).unwrap();
        complete(&db, "done", "m", true, None, 0).unwrap();
        let now = 8 * 24 * 60 * 60 * 1000;
        prune(&db, now).unwrap();
        assert!(
            get(&db, "live").unwrap().is_some(),
            "unacked rows wait for expiry, not pruning"
        );
        assert!(get(&db, "done").unwrap().is_none());
    }
}
