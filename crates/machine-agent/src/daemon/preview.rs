//! `/preview PORT`: serves this machine's `127.0.0.1:PORT` (or `[::1]:PORT`) through the
//! Worker's relay on the channel the Worker named, with the token the Worker derived for it
//! (the agent never holds `RELAY_TOKEN`). The bridge is `relay-bridge` used as a library —
//! its public `Config` and `run` only — one task per preview, stopped by a `previewStop`
//! frame or, at the latest, at the preview's expiry on the agent's own clock.
//!
//! Only loopback addresses are ever the target: the chat names a port, never a host. Previews
//! live in memory: after an agent restart the Worker sends `previewStart` again for each open
//! one when the agent connects, and a start for a channel already served is answered at once.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_bridge::Secret;
use tokio::sync::oneshot;
use tracing::{info, warn};
use url::Url;

use crate::db::now_ms;

/// How long the port check may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// On stop, how long requests in flight may take to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// The running previews of this agent.
#[derive(Clone)]
pub(crate) struct Previews {
    relay_url: Url,
    machine_id: String,
    running: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>,
}

/// What a preview needs to start (from a `previewStart` frame).
pub(crate) struct Ask {
    /// The relay channel.
    pub(crate) channel: String,
    /// The loopback port.
    pub(crate) port: u16,
    /// The channel's bridge token.
    pub(crate) token: String,
    /// When to stop on our own (ms since the epoch).
    pub(crate) expires_at: i64,
}

impl Previews {
    /// Previews served through the relay of the Worker at `relay_url`.
    pub(crate) fn new(relay_url: Url, machine_id: String) -> Self {
        Self {
            relay_url,
            machine_id,
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// How many previews are being served.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.running.lock().map_or(0, |r| r.len())
    }

    /// Checks that something listens on the port, then starts serving it; `Err(why)` for the
    /// chat otherwise.
    pub(crate) async fn start(&self, ask: Ask) -> Result<(), String> {
        if self
            .running
            .lock()
            .is_ok_and(|r| r.contains_key(&ask.channel))
        {
            return Ok(());
        }
        if !relay_allowed(&self.relay_url) {
            return Err(format!(
                "{} reaches the Worker over plain http:// ({}), which would carry the \
                 preview's token in clear text; set its Worker URL to https://",
                self.machine_id, self.relay_url
            ));
        }
        let target = self.listening(ask.port).await?;
        let mut config = relay_bridge::Config::new(
            self.relay_url.clone(),
            Secret::new(ask.token),
            target.clone(),
        );
        config.channel = Some(ask.channel.clone());
        config.drain_timeout = DRAIN;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        match self.running.lock() {
            Ok(mut running) => {
                running.insert(ask.channel.clone(), stop_tx);
            }
            Err(_) => return Err("the agent's preview table is unusable".into()),
        }
        let left = u64::try_from(ask.expires_at.saturating_sub(now_ms())).unwrap_or(0);
        let running = self.running.clone();
        let channel = ask.channel;
        info!(%channel, %target, "preview started");
        tokio::spawn(async move {
            let shutdown = async move {
                tokio::select! {
                    _ = stop_rx => {}
                    _ = tokio::time::sleep(Duration::from_millis(left)) => {}
                }
            };
            if let Err(e) = relay_bridge::run(config, shutdown).await {
                warn!(%channel, "preview bridge failed: {e:#}");
            }
            if let Ok(mut running) = running.lock() {
                running.remove(&channel);
            }
            info!(%channel, "preview ended");
        });
        Ok(())
    }

    /// Stops a preview; an unknown channel is nothing to do.
    pub(crate) fn stop(&self, channel: &str) {
        let stop = self.running.lock().ok().and_then(|mut r| r.remove(channel));
        if let Some(stop) = stop {
            let _ = stop.send(());
            info!(%channel, "preview stop asked");
        }
    }

    /// The target URL of the first loopback address that accepts a connection on `port`.
    async fn listening(&self, port: u16) -> Result<Url, String> {
        if port == 0 {
            return Err("port 0 cannot be previewed".into());
        }
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let addr = SocketAddr::new(ip, port);
            let connected =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await;
            if let Ok(Ok(_)) = connected {
                return Url::parse(&format!("http://{addr}"))
                    .map_err(|e| format!("no target URL for {addr}: {e}"));
            }
        }
        Err(format!(
            "nothing is listening on port {port} on {} (the preview serves only this machine's \
             loopback address, 127.0.0.1 or [::1]); start the server and try again",
            self.machine_id
        ))
    }
}

/// The bridge sends the channel's token with every poll: over https, or http only to this
/// machine itself (the bridge refuses anything else; checked here so the chat hears why
/// before it is given a link).
fn relay_allowed(url: &Url) -> bool {
    match (url.scheme(), url.host()) {
        ("https", _) => true,
        ("http", Some(url::Host::Domain(d))) => d.eq_ignore_ascii_case("localhost"),
        ("http", Some(url::Host::Ipv4(ip))) => ip.is_loopback(),
        ("http", Some(url::Host::Ipv6(ip))) => ip.is_loopback(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn previews() -> Previews {
        Previews::new(Url::parse("http://127.0.0.1:9").unwrap(), "devbox".into())
    }

    #[tokio::test]
    async fn a_port_nobody_listens_on_is_refused_with_a_clear_reason() {
        // A port we bound and closed: nobody listens on it now.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let why = previews()
            .start(Ask {
                channel: "pv-test".into(),
                port,
                token: "t".into(),
                expires_at: now_ms() + 60_000,
            })
            .await
            .unwrap_err();
        assert!(
            why.contains(&format!("nothing is listening on port {port} on devbox")),
            "{why}"
        );
        assert_eq!(previews().count(), 0);
    }

    #[tokio::test]
    async fn a_worker_over_plain_http_elsewhere_is_refused_before_any_link() {
        for ok in [
            "https://ccr.example.dev",
            "http://127.0.0.1:8787",
            "http://localhost:1",
        ] {
            assert!(relay_allowed(&Url::parse(ok).unwrap()), "{ok}");
        }
        let remote = Previews::new(
            Url::parse("http://ccr.example.dev").unwrap(),
            "devbox".into(),
        );
        let why = remote
            .start(Ask {
                channel: "pv-test".into(),
                port: 1,
                token: "t".into(),
                expires_at: now_ms() + 60_000,
            })
            .await
            .unwrap_err();
        assert!(why.contains("plain http://"), "{why}");
    }

    #[tokio::test]
    async fn a_listening_port_starts_and_stops() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = previews();
        p.start(Ask {
            channel: "pv-test".into(),
            port,
            token: "t".into(),
            expires_at: now_ms() + 60_000,
        })
        .await
        .unwrap();
        assert_eq!(p.count(), 1);
        p.stop("pv-test");
        assert_eq!(p.count(), 0);
        // Stopping again, or an unknown channel, is nothing.
        p.stop("pv-test");
        p.stop("pv-other");
    }
}
