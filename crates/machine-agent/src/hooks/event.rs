//! The Claude Code hook events this agent handles, with their two spellings: the argument of
//! `ccr-agent hook` and Claude Code's name in settings.json.

/// The Claude Code hook events `ccr-agent hook` handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HookEvent {
    /// `SessionStart`: record the session's pane and register it with the Worker.
    SessionStart,
    /// `Stop`: send the last assistant text as a notification.
    Stop,
    /// `Notification`: send the hook's message.
    Notification,
    /// `SessionEnd`: unregister the session.
    SessionEnd,
    /// `PermissionRequest`: ask the chat, wait for its decision and print it.
    PermissionRequest,
    /// `PostToolUse`: the tool ran; a card for this call still open was answered at the terminal.
    PostToolUse,
    /// `PermissionDenied`: denied; a card for this call still open was answered at the terminal.
    PermissionDenied,
    /// `UserPromptSubmit`: the session moved on; its open cards were answered at the terminal.
    UserPromptSubmit,
    /// `StopFailure`: the turn ended on an API error; the chat is told which.
    StopFailure,
}

impl HookEvent {
    /// Every event, in install order.
    pub(crate) const ALL: [HookEvent; 9] = [
        HookEvent::SessionStart,
        HookEvent::Stop,
        HookEvent::Notification,
        HookEvent::SessionEnd,
        HookEvent::PermissionRequest,
        HookEvent::PostToolUse,
        HookEvent::PermissionDenied,
        HookEvent::UserPromptSubmit,
        HookEvent::StopFailure,
    ];

    /// The argument on the command line (`session-start`).
    pub(crate) fn arg(self) -> &'static str {
        match self {
            HookEvent::SessionStart => "session-start",
            HookEvent::Stop => "stop",
            HookEvent::Notification => "notification",
            HookEvent::SessionEnd => "session-end",
            HookEvent::PermissionRequest => "permission-request",
            HookEvent::PostToolUse => "post-tool-use",
            HookEvent::PermissionDenied => "permission-denied",
            HookEvent::UserPromptSubmit => "user-prompt-submit",
            HookEvent::StopFailure => "stop-failure",
        }
    }

    /// Claude Code's name for the event in settings.json (`SessionStart`).
    pub(crate) fn claude_name(self) -> &'static str {
        match self {
            HookEvent::SessionStart => "SessionStart",
            HookEvent::Stop => "Stop",
            HookEvent::Notification => "Notification",
            HookEvent::SessionEnd => "SessionEnd",
            HookEvent::PermissionRequest => "PermissionRequest",
            HookEvent::PostToolUse => "PostToolUse",
            HookEvent::PermissionDenied => "PermissionDenied",
            HookEvent::UserPromptSubmit => "UserPromptSubmit",
            HookEvent::StopFailure => "StopFailure",
        }
    }
}
