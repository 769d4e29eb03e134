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
}

impl HookEvent {
    /// Every event, in install order.
    pub(crate) const ALL: [HookEvent; 5] = [
        HookEvent::SessionStart,
        HookEvent::Stop,
        HookEvent::Notification,
        HookEvent::SessionEnd,
        HookEvent::PermissionRequest,
    ];

    /// The argument on the command line (`session-start`).
    pub(crate) fn arg(self) -> &'static str {
        match self {
            HookEvent::SessionStart => "session-start",
            HookEvent::Stop => "stop",
            HookEvent::Notification => "notification",
            HookEvent::SessionEnd => "session-end",
            HookEvent::PermissionRequest => "permission-request",
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
        }
    }
}
