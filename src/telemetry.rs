//! Structured logging for the daemon.
//!
//! Everything the relay reports goes through `tracing`; this module decides
//! how it is written: human-readable text for a terminal, or one JSON object
//! per line for a container's log collector. `RUST_LOG`, when set, overrides
//! the configured level so an operator can turn on debug output without
//! editing files.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. Call once, before anything logs.
///
/// A second call (as in tests that start several relays in one process) is
/// harmless: the first subscriber stays.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
