//! The cluster as the router knows it: which primary's pool serves each
//! slot ([`Nodes`], swapped whole so the hot path reads it with one atomic
//! load), every pool by address, and the refresh that keeps both current —
//! from `CLUSTER SLOTS` asked of a known primary or a seed, on every
//! redirect and unowned slot (coalesced), and on a period as a safety net.
//!
//! It does not follow redirects or retry commands (`cluster`'s), nor open
//! connections itself except one short-lived connection to ask a seed that
//! has no pool.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::slots::{NO_OWNER, SLOTS, SlotMap};
use crate::backend::redis::router::start_pool;
use crate::{
    backend::redis::{
        pool::Pool,
        resp::{self, Reply},
        settings::RedisSettings,
    },
    config::address::parse_address,
    credentials::CredentialsHandle,
    error::{Error, Result},
    shutdown::{Phase, Watch},
};

/// How often the slot map is refreshed with no redirect asking for it: a
/// slot that moved is noticed on its first request anyway (MOVED); this
/// catches nodes that joined or left without a request to show it.
const REFRESH_PERIOD: Duration = Duration::from_secs(5);

/// At most one refresh per this interval: a reshard moving many slots
/// sends many MOVED replies, and one `CLUSTER SLOTS` answers them all.
const REFRESH_GAP: Duration = Duration::from_millis(100);

/// Which pool serves each slot.
pub(super) struct Nodes {
    owner: Box<[u16]>,
    pools: Vec<Arc<Pool>>,
}

impl Nodes {
    fn empty() -> Self {
        Self {
            owner: vec![NO_OWNER; SLOTS].into_boxed_slice(),
            pools: Vec::new(),
        }
    }

    /// The pool of the primary that serves `slot`, if one does.
    pub(super) fn owner(&self, slot: u16) -> Option<&Arc<Pool>> {
        match self.owner[usize::from(slot)] {
            NO_OWNER => None,
            i => self.pools.get(usize::from(i)),
        }
    }

    /// The primaries' pools, once each.
    pub(super) fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Slots no reachable primary serves, as far as the map knows.
    pub(super) fn unowned(&self) -> usize {
        self.owner.iter().filter(|&&o| o == NO_OWNER).count()
    }

    /// A copy with `slot` served by `pool` (a MOVED reply said so).
    fn with_owner(&self, slot: u16, pool: &Arc<Pool>) -> Option<Self> {
        let index = match self.pools.iter().position(|p| Arc::ptr_eq(p, pool)) {
            Some(i) => i,
            None => self.pools.len(),
        };
        let index = u16::try_from(index).ok().filter(|&i| i != NO_OWNER)?;
        let mut pools = self.pools.clone();
        if usize::from(index) == pools.len() {
            pools.push(pool.clone());
        }
        let mut owner = self.owner.clone();
        owner[usize::from(slot)] = index;
        Some(Self { owner, pools })
    }
}

/// True when a slot that had a primary in `old` has another one in `new`
/// (a slot that had none cannot have near-cache entries).
fn owners_moved(old: &Nodes, new: &Nodes) -> bool {
    (0..SLOTS).any(|slot| {
        let slot = u16::try_from(slot).unwrap_or(u16::MAX);
        match (old.owner(slot), new.owner(slot)) {
            (Some(a), Some(b)) => a.address() != b.address(),
            (Some(_), None) => true,
            _ => false,
        }
    })
}

/// Counters of what the router did, for metrics.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) moved: AtomicU64,
    pub(super) ask: AtomicU64,
    pub(super) refreshes: AtomicU64,
    /// Dead connections counted by pools retired since.
    pub(super) retired_dead: AtomicU64,
}

/// The cluster's nodes and how to reach new ones.
pub(super) struct Topology {
    settings: RedisSettings,
    creds: CredentialsHandle,
    shutdown: Watch,
    nodes: ArcSwap<Nodes>,
    /// Every pool by address: the map's primaries, and nodes a redirect
    /// named before a refresh confirmed them.
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    /// Asks the refresh task for a refresh soon.
    wanted: Notify,
    /// Counts finished refreshes, so a request can wait for the next one.
    refreshed: watch::Sender<u64>,
    pub(super) counters: Counters,
}

impl Topology {
    /// The topology with no map yet; [`run`] fills it.
    pub(super) fn new(settings: RedisSettings, creds: CredentialsHandle, shutdown: Watch) -> Self {
        Self {
            settings,
            creds,
            shutdown,
            nodes: ArcSwap::from_pointee(Nodes::empty()),
            pools: Mutex::new(HashMap::new()),
            wanted: Notify::new(),
            refreshed: watch::channel(0).0,
            counters: Counters::default(),
        }
    }

    /// The current map (one atomic load).
    pub(super) fn nodes(&self) -> arc_swap::Guard<Arc<Nodes>> {
        self.nodes.load()
    }

    pub(super) fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Asks for a refresh soon (coalesced with others).
    pub(super) fn want_refresh(&self) {
        self.wanted.notify_one();
    }

    /// Asks for a refresh and waits for it, up to `within`.
    pub(super) async fn refresh_within(&self, within: Duration) {
        let mut refreshed = self.refreshed.subscribe();
        refreshed.borrow_and_update();
        self.want_refresh();
        let _ = tokio::time::timeout(within, refreshed.changed()).await;
    }

    /// The pool for `address`, started if there is none (a redirect to a
    /// node the map does not know yet).
    pub(super) fn pool_for(&self, address: &str) -> Result<Arc<Pool>> {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = pools.get(address) {
            return Ok(pool.clone());
        }
        let pool = start_pool(
            &self.settings,
            address,
            self.creds.clone(),
            self.shutdown.clone(),
        )?;
        pools.insert(address.to_string(), pool.clone());
        Ok(pool)
    }

    /// Records that `slot` is served by `pool` (MOVED) without waiting for
    /// the refresh it also asks for.
    pub(super) fn moved(&self, slot: u16, pool: &Arc<Pool>) {
        self.nodes.rcu(|nodes| match nodes.with_owner(slot, pool) {
            Some(patched) => Arc::new(patched),
            None => nodes.clone(),
        });
        self.flush_near();
        self.want_refresh();
    }

    /// Near cache: a slot changed primary, and keys read from the old one
    /// are tracked there, not on the new one (whose writes would notify
    /// nobody): everything goes (README, "Near cache").
    fn flush_near(&self) {
        if let Some(near) = &self.settings.near_cache {
            near.0.flush();
        }
    }

    /// One refresh: the first node that answers `CLUSTER SLOTS` with every
    /// slot served wins; failing that, the answer with the most served
    /// slots. Known primaries are asked before the seeds.
    async fn refresh(&self) -> std::result::Result<(), String> {
        let mut best: Option<SlotMap> = None;
        let mut last_error = String::from("no node to ask");
        for address in self.candidates() {
            match self.ask_slots(&address).await {
                Ok(map) if map.unowned() == 0 => {
                    best = Some(map);
                    break;
                }
                Ok(map) if best.as_ref().is_none_or(|b| map.unowned() < b.unowned()) => {
                    best = Some(map);
                }
                Ok(_) => {}
                Err(e) => last_error = format!("{address}: {e}"),
            }
        }
        let map = best.ok_or(last_error)?;
        self.install(map)
    }

    /// The known primaries, then the seeds, each once.
    fn candidates(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .nodes
            .load()
            .pools
            .iter()
            .map(|p| p.address().to_string())
            .collect();
        for seed in &self.settings.addresses {
            if !out.contains(seed) {
                out.push(seed.clone());
            }
        }
        out
    }

    /// `CLUSTER SLOTS` from the node at `address`: on its pool when it has
    /// one (its connections are already open), else on a connection opened
    /// for the question.
    async fn ask_slots(&self, address: &str) -> Result<SlotMap> {
        let encode = |out: &mut BytesMut| resp::encode(out, &[b"CLUSTER", b"SLOTS"]);
        let existing = self
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(address)
            .cloned();
        let bound = self.settings.connect_timeout + self.settings.operation_timeout;
        let asked = async {
            match existing {
                Some(pool) => pool.query(&encode).await,
                None => {
                    let connector = self.settings.connector(address)?;
                    let conn = connector
                        .connect(&self.creds.current())
                        .await
                        .map_err(|e| Error::Unavailable(format!("redis: {e}")))?;
                    conn.call(encode)
                        .await
                        .map_err(|e| Error::Unavailable(format!("redis: {e}")))
                }
            }
        };
        let reply = tokio::time::timeout(bound, asked)
            .await
            .map_err(|_| Error::Unavailable("CLUSTER SLOTS timed out".into()))??;
        if let Reply::Error(msg) = &reply {
            return Err(Error::Unavailable(
                String::from_utf8_lossy(msg).into_owned(),
            ));
        }
        let (host, _, _) = parse_address(address).map_err(Error::Internal)?;
        SlotMap::parse(&reply, &host).map_err(Error::Internal)
    }

    /// Makes `map` the router's: pools for new primaries, retired pools
    /// for nodes that are no longer primaries.
    fn install(&self, map: SlotMap) -> std::result::Result<(), String> {
        let mut pools = Vec::with_capacity(map.primaries.len());
        for address in &map.primaries {
            pools.push(self.pool_for(address).map_err(|e| e.to_string())?);
        }
        let before = self.nodes.load().pools.len();
        let nodes = Nodes {
            owner: map.owner,
            pools,
        };
        let unowned = nodes.unowned();
        let moved = self.settings.near_cache.is_some() && owners_moved(&self.nodes.load(), &nodes);
        self.nodes.store(Arc::new(nodes));
        if moved {
            self.flush_near();
        }
        self.retire_others(&map.primaries);
        if before != map.primaries.len() || unowned > 0 {
            info!(
                primaries = map.primaries.len(),
                unowned_slots = unowned,
                "redis cluster map updated"
            );
        }
        self.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn retire_others(&self, primaries: &[String]) {
        let retired_dead = &self.counters.retired_dead;
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools.retain(|address, pool| {
            let keep = primaries.contains(address);
            if !keep {
                debug!(address = %address, "redis cluster node is no longer a primary; closing its pool");
                pool.retire();
                retired_dead.fetch_add(pool.stats().dead, Ordering::Relaxed);
            }
            keep
        });
    }
}

/// The refresh task: refreshes at once, then whenever asked (at most once
/// per [`REFRESH_GAP`]) and every [`REFRESH_PERIOD`]; ends at
/// [`Phase::Stopped`].
pub(super) async fn run(topology: Arc<Topology>, mut shutdown: Watch) {
    let mut failing = false;
    loop {
        let refreshed = tokio::select! {
            biased;
            () = shutdown.reached(Phase::Stopped) => return,
            r = topology.refresh() => r,
        };
        match refreshed {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, "cannot read the redis cluster's slot map; retrying");
            }
            Err(e) => debug!(error = %e, "redis cluster slot map still unreadable"),
        }
        // Tell waiting requests this round is over, map or not.
        topology.refreshed.send_modify(|n| *n += 1);
        tokio::select! {
            biased;
            () = shutdown.reached(Phase::Stopped) => return,
            () = tokio::time::sleep(REFRESH_GAP) => {}
        }
        tokio::select! {
            biased;
            () = shutdown.reached(Phase::Stopped) => return,
            () = topology.wanted.notified() => {}
            () = tokio::time::sleep(REFRESH_PERIOD) => {}
        }
    }
}
