//! The `log.level` string: which levels and filters are accepted, and the
//! client crates kept quiet unless named. Owns parsing only; installing the
//! subscriber is `telemetry`'s.

use tracing_subscriber::EnvFilter;

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
