//! A local stand-in for Telegram's Bot API: answers like Telegram, records every call, and
//! fails on demand — one call at a time ([`BotApi::fail_next`]) or as a whole outage: not
//! listening at all ([`BotApi::stop_listening`]: connections refused), listening but
//! answering every call 500 ([`BotApi::answer_500s`]), then back ([`BotApi::come_back`]).
//!
//! The server listens on an internal port; the address the Worker is given is a small TCP
//! gate in front of it, which is what stops listening (and cuts the open connections, so a
//! pooled keep-alive connection cannot outlive the outage).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// One recorded Bot API call.
#[derive(Debug, Clone)]
pub struct Call {
    /// The method, e.g. `sendMessage`.
    pub method: String,
    /// The parameters, from the JSON body, a form body or the query string.
    pub params: Value,
    /// Whether the token in the path was the expected one.
    pub token_ok: bool,
    /// Whether it was answered `ok: true`.
    pub ok: bool,
    /// The id of the message a successful `sendMessage` made.
    pub message_id: Option<i64>,
}

/// A failure to answer with, once.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 with `parameters.retry_after`.
    TooManyRequests {
        /// Seconds Telegram asks the caller to wait.
        retry_after: u64,
    },
    /// 400 with this description.
    BadRequest(String),
    /// 500, as Telegram gives on its own trouble.
    Internal,
    /// No answer at all for ten minutes (a half-open connection during an outage), then 500.
    Hang,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    faults: VecDeque<(String, Fault)>,
    next_message_id: i64,
    /// Every call is answered 500 while set.
    all_500: bool,
    /// Chats with topics (a forum supergroup, or a private chat with topics enabled).
    forum_chats: std::collections::HashSet<i64>,
    /// Topics by (chat, message_thread_id).
    topics: std::collections::BTreeMap<(i64, i64), Topic>,
    /// Files `getFile` knows, by file_id.
    files: std::collections::HashMap<String, StoredFile>,
    /// The file paths downloaded from `/file/bot<token>/…`, in order.
    downloads: Vec<String>,
}

/// A file the stand-in serves, as Telegram keeps one.
#[derive(Debug, Clone)]
struct StoredFile {
    /// `getFile`'s `file_path`.
    path: String,
    bytes: Arc<Vec<u8>>,
    /// The download answers 404 (the file is gone from Telegram's side).
    lost: bool,
}

/// The most a bot may download from Telegram (`getFile` refuses bigger files).
pub const BOT_FILE_LIMIT: usize = 20 * 1024 * 1024;

/// A forum topic as the stand-in keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// Its name (1-128 characters).
    pub name: String,
    /// Closed with `closeForumTopic` (and not reopened since).
    pub closed: bool,
}

/// The stand-in server. Dropping it stops the server.
pub struct BotApi {
    addr: SocketAddr,
    token: String,
    inner: Arc<Mutex<Inner>>,
    task: JoinHandle<()>,
    internal: SocketAddr,
    gate: Mutex<Option<JoinHandle<()>>>,
    cut: tokio::sync::watch::Sender<u64>,
}

/// Forwards every connection on `listener` to `internal` until `cut` changes.
fn spawn_gate(
    listener: tokio::net::TcpListener,
    internal: SocketAddr,
    cut: &tokio::sync::watch::Sender<u64>,
) -> JoinHandle<()> {
    let cut = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut cut = cut.subscribe();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(internal).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut.changed() => {}
                }
            });
        }
    })
}

type Shared = (String, Arc<Mutex<Inner>>);

impl BotApi {
    /// Starts on a free loopback port, expecting `token` in `/bot<token>/<method>`.
    pub async fn start(token: &str) -> anyhow::Result<BotApi> {
        let inner = Arc::new(Mutex::new(Inner {
            next_message_id: 100,
            forum_chats: Default::default(),
            topics: Default::default(),
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let internal = listener.local_addr()?;
        let state: Shared = (token.to_owned(), inner.clone());
        let app = Router::new()
            .route("/{bot}/{method}", any(handle))
            .route("/file/{bot}/{*path}", any(download))
            .with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let public = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = public.local_addr()?;
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let gate = spawn_gate(public, internal, &cut);
        Ok(BotApi {
            addr,
            token: token.to_owned(),
            inner,
            task,
            internal,
            gate: Mutex::new(Some(gate)),
            cut,
        })
    }

    /// Telegram unreachable: stops listening (connections are refused) and cuts every open
    /// connection. [`BotApi::come_back`] listens again on the same address.
    pub async fn stop_listening(&self) {
        let gate = self.gate.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(gate) = gate {
            gate.abort();
            let _ = gate.await; // the listener is closed once the task is gone
        }
        self.cut.send_modify(|g| *g += 1);
    }

    /// Telegram failing: listening again (if it stopped) but answering every call 500.
    pub async fn answer_500s(&self) -> anyhow::Result<()> {
        self.lock().all_500 = true;
        self.listen().await
    }

    /// Telegram back: listening and answering normally.
    pub async fn come_back(&self) -> anyhow::Result<()> {
        self.lock().all_500 = false;
        self.listen().await
    }

    async fn listen(&self) -> anyhow::Result<()> {
        if self
            .gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return Ok(());
        }
        let listener = crate::wait_for(
            "the Bot API stand-in's port to be free again",
            Duration::from_secs(10),
            || async { tokio::net::TcpListener::bind(self.addr).await.ok() },
        )
        .await?;
        let gate = spawn_gate(listener, self.internal, &self.cut);
        *self.gate.lock().unwrap_or_else(|p| p.into_inner()) = Some(gate);
        Ok(())
    }

    /// The base to give the Worker as `TELEGRAM_API_BASE`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token it expects.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Makes `bytes` a file `getFile` knows as `file_id`, at `file_path` (e.g.
    /// `photos/file_0.jpg`), downloadable from `{base}/file/bot<token>/{file_path}`.
    pub fn add_file(&self, file_id: &str, file_path: &str, bytes: Vec<u8>) {
        self.lock().files.insert(
            file_id.to_owned(),
            StoredFile {
                path: file_path.to_owned(),
                bytes: Arc::new(bytes),
                lost: false,
            },
        );
    }

    /// `getFile` still answers for `file_id`, but its download answers 404.
    pub fn lose_file(&self, file_id: &str) {
        if let Some(f) = self.lock().files.get_mut(file_id) {
            f.lost = true;
        }
    }

    /// The file paths downloaded so far, in order.
    pub fn downloads(&self) -> Vec<String> {
        self.lock().downloads.clone()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The calls of one method, in order.
    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }

    /// Gives `chat` topics, as a forum supergroup or a private chat with topics enabled has:
    /// `createForumTopic` and friends work there and nowhere else.
    pub fn enable_topics(&self, chat: i64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.forum_chats.insert(chat);
    }

    /// Closes topic `thread` of `chat` as a person in the chat would (not through the bot).
    pub fn close_topic(&self, chat: i64, thread: i64) {
        let mut g = self.lock();
        if let Some(topic) = g.topics.get_mut(&(chat, thread)) {
            topic.closed = true;
        }
    }

    /// The topics of `chat` by `message_thread_id`.
    pub fn topics(&self, chat: i64) -> Vec<(i64, Topic)> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.topics
            .iter()
            .filter(|((c, _), _)| *c == chat)
            .map(|((_, t), topic)| (*t, topic.clone()))
            .collect()
    }

    /// Makes the next call of `method` fail with `fault` (queued: several may be set).
    pub fn fail_next(&self, method: &str, fault: Fault) {
        self.lock().faults.push_back((method.to_owned(), fault));
    }

    /// Waits up to `timeout` for a `sendMessage` whose text contains `needle`; returns its
    /// parameters.
    pub async fn wait_message(&self, needle: &str, timeout: Duration) -> anyhow::Result<Value> {
        crate::wait_for(
            &format!("a Telegram message containing {needle:?}"),
            timeout,
            || async {
                self.calls_of("sendMessage")
                    .into_iter()
                    .map(|c| c.params)
                    .find(|p| p["text"].as_str().is_some_and(|t| t.contains(needle)))
            },
        )
        .await
    }

    /// The text of the first sendMessage containing `needle`, waiting up to `timeout`.
    pub async fn wait_text(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let params = self.wait_message(needle, timeout).await?;
        Ok(params["text"].as_str().unwrap_or_default().to_owned())
    }

    /// Waits up to `timeout` for a call of `method`; returns the latest.
    pub async fn wait_call(&self, method: &str, timeout: Duration) -> anyhow::Result<Call> {
        crate::wait_for(&format!("a {method} call"), timeout, || async {
            self.calls_of(method).pop()
        })
        .await
    }

    /// The calls after the first `n` (cheap enough to poll in a tight loop).
    pub fn calls_since(&self, n: usize) -> Vec<Call> {
        self.lock()
            .calls
            .get(n..)
            .map(<[Call]>::to_vec)
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for BotApi {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(gate) = self.gate.lock().unwrap_or_else(|p| p.into_inner()).take() {
            gate.abort();
        }
        self.cut.send_modify(|g| *g += 1);
    }
}

fn telegram_error(status: StatusCode, description: &str, extra: Option<Value>) -> Response {
    let mut body = json!({"ok": false, "error_code": status.as_u16(), "description": description});
    if let Some(params) = extra {
        body["parameters"] = params;
    }
    (status, Json(body)).into_response()
}

fn parse_params(headers: &HeaderMap, query: Option<&str>, body: &Bytes) -> Value {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/json") {
        return serde_json::from_slice(body).unwrap_or(Value::Null);
    }
    let source = if body.is_empty() {
        query.unwrap_or("").as_bytes().to_vec()
    } else {
        body.to_vec()
    };
    let map: serde_json::Map<String, Value> = url::form_urlencoded::parse(&source)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    Value::Object(map)
}

async fn handle(
    State((token, inner)): State<Shared>,
    Path((bot, method)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = parse_params(&headers, query.as_deref(), &body);
    let token_ok = bot.strip_prefix("bot") == Some(token.as_str());
    let (fault, index) = {
        let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
        g.calls.push(Call {
            method: method.clone(),
            params: params.clone(),
            token_ok,
            ok: false,
            message_id: None,
        });
        let index = g.calls.len() - 1;
        let fault = if g.all_500 {
            Some(Fault::Internal)
        } else {
            let pos = g.faults.iter().position(|(m, _)| *m == method);
            pos.and_then(|i| g.faults.remove(i)).map(|(_, f)| f)
        };
        (fault, index)
    };
    if !token_ok {
        return telegram_error(StatusCode::UNAUTHORIZED, "Unauthorized", None);
    }
    if !params.is_object() {
        return telegram_error(
            StatusCode::BAD_REQUEST,
            "Bad Request: invalid JSON body",
            None,
        );
    }
    match fault {
        Some(Fault::TooManyRequests { retry_after }) => {
            return telegram_error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Too Many Requests: retry after {retry_after}"),
                Some(json!({"retry_after": retry_after})),
            )
        }
        Some(Fault::BadRequest(d)) => return telegram_error(StatusCode::BAD_REQUEST, &d, None),
        Some(Fault::Internal) => {
            return telegram_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                None,
            )
        }
        Some(Fault::Hang) => {
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
            return telegram_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                None,
            );
        }
        None => {}
    }
    let ok = |result: Value| {
        let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(call) = g.calls.get_mut(index) {
            call.ok = true;
            call.message_id = result.get("message_id").and_then(Value::as_i64);
        }
        (StatusCode::OK, Json(json!({"ok": true, "result": result}))).into_response()
    };
    match method.as_str() {
        "sendMessage" | "editMessageText" => {
            let chat_id = params.get("chat_id").cloned().unwrap_or(Value::Null);
            let text = params.get("text").and_then(Value::as_str).unwrap_or("");
            if chat_id.is_null() || chat_id == json!("") {
                return telegram_error(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: chat_id is empty",
                    None,
                );
            }
            if text.is_empty() {
                return telegram_error(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: message text is empty",
                    None,
                );
            }
            if text.encode_utf16().count() > 4096 {
                return telegram_error(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: message is too long",
                    None,
                );
            }
            let chat_id = chat_id
                .as_i64()
                .or_else(|| chat_id.as_str().and_then(|s| s.parse().ok()))
                .unwrap_or(0);
            // Into a topic: Telegram refuses a thread the chat does not have, and a closed
            // topic (the bot is no admin that may write there).
            let thread = params.get("message_thread_id").and_then(Value::as_i64);
            if let (Some(t), "sendMessage") = (thread, method.as_str()) {
                let g = inner.lock().unwrap_or_else(|p| p.into_inner());
                let closed = g.topics.get(&(chat_id, t)).map(|topic| topic.closed);
                drop(g);
                match closed {
                    None => {
                        return telegram_error(
                            StatusCode::BAD_REQUEST,
                            "Bad Request: message thread not found",
                            None,
                        )
                    }
                    Some(true) => {
                        return telegram_error(
                            StatusCode::BAD_REQUEST,
                            "Bad Request: TOPIC_CLOSED",
                            None,
                        )
                    }
                    Some(false) => {}
                }
            }
            let message_id = if method == "editMessageText" {
                params
                    .get("message_id")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            } else {
                let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
                g.next_message_id += 1;
                g.next_message_id
            };
            let mut result = json!({
                "message_id": message_id,
                "date": 1_700_000_000,
                "chat": {"id": chat_id, "type": if chat_id < 0 { "group" } else { "private" }},
                "text": text,
            });
            if let Some(t) = thread {
                result["message_thread_id"] = json!(t);
                result["is_topic_message"] = json!(true);
            }
            ok(result)
        }
        "editMessageReplyMarkup" => {
            let chat_id = params.get("chat_id").and_then(Value::as_i64).unwrap_or(0);
            let message_id = params
                .get("message_id")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if chat_id == 0 || message_id == 0 {
                return telegram_error(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: message to edit not found",
                    None,
                );
            }
            ok(json!({"message_id": message_id, "date": 1_700_000_000, "chat": {"id": chat_id}}))
        }
        "createForumTopic" | "editForumTopic" | "closeForumTopic" | "reopenForumTopic" => {
            let chat_id = params.get("chat_id").cloned().unwrap_or(Value::Null);
            let chat_id = chat_id
                .as_i64()
                .or_else(|| chat_id.as_str().and_then(|s| s.parse().ok()));
            let thread = params.get("message_thread_id").and_then(Value::as_i64);
            let name = params.get("name").and_then(Value::as_str);
            let bad = |d: &str| telegram_error(StatusCode::BAD_REQUEST, d, None);
            let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
            let Some(chat_id) = chat_id else {
                drop(g);
                return bad("Bad Request: chat_id is empty");
            };
            if !g.forum_chats.contains(&chat_id) {
                drop(g);
                return bad("Bad Request: the chat is not a forum");
            }
            if let Some(n) = name {
                if n.is_empty() || n.chars().count() > 128 {
                    drop(g);
                    return bad("Bad Request: TOPIC_NAME_INVALID");
                }
            }
            if method == "createForumTopic" {
                let Some(n) = name else {
                    drop(g);
                    return bad("Bad Request: TOPIC_NAME_INVALID");
                };
                // A topic's id is the id of the service message that created it.
                g.next_message_id += 1;
                let id = g.next_message_id;
                g.topics.insert(
                    (chat_id, id),
                    Topic {
                        name: n.to_owned(),
                        closed: false,
                    },
                );
                drop(g);
                return ok(json!({"message_thread_id": id, "name": n, "icon_color": 7322096}));
            }
            let Some(topic) = thread.and_then(|t| g.topics.get_mut(&(chat_id, t))) else {
                drop(g);
                return bad("Bad Request: TOPIC_ID_INVALID");
            };
            let changed = match method.as_str() {
                "editForumTopic" => match name {
                    Some(n) if n != topic.name => {
                        topic.name = n.to_owned();
                        true
                    }
                    _ => false,
                },
                "closeForumTopic" => !std::mem::replace(&mut topic.closed, true),
                _ => std::mem::replace(&mut topic.closed, false),
            };
            drop(g);
            if changed {
                ok(json!(true))
            } else {
                bad("Bad Request: TOPIC_NOT_MODIFIED")
            }
        }
        "answerCallbackQuery"
        | "setMessageReaction"
        | "setWebhook"
        | "deleteWebhook"
        | "setMyCommands" => ok(json!(true)),
        "getFile" => {
            let id = params.get("file_id").and_then(Value::as_str).unwrap_or("");
            let file = inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .files
                .get(id)
                .cloned();
            match file {
                None => telegram_error(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: invalid file_id",
                    None,
                ),
                Some(f) if f.bytes.len() > BOT_FILE_LIMIT => telegram_error(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: file is too big",
                    None,
                ),
                Some(f) => ok(json!({
                    "file_id": id,
                    "file_unique_id": format!("u-{id}"),
                    "file_size": f.bytes.len(),
                    "file_path": f.path,
                })),
            }
        }
        "getMe" => ok(
            json!({"id": 123456, "is_bot": true, "first_name": "CCR", "username": "ccr_test_bot"}),
        ),
        _ => telegram_error(StatusCode::NOT_FOUND, "Not Found", None),
    }
}

/// `GET /file/bot<token>/<file_path>`: a file's bytes, as Telegram serves downloads.
async fn download(
    State((token, inner)): State<Shared>,
    Path((bot, path)): Path<(String, String)>,
) -> Response {
    if bot.strip_prefix("bot") != Some(token.as_str()) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    let file = {
        let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
        g.downloads.push(path.clone());
        g.files.values().find(|f| f.path == path).cloned()
    };
    match file {
        Some(f) if !f.lost => (
            StatusCode::OK,
            [("content-type", "application/octet-stream")],
            f.bytes.as_ref().clone(),
        )
            .into_response(),
        _ => telegram_error(StatusCode::NOT_FOUND, "Not Found", None),
    }
}

/// The user id updates come from unless a test sets another.
pub const TEST_USER_ID: i64 = 77;

/// The date every built update carries.
const DATE: i64 = 1_700_000_000;

#[derive(Debug, Clone)]
enum Kind {
    Message,
    Edited,
    Callback { query_id: String, data: String },
}

/// A Telegram update as the Bot API posts it to a webhook, built field by field:
///
/// - `Update::reply(1, CHAT, note, "hi")`: a reply to a notification (the same as
///   `Update::message(1, CHAT).text("hi").reply_to(note)`);
/// - `Update::message(2, CHAT).photo().caption("see").reply_to(note)`: a non-text message;
/// - `Update::message(3, CHAT).text("x").edited()`: an `edited_message`;
/// - `Update::callback(4, CHAT, "cbq-1", "cmd:tok:yes").message_id(101)`: a button press on
///   message 101.
///
/// By default the message comes from [`TEST_USER_ID`] in a private chat and its id is
/// `update_id + 10_000`.
#[derive(Debug, Clone)]
pub struct Update {
    update_id: i64,
    chat: i64,
    from: i64,
    message_id: i64,
    kind: Kind,
    text: Option<String>,
    caption: Option<String>,
    photo: bool,
    /// A photo's sizes, a document or a voice note: (message field, its JSON).
    attachment: Option<(&'static str, Value)>,
    reply_to: Option<i64>,
    topic: Option<i64>,
}

impl Update {
    /// A message in `chat`, with no content yet.
    pub fn message(update_id: i64, chat: i64) -> Update {
        Update {
            update_id,
            chat,
            from: TEST_USER_ID,
            message_id: update_id + 10_000,
            kind: Kind::Message,
            text: None,
            caption: None,
            photo: false,
            attachment: None,
            reply_to: None,
            topic: None,
        }
    }

    /// A text message in `chat` replying to message `to`: how a person answers a notification.
    pub fn reply(update_id: i64, chat: i64, to: i64, text: &str) -> Update {
        Update::message(update_id, chat).text(text).reply_to(to)
    }

    /// A press of the inline button carrying `data` (on the message set with
    /// [`Update::message_id`]), with callback query id `query_id`.
    pub fn callback(update_id: i64, chat: i64, query_id: &str, data: &str) -> Update {
        Update {
            kind: Kind::Callback {
                query_id: query_id.to_owned(),
                data: data.to_owned(),
            },
            ..Update::message(update_id, chat)
        }
    }

    /// The message's text (for a callback: the text of the message the button is on).
    pub fn text(mut self, text: &str) -> Update {
        self.text = Some(text.to_owned());
        self
    }

    /// Makes it a reply to message `message_id` (a bot's message, as notifications are).
    pub fn reply_to(mut self, message_id: i64) -> Update {
        self.reply_to = Some(message_id);
        self
    }

    /// Sends it in topic `thread` of a chat with topics (a forum supergroup for a negative
    /// chat id, else a private chat with topics), marked as Telegram marks it: a reply to the
    /// topic's first message unless it replies to another.
    pub fn in_topic(mut self, thread: i64) -> Update {
        self.topic = Some(thread);
        self
    }

    /// The message's own id (for a callback: the id of the message the button is on).
    pub fn message_id(mut self, message_id: i64) -> Update {
        self.message_id = message_id;
        self
    }

    /// The sender's user id.
    pub fn from(mut self, user: i64) -> Update {
        self.from = user;
        self
    }

    /// Attaches a photo.
    pub fn photo(mut self) -> Update {
        self.photo = true;
        self
    }

    /// Attaches a photo in these sizes: `(file_id, file_size, width, height)`, smallest first
    /// as Telegram lists them.
    pub fn photo_sizes(mut self, sizes: &[(&str, u64, u64, u64)]) -> Update {
        let sizes: Vec<Value> = sizes
            .iter()
            .map(|(id, size, w, h)| {
                json!({"file_id": id, "file_unique_id": format!("u-{id}"), "file_size": size,
                       "width": w, "height": h})
            })
            .collect();
        self.attachment = Some(("photo", Value::Array(sizes)));
        self
    }

    /// Attaches a document.
    pub fn document(mut self, file_id: &str, file_name: &str, size: u64) -> Update {
        self.attachment = Some((
            "document",
            json!({"file_id": file_id, "file_unique_id": format!("u-{file_id}"),
                   "file_name": file_name, "mime_type": "application/octet-stream",
                   "file_size": size}),
        ));
        self
    }

    /// Attaches a voice note.
    pub fn voice(mut self, file_id: &str, size: u64) -> Update {
        self.attachment = Some((
            "voice",
            json!({"file_id": file_id, "file_unique_id": format!("u-{file_id}"),
                   "duration": 3, "mime_type": "audio/ogg", "file_size": size}),
        ));
        self
    }

    /// The caption of an attachment.
    pub fn caption(mut self, caption: &str) -> Update {
        self.caption = Some(caption.to_owned());
        self
    }

    /// Makes it an `edited_message`.
    pub fn edited(mut self) -> Update {
        self.kind = Kind::Edited;
        self
    }

    /// The update's id.
    pub fn update_id(&self) -> i64 {
        self.update_id
    }

    /// The JSON Telegram would post.
    pub fn json(&self) -> Value {
        let chat = match (self.topic, self.chat < 0) {
            (Some(_), true) => {
                json!({"id": self.chat, "type": "supergroup", "title": "CCR", "is_forum": true})
            }
            _ => json!({"id": self.chat, "type": "private"}),
        };
        let mut message = json!({
            "message_id": self.message_id,
            "date": DATE,
            "chat": chat,
        });
        let from = json!({"id": self.from, "is_bot": false, "first_name": "Ada"});
        if let Some(text) = &self.text {
            message["text"] = json!(text);
        }
        if let Kind::Callback { query_id, data } = &self.kind {
            return json!({"update_id": self.update_id, "callback_query": {
                "id": query_id, "chat_instance": "x", "from": from,
                "message": message, "data": data,
            }});
        }
        message["from"] = from;
        if self.photo {
            message["photo"] =
                json!([{"file_id": "f", "file_unique_id": "u", "width": 9, "height": 9}]);
        }
        if let Some((field, value)) = &self.attachment {
            message[*field] = value.clone();
        }
        if let Some(caption) = &self.caption {
            message["caption"] = json!(caption);
        }
        if let Some(thread) = self.topic {
            message["message_thread_id"] = json!(thread);
            message["is_topic_message"] = json!(true);
            if self.reply_to.is_none() {
                message["reply_to_message"] = json!({
                    "message_id": thread, "date": DATE, "chat": chat,
                    "message_thread_id": thread, "is_topic_message": true,
                    "forum_topic_created": {"name": "topic", "icon_color": 7322096},
                });
            }
        }
        if let Some(to) = self.reply_to {
            message["reply_to_message"] = json!({
                "message_id": to, "date": DATE, "chat": chat,
                "from": {"id": 1, "is_bot": true, "first_name": "CCR"}, "text": "notification",
            });
        }
        match self.kind {
            Kind::Edited => {
                message["edit_date"] = json!(DATE + 1);
                json!({"update_id": self.update_id, "edited_message": message})
            }
            _ => json!({"update_id": self.update_id, "message": message}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_what_telegram_posts() {
        let want = json!({"update_id": 7, "message": {
            "message_id": 10_007, "date": 1_700_000_000,
            "chat": {"id": 4242, "type": "private"},
            "from": {"id": TEST_USER_ID, "is_bot": false, "first_name": "Ada"},
            "text": "run the tests",
            "reply_to_message": {"message_id": 101, "date": 1_700_000_000,
                "chat": {"id": 4242, "type": "private"},
                "from": {"id": 1, "is_bot": true, "first_name": "CCR"}, "text": "notification"}
        }});
        assert_eq!(Update::reply(7, 4242, 101, "run the tests").json(), want);
    }

    #[test]
    fn a_message_in_a_topic_is_what_telegram_posts() {
        let plain = Update::message(8, -100_777)
            .text("go on")
            .in_topic(55)
            .json();
        let m = &plain["message"];
        assert_eq!(
            m["chat"],
            json!({"id": -100_777, "type": "supergroup", "title": "CCR", "is_forum": true})
        );
        assert_eq!(
            (
                m["message_thread_id"].clone(),
                m["is_topic_message"].clone()
            ),
            (json!(55), json!(true))
        );
        // Not a reply: marked as one to the topic's first message, as Telegram does.
        assert_eq!(m["reply_to_message"]["message_id"], 55);
        assert!(m["reply_to_message"].get("forum_topic_created").is_some());
        let reply = Update::message(9, -100_777)
            .text("x")
            .in_topic(55)
            .reply_to(70)
            .json();
        assert_eq!(reply["message"]["reply_to_message"]["message_id"], 70);
        // A private chat with topics stays a private chat.
        let private = Update::message(10, 4242).text("x").in_topic(55).json();
        assert_eq!(private["message"]["chat"]["type"], "private");
    }

    #[test]
    fn edits_photos_and_button_presses_have_their_own_shapes() {
        let edited = Update::message(3, 5).text("x").edited().json();
        assert_eq!(edited["edited_message"]["text"], "x");
        assert_eq!(edited["edited_message"]["edit_date"], 1_700_000_001);
        assert!(edited.get("message").is_none());

        let photo = Update::message(4, 5).photo().caption("see").json();
        assert_eq!(photo["message"]["photo"][0]["file_id"], "f");
        assert_eq!(photo["message"]["caption"], "see");
        assert!(photo["message"].get("text").is_none());

        let press = Update::callback(6, 5, "cbq-1", "cmd:t:yes")
            .message_id(101)
            .text("n")
            .json();
        let q = &press["callback_query"];
        assert_eq!(q["id"], "cbq-1");
        assert_eq!(q["data"], "cmd:t:yes");
        assert_eq!(q["from"]["id"], TEST_USER_ID);
        assert_eq!(
            q["message"],
            json!({"message_id": 101, "date": 1_700_000_000,
                   "chat": {"id": 5, "type": "private"}, "text": "n"})
        );
    }
}
