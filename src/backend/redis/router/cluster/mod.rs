//! Redis Cluster: each key goes to the primary that serves its slot, one
//! pipelined pool per primary, so a Get on a stable cluster is still one
//! round trip (a slot lookup in a map read with one atomic load, then the
//! pool's query).
//!
//! What a node hands back is followed here, within the request's time:
//! - `MOVED slot node`: the map is patched at once, a refresh is asked for,
//!   and the command is resent to the node named;
//! - `ASK slot node`: resent once to that node after `ASKING` (a slot being
//!   migrated), the map unchanged;
//! - `TRYAGAIN`, `CLUSTERDOWN`, `LOADING`, ...: retried after a short
//!   pause, while `operation_timeout` allows;
//! - a node that cannot be reached: a refresh is asked for and awaited (a
//!   replica may have taken over), then the command goes to whichever
//!   primary serves the slot now.
//!
//! Multi-key commands are split by slot (Redis refuses keys of several
//! slots in one command), the parts sent in parallel and merged.
//!
//! `nodes` owns the map and its refresh; `slots` the key-to-slot function;
//! `redirect` what a reply asks for. This module neither opens connections
//! (the pools') nor knows what a command means.

mod nodes;
mod redirect;
mod slots;

use std::{
    ops::Range,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::BytesMut;
use futures_util::future::{join_all, try_join_all};
use tokio::time::Instant;

use self::{nodes::Topology, redirect::Redirect};
use crate::{
    backend::{
        KeyList, PoolStats, TopologyStats,
        redis::{
            commands::{Command, MultiKey, Ping},
            failure,
            pool::Pool,
            resp::Reply,
            settings::RedisSettings,
        },
    },
    backoff::Backoff,
    credentials::CredentialsHandle,
    error::{Error, Result},
    shutdown::Watch,
};

/// Redirects followed for one command before giving up: a slot moves once
/// per reshard step, so more than a few in a row is a map in flux.
const MAX_REDIRECTS: u32 = 8;

/// The router to a Redis Cluster; cloning shares the map and pools.
#[derive(Clone)]
pub(in crate::backend::redis) struct Cluster {
    topology: Arc<Topology>,
}

/// The parts (indices into `Split::parts`) one primary serves (`None`: no
/// owner known).
type Batch = (Option<Arc<Pool>>, Vec<usize>);

/// Where the next attempt goes.
enum Target {
    /// The owner of the slot, by the map.
    Owner,
    /// A node a MOVED named.
    Node(Arc<Pool>),
    /// A node an ASK named: `ASKING` first.
    Asking(Arc<Pool>),
}

impl Cluster {
    /// Starts the refresh task, which reads the slot map from the seeds at
    /// once; requests that come before it wait for it (up to their time).
    pub(in crate::backend::redis) fn start(
        settings: &RedisSettings,
        creds: CredentialsHandle,
        shutdown: Watch,
    ) -> Result<Self> {
        for seed in &settings.addresses {
            settings.connector(seed)?;
        }
        let topology = Arc::new(Topology::new(settings.clone(), creds, shutdown.clone()));
        tokio::spawn(nodes::run(topology.clone(), shutdown));
        Ok(Self { topology })
    }

    /// Sends a single-slot command to the primary of its slot.
    pub(in crate::backend::redis) async fn send<C: Command>(
        &self,
        command: &C,
    ) -> Result<C::Output> {
        let slot = command
            .keys()
            .first()
            .map_or(0, |k| slots::slot(k.as_bytes()));
        let encode = |out: &mut BytesMut| command.encode(out);
        let reply = self.query(slot, &encode, command.replies()).await?;
        command.decode(reply)
    }

    /// Sends a multi-key command: whole when its keys share a slot, else one
    /// part per slot, folded in key order. Each primary gets its parts as
    /// one batch on one connection, the primaries in parallel.
    pub(in crate::backend::redis) async fn send_multi<C: MultiKey>(
        &self,
        command: &C,
    ) -> Result<C::Output> {
        let split = Split::new(command.keys());
        if split.parts.len() <= 1 {
            return self.send(command).await;
        }
        let batches = self.by_owner(&split);
        let replies = try_join_all(
            batches
                .iter()
                .map(|(pool, parts)| self.send_batch(command, &split, pool.as_deref(), parts)),
        )
        .await?;
        let mut output = command.empty();
        for (parts, replies) in batches.iter().map(|(_, p)| p).zip(replies) {
            for (&part, reply) in parts.iter().zip(replies) {
                command.fold_part(split.indices(part), reply, &mut output)?;
            }
        }
        command.finish(output, self.topology.settings().max_reply_bytes)
    }

    /// The parts of `split` by the primary that serves them now (`None`:
    /// no owner known; those go one by one, waiting for a refresh).
    fn by_owner(&self, split: &Split) -> Vec<Batch> {
        let nodes = self.topology.nodes();
        let mut batches: Vec<Batch> = Vec::new();
        for (part, &(slot, _)) in split.parts.iter().enumerate() {
            let owner = nodes.owner(slot).cloned();
            match batches.iter_mut().find(|(p, _)| same_pool(p, &owner)) {
                Some((_, parts)) => parts.push(part),
                None => batches.push((owner, vec![part])),
            }
        }
        batches
    }

    /// Sends one primary its `parts` in one batch and returns their
    /// replies in order; a part whose reply is an error (a redirect, a slot
    /// being migrated) or whose connection failed goes again alone through
    /// [`Cluster::query`], which follows it.
    async fn send_batch<C: MultiKey>(
        &self,
        command: &C,
        split: &Split,
        pool: Option<&Pool>,
        parts: &[usize],
    ) -> Result<Vec<Reply>> {
        let batch = match pool {
            Some(pool) if parts.len() > 1 => {
                let encode = |out: &mut BytesMut| {
                    for &part in parts {
                        command.encode_part(split.indices(part), out);
                    }
                };
                let counts: Vec<usize> = parts
                    .iter()
                    .map(|&part| command.part_replies(split.indices(part)))
                    .collect();
                pool.query_batch(&encode, &counts).await.ok()
            }
            _ => None,
        };
        let mut batch = batch.map(Vec::into_iter);
        let mut replies = Vec::with_capacity(parts.len());
        for &part in parts {
            let reply = match batch.as_mut().and_then(Iterator::next) {
                Some(reply) if !matches!(reply, Reply::Error(_)) => reply,
                _ => {
                    let indices = split.indices(part);
                    let encode = |out: &mut BytesMut| command.encode_part(indices, out);
                    let n = command.part_replies(indices);
                    self.query(split.parts[part].0, &encode, n).await?
                }
            };
            replies.push(reply);
        }
        Ok(replies)
    }

    /// Every primary answers PING, and every slot has a primary.
    pub(in crate::backend::redis) async fn ping(&self) -> Result<()> {
        let nodes = self.topology.nodes().clone();
        if nodes.pools().is_empty() {
            return Err(Error::Unavailable(
                "the redis cluster's slot map is not known yet".into(),
            ));
        }
        let unowned = nodes.unowned();
        if unowned > 0 {
            return Err(Error::Unavailable(format!(
                "no redis primary serves {unowned} slots"
            )));
        }
        let pings = nodes.pools().iter().map(|pool| async move {
            match pool.query(&|out| Ping.encode(out)).await {
                Ok(Reply::Error(msg)) => Err(failure::refusal(&msg)),
                Ok(reply) => Ping.decode(reply),
                Err(e) => Err(e),
            }
            .map_err(|e| Error::Unavailable(format!("redis primary {}: {e}", pool.address())))
        });
        join_all(pings).await.into_iter().collect()
    }

    /// Opens one connection to the first seed: fails only when TLS does.
    pub(in crate::backend::redis) async fn check_tls(&self) -> Result<()> {
        let Some(seed) = self.topology.settings().addresses.first() else {
            return Ok(());
        };
        self.topology.pool_for(seed)?.check_tls().await
    }

    /// Redirects and refreshes so far, and each primary's connections.
    pub(in crate::backend::redis) fn topology_stats(&self) -> TopologyStats {
        let c = &self.topology.counters;
        let nodes = self.topology.nodes();
        TopologyStats {
            moved: c.moved.load(Ordering::Relaxed),
            ask: c.ask.load(Ordering::Relaxed),
            refreshes: c.refreshes.load(Ordering::Relaxed),
            failovers: 0,
            nodes: nodes
                .pools()
                .iter()
                .map(|p| (p.address().to_string(), p.stats()))
                .collect(),
        }
    }

    /// Connection counts summed over the primaries; dead connections
    /// counted by pools since retired too (the metric is a counter).
    pub(in crate::backend::redis) fn stats(&self) -> PoolStats {
        let retired = PoolStats {
            dead: self.topology.counters.retired_dead.load(Ordering::Relaxed),
            ..PoolStats::default()
        };
        self.topology
            .nodes()
            .pools()
            .iter()
            .map(|p| p.stats())
            .fold(retired, |a, b| a + b)
    }

    /// Runs the `n` commands `encode` writes (one unit) for a key of
    /// `slot`, following redirects and waiting out "cannot serve now"
    /// within `operation_timeout`.
    async fn query(
        &self,
        slot: u16,
        encode: &(dyn Fn(&mut BytesMut) + Sync),
        n: usize,
    ) -> Result<Reply> {
        let budget = Instant::now() + self.topology.settings().operation_timeout;
        let mut pause = Backoff::new(Duration::from_millis(5), Duration::from_millis(100));
        let mut target = Target::Owner;
        for _ in 0..MAX_REDIRECTS {
            let result = match &target {
                Target::Owner => match self.owner(slot, budget).await? {
                    Some(pool) => pool.query_unit(encode, n).await,
                    None => {
                        return Err(Error::Unavailable(format!(
                            "no redis primary serves slot {slot}"
                        )));
                    }
                },
                Target::Node(pool) => pool.query_unit(encode, n).await,
                Target::Asking(pool) => pool.query_asking(encode, n).await,
            };
            target = match result {
                Ok(Reply::Error(msg)) => self.follow(&msg, &mut pause, budget).await?,
                Ok(reply) => return Ok(reply),
                Err(Error::Unavailable(why)) if Instant::now() < budget => {
                    // A primary that cannot be reached may have been
                    // replaced: look again, then try whoever serves now.
                    let before = self.owner_now(slot);
                    self.topology.refresh_within(budget - Instant::now()).await;
                    let after = self.owner_now(slot);
                    if before.is_some() && same_pool(&before, &after) {
                        return Err(Error::Unavailable(why));
                    }
                    Target::Owner
                }
                Err(e) => return Err(e),
            };
        }
        Err(Error::Unavailable(format!(
            "slot {slot}: too many redirects (the cluster is resharding)"
        )))
    }

    /// What to do after the error reply `msg`.
    async fn follow(&self, msg: &[u8], pause: &mut Backoff, budget: Instant) -> Result<Target> {
        let counters = &self.topology.counters;
        match Redirect::parse(msg) {
            Some(Redirect::Moved { slot, address }) => {
                counters.moved.fetch_add(1, Ordering::Relaxed);
                let pool = self.topology.pool_for(&address)?;
                self.topology.moved(slot, &pool);
                Ok(Target::Node(pool))
            }
            Some(Redirect::Ask { address }) => {
                counters.ask.fetch_add(1, Ordering::Relaxed);
                Ok(Target::Asking(self.topology.pool_for(&address)?))
            }
            Some(Redirect::Retry) => {
                let delay = pause.next_delay();
                if Instant::now() + delay >= budget {
                    return Err(failure::refusal(msg));
                }
                if msg.starts_with(b"CLUSTERDOWN") {
                    self.topology.want_refresh();
                }
                tokio::time::sleep(delay).await;
                Ok(Target::Owner)
            }
            None => Err(failure::refusal(msg)),
        }
    }

    /// The owner of `slot`; with none known, asks for a refresh and waits
    /// for it (the first map at start-up, or a primary that left).
    async fn owner(&self, slot: u16, budget: Instant) -> Result<Option<Arc<Pool>>> {
        if let Some(pool) = self.owner_now(slot) {
            return Ok(Some(pool));
        }
        let wait = budget.saturating_duration_since(Instant::now());
        self.topology.refresh_within(wait).await;
        Ok(self.owner_now(slot))
    }

    /// The pool of the primary that serves `key` by the map now.
    pub(in crate::backend::redis) fn owner_of(&self, key: &str) -> Option<Arc<Pool>> {
        self.owner_now(slots::slot(key.as_bytes()))
    }

    fn owner_now(&self, slot: u16) -> Option<Arc<Pool>> {
        self.topology.nodes().owner(slot).cloned()
    }
}

fn same_pool(a: &Option<Arc<Pool>>, b: &Option<Arc<Pool>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// A multi-key command's keys by slot: their indices sorted by slot (in
/// key order within one), and one part per slot. Two allocations whatever
/// the number of keys and slots.
struct Split {
    order: Vec<usize>,
    /// Each part's slot and its range in `order`.
    parts: Vec<(u16, Range<usize>)>,
}

impl Split {
    fn new(keys: KeyList<'_>) -> Self {
        let slots: Vec<u16> = keys.iter().map(|k| slots::slot(k.as_bytes())).collect();
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by_key(|&i| (slots[i], i));
        let mut parts: Vec<(u16, Range<usize>)> = Vec::new();
        for (at, &i) in order.iter().enumerate() {
            match parts.last_mut() {
                Some((slot, range)) if *slot == slots[i] => range.end = at + 1,
                _ => parts.push((slots[i], at..at + 1)),
            }
        }
        Self { order, parts }
    }

    /// The key indices of part `part`.
    fn indices(&self, part: usize) -> &[usize] {
        &self.order[self.parts[part].1.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Keys;

    #[test]
    fn keys_split_by_slot_in_key_order() {
        let keys: Keys = ["{a}1", "b", "{a}2", "c", "b"].into_iter().collect();
        let split = Split::new(KeyList::Many(&keys));
        let mut parts: Vec<(u16, Vec<usize>)> = (0..split.parts.len())
            .map(|p| (split.parts[p].0, split.indices(p).to_vec()))
            .collect();
        parts.sort();
        let mut want = vec![
            (slots::slot(b"a"), vec![0, 2]),
            (slots::slot(b"b"), vec![1, 4]),
            (slots::slot(b"c"), vec![3]),
        ];
        want.sort();
        assert_eq!(parts, want);
    }
}
