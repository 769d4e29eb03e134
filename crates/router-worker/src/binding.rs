//! The thin workers-rs layer: the Worker's fetch entry point and the RouterDO.
//!
//! Everything that decides something lives in the pure modules; this file reads requests,
//! calls them, and writes responses. No `unwrap`/`expect`/indexing here: a panic in a Durable
//! Object hangs the request and resets every object in the isolate (see WORKERS-RS.md).

use ccr_protocol::api::ErrorBody;
use ccr_protocol::{validate, MAX_API_BODY_BYTES};
use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::*;

use crate::auth::{self, Principal};
use crate::route::{route, Route};
use crate::store::{Sql, SqlValue, StoreError};

/// The RouterDO namespace binding in wrangler.toml.
pub(crate) const ROUTER_BINDING: &str = "ROUTER";
/// The one RouterDO instance: all sessions of an installation live together.
pub(crate) const ROUTER_NAME: &str = "router";
/// Worker → RouterDO: who the Worker authenticated. Set only by the Worker, never trusted
/// from outside (the DO is reachable only through the Worker).
pub(crate) const PRINCIPAL_HEADER: &str = "x-ccr-principal";

/// A JSON answer with a status.
pub(crate) fn json<T: Serialize>(status: u16, body: &T) -> Result<Response> {
    Ok(Response::from_json(body)?.with_status(status))
}

/// `{"ok":false,"error":...}` with a status.
pub(crate) fn error(status: u16, message: impl Into<String>) -> Result<Response> {
    json(status, &ErrorBody::new(message))
}

pub(crate) fn now_ms() -> i64 {
    Date::now().as_millis() as i64
}

/// A secret or var as a string; absent = empty (callers treat empty as "not configured").
pub(crate) fn setting(env: &Env, name: &str) -> String {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .unwrap_or_default()
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    match handle(req, &env).await {
        Ok(resp) => Ok(resp),
        Err(e) => {
            console_error!("request failed: {e}");
            error(500, "internal error; see the Worker log")
        }
    }
}

async fn handle(req: Request, env: &Env) -> Result<Response> {
    let path = req.path();
    if crate::relay::is_relay_path(&path) {
        return crate::relay_binding::handle(req, env).await;
    }
    let method = req.method().to_string();
    match route(&method, &path) {
        Route::Health => Response::ok("ok"),
        Route::ListSessions
        | Route::RegisterSession
        | Route::UnregisterSession
        | Route::SendNotification => {
            let principal = match authenticate_http(&req, env)? {
                Ok(p) => p,
                Err(resp) => return Ok(resp),
            };
            forward_to_router(req, env, &principal).await
        }
        Route::Webhook(secret) => handle_webhook(req, env, &secret).await,
        Route::MachineSocket => handle_socket(req, env).await,
        Route::MethodNotAllowed(allowed) => error(
            405,
            format!("{method} is not allowed on {path}; use {allowed}"),
        ),
        Route::NotFound => error(404, format!("no route for {method} {path}")),
    }
}

/// Checks the API key of an HTTP request; `Err` is the 401/503 answer to send.
fn authenticate_http(req: &Request, env: &Env) -> Result<std::result::Result<Principal, Response>> {
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let x_api_key = header("x-api-key");
    let authorization = header("authorization");
    let machine = header(auth::MACHINE_HEADER);
    let presented = auth::presented_key(x_api_key.as_deref(), authorization.as_deref());
    let admin_key = setting(env, "CCR_API_KEY");
    match auth::authenticate(&admin_key, presented, machine.as_deref()) {
        Ok(p) => Ok(Ok(p)),
        Err(e @ auth::AuthError::NotConfigured) => Ok(Err(error(503, e.to_string())?)),
        Err(e) => Ok(Err(error(401, e.to_string())?)),
    }
}

/// Reads a request body up to `limit` bytes; `Err` is the 413 answer.
pub(crate) async fn read_body(
    req: &mut Request,
    limit: usize,
) -> Result<std::result::Result<Vec<u8>, Response>> {
    let declared = req
        .headers()
        .get("content-length")?
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Ok(Err(error(413, format!("body over {limit} bytes"))?));
    }
    let bytes = req.bytes().await?;
    if bytes.len() > limit {
        return Ok(Err(error(413, format!("body over {limit} bytes"))?));
    }
    Ok(Ok(bytes))
}

/// Passes an authenticated API request to the RouterDO with the principal attached.
async fn forward_to_router(mut req: Request, env: &Env, principal: &Principal) -> Result<Response> {
    let body = match read_body(&mut req, MAX_API_BODY_BYTES).await? {
        Ok(b) => b,
        Err(resp) => return Ok(resp),
    };
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set(PRINCIPAL_HEADER, &principal.encode())?;
    let mut init = RequestInit::new();
    init.with_method(req.method()).with_headers(headers);
    if !body.is_empty() {
        init.with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
    }
    let inner = Request::new_with_init(&format!("https://router.internal{}", req.path()), &init)?;
    router_stub(env)?.fetch_with_request(inner).await
}

/// The RouterDO stub.
fn router_stub(env: &Env) -> Result<Stub> {
    env.durable_object(ROUTER_BINDING)?
        .id_from_name(ROUTER_NAME)?
        .get_stub()
}

/// Telegram's webhook: both the path secret and the header must match, else 401 and
/// nothing is touched.
async fn handle_webhook(mut req: Request, env: &Env, path_secret: &str) -> Result<Response> {
    let configured = setting(env, "TELEGRAM_WEBHOOK_SECRET");
    let header = req
        .headers()
        .get("x-telegram-bot-api-secret-token")?
        .unwrap_or_default();
    // Evaluate both comparisons (no short circuit), so timing says nothing about which failed.
    let path_ok = auth::ct_eq(path_secret, &configured);
    let header_ok = auth::ct_eq(&header, &configured);
    if configured.is_empty() || !(path_ok & header_ok) {
        return error(401, "webhook secret mismatch");
    }
    let body = match read_body(&mut req, MAX_API_BODY_BYTES).await? {
        Ok(b) => b,
        Err(resp) => return Ok(resp),
    };
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set(PRINCIPAL_HEADER, &Principal::Admin.encode())?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
    let inner = Request::new_with_init("https://router.internal/webhook/telegram/verified", &init)?;
    router_stub(env)?.fetch_with_request(inner).await
}

/// `/ws?machineId=X`: authenticates (subprotocol `ccr, <key>` or the API-key headers) and
/// hands the upgrade to the RouterDO, which accepts it for hibernation.
async fn handle_socket(req: Request, env: &Env) -> Result<Response> {
    let url = req.url()?;
    let machine = url
        .query_pairs()
        .find(|(k, _)| k == "machineId")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if let Err(e) = validate::machine_id(&machine) {
        return error(400, format!("?machineId=: {e}"));
    }
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let protocols = header("sec-websocket-protocol");
    let x_api_key = header("x-api-key");
    let authorization = header("authorization");
    let presented = auth::subprotocol_key(protocols.as_deref())
        .or_else(|| auth::presented_key(x_api_key.as_deref(), authorization.as_deref()));
    let admin_key = setting(env, "CCR_API_KEY");
    let principal = match auth::authenticate(&admin_key, presented, Some(&machine)) {
        Ok(p) => p,
        Err(e @ auth::AuthError::NotConfigured) => return error(503, e.to_string()),
        Err(e) => return error(401, e.to_string()),
    };
    if !header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return error(426, "expected a WebSocket upgrade");
    }
    let headers = Headers::new();
    headers.set("upgrade", "websocket")?;
    headers.set(PRINCIPAL_HEADER, &principal.encode())?;
    if protocols.is_some() {
        headers.set("sec-websocket-protocol", "ccr")?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let inner = Request::new_with_init(
        &format!("https://router.internal/ws?machineId={machine}"),
        &init,
    )?;
    router_stub(env)?.fetch_with_request(inner).await
}

/// The Durable Object's SQLite behind the [`Sql`] trait.
pub(crate) struct DoSql(pub(crate) SqlStorage);

fn bind(params: Vec<SqlValue>) -> Vec<SqlStorageValue> {
    params
        .into_iter()
        .map(|p| match p {
            SqlValue::Null => SqlStorageValue::Null,
            SqlValue::Int(i) => SqlStorageValue::Integer(i),
            SqlValue::Text(t) => SqlStorageValue::String(t),
        })
        .collect()
}

impl Sql for DoSql {
    fn exec(&self, sql: &str, params: Vec<SqlValue>) -> std::result::Result<(), StoreError> {
        self.0
            .exec(sql, bind(params))
            .map(|_| ())
            .map_err(|e| StoreError(e.to_string()))
    }

    fn query<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> std::result::Result<Vec<T>, StoreError> {
        // `to_array` rather than `one()`: `one()` on zero rows hangs the request.
        self.0
            .exec(sql, bind(params))
            .and_then(|cursor| cursor.to_array::<T>())
            .map_err(|e| StoreError(e.to_string()))
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::RustError(e.to_string())
    }
}

/// Parses a JSON body into `T`; `Err` is the 400 answer naming what is wrong.
pub(crate) async fn parse_json<T: DeserializeOwned>(
    req: &mut Request,
) -> Result<std::result::Result<T, Response>> {
    let text = match req.text().await {
        Ok(t) => t,
        Err(_) => return Ok(Err(error(400, "body is not valid UTF-8")?)),
    };
    if text.trim().is_empty() {
        return Ok(Err(error(400, "empty body; expected a JSON object")?));
    }
    match serde_json::from_str::<T>(&text) {
        Ok(v) => Ok(Ok(v)),
        Err(e) => Ok(Err(error(400, format!("invalid JSON body: {e}"))?)),
    }
}
