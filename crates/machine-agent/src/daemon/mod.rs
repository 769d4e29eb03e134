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
//! - `handover`: the local socket a PermissionRequest hook hands its card's request to, sent
//!   on the machine socket (no new connection per hook); the hook falls back to HTTP.
//! - `peek`: `/peek`: a verified pane's screen as text.
//! - `preview`: `/preview PORT`: a loopback port served through the relay (the
//!   `relay-bridge` library), until stopped or expired.
//! - `keys`: the chat's key names (`/esc`, `/keys`) → tmux keys, from an allow-list.
//! - `inject`: `tmux send-keys -l` (or one paste for text with line breaks), pause, Enter,
//!   on the session's own tmux server.
//! - `sessions`: the session → pane records the hooks write.
//! - `status`: the connection state (one writer, typed readers) and `ccr-agent status`.

pub(crate) mod connection;
pub(crate) mod decisions;
pub(crate) mod files;
pub(crate) mod handover;
pub(crate) mod inbox;
pub(crate) mod inject;
pub(crate) mod keys;
pub(crate) mod launch;
pub(crate) mod peek;
pub(crate) mod preview;
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
use inject::{InjectError, Injector, Pane};
use sessions::{SessionRecord, Sessions};

use crate::db::{now_ms, Db};
use crate::settings::{write_settings, Config};

/// Sessions not seen for this long are forgotten (their session-end hook never ran).
const SESSION_RETENTION_MS: i64 = 30 * 24 * 60 * 60 * 1000;
/// How often old rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60 * 60);

/// Runs the daemon until `shutdown` completes; then closes the socket with 1000 and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let db = Db::open(&config.data_dir)?;
    if let Err(e) = write_settings(&config.data_dir, &config.worker, Some(&config.launch)) {
        warn!(
            "could not write the hooks' settings file in {}: {e}",
            config.data_dir.display()
        );
    }
    let shared = Shared {
        decisions: db.clone(),
        data_dir: config.data_dir.clone(),
        inbox: Inbox::new(db.clone()),
        sessions: Sessions::new(db),
        commands_ready: Arc::new(Notify::new()),
        results_ready: Arc::new(Notify::new()),
        injector: Injector::new(config.tmux.clone(), config.inject_delay),
        launch: Arc::new(config.launch.clone()),
        files: files::Fetcher::new(config.worker.clone(), config.data_dir.clone())
            .context("building the HTTP client for files")?,
        previews: preview::Previews::new(
            config.worker.url.clone(),
            config.worker.machine_id.clone(),
        ),
        handover: handover::Handover::new(),
    };
    // Before the inbox finishes them: the panes of commands a kill interrupted while tmux was
    // being handed their text get their input line cleared before the next command.
    match shared.sessions.mark_interrupted_inputs_dirty() {
        Ok(0) => {}
        Ok(n) => warn!("{n} session(s) may hold the text of an interrupted command in their input line; it is cleared before their next command"),
        Err(e) => warn!("marking interrupted input lines: {e}"),
    }
    let interrupted = shared
        .inbox
        .recover_interrupted(now_ms())
        .context("reading the inbox")?;
    if interrupted > 0 {
        warn!("{interrupted} command(s) were interrupted while being typed by a previous run; reported as failed, not typed again");
    }
    // Downloads a kill interrupted (their commands were just reported failed) leave `.part`
    // files behind in the sessions' folders.
    match shared.sessions.all() {
        Ok(records) => {
            let cwds = records.iter().filter_map(|r| r.cwd.as_deref());
            let removed = files::remove_leftovers(&config.data_dir, cwds);
            if removed > 0 {
                info!("removed {removed} unfinished download(s) left by a previous run");
            }
        }
        Err(e) => warn!("reading the session records: {e}"),
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
    // Hooks hand their cards' requests to the socket task through this.
    let hooks = tokio::spawn(handover::listen(
        config.data_dir.clone(),
        shared.handover.clone(),
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
    hooks.abort();
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
    let outcome = match (&cmd.project, shared.sessions.get(&cmd.session_id)) {
        (Some(project), _) => {
            let prompt = (!cmd.command.is_empty()).then_some(cmd.command.as_str());
            launch::start(injector.program(), &shared.launch, project, prompt).await
        }
        (None, Err(e)) => {
            Outcome::failed(format!("the agent could not read its session records: {e}"))
        }
        (None, Ok(None)) => Outcome::failed(format!(
            "session {} is not known on this machine (its SessionStart hook did not run here, \
             or the session ended)",
            cmd.session_id
        )),
        (None, Ok(Some(rec))) => match rec.pane() {
            None => Outcome::failed(format!(
                "session {} is not running inside tmux, so there is no pane to type into",
                cmd.session_id
            )),
            Some(pane) => match &cmd.file {
                Some(file) => type_file(shared, injector, cmd, file, &rec, &pane).await,
                None => type_verified(shared, injector, cmd, &rec, &pane).await,
            },
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

/// Types `cmd` into the session's pane once the pane is proven to be the session's: the
/// identity check costs one tmux call per command, and is what keeps a reply to an old
/// notification out of a shell that now has the pane's id.
async fn type_verified(
    shared: &Shared,
    injector: &Injector,
    cmd: &Command,
    rec: &SessionRecord,
    pane: &Pane,
) -> Outcome {
    if let Err(refused) = verify(shared, injector, rec, pane).await {
        return refused;
    }
    if let Some(names) = &cmd.keys {
        // Named keys, not text: nothing to clear before them, no "typed" step (one tmux call).
        return match keys::tmux_keys(names) {
            Err(refused) => Outcome::failed(refused),
            Ok(keys) => match injector.press(pane, &keys).await {
                Ok(()) => Outcome::ok(),
                Err(e) => Outcome::failed(e.to_string()),
            },
        };
    }
    if rec.input_dirty {
        // The input line may hold (part of) a command whose typing was interrupted: typed
        // after it, this one would be submitted as one line with it. Ctrl-U clears the line
        // (see `Injector::clear_input`); the interrupted command was reported as failed.
        if let Err(e) = injector.clear_input(pane).await {
            return Outcome::failed(e.to_string());
        }
        if let Err(e) = shared.sessions.set_input_dirty(&rec.session_id, false) {
            warn!(session_id = %rec.session_id, "recording a cleared input line: {e}");
        }
        info!(session_id = %rec.session_id, "cleared an input line left by an interrupted command");
    }
    let typed = || {
        if let Err(e) = shared.inbox.mark_typed(&cmd.command_id, now_ms()) {
            warn!(command_id = %cmd.command_id, "recording typed text: {e}");
        }
    };
    match injector.type_with(pane, &cmd.command, typed).await {
        Ok(()) => Outcome::ok(),
        Err(e) => {
            input_uncertain(shared, &rec.session_id, &e);
            Outcome::failed(e.to_string())
        }
    }
}

/// A file from the chat: the pane is checked first (nothing is fetched for a pane that is
/// gone), the file downloaded into the session's folder, then the caption and the saved path
/// typed like a reply (checked again: a download can take a while). Runs once per command
/// id like any command (`Inbox::begin`): a crash mid-download is reported as failed at
/// start-up, never fetched and typed again.
async fn type_file(
    shared: &Shared,
    injector: &Injector,
    cmd: &Command,
    file: &ccr_protocol::socket::FileRef,
    rec: &SessionRecord,
    pane: &Pane,
) -> Outcome {
    if let Err(refused) = verify(shared, injector, rec, pane).await {
        return refused;
    }
    let path = match shared
        .files
        .save(&cmd.command_id, file, rec.cwd.as_deref())
        .await
    {
        Ok(path) => path,
        Err(why) => return Outcome::failed(format!("nothing was typed: {why}")),
    };
    info!(command_id = %cmd.command_id, path = %path.display(), "file saved");
    let typed = Command {
        command: files::prompt(&cmd.command, &path),
        file: None,
        ..cmd.clone()
    };
    type_verified(shared, injector, &typed, rec, pane).await
}

/// After a failed `send-keys`, part of the text may be in the input line (a timeout, or the
/// Enter after the text failing): clear it before the next command.
fn input_uncertain(shared: &Shared, session_id: &str, e: &InjectError) {
    if !matches!(e, InjectError::TmuxMissing) {
        if let Err(e) = shared.sessions.set_input_dirty(session_id, true) {
            warn!(session_id, "recording an uncertain input line: {e}");
        }
    }
}

/// `Ok` when `pane` is still the pane the session's hook recorded. Otherwise the refusal:
/// a gone or different pane marks the session gone (reported to the Worker, which refuses
/// further replies to it), an unverifiable one (no identity recorded) is refused alone.
async fn verify(
    shared: &Shared,
    injector: &Injector,
    rec: &SessionRecord,
    pane: &Pane,
) -> Result<(), Outcome> {
    if let Some((_, reason)) = &rec.gone {
        return Err(gone_outcome(reason));
    }
    let Some(recorded) = &rec.identity else {
        return Err(Outcome::failed(format!(
            "nothing was typed: the pane of this session ({}) was recorded without its \
             identity (by an older ccr-agent, or tmux could not be asked), so the agent \
             cannot tell whether it still belongs to Claude Code. Each notification records \
             it again: reply to the session's next notification",
            pane.pane_id
        )));
    };
    let reason = match injector.identity(pane).await {
        Ok(now) => match recorded.difference(&now) {
            None => return Ok(()),
            Some(difference) => difference,
        },
        Err(InjectError::PaneGone(p)) => format!("pane {p} no longer exists"),
        Err(InjectError::ServerGone(s)) => format!("its tmux server ({s}) is no longer running"),
        Err(e) => return Err(Outcome::failed(e.to_string())),
    };
    warn!(session_id = %rec.session_id, "the session's pane is gone: {reason}");
    match shared
        .sessions
        .mark_gone(&rec.session_id, &reason, now_ms())
    {
        Ok(_) => shared.results_ready.notify_one(),
        Err(e) => warn!(session_id = %rec.session_id, "recording a gone pane: {e}"),
    }
    Err(gone_outcome(&reason))
}

/// The failure a reply to a session whose pane is gone gets: what happened, and how to go on.
fn gone_outcome(reason: &str) -> Outcome {
    Outcome::failed(format!(
        "the session's pane is gone ({reason}), so nothing was typed. To continue, start \
         Claude Code again in tmux (claude --continue picks the conversation up); its next \
         notification is the one to reply to"
    ))
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
                Some(pane) => match verify(shared, injector, &rec, &pane).await {
                    Err(refused) => refused,
                    Ok(()) => match injector.press_enter(&pane).await {
                        Ok(()) => Outcome::ok(),
                        Err(e) => {
                            input_uncertain(shared, &rec.session_id, &e);
                            Outcome::failed(e.to_string())
                        }
                    },
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
