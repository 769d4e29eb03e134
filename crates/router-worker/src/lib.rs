//! The CCR Worker: the Telegram router and the HTTP relay, on Cloudflare Workers.
//!
//! Layout:
//! - [`auth`]: API keys, machine-scoped keys, constant-time checks (pure).
//! - [`route`]: which handler a method + path goes to (pure).
//! - [`schema`], [`store`]: the RouterDO's SQLite schema and operations, tested natively on
//!   rusqlite through the [`store::Sql`] trait.
//! - `binding` (wasm32 only): the thin workers-rs layer: the fetch entry point and the
//!   RouterDO Durable Object, which call into the modules above.
//! - [`relay`]: the relay's routes, channel tokens, header rules, framing and queue
//!   bookkeeping (pure); `relay_binding` (wasm32 only): its Worker side and `RelayDO`, one
//!   Durable Object per channel.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod auth;
pub mod queue;
pub mod relay;
pub mod route;
pub mod router;
pub mod schema;
pub mod store;
pub mod telegram;

#[cfg(target_arch = "wasm32")]
mod binding;
#[cfg(target_arch = "wasm32")]
mod relay_binding;
#[cfg(target_arch = "wasm32")]
mod router_do;
