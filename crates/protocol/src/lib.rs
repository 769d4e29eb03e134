//! Wire types shared by every CCR component.
//!
//! Layout:
//! - [`socket`]: the JSON text frames on the machine socket (`/ws`), one tagged enum.
//! - [`api`]: the bodies of the Worker's HTTP routes and the common error body.
//! - [`relay`]: the envelopes a relay bridge polls for and posts back.
//! - [`validate`]: the id and text rules every route applies to its input.
//! - [`wire`]: the names on the wire: route paths, headers, query parameters, the socket
//!   subprotocol, close codes, the bot's command menu.
//!
//! Limits that both ends enforce live here as named constants beside the types.
//! Everything here is plain serde, so it builds for native and `wasm32-unknown-unknown`.
#![deny(missing_docs)]

pub mod api;
pub mod relay;
pub mod socket;
pub mod validate;
pub mod wire;

/// The version of this wire protocol; bumped when a message changes incompatibly.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest socket frame either side accepts (bytes). A bigger frame closes the socket with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Largest command text (bytes) a reply may carry to a machine.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// How often an agent sends `{"type":"ping"}`.
pub const PING_INTERVAL_SECS: u64 = 30;
/// An agent drops a connection that has not seen a pong for this long.
pub const PONG_TIMEOUT_SECS: u64 = 90;
/// Longest a relay long-poll or a public relay caller waits (seconds).
pub const MAX_RELAY_WAIT_SECS: u64 = 25;
/// Largest relay request or response body (bytes).
pub const MAX_RELAY_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Largest JSON body the Worker's API routes accept (bytes).
pub const MAX_API_BODY_BYTES: usize = 256 * 1024;
/// Telegram's limit on one message's text, in UTF-16 code units.
pub const TELEGRAM_MAX_TEXT: usize = 4096;
/// Most characters of a pane's screen an agent sends for `/peek` (its last lines); the
/// Worker trims further to fit one Telegram message.
pub const MAX_PEEK_CHARS: usize = 8000;
/// How long the Worker waits for a `/peek` answer before telling the chat (ms).
pub const PEEK_TIMEOUT_MS: i64 = 10_000;
/// Every `/preview` relay channel's name starts with this (then 24 random base32 characters):
/// the relay checks only such channels for an ended preview.
pub const PREVIEW_CHANNEL_PREFIX: &str = "pv-";
/// How long a preview stays open unless `PREVIEW_TTL_SECS` says otherwise (s).
pub const DEFAULT_PREVIEW_TTL_SECS: i64 = 2 * 60 * 60;
/// How long the Worker waits for the machine to say a preview started before telling the
/// chat (ms).
pub const PREVIEW_START_TIMEOUT_MS: i64 = 20_000;
/// A command that has not been delivered after this long is dead and reported (ms).
pub const COMMAND_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// Most project names an agent announces (`projects` frame); the Worker keeps no more.
pub const MAX_PROJECTS: usize = 50;
/// Largest file a chat may send to a session (bytes): Telegram's own limit on what a bot may
/// download (`getFile` refuses bigger files). The Worker refuses before queueing when the
/// update says the size, the route refuses before streaming, the agent counts while writing.
pub const MAX_FILE_BYTES: u64 = 20 * 1024 * 1024;
