//! Which node a command goes to: the layer between "what to send"
//! (`commands`) and "on which connection" (`pool`).
//!
//! One [`Router`] per topology:
//! - *standalone*: the one node's pool;
//! - *sentinel* (`sentinel`): the pool of the master the sentinels name,
//!   swapped for a new one when they name another (the old pool's requests
//!   finish, its connections close with them);
//! - *cluster* (`cluster`): a slot map from key to primary with one pool
//!   per primary; MOVED/ASK followed here (the pool hands back what it
//!   cannot act on, `failure` names it), and multi-key commands split by
//!   slot ([`MultiKey`]), sent in parallel and merged.
//!
//! This module does not open connections or retry on them (the pool's), nor
//! know what a command means (its own type's).

mod cluster;
mod sentinel;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{
    commands::{Command, Get, GetTtl, MultiKey},
    failure,
    near::Claim,
    pool::Pool,
    resp::Reply,
    settings::RedisSettings,
};
use crate::{
    backend::{PoolStats, TopologyStats},
    config::Topology,
    credentials::CredentialsHandle,
    error::Result,
    shutdown::Watch,
};

/// Routes commands to the node that serves them; cloning shares the pools.
#[derive(Clone)]
pub(super) enum Router {
    /// The one node of a standalone Redis.
    Standalone(Arc<Pool>),
    Sentinel(sentinel::Sentinel),
    Cluster(cluster::Cluster),
}

impl Router {
    /// A router for the topology of `settings`, its pools and tasks started
    /// (they end when `shutdown` reaches `Stopped`). Does not wait for
    /// Redis.
    pub(super) fn start(
        settings: &RedisSettings,
        creds: CredentialsHandle,
        shutdown: Watch,
    ) -> Result<Self> {
        Ok(match settings.topology {
            Topology::Standalone => {
                Self::Standalone(start_pool(settings, &settings.address, creds, shutdown)?)
            }
            Topology::Sentinel => {
                Self::Sentinel(sentinel::Sentinel::start(settings, creds, shutdown)?)
            }
            Topology::Cluster => Self::Cluster(cluster::Cluster::start(settings, creds, shutdown)?),
        })
    }

    /// Sends `command` to the node that holds its keys and decodes the
    /// reply: one round trip on a healthy node.
    pub(super) async fn send<C: Command>(&self, command: &C) -> Result<C::Output> {
        match self {
            Self::Standalone(pool) => send_to(pool, command).await,
            Self::Sentinel(s) => s.send(command).await,
            Self::Cluster(c) => c.send(command).await,
        }
    }

    /// Sends a command over several keys: as one command where one node
    /// holds them all, split by slot in a cluster.
    pub(super) async fn send_multi<C: MultiKey>(&self, command: &C) -> Result<C::Output> {
        match self {
            Self::Cluster(c) => c.send_multi(command).await,
            _ => self.send(command).await,
        }
    }

    /// Near cache: a Get that, on the node's pool with the near cache on,
    /// reads `PTTL` with the value and stores both if its claim survives
    /// (see `near`). Anything unusual (a redirect, a lost connection) falls
    /// back to [`Router::send`], which stores nothing.
    pub(super) async fn get_tracked(&self, get: &Get) -> Result<Option<Bytes>> {
        let pool = match self {
            Self::Standalone(pool) => Some(pool.clone()),
            Self::Sentinel(s) => s.master(),
            Self::Cluster(c) => c.owner_of(&get.key),
        };
        if let Some(pool) = pool.filter(|p| p.near().is_some())
            && let Some(done) = tracked_get(&pool, get).await
        {
            return done;
        }
        self.send(get).await
    }

    /// Fails when TLS to a node is refused either way (see
    /// [`Pool::check_tls`]).
    pub(super) async fn check_tls(&self) -> Result<()> {
        match self {
            Self::Standalone(pool) => pool.check_tls().await,
            Self::Sentinel(s) => s.check_tls().await,
            Self::Cluster(c) => c.check_tls().await,
        }
    }

    /// Checks the store answers: the node, the master, or every primary.
    pub(super) async fn ping(&self) -> Result<()> {
        match self {
            Self::Cluster(c) => c.ping().await,
            _ => self.send(&super::commands::Ping).await,
        }
    }

    /// Redirects, refreshes, failovers and each node's connections.
    pub(super) fn topology_stats(&self) -> TopologyStats {
        match self {
            Self::Standalone(pool) => TopologyStats {
                nodes: vec![(pool.address().to_string(), pool.stats())],
                ..TopologyStats::default()
            },
            Self::Sentinel(s) => s.topology_stats(),
            Self::Cluster(c) => c.topology_stats(),
        }
    }

    /// Sentinel: how many times the master moved and was followed; 0 in
    /// the other topologies.
    pub(super) fn failovers(&self) -> u64 {
        match self {
            Self::Sentinel(s) => s.failovers(),
            _ => 0,
        }
    }

    /// Connection counts over every node.
    pub(super) fn stats(&self) -> PoolStats {
        match self {
            Self::Standalone(pool) => pool.stats(),
            Self::Sentinel(s) => s.stats(),
            Self::Cluster(c) => c.stats(),
        }
    }
}

/// Starts the pool of the node at `address` (the configured one, a master
/// a sentinel named, a cluster primary) with the limits of `settings`; its
/// maintenance task ends at `Stopped` or when it is retired.
fn start_pool(
    settings: &RedisSettings,
    address: &str,
    creds: CredentialsHandle,
    shutdown: Watch,
) -> Result<Arc<Pool>> {
    let connector = settings.connector(address)?;
    let limits = settings.pool_limits();
    let near = settings.near_cache.as_ref().map(|n| n.0.clone());
    Ok(Pool::start(
        address.to_string(),
        connector,
        limits,
        creds,
        shutdown,
        near,
    ))
}

/// `GET` + `PTTL` on one connection of `pool`, stored in its near cache
/// when the claim survives; `None` when the caller should send a plain
/// Get instead (nothing was stored).
async fn tracked_get(pool: &Pool, get: &Get) -> Option<Result<Option<Bytes>>> {
    let near = pool.near()?;
    let pttl = GetTtl {
        key: get.key.clone(),
    };
    let encode = |out: &mut BytesMut| {
        get.encode(out);
        pttl.encode(out);
    };
    let (claim, replies) = pool.query_tracked(&get.key, &encode, 2).await.ok()?;
    let cancel = |claim: Option<Claim>| {
        if let Some(c) = claim {
            near.cancel(&get.key, c.ticket);
        }
    };
    let [value, ttl]: [Reply; 2] = match replies.try_into() {
        Ok(pair) => pair,
        Err(_) => {
            cancel(claim);
            return Some(Err(crate::error::Error::Internal(
                "near cache: GET + PTTL answered out of step".into(),
            )));
        }
    };
    if let Reply::Error(_) = value {
        // A redirect or "not now": the plain path knows what to do.
        cancel(claim);
        return None;
    }
    let value = match get.decode(value) {
        Ok(v) => v,
        Err(e) => {
            cancel(claim);
            return Some(Err(e));
        }
    };
    match (claim, pttl.millis(ttl)) {
        (Some(c), Ok(ms)) => near.fill(&get.key, c.ticket, value.as_ref(), ms),
        (claim, _) => cancel(claim),
    }
    Some(Ok(value))
}

/// Sends `command` on `pool` and decodes the reply; an error reply the
/// pool hands back is the caller's error here (no redirects to follow).
async fn send_to<C: Command>(pool: &Pool, command: &C) -> Result<C::Output> {
    let encode = |out: &mut bytes::BytesMut| command.encode(out);
    match pool.query_unit(&encode, command.replies()).await? {
        Reply::Error(msg) => Err(failure::refusal(&msg)),
        reply => command.decode(reply),
    }
}
