//! Telegram Bot API: the update types the router reads, text formatting and splitting, and
//! the answers it gets back.
//!
//! Updates are an envelope (`update_id`) plus the kinds we use; any other kind still parses
//! (its fields are ignored), so a new Telegram update type never breaks the webhook.

use ccr_protocol::wire::bot;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use ccr_protocol::api::ButtonAction;
use ccr_protocol::socket::{FileKind, FileRef};
use ccr_protocol::TELEGRAM_MAX_TEXT;

/// One webhook update.
#[derive(Debug, Clone, Deserialize)]
pub struct Update {
    /// Telegram's id, increasing; the dedup key.
    pub update_id: i64,
    /// A new message.
    #[serde(default)]
    pub message: Option<Message>,
    /// An edited message.
    #[serde(default)]
    pub edited_message: Option<Message>,
    /// A button press.
    #[serde(default)]
    pub callback_query: Option<CallbackQuery>,
}

/// A chat.
#[derive(Debug, Clone, Deserialize)]
pub struct Chat {
    /// The chat id (negative for groups).
    pub id: i64,
    /// A supergroup with topics.
    #[serde(default)]
    pub is_forum: Option<bool>,
}

/// A user.
#[derive(Debug, Clone, Deserialize)]
pub struct User {
    /// The user id.
    pub id: i64,
    /// `@username`, when set.
    #[serde(default)]
    pub username: Option<String>,
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
}

/// A message (only the fields the router reads).
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// Its id within the chat.
    pub message_id: i64,
    /// Where it was sent.
    pub chat: Chat,
    /// Who sent it (absent for channel posts).
    #[serde(default)]
    pub from: Option<User>,
    /// The text, for text messages.
    #[serde(default)]
    pub text: Option<String>,
    /// The message this one replies to.
    #[serde(default)]
    pub reply_to_message: Option<Box<Message>>,
    /// The topic (or, outside forums, the reply thread) it belongs to.
    #[serde(default)]
    pub message_thread_id: Option<i64>,
    /// Sent in a topic (`message_thread_id` is then the topic's).
    #[serde(default)]
    pub is_topic_message: Option<bool>,
    /// A photo: the sizes Telegram made of it, smallest first.
    #[serde(default)]
    pub photo: Option<Vec<PhotoSize>>,
    /// A file sent as a document.
    #[serde(default)]
    pub document: Option<Attachment>,
    /// A voice note.
    #[serde(default)]
    pub voice: Option<Attachment>,
    /// The caption of a photo, document or voice note.
    #[serde(default)]
    pub caption: Option<String>,
}

/// One size of a photo.
#[derive(Debug, Clone, Deserialize)]
pub struct PhotoSize {
    /// The id to download it with.
    pub file_id: String,
    /// Width in pixels.
    #[serde(default)]
    pub width: u64,
    /// Height in pixels.
    #[serde(default)]
    pub height: u64,
    /// Bytes, when Telegram says.
    #[serde(default)]
    pub file_size: Option<u64>,
}

/// A document or voice note.
#[derive(Debug, Clone, Deserialize)]
pub struct Attachment {
    /// The id to download it with.
    pub file_id: String,
    /// The sender's file name (documents).
    #[serde(default)]
    pub file_name: Option<String>,
    /// Bytes, when Telegram says.
    #[serde(default)]
    pub file_size: Option<u64>,
}

impl Message {
    /// The file this message carries, if any: a photo's largest size (by pixels, then
    /// bytes; Telegram lists them smallest first), a document, or a voice note.
    pub fn attachment(&self) -> Option<FileRef> {
        if let Some(sizes) = &self.photo {
            let largest = sizes
                .iter()
                .max_by_key(|p| (p.width.saturating_mul(p.height), p.file_size))?;
            return Some(FileRef {
                file_id: largest.file_id.clone(),
                size: largest.file_size,
                kind: FileKind::Photo,
                name: None,
            });
        }
        let (a, kind) = match (&self.document, &self.voice) {
            (Some(d), _) => (d, FileKind::Document),
            (None, Some(v)) => (v, FileKind::Voice),
            (None, None) => return None,
        };
        Some(FileRef {
            file_id: a.file_id.clone(),
            size: a.file_size,
            kind,
            name: a.file_name.clone(),
        })
    }

    /// The topic it was sent in, if any (a reply thread outside a forum is not a topic).
    pub fn topic(&self) -> Option<i64> {
        self.message_thread_id
            .filter(|_| self.is_topic_message == Some(true))
    }

    /// The message it replies to, unless that is only its topic's first message (Telegram
    /// marks every message in a topic as a reply to the topic's creation).
    pub fn replied_to(&self) -> Option<&Message> {
        self.reply_to_message
            .as_deref()
            .filter(|parent| Some(parent.message_id) != self.topic())
    }
}

/// A button press on an inline keyboard.
#[derive(Debug, Clone, Deserialize)]
pub struct CallbackQuery {
    /// Id to answer with `answerCallbackQuery`.
    pub id: String,
    /// Who pressed.
    pub from: User,
    /// The message the keyboard is on.
    #[serde(default)]
    pub message: Option<Message>,
    /// The button's data (`cmd:<token>:<action>`).
    #[serde(default)]
    pub data: Option<String>,
}

/// What a text message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextIntent {
    /// `/start` or `/help`.
    Help,
    /// `/sessions`.
    Sessions,
    /// `/cmd <token> <text>` (text may be empty: Enter).
    Cmd {
        /// The notification's token.
        token: String,
        /// The command text.
        text: String,
    },
    /// `/cmd` without a token.
    CmdUsage,
    /// Anything else: plain text (a command when it replies to a notification).
    Plain(String),
}

/// Splits a bot command's first word into name (without `/` and `@botname`) and the rest.
pub fn bot_command(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix('/')?;
    let (word, args) = match rest.find(char::is_whitespace) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let name = word.split('@').next().unwrap_or(word);
    Some((name, args))
}

/// A command's arguments as their first word and the rest: white space before the word is
/// skipped, exactly one separator after it is dropped, and the rest is kept verbatim (a
/// command or prompt keeps its own spacing and lines). `("", "")` when there are none.
pub fn first_word(args: &str) -> (&str, &str) {
    let args = args.trim_start();
    match args.find(char::is_whitespace) {
        Some(i) => {
            let (first, rest) = args.split_at(i);
            let rest = rest
                .strip_prefix(|c: char| c.is_whitespace())
                .unwrap_or(rest);
            (first, rest)
        }
        None => (args, ""),
    }
}

/// Reads what a text message asks for.
pub fn parse_text(text: &str) -> TextIntent {
    match bot_command(text) {
        Some((c, _)) if c == bot::START || c == bot::HELP => TextIntent::Help,
        Some((c, _)) if c == bot::SESSIONS => TextIntent::Sessions,
        Some((c, args)) if c == bot::CMD => {
            let (token, text) = first_word(args);
            if token.is_empty() {
                TextIntent::CmdUsage
            } else {
                TextIntent::Cmd {
                    token: token.to_owned(),
                    text: text.to_owned(),
                }
            }
        }
        _ => TextIntent::Plain(text.to_owned()),
    }
}

/// Parses callback data `cmd:<token>:<action>`.
pub fn parse_callback(data: &str) -> Option<(String, ButtonAction)> {
    let rest = data.strip_prefix("cmd:")?;
    let (token, action) = rest.split_once(':')?;
    if token.is_empty() {
        return None;
    }
    Some((token.to_owned(), ButtonAction::from_name(action)?))
}

/// Callback data for a button (≤ 64 bytes for tokens ≤ 40 bytes).
pub fn callback_data(token: &str, action: ButtonAction) -> String {
    format!("cmd:{token}:{}", action.name())
}

/// The inline keyboard for `actions`, all on one row; `None` when there are none.
pub fn keyboard(token: &str, actions: &[ButtonAction]) -> Option<Value> {
    if actions.is_empty() {
        return None;
    }
    let row: Vec<Value> = actions
        .iter()
        .map(|a| json!({"text": a.caption(), "callback_data": callback_data(token, *a)}))
        .collect();
    Some(json!({ "inline_keyboard": [row] }))
}

/// At most `max` characters, with `…` when cut (never mid-character).
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Most characters of what a machine said (an error, a window name) that a chat message
/// shows. A socket frame may carry 64 KB of it; escaped, even this many of the worst
/// characters (`&` → `&amp;`) leave room in Telegram's 4096 for the words around it.
pub const MAX_MACHINE_TEXT_CHARS: usize = 500;

/// Text a machine sent, for a chat message: cut to [`MAX_MACHINE_TEXT_CHARS`] and escaped. A
/// message over Telegram's limit is refused, and the chat would never be told.
pub fn machine_text(text: &str) -> String {
    escape_html(&truncate(text, MAX_MACHINE_TEXT_CHARS))
}

/// Escapes text for `parse_mode: HTML` (Telegram needs `<`, `>` and `&` escaped).
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '&' => out.push_str("&amp;"),
        c => out.push(c),
    }
}

/// How many UTF-16 code units (Telegram's unit) `c` takes once escaped.
fn escaped_units(c: char) -> usize {
    match c {
        '<' | '>' => 4,
        '&' => 5,
        c => c.len_utf16(),
    }
}

/// Escapes `text` and splits it into parts that each fit `limit` UTF-16 units after
/// `header` (already HTML) is put before the first part. Never splits a character or an
/// escape; prefers to split after a newline in the second half of a part.
pub fn split_escaped(header: &str, text: &str, limit: usize) -> Vec<String> {
    let header_units = header.encode_utf16().count();
    let mut parts: Vec<String> = Vec::new();
    let mut current = String::from(header);
    let mut units = header_units;
    // Byte position in `current` just after the last newline, and its unit count.
    let mut last_break: Option<(usize, usize)> = None;
    for c in text.chars() {
        let u = escaped_units(c);
        if units + u > limit && units > 0 {
            match last_break.filter(|(_, bu)| *bu * 2 >= limit) {
                Some((byte, bu)) => {
                    let tail = current.split_off(byte);
                    parts.push(std::mem::replace(&mut current, tail));
                    units -= bu;
                }
                None => {
                    parts.push(std::mem::take(&mut current));
                    units = 0;
                }
            }
            last_break = None;
        }
        push_escaped(&mut current, c);
        units += u;
        if c == '\n' {
            last_break = Some((current.len(), units));
        }
    }
    if !current.is_empty() || parts.is_empty() {
        parts.push(current);
    }
    parts
}

/// Formats a notification: the label in bold on its own line, then the text, split to fit.
pub fn format_notification(label: Option<&str>, text: &str) -> Vec<String> {
    let header = match label.filter(|l| !l.is_empty()) {
        Some(l) => format!("<b>{}</b>\n", escape_html(l)),
        None => String::new(),
    };
    split_escaped(&header, text, TELEGRAM_MAX_TEXT)
}

/// What a Bot API call answered.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiOutcome {
    /// `ok: true` with its `result`.
    Ok(Value),
    /// 429: wait this many seconds.
    RetryAfter(u64),
    /// A failure worth retrying (Telegram unreachable, 5xx, an answer that is not JSON),
    /// with Telegram's description or the reason.
    Failed(String),
    /// Refused for good (400 Bad Request, 403 Forbidden): sending it again cannot succeed.
    Refused(String),
}

impl ApiOutcome {
    /// The description, for a log line or an error answer.
    pub fn why(&self) -> String {
        match self {
            ApiOutcome::Ok(_) => "ok".into(),
            ApiOutcome::RetryAfter(secs) => {
                format!("Too Many Requests: Telegram asks to retry after {secs} s")
            }
            ApiOutcome::Failed(why) | ApiOutcome::Refused(why) => why.clone(),
        }
    }
}

/// The Bot API URL of `method` (it holds the token: never log it); an empty `base` is
/// Telegram's own. Without a token there is nothing to call.
pub fn api_url(base: &str, token: &str, method: &str) -> Result<String, ApiOutcome> {
    if token.is_empty() {
        return Err(ApiOutcome::Failed(
            "the Worker has no TELEGRAM_BOT_TOKEN configured".into(),
        ));
    }
    let base = if base.is_empty() {
        bot::DEFAULT_API_BASE
    } else {
        base.trim_end_matches('/')
    };
    Ok(format!("{base}/bot{token}/{method}"))
}

/// The reason a Bot API call could not be made, from the runtime's error, with the bot token
/// (which a runtime may quote from the URL) blotted out.
pub fn unreachable(error: &str, token: &str) -> String {
    let error = if token.is_empty() {
        error.to_owned()
    } else {
        error.replace(token, "<token>")
    };
    format!("cannot reach Telegram: {error}")
}

/// What to do with a Bot API answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Retry {
    /// Wait this many seconds, then call again.
    Wait(u64),
    /// This is the call's outcome.
    Done(ApiOutcome),
}

/// A 429 is waited out while the waits of one call stay within `budget` seconds in total
/// (`waited` so far); past it, the 429 is the outcome (the outbox then holds the call until
/// `retry_after` has passed). Any other answer is final.
pub fn retry(outcome: ApiOutcome, waited: u64, budget: u64) -> Retry {
    match outcome {
        ApiOutcome::RetryAfter(secs) if waited.checked_add(secs).is_some_and(|t| t <= budget) => {
            Retry::Wait(secs.max(1))
        }
        other => Retry::Done(other),
    }
}

/// The answer body of a Bot API call.
#[derive(Debug, Deserialize)]
struct ApiAnswer {
    ok: bool,
    #[serde(default)]
    result: Value,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    parameters: Option<ApiParameters>,
}

#[derive(Debug, Deserialize)]
struct ApiParameters {
    #[serde(default)]
    retry_after: Option<u64>,
}

/// Reads a Bot API answer (status + body text).
pub fn read_answer(status: u16, body: &str) -> ApiOutcome {
    match serde_json::from_str::<ApiAnswer>(body) {
        Ok(a) if a.ok => ApiOutcome::Ok(a.result),
        Ok(a) => {
            if let Some(secs) = a.parameters.and_then(|p| p.retry_after) {
                return ApiOutcome::RetryAfter(secs);
            }
            let why = a
                .description
                .unwrap_or_else(|| format!("Telegram answered HTTP {status}"));
            match a.error_code.unwrap_or(i64::from(status)) {
                400 | 403 => ApiOutcome::Refused(why),
                _ => ApiOutcome::Failed(why),
            }
        }
        Err(_) if status == 429 => ApiOutcome::RetryAfter(1),
        Err(_) => ApiOutcome::Failed(format!("Telegram answered HTTP {status} with no JSON")),
    }
}

/// A Bot API call to make: method and JSON parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BotCall {
    /// e.g. `sendMessage`.
    pub method: &'static str,
    /// The JSON body.
    pub params: Value,
}

impl BotCall {
    /// `sendMessage` with HTML text, optionally replying to a message.
    pub fn send(chat_id: i64, html: &str, reply_to: Option<i64>) -> Self {
        let params = json!({
            "chat_id": chat_id,
            "text": html,
            "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": true},
        });
        let call = BotCall {
            method: "sendMessage",
            params,
        };
        match reply_to {
            Some(id) => call.with_param(
                "reply_parameters",
                json!({"message_id": id, "allow_sending_without_reply": true}),
            ),
            None => call,
        }
    }

    /// Adds or replaces one parameter.
    pub fn with_param(mut self, key: &str, value: Value) -> Self {
        if let Some(obj) = self.params.as_object_mut() {
            obj.insert(key.to_owned(), value);
        }
        self
    }

    /// `answerCallbackQuery` with a short toast.
    pub fn answer_callback(id: &str, text: &str) -> Self {
        BotCall {
            method: "answerCallbackQuery",
            params: json!({"callback_query_id": id, "text": text}),
        }
    }

    /// `setMessageReaction` with one emoji.
    pub fn react(chat_id: i64, message_id: i64, emoji: &str) -> Self {
        BotCall {
            method: "setMessageReaction",
            params: json!({
                "chat_id": chat_id,
                "message_id": message_id,
                "reaction": [{"type": "emoji", "emoji": emoji}],
            }),
        }
    }
}

/// Parses a comma-separated id list (`ALLOWED_CHAT_IDS`); bad entries are skipped.
pub fn parse_id_list(text: &str) -> Vec<i64> {
    text.split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_word_drops_one_separator_and_keeps_the_rest_verbatim() {
        assert_eq!(first_word(""), ("", ""));
        assert_eq!(first_word("   "), ("", ""));
        assert_eq!(first_word(" tok"), ("tok", ""));
        assert_eq!(first_word(" tok  two  spaces"), ("tok", " two  spaces"));
        assert_eq!(
            first_word("tok\nline one\nline two"),
            ("tok", "line one\nline two")
        );
        assert_eq!(first_word("ü\u{a0}rest"), ("ü", "rest"));
    }

    #[test]
    fn parses_real_updates() {
        let reply: Update = serde_json::from_value(json!({
            "update_id": 10,
            "message": {
                "message_id": 5, "date": 1, "chat": {"id": 42, "type": "private"},
                "from": {"id": 7, "is_bot": false, "first_name": "A"},
                "text": "run the tests",
                "reply_to_message": {"message_id": 3, "date": 1, "chat": {"id": 42, "type": "private"},
                    "from": {"id": 1, "is_bot": true, "first_name": "bot"}, "text": "done"}
            }
        }))
        .unwrap();
        let m = reply.message.unwrap();
        assert_eq!(m.reply_to_message.unwrap().message_id, 3);
        assert_eq!(m.text.as_deref(), Some("run the tests"));

        let photo: Update = serde_json::from_value(json!({
            "update_id": 11,
            "message": {"message_id": 6, "date": 1, "chat": {"id": 42, "type": "private"},
                "photo": [{"file_id": "x", "file_unique_id": "y", "width": 1, "height": 1}],
                "caption": "look"}
        }))
        .unwrap();
        assert!(photo.message.unwrap().text.is_none());

        // A kind this build does not know still parses.
        let other: Update =
            serde_json::from_value(json!({"update_id": 12, "poll": {"id": "p"}})).unwrap();
        assert!(other.message.is_none() && other.callback_query.is_none());
    }

    #[test]
    fn text_intents() {
        assert_eq!(parse_text("/start"), TextIntent::Help);
        assert_eq!(parse_text("/help@ccr_bot"), TextIntent::Help);
        assert_eq!(parse_text("/sessions"), TextIntent::Sessions);
        assert_eq!(
            parse_text("/cmd abc git status  --short"),
            TextIntent::Cmd {
                token: "abc".into(),
                text: "git status  --short".into()
            }
        );
        assert_eq!(
            parse_text("/cmd abc"),
            TextIntent::Cmd {
                token: "abc".into(),
                text: String::new()
            }
        );
        assert_eq!(parse_text("/cmd"), TextIntent::CmdUsage);
        assert_eq!(parse_text("/cmd   "), TextIntent::CmdUsage);
        assert_eq!(parse_text("yes"), TextIntent::Plain("yes".into()));
        assert_eq!(parse_text("/exit"), TextIntent::Plain("/exit".into()));
    }

    #[test]
    fn callbacks() {
        assert_eq!(
            parse_callback("cmd:tok:yes"),
            Some(("tok".into(), ButtonAction::Yes))
        );
        assert_eq!(parse_callback("cmd:tok:rm"), None);
        assert_eq!(parse_callback("cmd::yes"), None);
        assert_eq!(parse_callback("other"), None);
        let data = callback_data("abcdefghijklmnop", ButtonAction::Continue);
        assert!(data.len() <= 64);
        let kb = keyboard("t", &ButtonAction::ALL).unwrap();
        assert_eq!(kb["inline_keyboard"][0].as_array().unwrap().len(), 6);
        assert!(keyboard("t", &[]).is_none());
    }

    #[test]
    fn escapes_html() {
        assert_eq!(escape_html("a<b>&c*_"), "a&lt;b&gt;&amp;c*_");
        assert_eq!(escape_html("héllo 👋 привет"), "héllo 👋 привет");
    }

    #[test]
    fn splits_without_breaking_chars_or_escapes() {
        // Every part fits, escapes stay whole, and joining the parts gives the escaped text.
        let text = "a&<".repeat(3000) + &"👋".repeat(3000) + "ü";
        let parts = split_escaped("<b>x</b>\n", &text, 4096);
        assert!(parts.len() > 1);
        for p in &parts {
            assert!(p.encode_utf16().count() <= 4096);
            assert!(!p.ends_with('&') && !p.ends_with("&l") && !p.ends_with("&am"));
        }
        assert_eq!(parts.concat(), format!("<b>x</b>\n{}", escape_html(&text)));
        for p in &parts[1..] {
            assert!(!p.starts_with("lt;") && !p.starts_with("amp;") && !p.starts_with("gt;"));
        }
    }

    #[test]
    fn prefers_newlines_and_keeps_short_text_whole() {
        assert_eq!(split_escaped("", "short", 4096), vec!["short"]);
        assert_eq!(split_escaped("", "", 4096), vec![""]);
        let text = format!("{}\n{}", "a".repeat(3000), "b".repeat(3000));
        let parts = split_escaped("", &text, 4096);
        assert_eq!(parts[0], format!("{}\n", "a".repeat(3000)));
        assert_eq!(parts[1], "b".repeat(3000));
    }

    #[test]
    fn reads_answers() {
        assert_eq!(
            read_answer(200, r#"{"ok":true,"result":{"message_id":5}}"#),
            ApiOutcome::Ok(json!({"message_id":5}))
        );
        assert_eq!(
            read_answer(
                429,
                r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 3","parameters":{"retry_after":3}}"#
            ),
            ApiOutcome::RetryAfter(3)
        );
        assert_eq!(
            read_answer(
                400,
                r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#
            ),
            ApiOutcome::Refused("Bad Request: chat not found".into())
        );
        assert_eq!(
            read_answer(
                403,
                r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#
            ),
            ApiOutcome::Refused("Forbidden: bot was blocked by the user".into())
        );
        assert_eq!(
            read_answer(
                500,
                r#"{"ok":false,"error_code":500,"description":"Internal Server Error"}"#
            ),
            ApiOutcome::Failed("Internal Server Error".into())
        );
        assert!(matches!(read_answer(502, "<html>"), ApiOutcome::Failed(_)));
    }

    #[test]
    fn unreachable_never_quotes_the_token() {
        assert_eq!(
            unreachable(
                "fetch to https://x/bot1:SECRET/sendMessage failed",
                "1:SECRET"
            ),
            "cannot reach Telegram: fetch to https://x/bot<token>/sendMessage failed"
        );
        assert_eq!(unreachable("refused", ""), "cannot reach Telegram: refused");
    }

    #[test]
    fn api_urls() {
        assert_eq!(
            api_url("", "123:abc", "sendMessage"),
            Ok("https://api.telegram.org/bot123:abc/sendMessage".into())
        );
        assert_eq!(
            api_url("http://127.0.0.1:9/", "t", "getMe"),
            Ok("http://127.0.0.1:9/bott/getMe".into())
        );
        assert_eq!(
            api_url("", "", "getMe"),
            Err(ApiOutcome::Failed(
                "the Worker has no TELEGRAM_BOT_TOKEN configured".into()
            ))
        );
    }

    #[test]
    fn retries_stay_within_the_budget() {
        assert_eq!(retry(ApiOutcome::RetryAfter(3), 0, 10), Retry::Wait(3));
        assert_eq!(retry(ApiOutcome::RetryAfter(0), 0, 10), Retry::Wait(1));
        assert_eq!(retry(ApiOutcome::RetryAfter(4), 6, 10), Retry::Wait(4));
        assert_eq!(
            retry(ApiOutcome::RetryAfter(5), 6, 10),
            Retry::Done(ApiOutcome::RetryAfter(5))
        );
        assert_eq!(
            retry(ApiOutcome::RetryAfter(u64::MAX), 1, 10),
            Retry::Done(ApiOutcome::RetryAfter(u64::MAX))
        );
        let ok = ApiOutcome::Ok(json!({"message_id": 1}));
        assert_eq!(retry(ok.clone(), 10, 10), Retry::Done(ok));
        let failed = ApiOutcome::Failed("Bad Request".into());
        assert_eq!(retry(failed.clone(), 0, 10), Retry::Done(failed));
    }

    #[test]
    fn id_lists() {
        assert_eq!(parse_id_list(""), Vec::<i64>::new());
        assert_eq!(parse_id_list("42, -100123,x"), vec![42, -100123]);
    }
}
