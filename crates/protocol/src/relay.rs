//! Relay envelopes: what a bridge receives from `GET /proxy/_poll` and posts to
//! `POST /proxy/_respond`.
//!
//! Bodies travel as base64 (`bodyBase64`) so any bytes survive; a UTF-8 body is also
//! carried as the seed protocol's `body` string so a bridge written to the seed
//! (`{"requests":[{id,method,path,body}]}` / `{id,status,body,content_type}`) keeps working.

use base64::{engine::general_purpose::STANDARD, Engine};
use serde::{Deserialize, Serialize};

use crate::wire::{header, query};

/// One public request waiting for the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayRequest {
    /// Id the response must carry.
    pub id: String,
    /// HTTP method.
    pub method: String,
    /// Path below the channel prefix, starting with `/`.
    pub path: String,
    /// Query string without the `?` (empty when none).
    #[serde(default)]
    pub query: String,
    /// Headers in arrival order, hop-by-hop ones removed.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body as base64, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// The body as text when it is valid UTF-8 (seed compatibility).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Over the bridge's WebSocket only: the body is not in this envelope but follows it as
    /// this many bytes of binary frames ([`chunk_frame`], prefixed with the request id), so a
    /// large upload is never one huge text message (nor base64 of it) on either side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_follows: Option<u64>,
    /// Over the bridge's WebSocket only: the body is the caller's, still arriving. It follows
    /// as binary frames ([`chunk_frame`]) as the caller sends it, within an upload window the
    /// bridge refills with [`BridgeUp::UploadCredit`] as its target reads
    /// ([`UPLOAD_WINDOW_BYTES`] at first), and ends with [`RelayDown::BodyEnd`] — or
    /// [`RelayDown::BodyAbort`], when the target's request must fail, never end complete.
    /// `bodyFollows` is its length when the caller declared one; without it the body is
    /// sent to the target chunked.
    #[serde(default, skip_serializing_if = "is_false")]
    pub body_streams: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `GET /proxy/_poll` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollBatch {
    /// Requests to forward; empty when the wait ran out.
    pub requests: Vec<RelayRequest>,
}

/// `POST {prefix}/_ack` body: the ids of requests a bridge received and is forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckBody {
    /// Request ids from poll answers.
    pub ids: Vec<String>,
}

/// One response a bridge posts back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayResponse {
    /// The request's id.
    pub id: String,
    /// HTTP status to give the caller.
    pub status: u16,
    /// Response headers (hop-by-hop removed by the bridge).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// The body as text (seed compatibility; used when `bodyBase64` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The seed's content type field.
    #[serde(
        default,
        rename = "content_type",
        alias = "contentType",
        skip_serializing_if = "Option::is_none"
    )]
    pub content_type: Option<String>,
}

/// `POST /proxy/_respond` body: one response or `{"responses":[...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RespondBody {
    /// Several responses at once.
    Batch {
        /// The responses.
        responses: Vec<RelayResponse>,
    },
    /// A single response.
    One(RelayResponse),
}

impl RespondBody {
    /// The responses, whichever shape arrived.
    pub fn into_responses(self) -> Vec<RelayResponse> {
        match self {
            RespondBody::Batch { responses } => responses,
            RespondBody::One(r) => vec![r],
        }
    }
}

/// Encodes a body into the two envelope fields (`bodyBase64`, and `body` when UTF-8).
pub fn encode_body(bytes: &[u8]) -> (Option<String>, Option<String>) {
    if bytes.is_empty() {
        return (None, None);
    }
    let text = std::str::from_utf8(bytes).ok().map(str::to_owned);
    (Some(STANDARD.encode(bytes)), text)
}

/// Decodes a body from the envelope fields; `bodyBase64` wins over `body`.
pub fn decode_body(
    body_base64: Option<&str>,
    body: Option<&str>,
) -> Result<Vec<u8>, base64::DecodeError> {
    match (body_base64, body) {
        (Some(b64), _) => STANDARD.decode(b64),
        (None, Some(text)) => Ok(text.as_bytes().to_vec()),
        (None, None) => Ok(Vec::new()),
    }
}

/// Headers that describe one connection, not the message; never forwarded (RFC 9110 §7.6.1).
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// Whether a header is hop-by-hop (case-insensitive).
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether a public caller's header is forwarded to the bridge: not hop-by-hop, not one that
/// names this hop (`host`, `content-length`, Cloudflare's `cf-*`, `cdn-loop`), not the relay's
/// own credentials.
pub fn forward_request_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !(is_hop_by_hop(&name)
        || name == header::HOST
        || name == header::CONTENT_LENGTH
        || name == "cdn-loop"
        || name.starts_with("cf-")
        || name == header::RELAY_KEY
        || name == header::RELAY_TOKEN
        || name == header::RELAY_TOKEN_SEED)
}

/// Whether a bridge passes a relayed request's header on to its target: what
/// [`forward_request_header`] lets through, less `accept-encoding`, so the target answers
/// uncompressed bytes the relay can pass through unchanged.
pub fn target_request_header(name: &str) -> bool {
    forward_request_header(name) && !name.eq_ignore_ascii_case(header::ACCEPT_ENCODING)
}

/// Whether a target's response header goes back to the caller: not hop-by-hop, not the length
/// (each hop sets its own), and none that reaches past the channel's prefix in a visitor's
/// browser (`Service-Worker-Allowed` would let a Service Worker registered under one channel
/// control every path of the origin; `Clear-Site-Data` would wipe every channel's cookies and
/// storage). `Set-Cookie` crosses, scoped by [`scope_set_cookie`].
pub fn forward_response_header(name: &str) -> bool {
    !(is_hop_by_hop(name)
        || name.eq_ignore_ascii_case(header::CONTENT_LENGTH)
        || name.eq_ignore_ascii_case(header::SERVICE_WORKER_ALLOWED)
        || name.eq_ignore_ascii_case(header::CLEAR_SITE_DATA))
}

/// A target's `Set-Cookie`, scoped to the channel whose public prefix is `prefix` (`/proxy`,
/// `/relay/{name}`; empty when a channel has a host of its own). The target thinks it lives at
/// `/`, so its `Path=P` becomes `Path={prefix}P` (no or an invalid `Path`: `{prefix}/`), and a
/// cookie cannot be set for another channel's paths. A cookie with a `Domain` attribute would
/// reach other hosts: dropped (`None`), as is one with no name=value. (A `__Host-` cookie,
/// which needs `Path=/`, is then refused by browsers under a prefix.)
pub fn scope_set_cookie(value: &str, prefix: &str) -> Option<String> {
    let mut parts = value.split(';');
    let pair = parts.next().map(str::trim).filter(|p| !p.is_empty())?;
    let mut out = vec![pair.to_owned()];
    let mut path = None;
    for attr in parts.map(str::trim).filter(|a| !a.is_empty()) {
        let (name, value) = attr
            .split_once('=')
            .map_or((attr, ""), |(k, v)| (k.trim(), v.trim()));
        if name.eq_ignore_ascii_case("domain") {
            return None;
        }
        if name.eq_ignore_ascii_case("path") {
            // The last one counts (RFC 6265 §5.3).
            path = Some(value);
        } else {
            out.push(attr.to_owned());
        }
    }
    let path = path.filter(|p| p.starts_with('/')).unwrap_or("/");
    out.push(format!("Path={}{path}", prefix.trim_end_matches('/')));
    Some(out.join("; "))
}

/// A caller's `Referer` without the relay's public key (`?_relay_key=`): a page opened with the
/// key in its link would otherwise hand it to the target in every request it makes.
pub fn scrub_referer(value: &str) -> String {
    let (url, fragment) = match value.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (value, None),
    };
    let Some((base, q)) = url.split_once('?') else {
        return value.to_owned();
    };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && key != query::RELAY_KEY
        })
        .collect();
    let mut out = base.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Most body bytes a bridge sends for one streamed response before the relay grants more
/// ([`RelayDown::Credit`]): what one response may hold in the relay's memory at once.
pub const STREAM_WINDOW_BYTES: u64 = 1024 * 1024;
/// Most body bytes in one binary frame of a streamed response.
pub const STREAM_CHUNK_BYTES: usize = 64 * 1024;
/// A response whose `content-length` is at most this goes over the bridge's socket whole, as
/// one [`BridgeUp::Respond`] (kept for `_result` if its caller stopped waiting); every other
/// one streams: [`BridgeUp::Head`], binary chunks, [`BridgeUp::End`].
pub const WHOLE_RESPONSE_BYTES: u64 = 256 * 1024;
/// A request body larger than this goes down the bridge's socket as binary frames of at most
/// [`STREAM_CHUNK_BYTES`] after its envelope ([`RelayRequest::body_follows`]) instead of as
/// base64 inside it.
pub const INLINE_REQUEST_BODY_BYTES: usize = 64 * 1024;
/// Most bytes of a streamed request body ([`RelayRequest::body_streams`]) the relay sends
/// before the bridge grants more ([`BridgeUp::UploadCredit`]): what one upload may hold in the
/// bridge's memory, waiting for its target to read it.
pub const UPLOAD_WINDOW_BYTES: u64 = 1024 * 1024;
/// The length of a relay request id (hex), the prefix of every binary frame.
pub const REQUEST_ID_LEN: usize = 32;

/// Flow control of a caller's WebSocket carried through the bridge, target → caller: the most
/// bytes of one connection's messages the bridge sends before the relay grants more
/// ([`RelayDown::SocketCredit`]). The bridge reads the target's socket only within this window,
/// so a target faster than its caller waits in TCP (its own send buffer), not in the bridge.
pub const SOCKET_WINDOW_BYTES: u64 = 1024 * 1024;
/// Caller → target: the most bytes of one connection's messages that may wait for the target
/// (sent by the relay, not yet written to the target's socket and granted back with
/// [`BridgeUp::SocketCredit`]). A Worker cannot stop reading a caller's socket, so a caller
/// that outruns its target by more than this is closed with [`SOCKET_OVERFLOW_CODE`] rather
/// than buffered without bound.
pub const SOCKET_BACKLOG_BYTES: u64 = 4 * 1024 * 1024;
/// The close code a caller (or target) gets when more of its messages wait than a bound allows:
/// 1013, "try again later".
pub const SOCKET_OVERFLOW_CODE: u16 = 1013;
/// The largest message the bridge accepts from a target's socket (one message is read whole
/// before it can be passed on); a larger one closes the connection with 1009.
pub const SOCKET_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Relay → bridge text frames on the bridge's WebSocket (`{prefix}/_ws`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum RelayDown {
    /// Requests to forward, as a poll would hand them out (never leased: the socket is the
    /// confirmation; if it drops, their callers get a 502).
    Requests {
        /// The requests.
        requests: Vec<RelayRequest>,
    },
    /// The caller of a streamed response read `bytes` more: send that many more.
    Credit {
        /// The request id.
        id: String,
        /// Bytes granted.
        bytes: u64,
    },
    /// The caller went away: stop forwarding this response.
    Cancel {
        /// The request id.
        id: String,
    },
    /// A caller opened a WebSocket on the channel: open one to the target at this path.
    /// Its binary messages travel as binary frames prefixed with `id`, like body chunks.
    SocketOpen {
        /// The connection id (same form as a request id).
        id: String,
        /// Path below the channel prefix.
        path: String,
        /// Query without `?`.
        query: String,
        /// The caller's headers (hop-by-hop removed; the bridge drops the handshake's own).
        headers: Vec<(String, String)>,
    },
    /// A text message from the caller.
    SocketText {
        /// The connection id.
        id: String,
        /// The message.
        text: String,
    },
    /// The caller closed its socket.
    SocketClose {
        /// The connection id.
        id: String,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The relay passed `bytes` more of connection `id`'s target messages on to its caller:
    /// the bridge may send that many more ([`SOCKET_WINDOW_BYTES`]).
    SocketCredit {
        /// The connection id.
        id: String,
        /// Bytes granted.
        bytes: u64,
    },
    /// A streamed request body ([`RelayRequest::body_streams`]) is complete.
    BodyEnd {
        /// The request id.
        id: String,
    },
    /// A streamed request body broke off (the caller went away, or sent more than the relay
    /// takes): the target's request must fail, never see a complete-looking body.
    BodyAbort {
        /// The request id.
        id: String,
        /// Why.
        error: String,
    },
}

/// Bridge → relay text frames. A streamed body's bytes go as binary frames:
/// [`chunk_frame`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum BridgeUp {
    /// Whole responses, as `_respond` takes them.
    Respond {
        /// The responses.
        responses: Vec<RelayResponse>,
    },
    /// A streamed response's status and headers; its body follows as binary frames.
    Head {
        /// The request id.
        id: String,
        /// HTTP status.
        status: u16,
        /// Headers (hop-by-hop removed).
        headers: Vec<(String, String)>,
    },
    /// A streamed response's body is complete.
    End {
        /// The request id.
        id: String,
    },
    /// A streamed response broke off (the target failed mid-body): the caller's body ends
    /// in an error, never looks complete.
    Abort {
        /// The request id.
        id: String,
        /// Why.
        error: String,
    },
    /// The bridge is shutting down: push no more requests to this socket.
    Draining,
    /// A text message from the target's WebSocket to the caller's.
    SocketText {
        /// The connection id.
        id: String,
        /// The message.
        text: String,
    },
    /// The target's WebSocket closed (or could not be opened): close the caller's.
    SocketClose {
        /// The connection id.
        id: String,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The bridge wrote `bytes` more of connection `id`'s caller messages to the target's
    /// socket: the relay may send that many more ([`SOCKET_BACKLOG_BYTES`]).
    SocketCredit {
        /// The connection id.
        id: String,
        /// Bytes granted.
        bytes: u64,
    },
    /// The target read `bytes` more of a streamed request body: the relay may send that many
    /// more.
    UploadCredit {
        /// The request id.
        id: String,
        /// Bytes granted.
        bytes: u64,
    },
}

/// A close code that may be sent in a close frame: 1005 and 1006 only describe a close that
/// had none, so they become 1000; anything outside 1000–4999 becomes 1011.
pub fn sendable_close_code(code: u16) -> u16 {
    match code {
        1005 | 1006 => 1000,
        1000..=4999 if code != 1004 && code != 1015 => code,
        _ => 1011,
    }
}

/// Whether a caller's header goes on to the target's WebSocket handshake: what
/// [`target_request_header`] lets through, less the handshake's own `sec-websocket-key`,
/// `-version` and `-extensions` (the bridge makes its own handshake, without compression).
pub fn target_socket_header(name: &str) -> bool {
    target_request_header(name)
        && ![
            "sec-websocket-key",
            "sec-websocket-version",
            "sec-websocket-extensions",
        ]
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// One binary frame of a streamed body: the request id (ASCII, [`REQUEST_ID_LEN`] bytes), then
/// the bytes.
pub fn chunk_frame(id: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(id.len() + bytes.len());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Splits a binary frame into its request id and bytes; `None` when it is too short or the
/// id is not hex.
pub fn split_chunk_frame(frame: &[u8]) -> Option<(&str, &[u8])> {
    if frame.len() < REQUEST_ID_LEN {
        return None;
    }
    let (id, bytes) = frame.split_at(REQUEST_ID_LEN);
    let id = std::str::from_utf8(id).ok()?;
    id.bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then_some((id, bytes))
}

/// Whether a response goes to its caller streamed rather than whole, over either transport:
/// it has no `content-length` (chunked, server-sent events) or one over
/// [`WHOLE_RESPONSE_BYTES`].
pub fn streams_response(content_length: Option<u64>) -> bool {
    content_length.is_none_or(|n| n > WHOLE_RESPONSE_BYTES)
}

/// Most body bytes one long-poll stream call (`POST {prefix}/_stream/{id}`) carries: one
/// window, so the relay holds at most about that much of a response at once.
pub const MAX_STREAM_CALL_BYTES: usize = STREAM_WINDOW_BYTES as usize;

/// Over long-poll: a streamed response's status and headers, the JSON body of its first call
/// (`POST {prefix}/_stream/{id}?seq=0`). Its body follows as raw bytes in the calls
/// `seq=1, 2, …`, each answered only once the caller's stream has taken it (a caller that
/// went away answers 410: the bridge stops reading the target).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHead {
    /// HTTP status.
    pub status: u16,
    /// Headers (hop-by-hop removed).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// How the last call of a streamed response ends it (`?end=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StreamEnd {
    /// `end=1`: the body is complete after this call's bytes.
    Complete,
    /// `end=abort`: the target's body broke off; the call's body is the reason. The caller's
    /// body ends in an error, never looks complete.
    Abort,
}

impl StreamEnd {
    /// The `end` query value.
    pub fn as_query(self) -> &'static str {
        match self {
            StreamEnd::Complete => "1",
            StreamEnd::Abort => "abort",
        }
    }

    /// Parses an `end` query value.
    pub fn from_query(value: &str) -> Option<StreamEnd> {
        match value {
            "1" => Some(StreamEnd::Complete),
            "abort" => Some(StreamEnd::Abort),
            _ => None,
        }
    }
}

/// The query of one long-poll stream call: `seq=N`, and `&end=…` on the last one.
pub fn stream_query(seq: u64, end: Option<StreamEnd>) -> String {
    match end {
        None => format!("{}={seq}", query::SEQ),
        Some(e) => format!("{}={seq}&{}={}", query::SEQ, query::END, e.as_query()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_shape() {
        let literal = json!({"id":"r1","method":"POST","path":"/echo","query":"a=1",
            "headers":[["content-type","text/plain"]],"bodyBase64":"aGk=","body":"hi"});
        let r: RelayRequest = serde_json::from_value(literal.clone()).unwrap();
        assert_eq!(
            r.headers,
            vec![("content-type".into(), "text/plain".into())]
        );
        assert_eq!(serde_json::to_value(&r).unwrap(), literal);
        let batch: PollBatch = serde_json::from_value(json!({"requests":[literal]})).unwrap();
        assert_eq!(batch.requests.len(), 1);
        let follows = json!({"id":"r2","method":"PUT","path":"/up","query":"",
            "headers":[],"bodyFollows":70000});
        let r: RelayRequest = serde_json::from_value(follows.clone()).unwrap();
        assert_eq!(r.body_follows, Some(70000));
        assert_eq!(r.body_base64, None);
        assert_eq!(serde_json::to_value(&r).unwrap(), follows);
        assert!(!r.body_streams);
        let streamed = json!({"id":"r3","method":"POST","path":"/up","query":"",
            "headers":[],"bodyStreams":true});
        let r: RelayRequest = serde_json::from_value(streamed.clone()).unwrap();
        assert!(r.body_streams);
        assert_eq!(r.body_follows, None);
        assert_eq!(serde_json::to_value(&r).unwrap(), streamed);
    }

    #[test]
    fn upload_frames() {
        let end: RelayDown = serde_json::from_str(r#"{"type":"bodyEnd","id":"a"}"#).unwrap();
        assert_eq!(end, RelayDown::BodyEnd { id: "a".into() });
        let abort = RelayDown::BodyAbort {
            id: "a".into(),
            error: "gone".into(),
        };
        assert_eq!(
            serde_json::to_string(&abort).unwrap(),
            r#"{"type":"bodyAbort","id":"a","error":"gone"}"#
        );
        let credit: BridgeUp =
            serde_json::from_str(r#"{"type":"uploadCredit","id":"a","bytes":65536}"#).unwrap();
        assert_eq!(
            credit,
            BridgeUp::UploadCredit {
                id: "a".into(),
                bytes: 65536
            }
        );
    }

    #[test]
    fn ack_shape() {
        let literal = json!({"ids": ["a", "b"]});
        let a: AckBody = serde_json::from_value(literal.clone()).unwrap();
        assert_eq!(a.ids, ["a", "b"]);
        assert_eq!(serde_json::to_value(&a).unwrap(), literal);
    }

    #[test]
    fn seed_response_shape_still_parses() {
        let one: RespondBody = serde_json::from_value(
            json!({"id":"r1","status":200,"body":"{\"m\":1}","content_type":"application/json"}),
        )
        .unwrap();
        let rs = one.into_responses();
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].content_type.as_deref(), Some("application/json"));
        assert_eq!(
            decode_body(rs[0].body_base64.as_deref(), rs[0].body.as_deref()).unwrap(),
            b"{\"m\":1}"
        );
    }

    #[test]
    fn batch_response_shape() {
        let b: RespondBody = serde_json::from_value(json!({"responses":[
            {"id":"a","status":201,"headers":[["x-k","v"]],"bodyBase64":"AAEC"},
            {"id":"b","status":204}
        ]}))
        .unwrap();
        let rs = b.into_responses();
        assert_eq!(rs.len(), 2);
        assert_eq!(
            decode_body(rs[0].body_base64.as_deref(), None).unwrap(),
            vec![0, 1, 2]
        );
        assert_eq!(decode_body(None, None).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn binary_bodies_survive() {
        let bytes = [0xff, 0x00, 0x80, b'a'];
        let (b64, text) = encode_body(&bytes);
        assert!(text.is_none(), "invalid UTF-8 has no text form");
        assert_eq!(decode_body(b64.as_deref(), None).unwrap(), bytes);
        let (b64, text) = encode_body("héllo".as_bytes());
        assert_eq!(text.as_deref(), Some("héllo"));
        assert_eq!(
            decode_body(b64.as_deref(), None).unwrap(),
            "héllo".as_bytes()
        );
    }

    #[test]
    fn hop_by_hop_headers() {
        assert!(is_hop_by_hop("Connection"));
        assert!(is_hop_by_hop("transfer-encoding"));
        assert!(!is_hop_by_hop("content-type"));
    }

    #[test]
    fn header_filters() {
        for h in [
            "Connection",
            "Host",
            "content-length",
            "CF-Connecting-IP",
            "cdn-loop",
            "X-Relay-Key",
            "x-relay-token",
            "x-token",
        ] {
            assert!(!forward_request_header(h), "{h}");
            assert!(!target_request_header(h), "{h}");
        }
        for h in ["content-type", "authorization", "x-custom", "cookie"] {
            assert!(forward_request_header(h), "{h}");
            assert!(target_request_header(h), "{h}");
        }
        assert!(forward_request_header("Accept-Encoding"));
        assert!(!target_request_header("Accept-Encoding"));
        assert!(!forward_response_header("transfer-encoding"));
        assert!(!forward_response_header("Content-Length"));
        assert!(forward_response_header("set-cookie"));
        assert!(!forward_response_header("Service-Worker-Allowed"));
        assert!(!forward_response_header("clear-site-data"));
        assert!(forward_response_header("service-worker"));
    }

    #[test]
    fn cookies_stay_inside_their_channel() {
        let scoped = |v: &str| scope_set_cookie(v, "/relay/a");
        assert_eq!(scoped("s=1").as_deref(), Some("s=1; Path=/relay/a/"));
        assert_eq!(
            scoped("s=1; Path=/; HttpOnly; Secure").as_deref(),
            Some("s=1; HttpOnly; Secure; Path=/relay/a/")
        );
        // Another channel's path lands under this one's.
        assert_eq!(
            scoped("s=1; path=/relay/b/x").as_deref(),
            Some("s=1; Path=/relay/a/relay/b/x")
        );
        assert_eq!(
            scoped("s=1; Path=/x; Path=/y").as_deref(),
            Some("s=1; Path=/relay/a/y")
        );
        assert_eq!(
            scoped("s=1; Path=x").as_deref(),
            Some("s=1; Path=/relay/a/")
        );
        assert_eq!(scoped("s=1; Domain=example.com; Path=/"), None);
        assert_eq!(scoped("s=1; domain=.example.com"), None);
        assert_eq!(scoped(""), None);
        assert_eq!(scoped(" ; Path=/"), None);
        assert_eq!(
            scope_set_cookie("t=2; Max-Age=60", "/proxy").as_deref(),
            Some("t=2; Max-Age=60; Path=/proxy/")
        );
        assert_eq!(
            scope_set_cookie("t=2; Path=/p", "").as_deref(),
            Some("t=2; Path=/p")
        );
    }

    #[test]
    fn the_relay_key_leaves_the_referer() {
        assert_eq!(
            scrub_referer("https://w.example/proxy/page?_relay_key=k&a=1"),
            "https://w.example/proxy/page?a=1"
        );
        assert_eq!(
            scrub_referer("https://w.example/proxy/page?_relay_key=k"),
            "https://w.example/proxy/page"
        );
        assert_eq!(
            scrub_referer("https://w.example/p?a=1&_relay_key=k&_relay_key=j&b=2#f"),
            "https://w.example/p?a=1&b=2#f"
        );
        assert_eq!(
            scrub_referer("https://w.example/p?x_relay_key=1"),
            "https://w.example/p?x_relay_key=1"
        );
        assert_eq!(scrub_referer("https://w.example/p"), "https://w.example/p");
    }

    #[test]
    fn long_poll_stream_shapes() {
        let literal = json!({"status": 200, "headers": [["content-type", "text/event-stream"]]});
        let head: StreamHead = serde_json::from_value(literal.clone()).unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(serde_json::to_value(&head).unwrap(), literal);
        let bare: StreamHead = serde_json::from_value(json!({"status": 404})).unwrap();
        assert!(bare.headers.is_empty());
        assert_eq!(stream_query(0, None), "seq=0");
        assert_eq!(stream_query(7, Some(StreamEnd::Complete)), "seq=7&end=1");
        assert_eq!(stream_query(2, Some(StreamEnd::Abort)), "seq=2&end=abort");
        for end in [StreamEnd::Complete, StreamEnd::Abort] {
            assert_eq!(StreamEnd::from_query(end.as_query()), Some(end));
        }
        assert_eq!(StreamEnd::from_query("yes"), None);
        // The same rule as the WebSocket transport: small declared bodies go whole.
        assert!(!streams_response(Some(0)));
        assert!(!streams_response(Some(WHOLE_RESPONSE_BYTES)));
        assert!(streams_response(Some(WHOLE_RESPONSE_BYTES + 1)));
        assert!(streams_response(None));
    }

    #[test]
    fn socket_frames() {
        let id = "0123456789abcdef0123456789abcdef";
        let f = chunk_frame(id, b"data");
        assert_eq!(split_chunk_frame(&f), Some((id, &b"data"[..])));
        assert_eq!(split_chunk_frame(b"short"), None);
        assert_eq!(split_chunk_frame(&chunk_frame(&"z".repeat(32), b"")), None);
        let up = serde_json::to_string(&BridgeUp::End { id: id.into() }).unwrap();
        assert_eq!(up, format!(r#"{{"type":"end","id":"{id}"}}"#));
        let down: RelayDown =
            serde_json::from_str(r#"{"type":"credit","id":"a","bytes":5}"#).unwrap();
        assert_eq!(
            down,
            RelayDown::Credit {
                id: "a".into(),
                bytes: 5
            }
        );
        let credit = BridgeUp::SocketCredit {
            id: id.into(),
            bytes: 7,
        };
        assert_eq!(
            serde_json::to_string(&credit).unwrap(),
            format!(r#"{{"type":"socketCredit","id":"{id}","bytes":7}}"#)
        );
        let down: RelayDown =
            serde_json::from_str(r#"{"type":"socketCredit","id":"a","bytes":9}"#).unwrap();
        assert_eq!(
            down,
            RelayDown::SocketCredit {
                id: "a".into(),
                bytes: 9
            }
        );
        assert_eq!(sendable_close_code(1006), 1000);
        assert_eq!(sendable_close_code(4001), 4001);
        assert_eq!(sendable_close_code(999), 1011);
        assert!(target_socket_header("Sec-WebSocket-Protocol"));
        assert!(!target_socket_header("Sec-WebSocket-Key"));
        assert!(!target_socket_header("upgrade"));
    }
}
