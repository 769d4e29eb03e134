//! The outbox: every Bot API call the router makes (notification parts, chat answers,
//! reactions, button toasts, notices) is stored here first, sent at once, and retried by the
//! RouterDO's alarm until Telegram answers.
//!
//! - **Order per chat.** Calls are grouped in lanes (one per chat; calls without a chat, such
//!   as `answerCallbackQuery`, share one lane per method). Only a lane's first pending call
//!   may be sent: a later call for a chat waits behind an earlier unsent one.
//! - **Retries.** A call Telegram could not take (unreachable, 5xx) is retried after 1 s,
//!   2 s, 4 s … up to [`BACKOFF_CAP_MS`] (30 s); a 429 holds its lane until `retry_after` has passed
//!   (never earlier, even when a new call arrives). A new call arriving for a lane tries its
//!   head at once otherwise ("eager"): a fresh request is a good moment to find Telegram back.
//! - **Refused for good.** 400 and 403 cannot succeed on a retry: the call is dropped with a
//!   log line and counted, and so are the later parts of the same notification (a message
//!   with a hole in the middle is worse than a clear 502 or log line).
//! - **Bounds.** At most [`MAX_PENDING_PER_CHAT`] pending calls per lane and [`MAX_PENDING`]
//!   in all; a notification past them is refused with 503, a chat answer is dropped and
//!   counted. A pending call older than [`MAX_AGE_MS`] is dropped and counted.
//! - **Mapping on send.** A notification part carries its session and token; the reply
//!   mapping (message → session) is recorded when Telegram gives the part's message id.
//! - **Topics on send.** A call about a session (a notification part, or one stored with
//!   [`add_for_session`]) gets the `message_thread_id` of the session's topic in its chat
//!   when it is sent ([`head`]), so a call stored before the topic exists still lands in it;
//!   a created topic's thread id is recorded from Telegram's answer. A message refused
//!   because of its topic (closed, deleted) goes again without it, to the chat; a topic
//!   call Telegram refuses (a chat without topics, nothing to change) loses no message and
//!   is not counted as dropped (`topics`).
//!
//! Delivery is at least once: Telegram may have delivered a call whose answer never reached
//! the Worker, and that call is sent again.
//!
//! Pure over [`Sql`]: the RouterDO takes a lane's [`head`], makes the call, and hands the
//! answer to [`record`], which says whether the lane may go on.

use ccr_protocol::api::OutboxStatus;
use serde::Deserialize;
use serde_json::Value;

use crate::store::{self, Sql, StoreError};
use crate::telegram::{ApiOutcome, BotCall};
use crate::topics;

/// Most pending calls one chat (lane) may have.
pub const MAX_PENDING_PER_CHAT: i64 = 1_000;
/// Most pending calls in all.
pub const MAX_PENDING: i64 = 5_000;
/// First retry delay.
pub const BACKOFF_BASE_MS: i64 = 1_000;
/// Longest retry delay: short, so delivery resumes within half a minute of Telegram's return.
pub const BACKOFF_CAP_MS: i64 = 30_000;
/// A pending call older than this is dropped (a day-old notification is news no more).
pub const MAX_AGE_MS: i64 = 24 * 60 * 60 * 1000;
/// Sent and dropped rows are kept this long (a notification's answer is read from them).
pub const KEEP_FINISHED_MS: i64 = 24 * 60 * 60 * 1000;

const SENT: &str = "sent";
const DROPPED: &str = "dropped";

/// Delay before the next attempt after `attempts` failed ones (1 s, 2 s, 4 s, … ≤ 30 s).
pub fn backoff_ms(attempts: i64) -> i64 {
    let exp = attempts.clamp(1, 20) - 1;
    (BACKOFF_BASE_MS << exp).min(BACKOFF_CAP_MS)
}

/// The lane of a call (its order key) and its chat, when it has one.
pub fn lane_of(call: &BotCall) -> (String, Option<i64>) {
    let chat = call.params.get("chat_id").and_then(|c| {
        c.as_i64()
            .or_else(|| c.as_str().and_then(|s| s.trim().parse().ok()))
    });
    match chat {
        Some(c) => (format!("chat:{c}"), Some(c)),
        None => (format!("method:{}", call.method), None),
    }
}

/// The reply mapping a notification part records once it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The session replies to the part go to.
    pub session_id: String,
    /// The notification's token.
    pub token: String,
}

/// A stored call.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Entry {
    /// Its id (the order within a lane).
    pub id: i64,
    /// Its lane.
    pub lane: String,
    /// Its chat, if any.
    pub chat_id: Option<i64>,
    /// The Bot API method.
    pub method: String,
    /// The JSON parameters, as text.
    pub params: String,
    /// The notification it is a part of, if any.
    pub group_id: Option<String>,
    /// Which part (0-based).
    pub part: i64,
    /// Of how many.
    pub parts: i64,
    /// The session to map the sent message to.
    pub map_session: Option<String>,
    /// The token to map it with.
    pub map_token: Option<String>,
    /// Failed attempts so far.
    pub attempts: i64,
    /// When it is due (ms).
    pub next_attempt_at: i64,
    /// 1 while a 429's `retry_after` holds it.
    pub held: i64,
    /// When it was stored (ms).
    pub created_at: i64,
    /// The session whose topic it goes to (besides a notification part's `map_session`).
    #[serde(default)]
    pub topic_session: Option<String>,
}

impl Entry {
    /// The parameters as JSON.
    pub fn params(&self) -> Value {
        serde_json::from_str(&self.params).unwrap_or(Value::Null)
    }

    /// Whether it may be sent at `now`: due, or (`eager`, a new call just arrived for its lane)
    /// not held by a 429.
    pub fn sendable(&self, now: i64, eager: bool) -> bool {
        self.next_attempt_at <= now || (eager && self.held == 0)
    }
}

const COLUMNS: &str = "id, lane, chat_id, method, params, group_id, part, parts, map_session, \
                       map_token, attempts, next_attempt_at, held, created_at, topic_session";

#[derive(Deserialize)]
struct N {
    n: i64,
}

fn count(db: &impl Sql, sql: &str, params: Vec<crate::store::SqlValue>) -> Result<i64, StoreError> {
    Ok(db.query::<N>(sql, params)?.first().map_or(0, |r| r.n))
}

/// Adds `by` to a running total.
fn bump(db: &impl Sql, name: &str, by: i64) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO counters (name, value) VALUES (?, ?)
         ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        vec![name.into(), by.into()],
    )
}

fn counter(db: &impl Sql, name: &str) -> Result<i64, StoreError> {
    count(
        db,
        "SELECT value AS n FROM counters WHERE name = ?",
        vec![name.into()],
    )
}

/// Why `n` more calls do not fit in `lane`, or `None` when they do.
pub fn no_room(db: &impl Sql, lane: &str, n: i64) -> Result<Option<String>, StoreError> {
    let in_lane = count(
        db,
        "SELECT count(*) AS n FROM outbox WHERE state = 'pending' AND lane = ?",
        vec![lane.into()],
    )?;
    if in_lane + n > MAX_PENDING_PER_CHAT {
        return Ok(Some(format!(
            "the outbox is full: {in_lane} messages already wait for Telegram in {lane} (at most {MAX_PENDING_PER_CHAT} per chat)"
        )));
    }
    let all = count(
        db,
        "SELECT count(*) AS n FROM outbox WHERE state = 'pending'",
        vec![],
    )?;
    if all + n > MAX_PENDING {
        return Ok(Some(format!(
            "the outbox is full: {all} messages already wait for Telegram (at most {MAX_PENDING} in all)"
        )));
    }
    Ok(None)
}

fn insert(
    db: &impl Sql,
    call: &BotCall,
    group: Option<(&str, i64, i64, &Mapping)>,
    topic_session: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    let (lane, chat) = lane_of(call);
    let (group_id, part, parts, session, token) = match group {
        Some((g, part, parts, m)) => (
            Some(g),
            part,
            parts,
            Some(m.session_id.as_str()),
            Some(m.token.as_str()),
        ),
        None => (None, 0, 1, None, None),
    };
    db.exec(
        "INSERT INTO outbox (lane, chat_id, method, params, group_id, part, parts, map_session,
            map_token, state, attempts, next_attempt_at, held, created_at, updated_at,
            topic_session)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, 0, ?, ?, ?)",
        vec![
            lane.into(),
            chat.into(),
            call.method.into(),
            call.params.to_string().into(),
            group_id.into(),
            part.into(),
            parts.into(),
            session.into(),
            token.into(),
            now.into(),
            now.into(),
            now.into(),
            topic_session.into(),
        ],
    )
}

/// Stores chat answers and notices. One that does not fit is dropped and counted; the
/// returned lines say so, for the log.
pub fn add_or_drop(db: &impl Sql, calls: &[BotCall], now: i64) -> Result<Vec<String>, StoreError> {
    add_calls(db, calls, None, now)
}

/// Stores calls about `session` (its topic's calls, notices about its commands) like
/// [`add_or_drop`]; each goes to the session's topic in its chat when it is sent.
pub fn add_for_session(
    db: &impl Sql,
    calls: &[BotCall],
    session: &str,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    add_calls(db, calls, Some(session), now)
}

fn add_calls(
    db: &impl Sql,
    calls: &[BotCall],
    session: Option<&str>,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let mut dropped = Vec::new();
    for call in calls {
        let (lane, _) = lane_of(call);
        match no_room(db, &lane, 1)? {
            Some(why) => {
                bump(db, DROPPED, 1)?;
                dropped.push(format!("Telegram {} dropped: {why}", call.method));
            }
            None => insert(db, call, None, session, now)?,
        }
    }
    Ok(dropped)
}

/// Stores a notification's parts (all or none): `Ok(Err(why))` when they do not fit.
pub fn add_notification(
    db: &impl Sql,
    calls: &[BotCall],
    group_id: &str,
    mapping: &Mapping,
    now: i64,
) -> Result<Result<(), String>, StoreError> {
    let Some(first) = calls.first() else {
        return Ok(Ok(()));
    };
    let (lane, _) = lane_of(first);
    let parts = i64::try_from(calls.len()).unwrap_or(i64::MAX);
    if let Some(why) = no_room(db, &lane, parts)? {
        return Ok(Err(why));
    }
    for (part, call) in (0..).zip(calls) {
        insert(db, call, Some((group_id, part, parts, mapping)), None, now)?;
    }
    Ok(Ok(()))
}

/// The first pending call of `lane`, when it may be sent at `now` (see [`Entry::sendable`]),
/// its parameters with the `message_thread_id` of its session's topic. A topic call whose
/// topic never came to be (the chat refused it) is dropped on the way, quietly: no message
/// is lost with it.
pub fn head(db: &impl Sql, lane: &str, now: i64, eager: bool) -> Result<Option<Entry>, StoreError> {
    loop {
        let Some(mut e) = db
            .query_one::<Entry>(
                &format!(
                    "SELECT {COLUMNS} FROM outbox WHERE state = 'pending' AND lane = ?
                     ORDER BY id LIMIT 1"
                ),
                vec![lane.into()],
            )?
            .filter(|e| e.sendable(now, eager))
        else {
            return Ok(None);
        };
        if with_thread(db, &mut e)? {
            return Ok(Some(e));
        }
        quiet_drop(db, &e, "no topic to act on", now)?;
    }
}

/// The session whose topic `e` goes to, and its chat.
fn topic_of(e: &Entry) -> Option<(i64, &str)> {
    let session = e.topic_session.as_deref().or(e.map_session.as_deref())?;
    Some((e.chat_id?, session))
}

/// Fills in `e`'s `message_thread_id` from its session's topic; false for a topic call
/// with no topic to act on.
fn with_thread(db: &impl Sql, e: &mut Entry) -> Result<bool, StoreError> {
    let Some((chat, session)) = topic_of(e) else {
        return Ok(true);
    };
    if e.method == topics::CREATE {
        return Ok(true);
    }
    let mut params = e.params();
    if params.get("message_thread_id").is_some() {
        return Ok(true);
    }
    let thread = if topics::acts_on_topic(&e.method) {
        match topics::thread_of(db, chat, session)? {
            Some(t) => t,
            None => return Ok(false),
        }
    } else {
        match topics::thread_to_send(db, chat, session)? {
            Some(t) => t,
            None => return Ok(true),
        }
    };
    if let Some(obj) = params.as_object_mut() {
        obj.insert("message_thread_id".to_owned(), thread.into());
    }
    e.params = params.to_string();
    Ok(true)
}

/// Marks `e` finished without counting it as dropped: a topic call Telegram refused costs
/// no message.
fn quiet_drop(db: &impl Sql, e: &Entry, why: &str, now: i64) -> Result<Recorded, StoreError> {
    db.exec(
        "UPDATE outbox SET state = 'dropped', last_error = ?, updated_at = ? WHERE id = ?",
        vec![why.into(), now.into(), e.id.into()],
    )?;
    Ok(Recorded::Dropped {
        why: why.to_owned(),
        count: 0,
    })
}

/// The heads of every lane (one pending call each, the oldest).
fn heads(db: &impl Sql) -> Result<Vec<Entry>, StoreError> {
    db.query::<Entry>(
        &format!(
            "SELECT {COLUMNS} FROM outbox WHERE id IN
                (SELECT MIN(id) FROM outbox WHERE state = 'pending' GROUP BY lane)
             ORDER BY id"
        ),
        vec![],
    )
}

/// Lanes whose first pending call is due at `now`, oldest first.
pub fn due_lanes(db: &impl Sql, now: i64) -> Result<Vec<String>, StoreError> {
    Ok(heads(db)?
        .into_iter()
        .filter(|e| e.next_attempt_at <= now)
        .map(|e| e.lane)
        .collect())
}

/// When the alarm must next run for the outbox: the earliest due lane head (a call behind
/// its lane's head waits for the head, so only heads count).
pub fn next_due(db: &impl Sql) -> Result<Option<i64>, StoreError> {
    Ok(heads(db)?.into_iter().map(|e| e.next_attempt_at).min())
}

/// What [`record`] did with Telegram's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Telegram took it (with the message's id when it made one).
    Sent {
        /// The new message's id.
        message_id: Option<i64>,
    },
    /// Not yet: due again at `at`.
    Retry {
        /// When (ms).
        at: i64,
    },
    /// Refused for good or too old: dropped (`count` calls, with the notification's later
    /// parts).
    Dropped {
        /// Why, for the log.
        why: String,
        /// How many calls were dropped.
        count: i64,
    },
}

impl Recorded {
    /// Whether the lane's next call may go now (its head is out of the way).
    pub fn lane_moves_on(&self) -> bool {
        !matches!(self, Recorded::Retry { .. })
    }
}

/// Records Telegram's answer to `entry`, made at `now`.
pub fn record(
    db: &impl Sql,
    entry: &Entry,
    outcome: &ApiOutcome,
    now: i64,
) -> Result<Recorded, StoreError> {
    let too_old = now - entry.created_at >= MAX_AGE_MS;
    match outcome {
        ApiOutcome::Ok(result) => {
            if let (true, Some((chat, session))) = (entry.method == topics::CREATE, topic_of(entry))
            {
                match result.get("message_thread_id").and_then(Value::as_i64) {
                    Some(thread) => topics::created(db, chat, session, thread, now)?,
                    None => topics::refused(db, chat, session, now)?,
                }
            }
            let message_id = result.get("message_id").and_then(Value::as_i64);
            if let (Some(session), Some(token), Some(chat)) =
                (&entry.map_session, &entry.map_token, entry.chat_id)
            {
                let Some(id) = message_id else {
                    return drop_group(db, entry, "Telegram's answer had no message_id", now);
                };
                store::record_message(db, chat, id, session, token, now)?;
            }
            db.exec(
                "UPDATE outbox SET state = 'sent', message_id = ?, updated_at = ? WHERE id = ?",
                vec![message_id.into(), now.into(), entry.id.into()],
            )?;
            bump(db, SENT, 1)?;
            Ok(Recorded::Sent { message_id })
        }
        ApiOutcome::Refused(why) => refused(db, entry, why, now),
        _ if too_old => drop_group(
            db,
            entry,
            &format!("not accepted by Telegram within 24 h: {}", outcome.why()),
            now,
        ),
        ApiOutcome::RetryAfter(secs) => {
            let wait = i64::try_from(*secs)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000)
                .max(BACKOFF_BASE_MS);
            retry_at(
                db,
                entry,
                now.saturating_add(wait),
                true,
                &outcome.why(),
                now,
            )
        }
        ApiOutcome::Failed(why) => {
            let at = now + backoff_ms(entry.attempts + 1);
            retry_at(db, entry, at, false, why, now)
        }
    }
}

/// Telegram refused `entry` for good: a topic call costs no message; a message refused
/// because of its topic goes again, to the chat; anything else is dropped.
fn refused(db: &impl Sql, entry: &Entry, why: &str, now: i64) -> Result<Recorded, StoreError> {
    let topic = topic_of(entry);
    if entry.method == topics::CREATE {
        if let Some((chat, session)) = topic {
            topics::refused(db, chat, session, now)?;
        }
        return quiet_drop(db, entry, &format!("no topic: {why}"), now);
    }
    let mut params = entry.params();
    let thread = params.get("message_thread_id").and_then(Value::as_i64);
    let refusal = topics::thread_refusal(why);
    if topics::acts_on_topic(&entry.method) {
        if let (Some(chat), Some(thread), Some(r)) = (entry.chat_id, thread, refusal) {
            topics::lost(db, chat, thread, r, now)?;
        }
        return quiet_drop(db, entry, why, now);
    }
    match (entry.chat_id, thread, refusal) {
        (Some(chat), Some(thread), Some(r)) => {
            topics::lost(db, chat, thread, r, now)?;
            if let Some(obj) = params.as_object_mut() {
                obj.remove("message_thread_id");
            }
            db.exec(
                "UPDATE outbox SET params = ?, next_attempt_at = ?, held = 0, last_error = ?,
                    updated_at = ? WHERE id = ?",
                vec![
                    params.to_string().into(),
                    now.into(),
                    format!("sent again without its topic: {why}").into(),
                    now.into(),
                    entry.id.into(),
                ],
            )?;
            Ok(Recorded::Retry { at: now })
        }
        _ => drop_group(db, entry, why, now),
    }
}

fn retry_at(
    db: &impl Sql,
    entry: &Entry,
    at: i64,
    held: bool,
    why: &str,
    now: i64,
) -> Result<Recorded, StoreError> {
    db.exec(
        "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, held = ?,
            last_error = ?, updated_at = ? WHERE id = ?",
        vec![
            at.into(),
            i64::from(held).into(),
            why.into(),
            now.into(),
            entry.id.into(),
        ],
    )?;
    Ok(Recorded::Retry { at })
}

/// Drops `entry` and, when it is a notification part, the parts after it.
fn drop_group(db: &impl Sql, entry: &Entry, why: &str, now: i64) -> Result<Recorded, StoreError> {
    if let (true, Some((chat, session))) = (entry.method == topics::CREATE, topic_of(entry)) {
        // Never answered (24 h): the session's next message asks for its topic again.
        topics::forget(db, chat, session, now)?;
    }
    let count = match &entry.group_id {
        Some(g) => {
            let n = count(
                db,
                "SELECT count(*) AS n FROM outbox WHERE state = 'pending' AND group_id = ? AND part > ?",
                vec![g.as_str().into(), entry.part.into()],
            )?;
            db.exec(
                "UPDATE outbox SET state = 'dropped', last_error = ?, updated_at = ?
                 WHERE state = 'pending' AND group_id = ? AND part > ?",
                vec![
                    format!("part {} was refused", entry.part + 1).into(),
                    now.into(),
                    g.as_str().into(),
                    entry.part.into(),
                ],
            )?;
            n + 1
        }
        None => 1,
    };
    db.exec(
        "UPDATE outbox SET state = 'dropped', last_error = ?, updated_at = ? WHERE id = ?",
        vec![why.into(), now.into(), entry.id.into()],
    )?;
    bump(db, DROPPED, count)?;
    Ok(Recorded::Dropped {
        why: why.to_owned(),
        count,
    })
}

/// Drops pending calls older than [`MAX_AGE_MS`], wherever they wait in their lane; returns
/// a log line for each.
pub fn expire(db: &impl Sql, now: i64) -> Result<Vec<String>, StoreError> {
    let old = db.query::<Entry>(
        &format!(
            "SELECT {COLUMNS} FROM outbox WHERE state = 'pending' AND created_at <= ? ORDER BY id"
        ),
        vec![(now - MAX_AGE_MS).into()],
    )?;
    let mut lines = Vec::new();
    for e in &old {
        if let Recorded::Dropped { why, count } =
            drop_group(db, e, "not accepted by Telegram within 24 h", now)?
        {
            lines.push(format!(
                "Telegram {} in {} dropped ({count} call(s)): {why}",
                e.method, e.lane
            ));
        }
    }
    Ok(lines)
}

/// Retention: sent and dropped rows after [`KEEP_FINISHED_MS`].
pub fn prune(db: &impl Sql, now: i64) -> Result<(), StoreError> {
    db.exec(
        "DELETE FROM outbox WHERE state IN ('sent', 'dropped') AND updated_at < ?",
        vec![(now - KEEP_FINISHED_MS).into()],
    )
}

/// What `GET /outbox` shows.
pub fn status(db: &impl Sql) -> Result<OutboxStatus, StoreError> {
    Ok(OutboxStatus {
        ok: true,
        pending: count(
            db,
            "SELECT count(*) AS n FROM outbox WHERE state = 'pending'",
            vec![],
        )?,
        sent: counter(db, SENT)?,
        dropped: counter(db, DROPPED)?,
        next_attempt_at: next_due(db)?,
    })
}

/// What became of a notification's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupState {
    /// Every part was sent: their message ids, in order.
    Sent(Vec<i64>),
    /// Some part still waits.
    Pending,
    /// Part `part` (1-based) of `parts` was refused with `why`; the parts before it were sent.
    Refused {
        /// Which part.
        part: i64,
        /// Of how many.
        parts: i64,
        /// Telegram's description.
        why: String,
    },
}

/// Reads a notification's parts.
pub fn group_state(db: &impl Sql, group_id: &str) -> Result<GroupState, StoreError> {
    #[derive(Deserialize)]
    struct Part {
        part: i64,
        parts: i64,
        state: String,
        message_id: Option<i64>,
        last_error: Option<String>,
    }
    let rows = db.query::<Part>(
        "SELECT part, parts, state, message_id, last_error FROM outbox
         WHERE group_id = ? ORDER BY part",
        vec![group_id.into()],
    )?;
    if let Some(r) = rows.iter().find(|r| r.state == DROPPED) {
        return Ok(GroupState::Refused {
            part: r.part + 1,
            parts: r.parts,
            why: r.last_error.clone().unwrap_or_default(),
        });
    }
    if rows.is_empty() || rows.iter().any(|r| r.state != SENT) {
        return Ok(GroupState::Pending);
    }
    Ok(GroupState::Sent(
        rows.iter().filter_map(|r| r.message_id).collect(),
    ))
}

#[cfg(test)]
pub(crate) mod testing {
    //! The RouterDO's flush loop over a fake Telegram, for tests.
    use super::*;

    /// Sends `lane`'s calls in order through `telegram` until it is empty or blocked; returns
    /// the methods and parameters sent, with what was recorded.
    pub fn flush(
        db: &impl Sql,
        lane: &str,
        now: i64,
        eager: bool,
        mut telegram: impl FnMut(&Entry) -> ApiOutcome,
    ) -> Vec<(Entry, Recorded)> {
        let mut done = Vec::new();
        while let Some(e) = head(db, lane, now, eager).unwrap() {
            let r = record(db, &e, &telegram(&e), now).unwrap();
            let moves_on = r.lane_moves_on();
            done.push((e, r));
            if !moves_on {
                break;
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::testing::flush;
    use super::*;
    use crate::store::{self, testing::MemDb};
    use serde_json::json;

    const CHAT: i64 = 42;
    const LANE: &str = "chat:42";

    fn msg(chat: i64, text: &str) -> BotCall {
        BotCall::send(chat, text, None)
    }

    fn ok(id: i64) -> ApiOutcome {
        ApiOutcome::Ok(json!({"message_id": id}))
    }

    fn down() -> ApiOutcome {
        ApiOutcome::Failed("cannot reach Telegram: connection refused".into())
    }

    fn text(e: &Entry) -> String {
        e.params()["text"].as_str().unwrap_or_default().to_owned()
    }

    fn mapping() -> Mapping {
        Mapping {
            session_id: "s1".into(),
            token: "tok".into(),
        }
    }

    fn db() -> MemDb {
        let db = MemDb::migrated();
        store::upsert_session(&db, "s1", "devbox", None, 0).unwrap();
        db
    }

    #[test]
    fn lanes() {
        assert_eq!(lane_of(&msg(-100, "x")), ("chat:-100".into(), Some(-100)));
        assert_eq!(
            lane_of(&BotCall::answer_callback("q", "t")),
            ("method:answerCallbackQuery".into(), None)
        );
        assert_eq!(lane_of(&BotCall::react(7, 1, "👍")).0, "chat:7");
    }

    #[test]
    fn backoff_doubles_to_half_a_minute() {
        assert_eq!(backoff_ms(1), 1_000);
        assert_eq!(backoff_ms(3), 4_000);
        assert_eq!(backoff_ms(6), BACKOFF_CAP_MS);
        assert_eq!(backoff_ms(1_000), BACKOFF_CAP_MS);
    }

    #[test]
    fn order_per_chat_survives_an_outage() {
        let db = db();
        add_or_drop(&db, &[msg(CHAT, "one"), msg(CHAT, "two")], 0).unwrap();
        add_or_drop(&db, &[msg(7, "other chat")], 0).unwrap();
        // Telegram is down: the head fails, the lane stops there.
        let tried = flush(&db, LANE, 0, true, |_| down());
        assert_eq!(tried.len(), 1);
        assert_eq!(text(&tried[0].0), "one");
        assert_eq!(tried[0].1, Recorded::Retry { at: 1_000 });
        // A later call waits behind the unsent one; nothing is due before the backoff ends.
        add_or_drop(&db, &[msg(CHAT, "three")], 10).unwrap();
        assert!(head(&db, LANE, 500, false).unwrap().is_none());
        assert_eq!(
            next_due(&db).unwrap(),
            Some(0),
            "the other chat's head is due"
        );
        assert_eq!(due_lanes(&db, 500).unwrap(), vec!["chat:7".to_string()]);
        flush(&db, "chat:7", 500, false, |_| ok(1));
        assert_eq!(next_due(&db).unwrap(), Some(1_000));
        // Back: everything goes, in order.
        let mut id = 10;
        let sent = flush(&db, LANE, 1_000, false, |_| {
            id += 1;
            ok(id)
        });
        let texts: Vec<String> = sent.iter().map(|(e, _)| text(e)).collect();
        assert_eq!(texts, vec!["one", "two", "three"]);
        assert!(sent.iter().all(|(_, r)| matches!(r, Recorded::Sent { .. })));
        assert_eq!(next_due(&db).unwrap(), None);
        let s = status(&db).unwrap();
        assert_eq!((s.pending, s.sent, s.dropped), (0, 4, 0));
    }

    #[test]
    fn backoff_grows_and_a_new_call_tries_at_once() {
        let db = db();
        add_or_drop(&db, &[msg(CHAT, "one")], 0).unwrap();
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let r = flush(&db, LANE, now, false, |_| down());
            let Recorded::Retry { at } = r[0].1 else {
                panic!("{r:?}")
            };
            waits.push(at - now);
            now = at;
        }
        assert_eq!(
            waits,
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        // Not due yet, but a new call for the chat tries the head at once.
        assert!(head(&db, LANE, now - 1, false).unwrap().is_none());
        assert!(head(&db, LANE, now - 1, true).unwrap().is_some());
    }

    #[test]
    fn retry_after_holds_the_lane_even_for_new_calls() {
        let db = db();
        add_or_drop(&db, &[msg(CHAT, "one")], 0).unwrap();
        let r = flush(&db, LANE, 0, true, |_| ApiOutcome::RetryAfter(30));
        assert_eq!(r[0].1, Recorded::Retry { at: 30_000 });
        assert!(head(&db, LANE, 29_999, true).unwrap().is_none());
        assert_eq!(next_due(&db).unwrap(), Some(30_000));
        let r = flush(&db, LANE, 30_000, false, |_| ok(5));
        assert_eq!(
            r[0].1,
            Recorded::Sent {
                message_id: Some(5)
            }
        );
    }

    #[test]
    fn refused_calls_are_dropped_counted_and_take_their_later_parts() {
        let db = db();
        let parts = [msg(CHAT, "p1"), msg(CHAT, "p2"), msg(CHAT, "p3")];
        add_notification(&db, &parts, "tok", &mapping(), 0)
            .unwrap()
            .unwrap();
        add_or_drop(&db, &[msg(CHAT, "after")], 0).unwrap();
        let mut answers = vec![
            ok(1),
            ApiOutcome::Refused("Forbidden: bot was blocked".into()),
            ok(2),
        ]
        .into_iter();
        let r = flush(&db, LANE, 0, true, |_| answers.next().unwrap());
        let texts: Vec<String> = r.iter().map(|(e, _)| text(e)).collect();
        assert_eq!(texts, vec!["p1", "p2", "after"], "p3 is never sent");
        assert_eq!(
            r[1].1,
            Recorded::Dropped {
                why: "Forbidden: bot was blocked".into(),
                count: 2
            }
        );
        assert_eq!(
            group_state(&db, "tok").unwrap(),
            GroupState::Refused {
                part: 2,
                parts: 3,
                why: "Forbidden: bot was blocked".into()
            }
        );
        let s = status(&db).unwrap();
        assert_eq!((s.pending, s.sent, s.dropped), (0, 2, 2));
    }

    #[test]
    fn the_reply_mapping_is_recorded_when_sent() {
        let db = db();
        add_notification(&db, &[msg(CHAT, "a"), msg(CHAT, "b")], "tok", &mapping(), 0)
            .unwrap()
            .unwrap();
        assert_eq!(group_state(&db, "tok").unwrap(), GroupState::Pending);
        flush(&db, LANE, 0, true, |_| down());
        let mapped: i64 =
            db.0.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
                .unwrap();
        assert_eq!(mapped, 0, "nothing is mapped before Telegram gives an id");
        let mut id = 70;
        flush(&db, LANE, 5_000, false, |_| {
            id += 1;
            ok(id)
        });
        assert_eq!(
            group_state(&db, "tok").unwrap(),
            GroupState::Sent(vec![71, 72])
        );
        let rows: Vec<(i64, i64, String, String)> = {
            let mut st =
                db.0.prepare(
                    "SELECT chat_id, message_id, session_id, token FROM messages ORDER BY message_id",
                )
                .unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(
            rows,
            vec![
                (CHAT, 71, "s1".into(), "tok".into()),
                (CHAT, 72, "s1".into(), "tok".into())
            ]
        );
        // An answer without a message id cannot be mapped: a clear failure, not a silent one.
        add_notification(&db, &[msg(CHAT, "c")], "tok2", &mapping(), 0)
            .unwrap()
            .unwrap();
        flush(&db, LANE, 6_000, true, |_| ApiOutcome::Ok(json!(true)));
        assert!(matches!(
            group_state(&db, "tok2").unwrap(),
            GroupState::Refused { part: 1, .. }
        ));
    }

    #[test]
    fn bounds_per_chat_and_in_all() {
        let db = db();
        let many: Vec<BotCall> = (0..MAX_PENDING_PER_CHAT)
            .map(|i| msg(CHAT, &i.to_string()))
            .collect();
        assert!(add_or_drop(&db, &many, 0).unwrap().is_empty());
        let dropped = add_or_drop(&db, &[msg(CHAT, "one more")], 0).unwrap();
        assert_eq!(dropped.len(), 1);
        assert!(
            dropped[0].contains("at most 1000 per chat"),
            "{}",
            dropped[0]
        );
        let refused = add_notification(&db, &[msg(CHAT, "n")], "t", &mapping(), 0).unwrap();
        assert!(refused.unwrap_err().contains("per chat"));
        // Another chat still has room, until the total bound.
        assert!(no_room(&db, "chat:7", 1).unwrap().is_none());
        db.exec(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
             INSERT INTO outbox (lane, method, params, state, next_attempt_at, created_at, updated_at)
             SELECT 'chat:' || (i % 4), 'sendMessage', '{}', 'pending', 0, 0, 0 FROM n",
            vec![(MAX_PENDING - MAX_PENDING_PER_CHAT).into()],
        )
        .unwrap();
        let total = no_room(&db, "chat:7", 1).unwrap().unwrap();
        assert!(total.contains("at most 5000 in all"), "{total}");
        assert_eq!(status(&db).unwrap().dropped, 1);
    }

    #[test]
    fn old_calls_expire_and_finished_rows_are_pruned() {
        let db = db();
        add_or_drop(&db, &[msg(CHAT, "old")], 0).unwrap();
        add_or_drop(&db, &[msg(CHAT, "new")], MAX_AGE_MS / 2).unwrap();
        flush(&db, LANE, 0, true, |_| down());
        let lines = expire(&db, MAX_AGE_MS).unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let next = head(&db, LANE, MAX_AGE_MS, true).unwrap().unwrap();
        assert_eq!(text(&next), "new");
        // A retry that fails past the age limit drops the call too.
        let r = flush(&db, LANE, MAX_AGE_MS / 2 + MAX_AGE_MS, true, |_| down());
        assert!(matches!(r[0].1, Recorded::Dropped { .. }));
        assert_eq!(status(&db).unwrap().dropped, 2);
        prune(&db, 3 * MAX_AGE_MS).unwrap();
        let rows: i64 =
            db.0.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
                .unwrap();
        assert_eq!(rows, 0);
    }
}
