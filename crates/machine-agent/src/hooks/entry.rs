//! The process around a hook: its log goes to `<data dir>/hooks.log` (Claude shows a hook's
//! stderr to the user), stdin is read on its own thread with [`STDIN_DEADLINE`], the work is
//! bounded by [`HOOK_DEADLINE`], and every error — even a panic — ends as a log line; the
//! caller exits 0 whatever happens.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use super::event::HookEvent;
use super::events;
use crate::settings::{data_dir, RawSettings};

/// Reading the hook input gives up after this long.
const STDIN_DEADLINE: Duration = Duration::from_secs(2);
/// The hook's work gives up after this long (Claude Code's own hook timeout is 10 s).
const HOOK_DEADLINE: Duration = Duration::from_secs(5);
/// Largest hook input read from stdin.
const MAX_INPUT_BYTES: usize = 1024 * 1024;

/// Runs one hook as Claude Code invokes it. Never fails and never panics out: whatever
/// happens is logged, and the caller exits 0.
pub(crate) fn run(raw: &RawSettings, event: HookEvent) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_logged(raw, event)));
}

fn run_logged(raw: &RawSettings, event: HookEvent) {
    let data_dir = match data_dir(raw) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ccr-agent hook: {e}");
            return;
        }
    };
    init_log(&data_dir);
    // Claude closes stdin after writing the JSON; a caller that never does must not hang
    // the hook, so the read runs on its own thread with a deadline.
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut input = Vec::new();
        let read = std::io::stdin()
            .take(MAX_INPUT_BYTES as u64)
            .read_to_end(&mut input)
            .map(|_| input);
        let _ = tx.send(read);
    });
    let input = match rx.recv_timeout(STDIN_DEADLINE) {
        Ok(Ok(input)) => input,
        Ok(Err(e)) => {
            tracing::warn!(hook = event.arg(), "reading the hook input: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(
                hook = event.arg(),
                "no hook input on stdin within {:?}",
                STDIN_DEADLINE
            );
            return;
        }
    };
    let input = String::from_utf8_lossy(&input);
    let env = events::HookEnv::from_process();
    let rt = match crate::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!("cannot start the async runtime: {e}");
            return;
        }
    };
    if matches!(
        event,
        HookEvent::PostToolUse | HookEvent::PermissionDenied | HookEvent::UserPromptSubmit
    ) {
        let moved = super::permission::moved_on(raw, &data_dir, &input, event);
        match rt.block_on(async { tokio::time::timeout(HOOK_DEADLINE, moved).await }) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(hook = event.arg(), "hook failed: {e:#}"),
            Err(_) => tracing::warn!(hook = event.arg(), "hook gave up after {:?}", HOOK_DEADLINE),
        }
        rt.shutdown_background();
        return;
    }
    if event == HookEvent::PermissionRequest {
        // Waits for a person (hours), and its answer is stdout: its own path.
        match rt.block_on(super::permission::run(raw, &data_dir, &input, &env)) {
            Ok(Some(out)) => {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(out.as_bytes());
                let _ = stdout.flush();
            }
            Ok(None) => tracing::info!("no decision from the chat; the terminal decides"),
            Err(e) => tracing::warn!(hook = event.arg(), "hook failed: {e:#}"),
        }
        rt.shutdown_background();
        return;
    }
    let outcome = rt.block_on(async {
        tokio::time::timeout(HOOK_DEADLINE, async {
            let done = events::run_hook(event, raw, &data_dir, &input, &env).await;
            if event == HookEvent::Stop {
                // The turn ended: a card still open was answered at the terminal.
                if let Err(e) = super::permission::moved_on(raw, &data_dir, &input, event).await {
                    tracing::warn!("closing open cards: {e:#}");
                }
            }
            done
        })
        .await
    });
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(hook = event.arg(), "hook failed: {e:#}");
            eprintln!("ccr-agent hook {}: {e:#}", event.arg());
        }
        Err(_) => {
            tracing::warn!(hook = event.arg(), "hook gave up after {:?}", HOOK_DEADLINE);
        }
    }
    // Do not wait for anything still running (a hung request): Claude must not wait.
    rt.shutdown_background();
}

/// Logs to `<data dir>/hooks.log`, or to stderr when that cannot be opened. A hook may be the
/// first to create the data directory: it is made 0700 and the log 0600, whatever the umask.
fn init_log(data_dir: &Path) {
    let log = crate::db::ensure_private_dir(data_dir)
        .and_then(|()| crate::db::open_private_file(&data_dir.join("hooks.log"), true));
    match log {
        Ok(file) => ccr_native::init_tracing(std::sync::Mutex::new(file), Some(false), "info"),
        Err(_) => ccr_native::init_tracing(std::io::stderr, None, "info"),
    }
}
