//! The checks several sections share: a count within bounds, a timeout
//! above zero and below [`MAX_TIMEOUT`], a readable file, TLS material
//! given while TLS is off. Each names the field it fails on. Which field
//! gets which rule is the sections' business, not this file's.

use std::time::Duration;

use crate::config::{
    duration::{Dur, format_duration},
    error::ConfigError,
};

/// Bound on every timeout and interval.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A file named by `field` must be readable (when given, or always when
/// `required`); read errors name the field, never the content.
pub(crate) fn readable(field: &str, path: &str, required: bool) -> Result<(), ConfigError> {
    if path.is_empty() {
        return match required {
            true => Err(ConfigError::new(field, "required when TLS is enabled")),
            false => Ok(()),
        };
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| ConfigError::new(field, format!("{path}: {e}")))
}

/// A client certificate and its key in `block`: each readable when given,
/// and both or neither (a certificate without its key cannot be presented).
pub(crate) fn cert_and_key(
    block: &str,
    (cert_name, cert): (&str, &str),
    (key_name, key): (&str, &str),
) -> Result<(), ConfigError> {
    readable(&format!("{block}.{cert_name}"), cert, false)?;
    readable(&format!("{block}.{key_name}"), key, false)?;
    if cert.is_empty() != key.is_empty() {
        return Err(ConfigError::new(
            format!("{block}.{key_name}"),
            format!("{cert_name} and {key_name} go together"),
        ));
    }
    Ok(())
}

/// TLS material in `block` while its `enabled` is off.
pub(crate) fn tls_off(block: &str, given: &str, instead: &str) -> ConfigError {
    ConfigError::new(
        format!("{block}.enabled"),
        format!("must be true when {block}.{given} is set; refusing to {instead}"),
    )
}

/// A count limit: at least 1, at most `max`.
pub(crate) fn within(n: usize, max: usize, field: &str) -> Result<(), ConfigError> {
    if n == 0 || n > max {
        return Err(ConfigError::new(
            field,
            format!("must be between 1 and {max}"),
        ));
    }
    Ok(())
}

pub(crate) fn nonzero(d: Dur, field: &str) -> Result<(), ConfigError> {
    if d.0.is_zero() {
        return Err(ConfigError::new(field, "must be greater than 0"));
    }
    Ok(())
}

/// A timeout or interval: above zero and at most [`MAX_TIMEOUT`], so
/// `Instant::now() + d` cannot overflow anywhere it is used.
pub(crate) fn timeout(d: Dur, field: &str) -> Result<(), ConfigError> {
    nonzero(d, field)?;
    at_most(d, field)
}

pub(crate) fn at_most(d: Dur, field: &str) -> Result<(), ConfigError> {
    if d.0 > MAX_TIMEOUT {
        return Err(ConfigError::new(
            field,
            format!("must be at most {}", format_duration(MAX_TIMEOUT)),
        ));
    }
    Ok(())
}
