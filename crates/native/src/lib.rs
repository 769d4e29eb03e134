//! `ccr-native`: the small toolbox both native CCR programs — `ccr-agent` (machine-agent) and
//! `relay-bridge` — need, written once so they cannot drift apart.
//!
//! It is a crate of its own, not part of `ccr-protocol`, because the protocol crate is the
//! wire contract: serde-only, shared with the Worker and built for `wasm32`. Everything here
//! needs an operating system — tokio's signal handling, `std::fs` with Unix modes and fsync,
//! a tracing subscriber writing to stderr or a file — and would not build for the Worker.
//!
//! - [`Secret`]: a string whose `Debug`/`Display` print a mask, so it never reaches a log.
//! - [`Backoff`]: exponential reconnect/retry delays with jitter, the random source injected.
//! - [`write_atomic`]: replace a file durably (temp file, fsync, rename, fsync of the
//!   directory) with an explicit mode.
//! - [`init_tracing`]: the one tracing set-up, with what differs between callers as parameters.
//! - [`shutdown_signal`]: a future that completes on SIGINT or SIGTERM.
//! - [`error_chain`]: an error and its causes on one line.
#![deny(missing_docs)]

mod backoff;
mod error;
#[cfg(unix)]
mod fs;
mod logging;
mod secret;
mod signal;

pub use backoff::{Backoff, Jitter};
pub use error::error_chain;
#[cfg(unix)]
pub use fs::write_atomic;
pub use logging::{init_tracing, subscriber};
pub use secret::Secret;
pub use signal::{shutdown_signal, Signal};
