//! The names on the wire: every route path, header, query parameter, socket subprotocol, close
//! code and bot command that more than one component (or a user's script) depends on. Each is
//! written here once, so renaming one fails to compile everywhere it is used instead of failing
//! at run time on the other end.
//!
//! Header names are lowercase: HTTP header names are case-insensitive, and workers-rs and
//! `http` both hand them back lowercased.

/// Route paths of the Worker. Paths are matched on whole segments; a trailing `/` is ignored.
pub mod route {
    /// `GET`: liveness, answers `ok`. No auth.
    pub const HEALTH: &str = "/health";
    /// `GET`: the sessions the caller may see, with machine, label and online state.
    pub const SESSIONS: &str = "/sessions";
    /// `POST`: upsert a session → machine (+ label).
    pub const SESSIONS_REGISTER: &str = "/sessions/register";
    /// `POST`: remove a session and its reply mappings.
    pub const SESSIONS_UNREGISTER: &str = "/sessions/unregister";
    /// `POST`: send a Telegram message for a session and remember message → session.
    pub const NOTIFICATIONS_SEND: &str = "/notifications/send";
    /// `POST {WEBHOOK_TELEGRAM}/{secret}`: Telegram's updates.
    pub const WEBHOOK_TELEGRAM: &str = "/webhook/telegram";
    /// `GET` (admin key): the outbox of Bot API calls waiting for Telegram, and the counts of
    /// calls sent and dropped.
    pub const OUTBOX: &str = "/outbox";
    /// `POST`: a PermissionRequest hook asks the chat for a decision (a card with buttons).
    pub const APPROVALS: &str = "/approvals";
    /// `POST`: the machine's sessions moved on without the chat's decision: close these cards.
    pub const APPROVALS_CLOSE: &str = "/approvals/close";
    /// `GET` with an upgrade: a machine agent's socket (`?machineId=X`).
    pub const MACHINE_SOCKET: &str = "/ws";
    /// `GET`: relay health. No auth.
    pub const RELAY_PING: &str = "/ping";
    /// The default relay channel's public prefix.
    pub const PROXY: &str = "/proxy";
    /// Named relay channels live under `{RELAY}/{channel}`.
    pub const RELAY: &str = "/relay";
    /// `GET {FILES}/{file_id}` (a machine's key): the bytes of a file a chat sent to one of
    /// the machine's sessions, streamed from Telegram by the Worker (the bot token never
    /// leaves it).
    pub const FILES: &str = "/files";
    /// Last segment of a channel's bridge long-poll: `GET {prefix}/_poll`.
    pub const POLL: &str = "_poll";
    /// Last segment of a channel's bridge answer: `POST {prefix}/_respond`.
    pub const RESPOND: &str = "_respond";
    /// A late answer: `GET {prefix}/_result/{id}`.
    pub const RESULT: &str = "_result";
    /// Last segment of a bridge's confirmation of requests it received:
    /// `POST {prefix}/_ack` with `{"ids":[...]}`.
    pub const ACK: &str = "_ack";
    /// Last segment of a bridge's WebSocket transport: `GET {prefix}/_ws` with an upgrade and
    /// the channel's token; requests are pushed over it instead of long-polled.
    pub const BRIDGE_SOCKET: &str = "_ws";
    /// A streamed response over the long-poll transport: `POST {prefix}/_stream/{id}?seq=N`,
    /// its head (`seq=0`, JSON) and then its body in bounded chunks (`seq=1, 2, …`, raw bytes),
    /// each answered once the caller's stream has taken it; `end` marks the last call.
    pub const STREAM: &str = "_stream";

    /// The webhook path for `secret`: `/webhook/telegram/{secret}`.
    pub fn webhook(secret: &str) -> String {
        format!("{WEBHOOK_TELEGRAM}/{secret}")
    }

    /// The path of one file: `/files/{file_id}`.
    pub fn file(file_id: &str) -> String {
        format!("{FILES}/{file_id}")
    }

    /// The public prefix of a named relay channel: `/relay/{channel}`.
    pub fn relay_channel(channel: &str) -> String {
        format!("{RELAY}/{channel}")
    }
}

/// Header names (lowercase).
pub mod header {
    /// The API key (admin or machine-scoped).
    pub const API_KEY: &str = "x-api-key";
    /// `Authorization: Bearer <key>`, the original clients' way to send the API key.
    pub const AUTHORIZATION: &str = "authorization";
    /// The scheme prefix of [`AUTHORIZATION`].
    pub const BEARER_PREFIX: &str = "Bearer ";
    /// The machine a caller speaks for; a machine-scoped key is checked against it.
    pub const MACHINE_ID: &str = "x-ccr-machine-id";
    /// Which RouterDO instance answered (an id that changes when the object is rebuilt).
    pub const INSTANCE: &str = "x-ccr-instance";
    /// Which relay channel object (RelayDO) instance answered: random per instance, so a
    /// change shows that the object was rebuilt (and its waiting callers lost).
    pub const RELAY_INSTANCE: &str = "x-ccr-relay-instance";
    /// On a relay's long-poll answers: this relay takes streamed responses over long-poll
    /// (`POST {prefix}/_stream/{id}`). A bridge streams only to a relay that says so, and
    /// sends whole bodies (≤ 10 MiB) to an older one.
    pub const RELAY_STREAMS: &str = "x-ccr-relay-streams";
    /// Inside the Worker only: the authenticated principal the entry point hands the RouterDO.
    /// Stripped from every incoming request first, so a caller can never set it.
    pub const PRINCIPAL: &str = "x-ccr-principal";
    /// Telegram's webhook secret, checked besides the path secret.
    pub const TELEGRAM_SECRET: &str = "x-telegram-bot-api-secret-token";
    /// The WebSocket subprotocol list; the machine socket's API key travels in it.
    pub const WEBSOCKET_PROTOCOL: &str = "sec-websocket-protocol";
    /// A relay bridge's token.
    pub const RELAY_TOKEN: &str = "x-relay-token";
    /// The seed protocol's bridge token header, still accepted.
    pub const RELAY_TOKEN_SEED: &str = "x-token";
    /// A public relay caller's key, when `RELAY_PUBLIC_KEY` is set.
    pub const RELAY_KEY: &str = "x-relay-key";
    /// Standard: the body's media type.
    pub const CONTENT_TYPE: &str = "content-type";
    /// Standard: the body's length (set by the runtime, never copied between hops).
    pub const CONTENT_LENGTH: &str = "content-length";
    /// Standard: how long to wait before trying again, in seconds.
    pub const RETRY_AFTER: &str = "retry-after";
    /// Standard: the host a request is for (names one hop: never forwarded).
    pub const HOST: &str = "host";
    /// Standard: a response's cookie; the relay scopes it to the channel's prefix.
    pub const SET_COOKIE: &str = "set-cookie";
    /// Standard: the page a request came from; the relay removes its public key from it.
    pub const REFERER: &str = "referer";
    /// Standard: widens a Service Worker's scope; never relayed (a channel's worker could
    /// otherwise control the whole origin).
    pub const SERVICE_WORKER_ALLOWED: &str = "service-worker-allowed";
    /// Standard: clears the origin's cookies and storage; never relayed (every channel shares
    /// the origin).
    pub const CLEAR_SITE_DATA: &str = "clear-site-data";
    /// Standard: the encodings a caller accepts.
    pub const ACCEPT_ENCODING: &str = "accept-encoding";
    /// Standard: the protocol a request asks to switch to (`websocket`).
    pub const UPGRADE: &str = "upgrade";
    /// The [`UPGRADE`] value of a WebSocket handshake.
    pub const WEBSOCKET: &str = "websocket";
    /// Worker → `RelayDO` only: the channel key of a bridge socket being handed to the object.
    pub const RELAY_SOCKET_CHANNEL: &str = "x-ccr-relay-channel";
    /// Worker → `RelayDO` only: a caller's WebSocket upgrade on a channel (hex of the JSON
    /// of the relay's `SocketCall`).
    pub const RELAY_CALLER_SOCKET: &str = "x-ccr-relay-caller-socket";
    /// Worker → `RelayDO` only: the call's body is a stream (the framed call head, then the
    /// caller's body as it arrives), read by the object as it comes.
    pub const RELAY_STREAM_CALL: &str = "x-ccr-relay-stream";
    /// Standard: whether and how long a response may be cached.
    pub const CACHE_CONTROL: &str = "cache-control";
    /// Inside the Worker only: the origin (`https://host`) a webhook came to, which the
    /// RouterDO builds a preview's public link from. Set by the Worker on its own request to
    /// the RouterDO, never read from a caller.
    pub const PUBLIC_ORIGIN: &str = "x-ccr-public-origin";
    /// The media type of every JSON body.
    pub const JSON: &str = "application/json";
}

/// Query parameter names.
pub mod query {
    /// `GET /ws?machineId=X`: the machine a socket is for.
    pub const MACHINE_ID: &str = "machineId";
    /// A public relay caller's key in the URL (a browser link), instead of the header.
    pub const RELAY_KEY: &str = "_relay_key";
    /// `GET {prefix}/_poll?wait=N`: how long a long-poll may wait, in seconds.
    pub const WAIT: &str = "wait";
    /// `GET {prefix}/_poll?max=N`: the most requests one poll answer may carry.
    pub const MAX: &str = "max";
    /// `GET {prefix}/_poll?ack=id,id`: the ids the bridge received from its previous polls
    /// (comma-separated, maybe none). Its presence says the bridge confirms what it receives,
    /// so what this poll hands out is leased until confirmed.
    pub const ACK: &str = "ack";
    /// `POST {prefix}/_stream/{id}?seq=N`: which call of a streamed response this is (0: the
    /// head; then the body's chunks in order).
    pub const SEQ: &str = "seq";
    /// `POST {prefix}/_stream/{id}?seq=N&end=1`: the last call of a streamed response (`1`: the
    /// body is complete; `abort`: it broke off, the call's body says why).
    pub const END: &str = "end";
}

/// The machine socket's subprotocol: an agent offers `ccr, <key>` and the Worker answers `ccr`.
pub const SUBPROTOCOL: &str = "ccr";

/// The `Sec-WebSocket-Protocol` list an agent offers: `ccr, <key>`.
pub fn subprotocols(key: &str) -> String {
    format!("{SUBPROTOCOL}, {key}")
}

/// WebSocket close codes the components send each other.
pub mod close {
    /// Another socket for the same machine took over; the old agent should wait long before
    /// reconnecting (two agents with one machine id would otherwise take turns forever).
    pub const REPLACED: u16 = 4000;
    /// A frame over [`crate::MAX_FRAME_BYTES`] (RFC 6455 "message too big").
    pub const TOO_BIG: u16 = 1009;
}

/// The key names a chat may send (`/esc`, `/keys`): an allow-list, never free-form tmux key
/// names. The agent maps each to its tmux key itself and refuses anything else.
pub mod keys {
    /// Every allowed name, as written in the chat and on the wire.
    pub const NAMES: [&str; 16] = [
        "Enter", "Escape", "Tab", "Up", "Down", "C-c", "0", "1", "2", "3", "4", "5", "6", "7", "8",
        "9",
    ];
    /// At most this many keys per `/keys`.
    pub const MAX: usize = 16;
    /// The allowed name `word` means, matched without regard to case (`esc` = `Escape`,
    /// `ctrl-c` = `C-c`); `None` for anything else.
    pub fn canonical(word: &str) -> Option<&'static str> {
        let lower = word.to_ascii_lowercase();
        let alias = match lower.as_str() {
            "esc" => "escape",
            "return" => "enter",
            "ctrl-c" | "^c" => "c-c",
            other => other,
        };
        NAMES.into_iter().find(|n| n.eq_ignore_ascii_case(alias))
    }
}

/// The Telegram bot's commands and the updates its webhook asks for.
pub mod bot {
    /// `/start`: how to use the bot, and the chat's id.
    pub const START: &str = "start";
    /// `/help`: the same as `/start`.
    pub const HELP: &str = "help";
    /// `/sessions`: the sessions, their machines and who is online.
    pub const SESSIONS: &str = "sessions";
    /// `/cmd TOKEN text`: text for the session a token names.
    pub const CMD: &str = "cmd";
    /// `/pending`: every open permission request, question and plan, with its age.
    pub const PENDING: &str = "pending";

    /// `/esc`: Escape in the session's pane (stops Claude Code's current turn).
    pub const ESC: &str = "esc";
    /// `/keys NAME…`: named keys from [`super::keys::NAMES`] in the session's pane.
    pub const KEYS: &str = "keys";
    /// `/peek`: the last screen of the session's pane.
    pub const PEEK: &str = "peek";
    /// `/preview PORT` (or `/preview stop`): serve the session machine's `127.0.0.1:PORT`
    /// through the relay on a fresh channel, or end the session's previews.
    pub const PREVIEW: &str = "preview";
    /// `/previews`: the open previews, their sessions, ports, links and time left.
    pub const PREVIEWS: &str = "previews";

    /// `/new [project] [prompt]`: start Claude Code in a configured project on a machine.
    pub const NEW: &str = "new";
    /// `/end`: in a reply to a notification (or `/end TOKEN`), end that session (`/exit`)
    /// after a confirmation button.
    pub const END: &str = "end";

    /// The bot's command menu (`setMyCommands`): `(command, description)`. The Worker parses
    /// these names and `ccr-agent telegram setup` registers this list.
    pub const COMMANDS: [(&str, &str); 12] = [
        (START, "How to use this bot, and this chat's id"),
        (HELP, "How to reply to Claude from here"),
        (SESSIONS, "List sessions, their machines and who is online"),
        (
            CMD,
            "/cmd TOKEN text: send text to a notification's session",
        ),
        (PENDING, "Open permission requests, questions and plans"),
        (
            ESC,
            "In a reply to a notification: press Escape (stop Claude's turn)",
        ),
        (
            KEYS,
            "In a reply: press keys, e.g. /keys Down Enter (Enter Escape Tab Up Down C-c 0-9)",
        ),
        (
            PEEK,
            "In a reply to a notification: show the session's screen",
        ),
        (
            NEW,
            "/new PROJECT [prompt]: start Claude Code in a project (alone: choose)",
        ),
        (
            END,
            "In a reply to a notification: end that session (asks first)",
        ),
        (
            PREVIEW,
            "In a reply: /preview PORT shows that machine's dev server by link; /preview stop",
        ),
        (PREVIEWS, "Open previews, their links and time left"),
    ];
    /// The update types the webhook handles (replies, edits it explains, button presses).
    pub const ALLOWED_UPDATES: [&str; 3] = ["message", "edited_message", "callback_query"];
    /// The Bot API's public base URL (`TELEGRAM_API_BASE` overrides it).
    pub const DEFAULT_API_BASE: &str = "https://api.telegram.org";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_an_allow_list() {
        assert_eq!(keys::canonical("Escape"), Some("Escape"));
        assert_eq!(keys::canonical("esc"), Some("Escape"));
        assert_eq!(keys::canonical("ENTER"), Some("Enter"));
        assert_eq!(keys::canonical("ctrl-c"), Some("C-c"));
        assert_eq!(keys::canonical("7"), Some("7"));
        for bad in ["", "F1", "C-x", "send-keys", "Enter;", "10", "M-x", "Space"] {
            assert_eq!(keys::canonical(bad), None, "{bad}");
        }
    }

    #[test]
    fn paths_are_built_from_their_parts() {
        assert_eq!(route::webhook("s3"), "/webhook/telegram/s3");
        assert_eq!(route::relay_channel("a"), "/relay/a");
        assert_eq!(subprotocols("k"), "ccr, k");
    }

    #[test]
    fn header_names_are_lowercase() {
        for name in [
            header::API_KEY,
            header::AUTHORIZATION,
            header::MACHINE_ID,
            header::INSTANCE,
            header::PRINCIPAL,
            header::TELEGRAM_SECRET,
            header::WEBSOCKET_PROTOCOL,
            header::RELAY_TOKEN,
            header::RELAY_TOKEN_SEED,
            header::RELAY_KEY,
            header::CONTENT_TYPE,
            header::CONTENT_LENGTH,
            header::RETRY_AFTER,
            header::HOST,
            header::ACCEPT_ENCODING,
            header::UPGRADE,
            header::RELAY_STREAMS,
        ] {
            assert_eq!(name, name.to_ascii_lowercase());
        }
    }

    #[test]
    fn bot_commands_are_valid_for_set_my_commands() {
        // Telegram: 1-32 characters of lowercase letters, digits and underscores; a
        // description of 1-256 characters.
        for (name, description) in bot::COMMANDS {
            assert!((1..=32).contains(&name.len()), "{name}");
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert!((1..=256).contains(&description.chars().count()), "{name}");
        }
    }
}
