//! The relay's decisions, free of workers-rs types so they are tested natively: which relay
//! route a request is, whose token it needs, which headers cross, how the Worker frames a call
//! to a channel's Durable Object, and the channel's queue bookkeeping (queued → in flight →
//! answered) with its bounds.
//!
//! The waiting itself (oneshot channels, timers, KV) lives in `relay_binding`.

use ccr_protocol::relay::{
    chunk_frame, forward_response_header, StreamEnd, StreamHead, INLINE_REQUEST_BODY_BYTES,
    STREAM_CHUNK_BYTES,
};
use ccr_protocol::wire::{header, query as wire_query, route};
use std::collections::{HashMap, HashSet, VecDeque};

use ccr_protocol::{validate, MAX_RELAY_BODY_BYTES, MAX_RELAY_WAIT_SECS};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::{ct_eq, derive_key};

/// Requests waiting for a bridge per channel; one more → 503 with `Retry-After`.
pub const MAX_QUEUED: usize = 256;
/// Requests handed to a bridge and not answered yet, per channel; bounds the in-flight map.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Answered ids a channel remembers (to refuse a second response with 409); the oldest are
/// forgotten first, after which only a stored late answer still marks an id as answered.
pub const MAX_ANSWERED: usize = 8192;
/// Long-polls that may wait at once on one channel; one more → 429.
pub const MAX_WAITING_POLLS: usize = 8;
/// Most requests one poll answer carries.
pub const MAX_POLL_BATCH: usize = 64;
/// Body bytes one poll answer carries at most (always at least one request).
pub const POLL_BATCH_BYTES: usize = 12 * 1024 * 1024;
/// Bodies up to this size stay in the object's memory; bigger ones go to KV.
pub const INLINE_BODY_BYTES: usize = 64 * 1024;
/// Total inline body bytes one channel holds before it sends smaller bodies to KV too.
pub const INLINE_TOTAL_BYTES: usize = 8 * 1024 * 1024;
/// A UTF-8 body up to this size is also sent as the seed protocol's `body` text; above it only
/// `bodyBase64` travels (two copies of a 10 MiB body would not fit an isolate's memory).
pub const SEED_TEXT_BODY_BYTES: usize = 1024 * 1024;
/// How long a late response stays retrievable at `_result/{id}`, and how long an id handed
/// to a bridge may still be answered.
pub const RESULT_TTL_SECS: u64 = 300;
/// KV TTL of a request body (KV's minimum is 60 s; a caller waits at most 25 s).
pub const REQUEST_BODY_TTL_SECS: u64 = 120;
/// Largest `POST _respond` body: one 10 MiB body as base64 plus headers and JSON.
pub const MAX_RESPOND_BYTES: usize = MAX_RELAY_BODY_BYTES / 3 * 4 + 2 * 1024 * 1024;
/// How long a public caller waits for its answer.
pub const CALLER_WAIT_MS: u64 = MAX_RELAY_WAIT_SECS * 1000;
/// How long a request handed to a confirming bridge's poll stays leased: unless the bridge
/// confirms it within this time (`_poll?ack=` or `POST _ack`, which a live bridge sends within
/// one round trip of receiving it, however slow its target), it goes back to the front of the
/// queue for the next poll.
pub const LEASE_MS: u64 = 2_000;
/// Most ids one confirmation names.
pub const MAX_ACK_IDS: usize = 4 * MAX_POLL_BATCH;
/// Largest `POST _ack` body: [`MAX_ACK_IDS`] quoted ids and some room.
pub const MAX_ACK_BODY_BYTES: usize = MAX_ACK_IDS * 40 + 1024;
/// Seconds a refused caller or bridge is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: u32 = 1;

/// The headers a bridge may send its token in: ours, and the seed's bridge's.
pub const TOKEN_HEADERS: [&str; 2] = [header::RELAY_TOKEN, header::RELAY_TOKEN_SEED];

/// A relay channel: the default one behind `/proxy`, or a named one behind `/relay/{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// `/proxy/...`, served with `RELAY_TOKEN` itself.
    Default,
    /// `/relay/{name}/...`, served with HMAC-SHA256(`RELAY_TOKEN`, name).
    Named(String),
}

impl Channel {
    /// The Durable Object name and KV key prefix: `default` or `c:{name}` (a name cannot
    /// contain `:`, so the two never collide).
    pub fn key(&self) -> String {
        match self {
            Channel::Default => "default".into(),
            Channel::Named(name) => format!("c:{name}"),
        }
    }

    /// The channel whose [`Channel::key`] is `key`.
    pub fn from_key(key: &str) -> Option<Channel> {
        if key == "default" {
            return Some(Channel::Default);
        }
        let name = key.strip_prefix("c:")?;
        validate::channel(name).ok()?;
        Some(Channel::Named(name.to_owned()))
    }

    /// The public URL prefix: `/proxy` or `/relay/{name}`.
    pub fn prefix(&self) -> String {
        match self {
            Channel::Default => route::PROXY.into(),
            Channel::Named(name) => route::relay_channel(name),
        }
    }

    /// The token a bridge must present for this channel.
    pub fn expected_token(&self, relay_token: &str) -> String {
        match self {
            Channel::Default => relay_token.to_owned(),
            Channel::Named(name) => derive_key(relay_token, name),
        }
    }
}

/// What a relay path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayRoute {
    /// `GET /ping`.
    Ping,
    /// Any method on a channel's public path; `path` starts with `/`.
    Public {
        /// The channel.
        channel: Channel,
        /// The path below the channel prefix, as sent (still percent-encoded).
        path: String,
    },
    /// `GET {prefix}/_poll`.
    Poll(Channel),
    /// `POST {prefix}/_respond`.
    Respond(Channel),
    /// `POST {prefix}/_ack`.
    Ack(Channel),
    /// `GET {prefix}/_result/{id}`.
    Result {
        /// The channel.
        channel: Channel,
        /// The request id from the 504 answer.
        id: String,
    },
    /// A relay path with the wrong method; carries the allowed one.
    MethodNotAllowed(&'static str),
    /// `/relay/{name}` with a name that is not a valid channel.
    BadChannel(String),
    /// `/relay` with no channel.
    NoChannel,
    /// `GET {prefix}/_ws`: a bridge's WebSocket transport.
    BridgeSocket(Channel),
    /// `POST {prefix}/_stream/{id}`: one call of a response streamed over long-poll.
    Stream {
        /// The channel.
        channel: Channel,
        /// The request id the response answers.
        id: String,
    },
}

/// Whether a path belongs to the relay (`/ping`, `/proxy[/...]`, `/relay[/...]`).
pub fn is_relay_path(path: &str) -> bool {
    is_ping(path) || under(path, route::PROXY).is_some() || under(path, route::RELAY).is_some()
}

/// `/ping`, with or without a trailing `/`.
fn is_ping(path: &str) -> bool {
    path.strip_suffix('/').unwrap_or(path) == route::RELAY_PING
}

/// The rest of `path` below `prefix` when `prefix` is a whole leading segment run.
fn under<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// With `RELAY_HOST_SUFFIX` = `suffix`: the named channel whose own host `host` is
/// (`<channel>.<suffix>`, case-insensitive, any port); `None` for every other host, the
/// Worker's own included.
pub fn host_channel(host: &str, suffix: &str) -> Option<String> {
    let suffix = suffix.trim().trim_matches('.').to_ascii_lowercase();
    if suffix.is_empty() {
        return None;
    }
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            h.to_owned()
        }
        _ => host,
    };
    let label = host.strip_suffix(&suffix)?.strip_suffix('.')?;
    (!label.contains('.') && validate::channel(label).is_ok()).then(|| label.to_owned())
}

/// Routes a request on channel `channel`'s own host: every path is that channel's, as if under
/// `/relay/{channel}` (so `_poll`, `_respond`, `_ack` and `_result/{id}` at the host's root
/// are the relay's, and `/relay/other/...` is this channel's path, never another channel).
pub fn parse_host_route(method: &str, channel: &str, path: &str) -> Option<RelayRoute> {
    parse_route(method, &format!("{}{path}", route::relay_channel(channel)))
}

/// Routes a relay request; `None` when the path is not the relay's.
pub fn parse_route(method: &str, path: &str) -> Option<RelayRoute> {
    if is_ping(path) {
        return Some(if method == "GET" || method == "HEAD" {
            RelayRoute::Ping
        } else {
            RelayRoute::MethodNotAllowed("GET")
        });
    }
    let (channel, rest) = if let Some(rest) = under(path, route::PROXY) {
        (Channel::Default, rest)
    } else {
        let rest = under(path, route::RELAY)?;
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        let (name, rest) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if name.is_empty() {
            return Some(RelayRoute::NoChannel);
        }
        if validate::channel(name).is_err() {
            return Some(RelayRoute::BadChannel(name.to_owned()));
        }
        (Channel::Named(name.to_owned()), rest)
    };
    let want = |allowed: &'static str, route: RelayRoute| {
        if method == allowed {
            route
        } else {
            RelayRoute::MethodNotAllowed(allowed)
        }
    };
    let op = rest.strip_prefix('/').unwrap_or(rest);
    Some(match op {
        route::POLL => want("GET", RelayRoute::Poll(channel)),
        route::RESPOND => want("POST", RelayRoute::Respond(channel)),
        route::ACK => want("POST", RelayRoute::Ack(channel)),
        route::BRIDGE_SOCKET => want("GET", RelayRoute::BridgeSocket(channel)),
        _ => match op
            .strip_prefix(route::RESULT)
            .and_then(|r| r.strip_prefix('/'))
        {
            Some(id) if !id.is_empty() && !id.contains('/') => want(
                "GET",
                RelayRoute::Result {
                    channel,
                    id: id.to_owned(),
                },
            ),
            _ => match last_segment(op, route::STREAM) {
                Some(id) => want("POST", RelayRoute::Stream { channel, id }),
                None => RelayRoute::Public {
                    channel,
                    path: if rest.is_empty() {
                        "/".into()
                    } else {
                        rest.to_owned()
                    },
                },
            },
        },
    })
}

/// `{name}/{x}` → `x`, when `x` is one non-empty segment.
fn last_segment(op: &str, name: &str) -> Option<String> {
    let x = op.strip_prefix(name)?.strip_prefix('/')?;
    (!x.is_empty() && !x.contains('/')).then(|| x.to_owned())
}

/// Why a bridge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The Worker has no `RELAY_TOKEN`, so no bridge can be let in.
    #[error("the Worker has no RELAY_TOKEN configured")]
    NotConfigured,
    /// No `X-Relay-Token` (or `x-token`) header.
    #[error("missing relay token: send X-Relay-Token")]
    Missing,
    /// A token that is not this channel's.
    #[error("invalid relay token for this channel")]
    Invalid,
}

/// Checks a bridge's token against `channel`'s, in constant time.
pub fn check_token(
    relay_token: &str,
    channel: &Channel,
    presented: Option<&str>,
) -> Result<(), TokenError> {
    if relay_token.is_empty() {
        return Err(TokenError::NotConfigured);
    }
    let presented = presented
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(TokenError::Missing)?;
    if ct_eq(presented, &channel.expected_token(relay_token)) {
        Ok(())
    } else {
        Err(TokenError::Invalid)
    }
}

/// Checks a public caller against `RELAY_PUBLIC_KEY`; an empty key lets everyone in.
pub fn check_public_key(public_key: &str, presented: Option<&str>) -> bool {
    public_key.is_empty() || presented.is_some_and(|p| ct_eq(p.trim(), public_key))
}

/// Removes `name=...` pairs from a query string; returns the rest and the first value.
pub fn take_query_param(query: &str, name: &str) -> (String, Option<String>) {
    let mut value = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == name {
                if value.is_none() {
                    value = Some(v.to_owned());
                }
                false
            } else {
                !pair.is_empty()
            }
        })
        .collect();
    (rest.join("&"), value)
}

/// The value of `name` in a query string, if present.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `_poll?wait=<s>` in ms: absent → 0 (the seed's bridge expects an answer at once), capped
/// at 25 s; fractions allowed. Anything but a non-negative number is refused.
pub fn poll_wait_ms(query: &str) -> Result<u64, String> {
    let Some(raw) = query_param(query, wire_query::WAIT) else {
        return Ok(0);
    };
    match raw.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(((s * 1000.0) as u64).min(CALLER_WAIT_MS)),
        _ => Err(format!(
            "wait must be a number of seconds between 0 and {}",
            CALLER_WAIT_MS / 1000
        )),
    }
}

/// `_poll?max=<n>`: how many requests the bridge can take now, 1..=[`MAX_POLL_BATCH`].
pub fn poll_max(query: &str) -> usize {
    query_param(query, wire_query::MAX)
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(MAX_POLL_BATCH, |n| n.clamp(1, MAX_POLL_BATCH))
}

/// `_poll?ack=id,id`: `None` when absent (a seed-protocol bridge, which never confirms: what
/// it receives is its own at once); else the ids it confirms, valid ones only, at most
/// [`MAX_ACK_IDS`].
pub fn poll_acks(query: &str) -> Option<Vec<String>> {
    let raw = query_param(query, wire_query::ACK)?;
    Some(
        raw.split(',')
            .filter(|id| valid_id(id))
            .take(MAX_ACK_IDS)
            .map(str::to_owned)
            .collect(),
    )
}

/// A Worker → channel object call; travels framed ([`frame`]) with its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum DoCall {
    /// A public request; the payload is its body.
    Public {
        /// [`Channel::key`].
        channel: String,
        /// The public URL prefix, for the 504's `_result` link.
        prefix: String,
        /// HTTP method.
        method: String,
        /// Path below the channel prefix.
        path: String,
        /// Query without `?` (relay parameters removed).
        query: String,
        /// Forwarded headers.
        headers: Vec<(String, String)>,
        /// Set when the Worker already stored the body in KV (bodies over
        /// [`INLINE_BODY_BYTES`]): the request's id and the body's length; the payload is then
        /// empty, so the object never holds a large request body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stored: Option<StoredBody>,
    },
    /// A bridge's long-poll.
    Poll {
        /// [`Channel::key`].
        channel: String,
        /// Longest wait in ms.
        wait_ms: u64,
        /// Most requests to hand out.
        max: usize,
        /// `None`: a bridge that never confirms (its requests are handed over for good);
        /// else the ids it confirms now, and what this poll hands out is leased.
        #[serde(default)]
        ack: Option<Vec<String>>,
    },
    /// A bridge's confirmation of requests it received; the payload is the `_ack` body.
    Ack {
        /// [`Channel::key`].
        channel: String,
    },
    /// A bridge's responses; the payload is the `_respond` JSON body.
    Respond {
        /// [`Channel::key`].
        channel: String,
    },
    /// A late response's retrieval.
    Result {
        /// [`Channel::key`].
        channel: String,
        /// The request id.
        id: String,
        /// The prefix the caller used (cookies are scoped to it); absent: the channel's.
        #[serde(default)]
        prefix: Option<String>,
    },
    /// One call of a response streamed over long-poll; the payload is the head's JSON
    /// (`seq` 0) or body bytes.
    Stream {
        /// [`Channel::key`].
        channel: String,
        /// The request id.
        id: String,
        /// 0: the head; then the body's chunks in order.
        seq: u64,
        /// Set on the last call.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        end: Option<StreamEnd>,
    },
    /// Before streaming a large or chunked upload: whether the channel has a bridge socket
    /// to stream it to (`{"ok":true,"socket":bool}`). Without one the Worker reads the body
    /// itself, bounded, as for long-poll bridges.
    UploadProbe {
        /// [`Channel::key`].
        channel: String,
    },
    /// A public request whose body streams: the call's body is the framed head (no payload
    /// in the frame), then the caller's body bytes as they arrive.
    PublicStream {
        /// [`Channel::key`].
        channel: String,
        /// The public URL prefix, for the 504's `_result` link.
        prefix: String,
        /// HTTP method.
        method: String,
        /// Path below the channel prefix.
        path: String,
        /// Query without `?` (relay parameters removed).
        query: String,
        /// Forwarded headers.
        headers: Vec<(String, String)>,
        /// The caller's declared body length; none: chunked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        length: Option<u64>,
    },
}

/// One call of a response streamed over long-poll: which (`seq`, 0 = the head) and whether it
/// is the last, from `?seq=N[&end=1|abort]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStep {
    /// 0: the head (JSON); 1, 2, …: the body's chunks in order.
    pub seq: u64,
    /// Set on the last call.
    pub end: Option<StreamEnd>,
}

/// Parses a stream call's query: `seq` is required (a non-negative integer); `end`, when
/// present, is `1` or `abort` (not on the head: a head has no body to end).
pub fn stream_step(query: &str) -> Result<StreamStep, String> {
    let seq = query_param(query, wire_query::SEQ)
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| "seq must be a non-negative integer: ?seq=N (0 is the head)".to_owned())?;
    let end = match query_param(query, wire_query::END) {
        None => None,
        Some(v) => Some(
            StreamEnd::from_query(v).ok_or_else(|| format!("end must be 1 or abort, not {v:?}"))?,
        ),
    };
    if seq == 0 && end.is_some() {
        return Err("the head (seq=0) cannot end the stream: send end with a body call".into());
    }
    Ok(StreamStep { seq, end })
}

/// How long a body call of a streamed response waits for its caller to take what it carries.
/// Past it the caller is taken for gone (workerd does not always report a caller that went
/// away): the call answers 410 and the bridge stops reading the target.
pub const STREAM_STALL_MS: u64 = 30_000;
/// A response streaming over long-poll whose bridge made no call for this long is taken for
/// abandoned (the bridge died mid-body): its caller's body ends in an error instead of
/// waiting for ever. A live bridge calls at least every 20 s (an empty call when the target
/// is quiet), and a call waits at most [`STREAM_STALL_MS`] for its caller.
pub const STREAM_SILENCE_MS: u64 = 75_000;

/// A streamed response's head from a bridge, checked: a status the runtime refuses is `Err`
/// (the caller's 502), and headers that would reach past the channel are dropped, as for a
/// whole response ([`decode_response`]).
pub fn stream_head(head: StreamHead) -> Result<ResponseHead, String> {
    if !(200..=599).contains(&head.status) {
        return Err(format!(
            "the target answered with status {}, which cannot be relayed",
            head.status
        ));
    }
    Ok(ResponseHead {
        status: head.status,
        headers: head
            .headers
            .into_iter()
            .filter(|(k, _)| forward_response_header(k))
            .collect(),
    })
}

/// What a body call of a streamed response does with its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The next chunk: hand its bytes to the caller.
    Push,
    /// A chunk already handed on (the bridge retried a call whose answer it lost): only wait.
    Repeat,
    /// A chunk after a missing one: refused (409), never relayed out of order.
    Gap,
}

/// Where a body call stands, waiting for the caller to take its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// The caller's stream took everything handed to it: answer the call.
    Yes,
    /// Not yet; look again at this time (ms) at the latest.
    WaitUntil(u64),
    /// The caller took nothing for [`STREAM_STALL_MS`]: taken for gone.
    Stalled,
    /// The caller's stream was dropped (it went away, or its body ended).
    Gone,
}

/// The bookkeeping of one response streamed over long-poll: the next chunk expected, the bytes
/// handed to the caller's stream and not yet taken by it, and when it last moved. One chunk
/// call is answered only once its bytes are taken, so the channel's object holds at most one
/// call's bytes (≤ one window) per response, and a slow caller slows the bridge's reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLedger {
    next_seq: u64,
    unread: u64,
    moved_at: u64,
    gone: bool,
    /// When the bridge's last call arrived.
    called_at: u64,
}

impl ChunkLedger {
    /// A stream whose head was delivered at `now`: chunk 1 comes next.
    pub fn new(now: u64) -> Self {
        Self {
            next_seq: 1,
            unread: 0,
            moved_at: now,
            gone: false,
            called_at: now,
        }
    }

    /// A body call `seq` carrying `len` bytes arrived at `now`.
    pub fn offer(&mut self, seq: u64, len: usize, now: u64) -> Offer {
        self.called_at = now;
        if seq < self.next_seq {
            return Offer::Repeat;
        }
        if seq > self.next_seq {
            return Offer::Gap;
        }
        self.next_seq += 1;
        self.unread = self.unread.saturating_add(len as u64);
        self.moved_at = now;
        Offer::Push
    }

    /// The caller's stream took `n` bytes at `now`.
    pub fn taken(&mut self, n: usize, now: u64) {
        self.unread = self.unread.saturating_sub(n as u64);
        self.moved_at = now;
    }

    /// The caller's stream was dropped.
    pub fn caller_gone(&mut self) {
        self.gone = true;
    }

    /// Whether the caller's stream was dropped.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Whether the bridge has made no call for [`STREAM_SILENCE_MS`] at `now`.
    pub fn bridge_silent(&self, now: u64) -> bool {
        now.saturating_sub(self.called_at) >= STREAM_SILENCE_MS
    }

    /// Whether the waiting call can be answered at `now`.
    pub fn taken_state(&self, now: u64) -> Taken {
        if self.gone {
            return Taken::Gone;
        }
        if self.unread == 0 {
            return Taken::Yes;
        }
        let until = self.moved_at.saturating_add(STREAM_STALL_MS);
        if now >= until {
            Taken::Stalled
        } else {
            Taken::WaitUntil(until)
        }
    }
}

/// A caller's WebSocket upgrade on a channel, as the Worker hands it to the channel's object
/// (hex-encoded JSON in a header: an upgrade request has no body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketCall {
    /// [`Channel::key`].
    pub channel: String,
    /// Path below the channel prefix.
    pub path: String,
    /// Query without `?` (relay parameters removed).
    pub query: String,
    /// Forwarded headers.
    pub headers: Vec<(String, String)>,
}

/// The subprotocol to accept for a caller's socket: the first one it offers (the target
/// answers on the other side of the bridge, after the caller's handshake is done).
pub fn first_subprotocol(offered: &str) -> Option<String> {
    offered
        .split(',')
        .map(str::trim)
        .find(|p| !p.is_empty())
        .map(str::to_owned)
}

/// Frames a JSON head and a raw payload as one body: 4-byte big-endian head length, head,
/// payload. Used for Worker → object calls and for response values in KV.
pub fn frame(head: &[u8], payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(head.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(4 + head.len() + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(payload);
    out
}

/// A request body the Worker put in KV under [`request_body_key`] before calling the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBody {
    /// The request id (its KV key's last part).
    pub id: String,
    /// The body's length in bytes.
    pub len: usize,
}

/// Whether the Worker stores a request body in KV itself instead of sending it to the object.
pub fn store_before_call(len: usize) -> bool {
    len > INLINE_BODY_BYTES
}

/// Like [`unframe`], but takes the framed bytes and gives the payload back in the same
/// allocation (the head is copied out): nothing holds a second copy of a large payload.
pub fn unframe_owned(mut bytes: Vec<u8>) -> Option<(Vec<u8>, Vec<u8>)> {
    let head = unframe(&bytes)?.0.to_vec();
    bytes.drain(..4 + head.len());
    Some((head, bytes))
}

/// Splits what [`frame`] wrote into head and payload; `None` when malformed.
pub fn unframe(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len_bytes: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    let len = usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
    let rest = bytes.get(4..)?;
    let head = rest.get(..len)?;
    let payload = rest.get(len..)?;
    Some((head, payload))
}

/// A stored or delivered response's head (the body travels beside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHead {
    /// HTTP status, 200..=599.
    pub status: u16,
    /// Headers for the caller.
    pub headers: Vec<(String, String)>,
}

/// A bridge's response, checked and decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status and headers.
    pub head: ResponseHead,
    /// The body bytes.
    pub body: Vec<u8>,
}

/// Whether a status must go out with no body (the runtime refuses one).
pub fn null_body_status(status: u16) -> bool {
    matches!(status, 204 | 205 | 304)
}

/// Checks and decodes one bridge response. A status outside 200..=599 (the runtime refuses
/// those) or an oversized body becomes the caller's 502; undecodable base64 is the bridge's
/// error (`Err`). Headers that would reach past the channel are dropped; cookies are scoped
/// when the answer goes out ([`caller_headers`]), to the prefix the caller used.
pub fn decode_response(r: &ccr_protocol::relay::RelayResponse) -> Result<Answer, String> {
    let body = ccr_protocol::relay::decode_body(r.body_base64.as_deref(), r.body.as_deref())
        .map_err(|e| format!("response {}: bodyBase64 is not valid base64: {e}", r.id))?;
    if body.len() > MAX_RELAY_BODY_BYTES {
        return Ok(bad_gateway(&format!(
            "the target's response body is over {MAX_RELAY_BODY_BYTES} bytes"
        )));
    }
    if !(200..=599).contains(&r.status) {
        return Ok(bad_gateway(&format!(
            "the target answered with status {}, which cannot be relayed",
            r.status
        )));
    }
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| forward_response_header(k))
        .cloned()
        .collect();
    let has_content_type = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case(header::CONTENT_TYPE));
    if let (Some(ct), false) = (&r.content_type, has_content_type) {
        headers.push((header::CONTENT_TYPE.into(), ct.clone()));
    }
    let body = if null_body_status(r.status) {
        Vec::new()
    } else {
        body
    };
    Ok(Answer {
        head: ResponseHead {
            status: r.status,
            headers,
        },
        body,
    })
}

/// The headers an answer goes out with to a caller who reached the channel under `prefix`
/// (`/proxy`, `/relay/{name}`, or empty on the channel's own host): each `Set-Cookie` scoped
/// to it ([`ccr_protocol::relay::scope_set_cookie`]; a cookie with a `Domain` dropped).
pub fn caller_headers(headers: &[(String, String)], prefix: &str) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(k, v)| {
            if k.eq_ignore_ascii_case(header::SET_COOKIE) {
                ccr_protocol::relay::scope_set_cookie(v, prefix).map(|v| (k.clone(), v))
            } else {
                Some((k.clone(), v.clone()))
            }
        })
        .collect()
}

/// A 502 JSON answer for a caller.
pub fn bad_gateway(message: &str) -> Answer {
    let body = serde_json::to_vec(&ccr_protocol::api::ErrorBody::new(message)).unwrap_or_default();
    Answer {
        head: ResponseHead {
            status: 502,
            headers: vec![(header::CONTENT_TYPE.into(), header::JSON.into())],
        },
        body,
    }
}

/// The request envelope for a bridge, with the seed's `body` text when small enough.
pub fn envelope(meta: &RequestMeta, id: &str, body: &[u8]) -> ccr_protocol::relay::RelayRequest {
    let (body_base64, text) = ccr_protocol::relay::encode_body(body);
    ccr_protocol::relay::RelayRequest {
        id: id.to_owned(),
        method: meta.method.clone(),
        path: meta.path.clone(),
        query: meta.query.clone(),
        headers: meta.headers.clone(),
        body_base64,
        body: text.filter(|t| t.len() <= SEED_TEXT_BODY_BYTES),
        body_follows: None,
        body_streams: false,
    }
}

/// The request envelope for a bridge's WebSocket: like [`envelope`] for a body of at most
/// [`INLINE_REQUEST_BODY_BYTES`]; a larger body is left out and announced (`bodyFollows`), to
/// be sent after it as binary frames ([`socket_body_frames`]). A large upload as one text
/// message would be its base64 in a JSON string, several copies of the body in the object's
/// memory at once and a message the bridge must read whole before it can read anything else.
pub fn socket_envelope(
    meta: &RequestMeta,
    id: &str,
    body: &[u8],
) -> ccr_protocol::relay::RelayRequest {
    if body.len() <= INLINE_REQUEST_BODY_BYTES {
        return envelope(meta, id, body);
    }
    ccr_protocol::relay::RelayRequest {
        id: id.to_owned(),
        method: meta.method.clone(),
        path: meta.path.clone(),
        query: meta.query.clone(),
        headers: meta.headers.clone(),
        body_base64: None,
        body: None,
        body_follows: Some(body.len() as u64),
        body_streams: false,
    }
}

/// The request envelope for a body that streams from its caller to the bridge's socket as it
/// arrives ([`ccr_protocol::relay::RelayRequest::body_streams`]); `length` is the caller's
/// declared one (none: chunked).
pub fn stream_envelope(
    meta: &RequestMeta,
    id: &str,
    length: Option<u64>,
) -> ccr_protocol::relay::RelayRequest {
    ccr_protocol::relay::RelayRequest {
        id: id.to_owned(),
        method: meta.method.clone(),
        path: meta.path.clone(),
        query: meta.query.clone(),
        headers: meta.headers.clone(),
        body_base64: None,
        body: None,
        body_follows: length,
        body_streams: true,
    }
}

/// Whether the Worker offers a public request's body to the channel's object as a stream
/// (when the channel has a bridge socket): a body of unknown length (chunked), or one declared
/// over [`INLINE_BODY_BYTES`]. A small declared body is read whole and sent inline as before:
/// it costs one call, and nothing would be gained by streaming it.
pub fn may_stream_body(declared: Option<usize>, has_body: bool) -> bool {
    match declared {
        Some(n) => n > INLINE_BODY_BYTES,
        None => has_body,
    }
}

/// One piece of a body the Worker streams to a channel's object: its length (4 bytes, big
/// endian, never 0), then its bytes. The body ends with [`BODY_END`]. The end is in the
/// stream itself because workerd does not carry a stream's error from one Worker to an object:
/// a body whose source failed arrives there as a clean end, so only a missing end marker shows
/// that it broke off.
pub fn body_piece(bytes: &[u8]) -> Vec<u8> {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The marker that ends a streamed body ([`body_piece`]).
pub const BODY_END: [u8; 4] = [0; 4];

/// Largest piece the Worker sends; a bigger announced one is a malformed stream.
pub const MAX_BODY_PIECE: usize = STREAM_CHUNK_BYTES;

/// Reads [`body_piece`]s back out of the bytes of a streamed call as they arrive.
#[derive(Debug, Default)]
pub struct Unpiecer {
    buf: Vec<u8>,
    ended: bool,
}

impl Unpiecer {
    /// Takes more bytes; returns the pieces they complete. An error for a malformed stream
    /// (a piece over [`MAX_BODY_PIECE`], or bytes after the end).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
        if self.ended && !bytes.is_empty() {
            return Err("bytes after the body's end");
        }
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0usize;
        while let Some(len_bytes) = self.buf.get(at..at + 4) {
            let len_bytes: [u8; 4] = len_bytes.try_into().map_err(|_| "bad piece length")?;
            let len = usize::try_from(u32::from_be_bytes(len_bytes)).unwrap_or(usize::MAX);
            if len == 0 {
                self.ended = true;
                if self.buf.len() > at + 4 {
                    return Err("bytes after the body's end");
                }
                at += 4;
                break;
            }
            if len > MAX_BODY_PIECE {
                return Err("a body piece over the largest size");
            }
            let Some(piece) = self.buf.get(at + 4..at + 4 + len) else {
                break;
            };
            out.push(piece.to_vec());
            at += 4 + len;
        }
        self.buf.drain(..at);
        Ok(out)
    }

    /// Whether the end marker arrived.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

/// How long a streamed upload may wait for window (its bridge or target read nothing)
/// before it is given up: its caller gets an answer rather than hanging.
pub const UPLOAD_STALL_MS: u64 = 30_000;

/// Why a caller's body was refused while it streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRefused {
    /// More bytes than the limit (or than declared): 413.
    TooLarge,
    /// Ended before its declared length: the caller gave up (400).
    Short,
}

/// Counts a body's bytes as they stream past, against a limit and the declared length: the
/// first chunk over either is refused, so the body is never read (nor relayed) further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit {
    limit: usize,
    declared: Option<usize>,
    seen: usize,
}

impl BodyLimit {
    /// A body that may hold `limit` bytes and declared `declared`.
    pub fn new(limit: usize, declared: Option<usize>) -> Self {
        Self {
            limit,
            declared,
            seen: 0,
        }
    }

    /// `n` more bytes arrived.
    pub fn take(&mut self, n: usize) -> Result<(), BodyRefused> {
        self.seen = self.seen.saturating_add(n);
        let cap = self.declared.map_or(self.limit, |d| d.min(self.limit));
        if self.seen > cap {
            return Err(BodyRefused::TooLarge);
        }
        Ok(())
    }

    /// The body ended.
    pub fn finish(&self) -> Result<(), BodyRefused> {
        match self.declared {
            Some(d) if d != self.seen => Err(BodyRefused::Short),
            _ => Ok(()),
        }
    }
}

/// The binary frames that carry a body announced by [`socket_envelope`] (none for a body sent
/// inline), in order, each at most [`STREAM_CHUNK_BYTES`] of it.
pub fn socket_body_frames<'a>(id: &'a str, body: &'a [u8]) -> impl Iterator<Item = Vec<u8>> + 'a {
    let announced = body.len() > INLINE_REQUEST_BODY_BYTES;
    body.chunks(STREAM_CHUNK_BYTES)
        .filter(move |_| announced)
        .map(move |piece| chunk_frame(id, piece))
}

/// What the channel keeps about a public request besides its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMeta {
    /// HTTP method.
    pub method: String,
    /// Path below the channel prefix.
    pub path: String,
    /// Query without `?`.
    pub query: String,
    /// Forwarded headers.
    pub headers: Vec<(String, String)>,
}

/// Where a queued request's body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyAt {
    /// No body.
    Empty,
    /// In the object's memory.
    Inline(Vec<u8>),
    /// In KV under [`request_body_key`], this many bytes.
    Kv(usize),
}

impl BodyAt {
    /// The body's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            BodyAt::Empty => 0,
            BodyAt::Inline(b) => b.len(),
            BodyAt::Kv(n) => *n,
        }
    }
}

/// A request waiting for a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Its id.
    pub id: String,
    /// Method, path, query, headers.
    pub meta: RequestMeta,
    /// Its body.
    pub body: BodyAt,
}

/// KV key of a request body.
pub fn request_body_key(channel_key: &str, id: &str) -> String {
    format!("req/{channel_key}/{id}")
}

/// KV key of a late response ([`frame`]d head + body).
pub fn response_key(channel_key: &str, id: &str) -> String {
    format!("res/{channel_key}/{id}")
}

/// Whether an id looks like one this relay hands out (32 lowercase hex digits).
pub fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// [`MAX_QUEUED`] requests already wait, or [`MAX_IN_FLIGHT`] are unanswered.
    #[error("the relay channel is busy: too many requests are waiting for its bridge")]
    Full,
}

/// Why a bridge's response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RespondError {
    /// The id was already answered.
    #[error("a response for this id was already accepted")]
    Duplicate,
    /// The id was never handed to a bridge, or expired.
    #[error("no request with this id is waiting for a response")]
    Unknown,
}

/// What cancelling a caller's request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// It was still queued and is now gone; its body was here.
    WasQueued(BodyAt),
    /// A bridge has it; its response will be kept for `_result`.
    InFlight,
    /// Already answered or unknown.
    Nothing,
}

/// The 504 body for a caller whose request no bridge answered within [`CALLER_WAIT_MS`];
/// where the request was (`cancelled`) says whether its answer will be kept at `_result`.
pub fn unanswered_body(id: &str, prefix: &str, cancelled: &Cancelled) -> Value {
    let secs = CALLER_WAIT_MS / 1000;
    match cancelled {
        Cancelled::WasQueued(_) | Cancelled::Nothing => json!({
            "ok": false,
            "error": format!("no relay bridge took this request within {secs} s; is relay-bridge running for this channel?"),
            "id": id,
        }),
        Cancelled::InFlight => {
            let result_path = format!("{prefix}/_result/{id}");
            json!({
                "ok": false,
                "error": format!("the bridge has not answered within {secs} s; its answer will be kept for {RESULT_TTL_SECS} s at {result_path}"),
                "id": id,
                "resultPath": result_path,
            })
        }
    }
}

/// One bridge response's outcome: accepted, or refused with a status and message.
pub type Accepted = Result<(), (u16, String)>;

/// The answer to a batch of bridge responses: `ok` only when every one was accepted, and
/// each one's outcome by id.
pub fn batch_results(results: Vec<(String, Accepted)>) -> Value {
    let all_ok = results.iter().all(|(_, r)| r.is_ok());
    let items: Vec<Value> = results
        .into_iter()
        .map(|(id, r)| match r {
            Ok(()) => json!({"id": id, "ok": true}),
            Err((status, message)) => {
                json!({"id": id, "ok": false, "status": status, "error": message})
            }
        })
        .collect();
    json!({"ok": all_ok, "results": items})
}

/// One channel's queue, in-flight set and recent answers. Time is passed in (ms).
#[derive(Debug, Default)]
pub struct ChannelState {
    queue: VecDeque<Queued>,
    /// Handed to a confirming bridge and not confirmed yet: id → (lease end, the request, to
    /// queue again when the lease ends).
    leased: HashMap<String, (u64, Queued)>,
    /// Queued again after their lease ended: a bridge had them, so its late confirmation or
    /// answer still takes them back.
    returned: HashSet<String>,
    /// id → when it may no longer be answered.
    in_flight: HashMap<String, u64>,
    /// Answered ids, oldest first, with until when a second response is a duplicate.
    answered: VecDeque<(String, u64)>,
    answered_ids: HashSet<String>,
    inline_bytes: usize,
}

impl ChannelState {
    /// Requests waiting for a bridge.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Requests a bridge holds.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Requests handed out and not confirmed yet.
    #[cfg(test)]
    pub fn leased(&self) -> usize {
        self.leased.len()
    }

    /// Whether a body of `len` bytes should stay in memory.
    pub fn keep_inline(&self, len: usize) -> bool {
        len <= INLINE_BODY_BYTES && self.inline_bytes.saturating_add(len) <= INLINE_TOTAL_BYTES
    }

    /// Whether another request may be queued now.
    pub fn has_room(&self) -> bool {
        self.queue.len() < MAX_QUEUED && self.in_flight.len() < MAX_IN_FLIGHT
    }

    /// Queues a request.
    pub fn enqueue(&mut self, item: Queued) -> Result<(), QueueError> {
        if !self.has_room() {
            return Err(QueueError::Full);
        }
        if let BodyAt::Inline(b) = &item.body {
            self.inline_bytes = self.inline_bytes.saturating_add(b.len());
        }
        self.queue.push_back(item);
        Ok(())
    }

    /// Hands out up to `max` requests (and about [`POLL_BATCH_BYTES`] of bodies, at least one
    /// request) in arrival order; they are in flight from `now`. `leased`: the poll is a
    /// confirming bridge's, so each stays leased for [`LEASE_MS`] (see [`Self::confirm`]).
    pub fn take_batch(&mut self, max: usize, now: u64, leased: bool) -> Vec<Queued> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max {
            let next_len = match self.queue.front() {
                Some(q) => q.body.len(),
                None => break,
            };
            if !out.is_empty() && bytes.saturating_add(next_len) > POLL_BATCH_BYTES {
                break;
            }
            let Some(item) = self.queue.pop_front() else {
                break;
            };
            bytes = bytes.saturating_add(next_len);
            self.returned.remove(&item.id);
            self.in_flight
                .insert(item.id.clone(), now + RESULT_TTL_SECS * 1000);
            if leased {
                // Its inline body stays counted: the lease keeps it until confirmed.
                self.leased.insert(
                    item.id.clone(),
                    (now.saturating_add(LEASE_MS), item.clone()),
                );
            } else {
                self.release(&item.body);
            }
            out.push(item);
        }
        out
    }

    /// Stops counting an inline body that left the object.
    fn release(&mut self, body: &BodyAt) {
        if let BodyAt::Inline(b) = body {
            self.inline_bytes = self.inline_bytes.saturating_sub(b.len());
        }
    }

    /// Removes `id` from the queue (it was there again after a lease ended).
    fn unqueue(&mut self, id: &str) -> Option<Queued> {
        let pos = self.queue.iter().position(|q| q.id == id)?;
        let item = self.queue.remove(pos)?;
        self.returned.remove(id);
        self.release(&item.body);
        Some(item)
    }

    /// Takes `id` back out of the queue if it is there only because its lease ended.
    fn take_back(&mut self, id: &str) -> bool {
        self.returned.contains(id) && self.unqueue(id).is_some()
    }

    /// A bridge confirms it received `ids` (a new poll or `_ack`): their leases end, and a
    /// request whose lease had already ended and that is queued again is taken back out, in
    /// flight for this bridge. Unknown or already confirmed ids are ignored.
    pub fn confirm(&mut self, ids: &[String], now: u64) {
        for id in ids {
            if let Some((_, item)) = self.leased.remove(id) {
                self.release(&item.body);
            } else if self.take_back(id) {
                self.in_flight
                    .insert(id.clone(), now + RESULT_TTL_SECS * 1000);
            }
        }
    }

    /// Leases that ended unconfirmed at `now`: their requests go back to the front of the
    /// queue, oldest hand-over first. Returns whether any did.
    pub fn expire_leases(&mut self, now: u64) -> bool {
        let mut ended: Vec<(u64, String)> = self
            .leased
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .map(|(id, (until, _))| (*until, id.clone()))
            .collect();
        if ended.is_empty() {
            return false;
        }
        // Pushed to the front newest first, so the oldest ends up first.
        ended.sort();
        for (_, id) in ended.into_iter().rev() {
            if let Some((_, item)) = self.leased.remove(&id) {
                self.in_flight.remove(&id);
                self.returned.insert(id);
                self.queue.push_front(item);
            }
        }
        true
    }

    /// When the earliest lease ends.
    pub fn next_lease_end(&self) -> Option<u64> {
        self.leased.values().map(|(until, _)| *until).min()
    }

    /// The caller of `id` stopped waiting: drop it if no bridge has it yet.
    pub fn cancel(&mut self, id: &str) -> Cancelled {
        if let Some(item) = self.unqueue(id) {
            return Cancelled::WasQueued(item.body);
        }
        if let Some((_, item)) = self.leased.remove(id) {
            // A bridge may hold it: its answer will still be kept.
            self.release(&item.body);
        }
        if self.in_flight.contains_key(id) {
            Cancelled::InFlight
        } else {
            Cancelled::Nothing
        }
    }

    /// Whether a bridge holds `id` and has not answered it.
    pub fn is_in_flight(&self, id: &str) -> bool {
        self.in_flight.contains_key(id)
    }

    /// Records a bridge's response for `id`: only an id handed out (in flight, or queued again
    /// after its lease ended: the answer is the confirmation), only once.
    pub fn accept_response(&mut self, id: &str, now: u64) -> Result<(), RespondError> {
        if self.answered_ids.contains(id) {
            return Err(RespondError::Duplicate);
        }
        if let Some((_, item)) = self.leased.remove(id) {
            self.release(&item.body);
        }
        if self.in_flight.remove(id).is_none() && !self.take_back(id) {
            return Err(RespondError::Unknown);
        }
        self.answered
            .push_back((id.to_owned(), now + RESULT_TTL_SECS * 1000));
        self.answered_ids.insert(id.to_owned());
        self.forget_answers(now);
        Ok(())
    }

    /// A request handed straight to a bridge's socket, not queued (its body streams from the
    /// caller as it is pushed): in flight from `now`, within the same bound as the queue.
    pub fn start_direct(&mut self, id: &str, now: u64) -> Result<(), QueueError> {
        if !self.has_room() {
            return Err(QueueError::Full);
        }
        self.in_flight
            .insert(id.to_owned(), now + RESULT_TTL_SECS * 1000);
        Ok(())
    }

    /// A request handed out could not be delivered (its body was lost): forget it.
    pub fn drop_in_flight(&mut self, id: &str) {
        self.in_flight.remove(id);
        if let Some((_, item)) = self.leased.remove(id) {
            self.release(&item.body);
        }
    }

    /// Forgets in-flight ids and answers older than [`RESULT_TTL_SECS`].
    pub fn sweep(&mut self, now: u64) {
        self.in_flight.retain(|_, until| *until > now);
        self.forget_answers(now);
    }

    /// Drops expired answers and, past [`MAX_ANSWERED`], the oldest.
    fn forget_answers(&mut self, now: u64) {
        while let Some((id, until)) = self.answered.front() {
            if *until > now && self.answered.len() <= MAX_ANSWERED {
                break;
            }
            self.answered_ids.remove(id);
            self.answered.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccr_protocol::relay::RelayResponse;

    fn named(n: &str) -> Channel {
        Channel::Named(n.into())
    }

    #[test]
    fn routes() {
        use RelayRoute::*;
        assert_eq!(parse_route("GET", "/ping"), Some(Ping));
        assert_eq!(parse_route("POST", "/ping"), Some(MethodNotAllowed("GET")));
        assert_eq!(parse_route("GET", "/health"), None);
        assert_eq!(parse_route("GET", "/proxyx"), None);
        assert_eq!(parse_route("GET", "/relayed/x"), None);
        assert_eq!(
            first_subprotocol(" vite-hmr, other"),
            Some("vite-hmr".into())
        );
        assert_eq!(first_subprotocol(" , "), None);
        assert_eq!(
            parse_route("GET", "/relay/alpha/_ws"),
            Some(BridgeSocket(Channel::Named("alpha".into())))
        );
        assert_eq!(
            parse_route("POST", "/proxy/_ws"),
            Some(MethodNotAllowed("GET"))
        );
        assert_eq!(
            parse_route("GET", "/proxy"),
            Some(Public {
                channel: Channel::Default,
                path: "/".into()
            })
        );
        assert_eq!(
            parse_route("DELETE", "/proxy/a/b/"),
            Some(Public {
                channel: Channel::Default,
                path: "/a/b/".into()
            })
        );
        assert_eq!(
            parse_route("GET", "/proxy/_poll"),
            Some(Poll(Channel::Default))
        );
        assert_eq!(
            parse_route("POST", "/proxy/_poll"),
            Some(MethodNotAllowed("GET"))
        );
        assert_eq!(
            parse_route("POST", "/relay/alpha/_respond"),
            Some(Respond(named("alpha")))
        );
        assert_eq!(
            parse_route("GET", "/relay/alpha/_result/abc"),
            Some(Result {
                channel: named("alpha"),
                id: "abc".into()
            })
        );
        assert_eq!(
            parse_route("GET", "/relay/alpha"),
            Some(Public {
                channel: named("alpha"),
                path: "/".into()
            })
        );
        assert_eq!(
            parse_route("PUT", "/relay/alpha/_pollx?"),
            Some(Public {
                channel: named("alpha"),
                path: "/_pollx?".into()
            })
        );
        assert_eq!(
            parse_route("POST", "/relay/alpha/_ack"),
            Some(Ack(named("alpha")))
        );
        assert_eq!(
            parse_route("GET", "/proxy/_ack"),
            Some(MethodNotAllowed("POST"))
        );
        assert_eq!(parse_route("GET", "/relay"), Some(NoChannel));
        assert_eq!(parse_route("GET", "/relay/"), Some(NoChannel));
        assert_eq!(
            parse_route("GET", "/relay/Bad_Name/x"),
            Some(BadChannel("Bad_Name".into()))
        );
        assert!(is_relay_path("/proxy/x") && is_relay_path("/relay") && is_relay_path("/ping"));
        assert!(!is_relay_path("/sessions") && !is_relay_path("/proxyfoo"));
    }

    #[test]
    fn channel_hosts() {
        let s = "relay.example.com";
        assert_eq!(
            host_channel("alpha.relay.example.com", s),
            Some("alpha".into())
        );
        assert_eq!(
            host_channel("Alpha.Relay.Example.com:8443", s),
            Some("alpha".into())
        );
        assert_eq!(
            host_channel("alpha.relay.example.com.", ".relay.example.com"),
            Some("alpha".into())
        );
        for other in [
            "relay.example.com",
            "a.b.relay.example.com",
            "alpharelay.example.com",
            "Bad_Name.relay.example.com",
            "alpha.relay.example.org",
            "",
        ] {
            assert_eq!(host_channel(other, s), None, "{other}");
        }
        assert_eq!(host_channel("alpha.relay.example.com", ""), None);
        use RelayRoute::*;
        assert_eq!(
            parse_host_route("GET", "alpha", "/"),
            Some(Public {
                channel: named("alpha"),
                path: "/".into()
            })
        );
        assert_eq!(
            parse_host_route("GET", "alpha", "/relay/beta/x"),
            Some(Public {
                channel: named("alpha"),
                path: "/relay/beta/x".into()
            })
        );
        assert_eq!(
            parse_host_route("GET", "alpha", "/_poll"),
            Some(Poll(named("alpha")))
        );
        assert_eq!(
            parse_host_route("GET", "alpha", "/proxy/x"),
            Some(Public {
                channel: named("alpha"),
                path: "/proxy/x".into()
            })
        );
    }

    #[test]
    fn channel_keys_never_collide() {
        assert_eq!(Channel::Default.key(), "default");
        assert_eq!(named("default").key(), "c:default");
        assert_eq!(named("a").prefix(), "/relay/a");
    }

    #[test]
    fn tokens_are_per_channel() {
        let master = "master-token";
        let alpha = derive_key(master, "alpha");
        assert_eq!(check_token(master, &Channel::Default, Some(master)), Ok(()));
        assert_eq!(check_token(master, &named("alpha"), Some(&alpha)), Ok(()));
        assert_eq!(
            check_token(master, &named("beta"), Some(&alpha)),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            check_token(master, &Channel::Default, Some(&alpha)),
            Err(TokenError::Invalid)
        );
        // The master token does not serve a named channel: only its derived token does.
        assert_eq!(
            check_token(master, &named("alpha"), Some(master)),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            check_token(master, &Channel::Default, None),
            Err(TokenError::Missing)
        );
        assert_eq!(
            check_token("", &Channel::Default, Some("")),
            Err(TokenError::NotConfigured)
        );
        assert!(check_public_key("", None));
        assert!(check_public_key("k", Some("k")));
        assert!(!check_public_key("k", Some("j")));
        assert!(!check_public_key("k", None));
    }

    #[test]
    fn header_filters() {
        for h in [
            "Connection",
            "host",
            "Content-Length",
            "cf-ray",
            "X-Relay-Key",
            "x-token",
        ] {
            assert!(!ccr_protocol::relay::forward_request_header(h), "{h}");
        }
        for h in ["content-type", "authorization", "x-custom", "cookie"] {
            assert!(ccr_protocol::relay::forward_request_header(h), "{h}");
        }
        assert!(!forward_response_header("transfer-encoding"));
        assert!(forward_response_header("set-cookie"));
    }

    #[test]
    fn query_handling() {
        assert_eq!(
            take_query_param("a=1&_relay_key=k&b=2", wire_query::RELAY_KEY),
            ("a=1&b=2".into(), Some("k".into()))
        );
        assert_eq!(take_query_param("", "x"), (String::new(), None));
        assert_eq!(poll_wait_ms(""), Ok(0));
        assert_eq!(poll_wait_ms("wait=2"), Ok(2000));
        assert_eq!(poll_wait_ms("wait=0.5"), Ok(500));
        assert_eq!(poll_wait_ms("wait=0"), Ok(0));
        assert_eq!(poll_wait_ms("wait=999"), Ok(CALLER_WAIT_MS));
        assert!(poll_wait_ms("wait=-1").is_err());
        assert!(poll_wait_ms("wait=nan").is_err());
        assert!(poll_wait_ms("wait=abc").is_err());
        let (a, b) = ("0".repeat(32), "1".repeat(32));
        assert_eq!(poll_acks("wait=1"), None);
        assert_eq!(poll_acks("ack="), Some(vec![]));
        assert_eq!(
            poll_acks(&format!("ack={a},../x,{b}&max=2")),
            Some(vec![a.clone(), b])
        );
        let many = vec![a; MAX_ACK_IDS + 5].join(",");
        assert_eq!(
            poll_acks(&format!("ack={many}")).map(|v| v.len()),
            Some(MAX_ACK_IDS)
        );
        assert_eq!(poll_max("max=3"), 3);
        assert_eq!(poll_max("max=0"), 1);
        assert_eq!(poll_max("max=100000"), MAX_POLL_BATCH);
        assert_eq!(poll_max(""), MAX_POLL_BATCH);
    }

    #[test]
    fn framing_round_trips_and_rejects_garbage() {
        let f = frame(b"{\"a\":1}", &[0, 1, 2, 255]);
        assert_eq!(
            unframe(&f),
            Some((&b"{\"a\":1}"[..], &[0u8, 1, 2, 255][..]))
        );
        let empty = frame(b"", b"");
        assert_eq!(unframe(&empty), Some((&b""[..], &b""[..])));
        assert_eq!(
            unframe_owned(f.clone()),
            Some((b"{\"a\":1}".to_vec(), vec![0u8, 1, 2, 255]))
        );
        assert_eq!(unframe_owned(vec![0, 0, 0, 9, b'x']), None);
        assert!(store_before_call(INLINE_BODY_BYTES + 1) && !store_before_call(INLINE_BODY_BYTES));
        assert_eq!(unframe(&[0, 0]), None);
        assert_eq!(unframe(&[0, 0, 0, 9, b'x']), None);
        let call = DoCall::Poll {
            channel: "default".into(),
            wait_ms: 1000,
            max: 4,
            ack: None,
        };
        let text = serde_json::to_string(&call).unwrap();
        assert_eq!(
            text,
            r#"{"op":"poll","channel":"default","wait_ms":1000,"max":4,"ack":null}"#
        );
        assert_eq!(serde_json::from_str::<DoCall>(&text).unwrap(), call);
    }

    fn response(status: u16) -> RelayResponse {
        RelayResponse {
            id: "x".into(),
            status,
            headers: vec![
                ("content-length".into(), "3".into()),
                ("x-k".into(), "v".into()),
            ],
            body_base64: None,
            body: Some("abc".into()),
            content_type: Some("text/plain".into()),
        }
    }

    #[test]
    fn channels_come_back_from_their_keys() {
        for ch in [Channel::Default, named("alpha")] {
            assert_eq!(Channel::from_key(&ch.key()), Some(ch));
        }
        assert_eq!(Channel::from_key("c:Bad_Name"), None);
        assert_eq!(Channel::from_key("alpha"), None);
    }

    #[test]
    fn responses_stay_inside_their_channel() {
        let mut r = response(200);
        r.headers = vec![
            ("Set-Cookie".into(), "a=1; Path=/".into()),
            ("set-cookie".into(), "b=2; Domain=example.com".into()),
            ("Service-Worker-Allowed".into(), "/".into()),
            ("x-k".into(), "v".into()),
        ];
        let got = decode_response(&r).unwrap();
        assert_eq!(
            caller_headers(&got.head.headers, "/relay/a"),
            vec![
                ("Set-Cookie".to_string(), "a=1; Path=/relay/a/".to_string()),
                ("x-k".into(), "v".into()),
                ("content-type".into(), "text/plain".into()),
            ]
        );
        // On the channel's own host, its cookies are the host's.
        assert_eq!(
            caller_headers(&got.head.headers, "")[0],
            ("Set-Cookie".to_string(), "a=1; Path=/".to_string())
        );
    }

    #[test]
    fn responses_are_checked() {
        let ok = decode_response(&response(201)).unwrap();
        assert_eq!(ok.head.status, 201);
        assert_eq!(ok.body, b"abc");
        assert_eq!(
            ok.head.headers,
            vec![
                ("x-k".to_string(), "v".to_string()),
                ("content-type".into(), "text/plain".into())
            ]
        );
        assert!(decode_response(&response(204)).unwrap().body.is_empty());
        assert_eq!(decode_response(&response(101)).unwrap().head.status, 502);
        assert_eq!(decode_response(&response(600)).unwrap().head.status, 502);
        let mut bad = response(200);
        bad.body_base64 = Some("!!!".into());
        assert!(decode_response(&bad).is_err());
    }

    #[test]
    fn seed_text_only_for_small_utf8_bodies() {
        let meta = RequestMeta {
            method: "POST".into(),
            path: "/echo".into(),
            query: String::new(),
            headers: vec![],
        };
        let small = envelope(&meta, "i", b"hi");
        assert_eq!(small.body.as_deref(), Some("hi"));
        let big = vec![b'a'; SEED_TEXT_BODY_BYTES + 1];
        let env = envelope(&meta, "i", &big);
        assert!(env.body.is_none() && env.body_base64.is_some());
        assert!(envelope(&meta, "i", &[0xff]).body.is_none());
    }

    #[test]
    fn large_bodies_follow_a_socket_envelope_as_frames() {
        let meta = RequestMeta {
            method: "POST".into(),
            path: "/up".into(),
            query: String::new(),
            headers: vec![],
        };
        let id = "0123456789abcdef0123456789abcdef";
        let small = vec![7u8; INLINE_REQUEST_BODY_BYTES];
        assert_eq!(
            socket_envelope(&meta, id, &small),
            envelope(&meta, id, &small)
        );
        assert_eq!(socket_body_frames(id, &small).count(), 0);
        let big: Vec<u8> = (0..STREAM_CHUNK_BYTES * 2 + 5).map(|i| i as u8).collect();
        let env = socket_envelope(&meta, id, &big);
        assert_eq!(env.body_follows, Some(big.len() as u64));
        assert!(env.body_base64.is_none() && env.body.is_none());
        let frames: Vec<Vec<u8>> = socket_body_frames(id, &big).collect();
        assert_eq!(frames.len(), 3);
        let mut joined = Vec::new();
        for f in &frames {
            let (fid, bytes) = ccr_protocol::relay::split_chunk_frame(f).unwrap();
            assert_eq!(fid, id);
            assert!(bytes.len() <= STREAM_CHUNK_BYTES);
            joined.extend_from_slice(bytes);
        }
        assert_eq!(joined, big);
    }

    fn item(id: &str, body: BodyAt) -> Queued {
        Queued {
            id: id.into(),
            meta: RequestMeta {
                method: "GET".into(),
                path: "/".into(),
                query: String::new(),
                headers: vec![],
            },
            body,
        }
    }

    #[test]
    fn queue_bound_is_enforced() {
        let mut ch = ChannelState::default();
        for i in 0..MAX_QUEUED {
            ch.enqueue(item(&i.to_string(), BodyAt::Empty)).unwrap();
        }
        assert_eq!(
            ch.enqueue(item("over", BodyAt::Empty)),
            Err(QueueError::Full)
        );
        assert_eq!(ch.take_batch(10, 0, false).len(), 10);
        assert!(ch.enqueue(item("now-fits", BodyAt::Empty)).is_ok());
    }

    #[test]
    fn batches_respect_count_and_bytes() {
        let mut ch = ChannelState::default();
        ch.enqueue(item("a", BodyAt::Kv(POLL_BATCH_BYTES))).unwrap();
        ch.enqueue(item("b", BodyAt::Kv(10))).unwrap();
        ch.enqueue(item("c", BodyAt::Inline(vec![1; 10]))).unwrap();
        ch.enqueue(item("d", BodyAt::Empty)).unwrap();
        // A body as big as the budget still goes out, alone.
        let first = ch.take_batch(10, 0, false);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].id, "a");
        let next = ch.take_batch(2, 0, false);
        assert_eq!(
            next.iter().map(|q| q.id.as_str()).collect::<Vec<_>>(),
            ["b", "c"]
        );
        assert_eq!(ch.queued(), 1);
        assert_eq!(ch.in_flight(), 3);
        assert!(ch.take_batch(10, 0, false).len() == 1 && ch.take_batch(10, 0, false).is_empty());
    }

    #[test]
    fn inline_budget() {
        let mut ch = ChannelState::default();
        assert!(ch.keep_inline(INLINE_BODY_BYTES));
        assert!(!ch.keep_inline(INLINE_BODY_BYTES + 1));
        let per = INLINE_BODY_BYTES;
        for i in 0..INLINE_TOTAL_BYTES / per {
            ch.enqueue(item(&i.to_string(), BodyAt::Inline(vec![0; per])))
                .unwrap();
        }
        assert!(!ch.keep_inline(1));
        assert!(matches!(
            ch.cancel("0"),
            Cancelled::WasQueued(BodyAt::Inline(_))
        ));
        assert!(ch.keep_inline(per));
        ch.take_batch(MAX_POLL_BATCH, 0, false);
        assert!(ch.keep_inline(per));
    }

    #[test]
    fn responses_match_once() {
        let mut ch = ChannelState::default();
        ch.enqueue(item("a", BodyAt::Empty)).unwrap();
        ch.enqueue(item("b", BodyAt::Empty)).unwrap();
        // Not yet handed out: unknown to a bridge.
        assert_eq!(ch.accept_response("a", 0), Err(RespondError::Unknown));
        ch.take_batch(1, 0, false);
        assert!(ch.is_in_flight("a"));
        assert_eq!(ch.accept_response("a", 1), Ok(()));
        assert_eq!(ch.accept_response("a", 2), Err(RespondError::Duplicate));
        assert_eq!(ch.accept_response("zzz", 2), Err(RespondError::Unknown));
        // Cancelling: queued → removed; in flight → kept for a late answer.
        assert_eq!(ch.cancel("b"), Cancelled::WasQueued(BodyAt::Empty));
        assert_eq!(ch.queued(), 0);
        ch.enqueue(item("c", BodyAt::Empty)).unwrap();
        ch.take_batch(1, 0, false);
        assert_eq!(ch.cancel("c"), Cancelled::InFlight);
        assert_eq!(ch.cancel("a"), Cancelled::Nothing);
        // Everything expires after the result TTL.
        let later = RESULT_TTL_SECS * 1000 + 10;
        ch.sweep(later);
        assert_eq!(ch.in_flight(), 0);
        assert_eq!(ch.accept_response("a", later), Err(RespondError::Unknown));
    }

    #[test]
    fn an_unconfirmed_lease_goes_back_to_the_front_of_the_queue() {
        let mut ch = ChannelState::default();
        ch.enqueue(item("a", BodyAt::Inline(vec![1; 10]))).unwrap();
        ch.enqueue(item("b", BodyAt::Empty)).unwrap();
        ch.enqueue(item("c", BodyAt::Empty)).unwrap();
        // A confirming bridge's poll takes a and b; nobody confirms them.
        let got = ch.take_batch(2, 1_000, true);
        assert_eq!(got.len(), 2);
        assert_eq!((ch.leased(), ch.in_flight(), ch.queued()), (2, 2, 1));
        assert_eq!(ch.next_lease_end(), Some(1_000 + LEASE_MS));
        // The leased inline body is still held (and counted) for a second hand-over.
        assert!(!ch.keep_inline(INLINE_TOTAL_BYTES - 5));
        assert!(!ch.expire_leases(1_000 + LEASE_MS - 1));
        assert!(ch.expire_leases(1_000 + LEASE_MS));
        assert_eq!((ch.leased(), ch.in_flight(), ch.queued()), (0, 0, 3));
        // Back in front, in their order, before c; the next poll (another bridge) gets them.
        let again = ch.take_batch(10, 5_000, true);
        assert_eq!(
            again.iter().map(|q| q.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(again[0].body, BodyAt::Inline(vec![1; 10]));
        // Confirmed in time: the lease ends for good and the body is no longer counted.
        ch.confirm(&["a".into(), "b".into(), "c".into(), "zzz".into()], 5_500);
        assert_eq!((ch.leased(), ch.in_flight()), (0, 3));
        assert!(ch.keep_inline(INLINE_TOTAL_BYTES.min(INLINE_BODY_BYTES)));
        assert!(!ch.expire_leases(60_000));
        assert_eq!(ch.accept_response("a", 6_000), Ok(()));
    }

    #[test]
    fn a_late_confirmation_or_answer_takes_a_request_back_from_the_queue() {
        let mut ch = ChannelState::default();
        ch.enqueue(item("a", BodyAt::Empty)).unwrap();
        ch.enqueue(item("b", BodyAt::Empty)).unwrap();
        ch.take_batch(2, 0, true);
        assert!(ch.expire_leases(LEASE_MS));
        assert_eq!(ch.queued(), 2);
        // The bridge was alive but slow: its confirmation of a, or its answer to b, arrives
        // before another poll took them. Neither runs a second time.
        ch.confirm(&["a".into()], LEASE_MS + 1);
        assert_eq!(ch.accept_response("b", LEASE_MS + 2), Ok(()));
        assert_eq!((ch.queued(), ch.in_flight(), ch.leased()), (0, 1, 0));
        assert!(ch.take_batch(10, LEASE_MS + 3, true).is_empty());
        assert_eq!(ch.accept_response("a", LEASE_MS + 4), Ok(()));
    }

    #[test]
    fn seed_polls_and_cancelled_callers_hold_no_lease() {
        let mut ch = ChannelState::default();
        ch.enqueue(item("a", BodyAt::Inline(vec![0; 8]))).unwrap();
        ch.take_batch(1, 0, false);
        assert_eq!((ch.leased(), ch.in_flight()), (0, 1));
        assert!(!ch.expire_leases(u64::MAX / 2));
        assert!(ch.keep_inline(INLINE_TOTAL_BYTES.min(INLINE_BODY_BYTES)));
        ch.enqueue(item("b", BodyAt::Inline(vec![0; 8]))).unwrap();
        ch.take_batch(1, 0, true);
        assert_eq!(ch.cancel("b"), Cancelled::InFlight);
        assert_eq!(ch.leased(), 0);
        assert!(!ch.expire_leases(u64::MAX / 2));
        assert_eq!(ch.inline_bytes, 0);
    }

    #[test]
    fn answered_ids_are_bounded() {
        let mut ch = ChannelState::default();
        for i in 0..MAX_ANSWERED + 5 {
            ch.enqueue(item(&i.to_string(), BodyAt::Empty)).unwrap();
            ch.take_batch(1, 0, false);
            ch.accept_response(&i.to_string(), 0).unwrap();
        }
        assert_eq!(ch.answered.len(), MAX_ANSWERED);
        assert_eq!(ch.answered_ids.len(), MAX_ANSWERED);
        // The oldest are forgotten; the newest still count as answered.
        assert_eq!(ch.accept_response("0", 1), Err(RespondError::Unknown));
        let newest = (MAX_ANSWERED + 4).to_string();
        assert_eq!(ch.accept_response(&newest, 1), Err(RespondError::Duplicate));
    }

    #[test]
    fn ids() {
        assert!(valid_id("0123456789abcdef0123456789abcdef"));
        assert!(!valid_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!valid_id("../x"));
    }

    #[test]
    fn unanswered_callers_learn_where_their_request_is() {
        let id = "0123456789abcdef0123456789abcdef";
        let secs = CALLER_WAIT_MS / 1000;
        for gone in [Cancelled::Nothing, Cancelled::WasQueued(BodyAt::Empty)] {
            assert_eq!(
                unanswered_body(id, "/relay/ch", &gone),
                json!({"ok": false, "id": id, "error": format!(
                    "no relay bridge took this request within {secs} s; is relay-bridge running for this channel?"
                )})
            );
        }
        let held = unanswered_body(id, "/relay/ch", &Cancelled::InFlight);
        assert_eq!(held["ok"], false);
        assert_eq!(held["resultPath"], format!("/relay/ch/_result/{id}"));
        assert_eq!(
            held["error"],
            format!(
                "the bridge has not answered within {secs} s; its answer will be kept for {RESULT_TTL_SECS} s at /relay/ch/_result/{id}"
            )
        );
    }

    #[test]
    fn batch_results_report_each_response() {
        assert_eq!(
            batch_results(vec![("a".into(), Ok(())), ("b".into(), Ok(()))]),
            json!({"ok": true, "results": [{"id": "a", "ok": true}, {"id": "b", "ok": true}]})
        );
        assert_eq!(
            batch_results(vec![
                ("a".into(), Ok(())),
                ("b".into(), Err((409, "dup".into())))
            ]),
            json!({"ok": false, "results": [
                {"id": "a", "ok": true},
                {"id": "b", "ok": false, "status": 409, "error": "dup"},
            ]})
        );
        assert_eq!(batch_results(vec![]), json!({"ok": true, "results": []}));
    }

    #[test]
    fn stream_calls_route_and_parse() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parse_route("POST", &format!("/proxy/_stream/{id}")),
            Some(RelayRoute::Stream {
                channel: Channel::Default,
                id: id.into()
            })
        );
        assert_eq!(
            parse_host_route("POST", "alpha", &format!("/_stream/{id}")),
            Some(RelayRoute::Stream {
                channel: named("alpha"),
                id: id.into()
            })
        );
        assert_eq!(
            parse_route("GET", &format!("/relay/a/_stream/{id}")),
            Some(RelayRoute::MethodNotAllowed("POST"))
        );
        // No id, or more than one segment: a public path like any other.
        for path in ["/proxy/_stream", "/proxy/_stream/", "/proxy/_stream/a/b"] {
            assert!(
                matches!(parse_route("POST", path), Some(RelayRoute::Public { .. })),
                "{path}"
            );
        }
        assert_eq!(stream_step("seq=0"), Ok(StreamStep { seq: 0, end: None }));
        assert_eq!(
            stream_step("seq=3&end=1"),
            Ok(StreamStep {
                seq: 3,
                end: Some(StreamEnd::Complete)
            })
        );
        assert_eq!(
            stream_step("end=abort&seq=9"),
            Ok(StreamStep {
                seq: 9,
                end: Some(StreamEnd::Abort)
            })
        );
        for bad in ["", "seq=", "seq=-1", "seq=x", "seq=1&end=2", "seq=0&end=1"] {
            assert!(stream_step(bad).is_err(), "{bad}");
        }
        let call = DoCall::Stream {
            channel: "default".into(),
            id: id.into(),
            seq: 2,
            end: Some(StreamEnd::Complete),
        };
        let text = serde_json::to_value(&call).unwrap();
        assert_eq!(
            text,
            json!({"op": "stream", "channel": "default", "id": id, "seq": 2, "end": "complete"})
        );
        assert_eq!(serde_json::from_value::<DoCall>(text).unwrap(), call);
    }

    #[test]
    fn streamed_heads_are_checked_like_whole_answers() {
        let head = stream_head(StreamHead {
            status: 200,
            headers: vec![
                ("content-type".into(), "text/event-stream".into()),
                ("transfer-encoding".into(), "chunked".into()),
                ("service-worker-allowed".into(), "/".into()),
                ("content-length".into(), "5".into()),
                ("set-cookie".into(), "s=1".into()),
            ],
        })
        .unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(
            head.headers,
            vec![
                ("content-type".to_owned(), "text/event-stream".to_owned()),
                ("set-cookie".to_owned(), "s=1".to_owned()),
            ]
        );
        for status in [0, 101, 199, 600] {
            assert!(stream_head(StreamHead {
                status,
                headers: vec![]
            })
            .is_err());
        }
    }

    #[test]
    fn a_chunk_call_is_answered_once_its_bytes_are_taken() {
        let mut l = ChunkLedger::new(1_000);
        assert_eq!(l.taken_state(1_000), Taken::Yes, "nothing handed on yet");
        assert_eq!(l.offer(1, 100, 1_010), Offer::Push);
        assert_eq!(
            l.taken_state(1_020),
            Taken::WaitUntil(1_010 + STREAM_STALL_MS)
        );
        l.taken(60, 1_030);
        assert_eq!(
            l.taken_state(1_030),
            Taken::WaitUntil(1_030 + STREAM_STALL_MS),
            "progress restarts the stall clock"
        );
        l.taken(40, 1_040);
        assert_eq!(l.taken_state(1_040), Taken::Yes);
        // A retried call for a chunk already handed on only waits; one ahead of the next
        // expected is refused; the next one is pushed.
        assert_eq!(l.offer(1, 100, 1_050), Offer::Repeat);
        assert_eq!(l.taken_state(1_050), Taken::Yes);
        assert_eq!(l.offer(3, 10, 1_060), Offer::Gap);
        assert_eq!(l.offer(2, 10, 1_070), Offer::Push);
        assert_eq!(l.offer(0, 0, 1_070), Offer::Repeat, "the head again");
        // A caller that takes nothing is given up after the stall limit.
        assert_eq!(
            l.taken_state(1_070 + STREAM_STALL_MS - 1),
            Taken::WaitUntil(1_070 + STREAM_STALL_MS)
        );
        assert_eq!(l.taken_state(1_070 + STREAM_STALL_MS), Taken::Stalled);
        // A caller whose stream was dropped is gone, whatever was taken.
        l.taken(10, 1_100);
        l.caller_gone();
        assert_eq!(l.taken_state(1_100), Taken::Gone);
        assert!(l.is_gone());
        // An empty chunk (an end with no bytes, or a bridge's keep-alive) needs no reader.
        let mut e = ChunkLedger::new(0);
        assert_eq!(e.offer(1, 0, 5), Offer::Push);
        assert_eq!(e.taken_state(5), Taken::Yes);
        assert!(!e.is_gone());
    }

    #[test]
    fn a_bridge_that_stops_calling_is_taken_for_gone() {
        let mut l = ChunkLedger::new(1_000);
        assert!(!l.bridge_silent(1_000 + STREAM_SILENCE_MS - 1));
        assert!(l.bridge_silent(1_000 + STREAM_SILENCE_MS));
        // Any call, even a repeated or refused one, shows the bridge alive.
        l.offer(1, 0, 50_000);
        assert!(!l.bridge_silent(50_000 + STREAM_SILENCE_MS - 1));
        l.offer(5, 0, 90_000);
        assert!(!l.bridge_silent(90_000 + STREAM_SILENCE_MS - 1));
        assert!(l.bridge_silent(90_000 + STREAM_SILENCE_MS));
        // Reading alone does not.
        l.taken(0, 200_000);
        assert!(l.bridge_silent(200_000));
    }

    #[test]
    fn streamed_uploads() {
        // Small declared bodies go inline; large and chunked ones may stream.
        assert!(!may_stream_body(Some(0), true));
        assert!(!may_stream_body(Some(INLINE_BODY_BYTES), true));
        assert!(may_stream_body(Some(INLINE_BODY_BYTES + 1), true));
        assert!(may_stream_body(None, true));
        assert!(!may_stream_body(None, false));

        // The limit is enforced as the bytes pass, and the declared length is held to.
        let mut chunked = BodyLimit::new(10, None);
        assert_eq!(chunked.take(6), Ok(()));
        assert_eq!(chunked.take(4), Ok(()));
        assert_eq!(chunked.finish(), Ok(()));
        assert_eq!(chunked.take(1), Err(BodyRefused::TooLarge));
        let mut declared = BodyLimit::new(10, Some(5));
        assert_eq!(declared.take(3), Ok(()));
        assert_eq!(declared.finish(), Err(BodyRefused::Short));
        assert_eq!(declared.take(3), Err(BodyRefused::TooLarge));

        let meta = RequestMeta {
            method: "POST".into(),
            path: "/up".into(),
            query: String::new(),
            headers: vec![],
        };
        let e = stream_envelope(&meta, "i", None);
        assert!(e.body_streams && e.body_follows.is_none() && e.body_base64.is_none());
        assert_eq!(stream_envelope(&meta, "i", Some(9)).body_follows, Some(9));

        let call = DoCall::PublicStream {
            channel: "default".into(),
            prefix: "/proxy".into(),
            method: "PUT".into(),
            path: "/x".into(),
            query: String::new(),
            headers: vec![],
            length: Some(70_000),
        };
        let text = serde_json::to_string(&call).unwrap();
        assert!(text.contains(r#""op":"publicStream""#), "{text}");
        assert_eq!(serde_json::from_str::<DoCall>(&text).unwrap(), call);
    }

    #[test]
    fn streamed_body_pieces() {
        let mut stream = Vec::new();
        stream.extend(body_piece(b"hello"));
        stream.extend(body_piece(&[7u8; 300]));
        stream.extend(BODY_END);
        // Any split of the bytes gives the same pieces, then the end.
        for cut in [1, 3, 4, 5, 9, 10, 200, stream.len()] {
            let mut u = Unpiecer::default();
            let mut pieces = Vec::new();
            for part in stream.chunks(cut) {
                pieces.extend(u.push(part).unwrap());
            }
            assert_eq!(pieces, vec![b"hello".to_vec(), vec![7u8; 300]], "{cut}");
            assert!(u.ended());
        }
        // Cut short: no end.
        let mut u = Unpiecer::default();
        assert_eq!(u.push(&stream[..12]).unwrap(), vec![b"hello".to_vec()]);
        assert!(!u.ended());
        let mut u = Unpiecer::default();
        assert!(u.push(&(MAX_BODY_PIECE as u32 + 1).to_be_bytes()).is_err());
        let mut u = Unpiecer::default();
        u.push(&BODY_END).unwrap();
        assert!(u.push(b"x").is_err());
    }

    #[test]
    fn a_direct_hand_over_is_in_flight_and_bounded() {
        let mut ch = ChannelState::default();
        let id = "0123456789abcdef0123456789abcdef";
        ch.start_direct(id, 1_000).unwrap();
        assert!(ch.is_in_flight(id));
        assert_eq!(ch.queued(), 0);
        assert_eq!(ch.accept_response(id, 2_000), Ok(()));
        assert_eq!(ch.accept_response(id, 2_000), Err(RespondError::Duplicate));
        for n in 0..MAX_IN_FLIGHT {
            ch.start_direct(&format!("{n:032x}"), 1_000).unwrap();
        }
        assert_eq!(ch.start_direct("x", 1_000), Err(QueueError::Full));
        assert!(!ch.has_room());
    }
}
