//! Redis credentials: who the plugin is when it talks to Redis, and how a new
//! identity is handed to the connection pool without dropping a request.
//!
//! A [`CredentialsHandle`] is the pool's view: it reads the current
//! [`Credentials`] each time it opens a connection, reports which generation
//! it has switched to ([`CredentialsHandle::mark_applied`]), and asks for a
//! refresh when Redis rejects the current ones. The source side publishes
//! through a [`Publisher`]: static config ([`fixed()`]) once, or the loop in
//! [`rotation`] over a [`source::Source`] (Vault's database engine or KV v2,
//! see [`vault`]). This module does not talk to Redis.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{Notify, watch};

use crate::secret::Secret;

mod fixed;
pub mod lease;
pub mod rotation;
pub mod source;
pub mod vault;

pub use fixed::fixed;

/// One Redis identity. `generation` grows by one with every new identity, so
/// the pool can tell which connections were opened with stale credentials.
#[derive(Clone)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Secret,
    pub generation: u64,
    /// When the identity stops working (lease end); `None` = never.
    pub valid_until: Option<Instant>,
}

impl Credentials {
    /// Anonymous (no AUTH), for a Redis without ACLs.
    pub fn anonymous() -> Self {
        Self {
            username: None,
            password: Secret::default(),
            generation: 0,
            valid_until: None,
        }
    }

    /// True while the identity can still authenticate.
    pub fn is_valid(&self, now: Instant) -> bool {
        self.valid_until.is_none_or(|t| now < t)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .field("generation", &self.generation)
            .finish()
    }
}

/// Shared state between the source and the pool.
struct Shared {
    /// Set by the pool once every new request uses this generation.
    applied: watch::Sender<u64>,
    /// Woken when Redis rejects credentials; the source refreshes once.
    refresh: Notify,
    /// True when a source can produce new credentials (not static).
    refreshable: bool,
}

/// The pool's side: read the current identity, confirm switches, ask for a
/// refresh.
#[derive(Clone)]
pub struct CredentialsHandle {
    current: watch::Receiver<Arc<Credentials>>,
    shared: Arc<Shared>,
}

/// The source's side: publish a new identity and wait until the pool uses it.
pub struct Publisher {
    tx: watch::Sender<Arc<Credentials>>,
    shared: Arc<Shared>,
}

/// Creates a linked publisher and handle starting from `initial`.
pub fn channel(initial: Credentials, refreshable: bool) -> (Publisher, CredentialsHandle) {
    let (tx, rx) = watch::channel(Arc::new(initial));
    let (applied, _) = watch::channel(0);
    let shared = Arc::new(Shared {
        applied,
        refresh: Notify::new(),
        refreshable,
    });
    let publisher = Publisher {
        tx,
        shared: shared.clone(),
    };
    (
        publisher,
        CredentialsHandle {
            current: rx,
            shared,
        },
    )
}

/// An identity that is already expired: what a refreshable source starts
/// from until its first credentials arrive (health stays NOT_SERVING).
pub fn placeholder() -> Credentials {
    Credentials {
        valid_until: Some(Instant::now()),
        ..Credentials::anonymous()
    }
}

// === impl CredentialsHandle ===

impl CredentialsHandle {
    /// The identity to use for a new connection.
    pub fn current(&self) -> Arc<Credentials> {
        self.current.borrow().clone()
    }

    /// Waits until a new identity is published; `false` when the source has
    /// gone (shutdown).
    pub async fn changed(&mut self) -> bool {
        self.current.changed().await.is_ok()
    }

    /// Records that all new requests now use `generation`.
    pub fn mark_applied(&self, generation: u64) {
        self.shared.applied.send_replace(generation);
    }

    /// Asks the source for new credentials without waiting (a connect was
    /// refused). A no-op for fixed credentials.
    pub fn request_refresh(&self) {
        if self.shared.refreshable {
            self.shared.refresh.notify_one();
        }
    }

    /// After Redis rejected `rejected` (WRONGPASS/NOAUTH): asks the source for
    /// new credentials once and waits, up to `wait`, until the pool has
    /// switched to a newer generation. Returns whether it did. Many callers
    /// rejecting the same generation share one refresh.
    pub async fn refresh_after_rejection(&self, rejected: u64, wait: Duration) -> bool {
        if !self.shared.refreshable {
            return false;
        }
        let mut applied = self.shared.applied.subscribe();
        if *applied.borrow() > rejected {
            return true;
        }
        self.shared.refresh.notify_one();
        let newer = applied.wait_for(|g| *g > rejected);
        matches!(tokio::time::timeout(wait, newer).await, Ok(Ok(_)))
    }
}

// === impl Publisher ===

impl Publisher {
    /// The identity published last.
    pub fn current(&self) -> Arc<Credentials> {
        self.tx.borrow().clone()
    }

    /// Publishes a new identity as the next generation and returns it.
    pub fn publish(&self, mut creds: Credentials) -> u64 {
        let generation = self.tx.borrow().generation + 1;
        creds.generation = generation;
        self.tx.send_replace(Arc::new(creds));
        generation
    }

    /// Replaces the current identity's validity without a new generation
    /// (a renewed lease keeps the same Redis user).
    pub fn extend(&self, valid_until: Option<Instant>) {
        self.tx.send_modify(|c| {
            let mut next = (**c).clone();
            next.valid_until = valid_until;
            *c = Arc::new(next);
        });
    }

    /// Waits until the pool reports `generation` applied, up to `wait`.
    pub async fn wait_applied(&self, generation: u64, wait: Duration) -> bool {
        let mut applied = self.shared.applied.subscribe();
        let reached = applied.wait_for(|g| *g >= generation);
        matches!(tokio::time::timeout(wait, reached).await, Ok(Ok(_)))
    }

    /// Resolves when the pool asks for fresh credentials.
    pub async fn refresh_requested(&self) {
        self.shared.refresh.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: &str) -> Credentials {
        Credentials {
            username: Some(user.into()),
            password: Secret::new("pw-secret"),
            generation: 0,
            valid_until: None,
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let text = format!("{:?}", creds("u1"));
        assert!(!text.contains("pw-secret"), "{text}");
    }

    #[tokio::test]
    async fn publish_bumps_generation_and_wakes_the_pool() {
        let (publisher, mut handle) = channel(creds("u1"), true);
        let generation = publisher.publish(creds("u2"));
        assert_eq!(generation, 1);
        assert!(handle.changed().await);
        assert_eq!(handle.current().username.as_deref(), Some("u2"));
    }

    #[tokio::test(start_paused = true)]
    async fn rejection_waits_for_a_newer_applied_generation() {
        let (publisher, handle) = channel(creds("u1"), true);
        let waiter = tokio::spawn({
            let handle = handle.clone();
            async move {
                handle
                    .refresh_after_rejection(0, Duration::from_secs(5))
                    .await
            }
        });
        publisher.refresh_requested().await;
        let generation = publisher.publish(creds("u2"));
        handle.mark_applied(generation);
        assert!(waiter.await.expect("task"));
    }
}
