//! A Telegram topic per session, in chats that have topics (a forum supergroup, or the bot's
//! private chat with topics enabled).
//!
//! - **Which chats.** Telegram is asked (`createForumTopic`) the first time a session needs a
//!   topic in a chat; a refusal ("the chat is not a forum", or any other 400/403) is
//!   remembered for the chat ([`RETRY_CHAT_AFTER_MS`], or until an update shows topics
//!   there) and the session's messages go to the chat as they do without topics. Asking is
//!   the one test that is right in both kinds of chat: a supergroup's `is_forum` says nothing
//!   about a private chat, `getMe`'s `has_topics_enabled` nothing about a group, and either
//!   can change after it was read.
//! - **Order.** The topic calls go through the outbox in the chat's lane, ahead of the
//!   session's first notification there; a call about a session carries it
//!   (`topic_session`, or a notification's `map_session`) and gets its `message_thread_id`
//!   when it is sent (`outbox::head`), so a message stored before its topic exists lands in
//!   it, and one whose topic was refused lands in the chat.
//! - **Life.** Named from the session's label and machine; renamed (`editForumTopic`) when a
//!   registration changes the name, closed when the session ends, reopened when it registers
//!   again (a resume).
//!
//! Pure over [`Sql`]: callers put the returned calls in the outbox with the session's name.

use serde::Deserialize;
use serde_json::json;

use crate::store::{Sql, StoreError};
use crate::telegram::BotCall;

/// Creates a topic; its answer has the `message_thread_id`.
pub const CREATE: &str = "createForumTopic";
/// Renames one.
pub const EDIT: &str = "editForumTopic";
/// Closes one.
pub const CLOSE: &str = "closeForumTopic";
/// Reopens one.
pub const REOPEN: &str = "reopenForumTopic";

/// Telegram's longest topic name (UTF-16 units: characters outside the BMP count twice).
pub const MAX_NAME_UNITS: usize = 128;
/// A chat that refused a topic is asked again after this long (topics may be enabled since).
pub const RETRY_CHAT_AFTER_MS: i64 = 24 * 60 * 60 * 1000;
/// Rows of sessions that no longer exist are kept this long after their last change.
pub const KEEP_MS: i64 = 30 * 24 * 60 * 60 * 1000;

const OPEN: &str = "open";
const CLOSED: &str = "closed";
const NONE: &str = "none";

/// Whether `method` acts on an existing topic (it needs the topic's thread id to be sent).
pub fn acts_on_topic(method: &str) -> bool {
    matches!(method, EDIT | CLOSE | REOPEN)
}

/// A session's topic name: "label · machine" (the machine alone without a label), cut to
/// Telegram's limit at a character boundary, with "…" when cut.
pub fn name(label: Option<&str>, machine: &str) -> String {
    let label = label.map(str::trim).filter(|l| !l.is_empty());
    let full = match label {
        Some(l) => format!("{l} · {machine}"),
        None => machine.to_owned(),
    };
    let full = full.trim();
    if full.encode_utf16().count() <= MAX_NAME_UNITS {
        return if full.is_empty() {
            "session".to_owned()
        } else {
            full.to_owned()
        };
    }
    let mut out = String::new();
    let mut units = 0;
    for c in full.chars() {
        if units + c.len_utf16() > MAX_NAME_UNITS - 1 {
            break;
        }
        units += c.len_utf16();
        out.push(c);
    }
    format!("{}…", out.trim_end())
}

/// A session's topic in one chat.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Topic {
    /// The chat.
    pub chat_id: i64,
    /// The session.
    pub session_id: String,
    /// Telegram's id for it; `None` while its creation waits in the outbox (or was refused).
    pub thread_id: Option<i64>,
    /// Its name as last asked for.
    pub name: String,
    /// `open`, `closed` (the session ended) or `none` (the chat refused it).
    pub state: String,
}

impl Topic {
    /// Whether its session's messages go to it.
    pub fn is_open(&self) -> bool {
        self.state == OPEN
    }
}

const COLUMNS: &str = "chat_id, session_id, thread_id, name, state";

/// The topic of `session` in `chat`, if one was asked for.
pub fn get(db: &impl Sql, chat: i64, session: &str) -> Result<Option<Topic>, StoreError> {
    db.query_one::<Topic>(
        &format!("SELECT {COLUMNS} FROM topics WHERE chat_id = ? AND session_id = ?"),
        vec![chat.into(), session.into()],
    )
}

/// The topic `thread` of `chat` is, if it is one of ours.
pub fn by_thread(db: &impl Sql, chat: i64, thread: i64) -> Result<Option<Topic>, StoreError> {
    db.query_one::<Topic>(
        &format!("SELECT {COLUMNS} FROM topics WHERE chat_id = ? AND thread_id = ? LIMIT 1"),
        vec![chat.into(), thread.into()],
    )
}

/// The thread a message about `session` in `chat` goes to: its topic while open.
pub fn thread_to_send(db: &impl Sql, chat: i64, session: &str) -> Result<Option<i64>, StoreError> {
    Ok(get(db, chat, session)?
        .filter(Topic::is_open)
        .and_then(|t| t.thread_id))
}

/// The thread a topic call (rename, close, reopen) about `session` in `chat` acts on.
pub fn thread_of(db: &impl Sql, chat: i64, session: &str) -> Result<Option<i64>, StoreError> {
    Ok(get(db, chat, session)?
        .filter(|t| t.state != NONE)
        .and_then(|t| t.thread_id))
}

#[derive(Deserialize)]
struct Refused {
    #[allow(dead_code)]
    chat_id: i64,
}

fn chat_refused(db: &impl Sql, chat: i64, now: i64) -> Result<bool, StoreError> {
    Ok(!db
        .query::<Refused>(
            "SELECT chat_id FROM topic_chats WHERE chat_id = ? AND refused_at > ?",
            vec![chat.into(), (now - RETRY_CHAT_AFTER_MS).into()],
        )?
        .is_empty())
}

fn set(
    db: &impl Sql,
    chat: i64,
    session: &str,
    name: &str,
    state: &str,
    now: i64,
) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO topics (chat_id, session_id, thread_id, name, state, updated_at)
         VALUES (?, ?, NULL, ?, ?, ?)
         ON CONFLICT (chat_id, session_id) DO UPDATE SET
            name = excluded.name, state = excluded.state, updated_at = excluded.updated_at",
        vec![
            chat.into(),
            session.into(),
            name.into(),
            state.into(),
            now.into(),
        ],
    )
}

fn create(chat: i64, name: &str) -> BotCall {
    BotCall {
        method: CREATE,
        params: json!({"chat_id": chat, "name": name}),
    }
}

/// A topic call; its `message_thread_id` is filled in when it is sent.
fn topic_call(method: &'static str, chat: i64, name: Option<&str>) -> BotCall {
    let params = match name {
        Some(n) => json!({"chat_id": chat, "name": n}),
        None => json!({"chat_id": chat}),
    };
    BotCall { method, params }
}

/// The calls that give `session` its topic in `chat` before a message about it goes there:
/// `createForumTopic` the first time (unless the chat refused topics lately), nothing once
/// it was asked for.
pub fn ensure(
    db: &impl Sql,
    chat: i64,
    session: &str,
    name: &str,
    now: i64,
) -> Result<Vec<BotCall>, StoreError> {
    match get(db, chat, session)? {
        Some(t) if t.state != NONE => Ok(vec![]),
        _ if chat_refused(db, chat, now)? => Ok(vec![]),
        _ => {
            set(db, chat, session, name, OPEN, now)?;
            db.exec(
                "UPDATE topics SET thread_id = NULL WHERE chat_id = ? AND session_id = ?",
                vec![chat.into(), session.into()],
            )?;
            Ok(vec![create(chat, name)])
        }
    }
}

/// The calls a registration of `session` (named `name`) makes in `chat`: its topic created,
/// or reopened (a resume) and renamed when its name changed.
pub fn on_register(
    db: &impl Sql,
    chat: i64,
    session: &str,
    name: &str,
    now: i64,
) -> Result<Vec<BotCall>, StoreError> {
    let Some(t) = get(db, chat, session)?.filter(|t| t.state != NONE) else {
        return ensure(db, chat, session, name, now);
    };
    let mut calls = Vec::new();
    if t.state == CLOSED {
        calls.push(topic_call(REOPEN, chat, None));
    }
    if t.name != name {
        calls.push(topic_call(EDIT, chat, Some(name)));
    }
    if !calls.is_empty() {
        set(db, chat, session, name, OPEN, now)?;
    }
    Ok(calls)
}

/// The calls the end of `session` makes: each of its open topics closed.
pub fn on_unregister(db: &impl Sql, session: &str, now: i64) -> Result<Vec<BotCall>, StoreError> {
    let open = db.query::<Topic>(
        &format!(
            "SELECT {COLUMNS} FROM topics WHERE session_id = ? AND state = 'open' ORDER BY chat_id"
        ),
        vec![session.into()],
    )?;
    let mut calls = Vec::new();
    for t in open {
        set(db, t.chat_id, session, &t.name, CLOSED, now)?;
        calls.push(topic_call(CLOSE, t.chat_id, None));
    }
    Ok(calls)
}

/// Telegram created the topic of `session` in `chat`: its thread id. The chat has topics.
pub fn created(
    db: &impl Sql,
    chat: i64,
    session: &str,
    thread: i64,
    now: i64,
) -> Result<(), StoreError> {
    db.exec(
        "UPDATE topics SET thread_id = ?, updated_at = ? WHERE chat_id = ? AND session_id = ?",
        vec![thread.into(), now.into(), chat.into(), session.into()],
    )?;
    seen_topics(db, chat)
}

/// Someone reopened the topic of `session` in `chat` by hand (a message arrived in it):
/// the session's messages go there again.
pub fn reopened(db: &impl Sql, chat: i64, session: &str, now: i64) -> Result<(), StoreError> {
    db.exec(
        "UPDATE topics SET state = 'open', updated_at = ?
         WHERE chat_id = ? AND session_id = ? AND thread_id IS NOT NULL",
        vec![now.into(), chat.into(), session.into()],
    )
}

/// The creation of the topic of `session` in `chat` was never answered (given up after
/// 24 h): the session has no topic there, and its next message asks again.
pub fn forget(db: &impl Sql, chat: i64, session: &str, now: i64) -> Result<(), StoreError> {
    db.exec(
        "UPDATE topics SET state = 'none', updated_at = ?
         WHERE chat_id = ? AND session_id = ? AND thread_id IS NULL",
        vec![now.into(), chat.into(), session.into()],
    )
}

/// Telegram refused to create the topic of `session` in `chat`: the session's messages go
/// to the chat, and the chat is not asked again for a while.
pub fn refused(db: &impl Sql, chat: i64, session: &str, now: i64) -> Result<(), StoreError> {
    db.exec(
        "UPDATE topics SET state = 'none', thread_id = NULL, updated_at = ?
         WHERE chat_id = ? AND session_id = ?",
        vec![now.into(), chat.into(), session.into()],
    )?;
    db.exec(
        "INSERT INTO topic_chats (chat_id, refused_at) VALUES (?, ?)
         ON CONFLICT (chat_id) DO UPDATE SET refused_at = excluded.refused_at",
        vec![chat.into(), now.into()],
    )
}

/// An update showed topics in `chat` (a forum, or a message in a topic): it may be asked
/// again at once.
pub fn seen_topics(db: &impl Sql, chat: i64) -> Result<(), StoreError> {
    db.exec(
        "DELETE FROM topic_chats WHERE chat_id = ?",
        vec![chat.into()],
    )
}

/// Why a message into a topic was refused, when the topic is the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRefusal {
    /// Someone closed it.
    Closed,
    /// It was deleted (or never was).
    Missing,
}

/// Reads Telegram's description of a refused call for a topic problem.
pub fn thread_refusal(why: &str) -> Option<ThreadRefusal> {
    let why = why.to_ascii_lowercase();
    if why.contains("topic_closed") {
        Some(ThreadRefusal::Closed)
    } else if why.contains("thread not found")
        || why.contains("topic_deleted")
        || why.contains("topic_id_invalid")
    {
        Some(ThreadRefusal::Missing)
    } else {
        None
    }
}

/// Telegram refused a message into `thread` of `chat` because of the topic: stop sending
/// there. A closed one stays known (a resume reopens it); a missing one is forgotten, so
/// the session's next notification asks for a new topic.
pub fn lost(
    db: &impl Sql,
    chat: i64,
    thread: i64,
    why: ThreadRefusal,
    now: i64,
) -> Result<(), StoreError> {
    let sql = match why {
        ThreadRefusal::Closed => {
            "UPDATE topics SET state = 'closed', updated_at = ? WHERE chat_id = ? AND thread_id = ?"
        }
        ThreadRefusal::Missing => {
            "UPDATE topics SET state = 'none', thread_id = NULL, updated_at = ?
             WHERE chat_id = ? AND thread_id = ?"
        }
    };
    db.exec(sql, vec![now.into(), chat.into(), thread.into()])
}

/// Forgets the topics of sessions gone for [`KEEP_MS`] and old chat refusals.
pub fn prune(db: &impl Sql, now: i64) -> Result<(), StoreError> {
    db.exec(
        "DELETE FROM topics WHERE updated_at < ?
            AND session_id NOT IN (SELECT session_id FROM sessions)",
        vec![(now - KEEP_MS).into()],
    )?;
    db.exec(
        "DELETE FROM topic_chats WHERE refused_at <= ?",
        vec![(now - RETRY_CHAT_AFTER_MS).into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{self, testing::flush, Mapping, Recorded};
    use crate::store::testing::MemDb;
    use crate::telegram::ApiOutcome;
    use serde_json::Value;

    const CHAT: i64 = -1_000_042;

    fn db() -> MemDb {
        MemDb::migrated()
    }

    fn lane() -> String {
        format!("chat:{CHAT}")
    }

    fn note(db: &MemDb, session: &str, text: &str, token: &str, now: i64) {
        let calls = ensure(db, CHAT, session, "api · devbox", now).unwrap();
        outbox::add_for_session(db, &calls, session, now).unwrap();
        let mapping = Mapping {
            session_id: session.into(),
            token: token.into(),
        };
        outbox::add_notification(db, &[BotCall::send(CHAT, text, None)], token, &mapping, now)
            .unwrap()
            .unwrap();
    }

    /// A Telegram with topics in `CHAT`: topics get thread 500, messages ids from 1.
    fn forum(e: &outbox::Entry) -> ApiOutcome {
        match e.method.as_str() {
            CREATE => ApiOutcome::Ok(json!({"message_thread_id": 500, "name": "x"})),
            m if acts_on_topic(m) => ApiOutcome::Ok(json!(true)),
            _ => ApiOutcome::Ok(json!({"message_id": e.id, "chat": {"id": CHAT}})),
        }
    }

    fn no_topics(e: &outbox::Entry) -> ApiOutcome {
        match e.method.as_str() {
            CREATE => ApiOutcome::Refused("Bad Request: the chat is not a forum".into()),
            _ => ApiOutcome::Ok(json!({"message_id": e.id, "chat": {"id": CHAT}})),
        }
    }

    fn sent(done: &[(outbox::Entry, Recorded)]) -> Vec<(String, Value)> {
        done.iter()
            .map(|(e, _)| {
                (
                    e.method.clone(),
                    e.params()
                        .get("message_thread_id")
                        .cloned()
                        .unwrap_or(Value::Null),
                )
            })
            .collect()
    }

    #[test]
    fn names_fit_telegram_and_are_never_cut_inside_a_character() {
        assert_eq!(name(Some("api"), "devbox"), "api · devbox");
        assert_eq!(name(Some("  "), "devbox"), "devbox");
        assert_eq!(name(None, "devbox"), "devbox");
        let exact = "a".repeat(MAX_NAME_UNITS - " · m".chars().count());
        assert_eq!(
            name(Some(&exact), "m"),
            format!("{exact} · m"),
            "at the limit: whole"
        );
        for label in [
            "é".repeat(300),
            "😀".repeat(100),
            format!("a{}", "😀".repeat(100)),
        ] {
            let n = name(Some(&label), "devbox");
            assert!(n.encode_utf16().count() <= MAX_NAME_UNITS, "{n}");
            assert!(n.ends_with('…'), "{n}");
            let kept = n.trim_end_matches('…');
            assert!(label.starts_with(kept), "whole characters only: {n}");
        }
    }

    #[test]
    fn a_notification_stored_before_its_topic_exists_lands_in_it() {
        let db = db();
        note(&db, "s1", "first", "t1", 1);
        // The second notification asks for no second topic.
        note(&db, "s1", "second", "t2", 2);
        let done = flush(&db, &lane(), 3, true, forum);
        assert_eq!(
            sent(&done),
            vec![
                (CREATE.into(), Value::Null),
                ("sendMessage".into(), json!(500)),
                ("sendMessage".into(), json!(500)),
            ]
        );
        let t = get(&db, CHAT, "s1").unwrap().unwrap();
        assert_eq!((t.thread_id, t.state.as_str()), (Some(500), "open"));
        assert_eq!(by_thread(&db, CHAT, 500).unwrap().unwrap().session_id, "s1");
    }

    #[test]
    fn a_chat_without_topics_gets_messages_as_before_and_is_not_asked_again_for_a_day() {
        let db = db();
        note(&db, "s1", "first", "t1", 1);
        let done = flush(&db, &lane(), 3, true, no_topics);
        assert_eq!(
            sent(&done),
            vec![
                (CREATE.into(), Value::Null),
                ("sendMessage".into(), Value::Null)
            ]
        );
        assert!(matches!(done[0].1, Recorded::Dropped { count: 0, .. }));
        let status = outbox::status(&db).unwrap();
        assert_eq!(
            (status.sent, status.dropped),
            (1, 0),
            "the refusal lost no message"
        );
        assert_eq!(get(&db, CHAT, "s1").unwrap().unwrap().state, "none");
        // Another session in the same chat: not asked, until a day has passed.
        assert!(ensure(&db, CHAT, "s2", "x", 10).unwrap().is_empty());
        assert!(on_register(&db, CHAT, "s1", "x", 10).unwrap().is_empty());
        assert_eq!(
            ensure(&db, CHAT, "s2", "x", RETRY_CHAT_AFTER_MS + 10)
                .unwrap()
                .len(),
            1
        );
        // Or until an update shows topics there.
        let db2 = MemDb::migrated();
        note(&db2, "s1", "first", "t1", 1);
        flush(&db2, &lane(), 3, true, no_topics);
        seen_topics(&db2, CHAT).unwrap();
        assert_eq!(ensure(&db2, CHAT, "s1", "x", 20).unwrap()[0].method, CREATE);
    }

    #[test]
    fn register_renames_unregister_closes_a_resume_reopens() {
        let db = db();
        let reg = |name: &str, now: i64| {
            let calls = on_register(&db, CHAT, "s1", name, now).unwrap();
            outbox::add_for_session(&db, &calls, "s1", now).unwrap();
            calls.iter().map(|c| c.method).collect::<Vec<_>>()
        };
        assert_eq!(reg("api · devbox", 1), vec![CREATE]);
        assert_eq!(
            reg("api · devbox", 2),
            Vec::<&str>::new(),
            "same name: nothing"
        );
        assert_eq!(reg("web · devbox", 3), vec![EDIT]);
        let done = flush(&db, &lane(), 4, true, forum);
        assert_eq!(
            sent(&done),
            vec![(CREATE.into(), Value::Null), (EDIT.into(), json!(500))]
        );
        assert_eq!(done[1].0.params()["name"], "web · devbox");

        let calls = on_unregister(&db, "s1", 5).unwrap();
        assert_eq!(
            calls.iter().map(|c| c.method).collect::<Vec<_>>(),
            vec![CLOSE]
        );
        outbox::add_for_session(&db, &calls, "s1", 5).unwrap();
        assert!(
            on_unregister(&db, "s1", 6).unwrap().is_empty(),
            "closed once"
        );
        assert_eq!(
            thread_to_send(&db, CHAT, "s1").unwrap(),
            None,
            "closed: not sent to"
        );
        assert_eq!(reg("web · devbox", 7), vec![REOPEN]);
        assert_eq!(thread_to_send(&db, CHAT, "s1").unwrap(), Some(500));
        let done = flush(&db, &lane(), 8, true, forum);
        assert_eq!(
            sent(&done),
            vec![(CLOSE.into(), json!(500)), (REOPEN.into(), json!(500))]
        );
    }

    #[test]
    fn topic_calls_without_a_topic_are_dropped_quietly() {
        let db = db();
        note(&db, "s1", "first", "t1", 1);
        let calls = on_unregister(&db, "s1", 2).unwrap();
        outbox::add_for_session(&db, &calls, "s1", 2).unwrap();
        let done = flush(&db, &lane(), 3, true, no_topics);
        // The close had no topic to act on: never sent, not counted.
        assert_eq!(
            sent(&done),
            vec![
                (CREATE.into(), Value::Null),
                ("sendMessage".into(), Value::Null)
            ]
        );
        assert_eq!(outbox::status(&db).unwrap().pending, 0);
        assert_eq!(outbox::status(&db).unwrap().dropped, 0);
    }

    #[test]
    fn a_message_refused_because_of_its_topic_goes_to_the_chat() {
        for (refusal, state) in [
            ("Bad Request: message thread not found", "none"),
            ("Bad Request: TOPIC_CLOSED", "closed"),
        ] {
            let db = db();
            note(&db, "s1", "first", "t1", 1);
            flush(&db, &lane(), 2, true, forum);
            note(&db, "s1", "second", "t2", 3);
            let mut refused_once = false;
            let done = flush(&db, &lane(), 4, true, |e| {
                if e.params().get("message_thread_id").is_some() && !refused_once {
                    refused_once = true;
                    return ApiOutcome::Refused(refusal.into());
                }
                forum(e)
            });
            assert_eq!(done[0].1, Recorded::Retry { at: 4 });
            let done = flush(&db, &lane(), 4, false, forum);
            assert_eq!(sent(&done), vec![("sendMessage".into(), Value::Null)]);
            assert_eq!(outbox::status(&db).unwrap().dropped, 0);
            assert_eq!(get(&db, CHAT, "s1").unwrap().unwrap().state, state);
            // A deleted topic is asked for again by the next notification.
            assert_eq!(
                ensure(&db, CHAT, "s1", "x", 5).unwrap().len(),
                usize::from(state == "none")
            );
        }
    }

    #[test]
    fn a_creation_never_answered_is_asked_again_by_the_next_message() {
        let db = db();
        note(&db, "s1", "first", "t1", 0);
        let down = |_: &outbox::Entry| ApiOutcome::Failed("down".into());
        flush(&db, &lane(), 1, true, down);
        for line in outbox::expire(&db, outbox::MAX_AGE_MS + 1).unwrap() {
            assert!(line.contains("within 24 h"), "{line}");
        }
        assert_eq!(get(&db, CHAT, "s1").unwrap().unwrap().state, "none");
        assert_eq!(
            ensure(&db, CHAT, "s1", "x", outbox::MAX_AGE_MS + 2).unwrap()[0].method,
            CREATE
        );
    }

    #[test]
    fn refusals_that_name_the_topic() {
        assert_eq!(
            thread_refusal("Bad Request: TOPIC_CLOSED"),
            Some(ThreadRefusal::Closed)
        );
        assert_eq!(
            thread_refusal("Bad Request: message thread not found"),
            Some(ThreadRefusal::Missing)
        );
        assert_eq!(
            thread_refusal("Bad Request: TOPIC_DELETED"),
            Some(ThreadRefusal::Missing)
        );
        assert_eq!(thread_refusal("Bad Request: chat not found"), None);
    }

    #[test]
    fn prune_keeps_the_topics_of_live_sessions() {
        let db = db();
        crate::store::upsert_session(&db, "live", "devbox", None, 0).unwrap();
        ensure(&db, CHAT, "live", "a", 0).unwrap();
        ensure(&db, CHAT, "ended", "b", 0).unwrap();
        prune(&db, KEEP_MS + 1).unwrap();
        assert!(get(&db, CHAT, "live").unwrap().is_some());
        assert!(get(&db, CHAT, "ended").unwrap().is_none());
    }
}
