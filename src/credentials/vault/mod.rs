//! Vault/OpenBao as a [`Source`] of Redis credentials, and its wiring:
//! [`start`] builds the source and spawns the credential loop.
//!
//! The source is a `session::Session` (the plugin's own login and token
//! upkeep) plus a target: dynamic credentials from the database engine
//! (`database`, with a lease) or a static identity from KV v2 (`kv`).
//! Every Vault failure crosses into the loop as a
//! `SourceError` through the one mapping in `error`. When to renew or
//! rotate is decided in [`super::rotation`] and [`super::lease`], not here.
//! Nothing here logs, returns or prints a token, password, secret id or
//! JWT: Vault's errors are reduced to a status code and its own message.
//!
//! Layout: `client` (HTTP client and raw endpoint calls), `login`
//! (methods and their files), `files` (reading secret files),
//! `session`, `database`, `kv`, `error`.

use std::{sync::Arc, time::Duration};

use tokio::{task::JoinHandle, time::Instant};
use tracing::warn;

use super::{
    CredentialsHandle, channel,
    lease::Grant,
    placeholder,
    rotation::{self, Settings},
    source::{Issued, Source, SourceError},
};
use crate::{
    config::{Config, split_kv_path},
    metrics::Metrics,
    shutdown::Watch,
};

mod client;
mod database;
mod error;
mod files;
mod kv;
mod login;
mod session;

pub use error::VaultError;
pub use login::DEFAULT_JWT_FILE;

/// What to read: dynamic database credentials or a KV v2 secret.
enum Target {
    Database { path: String },
    Kv { mount: String, path: String },
}

/// Vault as a [`Source`].
pub struct VaultSource {
    session: session::Session,
    target: Target,
}

// === impl VaultSource ===

impl VaultSource {
    /// A source for `config`; does not contact Vault yet.
    pub fn new(config: &Config) -> Result<Self, VaultError> {
        let v = &config.vault;
        let target = if v.kv_path.is_empty() {
            Target::Database {
                path: config.backend.vault_path.trim_matches('/').to_string(),
            }
        } else {
            let (mount, path) = split_kv_path(&v.kv_path)
                .ok_or_else(|| VaultError::Setup("vault.kv_path must be <mount>/<path>".into()))?;
            Target::Kv { mount, path }
        };
        Ok(Self {
            session: session::Session::new(v)?,
            target,
        })
    }

    async fn fetch_once(&self) -> Result<Issued, VaultError> {
        let client = self.session.client();
        match &self.target {
            Target::Database { path } => database::read(client, path).await,
            Target::Kv { mount, path } => kv::read(client, mount, path).await,
        }
    }

    async fn fetch_with_relogin(&mut self) -> Result<Issued, VaultError> {
        self.session.ensure_logged_in().await?;
        match self.fetch_once().await {
            // The token expired or was revoked: log in again once and retry.
            Err(e) if e.is_forbidden() && self.session.can_relogin() => {
                warn!(error = %e, "vault denied the read; logging in again");
                self.session.login().await?;
                self.fetch_once().await
            }
            other => other,
        }
    }
}

// Each call maps its `VaultError` through the one `From` in [`error`].
impl Source for VaultSource {
    fn name(&self) -> &'static str {
        "vault"
    }

    async fn fetch(&mut self) -> Result<Issued, SourceError> {
        Ok(self.fetch_with_relogin().await?)
    }

    async fn renew(&mut self, lease_id: &str, increment: Duration) -> Result<Grant, SourceError> {
        Ok(database::renew(self.session.client(), lease_id, increment).await?)
    }

    async fn revoke(&mut self, lease_id: &str) -> Result<(), SourceError> {
        Ok(database::revoke(self.session.client(), lease_id).await?)
    }

    fn session_due(&self) -> Option<Instant> {
        self.session.due()
    }

    async fn upkeep(&mut self) -> Result<bool, SourceError> {
        Ok(self.session.upkeep().await?)
    }

    async fn end_session(&mut self) -> Result<bool, SourceError> {
        Ok(self.session.end().await?)
    }
}

// === wiring ===

/// The running credential loop. It ends by itself once shutdown reaches
/// `Phase::Stopped` (revoking its lease); [`VaultTask::join`] waits for that.
pub struct VaultTask {
    task: JoinHandle<()>,
    bound: Duration,
}

impl VaultTask {
    /// Waits for the loop to finish revoking, at most a bounded time (best
    /// effort: Vault may be down at shutdown). Call it after advancing the
    /// shutdown signal to `Phase::Stopped`.
    pub async fn join(self) {
        if tokio::time::timeout(self.bound, self.task).await.is_err() {
            warn!("vault lease revocation at shutdown timed out");
        }
    }
}

/// Starts the Vault credential loop for `config` and returns the pool's
/// handle. The first credentials arrive in the background; until then the
/// handle holds an already-expired placeholder, so health stays NOT_SERVING.
/// The loop stops at `Phase::Stopped` of `shutdown`.
pub fn start(
    config: &Config,
    metrics: Arc<Metrics>,
    shutdown: Watch,
) -> Result<(CredentialsHandle, VaultTask), VaultError> {
    let source = VaultSource::new(config)?;
    let (publisher, handle) = channel(placeholder(), true);
    let operation = config.backend.operation_timeout.0;
    let revoke_wait = config.vault.request_timeout.0.min(Duration::from_secs(5));
    let settings = Settings {
        fraction: config.vault.renew_fraction,
        switch_wait: Duration::from_secs(10),
        drain: operation + Duration::from_millis(100),
        revoke_wait,
    };
    let task = tokio::spawn(rotation::run(
        source, publisher, settings, metrics, shutdown,
    ));
    // Room for revoking a lease being retired, the current one and the
    // plugin's own login token.
    let bound = revoke_wait * 3 + Duration::from_millis(500);
    Ok((handle, VaultTask { task, bound }))
}
