//! The daemon against an in-process WebSocket server that plays the Worker's side of the
//! socket contract, with a stand-in `tmux` program that records its arguments.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ccr_protocol::socket::{SocketMessage, PING_FRAME, PONG_FRAME};
use futures_util::{SinkExt, StreamExt};
use machine_agent::{
    now_ms, Config, Db, Launch, PaneIdentity, Secret, SessionRecord, Sessions, Timing, WorkerConfig,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const KEY: &str = "agent-test-key";
const WAIT: Duration = Duration::from_secs(10);

type Conn = WebSocketStream<TcpStream>;

/// Plays the Worker: accepts sockets with subprotocol `ccr, KEY` (answering `ccr`), rejects
/// others with 401, and hands each accepted connection with its request path to the test.
struct FakeWorker {
    port: u16,
    conns: mpsc::Receiver<(String, Conn)>,
    rejected: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakeWorker {
    async fn start() -> FakeWorker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, conns) = mpsc::channel(8);
        let rejected = Arc::new(AtomicUsize::new(0));
        let rej = rejected.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let rej = rej.clone();
                tokio::spawn(async move {
                    let (path_tx, path_rx) = oneshot::channel();
                    // The callback's error type is tungstenite's, large or not.
                    #[allow(clippy::result_large_err)]
                    let cb = move |req: &Request, mut resp: Response| {
                        let _ = path_tx.send(req.uri().to_string());
                        let protocols = req
                            .headers()
                            .get("Sec-WebSocket-Protocol")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        if protocols != format!("ccr, {KEY}") {
                            let mut err = ErrorResponse::new(Some(
                                r#"{"ok":false,"error":"invalid API key"}"#.into(),
                            ));
                            *err.status_mut() = StatusCode::UNAUTHORIZED;
                            return Err(err);
                        }
                        resp.headers_mut()
                            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("ccr"));
                        Ok(resp)
                    };
                    match tokio_tungstenite::accept_hdr_async(stream, cb).await {
                        Ok(ws) => {
                            let path = path_rx.await.unwrap_or_default();
                            let _ = tx.send((path, ws)).await;
                        }
                        Err(_) => {
                            rej.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        FakeWorker {
            port,
            conns,
            rejected,
            task,
        }
    }

    async fn accept(&mut self) -> Conn {
        let (path, ws) = tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("the agent connects")
            .unwrap();
        assert_eq!(path, "/ws?machineId=testbox");
        ws
    }
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Next agent message that is not a ping (pings are answered with a pong).
async fn next_msg(ws: &mut Conn) -> SocketMessage {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame from the agent")
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(text) = frame {
            if text.as_str() == PING_FRAME {
                ws.send(Message::text(PONG_FRAME)).await.unwrap();
                continue;
            }
            match SocketMessage::decode(text.as_str()).unwrap() {
                // Sent once per connection (`/new`'s project names); not what these tests
                // are about.
                SocketMessage::Projects { .. } => continue,
                msg => return msg,
            }
        }
    }
}

/// Asserts the agent sends nothing but pings for `d`.
async fn quiet_for(ws: &mut Conn, d: Duration) {
    let end = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(end, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == PING_FRAME => {
                ws.send(Message::text(PONG_FRAME)).await.unwrap();
            }
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains(r#""type":"projects""#) => {}
            Ok(other) => panic!("unexpected frame: {other:?}"),
        }
    }
}

/// Asserts that the next frame is the ack of command `id`.
async fn expect_ack(ws: &mut Conn, id: &str) {
    assert_eq!(
        next_msg(ws).await,
        SocketMessage::Ack {
            command_id: id.into()
        }
    );
}

/// The next frame, which must be the result of command `id`: `Ok` when it succeeded, else
/// the error it reports.
async fn result_of(ws: &mut Conn, id: &str) -> Result<(), String> {
    match next_msg(ws).await {
        SocketMessage::CommandResult {
            command_id,
            success,
            error,
        } if command_id == id => match (success, error) {
            (true, None) => Ok(()),
            (false, Some(e)) => Err(e),
            (success, error) => panic!("a result of {id} with success {success} and {error:?}"),
        },
        other => panic!("expected the result of {id}, got {other:?}"),
    }
}

fn command(id: &str, text: &str) -> Message {
    Message::text(
        SocketMessage::Command {
            command_id: id.into(),
            session_id: "s1".into(),
            command: text.into(),
            chat_id: "42".into(),
            expires_at: None,
        }
        .encode(),
    )
}

/// What the stand-in `tmux` answers a `display-message` with: pane `%1`'s identity (pane id,
/// server pid, server start, pane pid — a pid that cannot exist, so no `/proc` entry).
const FAKE_IDENTITY: &str = "%1 100 1700000000 4294967295";

/// A `tmux` stand-in: records each call's arguments, answers `display-message` with
/// [`FAKE_IDENTITY`].
fn fake_tmux(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let rec = dir.join("tmux-calls.txt");
    let script = dir.join("tmux");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\ncase \"$*\" in *display-message*) echo '{FAKE_IDENTITY}';; esac\n",
            rec.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, rec)
}

fn typed(rec: &Path) -> Vec<String> {
    std::fs::read_to_string(rec)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("send-keys") && l.contains(" -l "))
        .map(str::to_owned)
        .collect()
}

struct Agent {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    fn start(config: Config) -> Agent {
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(machine_agent::run(config, async {
            let _ = rx.await;
        }));
        Agent {
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("run returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

fn config(port: u16, data_dir: &Path, tmux: &Path, key: &str) -> Config {
    Config {
        worker: WorkerConfig {
            url: format!("http://127.0.0.1:{port}").parse().unwrap(),
            api_key: Secret::new(key),
            machine_id: "testbox".into(),
        },
        data_dir: data_dir.to_owned(),
        inject_delay: Duration::from_millis(10),
        hold_commands: false,
        tmux: tmux.to_owned(),
        launch: Launch::default(),
        timing: Timing {
            ping_interval: Duration::from_millis(300),
            pong_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            healthy_after: Duration::from_millis(500),
            unauthorized_retry: Duration::from_secs(3),
            replaced_retry: Duration::from_millis(1500),
        },
    }
}

fn record_session(data_dir: &Path) {
    Sessions::new(Db::open(data_dir).unwrap())
        .upsert(&SessionRecord {
            session_id: "s1".into(),
            pane_id: Some("%1".into()),
            tmux_socket: Some("/tmp/fake-tmux-socket".into()),
            cwd: Some("/w/api".into()),
            label: Some("api".into()),
            transcript_path: None,
            updated_at: now_ms(),
            identity: PaneIdentity::decode(&format!("{FAKE_IDENTITY} -")),
            gone: None,
            input_dirty: false,
        })
        .unwrap();
}

#[tokio::test]
async fn commands_are_acked_typed_once_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (tmux, rec) = fake_tmux(dir.path());
    record_session(dir.path());
    let mut worker = FakeWorker::start().await;
    let agent = Agent::start(config(worker.port, dir.path(), &tmux, KEY));
    let mut ws = worker.accept().await;

    ws.send(command("c1", "fix the $(tests)")).await.unwrap();
    expect_ack(&mut ws, "c1").await;
    assert_eq!(result_of(&mut ws, "c1").await, Ok(()));
    let calls = std::fs::read_to_string(&rec).unwrap();
    assert!(
        calls.contains("-S /tmp/fake-tmux-socket send-keys -t %1 -l -- fix the $(tests)"),
        "{calls}"
    );
    assert!(calls.contains("send-keys -t %1 Enter"), "{calls}");

    // At-least-once delivery: the same id again is acked, its result sent again (the Worker
    // may have missed it too), and it is not typed again.
    ws.send(command("c1", "fix the $(tests)")).await.unwrap();
    expect_ack(&mut ws, "c1").await;
    assert_eq!(result_of(&mut ws, "c1").await, Ok(()));
    // Unknown and malformed frames are skipped without dropping the connection.
    ws.send(Message::text(r#"{"type":"hello","version":9}"#))
        .await
        .unwrap();
    ws.send(Message::text("not json")).await.unwrap();
    quiet_for(&mut ws, Duration::from_millis(500)).await;
    assert_eq!(typed(&rec).len(), 1);

    // An unknown session fails with a reason a person understands.
    ws.send(Message::text(
        SocketMessage::Command {
            command_id: "c2".into(),
            session_id: "nope".into(),
            command: "x".into(),
            chat_id: "42".into(),
            expires_at: None,
        }
        .encode(),
    ))
    .await
    .unwrap();
    expect_ack(&mut ws, "c2").await;
    let e = result_of(&mut ws, "c2").await.unwrap_err();
    assert!(e.contains("not known on this machine"), "{e}");
    assert_eq!(typed(&rec).len(), 1);

    // Shutdown: close 1000, then run returns.
    let stopping = tokio::spawn(agent.stop());
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(f.code, CloseCode::Normal);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    stopping.await.unwrap();
}

#[tokio::test]
async fn pings_are_exact_and_silence_drops_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (tmux, _) = fake_tmux(dir.path());
    let mut worker = FakeWorker::start().await;
    let agent = Agent::start(config(worker.port, dir.path(), &tmux, KEY));
    let mut ws = worker.accept().await;
    // The first frame announces `/new`'s project names (none here); the next is the exact
    // ping, after the interval.
    let started = tokio::time::Instant::now();
    let frame = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(frame, Message::text(r#"{"type":"projects","projects":[]}"#));
    let frame = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(frame, Message::text(PING_FRAME));
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Never answer: the agent gives up after the pong timeout and connects again.
    let mut ws2 = worker.accept().await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    drop(ws);
    // The new connection works.
    ws2.send(command("c1", "")).await.unwrap();
    assert_eq!(
        next_msg(&mut ws2).await,
        SocketMessage::Ack {
            command_id: "c1".into()
        }
    );
    // A connection the Worker drops is replaced quickly (backoff starts at ≤ 50 ms).
    drop(ws2);
    let dropped = tokio::time::Instant::now();
    let _ws3 = worker.accept().await;
    assert!(dropped.elapsed() < Duration::from_secs(2));
    agent.stop().await;
}

#[tokio::test]
async fn a_wrong_key_is_not_retried_fast() {
    let dir = tempfile::tempdir().unwrap();
    let (tmux, _) = fake_tmux(dir.path());
    let worker = FakeWorker::start().await;
    let agent = Agent::start(config(worker.port, dir.path(), &tmux, "wrong-key"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // With the normal backoff (≤ 200 ms here) there would be many attempts.
    assert_eq!(worker.rejected.load(Ordering::SeqCst), 1);
    let status = machine_agent::status_report(dir.path()).unwrap();
    assert!(status.contains("unauthorized"), "{status}");
    agent.stop().await;
}

#[tokio::test]
async fn replaced_by_another_agent_waits_before_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let (tmux, _) = fake_tmux(dir.path());
    let mut worker = FakeWorker::start().await;
    let agent = Agent::start(config(worker.port, dir.path(), &tmux, KEY));
    let mut ws = worker.accept().await;
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "replaced".into(),
    }))
    .await
    .unwrap();
    let closed = tokio::time::Instant::now();
    let _ws2 = worker.accept().await;
    assert!(closed.elapsed() >= Duration::from_millis(1400));
    let status = machine_agent::status_report(dir.path()).unwrap();
    assert!(
        status.contains("connected") || status.contains("replaced"),
        "{status}"
    );
    agent.stop().await;
}

#[tokio::test]
async fn stored_commands_run_once_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (tmux, rec) = fake_tmux(dir.path());
    record_session(dir.path());
    let mut worker = FakeWorker::start().await;

    // First run holds commands: stored and acked, never typed (as if killed right then).
    let mut held = config(worker.port, dir.path(), &tmux, KEY);
    held.hold_commands = true;
    let agent = Agent::start(held);
    let mut ws = worker.accept().await;
    ws.send(command("c1", "one")).await.unwrap();
    ws.send(command("c2", "two")).await.unwrap();
    for id in ["c1", "c2"] {
        assert_eq!(
            next_msg(&mut ws).await,
            SocketMessage::Ack {
                command_id: id.into()
            }
        );
    }
    quiet_for(&mut ws, Duration::from_millis(300)).await;
    assert!(typed(&rec).is_empty());
    agent.stop().await;
    drop(ws);

    // The next run types both, in order, once, and reports them.
    let agent = Agent::start(config(worker.port, dir.path(), &tmux, KEY));
    let mut ws = worker.accept().await;
    let mut results = Vec::new();
    while results.len() < 2 {
        if let SocketMessage::CommandResult {
            command_id,
            success,
            ..
        } = next_msg(&mut ws).await
        {
            assert!(success);
            results.push(command_id);
        }
    }
    assert_eq!(results, ["c1", "c2"]);
    // Delivered again by the Worker (its acks were lost, say): acked, result repeated, not
    // typed.
    ws.send(command("c1", "one")).await.unwrap();
    expect_ack(&mut ws, "c1").await;
    assert!(matches!(
        next_msg(&mut ws).await,
        SocketMessage::CommandResult { success: true, .. }
    ));
    quiet_for(&mut ws, Duration::from_millis(300)).await;
    let t = typed(&rec);
    assert_eq!(t.len(), 2, "{t:?}");
    assert!(
        t[0].ends_with("-l -- one") && t[1].ends_with("-l -- two"),
        "{t:?}"
    );
    agent.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_drops_the_connection_and_the_agent_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let (tmux, rec) = fake_tmux(dir.path());
    record_session(dir.path());
    let mut worker = FakeWorker::start().await;
    let agent = Agent::start(config(worker.port, dir.path(), &tmux, KEY));
    let mut ws = worker.accept().await;
    // One byte past the protocol's frame limit, as a command the agent must not run.
    let padding = "x".repeat(ccr_protocol::MAX_FRAME_BYTES + 1);
    let _ = ws.send(command("huge", &padding)).await;
    let mut ws2 = worker.accept().await;
    drop(ws);
    ws2.send(command("c1", "small")).await.unwrap();
    assert_eq!(
        next_msg(&mut ws2).await,
        SocketMessage::Ack {
            command_id: "c1".into()
        }
    );
    assert!(matches!(
        next_msg(&mut ws2).await,
        SocketMessage::CommandResult { success: true, .. }
    ));
    let t = typed(&rec);
    assert_eq!(t.len(), 1, "{t:?}");
    assert!(t[0].ends_with("-- small"));
    agent.stop().await;
}

#[tokio::test]
async fn a_command_typed_before_a_crash_gets_only_its_enter() {
    use machine_agent::{Command, Inbox};
    let dir = tempfile::tempdir().unwrap();
    let (tmux, rec) = fake_tmux(dir.path());
    record_session(dir.path());
    {
        // The previous run typed the text and died before Enter; another one before typing.
        let inbox = Inbox::new(Db::open(dir.path()).unwrap());
        for id in ["typed-1", "started-2"] {
            inbox
                .store(
                    &Command {
                        command_id: id.into(),
                        session_id: "s1".into(),
                        command: format!("text of {id}"),
                        chat_id: "42".into(),
                        keys: None,
                        project: None,
                        file: None,
                    },
                    None,
                    now_ms(),
                )
                .unwrap();
            assert!(inbox.begin(id, now_ms()).unwrap());
        }
        inbox.mark_typed("typed-1", now_ms()).unwrap();
    }
    let mut worker = FakeWorker::start().await;
    let agent = Agent::start(config(worker.port, dir.path(), &tmux, KEY));
    let mut ws = worker.accept().await;
    let mut results = std::collections::BTreeMap::new();
    while results.len() < 2 {
        if let SocketMessage::CommandResult {
            command_id,
            success,
            error,
        } = next_msg(&mut ws).await
        {
            results.insert(command_id, (success, error));
        }
    }
    assert_eq!(results["typed-1"], (true, None));
    let (ok, why) = &results["started-2"];
    assert!(!ok && why.as_deref().unwrap().contains("not typed again"));
    let calls = std::fs::read_to_string(&rec).unwrap();
    // Nothing typed again; one Enter for the typed one.
    assert!(typed(&rec).is_empty(), "{calls}");
    assert_eq!(calls.matches("send-keys -t %1 Enter").count(), 1, "{calls}");
    agent.stop().await;
}

#[tokio::test]
async fn a_command_that_arrives_expired_is_acked_reported_and_never_typed() {
    let dir = tempfile::tempdir().unwrap();
    let (tmux, rec) = fake_tmux(dir.path());
    record_session(dir.path());
    let mut worker = FakeWorker::start().await;
    let agent = Agent::start(config(worker.port, dir.path(), &tmux, KEY));
    let mut ws = worker.accept().await;
    let frame = |id: &str, expires_at: i64| {
        Message::text(
            SocketMessage::Command {
                command_id: id.into(),
                session_id: "s1".into(),
                command: format!("text of {id}"),
                chat_id: "42".into(),
                expires_at: Some(expires_at),
            }
            .encode(),
        )
    };

    // Expired a minute ago: acked (so the Worker stops sending it), a failed result, no keys.
    ws.send(frame("late", now_ms() - 60_000)).await.unwrap();
    expect_ack(&mut ws, "late").await;
    let e = result_of(&mut ws, "late").await.unwrap_err();
    assert!(e.contains("after it expired"), "{e}");
    // Sent again: a duplicate, acked and its result repeated, still never typed.
    ws.send(frame("late", now_ms() - 60_000)).await.unwrap();
    assert!(matches!(next_msg(&mut ws).await, SocketMessage::Ack { .. }));
    assert!(matches!(
        next_msg(&mut ws).await,
        SocketMessage::CommandResult { success: false, .. }
    ));
    // One still within its time runs as usual.
    ws.send(frame("fresh", now_ms() + 60_000)).await.unwrap();
    assert!(matches!(next_msg(&mut ws).await, SocketMessage::Ack { .. }));
    assert_eq!(result_of(&mut ws, "fresh").await, Ok(()));
    let typed = typed(&rec);
    assert_eq!(typed.len(), 1, "{typed:?}");
    assert!(typed[0].contains("text of fresh"), "{typed:?}");
    drop(ws);
    agent.stop().await;
}

/// The session's recorded pane `%1` now belongs to another tmux server (the stand-in answers
/// with another server pid): nothing is typed, the Worker is told the session is gone, the
/// result says how to go on, and a later command for it is refused without asking tmux.
#[tokio::test]
async fn a_reused_pane_id_is_never_typed_into() {
    let dir = tempfile::tempdir().unwrap();
    let (tmux, rec) = fake_tmux(dir.path());
    record_session(dir.path());
    let sessions = Sessions::new(Db::open(dir.path()).unwrap());
    let mut old = sessions.get("s1").unwrap().unwrap();
    old.identity = PaneIdentity::decode("%1 99 1600000000 4294967295 -");
    sessions.upsert(&old).unwrap();
    let mut worker = FakeWorker::start().await;
    let agent = Agent::start(config(worker.port, dir.path(), &tmux, KEY));
    let mut ws = worker.accept().await;

    ws.send(command("c1", "git push --force")).await.unwrap();
    expect_ack(&mut ws, "c1").await;
    match next_msg(&mut ws).await {
        SocketMessage::SessionGone { session_id, reason } => {
            assert_eq!(session_id, "s1");
            assert!(reason.contains("tmux server was restarted"), "{reason}");
        }
        other => panic!("expected sessionGone, got {other:?}"),
    }
    let why = result_of(&mut ws, "c1").await.unwrap_err();
    assert!(why.contains("pane is gone"), "{why}");
    assert!(why.contains("start Claude Code again in tmux"), "{why}");
    assert!(typed(&rec).is_empty());
    let calls = std::fs::read_to_string(&rec).unwrap();
    assert!(!calls.contains("send-keys"), "{calls}");

    ws.send(command("c2", "y")).await.unwrap();
    next_msg(&mut ws).await; // ack
    assert!(matches!(
        next_msg(&mut ws).await,
        SocketMessage::CommandResult { success: false, .. }
    ));
    assert_eq!(
        std::fs::read_to_string(&rec).unwrap().lines().count(),
        calls.lines().count(),
        "a gone session is refused without asking tmux again"
    );
    assert!(sessions.get("s1").unwrap().unwrap().gone.is_some());
    agent.stop().await;
}

fn tmux_available() -> bool {
    std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The identity the session-start hook would record for `pane` (read the same way).
fn real_identity(sock: &Path, pane: &str) -> PaneIdentity {
    let out = std::process::Command::new("tmux")
        .arg("-S")
        .arg(sock)
        .args([
            "display-message",
            "-p",
            "-t",
            pane,
            "#{pane_id} #{pid} #{start_time} #{pane_pid}",
        ])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let pane_pid = answer.rsplit(' ').next().unwrap().to_owned();
    let tpgid = std::fs::read_to_string(format!("/proc/{pane_pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1.to_owned();
            rest.split_whitespace().nth(5).map(str::to_owned)
        })
        .filter(|g| g.parse::<i64>().is_ok_and(|g| g > 0))
        .unwrap_or_else(|| "-".into());
    PaneIdentity::decode(&format!("{answer} {tpgid}")).unwrap()
}

/// A kill while tmux was being handed a command's text: the text sits in the pane's input
/// line and the command is left `executing`. After the restart, the next command must land
/// alone on its line, not behind that text (a real tmux pane whose program records lines).
#[tokio::test]
async fn text_of_an_interrupted_command_is_cleared_before_the_next() {
    use machine_agent::{Command, Inbox};
    if !tmux_available() {
        eprintln!("tmux not installed; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("tmux.sock");
    let lines = dir.path().join("lines.txt");
    std::fs::write(&lines, "").unwrap();
    let recorder = r#"while IFS= read -r line; do printf '%s\n' "$line" >> "$1"; done"#;
    let st = std::process::Command::new("tmux")
        .arg("-S")
        .arg(&sock)
        .args([
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-x",
            "200",
            "-y",
            "50",
        ])
        .args(["sh", "-c", recorder, "rec"])
        .arg(&lines)
        .status()
        .unwrap();
    assert!(st.success());
    let tmux = |args: &[&str]| {
        let st = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "tmux {args:?}");
    };
    let identity = real_identity(&sock, "%0");
    Sessions::new(Db::open(dir.path()).unwrap())
        .upsert(&SessionRecord {
            session_id: "s1".into(),
            pane_id: Some("%0".into()),
            tmux_socket: Some(sock.clone()),
            cwd: None,
            label: Some("api".into()),
            transcript_path: None,
            updated_at: now_ms(),
            identity: Some(identity),
            gone: None,
            input_dirty: false,
        })
        .unwrap();
    {
        // The previous run claimed `cut-1` and was killed while its tmux client was typing:
        // the text arrived, no Enter, and the inbox still says `executing`.
        let inbox = Inbox::new(Db::open(dir.path()).unwrap());
        inbox
            .store(
                &Command {
                    command_id: "cut-1".into(),
                    session_id: "s1".into(),
                    command: "first half of cut-1".into(),
                    chat_id: "42".into(),
                    keys: None,
                    project: None,
                    file: None,
                },
                None,
                now_ms(),
            )
            .unwrap();
        assert!(inbox.begin("cut-1", now_ms()).unwrap());
        tmux(&["send-keys", "-t", "%0", "-l", "--", "first half of"]);
    }
    let mut worker = FakeWorker::start().await;
    let agent = Agent::start(config(worker.port, dir.path(), Path::new("tmux"), KEY));
    let mut ws = worker.accept().await;
    match next_msg(&mut ws).await {
        SocketMessage::CommandResult {
            command_id,
            success: false,
            ..
        } => assert_eq!(command_id, "cut-1"),
        other => panic!("expected cut-1's failure, got {other:?}"),
    }
    ws.send(command("next-2", "next command")).await.unwrap();
    next_msg(&mut ws).await; // ack
    assert_eq!(result_of(&mut ws, "next-2").await, Ok(()));
    let mut got = Vec::new();
    for _ in 0..100 {
        got = std::fs::read_to_string(&lines)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got, ["next command"]);
    // The line is clean now: the command after it is not preceded by another Ctrl-U.
    ws.send(command("next-3", "third")).await.unwrap();
    next_msg(&mut ws).await; // ack
    assert!(matches!(
        next_msg(&mut ws).await,
        SocketMessage::CommandResult { success: true, .. }
    ));
    agent.stop().await;
    tmux(&["kill-server"]);
}
