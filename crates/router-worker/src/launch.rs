//! Starting and ending sessions from the chat: `/new [project] [prompt]` and `/end`.
//!
//! `/new` works on names only. Each agent announces the names of the project roots its owner
//! configured (`projects` frame → [`record_projects`]); the chat picks one, and the start
//! request is a queued command with `project` set (same queue, same exactly-once delivery),
//! pushed as a `startSession` frame. The agent maps the name to its own directory and checks
//! it again: no path ever comes from the chat or the Worker.
//!
//! `/end` asks before it acts: [`end_prompt`] is the confirmation (a function of the session,
//! so a per-session topic can offer it too); its button queues `/exit` for the session's pane
//! like any reply (the router does that part).

use ccr_protocol::{validate, MAX_COMMAND_BYTES, MAX_PROJECTS};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::queue::{self, NewCommand, MAX_UNACKED_PER_MACHINE};
use crate::store::{SessionRow, Sql, StoreError};
use crate::telegram::{bot_command, escape_html, first_word, machine_text, BotCall};
use ccr_protocol::wire::bot;

/// Most buttons one `/new` answer offers (machine × project).
pub const MAX_CHOICES: usize = 30;
/// Callback data prefix of a `/new` choice: `new:<launch_id>:<n>`.
const NEW_PREFIX: &str = "new:";
/// Callback data prefix of an `/end` confirmation: `end:<token>`.
const END_PREFIX: &str = "end:";
/// Callback data of the `/end` confirmation's Cancel button.
const END_CANCEL: &str = "end-cancel";
/// Launch rows are kept this long (ms): a choice older than a day is refused.
const LAUNCH_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;

/// What a text message asks of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// `/new [project] [prompt]`.
    New {
        /// The project's name as typed (checked later); `None` lists the choices.
        project: Option<String>,
        /// The first prompt, verbatim after one separator; `None` when empty.
        prompt: Option<String>,
    },
    /// `/end [TOKEN]`: the token names the session; without it, the replied-to notification.
    End {
        /// A `/cmd`-style token.
        token: Option<String>,
    },
}

/// Reads `/new …` and `/end …`; `None` for anything else.
pub fn parse(text: &str) -> Option<Intent> {
    let (name, args) = bot_command(text)?;
    let (first, rest) = first_word(args);
    let word = (!first.is_empty()).then(|| first.to_owned());
    if name == bot::NEW {
        let prompt = (!rest.trim().is_empty()).then(|| rest.to_owned());
        Some(Intent::New {
            project: word,
            prompt,
        })
    } else if name == bot::END {
        Some(Intent::End { token: word })
    } else {
        None
    }
}

/// What a button press asks of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Button {
    /// A `/new` choice.
    New {
        /// The launch (the update that offered it).
        launch_id: i64,
        /// Which choice.
        choice: usize,
    },
    /// Confirms `/end` for the session this token names.
    End {
        /// The session's token in this chat.
        token: String,
    },
    /// The `/end` confirmation's Cancel.
    Cancel,
}

/// Reads this module's callback data; `None` for anything else.
pub fn parse_button(data: &str) -> Option<Button> {
    if data == END_CANCEL {
        return Some(Button::Cancel);
    }
    if let Some(token) = data.strip_prefix(END_PREFIX) {
        return (!token.is_empty()).then(|| Button::End {
            token: token.to_owned(),
        });
    }
    let rest = data.strip_prefix(NEW_PREFIX)?;
    let (launch, choice) = rest.split_once(':')?;
    Some(Button::New {
        launch_id: launch.parse().ok()?,
        choice: choice.parse().ok()?,
    })
}

/// Stores what a machine announced: the valid names, each once, at most [`MAX_PROJECTS`].
/// Returns the names kept.
pub fn record_projects(
    db: &impl Sql,
    machine_id: &str,
    announced: &[String],
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let mut kept: Vec<String> = Vec::new();
    for name in announced {
        if validate::project_name(name).is_ok() && !kept.contains(name) {
            kept.push(name.clone());
        }
        if kept.len() == MAX_PROJECTS {
            break;
        }
    }
    let list = serde_json::to_string(&kept).map_err(|e| StoreError(e.to_string()))?;
    db.exec(
        "INSERT INTO machine_projects (machine_id, projects, updated_at) VALUES (?, ?, ?)
         ON CONFLICT (machine_id) DO UPDATE SET projects = excluded.projects,
            updated_at = excluded.updated_at",
        vec![machine_id.into(), list.into(), now.into()],
    )?;
    Ok(kept)
}

/// Every machine that announced projects, with them, by machine id.
pub fn machine_projects(db: &impl Sql) -> Result<Vec<(String, Vec<String>)>, StoreError> {
    #[derive(Deserialize)]
    struct Row {
        machine_id: String,
        projects: String,
    }
    let rows = db.query::<Row>(
        "SELECT machine_id, projects FROM machine_projects ORDER BY machine_id",
        vec![],
    )?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let names: Vec<String> = serde_json::from_str(&r.projects).ok()?;
            (!names.is_empty()).then_some((r.machine_id, names))
        })
        .collect())
}

/// What a `/new` or one of its buttons did.
#[derive(Debug, Default)]
pub struct Step {
    /// Chat answers (for a button: the toast text is [`Step::toast`]).
    pub calls: Vec<BotCall>,
    /// The start request queued, to push when its machine is connected.
    pub queued: Option<queue::Queued>,
    /// For a button: the toast.
    pub toast: String,
    /// One line for the log.
    pub log: String,
}

/// One choice a `/new` answer offers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
struct Choice {
    machine: String,
    project: String,
}

/// `/new [project] [prompt]` in `chat` (message `message_id`, update `update_id`).
#[allow(clippy::too_many_arguments)]
pub fn on_new(
    db: &impl Sql,
    chat: i64,
    message_id: i64,
    update_id: i64,
    project: Option<&str>,
    prompt: Option<&str>,
    now: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<Step, StoreError> {
    let mut step = Step::default();
    let all = machine_projects(db)?;
    let say = |step: &mut Step, text: &str| {
        step.calls.push(BotCall::send(chat, text, Some(message_id)));
    };
    if prompt.is_some_and(|p| p.len() > MAX_COMMAND_BYTES) {
        say(
            &mut step,
            &format!("Not started: the prompt is over {MAX_COMMAND_BYTES} bytes."),
        );
        step.log = format!("update {update_id}: /new prompt too long");
        return Ok(step);
    }
    if all.is_empty() {
        say(
            &mut step,
            "No machine has announced any projects. On a machine, start ccr-agent with \
             <code>--project NAME=/absolute/path</code> (or <code>CCR_PROJECTS</code>), then \
             send /new again.",
        );
        step.log = format!("update {update_id}: /new with no projects anywhere");
        return Ok(step);
    }
    let choices: Vec<Choice> = match project {
        None => all
            .iter()
            .flat_map(|(m, names)| {
                names.iter().map(|p| Choice {
                    machine: m.clone(),
                    project: p.clone(),
                })
            })
            .take(MAX_CHOICES)
            .collect(),
        Some(name) => all
            .iter()
            .filter(|(_, names)| names.iter().any(|p| p == name))
            .map(|(m, _)| Choice {
                machine: m.clone(),
                project: name.to_owned(),
            })
            .take(MAX_CHOICES)
            .collect(),
    };
    if let (Some(name), true) = (project, choices.is_empty()) {
        let known: Vec<String> = all
            .iter()
            .flat_map(|(_, names)| names.iter().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|p| format!("<code>{}</code>", escape_html(&p)))
            .collect();
        say(
            &mut step,
            &format!(
                "⚠️ Not started: no machine has a project named <code>{}</code>. Projects: {}. \
                 /new alone shows them as buttons.",
                escape_html(name),
                known.join(", ")
            ),
        );
        step.log = format!("update {update_id}: /new for an unknown project; refused");
        return Ok(step);
    }
    if let [only] = choices.as_slice() {
        if project.is_some() {
            let command_id = format!("tg-{update_id}");
            return start(
                db,
                step,
                &command_id,
                only,
                chat,
                Some(message_id),
                prompt,
                now,
                online,
            );
        }
    }
    // Several machines have it, or no project was named: offer the choices.
    db.exec(
        "INSERT INTO launches (launch_id, chat_id, prompt, choices, created_at)
         VALUES (?, ?, ?, ?, ?) ON CONFLICT (launch_id) DO NOTHING",
        vec![
            update_id.into(),
            chat.into(),
            prompt.into(),
            serde_json::to_string(&choices)
                .map_err(|e| StoreError(e.to_string()))?
                .into(),
            now.into(),
        ],
    )?;
    let mut text = String::from(match project {
        Some(_) => "Several machines have that project. Start it where?\n",
        None => "Start Claude Code in which project?\n",
    });
    for (machine, names) in &all {
        if project.is_some() && !choices.iter().any(|c| &c.machine == machine) {
            continue;
        }
        text.push_str(&format!(
            "• {} {} — {}\n",
            escape_html(machine),
            if online(machine) {
                "🟢 online"
            } else {
                "⚪ offline"
            },
            names
                .iter()
                .map(|p| escape_html(p))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let rows: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!([{
                "text": format!("{} · {}", c.project, c.machine),
                "callback_data": format!("{NEW_PREFIX}{update_id}:{i}"),
            }])
        })
        .collect();
    step.calls.push(
        BotCall::send(chat, &text, Some(message_id))
            .with_param("reply_markup", json!({ "inline_keyboard": rows })),
    );
    step.log = format!(
        "update {update_id}: /new offered {} choice(s)",
        choices.len()
    );
    Ok(step)
}

/// A tap on a `/new` choice (already allowed by the router) in `chat`.
pub fn on_new_button(
    db: &impl Sql,
    chat: i64,
    launch_id: i64,
    choice: usize,
    now: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<Step, StoreError> {
    #[derive(Deserialize)]
    struct Row {
        prompt: Option<String>,
        choices: String,
    }
    let step = Step::default();
    let row = db
        .query_one::<Row>(
            "SELECT prompt, choices FROM launches WHERE launch_id = ? AND chat_id = ? AND created_at > ?",
            vec![
                launch_id.into(),
                chat.into(),
                (now - LAUNCH_RETENTION_MS).into(),
            ],
        )?;
    let picked = row.as_ref().and_then(|r| {
        serde_json::from_str::<Vec<Choice>>(&r.choices)
            .ok()?
            .into_iter()
            .nth(choice)
    });
    let (Some(row), Some(picked)) = (row, picked) else {
        return Ok(Step {
            toast: "This choice has expired: send /new again.".into(),
            log: format!("launch {launch_id}: unknown or expired choice {choice}"),
            ..step
        });
    };
    // One command per choice: a second tap on the same button starts nothing more.
    let command_id = format!("new-{launch_id}-{choice}");
    start(
        db,
        step,
        &command_id,
        &picked,
        chat,
        None,
        row.prompt.as_deref(),
        now,
        online,
    )
}

/// Queues the start request of `choice`, and says what happens next.
#[allow(clippy::too_many_arguments)]
fn start(
    db: &impl Sql,
    mut step: Step,
    command_id: &str,
    choice: &Choice,
    chat: i64,
    source_message_id: Option<i64>,
    prompt: Option<&str>,
    now: i64,
    online: &dyn Fn(&str) -> bool,
) -> Result<Step, StoreError> {
    let say = |step: &mut Step, text: &str| {
        step.calls
            .push(BotCall::send(chat, text, source_message_id));
        step.toast = "See the answer below.".into();
    };
    let machine = &choice.machine;
    if queue::unacked_count(db, machine)? >= MAX_UNACKED_PER_MACHINE {
        say(
            &mut step,
            &format!(
                "Not started: {} already has {MAX_UNACKED_PER_MACHINE} commands waiting.",
                escape_html(machine)
            ),
        );
        step.log = format!("{command_id}: queue of {machine} is full");
        return Ok(step);
    }
    let new = NewCommand {
        command_id: command_id.to_owned(),
        session_id: String::new(),
        machine_id: machine.clone(),
        chat_id: chat,
        source_message_id,
        command: prompt.unwrap_or_default().to_owned(),
        keys: None,
        project: Some(choice.project.clone()),
        file: None,
    };
    // A second tap (or a replay) finds the id queued: the first one's delivery goes on, and
    // nothing more is said or pushed.
    let created = queue::enqueue(db, &new, now)?;
    match queue::get(db, command_id)? {
        Some(q) if created => step.queued = Some(q),
        _ => {
            step.toast = "Already started.".into();
            step.log = format!("{command_id}: already queued; not pushed again");
            return Ok(step);
        }
    }
    let what = format!(
        "<b>{}</b> on {}",
        escape_html(&choice.project),
        escape_html(machine)
    );
    if online(machine) {
        say(&mut step, &format!("Starting {what}…"));
        step.toast = format!("Starting {} on {machine}", choice.project);
    } else {
        say(
            &mut step,
            &format!(
                "Queued — {} is offline; {what} starts when it reconnects.",
                escape_html(machine)
            ),
        );
        step.toast = format!("Queued: {machine} is offline");
    }
    step.log = format!(
        "{command_id}: start of a project queued for machine {machine} ({})",
        if online(machine) { "online" } else { "offline" }
    );
    Ok(step)
}

/// The chat's answer to a start request's result (`startResult`).
pub fn start_result(
    q: &queue::Queued,
    success: bool,
    window: Option<&str>,
    error: Option<&str>,
) -> BotCall {
    let project = q.project.as_deref().unwrap_or("?");
    let text = if success {
        format!(
            "✅ Started <b>{}</b> on {}{}. Its notifications come here once Claude Code's \
             hooks register it.",
            escape_html(project),
            escape_html(&q.machine_id),
            window.map_or_else(String::new, |w| format!(
                " in tmux window <code>{}</code>",
                machine_text(w)
            )),
        )
    } else {
        format!(
            "⚠️ Could not start <b>{}</b> on {}: {}",
            escape_html(project),
            escape_html(&q.machine_id),
            machine_text(error.unwrap_or("no reason given"))
        )
    };
    BotCall::send(q.chat_id, &text, q.source_message_id)
}

/// The notice for a start request dropped because its machine stayed offline too long.
pub fn start_not_delivered(q: &queue::Queued) -> BotCall {
    let text = format!(
        "⚠️ Not started: <b>{}</b> waited too long for {} to come online and was dropped. \
         Send /new again when the machine is back.",
        escape_html(q.project.as_deref().unwrap_or("?")),
        escape_html(&q.machine_id)
    );
    BotCall::send(q.chat_id, &text, q.source_message_id)
}

/// The `/end` confirmation for `session`: its button carries `token` (the session's token in
/// `chat`, as `/cmd` takes it), replying to `reply_to`. Pressing it queues `/exit`.
pub fn end_prompt(session: &SessionRow, token: &str, chat: i64, reply_to: i64) -> BotCall {
    let label = session.label.as_deref().unwrap_or("(no label)");
    let text = format!(
        "End <b>{}</b> on {}? This types <code>/exit</code> into its pane.",
        escape_html(label),
        escape_html(&session.machine_id)
    );
    BotCall::send(chat, &text, Some(reply_to)).with_param(
        "reply_markup",
        json!({"inline_keyboard": [[
            {"text": "⏹ End session", "callback_data": format!("{END_PREFIX}{token}")},
            {"text": "Cancel", "callback_data": END_CANCEL},
        ]]}),
    )
}

/// Takes the buttons off a message (the `/end` confirmation once answered, so a second tap
/// cannot type `/exit` again).
pub fn remove_buttons(chat: i64, message_id: i64) -> BotCall {
    BotCall {
        method: "editMessageReplyMarkup",
        params: json!({
            "chat_id": chat,
            "message_id": message_id,
            "reply_markup": {"inline_keyboard": []},
        }),
    }
}

/// Retention: launch rows after a day.
pub fn prune(db: &impl Sql, now: i64) -> Result<(), StoreError> {
    db.exec(
        "DELETE FROM launches WHERE created_at <= ?",
        vec![(now - LAUNCH_RETENTION_MS).into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::MemDb;

    #[test]
    fn parses_new_and_end() {
        assert_eq!(
            parse("/new"),
            Some(Intent::New {
                project: None,
                prompt: None
            })
        );
        assert_eq!(
            parse("/new@ccr_bot api  fix the   tests "),
            Some(Intent::New {
                project: Some("api".into()),
                prompt: Some(" fix the   tests ".into())
            })
        );
        assert_eq!(
            parse("/new api"),
            Some(Intent::New {
                project: Some("api".into()),
                prompt: None
            })
        );
        assert_eq!(parse("/end"), Some(Intent::End { token: None }));
        assert_eq!(
            parse("/end tok1"),
            Some(Intent::End {
                token: Some("tok1".into())
            })
        );
        assert_eq!(parse("/newer x"), None);
        assert_eq!(parse("new api"), None);
        assert_eq!(parse("/cmd tok new"), None);
    }

    #[test]
    fn parses_buttons() {
        assert_eq!(
            parse_button("new:17:2"),
            Some(Button::New {
                launch_id: 17,
                choice: 2
            })
        );
        assert_eq!(
            parse_button("end:tok1"),
            Some(Button::End {
                token: "tok1".into()
            })
        );
        assert_eq!(parse_button("end-cancel"), Some(Button::Cancel));
        for other in [
            "new:x:1",
            "new:1",
            "new:1:-1",
            "end:",
            "cmd:tok:yes",
            "ap:1:allow",
        ] {
            assert_eq!(parse_button(other), None, "{other}");
        }
    }

    #[test]
    fn only_valid_names_are_kept() {
        let db = MemDb::migrated();
        let names: Vec<String> = ["api", "../etc", "api", "web.v2", "a b", ""]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(
            record_projects(&db, "devbox", &names, 1).unwrap(),
            vec!["api".to_owned(), "web.v2".to_owned()]
        );
        let many: Vec<String> = (0..80).map(|i| format!("p{i}")).collect();
        assert_eq!(
            record_projects(&db, "laptop", &many, 2).unwrap().len(),
            MAX_PROJECTS
        );
        record_projects(&db, "empty", &[], 3).unwrap();
        let all = machine_projects(&db).unwrap();
        assert_eq!(all.len(), 2, "a machine with no projects is not listed");
        assert_eq!(all[0].0, "devbox");
        // Announcing again replaces the list.
        record_projects(&db, "devbox", &["web".into()], 4).unwrap();
        assert_eq!(machine_projects(&db).unwrap()[0].1, vec!["web".to_owned()]);
    }

    fn text(call: &BotCall) -> String {
        call.params["text"].as_str().unwrap().to_owned()
    }

    #[test]
    fn one_machine_queues_unknown_refuses_several_ask() {
        let db = MemDb::migrated();
        record_projects(&db, "devbox", &["api".into(), "web".into()], 1).unwrap();
        record_projects(&db, "laptop", &["web".into()], 1).unwrap();
        let on = |_: &str| true;
        // One machine has it: queued as a start request with the prompt.
        let s = on_new(&db, 42, 5, 100, Some("api"), Some("hello world"), 10, &on).unwrap();
        let q = s.queued.expect("queued");
        assert_eq!(q.command_id, "tg-100");
        assert_eq!(q.machine_id, "devbox");
        assert_eq!(q.project.as_deref(), Some("api"));
        assert_eq!(q.command, "hello world");
        assert!(text(&s.calls[0]).contains("Starting <b>api</b> on devbox"));
        // Unknown: refused, nothing queued, the known names listed.
        let s = on_new(&db, 42, 6, 101, Some("nosuch"), None, 10, &on).unwrap();
        assert!(s.queued.is_none());
        let t = text(&s.calls[0]);
        assert!(
            t.contains("no machine has a project named <code>nosuch</code>"),
            "{t}"
        );
        assert!(t.contains("<code>api</code>, <code>web</code>"), "{t}");
        // A path is just an unknown name.
        let s = on_new(&db, 42, 6, 102, Some("/etc"), None, 10, &on).unwrap();
        assert!(s.queued.is_none());
        assert_eq!(queue::unacked_count(&db, "devbox").unwrap(), 1);
        // Several machines: buttons; a tap queues on the chosen one, once.
        let s = on_new(&db, 42, 7, 103, Some("web"), Some("go"), 10, &on).unwrap();
        assert!(s.queued.is_none());
        let kb = &s.calls[0].params["reply_markup"]["inline_keyboard"];
        assert_eq!(kb.as_array().unwrap().len(), 2);
        assert_eq!(kb[1][0]["callback_data"], "new:103:1");
        assert_eq!(kb[1][0]["text"], "web · laptop");
        let tap = on_new_button(&db, 42, 103, 1, 11, &on).unwrap();
        let q = tap.queued.expect("queued");
        assert_eq!(
            (q.machine_id.as_str(), q.command.as_str()),
            ("laptop", "go")
        );
        let again = on_new_button(&db, 42, 103, 1, 12, &on).unwrap();
        assert!(again.queued.is_none());
        assert_eq!(again.toast, "Already started.");
        // Another chat cannot use this launch; a choice out of range is refused.
        assert!(on_new_button(&db, 43, 103, 0, 12, &on)
            .unwrap()
            .queued
            .is_none());
        assert!(on_new_button(&db, 42, 103, 9, 12, &on)
            .unwrap()
            .queued
            .is_none());
        // /new alone: every machine × project.
        let s = on_new(&db, 42, 8, 104, None, None, 10, &|m| m == "devbox").unwrap();
        let kb = &s.calls[0].params["reply_markup"]["inline_keyboard"];
        assert_eq!(kb.as_array().unwrap().len(), 3);
        let t = text(&s.calls[0]);
        assert!(t.contains("devbox 🟢 online — api, web"), "{t}");
        assert!(t.contains("laptop ⚪ offline — web"), "{t}");
        // Expired launches are refused.
        prune(&db, 10 + LAUNCH_RETENTION_MS).unwrap();
        assert!(
            on_new_button(&db, 42, 104, 0, 10 + LAUNCH_RETENTION_MS, &on)
                .unwrap()
                .queued
                .is_none()
        );
    }

    #[test]
    fn no_projects_and_offline_are_explained() {
        let db = MemDb::migrated();
        let s = on_new(&db, 42, 5, 1, None, None, 10, &|_| true).unwrap();
        assert!(text(&s.calls[0]).contains("--project NAME=/absolute/path"));
        record_projects(&db, "devbox", &["api".into()], 1).unwrap();
        let s = on_new(&db, 42, 5, 2, Some("api"), None, 10, &|_| false).unwrap();
        assert!(s.queued.is_some());
        assert!(text(&s.calls[0]).contains("devbox is offline"));
        let long = "x".repeat(MAX_COMMAND_BYTES + 1);
        let s = on_new(&db, 42, 5, 3, Some("api"), Some(&long), 10, &|_| true).unwrap();
        assert!(s.queued.is_none());
    }

    #[test]
    fn notices() {
        let db = MemDb::migrated();
        record_projects(&db, "devbox", &["api".into()], 1).unwrap();
        let q = on_new(&db, 42, 5, 1, Some("api"), None, 10, &|_| true)
            .unwrap()
            .queued
            .unwrap();
        assert!(text(&start_result(&q, true, Some("ccr:2"), None))
            .contains("Started <b>api</b> on devbox in tmux window <code>ccr:2</code>"));
        assert!(text(&start_result(&q, false, None, Some("no <dir>")))
            .contains("Could not start <b>api</b> on devbox: no &lt;dir&gt;"));
        assert!(text(&start_not_delivered(&q)).contains("Not started"));
        let session = SessionRow {
            session_id: "s1".into(),
            machine_id: "devbox".into(),
            label: Some("api".into()),
            last_activity: 0,
            gone_at: None,
            gone_reason: None,
        };
        let call = end_prompt(&session, "tok1", 42, 9);
        assert!(text(&call).contains("End <b>api</b> on devbox?"));
        assert_eq!(
            call.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"],
            "end:tok1"
        );
    }
}
