//! Static credentials from config (`backend.username`/`password`, or none):
//! a handle whose identity never changes and never refreshes.
//!
//! Not a [`super::source::Source`]: there is no lease to renew, nothing to
//! revoke and no session to keep, so a loop would only wait. The handle's
//! publisher is dropped at once, which tells the pool's watcher there will
//! be no change. It does not read the config file (config does).

use super::{Credentials, CredentialsHandle, channel};
use crate::secret::Secret;

/// Credentials that never change: from config, or none.
pub fn fixed(username: &str, password: &Secret) -> CredentialsHandle {
    let creds = Credentials {
        username: (!username.is_empty()).then(|| username.to_string()),
        password: password.clone(),
        generation: 0,
        valid_until: None,
    };
    // Dropping the publisher ends `changed()` at once: a fixed identity
    // never changes, so the pool's watcher simply stops.
    let (_publisher, handle) = channel(creds, false);
    handle
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fixed_credentials_never_refresh() {
        let handle = fixed("u", &Secret::new("p"));
        assert!(
            !handle
                .refresh_after_rejection(0, Duration::from_secs(1))
                .await
        );
    }
}
