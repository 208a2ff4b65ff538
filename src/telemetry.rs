//! Logging: tracing with JSON (or text) output at the configured level.
//!
//! Owns only the subscriber set-up; what is logged is each module's business.
//! Secrets never reach a log line because their types print `[redacted]`.

use crate::config::{LogFormat, log::parse_level};

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let filter = parse_level(level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| e.to_string())
}
