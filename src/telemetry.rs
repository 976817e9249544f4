//! Logging: readable lines in development, JSON in production. Never a password, hash or token:
//! the types that hold them do not print.

mod buffered;
mod json;

use tracing::Subscriber;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

use self::buffered::Buffered;
pub use self::buffered::LogGuard;
use self::json::{JsonLines, SpanFields};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `level`.
///
/// Driver chatter (sqlx logs every statement at INFO) is turned down unless asked for.
///
/// Lines go to stderr through a buffer (see [`Buffered`]); the guard writes out the rest
/// when dropped, so the caller keeps it until the end. `None` when a subscriber was already
/// installed.
pub fn init(format: LogFormat, level: &str) -> Option<LogGuard> {
    let (writer, guard) = Buffered::start(std::io::stderr());
    let layer = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(SpanFields)
            .event_format(JsonLines::new())
            .with_writer(writer)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter(level))
        .with(layer)
        .try_init()
        .ok()
        .map(|()| guard)
}

/// `RUST_LOG` when set; otherwise `level`, with the drivers at `warn`. A plain list of levels
/// and targets is a [`Targets`] filter, which decides once per call site; only span and field
/// directives need an [`EnvFilter`], which also tracks every span a request enters.
fn filter<S>(level: &str) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let directives = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| format!("{level},sqlx=warn,sea_orm=warn,sea_orm_migration=warn"));
    match plain_targets(&directives) {
        Some(targets) => targets.boxed(),
        None => EnvFilter::new(directives).boxed(),
    }
}

/// `directives` as a [`Targets`] filter, unless they name spans or fields (`[span{field}]`),
/// which only an [`EnvFilter`] understands (a `Targets` would take them for a target).
fn plain_targets(directives: &str) -> Option<Targets> {
    if directives.contains(['[', ']', '{', '}']) {
        return None;
    }
    directives.parse().ok()
}

/// An output the tests can read back.
#[cfg(test)]
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[cfg(test)]
impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn plain_levels_and_targets_need_no_env_filter() {
        let targets = plain_targets("info,sqlx=warn,sea_orm=warn").unwrap();
        assert!(targets.would_enable("portcullis", &Level::INFO));
        assert!(!targets.would_enable("portcullis", &Level::DEBUG));
        assert!(!targets.would_enable("sqlx::query", &Level::INFO));
        assert!(targets.would_enable("sqlx::query", &Level::WARN));
        assert!(plain_targets("info,[request{request_id}]=debug").is_none());
        assert!(plain_targets("portcullis[request]=trace").is_none());
    }
}
