//! Free loopback ports chosen at run time.

use std::net::TcpListener;

/// A port that was free a moment ago (bound to port 0 and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// Serves `app` on a loopback port the kernel picks (no race: the listener is kept): its
/// address and the serving task (abort it, or drop the runtime, to stop).
pub async fn serve_loopback(
    app: axum::Router,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("listener without an address: {e}"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

/// A caller's HTTP client: no proxy (everything is on loopback), `timeout` per call.
pub fn client(timeout: std::time::Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .unwrap_or_else(|e| panic!("building an HTTP client: {e}"))
}

/// The loopback TCP ports listened on by the processes named `name` in process group `group`
/// (Linux `/proc`: each process's socket inodes, matched against `/proc/net/tcp`'s listening
/// sockets on 127.0.0.1). Empty where `/proc` is unreadable.
pub fn listening_ports_of_group(group: u32, name: &str) -> Vec<u16> {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces, so split after its ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
        let pgrp = rest
            .split_whitespace()
            .nth(2)
            .and_then(|g| g.parse::<u32>().ok());
        if comm != name || pgrp != Some(group) {
            continue;
        }
        for fd in std::fs::read_dir(entry.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy().into_owned();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|l| l.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let mut ports: Vec<u16> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address rem_address st ... inode (column 9); 0A is LISTEN.
            let (local, state, inode) = (cols.get(1)?, cols.get(3)?, cols.get(9)?);
            let (ip, port) = local.split_once(':')?;
            (*state == "0A" && ip == "0100007F" && inodes.contains(*inode))
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}
