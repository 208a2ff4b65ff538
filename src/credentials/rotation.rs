//! The credential loop: fetch, renew, rotate and finally revoke, for any
//! [`Source`] of leased credentials (Vault's database engine or KV v2).
//!
//! It owns the order of a rotation — fetch new → publish → wait until the
//! pool has switched → brief drain → revoke the old lease — and the retry
//! policy (backoff with jitter; old credentials are kept while they are
//! valid; a [`SourceError`] that is permanent ends renewal at once). When to
//! act comes from the pure functions in [`super::lease`]; when to stop, from
//! the one shutdown signal ([`Phase::Stopped`], after the server's drain).
//! It does not talk HTTP (the source does) nor Redis (the pool does).

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    Credentials, Publisher,
    lease::{self, Grant, Plan, Renewal, Step},
    source::{Issued, Lease, Source, SourceError},
};
use crate::{
    backoff::Backoff,
    metrics::{Metrics, Op, Outcome},
    shutdown::{Phase, Watch},
};

/// Timing knobs of the loop.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Renew at this fraction of a lease (`vault.renew_fraction`).
    pub fraction: f64,
    /// How long to wait for the pool to switch before revoking the old lease.
    pub switch_wait: Duration,
    /// Time for requests still running on old connections to finish.
    pub drain: Duration,
    /// Bound on a revocation (at rotation and at shutdown).
    pub revoke_wait: Duration,
}

/// Pause after publishing during which a rejection does not trigger another
/// fetch at once (the pool may still be opening connections).
const REFRESH_GUARD: Duration = Duration::from_millis(500);

/// What is held now and what comes next.
struct Held {
    lease: Option<Lease>,
    username: String,
    expires: Option<Instant>,
    plan: Plan,
    /// Past this, failed renewals give way to a rotation.
    deadline: Instant,
    /// No fetch before this (backoff after a failure, guard after a publish).
    not_before: Instant,
    /// Set once expiry was reported, so it is logged once.
    expired_logged: bool,
}

impl Held {
    /// Nothing yet: fetch at once.
    fn empty(now: Instant) -> Self {
        Self {
            lease: None,
            username: String::new(),
            expires: None,
            plan: Plan {
                step: Step::Rotate,
                at: now,
            },
            deadline: now,
            not_before: now,
            expired_logged: false,
        }
    }
}

/// Runs until shutdown reaches [`Phase::Stopped`] (after the server's
/// drain), then revokes the current lease (bounded).
pub async fn run<S: Source>(
    source: S,
    publisher: Publisher,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: Watch,
) {
    let mut l = Loop {
        source,
        publisher,
        settings,
        metrics,
        held: Held::empty(Instant::now()),
        backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
        shutdown,
        lingering: Vec::new(),
    };
    let mut gauge = tokio::time::interval(Duration::from_secs(1));
    loop {
        let wake = l.next_wake();
        // Biased: once shutdown is asked for, nothing new starts.
        tokio::select! {
            biased;
            () = l.shutdown.reached(Phase::Stopped) => break,
            () = l.publisher.refresh_requested() => {
                l.on_refresh();
                l.act().await;
            }
            () = tokio::time::sleep_until(wake) => l.act().await,
            _ = gauge.tick() => l.watch_expiry(),
        }
    }
    l.release().await;
}

struct Loop<S> {
    source: S,
    publisher: Publisher,
    settings: Settings,
    metrics: Arc<Metrics>,
    held: Held,
    backoff: Backoff,
    /// Shutdown: at Stopped, cuts waits short so the current lease is
    /// revoked promptly.
    shutdown: Watch,
    /// Old leases left to expire because the pool did not switch in time;
    /// revoked at shutdown if still alive.
    lingering: Vec<(Lease, Instant)>,
}

// === impl Loop ===

impl<S: Source> Loop<S> {
    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let lease = match self.held.plan.step {
            Step::Hold => far,
            _ => self.held.plan.at,
        };
        lease.min(self.source.session_due().unwrap_or(far))
    }

    /// Redis rejected the credentials: fetch new ones as soon as allowed.
    fn on_refresh(&mut self) {
        let now = Instant::now();
        if now < self.held.not_before {
            // Just published (the pool may still hold rejections of the old
            // user), or backing off after a failed fetch: the pool asks
            // again if it still needs to.
            debug!("credential refresh request ignored: too soon");
            return;
        }
        debug!("credential refresh requested by the pool");
        self.held.plan = Plan {
            step: Step::Rotate,
            at: now,
        };
    }

    /// Does whatever is due: session upkeep first, then the lease.
    async fn act(&mut self) {
        if self.shutdown.is_reached(Phase::Stopped) {
            return;
        }
        let now = Instant::now();
        if self.source.session_due().is_some_and(|t| t <= now) {
            self.upkeep(now).await;
        }
        if self.held.plan.at <= Instant::now() {
            match self.held.plan.step {
                Step::Renew => self.renew().await,
                Step::Rotate => self.rotate().await,
                Step::Hold => {}
            }
        }
        self.watch_expiry();
    }

    async fn upkeep(&mut self, now: Instant) {
        match self.source.upkeep().await {
            Ok(true) => {
                let source = self.source.name();
                info!("{source} session replaced; fetching credentials under the new token");
                self.held.plan = Plan {
                    step: Step::Rotate,
                    at: now,
                };
            }
            Ok(false) => {}
            Err(e) => {
                self.source_error("token", &e);
            }
        }
    }

    async fn renew(&mut self) {
        let Some(lease) = self.held.lease.clone() else {
            self.held.plan.step = Step::Rotate;
            return;
        };
        let asked = lease.grant.ttl;
        let now = Instant::now();
        match self.source.renew(&lease.id, asked).await {
            Ok(grant) => self.renewed(&lease, &grant),
            Err(e) => {
                self.count_renewal("error");
                self.source_error("renew", &e);
                // A permanent failure (lease gone, denied) cannot heal by
                // asking again; a transient one may, until the deadline.
                self.held.plan = if e.is_permanent() || now >= self.held.deadline {
                    Plan {
                        step: Step::Rotate,
                        at: now,
                    }
                } else {
                    let retry = (now + self.backoff.next_delay()).min(self.held.deadline);
                    Plan {
                        step: Step::Renew,
                        at: retry,
                    }
                };
            }
        }
    }

    fn renewed(&mut self, lease: &Lease, grant: &Grant) {
        let now = Instant::now();
        let expires = lease::expiry(now, grant.ttl);
        self.held.expires = Some(expires);
        self.publisher.extend(Some(expires.into_std()));
        self.backoff.reset();
        match lease::renewal(lease.grant.ttl, grant) {
            Renewal::Extended => {
                self.count_renewal("ok");
                let f = self.settings.fraction;
                // Time the next renewal by what was granted (it may be a
                // little less than asked); keep asking for the full TTL.
                let granted = Grant {
                    ttl: grant.ttl.min(lease.grant.ttl),
                    renewable: true,
                };
                self.held.plan = lease::plan(now, Some(&granted), f);
                self.held.deadline = lease::renew_deadline(expires, granted.ttl, f);
                debug!(user = %self.held.username, ttl = ?grant.ttl, "lease renewed");
            }
            Renewal::Exhausted => {
                self.count_renewal("exhausted");
                info!(user = %self.held.username, left = ?grant.ttl, "lease cannot be extended further; rotating");
                self.held.plan = Plan {
                    step: Step::Rotate,
                    at: now,
                };
            }
        }
    }

    /// Fetches new credentials, switches the pool to them and retires the
    /// old lease. On failure keeps the old credentials and retries later.
    async fn rotate(&mut self) {
        let issued = match self.source.fetch().await {
            Ok(i) => i,
            Err(e) => {
                self.source_error("fetch", &e);
                let at = Instant::now() + self.backoff.next_delay();
                self.held.not_before = at;
                self.held.plan = Plan {
                    step: Step::Rotate,
                    at,
                };
                return;
            }
        };
        self.backoff.reset();
        let old = self.held.lease.take();
        let old_expiry = self.held.expires;
        let first = self.held.username.is_empty();
        let generation = self.publish(issued);
        if !first {
            self.metrics.rotations.inc();
        }
        if let (Some(old), Some(expires)) = (old, old_expiry) {
            self.retire(old, expires, generation).await;
        }
    }

    /// Publishes `issued` as the next generation and plans its renewal.
    fn publish(&mut self, issued: Issued) -> u64 {
        let now = Instant::now();
        let f = self.settings.fraction;
        let grant = issued.lease.as_ref().map(|l| l.grant.clone());
        let expires = grant.as_ref().map(|g| lease::expiry(now, g.ttl));
        let generation = self.publisher.publish(Credentials {
            username: Some(issued.username.clone()),
            password: issued.password,
            generation: 0,
            valid_until: expires.map(Instant::into_std),
        });
        info!(
            user = %issued.username,
            lease = issued.lease.as_ref().map(|l| short_lease(&l.id)),
            ttl = ?grant.as_ref().map(|g| g.ttl),
            generation,
            "new redis credentials published"
        );
        self.held = Held {
            plan: lease::plan(now, grant.as_ref(), f),
            deadline: match (expires, &grant) {
                (Some(e), Some(g)) => lease::renew_deadline(e, g.ttl, f),
                _ => now,
            },
            lease: issued.lease,
            username: issued.username,
            expires,
            not_before: now + REFRESH_GUARD,
            expired_logged: false,
        };
        generation
    }

    /// Waits for the pool to use `generation`, lets old requests finish,
    /// then revokes `old`. If the pool does not switch in time, the old
    /// lease is left to expire rather than cutting connections in use.
    async fn retire(&mut self, old: Lease, expires: Instant, generation: u64) {
        let s = &self.settings;
        // Never wait past the new lease's own renewal.
        let until_renewal = self.held.plan.at.saturating_duration_since(Instant::now());
        let wait = s.switch_wait.min(until_renewal);
        // At shutdown the server has drained already: revoke at once.
        tokio::select! {
            applied = self.publisher.wait_applied(generation, wait) => {
                if !applied {
                    warn!(
                        lease = short_lease(&old.id),
                        "pool has not switched to new credentials; old lease left to expire"
                    );
                    let now = Instant::now();
                    self.lingering.retain(|(_, e)| *e > now);
                    self.lingering.push((old, expires));
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(s.drain) => {}
                    () = self.shutdown.reached(Phase::Stopped) => {}
                }
            }
            () = self.shutdown.reached(Phase::Stopped) => {}
        }
        self.revoke(&old.id).await;
    }

    async fn revoke(&mut self, lease_id: &str) {
        let wait = self.settings.revoke_wait;
        match tokio::time::timeout(wait, self.source.revoke(lease_id)).await {
            Ok(Ok(())) => debug!(lease = short_lease(lease_id), "old lease revoked"),
            Ok(Err(e)) => self.source_error("revoke", &e),
            Err(_) => {
                let e = SourceError::TimedOut {
                    operation: "revoke",
                };
                self.source_error("revoke", &e);
            }
        }
    }

    /// Updates the expiry gauge; logs once when credentials have expired
    /// without a replacement (health is NOT_SERVING from then on).
    fn watch_expiry(&mut self) {
        let now = Instant::now();
        let left = lease::seconds_left(now, self.held.expires);
        self.metrics.lease_expiry_seconds.set(left);
        let expired = self.held.expires.is_some_and(|e| e <= now);
        if expired && !self.held.expired_logged {
            self.held.expired_logged = true;
            let source = self.source.name();
            warn!(
                user = %self.held.username,
                "redis credentials expired and could not be replaced; not serving until {source} answers"
            );
        }
    }

    /// At shutdown: revokes the current lease so no Redis user outlives us,
    /// then the source's own login token.
    async fn release(&mut self) {
        let now = Instant::now();
        for (lease, _) in std::mem::take(&mut self.lingering)
            .into_iter()
            .filter(|(_, e)| *e > now)
        {
            self.revoke(&lease.id).await;
        }
        if let Some(lease) = self.held.lease.take() {
            self.revoke(&lease.id).await;
            info!(user = %self.held.username, "credential lease revoked at shutdown");
        }
        let wait = self.settings.revoke_wait;
        match tokio::time::timeout(wait, self.source.end_session()).await {
            Ok(Ok(true)) => info!("{} login token revoked at shutdown", self.source.name()),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => self.source_error("token", &e),
            Err(_) => self.source_error(
                "token",
                &SourceError::TimedOut {
                    operation: "token revoke",
                },
            ),
        }
    }

    fn count_renewal(&self, result: &'static str) {
        self.metrics
            .renewals
            .get_or_create(&Outcome { result })
            .inc();
    }

    /// Counts and logs a failed source call. The metric keeps its contract
    /// name (`redis_plugin_vault_errors_total{operation}`).
    fn source_error(&self, operation: &'static str, e: &SourceError) {
        self.metrics
            .vault_errors
            .get_or_create(&Op { operation })
            .inc();
        let source = self.source.name();
        warn!(error = %e, permanent = e.is_permanent(), "{source} {operation} failed");
    }
}

/// The non-secret tail of a lease id (`<path>/<id>`): enough to find it in
/// Vault's audit log, short enough for a log line.
pub fn short_lease(id: &str) -> &str {
    let tail = id.rsplit('/').next().unwrap_or(id);
    tail.get(..8).unwrap_or(tail)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{credentials::channel, secret::Secret, shutdown::Shutdown};

    /// A scripted source: leases of `ttl`, renewals granted up to `max`.
    struct Fake {
        log: Arc<Mutex<Vec<String>>>,
        ttl: Duration,
        renewable: bool,
        fail_fetch: Arc<Mutex<bool>>,
        /// `Some(permanent)`: renewals fail, permanently or not.
        fail_renew: Arc<Mutex<Option<bool>>>,
        issued: u32,
    }

    impl Source for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }

        async fn fetch(&mut self) -> Result<Issued, SourceError> {
            if *self.fail_fetch.lock().expect("lock") {
                self.log.lock().expect("lock").push("fetch-failed".into());
                return Err(SourceError::Transient("fake: unreachable".into()));
            }
            self.issued += 1;
            let id = format!("redis/creds/r/{}", self.issued);
            self.log.lock().expect("lock").push(format!("fetch {id}"));
            Ok(Issued {
                username: format!("u{}", self.issued),
                password: Secret::new("pw"),
                lease: Some(Lease {
                    id,
                    grant: Grant {
                        ttl: self.ttl,
                        renewable: self.renewable,
                    },
                }),
            })
        }

        async fn renew(&mut self, id: &str, increment: Duration) -> Result<Grant, SourceError> {
            if let Some(permanent) = *self.fail_renew.lock().expect("lock") {
                self.log
                    .lock()
                    .expect("lock")
                    .push(format!("renew-failed {id}"));
                return Err(if permanent {
                    SourceError::Permanent("fake: lease not found".into())
                } else {
                    SourceError::Transient("fake: unreachable".into())
                });
            }
            self.log.lock().expect("lock").push(format!("renew {id}"));
            Ok(Grant {
                ttl: increment,
                renewable: true,
            })
        }

        async fn revoke(&mut self, id: &str) -> Result<(), SourceError> {
            self.log.lock().expect("lock").push(format!("revoke {id}"));
            Ok(())
        }

        fn session_due(&self) -> Option<Instant> {
            None
        }

        async fn upkeep(&mut self) -> Result<bool, SourceError> {
            Ok(false)
        }

        async fn end_session(&mut self) -> Result<bool, SourceError> {
            self.log.lock().expect("lock").push("end-session".into());
            Ok(true)
        }
    }

    fn settings() -> Settings {
        Settings {
            fraction: 0.5,
            switch_wait: Duration::from_secs(1),
            drain: Duration::from_millis(100),
            revoke_wait: Duration::from_secs(1),
        }
    }

    struct Harness {
        log: Arc<Mutex<Vec<String>>>,
        fail_fetch: Arc<Mutex<bool>>,
        fail_renew: Arc<Mutex<Option<bool>>>,
        shutdown: Shutdown,
        task: tokio::task::JoinHandle<()>,
        handle: crate::credentials::CredentialsHandle,
        metrics: Arc<Metrics>,
    }

    /// Starts the loop over a fake source, with a pool stand-in that
    /// applies every generation at once.
    fn start(ttl: Duration, renewable: bool) -> Harness {
        start_with(ttl, renewable, true)
    }

    fn start_with(ttl: Duration, renewable: bool, pool_applies: bool) -> Harness {
        let log = Arc::new(Mutex::new(Vec::new()));
        let fail_fetch = Arc::new(Mutex::new(false));
        let fail_renew = Arc::new(Mutex::new(None));
        let fake = Fake {
            log: log.clone(),
            ttl,
            renewable,
            fail_fetch: fail_fetch.clone(),
            fail_renew: fail_renew.clone(),
            issued: 0,
        };
        let (publisher, handle) = channel(super::super::placeholder(), true);
        let mut pool = handle.clone();
        tokio::spawn(async move {
            while pool.changed().await {
                let generation = pool.current().generation;
                // A stuck pool switches to the first identity only.
                if pool_applies || generation == 1 {
                    pool.mark_applied(generation);
                }
            }
        });
        let metrics = Metrics::new();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(run(
            fake,
            publisher,
            settings(),
            metrics.clone(),
            shutdown.watch(),
        ));
        Harness {
            log,
            fail_fetch,
            fail_renew,
            shutdown,
            task,
            handle,
            metrics,
        }
    }

    fn entries(log: &Mutex<Vec<String>>) -> Vec<String> {
        log.lock().expect("lock").clone()
    }

    impl Harness {
        /// Makes the fake's fetches fail (transiently) or work again.
        fn fetches_fail(&self, on: bool) {
            *self.fail_fetch.lock().expect("lock") = on;
        }

        /// `Some(permanent)`: renewals fail that way; `None`: they work.
        fn renewals_fail(&self, how: Option<bool>) {
            *self.fail_renew.lock().expect("lock") = how;
        }

        /// Advances shutdown to Stopped, waits for the loop to end and
        /// returns every call it made.
        async fn stop(&mut self) -> Vec<String> {
            self.shutdown.advance(Phase::Stopped);
            (&mut self.task).await.expect("loop");
            entries(&self.log)
        }

        /// How many calls the fake logged starting with `prefix`.
        fn count(&self, prefix: &str) -> usize {
            entries(&self.log)
                .iter()
                .filter(|e| e.starts_with(prefix))
                .count()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_the_fraction_and_revokes_at_shutdown() {
        let mut h = start(Duration::from_secs(10), true);
        tokio::time::sleep(Duration::from_secs(12)).await;
        let log = h.stop().await;
        assert_eq!(
            log,
            [
                "fetch redis/creds/r/1",
                "renew redis/creds/r/1",
                "renew redis/creds/r/1",
                "revoke redis/creds/r/1",
                "end-session"
            ]
        );
        assert_eq!(h.metrics.rotations.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn non_renewable_leases_rotate_then_revoke_the_old_one() {
        let h = start(Duration::from_secs(4), false);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let log = entries(&h.log);
        assert_eq!(
            log,
            [
                "fetch redis/creds/r/1",
                "fetch redis/creds/r/2",
                "revoke redis/creds/r/1"
            ]
        );
        assert_eq!(h.handle.current().username.as_deref(), Some("u2"));
        assert_eq!(h.metrics.rotations.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn vault_down_keeps_old_credentials_until_they_expire() {
        let h = start(Duration::from_secs(4), false);
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.fetches_fail(true);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let creds = h.handle.current();
        assert_eq!(creds.username.as_deref(), Some("u1"));
        assert!(creds.is_valid(Instant::now().into_std()));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!h.handle.current().is_valid(Instant::now().into_std()));
        h.fetches_fail(false);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let creds = h.handle.current();
        assert_ne!(
            creds.username.as_deref(),
            Some("u1"),
            "{:?}",
            entries(&h.log)
        );
        assert!(creds.is_valid(Instant::now().into_std()));
        let failed = h.count("fetch-failed");
        assert!(failed >= 3, "{failed} failed fetches");
    }

    #[tokio::test(start_paused = true)]
    async fn rejection_triggers_one_fetch() {
        let h = start(Duration::from_secs(60), true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let generation = h.handle.current().generation;
        let wait = Duration::from_secs(2);
        let (a, b) = tokio::join!(
            h.handle.refresh_after_rejection(generation, wait),
            h.handle.refresh_after_rejection(generation, wait)
        );
        assert!(a && b);
        assert_eq!(h.count("fetch "), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cuts_a_rotation_short_and_revokes_both_leases() {
        let mut h = start_with(Duration::from_secs(60), false, false);
        // Rotation at 30 s; the pool never switches, so it waits (1 s).
        tokio::time::sleep(Duration::from_millis(30_500)).await;
        let asked = Instant::now();
        let log = h.stop().await;
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(
            log,
            [
                "fetch redis/creds/r/1",
                "fetch redis/creds/r/2",
                "revoke redis/creds/r/1",
                "revoke redis/creds/r/2",
                "end-session"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn leases_left_to_expire_are_revoked_at_shutdown() {
        let mut h = start_with(Duration::from_secs(60), false, false);
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert_eq!(entries(&h.log).len(), 2, "old lease not revoked yet");
        let log = h.stop().await;
        assert_eq!(
            &log[2..],
            [
                "revoke redis/creds/r/1",
                "revoke redis/creds/r/2",
                "end-session"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_lease_ttl_is_clamped_and_the_loop_lives_on() {
        let mut h = start(Duration::from_secs(u64::MAX), true);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!h.task.is_finished(), "the credential loop died");
        let creds = h.handle.current();
        assert_eq!(creds.username.as_deref(), Some("u1"));
        let left = creds.valid_until.expect("a lease") - Instant::now().into_std();
        assert!(left <= lease::MAX_TTL, "{left:?}");
        assert_eq!(
            h.stop().await,
            [
                "fetch redis/creds/r/1",
                "revoke redis/creds/r/1",
                "end-session"
            ]
        );
    }

    fn renew_errors(metrics: &Metrics) -> u64 {
        let op = Op { operation: "renew" };
        metrics.vault_errors.get_or_create(&op).get()
    }

    /// A 10 s renewable lease whose renewals fail from 1 s on: the first
    /// renewal is due at 5 s (half of 10 s), its deadline is 7.5 s.
    async fn failing_renewals(permanent: bool) -> Harness {
        let h = start(Duration::from_secs(10), true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.renewals_fail(Some(permanent));
        h
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_renewal_failure_rotates_at_once() {
        let h = failing_renewals(true).await;
        tokio::time::sleep(Duration::from_millis(4500)).await;
        assert_eq!(h.count("renew-failed "), 1, "{:?}", entries(&h.log));
        assert_eq!(renew_errors(&h.metrics), 1);
        // Lost lease: new credentials at once, well before the deadline.
        assert_eq!(h.count("fetch "), 2, "{:?}", entries(&h.log));
        assert_eq!(h.handle.current().username.as_deref(), Some("u2"));
        assert_eq!(h.metrics.rotations.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_renewal_failure_retries_until_the_deadline() {
        let h = failing_renewals(false).await;
        tokio::time::sleep(Duration::from_millis(5500)).await;
        // At 6.5 s: failed, retried, and still on the first lease.
        assert!(h.count("renew-failed ") >= 2, "{:?}", entries(&h.log));
        assert!(renew_errors(&h.metrics) >= 2);
        assert_eq!(h.count("fetch "), 1, "{:?}", entries(&h.log));
        assert_eq!(h.handle.current().username.as_deref(), Some("u1"));
        // Past the deadline (7.5 s) the loop gives up on the lease.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(h.count("fetch "), 2, "{:?}", entries(&h.log));
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_is_revoked_at_stopped_not_while_draining() {
        let mut h = start(Duration::from_secs(60), true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.shutdown.advance(Phase::Closing);
        h.shutdown.advance(Phase::Draining);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!h.task.is_finished(), "the loop ended before Stopped");
        assert_eq!(h.count("revoke "), 0, "{:?}", entries(&h.log));
        assert_eq!(
            h.stop().await,
            [
                "fetch redis/creds/r/1",
                "revoke redis/creds/r/1",
                "end-session"
            ]
        );
    }

    #[test]
    fn lease_ids_are_shortened() {
        assert_eq!(short_lease("redis/creds/cache-rw/AbCdEfGhIjKl"), "AbCdEfGh");
        assert_eq!(short_lease("abc"), "abc");
    }
}
