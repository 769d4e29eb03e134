//! One relayed request: the envelope becomes an HTTP request to the target (method, path,
//! query, headers, bytes), and the target's answer — or its failure, as a 502 JSON — becomes
//! the response envelope.

use std::time::Duration;

use ccr_protocol::relay::{
    decode_body, encode_body, forward_response_header, target_request_header, RelayRequest,
    RelayResponse,
};
use ccr_protocol::wire::header;
use ccr_protocol::MAX_RELAY_BODY_BYTES;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

/// The target URL for a request: the target's base, the request's path and query.
pub(crate) fn target_url(target: &Url, path: &str, query: &str) -> Result<Url, url::ParseError> {
    let base = target.as_str().trim_end_matches('/');
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let mut full = format!("{base}{path}");
    if !query.is_empty() {
        full.push('?');
        full.push_str(query);
    }
    Url::parse(&full)
}

/// A 502 JSON response for `id`.
pub(crate) fn bad_gateway(id: &str, message: &str) -> RelayResponse {
    let body = serde_json::json!({"ok": false, "error": message}).to_string();
    let (body_base64, _) = encode_body(body.as_bytes());
    RelayResponse {
        id: id.to_owned(),
        status: 502,
        headers: vec![(header::CONTENT_TYPE.into(), header::JSON.into())],
        body_base64,
        body: None,
        content_type: None,
    }
}

/// The target's response headers that go back to the caller.
pub(crate) fn response_headers(resp: &reqwest::Response) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, value) in resp.headers() {
        if forward_response_header(name.as_str()) {
            if let Ok(v) = value.to_str() {
                out.push((name.as_str().to_owned(), v.to_owned()));
            }
        }
    }
    out
}

/// One piece of a request body arriving after its envelope.
pub(crate) enum Piece {
    /// More bytes.
    Bytes(Vec<u8>),
    /// The body is complete.
    End,
    /// The body broke off: the target's request fails.
    Abort(String),
}

/// A request body arriving after its envelope (`bodyFollows`, `bodyStreams`): its pieces as
/// they come, its announced length (none: chunked), and for a streamed body where to grant the
/// relay more window as the target reads.
pub(crate) struct Upload {
    pub(crate) chunks: tokio::sync::mpsc::UnboundedReceiver<Piece>,
    pub(crate) len: Option<u64>,
    pub(crate) credit: Option<UploadCredit>,
}

/// Grants the relay window for one streamed upload (`uploadCredit` frames), a quarter of
/// the window at a time: each grant is an event in the channel's object, and one per 64 KiB
/// piece made the grants, not the bytes, the upload's pace. What is held back is under a
/// quarter of the window, so the relay always has room for a piece.
pub(crate) struct UploadCredit {
    pub(crate) id: String,
    pub(crate) out: tokio::sync::mpsc::Sender<tokio_tungstenite::tungstenite::Message>,
    pub(crate) pending: usize,
}

/// Bytes read by the target before the relay is granted them.
const GRANT_EVERY: usize = (ccr_protocol::relay::UPLOAD_WINDOW_BYTES / 4) as usize;

impl UploadCredit {
    async fn grant(&mut self, bytes: usize) {
        self.pending += bytes;
        if self.pending < GRANT_EVERY {
            return;
        }
        let frame = ccr_protocol::relay::BridgeUp::UploadCredit {
            id: self.id.clone(),
            bytes: std::mem::take(&mut self.pending) as u64,
        };
        if let Ok(text) = serde_json::to_string(&frame) {
            let _ = self
                .out
                .send(tokio_tungstenite::tungstenite::Message::text(text))
                .await;
        }
    }
}

impl Upload {
    /// The body for the target's request, streamed as the pieces arrive: each piece the
    /// target's connection takes grants the relay as many bytes more. A body that breaks off
    /// (an abort, or its pieces stop without an end: the relay's socket dropped) is an error
    /// to the target, never a complete-looking body — also when it is sent chunked.
    fn into_body(self) -> reqwest::Body {
        let state = (self.chunks, self.credit, false);
        let pieces = futures_util::stream::unfold(state, |(mut rx, mut credit, done)| async move {
            if done {
                return None;
            }
            match rx.recv().await {
                Some(Piece::Bytes(bytes)) => {
                    if let Some(c) = &mut credit {
                        c.grant(bytes.len()).await;
                    }
                    Some((Ok(bytes), (rx, credit, false)))
                }
                Some(Piece::End) => None,
                Some(Piece::Abort(why)) => {
                    Some((Err(std::io::Error::other(why)), (rx, credit, true)))
                }
                None => Some((
                    Err(std::io::Error::other("the request body broke off")),
                    (rx, credit, true),
                )),
            }
        });
        reqwest::Body::wrap_stream(pieces)
    }
}

/// Sends `request` to the target and waits for its response's head (at most `timeout`); the
/// body is left to read. A target that is down or too slow, or a request that cannot be
/// built, is the 502 to answer instead. `upload` is the body when it follows the envelope
/// instead of being in it.
pub(crate) async fn send(
    client: &reqwest::Client,
    target: &Url,
    timeout: Duration,
    request: &RelayRequest,
    upload: Option<Upload>,
) -> Result<reqwest::Response, RelayResponse> {
    let id = request.id.as_str();
    let url = target_url(target, &request.path, &request.query)
        .map_err(|e| bad_gateway(id, &format!("cannot build the target URL: {e}")))?;
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| bad_gateway(id, &format!("invalid method {:?}", request.method)))?;
    let mut headers = HeaderMap::new();
    let body = match upload {
        Some(upload) => {
            // Without a length the body goes chunked.
            if let Some(len) = upload.len {
                headers.insert(reqwest::header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            upload.into_body()
        }
        None => decode_body(request.body_base64.as_deref(), request.body.as_deref())
            .map_err(|e| bad_gateway(id, &format!("the request body is not valid base64: {e}")))?
            .into(),
    };
    for (name, value) in &request.headers {
        if !target_request_header(name) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    let sent = client
        .request(method, url)
        .headers(headers)
        .body(body)
        .send();
    match tokio::time::timeout(timeout, sent).await {
        Err(_) => Err(too_slow(id, target, timeout)),
        Ok(Err(e)) => Err(unreachable(id, target, e)),
        Ok(Ok(resp)) => Ok(resp),
    }
}

fn too_slow(id: &str, target: &Url, timeout: Duration) -> RelayResponse {
    bad_gateway(
        id,
        &format!(
            "the target {target} did not answer within {} s",
            timeout.as_secs_f64()
        ),
    )
}

fn unreachable(id: &str, target: &Url, e: reqwest::Error) -> RelayResponse {
    bad_gateway(
        id,
        &format!(
            "relay-bridge could not reach the target {target}: {:#}",
            anyhow::Error::new(e)
        ),
    )
}

/// Reads a response's whole body (at most [`MAX_RELAY_BODY_BYTES`], until `deadline`) into
/// the envelope for request `id`; anything else is a 502.
pub(crate) async fn whole(
    id: &str,
    target: &Url,
    timeout: Duration,
    deadline: tokio::time::Instant,
    mut resp: reqwest::Response,
) -> RelayResponse {
    let status = resp.status().as_u16();
    let headers = response_headers(&resp);
    let read = async {
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if bytes.len() + chunk.len() > MAX_RELAY_BODY_BYTES {
                return Ok(Err(format!(
                    "the target's response body is over {MAX_RELAY_BODY_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok::<_, reqwest::Error>(Ok(bytes))
    };
    match tokio::time::timeout_at(deadline, read).await {
        Err(_) => too_slow(id, target, timeout),
        Ok(Err(e)) => unreachable(id, target, e),
        Ok(Ok(Err(message))) => bad_gateway(id, &message),
        Ok(Ok(Ok(bytes))) => {
            // Base64 only: the relay reads `bodyBase64` first, and a text copy would double
            // the upload.
            let (body_base64, _) = encode_body(&bytes);
            RelayResponse {
                id: id.to_owned(),
                status,
                headers,
                body_base64,
                body: None,
                content_type: None,
            }
        }
    }
}

/// Sends `request` to the target and returns what the caller should get, body and all, within
/// `timeout`. Never fails: a target that is down, too slow or too big becomes a 502 JSON.
/// (Both transports now stream large answers themselves: `send`, then `whole` or a stream.)
#[cfg(test)]
pub(crate) async fn forward(
    client: &reqwest::Client,
    target: &Url,
    timeout: Duration,
    request: &RelayRequest,
) -> RelayResponse {
    let deadline = tokio::time::Instant::now() + timeout;
    match send(client, target, timeout, request, None).await {
        Ok(resp) => whole(&request.id, target, timeout, deadline, resp).await,
        Err(bad) => bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_path_and_query() {
        let t = Url::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(
            target_url(&t, "/a/b%20c", "x=1&y=2").unwrap().as_str(),
            "http://127.0.0.1:8000/a/b%20c?x=1&y=2"
        );
        let prefixed = Url::parse("http://127.0.0.1:8000/api/").unwrap();
        assert_eq!(
            target_url(&prefixed, "/v1", "").unwrap().as_str(),
            "http://127.0.0.1:8000/api/v1"
        );
    }

    #[test]
    fn header_filters() {
        for h in ["Host", "connection", "Content-Length", "accept-encoding"] {
            assert!(!target_request_header(h), "{h}");
        }
        assert!(target_request_header("authorization"));
        assert!(!forward_response_header("transfer-encoding"));
        assert!(forward_response_header("set-cookie"));
    }

    #[test]
    fn bad_gateway_is_json() {
        let r = bad_gateway("i", "down");
        assert_eq!(r.status, 502);
        let body = decode_body(r.body_base64.as_deref(), None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "down");
    }

    #[tokio::test]
    async fn a_target_that_is_down_is_a_502() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let req = RelayRequest {
            id: "r".into(),
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            headers: vec![],
            body_base64: None,
            body: None,
            body_follows: None,
            body_streams: false,
        };
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let r = forward(&client, &target, Duration::from_secs(5), &req).await;
        assert_eq!(r.status, 502);
        assert_eq!(r.id, "r");
    }
}
