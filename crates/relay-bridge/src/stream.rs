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
            let answered = async {
                match inflight.as_mut() {
                    Some(f) => f.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = answered => Event::Answered(r),
                c = resp.chunk(), if pending.wants_more() => Event::Read(c),
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
