//! Redis Cluster (being built).

use crate::{
    backend::PoolStats,
    backend::redis::{
        commands::{Command, MultiKey},
        settings::RedisSettings,
    },
    credentials::CredentialsHandle,
    error::{Error, Result},
    shutdown::Watch,
};

#[derive(Clone)]
pub(in crate::backend::redis) struct Cluster {}

impl Cluster {
    pub(in crate::backend::redis) fn start(
        _settings: &RedisSettings,
        _creds: CredentialsHandle,
        _shutdown: Watch,
    ) -> Result<Self> {
        Ok(Self {})
    }

    pub(in crate::backend::redis) async fn send<C: Command>(
        &self,
        _command: &C,
    ) -> Result<C::Output> {
        Err(Error::Unavailable("cluster: not built yet".into()))
    }

    pub(in crate::backend::redis) async fn send_multi<C: MultiKey>(
        &self,
        command: &C,
    ) -> Result<C::Output> {
        self.send(command).await
    }

    pub(in crate::backend::redis) async fn ping(&self) -> Result<()> {
        Err(Error::Unavailable("cluster: not built yet".into()))
    }

    pub(in crate::backend::redis) async fn check_tls(&self) -> Result<()> {
        Ok(())
    }

    pub(in crate::backend::redis) fn stats(&self) -> PoolStats {
        PoolStats::default()
    }
}
