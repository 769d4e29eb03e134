//! The daemon's local socket, `<data dir>/hook.sock`: a PermissionRequest hook hands its
//! card's request (`POST /approvals`'s body) to the daemon, which sends it on the machine
//! socket that is already open and passes the Worker's answer back.
//!
//! Why: a hook is a new process each time. Opening the card itself costs it the system's root
//! certificates, a new TCP + TLS connection and the Worker's authentication before the
//! RouterDO sees the request; the daemon's socket reaches the RouterDO directly. The hook
//! falls back to `POST /approvals` whenever this path does not answer "stored" (no daemon,
//! the daemon offline, an older Worker that skips the frame, a request too big for a frame),
//! and opening the same request twice is a no-op on the Worker, so nothing depends on it.
//!
//! One exchange per connection: the hook writes the request as one JSON line, the daemon
//! answers one JSON line ([`Answer`]) and closes. The socket file is 0600 inside the private
//! data directory: only this user's processes, which can read the key anyway, may use it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ccr_protocol::api::OpenApproval;
use ccr_protocol::socket::SocketMessage;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// The socket's file name in the data directory.
const SOCKET_FILE: &str = "hook.sock";
/// The largest request line a hook may send (Claude Code's whole tool input fits).
const MAX_REQUEST_BYTES: u64 = 1024 * 1024;
/// The largest answer line the hook reads.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;
/// Reading a hook's request gives up after this long.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon waits for the Worker's `approvalOpened` before telling the hook to
/// use HTTP (an older Worker never answers).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(4);
/// How long the hook waits for the daemon's answer in all.
const HOOK_TIMEOUT: Duration = Duration::from_secs(6);
/// Requests waiting for the socket task at once; more are told to use HTTP.
const QUEUE: usize = 64;

/// The socket's path for `data_dir`.
fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// The daemon's answer to a hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    /// The Worker stored the request (its card is on its way).
    ok: bool,
    /// Why not, for the hook's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Answer {
    fn refused(why: impl Into<String>) -> Self {
        Answer {
            ok: false,
            error: Some(why.into()),
        }
    }
}

/// A request handed to the socket task: the frame to send and where its answer goes.
pub(crate) struct Handed {
    request_id: String,
    frame: String,
    answer: oneshot::Sender<Answer>,
}

/// The state the listener and the socket task share: the queue of handed requests, the
/// requests sent and not answered yet, and whether the machine socket is up.
#[derive(Clone)]
pub(crate) struct Handover {
    tx: mpsc::Sender<Handed>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Handed>>>,
    sent: Arc<Mutex<HashMap<String, oneshot::Sender<Answer>>>>,
    connected: Arc<AtomicBool>,
}

impl Handover {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Handover {
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            sent: Arc::default(),
            connected: Arc::default(),
        }
    }

    /// The socket task owns the queue's receiving end while a connection is up (one at a
    /// time); requests handed meanwhile wait in the queue, at most [`ANSWER_TIMEOUT`].
    pub(crate) async fn receiver(&self) -> tokio::sync::MutexGuard<'_, mpsc::Receiver<Handed>> {
        self.rx.lock().await
    }

    /// Called by the socket task as a connection starts and ends: while it is down, hooks
    /// are told at once to use HTTP instead of waiting.
    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::SeqCst);
        if !up {
            // Those sent on the connection that ended get no answer on it.
            self.sent.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// The frame to send for a handed request, `None` when its hook stopped waiting; the
    /// request then waits for its answer ([`Handover::answered`]).
    pub(crate) fn sending(&self, handed: Handed) -> Option<String> {
        if handed.answer.is_closed() {
            return None;
        }
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.retain(|_, tx| !tx.is_closed());
        sent.insert(handed.request_id, handed.answer);
        Some(handed.frame)
    }

    /// The Worker's `approvalOpened`.
    pub(crate) fn answered(&self, request_id: &str, status: Option<u16>, error: Option<String>) {
        let waiting = self
            .sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(request_id);
        let answer = match (status, error) {
            (None, None) => Answer {
                ok: true,
                error: None,
            },
            (status, error) => Answer::refused(format!(
                "the Worker answered {}: {}",
                status.map_or_else(|| "an error".to_owned(), |s| s.to_string()),
                error.unwrap_or_default()
            )),
        };
        match waiting {
            Some(tx) => {
                let _ = tx.send(answer);
            }
            None => debug!(request_id, "approvalOpened for a request nobody waits for"),
        }
    }

    /// One request from a hook, answered when the Worker answers (or not at all within
    /// [`ANSWER_TIMEOUT`]).
    async fn hand(&self, body: OpenApproval) -> Answer {
        if !self.connected.load(Ordering::SeqCst) {
            return Answer::refused("the daemon is not connected to the Worker");
        }
        let request_id = body.request_id.clone();
        let frame = SocketMessage::OpenApproval(body).encode();
        if frame.len() > ccr_protocol::MAX_FRAME_BYTES {
            return Answer::refused("the request is too big for a socket frame");
        }
        let (tx, rx) = oneshot::channel();
        let handed = Handed {
            request_id: request_id.clone(),
            frame,
            answer: tx,
        };
        if self.tx.try_send(handed).is_err() {
            return Answer::refused("the daemon has too many requests waiting");
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Answer::refused("the connection to the Worker ended"),
            Err(_) => {
                self.sent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&request_id);
                Answer::refused(format!(
                    "no answer from the Worker within {ANSWER_TIMEOUT:?}"
                ))
            }
        }
    }
}

/// Listens on `<data dir>/hook.sock` until the task is dropped. A socket file some other
/// live daemon answers on is left alone (this one then serves no hooks); a stale one is
/// replaced.
pub(crate) async fn listen(data_dir: PathBuf, handover: Handover) {
    let path = socket_path(&data_dir);
    if UnixStream::connect(&path).await.is_ok() {
        warn!(
            "another daemon answers on {}; this one leaves the hooks to it",
            path.display()
        );
        return;
    }
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(
                "cannot listen on {} ({e}); hooks open their cards over HTTP",
                path.display()
            );
            return;
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            warn!(
                "cannot make {} private ({e}); not serving hooks",
                path.display()
            );
            let _ = std::fs::remove_file(&path);
            return;
        }
    }
    info!(socket = %path.display(), "serving hooks");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let handover = handover.clone();
                tokio::spawn(async move { serve_one(stream, &handover).await });
            }
            Err(e) => {
                warn!("accepting a hook's connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One hook's exchange: a request line in, an answer line out.
async fn serve_one(stream: UnixStream, handover: &Handover) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES);
    let answer = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Answer::refused("no request within the time allowed"),
        Ok(Err(e)) => Answer::refused(format!("reading the request: {e}")),
        Ok(Ok(_)) => match serde_json::from_str::<OpenApproval>(line.trim_end()) {
            Ok(body) => handover.hand(body).await,
            Err(e) => Answer::refused(format!("the request is not an approval: {e}")),
        },
    };
    let mut text = serde_json::to_string(&answer).unwrap_or_default();
    text.push('\n');
    if let Err(e) = write.write_all(text.as_bytes()).await {
        debug!("answering a hook: {e}");
    }
}

/// The hook's side: hands `body` to the daemon. `Ok` once the Worker stored it; `Err(why)`
/// when the hook must open its card over HTTP itself.
pub(crate) async fn open_approval(data_dir: &Path, body: &OpenApproval) -> Result<(), String> {
    let exchange = async {
        let stream = UnixStream::connect(socket_path(data_dir))
            .await
            .map_err(|e| format!("no daemon on {SOCKET_FILE} ({e})"))?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_string(body).map_err(|e| e.to_string())?;
        line.push('\n');
        write
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("handing the request to the daemon: {e}"))?;
        let mut answer = String::new();
        BufReader::new(read)
            .take(MAX_ANSWER_BYTES)
            .read_line(&mut answer)
            .await
            .map_err(|e| format!("reading the daemon's answer: {e}"))?;
        let answer: Answer = serde_json::from_str(answer.trim_end())
            .map_err(|e| format!("the daemon's answer is not JSON: {e}"))?;
        match answer {
            Answer { ok: true, .. } => Ok(()),
            Answer { error, .. } => Err(error.unwrap_or_else(|| "refused".to_owned())),
        }
    };
    tokio::time::timeout(HOOK_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from the daemon within {HOOK_TIMEOUT:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(id: &str) -> OpenApproval {
        OpenApproval {
            request_id: id.into(),
            session_id: "s1".into(),
            tool_name: "Bash".into(),
            tool_input: json!({"command": "ls"}),
            permission_suggestions: vec![],
        }
    }

    /// A stand-in for the socket task: sends nothing, answers each frame as `reply` says.
    fn worker(handover: &Handover, reply: fn(&str) -> (Option<u16>, Option<String>)) {
        let h = handover.clone();
        tokio::spawn(async move {
            let mut rx = h.receiver().await;
            while let Some(handed) = rx.recv().await {
                let id = handed.request_id.clone();
                if let Some(frame) = h.sending(handed) {
                    assert!(frame.starts_with(r#"{"type":"openApproval""#), "{frame}");
                    let (status, error) = reply(&id);
                    h.answered(&id, status, error);
                }
            }
        });
    }

    #[tokio::test]
    async fn a_hook_hears_the_workers_answer() {
        let dir = tempfile::tempdir().unwrap();
        let handover = Handover::new();
        handover.set_connected(true);
        worker(&handover, |id| {
            if id == "bad" {
                (Some(404), Some("unknown session".into()))
            } else {
                (None, None)
            }
        });
        let listening = tokio::spawn(listen(dir.path().to_owned(), handover.clone()));
        let path = socket_path(dir.path());
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(open_approval(dir.path(), &body("0a")).await, Ok(()));
        let refused = open_approval(dir.path(), &body("bad")).await.unwrap_err();
        assert!(
            refused.contains("404") && refused.contains("unknown session"),
            "{refused}"
        );
        // Offline: told at once.
        handover.set_connected(false);
        let offline = open_approval(dir.path(), &body("0b")).await.unwrap_err();
        assert!(offline.contains("not connected"), "{offline}");
        listening.abort();
    }

    #[tokio::test]
    async fn without_a_daemon_the_hook_is_told_to_use_http() {
        let dir = tempfile::tempdir().unwrap();
        let why = open_approval(dir.path(), &body("0a")).await.unwrap_err();
        assert!(why.contains("no daemon"), "{why}");
        // A stale socket file (its daemon died) is replaced by the next daemon.
        std::fs::write(socket_path(dir.path()), b"").unwrap();
        let handover = Handover::new();
        handover.set_connected(true);
        worker(&handover, |_| (None, None));
        let listening = tokio::spawn(listen(dir.path().to_owned(), handover));
        let mut tries = 0;
        while open_approval(dir.path(), &body("0c")).await.is_err() {
            tries += 1;
            assert!(tries < 500, "the stale socket file was not replaced");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        listening.abort();
    }

    #[tokio::test]
    async fn a_request_nobody_answers_is_given_back_to_http() {
        let dir = tempfile::tempdir().unwrap();
        let handover = Handover::new();
        handover.set_connected(true);
        // The socket task takes the frame but the Worker (an older one) never answers.
        let h = handover.clone();
        tokio::spawn(async move {
            let mut rx = h.receiver().await;
            while let Some(handed) = rx.recv().await {
                let _ = h.sending(handed);
            }
        });
        let listening = tokio::spawn(listen(dir.path().to_owned(), handover.clone()));
        while !socket_path(dir.path()).exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let why = open_approval(dir.path(), &body("0d")).await.unwrap_err();
        assert!(why.contains("no answer from the Worker"), "{why}");
        assert!(handover.sent.lock().unwrap().is_empty());
        // A request too big for one frame is refused at once.
        let mut big = body("0e");
        big.tool_input = json!({"content": "x".repeat(ccr_protocol::MAX_FRAME_BYTES)});
        let why = open_approval(dir.path(), &big).await.unwrap_err();
        assert!(why.contains("too big"), "{why}");
        listening.abort();
    }
}
