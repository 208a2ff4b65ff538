//! Sentinel: the master the sentinels name. (Being built: today it asks
//! nothing and fails every call.)

use super::send_to;
use crate::{
    backend::PoolStats,
    backend::redis::{commands::Command, pool::Pool, settings::RedisSettings},
    credentials::CredentialsHandle,
    error::{Error, Result},
    shutdown::Watch,
};
use std::sync::Arc;

#[derive(Clone)]
pub(in crate::backend::redis) struct Sentinel {
    master: Option<Arc<Pool>>,
}

impl Sentinel {
    pub(in crate::backend::redis) fn start(
        _settings: &RedisSettings,
        _creds: CredentialsHandle,
        _shutdown: Watch,
    ) -> Result<Self> {
        Ok(Self { master: None })
    }

    pub(in crate::backend::redis) async fn send<C: Command>(
        &self,
        command: &C,
    ) -> Result<C::Output> {
        match &self.master {
            Some(pool) => send_to(pool, command).await,
            None => Err(Error::Unavailable("no master known".into())),
        }
    }

    pub(in crate::backend::redis) async fn check_tls(&self) -> Result<()> {
        Ok(())
    }

    pub(in crate::backend::redis) fn topology_stats(&self) -> crate::backend::TopologyStats {
        crate::backend::TopologyStats::default()
    }

    pub(in crate::backend::redis) fn stats(&self) -> PoolStats {
        self.master.as_ref().map(|p| p.stats()).unwrap_or_default()
    }
}
