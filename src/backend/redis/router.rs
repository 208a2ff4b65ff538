//! Which node a command goes to: the layer between "what to send"
//! (`commands`) and "on which connection" (`pool`).
//!
//! Today there is one node, so [`Router::route`] always answers its pool.
//! This type is where topologies land: with Sentinel, the node is the
//! master the sentinels name (swapped when they name another, the old
//! pool's connections draining as rotation's do); with Cluster, a slot map
//! from key to node with one pool per primary, MOVED/ASK followed here (the
//! pool hands back what it cannot act on, `failure` names it), and
//! multi-key commands split by node using [`Command::keys`] and merged.
//!
//! This module does not open connections or retry on them (the pool's), nor
//! know what a command means (its own type's).

use std::sync::Arc;

use super::{commands::Command, pool::Pool, settings::RedisSettings};
use crate::{backend::PoolStats, credentials::CredentialsHandle, error::Result, shutdown::Watch};

/// Routes commands to the node that serves them; cloning shares the pools.
#[derive(Clone)]
pub(super) struct Router {
    /// The one node of a standalone Redis.
    node: Arc<Pool>,
}

impl Router {
    /// A router to the one node of `settings`, its pool started (its
    /// maintenance task ends when `shutdown` reaches `Stopped`).
    pub(super) fn standalone(
        settings: &RedisSettings,
        creds: CredentialsHandle,
        shutdown: Watch,
    ) -> Result<Self> {
        let connector = settings.connector()?;
        let limits = settings.pool_limits();
        let node = Pool::start(settings.address.clone(), connector, limits, creds, shutdown);
        Ok(Self { node })
    }

    /// Sends `command` to the node that holds its keys and decodes the
    /// reply: one round trip on a healthy node.
    pub(super) async fn send<C: Command>(&self, command: &C) -> Result<C::Output> {
        let pool = self.route(command.keys());
        let reply = pool.query(&|out| command.encode(out)).await?;
        command.decode(reply)
    }

    /// The pool of the node that serves `keys`; any node for none.
    fn route(&self, _keys: &[String]) -> &Pool {
        &self.node
    }

    /// Fails when TLS to a node is refused either way (see
    /// [`Pool::check_tls`]).
    pub(super) async fn check_tls(&self) -> Result<()> {
        self.node.check_tls().await
    }

    /// Connection counts over every node.
    pub(super) fn stats(&self) -> PoolStats {
        self.node.stats()
    }
}
