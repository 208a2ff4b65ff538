//! Vault/OpenBao as the source of Redis credentials: the client, the
//! plugin's own login (token, AppRole, Kubernetes) and token upkeep, dynamic
//! credentials from the database engine with their lease, static ones from
//! KV v2, and lease renewal and revocation.
//!
//! vaultrs does logins, token calls and KV v2. Its database helper drops the
//! lease, and it has no lease endpoints, so those three calls go through its
//! lower-level endpoint API with the same client (address, CA, namespace,
//! token, timeout). When to renew or rotate is decided in
//! [`super::rotation`] and [`super::lease`], not here. Nothing here logs,
//! returns or prints a token, password, secret id or JWT: Vault's errors are
//! reduced to a status code and its own message.

use std::{
    marker::PhantomData,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustify::{
    endpoint::Endpoint,
    enums::{RequestMethod, RequestType, ResponseType},
};
use serde::{Deserialize, de::DeserializeOwned};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tracing::{info, warn};
use vaultrs::{
    api::{AuthInfo, EndpointResult},
    client::{Client, VaultClient, VaultClientSettingsBuilder},
};

use super::{
    CredentialsHandle, channel,
    lease::{self, Grant, Renewal},
    placeholder,
    rotation::{self, Issued, Lease, Settings, Source},
};
use crate::{
    backoff::Backoff,
    config::{Config, Secret, VaultAuthMethod, VaultConfig, split_kv_path},
    metrics::Metrics,
};

/// Where Kubernetes mounts a pod's service-account token.
pub const DEFAULT_JWT_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// How often a configured token file is checked for a new token.
const TOKEN_FILE_POLL: Duration = Duration::from_secs(5);

/// The most a token, secret id, role id or JWT file may hold. Real ones are
/// under 2 KiB; a bound keeps a wrong path (a log, a device) from filling
/// memory.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// A failed Vault call. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Vault answered with an error status.
    #[error("{operation}: vault answered {code}: {message}")]
    Api {
        operation: &'static str,
        code: u16,
        message: String,
    },
    /// Vault could not be reached or did not answer.
    #[error("{operation}: vault unreachable: {reason}")]
    Transport {
        operation: &'static str,
        reason: String,
    },
    /// The call took longer than its bound.
    #[error("{operation}: timed out")]
    Timeout { operation: &'static str },
    /// Vault's answer lacked what we need.
    #[error("{operation}: unexpected answer: {what}")]
    Malformed {
        operation: &'static str,
        what: &'static str,
    },
    /// A credential file could not be read; `field` is its config key.
    #[error("{field}: cannot read {path}: {reason}")]
    File {
        field: &'static str,
        path: String,
        reason: String,
    },
    /// The client could not be built (address, CA file).
    #[error("vault client: {0}")]
    Setup(String),
}

impl VaultError {
    /// True when retrying the same call cannot help (bad request, denied,
    /// gone): the lease is lost, rotate instead.
    pub fn is_permanent(&self) -> bool {
        matches!(self, VaultError::Api { code, .. } if (400..500).contains(code))
    }

    fn is_forbidden(&self) -> bool {
        matches!(self, VaultError::Api { code: 403, .. })
    }

    fn from_client(operation: &'static str, e: vaultrs::error::ClientError) -> Self {
        use vaultrs::error::ClientError as C;
        match e {
            C::APIError { code, errors } => Self::Api {
                operation,
                code,
                message: first_message(&errors),
            },
            C::RestClientError { source } => Self::from_rest(operation, source),
            // Every other variant's text is a fixed phrase or a file path.
            other => Self::Malformed {
                operation,
                what: kind_of(&other),
            },
        }
    }

    fn from_rest(operation: &'static str, e: rustify::errors::ClientError) -> Self {
        use rustify::errors::ClientError as R;
        match e {
            R::ServerResponseError { code, content } => {
                let errors = content
                    .and_then(|c| serde_json::from_str::<ApiErrors>(&c).ok())
                    .map(|e| e.errors)
                    .unwrap_or_default();
                Self::Api {
                    operation,
                    code,
                    message: first_message(&errors),
                }
            }
            R::RequestError { source, .. } => Self::Transport {
                operation,
                reason: format!("{source:#}"),
            },
            // Parse errors carry the response body (which may hold the
            // password): keep only the kind.
            _ => Self::Malformed {
                operation,
                what: "response could not be parsed",
            },
        }
    }
}

#[derive(Deserialize)]
struct ApiErrors {
    errors: Vec<String>,
}

fn first_message(errors: &[String]) -> String {
    let m = errors.first().map_or("(no message)", String::as_str);
    m.chars().take(200).collect()
}

fn kind_of(e: &vaultrs::error::ClientError) -> &'static str {
    use vaultrs::error::ClientError as C;
    match e {
        C::ResponseEmptyError => "empty response",
        C::ResponseDataEmptyError => "empty data",
        C::JsonParseError { .. } => "data is not the expected JSON",
        _ => "client error",
    }
}

// === login ===

/// How the plugin proves who it is to Vault.
enum Login {
    /// A token given inline/env, or read from a file (re-read on change).
    Token {
        inline: Secret,
        file: Option<PathBuf>,
    },
    AppRole {
        mount: String,
        role_id: Secret,
        role_id_file: Option<PathBuf>,
        secret_id: Secret,
        secret_id_file: Option<PathBuf>,
    },
    Kubernetes {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
    /// TLS certificate auth with the client certificate the client presents.
    Cert { mount: String, role: String },
}

fn opt_path(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

impl Login {
    fn from_config(v: &VaultConfig) -> Self {
        let a = &v.auth;
        let mount = |default: &str| {
            if a.mount.is_empty() {
                default.to_string()
            } else {
                a.mount.clone()
            }
        };
        match a.method {
            VaultAuthMethod::Token => Login::Token {
                inline: a.token.clone(),
                file: opt_path(&a.token_file),
            },
            VaultAuthMethod::Approle => Login::AppRole {
                mount: mount("approle"),
                role_id: Secret::new(a.role_id.clone()),
                role_id_file: opt_path(&a.role_id_file),
                secret_id: a.secret_id.clone(),
                secret_id_file: opt_path(&a.secret_id_file),
            },
            VaultAuthMethod::Kubernetes => Login::Kubernetes {
                mount: mount("kubernetes"),
                role: a.role.clone(),
                jwt_file: opt_path(&a.jwt_file).unwrap_or_else(|| DEFAULT_JWT_FILE.into()),
            },
            VaultAuthMethod::Cert => Login::Cert {
                mount: mount("cert"),
                role: a.role.clone(),
            },
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Login::Token { .. } => "token",
            Login::AppRole { .. } => "approle",
            Login::Kubernetes { .. } => "kubernetes",
            Login::Cert { .. } => "cert",
        }
    }

    /// True when a new token can be obtained without an operator.
    fn can_relogin(&self) -> bool {
        !matches!(self, Login::Token { file: None, .. })
    }

    /// True when the token in use came from our own login (AppRole,
    /// Kubernetes, cert), not from the operator (inline or file).
    fn owns_token(&self) -> bool {
        !matches!(self, Login::Token { .. })
    }

    /// The files this login reads, with their config keys.
    fn files(&self) -> Vec<(&'static str, &Path)> {
        let mut files = Vec::new();
        match self {
            Login::Token { file, .. } => files.extend(file.as_deref().map(|f| (TOKEN_FILE, f))),
            Login::AppRole {
                role_id_file,
                secret_id_file,
                ..
            } => {
                files.extend(role_id_file.as_deref().map(|f| (ROLE_ID_FILE, f)));
                files.extend(secret_id_file.as_deref().map(|f| (SECRET_ID_FILE, f)));
            }
            Login::Kubernetes { jwt_file, .. } => files.push((JWT_FILE, jwt_file)),
            Login::Cert { .. } => {}
        }
        files
    }
}

const TOKEN_FILE: &str = "vault.auth.token_file";
const ROLE_ID_FILE: &str = "vault.auth.role_id_file";
const SECRET_ID_FILE: &str = "vault.auth.secret_id_file";
const JWT_FILE: &str = "vault.auth.jwt_file";

/// Reads a secret from `file` if given (trimmed), else uses `inline`.
async fn secret_from(
    inline: &Secret,
    file: Option<&Path>,
    field: &'static str,
) -> Result<Secret, VaultError> {
    let Some(path) = file else {
        return Ok(inline.clone());
    };
    let owned = path.to_path_buf();
    let text = tokio::task::spawn_blocking(move || read_small_file(&owned))
        .await
        .unwrap_or_else(|_| Err("reader task failed".into()))
        .map_err(|reason| file_error(field, path, reason))?;
    Ok(Secret::new(String::from_utf8_lossy(&text).trim()))
}

fn file_error(field: &'static str, path: &Path, reason: String) -> VaultError {
    VaultError::File {
        field,
        path: path.display().to_string(),
        reason,
    }
}

/// Reads a regular file of at most [`MAX_SECRET_FILE`] bytes. Opened
/// non-blocking, so a FIFO put where a token belongs fails at once instead
/// of waiting for a writer; its type is checked on the opened handle.
fn read_small_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.kind().to_string())?;
    let meta = file.metadata().map_err(|e| e.kind().to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut data = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut data)
        .map_err(|e| e.kind().to_string())?;
    if data.len() as u64 > MAX_SECRET_FILE {
        return Err(format!("larger than {} KiB", MAX_SECRET_FILE / 1024));
    }
    Ok(data)
}

/// At start-up: every credential file that exists must be a small regular
/// file. A missing one is left to the login, which retries (a Kubernetes
/// token may be mounted late).
fn check_files(login: &Login) -> Result<(), VaultError> {
    for (field, path) in login.files() {
        match read_small_file(path) {
            Ok(_) => {}
            Err(_) if !path.exists() => {}
            Err(reason) => return Err(file_error(field, path, reason)),
        }
    }
    Ok(())
}

// === token times ===

/// What we know about the plugin's own token.
#[derive(Clone, Copy, Debug)]
struct TokenTimes {
    ttl: Duration,
    /// False when Vault will not extend it: log in again instead.
    renewable: bool,
    /// Next renewal or new login (`None`: the token never expires).
    next: Option<Instant>,
    /// Past this, failing renewals give way to a new login.
    deadline: Instant,
}

impl TokenTimes {
    fn new(now: Instant, ttl: Duration, renewable: bool, fraction: f64) -> Self {
        let ttl = ttl.min(lease::MAX_TTL);
        let grant = Grant { ttl, renewable };
        let plan = lease::plan(now, Some(&grant), fraction);
        let next = (plan.step != lease::Step::Hold).then_some(plan.at);
        Self {
            ttl,
            renewable,
            next,
            deadline: lease::renew_deadline(lease::expiry(now, ttl), ttl, fraction),
        }
    }
}

// === VaultSource ===

/// What to read: dynamic database credentials or a KV v2 secret.
enum Target {
    Database { path: String },
    Kv { mount: String, path: String },
}

/// Vault as a [`Source`].
pub struct VaultSource {
    client: VaultClient,
    login: Login,
    target: Target,
    fraction: f64,
    logged_in: bool,
    token: TokenTimes,
    /// The token last read from `token_file`, to notice a new one.
    file_token: Secret,
    next_file_poll: Option<Instant>,
    backoff: Backoff,
}

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
        let login = Login::from_config(v);
        check_files(&login)?;
        let next_file_poll = matches!(login, Login::Token { file: Some(_), .. }).then(Instant::now);
        Ok(Self {
            client: build_client(v)?,
            login,
            target,
            fraction: v.renew_fraction,
            logged_in: false,
            // Unknown until the first login, which the first fetch does.
            token: TokenTimes {
                ttl: Duration::ZERO,
                renewable: false,
                next: None,
                deadline: Instant::now(),
            },
            file_token: Secret::default(),
            next_file_poll,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
        })
    }

    /// Logs in (or adopts the configured token) and learns its lifetime.
    async fn login(&mut self) -> Result<(), VaultError> {
        let now = Instant::now();
        let auth = match &self.login {
            Login::Token { inline, file } => {
                let token = secret_from(inline, file.as_deref(), TOKEN_FILE).await?;
                self.file_token = token.clone();
                self.client.set_token(token.expose());
                self.adopt_token(now).await?;
                self.logged_in = true;
                return Ok(());
            }
            Login::AppRole {
                mount,
                role_id,
                role_id_file,
                secret_id,
                secret_id_file,
            } => {
                let role_id = secret_from(role_id, role_id_file.as_deref(), ROLE_ID_FILE).await?;
                let secret_id =
                    secret_from(secret_id, secret_id_file.as_deref(), SECRET_ID_FILE).await?;
                vaultrs::auth::approle::login(
                    &self.client,
                    mount,
                    role_id.expose(),
                    secret_id.expose(),
                )
                .await
            }
            Login::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = secret_from(&Secret::default(), Some(jwt_file), JWT_FILE).await?;
                vaultrs::auth::kubernetes::login(&self.client, mount, role, jwt.expose()).await
            }
            Login::Cert { mount, role } => {
                vaultrs::auth::cert::login(&self.client, mount, role).await
            }
        }
        .map_err(|e| VaultError::from_client("login", e))?;
        self.client.set_token(&auth.client_token);
        self.logged_in = true;
        self.token = TokenTimes::new(
            now,
            lease::ttl_from_secs(auth.lease_duration),
            auth.renewable,
            self.fraction,
        );
        info!(method = self.login.name(), ttl = ?self.token.ttl, "logged in to vault");
        Ok(())
    }

    /// Looks up a given token's TTL and renewability.
    async fn adopt_token(&mut self, now: Instant) -> Result<(), VaultError> {
        let me = vaultrs::token::lookup_self(&self.client)
            .await
            .map_err(|e| VaultError::from_client("token lookup", e))?;
        let ttl = lease::ttl_from_secs(me.ttl);
        let renewable = me.renewable.unwrap_or(false);
        self.token = TokenTimes::new(now, ttl, renewable, self.fraction);
        // Renew by the TTL the token was created with, not what is left.
        self.token.ttl = lease::ttl_from_secs(me.creation_ttl.max(me.ttl));
        info!(method = "token", ttl = ?ttl, renewable, "using vault token");
        Ok(())
    }

    /// Renews the plugin's token; re-logs in when it cannot be extended.
    /// Returns true after a new login.
    async fn renew_token(&mut self) -> Result<bool, VaultError> {
        if !self.token.renewable {
            return self.relogin_or_give_up().await;
        }
        let now = Instant::now();
        let asked = self.token.ttl;
        let increment = format!("{}s", asked.as_secs());
        let result = vaultrs::token::renew_self(&self.client, Some(&increment)).await;
        match result.map_err(|e| VaultError::from_client("token renew", e)) {
            Ok(auth) => self.token_renewed(now, asked, &auth).await,
            Err(e) if now >= self.token.deadline || e.is_permanent() => {
                warn!(error = %e, "vault token cannot be renewed");
                self.relogin_or_give_up().await
            }
            Err(e) => {
                let retry = (now + self.backoff.next_delay()).min(self.token.deadline);
                self.token.next = Some(retry);
                Err(e)
            }
        }
    }

    async fn token_renewed(
        &mut self,
        now: Instant,
        asked: Duration,
        auth: &AuthInfo,
    ) -> Result<bool, VaultError> {
        self.backoff.reset();
        let grant = Grant {
            ttl: lease::ttl_from_secs(auth.lease_duration),
            renewable: auth.renewable,
        };
        match lease::renewal(asked, &grant) {
            Renewal::Extended => {
                // Time the next renewal by what was granted; keep asking
                // for the original TTL.
                let granted = grant.ttl.min(asked);
                self.token = TokenTimes::new(now, granted, true, self.fraction);
                self.token.ttl = asked;
                Ok(false)
            }
            Renewal::Exhausted => {
                info!(left = ?grant.ttl, "vault token reached its max TTL");
                self.relogin_or_give_up().await
            }
        }
    }

    async fn relogin_or_give_up(&mut self) -> Result<bool, VaultError> {
        if let Login::Token { .. } = self.login {
            // A token cannot log in by itself; a new one may appear in its file.
            if self.poll_token_file().await? {
                return Ok(true);
            }
            warn!("vault token cannot be extended; it expires unless a new one is provided");
            self.token.next = None;
            return Ok(false);
        }
        match self.login().await {
            Ok(()) => Ok(true),
            Err(e) => {
                self.token.next = Some(Instant::now() + self.backoff.next_delay());
                Err(e)
            }
        }
    }

    /// With a token file: adopts a new token when the file changes.
    async fn poll_token_file(&mut self) -> Result<bool, VaultError> {
        let Login::Token {
            file: Some(path), ..
        } = &self.login
        else {
            return Ok(false);
        };
        self.next_file_poll = Some(Instant::now() + TOKEN_FILE_POLL);
        let token = secret_from(&Secret::default(), Some(path), TOKEN_FILE).await?;
        if token == self.file_token || token.is_empty() {
            return Ok(false);
        }
        info!("vault token file changed; using the new token");
        self.login().await?;
        Ok(true)
    }

    async fn ensure_logged_in(&mut self) -> Result<(), VaultError> {
        if !self.logged_in {
            self.login().await?;
        }
        Ok(())
    }

    async fn fetch_once(&self) -> Result<Issued, VaultError> {
        match &self.target {
            Target::Database { path } => read_database_creds(&self.client, path).await,
            Target::Kv { mount, path } => read_kv_creds(&self.client, mount, path).await,
        }
    }
}

impl Source for VaultSource {
    async fn fetch(&mut self) -> Result<Issued, VaultError> {
        self.ensure_logged_in().await?;
        match self.fetch_once().await {
            // The token expired or was revoked: log in again once and retry.
            Err(e) if e.is_forbidden() && self.login.can_relogin() => {
                warn!(error = %e, "vault denied the read; logging in again");
                self.login().await?;
                self.fetch_once().await
            }
            other => other,
        }
    }

    async fn renew(&mut self, lease_id: &str, increment: Duration) -> Result<Grant, VaultError> {
        let body = serde_json::json!({ "lease_id": lease_id, "increment": increment.as_secs() });
        let r: EndpointResult<serde_json::Value> =
            call(&self.client, "renew", Call::put("sys/leases/renew", &body)).await?;
        Ok(Grant {
            ttl: lease::ttl_from_secs(u64::from(r.lease_duration)),
            renewable: r.renewable,
        })
    }

    async fn revoke(&mut self, lease_id: &str) -> Result<(), VaultError> {
        let body = serde_json::json!({ "lease_id": lease_id });
        Call::<()>::put("sys/leases/revoke", &body)
            .with_middleware(self.client.middle())
            .exec(self.client.http())
            .await
            .map_err(|e| VaultError::from_rest("revoke", e))?;
        Ok(())
    }

    fn session_due(&self) -> Option<Instant> {
        match (self.token.next, self.next_file_poll) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn upkeep(&mut self) -> Result<bool, VaultError> {
        let now = Instant::now();
        if !self.logged_in {
            // The first fetch logs in.
            return Ok(false);
        }
        if self.next_file_poll.is_some_and(|t| t <= now) && self.poll_token_file().await? {
            return Ok(true);
        }
        if self.token.next.is_some_and(|t| t <= now) {
            return self.renew_token().await;
        }
        Ok(false)
    }

    async fn end_session(&mut self) -> Result<bool, VaultError> {
        // The operator's token (inline or token_file) is theirs to revoke:
        // it may be shared or meant to outlive this process. A token from
        // our own login is used by nobody else; leaving it would keep a
        // live credential in Vault until its TTL.
        if !self.logged_in || !self.login.owns_token() {
            return Ok(false);
        }
        vaultrs::token::revoke_self(&self.client)
            .await
            .map_err(|e| VaultError::from_client("token revoke", e))?;
        self.logged_in = false;
        Ok(true)
    }
}

// === calls vaultrs lacks ===

/// Database engine credentials.
#[derive(Deserialize)]
struct DbCreds {
    username: String,
    password: String,
}

/// KV v2 credentials: a secret with `username` and `password` keys.
#[derive(Deserialize)]
struct KvCreds {
    username: String,
    password: String,
}

/// `GET <mount>/creds/<role>` keeping the lease vaultrs' helper drops.
async fn read_database_creds(client: &VaultClient, path: &str) -> Result<Issued, VaultError> {
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

async fn read_kv_creds(
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

/// A Vault endpoint by path, method and JSON body.
struct Call<R> {
    path: String,
    method: RequestMethod,
    body: Option<Vec<u8>>,
    response: PhantomData<fn() -> R>,
}

impl<R> Call<R> {
    fn get(path: &str) -> Self {
        Self {
            path: path.to_string(),
            method: RequestMethod::GET,
            body: None,
            response: PhantomData,
        }
    }

    fn put(path: &str, body: &serde_json::Value) -> Self {
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
async fn call<R: DeserializeOwned + Send + Sync>(
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
fn build_client(v: &VaultConfig) -> Result<VaultClient, VaultError> {
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

// === wiring ===

/// The running credential loop; stop it with [`VaultTask::shutdown`].
pub struct VaultTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    bound: Duration,
}

impl VaultTask {
    /// Stops the loop, which revokes the current lease; waits at most a
    /// bounded time (best effort: Vault may be down at shutdown).
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        if tokio::time::timeout(self.bound, self.task).await.is_err() {
            warn!("vault lease revocation at shutdown timed out");
        }
    }
}

/// Starts the Vault credential loop for `config` and returns the pool's
/// handle. The first credentials arrive in the background; until then the
/// handle holds an already-expired placeholder, so health stays NOT_SERVING.
pub fn start(
    config: &Config,
    metrics: Arc<Metrics>,
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
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(rotation::run(source, publisher, settings, metrics, rx));
    // Room for revoking a lease being retired, the current one and the
    // plugin's own login token.
    let bound = revoke_wait * 3 + Duration::from_millis(500);
    Ok((handle, VaultTask { stop, task, bound }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_vaults_message_but_no_body() {
        let body = r#"{"errors":["permission denied"]}"#.to_string();
        let e = VaultError::from_rest(
            "fetch",
            rustify::errors::ClientError::ServerResponseError {
                code: 403,
                content: Some(body),
            },
        );
        assert_eq!(
            e.to_string(),
            "fetch: vault answered 403: permission denied"
        );
        assert!(e.is_permanent() && e.is_forbidden());
        let parse = rustify::errors::ClientError::ResponseParseError {
            source: anyhow::anyhow!("bad"),
            content: Some(r#"{"password":"hunter2"}"#.into()),
        };
        let e = VaultError::from_rest("fetch", parse);
        assert!(!format!("{e} {e:?}").contains("hunter2"));
        assert!(!e.is_permanent());
    }

    #[test]
    fn token_times_plan_renewal_or_a_new_login() {
        let now = Instant::now();
        let t = TokenTimes::new(now, Duration::from_secs(30), true, 0.5);
        assert_eq!(t.next, Some(now + Duration::from_secs(15)));
        assert_eq!(t.deadline, now + Duration::from_millis(22_500));
        // Not renewable: the same point is when to log in again.
        let t = TokenTimes::new(now, Duration::from_secs(30), false, 0.5);
        assert_eq!(t.next, Some(now + Duration::from_secs(15)));
        assert!(!t.renewable);
        // A root token (TTL 0) never needs renewal.
        let t = TokenTimes::new(now, Duration::ZERO, true, 0.5);
        assert_eq!(t.next, None);
    }

    #[test]
    fn a_huge_token_ttl_is_clamped() {
        let now = Instant::now();
        let t = TokenTimes::new(now, Duration::from_secs(u64::MAX), true, 0.5);
        assert_eq!(t.ttl, lease::MAX_TTL);
        assert_eq!(t.next, Some(now + lease::MAX_TTL / 2));
    }

    #[test]
    fn secret_files_must_be_small_regular_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = dir.path().join("token");
        std::fs::write(&ok, "s.abc\n").expect("write");
        assert_eq!(read_small_file(&ok).expect("read"), b"s.abc\n");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 64 * 1024 + 1]).expect("write");
        assert_eq!(read_small_file(&big).unwrap_err(), "larger than 64 KiB");
        // A FIFO without a writer: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.expect("mkfifo").success());
        assert_eq!(read_small_file(&fifo).unwrap_err(), "not a regular file");
        assert_eq!(
            read_small_file(dir.path()).unwrap_err(),
            "not a regular file"
        );
        let login = Login::Token {
            inline: Secret::default(),
            file: Some(fifo),
        };
        let e = check_files(&login).unwrap_err().to_string();
        assert!(e.starts_with("vault.auth.token_file: "), "{e}");
        let missing = Login::Token {
            inline: Secret::default(),
            file: Some(dir.path().join("not-yet")),
        };
        assert!(
            check_files(&missing).is_ok(),
            "a missing file is the login's to retry"
        );
    }

    #[test]
    fn relogin_needs_a_way_to_log_in() {
        let mut c = VaultConfig::default();
        assert!(!Login::from_config(&c).can_relogin());
        c.auth.token_file = "/run/token".into();
        assert!(Login::from_config(&c).can_relogin());
        c.auth.method = VaultAuthMethod::Kubernetes;
        assert!(Login::from_config(&c).can_relogin());
        let Login::Kubernetes {
            mount, jwt_file, ..
        } = Login::from_config(&c)
        else {
            panic!("kubernetes login");
        };
        assert_eq!(mount, "kubernetes");
        assert_eq!(jwt_file, PathBuf::from(DEFAULT_JWT_FILE));
    }
}
