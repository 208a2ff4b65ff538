//! Logging: tracing with JSON (or text) output at the configured level.
//!
//! Owns only the subscriber set-up; what is logged is each module's business.
//! Secrets never reach a log line because their types print `[redacted]`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The Vault client crates log every failed call at ERROR (and Vault's own
/// messages with it); the credentials module already logs each failure once,
/// with context, at WARN. Quiet unless the filter names them.
const QUIET: &[&str] = &["vaultrs", "rustify"];

/// Accepts `trace`, `debug`, `info`, `warn`, `error`, or a full tracing
/// filter such as `info,redis_cache_plugin=debug`.
pub fn parse_level(level: &str) -> Result<EnvFilter, String> {
    let level = level.trim();
    if level.is_empty() {
        return Err("must not be empty (trace, debug, info, warn, error)".into());
    }
    let mut filter = level.to_string();
    for target in QUIET.iter().filter(|t| !level.contains(*t)) {
        filter.push_str(&format!(",{target}=off"));
    }
    EnvFilter::try_new(&filter).map_err(|e| format!("{level:?}: {e}"))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_nonsense_does_not() {
        for ok in ["info", "debug", "warn,redis_cache_plugin=trace"] {
            assert!(parse_level(ok).is_ok(), "{ok}");
        }
        assert!(parse_level("").is_err());
        let quiet = parse_level("info").expect("valid").to_string();
        assert!(
            quiet.contains("vaultrs=off") && quiet.contains("rustify=off"),
            "{quiet}"
        );
        let loud = parse_level("info,vaultrs=debug")
            .expect("valid")
            .to_string();
        assert!(!loud.contains("vaultrs=off"), "{loud}");
        assert!(parse_level("loud=verbose=x").is_err());
    }
}
