//! Talking to a session like a chat: the bot commands that act on a session's pane instead
//! of typing text into it — `/esc` (Escape: stops Claude Code's current turn) and
//! `/keys NAME…` (named keys from the allow-list `wire::keys::NAMES`, never free-form tmux
//! key names). Pure: reads a message's text and says which keys to queue or why not; the
//! router finds the session and queues them like a command (durable, exactly once).
//!
//! `/peek` asks the session's machine for the pane's screen: not queued (a screen from an
//! hour ago is no answer), but remembered in `peeks` until the answer arrives or the
//! timeout passes, either of which answers the chat.

use ccr_protocol::wire::{bot, keys};
use ccr_protocol::PEEK_TIMEOUT_MS;
use serde::Deserialize;

use crate::store::{Sql, StoreError};
use crate::telegram::{self, escape_html, BotCall};
use crate::topics;

/// Most UTF-16 units of screen text in a `/peek` answer (Telegram allows 4096 per message;
/// the rest is the heading, the `<pre>` tags and the escapes' growth).
const PEEK_SCREEN_BUDGET: usize = 3_000;

/// A `/peek` the RouterDO sends to a connected machine as a `peekRequest` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeekAsk {
    /// The request's id (`peek-<update id>`).
    pub request_id: String,
    /// The session.
    pub session_id: String,
    /// Its machine.
    pub machine_id: String,
}

#[derive(Debug, Deserialize)]
struct PendingPeek {
    machine_id: String,
    chat_id: i64,
    reply_to: i64,
    session_id: String,
}

impl PendingPeek {
    /// The answer: a reply to the `/peek`, in the session's topic when it has one.
    fn answer(&self, db: &impl Sql, text: &str) -> Result<BotCall, StoreError> {
        let call = BotCall::send(self.chat_id, text, Some(self.reply_to));
        Ok(
            match topics::thread_to_send(db, self.chat_id, &self.session_id)? {
                Some(thread) => call.with_param("message_thread_id", thread.into()),
                None => call,
            },
        )
    }
}

/// Remembers a `/peek` until its answer or its deadline.
pub fn record_peek(
    db: &impl Sql,
    ask: &PeekAsk,
    chat_id: i64,
    reply_to: i64,
    now: i64,
) -> Result<(), StoreError> {
    db.exec(
        "INSERT OR IGNORE INTO peeks (request_id, session_id, machine_id, chat_id, reply_to,
            deadline) VALUES (?, ?, ?, ?, ?, ?)",
        vec![
            ask.request_id.as_str().into(),
            ask.session_id.as_str().into(),
            ask.machine_id.as_str().into(),
            chat_id.into(),
            reply_to.into(),
            (now + PEEK_TIMEOUT_MS).into(),
        ],
    )
}

/// The chat's answer to machine `machine`'s `peekResult`; `None` when no such question is
/// waiting (answered already, timed out, or asked of another machine).
pub fn peek_answered(
    db: &impl Sql,
    request_id: &str,
    machine: &str,
    screen: Option<&str>,
    error: Option<&str>,
) -> Result<Option<BotCall>, StoreError> {
    let pending = db.query::<PendingPeek>(
        "SELECT machine_id, chat_id, reply_to, session_id FROM peeks WHERE request_id = ?",
        vec![request_id.into()],
    )?;
    let Some(p) = pending.into_iter().find(|p| p.machine_id == machine) else {
        return Ok(None);
    };
    db.exec(
        "DELETE FROM peeks WHERE request_id = ?",
        vec![request_id.into()],
    )?;
    let text = match (screen, error) {
        (Some(screen), _) => screen_message(screen),
        (None, error) => format!(
            "Could not show the screen: {}",
            telegram::machine_text(error.unwrap_or("the machine gave no reason"))
        ),
    };
    Ok(Some(p.answer(db, &text)?))
}

/// The chat answers of every `/peek` whose deadline has passed (and forgets them).
pub fn expire_peeks(db: &impl Sql, now: i64) -> Result<Vec<BotCall>, StoreError> {
    let due = db.query::<PendingPeek>(
        "SELECT machine_id, chat_id, reply_to, session_id FROM peeks WHERE deadline <= ?",
        vec![now.into()],
    )?;
    db.exec("DELETE FROM peeks WHERE deadline <= ?", vec![now.into()])?;
    due.iter()
        .map(|p| {
            let text = format!(
                "No screen: {} did not answer within {} s.",
                escape_html(&p.machine_id),
                PEEK_TIMEOUT_MS / 1000
            );
            p.answer(db, &text)
        })
        .collect()
}

/// The earliest deadline of a waiting `/peek`, for the alarm.
pub fn next_peek_deadline(db: &impl Sql) -> Result<Option<i64>, StoreError> {
    #[derive(Deserialize)]
    struct Row {
        deadline: Option<i64>,
    }
    Ok(db
        .query_one::<Row>("SELECT min(deadline) AS deadline FROM peeks", vec![])?
        .and_then(|r| r.deadline))
}

/// A screen as one message: its last lines that fit, HTML-escaped, in a `<pre>` block.
pub fn screen_message(screen: &str) -> String {
    let lines: Vec<&str> = screen.lines().collect();
    let mut kept: Vec<&str> = Vec::new();
    let mut units = 0;
    for line in lines.iter().rev() {
        let cost = escape_html(line).encode_utf16().count() + 1;
        if units + cost > PEEK_SCREEN_BUDGET {
            break;
        }
        units += cost;
        kept.push(line);
    }
    kept.reverse();
    let body = kept.join("\n");
    if body.trim().is_empty() {
        return "The screen is empty.".into();
    }
    format!("<pre>{}</pre>", escape_html(&body))
}

/// What a message asks of a session's pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaneIntent {
    /// Press these keys (allowed names, in order).
    Keys(Vec<&'static str>),
    /// Refused before anything is queued: the answer for the chat (HTML).
    Refused(String),
    /// `/peek`: show the pane's screen.
    Peek,
}

impl PaneIntent {
    /// The keys as stored in the queue's `keys` column (space-separated names).
    pub fn stored(keys: &[&str]) -> String {
        keys.join(" ")
    }
}

/// The usage line of `/keys`.
pub fn keys_usage() -> String {
    format!(
        "Usage, in a reply to a notification: <code>/keys NAME…</code>, at most {} keys from: {}.",
        keys::MAX,
        keys::NAMES.join(" ")
    )
}

/// `Some` when `text` is `/esc` or `/keys …` (with or without `@botname`); `None` for any
/// other text, which the router handles as before.
pub fn parse(text: &str) -> Option<PaneIntent> {
    let (name, args) = telegram::bot_command(text)?;
    if name == bot::ESC {
        return Some(if args.trim().is_empty() {
            PaneIntent::Keys(vec!["Escape"])
        } else {
            PaneIntent::Refused(
                "<code>/esc</code> takes nothing after it: it presses Escape in the session \
                 of the notification you reply to."
                    .into(),
            )
        });
    }
    if name == bot::PEEK {
        return Some(PaneIntent::Peek);
    }
    if name != bot::KEYS {
        return None;
    }
    let words: Vec<&str> = args.split_whitespace().collect();
    if words.is_empty() {
        return Some(PaneIntent::Refused(keys_usage()));
    }
    if words.len() > keys::MAX {
        return Some(PaneIntent::Refused(format!(
            "Not sent: at most {} keys at a time. {}",
            keys::MAX,
            keys_usage()
        )));
    }
    let mut names = Vec::with_capacity(words.len());
    for word in words {
        match keys::canonical(word) {
            Some(name) => names.push(name),
            None => {
                return Some(PaneIntent::Refused(format!(
                    "Not sent: <code>{}</code> is not a key I can press. {}",
                    telegram::escape_html(&word.chars().take(32).collect::<String>()),
                    keys_usage()
                )))
            }
        }
    }
    Some(PaneIntent::Keys(names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esc_is_escape() {
        assert_eq!(parse("/esc"), Some(PaneIntent::Keys(vec!["Escape"])));
        assert_eq!(
            parse("/esc@ccr_bot"),
            Some(PaneIntent::Keys(vec!["Escape"]))
        );
        assert!(matches!(parse("/esc now"), Some(PaneIntent::Refused(_))));
    }

    #[test]
    fn keys_come_from_the_allow_list_only() {
        assert_eq!(
            parse("/keys down Down enter 2 C-c"),
            Some(PaneIntent::Keys(vec!["Down", "Down", "Enter", "2", "C-c"]))
        );
        for bad in [
            "/keys",
            "/keys   ",
            "/keys Enter F1",
            "/keys <b>x</b>",
            "/keys send-keys",
        ] {
            let Some(PaneIntent::Refused(why)) = parse(bad) else {
                panic!("{bad} was not refused");
            };
            assert!(why.contains("Enter Escape Tab"), "{why}");
            assert!(!why.contains("<b>x"), "escaped: {why}");
        }
        let many = format!("/keys {}", "Up ".repeat(keys::MAX + 1));
        assert!(matches!(parse(&many), Some(PaneIntent::Refused(_))));
        assert_eq!(PaneIntent::stored(&["Down", "Enter"]), "Down Enter");
    }

    #[test]
    fn peek_is_asked_answered_once_and_times_out() {
        use crate::store::testing::MemDb;
        assert_eq!(parse("/peek"), Some(PaneIntent::Peek));
        let db = MemDb::migrated();
        let ask = |id: &str| PeekAsk {
            request_id: id.into(),
            session_id: "s1".into(),
            machine_id: "devbox".into(),
        };
        record_peek(&db, &ask("peek-1"), 42, 7, 1_000).unwrap();
        record_peek(&db, &ask("peek-2"), 42, 8, 2_000).unwrap();
        assert_eq!(
            next_peek_deadline(&db).unwrap(),
            Some(1_000 + PEEK_TIMEOUT_MS)
        );
        // Another machine cannot answer it.
        assert!(peek_answered(&db, "peek-1", "other", Some("x"), None)
            .unwrap()
            .is_none());
        let call = peek_answered(&db, "peek-1", "devbox", Some("a <b>\n$ "), None)
            .unwrap()
            .unwrap();
        assert_eq!(call.params["text"], "<pre>a &lt;b&gt;\n$ </pre>");
        assert_eq!(call.params["reply_parameters"]["message_id"], 7);
        assert!(call.params.get("message_thread_id").is_none(), "no topic");
        // A machine's error of a whole frame's length is cut to fit one message.
        record_peek(&db, &ask("peek-long"), 42, 9, 1_000).unwrap();
        let long = "&".repeat(ccr_protocol::MAX_FRAME_BYTES);
        let call = peek_answered(&db, "peek-long", "devbox", None, Some(&long))
            .unwrap()
            .unwrap();
        let text = call.params["text"].as_str().unwrap();
        assert!(text.encode_utf16().count() <= ccr_protocol::TELEGRAM_MAX_TEXT);
        assert!(text.starts_with("Could not show the screen: &amp;") && text.ends_with('…'));
        // With a topic, the answers go to it.
        crate::topics::ensure(&db, 42, "s1", "api", 1_500).unwrap();
        crate::topics::created(&db, 42, "s1", 500, 1_500).unwrap();
        assert!(peek_answered(&db, "peek-1", "devbox", Some("x"), None)
            .unwrap()
            .is_none());
        assert!(expire_peeks(&db, 2_000 + PEEK_TIMEOUT_MS - 1)
            .unwrap()
            .is_empty());
        let late = expire_peeks(&db, 2_000 + PEEK_TIMEOUT_MS).unwrap();
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].params["message_thread_id"], 500);
        assert!(late[0].params["text"]
            .as_str()
            .unwrap()
            .contains("did not answer"));
        assert_eq!(next_peek_deadline(&db).unwrap(), None);
    }

    #[test]
    fn a_screen_is_trimmed_to_its_last_lines() {
        let big: String = (0..1000).map(|i| format!("row {i} & more\n")).collect();
        let text = screen_message(&big);
        assert!(text.starts_with("<pre>row "));
        assert!(text.ends_with("row 999 &amp; more</pre>"));
        assert!(text.encode_utf16().count() < 4096);
        assert_eq!(screen_message("\n  \n"), "The screen is empty.");
    }

    #[test]
    fn other_text_is_not_ours() {
        for text in ["hello", "/cmd tok Escape", "/sessions", "/keysmith", "esc"] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
