//! The relay's workers-rs layer: the Worker side of `/ping`, `/proxy/...` and
//! `/relay/{channel}/...`, and `RelayDO`, one Durable Object per channel.
//!
//! The Worker authenticates and bounds each call, then hands it to the channel's object as one
//! framed body ([`relay::frame`]). The object owns the queue and the waiting: a caller waits on
//! a oneshot that the matching `_respond` fills; a long-poll waits on a oneshot that the next
//! enqueue fires. Bodies too big to keep in memory, and responses whose caller stopped waiting,
//! go to the `RELAY` KV namespace with a TTL, read and written only by this object (KV is
//! eventually consistent between locations, so it never carries a signal). No `RefCell` borrow
//! lives across an `.await`, and nothing here panics: a panic in a Durable Object hangs the
//! request and resets every object in the isolate.

use ccr_protocol::wire;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use ccr_protocol::api::OkBody;
use ccr_protocol::relay::{
    AckBody, BridgeUp, PollBatch, RelayDown, RespondBody, StreamEnd, StreamHead,
};
use ccr_protocol::MAX_RELAY_BODY_BYTES;
use futures_channel::{mpsc, oneshot};
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use worker::*;

use crate::error::ApiError;
use crate::http::{self, header, json, now_ms, setting, Reply};
use crate::preview;
use crate::relay::{
    self, Answer, BodyAt, Cancelled, Channel, DoCall, Offer, Queued, RelayRoute, RequestMeta,
    RespondError, ResponseHead, StreamStep, Taken,
};
use crate::socket_flow::{self, Admit, Flow};

/// The RelayDO namespace binding in wrangler.toml.
const RELAY_DO_BINDING: &str = "RELAY_DO";
/// The KV namespace binding for payloads.
const KV_BINDING: &str = "RELAY";
/// Worker → object calls go to this URL; only the body matters.
const INTERNAL_URL: &str = "https://relay.internal/call";
/// The hibernation tag of bridge sockets.
const BRIDGE_TAG: &str = "bridge";
/// The hibernation tag of callers' sockets (each also tagged with its connection id).
const CALLER_TAG: &str = "caller";

/// With `RELAY_HOST_SUFFIX` set, the named channel whose own host the request is for
/// (`<channel>.<suffix>`): then every path of it is that channel's.
pub(crate) fn channel_host(req: &Request, env: &Env) -> Option<String> {
    let suffix = setting(env, "RELAY_HOST_SUFFIX");
    if suffix.is_empty() {
        return None;
    }
    let url = req.url().ok()?;
    relay::host_channel(url.host_str()?, &suffix)
}

/// The Worker side of every relay path (`crate::relay::is_relay_path`), and of every path on
/// a channel's own host (`host`, from [`channel_host`]).
pub(crate) async fn handle(mut req: Request, env: &Env, host: Option<String>) -> Reply {
    let path = req.path();
    let method = req.method().to_string();
    let route = match &host {
        Some(channel) => relay::parse_host_route(&method, channel, &path),
        None => relay::parse_route(&method, &path),
    }
    .ok_or_else(|| ApiError::no_route(&method, &path))?;
    // The prefix callers see: none on a channel's own host.
    let public_prefix = |channel: &Channel| {
        if host.is_some() {
            String::new()
        } else {
            channel.prefix()
        }
    };
    let relay_token = setting(env, "RELAY_TOKEN");
    let query = req.url()?.query().unwrap_or_default().to_owned();
    match route {
        RelayRoute::Ping => Ok(Response::ok("ok")?),
        RelayRoute::MethodNotAllowed(allowed) => {
            Err(ApiError::method_not_allowed(&method, &path, allowed))
        }
        RelayRoute::NoChannel => Err(ApiError::new(404, "name a channel: /relay/{channel}/...")),
        RelayRoute::BadChannel(name) => Err(ApiError::new(
            400,
            format!(
                "invalid channel {name:?}: {}",
                ccr_protocol::validate::channel(&name)
                    .err()
                    .unwrap_or_default()
            ),
        )),
        RelayRoute::Poll(channel) => {
            check_bridge(&req, &relay_token, &channel)?;
            if preview_ended(env, &channel).await? {
                return Err(ApiError::new(410, "this preview has ended"));
            }
            let wait_ms = relay::poll_wait_ms(&query).map_err(|e| ApiError::new(400, e))?;
            let call = DoCall::Poll {
                channel: channel.key(),
                wait_ms,
                max: relay::poll_max(&query),
                ack: relay::poll_acks(&query),
            };
            call_channel(env, &channel, &call, Vec::new()).await
        }
        RelayRoute::Ack(channel) => {
            check_bridge(&req, &relay_token, &channel)?;
            let body = read_limited(&mut req, relay::MAX_ACK_BODY_BYTES).await?;
            let call = DoCall::Ack {
                channel: channel.key(),
            };
            call_channel(env, &channel, &call, body).await
        }
        RelayRoute::Respond(channel) => {
            check_bridge(&req, &relay_token, &channel)?;
            let body = read_limited(&mut req, relay::MAX_RESPOND_BYTES).await?;
            let call = DoCall::Respond {
                channel: channel.key(),
            };
            call_channel(env, &channel, &call, body).await
        }
        RelayRoute::BridgeSocket(channel) => {
            check_bridge(&req, &relay_token, &channel)?;
            let upgrade = header(&req, wire::header::UPGRADE).unwrap_or_default();
            if !upgrade.eq_ignore_ascii_case(wire::header::WEBSOCKET) {
                return Err(ApiError::new(
                    426,
                    "this is a bridge's WebSocket: send Upgrade: websocket (or long-poll _poll)",
                ));
            }
            let headers = Headers::new();
            headers.set(wire::header::UPGRADE, wire::header::WEBSOCKET)?;
            headers.set(wire::header::RELAY_SOCKET_CHANNEL, &channel.key())?;
            let inner = http::internal_request(INTERNAL_URL, Method::Get, headers, None)?;
            let stub = env
                .durable_object(RELAY_DO_BINDING)?
                .id_from_name(&channel.key())?
                .get_stub()?;
            Ok(stub.fetch_with_request(inner).await?)
        }
        RelayRoute::Result { channel, id } => {
            let (_, key_param) = relay::take_query_param(&query, wire::query::RELAY_KEY);
            check_public(&req, env, &relay_token, key_param)?;
            if preview_ended(env, &channel).await? {
                return gone_page();
            }
            if !relay::valid_id(&id) {
                return Err(ApiError::new(404, "no such relay request id"));
            }
            let call = DoCall::Result {
                channel: channel.key(),
                prefix: Some(public_prefix(&channel)),
                id,
            };
            call_channel(env, &channel, &call, Vec::new()).await
        }
        RelayRoute::Public { channel, path } => {
            let (query, key_param) = relay::take_query_param(&query, wire::query::RELAY_KEY);
            check_public(&req, env, &relay_token, key_param)?;
            if preview_ended(env, &channel).await? {
                return gone_page();
            }
            let headers = req
                .headers()
                .entries()
                .filter(|(k, _)| ccr_protocol::relay::forward_request_header(k))
                .map(|(k, v)| {
                    // A page opened with the key in its link would hand it on in its Referer.
                    if k.eq_ignore_ascii_case(wire::header::REFERER) {
                        let v = ccr_protocol::relay::scrub_referer(&v);
                        (k, v)
                    } else {
                        (k, v)
                    }
                })
                .collect();
            let upgrade = header(&req, wire::header::UPGRADE).unwrap_or_default();
            if upgrade.eq_ignore_ascii_case(wire::header::WEBSOCKET) {
                // A caller's WebSocket (a dev server's hot reload): the channel's object
                // accepts it and carries it to the target through the bridge's socket.
                let call = relay::SocketCall {
                    channel: channel.key(),
                    path,
                    query,
                    headers,
                };
                let inner_headers = Headers::new();
                inner_headers.set(wire::header::UPGRADE, wire::header::WEBSOCKET)?;
                inner_headers.set(
                    wire::header::RELAY_CALLER_SOCKET,
                    &hex::encode(serde_json::to_vec(&call)?),
                )?;
                let inner = http::internal_request(INTERNAL_URL, Method::Get, inner_headers, None)?;
                let stub = env
                    .durable_object(RELAY_DO_BINDING)?
                    .id_from_name(&channel.key())?
                    .get_stub()?;
                return Ok(stub.fetch_with_request(inner).await?);
            }
            let declared = header(&req, wire::header::CONTENT_LENGTH)
                .and_then(|v| v.trim().parse::<usize>().ok());
            if declared.is_some_and(|n| n > MAX_RELAY_BODY_BYTES) {
                return Err(ApiError::too_large(MAX_RELAY_BODY_BYTES));
            }
            let has_body = req.inner().body().is_some();
            if relay::may_stream_body(declared, has_body)
                && channel_has_socket(env, &channel).await?
            {
                // The body streams to the bridge's socket as it arrives (see `stream_call`).
                let call = DoCall::PublicStream {
                    channel: channel.key(),
                    prefix: public_prefix(&channel),
                    method,
                    path,
                    query,
                    headers,
                    length: declared.map(|n| n as u64),
                };
                return stream_call(env, &channel, &call, &mut req, declared).await;
            }
            let mut body = read_limited(&mut req, MAX_RELAY_BODY_BYTES).await?;
            // A large body goes to KV from here, and only its key to the channel's object:
            // the object, shared by every caller of the channel, never holds it.
            let stored = if relay::store_before_call(body.len()) {
                let id = random_id()?;
                let len = body.len();
                env.kv(KV_BINDING)?
                    .put_bytes(&relay::request_body_key(&channel.key(), &id), &body)?
                    .expiration_ttl(relay::REQUEST_BODY_TTL_SECS)
                    .execute()
                    .await?;
                body = Vec::new();
                Some(relay::StoredBody { id, len })
            } else {
                None
            };
            let call = DoCall::Public {
                channel: channel.key(),
                prefix: public_prefix(&channel),
                method,
                path,
                query,
                headers,
                stored,
            };
            call_channel(env, &channel, &call, body).await
        }
        RelayRoute::Stream { channel, id } => {
            // One call of a response streamed over long-poll. No preview-ended check: it
            // would cost a KV read per chunk, and an ended preview's bridge is stopped anyway.
            check_bridge(&req, &relay_token, &channel)?;
            if !relay::valid_id(&id) {
                return Err(ApiError::new(404, "no such relay request id"));
            }
            let step = relay::stream_step(&query).map_err(|e| ApiError::new(400, e))?;
            let body = read_limited(&mut req, ccr_protocol::relay::MAX_STREAM_CALL_BYTES).await?;
            let call = DoCall::Stream {
                channel: channel.key(),
                id,
                seq: step.seq,
                end: step.end,
            };
            call_channel(env, &channel, &call, body).await
        }
    }
}

/// Whether `channel` is a preview's that has ended (`preview`): only `pv-` channels cost a KV
/// read. KV, not the channel's object, holds the mark: the RouterDO writes it when the preview
/// ends, and the agent stops its bridge at the same moment, so a location that reads the mark
/// late (KV is eventually consistent) finds no bridge serving either.
async fn preview_ended(env: &Env, channel: &Channel) -> Result<bool, ApiError> {
    let Channel::Named(name) = channel else {
        return Ok(false);
    };
    if !preview::is_preview_channel(name) {
        return Ok(false);
    }
    Ok(env
        .kv(KV_BINDING)?
        .get(&preview::ended_key(name))
        .text()
        .await?
        .is_some())
}

/// Marks a preview's channel ended (read by [`preview_ended`]), for
/// [`preview::ENDED_MARKER_TTL_SECS`].
pub(crate) async fn mark_preview_ended(env: &Env, channel: &str) -> Result<()> {
    env.kv(KV_BINDING)?
        .put(&preview::ended_key(channel), "ended")?
        .expiration_ttl(preview::ENDED_MARKER_TTL_SECS)
        .execute()
        .await?;
    Ok(())
}

/// The 410 an ended preview's link answers with: a short page saying so.
fn gone_page() -> Reply {
    let headers = Headers::new();
    headers.set(wire::header::CONTENT_TYPE, "text/html; charset=utf-8")?;
    headers.set(wire::header::CACHE_CONTROL, "no-store")?;
    Ok(ResponseBuilder::new()
        .with_status(410)
        .with_headers(headers)
        .fixed(preview::GONE_PAGE.as_bytes().to_vec()))
}

/// Reads a relay body chunk by chunk and stops at `limit`: 413 as soon as the declared length
/// or the bytes read so far exceed it, so a chunked upload is refused before it ends and never
/// read whole. A body shorter than its declared length (the caller gave up) is a 400, never
/// relayed truncated.
async fn read_limited(req: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared =
        header(req, wire::header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    // No body at all (a GET) is an empty one.
    let Ok(mut stream) = req.stream() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if out.len().saturating_add(chunk.len()) > limit {
            return Err(ApiError::too_large(limit));
        }
        out.extend_from_slice(&chunk);
    }
    if declared.is_some_and(|n| n != out.len()) {
        return Err(ApiError::new(
            400,
            "the body ended before its declared Content-Length",
        ));
    }
    Ok(out)
}

/// A bridge must present this channel's token (401, or 503 while the Worker has none).
fn check_bridge(req: &Request, relay_token: &str, channel: &Channel) -> Result<(), ApiError> {
    let presented = relay::TOKEN_HEADERS
        .iter()
        .find_map(|name| header(req, name).filter(|v| !v.trim().is_empty()));
    Ok(relay::check_token(
        relay_token,
        channel,
        presented.as_deref(),
    )?)
}

/// A public caller needs a configured relay (else 503) and `RELAY_PUBLIC_KEY`, when set,
/// presented (else 401).
fn check_public(
    req: &Request,
    env: &Env,
    relay_token: &str,
    key_param: Option<String>,
) -> Result<(), ApiError> {
    if relay_token.is_empty() {
        return Err(ApiError::new(
            503,
            "the relay is not configured: the Worker has no RELAY_TOKEN",
        ));
    }
    let public_key = setting(env, "RELAY_PUBLIC_KEY");
    let presented = header(req, wire::header::RELAY_KEY).or(key_param);
    if relay::check_public_key(&public_key, presented.as_deref()) {
        Ok(())
    } else {
        Err(ApiError::new(
            401,
            "this relay needs its public key: send X-Relay-Key",
        ))
    }
}

/// Sends one framed call to `channel`'s object and returns its answer. The payload is
/// consumed: once the runtime has its copy, no Rust copy waits with the call.
async fn call_channel(env: &Env, channel: &Channel, call: &DoCall, payload: Vec<u8>) -> Reply {
    let head = serde_json::to_vec(call)?;
    let body = relay::frame(&head, &payload);
    drop(payload);
    let inner = http::internal_request(
        INTERNAL_URL,
        Method::Post,
        Headers::new(),
        Some(body.as_slice()),
    )?;
    drop(body);
    let stub = env
        .durable_object(RELAY_DO_BINDING)?
        .id_from_name(&channel.key())?
        .get_stub()?;
    Ok(stub.fetch_with_request(inner).await?)
}

/// Whether `channel`'s object has a bridge socket to stream an upload to (one short call).
/// Without one the Worker reads the body itself, as for long-poll bridges: a body streamed to
/// an object that has nowhere to send it would have to be held there whole, and the object is
/// shared by every caller of the channel.
async fn channel_has_socket(env: &Env, channel: &Channel) -> Result<bool, ApiError> {
    let call = DoCall::UploadProbe {
        channel: channel.key(),
    };
    let mut resp = call_channel(env, channel, &call, Vec::new()).await?;
    let answer: serde_json::Value = resp.json().await?;
    Ok(answer
        .get("socket")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false))
}

/// Sends a public request to `channel`'s object with its body as a stream: the framed call
/// head ([`relay::frame`], no payload), then the caller's bytes as they arrive
/// ([`relay::body_piece`]s, and [`relay::BODY_END`] when it ended whole), each counted
/// against the relay's limit and the declared length ([`relay::BodyLimit`]). The first byte
/// over either ends the stream in an error — the object then cuts the target's request — and
/// the caller gets 413 (or 400 for a body shorter than declared) before its body ends.
async fn stream_call(
    env: &Env,
    channel: &Channel,
    call: &DoCall,
    req: &mut Request,
    declared: Option<usize>,
) -> Reply {
    let head = relay::frame(&serde_json::to_vec(call)?, &[]);
    let refused: Rc<Cell<Option<relay::BodyRefused>>> = Rc::default();
    let caller = req.stream()?;
    let limit = relay::BodyLimit::new(MAX_RELAY_BODY_BYTES, declared);
    let seen = refused.clone();
    let bytes = futures_util::stream::unfold(
        (caller, limit, seen, false),
        |(mut caller, mut limit, seen, done)| async move {
            if done {
                return None;
            }
            // A refused or failed body simply stops, without the end marker: the object
            // then cuts the target's request. (An errored stream would be reported by the
            // runtime as an uncaught error, and ends cleanly on the object's side anyway.)
            match caller.next().await {
                Some(Ok(chunk)) => match limit.take(chunk.len()) {
                    Ok(()) => {
                        let framed: Vec<u8> = chunk
                            .chunks(relay::MAX_BODY_PIECE)
                            .flat_map(relay::body_piece)
                            .collect();
                        Some((Ok(framed), (caller, limit, seen, false)))
                    }
                    Err(why) => {
                        seen.set(Some(why));
                        None
                    }
                },
                Some(Err(_)) => None,
                None => match limit.finish() {
                    // Only a body that ended whole and within its bounds gets the end
                    // marker: the object cuts the target's request for any other end.
                    Ok(()) => Some((Ok(relay::BODY_END.to_vec()), (caller, limit, seen, true))),
                    Err(why) => {
                        seen.set(Some(why));
                        None
                    }
                },
            }
        },
    );
    let body = futures_util::stream::once(async move { Ok::<Vec<u8>, Error>(head) }).chain(bytes);
    // workers-rs builds a `ReadableStream` from a Rust stream for a response body; the same
    // stream is a request's body.
    let readable = match ResponseBuilder::new().from_stream(body)?.body() {
        ResponseBody::Stream(readable) => readable.clone(),
        _ => return Err(ApiError::new(500, "the relay could not stream this body")),
    };
    let headers = Headers::new();
    headers.set(wire::header::RELAY_STREAM_CALL, "1")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(readable.into()));
    let inner = Request::new_with_init(INTERNAL_URL, &init)?;
    let stub = env
        .durable_object(RELAY_DO_BINDING)?
        .id_from_name(&channel.key())?
        .get_stub()?;
    let answer = stub.fetch_with_request(inner).await;
    // The object answers an error when the body broke off; the caller hears why.
    match refused.get() {
        Some(relay::BodyRefused::TooLarge) => Err(ApiError::too_large(MAX_RELAY_BODY_BYTES)),
        Some(relay::BodyRefused::Short) => Err(ApiError::new(
            400,
            "the body ended before its declared Content-Length",
        )),
        None => Ok(answer?),
    }
}

/// The caller's response from a bridge's answer, for a caller who came by `prefix`.
fn answer_response(answer: Answer, prefix: &str) -> Reply {
    let headers = Headers::new();
    for (name, value) in &relay::caller_headers(&answer.head.headers, prefix) {
        // A header the runtime refuses (bad name or value) is dropped, not fatal.
        if headers.append(name, value).is_err() {
            console_warn!("relay: dropped response header {name:?}");
        }
    }
    let builder = ResponseBuilder::new()
        .with_status(answer.head.status)
        .with_headers(headers)
        // The bytes are the target's, already encoded as its content-encoding says.
        .with_encode_body(EncodeBody::Manual);
    if answer.body.is_empty() || relay::null_body_status(answer.head.status) {
        Ok(builder.empty())
    } else {
        Ok(builder.fixed(answer.body))
    }
}

/// The headers a caller gets for a bridge's response head.
fn caller_header_map(head: &ResponseHead, prefix: &str) -> Headers {
    let headers = Headers::new();
    for (name, value) in &relay::caller_headers(&head.headers, prefix) {
        if headers.append(name, value).is_err() {
            console_warn!("relay: dropped response header {name:?}");
        }
    }
    headers
}

/// A body chunk of a streamed response, or the error that breaks it off.
type Chunk = Result<Vec<u8>>;

/// What a waiting caller receives: a whole answer, or a streamed response's head with its
/// body still arriving over the bridge's socket.
enum Delivery {
    Whole(Answer),
    Stream {
        head: ResponseHead,
        body: mpsc::UnboundedReceiver<Chunk>,
        credit: Credit,
    },
}

/// Grants a streaming bridge more window as the caller's body is read, and tells it to stop
/// when the body is dropped (finished, or the caller went away: then the bridge stops reading
/// the target).
enum Credit {
    /// The WebSocket transport: `credit` frames as the caller reads, `cancel` when dropped.
    Socket { ws: WebSocket, id: String },
    /// The long-poll transport: what the caller takes lets the waiting chunk call answer;
    /// dropped, the next chunk call answers 410.
    Poll(Rc<PollFlow>),
}

impl Credit {
    fn grant(&self, bytes: usize) {
        match self {
            Credit::Socket { ws, id } => {
                let frame = RelayDown::Credit {
                    id: id.clone(),
                    bytes: bytes as u64,
                };
                if let Ok(text) = serde_json::to_string(&frame) {
                    let _ = ws.send_with_str(text);
                }
            }
            Credit::Poll(flow) => flow.taken(bytes),
        }
    }
}

impl Drop for Credit {
    fn drop(&mut self) {
        match self {
            Credit::Socket { ws, id } => {
                let frame = RelayDown::Cancel {
                    id: std::mem::take(id),
                };
                if let Ok(text) = serde_json::to_string(&frame) {
                    let _ = ws.send_with_str(text);
                }
            }
            Credit::Poll(flow) => flow.gone(),
        }
    }
}

/// One response streaming to its caller over long-poll: what its caller's stream has taken
/// ([`relay::ChunkLedger`]) and the chunk calls waiting for it to take more. Shared by the
/// caller's body (through its [`Credit`]) and the object's chunk calls.
struct PollFlow {
    ledger: RefCell<relay::ChunkLedger>,
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
}

impl PollFlow {
    fn new(now: u64) -> Self {
        Self {
            ledger: RefCell::new(relay::ChunkLedger::new(now)),
            waiters: RefCell::new(Vec::new()),
        }
    }

    /// The caller's stream took `n` bytes.
    fn taken(&self, n: usize) {
        if let Ok(mut ledger) = self.ledger.try_borrow_mut() {
            ledger.taken(n, now_ms());
        }
        self.wake();
    }

    /// The caller's stream was dropped.
    fn gone(&self) {
        if let Ok(mut ledger) = self.ledger.try_borrow_mut() {
            ledger.caller_gone();
        }
        self.wake();
    }

    fn wake(&self) {
        let waiting = match self.waiters.try_borrow_mut() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(_) => return,
        };
        for tx in waiting {
            let _ = tx.send(());
        }
    }
}

/// A response streaming over long-poll, as the channel's object holds it between chunk calls.
struct PollStream {
    /// The caller's body.
    tx: mpsc::UnboundedSender<Chunk>,
    flow: Rc<PollFlow>,
}

/// The caller's response for a streamed answer: the body flows as the bridge sends it, each
/// chunk read granting the bridge as many bytes more.
fn stream_response(
    head: ResponseHead,
    body: mpsc::UnboundedReceiver<Chunk>,
    credit: Credit,
    prefix: &str,
) -> Reply {
    let builder = ResponseBuilder::new()
        .with_status(head.status)
        .with_headers(caller_header_map(&head, prefix))
        .with_encode_body(EncodeBody::Manual);
    if relay::null_body_status(head.status) {
        return Ok(builder.empty());
    }
    let flow = match &credit {
        Credit::Poll(flow) => Some(flow.clone()),
        Credit::Socket { .. } => None,
    };
    let body = body.map(move |chunk| {
        if let Ok(bytes) = &chunk {
            credit.grant(bytes.len());
        }
        chunk
    });
    match flow {
        Some(flow) => Ok(builder.from_stream(watched(body, flow))?),
        None => Ok(builder.from_stream(body)?),
    }
}

/// How often a long-poll stream's body checks that its bridge still calls.
const SILENCE_CHECK_MS: u64 = 15_000;

/// A long-poll stream's body that ends in an error once its bridge has made no call for
/// [`relay::STREAM_SILENCE_MS`] (it died mid-body): the WebSocket transport learns that from
/// its socket closing; long-poll has no connection to watch.
fn watched(
    body: impl futures_util::Stream<Item = Chunk> + Unpin + 'static,
    flow: Rc<PollFlow>,
) -> impl futures_util::Stream<Item = Chunk> + 'static {
    futures_util::stream::unfold(Some((body, flow)), |state| async move {
        let (mut body, flow) = state?;
        loop {
            let timer = std::pin::pin!(Delay::from(Duration::from_millis(SILENCE_CHECK_MS)));
            match select(body.next(), timer).await {
                Either::Left((Some(chunk), _)) => return Some((chunk, Some((body, flow)))),
                Either::Left((None, _)) => return None,
                Either::Right(_) => {
                    let silent = flow
                        .ledger
                        .try_borrow()
                        .is_ok_and(|l| l.bridge_silent(now_ms()));
                    if silent {
                        let why = format!(
                            "the bridge stopped sending this response ({} s without a call)",
                            relay::STREAM_SILENCE_MS / 1000
                        );
                        return Some((Err(Error::RustError(why)), None));
                    }
                }
            }
        }
    })
}

/// What a bridge socket's attachment remembers (it survives hibernation; memory does not).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BridgeSocket {
    /// Random per socket: which requests went to it.
    id: String,
    /// [`Channel::key`].
    channel: String,
    /// When it was accepted (ms): the newest socket gets the requests.
    since: u64,
    /// The bridge is shutting down: push nothing more to it.
    #[serde(default)]
    draining: bool,
}

/// What a caller socket's attachment remembers.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CallerSocket {
    /// The connection id (also a tag of the socket).
    conn: String,
    /// The id of the bridge socket carrying it.
    bridge: String,
}

fn random_id() -> std::result::Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::RustError(format!("no randomness: {e}")))?;
    Ok(hex::encode(bytes))
}

/// One relay channel: its queue, waiting long-polls and waiting callers.
#[durable_object]
pub struct RelayDO {
    env: Env,
    channel: RefCell<relay::ChannelState>,
    /// Request id → the waiting caller.
    callers: RefCell<HashMap<String, oneshot::Sender<Delivery>>>,
    /// Waiting long-polls; fired (all of them) when a request is queued.
    polls: RefCell<Vec<oneshot::Sender<()>>>,
    /// Random per instance, memory only: every answer carries it in `X-CCR-Relay-Instance`,
    /// so a rebuilt object (its waiting callers lost) shows.
    instance: String,
    state: State,
    /// Request id → the id of the bridge socket it was pushed to, until answered.
    pushed: RefCell<HashMap<String, String>>,
    /// Request id → the body of a response streaming to its caller.
    streams: RefCell<HashMap<String, mpsc::UnboundedSender<Chunk>>>,
    /// A [`RelayDO::push_queued`] is under way.
    pushing: std::cell::Cell<bool>,
    /// Connection id → the flow control of a caller's WebSocket ([`socket_flow`]). Memory
    /// only: an object rebuilt while callers' sockets hibernate starts them afresh (the bridge
    /// bounds its side on its own).
    flows: RefCell<HashMap<String, Flow>>,
    /// Request id → a response streaming to its caller over long-poll (`_stream` calls).
    poll_streams: RefCell<HashMap<String, PollStream>>,
    /// Request id → the window its bridge grants a streaming upload (`uploadCredit`).
    uploads: RefCell<HashMap<String, mpsc::UnboundedSender<u64>>>,
}

/// The running push: frees the push for the next call when it ends, also when the runtime
/// drops it mid-read (its caller went away). A request it had taken from the queue and not
/// sent yet then fails with a 502 rather than waiting for a bridge that will never get it.
struct Pusher<'a> {
    relay: &'a RelayDO,
    holding: Option<String>,
}

impl Drop for Pusher<'_> {
    fn drop(&mut self) {
        self.relay.pushing.set(false);
        if let Some(id) = self.holding.take() {
            if let Ok(mut ch) = self.relay.channel.try_borrow_mut() {
                ch.drop_in_flight(&id);
            }
            if let Ok(mut callers) = self.relay.callers.try_borrow_mut() {
                if let Some(tx) = callers.remove(&id) {
                    let _ = tx.send(Delivery::Whole(relay::bad_gateway(
                        "the relay stopped handing this request to the bridge",
                    )));
                }
            }
        }
    }
}

/// Removes a caller's bookkeeping if its wait ends without an answer, including when the
/// runtime drops the request future because the caller went away.
struct CallerGuard<'a> {
    relay: &'a RelayDO,
    id: String,
    armed: bool,
}

impl CallerGuard<'_> {
    /// The wait ended: unregisters the caller and reports where its request was.
    fn finish(mut self) -> Cancelled {
        self.armed = false;
        self.relay.forget_caller(&self.id)
    }
}

impl Drop for CallerGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.relay.forget_caller(&self.id);
        }
    }
}

impl RelayDO {
    fn kv(&self) -> Result<KvStore> {
        self.env.kv(KV_BINDING)
    }

    fn forget_caller(&self, id: &str) -> Cancelled {
        if let Ok(mut callers) = self.callers.try_borrow_mut() {
            callers.remove(id);
        }
        match self.channel.try_borrow_mut() {
            Ok(mut ch) => ch.cancel(id),
            Err(_) => Cancelled::Nothing,
        }
    }

    /// Wakes every waiting long-poll, newest first: the runtime runs them in the order they
    /// were woken, and the newest poll is the likeliest to come from a bridge that is alive (a
    /// bridge polls again as soon as it has received; a poll left over from a bridge that died
    /// is older than every poll of its successor).
    fn wake_polls(&self) {
        let waiting = std::mem::take(&mut *self.polls.borrow_mut());
        for tx in waiting.into_iter().rev() {
            let _ = tx.send(());
        }
    }

    /// Gives a caller a 502 (its request could not be handed to the bridge).
    fn fail_caller(&self, id: &str, message: &str) {
        let tx = self.callers.borrow_mut().remove(id);
        if let Some(tx) = tx {
            let _ = tx.send(Delivery::Whole(relay::bad_gateway(message)));
        }
    }

    /// A public request: `body` is its bytes, or empty with `stored` when the Worker already
    /// put them in KV.
    async fn handle_public(
        &self,
        channel_key: &str,
        prefix: &str,
        meta: RequestMeta,
        body: Vec<u8>,
        stored: Option<relay::StoredBody>,
    ) -> Reply {
        let full = || {
            Err(ApiError::busy(
                503,
                format!(
                    "{}; retry in {} s",
                    relay::QueueError::Full,
                    relay::RETRY_AFTER_SECS
                ),
                relay::RETRY_AFTER_SECS,
            ))
        };
        if !self.channel.borrow().has_room() {
            return full();
        }
        let (id, body_at) = match stored {
            Some(s) if relay::valid_id(&s.id) => (s.id, Some(BodyAt::Kv(s.len))),
            Some(_) => return Err(ApiError::new(400, "malformed relay call: bad id")),
            None => (random_id()?, None),
        };
        let len = body.len();
        let body_at = if let Some(at) = body_at {
            at
        } else if body.is_empty() {
            BodyAt::Empty
        } else if self.channel.borrow().keep_inline(len) {
            BodyAt::Inline(body)
        } else {
            self.kv()?
                .put_bytes(&relay::request_body_key(channel_key, &id), &body)?
                .expiration_ttl(relay::REQUEST_BODY_TTL_SECS)
                .execute()
                .await?;
            drop(body);
            BodyAt::Kv(len)
        };
        let (tx, rx) = oneshot::channel();
        let queued = self.channel.borrow_mut().enqueue(Queued {
            id: id.clone(),
            meta,
            body: body_at,
        });
        if queued.is_err() {
            return full();
        }
        self.callers.borrow_mut().insert(id.clone(), tx);
        let guard = CallerGuard {
            relay: self,
            id: id.clone(),
            armed: true,
        };
        self.push_queued().await;
        self.wake_polls();

        let timer = std::pin::pin!(Delay::from(Duration::from_millis(relay::CALLER_WAIT_MS)));
        let outcome = match select(rx, timer).await {
            Either::Left((Ok(answer), _)) => Ok(answer),
            Either::Left((Err(_), _)) => Err(None),
            // The timer and an answer may be ready together: the answer wins.
            Either::Right(((), mut rx)) => match rx.try_recv() {
                Ok(Some(answer)) => Ok(answer),
                _ => Err(Some(())),
            },
        };
        let cancelled = guard.finish();
        caller_reply(outcome, &id, prefix, &cancelled)
    }

    /// A long-poll. A confirming bridge's (`ack` is `Some`) first confirms what it received
    /// before, and what it is handed now stays leased ([`relay::LEASE_MS`]); a seed-protocol
    /// bridge's is handed over for good. A waiting poll also wakes when a lease ends, to pick
    /// the request up again.
    async fn handle_poll(
        &self,
        channel_key: &str,
        wait_ms: u64,
        max: usize,
        ack: Option<Vec<String>>,
    ) -> Reply {
        let leased = ack.is_some();
        if let Some(ids) = ack {
            self.channel.borrow_mut().confirm(&ids, now_ms());
        }
        let deadline = now_ms().saturating_add(wait_ms);
        loop {
            let batch = {
                let mut ch = self.channel.borrow_mut();
                ch.expire_leases(now_ms());
                ch.take_batch(max, now_ms(), leased)
            };
            if !batch.is_empty() {
                if leased {
                    // The other waiting polls re-arm their timers for this lease's end.
                    self.wake_polls();
                }
                return self.deliver(channel_key, batch).await;
            }
            let now = now_ms();
            if now >= deadline {
                return json(200, &PollBatch { requests: vec![] });
            }
            let wake_at = self
                .channel
                .borrow()
                .next_lease_end()
                .map_or(deadline, |end| end.max(now + 1).min(deadline));
            let rx = {
                let mut polls = self.polls.borrow_mut();
                polls.retain(|tx| !tx.is_canceled());
                if polls.len() >= relay::MAX_WAITING_POLLS {
                    drop(polls);
                    return Err(ApiError::busy(
                        429,
                        format!(
                            "{} long-polls already wait on this channel",
                            relay::MAX_WAITING_POLLS
                        ),
                        relay::RETRY_AFTER_SECS,
                    ));
                }
                let (tx, rx) = oneshot::channel();
                polls.push(tx);
                rx
            };
            let timer = std::pin::pin!(Delay::from(Duration::from_millis(wake_at - now)));
            let _ = select(rx, timer).await;
        }
    }

    /// Builds the poll answer; a body lost from KV fails its caller instead.
    async fn deliver(&self, channel_key: &str, batch: Vec<Queued>) -> Reply {
        let mut requests = Vec::with_capacity(batch.len());
        for item in batch {
            let body = match item.body {
                BodyAt::Empty => Vec::new(),
                BodyAt::Inline(b) => b,
                BodyAt::Kv(_) => {
                    let key = relay::request_body_key(channel_key, &item.id);
                    match self.kv()?.get(&key).bytes().await {
                        Ok(Some(b)) => b,
                        other => {
                            console_error!("relay: body of {} unreadable: {other:?}", item.id);
                            self.channel.borrow_mut().drop_in_flight(&item.id);
                            self.fail_caller(&item.id, "the relay lost this request's body");
                            continue;
                        }
                    }
                }
            };
            requests.push(relay::envelope(&item.meta, &item.id, &body));
        }
        json(200, &PollBatch { requests })
    }

    async fn handle_ack(&self, payload: &[u8]) -> Reply {
        let body: AckBody = serde_json::from_slice(payload).map_err(|e| {
            ApiError::new(
                400,
                format!("invalid JSON body: {e}; expected {{\"ids\":[...]}}"),
            )
        })?;
        let ids: Vec<String> = body.ids.into_iter().take(relay::MAX_ACK_IDS).collect();
        self.channel.borrow_mut().confirm(&ids, now_ms());
        json(200, &OkBody::default())
    }

    async fn handle_respond(&self, channel_key: &str, payload: Vec<u8>) -> Reply {
        let body: RespondBody = serde_json::from_slice(&payload).map_err(|e| {
            ApiError::new(
                400,
                format!("invalid JSON body: {e}; expected {{id,status,headers,bodyBase64}}"),
            )
        })?;
        // Parsed: the raw JSON is not kept while the answers are handed on.
        drop(payload);
        let batch = matches!(body, RespondBody::Batch { .. });
        let responses = body.into_responses();
        let mut results = Vec::with_capacity(responses.len());
        for r in responses {
            let id = r.id.clone();
            // A refused response is that item's answer; a failure underneath fails the call.
            let result = match self.accept_one(channel_key, r).await {
                Ok(()) => Ok(()),
                Err(ApiError::Answer {
                    status, message, ..
                }) => Err((status, message)),
                Err(e) => return Err(e),
            };
            results.push((id, result));
        }
        if !batch {
            return match results.into_iter().next() {
                Some((_, Ok(()))) => json(200, &OkBody::default()),
                Some((_, Err((status, message)))) => Err(ApiError::new(status, message)),
                None => Err(ApiError::new(400, "no response in the body")),
            };
        }
        json(200, &relay::batch_results(results))
    }

    /// Matches one response to its request; an [`ApiError::Answer`] is its refusal.
    async fn accept_one(
        &self,
        channel_key: &str,
        r: ccr_protocol::relay::RelayResponse,
    ) -> std::result::Result<(), ApiError> {
        let answer = relay::decode_response(&r).map_err(|message| ApiError::new(400, message))?;
        let accepted = self.channel.borrow_mut().accept_response(&r.id, now_ms());
        match accepted {
            Ok(()) => {}
            Err(RespondError::Duplicate) => {
                return Err(ApiError::new(409, RespondError::Duplicate.to_string()))
            }
            Err(RespondError::Unknown) => {
                // After the object restarted, only KV remembers an answered id.
                let stored = relay::valid_id(&r.id)
                    && self
                        .kv()?
                        .get(&relay::response_key(channel_key, &r.id))
                        .bytes()
                        .await
                        .ok()
                        .flatten()
                        .is_some();
                return Err(if stored {
                    ApiError::new(409, RespondError::Duplicate.to_string())
                } else {
                    ApiError::new(404, format!("{}: {}", RespondError::Unknown, r.id))
                });
            }
        }
        let tx = self.callers.borrow_mut().remove(&r.id);
        let unsent = match tx {
            Some(tx) => match tx.send(Delivery::Whole(answer)) {
                Ok(()) => None,
                Err(Delivery::Whole(answer)) => Some(answer),
                Err(Delivery::Stream { .. }) => None,
            },
            None => Some(answer),
        };
        if let Some(answer) = unsent {
            // The caller stopped waiting: keep the answer for `_result/{id}`.
            let head = serde_json::to_vec(&answer.head)?;
            self.kv()?
                .put_bytes(
                    &relay::response_key(channel_key, &r.id),
                    &relay::frame(&head, &answer.body),
                )?
                .expiration_ttl(relay::RESULT_TTL_SECS)
                .execute()
                .await?;
        }
        Ok(())
    }

    async fn handle_result(&self, channel_key: &str, id: &str, prefix: &str) -> Reply {
        let stored = self
            .kv()?
            .get(&relay::response_key(channel_key, id))
            .bytes()
            .await?;
        if let Some(bytes) = stored {
            let parsed = relay::unframe(&bytes).and_then(|(head, body)| {
                serde_json::from_slice::<ResponseHead>(head)
                    .ok()
                    .map(|head| Answer {
                        head,
                        body: body.to_vec(),
                    })
            });
            return match parsed {
                Some(answer) => answer_response(answer, prefix),
                None => Err(ApiError::new(500, "the stored response is unreadable")),
            };
        }
        let pending = self.channel.borrow().is_in_flight(id);
        if pending {
            let resp = json(
                202,
                &json!({"ok": false, "pending": true, "id": id,
                        "error": "the bridge has not answered this request yet"}),
            )?;
            resp.headers().set(
                wire::header::RETRY_AFTER,
                &relay::RETRY_AFTER_SECS.to_string(),
            )?;
            return Ok(resp);
        }
        Err(ApiError::new(
            404,
            format!(
                "no result for {id}: it never reached a bridge, or its {} s are over",
                relay::RESULT_TTL_SECS
            ),
        ))
    }

    /// One framed call from the Worker.
    async fn serve(&self, mut req: Request) -> Reply {
        if header(&req, wire::header::RELAY_STREAM_CALL).is_some() {
            return self.serve_stream(req).await;
        }
        // The payload keeps the call's own allocation: no second copy of it waits below.
        let (head, payload) = relay::unframe_owned(req.bytes().await?)
            .ok_or_else(|| ApiError::new(400, "malformed relay call"))?;
        let call: DoCall = serde_json::from_slice(&head)
            .map_err(|e| ApiError::new(400, format!("malformed relay call: {e}")))?;
        self.channel.borrow_mut().sweep(now_ms());
        // Long-poll streams whose caller is gone (finished, went away, or given up).
        self.poll_streams
            .borrow_mut()
            .retain(|_, s| s.flow.ledger.try_borrow().map_or(true, |l| !l.is_gone()));
        match call {
            DoCall::Public {
                channel,
                prefix,
                method,
                path,
                query,
                headers,
                stored,
            } => {
                let meta = RequestMeta {
                    method,
                    path,
                    query,
                    headers,
                };
                self.handle_public(&channel, &prefix, meta, payload, stored)
                    .await
            }
            DoCall::Poll {
                channel,
                wait_ms,
                max,
                ack,
            } => {
                let resp = self.handle_poll(&channel, wait_ms, max, ack).await?;
                // This relay takes streamed responses over long-poll (`_stream`): say so.
                resp.headers().set(wire::header::RELAY_STREAMS, "1")?;
                Ok(resp)
            }
            DoCall::Ack { .. } => self.handle_ack(&payload).await,
            DoCall::Respond { channel } => self.handle_respond(&channel, payload).await,
            DoCall::Result {
                channel,
                id,
                prefix,
            } => {
                let prefix = prefix
                    .or_else(|| Channel::from_key(&channel).map(|c| c.prefix()))
                    .unwrap_or_default();
                self.handle_result(&channel, &id, &prefix).await
            }
            DoCall::Stream {
                channel,
                id,
                seq,
                end,
            } => {
                self.handle_stream(&channel, &id, StreamStep { seq, end }, payload)
                    .await
            }
            DoCall::UploadProbe { .. } => json(
                200,
                &json!({"ok": true, "socket": self.bridge_socket().is_some()}),
            ),
            DoCall::PublicStream { .. } => Err(ApiError::new(
                400,
                "malformed relay call: a streamed call without its header",
            )),
        }
    }

    /// A call whose body streams ([`wire::header::RELAY_STREAM_CALL`]): the framed head is
    /// read first, the rest is the caller's body, read as it arrives.
    async fn serve_stream(&self, mut req: Request) -> Reply {
        let mut body = req.stream()?;
        let mut buf = Vec::new();
        let (head, first) = loop {
            if let Some((head, rest)) = relay::unframe(&buf) {
                break (head.to_vec(), rest.to_vec());
            }
            if buf.len() > MAX_STREAM_HEAD_BYTES {
                return Err(ApiError::new(400, "malformed relay call: head too large"));
            }
            match body.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                _ => return Err(ApiError::new(400, "malformed relay call")),
            }
        };
        drop(buf);
        let call: DoCall = serde_json::from_slice(&head)
            .map_err(|e| ApiError::new(400, format!("malformed relay call: {e}")))?;
        self.channel.borrow_mut().sweep(now_ms());
        let DoCall::PublicStream {
            channel,
            prefix,
            method,
            path,
            query,
            headers,
            length,
        } = call
        else {
            return Err(ApiError::new(
                400,
                "malformed relay call: not a streamed one",
            ));
        };
        let meta = RequestMeta {
            method,
            path,
            query,
            headers,
        };
        self.handle_public_stream(&channel, &prefix, meta, length, first, body)
            .await
    }

    /// A public request whose body is still arriving. With a bridge socket, its envelope goes
    /// down at once (`bodyStreams`) and its bytes follow as binary frames as they arrive,
    /// never more than the window the bridge granted ([`pump_upload`]): the object holds about
    /// one chunk of it, the bridge at most a window, and other requests on the channel pass
    /// meanwhile (each frame carries its request id). A body that breaks off is cut at the
    /// bridge too (`bodyAbort`: the target's request fails). Without a socket (it went since
    /// the Worker's probe) the body is read whole, bounded, and queued as a long-poll one.
    async fn handle_public_stream(
        &self,
        channel_key: &str,
        prefix: &str,
        meta: RequestMeta,
        length: Option<u64>,
        first: Vec<u8>,
        mut body: ByteStream,
    ) -> Reply {
        let declared = length.and_then(|n| usize::try_from(n).ok());
        let Some((ws, socket)) = self.bridge_socket() else {
            let mut limit = relay::BodyLimit::new(MAX_RELAY_BODY_BYTES, declared);
            let mut pieces = relay::Unpiecer::default();
            let mut whole = Vec::new();
            let mut next = Some(first);
            loop {
                let bytes = match next.take() {
                    Some(b) => b,
                    None => match body.next().await {
                        Some(b) => b?,
                        None => break,
                    },
                };
                for piece in pieces.push(&bytes).map_err(|e| ApiError::new(400, e))? {
                    limit.take(piece.len()).map_err(refusal)?;
                    whole.extend_from_slice(&piece);
                }
            }
            if !pieces.ended() {
                return Err(ApiError::new(400, "the request body broke off"));
            }
            limit.finish().map_err(refusal)?;
            return self
                .handle_public(channel_key, prefix, meta, whole, None)
                .await;
        };
        let id = random_id()?;
        if self
            .channel
            .borrow_mut()
            .start_direct(&id, now_ms())
            .is_err()
        {
            return Err(ApiError::busy(
                503,
                format!(
                    "{}; retry in {} s",
                    relay::QueueError::Full,
                    relay::RETRY_AFTER_SECS
                ),
                relay::RETRY_AFTER_SECS,
            ));
        }
        let (tx, mut rx) = oneshot::channel();
        self.callers.borrow_mut().insert(id.clone(), tx);
        let guard = CallerGuard {
            relay: self,
            id: id.clone(),
            armed: true,
        };
        let (credit_tx, mut credit) = mpsc::unbounded();
        self.uploads.borrow_mut().insert(id.clone(), credit_tx);
        self.pushed
            .borrow_mut()
            .insert(id.clone(), socket.id.clone());
        let mut upload = UploadGuard {
            relay: self,
            ws: ws.clone(),
            id: id.clone(),
            open: true,
        };
        let envelope = RelayDown::Requests {
            requests: vec![relay::stream_envelope(&meta, &id, length)],
        };
        // Cuts the request off: the bridge's answer for it (a 502) is refused.
        let forget = |relay: &RelayDO| {
            relay.pushed.borrow_mut().remove(&id);
            relay.channel.borrow_mut().drop_in_flight(&id);
        };
        if !send_down(&ws, &envelope) {
            upload.open = false;
            forget(self);
            guard.finish();
            return Err(ApiError::new(502, "the bridge's connection dropped"));
        }
        let mut pump = std::pin::pin!(pump_upload(
            &ws,
            &id,
            first,
            &mut body,
            declared,
            &mut credit
        ));
        let early = match select(pump.as_mut(), &mut rx).await {
            Either::Left((Ok(()), _)) => {
                upload.end();
                None
            }
            Either::Left((Err(Broke::Caller(why)), _)) => {
                upload.abort(&why);
                forget(self);
                guard.finish();
                return Err(ApiError::new(
                    400,
                    format!("the request body broke off: {why}"),
                ));
            }
            Either::Left((Err(Broke::Bridge(why)), _)) => {
                upload.abort(&why);
                match rx.try_recv() {
                    // The bridge's own 502 (its socket dropped) is the answer.
                    Ok(Some(answer)) => Some(Ok(answer)),
                    _ => {
                        forget(self);
                        guard.finish();
                        return Err(ApiError::new(502, why));
                    }
                }
            }
            Either::Right((answer, _)) => Some(answer),
        };
        let outcome = match early {
            // The target answered before the body ended. A whole answer ends the request: the
            // rest of the body is not wanted. A streamed one may still be reading it: the body
            // goes on until it ends, then the caller gets the response.
            Some(Ok(Delivery::Stream { head, body, credit })) => {
                match pump.as_mut().await {
                    Ok(()) => upload.end(),
                    Err(Broke::Caller(why) | Broke::Bridge(why)) => upload.abort(&why),
                }
                Ok(Delivery::Stream { head, body, credit })
            }
            Some(Ok(answer)) => Ok(answer),
            Some(Err(_)) => Err(None),
            None => {
                let timer =
                    std::pin::pin!(Delay::from(Duration::from_millis(relay::CALLER_WAIT_MS)));
                match select(rx, timer).await {
                    Either::Left((Ok(answer), _)) => Ok(answer),
                    Either::Left((Err(_), _)) => Err(None),
                    Either::Right(((), mut rx)) => match rx.try_recv() {
                        Ok(Some(answer)) => Ok(answer),
                        _ => Err(Some(())),
                    },
                }
            }
        };
        drop(upload);
        let cancelled = guard.finish();
        caller_reply(outcome, &id, prefix, &cancelled)
    }
}

/// A public call's answer to its caller: the bridge's answer (whole or streamed), a 502 when
/// the relay lost the request, or the 504 that names `_result/{id}` when the wait ran out.
fn caller_reply(
    outcome: std::result::Result<Delivery, Option<()>>,
    id: &str,
    prefix: &str,
    cancelled: &Cancelled,
) -> Reply {
    match outcome {
        Ok(Delivery::Whole(answer)) => answer_response(answer, prefix),
        Ok(Delivery::Stream { head, body, credit }) => stream_response(head, body, credit, prefix),
        Err(None) => Err(ApiError::new(502, "the relay lost track of this request")),
        Err(Some(())) => json(504, &relay::unanswered_body(id, prefix, cancelled)),
    }
}

/// Largest framed head of a streamed call (method, path, query, headers).
const MAX_STREAM_HEAD_BYTES: usize = 1024 * 1024;

/// Why a streaming upload stopped before its end.
enum Broke {
    /// The caller's body broke off, or was refused.
    Caller(String),
    /// The bridge's socket dropped, or it granted no window for too long.
    Bridge(String),
}

/// The answer to a caller's body refused while it was read.
fn refusal(why: relay::BodyRefused) -> ApiError {
    match why {
        relay::BodyRefused::TooLarge => ApiError::too_large(MAX_RELAY_BODY_BYTES),
        relay::BodyRefused::Short => {
            ApiError::new(400, "the body ended before its declared Content-Length")
        }
    }
}

/// Sends a caller's body down the bridge's socket as it arrives: binary frames of at most
/// [`ccr_protocol::relay::STREAM_CHUNK_BYTES`] prefixed with the request id, each waiting
/// until the bridge's window (`credit`, [`ccr_protocol::relay::UPLOAD_WINDOW_BYTES`] at
/// first) has room. The next chunk is read from the caller only once this one is sent, so the
/// caller's own connection carries the back-pressure. `first` is what came with the call's
/// head. A body that breaks off, or that does not match its declared length, is an error.
async fn pump_upload(
    ws: &WebSocket,
    id: &str,
    first: Vec<u8>,
    body: &mut ByteStream,
    declared: Option<usize>,
    credit: &mut mpsc::UnboundedReceiver<u64>,
) -> std::result::Result<(), Broke> {
    let mut window = ccr_protocol::relay::UPLOAD_WINDOW_BYTES;
    let mut limit = relay::BodyLimit::new(MAX_RELAY_BODY_BYTES, declared);
    let mut pieces = relay::Unpiecer::default();
    let mut next = Some(first);
    loop {
        let bytes = match next.take() {
            Some(bytes) => bytes,
            None => match body.next().await {
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => return Err(Broke::Caller(e.to_string())),
                None => break,
            },
        };
        let chunks = pieces
            .push(&bytes)
            .map_err(|e| Broke::Caller(e.to_owned()))?;
        drop(bytes);
        for piece in &chunks {
            limit
                .take(piece.len())
                .map_err(|why| Broke::Caller(format!("{why:?}")))?;
            let n = piece.len() as u64;
            while window < n {
                let timer =
                    std::pin::pin!(Delay::from(Duration::from_millis(relay::UPLOAD_STALL_MS)));
                match select(credit.next(), timer).await {
                    Either::Left((Some(more), _)) => window = window.saturating_add(more),
                    Either::Left((None, _)) => {
                        return Err(Broke::Bridge("the bridge's connection dropped".into()))
                    }
                    Either::Right(_) => {
                        return Err(Broke::Bridge(format!(
                            "the target read none of the body for {} s",
                            relay::UPLOAD_STALL_MS / 1000
                        )))
                    }
                }
            }
            window -= n;
            if ws
                .send_with_bytes(ccr_protocol::relay::chunk_frame(id, piece))
                .is_err()
            {
                return Err(Broke::Bridge("the bridge's connection dropped".into()));
            }
        }
    }
    if !pieces.ended() {
        return Err(Broke::Caller("the request body broke off".into()));
    }
    limit
        .finish()
        .map_err(|why| Broke::Caller(format!("{why:?}")))
}

/// A streaming upload's registration: forgets its window when it ends, and tells the bridge
/// how the body ended — `bodyEnd`, or `bodyAbort` (also when the runtime drops the call
/// because its caller went away), so the target's request never ends complete-looking.
struct UploadGuard<'a> {
    relay: &'a RelayDO,
    ws: WebSocket,
    id: String,
    open: bool,
}

impl UploadGuard<'_> {
    fn end(&mut self) {
        if std::mem::take(&mut self.open) {
            send_down(
                &self.ws,
                &RelayDown::BodyEnd {
                    id: self.id.clone(),
                },
            );
        }
    }

    fn abort(&mut self, why: &str) {
        if std::mem::take(&mut self.open) {
            send_down(
                &self.ws,
                &RelayDown::BodyAbort {
                    id: self.id.clone(),
                    error: why.to_owned(),
                },
            );
        }
    }
}

impl Drop for UploadGuard<'_> {
    fn drop(&mut self) {
        self.abort("the caller went away");
        if let Ok(mut uploads) = self.relay.uploads.try_borrow_mut() {
            uploads.remove(&self.id);
        }
    }
}

/// The long-poll transport's streamed responses: a bridge posts a response's head
/// (`_stream/{id}?seq=0`) and then its body in calls of at most one window
/// (`seq=1, 2, …`, the last with `end`). The head hands the waiting caller a response whose
/// body is fed by the chunk calls — the same `Delivery::Stream` the WebSocket transport feeds —
/// and each chunk call is answered only once the caller's stream has taken its bytes, so the
/// object holds at most one call's bytes per response, and a slow caller slows the bridge's
/// reads of the target. A caller that went away (or read nothing for
/// [`relay::STREAM_STALL_MS`]) answers 410: the bridge stops reading the target.
impl RelayDO {
    async fn handle_stream(
        &self,
        channel_key: &str,
        id: &str,
        step: StreamStep,
        payload: Vec<u8>,
    ) -> Reply {
        let open = self
            .poll_streams
            .borrow()
            .get(id)
            .map(|s| (s.tx.clone(), s.flow.clone()));
        if step.seq == 0 {
            if open.is_some() {
                // A retried head whose answer the bridge lost: it was delivered.
                return json(200, &OkBody::default());
            }
            return self.stream_head(channel_key, id, &payload).await;
        }
        let Some((tx, flow)) = open else {
            return Err(ApiError::new(
                410,
                "no caller is reading this response: it went away, or its stream already ended",
            ));
        };
        if step.end == Some(StreamEnd::Abort) {
            // The call's body is the reason, not body bytes.
            let reason: String = String::from_utf8_lossy(&payload)
                .chars()
                .take(300)
                .collect();
            self.poll_streams.borrow_mut().remove(id);
            let _ = tx.unbounded_send(Err(Error::RustError(format!(
                "the response broke off: {reason}"
            ))));
            return json(200, &OkBody::default());
        }
        let offer = flow
            .ledger
            .borrow_mut()
            .offer(step.seq, payload.len(), now_ms());
        match offer {
            Offer::Gap => {
                return Err(ApiError::new(
                    409,
                    format!("chunk {} of {id} came before the one it follows", step.seq),
                ))
            }
            Offer::Push if !payload.is_empty() => {
                if tx.unbounded_send(Ok(payload)).is_err() {
                    flow.gone();
                }
            }
            Offer::Push | Offer::Repeat => {}
        }
        if step.end == Some(StreamEnd::Complete) {
            // The body ends once the caller has read what is queued.
            self.poll_streams.borrow_mut().remove(id);
            return json(200, &OkBody::default());
        }
        drop(tx);
        loop {
            let state = flow.ledger.borrow().taken_state(now_ms());
            match state {
                Taken::Yes => return json(200, &OkBody::default()),
                Taken::Gone => {
                    self.poll_streams.borrow_mut().remove(id);
                    return Err(ApiError::new(
                        410,
                        "the caller went away: stop reading the target",
                    ));
                }
                Taken::Stalled => {
                    let stream = self.poll_streams.borrow_mut().remove(id);
                    let why = format!(
                        "the caller read nothing for {} s",
                        relay::STREAM_STALL_MS / 1000
                    );
                    if let Some(s) = stream {
                        let _ = s.tx.unbounded_send(Err(Error::RustError(why.clone())));
                    }
                    return Err(ApiError::new(
                        410,
                        format!("{why}: stop reading the target"),
                    ));
                }
                Taken::WaitUntil(until) => {
                    let (wake, woken) = oneshot::channel();
                    flow.waiters.borrow_mut().push(wake);
                    let wait = until.saturating_sub(now_ms()).max(1);
                    let timer = std::pin::pin!(Delay::from(Duration::from_millis(wait)));
                    let _ = select(woken, timer).await;
                }
            }
        }
    }

    /// A streamed response's head: the waiting caller gets its response now, its body fed by
    /// the chunk calls that follow. A caller that already had its 504 is not waiting: the
    /// stream is refused (410, the bridge stops) and `_result/{id}` says why — a streamed
    /// response is never kept whole.
    async fn stream_head(&self, channel_key: &str, id: &str, payload: &[u8]) -> Reply {
        let head: StreamHead = serde_json::from_slice(payload).map_err(|e| {
            ApiError::new(
                400,
                format!("invalid JSON head: {e}; expected {{status,headers}}"),
            )
        })?;
        let accepted = self.channel.borrow_mut().accept_response(id, now_ms());
        match accepted {
            Ok(()) => {}
            Err(RespondError::Duplicate) => {
                return Err(ApiError::new(409, RespondError::Duplicate.to_string()))
            }
            Err(RespondError::Unknown) => {
                return Err(ApiError::new(
                    404,
                    format!("{}: {id}", RespondError::Unknown),
                ))
            }
        }
        let tx = self.callers.borrow_mut().remove(id);
        let Some(tx) = tx else {
            let why = "the response streamed after its caller had stopped waiting (the 504): \
                       a streamed response is not kept, so it was dropped; request it again";
            let note = relay::bad_gateway(why);
            let kept = serde_json::to_vec(&note.head)?;
            self.kv()?
                .put_bytes(
                    &relay::response_key(channel_key, id),
                    &relay::frame(&kept, &note.body),
                )?
                .expiration_ttl(relay::RESULT_TTL_SECS)
                .execute()
                .await?;
            return Err(ApiError::new(410, why));
        };
        let head = match relay::stream_head(head) {
            Ok(head) => head,
            Err(message) => {
                let _ = tx.send(Delivery::Whole(relay::bad_gateway(&message)));
                return Err(ApiError::new(400, message));
            }
        };
        let (body_tx, body) = mpsc::unbounded();
        let flow = Rc::new(PollFlow::new(now_ms()));
        let delivery = Delivery::Stream {
            head,
            body,
            credit: Credit::Poll(flow.clone()),
        };
        if tx.send(delivery).is_err() {
            return Err(ApiError::new(
                410,
                "the caller went away: stop reading the target",
            ));
        }
        self.poll_streams
            .borrow_mut()
            .insert(id.to_owned(), PollStream { tx: body_tx, flow });
        json(200, &OkBody::default())
    }
}

/// A bridge socket's attachment; `None` for a socket that has none (not a bridge's).
fn socket_meta(ws: &WebSocket) -> Option<BridgeSocket> {
    ws.deserialize_attachment().ok().flatten()
}

/// A caller socket's attachment; `None` for a bridge's.
fn caller_meta(ws: &WebSocket) -> Option<CallerSocket> {
    ws.deserialize_attachment().ok().flatten()
}

/// Sends one relay → bridge frame; `false` when the socket refused it.
fn send_down(ws: &WebSocket, frame: &RelayDown) -> bool {
    match serde_json::to_string(frame) {
        Ok(text) => ws.send_with_str(text).is_ok(),
        Err(_) => false,
    }
}

/// The WebSocket transport: a bridge holds one socket to its channel's object (accepted with
/// the hibernation API, so an idle channel costs nothing), requests are pushed over it as they
/// arrive, and responses come back over it — whole, or streamed as a head, binary chunks and
/// an end. One Worker invocation per relayed request instead of a poll, a respond and the
/// caller's. Requests pushed to a socket are handed over for good (the socket is the
/// confirmation): if it drops before answering, their callers get a 502 at once.
impl RelayDO {
    async fn accept_bridge(&self, channel_key: &str) -> Reply {
        if Channel::from_key(channel_key).is_none() {
            return Err(ApiError::new(400, "malformed relay call: bad channel"));
        }
        let pair = WebSocketPair::new()?;
        self.state
            .accept_websocket_with_tags(&pair.server, &[BRIDGE_TAG]);
        pair.server.serialize_attachment(&BridgeSocket {
            id: random_id()?,
            channel: channel_key.to_owned(),
            since: now_ms(),
            draining: false,
        })?;
        // Whatever waited for a bridge goes to this one.
        self.push_queued().await;
        Ok(Response::from_websocket(pair.client)?)
    }

    /// A caller's WebSocket upgrade: accepted here (hibernatable), then opened to the target
    /// through the newest bridge socket. Frames cross both ways; either side's close closes
    /// the other. Only the WebSocket transport can carry one: without a bridge socket, 502.
    fn accept_caller(&self, call: &str) -> Reply {
        let call: relay::SocketCall = hex::decode(call)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ApiError::new(400, "malformed relay call: bad socket call"))?;
        let Some((bridge_ws, bridge)) = self.bridge_socket() else {
            return Err(ApiError::new(
                502,
                "no bridge is connected over a WebSocket: a WebSocket upgrade needs the \
                 bridge's WebSocket transport (relay-bridge --transport ws or auto)",
            ));
        };
        let conn = random_id()?;
        let pair = WebSocketPair::new()?;
        self.state
            .accept_websocket_with_tags(&pair.server, &[CALLER_TAG, &conn]);
        pair.server.serialize_attachment(&CallerSocket {
            conn: conn.clone(),
            bridge: bridge.id,
        })?;
        let protocol = call
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(wire::header::WEBSOCKET_PROTOCOL))
            .and_then(|(_, v)| relay::first_subprotocol(v));
        let open = RelayDown::SocketOpen {
            id: conn,
            path: call.path,
            query: call.query,
            headers: call.headers,
        };
        if !send_down(&bridge_ws, &open) {
            return Err(ApiError::new(502, "the bridge's connection dropped"));
        }
        let headers = Headers::new();
        if let Some(p) = protocol {
            headers.set(wire::header::WEBSOCKET_PROTOCOL, &p)?;
        }
        Ok(ResponseBuilder::new()
            .with_status(101)
            .with_headers(headers)
            .with_websocket(pair.client)
            .empty())
    }

    /// The caller socket of connection `id`, if it is open.
    fn caller_socket(&self, id: &str) -> Option<WebSocket> {
        if !relay::valid_id(id) {
            return None;
        }
        self.state.get_websockets_with_tag(id).into_iter().next()
    }

    /// The bridge socket whose id is `id`.
    fn bridge_by_id(&self, id: &str) -> Option<WebSocket> {
        self.state
            .get_websockets_with_tag(BRIDGE_TAG)
            .into_iter()
            .find(|ws| socket_meta(ws).is_some_and(|m| m.id == id))
    }

    /// A message from a caller's socket, on to the bridge carrying it.
    fn caller_message(&self, ws: &WebSocket, message: WebSocketIncomingMessage) {
        let Some(caller) = caller_meta(ws) else {
            return;
        };
        let Some(bridge) = self.bridge_by_id(&caller.bridge) else {
            let _ = ws.close(Some(1011), Some("the bridge's connection dropped"));
            return;
        };
        let bytes = match &message {
            WebSocketIncomingMessage::String(text) => text.len(),
            WebSocketIncomingMessage::Binary(bytes) => bytes.len(),
        } as u64;
        let admit = self
            .flows
            .borrow_mut()
            .entry(caller.conn.clone())
            .or_insert_with(|| Flow::new(now_ms()))
            .caller_sent(bytes);
        if admit == Admit::Overflow {
            // The caller is told (its socket closes with the reason), and so is the target.
            console_warn!(
                "relay: a caller's WebSocket ran more than {} bytes ahead of its target: closed",
                ccr_protocol::relay::SOCKET_BACKLOG_BYTES
            );
            self.flows.borrow_mut().remove(&caller.conn);
            let code = ccr_protocol::relay::SOCKET_OVERFLOW_CODE;
            let _ = ws.close(Some(code), Some(socket_flow::OVERFLOW_REASON));
            send_down(
                &bridge,
                &RelayDown::SocketClose {
                    id: caller.conn,
                    code,
                    reason: socket_flow::OVERFLOW_REASON.into(),
                },
            );
            return;
        }
        match message {
            WebSocketIncomingMessage::String(text) => {
                send_down(
                    &bridge,
                    &RelayDown::SocketText {
                        id: caller.conn,
                        text,
                    },
                );
            }
            WebSocketIncomingMessage::Binary(bytes) => {
                let frame = ccr_protocol::relay::chunk_frame(&caller.conn, &bytes);
                let _ = bridge.send_with_bytes(frame);
            }
        }
    }

    /// `bytes` of connection `id`'s target messages went on to its caller: grants the bridge
    /// as much as the pacing allows now; the rest later ([`RelayDO::paced_grants`]), after the
    /// wait this returns.
    fn socket_forwarded(&self, bridge: &WebSocket, id: &str, bytes: u64) -> Option<u64> {
        let now = now_ms();
        let grant = self
            .flows
            .borrow_mut()
            .entry(id.to_owned())
            .or_insert_with(|| Flow::new(now))
            .forwarded(bytes, now);
        if grant.bytes > 0 {
            send_down(
                bridge,
                &RelayDown::SocketCredit {
                    id: id.to_owned(),
                    bytes: grant.bytes,
                },
            );
        }
        grant.retry_in_ms
    }

    /// Grants what connection `id` is still owed as the pacing allows, until nothing is owed
    /// or the connection closed. One runs per connection at a time ([`Flow::retry`]).
    async fn paced_grants(&self, bridge: &WebSocket, id: &str, mut wait: Option<u64>) {
        while let Some(ms) = wait {
            Delay::from(Duration::from_millis(ms)).await;
            let grant = self
                .flows
                .borrow_mut()
                .get_mut(id)
                .map(|f| f.retry(now_ms()));
            let Some(grant) = grant else {
                return;
            };
            if grant.bytes > 0
                && !send_down(
                    bridge,
                    &RelayDown::SocketCredit {
                        id: id.to_owned(),
                        bytes: grant.bytes,
                    },
                )
            {
                return;
            }
            wait = grant.retry_in_ms;
        }
    }

    /// A caller closed its socket: the bridge closes the target's.
    fn caller_closed(&self, caller: &CallerSocket, code: usize, reason: &str) {
        self.flows.borrow_mut().remove(&caller.conn);
        if let Some(bridge) = self.bridge_by_id(&caller.bridge) {
            send_down(
                &bridge,
                &RelayDown::SocketClose {
                    id: caller.conn.clone(),
                    code: u16::try_from(code).unwrap_or(1000),
                    reason: reason.to_owned(),
                },
            );
        }
    }

    /// The newest bridge socket that is not draining.
    fn bridge_socket(&self) -> Option<(WebSocket, BridgeSocket)> {
        self.state
            .get_websockets_with_tag(BRIDGE_TAG)
            .into_iter()
            .filter_map(|ws| socket_meta(&ws).map(|m| (ws, m)))
            .filter(|(_, m)| !m.draining)
            .max_by_key(|(_, m)| m.since)
    }

    /// Pushes every queued request to the bridge's socket, if one is open: one text frame
    /// each, a large body after it as binary frames ([`relay::socket_envelope`]).
    ///
    /// One push runs at a time: a call while another is under way returns at once, and the
    /// running one takes what was queued meanwhile. Each call used to push on its own, so
    /// concurrent large uploads each held their body (read back from KV), its base64 and the
    /// JSON frame around it — about 3× the body per upload — in the object at once; the
    /// isolate's memory is shared by every object and the Worker, and a failed allocation
    /// there is an abort that hangs every waiting caller (issue 15's upload flood).
    async fn push_queued(&self) {
        if self.pushing.replace(true) {
            return;
        }
        let mut pusher = Pusher {
            relay: self,
            holding: None,
        };
        loop {
            let Some((ws, meta)) = self.bridge_socket() else {
                break;
            };
            let Some(item) = self
                .channel
                .borrow_mut()
                .take_batch(1, now_ms(), false)
                .pop()
            else {
                break;
            };
            pusher.holding = Some(item.id.clone());
            let body = match item.body {
                BodyAt::Empty => Some(Vec::new()),
                BodyAt::Inline(b) => Some(b),
                BodyAt::Kv(_) => {
                    let key = relay::request_body_key(&meta.channel, &item.id);
                    match self.kv().map(|kv| kv.get(&key)) {
                        Ok(get) => get.bytes().await.ok().flatten(),
                        Err(_) => None,
                    }
                }
            };
            pusher.holding = None;
            let Some(body) = body else {
                console_error!("relay: body of {} unreadable", item.id);
                self.channel.borrow_mut().drop_in_flight(&item.id);
                self.fail_caller(&item.id, "the relay lost this request's body");
                continue;
            };
            let frame = RelayDown::Requests {
                requests: vec![relay::socket_envelope(&item.meta, &item.id, &body)],
            };
            self.pushed
                .borrow_mut()
                .insert(item.id.clone(), meta.id.clone());
            let sent = send_down(&ws, &frame)
                && relay::socket_body_frames(&item.id, &body)
                    .all(|chunk| ws.send_with_bytes(chunk).is_ok());
            drop(body);
            if !sent {
                self.pushed.borrow_mut().remove(&item.id);
                self.channel.borrow_mut().drop_in_flight(&item.id);
                self.fail_caller(&item.id, "the bridge's connection dropped");
            }
        }
        drop(pusher);
    }

    /// One text frame from a bridge.
    async fn bridge_frame(
        &self,
        ws: &WebSocket,
        mut meta: BridgeSocket,
        up: BridgeUp,
    ) -> Result<()> {
        match up {
            BridgeUp::Respond { responses } => {
                for r in responses {
                    let id = r.id.clone();
                    self.pushed.borrow_mut().remove(&id);
                    match self.accept_one(&meta.channel, r).await {
                        Ok(()) => {}
                        Err(ApiError::Answer { message, .. }) => {
                            console_warn!("relay: refused a response for {id}: {message}");
                        }
                        Err(e) => return Err(Error::RustError(format!("{e:?}"))),
                    }
                }
            }
            BridgeUp::Head {
                id,
                status,
                headers,
            } => {
                self.pushed.borrow_mut().remove(&id);
                let accepted = self.channel.borrow_mut().accept_response(&id, now_ms());
                let tx = self.callers.borrow_mut().remove(&id);
                let Some(tx) = tx.filter(|_| accepted.is_ok() && (200..=599).contains(&status))
                else {
                    // Nobody waits for it (any more): the bridge stops reading the target.
                    send_down(ws, &RelayDown::Cancel { id });
                    return Ok(());
                };
                let (body_tx, body) = mpsc::unbounded();
                let delivery = Delivery::Stream {
                    head: ResponseHead { status, headers },
                    body,
                    credit: Credit::Socket {
                        ws: ws.clone(),
                        id: id.clone(),
                    },
                };
                // A caller that just gave up drops the delivery, whose credit cancels.
                if tx.send(delivery).is_ok() {
                    self.streams.borrow_mut().insert(id, body_tx);
                }
            }
            BridgeUp::End { id } => {
                self.streams.borrow_mut().remove(&id);
            }
            BridgeUp::Abort { id, error } => {
                let tx = self.streams.borrow_mut().remove(&id);
                if let Some(tx) = tx {
                    let _ = tx.unbounded_send(Err(Error::RustError(error)));
                }
            }
            BridgeUp::Draining => {
                meta.draining = true;
                ws.serialize_attachment(&meta)?;
            }
            BridgeUp::SocketText { id, text } => match self.caller_socket(&id) {
                Some(caller) => {
                    let bytes = text.len() as u64;
                    let _ = caller.send_with_str(text);
                    let wait = self.socket_forwarded(ws, &id, bytes);
                    self.paced_grants(ws, &id, wait).await;
                }
                None => {
                    send_down(
                        ws,
                        &RelayDown::SocketClose {
                            id,
                            code: 1000,
                            reason: "the caller is gone".into(),
                        },
                    );
                }
            },
            BridgeUp::SocketClose { id, code, reason } => {
                self.flows.borrow_mut().remove(&id);
                if let Some(caller) = self.caller_socket(&id) {
                    let code = ccr_protocol::relay::sendable_close_code(code);
                    let _ = caller.close(Some(code), Some(reason));
                }
            }
            BridgeUp::SocketCredit { id, bytes } => {
                if let Some(flow) = self.flows.borrow_mut().get_mut(&id) {
                    flow.granted_back(bytes);
                }
            }
            BridgeUp::UploadCredit { id, bytes } => {
                if let Some(tx) = self.uploads.borrow().get(&id) {
                    let _ = tx.unbounded_send(bytes);
                }
            }
        }
        Ok(())
    }

    /// One binary frame: a chunk of a streamed body, or a target's binary message to a
    /// caller's socket (then the connection id and the wait before its next paced grant).
    fn bridge_chunk(&self, ws: &WebSocket, frame: &[u8]) -> Option<(String, u64)> {
        let (id, bytes) = ccr_protocol::relay::split_chunk_frame(frame)?;
        let sent = self
            .streams
            .borrow()
            .get(id)
            .map(|tx| tx.unbounded_send(Ok(bytes.to_vec())).is_ok());
        if sent.is_none() {
            if let Some(caller) = self.caller_socket(id) {
                let _ = caller.send_with_bytes(bytes);
                let wait = self.socket_forwarded(ws, id, bytes.len() as u64)?;
                return Some((id.to_owned(), wait));
            }
        }
        if sent != Some(true) {
            // The caller is gone: forget the stream (its credit already said cancel).
            self.streams.borrow_mut().remove(id);
            if sent.is_none() {
                send_down(ws, &RelayDown::Cancel { id: id.to_owned() });
                // Or it was a caller's socket that is gone: its window would stay spent.
                send_down(
                    ws,
                    &RelayDown::SocketClose {
                        id: id.to_owned(),
                        code: 1000,
                        reason: "the caller is gone".into(),
                    },
                );
            }
        }
        None
    }

    /// A bridge socket closed: every request pushed to it and not answered gets a 502, and a
    /// response streaming from it breaks off — never another caller's bytes.
    fn bridge_gone(&self, ws: &WebSocket) {
        let Some(meta) = socket_meta(ws) else {
            return;
        };
        for caller in self.state.get_websockets_with_tag(CALLER_TAG) {
            if let Some(c) = caller_meta(&caller).filter(|c| c.bridge == meta.id) {
                self.flows.borrow_mut().remove(&c.conn);
                let _ = caller.close(Some(1011), Some("the bridge's connection dropped"));
            }
        }
        let ids: Vec<String> = self
            .pushed
            .borrow()
            .iter()
            .filter(|(_, socket)| **socket == meta.id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.pushed.borrow_mut().remove(&id);
            // A streaming upload to it stops: its window will never grow.
            self.uploads.borrow_mut().remove(&id);
            self.channel.borrow_mut().drop_in_flight(&id);
            self.fail_caller(&id, "the bridge's connection dropped before it answered");
            let tx = self.streams.borrow_mut().remove(&id);
            if let Some(tx) = tx {
                let _ = tx.unbounded_send(Err(Error::RustError(
                    "the bridge's connection dropped mid-response".into(),
                )));
            }
        }
    }
}

impl DurableObject for RelayDO {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            pushed: RefCell::new(HashMap::new()),
            streams: RefCell::new(HashMap::new()),
            pushing: std::cell::Cell::new(false),
            flows: RefCell::new(HashMap::new()),
            poll_streams: RefCell::new(HashMap::new()),
            uploads: RefCell::new(HashMap::new()),
            env,
            channel: RefCell::new(relay::ChannelState::default()),
            callers: RefCell::new(HashMap::new()),
            polls: RefCell::new(Vec::new()),
            instance: random_id().unwrap_or_default(),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        if let Some(channel_key) = header(&req, wire::header::RELAY_SOCKET_CHANNEL) {
            return http::finish(self.accept_bridge(&channel_key).await);
        }
        if let Some(call) = header(&req, wire::header::RELAY_CALLER_SOCKET) {
            return http::finish(self.accept_caller(&call));
        }
        let resp = http::finish(self.serve(req).await)?;
        // Best effort: a response whose headers are immutable simply goes without it.
        let _ = resp
            .headers()
            .set(wire::header::RELAY_INSTANCE, &self.instance);
        Ok(resp)
    }

    async fn alarm(&self) -> Result<Response> {
        Response::ok("")
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let Some(meta) = socket_meta(&ws) else {
            self.caller_message(&ws, message);
            return Ok(());
        };
        match message {
            WebSocketIncomingMessage::String(text) => match serde_json::from_str(&text) {
                Ok(up) => {
                    // The frame first: a push may wait (a body read back from KV), and the
                    // binary frames the bridge sends after this one (a stream's chunks, a
                    // socket's next message) are handled as they arrive, so handling this one
                    // after the push could put it behind them.
                    let handled = self.bridge_frame(&ws, meta, up).await;
                    // What a push dropped mid-way (its caller went away) left queued goes on
                    // with the bridge's next frame.
                    if self.channel.borrow().queued() > 0 {
                        self.push_queued().await;
                    }
                    handled
                }
                Err(e) => {
                    console_warn!("relay: unreadable frame from a bridge: {e}");
                    Ok(())
                }
            },
            WebSocketIncomingMessage::Binary(bytes) => {
                if let Some((id, wait)) = self.bridge_chunk(&ws, &bytes) {
                    self.paced_grants(&ws, &id, Some(wait)).await;
                }
                Ok(())
            }
        }
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        reason: String,
        _clean: bool,
    ) -> Result<()> {
        if let Some(caller) = caller_meta(&ws) {
            self.caller_closed(&caller, code, &reason);
        } else {
            self.bridge_gone(&ws);
        }
        let _ = ws.close(Some(1000), Some("closed"));
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _err: Error) -> Result<()> {
        if let Some(caller) = caller_meta(&ws) {
            self.caller_closed(&caller, 1011, "the caller's socket failed");
        } else {
            self.bridge_gone(&ws);
        }
        Ok(())
    }
}
