//! [`ConfigError`]: a bad config as one line naming the field. Owns the
//! error type only; which rules raise it belong to each section.

/// A bad config, reported as one line naming the field.
#[derive(Debug, thiserror::Error)]
#[error("invalid config: {field}: {reason}")]
pub struct ConfigError {
    /// Dotted path of the field (or environment variable) at fault.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
