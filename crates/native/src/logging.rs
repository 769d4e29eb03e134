//! The one tracing set-up of the native programs: `RUST_LOG` (else a default filter) over a
//! plain-text formatter. What differs between callers — where lines go, whether they are
//! coloured, the default level — is a parameter.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The subscriber [`init_tracing`] installs: filtered by `RUST_LOG`, else `default_filter`
/// (e.g. `"info"`), writing to `writer`. `ansi`: `Some(on)` turns colours on or off; `None`
/// keeps the formatter's own default.
pub fn subscriber<W>(
    writer: W,
    ansi: Option<bool>,
    default_filter: &str,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match ansi {
        Some(on) => builder.with_ansi(on).finish(),
        None => builder.finish(),
    }
}

/// Installs [`subscriber`] as the process's global subscriber; call it once, first thing.
///
/// # Panics
/// If a global subscriber is already installed.
pub fn init_tracing<W>(writer: W, ansi: Option<bool>, default_filter: &str)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    subscriber(writer, ansi, default_filter).init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn filters_by_the_default_level_and_writes_plain_text() {
        if std::env::var_os("RUST_LOG").is_some() {
            return; // The environment's filter wins; nothing to check here.
        }
        let buf = Buf::default();
        let out = buf.clone();
        let sub = subscriber(move || out.clone(), Some(false), "info");
        tracing::subscriber::with_default(sub, || {
            tracing::info!("shown line");
            tracing::debug!("hidden line");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("INFO") && text.contains("shown line"),
            "{text}"
        );
        assert!(!text.contains("hidden line"), "{text}");
        assert!(!text.contains('\u{1b}'), "no colour codes: {text:?}");
    }
}
