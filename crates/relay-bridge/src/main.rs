//! `relay-bridge`: flags and environment → [`relay_bridge::Config`], tracing, one call to
//! [`relay_bridge::run`] that ends on SIGTERM or Ctrl-C.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use relay_bridge::{Config, Secret, Transport};
use url::Url;

/// Serves a local HTTP server through the CCR Worker's relay, with outbound calls only.
#[derive(Debug, Parser)]
#[command(name = "relay-bridge", version)]
struct Args {
    /// The Worker's base URL, e.g. https://ccr.example.workers.dev
    #[arg(long, env = "RELAY_URL")]
    relay_url: Url,
    /// The channel's bridge token (RELAY_TOKEN for the default channel).
    #[arg(long, env = "RELAY_TOKEN", hide_env_values = true)]
    token: String,
    /// A named channel, served at /relay/{channel}/...; default: /proxy/...
    #[arg(long, env = "RELAY_CHANNEL")]
    channel: Option<String>,
    /// The local server requests go to.
    #[arg(long, env = "RELAY_TARGET", default_value = "http://127.0.0.1:8000")]
    target: Url,
    /// Most requests forwarded at once.
    #[arg(long, env = "RELAY_CONCURRENCY", default_value_t = 16)]
    concurrency: usize,
    /// Seconds the target may take before the caller gets a 502.
    #[arg(long, env = "RELAY_TARGET_TIMEOUT", default_value_t = 30.0)]
    target_timeout: f64,
    /// Seconds each long-poll waits at the relay (the relay caps it at 25).
    #[arg(long, default_value_t = 25.0)]
    poll_wait: f64,
    /// On SIGTERM, seconds in-flight requests may take to finish.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// How requests arrive: a WebSocket to the relay (ws), long-polling (poll), or the
    /// WebSocket with long-polling as the fallback when the upgrade is refused (auto).
    #[arg(long, env = "RELAY_TRANSPORT", value_enum, default_value_t = TransportArg::Auto)]
    transport: TransportArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    Auto,
    Ws,
    Poll,
}

fn secs(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|e| anyhow::anyhow!("--{name} {value}: {e}"))
}

/// Completes on SIGTERM or Ctrl-C; if SIGTERM cannot be listened for, on Ctrl-C alone.
async fn shutdown_signal() {
    match ccr_native::shutdown_signal() {
        Ok(signal) => {
            signal.await;
        }
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops the bridge");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    ccr_native::init_tracing(std::io::stderr, None, "info");
    let config = (|| {
        let mut c = Config::new(args.relay_url, Secret::new(args.token), args.target);
        c.channel = args.channel.filter(|c| !c.is_empty());
        c.concurrency = args.concurrency;
        c.target_timeout = secs("target-timeout", args.target_timeout)?;
        c.poll_wait = secs("poll-wait", args.poll_wait)?;
        c.drain_timeout = secs("drain-timeout", args.drain_timeout)?;
        c.transport = match args.transport {
            TransportArg::Auto => Transport::Auto,
            TransportArg::Ws => Transport::WebSocket,
            TransportArg::Poll => Transport::Poll,
        };
        anyhow::Ok(c)
    })();
    let result = match config {
        Ok(c) => relay_bridge::run(c, shutdown_signal()).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-bridge: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
