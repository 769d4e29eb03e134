//! A local stand-in for Telegram's Bot API: answers like Telegram, records every call, and
//! fails on demand.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

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
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    faults: VecDeque<(String, Fault)>,
    next_message_id: i64,
}

/// The stand-in server. Dropping it stops the server.
pub struct BotApi {
    addr: SocketAddr,
    token: String,
    inner: Arc<Mutex<Inner>>,
    task: JoinHandle<()>,
}

type Shared = (String, Arc<Mutex<Inner>>);

impl BotApi {
    /// Starts on a free loopback port, expecting `token` in `/bot<token>/<method>`.
    pub async fn start(token: &str) -> anyhow::Result<BotApi> {
        let inner = Arc::new(Mutex::new(Inner {
            next_message_id: 100,
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state: Shared = (token.to_owned(), inner.clone());
        let app = Router::new()
            .route("/{bot}/{method}", any(handle))
            .with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(BotApi {
            addr,
            token: token.to_owned(),
            inner,
            task,
        })
    }

    /// The base to give the Worker as `TELEGRAM_API_BASE`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token it expects.
    pub fn token(&self) -> &str {
        &self.token
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

    /// Makes the next call of `method` fail with `fault` (queued: several may be set).
    pub fn fail_next(&self, method: &str, fault: Fault) {
        self.lock().faults.push_back((method.to_owned(), fault));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for BotApi {
    fn drop(&mut self) {
        self.task.abort();
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
    let fault = {
        let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
        g.calls.push(Call {
            method: method.clone(),
            params: params.clone(),
            token_ok,
        });
        let pos = g.faults.iter().position(|(m, _)| *m == method);
        pos.and_then(|i| g.faults.remove(i)).map(|(_, f)| f)
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
        None => {}
    }
    let ok = |result: Value| {
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
            ok(json!({
                "message_id": message_id,
                "date": 1_700_000_000,
                "chat": {"id": chat_id, "type": if chat_id < 0 { "group" } else { "private" }},
                "text": text,
            }))
        }
        "answerCallbackQuery"
        | "setMessageReaction"
        | "setWebhook"
        | "deleteWebhook"
        | "setMyCommands" => ok(json!(true)),
        "getMe" => ok(
            json!({"id": 123456, "is_bot": true, "first_name": "CCR", "username": "ccr_test_bot"}),
        ),
        _ => telegram_error(StatusCode::NOT_FOUND, "Not Found", None),
    }
}
