//! The CCR Worker: the Telegram router and the HTTP relay, on Cloudflare Workers.
//!
//! Layout. Pure modules (no workers-rs types; tested natively, storage on rusqlite through
//! [`store::Sql`]):
//! - `approvals`: permission requests decided from the chat: cards, taps, decisions pushed
//!   to the machine until acked.
//! - `auth`: API keys, machine-scoped keys, constant-time checks.
//! - `route`: which handler a method + path goes to.
//! - `error`: `ApiError`, the one error type of every request path: the status, message and
//!   `Retry-After` a refused request is answered with.
//! - `files`: `GET /files/{id}`: which machine may fetch a file a chat sent, Telegram's
//!   `getFile` answer, the download URL.
//! - `schema`, `store`: the RouterDO's SQLite schema and session operations.
//! - `router`: what a Telegram update does (dedup, allow-lists, reply routing, queueing),
//!   and the chat notices about commands a machine failed or never got.
//! - `launch`: `/new` and `/end`: the project names machines announce, the start requests
//!   queued for them, the choices offered as buttons, the `/end` confirmation.
//! - `notify`: what `POST /notifications/send` does (chat, size, parts, buttons, its answer).
//! - `outbox`: every Bot API call, stored before it is sent and retried until Telegram
//!   answers: order per chat, backoff, `retry_after`, refusals, mappings on send, bounds.
//! - `topics`: a Telegram topic per session in chats that have topics: created, renamed,
//!   closed and reopened through the outbox; which session a topic's messages go to.
//! - `queue`: the command queue: delivery, acks, retries, expiry.
//! - `telegram`: Bot API types, HTML escaping and splitting, Bot API URLs, answers and
//!   429 retries.
//! - `relay`: the relay's routes, channel tokens, header rules, framing and queue
//!   bookkeeping.
//! - `socket_flow`: flow control of callers' WebSockets carried through the bridge (credits,
//!   pacing, the backlog bound).
//! - `preview`: `/preview PORT`: a session machine's dev server on a fresh relay channel,
//!   its rows, links, end and the chat's answers.
//!
//! The Worker shell (wasm32 only), which only translates between workers-rs and the above:
//! - `http`: the HTTP helpers every binding uses (JSON answers, `ApiError` → response, clock,
//!   settings, headers, bounded bodies, requests to Durable Objects).
//! - `binding`: the fetch entry point: routing, authentication, forwarding to the RouterDO.
//! - `router_do`: the RouterDO Durable Object: sessions, notifications, the webhook, machine
//!   sockets, alarms.
//! - `relay_binding`: the relay's Worker side and `RelayDO`, one Durable Object per channel.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
// The pure modules' callers are the wasm32 shell, absent from native builds (tests included),
// so unused code is reported by the wasm32 build only.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub(crate) mod approvals;
pub(crate) mod auth;
pub(crate) mod conversation;
pub(crate) mod error;
pub(crate) mod files;
pub(crate) mod launch;
pub(crate) mod notify;
pub(crate) mod outbox;
pub(crate) mod preview;
pub(crate) mod queue;
pub(crate) mod relay;
pub(crate) mod route;
pub(crate) mod router;
pub(crate) mod schema;
pub(crate) mod socket_flow;
pub(crate) mod store;
pub(crate) mod telegram;
pub(crate) mod topics;

#[cfg(target_arch = "wasm32")]
mod binding;
#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
mod relay_binding;
#[cfg(target_arch = "wasm32")]
mod router_do;
