//! Permission requests decided from the chat, without the runtime.
//!
//! A PermissionRequest hook opens a request (`POST /approvals`): it is stored, and one card
//! with buttons goes to the chat through the outbox. A tap (or a text reply to the card) on
//! an open request settles it once: the decision (Claude Code's `decision` object) is stored
//! in the same transaction as the card's edit and the tap's answer, then pushed over the
//! machine's socket as `decision` until the agent acks it. Later taps are told who won.
//!
//! States: `open` → `decided` (a chat decision, pushed until acked) or `closed` (answered at
//! the terminal, expired). Only `open` moves.

use ccr_protocol::api::OpenApproval;
use ccr_protocol::validate;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::outbox::{self, Mapping};
use crate::store::{self, Sql, StoreError};
use crate::telegram::{self, escape_html, BotCall};
use crate::topics;

/// Callback data prefix of a card's buttons: `ap:<requestId>:<choice>`.
pub const CALLBACK_PREFIX: &str = "ap:";
/// Longest request id accepted (keeps callback data under Telegram's 64 bytes).
pub const MAX_REQUEST_ID: usize = 40;
/// Most options per question shown as buttons.
pub const MAX_OPTIONS: usize = 10;
/// Most "always allow" buttons on a card.
pub const MAX_SUGGESTIONS: usize = 4;
/// Longest preview of a tool input, in characters.
const PREVIEW_CHARS: usize = 1500;
/// How long before an unacked decision is pushed again (ms).
pub const REPUSH_MS: i64 = 10_000;
/// Decided or closed requests are kept this long for late taps (ms).
const RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// What a button chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// ✅ Allow once.
    Allow,
    /// ♾ Allow and add the n-th permission suggestion.
    Always(usize),
    /// ❌ Deny.
    Deny,
    /// 🛑 Deny and stop Claude (`interrupt: true`).
    Stop,
    /// AskUserQuestion: option `.1` of question `.0` (a multi-select one toggles it).
    Pick(usize, usize),
    /// AskUserQuestion: send the picks of multi-select question `.0`.
    Send(usize),
    /// ExitPlanMode: keep planning (deny; a text reply gives the feedback).
    KeepPlanning,
}

impl Choice {
    fn code(self) -> String {
        match self {
            Choice::Allow => "a".into(),
            Choice::Always(i) => format!("s{i}"),
            Choice::Deny => "d".into(),
            Choice::Stop => "x".into(),
            Choice::Pick(q, o) => format!("q{q}o{o}"),
            Choice::Send(q) => format!("q{q}s"),
            Choice::KeepPlanning => "k".into(),
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        match code {
            "a" => Some(Choice::Allow),
            "d" => Some(Choice::Deny),
            "x" => Some(Choice::Stop),
            "k" => Some(Choice::KeepPlanning),
            _ if code.starts_with('q') => {
                let rest = code.get(1..)?;
                if let Some(q) = rest.strip_suffix('s') {
                    return q.parse().ok().filter(|q| *q < 4).map(Choice::Send);
                }
                let (q, o) = rest.split_once('o')?;
                let (q, o): (usize, usize) = (q.parse().ok()?, o.parse().ok()?);
                (q < 4 && o < MAX_OPTIONS).then_some(Choice::Pick(q, o))
            }
            _ => code
                .strip_prefix('s')
                .and_then(|n| n.parse().ok())
                .filter(|n| *n < MAX_SUGGESTIONS)
                .map(Choice::Always),
        }
    }
}

/// Callback data for a card button.
pub fn callback_data(request_id: &str, choice: Choice) -> String {
    format!("{CALLBACK_PREFIX}{request_id}:{}", choice.code())
}

/// Parses a card button's callback data.
pub fn parse_callback(data: &str) -> Option<(String, Choice)> {
    let rest = data.strip_prefix(CALLBACK_PREFIX)?;
    let (id, code) = rest.rsplit_once(':')?;
    request_id_ok(id).ok()?;
    Some((id.to_owned(), Choice::from_code(code)?))
}

/// A request id: 1–40 of `[A-Za-z0-9_-]`.
pub fn request_id_ok(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID {
        return Err(format!(
            "requestId must be 1 to {MAX_REQUEST_ID} characters"
        ));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("requestId may hold only letters, digits, '-' and '_'".into());
    }
    Ok(())
}

/// The decision object Claude Code reads (inside `hookSpecificOutput.decision`).
pub fn decision_json(choice: Choice, suggestions: &[Value], message: Option<&str>) -> Value {
    match choice {
        Choice::Allow => json!({"behavior": "allow"}),
        Choice::Always(i) => match suggestions.get(i) {
            Some(s) => json!({"behavior": "allow", "updatedPermissions": [s]}),
            None => json!({"behavior": "allow"}),
        },
        Choice::Deny => json!({
            "behavior": "deny",
            "message": message.unwrap_or("Denied from Telegram."),
            "interrupt": false,
        }),
        Choice::Stop => json!({
            "behavior": "deny",
            "message": message.unwrap_or("Denied from Telegram; stop and wait for instructions."),
            "interrupt": true,
        }),
        Choice::KeepPlanning => json!({
            "behavior": "deny",
            "message": message.unwrap_or("Keep planning."),
            "interrupt": false,
        }),
        // Settled by `step` with `updatedInput`; never a bare decision.
        Choice::Pick(..) | Choice::Send(_) => json!({"behavior": "allow"}),
    }
}

/// What a choice did, for the card and the toasts.
pub fn outcome_words(choice: Choice, suggestions: &[Value]) -> String {
    match choice {
        Choice::Allow => "allowed".into(),
        Choice::Always(i) => format!("allowed ({})", suggestion_name(suggestions.get(i))),
        Choice::Deny => "denied".into(),
        Choice::Stop => "denied and stopped".into(),
        Choice::KeepPlanning => "kept planning".into(),
        Choice::Pick(..) | Choice::Send(_) => "answered".into(),
    }
}

/// A suggestion named by what it allows: `Always: Bash(npm test)`.
pub fn suggestion_name(s: Option<&Value>) -> String {
    let Some(s) = s else {
        return "Always".into();
    };
    let kind = s.get("type").and_then(Value::as_str).unwrap_or("");
    let text = match kind {
        "addRules" | "replaceRules" => {
            let rules: Vec<String> = s
                .get("rules")
                .and_then(Value::as_array)
                .map(|rs| {
                    rs.iter()
                        .map(|r| {
                            let tool = r.get("toolName").and_then(Value::as_str).unwrap_or("?");
                            match r.get("ruleContent").and_then(Value::as_str) {
                                Some(c) => format!("{tool}({c})"),
                                None => tool.to_owned(),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            rules.join(", ")
        }
        "setMode" => format!(
            "mode {}",
            s.get("mode").and_then(Value::as_str).unwrap_or("?")
        ),
        "addDirectories" => {
            let dirs: Vec<&str> = s
                .get("directories")
                .and_then(Value::as_array)
                .map(|d| d.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!("dirs {}", dirs.join(", "))
        }
        other => other.to_owned(),
    };
    truncate(&format!("Always: {text}"), 48)
}

pub use crate::telegram::truncate;

fn field<'a>(input: &'a Value, key: &str) -> Option<&'a str> {
    input.get(key).and_then(Value::as_str)
}

fn code_block(text: &str) -> String {
    format!("<pre>{}</pre>", escape_html(&truncate(text, PREVIEW_CHARS)))
}

/// The readable preview of a tool call (HTML).
pub fn preview(tool_name: &str, input: &Value) -> String {
    match tool_name {
        "Bash" => {
            let mut out = code_block(field(input, "command").unwrap_or(""));
            if let Some(d) = field(input, "description") {
                out.push('\n');
                out.push_str(&escape_html(&truncate(d, 300)));
            }
            out
        }
        "Edit" | "MultiEdit" => {
            let path = field(input, "file_path").unwrap_or("?");
            let old = field(input, "old_string").unwrap_or("");
            let new = field(input, "new_string").unwrap_or("");
            format!(
                "<code>{}</code>\n− {}\n+ {}",
                escape_html(path),
                code_block(&truncate(old, PREVIEW_CHARS / 2)),
                code_block(&truncate(new, PREVIEW_CHARS / 2)),
            )
        }
        "Write" => {
            let path = field(input, "file_path").unwrap_or("?");
            let content = field(input, "content").unwrap_or("");
            let head: Vec<&str> = content.lines().take(10).collect();
            format!(
                "<code>{}</code> ({} bytes)\n{}",
                escape_html(path),
                content.len(),
                code_block(&head.join("\n"))
            )
        }
        "WebFetch" => escape_html(&truncate(field(input, "url").unwrap_or("?"), 500)),
        _ => {
            let args = code_block(&input.to_string());
            match tool_name
                .strip_prefix("mcp__")
                .and_then(|rest| rest.split_once("__"))
            {
                Some((server, tool)) => format!(
                    "MCP server <b>{}</b>, tool <b>{}</b>\n{args}",
                    escape_html(server),
                    escape_html(tool)
                ),
                None => args,
            }
        }
    }
}

/// The card's text (HTML).
pub fn card_text(label: &str, machine: &str, tool_name: &str, input: &Value) -> String {
    format!(
        "🔐 <b>{}</b> on {} asks to use <b>{}</b>\n{}",
        escape_html(label),
        escape_html(machine),
        escape_html(tool_name),
        preview(tool_name, input)
    )
}

/// The card's buttons.
pub fn keyboard(request_id: &str, suggestions: &[Value]) -> Value {
    let button = |text: String, c: Choice| json!({"text": text, "callback_data": callback_data(request_id, c)});
    let mut rows = vec![vec![
        button("✅ Allow".into(), Choice::Allow),
        button("❌ Deny".into(), Choice::Deny),
    ]];
    for (i, s) in suggestions.iter().enumerate().take(MAX_SUGGESTIONS) {
        rows.push(vec![button(
            format!("♾ {}", suggestion_name(Some(s))),
            Choice::Always(i),
        )]);
    }
    rows.push(vec![button("🛑 Deny and stop".into(), Choice::Stop)]);
    json!({ "inline_keyboard": rows })
}

/// The questions of an AskUserQuestion input (at most 4).
fn questions(input: &Value) -> Vec<&Value> {
    input
        .get("questions")
        .and_then(Value::as_array)
        .map(|q| q.iter().take(4).collect())
        .unwrap_or_default()
}

fn options(question: &Value) -> Vec<&str> {
    question
        .get("options")
        .and_then(Value::as_array)
        .map(|o| {
            o.iter()
                .take(MAX_OPTIONS)
                .map(|o| o.get("label").and_then(Value::as_str).unwrap_or("?"))
                .collect()
        })
        .unwrap_or_default()
}

fn question_text(question: &Value) -> &str {
    field(question, "question").unwrap_or("")
}

fn multi(question: &Value) -> bool {
    question
        .get("multiSelect")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// An AskUserQuestion card's text (HTML).
pub fn questions_text(label: &str, machine: &str, input: &Value) -> String {
    let mut out = format!(
        "❓ <b>{}</b> on {} asks:",
        escape_html(label),
        escape_html(machine)
    );
    for q in questions(input) {
        out.push_str("\n\n");
        if let Some(h) = field(q, "header") {
            out.push_str(&format!("<b>{}</b> ", escape_html(&truncate(h, 40))));
        }
        out.push_str(&escape_html(&truncate(question_text(q), 500)));
        if multi(q) {
            out.push_str(" <i>(several allowed)</i>");
        }
        let described = q.get("options").and_then(Value::as_array);
        for o in described.into_iter().flatten().take(MAX_OPTIONS) {
            let l = field(o, "label").unwrap_or("?");
            out.push_str(&format!("\n• {}", escape_html(&truncate(l, 100))));
            if let Some(d) = field(o, "description") {
                out.push_str(&format!(" — {}", escape_html(&truncate(d, 200))));
            }
        }
    }
    out.push_str("\n\nReply with text to answer the first open question in your own words.");
    out
}

/// An AskUserQuestion card's buttons, given the answers and multi-select picks so far.
pub fn questions_keyboard(
    request_id: &str,
    input: &Value,
    answers: &serde_json::Map<String, Value>,
    picks: &serde_json::Map<String, Value>,
) -> Value {
    let button = |text: String, c: Choice| json!({"text": text, "callback_data": callback_data(request_id, c)});
    let mut rows: Vec<Vec<Value>> = Vec::new();
    for (qi, q) in questions(input).into_iter().enumerate() {
        if answers.contains_key(question_text(q)) {
            continue;
        }
        let picked: Vec<u64> = picks
            .get(&qi.to_string())
            .and_then(Value::as_array)
            .map(|p| p.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        for (oi, label) in options(q).into_iter().enumerate() {
            let mark = match (multi(q), picked.contains(&(oi as u64))) {
                (false, _) => "",
                (true, true) => "☑ ",
                (true, false) => "☐ ",
            };
            rows.push(vec![button(
                format!("{mark}{}", truncate(label, 40)),
                Choice::Pick(qi, oi),
            )]);
        }
        if multi(q) {
            let h = field(q, "header").unwrap_or("answer");
            rows.push(vec![button(
                format!("📨 Send {}", truncate(h, 30)),
                Choice::Send(qi),
            )]);
        }
    }
    rows.push(vec![button("❌ Dismiss".into(), Choice::Deny)]);
    json!({ "inline_keyboard": rows })
}

/// An ExitPlanMode card: the plan in parts that fit Telegram's message size (HTML).
pub fn plan_parts(label: &str, machine: &str, input: &Value) -> Vec<String> {
    let header = format!(
        "📋 <b>{}</b> on {} has a plan:\n\n",
        escape_html(label),
        escape_html(machine)
    );
    let plan = field(input, "plan").unwrap_or("(no plan text)");
    let footer = "\n\nReply with feedback to keep planning.";
    // Room for the footer on the last part.
    let mut parts = telegram::split_escaped(&header, plan, 4000);
    if let Some(last) = parts.last_mut() {
        last.push_str(footer);
    }
    parts
}

/// An ExitPlanMode card's buttons.
pub fn plan_keyboard(request_id: &str) -> Value {
    json!({"inline_keyboard": [[
        {"text": "✅ Approve", "callback_data": callback_data(request_id, Choice::Allow)},
        {"text": "✏️ Keep planning", "callback_data": callback_data(request_id, Choice::KeepPlanning)},
    ]]})
}

/// What a choice does to a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Settles it with this decision.
    Decide {
        /// Claude Code's decision object.
        decision: Value,
        /// What happened, in words.
        words: String,
    },
    /// An AskUserQuestion request moves on: new answers and picks, a new keyboard.
    Progress {
        /// The answers so far.
        answers: serde_json::Map<String, Value>,
        /// The multi-select picks so far.
        picks: serde_json::Map<String, Value>,
        /// The toast.
        toast: String,
    },
    /// Nothing changes; the toast says why.
    Refuse(String),
}

/// The next step of an open request on `choice` (a text reply: [`Choice::Deny`] with the text).
pub fn step(
    tool_name: &str,
    input: &Value,
    suggestions: &[Value],
    mut answers: serde_json::Map<String, Value>,
    mut picks: serde_json::Map<String, Value>,
    choice: Choice,
    message: Option<&str>,
) -> Step {
    let plain = |choice: Choice| Step::Decide {
        decision: decision_json(choice, suggestions, message),
        words: outcome_words(choice, suggestions),
    };
    match tool_name {
        "ExitPlanMode" => match choice {
            Choice::Allow => Step::Decide {
                decision: json!({"behavior": "allow", "updatedInput": input}),
                words: "plan approved".into(),
            },
            Choice::Deny if message.is_some() => plain(Choice::KeepPlanning),
            Choice::KeepPlanning | Choice::Stop | Choice::Deny => plain(choice),
            _ => Step::Refuse("Unknown button.".into()),
        },
        "AskUserQuestion" => {
            let qs = questions(input);
            match (choice, message) {
                (Choice::Deny, Some(text)) => {
                    let Some(q) = qs.iter().find(|q| !answers.contains_key(question_text(q)))
                    else {
                        return Step::Refuse("Every question is answered already.".into());
                    };
                    answers.insert(question_text(q).to_owned(), json!(text));
                }
                (Choice::Pick(qi, oi), _) => {
                    let Some(q) = qs.get(qi) else {
                        return Step::Refuse("Unknown button.".into());
                    };
                    let Some(label) = options(q).get(oi).map(|l| (*l).to_owned()) else {
                        return Step::Refuse("Unknown button.".into());
                    };
                    if answers.contains_key(question_text(q)) {
                        return Step::Refuse("That question is answered already.".into());
                    }
                    if multi(q) {
                        let key = qi.to_string();
                        let mut picked: Vec<u64> = picks
                            .get(&key)
                            .and_then(Value::as_array)
                            .map(|p| p.iter().filter_map(Value::as_u64).collect())
                            .unwrap_or_default();
                        let o = oi as u64;
                        let toast = if picked.contains(&o) {
                            picked.retain(|p| *p != o);
                            format!("☐ {label}")
                        } else {
                            picked.push(o);
                            picked.sort_unstable();
                            format!("☑ {label}")
                        };
                        picks.insert(key, json!(picked));
                        return Step::Progress {
                            answers,
                            picks,
                            toast,
                        };
                    }
                    answers.insert(question_text(q).to_owned(), json!(label));
                }
                (Choice::Send(qi), _) => {
                    let Some(q) = qs.get(qi) else {
                        return Step::Refuse("Unknown button.".into());
                    };
                    let opts = options(q);
                    let labels: Vec<&str> = picks
                        .get(&qi.to_string())
                        .and_then(Value::as_array)
                        .map(|p| {
                            p.iter()
                                .filter_map(Value::as_u64)
                                .filter_map(|i| opts.get(i as usize).copied())
                                .collect()
                        })
                        .unwrap_or_default();
                    if labels.is_empty() {
                        return Step::Refuse("Pick at least one option first.".into());
                    }
                    answers.insert(question_text(q).to_owned(), json!(labels.join(", ")));
                }
                (Choice::Deny | Choice::Stop, None) => return plain(choice),
                _ => return Step::Refuse("Unknown button.".into()),
            }
            if qs.iter().all(|q| answers.contains_key(question_text(q))) {
                let mut updated = input.clone();
                if let Some(obj) = updated.as_object_mut() {
                    obj.insert("answers".into(), Value::Object(answers));
                }
                Step::Decide {
                    decision: json!({"behavior": "allow", "updatedInput": updated}),
                    words: "answered".into(),
                }
            } else {
                Step::Progress {
                    answers,
                    picks,
                    toast: "Noted; answer the remaining questions.".into(),
                }
            }
        }
        _ => match choice {
            Choice::Allow | Choice::Always(_) | Choice::Deny | Choice::Stop => plain(choice),
            _ => Step::Refuse("Unknown button.".into()),
        },
    }
}

/// One stored request.
#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    /// The hook's id.
    pub request_id: String,
    /// The session asking.
    pub session_id: String,
    /// When it was opened (ms).
    pub created_at: i64,
    /// Its machine.
    pub machine_id: String,
    /// The chat the card went to.
    pub chat_id: i64,
    /// The tool.
    pub tool_name: String,
    /// The tool input, as JSON text.
    pub tool_input: String,
    /// AskUserQuestion: the answers so far (`{"question": "label"}`), as JSON text.
    pub answers: String,
    /// AskUserQuestion: the multi-select picks so far (`{"0": [1, 2]}`), as JSON text.
    pub picks: String,
    /// The suggestions, as JSON text.
    pub suggestions: String,
    /// The card's text (HTML), to edit it with the outcome.
    pub card: String,
    /// `open`, `decided` or `closed`.
    pub state: String,
    /// What happened, in words.
    pub outcome: Option<String>,
}

impl Row {
    fn suggestions(&self) -> Vec<Value> {
        serde_json::from_str(&self.suggestions).unwrap_or_default()
    }
    fn input(&self) -> Value {
        serde_json::from_str(&self.tool_input).unwrap_or(Value::Null)
    }
    fn answers(&self) -> serde_json::Map<String, Value> {
        serde_json::from_str(&self.answers).unwrap_or_default()
    }
    fn picks(&self) -> serde_json::Map<String, Value> {
        serde_json::from_str(&self.picks).unwrap_or_default()
    }
}

const COLUMNS: &str = "request_id, session_id, created_at, machine_id, chat_id, tool_name, tool_input, answers, picks,
    suggestions, card, state, outcome";

/// Looks up a request.
pub fn get(db: &impl Sql, request_id: &str) -> Result<Option<Row>, StoreError> {
    Ok(db
        .query::<Row>(
            &format!("SELECT {COLUMNS} FROM approvals WHERE request_id = ?"),
            vec![request_id.into()],
        )?
        .into_iter()
        .next())
}

/// `POST /approvals`: stores the request and its card (in the outbox). Returns the card's
/// outbox lane to send, `None` when the request was already open (a retried hook).
pub fn open(
    db: &impl Sql,
    chats: &[i64],
    principal: &Principal,
    body: &OpenApproval,
    now: i64,
) -> Result<Option<String>, ApiError> {
    request_id_ok(&body.request_id).map_err(|e| ApiError::new(400, e))?;
    validate::session_id(&body.session_id).map_err(|e| ApiError::new(400, e))?;
    if body.tool_name.is_empty() || body.tool_name.len() > 200 {
        return Err(ApiError::new(400, "toolName must be 1 to 200 bytes"));
    }
    let Some(chat_id) = chats.first().copied() else {
        return Err(ApiError::new(
            503,
            "ALLOWED_CHAT_IDS is empty: set it on the Worker",
        ));
    };
    let Some(session) = store::get_session(db, &body.session_id)? else {
        return Err(ApiError::new(
            404,
            "unknown session: register it first (POST /sessions/register)",
        ));
    };
    if !principal.may_act_for(&session.machine_id) {
        return Err(ApiError::new(
            403,
            "this session belongs to another machine",
        ));
    }
    if get(db, &body.request_id)?.is_some() {
        return Ok(None);
    }
    let label = session.label.as_deref().unwrap_or(&session.session_id);
    let machine = &session.machine_id;
    let suggestions: Vec<Value> = body
        .permission_suggestions
        .iter()
        .take(MAX_SUGGESTIONS)
        .cloned()
        .collect();
    let input = &body.tool_input;
    let id = &body.request_id;
    let (mut parts, markup) = match body.tool_name.as_str() {
        "AskUserQuestion" => (
            vec![questions_text(label, machine, input)],
            questions_keyboard(id, input, &Default::default(), &Default::default()),
        ),
        "ExitPlanMode" => (plan_parts(label, machine, input), plan_keyboard(id)),
        tool => (
            vec![card_text(label, machine, tool, input)],
            keyboard(id, &suggestions),
        ),
    };
    let card = parts.pop().unwrap_or_default();
    let mut calls: Vec<BotCall> = parts
        .iter()
        .map(|p| BotCall::send(chat_id, p, None))
        .collect();
    calls.push(BotCall::send(chat_id, &card, None).with_param("reply_markup", markup));
    let lane = format!("chat:{chat_id}");
    db.transaction(|db| {
        db.exec(
            "INSERT INTO approvals (request_id, session_id, machine_id, chat_id, tool_name,
                 tool_input, suggestions, card, state, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?)",
            vec![
                body.request_id.as_str().into(),
                session.session_id.as_str().into(),
                session.machine_id.as_str().into(),
                chat_id.into(),
                body.tool_name.as_str().into(),
                body.tool_input.to_string().into(),
                Value::Array(suggestions.clone()).to_string().into(),
                card.as_str().into(),
                now.into(),
                now.into(),
            ],
        )?;
        let mapping = Mapping {
            session_id: session.session_id.clone(),
            token: body.request_id.clone(),
        };
        let group = format!("{CALLBACK_PREFIX}{}", body.request_id);
        // The card goes to the session's topic, asked for first if it has none yet.
        let topic_name = topics::name(session.label.as_deref(), machine);
        let topic = topics::ensure(db, chat_id, &session.session_id, &topic_name, now)?;
        outbox::add_for_session(db, &topic, &session.session_id, now)?;
        match outbox::add_notification(db, &calls, &group, &mapping, now)? {
            Ok(()) => Ok(Ok(())),
            Err(why) => Ok(Err(why)),
        }
    })?
    .map_err(|why| ApiError::new(503, format!("the card cannot be queued: {why}")))?;
    Ok(Some(lane))
}

/// The card's message, once the outbox has sent it.
fn card_message(db: &impl Sql, row: &Row) -> Result<Option<i64>, StoreError> {
    #[derive(Deserialize)]
    struct M {
        message_id: i64,
    }
    Ok(db
        .query::<M>(
            "SELECT message_id FROM messages WHERE token = ? AND chat_id = ?
             ORDER BY message_id DESC LIMIT 1",
            vec![row.request_id.as_str().into(), row.chat_id.into()],
        )?
        .into_iter()
        .next()
        .map(|m| m.message_id))
}

/// The card edited to show its outcome, without buttons; `None` while it is not sent yet.
fn edit_card(db: &impl Sql, row: &Row, outcome: &str) -> Result<Option<BotCall>, StoreError> {
    let Some(message_id) = card_message(db, row)? else {
        return Ok(None);
    };
    Ok(Some(BotCall {
        method: "editMessageText",
        params: json!({
            "chat_id": row.chat_id,
            "message_id": message_id,
            "text": format!("{}\n\n{}", row.card, escape_html(outcome)),
            "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": true},
        }),
    }))
}

/// What a tap or a reply did.
#[derive(Debug, Default)]
pub struct Settled {
    /// Chat calls to store (the toast first).
    pub calls: Vec<BotCall>,
    /// The machine to push the decision to, when this settled it.
    pub push_to: Option<String>,
    /// For the log.
    pub log: String,
}

/// A choice from the chat on request `request_id` (a tap, or a text reply as `message` with
/// [`Choice::Deny`]). The first one settles it; later ones are told what happened.
pub fn settle(
    db: &impl Sql,
    request_id: &str,
    choice: Choice,
    message: Option<&str>,
    who: &str,
    now: i64,
) -> Result<(Option<String>, Settled), StoreError> {
    let mut out = Settled::default();
    let Some(row) = get(db, request_id)? else {
        out.log = format!("approval {request_id}: unknown");
        return Ok((Some("This request is no longer known.".into()), out));
    };
    if row.state != "open" {
        let what = row.outcome.clone().unwrap_or_else(|| row.state.clone());
        out.log = format!("approval {request_id}: already {what}");
        return Ok((Some(format!("Already answered: {what}")), out));
    }
    let (decision, words) = match step(
        &row.tool_name,
        &row.input(),
        &row.suggestions(),
        row.answers(),
        row.picks(),
        choice,
        message,
    ) {
        Step::Decide { decision, words } => (decision, words),
        Step::Refuse(why) => {
            out.log = format!("approval {request_id}: {why}");
            return Ok((Some(why), out));
        }
        Step::Progress {
            answers,
            picks,
            toast,
        } => {
            let (answers, picks) = (Value::Object(answers), Value::Object(picks));
            db.exec(
                "UPDATE approvals SET answers = ?, picks = ?, updated_at = ?
                 WHERE request_id = ? AND state = 'open'",
                vec![
                    answers.to_string().into(),
                    picks.to_string().into(),
                    now.into(),
                    request_id.into(),
                ],
            )?;
            if let Some(message_id) = card_message(db, &row)? {
                let empty = serde_json::Map::new();
                let markup = questions_keyboard(
                    request_id,
                    &row.input(),
                    answers.as_object().unwrap_or(&empty),
                    picks.as_object().unwrap_or(&empty),
                );
                out.calls.push(BotCall {
                    method: "editMessageReplyMarkup",
                    params: json!({"chat_id": row.chat_id, "message_id": message_id, "reply_markup": markup}),
                });
            }
            out.log = format!("approval {request_id}: {toast}");
            return Ok((Some(toast), out));
        }
    };
    let outcome = match message {
        Some(m) => format!("{words} by {who}: {}", truncate(m, 200)),
        None => format!("{words} by {who}"),
    };
    db.exec(
        "UPDATE approvals SET state = 'decided', outcome = ?, decision = ?, decided_at = ?,
             acked = 0, next_push_at = ?, updated_at = ?
         WHERE request_id = ? AND state = 'open'",
        vec![
            outcome.as_str().into(),
            decision.to_string().into(),
            now.into(),
            now.into(),
            now.into(),
            request_id.into(),
        ],
    )?;
    let stamp = format!("{outcome} (at {})", utc_time(now));
    if let Some(edit) = edit_card(db, &row, &format!("→ {stamp}"))? {
        out.calls.push(edit);
    }
    out.push_to = Some(row.machine_id.clone());
    out.log = format!("approval {request_id}: {outcome}");
    Ok((Some(truncate(&words, 180)), out))
}

/// `POST /approvals/close`: closes the caller's open requests among `body.request_ids`.
pub fn close_all(
    db: &impl Sql,
    principal: &Principal,
    body: &ccr_protocol::api::CloseApprovals,
    now: i64,
) -> Result<Vec<BotCall>, ApiError> {
    if body.request_ids.len() > 50 {
        return Err(ApiError::new(400, "at most 50 requestIds at once"));
    }
    let reason = truncate(body.reason.trim(), 100);
    if reason.is_empty() {
        return Err(ApiError::new(400, "reason is empty"));
    }
    let mut calls = Vec::new();
    for id in &body.request_ids {
        request_id_ok(id).map_err(|e| ApiError::new(400, e))?;
        let Some(row) = get(db, id)? else { continue };
        if !principal.may_act_for(&row.machine_id) {
            continue;
        }
        calls.extend(close(db, id, &row.machine_id, &reason, now)?);
    }
    Ok(calls)
}

/// Closes an open request the session moved on from (answered at the terminal, expired):
/// the card says so and loses its buttons.
pub fn close(
    db: &impl Sql,
    request_id: &str,
    machine_id: &str,
    why: &str,
    now: i64,
) -> Result<Vec<BotCall>, StoreError> {
    let Some(row) = get(db, request_id)? else {
        return Ok(Vec::new());
    };
    if row.state != "open" || row.machine_id != machine_id {
        return Ok(Vec::new());
    }
    db.exec(
        "UPDATE approvals SET state = 'closed', outcome = ?, decided_at = ?, updated_at = ?
         WHERE request_id = ? AND state = 'open'",
        vec![why.into(), now.into(), now.into(), request_id.into()],
    )?;
    Ok(
        edit_card(db, &row, &format!("→ {why} (at {})", utc_time(now)))?
            .into_iter()
            .collect(),
    )
}

/// A decision waiting for its machine's ack.
#[derive(Debug, Clone, Deserialize)]
pub struct Unacked {
    /// The request.
    pub request_id: String,
    /// The decision object, as JSON text.
    pub decision: String,
}

impl Unacked {
    /// The decision object.
    pub fn decision(&self) -> Value {
        serde_json::from_str(&self.decision).unwrap_or(Value::Null)
    }
}

/// A machine's decisions not acked yet (all, or those due by `due_by`).
pub fn unacked_for_machine(
    db: &impl Sql,
    machine_id: &str,
    due_by: Option<i64>,
) -> Result<Vec<Unacked>, StoreError> {
    db.query::<Unacked>(
        "SELECT request_id, decision FROM approvals
         WHERE machine_id = ? AND state = 'decided' AND acked = 0 AND next_push_at <= ?
         ORDER BY decided_at LIMIT 50",
        vec![machine_id.into(), due_by.unwrap_or(i64::MAX).into()],
    )
}

/// Records a push: the next one is due after [`REPUSH_MS`].
pub fn mark_pushed(db: &impl Sql, request_id: &str, now: i64) -> Result<(), StoreError> {
    db.exec(
        "UPDATE approvals SET next_push_at = ? WHERE request_id = ?",
        vec![(now + REPUSH_MS).into(), request_id.into()],
    )
}

/// The machine stored the decision: stop pushing it. Only its own machine may ack.
pub fn ack(db: &impl Sql, request_id: &str, machine_id: &str) -> Result<(), StoreError> {
    db.exec(
        "UPDATE approvals SET acked = 1 WHERE request_id = ? AND machine_id = ?",
        vec![request_id.into(), machine_id.into()],
    )
}

/// The earliest push due, for the alarm.
pub fn next_push(db: &impl Sql) -> Result<Option<i64>, StoreError> {
    #[derive(Deserialize)]
    struct N {
        at: Option<i64>,
    }
    Ok(db
        .query::<N>(
            "SELECT MIN(next_push_at) AS at FROM approvals WHERE state = 'decided' AND acked = 0",
            vec![],
        )?
        .into_iter()
        .next()
        .and_then(|n| n.at))
}

/// Forgets settled requests past retention.
pub fn prune(db: &impl Sql, now: i64) -> Result<(), StoreError> {
    db.exec(
        "DELETE FROM approvals WHERE state != 'open' AND updated_at < ?",
        vec![(now - RETENTION_MS).into()],
    )
}

/// The open requests, oldest first (for `/pending`).
pub fn open_requests(db: &impl Sql) -> Result<Vec<Row>, StoreError> {
    db.query::<Row>(
        &format!(
            "SELECT {COLUMNS} FROM approvals WHERE state = 'open' ORDER BY created_at LIMIT 50"
        ),
        vec![],
    )
}

/// How long ago, in words: `45 s`, `12 min`, `3 h 5 min`.
pub fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// `/pending`: every open request of every machine, oldest first, with its age and where its
/// card is. `None`: the message is not `/pending`.
pub fn on_pending(
    db: &impl Sql,
    msg: &telegram::Message,
    now: i64,
) -> Result<Option<Settled>, StoreError> {
    let Some(text) = &msg.text else {
        return Ok(None);
    };
    if telegram::bot_command(text).map(|(c, _)| c) != Some(ccr_protocol::wire::bot::PENDING) {
        return Ok(None);
    }
    let rows = open_requests(db)?;
    let mut out = format!("⏳ <b>{} open request(s)</b>", rows.len());
    if rows.is_empty() {
        out = "Nothing is waiting for an answer.".into();
    }
    for row in &rows {
        let label = store::get_session(db, &row.session_id)?
            .and_then(|s| s.label)
            .unwrap_or_else(|| truncate(&row.session_id, 12));
        let card = card_message(db, row)?;
        let place = match card {
            // A supergroup's messages have links; elsewhere the card is found by its time.
            Some(id) if row.chat_id == msg.chat.id && row.chat_id < -1_000_000_000_000 => format!(
                " — <a href=\"https://t.me/c/{}/{id}\">card</a>",
                -(row.chat_id + 1_000_000_000_000)
            ),
            Some(_) => format!(" — card sent at {}", utc_time(row.created_at)),
            None => " — card not sent yet".into(),
        };
        out.push_str(&format!(
            "\n• <b>{}</b> on {}: {}, waiting {}{place}",
            escape_html(&label),
            escape_html(&row.machine_id),
            escape_html(&row.tool_name),
            age(now - row.created_at),
        ));
    }
    Ok(Some(Settled {
        calls: vec![BotCall::send(msg.chat.id, &out, Some(msg.message_id))],
        push_to: None,
        log: format!("pending: {} open", rows.len()),
    }))
}

/// `HH:MM UTC` of a moment (ms since the epoch).
pub fn utc_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02} UTC", secs / 3600, (secs % 3600) / 60)
}

/// A button press, when it is a card's (`ap:` data): settles the request or tells the
/// presser why not. The caller has checked the allow-lists. `None`: not a card's button.
pub fn on_callback(
    db: &impl Sql,
    cb: &telegram::CallbackQuery,
    now: i64,
) -> Result<Option<Settled>, StoreError> {
    let Some(data) = cb
        .data
        .as_deref()
        .filter(|d| d.starts_with(CALLBACK_PREFIX))
    else {
        return Ok(None);
    };
    let Some((id, choice)) = parse_callback(data) else {
        return Ok(Some(Settled {
            calls: vec![BotCall::answer_callback(&cb.id, "Unknown button.")],
            push_to: None,
            log: "approval: unknown button data".into(),
        }));
    };
    let (toast, mut settled) = settle(db, &id, choice, None, &who(&cb.from), now)?;
    settled.calls.insert(
        0,
        BotCall::answer_callback(&cb.id, toast.as_deref().unwrap_or("")),
    );
    Ok(Some(settled))
}

/// A text reply to a card: denies the request with the text as Claude's `message`.
/// `None`: not a reply to a card.
pub fn on_reply(
    db: &impl Sql,
    msg: &telegram::Message,
    now: i64,
) -> Result<Option<Settled>, StoreError> {
    #[derive(Deserialize)]
    struct T {
        token: String,
    }
    let (Some(parent), Some(text)) = (&msg.reply_to_message, &msg.text) else {
        return Ok(None);
    };
    let token = db
        .query::<T>(
            "SELECT m.token AS token FROM messages m JOIN approvals a ON a.request_id = m.token
             WHERE m.chat_id = ? AND m.message_id = ?",
            vec![msg.chat.id.into(), parent.message_id.into()],
        )?
        .into_iter()
        .next();
    let Some(T { token }) = token else {
        return Ok(None);
    };
    let who = msg
        .from
        .as_ref()
        .map(who)
        .unwrap_or_else(|| "someone".into());
    let (toast, mut settled) = settle(db, &token, Choice::Deny, Some(text), &who, now)?;
    if settled.push_to.is_none() {
        let note = toast.unwrap_or_default();
        settled.calls.insert(
            0,
            BotCall::send(msg.chat.id, &escape_html(&note), Some(msg.message_id)),
        );
    }
    Ok(Some(settled))
}

/// A person's name for the card: `@username`, first name, or the id.
pub fn who(user: &telegram::User) -> String {
    match (&user.username, &user.first_name) {
        (Some(u), _) => format!("@{u}"),
        (None, Some(f)) => f.clone(),
        (None, None) => user.id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;
    use crate::store::testing::MemDb;

    fn suggestion() -> Value {
        json!({"type":"addRules","rules":[{"toolName":"Bash","ruleContent":"npm test"}],
               "behavior":"allow","destination":"localSettings"})
    }

    #[test]
    fn callback_data_round_trips_and_fits() {
        let id = "a".repeat(MAX_REQUEST_ID);
        for c in [Choice::Allow, Choice::Deny, Choice::Stop, Choice::Always(3)] {
            let data = callback_data(&id, c);
            assert!(data.len() <= 64, "{data}");
            assert_eq!(parse_callback(&data), Some((id.clone(), c)));
        }
        assert_eq!(parse_callback("ap:x:s9"), None);
        assert_eq!(parse_callback("ap::a"), None);
        assert_eq!(parse_callback("cmd:x:yes"), None);
        assert_eq!(parse_callback("ap:x y:a"), None);
    }

    #[test]
    fn decisions_are_the_documented_shapes() {
        let s = vec![suggestion()];
        assert_eq!(
            decision_json(Choice::Allow, &s, None).to_string(),
            r#"{"behavior":"allow"}"#
        );
        assert_eq!(
            decision_json(Choice::Always(0), &s, None),
            json!({"behavior":"allow","updatedPermissions":[suggestion()]})
        );
        assert_eq!(
            decision_json(Choice::Deny, &s, Some("use yarn")),
            json!({"behavior":"deny","message":"use yarn","interrupt":false})
        );
        assert_eq!(
            decision_json(Choice::Stop, &s, None)["interrupt"],
            json!(true)
        );
    }

    #[test]
    fn cards_preview_each_tool() {
        let bash = card_text(
            "web",
            "m1",
            "Bash",
            &json!({"command":"rm -rf <x>","description":"Remove"}),
        );
        assert!(
            bash.contains("<pre>rm -rf &lt;x&gt;</pre>\nRemove"),
            "{bash}"
        );
        let edit = preview(
            "Edit",
            &json!({"file_path":"/a.rs","old_string":"a","new_string":"b"}),
        );
        assert!(
            edit.contains("/a.rs")
                && edit.contains("<pre>a</pre>")
                && edit.contains("<pre>b</pre>")
        );
        let mcp = preview("mcp__github__create_issue", &json!({"title":"t"}));
        assert!(
            mcp.contains("<b>github</b>") && mcp.contains("<b>create_issue</b>"),
            "{mcp}"
        );
        assert!(preview("WebFetch", &json!({"url":"https://x.y/"})).contains("https://x.y/"));
        let long = preview("Bash", &json!({"command": "é".repeat(5000)}));
        assert!(long.chars().count() < 1600 && long.contains('…'));
        assert_eq!(
            suggestion_name(Some(&suggestion())),
            "Always: Bash(npm test)"
        );
        let kb = keyboard("r1", &[suggestion()]);
        assert_eq!(
            kb["inline_keyboard"][1][0]["text"],
            "♾ Always: Bash(npm test)"
        );
        assert_eq!(kb["inline_keyboard"][1][0]["callback_data"], "ap:r1:s0");
    }

    fn ask() -> Value {
        json!({"questions": [
            {"question": "Which database?", "header": "DB", "multiSelect": false,
             "options": [{"label": "Postgres"}, {"label": "SQLite", "description": "simple"}]},
            {"question": "Which features?", "header": "Features", "multiSelect": true,
             "options": [{"label": "Auth"}, {"label": "Search"}, {"label": "Billing"}]}
        ]})
    }

    #[test]
    fn questions_are_answered_by_picks_toggles_and_text() {
        let input = ask();
        let go = |a: &serde_json::Map<String, Value>, p: &serde_json::Map<String, Value>, c, m| {
            step("AskUserQuestion", &input, &[], a.clone(), p.clone(), c, m)
        };
        let none = serde_json::Map::new();
        let Step::Progress { answers, picks, .. } = go(&none, &none, Choice::Pick(0, 1), None)
        else {
            panic!("one of two answered")
        };
        assert_eq!(answers["Which database?"], "SQLite");
        assert_eq!(
            go(&answers, &picks, Choice::Pick(0, 0), None),
            Step::Refuse("That question is answered already.".into())
        );
        let Step::Progress { picks, .. } = go(&answers, &picks, Choice::Pick(1, 2), None) else {
            panic!()
        };
        let Step::Progress { picks, .. } = go(&answers, &picks, Choice::Pick(1, 0), None) else {
            panic!()
        };
        let Step::Progress { picks: p2, .. } = go(&answers, &picks, Choice::Pick(1, 1), None)
        else {
            panic!()
        };
        let Step::Progress { picks, .. } = go(&answers, &p2, Choice::Pick(1, 1), None) else {
            panic!("toggled off again")
        };
        assert_eq!(picks["1"], json!([0, 2]));
        let kb = questions_keyboard("r", &input, &answers, &picks);
        assert_eq!(kb["inline_keyboard"][0][0]["text"], "☑ Auth");
        assert_eq!(kb["inline_keyboard"][1][0]["text"], "☐ Search");
        let Step::Decide { decision, .. } = go(&answers, &picks, Choice::Send(1), None) else {
            panic!("all answered")
        };
        let mut want = ask();
        want["answers"] = json!({"Which database?": "SQLite", "Which features?": "Auth, Billing"});
        assert_eq!(decision, json!({"behavior": "allow", "updatedInput": want}));
        assert_eq!(
            go(&none, &none, Choice::Send(1), None),
            Step::Refuse("Pick at least one option first.".into())
        );
        let Step::Progress { answers, .. } = go(&none, &none, Choice::Deny, Some("MySQL")) else {
            panic!()
        };
        assert_eq!(answers["Which database?"], "MySQL");
        assert!(matches!(
            go(&none, &none, Choice::Deny, None),
            Step::Decide { .. }
        ));
    }

    #[test]
    fn plans_are_approved_with_their_input_or_sent_back() {
        let input = json!({"plan": "# Plan\n1. do it", "planFilePath": "/p/plan.md"});
        let none = serde_json::Map::new();
        let go = |c, m| {
            step(
                "ExitPlanMode",
                &input,
                &[],
                none.clone(),
                none.clone(),
                c,
                m,
            )
        };
        assert_eq!(
            go(Choice::Allow, None),
            Step::Decide {
                decision: json!({"behavior": "allow", "updatedInput": input}),
                words: "plan approved".into()
            }
        );
        let Step::Decide { decision, .. } = go(Choice::Deny, Some("add tests")) else {
            panic!()
        };
        assert_eq!(
            decision,
            json!({"behavior": "deny", "message": "add tests", "interrupt": false})
        );
        let long = json!({"plan": "step\n".repeat(3000)});
        let parts = plan_parts("web", "m1", &long);
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| p.encode_utf16().count() <= 4096));
        assert!(parts.last().unwrap().ends_with("to keep planning."));
        for c in [Choice::Pick(3, 9), Choice::Send(3), Choice::KeepPlanning] {
            assert_eq!(
                parse_callback(&callback_data("abc", c)),
                Some(("abc".into(), c))
            );
        }
    }

    fn setup() -> MemDb {
        let db = MemDb::migrated();
        store::upsert_session(&db, "s1", "m1", Some("web"), 1).unwrap();
        db
    }

    fn body(id: &str) -> OpenApproval {
        OpenApproval {
            request_id: id.into(),
            session_id: "s1".into(),
            tool_name: "Bash".into(),
            tool_input: json!({"command": "npm test"}),
            permission_suggestions: vec![suggestion()],
        }
    }

    #[test]
    fn the_card_goes_to_the_session_s_topic_asked_for_first() {
        let db = setup();
        let lane = open(&db, &[42], &Principal::Admin, &body("r1"), 10)
            .unwrap()
            .unwrap();
        let done = outbox::testing::flush(&db, &lane, 11, true, |e| match e.method.as_str() {
            topics::CREATE => crate::telegram::ApiOutcome::Ok(json!({"message_thread_id": 77})),
            _ => crate::telegram::ApiOutcome::Ok(json!({"message_id": 500 + e.id})),
        });
        let sent: Vec<(String, Value)> = done
            .iter()
            .map(|(e, _)| (e.method.clone(), e.params()))
            .collect();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[0].0, topics::CREATE);
        assert_eq!(sent[0].1["name"], "web · m1");
        assert_eq!(sent[1].1["message_thread_id"], 77);
        assert!(sent[1].1.get("reply_markup").is_some(), "the card");
    }

    #[test]
    fn first_choice_wins_and_is_pushed_until_acked() {
        let db = setup();
        let lane = open(&db, &[42], &Principal::Admin, &body("r1"), 10).unwrap();
        assert_eq!(lane.as_deref(), Some("chat:42"));
        assert_eq!(
            open(&db, &[42], &Principal::Admin, &body("r1"), 11).unwrap(),
            None
        );
        let other = Principal::Machine("m2".into());
        assert!(open(&db, &[42], &other, &body("r2"), 11).is_err());
        let (toast, s) = settle(&db, "r1", Choice::Always(0), None, "@ann", 20).unwrap();
        assert_eq!(toast.as_deref(), Some("allowed (Always: Bash(npm test))"));
        assert_eq!(s.push_to.as_deref(), Some("m1"));
        let (toast, s) = settle(&db, "r1", Choice::Deny, None, "@bob", 21).unwrap();
        assert!(toast.unwrap().starts_with("Already answered: allowed"));
        assert_eq!(s.push_to, None);
        let due = unacked_for_machine(&db, "m1", Some(20)).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].decision(),
            json!({"behavior":"allow","updatedPermissions":[suggestion()]})
        );
        mark_pushed(&db, "r1", 20).unwrap();
        assert!(unacked_for_machine(&db, "m1", Some(21)).unwrap().is_empty());
        assert_eq!(next_push(&db).unwrap(), Some(20 + REPUSH_MS));
        ack(&db, "r1", "m2").unwrap();
        assert_eq!(unacked_for_machine(&db, "m1", None).unwrap().len(), 1);
        ack(&db, "r1", "m1").unwrap();
        assert!(unacked_for_machine(&db, "m1", None).unwrap().is_empty());
        assert_eq!(next_push(&db).unwrap(), None);
    }

    #[test]
    fn pending_lists_open_requests_with_their_age() {
        let db = setup();
        let msg: telegram::Message = serde_json::from_value(
            json!({"message_id": 5, "chat": {"id": 42}, "text": "/pending@ccr_bot"}),
        )
        .unwrap();
        let empty = on_pending(&db, &msg, 0).unwrap().unwrap();
        assert!(empty.calls[0].params["text"]
            .as_str()
            .unwrap()
            .starts_with("Nothing"));
        open(&db, &[42], &Principal::Admin, &body("r1"), 0).unwrap();
        open(&db, &[42], &Principal::Admin, &body("r2"), 60_000).unwrap();
        settle(&db, "r2", Choice::Allow, None, "@a", 60_001).unwrap();
        let list = on_pending(&db, &msg, 725_000).unwrap().unwrap();
        let text = list.calls[0].params["text"].as_str().unwrap().to_owned();
        assert!(text.contains("1 open request"), "{text}");
        assert!(
            text.contains("<b>web</b> on m1: Bash, waiting 12 min"),
            "{text}"
        );
        let other: telegram::Message =
            serde_json::from_value(json!({"message_id": 5, "chat": {"id": 42}, "text": "/pend"}))
                .unwrap();
        assert!(on_pending(&db, &other, 0).unwrap().is_none());
        assert_eq!(age(3 * 3_600_000 + 5 * 60_000), "3 h 5 min");
    }

    #[test]
    fn a_closed_request_cannot_be_decided() {
        let db = setup();
        open(&db, &[42], &Principal::Admin, &body("r1"), 10).unwrap();
        assert!(close(&db, "r1", "m2", "answered at the terminal", 11)
            .unwrap()
            .is_empty());
        close(&db, "r1", "m1", "answered at the terminal", 11).unwrap();
        let (toast, s) = settle(&db, "r1", Choice::Allow, None, "@ann", 20).unwrap();
        assert_eq!(
            toast.as_deref(),
            Some("Already answered: answered at the terminal")
        );
        assert!(s.push_to.is_none());
        let _ = schema::latest();
    }
}
