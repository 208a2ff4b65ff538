//! Where and how to reach Redis: [`RedisSettings`] as the server builds them
//! from `backend` config, and what they imply for the layers below — TLS
//! for a `rediss://` address given without a TLS block, the [`Connector`]
//! that opens connections, and the [`PoolLimits`] every pool runs with.
//!
//! This module does not read config files or validate fields (config's
//! job, which already parsed the address once) and opens nothing.

use std::{sync::Arc, time::Duration};

use rustls::pki_types::ServerName;

use super::{
    connection::{Connector, Tls},
    near::Near,
    pool::PoolLimits,
};
use crate::{
    config::{Topology, address::parse_address},
    error::{Error, Result},
    secret::Secret,
};

/// Where and how to connect; built from `backend` config.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// Standalone, Sentinel or Cluster: which of the address fields count.
    pub topology: Topology,
    /// Standalone: the server.
    pub address: String,
    /// Sentinel: the sentinels; cluster: seed nodes.
    pub addresses: Vec<String>,
    /// Sentinel: the monitored master's name, and AUTH to the sentinels.
    pub sentinel_master: String,
    pub sentinel_username: String,
    pub sentinel_password: Secret,
    pub database: u32,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub operation_timeout: Duration,
    /// Extra attempts on another connection after a dropped connection.
    pub max_retries: u32,
    /// TLS settings; `rediss://` addresses imply TLS with system roots.
    pub tls: Option<RedisTlsSettings>,
    /// Largest reply accepted for one command, framing included; larger
    /// ones fail that command with [`Error::ReplyTooLarge`].
    pub max_reply_bytes: usize,
    /// The near cache every node's pool feeds and invalidates; `None`: off.
    pub near_cache: Option<NearCache>,
}

/// A near cache (README, "Near cache"), shared by the clones of the
/// settings that hold it: every pool the router starts uses the same one.
#[derive(Clone)]
pub struct NearCache(pub(super) Arc<Near>);

impl NearCache {
    /// Holds at most `max_bytes` (keys + values + overhead), each entry at
    /// most `max_ttl`.
    pub fn new(max_bytes: usize, max_ttl: Duration) -> Self {
        Self(Near::new(max_bytes, max_ttl))
    }
}

impl std::fmt::Debug for NearCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearCache")
            .field("bytes", &self.0.stats().bytes)
            .finish_non_exhaustive()
    }
}

/// TLS towards Redis.
#[derive(Clone)]
pub struct RedisTlsSettings {
    /// Roots, client certificate, verification (see `tls::redis_client_config`).
    pub config: Arc<rustls::ClientConfig>,
    /// Name to verify instead of the address' host.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for RedisTlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTlsSettings")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl RedisSettings {
    /// Fills in TLS for `rediss://` addresses given without TLS settings:
    /// system roots, no client certificate.
    pub(super) fn with_implied_tls(mut self) -> Result<Self> {
        let first = match self.topology {
            Topology::Standalone => &self.address,
            _ => self.addresses.first().unwrap_or(&self.address),
        };
        let (_, _, tls_implied) = parse_address(first).map_err(Error::Internal)?;
        if tls_implied && self.tls.is_none() {
            let config = crate::tls::redis_client_config(&crate::config::RedisTls::default())
                .map_err(|e| Error::Internal(format!("redis tls: {e}")))?;
            self.tls = Some(RedisTlsSettings {
                config: Arc::new(config),
                server_name: None,
            });
        }
        Ok(self)
    }

    /// Opens connections to `address` (the configured one, a node the
    /// cluster announced, the master a sentinel named) as these settings
    /// say.
    pub(super) fn connector(&self, address: &str) -> Result<Connector> {
        let (host, port, _) = parse_address(address).map_err(Error::Internal)?;
        let tls = match &self.tls {
            Some(t) => {
                // The certificate is checked against this name; the socket
                // still goes to the configured host.
                let name = t.server_name.clone().unwrap_or_else(|| host.clone());
                let server_name = ServerName::try_from(name)
                    .map_err(|e| Error::Internal(format!("redis tls server name: {e}")))?;
                Some(Tls {
                    config: t.config.clone(),
                    server_name,
                })
            }
            None => None,
        };
        Ok(Connector {
            host,
            port,
            database: self.database,
            tls,
            timeout: self.connect_timeout,
            max_reply: self.max_reply_bytes,
            require_master: self.topology == Topology::Sentinel,
        })
    }

    /// The limits of a pool of connections to one node.
    pub(super) fn pool_limits(&self) -> PoolLimits {
        PoolLimits {
            size: self.pool_size,
            connect_timeout: self.connect_timeout,
            operation_timeout: self.operation_timeout,
            max_retries: self.max_retries,
        }
    }
}
