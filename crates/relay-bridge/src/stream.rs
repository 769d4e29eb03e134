//! Streamed responses over the long-poll transport: a response that streams (no
//! `content-length`, or one over [`WHOLE_RESPONSE_BYTES`](ccr_protocol::relay::WHOLE_RESPONSE_BYTES))
//! goes to the relay as a sequence of bounded calls, never one long streamed POST (a proxy that
//! forbids WebSocket upgrades may also buffer a chunked request body whole):
//!
//! - `POST {prefix}/_stream/{id}?seq=0`: the head (`StreamHead` JSON), sent as soon as the
//!   target answers;
//! - `POST {prefix}/_stream/{id}?seq=1, 2, …`: the body, at most one window
//!   ([`MAX_STREAM_CALL_BYTES`]) a call, the last with `end=1` (or `end=abort` and the reason
//!   when the target broke off).
//!
//! The relay answers each call only once the caller's stream has taken its bytes; meanwhile
//! this side keeps reading the target into the next chunk, up to one window, so what the
//! target wrote while a call was in flight goes together in the next (events still go one by
//! one when they come slower than a round trip). The bridge holds at most about two windows per
//! response, and a slow caller slows its reads of the target. Any refusal (a caller that went
//! away or stalled answers 410) stops the reading: dropping the target's response closes it.

use std::time::Duration;

use ccr_native::{Backoff, Jitter};
use ccr_protocol::relay::{stream_query, StreamEnd, StreamHead, MAX_STREAM_CALL_BYTES};
use ccr_protocol::wire::{header, route};
use futures_util::future::BoxFuture;
use tokio_tungstenite::tungstenite::Bytes;
use tracing::{debug, info, warn};

use crate::{forward, snippet, Shared};

/// How long one stream call may take. The relay holds a call until the caller has taken its
/// bytes, and gives up on a caller that took nothing for 30 s: this is above that.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at one call (transport errors, 5xx, 429) before the stream is given up.
const CALL_ATTEMPTS: u32 = 4;
/// Retries of one call wait from about this long…
const RETRY_BASE: Duration = Duration::from_millis(200);
/// …doubling up to about this long.
const RETRY_MAX: Duration = Duration::from_secs(3);
/// With no call in flight for this long (a quiet event stream), an empty one tells the relay
/// the bridge is alive: it ends a stream whose bridge made no call for 75 s (one that died).
const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// The body chunks still to send and the target's state: the pure part of the loop below.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Bytes read from the target and not sent yet.
    buf: Vec<u8>,
    /// `Some` once the target's body ended: `Ok` complete, `Err` broke off (why).
    finished: Option<Result<(), String>>,
}

/// The next call to make.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Nothing to send yet: read the target.
    Read,
    /// A chunk of body bytes; `end` set on the last one (the reason's bytes for `Abort`).
    Send {
        bytes: Vec<u8>,
        end: Option<StreamEnd>,
    },
}

impl Pending {
    /// Whether to read more of the target now: its body goes on and less than a window waits.
    pub(crate) fn wants_more(&self) -> bool {
        self.finished.is_none() && self.buf.len() < MAX_STREAM_CALL_BYTES
    }

    /// Bytes the target wrote.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The target's body ended (`Ok`) or broke off (`Err`, why).
    pub(crate) fn finish(&mut self, how: Result<(), String>) {
        self.finished = Some(how);
    }

    /// What to send when no call is in flight: everything read so far (at most a window),
    /// ending the stream once the target's body is over and nothing else waits.
    pub(crate) fn next(&mut self) -> Next {
        if self.buf.len() > MAX_STREAM_CALL_BYTES {
            let rest = self.buf.split_off(MAX_STREAM_CALL_BYTES);
            let bytes = std::mem::replace(&mut self.buf, rest);
            return Next::Send { bytes, end: None };
        }
        match &self.finished {
            None if self.buf.is_empty() => Next::Read,
            None => Next::Send {
                bytes: std::mem::take(&mut self.buf),
                end: None,
            },
            Some(Ok(())) => Next::Send {
                bytes: std::mem::take(&mut self.buf),
                end: Some(StreamEnd::Complete),
            },
            // What the target wrote before it broke off goes first.
            Some(Err(_)) if !self.buf.is_empty() => Next::Send {
                bytes: std::mem::take(&mut self.buf),
                end: None,
            },
            Some(Err(why)) => Next::Send {
                bytes: why.clone().into_bytes(),
                end: Some(StreamEnd::Abort),
            },
        }
    }
}

/// What happened while a call was in flight.
enum Event {
    /// The call was answered: `Err` is a refusal or a failure past the retries (stop).
    Answered(Result<(), String>),
    /// The target gave more bytes, ended (`None`) or failed.
    Read(reqwest::Result<Option<Bytes>>),
    /// No call for [`KEEP_ALIVE`].
    Quiet,
}

/// Streams `resp` (the target's answer to request `id`) to the relay in bounded calls, until
/// its body ends or the relay says stop. Never fails: problems are logged and end the stream
/// (the relay then ends the caller's body in an error, or already has).
pub(crate) async fn respond(shared: &Shared, id: &str, mut resp: reqwest::Response) {
    let head = StreamHead {
        status: resp.status().as_u16(),
        headers: forward::response_headers(&resp),
    };
    let head = match serde_json::to_vec(&head) {
        Ok(h) => h,
        Err(e) => {
            warn!(%id, "cannot encode the response head: {e}");
            return;
        }
    };
    let mut pending = Pending::default();
    let mut inflight: Option<BoxFuture<'_, Result<(), String>>> =
        Some(Box::pin(call(shared, id, 0, None, Bytes::from(head))));
    let mut seq = 1u64;
    let mut last = false;
    let mut sent = 0u64;
    loop {
        if inflight.is_none() {
            match pending.next() {
                Next::Read => {}
                Next::Send { bytes, end } => {
                    last = end.is_some();
                    if end != Some(StreamEnd::Abort) {
                        sent += bytes.len() as u64;
                    }
                    inflight = Some(Box::pin(call(shared, id, seq, end, Bytes::from(bytes))));
                    seq += 1;
                }
            }
        }
        let event = {
            let idle = inflight.is_none();
            let answered = async {
                match inflight.as_mut() {
                    Some(f) => f.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = answered => Event::Answered(r),
                c = resp.chunk(), if pending.wants_more() => Event::Read(c),
                () = tokio::time::sleep(KEEP_ALIVE), if idle => Event::Quiet,
            }
        };
        match event {
            Event::Answered(Ok(())) => {
                inflight = None;
                if last {
                    debug!(%id, bytes = sent, calls = seq, "streamed over long-poll");
                    return;
                }
            }
            Event::Answered(Err(why)) => {
                info!(%id, "stopped streaming the response after {sent} bytes: {why}");
                return;
            }
            Event::Quiet => {
                inflight = Some(Box::pin(call(shared, id, seq, None, Bytes::new())));
                seq += 1;
            }
            Event::Read(Ok(Some(bytes))) => pending.push(&bytes),
            Event::Read(Ok(None)) => pending.finish(Ok(())),
            Event::Read(Err(e)) => {
                warn!(%id, "the target's body broke off: {e}");
                pending.finish(Err(format!("the target's body broke off: {e}")));
            }
        }
    }
}

/// One stream call, retried on transport errors, 5xx and 429 (the relay takes a repeated
/// call for a chunk it already has as that chunk, never twice); `Err` says why to stop.
async fn call(
    shared: &Shared,
    id: &str,
    seq: u64,
    end: Option<StreamEnd>,
    body: Bytes,
) -> Result<(), String> {
    let cfg = &shared.config;
    let url = format!(
        "{}?{}",
        cfg.relay_endpoint(&format!("{}/{id}", route::STREAM)),
        stream_query(seq, end)
    );
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX, Jitter::UpperHalf);
    for attempt in 1..=CALL_ATTEMPTS {
        let sent = shared
            .relay
            .post(&url)
            .header(header::RELAY_TOKEN, cfg.token.expose())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(body.clone())
            .timeout(CALL_TIMEOUT)
            .send()
            .await;
        let retry = match sent {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                format!("the relay answered {}", r.status())
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                return Err(format!("the relay answered {status}: {}", snippet(&text)));
            }
            Err(e) => format!("{:#}", anyhow::Error::new(e)),
        };
        if attempt == CALL_ATTEMPTS {
            return Err(format!("giving up after {attempt} attempts: {retry}"));
        }
        let pause = backoff.next_delay(&mut rand::rng());
        warn!(%id, seq, "a stream call failed: {retry}; retrying in {pause:?}");
        tokio::time::sleep(pause).await;
    }
    Err("no attempt was made".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_target_wrote_during_a_call_goes_in_the_next() {
        let mut p = Pending::default();
        assert!(p.wants_more());
        assert_eq!(p.next(), Next::Read);
        p.push(b"data: a\n\n");
        p.push(b"data: b\n\n");
        assert_eq!(
            p.next(),
            Next::Send {
                bytes: b"data: a\n\ndata: b\n\n".to_vec(),
                end: None
            }
        );
        assert_eq!(p.next(), Next::Read, "nothing left to send");
        p.push(b"tail");
        p.finish(Ok(()));
        assert!(!p.wants_more());
        assert_eq!(
            p.next(),
            Next::Send {
                bytes: b"tail".to_vec(),
                end: Some(StreamEnd::Complete)
            }
        );
    }

    #[test]
    fn a_chunk_is_at_most_one_window_and_reading_pauses_at_a_window() {
        let mut p = Pending::default();
        p.push(&vec![1u8; MAX_STREAM_CALL_BYTES - 1]);
        assert!(p.wants_more());
        p.push(&[2u8; 10]);
        assert!(!p.wants_more(), "a window waits: the target is not read");
        let Next::Send { bytes, end: None } = p.next() else {
            panic!("a full window goes first")
        };
        assert_eq!(bytes.len(), MAX_STREAM_CALL_BYTES);
        assert!(p.wants_more());
        p.finish(Ok(()));
        assert_eq!(
            p.next(),
            Next::Send {
                bytes: vec![2u8; 9],
                end: Some(StreamEnd::Complete)
            }
        );
        // An empty body still ends with one (empty) call.
        let mut empty = Pending::default();
        empty.finish(Ok(()));
        assert_eq!(
            empty.next(),
            Next::Send {
                bytes: vec![],
                end: Some(StreamEnd::Complete)
            }
        );
    }

    #[test]
    fn a_body_that_broke_off_sends_what_it_had_then_aborts() {
        let mut p = Pending::default();
        p.push(b"partial");
        p.finish(Err("reset".into()));
        assert_eq!(
            p.next(),
            Next::Send {
                bytes: b"partial".to_vec(),
                end: None
            }
        );
        assert_eq!(
            p.next(),
            Next::Send {
                bytes: b"reset".to_vec(),
                end: Some(StreamEnd::Abort)
            }
        );
    }
}

#[cfg(test)]
mod run_tests {
    //! The bridge's long-poll loop against a scripted relay and a raw HTTP/1.1 target: what
    //! goes on the wire for a streamed response, and what a refusal does to the target.
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use ccr_protocol::relay::StreamHead;
    use ccr_protocol::wire::header;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use url::Url;

    use crate::confirm_tests::{handing_out, read_request, Seen, ID};
    use crate::{run, Config, Secret, Transport};

    /// A target that answers every request with a chunked body: `chunks`, then the end; or,
    /// with `endless`, 64 KiB chunks until its reader goes (then `gone` is set).
    async fn chunked_target(
        chunks: &'static [&'static str],
        endless: bool,
    ) -> (Url, Arc<AtomicBool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let gone = Arc::new(AtomicBool::new(false));
        let flag = gone.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let start = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-kept: yes\r\ntransfer-encoding: chunked\r\n\r\n";
                    if sock.write_all(start.as_bytes()).await.is_err() {
                        return;
                    }
                    for c in chunks {
                        let frame = format!("{:x}\r\n{c}\r\n", c.len());
                        if sock.write_all(frame.as_bytes()).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if endless {
                        let piece = vec![b'x'; 64 * 1024];
                        let mut frame = format!("{:x}\r\n", piece.len()).into_bytes();
                        frame.extend_from_slice(&piece);
                        frame.extend_from_slice(b"\r\n");
                        while sock.write_all(&frame).await.is_ok() {}
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    let _ = sock.write_all(b"0\r\n\r\n").await;
                });
            }
        });
        (url, gone)
    }

    /// A relay stand-in: the first poll hands out one request, later polls wait and hand
    /// out nothing, and each `_stream` call is answered with `stream_status(seq)`. With
    /// `streams`, its poll answers say it takes streamed responses (as the Worker's do).
    async fn relay(streams: bool, stream_status: fn(u64) -> u16) -> (Url, Arc<Mutex<Vec<Seen>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    while let Some(req) = read_request(&mut sock).await {
                        let first = {
                            let mut l = log.lock().unwrap();
                            l.push(req.clone());
                            l.len() == 1
                        };
                        let mut extra = String::new();
                        let (status, body) = if req.line.contains("/_poll") {
                            if streams {
                                extra = format!("{}: 1\r\n", header::RELAY_STREAMS);
                            }
                            if !first {
                                tokio::time::sleep(Duration::from_millis(600)).await;
                            }
                            let body = if first {
                                handing_out(ID)
                            } else {
                                r#"{"requests":[]}"#.to_owned()
                            };
                            (200, body)
                        } else if req.line.contains("/_stream/") {
                            let status = stream_status(seq_of(&req.line));
                            let body = if status == 200 {
                                r#"{"ok":true}"#
                            } else {
                                r#"{"ok":false,"error":"the caller went away"}"#
                            };
                            (status, body.to_owned())
                        } else {
                            (200, r#"{"ok":true}"#.to_owned())
                        };
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\n{extra}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if sock.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    /// The `seq` of a stream call's request line.
    fn seq_of(line: &str) -> u64 {
        line.split(['?', '&', ' '])
            .find_map(|p| p.strip_prefix("seq="))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    fn stream_calls(seen: &[Seen]) -> Vec<Seen> {
        seen.iter()
            .filter(|r| r.line.contains("/_stream/"))
            .cloned()
            .collect()
    }

    /// Runs a long-polling bridge from `relay` to `target` until `done` holds, or 15 s.
    async fn run_until(
        relay: Url,
        target: Url,
        seen: Arc<Mutex<Vec<Seen>>>,
        done: impl Fn(&[Seen]) -> bool,
    ) {
        let mut config = Config::new(relay, Secret::new("tok"), target);
        config.transport = Transport::Poll;
        config.drain_timeout = Duration::from_secs(5);
        let stop = async move {
            for _ in 0..300 {
                if done(&seen.lock().unwrap()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(40), run(config, stop))
            .await
            .expect("run returns soon after shutdown")
            .expect("relay errors never end run");
    }

    #[tokio::test]
    async fn an_unsized_response_goes_as_a_head_then_numbered_chunks_then_an_end() {
        let (target, _) =
            chunked_target(&["data: 1\n\n", "data: 2\n\n", "data: 3\n\n"], false).await;
        let (relay_url, seen) = relay(true, |_| 200).await;
        let ended = |s: &[Seen]| stream_calls(s).iter().any(|r| r.line.contains("end=1"));
        run_until(relay_url, target, seen.clone(), ended).await;
        let seen = seen.lock().unwrap();
        let calls = stream_calls(&seen);
        assert!(ended(&seen), "{seen:?}");
        let head = calls.first().unwrap();
        assert!(
            head.line.contains(&format!("/proxy/_stream/{ID}?seq=0 ")),
            "{head:?}"
        );
        let head: StreamHead = serde_json::from_str(&head.body).unwrap();
        assert_eq!(head.status, 200);
        assert!(head.headers.contains(&("x-kept".into(), "yes".into())));
        assert!(
            !head.headers.iter().any(|(k, _)| k == "transfer-encoding"),
            "{head:?}"
        );
        // The body calls are numbered from 1 without a gap, the last one ends the stream,
        // and together they carry the target's bytes in order.
        let body_calls = &calls[1..];
        for (i, c) in body_calls.iter().enumerate() {
            assert_eq!(seq_of(&c.line), i as u64 + 1, "{calls:?}");
        }
        assert!(body_calls.last().unwrap().line.contains("end=1"));
        let body: String = body_calls.iter().map(|c| c.body.as_str()).collect();
        assert_eq!(body, "data: 1\n\ndata: 2\n\ndata: 3\n\n");
        // Nothing of it went whole.
        assert!(
            !seen.iter().any(|r| r.line.contains("/_respond")),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_chunk_stops_the_bridge_reading_the_target() {
        let (target, gone) = chunked_target(&["first"], true).await;
        // The caller went away once the first chunk was posted.
        let (relay_url, seen) = relay(true, |seq| if seq >= 1 { 410 } else { 200 }).await;
        let flag = gone.clone();
        run_until(relay_url, target, seen.clone(), move |_| {
            flag.load(Ordering::SeqCst)
        })
        .await;
        assert!(
            gone.load(Ordering::SeqCst),
            "the target is still being read: {:?}",
            seen.lock().unwrap()
        );
        let calls = stream_calls(&seen.lock().unwrap());
        // The head, then one refused chunk: nothing after the refusal.
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(seq_of(&calls[1].line), 1);
        assert!(calls[1].body.len() <= ccr_protocol::relay::MAX_STREAM_CALL_BYTES);
    }

    #[tokio::test]
    async fn a_relay_that_does_not_say_it_streams_gets_the_response_whole() {
        // An older Worker: `_stream` would be a public path there.
        let (target, _) = chunked_target(&["a", "b"], false).await;
        let (relay_url, seen) = relay(false, |_| 200).await;
        let answered = |s: &[Seen]| s.iter().any(|r| r.line.contains("/_respond"));
        run_until(relay_url, target, seen.clone(), answered).await;
        let seen = seen.lock().unwrap();
        let respond = seen
            .iter()
            .find(|r| r.line.contains("/_respond"))
            .unwrap_or_else(|| panic!("{seen:?}"));
        let r: ccr_protocol::relay::RelayResponse = serde_json::from_str(&respond.body).unwrap();
        assert_eq!(r.id, ID);
        assert_eq!(
            ccr_protocol::relay::decode_body(r.body_base64.as_deref(), r.body.as_deref()).unwrap(),
            b"ab"
        );
        assert!(stream_calls(&seen).is_empty(), "{seen:?}");
    }
}
