//! The Vault HTTP client: built from config alone (address, CA, client
//! certificate, namespace, timeout), and the raw endpoint call for what
//! vaultrs lacks (the lease envelope of a database read, the lease
//! endpoints), sent with the same client's middleware.
//!
//! It knows no login and no target; callers name the operation for errors.

use std::{marker::PhantomData, path::Path};

use rustify::{
    endpoint::Endpoint,
    enums::{RequestMethod, RequestType, ResponseType},
};
use serde::de::DeserializeOwned;
use vaultrs::{
    api::EndpointResult,
    client::{Client, VaultClient, VaultClientSettingsBuilder},
};

use super::{
    error::VaultError,
    files::{file_error, read_small_file},
};
use crate::config::VaultConfig;

/// A Vault endpoint by path, method and JSON body.
pub(super) struct Call<R> {
    path: String,
    method: RequestMethod,
    body: Option<Vec<u8>>,
    response: PhantomData<fn() -> R>,
}

impl<R> Call<R> {
    pub(super) fn get(path: &str) -> Self {
        Self {
            path: path.to_string(),
            method: RequestMethod::GET,
            body: None,
            response: PhantomData,
        }
    }

    pub(super) fn put(path: &str, body: &serde_json::Value) -> Self {
        Self {
            path: path.to_string(),
            method: RequestMethod::PUT,
            body: Some(body.to_string().into_bytes()),
            response: PhantomData,
        }
    }
}

impl<R: DeserializeOwned + Send + Sync> Endpoint for Call<R> {
    type Response = R;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        self.path.clone()
    }

    fn method(&self) -> RequestMethod {
        self.method.clone()
    }

    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        Ok(self.body.clone())
    }
}

/// Executes `endpoint` with the client's middleware (token, namespace, API
/// version) and returns the whole response envelope, lease included.
pub(super) async fn call<R: DeserializeOwned + Send + Sync>(
    client: &VaultClient,
    operation: &'static str,
    endpoint: Call<R>,
) -> Result<EndpointResult<R>, VaultError> {
    endpoint
        .with_middleware(client.middle())
        .exec(client.http())
        .await
        .map_err(|e| VaultError::from_rest(operation, e))?
        .wrap::<EndpointResult<R>>()
        .map_err(|e| VaultError::from_rest(operation, e))
}

/// Builds the vaultrs client from config alone (no environment lookups).
pub(super) fn build_client(v: &VaultConfig) -> Result<VaultClient, VaultError> {
    // vaultrs is built without aws-lc; use ring, already in the tree.
    let _ = rustls::crypto::ring::default_provider().install_default();
    url::Url::parse(&v.address).map_err(|e| VaultError::Setup(format!("vault.address: {e}")))?;
    let mut b = VaultClientSettingsBuilder::default();
    b.address(&v.address)
        .token("")
        .verify(true)
        .ca_certs(if v.ca_file.is_empty() {
            Vec::new()
        } else {
            vec![v.ca_file.clone()]
        })
        .timeout(Some(v.request_timeout.0));
    if !v.namespace.is_empty() {
        b.set_namespace(v.namespace.clone());
    }
    if !v.client_cert_file.is_empty() {
        b.identity(Some(client_identity(v)?));
    }
    let settings = b.build().map_err(|e| VaultError::Setup(e.to_string()))?;
    VaultClient::new(settings).map_err(|e| VaultError::Setup(e.to_string()))
}

/// The client certificate and key for Vault listeners that require one
/// (and the `cert` auth method), from PEM files.
fn client_identity(v: &VaultConfig) -> Result<vaultrs::client::Identity, VaultError> {
    let read = |field, path: &str| {
        read_small_file(Path::new(path))
            .map_err(|reason| file_error(field, Path::new(path), reason))
    };
    let mut pem = read("vault.client_cert_file", &v.client_cert_file)?;
    pem.push(b'\n');
    pem.extend(read("vault.client_key_file", &v.client_key_file)?);
    // reqwest's message names the PEM problem, never the key's bytes.
    vaultrs::client::Identity::from_pem(&pem)
        .map_err(|e| VaultError::Setup(format!("vault.client_cert_file/client_key_file: {e}")))
}
