//! A loopback TCP proxy that can cut every connection through it at once, without a
//! WebSocket close frame: what a dropped Wi-Fi or a sleeping laptop looks like to both ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy. Dropping it stops accepting and cuts every connection.
pub struct CutProxy {
    addr: SocketAddr,
    generation: watch::Sender<u64>,
    cuts: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl CutProxy {
    /// Listens on a free loopback port and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (generation, _) = watch::channel(0u64);
        let cuts = Arc::new(AtomicU64::new(0));
        let gen_tx = generation.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut cut = gen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut a, mut b) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        _ = cut.changed() => {}
                    }
                    // Dropping both halves closes the TCP connections: no close frame.
                });
            }
        });
        Ok(CutProxy {
            addr,
            generation,
            cuts,
            task,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every open connection; new ones are accepted as before.
    pub fn cut_all(&self) {
        self.cuts.fetch_add(1, Ordering::Relaxed);
        self.generation.send_modify(|g| *g += 1);
    }

    /// How many times [`CutProxy::cut_all`] ran.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut_all();
        self.task.abort();
    }
}
