//! Vault's database engine as a target: dynamic Redis users read from
//! `<mount>/creds/<role>` with their lease, and the lease endpoints
//! (`sys/leases/renew`, `sys/leases/revoke`) that extend and end them.
//!
//! vaultrs' database helper drops the lease, so the read goes through the
//! raw endpoint call of [`super::client`]. When to call these is the
//! loop's business, not this module's.

use std::time::Duration;

use rustify::endpoint::Endpoint;
use serde::Deserialize;
use vaultrs::{
    api::EndpointResult,
    client::{Client, VaultClient},
};

use super::{
    client::{Call, call},
    error::VaultError,
};
use crate::{
    credentials::{
        lease::{self, Grant},
        source::{Issued, Lease},
    },
    secret::Secret,
};

/// Database engine credentials.
#[derive(Deserialize)]
struct DbCreds {
    username: String,
    password: String,
}

/// `GET <mount>/creds/<role>` keeping the lease vaultrs' helper drops.
pub(super) async fn read(client: &VaultClient, path: &str) -> Result<Issued, VaultError> {
    let r: EndpointResult<DbCreds> = call(client, "fetch", Call::get(path)).await?;
    let creds = r.data.ok_or(VaultError::Malformed {
        operation: "fetch",
        what: "no data",
    })?;
    let lease = (!r.lease_id.is_empty()).then(|| Lease {
        id: r.lease_id.clone(),
        grant: Grant {
            ttl: lease::ttl_from_secs(u64::from(r.lease_duration)),
            renewable: r.renewable,
        },
    });
    Ok(Issued {
        username: creds.username,
        password: Secret::new(creds.password),
        lease,
    })
}

/// Extends `lease_id` by `increment`; returns what Vault granted.
pub(super) async fn renew(
    client: &VaultClient,
    lease_id: &str,
    increment: Duration,
) -> Result<Grant, VaultError> {
    let body = serde_json::json!({ "lease_id": lease_id, "increment": increment.as_secs() });
    let r: EndpointResult<serde_json::Value> =
        call(client, "renew", Call::put("sys/leases/renew", &body)).await?;
    Ok(Grant {
        ttl: lease::ttl_from_secs(u64::from(r.lease_duration)),
        renewable: r.renewable,
    })
}

/// Ends `lease_id` now (Vault deletes the Redis user).
pub(super) async fn revoke(client: &VaultClient, lease_id: &str) -> Result<(), VaultError> {
    let body = serde_json::json!({ "lease_id": lease_id });
    // No body comes back, so no envelope to unwrap.
    Call::<()>::put("sys/leases/revoke", &body)
        .with_middleware(client.middle())
        .exec(client.http())
        .await
        .map_err(|e| VaultError::from_rest("revoke", e))?;
    Ok(())
}
