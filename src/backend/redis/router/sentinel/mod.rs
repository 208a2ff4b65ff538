//! Sentinel: every command goes to the master the sentinels name, and the
//! router moves to the next one when they name another.
//!
//! The master's pool sits in an `ArcSwapOption`: a call is one atomic load
//! plus the pool's query, no lock and no extra round trip. Two kinds of
//! task keep it pointing at the master:
//! - `subscribe`, one per sentinel: follows `+switch-master` and switches
//!   at once (the fast path after a failover);
//! - `follow`, one: asks the sentinels (`ask`) at start, whenever the pool
//!   lost every connection or a call failed (a missed or lost
//!   subscription, a demoted master refusing a write), and every
//!   [`follow::SAFETY_NET`] anyway.
//!
//! A switch starts a pool for the new master, swaps it in and retires the
//! old one (calls in flight finish there). Every new connection asks `ROLE`
//! first (`connection`), so a node that is not the master is never written
//! to, even when a sentinel's answer was stale.
//!
//! Not owned here: the connections and their retries (`pool`), what a
//! command means (`commands`), the config rules (`config::topology`).

mod ask;
mod follow;
mod subscribe;

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;
use tracing::{info, warn};

use self::ask::Sentinels;
use super::{send_to, start_pool};
use crate::{
    backend::redis::{commands::Command, pool::Pool, settings::RedisSettings},
    backend::{PoolStats, TopologyStats},
    credentials::CredentialsHandle,
    error::{Error, Result},
    shutdown::Watch,
};

/// The router of a Sentinel-managed master; cloning shares it.
#[derive(Clone)]
pub(in crate::backend::redis) struct Sentinel {
    inner: Arc<Inner>,
}

/// What the router and its tasks share.
struct Inner {
    /// The current master's pool; `None` until a sentinel names one.
    master: ArcSwapOption<Pool>,
    /// Serialises switches (the subscribers and `follow` may race); never
    /// held across an await, never on the call path.
    switching: Mutex<()>,
    sentinels: Sentinels,
    /// For the pools of the masters to come.
    settings: RedisSettings,
    creds: CredentialsHandle,
    shutdown: Watch,
    /// Master address changes followed (not the first one named).
    failovers: AtomicU64,
    /// Dead connections counted by pools retired since (the metric is a
    /// counter).
    retired_dead: AtomicU64,
    /// Wakes `follow` to ask the sentinels now.
    ask_now: Notify,
    /// A call failed on the master in use: prefer another sentinel's answer.
    suspect: AtomicBool,
    /// "No master known" was logged at warn; quieter until one is named.
    unnamed_logged: AtomicBool,
}

impl Sentinel {
    /// The router and its tasks (they end at `Stopped`). Does not wait for
    /// the sentinels: until one names the master, calls fail UNAVAILABLE.
    pub(in crate::backend::redis) fn start(
        settings: &RedisSettings,
        creds: CredentialsHandle,
        shutdown: Watch,
    ) -> Result<Self> {
        let inner = Arc::new(Inner {
            master: ArcSwapOption::empty(),
            switching: Mutex::new(()),
            sentinels: Sentinels::new(settings)?,
            settings: settings.clone(),
            creds,
            shutdown: shutdown.clone(),
            failovers: AtomicU64::new(0),
            retired_dead: AtomicU64::new(0),
            ask_now: Notify::new(),
            suspect: AtomicBool::new(false),
            unnamed_logged: AtomicBool::new(false),
        });
        tokio::spawn(follow::follow(inner.clone(), shutdown.clone()));
        for index in 0..inner.sentinels.nodes.len() {
            tokio::spawn(subscribe::subscribe(inner.clone(), index, shutdown.clone()));
        }
        Ok(Self { inner })
    }

    /// Sends `command` to the master; a failure that may mean the master
    /// moved has the sentinels asked again.
    pub(in crate::backend::redis) async fn send<C: Command>(
        &self,
        command: &C,
    ) -> Result<C::Output> {
        let Some(pool) = self.inner.master.load_full() else {
            self.inner.ask_now.notify_one();
            return Err(Error::Unavailable(format!(
                "no master known yet: no sentinel has named {:?}",
                self.inner.sentinels.master_name
            )));
        };
        let result = send_to(&pool, command).await;
        if let Err(Error::Unavailable(_)) = &result {
            self.inner.suspect.store(true, Ordering::Release);
            self.inner.ask_now.notify_one();
        }
        result
    }

    /// The master's pool now, if one is known.
    pub(in crate::backend::redis) fn master(&self) -> Option<Arc<Pool>> {
        self.inner.master.load_full()
    }

    /// Fails when TLS to a sentinel or to the master is refused either way
    /// (a sentinel that does not answer is not an error here).
    pub(in crate::backend::redis) async fn check_tls(&self) -> Result<()> {
        if self.inner.settings.tls.is_none() {
            return Ok(());
        }
        let sentinels = &self.inner.sentinels;
        for (address, connector) in &sentinels.nodes {
            if let Err(e) = connector.connect(&sentinels.creds).await
                && e.is_tls()
            {
                return Err(Error::Unavailable(format!(
                    "TLS to the sentinel at {address} failed: {e}"
                )));
            }
        }
        match self.inner.master.load_full() {
            Some(pool) => pool.check_tls().await,
            None => Ok(()),
        }
    }

    /// The master's pool, or nothing while none is known; dead connections
    /// of retired masters' pools too.
    pub(in crate::backend::redis) fn stats(&self) -> PoolStats {
        let retired = PoolStats {
            dead: self.inner.retired_dead.load(Ordering::Relaxed),
            ..PoolStats::default()
        };
        match self.inner.master.load().as_ref() {
            Some(pool) => retired + pool.stats(),
            None => retired,
        }
    }

    /// Failovers followed and the master's connections.
    pub(in crate::backend::redis) fn topology_stats(&self) -> TopologyStats {
        let nodes = self
            .inner
            .master
            .load()
            .as_ref()
            .map(|p| (p.address().to_string(), p.stats()));
        TopologyStats {
            failovers: self.failovers(),
            nodes: nodes.into_iter().collect(),
            ..TopologyStats::default()
        }
    }

    /// How many times the master moved and the router followed it.
    pub(in crate::backend::redis) fn failovers(&self) -> u64 {
        self.inner.failovers.load(Ordering::Relaxed)
    }
}

// === impl Inner ===

impl Inner {
    /// Sends calls to the master at `address` from now on: a new pool
    /// swapped in, the old one retired. Nothing to do when it already does,
    /// or when `still` says the master in use is no longer the one the
    /// caller chose against (another task switched meanwhile).
    fn switch_to(&self, address: &str, why: &str, still: impl Fn(Option<&Pool>) -> bool) {
        let _one_at_a_time = self
            .switching
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.master.load_full();
        if current.as_ref().is_some_and(|p| p.address() == address) || !still(current.as_deref()) {
            return;
        }
        let pool = match start_pool(
            &self.settings,
            address,
            self.creds.clone(),
            self.shutdown.clone(),
        ) {
            Ok(pool) => pool,
            Err(e) => {
                warn!(master = %address, error = %e, "sentinel named a master that cannot be reached as given");
                return;
            }
        };
        self.master.store(Some(pool));
        self.unnamed_logged.store(false, Ordering::Relaxed);
        let name = &self.sentinels.master_name;
        match current {
            Some(old) => {
                old.retire();
                self.retired_dead
                    .fetch_add(old.stats().dead, Ordering::Relaxed);
                self.failovers.fetch_add(1, Ordering::Relaxed);
                info!(master = %name, from = %old.address(), to = %address, via = why, "sentinel: master moved; following it");
            }
            None => info!(master = %name, address = %address, via = why, "sentinel: master found"),
        }
    }

    /// True when the master in use cannot serve: none known, or its pool
    /// has no connection.
    fn master_down(&self) -> bool {
        self.master.load().as_ref().is_none_or(|p| {
            let s = p.stats();
            s.disconnected == s.size
        })
    }
}
