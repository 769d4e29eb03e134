//! What the router does with a Telegram update: dedup, allow-lists, finding the session a
//! reply belongs to, queueing the command, and the chat answers to send.
//!
//! Pure over the [`Sql`] trait: the RouterDO applies the result (sends the Bot API calls,
//! pushes queued commands to connected sockets).

use ccr_protocol::api::ButtonAction;
use ccr_protocol::socket::{FileKind, FileRef};
use ccr_protocol::{validate, MAX_COMMAND_BYTES, MAX_FILE_BYTES};
use serde::Deserialize;

use crate::approvals;
use crate::conversation::{self, PaneIntent};
use crate::launch;
use crate::outbox;
use crate::preview;
use crate::queue::{self, NewCommand, MAX_UNACKED_PER_MACHINE};
use crate::store::{self, Sql, StoreError};
use crate::telegram::{self, escape_html, BotCall, Message, TextIntent, Update};
use crate::topics;

/// The router's settings.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Chats that may drive sessions; empty = nobody.
    pub allowed_chats: Vec<i64>,
    /// Users that may; empty = anyone in an allowed chat.
    pub allowed_users: Vec<i64>,
    /// What `/preview` needs (the RouterDO fills it per update).
    pub preview: preview::Settings,
}

impl Config {
    /// From the `ALLOWED_CHAT_IDS` and `ALLOWED_USER_IDS` settings (comma-separated ids).
    pub fn from_settings(chats: &str, users: &str) -> Self {
        Config {
            allowed_chats: telegram::parse_id_list(chats),
            allowed_users: telegram::parse_id_list(users),
            preview: preview::Settings::default(),
        }
    }

    fn allows(&self, chat: i64, user: Option<i64>) -> bool {
        self.allowed_chats.contains(&chat)
            && (self.allowed_users.is_empty()
                || user.is_some_and(|u| self.allowed_users.contains(&u)))
    }
}

/// The result of handling one update.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The update was seen before: nothing else happened.
    pub duplicate: bool,
    /// Bot API calls to make, in order.
    pub calls: Vec<BotCall>,
    /// Commands queued by this update (the RouterDO pushes those of connected machines).
    pub queued: Vec<queue::Queued>,
    /// Machines a permission decision was stored for (the RouterDO pushes it).
    pub decided: Vec<String>,
    /// `/peek` questions for connected machines (the RouterDO sends them).
    pub peeks: Vec<conversation::PeekAsk>,
    /// Previews to start (the RouterDO sends `previewStart` with the channel's token).
    pub preview_starts: Vec<preview::Start>,
    /// Previews ended (the RouterDO marks their channels ended and tells their machines).
    pub preview_stops: Vec<preview::Stop>,
    /// One line for the log, without secrets or message text.
    pub log: String,
}

impl Outcome {
    /// Sends `text` to `chat` as a reply to message `reply_to`.
    fn reply(&mut self, chat: i64, reply_to: i64, text: &str) {
        self.calls.push(BotCall::send(chat, text, Some(reply_to)));
    }

    /// Answers `msg` in its chat, as a reply to it.
    fn answer(&mut self, msg: &Message, text: &str) {
        self.reply(msg.chat.id, msg.message_id, text);
    }
}

/// The chat notice for a command its machine reported it could not type.
pub fn command_failed(
    q: &queue::Queued,
    label: &str,
    machine: &str,
    reason: Option<&str>,
) -> BotCall {
    let text = format!(
        "⚠️ Could not type into <b>{}</b> on {}: {}",
        escape_html(label),
        escape_html(machine),
        telegram::machine_text(reason.unwrap_or("no reason given"))
    );
    BotCall::send(q.chat_id, &text, q.source_message_id)
}

/// The answer to a reply for a session whose machine reported its pane gone: nothing is
/// queued (the pane may now be a shell), and how to go on.
pub fn pane_gone_text(label: &str, machine: &str, reason: Option<&str>) -> String {
    format!(
        "⚠️ Not sent: the tmux pane of <b>{}</b> on {} is gone{}. Start Claude Code again in \
         tmux (<code>claude --continue</code> picks the conversation up); its next \
         notification is the one to reply to.",
        escape_html(label),
        escape_html(machine),
        reason.map_or_else(String::new, |r| format!(" ({})", escape_html(r)))
    )
}

/// The 👍 on the user's message when its command was acked (`q` as it was before the ack). A
/// command the chat was already told was not delivered (`dead`) gets none: its machine's
/// result says what became of it.
pub fn ack_reaction(q: &queue::Queued) -> Option<BotCall> {
    if q.state == "dead" {
        return None;
    }
    q.source_message_id
        .map(|message| BotCall::react(q.chat_id, message, "👍"))
}

/// The chat notice for a command dropped because its machine stayed offline too long.
pub fn not_delivered(q: &queue::Queued) -> BotCall {
    let preview: String = q.command.chars().take(80).collect();
    let text = format!(
        "⚠️ Not delivered: <code>{}</code> waited too long for {} to come online and was dropped. Send it again when the machine is back.",
        escape_html(match (preview.is_empty(), q.file.is_some()) {
            (true, true) => "(file)",
            (true, false) => "(Enter)",
            (false, _) => &preview,
        }),
        escape_html(&q.machine_id)
    );
    BotCall::send(q.chat_id, &text, q.source_message_id)
}

/// A reply-mapping row (the queries already bound its chat).
#[derive(Debug, Clone, Deserialize)]
pub struct Mapping {
    /// The session.
    pub session_id: String,
}

fn by_reply(db: &impl Sql, chat_id: i64, message_id: i64) -> Result<Option<Mapping>, StoreError> {
    db.query_one::<Mapping>(
        "SELECT session_id FROM messages WHERE chat_id = ? AND message_id = ?",
        vec![chat_id.into(), message_id.into()],
    )
}

/// The mapping a token was issued with, only if it was issued in `chat_id`.
fn by_token(db: &impl Sql, token: &str, chat_id: i64) -> Result<Option<Mapping>, StoreError> {
    db.query_one::<Mapping>(
        "SELECT session_id FROM messages WHERE token = ? AND chat_id = ? LIMIT 1",
        vec![token.into(), chat_id.into()],
    )
}

/// Records `update_id`; false when it was already there.
fn first_sighting(db: &impl Sql, update_id: i64, now: i64) -> Result<bool, StoreError> {
    #[derive(Deserialize)]
    struct Seen {
        #[allow(dead_code)]
        update_id: i64,
    }
    let seen = db.query::<Seen>(
        "SELECT update_id FROM seen_updates WHERE update_id = ?",
        vec![update_id.into()],
    )?;
    if !seen.is_empty() {
        return Ok(false);
    }
    db.exec(
        "INSERT INTO seen_updates (update_id, seen_at) VALUES (?, ?)",
        vec![update_id.into(), now.into()],
    )?;
    Ok(true)
}

/// The help text, with the chat id for set-up.
pub fn help_text(chat_id: i64) -> String {
    format!(
        "<b>CCR</b> sends your Claude Code sessions' notifications here.\n\n\
         • <b>Reply</b> to a notification to type your reply into that session.\n\
         • Or use the buttons under it (Continue = Enter, Yes, No, Exit, Stop = Escape, Peek = the screen).\n\
         • <code>/cmd TOKEN text</code> sends text to a session without replying: /sessions \
         shows each session's TOKEN (tap it to copy).\n\
         • /sessions lists sessions and whether their machines are online.\n\
         • In a reply to a notification: /esc presses Escape (stops Claude's turn); \
         <code>/keys Down Enter</code> presses keys (Enter Escape Tab Up Down C-c 0-9); \
         /peek shows the session's screen; <code>/preview 3000</code> shows that machine's \
         dev server on port 3000 by a link (/previews lists them, <code>/preview stop</code> \
         ends them).\n\
         • In a chat with topics, each session has its own topic: write in it, no reply \
         needed (/esc, /keys and /peek too).\n\
         • <code>/new PROJECT prompt</code> starts Claude Code in a project a machine's owner \
         configured (/new alone lists them); /end in a reply to a notification ends that \
         session after you confirm.\n\n\
         This chat's id is <code>{chat_id}</code> (put it in ALLOWED_CHAT_IDS)."
    )
}

/// Most sessions the bot's `/sessions` answer lists (the most recently active).
const BOT_LISTED_SESSIONS: usize = 20;
/// The list stops before its text would pass this many UTF-16 units (under Telegram's 4096,
/// with room for the last line).
const BOT_LIST_BUDGET: usize = 3_500;

/// The bot's `/sessions` answer in `chat`: each session with its state and, when a
/// notification of it was sent to this chat, the token `/cmd` takes (a token only works in
/// the chat it was issued in).
fn sessions_text(
    db: &impl Sql,
    chat: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<String, StoreError> {
    let listing = store::session_listing(db, None, online)?;
    let sessions = listing.sessions;
    if sessions.is_empty() {
        return Ok(
            "No sessions registered yet. Start Claude Code on a machine running ccr-agent.".into(),
        );
    }
    let mut text = String::from("<b>Sessions</b>\n");
    let mut shown = 0;
    for s in &sessions {
        let state = if s.gone {
            "⛔ pane gone"
        } else if s.online {
            "🟢 online"
        } else {
            "⚪ offline"
        };
        let label = s.label.as_deref().unwrap_or("(no label)");
        let cmd = match store::latest_token(db, &s.session_id, chat)? {
            Some(token) => format!(" · /cmd <code>{}</code>", escape_html(&token)),
            None => String::new(),
        };
        let line = format!(
            "• {} — {} {} <code>{}</code>{cmd}\n",
            escape_html(label),
            escape_html(&s.machine_id),
            state,
            escape_html(&s.session_id.chars().take(12).collect::<String>())
        );
        let units = text.encode_utf16().count() + line.encode_utf16().count();
        if shown == BOT_LISTED_SESSIONS || units > BOT_LIST_BUDGET {
            break;
        }
        text.push_str(&line);
        shown += 1;
    }
    if shown < sessions.len() || listing.truncated {
        let more = if listing.truncated {
            "more".to_owned()
        } else {
            (sessions.len() - shown).to_string()
        };
        text.push_str(&format!(
            "… and {more} not shown (the most recently active come first)."
        ));
    }
    Ok(text)
}

/// Handles one update. Every write it makes (the dedup row, the queued command, the session's
/// activity, the chat answers in the outbox) commits as one transaction, or none does: a
/// failure answers 5xx with nothing recorded, so Telegram's retry of the update is handled
/// afresh instead of being taken for a duplicate. The RouterDO then sends the answers'
/// lanes (`outbox`) and pushes the queued commands.
pub fn handle_update<D: Sql>(
    db: &D,
    cfg: &Config,
    update: &Update,
    now: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<Outcome, StoreError> {
    db.transaction(|db| {
        let mut out = decide(db, cfg, update, now, online)?;
        in_its_topic(update, &mut out.calls);
        for dropped in outbox::add_or_drop(db, &out.calls, now)? {
            out.log.push_str("; ");
            out.log.push_str(&dropped);
        }
        Ok(out)
    })
}

/// The chat answers to a message sent in a topic (or a button pressed there) go to that
/// topic.
fn in_its_topic(update: &Update, calls: &mut [BotCall]) {
    let from = update.message.as_ref().or_else(|| {
        update
            .callback_query
            .as_ref()
            .and_then(|cb| cb.message.as_ref())
    });
    let Some((chat, thread)) = from.and_then(|m| m.topic().map(|t| (m.chat.id, t))) else {
        return;
    };
    for call in calls {
        let same_chat = outbox::lane_of(call).1 == Some(chat);
        if call.method == "sendMessage" && same_chat {
            if let Some(obj) = call.params.as_object_mut() {
                obj.entry("message_thread_id").or_insert(thread.into());
            }
        }
    }
}

/// Whom a message is for: the session of the notification it replies to, else the session
/// of the topic it was sent in.
enum Addressee {
    Session(String),
    /// A reply to a message that maps to no session, outside a topic of ours.
    UnknownReply,
    /// Neither a reply nor in a topic of ours.
    Nobody,
}

/// Whom `msg` is for. A message in the topic of a session that ended (unregistered) has
/// nothing to go to: it is answered here with [`ENDED_TOPIC`] (logged as `what` in the topic
/// of an ended session) and `None` returned, so every kind of message gets the same answer
/// and the caller has nothing left to do.
fn addressee(
    db: &impl Sql,
    out: &mut Outcome,
    update_id: i64,
    msg: &Message,
    what: &str,
    now: i64,
) -> Result<Option<Addressee>, StoreError> {
    let chat = msg.chat.id;
    if let Some(parent) = msg.replied_to() {
        if let Some(m) = by_reply(db, chat, parent.message_id)? {
            return Ok(Some(Addressee::Session(m.session_id)));
        }
    }
    if let Some(t) = msg
        .topic()
        .map(|t| topics::by_thread(db, chat, t))
        .transpose()?
        .flatten()
    {
        if store::get_session(db, &t.session_id)?.is_none() {
            out.answer(msg, ENDED_TOPIC);
            out.log = format!("update {update_id}: {what} in the topic of an ended session");
            return Ok(None);
        }
        if !t.is_open() {
            // Someone reopened it by hand: it is open, the session's messages go there again.
            topics::reopened(db, chat, &t.session_id, now)?;
        }
        return Ok(Some(Addressee::Session(t.session_id)));
    }
    Ok(Some(if msg.replied_to().is_some() {
        Addressee::UnknownReply
    } else {
        Addressee::Nobody
    }))
}

/// The answer to a message in the topic of a session that ended.
pub const ENDED_TOPIC: &str = "⚠️ Not sent: the session of this topic has ended. Resume it in \
    tmux (<code>claude --resume</code>) and this topic opens again; /sessions lists the \
    sessions there are.";

fn decide(
    db: &impl Sql,
    cfg: &Config,
    update: &Update,
    now: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<Outcome, StoreError> {
    let mut out = Outcome::default();
    if !first_sighting(db, update.update_id, now)? {
        out.duplicate = true;
        out.log = format!("update {} is a duplicate; ignored", update.update_id);
        return Ok(out);
    }
    if let Some(cb) = &update.callback_query {
        let chat = cb.message.as_ref().map(|m| m.chat.id);
        let Some(chat) = chat.filter(|c| cfg.allows(*c, Some(cb.from.id))) else {
            out.log = format!(
                "update {}: button press from a chat or user not allowed; ignored",
                update.update_id
            );
            return Ok(out);
        };
        if let Some(s) = approvals::on_callback(db, cb, now)? {
            out.calls = s.calls;
            out.decided.extend(s.push_to);
            out.log = format!("update {}: {}", update.update_id, s.log);
            return Ok(out);
        }
        if let Some(button) = cb.data.as_deref().and_then(launch::parse_button) {
            launch_button(
                db,
                &mut out,
                update.update_id,
                cb,
                chat,
                button,
                now,
                online,
            )?;
            return Ok(out);
        }
        let parsed = cb.data.as_deref().and_then(telegram::parse_callback);
        let Some((token, action)) = parsed else {
            out.calls
                .push(BotCall::answer_callback(&cb.id, "Unknown button."));
            out.log = format!("update {}: unknown button data", update.update_id);
            return Ok(out);
        };
        match by_token(db, &token, chat)? {
            None => {
                out.calls.push(BotCall::answer_callback(
                    &cb.id,
                    "This notification has expired or its session is gone.",
                ));
                out.log = format!("update {}: button for an unknown token", update.update_id);
            }
            Some(m) if action == ButtonAction::Peek => {
                let reply_to = cb.message.as_ref().map_or(0, |msg| msg.message_id);
                let refused = ask_peek(
                    db,
                    &mut out,
                    update.update_id,
                    &m.session_id,
                    chat,
                    reply_to,
                    now,
                    online,
                )?;
                let toast = match refused {
                    None => "Looking…".to_owned(),
                    Some(why) => {
                        out.calls.push(BotCall::send(chat, &why, Some(reply_to)));
                        "No screen".to_owned()
                    }
                };
                out.calls
                    .insert(0, BotCall::answer_callback(&cb.id, &toast));
            }
            Some(m) => {
                let toast = match queue_command(
                    db,
                    &mut out,
                    update.update_id,
                    &m.session_id,
                    chat,
                    None,
                    action.command_text(),
                    action.keys().map(str::to_owned),
                    None,
                    now,
                    online,
                )? {
                    Queueing::Queued {
                        machine,
                        online: true,
                    } => format!("{} → {machine}", button_name(action)),
                    Queueing::Queued {
                        machine,
                        online: false,
                    } => format!("Queued: {machine} is offline"),
                    Queueing::Refused(why) => why,
                    Queueing::AlreadyHandled => "Already done.".into(),
                };
                out.calls
                    .insert(0, BotCall::answer_callback(&cb.id, &toast));
            }
        }
        return Ok(out);
    }
    if let Some(edited) = &update.edited_message {
        if cfg.allows(edited.chat.id, edited.from.as_ref().map(|u| u.id)) {
            out.calls.push(BotCall::send(
                edited.chat.id,
                "Edits are not sent to sessions; send the corrected text as a new reply.",
                Some(edited.message_id),
            ));
        }
        out.log = format!("update {}: edited message; not forwarded", update.update_id);
        return Ok(out);
    }
    let Some(msg) = &update.message else {
        out.log = format!("update {}: kind not handled; ignored", update.update_id);
        return Ok(out);
    };
    if !cfg.allows(msg.chat.id, msg.from.as_ref().map(|u| u.id)) {
        out.log = format!(
            "update {}: chat {} or its user is not allowed; ignored",
            update.update_id, msg.chat.id
        );
        return Ok(out);
    }
    if msg.chat.is_forum == Some(true) || msg.topic().is_some() {
        topics::seen_topics(db, msg.chat.id)?;
    }
    if let Some(s) = approvals::on_pending(db, msg, now)? {
        out.calls = s.calls;
        out.log = format!("update {}: {}", update.update_id, s.log);
        return Ok(out);
    }
    if let Some(s) = approvals::on_reply(db, msg, now)? {
        out.calls = s.calls;
        out.decided.extend(s.push_to);
        out.log = format!("update {}: {}", update.update_id, s.log);
        return Ok(out);
    }
    handle_message(db, cfg, &mut out, update.update_id, msg, now, online)?;
    Ok(out)
}

fn button_name(a: ButtonAction) -> &'static str {
    match a {
        ButtonAction::Continue => "Continue",
        ButtonAction::Yes => "Yes",
        ButtonAction::No => "No",
        ButtonAction::Exit => "Exit",
        ButtonAction::Stop => "Stop",
        ButtonAction::Peek => "Peek",
    }
}

fn handle_message(
    db: &impl Sql,
    cfg: &Config,
    out: &mut Outcome,
    update_id: i64,
    msg: &Message,
    now: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<(), StoreError> {
    let chat = msg.chat.id;
    if let Some(file) = msg.attachment() {
        return route_file(db, out, update_id, msg, file, now, online);
    }
    let Some(text) = &msg.text else {
        out.answer(
            msg,
            "Only text, photos, files and voice notes can be sent to a session: stickers, \
             videos and the like are not forwarded.",
        );
        out.log = format!("update {update_id}: non-text message; not forwarded");
        return Ok(());
    };
    if let Some(intent) = launch::parse(text) {
        return new_or_end(db, out, update_id, msg, intent, now, online);
    }
    if let Some(intent) = preview::parse(text) {
        return preview_message(db, cfg, out, update_id, msg, intent, now, online);
    }
    if let Some(intent) = conversation::parse(text) {
        return pane_keys(db, out, update_id, msg, intent, now, online);
    }
    let (session, command) = match telegram::parse_text(text) {
        TextIntent::Help => {
            out.answer(msg, &help_text(chat));
            out.log = format!("update {update_id}: help");
            return Ok(());
        }
        TextIntent::Sessions => {
            let list = sessions_text(db, chat, online)?;
            out.answer(msg, &list);
            out.log = format!("update {update_id}: sessions");
            return Ok(());
        }
        TextIntent::CmdUsage => {
            out.answer(
                msg,
                "Usage: <code>/cmd TOKEN text</code> (/sessions shows each session's TOKEN).",
            );
            out.log = format!("update {update_id}: /cmd without token");
            return Ok(());
        }
        TextIntent::Cmd { token, text } => match by_token(db, &token, chat)? {
            Some(m) => (m.session_id, text),
            None => {
                out.answer(
                    msg,
                    "Unknown or expired token. Reply to a recent notification instead.",
                );
                out.log = format!("update {update_id}: /cmd with an unknown token for this chat");
                return Ok(());
            }
        },
        TextIntent::Plain(text) => match addressee(db, out, update_id, msg, "text", now)? {
            None => return Ok(()),
            Some(Addressee::Session(session)) => (session, text),
            Some(Addressee::UnknownReply) => {
                out.answer(msg, "I don't know which session that message belongs to (it may have expired). Reply to a recent notification, or use /cmd TOKEN text.");
                out.log = format!("update {update_id}: reply to an unknown message");
                return Ok(());
            }
            Some(Addressee::Nobody) => {
                out.answer(msg, "To send this to a session, reply to one of its notifications. /help shows how.");
                out.log = format!("update {update_id}: text that is not a reply");
                return Ok(());
            }
        },
    };
    let queued = queue_command(
        db,
        out,
        update_id,
        &session,
        chat,
        Some(msg.message_id),
        &command,
        None,
        None,
        now,
        online,
    )?;
    if let Some(notice) = queued_notice(queued, "it will be delivered when it reconnects") {
        out.answer(msg, &notice);
    }
    Ok(())
}

/// A photo, document or voice note: for the session of the notification it replies to, or
/// of the `/cmd TOKEN` its caption starts with (the rest of the caption is then the text).
fn route_file(
    db: &impl Sql,
    out: &mut Outcome,
    update_id: i64,
    msg: &Message,
    file: FileRef,
    now: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<(), StoreError> {
    let chat = msg.chat.id;
    let caption = msg.caption.as_deref().unwrap_or("");
    // A `/cmd TOKEN` caption, else a reply to a notification or the session's topic.
    let (target, caption) = match telegram::parse_text(caption) {
        TextIntent::Cmd { token, text } => {
            (by_token(db, &token, chat)?.map(|m| m.session_id), text)
        }
        _ => match addressee(db, out, update_id, msg, "file", now)? {
            None => return Ok(()),
            Some(Addressee::Session(id)) => (Some(id), caption.to_owned()),
            Some(Addressee::UnknownReply | Addressee::Nobody) => (None, caption.to_owned()),
        },
    };
    let Some(session_id) = target else {
        out.calls.push(BotCall::send(
            chat,
            "To send a file to a session, send it in the session's topic or as a reply to one \
             of its notifications (or caption it <code>/cmd TOKEN text</code>).",
            Some(msg.message_id),
        ));
        out.log = format!("update {update_id}: file without a session");
        return Ok(());
    };
    queue_file(
        db,
        out,
        update_id,
        &session_id,
        chat,
        msg.message_id,
        file,
        &caption,
        now,
        online,
    )
}

/// Queues a file the chat sent (`message_id` in `chat`) for `session_id`, with `caption` to
/// type before the saved file's path, and adds the chat's answers. Finding the session is the
/// caller's (a reply, a `/cmd` caption, a session's topic). Refused before queueing when
/// Telegram says the file is over what a bot may download; a voice note's answer says it is
/// not transcribed.
#[allow(clippy::too_many_arguments)]
pub fn queue_file(
    db: &impl Sql,
    out: &mut Outcome,
    update_id: i64,
    session_id: &str,
    chat: i64,
    message_id: i64,
    file: FileRef,
    caption: &str,
    now: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<(), StoreError> {
    if validate::file_id(&file.file_id).is_err() {
        out.reply(
            chat,
            message_id,
            "Not sent: Telegram gave this file an id the bot cannot fetch.",
        );
        out.log = format!("update {update_id}: file with an unusable file_id");
        return Ok(());
    }
    if let Some(size) = file.size.filter(|s| *s > MAX_FILE_BYTES) {
        out.reply(chat, message_id, &too_big_text(size));
        out.log = format!("update {update_id}: file of {size} bytes is over the limit");
        return Ok(());
    }
    let kind = file.kind;
    let queued = queue_command(
        db,
        out,
        update_id,
        session_id,
        chat,
        Some(message_id),
        caption,
        None,
        Some(file),
        now,
        online,
    )?;
    let sent = matches!(queued, Queueing::Queued { .. });
    if let Some(notice) = queued_notice(queued, "the file is fetched when it reconnects") {
        out.reply(chat, message_id, &notice);
    }
    if sent && kind == FileKind::Voice {
        out.reply(
            chat,
            message_id,
            "🎤 The voice note is saved as an audio file and its path typed for Claude; it \
             is not transcribed (transcription is not supported).",
        );
    }
    Ok(())
}

/// The answer to a file over Telegram's limit for bots.
pub fn too_big_text(size: u64) -> String {
    format!(
        "⚠️ Not sent: the file is {:.1} MB, and Telegram lets bots download at most {} MB. \
         Send a smaller file, or copy it to the machine another way.",
        size as f64 / (1024.0 * 1024.0),
        MAX_FILE_BYTES / (1024 * 1024)
    )
}

/// What the chat is told about a reply or keys it queued: nothing when they went to a
/// connected machine (the 👍 follows the ack) or were already handled; that the machine is
/// offline, and `then`; or why they were refused.
fn queued_notice(queueing: Queueing, then: &str) -> Option<String> {
    match queueing {
        Queueing::Queued {
            machine,
            online: false,
        } => Some(format!(
            "Queued — {} is offline; {then}.",
            escape_html(&machine)
        )),
        Queueing::Queued { online: true, .. } | Queueing::AlreadyHandled => None,
        Queueing::Refused(why) => Some(why),
    }
}

/// `/esc` and `/keys` (see `conversation`): in a reply to a notification, queues the keys for
/// its session like a command; refusals are answered before anything is queued.
fn pane_keys(
    db: &impl Sql,
    out: &mut Outcome,
    update_id: i64,
    msg: &Message,
    intent: PaneIntent,
    now: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<(), StoreError> {
    let chat = msg.chat.id;
    if let PaneIntent::Refused(why) = &intent {
        out.answer(msg, why);
        out.log = format!("update {update_id}: keys refused");
        return Ok(());
    }
    let m = match addressee(db, out, update_id, msg, "pane command", now)? {
        None => return Ok(()),
        Some(Addressee::Session(session_id)) => Mapping { session_id },
        Some(Addressee::UnknownReply | Addressee::Nobody) => {
            out.answer(
                msg,
                "Send this as a reply to a notification of the session whose pane it is for.",
            );
            out.log = format!("update {update_id}: pane command without a session");
            return Ok(());
        }
    };
    let keys = match intent {
        PaneIntent::Keys(keys) => keys,
        PaneIntent::Refused(_) => return Ok(()),
        PaneIntent::Peek => {
            let refused = ask_peek(
                db,
                out,
                update_id,
                &m.session_id,
                chat,
                msg.message_id,
                now,
                online,
            )?;
            if let Some(why) = refused {
                out.answer(msg, &why);
            }
            return Ok(());
        }
    };
    let stored = PaneIntent::stored(&keys);
    let queued = queue_command(
        db,
        out,
        update_id,
        &m.session_id,
        chat,
        Some(msg.message_id),
        "",
        Some(stored),
        None,
        now,
        online,
    )?;
    if let Some(notice) = queued_notice(queued, "the keys are pressed when it reconnects") {
        out.answer(msg, &notice);
    }
    Ok(())
}

/// `/new` and `/end` (see `launch`): a start request queued or the choices offered; the
/// `/end` confirmation for the replied-to (or token-named) session.
fn new_or_end(
    db: &impl Sql,
    out: &mut Outcome,
    update_id: i64,
    msg: &Message,
    intent: launch::Intent,
    now: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<(), StoreError> {
    let chat = msg.chat.id;
    let token = match intent {
        launch::Intent::New { project, prompt } => {
            let step = launch::on_new(
                db,
                chat,
                msg.message_id,
                update_id,
                project.as_deref(),
                prompt.as_deref(),
                now,
                online,
            )?;
            out.calls.extend(step.calls);
            out.queued.extend(step.queued);
            out.log = step.log;
            return Ok(());
        }
        launch::Intent::End { token } => token,
    };
    let target = match (token, &msg.reply_to_message) {
        (Some(token), _) => by_token(db, &token, chat)?.map(|m| (m.session_id, token)),
        // In a session's topic (which Telegram marks a reply to the topic's first message)
        // the topic names the session; the confirmation carries its latest token.
        (None, _) if msg.topic().is_some() => {
            match addressee(db, out, update_id, msg, "/end", now)? {
                None => return Ok(()),
                Some(Addressee::Session(id)) => {
                    store::latest_token(db, &id, chat)?.map(|t| (id, t))
                }
                Some(Addressee::UnknownReply | Addressee::Nobody) => None,
            }
        }
        (None, Some(parent)) => reply_token(db, chat, parent.message_id)?,
        (None, None) => {
            out.answer(
                msg,
                "Send /end as a reply to a notification of the session to end, or \
                 <code>/end TOKEN</code> (/sessions shows each session's TOKEN).",
            );
            out.log = format!("update {update_id}: /end without a session");
            return Ok(());
        }
    };
    let session = match target {
        Some((session_id, token)) => store::get_session(db, &session_id)?.map(|s| (s, token)),
        None => None,
    };
    let Some((session, token)) = session else {
        out.answer(
            msg,
            "I don't know that session (it may have expired or ended). Reply to a recent \
             notification.",
        );
        out.log = format!("update {update_id}: /end for an unknown session");
        return Ok(());
    };
    if session.gone_at.is_some() {
        let label = session.label.as_deref().unwrap_or(&session.machine_id);
        out.answer(
            msg,
            &pane_gone_text(label, &session.machine_id, session.gone_reason.as_deref()),
        );
        out.log = format!("update {update_id}: /end for a gone pane");
        return Ok(());
    }
    out.calls
        .push(launch::end_prompt(&session, &token, chat, msg.message_id));
    out.log = format!("update {update_id}: /end asks for confirmation");
    Ok(())
}

/// The session and token of a reply-mapped message in `chat`.
fn reply_token(
    db: &impl Sql,
    chat: i64,
    message_id: i64,
) -> Result<Option<(String, String)>, StoreError> {
    #[derive(Deserialize)]
    struct Row {
        session_id: String,
        token: String,
    }
    Ok(db
        .query_one::<Row>(
            "SELECT session_id, token FROM messages WHERE chat_id = ? AND message_id = ?",
            vec![chat.into(), message_id.into()],
        )?
        .map(|r| (r.session_id, r.token)))
}

/// A tap on a `/new` choice or an `/end` confirmation (the router checked chat and user).
#[allow(clippy::too_many_arguments)]
fn launch_button(
    db: &impl Sql,
    out: &mut Outcome,
    update_id: i64,
    cb: &telegram::CallbackQuery,
    chat: i64,
    button: launch::Button,
    now: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<(), StoreError> {
    let confirmation = cb.message.as_ref().map(|m| m.message_id);
    let answered = |out: &mut Outcome| {
        if let Some(message_id) = confirmation {
            out.calls.push(launch::remove_buttons(chat, message_id));
        }
    };
    let toast = match button {
        launch::Button::New { launch_id, choice } => {
            let step = launch::on_new_button(db, chat, launch_id, choice, now, online)?;
            out.calls.extend(step.calls);
            out.queued.extend(step.queued);
            out.log = format!("update {update_id}: {}", step.log);
            step.toast
        }
        launch::Button::Cancel => {
            answered(out);
            out.log = format!("update {update_id}: /end cancelled");
            "Not ended.".to_owned()
        }
        launch::Button::End { token } => match by_token(db, &token, chat)? {
            None => {
                out.log = format!("update {update_id}: /end for an unknown token");
                "This session has expired or is gone.".to_owned()
            }
            Some(m) => match queue_command(
                db,
                out,
                update_id,
                &m.session_id,
                chat,
                None,
                "/exit",
                None,
                None,
                now,
                online,
            )? {
                Queueing::Queued {
                    machine,
                    online: true,
                } => {
                    answered(out);
                    format!("/exit → {machine}")
                }
                Queueing::Queued {
                    machine,
                    online: false,
                } => {
                    answered(out);
                    format!("Queued: {machine} is offline")
                }
                Queueing::Refused(why) => {
                    out.calls.push(BotCall::send(chat, &why, confirmation));
                    "Not ended".to_owned()
                }
                Queueing::AlreadyHandled => "Already done.".to_owned(),
            },
        },
    };
    out.calls
        .insert(0, BotCall::answer_callback(&cb.id, &toast));
    Ok(())
}

/// `/preview …` and `/previews` as a message: `/previews` and a bad `/preview` need no
/// session; `/preview stop` not in a reply ends every preview of the chat; the rest go to the
/// session of the notification replied to ([`preview_for_session`]).
#[allow(clippy::too_many_arguments)]
fn preview_message(
    db: &impl Sql,
    cfg: &Config,
    out: &mut Outcome,
    update_id: i64,
    msg: &Message,
    intent: preview::Intent,
    now: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<(), StoreError> {
    let chat = msg.chat.id;
    match &intent {
        preview::Intent::List => {
            out.answer(msg, &preview::list_text(db, chat, now)?);
            out.log = format!("update {update_id}: previews listed");
            return Ok(());
        }
        preview::Intent::Refused(why) => {
            out.answer(msg, why);
            out.log = format!("update {update_id}: preview refused");
            return Ok(());
        }
        preview::Intent::Start(_) | preview::Intent::Stop => {}
    }
    // A reply to a notification, else the session's topic.
    let target = match addressee(db, out, update_id, msg, "preview", now)? {
        None => return Ok(()),
        Some(Addressee::Session(id)) => Some(id),
        Some(Addressee::UnknownReply | Addressee::Nobody) => None,
    };
    match (target, intent) {
        (Some(session_id), intent) => preview_for_session(
            db,
            cfg,
            out,
            update_id,
            &session_id,
            chat,
            msg.message_id,
            intent,
            now,
            online,
        ),
        (None, preview::Intent::Stop) if msg.replied_to().is_none() => {
            let stops = preview::end_chat(db, chat, now)?;
            out.answer(msg, &preview::stopped_text(&stops));
            out.log = format!(
                "update {update_id}: {} preview(s) of the chat ended",
                stops.len()
            );
            out.preview_stops.extend(stops);
            Ok(())
        }
        (None, _) => {
            out.answer(
                msg,
                &format!(
                    "Send this in the session's topic or as a reply to a notification of the \
                     session whose machine runs the server. {}",
                    preview::usage()
                ),
            );
            out.log = format!("update {update_id}: preview without a session");
            Ok(())
        }
    }
}

/// `/preview PORT` or `/preview stop` for one session (from a reply to its notification, or
/// — for a caller that knows the session otherwise, such as a session's own topic — directly):
/// the answer goes to `chat` replying to `reply_to`.
#[allow(clippy::too_many_arguments)]
pub fn preview_for_session(
    db: &impl Sql,
    cfg: &Config,
    out: &mut Outcome,
    update_id: i64,
    session_id: &str,
    chat: i64,
    reply_to: i64,
    intent: preview::Intent,
    now: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<(), StoreError> {
    let port = match intent {
        preview::Intent::Start(port) => port,
        preview::Intent::Stop => {
            let stops = preview::end_session(db, session_id, now)?;
            out.reply(chat, reply_to, &preview::stopped_text(&stops));
            out.log = format!("update {update_id}: {} preview(s) ended", stops.len());
            out.preview_stops.extend(stops);
            return Ok(());
        }
        preview::Intent::List => {
            out.reply(chat, reply_to, &preview::list_text(db, chat, now)?);
            return Ok(());
        }
        preview::Intent::Refused(why) => {
            out.reply(chat, reply_to, &why);
            return Ok(());
        }
    };
    let Some(session) = store::get_session(db, session_id)? else {
        out.reply(chat, reply_to, "That session is no longer registered.");
        out.log = format!("update {update_id}: preview for an unknown session");
        return Ok(());
    };
    let is_online = online(&session.machine_id);
    match preview::open(
        db,
        &cfg.preview,
        &session,
        port,
        chat,
        reply_to,
        now,
        is_online,
    )? {
        Ok(start) => {
            out.log = format!(
                "update {update_id}: preview of port {port} asked of {}",
                start.machine_id
            );
            out.preview_starts.push(start);
        }
        Err(why) => {
            out.reply(chat, reply_to, &why);
            out.log = format!("update {update_id}: preview not opened");
        }
    }
    Ok(())
}

/// Asks `session_id`'s machine for its pane's screen (`/peek`, the 👀 button), the answer to
/// go to `chat` replying to `reply_to`; `Some(why not)` when it cannot be asked.
#[allow(clippy::too_many_arguments)]
fn ask_peek(
    db: &impl Sql,
    out: &mut Outcome,
    update_id: i64,
    session_id: &str,
    chat: i64,
    reply_to: i64,
    now: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<Option<String>, StoreError> {
    let Some(session) = store::get_session(db, session_id)? else {
        return Ok(Some("That session is no longer registered.".into()));
    };
    if session.gone_at.is_some() {
        let label = session.label.as_deref().unwrap_or(&session.machine_id);
        out.log = format!("update {update_id}: peek at a gone pane");
        return Ok(Some(pane_gone_text(
            label,
            &session.machine_id,
            session.gone_reason.as_deref(),
        )));
    }
    if !online(&session.machine_id) {
        out.log = format!("update {update_id}: peek at an offline machine");
        return Ok(Some(format!(
            "No screen: {} is offline.",
            escape_html(&session.machine_id)
        )));
    }
    let ask = conversation::PeekAsk {
        request_id: format!("peek-{update_id}"),
        session_id: session.session_id,
        machine_id: session.machine_id,
    };
    conversation::record_peek(db, &ask, chat, reply_to, now)?;
    out.log = format!("update {update_id}: peek asked of {}", ask.machine_id);
    out.peeks.push(ask);
    Ok(None)
}

enum Queueing {
    Queued {
        machine: String,
        online: bool,
    },
    Refused(String),
    /// The command of this update id exists and is finished: a late replay; nothing to say.
    AlreadyHandled,
}

#[allow(clippy::too_many_arguments)]
fn queue_command(
    db: &impl Sql,
    out: &mut Outcome,
    update_id: i64,
    session_id: &str,
    chat: i64,
    source_message_id: Option<i64>,
    command: &str,
    keys: Option<String>,
    file: Option<FileRef>,
    now: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<Queueing, StoreError> {
    let Some(session) = store::get_session(db, session_id)? else {
        out.log = format!("update {update_id}: session is gone");
        return Ok(Queueing::Refused(
            "That session is no longer registered.".into(),
        ));
    };
    let label = session
        .label
        .clone()
        .unwrap_or_else(|| session.machine_id.clone());
    if session.gone_at.is_some() {
        out.log = format!("update {update_id}: session's pane is gone; not queued");
        return Ok(Queueing::Refused(pane_gone_text(
            &label,
            &session.machine_id,
            session.gone_reason.as_deref(),
        )));
    }
    if command.len() > MAX_COMMAND_BYTES {
        out.log = format!("update {update_id}: command too long");
        return Ok(Queueing::Refused(format!(
            "Not sent: the text is over {MAX_COMMAND_BYTES} bytes."
        )));
    }
    if queue::unacked_count(db, &session.machine_id)? >= MAX_UNACKED_PER_MACHINE {
        out.log = format!(
            "update {update_id}: queue of {} is full",
            session.machine_id
        );
        return Ok(Queueing::Refused(format!(
            "Not sent: {} already has {MAX_UNACKED_PER_MACHINE} commands waiting for {}.",
            escape_html(&label),
            escape_html(&session.machine_id)
        )));
    }
    let new = NewCommand {
        command_id: format!("tg-{update_id}"),
        session_id: session.session_id.clone(),
        machine_id: session.machine_id.clone(),
        chat_id: chat,
        source_message_id,
        command: command.to_owned(),
        keys,
        project: None,
        file,
    };
    let created = queue::enqueue(db, &new, now)?;
    let existing = queue::get(db, &new.command_id)?;
    // Only a row this update created, or one still unacked, may be pushed: an update
    // replayed after its dedup row was pruned must not run a finished command again.
    match existing {
        Some(q) if created || q.is_unacked() => out.queued.push(q),
        Some(q) => {
            out.log = format!(
                "update {update_id}: {} already {}; not pushed again",
                q.command_id, q.state
            );
            return Ok(Queueing::AlreadyHandled);
        }
        None => {}
    }
    store::touch_session(db, &session.session_id, now)?;
    let is_online = online(&session.machine_id);
    out.log = format!(
        "update {update_id}: queued {} for machine {} ({})",
        new.command_id,
        session.machine_id,
        if is_online { "online" } else { "offline" }
    );
    Ok(Queueing::Queued {
        machine: session.machine_id,
        online: is_online,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::MemDb;
    use serde_json::json;

    fn cfg() -> Config {
        Config {
            allowed_chats: vec![42],
            allowed_users: vec![],
            ..Config::default()
        }
    }

    fn setup() -> MemDb {
        let db = MemDb::migrated();
        store::upsert_session(&db, "s1", "devbox", Some("api"), 0).unwrap();
        store::record_message(&db, 42, 100, "s1", "tok1", 0).unwrap();
        db
    }

    fn update(v: serde_json::Value) -> Update {
        serde_json::from_value(v).unwrap()
    }

    fn reply_update(id: i64, chat: i64, to: i64, text: &str) -> Update {
        update(
            json!({"update_id": id, "message": {"message_id": id + 1000, "chat": {"id": chat},
            "from": {"id": 7}, "text": text, "reply_to_message": {"message_id": to, "chat": {"id": chat}}}}),
        )
    }

    /// A message in topic `thread` of chat 42, as Telegram sends it: marked a reply to the
    /// topic's first message unless it replies to another.
    fn in_topic(id: i64, thread: i64, text: &str, reply_to: Option<i64>) -> Update {
        update(json!({"update_id": id, "message": {"message_id": id + 1000,
            "chat": {"id": 42, "type": "supergroup", "is_forum": true}, "from": {"id": 7},
            "text": text, "message_thread_id": thread, "is_topic_message": true,
            "reply_to_message": {"message_id": reply_to.unwrap_or(thread), "chat": {"id": 42}}}}))
    }

    /// s1 has topic 500 in chat 42; s2 (another session) has topic 600.
    fn with_topics() -> MemDb {
        let db = setup();
        store::upsert_session(&db, "s2", "devbox", Some("web"), 0).unwrap();
        for (session, thread) in [("s1", 500), ("s2", 600)] {
            topics::ensure(&db, 42, session, "x", 0).unwrap();
            topics::created(&db, 42, session, thread, 0).unwrap();
        }
        store::record_message(&db, 42, 601, "s2", "tok2", 0).unwrap();
        db
    }

    #[test]
    fn plain_text_in_a_topic_goes_to_its_session_and_answers_stay_in_the_topic() {
        let db = with_topics();
        let out = handle_update(&db, &cfg(), &in_topic(1, 500, "ls", None), 5, &|_| false).unwrap();
        assert_eq!(out.queued.len(), 1);
        assert_eq!(
            (
                out.queued[0].session_id.as_str(),
                out.queued[0].command.as_str()
            ),
            ("s1", "ls")
        );
        // The "queued, offline" answer goes to the topic.
        assert_eq!(out.calls[0].params["message_thread_id"], 500);
        assert!(out.calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("offline"));
        // A reply to a notification still goes to the notification's session.
        let out = handle_update(&db, &cfg(), &in_topic(2, 500, "pwd", Some(601)), 5, &|_| {
            true
        })
        .unwrap();
        assert_eq!(out.queued[0].session_id, "s2");
        // A reply to any other message in the topic: the topic's session.
        let out = handle_update(&db, &cfg(), &in_topic(3, 600, "x", Some(12345)), 5, &|_| {
            true
        })
        .unwrap();
        assert_eq!(out.queued[0].session_id, "s2");
        // /help in a topic is answered there.
        let out =
            handle_update(&db, &cfg(), &in_topic(4, 600, "/help", None), 5, &|_| true).unwrap();
        assert_eq!(out.calls[0].params["message_thread_id"], 600);
        // Outside a topic: as before.
        let plain = update(
            json!({"update_id": 5, "message": {"message_id": 9, "chat": {"id": 42},
            "from": {"id": 7}, "text": "hi"}}),
        );
        let out = handle_update(&db, &cfg(), &plain, 5, &|_| true).unwrap();
        assert!(out.queued.is_empty());
        assert!(out.calls[0].params.get("message_thread_id").is_none());
    }

    #[test]
    fn pane_commands_in_a_topic_need_no_reply() {
        let db = with_topics();
        let out =
            handle_update(&db, &cfg(), &in_topic(1, 500, "/esc", None), 5, &|_| true).unwrap();
        assert_eq!(out.queued.len(), 1);
        assert_eq!(out.queued[0].session_id, "s1");
        assert_eq!(out.queued[0].keys.as_deref(), Some("Escape"));
        let out =
            handle_update(&db, &cfg(), &in_topic(2, 600, "/peek", None), 5, &|_| true).unwrap();
        assert_eq!(out.peeks.len(), 1);
        assert_eq!(out.peeks[0].session_id, "s2");
    }

    #[test]
    fn a_photo_in_a_topic_goes_to_its_session() {
        let db = with_topics();
        let photo = update(json!({"update_id": 9, "message": {"message_id": 1009,
            "chat": {"id": 42, "type": "supergroup", "is_forum": true}, "from": {"id": 7},
            "photo": [{"file_id": "small", "width": 9, "height": 9},
                      {"file_id": "big", "width": 90, "height": 90, "file_size": 500}],
            "caption": "what is this", "message_thread_id": 600, "is_topic_message": true,
            "reply_to_message": {"message_id": 600, "chat": {"id": 42}}}}));
        let out = handle_update(&db, &cfg(), &photo, 5, &|_| true).unwrap();
        assert_eq!(out.queued.len(), 1, "{:?}", out.calls);
        assert_eq!(out.queued[0].session_id, "s2");
        assert_eq!(out.queued[0].command, "what is this");
        assert!(out.queued[0].file.as_deref().unwrap().contains("\"big\""));
    }

    #[test]
    fn end_in_a_topic_asks_about_the_topics_session() {
        let db = with_topics();
        let out =
            handle_update(&db, &cfg(), &in_topic(1, 600, "/end", None), 5, &|_| true).unwrap();
        assert!(
            out.queued.is_empty(),
            "nothing is typed before the confirmation"
        );
        let data = out.calls[0].params["reply_markup"].to_string();
        assert!(data.contains("end:tok2"), "{data}");
        assert_eq!(out.calls[0].params["message_thread_id"], 600);
    }

    #[test]
    fn a_message_in_the_topic_of_an_ended_session_is_answered() {
        let db = with_topics();
        topics::on_unregister(&db, "s1", 3).unwrap();
        store::delete_session(&db, "s1").unwrap();
        // Every kind of message gets the same answer, in the topic: text, keys, a preview,
        // /end (it used to be told "I don't know that session"), a photo.
        let mut with_relay = cfg();
        with_relay.preview.relay_configured = true;
        let photo = update(json!({"update_id": 5, "message": {"message_id": 1005,
            "chat": {"id": 42, "type": "supergroup", "is_forum": true}, "from": {"id": 7},
            "photo": [{"file_id": "big", "width": 90, "height": 90, "file_size": 500}],
            "message_thread_id": 500, "is_topic_message": true,
            "reply_to_message": {"message_id": 500, "chat": {"id": 42}}}}));
        let texts = [(1, "ls"), (2, "/esc"), (3, "/preview 3000"), (4, "/end")];
        let updates = texts
            .map(|(id, text)| in_topic(id, 500, text, None))
            .into_iter()
            .chain([photo]);
        for u in updates {
            let out = handle_update(&db, &with_relay, &u, 5, &|_| true).unwrap();
            assert!(out.queued.is_empty() && out.preview_starts.is_empty());
            assert_eq!(out.calls.len(), 1, "{}", out.log);
            assert_eq!(out.calls[0].params["text"], ENDED_TOPIC, "{}", out.log);
            assert_eq!(out.calls[0].params["message_thread_id"], 500);
            assert!(
                out.log.contains("in the topic of an ended session"),
                "{}",
                out.log
            );
        }
        // A topic we did not make (a user's own): the usual "reply to a notification".
        let out = handle_update(&db, &cfg(), &in_topic(6, 777, "ls", None), 5, &|_| true).unwrap();
        assert!(out.queued.is_empty());
        assert!(out.calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("reply to one of its notifications"));
    }

    #[test]
    fn an_update_from_a_forum_lets_the_chat_be_asked_for_topics_again() {
        let db = setup();
        topics::ensure(&db, 42, "s1", "x", 0).unwrap();
        topics::refused(&db, 42, "s1", 1).unwrap();
        assert!(topics::ensure(&db, 42, "s1", "x", 2).unwrap().is_empty());
        handle_update(&db, &cfg(), &in_topic(1, 900, "hi", None), 3, &|_| true).unwrap();
        assert_eq!(topics::ensure(&db, 42, "s1", "x", 4).unwrap().len(), 1);
    }

    #[test]
    fn preview_in_a_reply_asks_the_sessions_machine_and_stop_ends_it() {
        let db = setup();
        let mut with_relay = cfg();
        with_relay.preview = preview::Settings {
            relay_configured: true,
            ttl_ms: 60_000,
            origin: "https://w.example".into(),
            fresh_channel: "pv-first".into(),
            ..preview::Settings::default()
        };
        // The update handled at `now`, the machine online or not; the first answer's text.
        let handle = |cfg: &Config, u: &Update, now: i64, online: bool| {
            let out = handle_update(&db, cfg, u, now, &|_| online).unwrap();
            let answer = out
                .calls
                .first()
                .and_then(|c| c.params["text"].as_str())
                .unwrap_or_default()
                .to_owned();
            (out, answer)
        };
        let (out, _) = handle(
            &with_relay,
            &reply_update(1, 42, 100, "/preview 3000"),
            5,
            true,
        );
        assert_eq!(out.preview_starts.len(), 1, "{}", out.log);
        assert_eq!(out.preview_starts[0].machine_id, "devbox");
        assert_eq!(out.preview_starts[0].port, 3000);
        assert_eq!(out.preview_starts[0].expires_at, 60_005);
        assert!(out.queued.is_empty() && out.calls.is_empty());
        // Not a reply: no session to ask; a bad port: usage; offline: said so.
        let not_a_reply = update(json!({"update_id": 2, "message": {"message_id": 1002,
            "chat": {"id": 42}, "from": {"id": 7}, "text": "/preview 3000"}}));
        let (out, answer) = handle(&with_relay, &not_a_reply, 6, true);
        assert!(out.preview_starts.is_empty());
        assert!(answer.contains("as a reply"), "{answer}");
        let (out, _) = handle(
            &with_relay,
            &reply_update(3, 42, 100, "/preview 99999"),
            7,
            true,
        );
        assert!(out.preview_starts.is_empty());
        with_relay.preview.fresh_channel = "pv-second".into();
        let (out, answer) = handle(
            &with_relay,
            &reply_update(4, 42, 100, "/preview 4000"),
            8,
            false,
        );
        assert!(out.preview_starts.is_empty());
        assert!(answer.contains("devbox is offline"), "{answer}");
        // /preview stop in a reply ends the session's previews.
        let (out, _) = handle(
            &with_relay,
            &reply_update(5, 42, 100, "/preview stop"),
            9,
            true,
        );
        assert_eq!(
            out.preview_stops,
            vec![preview::Stop {
                channel: "pv-first".into(),
                machine_id: "devbox".into()
            }]
        );
    }

    #[test]
    fn reply_routes_to_the_session_once() {
        let db = setup();
        let out =
            handle_update(&db, &cfg(), &reply_update(1, 42, 100, "ls"), 5, &|_| true).unwrap();
        assert_eq!(out.queued.len(), 1);
        assert_eq!(out.queued[0].command, "ls");
        assert_eq!(out.queued[0].machine_id, "devbox");
        assert!(out.calls.is_empty(), "online: no chat noise until the ack");
        let again =
            handle_update(&db, &cfg(), &reply_update(1, 42, 100, "ls"), 6, &|_| true).unwrap();
        assert!(again.duplicate && again.queued.is_empty());
        assert_eq!(queue::unacked_count(&db, "devbox").unwrap(), 1);
    }

    #[test]
    fn esc_and_keys_in_a_reply_queue_keys_and_unknown_names_queue_nothing() {
        let db = setup();
        let out =
            handle_update(&db, &cfg(), &reply_update(1, 42, 100, "/esc"), 5, &|_| true).unwrap();
        assert_eq!(out.queued.len(), 1);
        assert_eq!(out.queued[0].keys.as_deref(), Some("Escape"));
        assert_eq!(out.queued[0].command, "");
        assert!(out.calls.is_empty(), "online: no chat noise until the ack");
        let out = handle_update(
            &db,
            &cfg(),
            &reply_update(2, 42, 100, "/keys down enter"),
            6,
            &|_| true,
        )
        .unwrap();
        assert_eq!(out.queued[0].keys.as_deref(), Some("Down Enter"));
        let out = handle_update(
            &db,
            &cfg(),
            &reply_update(3, 42, 100, "/keys Enter rm"),
            7,
            &|_| true,
        )
        .unwrap();
        assert!(out.queued.is_empty());
        assert!(out.calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("is not a key"));
        assert_eq!(queue::unacked_count(&db, "devbox").unwrap(), 2);
        // Not a reply: nothing queued, the chat is told how.
        let out = handle_update(
            &db,
            &cfg(),
            &update(
                json!({"update_id": 4, "message": {"message_id": 9, "chat": {"id": 42},
                "from": {"id": 7}, "text": "/esc"}}),
            ),
            8,
            &|_| true,
        )
        .unwrap();
        assert!(out.queued.is_empty());
        assert!(out.calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("reply to a notification"));
    }

    #[test]
    fn peek_asks_a_connected_machine_and_answers_for_an_offline_one() {
        let db = setup();
        let out = handle_update(&db, &cfg(), &reply_update(1, 42, 100, "/peek"), 5, &|_| {
            true
        })
        .unwrap();
        assert_eq!(out.peeks.len(), 1);
        assert_eq!(out.peeks[0].request_id, "peek-1");
        assert!(out.queued.is_empty() && out.calls.is_empty());
        let out = handle_update(&db, &cfg(), &reply_update(2, 42, 100, "/peek"), 5, &|_| {
            false
        })
        .unwrap();
        assert!(out.peeks.is_empty());
        assert!(out.calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("devbox is offline"));
    }

    #[test]
    fn offline_machine_is_announced() {
        let db = setup();
        let out =
            handle_update(&db, &cfg(), &reply_update(2, 42, 100, "y"), 5, &|_| false).unwrap();
        assert_eq!(out.queued.len(), 1);
        assert!(out.calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("devbox is offline"));
        // The answer is in the outbox, stored with the update, waiting to be sent.
        let head = outbox::head(&db, "chat:42", 5, true).unwrap().unwrap();
        assert_eq!(head.params(), out.calls[0].params);
    }

    #[test]
    fn allow_lists() {
        let db = setup();
        let out =
            handle_update(&db, &cfg(), &reply_update(3, 99, 100, "ls"), 5, &|_| true).unwrap();
        assert!(out.queued.is_empty() && out.calls.is_empty());
        let users = Config {
            allowed_chats: vec![42],
            allowed_users: vec![8],
            ..Config::default()
        };
        let out =
            handle_update(&db, &users, &reply_update(4, 42, 100, "ls"), 5, &|_| true).unwrap();
        assert!(out.queued.is_empty() && out.calls.is_empty());
        let nobody = Config::default();
        let out =
            handle_update(&db, &nobody, &reply_update(5, 42, 100, "ls"), 5, &|_| true).unwrap();
        assert!(out.queued.is_empty());
    }

    #[test]
    fn cmd_token_is_bound_to_its_chat() {
        let db = setup();
        let two = Config {
            allowed_chats: vec![42, 43],
            allowed_users: vec![],
            ..Config::default()
        };
        let msg = |id: i64, chat: i64, text: &str| {
            update(json!({"update_id": id,
            "message": {"message_id": id, "chat": {"id": chat}, "from": {"id": 7}, "text": text}}))
        };
        let out =
            handle_update(&db, &two, &msg(6, 42, "/cmd tok1 git status"), 5, &|_| true).unwrap();
        assert_eq!(out.queued[0].command, "git status");
        let out = handle_update(&db, &two, &msg(7, 43, "/cmd tok1 rm -rf"), 5, &|_| true).unwrap();
        assert!(out.queued.is_empty());
        assert!(out.calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("Unknown or expired token"));
    }

    #[test]
    fn buttons_map_to_commands() {
        let db = setup();
        let press = |id: i64, data: &str| {
            update(
                json!({"update_id": id, "callback_query": {"id": "cb", "from": {"id": 7},
            "message": {"message_id": 100, "chat": {"id": 42}}, "data": data}}),
            )
        };
        let out = handle_update(&db, &cfg(), &press(8, "cmd:tok1:continue"), 5, &|_| true).unwrap();
        assert_eq!(out.queued[0].command, "");
        assert_eq!(out.calls[0].method, "answerCallbackQuery");
        let out = handle_update(&db, &cfg(), &press(9, "cmd:tok1:exit"), 5, &|_| true).unwrap();
        assert_eq!(out.queued[0].command, "/exit");
        assert_eq!(out.queued[0].keys, None);
        let out = handle_update(&db, &cfg(), &press(11, "cmd:tok1:stop"), 5, &|_| true).unwrap();
        assert_eq!(out.queued[0].keys.as_deref(), Some("Escape"));
        let out = handle_update(&db, &cfg(), &press(12, "cmd:tok1:peek"), 5, &|_| true).unwrap();
        assert!(out.queued.is_empty());
        assert_eq!(out.peeks[0].session_id, "s1");
        assert_eq!(out.calls[0].method, "answerCallbackQuery");
        let out = handle_update(&db, &cfg(), &press(10, "cmd:zzz:yes"), 5, &|_| true).unwrap();
        assert!(out.queued.is_empty());
        assert_eq!(out.calls[0].method, "answerCallbackQuery");
    }

    #[test]
    fn non_commands_get_explanations_never_empty_commands() {
        let db = setup();
        let sticker = update(
            json!({"update_id": 11, "message": {"message_id": 1, "chat": {"id": 42}, "from": {"id": 7},
            "sticker": {"file_id": "x"}, "reply_to_message": {"message_id": 100, "chat": {"id": 42}}}}),
        );
        let unknown = reply_update(12, 42, 555, "ls");
        let plain = update(
            json!({"update_id": 13, "message": {"message_id": 2, "chat": {"id": 42}, "from": {"id": 7}, "text": "hi"}}),
        );
        let edited = update(
            json!({"update_id": 14, "edited_message": {"message_id": 2, "chat": {"id": 42}, "from": {"id": 7}, "text": "x"}}),
        );
        let help = update(
            json!({"update_id": 15, "message": {"message_id": 3, "chat": {"id": 42}, "from": {"id": 7}, "text": "/start"}}),
        );
        let sessions = update(
            json!({"update_id": 16, "message": {"message_id": 4, "chat": {"id": 42}, "from": {"id": 7}, "text": "/sessions"}}),
        );
        for (u, needle) in [
            (sticker, "stickers"),
            (unknown, "don't know which session"),
            (plain, "reply to one of its notifications"),
            (edited, "Edits are not sent"),
            (help, "<code>42</code>"),
            (sessions, "devbox"),
        ] {
            let out = handle_update(&db, &cfg(), &u, 5, &|_| false).unwrap();
            assert!(out.queued.is_empty());
            assert!(
                out.calls[0].params["text"]
                    .as_str()
                    .unwrap()
                    .contains(needle),
                "{needle}"
            );
        }
    }

    fn file_update(id: i64, content: serde_json::Value) -> Update {
        let mut message = json!({"message_id": id + 1000, "chat": {"id": 42}, "from": {"id": 7}});
        for (k, v) in content.as_object().unwrap() {
            message[k] = v.clone();
        }
        update(json!({"update_id": id, "message": message}))
    }

    #[test]
    fn a_photo_replying_to_a_notification_queues_its_largest_size_with_the_caption() {
        let db = setup();
        let u = file_update(
            60,
            json!({"photo": [
                {"file_id": "small", "width": 90, "height": 60, "file_size": 900},
                {"file_id": "large", "width": 1280, "height": 853, "file_size": 90_000},
                {"file_id": "mid", "width": 320, "height": 213, "file_size": 9_000}],
              "caption": "what is wrong here?",
              "reply_to_message": {"message_id": 100, "chat": {"id": 42}}}),
        );
        let out = handle_update(&db, &cfg(), &u, 5, &|_| true).unwrap();
        assert!(out.calls.is_empty(), "{:?}", out.calls);
        let q = &out.queued[0];
        assert_eq!(q.session_id, "s1");
        assert_eq!(q.command, "what is wrong here?");
        assert_eq!(q.source_message_id, Some(1060));
        let file = q.file_ref().unwrap();
        assert_eq!(file.file_id, "large");
        assert_eq!(file.kind, FileKind::Photo);
        assert_eq!(file.size, Some(90_000));
    }

    #[test]
    fn a_file_finds_its_session_by_a_cmd_caption_or_is_answered() {
        let db = setup();
        let by_token = file_update(
            61,
            json!({"document": {"file_id": "doc1", "file_name": "log.txt", "file_size": 10},
                   "caption": "/cmd tok1 read this log"}),
        );
        let out = handle_update(&db, &cfg(), &by_token, 5, &|_| true).unwrap();
        let q = &out.queued[0];
        assert_eq!(q.command, "read this log");
        let file = q.file_ref().unwrap();
        assert_eq!(
            (file.kind, file.name.as_deref()),
            (FileKind::Document, Some("log.txt"))
        );

        let lost = file_update(62, json!({"document": {"file_id": "doc2"}}));
        let out = handle_update(&db, &cfg(), &lost, 5, &|_| true).unwrap();
        assert!(out.queued.is_empty());
        assert!(out.calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("as a reply to one"));
    }

    #[test]
    fn an_over_limit_file_is_refused_and_a_voice_note_is_not_transcribed() {
        let db = setup();
        let big = file_update(
            63,
            json!({"document": {"file_id": "big", "file_size": MAX_FILE_BYTES + 1},
                   "reply_to_message": {"message_id": 100, "chat": {"id": 42}}}),
        );
        let out = handle_update(&db, &cfg(), &big, 5, &|_| true).unwrap();
        assert!(out.queued.is_empty());
        let text = out.calls[0].params["text"].as_str().unwrap();
        assert!(
            text.contains("Not sent") && text.contains("20 MB"),
            "{text}"
        );
        assert!(queue::get(&db, "tg-63").unwrap().is_none());

        let voice = file_update(
            64,
            json!({"voice": {"file_id": "v1", "file_size": 3000},
                   "reply_to_message": {"message_id": 100, "chat": {"id": 42}}}),
        );
        let out = handle_update(&db, &cfg(), &voice, 5, &|_| true).unwrap();
        assert_eq!(out.queued[0].file_ref().unwrap().kind, FileKind::Voice);
        let text = out.calls[0].params["text"].as_str().unwrap();
        assert!(text.contains("not transcribed"), "{text}");

        let bad_id = file_update(
            65,
            json!({"voice": {"file_id": "../../etc"},
                   "reply_to_message": {"message_id": 100, "chat": {"id": 42}}}),
        );
        let out = handle_update(&db, &cfg(), &bad_id, 5, &|_| true).unwrap();
        assert!(out.queued.is_empty());
    }

    #[test]
    fn an_ack_is_reacted_to_unless_the_chat_was_told_it_died() {
        let db = setup();
        let out =
            handle_update(&db, &cfg(), &reply_update(40, 42, 100, "ls"), 5, &|_| true).unwrap();
        let q = out.queued[0].clone();
        let call = ack_reaction(&q).expect("a reaction");
        assert_eq!(call.method, "setMessageReaction");
        assert_eq!(call.params["message_id"], json!(40 + 1000));
        let dead = queue::Queued {
            state: "dead".into(),
            ..q.clone()
        };
        assert!(ack_reaction(&dead).is_none());
        let button = queue::Queued {
            source_message_id: None,
            ..q
        };
        assert!(ack_reaction(&button).is_none());
    }

    #[test]
    fn sessions_show_the_cmd_token_of_this_chat() {
        let db = setup();
        store::upsert_session(&db, "s2", "laptop", Some("web"), 10).unwrap();
        store::record_message(&db, 42, 100, "s1", "tok-old", 1).unwrap();
        store::record_message(&db, 42, 101, "s1", "tok-new", 2).unwrap();
        store::record_message(&db, 43, 102, "s2", "tok-43", 3).unwrap();
        let text = sessions_text(&db, 42, &|_| true).unwrap();
        let line = |id: &str| {
            text.lines()
                .find(|l| l.contains(&format!("<code>{id}</code>")))
                .unwrap_or_else(|| panic!("{id} in {text}"))
                .to_owned()
        };
        assert!(line("s1").ends_with("/cmd <code>tok-new</code>"), "{text}");
        // s2's only token was issued in chat 43: not usable here, so not shown here.
        assert!(!line("s2").contains("/cmd"), "{text}");
        // The token shown is the one /cmd takes in this chat.
        let cmd = update(json!({"update_id": 30, "message": {"message_id": 30,
            "chat": {"id": 42}, "from": {"id": 7}, "text": "/cmd tok-new ls"}}));
        let out = handle_update(&db, &cfg(), &cmd, 5, &|_| true).unwrap();
        assert_eq!(out.queued.len(), 1);
        assert!(help_text(42).contains("/sessions shows each session's TOKEN"));
    }

    #[test]
    fn the_sessions_list_fits_one_message() {
        let db = setup();
        for i in 0..100 {
            let label = "<&>".repeat(33);
            store::upsert_session(&db, &format!("s-{i:03}"), "devbox", Some(&label), 10 + i)
                .unwrap();
        }
        for i in 0..100 {
            store::record_message(&db, 42, 1_000 + i, &format!("s-{i:03}"), "tok0123456ab", 5)
                .unwrap();
        }
        let text = sessions_text(&db, 42, &|_| true).unwrap();
        assert!(text.encode_utf16().count() <= ccr_protocol::TELEGRAM_MAX_TEXT);
        assert!(text.contains("<code>s-099</code>"), "the most recent first");
        assert!(text.ends_with("not shown (the most recently active come first)."));
        let lines = text.lines().filter(|l| l.starts_with('•')).count();
        assert!((1..=BOT_LISTED_SESSIONS).contains(&lines), "{lines}");
    }

    #[test]
    fn settings() {
        let c = Config::from_settings("42, -100123,x", "");
        assert_eq!(c.allowed_chats, vec![42, -100123]);
        assert!(c.allowed_users.is_empty());
        assert!(c.allows(42, None) && !c.allows(7, None));
        let c = Config::from_settings("42", "7");
        assert!(c.allows(42, Some(7)) && !c.allows(42, Some(8)) && !c.allows(42, None));
    }

    fn queued(command: &str, source: Option<i64>) -> queue::Queued {
        queue::Queued {
            command_id: "tg-1".into(),
            session_id: "s1".into(),
            machine_id: "dev<box>".into(),
            chat_id: 42,
            source_message_id: source,
            command: command.into(),
            keys: None,
            project: None,
            file: None,
            state: "failed".into(),
            attempts: 1,
            created_at: 0,
        }
    }

    #[test]
    fn machine_notices() {
        let failed = command_failed(
            &queued("ls", Some(9)),
            "api & co",
            "dev<box>",
            Some("pane <gone>"),
        );
        assert_eq!(failed.method, "sendMessage");
        assert_eq!(failed.params["chat_id"], 42);
        assert_eq!(
            failed.params["text"],
            "⚠️ Could not type into <b>api &amp; co</b> on dev&lt;box&gt;: pane &lt;gone&gt;"
        );
        assert_eq!(failed.params["reply_parameters"]["message_id"], 9);
        let no_reason = command_failed(&queued("ls", None), "api", "m", None);
        assert!(no_reason.params["text"]
            .as_str()
            .unwrap()
            .ends_with(": no reason given"));
        assert!(no_reason.params.get("reply_parameters").is_none());

        let long = "é".repeat(100) + "<";
        let dropped = not_delivered(&queued(&long, Some(3)));
        assert_eq!(
            dropped.params["text"],
            format!(
                "⚠️ Not delivered: <code>{}</code> waited too long for dev&lt;box&gt; to come online and was dropped. Send it again when the machine is back.",
                "é".repeat(80)
            )
        );
        assert_eq!(dropped.params["reply_parameters"]["message_id"], 3);
        let enter = not_delivered(&queued("", None));
        assert!(enter.params["text"]
            .as_str()
            .unwrap()
            .contains("<code>(Enter)</code>"));
    }

    /// A machine's frame may carry up to 64 KB of error text: the chat's notice is cut to fit
    /// a message (Telegram refuses a longer one, and the chat would never hear of it).
    #[test]
    fn a_machine_s_long_error_still_fits_one_message() {
        let long = "<".repeat(ccr_protocol::MAX_FRAME_BYTES);
        let mut start = queued("", Some(3));
        start.project = Some("api".into());
        for call in [
            command_failed(&queued("ls", Some(9)), "api", "devbox", Some(&long)),
            launch::start_result(&start, false, None, Some(&long)),
            launch::start_result(&start, true, Some(&long), None),
        ] {
            let text = call.params["text"].as_str().unwrap();
            assert!(
                text.encode_utf16().count() <= ccr_protocol::TELEGRAM_MAX_TEXT,
                "{} units",
                text.encode_utf16().count()
            );
            assert!(text.contains("&lt;&lt;&lt;…"), "{text}");
        }
    }

    /// Fails the first `INSERT INTO command_queue`, as a full disk or a storage hiccup would.
    struct FailQueueOnce<'a> {
        db: &'a MemDb,
        armed: std::cell::Cell<bool>,
    }

    impl Sql for FailQueueOnce<'_> {
        fn exec(&self, sql: &str, params: Vec<store::SqlValue>) -> Result<(), StoreError> {
            if sql.contains("INSERT INTO command_queue") && self.armed.replace(false) {
                return Err(StoreError("injected: queue insert failed".into()));
            }
            self.db.exec(sql, params)
        }
        fn query<T: serde::de::DeserializeOwned>(
            &self,
            sql: &str,
            params: Vec<store::SqlValue>,
        ) -> Result<Vec<T>, StoreError> {
            self.db.query(sql, params)
        }
        fn transaction<T, F>(&self, work: F) -> Result<T, StoreError>
        where
            F: FnOnce(&Self) -> Result<T, StoreError>,
        {
            self.db.transaction(|_| work(self))
        }
    }

    #[test]
    fn a_failed_queue_insert_records_nothing_and_the_retry_queues() {
        let db = setup();
        let flaky = FailQueueOnce {
            db: &db,
            armed: std::cell::Cell::new(true),
        };
        let first = handle_update(&flaky, &cfg(), &reply_update(21, 42, 100, "ls"), 5, &|_| {
            true
        });
        assert!(first.is_err(), "the webhook answers 5xx");
        let seen: i64 =
            db.0.query_row("SELECT count(*) FROM seen_updates", [], |r| r.get(0))
                .unwrap();
        assert_eq!(seen, 0, "the update id was not recorded");
        // Telegram retries the same update: it is not a duplicate, and the command queues.
        let retry = handle_update(&flaky, &cfg(), &reply_update(21, 42, 100, "ls"), 6, &|_| {
            true
        })
        .unwrap();
        assert!(!retry.duplicate);
        assert_eq!(retry.queued.len(), 1);
        assert_eq!(retry.queued[0].command, "ls");
        assert_eq!(queue::unacked_count(&db, "devbox").unwrap(), 1);
    }

    const DAY: i64 = 24 * 60 * 60 * 1000;

    fn finish(db: &MemDb, command_id: &str, at: i64) {
        queue::ack(db, command_id, "devbox", at).unwrap().unwrap();
        queue::complete(db, command_id, "devbox", true, None, at)
            .unwrap()
            .unwrap();
    }

    #[test]
    fn a_late_replay_of_a_finished_command_is_not_pushed_again() {
        let db = setup();
        let first =
            handle_update(&db, &cfg(), &reply_update(31, 42, 100, "ls"), 0, &|_| false).unwrap();
        assert_eq!(first.queued.len(), 1);
        finish(&db, "tg-31", DAY);
        // The dedup row is gone (its window passed); Telegram replays the update.
        db.exec("DELETE FROM seen_updates", vec![]).unwrap();
        let replay = handle_update(
            &db,
            &cfg(),
            &reply_update(31, 42, 100, "ls"),
            8 * DAY,
            &|_| false,
        )
        .unwrap();
        assert!(
            replay.queued.is_empty(),
            "a finished command is never pushed again"
        );
        assert!(replay.calls.is_empty(), "and nothing is said about it");
        assert_eq!(queue::get(&db, "tg-31").unwrap().unwrap().state, "done");

        // A replay of a command still unacked may push it again (the agent dedups by id).
        handle_update(&db, &cfg(), &reply_update(32, 42, 100, "pwd"), DAY, &|_| {
            true
        })
        .unwrap();
        db.exec("DELETE FROM seen_updates", vec![]).unwrap();
        let unacked = handle_update(
            &db,
            &cfg(),
            &reply_update(32, 42, 100, "pwd"),
            2 * DAY,
            &|_| true,
        )
        .unwrap();
        assert_eq!(unacked.queued.len(), 1);
        assert_eq!(unacked.queued[0].command_id, "tg-32");
    }

    #[test]
    fn retention_keeps_the_dedup_row_while_its_command_row_lives() {
        let db = setup();
        handle_update(&db, &cfg(), &reply_update(41, 42, 100, "ls"), 0, &|_| false).unwrap();
        // The machine came back late: acked and done on day 6.
        finish(&db, "tg-41", 6 * DAY);
        // Day 8: the dedup row is over 7 days old, but its command row is not: both stay.
        queue::prune(&db, 8 * DAY).unwrap();
        assert!(queue::get(&db, "tg-41").unwrap().is_some());
        let replay = handle_update(
            &db,
            &cfg(),
            &reply_update(41, 42, 100, "ls"),
            8 * DAY,
            &|_| true,
        )
        .unwrap();
        assert!(replay.duplicate && replay.queued.is_empty());
        // Day 14: the command row goes, and its dedup row with it.
        queue::prune(&db, 14 * DAY).unwrap();
        assert!(queue::get(&db, "tg-41").unwrap().is_none());
        let seen: i64 =
            db.0.query_row("SELECT count(*) FROM seen_updates", [], |r| r.get(0))
                .unwrap();
        assert_eq!(seen, 0);
    }

    #[test]
    fn a_reply_to_a_gone_session_is_answered_and_not_queued() {
        let db = setup();
        assert_eq!(
            store::mark_session_gone(&db, "s1", "devbox", "pane %0 no longer exists", 3).unwrap(),
            store::GoneReport::Marked
        );
        for online in [true, false] {
            let out = handle_update(
                &db,
                &cfg(),
                &reply_update(20 + i64::from(online), 42, 100, "git push --force"),
                5,
                &|_| online,
            )
            .unwrap();
            assert!(out.queued.is_empty());
            let text = out.calls[0].params["text"].as_str().unwrap();
            assert!(
                text.contains("pane of <b>api</b> on devbox is gone"),
                "{text}"
            );
            assert!(text.contains("pane %0 no longer exists"), "{text}");
            assert!(text.contains("Start Claude Code again in tmux"), "{text}");
        }
        assert_eq!(queue::unacked_count(&db, "devbox").unwrap(), 0);
        let sessions = update(
            json!({"update_id": 30, "message": {"message_id": 4, "chat": {"id": 42}, "from": {"id": 7}, "text": "/sessions"}}),
        );
        let out = handle_update(&db, &cfg(), &sessions, 5, &|_| true).unwrap();
        assert!(out.calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("pane gone"));
        // A button press gets the same refusal as its toast.
        let press = update(
            json!({"update_id": 31, "callback_query": {"id": "cb", "from": {"id": 7},
            "message": {"message_id": 100, "chat": {"id": 42}}, "data": "cmd:tok1:yes"}}),
        );
        let out = handle_update(&db, &cfg(), &press, 5, &|_| true).unwrap();
        assert!(out.queued.is_empty());
        assert!(out.calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("is gone"));
        // Registered again (its SessionStart ran in a new pane): replies flow again.
        store::upsert_session(&db, "s1", "devbox", None, 6).unwrap();
        let out =
            handle_update(&db, &cfg(), &reply_update(40, 42, 100, "ls"), 7, &|_| true).unwrap();
        assert_eq!(out.queued.len(), 1);
    }

    #[test]
    fn end_asks_first_and_its_button_types_exit() {
        let db = setup();
        let out = handle_update(&db, &cfg(), &reply_update(50, 42, 100, "/end"), 5, &|_| {
            true
        })
        .unwrap();
        assert!(out.queued.is_empty(), "nothing before the confirmation");
        let kb = &out.calls[0].params["reply_markup"]["inline_keyboard"][0];
        assert_eq!(kb[0]["callback_data"], "end:tok1");
        assert!(out.calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("End <b>api</b> on devbox?"));
        let press = |id: i64, from: i64, data: &str| {
            update(
                json!({"update_id": id, "callback_query": {"id": "cb", "from": {"id": from},
            "message": {"message_id": 300, "chat": {"id": 42}}, "data": data}}),
            )
        };
        // A stranger's tap does nothing.
        let only_7 = Config {
            allowed_chats: vec![42],
            allowed_users: vec![7],
            ..cfg()
        };
        let out = handle_update(&db, &only_7, &press(51, 8, "end:tok1"), 5, &|_| true).unwrap();
        assert!(out.queued.is_empty() && out.calls.is_empty());
        // Cancel does nothing but say so.
        let out = handle_update(&db, &only_7, &press(52, 7, "end-cancel"), 5, &|_| true).unwrap();
        assert!(out.queued.is_empty());
        assert_eq!(out.calls[0].params["text"], "Not ended.");
        // The owner's tap queues /exit for the session.
        let out = handle_update(&db, &only_7, &press(53, 7, "end:tok1"), 5, &|_| true).unwrap();
        assert_eq!(out.queued.len(), 1);
        assert_eq!(out.queued[0].command, "/exit");
        assert_eq!(out.queued[0].session_id, "s1");
        // The confirmation loses its buttons, so a second tap cannot type /exit again.
        assert_eq!(out.calls[1].method, "editMessageReplyMarkup");
        assert_eq!(out.calls[1].params["message_id"], 300);
        // /end TOKEN works without a reply; without either, the chat is told how.
        let msg = |id: i64, text: &str| {
            update(json!({"update_id": id,
            "message": {"message_id": id, "chat": {"id": 42}, "from": {"id": 7}, "text": text}}))
        };
        let out = handle_update(&db, &cfg(), &msg(54, "/end tok1"), 5, &|_| true).unwrap();
        assert_eq!(
            out.calls[0].params["reply_markup"]["inline_keyboard"][0][0]["callback_data"],
            "end:tok1"
        );
        let out = handle_update(&db, &cfg(), &msg(55, "/end"), 5, &|_| true).unwrap();
        assert!(out.calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("as a reply to a notification"));
        let out = handle_update(&db, &cfg(), &msg(56, "/end nosuch"), 5, &|_| true).unwrap();
        assert!(out.calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("don't know that session"));
    }

    #[test]
    fn new_queues_a_start_request_for_the_machine_with_the_project() {
        let db = setup();
        launch::record_projects(&db, "devbox", &["api".into()], 1).unwrap();
        let msg = |id: i64, text: &str| {
            update(json!({"update_id": id,
            "message": {"message_id": id, "chat": {"id": 42}, "from": {"id": 7}, "text": text}}))
        };
        let out =
            handle_update(&db, &cfg(), &msg(60, "/new api hello world"), 5, &|_| true).unwrap();
        assert_eq!(out.queued.len(), 1);
        assert_eq!(out.queued[0].project.as_deref(), Some("api"));
        assert_eq!(out.queued[0].command, "hello world");
        let out = handle_update(&db, &cfg(), &msg(61, "/new nosuch"), 5, &|_| true).unwrap();
        assert!(out.queued.is_empty());
        let out = handle_update(&db, &cfg(), &msg(62, "/new"), 5, &|_| true).unwrap();
        assert!(out.queued.is_empty());
        assert_eq!(
            out.calls[0].params["reply_markup"]["inline_keyboard"][0][0]["callback_data"],
            "new:62:0"
        );
        let tap = update(
            json!({"update_id": 63, "callback_query": {"id": "cb", "from": {"id": 7},
            "message": {"message_id": 400, "chat": {"id": 42}}, "data": "new:62:0"}}),
        );
        let out = handle_update(&db, &cfg(), &tap, 5, &|_| true).unwrap();
        assert_eq!(out.queued.len(), 1);
        assert_eq!(out.calls[0].method, "answerCallbackQuery");
    }

    #[test]
    fn full_queue_refuses_with_a_reason() {
        let db = setup();
        for i in 0..MAX_UNACKED_PER_MACHINE {
            let out = handle_update(
                &db,
                &cfg(),
                &reply_update(100 + i, 42, 100, "x"),
                5,
                &|_| false,
            )
            .unwrap();
            assert_eq!(out.queued.len(), 1);
        }
        let out = handle_update(&db, &cfg(), &reply_update(9_999, 42, 100, "x"), 5, &|_| {
            false
        })
        .unwrap();
        assert!(out.queued.is_empty());
        assert!(out.calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("commands waiting"));
    }
}
