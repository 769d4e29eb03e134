//! `/preview PORT` end to end: the real Worker (with `RELAY_TOKEN`), the real agent serving a
//! dev server of "its machine" (a local HTTP server on a free loopback port) through the relay
//! with the bridge library inside it, and the Bot API stand-in as the chat.

use std::time::Duration;

use ccr_e2e::agent::Agent;
use ccr_e2e::ports::free_port;
use ccr_e2e::telegram::{BotApi, Update};
use ccr_e2e::wait_for;
use ccr_e2e::worker::{start_with_bot, Worker, WorkerOptions, TEST_API_KEY};
use ccr_protocol::wire::route;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const CHAT: i64 = 4242;
/// Generous: workerd, the agent and its bridge share two cores with other test processes.
const T: Duration = Duration::from_secs(60);
/// What the dev server's front page says.
const PAGE_MARKER: &str = "dev server front page 7f3a";

// ---------------------------------------------------------------------------------------------
// The dev server: plain HTTP/1.1 on a loopback port, and a WebSocket on `/hot` (the kind a
// dev server's hot reload opens). Hand-written on tokio so one port serves both without
// another dependency.

struct DevServer {
    port: u16,
    task: JoinHandle<()>,
}

impl Drop for DevServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const HOT_PAGE: &str = "<!doctype html><html><body><p>hot reload page</p><script>\
const ws = new WebSocket(location.href.replace(/^http/, 'ws').replace(/hot\\.html$/, 'hot'));\
ws.onmessage = (e) => { if (e.data === 'reload') location.reload(); };\
</script></body></html>";

impl DevServer {
    async fn start() -> DevServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        DevServer { port, task }
    }
}

/// The request head, peeked (not consumed) so a WebSocket handshake can still read it.
async fn peek_head(stream: &TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 16 * 1024];
    for _ in 0..2000 {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            return Some(text[..end + 4].to_owned());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

async fn serve(mut stream: TcpStream) {
    let Some(head) = peek_head(&stream).await else {
        return;
    };
    if head.to_ascii_lowercase().contains("upgrade: websocket") {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg {
                let _ = ws.send(Message::text(format!("reload after {t}"))).await;
            }
        }
        return;
    }
    let mut consumed = vec![0u8; head.len()];
    if stream.read_exact(&mut consumed).await.is_err() {
        return;
    }
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (status, kind, body) = match path.as_str() {
        "/" => (
            "200 OK",
            "text/html",
            format!("<html><body><h1>{PAGE_MARKER}</h1></body></html>"),
        ),
        "/app.js" => (
            "200 OK",
            "text/javascript",
            "console.log('served through the preview');".to_owned(),
        ),
        "/hot.html" => ("200 OK", "text/html", HOT_PAGE.to_owned()),
        _ => ("404 Not Found", "text/plain", "no such page".to_owned()),
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A Worker with the Bot API stand-in, a connected agent for machine `devbox`, and a session
/// on it with a notification to reply to (its message id).
async fn setup(opts: WorkerOptions) -> (Worker, BotApi, Agent, i64) {
    let (w, bot) = start_with_bot(opts, &[CHAT]).await.unwrap();
    let agent = Agent::start(&w.base_url(), TEST_API_KEY, "devbox").unwrap();
    agent.wait_connected(1, T).await.unwrap();
    w.register("sess-pv", "devbox", Some("webapp"))
        .await
        .unwrap();
    let msg = w
        .notify("sess-pv", "the server is up")
        .await
        .unwrap()
        .message_id;
    (w, bot, agent, msg)
}

/// The link in a preview answer: its line that starts with `http`.
fn link_in(text: &str) -> String {
    text.lines()
        .find(|l| l.starts_with("http"))
        .unwrap_or_else(|| panic!("no link in {text:?}"))
        .trim()
        .to_owned()
}

/// A visitor's client: no credentials of any kind, a generous timeout.
fn visitor() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(T)
        .build()
        .unwrap()
}

/// GETs `url` until it answers `status`; returns the body.
async fn wait_status(url: &str, status: u16) -> String {
    let client = visitor();
    wait_for(&format!("{url} to answer {status}"), T, || async {
        let resp = client.get(url).send().await.ok()?;
        if resp.status().as_u16() != status {
            return None;
        }
        resp.text().await.ok()
    })
    .await
    .unwrap()
}

/// Sends `/preview PORT` as a reply and returns the chat's answer (its text).
async fn open_preview(w: &Worker, bot: &BotApi, update_id: i64, msg: i64, port: u16) -> String {
    w.reply(CHAT, update_id, msg, &format!("/preview {port}"))
        .await;
    bot.wait_text(&format!("Preview of port {port}"), T)
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The suites.

#[tokio::test]
async fn a_preview_serves_the_dev_server_is_listed_and_answers_410_once_stopped() {
    let (w, bot, agent, msg) = setup(WorkerOptions::default()).await;
    let dev = DevServer::start().await;

    let answer = open_preview(&w, &bot, 1, msg, dev.port).await;
    assert!(
        answer.contains("Anyone with this link can open it until"),
        "{answer}"
    );
    assert!(answer.contains("UTC"), "{answer}");
    assert!(answer.contains("/preview stop"), "{answer}");
    let url = link_in(&answer);
    let prefix = format!("{}{}/pv-", w.base_url(), route::RELAY);
    assert!(url.starts_with(&prefix), "{url}");
    assert!(url.ends_with('/'), "{url}");
    // The answer replies to the user's /preview message.
    let sent = bot.wait_message("Preview of port", T).await.unwrap();
    assert_eq!(sent["reply_parameters"]["message_id"], 1 + 10_000);

    // A visitor with nothing but the link sees the dev server's pages.
    let client = visitor();
    let front = client.get(&url).send().await.unwrap();
    assert_eq!(front.status(), 200);
    assert!(front.text().await.unwrap().contains(PAGE_MARKER));
    let js = client.get(format!("{url}app.js")).send().await.unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(
        js.text().await.unwrap(),
        "console.log('served through the preview');"
    );
    let missing = client.get(format!("{url}nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // /previews lists it with its session, machine, port, link and time left.
    w.send_update(&Update::message(2, CHAT).text("/previews"))
        .await
        .unwrap();
    let list = bot.wait_text("Open previews", T).await.unwrap();
    assert!(
        list.contains(&format!("webapp on devbox · port {}", dev.port)),
        "{list}"
    );
    assert!(list.contains(&url), "{list}");
    assert!(list.contains("left"), "{list}");

    // Asking again for the same port answers the same link, not a second channel.
    w.reply(CHAT, 3, msg, &format!("/preview {}", dev.port))
        .await;
    wait_for("the second answer", T, || async {
        let answers: Vec<String> = bot
            .calls_of("sendMessage")
            .iter()
            .filter_map(|c| c.params["text"].as_str().map(str::to_owned))
            .filter(|t| t.contains("Preview of port"))
            .collect();
        (answers.len() == 2).then_some(answers)
    })
    .await
    .map(|answers| assert_eq!(link_in(&answers[1]), url))
    .unwrap();

    // /preview stop in a reply to the session: the link answers 410 with a page saying so,
    // and the agent stops its bridge.
    w.reply(CHAT, 4, msg, "/preview stop").await;
    bot.wait_text("Preview ended", T).await.unwrap();
    let gone = wait_status(&url, 410).await;
    assert!(gone.contains("This preview has ended"), "{gone}");
    let gone = wait_status(&format!("{url}app.js"), 410).await;
    assert!(gone.contains("This preview has ended"), "{gone}");
    agent.wait_log("preview ended", 1, T).await.unwrap();

    // Nothing open any more.
    w.send_update(&Update::message(5, CHAT).text("/previews"))
        .await
        .unwrap();
    bot.wait_text("No open previews", T).await.unwrap();
}

#[tokio::test]
async fn a_port_nobody_listens_on_is_a_clear_error_and_a_session_end_ends_its_preview() {
    let (w, bot, _agent, msg) = setup(WorkerOptions::default()).await;

    // Nobody listens: the machine says so, the chat is told, nothing is served.
    let unused = free_port();
    w.reply(CHAT, 1, msg, &format!("/preview {unused}")).await;
    let why = bot
        .wait_text(
            &format!("nothing is listening on port {unused} on devbox"),
            T,
        )
        .await
        .unwrap();
    assert!(why.contains("No preview"), "{why}");

    // Bad ports and a /preview that names no session are refused with how to use it.
    w.reply(CHAT, 2, msg, "/preview 70000").await;
    bot.wait_text("(1–65535)", T).await.unwrap();
    w.send_update(&Update::message(3, CHAT).text("/preview 3000"))
        .await
        .unwrap();
    bot.wait_text("or as a reply to a notification of the session", T)
        .await
        .unwrap();

    // A real preview ends when its session ends.
    let dev = DevServer::start().await;
    let url = link_in(&open_preview(&w, &bot, 4, msg, dev.port).await);
    let page = wait_status(&url, 200).await;
    assert!(page.contains(PAGE_MARKER), "{page}");
    let (status, body) = w
        .post_api(
            route::SESSIONS_UNREGISTER,
            TEST_API_KEY,
            &json!({"sessionId": "sess-pv"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let gone = wait_status(&url, 410).await;
    assert!(gone.contains("This preview has ended"), "{gone}");
}

#[tokio::test]
async fn an_expired_preview_answers_410_and_the_chat_is_told() {
    // A short time-to-live through the Worker's setting.
    let opts = WorkerOptions::default().var("PREVIEW_TTL_SECS", "4");
    let (w, bot, agent, msg) = setup(opts).await;
    let dev = DevServer::start().await;
    let url = link_in(&open_preview(&w, &bot, 1, msg, dev.port).await);
    bot.wait_text("has expired", T).await.unwrap();
    let gone = wait_status(&url, 410).await;
    assert!(gone.contains("This preview has ended"), "{gone}");
    // The agent stopped its bridge (its own timer or the Worker's stop).
    agent.wait_log("preview ended", 1, T).await.unwrap();
}

#[tokio::test]
async fn without_a_relay_token_a_preview_is_refused_plainly() {
    let mut opts = WorkerOptions::default();
    opts.secrets.retain(|(name, _)| name != "RELAY_TOKEN");
    let (w, bot, _agent, msg) = setup(opts).await;
    let dev = DevServer::start().await;
    w.reply(CHAT, 1, msg, &format!("/preview {}", dev.port))
        .await;
    let why = bot.wait_text("No preview", T).await.unwrap();
    assert!(why.contains("RELAY_TOKEN"), "{why}");
}

/// The hot-reload half: a page that opens a WebSocket, loaded through the preview, and that
/// WebSocket opened through the preview's link too (the agent's built-in bridge holds the
/// relay's WebSocket transport, which carries callers' WebSockets).
#[tokio::test]
async fn a_preview_carries_the_dev_servers_websocket_for_hot_reload() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (w, bot, _agent, msg) = setup(WorkerOptions::default()).await;
    let dev = DevServer::start().await;
    let url = link_in(&open_preview(&w, &bot, 1, msg, dev.port).await);

    let page = wait_status(&format!("{url}hot.html"), 200).await;
    assert!(page.contains("new WebSocket"), "{page}");
    // What the page's script opens: the same link, ws: scheme, path `hot`.
    let ws_url = format!("{}hot", url.replacen("http", "ws", 1));
    let (mut ws, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(&ws_url))
        .await
        .expect("the WebSocket handshake timed out")
        .expect("the WebSocket handshake through the preview failed");
    ws.send(Message::text("saved main.rs")).await.unwrap();
    let answer = tokio::time::timeout(T, ws.next())
        .await
        .expect("no answer through the WebSocket")
        .expect("the WebSocket closed")
        .unwrap();
    assert_eq!(answer, Message::text("reload after saved main.rs"));
}

#[tokio::test]
async fn with_a_host_suffix_the_link_is_the_channels_own_host() {
    let opts = WorkerOptions::default().var("RELAY_HOST_SUFFIX", "relay.test");
    let (w, bot, _agent, msg) = setup(opts).await;
    let dev = DevServer::start().await;
    let url = link_in(&open_preview(&w, &bot, 1, msg, dev.port).await);
    let host = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once(':'))
        .map(|(host, _)| host.to_owned())
        .unwrap_or_else(|| panic!("not a host link: {url}"));
    assert!(
        host.starts_with("pv-") && host.ends_with(".relay.test"),
        "{url}"
    );
    assert_eq!(url, format!("http://{host}:{}/", w.addr().port()));
    // The host resolves to the Worker here (in production: a wildcard DNS record and route).
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(T)
        .resolve(&host, w.addr())
        .build()
        .unwrap();
    let page = client.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains(PAGE_MARKER));
    w.reply(CHAT, 2, msg, "/preview stop").await;
    bot.wait_text("Preview ended", T).await.unwrap();
    let gone = client.get(&url).send().await.unwrap();
    assert_eq!(gone.status(), 410);
    assert!(gone
        .text()
        .await
        .unwrap()
        .contains("This preview has ended"));
}

#[tokio::test]
async fn with_a_relay_public_key_visitors_need_it_and_the_answer_says_so() {
    let opts = WorkerOptions::default().secret("RELAY_PUBLIC_KEY", "visitor-key-42");
    let (w, bot, _agent, msg) = setup(opts).await;
    let dev = DevServer::start().await;
    let answer = open_preview(&w, &bot, 1, msg, dev.port).await;
    assert!(
        answer.contains("Visitors also need the relay's public key"),
        "{answer}"
    );
    assert!(
        !answer.contains("visitor-key-42"),
        "the key is never in the chat: {answer}"
    );
    let url = link_in(&answer);
    let client = visitor();
    let without = client.get(&url).send().await.unwrap();
    assert_eq!(without.status(), 401);
    let with = client
        .get(format!("{url}?_relay_key=visitor-key-42"))
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
    assert!(with.text().await.unwrap().contains(PAGE_MARKER));
}

#[tokio::test]
async fn a_preview_serves_again_after_its_agent_restarts_and_ends_once_its_port_is_gone() {
    let (w, bot, mut agent, msg) = setup(WorkerOptions::default()).await;
    let dev = DevServer::start().await;
    let port = dev.port;
    let url = link_in(&open_preview(&w, &bot, 1, msg, port).await);
    assert!(wait_status(&url, 200).await.contains(PAGE_MARKER));

    // SIGKILL: the bridge dies with the agent. Once it is back, the Worker asks again and the
    // same link serves, with nothing new said in the chat.
    agent.kill9().await;
    agent.restart().unwrap();
    agent.wait_connected(2, T).await.unwrap();
    assert!(wait_status(&url, 200).await.contains(PAGE_MARKER));
    let answers = || {
        bot.calls_of("sendMessage")
            .iter()
            .filter_map(|c| c.params["text"].as_str().map(str::to_owned))
            .filter(|t| t.contains("Preview of port") || t.contains("preview of port"))
            .count()
    };
    assert_eq!(answers(), 1);

    // The dev server is gone when the agent comes back: the preview ends, the chat is told
    // why, and the link says it has ended.
    drop(dev);
    agent.kill9().await;
    agent.restart().unwrap();
    agent.wait_connected(3, T).await.unwrap();
    let told = bot.wait_text("could not serve it again", T).await.unwrap();
    assert!(told.contains(&format!("port {port}")), "{told}");
    let gone = wait_status(&url, 410).await;
    assert!(gone.contains("This preview has ended"), "{gone}");
}
