//! The long-offline machine: exactly once has no expiry date. The real Worker with a short
//! `COMMAND_TTL_SECS`, the real agent, a recording tmux pane, and — where a frame must arrive
//! late or an ack must never arrive — a proxy between them whose directions can be held.
//!
//! - A reply queued while the agent is stopped is typed once when it returns in time.
//! - One that expires before the agent returns is never typed, and the chat is told.
//! - One that reaches the agent only after its expiry (held in the network) is refused: not
//!   typed, acked, and the chat gets the agent's reason. The agent used to type it.
//! - One the agent typed but whose ack and result never reached the Worker is redelivered
//!   after a crash and not typed again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ccr_e2e::agent::Agent;
use ccr_e2e::telegram::BotApi;
use ccr_e2e::tmux::Tmux;
use ccr_e2e::wait_for;
use ccr_e2e::worker::{start_with_bot, Worker, WorkerOptions, TEST_API_KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const CHAT: i64 = 5151;
/// Generous: workerd and the agent share two cores with other test processes.
const T: Duration = Duration::from_secs(60);

async fn start(ttl_secs: u64) -> (Worker, BotApi) {
    let opts = WorkerOptions::default().var("COMMAND_TTL_SECS", ttl_secs.to_string());
    start_with_bot(opts, &[CHAT]).await.unwrap()
}

/// A TCP proxy whose two directions can each be held: bytes read while a direction is held
/// wait in the proxy until it is opened again, or are dropped with the connection by
/// [`Gate::cut_all`]. What a link that stalls looks like to both ends.
struct Gate {
    addr: SocketAddr,
    valves: Arc<Mutex<Valves>>,
    task: JoinHandle<()>,
}

/// The current connections' valves (true = open) and cut signal.
struct Valves {
    /// Worker → agent.
    down: watch::Sender<bool>,
    /// Agent → Worker.
    up: watch::Sender<bool>,
    cut: watch::Sender<bool>,
}

impl Valves {
    fn open() -> Valves {
        Valves {
            down: watch::channel(true).0,
            up: watch::channel(true).0,
            cut: watch::channel(false).0,
        }
    }
}

impl Gate {
    async fn start(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let valves = Arc::new(Mutex::new(Valves::open()));
        let shared = valves.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (down, up, mut cut) = {
                    let v = shared.lock().unwrap();
                    (v.down.subscribe(), v.up.subscribe(), v.cut.subscribe())
                };
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (agent_r, agent_w) = inbound.into_split();
                    let (worker_r, worker_w) = outbound.into_split();
                    tokio::select! {
                        _ = pump(agent_r, worker_w, up) => {}
                        _ = pump(worker_r, agent_w, down) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Gate { addr, valves, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Holds (`false`) or opens the Worker → agent direction.
    fn down(&self, open: bool) {
        self.valves.lock().unwrap().down.send_replace(open);
    }

    /// Holds (`false`) or opens the agent → Worker direction.
    fn up(&self, open: bool) {
        self.valves.lock().unwrap().up.send_replace(open);
    }

    /// Drops every connection with whatever it held; later connections start open.
    fn cut_all(&self) {
        let mut v = self.valves.lock().unwrap();
        v.cut.send_replace(true);
        *v = Valves::open();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.cut_all();
        self.task.abort();
    }
}

/// Copies `from` to `to`, each chunk only once `open` is true.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut open: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if open.wait_for(|o| *o).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_reply_queued_while_offline_is_typed_once_when_the_agent_returns_in_time() {
    let (w, bot) = start(20).await;
    let tmux = Tmux::start().unwrap();
    let mut agent = Agent::start(&w.base_url(), TEST_API_KEY, "backsoon").unwrap();
    agent.wait_connected(1, T).await.unwrap();
    agent
        .start_session(&tmux, &tmux.pane_id, "sess-a", "/w/a")
        .await
        .unwrap();
    let msg = w.notify("sess-a", "done").await.unwrap().message_id;
    agent.terminate().await.unwrap();

    w.reply(CHAT, 1, msg, "while you were away").await;
    bot.wait_text("offline", T).await.unwrap();
    agent.restart().unwrap();
    let lines = tmux.wait_for_lines(1, T).await.unwrap();
    assert_eq!(lines, ["while you were away"]);
    // The Worker got the ack (👍) and the result; nothing was refused or failed.
    bot.wait_call("setMessageReaction", T).await.unwrap();
    agent.wait_log("command typed", 1, T).await.unwrap();
    assert!(!agent.log().contains("after it expired"), "{}", agent.log());
    // A later reply goes through the same socket, after the first: still one each.
    w.reply(CHAT, 2, msg, "and one more").await;
    let lines = tmux.wait_for_lines(2, T).await.unwrap();
    assert_eq!(lines, ["while you were away", "and one more"]);
    assert!(bot.calls_of("sendMessage").iter().all(|c| {
        let text = c.params["text"].as_str().unwrap_or_default();
        !text.contains("Not delivered") && !text.contains("Could not type")
    }));
}

#[tokio::test]
async fn a_reply_that_expires_while_the_agent_is_offline_is_never_typed_and_the_chat_is_told() {
    let (w, bot) = start(4).await;
    let tmux = Tmux::start().unwrap();
    let mut agent = Agent::start(&w.base_url(), TEST_API_KEY, "awaylong").unwrap();
    agent.wait_connected(1, T).await.unwrap();
    agent
        .start_session(&tmux, &tmux.pane_id, "sess-b", "/w/b")
        .await
        .unwrap();
    let msg = w.notify("sess-b", "done").await.unwrap().message_id;
    agent.terminate().await.unwrap();

    w.reply(CHAT, 1, msg, "too late for this").await;
    let dead = bot.wait_text("Not delivered", T).await.unwrap();
    assert!(dead.contains("too late for this"), "{dead}");
    agent.restart().unwrap();
    agent.wait_connected(2, T).await.unwrap();
    // A fresh reply is typed; the socket sends queued commands oldest first, so had the
    // expired one been sent it would be in the pane before this.
    w.reply(CHAT, 2, msg, "a fresh one").await;
    let lines = tmux.wait_for_lines(1, T).await.unwrap();
    assert_eq!(lines, ["a fresh one"]);
    assert_eq!(agent.log().matches("command stored and acked").count(), 1);
}

#[tokio::test]
async fn a_command_that_reaches_the_agent_after_its_expiry_is_refused_and_reported() {
    let (w, bot) = start(4).await;
    let tmux = Tmux::start().unwrap();
    let gate = Gate::start(w.addr()).await;
    let agent = Agent::start(&gate.url(), TEST_API_KEY, "stalled").unwrap();
    agent.wait_connected(1, T).await.unwrap();
    agent
        .start_session(&tmux, &tmux.pane_id, "sess-c", "/w/c")
        .await
        .unwrap();
    let msg = w.notify("sess-c", "done").await.unwrap().message_id;

    // The link stalls towards the agent: the Worker pushes (and retries) the command into
    // it, then its time-to-live runs out and the chat hears it was not delivered.
    gate.down(false);
    w.reply(CHAT, 1, msg, "stale words").await;
    bot.wait_text("Not delivered", T).await.unwrap();
    // Now the held frames arrive, every one after the command's expiry.
    gate.down(true);
    let answer = wait_for("the agent's answer to the late command", T, || async {
        let typed = tmux.lines();
        if !typed.is_empty() {
            return Some(Err(typed));
        }
        bot.calls_of("sendMessage")
            .into_iter()
            .filter_map(|c| c.params["text"].as_str().map(str::to_owned))
            .find(|t| t.contains("after it expired"))
            .map(Ok)
    })
    .await
    .unwrap();
    let refused = answer.unwrap_or_else(|typed| panic!("the expired command was typed: {typed:?}"));
    assert!(refused.contains("Could not type"), "{refused}");
    assert!(refused.contains("not typed"), "{refused}");
    agent
        .wait_log("arrived after it expired", 1, T)
        .await
        .unwrap();
    // The connection still works, and only the fresh reply is typed.
    w.reply(CHAT, 2, msg, "fresh words").await;
    let lines = tmux.wait_for_lines(1, T).await.unwrap();
    assert_eq!(lines, ["fresh words"]);
    assert_eq!(agent.log().matches("command typed").count(), 1);
}

#[tokio::test]
async fn a_command_typed_before_its_ack_reached_the_worker_is_not_typed_again() {
    let (w, bot) = start(30).await;
    let tmux = Tmux::start().unwrap();
    let gate = Gate::start(w.addr()).await;
    let mut agent = Agent::start(&gate.url(), TEST_API_KEY, "unlucky").unwrap();
    agent.wait_connected(1, T).await.unwrap();
    agent
        .start_session(&tmux, &tmux.pane_id, "sess-d", "/w/d")
        .await
        .unwrap();
    let msg = w.notify("sess-d", "done").await.unwrap().message_id;

    // The link stalls towards the Worker: the agent stores, acks and types, but neither the
    // ack nor the result gets through before it is SIGKILLed and the link drops.
    gate.up(false);
    w.reply(CHAT, 1, msg, "exactly once").await;
    assert_eq!(tmux.wait_for_lines(1, T).await.unwrap(), ["exactly once"]);
    agent.wait_log("command typed", 1, T).await.unwrap();
    agent.kill9().await;
    gate.cut_all();
    assert!(bot.calls_of("setMessageReaction").is_empty());

    // Back: the Worker still has it unacked and sends it again; the agent acks it (👍) and
    // repeats its result, but does not type it again.
    agent.restart().unwrap();
    agent
        .wait_log("command delivered again: acked, not executed again", 1, T)
        .await
        .unwrap();
    bot.wait_call("setMessageReaction", T).await.unwrap();
    w.reply(CHAT, 2, msg, "next").await;
    let lines = tmux.wait_for_lines(2, T).await.unwrap();
    assert_eq!(lines, ["exactly once", "next"]);
    assert!(bot.calls_of("sendMessage").iter().all(|c| {
        let text = c.params["text"].as_str().unwrap_or_default();
        !text.contains("Not delivered") && !text.contains("Could not type")
    }));
}
