//! The Worker's fetch entry point: routes a request, authenticates it, and hands it to the
//! RouterDO (or to the relay's side, `relay_binding`).
//!
//! Everything that decides something lives in the pure modules; this file reads requests,
//! calls them, and writes responses through the shell (`http`).

use ccr_protocol::wire;
use ccr_protocol::{validate, MAX_API_BODY_BYTES};
use worker::{console_error, event, Context, Env, Fetch, Headers, Method, Request, Response, Stub};

use crate::auth::{self, Principal};
use crate::error::ApiError;
use crate::files;
use crate::http::{self, header, read_body, setting, Reply};
use crate::route::{route, Route};

/// The RouterDO namespace binding in wrangler.toml.
const ROUTER_BINDING: &str = "ROUTER";
/// The one RouterDO instance: all sessions of an installation live together.
const ROUTER_NAME: &str = "router";
/// The base of the Worker → RouterDO requests (the host is never resolved).
const ROUTER_URL: &str = "https://router.internal";
/// The headers of a JSON body passed on to the RouterDO.
const JSON_BODY: &[(&str, &str)] = &[(wire::header::CONTENT_TYPE, wire::header::JSON)];

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    match http::finish(handle(req, &env).await) {
        Ok(resp) => Ok(resp),
        Err(e) => {
            console_error!("request failed: {e}");
            http::finish(Err(ApiError::new(
                500,
                "internal error; see the Worker log",
            )))
        }
    }
}

async fn handle(req: Request, env: &Env) -> Reply {
    let path = req.path();
    let channel_host = crate::relay_binding::channel_host(&req, env);
    if channel_host.is_some() || crate::relay::is_relay_path(&path) {
        return crate::relay_binding::handle(req, env, channel_host).await;
    }
    let method = req.method().to_string();
    match route(&method, &path) {
        Route::Health => Ok(Response::ok("ok")?),
        Route::ListSessions
        | Route::RegisterSession
        | Route::UnregisterSession
        | Route::SendNotification
        | Route::Outbox
        | Route::OpenApproval
        | Route::CloseApprovals => {
            let principal = authenticate_http(&req, env)?;
            forward_to_router(req, env, &principal).await
        }
        Route::Webhook(secret) => handle_webhook(req, env, &secret).await,
        Route::File(file_id) => handle_file(req, env, &file_id).await,
        Route::MachineSocket => handle_socket(req, env).await,
        Route::MethodNotAllowed(allowed) => {
            Err(ApiError::method_not_allowed(&method, &path, allowed))
        }
        Route::NotFound => Err(ApiError::no_route(&method, &path)),
    }
}

/// Checks the API key of an HTTP request (401, or 503 while the Worker has none).
fn authenticate_http(req: &Request, env: &Env) -> Result<Principal, ApiError> {
    let x_api_key = header(req, wire::header::API_KEY);
    let authorization = header(req, wire::header::AUTHORIZATION);
    let machine = header(req, wire::header::MACHINE_ID);
    let presented = auth::presented_key(x_api_key.as_deref(), authorization.as_deref());
    let admin_key = setting(env, "CCR_API_KEY");
    Ok(auth::authenticate(
        &admin_key,
        presented,
        machine.as_deref(),
    )?)
}

/// Headers for a Worker → RouterDO request: who was authenticated, plus `extra`.
fn router_headers(principal: &Principal, extra: &[(&str, &str)]) -> worker::Result<Headers> {
    let headers = Headers::new();
    for (name, value) in extra {
        headers.set(name, value)?;
    }
    // Who the Worker authenticated. Set only here, never trusted from outside: the DO is
    // reachable only through the Worker.
    headers.set(wire::header::PRINCIPAL, &principal.encode())?;
    Ok(headers)
}

/// Passes an authenticated API request to the RouterDO with the principal attached.
async fn forward_to_router(mut req: Request, env: &Env, principal: &Principal) -> Reply {
    let body = read_body(&mut req, MAX_API_BODY_BYTES).await?;
    let headers = router_headers(principal, JSON_BODY)?;
    let inner = http::internal_request(
        &format!("{ROUTER_URL}{}", req.path()),
        req.method(),
        headers,
        Some(body.as_slice()).filter(|b| !b.is_empty()),
    )?;
    Ok(router_stub(env)?.fetch_with_request(inner).await?)
}

/// The RouterDO stub.
fn router_stub(env: &Env) -> worker::Result<Stub> {
    env.durable_object(ROUTER_BINDING)?
        .id_from_name(ROUTER_NAME)?
        .get_stub()
}

/// Telegram's webhook: both the path secret and the header must match, else 401 and
/// nothing is touched.
async fn handle_webhook(mut req: Request, env: &Env, path_secret: &str) -> Reply {
    let configured = setting(env, "TELEGRAM_WEBHOOK_SECRET");
    let header = req
        .headers()
        .get(wire::header::TELEGRAM_SECRET)?
        .unwrap_or_default();
    if !auth::webhook_allowed(&configured, path_secret, &header) {
        return Err(ApiError::new(401, "webhook secret mismatch"));
    }
    let body = read_body(&mut req, MAX_API_BODY_BYTES).await?;
    // The origin this webhook came to: the RouterDO builds `/preview` links from it.
    let origin = req.url()?.origin().ascii_serialization();
    let headers = router_headers(
        &Principal::Admin,
        &[
            (wire::header::CONTENT_TYPE, wire::header::JSON),
            (wire::header::PUBLIC_ORIGIN, origin.as_str()),
        ],
    )?;
    let inner = http::internal_request(
        &format!("{ROUTER_URL}{}", wire::route::webhook("verified")),
        Method::Post,
        headers,
        Some(body.as_slice()),
    )?;
    Ok(router_stub(env)?.fetch_with_request(inner).await?)
}

/// `/ws?machineId=X`: authenticates (subprotocol `ccr, <key>` or the API-key headers) and
/// hands the upgrade to the RouterDO, which accepts it for hibernation.
async fn handle_socket(req: Request, env: &Env) -> Reply {
    let machine = http::query_param(&req, wire::query::MACHINE_ID)?.unwrap_or_default();
    validate::machine_id(&machine)
        .map_err(|e| ApiError::new(400, format!("?{}=: {e}", wire::query::MACHINE_ID)))?;
    let protocols = header(&req, wire::header::WEBSOCKET_PROTOCOL);
    let x_api_key = header(&req, wire::header::API_KEY);
    let authorization = header(&req, wire::header::AUTHORIZATION);
    let presented = auth::subprotocol_key(protocols.as_deref())
        .or_else(|| auth::presented_key(x_api_key.as_deref(), authorization.as_deref()));
    let admin_key = setting(env, "CCR_API_KEY");
    let principal = auth::authenticate(&admin_key, presented, Some(&machine))?;
    if !header(&req, wire::header::UPGRADE)
        .is_some_and(|u| u.eq_ignore_ascii_case(wire::header::WEBSOCKET))
    {
        return Err(ApiError::new(426, "expected a WebSocket upgrade"));
    }
    let subprotocol: &[(&str, &str)] = if protocols.is_some() {
        &[
            (wire::header::UPGRADE, wire::header::WEBSOCKET),
            (wire::header::WEBSOCKET_PROTOCOL, wire::SUBPROTOCOL),
        ]
    } else {
        &[(wire::header::UPGRADE, wire::header::WEBSOCKET)]
    };
    let headers = router_headers(&principal, subprotocol)?;
    let inner = http::internal_request(
        &format!(
            "{ROUTER_URL}{}?{}={machine}",
            wire::route::MACHINE_SOCKET,
            wire::query::MACHINE_ID
        ),
        Method::Get,
        headers,
        None,
    )?;
    Ok(router_stub(env)?.fetch_with_request(inner).await?)
}

/// `GET /files/{file_id}`: a file a chat sent to one of the caller's sessions, streamed from
/// Telegram. The RouterDO says whether the caller may have it (`files::may_fetch`); the
/// Worker asks `getFile`, refuses a file over the bots' limit (413), then passes Telegram's
/// body through as a stream, never holding it whole. The token is in both Telegram URLs:
/// neither is logged, and errors are reported without them.
async fn handle_file(req: Request, env: &Env, file_id: &str) -> Reply {
    let principal = authenticate_http(&req, env)?;
    files::check_id(file_id)?;
    let headers = router_headers(&principal, &[])?;
    let inner = http::internal_request(
        &format!("{ROUTER_URL}{}", wire::route::file(file_id)),
        Method::Get,
        headers,
        None,
    )?;
    let allowed = router_stub(env)?.fetch_with_request(inner).await?;
    if allowed.status_code() != 200 {
        return Ok(allowed);
    }
    let token = setting(env, "TELEGRAM_BOT_TOKEN");
    let base = setting(env, "TELEGRAM_API_BASE");
    let url = crate::telegram::api_url(&base, &token, "getFile")
        .map_err(|o| ApiError::new(503, o.why()))?;
    let params = serde_json::json!({ "file_id": file_id });
    let outcome = match http::post_json(&url, &params).await {
        Ok((status, body)) => crate::telegram::read_answer(status, &body),
        Err(e) => crate::telegram::ApiOutcome::Failed(crate::telegram::unreachable(
            &e.to_string(),
            &token,
        )),
    };
    let located = files::located(outcome)?;
    let download = files::download_url(&base, &token, &located.file_path);
    let fetched = match Fetch::Url(
        download
            .parse()
            .map_err(|_| ApiError::new(502, "Telegram's file path does not make a URL"))?,
    )
    .send()
    .await
    {
        Ok(resp) => resp,
        Err(e) => {
            return Err(ApiError::new(
                502,
                crate::telegram::unreachable(&e.to_string(), &token),
            ))
        }
    };
    let status = fetched.status_code();
    if status != 200 {
        return Err(ApiError::new(
            502,
            format!("the download from Telegram failed: HTTP {status}"),
        ));
    }
    // Telegram's body as it arrives (the runtime passes its length on when known).
    let out = Headers::new();
    out.set(wire::header::CONTENT_TYPE, "application/octet-stream")?;
    Ok(Response::from_body(fetched.body().clone())?.with_headers(out))
}
