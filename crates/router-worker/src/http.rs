//! The Worker shell: the few workers-rs calls every binding needs to answer HTTP, in one
//! place (wasm32 only).
//!
//! Handlers return [`Reply`] and use `?`; [`finish`] turns an [`ApiError`] answer into its
//! `{"ok":false,"error":...}` response (with `Retry-After` when set) and hands failures
//! underneath to the runtime. Nothing here panics: a panic in a Durable Object hangs the
//! request and resets every object in the isolate.

use ccr_protocol::api::ErrorBody;
use ccr_protocol::wire;
use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::{Date, Env, Error, Headers, Method, Request, RequestInit, Response};

use crate::error::{self, ApiError};
use crate::store::StoreError;

/// What a request handler gives back: its response, or why there is none.
pub(crate) type Reply = std::result::Result<Response, ApiError>;

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Runtime(e)
    }
}

impl From<worker::KvError> for ApiError {
    fn from(e: worker::KvError) -> Self {
        ApiError::Runtime(e.into())
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        ApiError::Runtime(e.into())
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::RustError(e.to_string())
    }
}

/// Ends a request path for the runtime: an answer becomes its JSON error response; a
/// failure underneath stays an error (the Worker logs it and answers 500).
pub(crate) fn finish(reply: Reply) -> worker::Result<Response> {
    match reply {
        Ok(resp) => Ok(resp),
        Err(ApiError::Answer {
            status,
            message,
            retry_after,
        }) => {
            let resp = Response::from_json(&ErrorBody::new(message))?.with_status(status);
            if let Some(secs) = retry_after {
                resp.headers()
                    .set(wire::header::RETRY_AFTER, &secs.to_string())?;
            }
            Ok(resp)
        }
        Err(ApiError::Store(e)) => Err(e.into()),
        Err(ApiError::Runtime(e)) => Err(e),
    }
}

/// A JSON answer with a status.
pub(crate) fn json<T: Serialize>(status: u16, body: &T) -> Reply {
    Ok(Response::from_json(body)?.with_status(status))
}

/// Milliseconds since the epoch, from the runtime's clock.
pub(crate) fn now_ms() -> u64 {
    Date::now().as_millis()
}

/// A secret or var as a string; absent = empty (callers treat empty as "not configured").
pub(crate) fn setting(env: &Env, name: &str) -> String {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .unwrap_or_default()
}

/// A request header, if present and readable.
pub(crate) fn header(req: &Request, name: &str) -> Option<String> {
    req.headers().get(name).ok().flatten()
}

/// A query parameter of the request's URL, if present.
pub(crate) fn query_param(req: &Request, name: &str) -> worker::Result<Option<String>> {
    Ok(req
        .url()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned()))
}

/// Reads the body up to `limit` bytes; over it is a 413 (refused early when the declared
/// length already says so).
pub(crate) async fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = header(req, wire::header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let bytes = req.bytes().await?;
    if bytes.len() > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(bytes)
}

/// Parses a JSON body into `T`; the 400 names what is wrong.
pub(crate) async fn parse_json<T: DeserializeOwned>(req: &mut Request) -> Result<T, ApiError> {
    let text = req
        .text()
        .await
        .map_err(|_| ApiError::new(400, "body is not valid UTF-8"))?;
    error::json_body(&text)
}

/// A request from the Worker to one of its Durable Objects.
pub(crate) fn internal_request(
    url: &str,
    method: Method,
    headers: Headers,
    body: Option<&[u8]>,
) -> worker::Result<Request> {
    let mut init = RequestInit::new();
    init.with_method(method).with_headers(headers);
    if let Some(body) = body {
        init.with_body(Some(worker::js_sys::Uint8Array::from(body).into()));
    }
    Request::new_with_init(url, &init)
}

/// A Bot API call gives up after this long. Telegram answers in well under a second; a call
/// that hangs (a half-open connection during an outage) must not hold the webhook that sent
/// it, nor the outbox lane behind it: it fails like an unreachable Telegram, and the outbox
/// tries again later.
pub(crate) const BOT_API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// POSTs `params` as JSON to `url` (the Bot API); returns the status and the body's text.
/// Aborted after [`BOT_API_TIMEOUT`].
pub(crate) async fn post_json(
    url: &str,
    params: &serde_json::Value,
) -> worker::Result<(u16, String)> {
    use futures_util::future::{select, Either};
    let headers = Headers::new();
    headers.set(wire::header::CONTENT_TYPE, wire::header::JSON)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(serde_json::to_string(params)?.into()));
    let request = Request::new_with_init(url, &init)?;
    let controller = worker::AbortController::default();
    let signal = controller.signal();
    let call = std::pin::pin!(async {
        let mut resp = worker::Fetch::Request(request)
            .send_with_signal(&signal)
            .await?;
        let status = resp.status_code();
        let body = resp.text().await.unwrap_or_default();
        Ok((status, body))
    });
    let timer = std::pin::pin!(worker::Delay::from(BOT_API_TIMEOUT));
    match select(call, timer).await {
        Either::Left((answer, _)) => answer,
        Either::Right(_) => {
            controller.abort();
            Err(Error::RustError(format!(
                "no answer within {} s",
                BOT_API_TIMEOUT.as_secs()
            )))
        }
    }
}
