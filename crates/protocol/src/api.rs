//! Bodies of the Worker's HTTP API (`/sessions*`, `/notifications/send`) and the error body.
//!
//! Field names are camelCase to match the original JavaScript implementation, whose clients
//! still run in real installations.

use serde::{Deserialize, Deserializer, Serialize};

/// Every error answer: `{"ok":false,"error":"<what and why>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Always `false`.
    pub ok: bool,
    /// What went wrong and why, for a person.
    pub error: String,
}

impl ErrorBody {
    /// An error body with the given message.
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: error.into(),
        }
    }
}

/// A bare success: `{"ok":true}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OkBody {
    /// Always `true`.
    pub ok: bool,
}

impl Default for OkBody {
    fn default() -> Self {
        Self { ok: true }
    }
}

/// `POST /sessions/register`: upsert session → machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterSession {
    /// Claude Code's session id.
    pub session_id: String,
    /// The machine whose agent serves this session.
    pub machine_id: String,
    /// A short name shown in Telegram (usually the project directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// `POST /sessions/unregister`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnregisterSession {
    /// The session to remove, with its reply mappings.
    pub session_id: String,
}

/// One row of `GET /sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    /// Claude Code's session id.
    pub session_id: String,
    /// The machine that runs it.
    pub machine_id: String,
    /// Its label, if one was registered.
    #[serde(default)]
    pub label: Option<String>,
    /// Last register/notify/command for it, ms since the Unix epoch.
    pub last_activity: i64,
    /// Whether the machine's socket is connected now.
    pub online: bool,
    /// The machine reported the session's pane gone (its terminal or tmux server ended
    /// without the session's end hook): replies to it are refused until it registers again.
    #[serde(default)]
    pub gone: bool,
}

/// Most sessions one machine may have registered at once; registering one more is refused.
pub const MAX_SESSIONS_PER_MACHINE: usize = 1_000;

/// Most sessions one `GET /sessions` answer lists (the most recently active ones): one
/// machine's cap, so a machine key always sees all of its own sessions.
pub const MAX_LISTED_SESSIONS: usize = MAX_SESSIONS_PER_MACHINE;

/// `GET /sessions` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionList {
    /// Always `true`.
    pub ok: bool,
    /// The registered sessions the caller may see, most recently active first, at most
    /// [`MAX_LISTED_SESSIONS`].
    pub sessions: Vec<SessionInfo>,
    /// `true` when more sessions exist than were listed; absent otherwise (so the answer of
    /// an installation under the cap is what it always was).
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The default reply buttons a notification carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ButtonAction {
    /// `▶️ Continue`: presses Enter.
    Continue,
    /// `✅ Yes`: types `y`.
    Yes,
    /// `❌ No`: types `n`.
    No,
    /// `🛑 Exit`: types `/exit`.
    Exit,
    /// `⏹ Stop`: presses Escape (stops Claude Code's current turn), as `/esc` does.
    Stop,
    /// `👀 Peek`: answers with the session's screen, as `/peek` does (nothing is typed).
    Peek,
}

impl ButtonAction {
    /// All actions, in the order the default keyboard shows them.
    pub const ALL: [ButtonAction; 6] = [
        ButtonAction::Continue,
        ButtonAction::Yes,
        ButtonAction::No,
        ButtonAction::Exit,
        ButtonAction::Stop,
        ButtonAction::Peek,
    ];

    /// The name used in callback data (`cmd:<token>:<name>`).
    pub fn name(self) -> &'static str {
        match self {
            ButtonAction::Continue => "continue",
            ButtonAction::Yes => "yes",
            ButtonAction::No => "no",
            ButtonAction::Exit => "exit",
            ButtonAction::Stop => "stop",
            ButtonAction::Peek => "peek",
        }
    }

    /// Parses a callback-data action name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The button's caption.
    pub fn caption(self) -> &'static str {
        match self {
            ButtonAction::Continue => "▶️ Continue",
            ButtonAction::Yes => "✅ Yes",
            ButtonAction::No => "❌ No",
            ButtonAction::Exit => "🛑 Exit",
            ButtonAction::Stop => "⏹ Stop",
            ButtonAction::Peek => "👀 Peek",
        }
    }

    /// The text typed into the pane when the button is pressed ("" = Enter alone).
    pub fn command_text(self) -> &'static str {
        match self {
            ButtonAction::Continue => "",
            ButtonAction::Yes => "y",
            ButtonAction::No => "n",
            ButtonAction::Exit => "/exit",
            ButtonAction::Stop | ButtonAction::Peek => "",
        }
    }

    /// The named keys (`wire::keys::NAMES`) pressed instead of typing text, if any.
    pub fn keys(self) -> Option<&'static str> {
        match self {
            ButtonAction::Stop => Some("Escape"),
            _ => None,
        }
    }
}

/// `buttons` in a notification: `true`/absent = the default four, `false` = none, or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Buttons {
    /// `true` for the default keyboard, `false` for none.
    Enabled(bool),
    /// Exactly these buttons, in this order.
    Actions(Vec<ButtonAction>),
}

impl Buttons {
    /// The buttons to show.
    pub fn actions(&self) -> Vec<ButtonAction> {
        match self {
            Buttons::Enabled(true) => ButtonAction::ALL.to_vec(),
            Buttons::Enabled(false) => Vec::new(),
            Buttons::Actions(list) => list.clone(),
        }
    }
}

/// `POST /notifications/send`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendNotification {
    /// The session the notification is about; replies to it are routed there.
    pub session_id: String,
    /// The text to send (plain text; the Worker escapes it).
    pub text: String,
    /// Target chat; defaults to the first allowed chat. A number or a numeric string.
    #[serde(
        default,
        deserialize_with = "chat_id_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub chat_id: Option<i64>,
    /// Reply buttons (default: the four standard ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buttons: Option<Buttons>,
    /// The original implementation's raw inline keyboard, passed through to Telegram.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_markup: Option<serde_json::Value>,
}

/// `POST /approvals`: a PermissionRequest hook asks the chat to decide. The Worker stores the
/// request, sends one card, and later pushes the decision over the machine's socket
/// (`SocketMessage::Decision`, in `socket.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenApproval {
    /// Chosen by the hook (unique); the decision carries it back. Opening it again is a no-op.
    pub request_id: String,
    /// The Claude Code session asking.
    pub session_id: String,
    /// Claude Code's `tool_name`.
    pub tool_name: String,
    /// Claude Code's `tool_input`, as given.
    #[serde(default)]
    pub tool_input: serde_json::Value,
    /// Claude Code's `permission_suggestions`, as given (each may be echoed back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permission_suggestions: Vec<serde_json::Value>,
}

/// `POST /approvals/close`: requests the session moved on from without the chat's decision
/// (answered at the terminal, or the hook gave up): their cards say so and lose their buttons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseApprovals {
    /// The requests (those of other machines, or already settled, are left alone).
    pub request_ids: Vec<String>,
    /// What happened, for the card: "answered at the terminal", "expired".
    pub reason: String,
}

/// `POST /approvals` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalOpened {
    /// Always `true`.
    pub ok: bool,
    /// The request.
    pub request_id: String,
}

/// `POST /notifications/send` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSent {
    /// Always `true`.
    pub ok: bool,
    /// One id per part the text was split into, in order.
    pub message_ids: Vec<i64>,
    /// The first part's id (the original implementation's field).
    pub message_id: i64,
    /// Token for `/cmd <token> <text>` and the buttons' callback data.
    pub token: String,
}

/// `POST /notifications/send` answer (status 202) when Telegram could not take the message
/// yet (unreachable, failing, or rate-limiting): it is stored in the Worker's outbox and
/// sent, in order with the chat's other messages, as soon as Telegram answers; replies to it
/// route once it is sent. The 200 answer ([`NotificationSent`]) is unchanged when it went
/// out at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationQueued {
    /// Always `true`.
    pub ok: bool,
    /// Always `true`: the message waits in the outbox.
    pub queued: bool,
    /// The notification's id: its token (the `token` of a 200 answer), also what `/cmd` and
    /// the buttons carry and what the Worker's log names.
    pub id: String,
}

impl NotificationQueued {
    /// A queued answer for the notification `id`.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            ok: true,
            queued: true,
            id: id.into(),
        }
    }
}

/// Either success answer of `POST /notifications/send`, as a client reads it: 200
/// [`NotificationSent`] or 202 [`NotificationQueued`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NotificationAnswer {
    /// Sent at once.
    Sent(NotificationSent),
    /// Waiting in the Worker's outbox for Telegram.
    Queued(NotificationQueued),
}

/// `GET /outbox` answer (admin key): the Bot API calls waiting for Telegram and what became
/// of the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxStatus {
    /// Always `true`.
    pub ok: bool,
    /// Calls stored and not yet accepted by Telegram.
    pub pending: i64,
    /// Calls Telegram accepted after they were stored (at once or on a retry), since the
    /// object was created.
    pub sent: i64,
    /// Calls dropped since the object was created: refused for good by Telegram (400/403),
    /// older than the outbox's age limit, or not stored because the outbox was full.
    pub dropped: i64,
    /// When the next retry is due (ms since the Unix epoch), if any call waits.
    #[serde(default)]
    pub next_attempt_at: Option<i64>,
}

/// Accepts a chat id as a JSON number or a numeric string (the original clients send both).
fn chat_id_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(i64),
        Str(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Num(n)) => Ok(Some(n)),
        Some(Raw::Str(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("chatId must be an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn roundtrip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(
        literal: Value,
        expected: T,
    ) {
        let parsed: T = serde_json::from_value(literal.clone()).expect("parses");
        assert_eq!(parsed, expected);
        assert_eq!(serde_json::to_value(&parsed).unwrap(), literal);
    }

    #[test]
    fn register_shape() {
        roundtrip(
            json!({"sessionId":"s1","machineId":"devbox","label":"api"}),
            RegisterSession {
                session_id: "s1".into(),
                machine_id: "devbox".into(),
                label: Some("api".into()),
            },
        );
        roundtrip(
            json!({"sessionId":"s1","machineId":"devbox"}),
            RegisterSession {
                session_id: "s1".into(),
                machine_id: "devbox".into(),
                label: None,
            },
        );
    }

    #[test]
    fn unregister_shape() {
        roundtrip(
            json!({"sessionId":"s1"}),
            UnregisterSession {
                session_id: "s1".into(),
            },
        );
    }

    #[test]
    fn notification_shapes() {
        roundtrip(
            json!({"sessionId":"s1","text":"done","chatId":42,"buttons":false}),
            SendNotification {
                session_id: "s1".into(),
                text: "done".into(),
                chat_id: Some(42),
                buttons: Some(Buttons::Enabled(false)),
                reply_markup: None,
            },
        );
        let with_list: SendNotification = serde_json::from_value(
            json!({"sessionId":"s","text":"t","chatId":"-1001","buttons":["yes","no"]}),
        )
        .unwrap();
        assert_eq!(with_list.chat_id, Some(-1001));
        assert_eq!(
            with_list.buttons.unwrap().actions(),
            vec![ButtonAction::Yes, ButtonAction::No]
        );
        let legacy: SendNotification = serde_json::from_value(json!({
            "sessionId":"s","text":"t",
            "replyMarkup":{"inline_keyboard":[[{"text":"A","callback_data":"x"}]]}
        }))
        .unwrap();
        assert!(legacy.reply_markup.is_some());
        assert!(serde_json::from_value::<SendNotification>(
            json!({"sessionId":"s","text":"t","chatId":"abc"})
        )
        .is_err());
    }

    #[test]
    fn notification_answer_shape() {
        roundtrip(
            json!({"ok":true,"messageIds":[7,8],"messageId":7,"token":"abc"}),
            NotificationSent {
                ok: true,
                message_ids: vec![7, 8],
                message_id: 7,
                token: "abc".into(),
            },
        );
    }

    #[test]
    fn notification_queued_shape() {
        roundtrip(
            json!({"ok":true,"queued":true,"id":"abc"}),
            NotificationQueued::new("abc"),
        );
    }

    #[test]
    fn a_client_reads_either_notification_answer() {
        let sent: NotificationAnswer =
            serde_json::from_value(json!({"ok":true,"messageIds":[7],"messageId":7,"token":"t"}))
                .unwrap();
        assert!(matches!(sent, NotificationAnswer::Sent(s) if s.message_id == 7));
        let queued: NotificationAnswer =
            serde_json::from_value(json!({"ok":true,"queued":true,"id":"t"})).unwrap();
        assert_eq!(
            queued,
            NotificationAnswer::Queued(NotificationQueued::new("t"))
        );
    }

    #[test]
    fn outbox_status_shape() {
        roundtrip(
            json!({"ok":true,"pending":2,"sent":5,"dropped":1,"nextAttemptAt":1700}),
            OutboxStatus {
                ok: true,
                pending: 2,
                sent: 5,
                dropped: 1,
                next_attempt_at: Some(1700),
            },
        );
    }

    #[test]
    fn session_list_shape() {
        roundtrip(
            json!({"ok":true,"sessions":[{"sessionId":"s","machineId":"m","label":null,"lastActivity":5,"online":false,"gone":false}]}),
            SessionList {
                ok: true,
                sessions: vec![SessionInfo {
                    session_id: "s".into(),
                    machine_id: "m".into(),
                    label: None,
                    last_activity: 5,
                    online: false,
                    gone: false,
                }],
                truncated: false,
            },
        );
        roundtrip(
            json!({"ok":true,"sessions":[],"truncated":true}),
            SessionList {
                ok: true,
                sessions: vec![],
                truncated: true,
            },
        );
    }

    #[test]
    fn error_and_ok_shapes() {
        roundtrip(json!({"ok":false,"error":"nope"}), ErrorBody::new("nope"));
        roundtrip(json!({"ok":true}), OkBody::default());
    }

    #[test]
    fn button_actions_map_to_commands() {
        for a in ButtonAction::ALL {
            assert_eq!(ButtonAction::from_name(a.name()), Some(a));
        }
        assert_eq!(ButtonAction::Continue.command_text(), "");
        assert_eq!(ButtonAction::Exit.command_text(), "/exit");
        assert_eq!(ButtonAction::Stop.keys(), Some("Escape"));
        assert_eq!(ButtonAction::Exit.keys(), None);
        assert_eq!(ButtonAction::from_name("stop"), Some(ButtonAction::Stop));
        assert_eq!(ButtonAction::from_name("rm"), None);
    }
}
