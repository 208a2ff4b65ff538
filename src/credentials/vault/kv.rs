//! Vault's KV v2 engine as a target: a static Redis identity kept as a
//! secret with `username` and `password` keys. No lease: it is read again
//! only when Redis rejects it.
//!
//! It does not parse `vault.kv_path` (config does).

use serde::Deserialize;
use vaultrs::client::VaultClient;

use super::error::VaultError;
use crate::{credentials::source::Issued, secret::Secret};

/// KV v2 credentials: a secret with `username` and `password` keys.
#[derive(Deserialize)]
struct KvCreds {
    username: String,
    password: String,
}

/// Reads the secret at `path` under the KV v2 `mount`.
pub(super) async fn read(
    client: &VaultClient,
    mount: &str,
    path: &str,
) -> Result<Issued, VaultError> {
    let creds: KvCreds = vaultrs::kv2::read(client, mount, path)
        .await
        .map_err(|e| VaultError::from_client("fetch", e))?;
    Ok(Issued {
        username: creds.username,
        password: Secret::new(creds.password),
        lease: None,
    })
}
