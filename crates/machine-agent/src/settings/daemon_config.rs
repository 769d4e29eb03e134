//! What the daemon runs with: the Worker, the data directory, the typing pause and the
//! socket's timings.

use std::path::PathBuf;
use std::time::Duration;

use super::launch::Launch;
use super::resolve::{data_dir, ConfigError, RawSettings, WorkerConfig};
use super::saved::{hook_worker, saved_launch};

/// Timings of the socket; the defaults follow the protocol's constants, tests shorten them.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How often to send a ping.
    pub ping_interval: Duration,
    /// Drop a connection that has not heard from the Worker for this long.
    pub pong_timeout: Duration,
    /// Limit on TCP + TLS + WebSocket handshake.
    pub connect_timeout: Duration,
    /// First reconnect delay cap; doubles per failure.
    pub backoff_base: Duration,
    /// Largest reconnect delay cap.
    pub backoff_max: Duration,
    /// A connection up this long counts as healthy and resets the backoff.
    pub healthy_after: Duration,
    /// Wait after the Worker refused the key (401).
    pub unauthorized_retry: Duration,
    /// Wait after another agent took over this machine id (close 4000).
    pub replaced_retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(ccr_protocol::PING_INTERVAL_SECS),
            pong_timeout: Duration::from_secs(ccr_protocol::PONG_TIMEOUT_SECS),
            connect_timeout: Duration::from_secs(15),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(10),
            unauthorized_retry: Duration::from_secs(60),
            replaced_retry: Duration::from_secs(60),
        }
    }
}

/// Everything the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Worker.
    pub worker: WorkerConfig,
    /// The data directory (inbox, sessions, status).
    pub data_dir: PathBuf,
    /// Pause between the text and Enter.
    pub inject_delay: Duration,
    /// Store and ack, but do not execute.
    pub hold_commands: bool,
    /// The tmux program.
    pub tmux: PathBuf,
    /// Socket timings.
    pub timing: Timing,
    /// What `/new` may start.
    pub launch: Launch,
}

impl Config {
    /// The daemon's settings from flags and environment.
    #[cfg(test)]
    pub(crate) fn from_args(args: &RawSettings) -> Result<Config, ConfigError> {
        Ok(Config {
            worker: super::resolve::worker_from_args(args)?,
            data_dir: data_dir(args)?,
            inject_delay: Duration::from_millis(args.inject_delay_ms),
            hold_commands: args.hold_commands,
            tmux: PathBuf::from("tmux"),
            timing: Timing::default(),
            launch: Launch::default(),
        })
    }

    /// The daemon's settings: flags and environment first, then the settings file a previous
    /// run or `install-service` saved in the data dir (how a service with no environment
    /// finds them).
    pub(crate) fn from_args_or_saved(args: &RawSettings) -> Result<Config, ConfigError> {
        let data_dir = data_dir(args)?;
        Ok(Config {
            worker: hook_worker(args, &data_dir)?,
            launch: saved_launch(args, &data_dir)?,
            data_dir,
            inject_delay: Duration::from_millis(args.inject_delay_ms),
            hold_commands: args.hold_commands,
            tmux: PathBuf::from("tmux"),
            timing: Timing::default(),
        })
    }
}
