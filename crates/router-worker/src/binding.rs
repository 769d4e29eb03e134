//! The thin workers-rs layer: the Worker's fetch entry point and the RouterDO.
//!
//! Everything that decides something lives in the pure modules; this file reads requests,
//! calls them, and writes responses. No `unwrap`/`expect`/indexing here: a panic in a Durable
//! Object hangs the request and resets every object in the isolate (see WORKERS-RS.md).

use std::cell::Cell;

use ccr_protocol::api::{ErrorBody, OkBody, RegisterSession, SessionList, UnregisterSession};
use ccr_protocol::{validate, MAX_API_BODY_BYTES};
use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::*;

use crate::auth::{self, Principal};
use crate::route::{route, Route};
use crate::store::{self, Sql, SqlValue, StoreError};

/// The RouterDO namespace binding in wrangler.toml.
const ROUTER_BINDING: &str = "ROUTER";
/// The one RouterDO instance: all sessions of an installation live together.
const ROUTER_NAME: &str = "router";
/// Worker → RouterDO: who the Worker authenticated. Set only by the Worker, never trusted
/// from outside (the DO is reachable only through the Worker).
const PRINCIPAL_HEADER: &str = "x-ccr-principal";

/// A JSON answer with a status.
fn json<T: Serialize>(status: u16, body: &T) -> Result<Response> {
    Ok(Response::from_json(body)?.with_status(status))
}

/// `{"ok":false,"error":...}` with a status.
fn error(status: u16, message: impl Into<String>) -> Result<Response> {
    json(status, &ErrorBody::new(message))
}

fn now_ms() -> i64 {
    Date::now().as_millis() as i64
}

/// A secret or var as a string; absent = empty (callers treat empty as "not configured").
fn setting(env: &Env, name: &str) -> String {
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
    let method = req.method().to_string();
    match route(&method, &path) {
        Route::Health => Response::ok("ok"),
        Route::ListSessions | Route::RegisterSession | Route::UnregisterSession => {
            let principal = match authenticate_http(&req, env)? {
                Ok(p) => p,
                Err(resp) => return Ok(resp),
            };
            forward_to_router(req, env, &principal).await
        }
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
async fn read_body(
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
    let stub = env
        .durable_object(ROUTER_BINDING)?
        .id_from_name(ROUTER_NAME)?
        .get_stub()?;
    stub.fetch_with_request(inner).await
}

/// The Durable Object's SQLite behind the [`Sql`] trait.
struct DoSql(SqlStorage);

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

/// Holds sessions, reply mappings, the command queue and update dedup for one installation.
#[durable_object]
pub struct RouterDO {
    state: State,
    _env: Env,
    /// Set once migrations ran in this instance; memory only, so a fresh instance re-checks.
    migrated: Cell<bool>,
}

impl RouterDO {
    fn db(&self) -> DoSql {
        DoSql(self.state.storage().sql())
    }

    fn ensure_schema(&self) -> Result<()> {
        if !self.migrated.get() {
            // No await between the statements: they commit together.
            let from = store::migrate(&self.db())?;
            if from != crate::schema::latest() {
                console_log!(
                    "RouterDO schema migrated from {from} to {}",
                    crate::schema::latest()
                );
            }
            self.migrated.set(true);
        }
        Ok(())
    }

    fn machine_online(&self, machine_id: &str) -> bool {
        !self
            .state
            .get_websockets_with_tag(&format!("machine:{machine_id}"))
            .is_empty()
    }

    async fn handle_list(&self, principal: &Principal) -> Result<Response> {
        let scope = match principal {
            Principal::Admin => None,
            Principal::Machine(m) => Some(m.as_str()),
        };
        let sessions = store::list_sessions(&self.db(), scope, |m| self.machine_online(m))?;
        json(200, &SessionList { ok: true, sessions })
    }

    async fn handle_register(&self, req: &mut Request, principal: &Principal) -> Result<Response> {
        let body: RegisterSession = match parse_json(req).await? {
            Ok(b) => b,
            Err(resp) => return Ok(resp),
        };
        if let Err(e) = validate::session_id(&body.session_id)
            .and_then(|_| validate::machine_id(&body.machine_id))
            .and_then(|_| body.label.as_deref().map_or(Ok(()), validate::label))
        {
            return error(400, e);
        }
        if !principal.may_act_for(&body.machine_id) {
            return error(
                403,
                format!(
                    "this key may not register sessions for machine {}",
                    body.machine_id
                ),
            );
        }
        let db = self.db();
        if let Some(existing) = store::get_session(&db, &body.session_id)? {
            if !principal.may_act_for(&existing.machine_id) {
                return error(403, "this session belongs to another machine");
            }
        }
        store::upsert_session(
            &db,
            &body.session_id,
            &body.machine_id,
            body.label.as_deref(),
            now_ms(),
        )?;
        json(200, &OkBody::default())
    }

    async fn handle_unregister(
        &self,
        req: &mut Request,
        principal: &Principal,
    ) -> Result<Response> {
        let body: UnregisterSession = match parse_json(req).await? {
            Ok(b) => b,
            Err(resp) => return Ok(resp),
        };
        if let Err(e) = validate::session_id(&body.session_id) {
            return error(400, e);
        }
        let db = self.db();
        match store::get_session(&db, &body.session_id)? {
            None => error(404, "no such session"),
            Some(s) if !principal.may_act_for(&s.machine_id) => {
                error(403, "this session belongs to another machine")
            }
            Some(_) => {
                store::delete_session(&db, &body.session_id)?;
                json(200, &OkBody::default())
            }
        }
    }
}

/// Parses a JSON body into `T`; `Err` is the 400 answer naming what is wrong.
async fn parse_json<T: DeserializeOwned>(
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

impl DurableObject for RouterDO {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            _env: env,
            migrated: Cell::new(false),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        self.ensure_schema()?;
        let principal = match req
            .headers()
            .get(PRINCIPAL_HEADER)?
            .as_deref()
            .and_then(Principal::decode)
        {
            Some(p) => p,
            None => return error(401, "request reached the router without credentials"),
        };
        let method = req.method().to_string();
        match route(&method, &req.path()) {
            Route::ListSessions => self.handle_list(&principal).await,
            Route::RegisterSession => self.handle_register(&mut req, &principal).await,
            Route::UnregisterSession => self.handle_unregister(&mut req, &principal).await,
            _ => error(404, "no such router operation"),
        }
    }

    async fn alarm(&self) -> Result<Response> {
        self.ensure_schema()?;
        Response::ok("")
    }

    async fn websocket_message(
        &self,
        _ws: WebSocket,
        _message: WebSocketIncomingMessage,
    ) -> Result<()> {
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        _reason: String,
        _clean: bool,
    ) -> Result<()> {
        // Reciprocate the close; 1005/1006 cannot be sent back, answer those with 1000.
        let code = u16::try_from(code)
            .ok()
            .filter(|c| (1000..5000).contains(c) && *c != 1005 && *c != 1006)
            .unwrap_or(1000);
        let _ = ws.close(Some(code), Some("closing"));
        Ok(())
    }

    async fn websocket_error(&self, _ws: WebSocket, err: Error) -> Result<()> {
        console_warn!("machine socket error: {err}");
        Ok(())
    }
}
