//! What the credential loop asks of a source of Redis identities: the
//! [`Source`] trait, what a source hands out ([`Issued`], [`Lease`]) and how
//! a call can fail ([`SourceError`]).
//!
//! The loop in [`super::rotation`] is generic over this seam; Vault (its
//! database engine or KV v2, see [`super::vault`]) is one implementation.
//! This module owns the contract only: it performs no I/O and knows no
//! source's wire errors (each source maps its own to [`SourceError`]).

use std::{error::Error, future::Future, time::Duration};

use tokio::time::Instant;

use super::lease::Grant;
use crate::secret::Secret;

/// A Redis identity as a source hands it out.
pub struct Issued {
    pub username: String,
    pub password: Secret,
    /// `None` for credentials without a lease (KV v2).
    pub lease: Option<Lease>,
}

/// A lease on issued credentials.
#[derive(Clone, Debug)]
pub struct Lease {
    pub id: String,
    pub grant: Grant,
}

/// The cause a source reports; its text must never hold a secret.
pub type Cause = Box<dyn Error + Send + Sync>;

/// A failed source call, classified by whether trying again can help: the
/// loop renews again after a transient failure but rotates at once after a
/// permanent one (the lease is lost).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Retrying the same call cannot help: permission denied, unknown role,
    /// lease not found.
    #[error("{0}")]
    Permanent(Cause),
    /// It may work later: unreachable, timed out, a server error.
    #[error("{0}")]
    Transient(Cause),
    /// The loop's own bound on a call ran out (transient).
    #[error("{operation}: timed out")]
    TimedOut { operation: &'static str },
}

impl SourceError {
    /// True when retrying the same call cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SourceError::Permanent(_))
    }
}

/// Where credentials come from. One owner (the loop) calls it, one call at a
/// time.
pub trait Source: Send + 'static {
    /// What logs call the source (`vault`).
    fn name(&self) -> &'static str;
    /// Reads new credentials.
    fn fetch(&mut self) -> impl Future<Output = Result<Issued, SourceError>> + Send;
    /// Extends `lease_id` by `increment`.
    fn renew(
        &mut self,
        lease_id: &str,
        increment: Duration,
    ) -> impl Future<Output = Result<Grant, SourceError>> + Send;
    /// Ends `lease_id` now.
    fn revoke(&mut self, lease_id: &str) -> impl Future<Output = Result<(), SourceError>> + Send;
    /// When the source's own session (its Vault token) next needs upkeep.
    fn session_due(&self) -> Option<Instant>;
    /// Renews or replaces the session. `Ok(true)` when it logged in anew:
    /// credentials read with the old session die with it, so fetch new ones.
    fn upkeep(&mut self) -> impl Future<Output = Result<bool, SourceError>> + Send;
    /// At shutdown, after the leases: ends the session the source opened
    /// itself (its own login token). `Ok(false)` when there is nothing of
    /// its own to end (an operator's token is left alone).
    fn end_session(&mut self) -> impl Future<Output = Result<bool, SourceError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_permanent_errors_say_so_and_the_text_is_the_causes() {
        let e = SourceError::Permanent("fetch: vault answered 403: permission denied".into());
        assert!(e.is_permanent());
        assert_eq!(
            e.to_string(),
            "fetch: vault answered 403: permission denied"
        );
        assert!(!SourceError::Transient("unreachable".into()).is_permanent());
        let timed_out = SourceError::TimedOut {
            operation: "revoke",
        };
        assert!(!timed_out.is_permanent());
        assert_eq!(timed_out.to_string(), "revoke: timed out");
    }
}
