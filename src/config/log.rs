//! The `log` section: [`LogConfig`] with its defaults, and the `log.level`
//! string — which levels and filters are accepted, and the client crates
//! kept quiet unless named. Owns the schema and parsing only; installing the
//! subscriber is `telemetry`'s.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

use crate::config::error::ConfigError;

/// Log level and format.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// JSON for machines, text for people at a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Json,
        }
    }
}

impl LogConfig {
    /// The level must be one the subscriber accepts.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        parse_level(&self.level).map_err(|reason| ConfigError::new("log.level", reason))?;
        Ok(())
    }
}

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
