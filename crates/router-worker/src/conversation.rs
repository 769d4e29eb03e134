//! Talking to a session like a chat: the bot commands that act on a session's pane instead
//! of typing text into it — `/esc` (Escape: stops Claude Code's current turn) and
//! `/keys NAME…` (named keys from the allow-list `wire::keys::NAMES`, never free-form tmux
//! key names). Pure: reads a message's text and says which keys to queue or why not; the
//! router finds the session and queues them like a command (durable, exactly once).

use ccr_protocol::wire::{bot, keys};

use crate::telegram;

/// What a message asks of a session's pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaneIntent {
    /// Press these keys (allowed names, in order).
    Keys(Vec<&'static str>),
    /// Refused before anything is queued: the answer for the chat (HTML).
    Refused(String),
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
    fn other_text_is_not_ours() {
        for text in ["hello", "/cmd tok Escape", "/sessions", "/keysmith", "esc"] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
