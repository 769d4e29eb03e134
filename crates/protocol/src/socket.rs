//! Messages on the machine socket between the RouterDO and `ccr-agent`.
//!
//! One tagged enum for both directions, in the wire format the original clients speak
//! (`{"type":"command",...}`). A frame whose `type` this build does not know decodes to
//! [`DecodeError::UnknownType`], which callers log and skip: a newer peer must never break
//! an older one's connection.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One JSON text frame on the machine socket.
///
/// Size: the Worker is the only wasm32 build and only ever receives the agent → DO frames, so
/// there the DO → agent variants (`skip_deserializing` on wasm32) have no decoder: about
/// 10 KB of the gzipped Worker. Such a frame sent to the Worker decodes as malformed
/// ("unknown variant") and is ignored, as it was before. Natively every variant decodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum SocketMessage {
    /// DO → agent: type `command` into the session's pane. Sent again until acked.
    #[cfg_attr(target_arch = "wasm32", serde(skip_deserializing))]
    Command {
        /// Unique id; the agent's inbox executes each id at most once.
        command_id: String,
        /// The Claude Code session the command is for.
        session_id: String,
        /// The text to type; empty means "press Enter".
        command: String,
        /// The Telegram chat the command came from (for the agent's own logs).
        chat_id: String,
        /// When the Worker stops sending it (ms since the Unix epoch): after this it is dead
        /// and reported. The agent refuses a command received after its expiry, and remembers
        /// an executed id at least until then, so a redelivery is never executed twice.
        /// Absent from Workers older than this field.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<i64>,
    },
    /// Agent → DO: the command is stored durably in the agent's inbox.
    Ack {
        /// The acknowledged command.
        command_id: String,
    },
    /// Agent → DO: the outcome of executing a command.
    CommandResult {
        /// The command this is the result of.
        command_id: String,
        /// Whether the text reached the pane.
        success: bool,
        /// Why it failed, in words a person understands.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Agent → DO: a session's recorded pane is gone or belongs to someone else now (its
    /// tmux server was restarted, the pane closed, or the pane id reused). The DO marks the
    /// session gone; nothing more is typed for it until its `SessionStart` registers it again.
    SessionGone {
        /// The session whose pane is gone.
        session_id: String,
        /// What the agent found, in words a person understands.
        reason: String,
    },
    /// Agent → DO keepalive; answered by the hibernation auto-response.
    Ping,
    /// DO → agent answer to [`SocketMessage::Ping`].
    #[cfg_attr(target_arch = "wasm32", serde(skip_deserializing))]
    Pong,
    /// DO → agent: the chat decided a permission request. Stored in the RouterDO before it is
    /// sent, sent again until acked; the agent stores it and the waiting hook prints it once.
    #[cfg_attr(target_arch = "wasm32", serde(skip_deserializing))]
    Decision {
        /// The request the hook opened (`POST /approvals`).
        request_id: String,
        /// Claude Code's `decision` object, exactly as the hook prints it inside
        /// `hookSpecificOutput` (`{"behavior":"allow",...}` or `{"behavior":"deny",...}`).
        decision: serde_json::Value,
    },
    /// Agent → DO: the decision is stored durably in the agent's database.
    DecisionAck {
        /// The acknowledged request.
        request_id: String,
    },
    /// DO → agent: press named keys in the session's pane (`/esc`, `/keys`). Delivered like
    /// [`SocketMessage::Command`] — acked once stored, executed once, its outcome reported
    /// as a [`SocketMessage::CommandResult`] — but never typed as text: each name is one of
    /// [`crate::wire::keys::NAMES`], which the agent maps to a tmux key itself. A separate
    /// type so that an agent older than it skips the frame (and the command expires, and the
    /// chat is told) instead of reading it as an empty command, which is Enter.
    #[cfg_attr(target_arch = "wasm32", serde(skip_deserializing))]
    Keys {
        /// Unique id, shared with commands: the inbox executes each id at most once.
        command_id: String,
        /// The Claude Code session whose pane gets the keys.
        session_id: String,
        /// The key names, in order.
        keys: Vec<String>,
        /// The Telegram chat the keys came from (for the agent's own logs).
        chat_id: String,
        /// As [`SocketMessage::Command`]'s `expiresAt`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<i64>,
    },
    /// DO → agent: what does the session's pane show (`/peek`)? Not queued: asked while the
    /// machine is connected, answered with a [`SocketMessage::PeekResult`] of the same id, or
    /// given up by the DO after its timeout.
    #[cfg_attr(target_arch = "wasm32", serde(skip_deserializing))]
    PeekRequest {
        /// Matches the answer to the question.
        request_id: String,
        /// The session whose pane to capture (after verifying it is still the session's).
        session_id: String,
    },
    /// Agent → DO: the answer to a [`SocketMessage::PeekRequest`]: the pane's text (ANSI
    /// stripped, at most [`crate::MAX_PEEK_CHARS`] characters, its last lines), or why not.
    PeekResult {
        /// The request's id.
        request_id: String,
        /// The screen's text, when it could be captured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        screen: Option<String>,
        /// Why not, in words a person understands.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Agent → DO, once per connection: the names of the project roots its owner configured
    /// (`ccr-agent --project name=/path`), so `/new` can list them and refuse an unknown name
    /// before anything is queued. Names only: a path never travels on the wire. Each name
    /// follows [`crate::validate::project_name`]; at most [`crate::MAX_PROJECTS`].
    Projects {
        /// The project names, in the owner's order.
        projects: Vec<String>,
    },
    /// DO → agent: start Claude Code in a new tmux window in the project's directory (`/new`).
    /// Delivered like [`SocketMessage::Command`] (acked once stored, executed once); the agent
    /// looks the name up in its own list again and answers with a
    /// [`SocketMessage::StartResult`]. A separate type so that an older agent skips it.
    #[cfg_attr(target_arch = "wasm32", serde(skip_deserializing))]
    StartSession {
        /// Unique id, shared with commands: the inbox executes each id at most once.
        command_id: String,
        /// The project's name (never a path).
        project: String,
        /// The first prompt, passed to the new session's command as one argument.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<String>,
        /// The Telegram chat it came from (for the agent's own logs).
        chat_id: String,
        /// As [`SocketMessage::Command`]'s `expiresAt`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<i64>,
    },
    /// Agent → DO: the outcome of a [`SocketMessage::StartSession`].
    StartResult {
        /// The start command this is the result of.
        command_id: String,
        /// Whether the window was started.
        success: bool,
        /// The new window (`session:index`), when started.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<String>,
        /// Why not, in words a person understands.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// DO → agent: a file the chat sent to the session (a photo, document or voice note).
    /// Delivered like [`SocketMessage::Command`] — acked once stored, executed once, its
    /// outcome reported as a [`SocketMessage::CommandResult`] — but executed by downloading
    /// `GET /files/{fileId}` from the Worker into the session's folder and typing the caption
    /// followed by the saved file's path. A separate type so that an agent older than it
    /// skips the frame (the command expires and the chat is told) instead of typing only
    /// the caption.
    #[cfg_attr(target_arch = "wasm32", serde(skip_deserializing))]
    File {
        /// Unique id, shared with commands: the inbox executes each id at most once.
        command_id: String,
        /// The Claude Code session the file is for.
        session_id: String,
        /// Which file, and what the chat said about it.
        file: FileRef,
        /// The message's caption ("" when none): typed before the path.
        caption: String,
        /// The Telegram chat the file came from (for the agent's own logs).
        chat_id: String,
        /// As [`SocketMessage::Command`]'s `expiresAt`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<i64>,
    },
    /// DO → agent: serve `http://127.0.0.1:{port}` through the relay on channel `channel`
    /// (`/preview PORT`) until `expiresAt` or a [`SocketMessage::PreviewStop`]. Not queued:
    /// asked while the machine is connected, answered with a [`SocketMessage::PreviewResult`].
    #[cfg_attr(target_arch = "wasm32", serde(skip_deserializing))]
    PreviewStart {
        /// The relay channel (`pv-…`), also the preview's id.
        channel: String,
        /// The session the preview was asked for (for the agent's logs).
        session_id: String,
        /// The loopback port to serve.
        port: u16,
        /// The channel's bridge token, HMAC-SHA256(`RELAY_TOKEN`, channel), derived by the
        /// Worker: the agent never holds `RELAY_TOKEN` itself.
        token: String,
        /// When the agent stops serving on its own (ms since the Unix epoch).
        expires_at: i64,
    },
    /// Agent → DO: the preview serves (`error` absent), or why it cannot (nothing listens on
    /// the port, …).
    PreviewResult {
        /// The channel of the [`SocketMessage::PreviewStart`].
        channel: String,
        /// Why not, in words a person understands.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// DO → agent: stop serving the preview on `channel` (`/preview stop`, the session ended,
    /// or its time is up). Unknown channels are ignored.
    #[cfg_attr(target_arch = "wasm32", serde(skip_deserializing))]
    PreviewStop {
        /// The channel to stop.
        channel: String,
    },
    /// Agent → DO: a waiting PermissionRequest hook asks for its card, handed over by the
    /// daemon so that it rides the socket that is already open instead of a new HTTPS
    /// connection from a new process. The same body and rules as `POST /approvals`, for the
    /// socket's own machine; answered with a [`SocketMessage::ApprovalOpened`]. An older
    /// Worker skips it (unknown type): the hook then opens its card over HTTP.
    OpenApproval(crate::api::OpenApproval),
    /// DO → agent: the answer to a [`SocketMessage::OpenApproval`]: stored (`error` absent;
    /// opening the same request again is a no-op), or refused with the HTTP status and
    /// message `POST /approvals` would have answered.
    #[cfg_attr(target_arch = "wasm32", serde(skip_deserializing))]
    ApprovalOpened {
        /// The request of the [`SocketMessage::OpenApproval`].
        request_id: String,
        /// The status `POST /approvals` would have answered, when refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        /// Why it was refused, in words a person understands.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// What kind of attachment a chat sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FileKind {
    /// A photo (the largest size Telegram made of it).
    Photo,
    /// A file sent as a document (any type).
    Document,
    /// A voice note (OGG/Opus); saved as a file, not transcribed.
    Voice,
}

impl FileKind {
    /// The word for it in names and chat answers.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Photo => "photo",
            FileKind::Document => "document",
            FileKind::Voice => "voice",
        }
    }
}

/// A file the chat sent, as Telegram described it in the update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileRef {
    /// Telegram's `file_id` (checked with [`crate::validate::file_id`]).
    pub file_id: String,
    /// Its size in bytes, when Telegram said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Photo, document or voice note.
    pub kind: FileKind,
    /// The sender's file name (documents only). Never used as a path: the agent takes at most
    /// a short alphanumeric extension from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The exact ping frame an agent sends; the DO's auto-response matches it byte for byte.
pub const PING_FRAME: &str = r#"{"type":"ping"}"#;
/// The exact pong frame the DO answers with.
pub const PONG_FRAME: &str = r#"{"type":"pong"}"#;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Well-formed JSON object with a `type` this build does not know: log and skip.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// Not JSON, no `type`, or a known type with missing/wrong fields.
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// Unknown types are expected from newer peers; only malformed frames are worth a warning.
    pub fn is_unknown_type(&self) -> bool {
        matches!(self, DecodeError::UnknownType(_))
    }
}

const KNOWN_TYPES: [&str; 20] = [
    "command",
    "ack",
    "commandResult",
    "sessionGone",
    "ping",
    "pong",
    "decision",
    "decisionAck",
    "keys",
    "peekRequest",
    "peekResult",
    "projects",
    "startSession",
    "startResult",
    "file",
    "previewStart",
    "previewResult",
    "previewStop",
    "openApproval",
    "approvalOpened",
];

impl SocketMessage {
    /// Decodes one text frame, telling an unknown `type` apart from a malformed frame.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        match serde_json::from_str::<SocketMessage>(text) {
            Ok(msg) => Ok(msg),
            Err(err) => {
                let value: serde_json::Value = serde_json::from_str(text)
                    .map_err(|e| DecodeError::Malformed(e.to_string()))?;
                match value.get("type").and_then(|t| t.as_str()) {
                    Some(t) if !KNOWN_TYPES.contains(&t) => {
                        Err(DecodeError::UnknownType(t.chars().take(64).collect()))
                    }
                    _ => Err(DecodeError::Malformed(err.to_string())),
                }
            }
        }
    }

    /// Encodes as one JSON text frame.
    pub fn encode(&self) -> String {
        // Serialising these plain structs cannot fail: no maps with non-string keys, no
        // custom serializers.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The `type` tag, for logs.
    pub fn type_name(&self) -> &'static str {
        match self {
            SocketMessage::Command { .. } => "command",
            SocketMessage::Ack { .. } => "ack",
            SocketMessage::CommandResult { .. } => "commandResult",
            SocketMessage::SessionGone { .. } => "sessionGone",
            SocketMessage::Ping => "ping",
            SocketMessage::Pong => "pong",
            SocketMessage::Decision { .. } => "decision",
            SocketMessage::DecisionAck { .. } => "decisionAck",
            SocketMessage::Keys { .. } => "keys",
            SocketMessage::PeekRequest { .. } => "peekRequest",
            SocketMessage::PeekResult { .. } => "peekResult",
            SocketMessage::Projects { .. } => "projects",
            SocketMessage::StartSession { .. } => "startSession",
            SocketMessage::StartResult { .. } => "startResult",
            SocketMessage::File { .. } => "file",
            SocketMessage::PreviewStart { .. } => "previewStart",
            SocketMessage::PreviewResult { .. } => "previewResult",
            SocketMessage::PreviewStop { .. } => "previewStop",
            SocketMessage::OpenApproval(_) => "openApproval",
            SocketMessage::ApprovalOpened { .. } => "approvalOpened",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Parses `literal`, checks it decodes to `expected`, and that encoding gives the same JSON.
    fn golden(literal: &str, expected: SocketMessage) {
        let decoded = SocketMessage::decode(literal).expect("decodes");
        assert_eq!(decoded, expected);
        let back: Value = serde_json::from_str(&decoded.encode()).unwrap();
        let want: Value = serde_json::from_str(literal).unwrap();
        assert_eq!(back, want, "round trip of {literal}");
    }

    #[test]
    fn command_shape() {
        golden(
            r#"{"type":"command","commandId":"c1","sessionId":"s1","command":"ls -la","chatId":"42"}"#,
            SocketMessage::Command {
                command_id: "c1".into(),
                session_id: "s1".into(),
                command: "ls -la".into(),
                chat_id: "42".into(),
                expires_at: None,
            },
        );
        golden(
            r#"{"type":"command","commandId":"c1","sessionId":"s1","command":"","chatId":"42","expiresAt":1700000000000}"#,
            SocketMessage::Command {
                command_id: "c1".into(),
                session_id: "s1".into(),
                command: String::new(),
                chat_id: "42".into(),
                expires_at: Some(1_700_000_000_000),
            },
        );
    }

    #[test]
    fn keys_shape() {
        golden(
            r#"{"type":"keys","commandId":"tg-7","sessionId":"s1","keys":["Escape"],"chatId":"42","expiresAt":1700000000000}"#,
            SocketMessage::Keys {
                command_id: "tg-7".into(),
                session_id: "s1".into(),
                keys: vec!["Escape".into()],
                chat_id: "42".into(),
                expires_at: Some(1_700_000_000_000),
            },
        );
        golden(
            r#"{"type":"keys","commandId":"c2","sessionId":"s1","keys":["Down","Down","Enter"],"chatId":"42"}"#,
            SocketMessage::Keys {
                command_id: "c2".into(),
                session_id: "s1".into(),
                keys: vec!["Down".into(), "Down".into(), "Enter".into()],
                chat_id: "42".into(),
                expires_at: None,
            },
        );
        // A known type with missing fields is malformed, not unknown.
        assert!(!SocketMessage::decode(r#"{"type":"keys","commandId":"c"}"#)
            .unwrap_err()
            .is_unknown_type());
    }

    #[test]
    fn peek_shapes() {
        golden(
            r#"{"type":"peekRequest","requestId":"peek-9","sessionId":"s1"}"#,
            SocketMessage::PeekRequest {
                request_id: "peek-9".into(),
                session_id: "s1".into(),
            },
        );
        golden(
            r#"{"type":"peekResult","requestId":"peek-9","screen":"$ ls\nREADME.md"}"#,
            SocketMessage::PeekResult {
                request_id: "peek-9".into(),
                screen: Some("$ ls\nREADME.md".into()),
                error: None,
            },
        );
        golden(
            r#"{"type":"peekResult","requestId":"peek-9","error":"pane gone"}"#,
            SocketMessage::PeekResult {
                request_id: "peek-9".into(),
                screen: None,
                error: Some("pane gone".into()),
            },
        );
    }

    #[test]
    fn new_session_shapes() {
        golden(
            r#"{"type":"projects","projects":["api","web.v2"]}"#,
            SocketMessage::Projects {
                projects: vec!["api".into(), "web.v2".into()],
            },
        );
        golden(
            r#"{"type":"startSession","commandId":"tg-5","project":"api","prompt":"hello world","chatId":"42","expiresAt":1700000000000}"#,
            SocketMessage::StartSession {
                command_id: "tg-5".into(),
                project: "api".into(),
                prompt: Some("hello world".into()),
                chat_id: "42".into(),
                expires_at: Some(1_700_000_000_000),
            },
        );
        golden(
            r#"{"type":"startSession","commandId":"tg-6","project":"api","chatId":"42"}"#,
            SocketMessage::StartSession {
                command_id: "tg-6".into(),
                project: "api".into(),
                prompt: None,
                chat_id: "42".into(),
                expires_at: None,
            },
        );
        golden(
            r#"{"type":"startResult","commandId":"tg-5","success":true,"window":"ccr:1"}"#,
            SocketMessage::StartResult {
                command_id: "tg-5".into(),
                success: true,
                window: Some("ccr:1".into()),
                error: None,
            },
        );
        golden(
            r#"{"type":"startResult","commandId":"tg-6","success":false,"error":"no project"}"#,
            SocketMessage::StartResult {
                command_id: "tg-6".into(),
                success: false,
                window: None,
                error: Some("no project".into()),
            },
        );
    }

    #[test]
    fn preview_shapes() {
        golden(
            r#"{"type":"previewStart","channel":"pv-abc","sessionId":"s1","port":3000,"token":"t0k","expiresAt":1700000000000}"#,
            SocketMessage::PreviewStart {
                channel: "pv-abc".into(),
                session_id: "s1".into(),
                port: 3000,
                token: "t0k".into(),
                expires_at: 1_700_000_000_000,
            },
        );
        golden(
            r#"{"type":"previewResult","channel":"pv-abc"}"#,
            SocketMessage::PreviewResult {
                channel: "pv-abc".into(),
                error: None,
            },
        );
        golden(
            r#"{"type":"previewResult","channel":"pv-abc","error":"nothing is listening"}"#,
            SocketMessage::PreviewResult {
                channel: "pv-abc".into(),
                error: Some("nothing is listening".into()),
            },
        );
        golden(
            r#"{"type":"previewStop","channel":"pv-abc"}"#,
            SocketMessage::PreviewStop {
                channel: "pv-abc".into(),
            },
        );
        // A port outside u16 is malformed, not unknown.
        assert!(!SocketMessage::decode(
            r#"{"type":"previewStart","channel":"c","sessionId":"s","port":70000,"token":"t","expiresAt":1}"#
        )
        .unwrap_err()
        .is_unknown_type());
    }

    #[test]
    fn session_gone_shape() {
        golden(
            r#"{"type":"sessionGone","sessionId":"s1","reason":"tmux server restarted"}"#,
            SocketMessage::SessionGone {
                session_id: "s1".into(),
                reason: "tmux server restarted".into(),
            },
        );
    }

    #[test]
    fn approval_over_the_socket_shapes() {
        golden(
            r#"{"type":"openApproval","requestId":"0a1b","sessionId":"s1","toolName":"Bash","toolInput":{"command":"ls"},"permissionSuggestions":[{"type":"addRules"}]}"#,
            SocketMessage::OpenApproval(crate::api::OpenApproval {
                request_id: "0a1b".into(),
                session_id: "s1".into(),
                tool_name: "Bash".into(),
                tool_input: json!({"command": "ls"}),
                permission_suggestions: vec![json!({"type": "addRules"})],
            }),
        );
        golden(
            r#"{"type":"approvalOpened","requestId":"0a1b"}"#,
            SocketMessage::ApprovalOpened {
                request_id: "0a1b".into(),
                status: None,
                error: None,
            },
        );
        golden(
            r#"{"type":"approvalOpened","requestId":"0a1b","status":404,"error":"unknown session"}"#,
            SocketMessage::ApprovalOpened {
                request_id: "0a1b".into(),
                status: Some(404),
                error: Some("unknown session".into()),
            },
        );
        // A body that is not an OpenApproval is malformed, not unknown.
        assert!(
            !SocketMessage::decode(r#"{"type":"openApproval","requestId":"x"}"#)
                .unwrap_err()
                .is_unknown_type()
        );
    }

    #[test]
    fn ack_shape() {
        golden(
            r#"{"type":"ack","commandId":"c1"}"#,
            SocketMessage::Ack {
                command_id: "c1".into(),
            },
        );
    }

    #[test]
    fn command_result_shapes() {
        golden(
            r#"{"type":"commandResult","commandId":"c1","success":false,"error":"pane %3 is gone"}"#,
            SocketMessage::CommandResult {
                command_id: "c1".into(),
                success: false,
                error: Some("pane %3 is gone".into()),
            },
        );
        golden(
            r#"{"type":"commandResult","commandId":"c2","success":true}"#,
            SocketMessage::CommandResult {
                command_id: "c2".into(),
                success: true,
                error: None,
            },
        );
    }

    #[test]
    fn decision_shapes() {
        golden(
            r#"{"type":"decision","requestId":"r1","decision":{"behavior":"allow"}}"#,
            SocketMessage::Decision {
                request_id: "r1".into(),
                decision: json!({"behavior": "allow"}),
            },
        );
        golden(
            r#"{"type":"decision","requestId":"r2","decision":{"behavior":"deny","message":"no","interrupt":true}}"#,
            SocketMessage::Decision {
                request_id: "r2".into(),
                decision: json!({"behavior": "deny", "message": "no", "interrupt": true}),
            },
        );
        golden(
            r#"{"type":"decisionAck","requestId":"r1"}"#,
            SocketMessage::DecisionAck {
                request_id: "r1".into(),
            },
        );
    }

    #[test]
    fn ping_pong_frames_are_exact() {
        golden(PING_FRAME, SocketMessage::Ping);
        golden(PONG_FRAME, SocketMessage::Pong);
        // The auto-response matches bytes, so the encoder must produce exactly these frames.
        assert_eq!(SocketMessage::Ping.encode(), PING_FRAME);
        assert_eq!(SocketMessage::Pong.encode(), PONG_FRAME);
    }

    #[test]
    fn unknown_type_is_reported_not_fatal() {
        let err = SocketMessage::decode(r#"{"type":"hello","version":2}"#).unwrap_err();
        assert_eq!(err, DecodeError::UnknownType("hello".into()));
        assert!(err.is_unknown_type());
        // A decoder that met an unknown frame keeps decoding the next one.
        assert_eq!(SocketMessage::decode(PING_FRAME), Ok(SocketMessage::Ping));
    }

    #[test]
    fn malformed_frames_are_told_apart() {
        for bad in [
            "not json",
            "[]",
            r#"{"commandId":"x"}"#,
            r#"{"type":"ack"}"#,
            r#"{"type":"commandResult","commandId":"c","success":"yes"}"#,
            r#"{"type":7}"#,
        ] {
            let err = SocketMessage::decode(bad).unwrap_err();
            assert!(!err.is_unknown_type(), "{bad} → {err}");
        }
    }

    #[test]
    fn extra_fields_are_tolerated() {
        // A newer agent may add fields to a known message; that must not break an older DO.
        let msg = SocketMessage::decode(&json!({"type":"ack","commandId":"c","at":1}).to_string());
        assert_eq!(
            msg,
            Ok(SocketMessage::Ack {
                command_id: "c".into()
            })
        );
    }

    #[test]
    fn file_shape() {
        golden(
            r#"{"type":"file","commandId":"tg-9","sessionId":"s1","file":{"fileId":"AgAC-x_1","size":2048,"kind":"document","name":"notes.txt"},"caption":"read this","chatId":"42","expiresAt":1700000000000}"#,
            SocketMessage::File {
                command_id: "tg-9".into(),
                session_id: "s1".into(),
                file: FileRef {
                    file_id: "AgAC-x_1".into(),
                    size: Some(2048),
                    kind: FileKind::Document,
                    name: Some("notes.txt".into()),
                },
                caption: "read this".into(),
                chat_id: "42".into(),
                expires_at: Some(1_700_000_000_000),
            },
        );
        golden(
            r#"{"type":"file","commandId":"tg-10","sessionId":"s1","file":{"fileId":"v","kind":"voice"},"caption":"","chatId":"42"}"#,
            SocketMessage::File {
                command_id: "tg-10".into(),
                session_id: "s1".into(),
                file: FileRef {
                    file_id: "v".into(),
                    size: None,
                    kind: FileKind::Voice,
                    name: None,
                },
                caption: String::new(),
                chat_id: "42".into(),
                expires_at: None,
            },
        );
    }
}
