//! What can go wrong talking to Vault ([`VaultError`]), reduced to what is
//! safe to show (a status code and Vault's own first message, never a
//! response body), and the one mapping of it onto the credential loop's
//! [`SourceError`] (permanent or transient).
//!
//! It does not decide what to do about an error: the session retries or
//! logs in again, the loop renews or rotates.

use serde::Deserialize;

use crate::credentials::source::SourceError;

/// A failed Vault call. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Vault answered with an error status.
    #[error("{operation}: vault answered {code}: {message}")]
    Api {
        operation: &'static str,
        code: u16,
        message: String,
    },
    /// Vault could not be reached or did not answer.
    #[error("{operation}: vault unreachable: {reason}")]
    Transport {
        operation: &'static str,
        reason: String,
    },
    /// Vault's answer lacked what we need.
    #[error("{operation}: unexpected answer: {what}")]
    Malformed {
        operation: &'static str,
        what: &'static str,
    },
    /// A credential file could not be read; `field` is its config key.
    #[error("{field}: cannot read {path}: {reason}")]
    File {
        field: &'static str,
        path: String,
        reason: String,
    },
    /// The client could not be built (address, CA file).
    #[error("vault client: {0}")]
    Setup(String),
}

impl VaultError {
    /// True when retrying the same call cannot help (bad request, denied,
    /// gone): the lease is lost, rotate instead.
    pub fn is_permanent(&self) -> bool {
        matches!(self, VaultError::Api { code, .. } if (400..500).contains(code))
    }

    pub(super) fn is_forbidden(&self) -> bool {
        matches!(self, VaultError::Api { code: 403, .. })
    }

    pub(super) fn from_client(operation: &'static str, e: vaultrs::error::ClientError) -> Self {
        use vaultrs::error::ClientError as C;
        match e {
            C::APIError { code, errors } => Self::Api {
                operation,
                code,
                message: first_message(&errors),
            },
            C::RestClientError { source } => Self::from_rest(operation, source),
            // Every other variant's text is a fixed phrase or a file path.
            other => Self::Malformed {
                operation,
                what: kind_of(&other),
            },
        }
    }

    pub(super) fn from_rest(operation: &'static str, e: rustify::errors::ClientError) -> Self {
        use rustify::errors::ClientError as R;
        match e {
            R::ServerResponseError { code, content } => {
                let errors = content
                    .and_then(|c| serde_json::from_str::<ApiErrors>(&c).ok())
                    .map(|e| e.errors)
                    .unwrap_or_default();
                Self::Api {
                    operation,
                    code,
                    message: first_message(&errors),
                }
            }
            R::RequestError { source, .. } => Self::Transport {
                operation,
                reason: format!("{source:#}"),
            },
            // Parse errors carry the response body (which may hold the
            // password): keep only the kind.
            _ => Self::Malformed {
                operation,
                what: "response could not be parsed",
            },
        }
    }
}

#[derive(Deserialize)]
struct ApiErrors {
    errors: Vec<String>,
}

fn first_message(errors: &[String]) -> String {
    let m = errors.first().map_or("(no message)", String::as_str);
    m.chars().take(200).collect()
}

fn kind_of(e: &vaultrs::error::ClientError) -> &'static str {
    use vaultrs::error::ClientError as C;
    match e {
        C::ResponseEmptyError => "empty response",
        C::ResponseDataEmptyError => "empty data",
        C::JsonParseError { .. } => "data is not the expected JSON",
        _ => "client error",
    }
}

impl From<VaultError> for SourceError {
    /// The one place a Vault failure is classified for the loop: a 4xx
    /// (denied, unknown role, lease not found) is permanent; unreachable,
    /// timeouts, 5xx, odd answers and unreadable files may pass.
    fn from(e: VaultError) -> Self {
        if e.is_permanent() {
            SourceError::Permanent(Box::new(e))
        } else {
            SourceError::Transient(Box::new(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_vaults_message_but_no_body() {
        let body = r#"{"errors":["permission denied"]}"#.to_string();
        let e = VaultError::from_rest(
            "fetch",
            rustify::errors::ClientError::ServerResponseError {
                code: 403,
                content: Some(body),
            },
        );
        assert_eq!(
            e.to_string(),
            "fetch: vault answered 403: permission denied"
        );
        assert!(e.is_permanent() && e.is_forbidden());
        let parse = rustify::errors::ClientError::ResponseParseError {
            source: anyhow::anyhow!("bad"),
            content: Some(r#"{"password":"hunter2"}"#.into()),
        };
        let e = VaultError::from_rest("fetch", parse);
        assert!(!format!("{e} {e:?}").contains("hunter2"));
        assert!(!e.is_permanent());
    }

    #[test]
    fn only_client_errors_are_permanent_for_the_loop() {
        let api = |code| VaultError::Api {
            operation: "renew",
            code,
            message: "m".into(),
        };
        for (e, permanent) in [
            (api(400), true),
            (api(403), true),
            (api(404), true),
            (api(500), false),
            (api(503), false),
            (
                VaultError::Transport {
                    operation: "renew",
                    reason: "refused".into(),
                },
                false,
            ),
        ] {
            let text = e.to_string();
            let mapped = SourceError::from(e);
            assert_eq!(mapped.is_permanent(), permanent, "{text}");
            assert_eq!(mapped.to_string(), text, "the loop logs Vault's text");
        }
    }
}
