//! The daemon: one socket task and one executor task over the inbox, stopped together — the
//! data path from the Worker's socket to a tmux pane.
//!
//! The inbox (SQLite) is the queue between them: the socket task stores and acks, then rings
//! a [`Notify`]; the executor types every runnable command in order, records the outcome and
//! rings back so the socket task sends the result. A wake-up is never lost (a `Notify` keeps a
//! permit) and a command is never lost (the executor re-reads the inbox, also at start-up).
//!
//! - `connection`: the socket — connect, keepalive, store-then-ack, results, backoff.
//! - `inbox`: the exactly-once state machine `stored → acked → executing → typed → done`.
//! - `inject`: `tmux send-keys -l`, pause, Enter, on the session's own tmux server.
//! - `sessions`: the session → pane records the hooks write.
//! - `status`: the connection state (one writer, typed readers) and `ccr-agent status`.

pub(crate) mod connection;
pub(crate) mod inbox;
pub(crate) mod inject;
pub(crate) mod sessions;
pub(crate) mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use connection::{run_socket, Shared};
use inbox::{Command, Inbox, Outcome, RETENTION_MARGIN_MS};
use inject::Injector;
use sessions::Sessions;

use crate::db::{now_ms, Db};
use crate::settings::{write_hook_config, Config};

/// Sessions not seen for this long are forgotten (their session-end hook never ran).
const SESSION_RETENTION_MS: i64 = 30 * 24 * 60 * 60 * 1000;
/// How often old rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60 * 60);

/// Runs the daemon until `shutdown` completes; then closes the socket with 1000 and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let db = Db::open(&config.data_dir)?;
    if let Err(e) = write_hook_config(&config.data_dir, &config.worker) {
        warn!(
            "could not write the hooks' settings file in {}: {e}",
            config.data_dir.display()
        );
    }
    let shared = Shared {
        inbox: Inbox::new(db.clone()),
        sessions: Sessions::new(db),
        commands_ready: Arc::new(Notify::new()),
        results_ready: Arc::new(Notify::new()),
    };
    let interrupted = shared
        .inbox
        .recover_interrupted(now_ms())
        .context("reading the inbox")?;
    if interrupted > 0 {
        warn!("{interrupted} command(s) were interrupted while being typed by a previous run; reported as failed, not typed again");
    }
    info!(
        machine_id = %config.worker.machine_id,
        data_dir = %config.data_dir.display(),
        worker = %config.worker.url,
        "ccr-agent starting"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let socket = tokio::spawn(run_socket(
        config.worker.clone(),
        config.timing.clone(),
        shared.clone(),
        stop_rx.clone(),
    ));
    let injector = Injector::new(config.tmux.clone(), config.inject_delay);
    finish_typed(&shared, &injector).await;
    let executor = tokio::spawn(execute_loop(
        shared.clone(),
        injector,
        config.hold_commands,
        stop_rx,
    ));
    shutdown.await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    // The executor finishes the command it is typing; the socket sends close 1000.
    for (name, task) in [("executor", executor), ("socket", socket)] {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("{name} task failed: {e}"),
            Err(_) => warn!("{name} task did not stop within 10 s"),
        }
    }
    Ok(())
}

async fn execute_loop(
    shared: Shared,
    injector: Injector,
    hold: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    if hold {
        warn!("holding commands: they are stored and acked but not executed (CCR_HOLD_COMMANDS)");
    }
    let mut next_prune = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_prune {
            prune(&shared);
            next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
        }
        if !hold {
            match shared.inbox.runnable() {
                Ok(cmds) => {
                    for cmd in cmds {
                        if *shutdown.borrow() {
                            return;
                        }
                        execute(&shared, &injector, &cmd).await;
                    }
                }
                Err(e) => warn!("reading the inbox: {e}"),
            }
        }
        tokio::select! {
            _ = shared.commands_ready.notified() => {}
            _ = tokio::time::sleep_until(next_prune) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Types one command, exactly once, and records its outcome.
async fn execute(shared: &Shared, injector: &Injector, cmd: &Command) {
    match shared.inbox.begin(&cmd.command_id, now_ms()) {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            warn!(command_id = %cmd.command_id, "claiming a command: {e}");
            return;
        }
    }
    let outcome = match shared.sessions.get(&cmd.session_id) {
        Err(e) => Outcome::failed(format!("the agent could not read its session records: {e}")),
        Ok(None) => Outcome::failed(format!(
            "session {} is not known on this machine (its SessionStart hook did not run here, \
             or the session ended)",
            cmd.session_id
        )),
        Ok(Some(rec)) => match rec.pane() {
            None => Outcome::failed(format!(
                "session {} is not running inside tmux, so there is no pane to type into",
                cmd.session_id
            )),
            Some(pane) => {
                let typed = || {
                    if let Err(e) = shared.inbox.mark_typed(&cmd.command_id, now_ms()) {
                        warn!(command_id = %cmd.command_id, "recording typed text: {e}");
                    }
                };
                match injector.type_with(&pane, &cmd.command, typed).await {
                    Ok(()) => Outcome::ok(),
                    Err(e) => Outcome::failed(e.to_string()),
                }
            }
        },
    };
    if outcome.success {
        info!(command_id = %cmd.command_id, session_id = %cmd.session_id, "command typed");
    } else {
        warn!(
            command_id = %cmd.command_id,
            session_id = %cmd.session_id,
            "command failed: {}",
            outcome.error.as_deref().unwrap_or("")
        );
    }
    if let Err(e) = shared.inbox.finish(&cmd.command_id, &outcome, now_ms()) {
        warn!(command_id = %cmd.command_id, "recording a result: {e}");
    }
    shared.results_ready.notify_one();
}

/// Commands a previous run typed but could not press Enter for: their text is in the pane,
/// so Enter completes them (typing them again would duplicate the text).
async fn finish_typed(shared: &Shared, injector: &Injector) {
    let typed = match shared.inbox.typed() {
        Ok(t) => t,
        Err(e) => {
            warn!("reading the inbox: {e}");
            return;
        }
    };
    for cmd in typed {
        let outcome = match shared.sessions.get(&cmd.session_id) {
            Ok(Some(rec)) => match rec.pane() {
                Some(pane) => match injector.press_enter(&pane).await {
                    Ok(()) => Outcome::ok(),
                    Err(e) => Outcome::failed(e.to_string()),
                },
                None => Outcome::failed("the session's pane is no longer recorded"),
            },
            Ok(None) => Outcome::failed(format!(
                "session {} ended before its command could be finished",
                cmd.session_id
            )),
            Err(e) => Outcome::failed(format!("the agent could not read its session records: {e}")),
        };
        info!(
            command_id = %cmd.command_id,
            success = outcome.success,
            "finished a command whose Enter a previous run did not press"
        );
        if let Err(e) = shared.inbox.finish(&cmd.command_id, &outcome, now_ms()) {
            warn!(command_id = %cmd.command_id, "recording a result: {e}");
        }
        shared.results_ready.notify_one();
    }
}

fn prune(shared: &Shared) {
    let now = now_ms();
    match shared.inbox.prune(now, RETENTION_MARGIN_MS) {
        Ok(0) => {}
        Ok(n) => info!("pruned {n} finished command(s) an hour past their expiry"),
        Err(e) => warn!("pruning the inbox: {e}"),
    }
    if let Err(e) = shared.sessions.prune(now, SESSION_RETENTION_MS) {
        warn!("pruning sessions: {e}");
    }
}
