//! `relay-bridge`: serves a local HTTP server through the CCR Worker's relay, making only
//! outbound calls. It long-polls the Worker for public requests, forwards each to the target
//! as it arrives (up to `concurrency` at once), and posts the responses back.
//!
//! Layout:
//! - [`Config`] and [`Secret`] (from `ccr-native`): what `main.rs` parses from flags and the
//!   environment — with [`run`], the crate's whole public surface.
//! - [`run`]: the poll loop, with its backpressure (a semaphore taken before each poll), its
//!   backoff after relay errors (`ccr-native`'s [`Backoff`], upper-half jitter) and its
//!   shutdown (stop polling, finish in-flight requests within a bound); the confirmations of
//!   received requests (`ack=` on the next poll, or `POST _ack` when no slot is free).
//! - `post_responses`: the responder, one task posting one `_respond` at a time; responses
//!   that finish while a post is in flight go together in the next, as a batch.
//! - `forward`: one request to the target and back into a response envelope.
//! - `stream`: a response that streams (no `content-length`, or a large one) goes back over
//!   long-poll as a head and bounded body calls (`_stream/{id}`), never buffered whole.
//! - `socket`: the WebSocket transport ([`Transport`]), tried first; the poll loop above is
//!   its fallback.
#![deny(missing_docs)]

mod forward;
mod socket;
mod stream;

use ccr_protocol::wire::{header, query, route};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ccr_protocol::relay::{
    streams_response, AckBody, PollBatch, RelayRequest, RelayResponse, RespondBody,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use url::Url;

pub use ccr_native::Secret;
use ccr_native::{Backoff, Jitter};
/// An empty poll answer faster than this means the relay is not long-polling: wait a little
/// before the next poll rather than spin.
const MIN_EMPTY_POLL: Duration = Duration::from_millis(500);
/// Attempts to confirm received requests on their own before giving up (the relay's lease is
/// 2 s: a confirmation later than that is of little use).
const ACK_ATTEMPTS: u32 = 2;
/// How long one such confirmation may take.
const ACK_TIMEOUT: Duration = Duration::from_millis(1500);
/// Most responses one `_respond` carries.
const MAX_RESPOND_BATCH: usize = 64;
/// About the most body bytes one `_respond` carries (the relay takes up to one 10 MiB body as
/// base64 plus 2 MiB; a bigger response goes alone).
const RESPOND_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Attempts to post one response before giving up on it.
const RESPOND_ATTEMPTS: u32 = 5;
/// After a failed (or instantly empty) poll the bridge waits from about this long…
pub(crate) const POLL_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// …doubling up to about this long; a poll that brings requests resets it.
pub(crate) const POLL_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Retries of one response post wait from about this long…
const RESPOND_BACKOFF_BASE: Duration = Duration::from_millis(200);
/// …doubling up to about this long.
const RESPOND_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How requests reach the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The WebSocket when it opens; long-polling when the upgrade is refused (a proxy that
    /// forbids upgrades, an older Worker) or a proxy is configured for the relay.
    Auto,
    /// Only the WebSocket (a refused upgrade is retried with backoff).
    WebSocket,
    /// Only long-polling (the seed protocol's transport).
    Poll,
}

/// Everything the bridge needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Worker's base URL, e.g. `https://ccr.example.workers.dev`.
    pub relay_url: Url,
    /// `RELAY_TOKEN` for the default channel, or the channel's derived token.
    pub token: Secret,
    /// A named channel (`/relay/{channel}`); `None` = the default channel (`/proxy`).
    pub channel: Option<String>,
    /// The local server, e.g. `http://127.0.0.1:8000`.
    pub target: Url,
    /// Most requests forwarded at once.
    pub concurrency: usize,
    /// Longest the target may take for one request before the caller gets a 502.
    pub target_timeout: Duration,
    /// How long each long-poll asks the relay to wait (at most 25 s is honoured).
    pub poll_wait: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
    /// How requests reach the bridge.
    pub transport: Transport,
}

impl Config {
    /// A config with the defaults for everything but the relay, token and target.
    pub fn new(relay_url: Url, token: Secret, target: Url) -> Self {
        Self {
            relay_url,
            token,
            channel: None,
            target,
            concurrency: 16,
            target_timeout: Duration::from_secs(30),
            poll_wait: Duration::from_secs(ccr_protocol::MAX_RELAY_WAIT_SECS),
            drain_timeout: Duration::from_secs(30),
            transport: Transport::Auto,
        }
    }

    /// Checks the settings, with a precise complaint for each bad one.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        for (name, url) in [("relay URL", &self.relay_url), ("target", &self.target)] {
            if !matches!(url.scheme(), "http" | "https") {
                bail!("the {name} must be an http(s) URL, not {url}");
            }
        }
        // The token travels with every poll: in clear text only to this machine itself.
        if self.relay_url.scheme() == "http" && !is_loopback(&self.relay_url) {
            bail!(
                "the relay URL must be https:// (http:// only for a loopback address such as \
                 127.0.0.1): the relay token would cross the network in clear text, not {}",
                self.relay_url
            );
        }
        if self.token.expose().trim().is_empty() {
            bail!("the relay token is empty: set --token or RELAY_TOKEN");
        }
        if let Some(channel) = &self.channel {
            ccr_protocol::validate::channel(channel)
                .map_err(|e| anyhow::anyhow!("--channel {channel:?}: {e}"))?;
        }
        if self.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if self.target_timeout.is_zero() {
            bail!("the target timeout must be above zero");
        }
        Ok(())
    }

    /// `{relay}/proxy/{op}` or `{relay}/relay/{channel}/{op}`.
    pub(crate) fn relay_endpoint(&self, op: &str) -> String {
        let base = self.relay_url.as_str().trim_end_matches('/');
        match &self.channel {
            None => format!("{base}{}/{op}", route::PROXY),
            Some(c) => format!("{base}{}/{op}", route::relay_channel(c)),
        }
    }
}

/// Whether `url` names this machine: `localhost`, 127.0.0.0/8 or `[::1]`.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// What each forwarding task shares.
struct Shared {
    config: Config,
    relay: reqwest::Client,
    target: reqwest::Client,
    /// The relay's poll answers said it takes streamed responses (`_stream`); until then
    /// (an older Worker) responses go whole, as before.
    relay_streams: std::sync::atomic::AtomicBool,
}

/// Runs the bridge until `shutdown` completes, then finishes in-flight requests (at most
/// `drain_timeout`) and returns. Relay errors are logged and retried with backoff, never
/// returned: only an invalid config or an unusable TLS setup is an `Err`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.validate()?;
    // The relay is reached through whatever proxy the environment names (HTTPS_PROXY,
    // NO_PROXY), trusting the system's CA store. It never follows a redirect: the token is in
    // every request, and a redirect could carry it to another host. The target is local:
    // never proxied, and its redirects are the caller's business.
    let relay = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("relay-bridge/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the relay HTTP client")?;
    let target = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the target HTTP client")?;
    let shared = Arc::new(Shared {
        config: config.clone(),
        relay,
        target,
        relay_streams: std::sync::atomic::AtomicBool::new(false),
    });
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let mut tasks = JoinSet::new();
    // One task posts every response; what finishes while a post is in flight goes in the next
    // one, as a batch.
    let (responses, outgoing) = mpsc::unbounded_channel();
    let responder = tokio::spawn(post_responses(shared.clone(), outgoing));
    // Each delay is drawn from the upper half of its step, so many bridges do not retry in
    // lockstep yet none retries much sooner than its step.
    let mut backoff = Backoff::new(POLL_BACKOFF_BASE, POLL_BACKOFF_MAX, Jitter::UpperHalf);
    let mut shutdown = std::pin::pin!(shutdown);
    // Ids received and not confirmed to the relay yet: they ride on the next poll
    // (`?ack=`), or go at once on their own (`POST _ack`) when no poll can start right away.
    // The relay gives a request it handed out to another poll unless this bridge confirms it
    // within its lease, so a request held by a bridge that died is never lost.
    let mut unconfirmed: Vec<String> = Vec::new();
    let mut confirming: Vec<String> = Vec::new();
    info!(
        relay = %config.relay_endpoint(route::POLL),
        target = %config.target,
        concurrency = config.concurrency,
        "relay-bridge started"
    );

    if config.transport != Transport::Poll {
        let auto = config.transport == Transport::Auto;
        match socket::run(shared.clone(), permits.clone(), auto, shutdown.as_mut()).await {
            socket::Ended::Shutdown => {
                drop(responses);
                let _ = responder.await;
                info!("relay-bridge stopped");
                return Ok(());
            }
            socket::Ended::Unavailable(why) => {
                warn!("the relay's WebSocket is unavailable ({why}): long-polling instead");
            }
        }
    }

    loop {
        while tasks.try_join_next().is_some() {}
        if !unconfirmed.is_empty() && permits.available_permits() == 0 {
            let ids = std::mem::take(&mut unconfirmed);
            let shared = shared.clone();
            tasks.spawn(async move { post_ack(&shared, &ids).await });
        }
        // Poll only with room to forward: the permit is taken before the poll.
        let first = tokio::select! {
            biased;
            () = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.context("the permit semaphore closed")?,
        };
        let max = 1 + permits.available_permits();
        let started = tokio::time::Instant::now();
        confirming = std::mem::take(&mut unconfirmed);
        let polled = tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = poll(&shared, max, &confirming) => r,
        };
        match polled {
            Ok(requests) => {
                confirming.clear();
                // An empty answer that came back at once is no sign of health: keep backing off.
                if requests.is_empty() && started.elapsed() < MIN_EMPTY_POLL {
                    drop(first);
                    let pause = backoff.next_delay(&mut rand::rng());
                    debug!(?pause, "the relay answered an empty poll at once");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
                backoff.reset();
                unconfirmed.extend(requests.iter().map(|r| r.id.clone()));
                let mut first = Some(first);
                for request in requests {
                    let permit = match first.take() {
                        Some(p) => p,
                        None => permits
                            .clone()
                            .acquire_owned()
                            .await
                            .context("the permit semaphore closed")?,
                    };
                    tasks.spawn(handle_one(
                        shared.clone(),
                        request,
                        permit,
                        responses.clone(),
                    ));
                }
            }
            Err(e) => {
                drop(first);
                // The failed poll may not have carried its confirmations: send them alone.
                if !confirming.is_empty() {
                    let ids = std::mem::take(&mut confirming);
                    let shared = shared.clone();
                    tasks.spawn(async move { post_ack(&shared, &ids).await });
                }
                let pause = backoff.next_delay(&mut rand::rng());
                warn!("polling the relay failed: {e:#}; retrying in {pause:?}");
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }

    // A poll cut short by the shutdown may not have carried its confirmations.
    unconfirmed.append(&mut confirming);
    if !unconfirmed.is_empty() {
        post_ack(&shared, &unconfirmed).await;
    }
    info!(
        in_flight = tasks.len(),
        "relay-bridge stopping: finishing in-flight requests"
    );
    let deadline = tokio::time::Instant::now() + config.drain_timeout;
    let drained = tokio::time::timeout_at(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            abandoned = tasks.len(),
            "in-flight requests did not finish within {:?}", config.drain_timeout
        );
        tasks.abort_all();
    }
    // Every response is queued for posting now: the responder ends once it posted them.
    drop(responses);
    if tokio::time::timeout_at(deadline, responder).await.is_err() {
        warn!(
            "responses were not all posted within {:?}",
            config.drain_timeout
        );
    }
    info!("relay-bridge stopped");
    Ok(())
}

/// The long-poll URL: how long to wait, how many requests at most, and the ids this bridge
/// confirms (the `ack` parameter is always present: it tells the relay that this bridge
/// confirms what it receives).
fn poll_url(cfg: &Config, max: usize, acks: &[String]) -> String {
    format!(
        "{}?{}={}&{}={max}&{}={}",
        cfg.relay_endpoint(route::POLL),
        query::WAIT,
        cfg.poll_wait.as_secs_f64(),
        query::MAX,
        query::ACK,
        acks.join(","),
    )
}

/// Confirms `ids` on their own (`POST _ack`), when no poll will carry them soon. Best effort:
/// a lost confirmation only lets the relay hand the request out again after its lease.
async fn post_ack(shared: &Shared, ids: &[String]) {
    let url = shared.config.relay_endpoint(route::ACK);
    let body = AckBody { ids: ids.to_vec() };
    for attempt in 1..=ACK_ATTEMPTS {
        let sent = shared
            .relay
            .post(&url)
            .header(header::RELAY_TOKEN, shared.config.token.expose())
            .json(&body)
            .timeout(ACK_TIMEOUT)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => warn!(attempt, "the relay refused a confirmation: {}", r.status()),
            Err(e) => warn!(attempt, "confirming received requests failed: {e}"),
        }
    }
}

/// One long-poll: the requests the relay hands out (maybe none); `acks` are confirmed.
async fn poll(shared: &Shared, max: usize, acks: &[String]) -> anyhow::Result<Vec<RelayRequest>> {
    let cfg = &shared.config;
    let url = poll_url(cfg, max, acks);
    debug!(max, confirming = acks.len(), "polling");
    let resp = shared
        .relay
        .get(&url)
        .header(header::RELAY_TOKEN, cfg.token.expose())
        .timeout(cfg.poll_wait + Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("polling {}", cfg.relay_endpoint(route::POLL)))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
            " (is the token this channel's?)"
        } else {
            ""
        };
        bail!("the relay answered {status}{hint}: {}", snippet(&text));
    }
    if resp.headers().contains_key(header::RELAY_STREAMS) {
        shared
            .relay_streams
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let batch: PollBatch = resp
        .json()
        .await
        .context("reading the relay's poll answer")?;
    Ok(batch.requests)
}

/// A response for the responder to post, and the slot it frees once posted.
type Outgoing = (RelayResponse, OwnedSemaphorePermit);

/// Forwards one request and hands its response to the responder; the permit goes with it and
/// is held until the response is posted.
async fn handle_one(
    shared: Arc<Shared>,
    request: RelayRequest,
    permit: OwnedSemaphorePermit,
    responses: mpsc::UnboundedSender<Outgoing>,
) {
    let id = request.id.clone();
    debug!(%id, method = %request.method, path = %request.path, "forwarding");
    let started = tokio::time::Instant::now();
    let cfg = &shared.config;
    let deadline = started + cfg.target_timeout;
    let sent = forward::send(
        &shared.target,
        &cfg.target,
        cfg.target_timeout,
        &request,
        None,
    )
    .await;
    let response = match sent {
        Err(bad) => bad,
        Ok(resp)
            if !streams_response(resp.content_length())
                || !shared
                    .relay_streams
                    .load(std::sync::atomic::Ordering::Relaxed) =>
        {
            forward::whole(&id, &cfg.target, cfg.target_timeout, deadline, resp).await
        }
        Ok(resp) => {
            // The same rule as the WebSocket transport: no length, or a large one, streams.
            info!(
                "{} {} → {} in {} ms (streaming)",
                request.method,
                request.path,
                resp.status().as_u16(),
                started.elapsed().as_millis()
            );
            stream::respond(&shared, &id, resp).await;
            drop(permit);
            return;
        }
    };
    info!(
        "{} {} → {} in {} ms",
        request.method,
        request.path,
        response.status,
        started.elapsed().as_millis()
    );
    if responses.send((response, permit)).is_err() {
        warn!(%id, "the responder is gone: the response is dropped");
    }
}

/// Roughly how many bytes a response adds to a `_respond` body.
fn response_size(r: &RelayResponse) -> usize {
    let headers: usize = r.headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    r.body_base64.as_ref().map_or(0, String::len)
        + r.body.as_ref().map_or(0, String::len)
        + headers
        + 128
}

/// Takes the responses that are ready now, after `first`: at most [`MAX_RESPOND_BATCH`] and
/// about [`RESPOND_BATCH_BYTES`] (always `first`). One that does not fit is returned to
/// start the next batch.
fn take_batch(
    first: Outgoing,
    rx: &mut mpsc::UnboundedReceiver<Outgoing>,
) -> (Vec<Outgoing>, Option<Outgoing>) {
    let mut bytes = response_size(&first.0);
    let mut batch = vec![first];
    while batch.len() < MAX_RESPOND_BATCH {
        let Ok(next) = rx.try_recv() else { break };
        let size = response_size(&next.0);
        if bytes.saturating_add(size) > RESPOND_BATCH_BYTES {
            return (batch, Some(next));
        }
        bytes += size;
        batch.push(next);
    }
    (batch, None)
}

/// The responder: posts responses one `_respond` at a time; the ones that finish while a post
/// is in flight go together in the next (`{"responses":[...]}`), so a busy bridge costs the
/// relay far fewer calls than it answers requests. Ends when every sender is gone and all is
/// posted. Slots are freed as their responses are posted.
async fn post_responses(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut carry = None;
    loop {
        let first = match carry.take() {
            Some(next) => next,
            None => match rx.recv().await {
                Some(next) => next,
                None => return,
            },
        };
        let (batch, rest) = take_batch(first, &mut rx);
        carry = rest;
        let (responses, permits): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        post_response(&shared, responses).await;
        drop(permits);
    }
}

/// The `_respond` body: one response as itself (what every relay accepts), several as
/// `{"responses":[...]}`.
fn respond_body(mut responses: Vec<RelayResponse>) -> RespondBody {
    if responses.len() == 1 {
        if let Some(one) = responses.pop() {
            return RespondBody::One(one);
        }
    }
    RespondBody::Batch { responses }
}

/// Posts responses, retrying transport errors and 5xx a few times with backoff.
async fn post_response(shared: &Shared, responses: Vec<RelayResponse>) {
    let url = shared.config.relay_endpoint(route::RESPOND);
    let ids: Vec<String> = responses.iter().map(|r| r.id.clone()).collect();
    let ids = ids.join(",");
    let body = respond_body(responses);
    let batch = matches!(body, RespondBody::Batch { .. });
    let mut backoff = Backoff::new(RESPOND_BACKOFF_BASE, RESPOND_BACKOFF_MAX, Jitter::UpperHalf);
    for attempt in 1..=RESPOND_ATTEMPTS {
        let sent = shared
            .relay
            .post(&url)
            .header(header::RELAY_TOKEN, shared.config.token.expose())
            .json(&body)
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        let retry = match sent {
            Ok(r) if r.status().is_success() => {
                if batch {
                    // Each refused item (a duplicate, an id the relay forgot) is logged.
                    let answer: serde_json::Value = r.json().await.unwrap_or_default();
                    for item in answer["results"].as_array().into_iter().flatten() {
                        if item["ok"] != true {
                            warn!(id = %item["id"], "the relay refused the response: {}", item["error"]);
                        }
                    }
                }
                return;
            }
            Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                format!("the relay answered {}", r.status())
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                warn!(%ids, "the relay refused the response: {status}: {}", snippet(&text));
                return;
            }
            Err(e) => format!("{:#}", anyhow::Error::new(e)),
        };
        if attempt == RESPOND_ATTEMPTS {
            warn!(%ids, "giving up posting the response: {retry}");
            return;
        }
        let pause = backoff.next_delay(&mut rand::rng());
        warn!(%ids, "posting the response failed: {retry}; retrying in {pause:?}");
        tokio::time::sleep(pause).await;
    }
}

/// The first 200 characters of an error body, for a log line.
fn snippet(text: &str) -> String {
    let mut s: String = text.chars().take(200).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new(
            Url::parse("https://relay.example/").unwrap(),
            Secret::new("tok"),
            Url::parse("http://127.0.0.1:8000").unwrap(),
        )
    }

    #[test]
    fn endpoints() {
        let mut c = config();
        assert_eq!(
            c.relay_endpoint("_poll"),
            "https://relay.example/proxy/_poll"
        );
        c.channel = Some("alpha".into());
        assert_eq!(
            c.relay_endpoint("_respond"),
            "https://relay.example/relay/alpha/_respond"
        );
    }

    #[test]
    fn validation_names_the_bad_setting() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.channel = Some("Bad Name".into());
        assert!(format!("{:#}", c.validate().unwrap_err()).contains("--channel"));
        let mut c = config();
        c.concurrency = 0;
        assert!(c.validate().is_err());
        let mut c = config();
        c.token = Secret::new(" ");
        assert!(c.validate().is_err());
        let mut c = config();
        c.target = Url::parse("ftp://x").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn plain_http_relays_only_on_loopback() {
        for ok in [
            "http://127.0.0.1:8787",
            "http://127.1.2.3/",
            "http://localhost:8787",
            "http://[::1]:8787",
            "https://relay.example",
        ] {
            let mut c = config();
            c.relay_url = Url::parse(ok).unwrap();
            assert!(c.validate().is_ok(), "{ok}");
        }
        for bad in [
            "http://relay.example",
            "http://10.0.0.5:8787",
            "http://127.0.0.1.nip.io/",
            "http://[::2]/",
        ] {
            let mut c = config();
            c.relay_url = Url::parse(bad).unwrap();
            let err = format!("{:#}", c.validate().unwrap_err());
            assert!(
                err.contains("https://") && err.contains("clear text"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn secrets_are_masked() {
        let c = config();
        let shown = format!("{c:?} {}", c.token);
        assert!(!shown.contains("tok\"") && shown.contains("MASKED"));
    }
}

#[cfg(test)]
mod run_tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A relay stand-in that answers every request with `status` and `body`, counting them.
    async fn fake_relay(status: &'static str, body: &'static str) -> (Url, Arc<AtomicUsize>) {
        fake_relay_with(status, "", body).await
    }

    /// Like [`fake_relay`], with `extra` header lines (each ending in `\r\n`).
    async fn fake_relay_with(
        status: &'static str,
        extra: &'static str,
        body: &'static str,
    ) -> (Url, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let reply = format!(
                        "HTTP/1.1 {status}\r\n{extra}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(reply.as_bytes()).await;
                });
            }
        });
        (url, hits)
    }

    async fn run_for(relay: Url, secs: u64) {
        let config = Config::new(
            relay,
            Secret::new("tok"),
            Url::parse("http://127.0.0.1:9").unwrap(),
        );
        let mut config = config;
        config.transport = Transport::Poll;
        let stop = tokio::time::sleep(Duration::from_secs(secs));
        tokio::time::timeout(Duration::from_secs(secs + 10), run(config, stop))
            .await
            .expect("run returns soon after shutdown")
            .expect("relay errors never end run");
    }

    #[tokio::test]
    async fn relay_errors_back_off_and_never_end_the_bridge() {
        let (url, hits) = fake_relay("500 Internal Server Error", "{\"ok\":false}").await;
        run_for(url, 4).await;
        let n = hits.load(Ordering::SeqCst);
        // 0.25–0.5 s, then 0.5–1, 1–2, 2–4: a handful of attempts in 4 s, never a spin.
        assert!((2..=8).contains(&n), "{n} polls in 4 s");
    }

    #[tokio::test]
    async fn a_redirect_from_the_relay_is_never_followed() {
        // Where the redirect points: it must never see a request (it would carry the token).
        let (elsewhere, elsewhere_hits) = fake_relay("200 OK", "{\"requests\":[]}").await;
        let location: &'static str =
            Box::leak(format!("location: {elsewhere}proxy/_poll\r\n").into_boxed_str());
        let (relay, hits) = fake_relay_with("307 Temporary Redirect", location, "").await;
        run_for(relay, 3).await;
        assert!(
            hits.load(Ordering::SeqCst) >= 1,
            "the bridge polled the relay"
        );
        assert_eq!(
            elsewhere_hits.load(Ordering::SeqCst),
            0,
            "the redirect was followed"
        );
    }

    #[tokio::test]
    async fn a_relay_that_does_not_wait_is_not_hammered() {
        let (url, hits) = fake_relay("200 OK", "{\"requests\":[]}").await;
        run_for(url, 4).await;
        let n = hits.load(Ordering::SeqCst);
        assert!((2..=8).contains(&n), "{n} polls in 4 s");
    }
}

#[cfg(test)]
mod confirm_tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request a scripted relay saw: its request line and body.
    #[derive(Debug, Clone)]
    pub(crate) struct Seen {
        pub(crate) line: String,
        pub(crate) body: String,
    }

    /// Reads one HTTP/1.1 request (head and `content-length` body) from `sock`.
    pub(crate) async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Seen> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            let n = sock.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let n = sock.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(Seen {
            line: head.lines().next().unwrap_or_default().to_owned(),
            body: String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string(),
        })
    }

    /// A relay stand-in: `script` gives (delay, JSON body) for each request it sees, in
    /// order; every request is recorded.
    pub(crate) async fn scripted_relay(
        script: impl Fn(&Seen, usize) -> (Duration, String) + Send + Sync + 'static,
    ) -> (Url, Arc<Mutex<Vec<Seen>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let script = Arc::new(script);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let log = log.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    while let Some(req) = read_request(&mut sock).await {
                        let n = {
                            let mut l = log.lock().unwrap();
                            l.push(req.clone());
                            l.len() - 1
                        };
                        let (delay, body) = script(&req, n);
                        tokio::time::sleep(delay).await;
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
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

    pub(crate) const ID: &str = "0123456789abcdef0123456789abcdef";

    /// A poll answer handing out one request with `id`.
    pub(crate) fn handing_out(id: &str) -> String {
        format!(r#"{{"requests":[{{"id":"{id}","method":"GET","path":"/x"}}]}}"#)
    }

    /// Runs a bridge against `relay` (target: a closed port, so every answer is a 502) until
    /// `done` holds for what the relay saw, or 10 s.
    pub(crate) async fn run_until(
        relay: Url,
        concurrency: usize,
        seen: Arc<Mutex<Vec<Seen>>>,
        done: impl Fn(&[Seen]) -> bool,
    ) {
        let mut config = Config::new(
            relay,
            Secret::new("tok"),
            Url::parse("http://127.0.0.1:9").unwrap(),
        );
        config.concurrency = concurrency;
        config.transport = Transport::Poll;
        let stop = async move {
            for _ in 0..200 {
                if done(&seen.lock().unwrap()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), run(config, stop))
            .await
            .expect("run returns soon after shutdown")
            .expect("relay errors never end run");
    }

    #[tokio::test]
    async fn received_requests_are_confirmed_on_the_next_poll() {
        let (url, seen) = scripted_relay(|req, n| match (n, req.line.contains("/_poll")) {
            (0, _) => (Duration::ZERO, handing_out(ID)),
            (_, true) => (Duration::from_millis(600), r#"{"requests":[]}"#.into()),
            (_, false) => (Duration::ZERO, r#"{"ok":true}"#.into()),
        })
        .await;
        let confirmed = |s: &[Seen]| {
            s.iter()
                .skip(1)
                .any(|r| r.line.contains("/_poll") && r.line.contains(&format!("ack={ID}")))
        };
        run_until(url, 4, seen.clone(), confirmed).await;
        let seen = seen.lock().unwrap();
        assert!(seen[0].line.contains("ack= "), "{:?}", seen[0]);
        assert!(confirmed(&seen), "{seen:?}");
        // A slot was free, so the very next request is the poll that carries it.
        assert!(
            seen[1].line.contains("/_poll") && seen[1].line.contains(ID),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn with_no_slot_free_the_confirmation_goes_alone() {
        // One slot, taken by the request: no poll can start until it is answered, so the
        // confirmation must not wait for one.
        let (url, seen) = scripted_relay(|req, n| match (n, req.line.contains("/_poll")) {
            (0, _) => (Duration::ZERO, handing_out(ID)),
            (_, true) => (Duration::from_millis(600), r#"{"requests":[]}"#.into()),
            (_, false) => (Duration::ZERO, r#"{"ok":true}"#.into()),
        })
        .await;
        let acked = |s: &[Seen]| {
            s.iter()
                .any(|r| r.line.contains("/_ack") && r.body == format!(r#"{{"ids":["{ID}"]}}"#))
        };
        run_until(url, 1, seen.clone(), acked).await;
        assert!(acked(&seen.lock().unwrap()), "{:?}", seen.lock().unwrap());
    }

    #[tokio::test]
    async fn responses_that_finish_during_a_post_go_in_one_batch() {
        // Five requests at once; the target is down, so all five 502s are ready at once. The
        // relay takes 600 ms to answer a `_respond`: whatever finished meanwhile must go in
        // one batch, not five posts.
        let ids: Vec<String> = (0..5).map(|i| format!("{i:032x}")).collect();
        let handed = format!(
            r#"{{"requests":[{}]}}"#,
            ids.iter()
                .map(|id| format!(r#"{{"id":"{id}","method":"GET","path":"/x"}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let (url, seen) = scripted_relay(move |req, n| match (n, req.line.contains("/_poll")) {
            (0, _) => (Duration::ZERO, handed.clone()),
            (_, true) => (Duration::from_millis(600), r#"{"requests":[]}"#.into()),
            (_, false) => (
                Duration::from_millis(600),
                r#"{"ok":true,"results":[]}"#.into(),
            ),
        })
        .await;
        let responds = |s: &[Seen]| -> Vec<Seen> {
            s.iter()
                .filter(|r| r.line.contains("/_respond"))
                .cloned()
                .collect()
        };
        let all_answered = {
            let ids = ids.clone();
            move |s: &[Seen]| {
                let posted = responds(s);
                ids.iter()
                    .all(|id| posted.iter().any(|r| r.body.contains(id.as_str())))
            }
        };
        run_until(url, 8, seen.clone(), all_answered.clone()).await;
        let seen = seen.lock().unwrap();
        assert!(all_answered(&seen), "{seen:?}");
        let posted = responds(&seen);
        // The first post may carry one or all; the rest came during it: at most two posts.
        assert!(posted.len() <= 2, "{} posts: {posted:?}", posted.len());
        assert!(
            posted
                .iter()
                .any(|r| r.body.starts_with(r#"{"responses":["#)),
            "{posted:?}"
        );
        for id in &ids {
            let times = posted
                .iter()
                .filter(|r| r.body.contains(id.as_str()))
                .count();
            assert_eq!(times, 1, "{id} posted {times} times");
        }
    }
}
