//! Stopping on request: both daemons (the agent and the bridge) finish their work and exit
//! cleanly on SIGINT (Ctrl-C) or SIGTERM (systemd, launchd, `kill`).

use std::future::Future;

/// Which signal asked the program to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

/// A future that completes with the first SIGINT or SIGTERM. The handlers are installed by
/// this call (so a signal arriving before the future is polled is not lost); installing them
/// can fail, which the caller decides how to report.
#[cfg(unix)]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = Signal> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => Signal::Terminate,
            _ = int.recv() => Signal::Interrupt,
        }
    })
}

/// A future that completes on Ctrl-C (there is no SIGTERM here).
#[cfg(not(unix))]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = Signal> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        Signal::Interrupt
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn completes_on_sigint() {
        let stop = shutdown_signal().unwrap();
        // Sent to this very process: the handler installed above takes it.
        let status = std::process::Command::new("kill")
            .args(["-INT", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let got = tokio::time::timeout(Duration::from_secs(10), stop)
            .await
            .expect("the signal ends the future");
        assert_eq!(got, Signal::Interrupt);
    }
}
