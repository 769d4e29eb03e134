//! The tokio runtime every async part of `ccr-agent` runs on (the daemon, a hook, `doctor`,
//! `telegram setup`): two worker threads are plenty for one socket and a few HTTP calls.

/// A multi-threaded runtime with two workers, I/O and timers enabled.
pub(crate) fn build() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
