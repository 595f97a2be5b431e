//! Logging and spans: the tracing subscriber (text or JSON, filtered by
//! `RUST_LOG`), and the optional OTLP export of the proxy's server spans.
//!
//! The access log (`access`) is the `access` target at INFO, one line per request
//! with route, backend, status, duration, request id, and the W3C trace id
//! and the proxy's span id (`proxy::trace`), so a log line leads to the
//! backends' traces of the same request. With `server.tracing` set, the
//! same span is also exported to an OpenTelemetry collector (`otlp`).

pub(crate) mod access;
pub mod otlp;
mod span;

use tracing_subscriber::EnvFilter;

pub use self::otlp::{OtlpError, OtlpSettings, SpanExport, Spans};
pub(crate) use self::span::PendingSpan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default level
/// (`info`). A second call (as in tests) leaves the first in place.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: in a file or a pipe the
    // escape codes litter every line (and cost a little per line).
    let is_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    access::set_style(format, is_terminal);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(is_terminal)
        // Access lines this thread holds go first, so that its log keeps
        // the order in which things happened.
        .with_writer(|| {
            access::flush();
            std::io::stderr()
        });
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
