//! Configuration: the YAML schema, its defaults, the environment overlay and
//! validation.
//!
//! Loading is three steps, in this order: parse the file (unknown fields are
//! errors), overlay environment variables, validate. Any failure is a
//! [`ConfigError`] whose one-line message names the field, so `main` can
//! print it and exit before a socket opens. This module owns no I/O besides
//! reading the file and the environment.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::secret::Secret;

pub mod address;
pub mod log;

/// Where the config file is looked for when `--config` is not given.
pub const CONFIG_ENV: &str = "PRISM_PLUGIN_CONFIG";
/// The last resort path.
pub const DEFAULT_PATH: &str = "config.yaml";

/// Room for RESP framing on top of the largest value in one reply
/// (`$4194304\r\n` ... `\r\n`, an MGet's array header).
const REPLY_FRAMING: usize = 1024;

const MIB: usize = 1024 * 1024;

/// Every variable the environment overlay reads, with the field it sets.
/// `--help` prints this list and the deploy tests check examples against it,
/// so keep it in step with [`Config::load`]'s overlay.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("REDIS_ADDRESS", "backend.address"),
    ("REDIS_USERNAME", "backend.username"),
    ("REDIS_PASSWORD", "backend.password"),
    ("REDIS_DATABASE", "backend.database"),
    ("REDIS_POOL_SIZE", "backend.pool_size"),
    ("REDIS_KEY_PREFIX", "backend.key_prefix"),
    ("REDIS_VAULT_ENABLED", "backend.vault_enabled"),
    ("REDIS_VAULT_PATH", "backend.vault_path"),
    ("PRISM_LOG_LEVEL", "log.level"),
    ("PRISM_PLUGIN_PORT", "control_plane.port"),
    ("PRISM_PLUGIN_LISTEN", "control_plane.listen"),
    ("VAULT_ADDR", "vault.address"),
    ("VAULT_TOKEN", "vault.auth.token"),
    ("VAULT_CACERT", "vault.ca_file"),
    ("VAULT_NAMESPACE", "vault.namespace"),
    ("VAULT_ROLE_ID", "vault.auth.role_id"),
    ("VAULT_SECRET_ID", "vault.auth.secret_id"),
    ("VAULT_CLIENT_CERT", "vault.client_cert_file"),
    ("VAULT_CLIENT_KEY", "vault.client_key_file"),
];

/// Upper bounds on the limits: arithmetic on them (request sizes, deadlines)
/// cannot overflow, and a typo cannot ask for terabytes. README lists them.
pub const MAX_VALUE_BYTES: usize = 512 * 1024 * 1024; // Redis' own bulk limit
pub const MAX_KEY_BYTES: usize = 64 * 1024;
/// Bounds `backend.max_reply_bytes`: room for the largest value and then some.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024 * 1024;
pub const MAX_BATCH_KEYS: usize = 100_000;
pub const MAX_CONCURRENT_REQUESTS: usize = 1_000_000;
pub const MAX_POOL_SIZE: usize = 1024;
/// Bounds on the port's own limits: far past any real deployment, low enough
/// that no arithmetic on them overflows.
pub const MAX_CONNECTIONS: usize = 1_000_000;
pub const MAX_CONCURRENT_STREAMS: usize = 1_000_000;
pub const MAX_IN_FLIGHT_BYTES: usize = 64 * 1024 * 1024 * 1024;
pub const MAX_RETRIES: u32 = 100;
/// Bound on every timeout and interval.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Bound on `backend.default_ttl` (365 days).
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// What TLS the plugin serves and dials, from [`Config::tls_served`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsServed {
    /// The gRPC port speaks TLS.
    pub grpc_tls: bool,
    /// ... and requires a client certificate.
    pub mtls: bool,
    /// Connections to Redis use TLS.
    pub redis_tls: bool,
}

/// A bad config, reported as one line naming the field.
#[derive(Debug, thiserror::Error)]
#[error("invalid config: {field}: {reason}")]
pub struct ConfigError {
    /// Dotted path of the field (or environment variable) at fault.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub plugin: PluginConfig,
    pub control_plane: ControlPlaneConfig,
    pub log: LogConfig,
    pub backend: BackendConfig,
    pub vault: VaultConfig,
}

/// Identity of the plugin, used as a health service name.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginConfig {
    pub name: String,
    pub version: String,
}

/// The gRPC port and how it admits and drains requests.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneConfig {
    pub port: u16,
    pub listen: String,
    pub drain_timeout: Dur,
    pub max_concurrent_requests: usize,
    /// How often the health prober PINGs Redis.
    pub health_interval: Dur,
    /// TLS (and mTLS) on the plugin's own port.
    pub tls: ServerTls,
    /// Connections served at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open (advertised in SETTINGS).
    pub max_concurrent_streams: u32,
    /// Request and response bytes held in memory, all connections together.
    pub max_in_flight_bytes: usize,
    /// The share of `max_in_flight_bytes` one connection may hold.
    pub max_in_flight_bytes_per_connection: usize,
    /// How long a request body may take to arrive (or the caller's deadline).
    pub request_read_timeout: Dur,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Dur,
    /// HTTP/2 PING interval on a connection, to find dead peers.
    pub keepalive_interval: Dur,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Dur,
}

/// TLS on the gRPC port. With `client_ca_file`, clients must present a
/// certificate that CA signed (mTLS). Files are re-read when they change.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTls {
    pub enabled: bool,
    pub cert_file: String,
    pub key_file: String,
    pub client_ca_file: String,
    /// How often the files are checked for changes.
    pub reload_interval: Dur,
}

/// TLS to Redis. `rediss://` addresses turn it on.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTls {
    pub enabled: bool,
    /// CA bundle that signed Redis' certificate; empty = system roots.
    pub ca_file: String,
    /// Client certificate and key, for Redis `tls-auth-clients yes`.
    pub cert_file: String,
    pub key_file: String,
    /// Name to verify in Redis' certificate when it differs from the host.
    pub server_name: String,
    /// Accept any certificate. Never in production; logged loudly.
    pub insecure_skip_verify: bool,
}

/// Log level and format.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// JSON for machines, text for people at a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// Which backend serves the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Redis,
    Memory,
}

/// The Redis side: address, credentials, pool, limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    pub kind: BackendKind,
    pub address: String,
    pub database: u32,
    pub username: String,
    pub password: Secret,
    pub vault_enabled: bool,
    pub vault_path: String,
    pub pool_size: usize,
    pub max_retries: u32,
    pub min_idle_conns: usize,
    pub conn_max_idle_time: Dur,
    pub pool_timeout: Dur,
    pub operation_timeout: Dur,
    pub key_prefix: String,
    pub default_ttl: Ttl,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_batch_keys: usize,
    /// Largest reply accepted from Redis for one command (framing
    /// included); bounds what one Get or MGet can make the plugin hold.
    pub max_reply_bytes: usize,
    pub tls: RedisTls,
}

/// How the plugin reaches Vault/OpenBao and logs in.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    pub address: String,
    pub auth: VaultAuthConfig,
    pub ca_file: String,
    pub namespace: String,
    pub renew_fraction: f64,
    /// Static credentials from this KV v2 secret (`<mount>/<path>`, keys
    /// `username` and `password`) instead of the database engine.
    pub kv_path: String,
    /// Bound on each Vault call.
    pub request_timeout: Dur,
    /// Client certificate and key presented to Vault (mTLS listeners and
    /// the `cert` auth method).
    pub client_cert_file: String,
    pub client_key_file: String,
}

/// Vault login method and its inputs. Secrets may come inline or from files.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultAuthConfig {
    pub method: VaultAuthMethod,
    /// Mount path of the auth method; defaults to the method's name.
    pub mount: String,
    pub token: Secret,
    pub token_file: String,
    pub role_id: String,
    pub role_id_file: String,
    pub secret_id: Secret,
    pub secret_id_file: String,
    pub role: String,
    pub jwt_file: String,
}

/// Supported Vault login methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultAuthMethod {
    Token,
    Approle,
    Kubernetes,
    /// TLS certificate auth: `client_cert_file`/`client_key_file`, and
    /// `role` naming the cert role (empty = any that matches).
    Cert,
}

// === defaults ===
//
// Every block has a hand-written `Default` with its documented values, and
// `#[serde(default)]` fills a partly written block from it: a derived
// `Default` would give zeros (a 0 s reload interval) to whatever a block
// leaves out. `tests/config.rs` checks config.yaml against these, field by
// field.

// Written out although derivable: the rule is one hand-written impl per block.
#[allow(clippy::derivable_impls)]
impl Default for Config {
    fn default() -> Self {
        Self {
            plugin: PluginConfig::default(),
            control_plane: ControlPlaneConfig::default(),
            log: LogConfig::default(),
            backend: BackendConfig::default(),
            vault: VaultConfig::default(),
        }
    }
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            name: "redis".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            port: 9092,
            // A sidecar serves its pod's gateway: loopback unless told
            // otherwise (deploy/ sets 0.0.0.0 where kubelet must dial it).
            listen: "127.0.0.1".into(),
            drain_timeout: Dur::secs(10),
            max_concurrent_requests: 1024,
            health_interval: Dur::secs(5),
            tls: ServerTls::default(),
            max_connections: 1024,
            max_concurrent_streams: 256,
            max_in_flight_bytes: 256 * MIB,
            max_in_flight_bytes_per_connection: 64 * MIB,
            request_read_timeout: Dur::secs(10),
            idle_timeout: Dur::secs(300),
            keepalive_interval: Dur::secs(60),
            keepalive_timeout: Dur::secs(20),
        }
    }
}

impl Default for ServerTls {
    fn default() -> Self {
        Self {
            enabled: false,
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
            reload_interval: Dur::secs(5),
        }
    }
}

#[allow(clippy::derivable_impls)]
impl Default for RedisTls {
    fn default() -> Self {
        Self {
            enabled: false,
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            server_name: String::new(),
            insecure_skip_verify: false,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Json,
        }
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: BackendKind::Redis,
            address: "localhost:6379".into(),
            database: 0,
            username: String::new(),
            password: Secret::default(),
            vault_enabled: false,
            vault_path: "redis/creds/cache-rw".into(),
            // Two shared connections batch the most commands per write (one
            // connection is a single point of failure): bench/run measured
            // 10 -> 2 as +15..50% Get throughput at 64 streams, half the
            // Redis CPU per request.
            pool_size: 2,
            max_retries: 3,
            min_idle_conns: 2,
            conn_max_idle_time: Dur::secs(300),
            pool_timeout: Dur::secs(1),
            operation_timeout: Dur(Duration::from_millis(500)),
            key_prefix: "prism:".into(),
            default_ttl: Ttl(Some(Duration::from_secs(300))),
            max_key_bytes: 1024,
            max_value_bytes: 4 * 1024 * 1024,
            max_batch_keys: 1000,
            max_reply_bytes: 64 * 1024 * 1024,
            tls: RedisTls::default(),
        }
    }
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:8200".into(),
            auth: VaultAuthConfig::default(),
            ca_file: String::new(),
            namespace: String::new(),
            renew_fraction: 0.67,
            kv_path: String::new(),
            request_timeout: Dur::secs(5),
            client_cert_file: String::new(),
            client_key_file: String::new(),
        }
    }
}

impl Default for VaultAuthConfig {
    fn default() -> Self {
        Self {
            method: VaultAuthMethod::Token,
            mount: String::new(),
            token: Secret::default(),
            token_file: String::new(),
            role_id: String::new(),
            role_id_file: String::new(),
            secret_id: Secret::default(),
            secret_id_file: String::new(),
            role: String::new(),
            jwt_file: String::new(),
        }
    }
}

// === loading ===

impl Config {
    /// Picks the path: the flag, else `PRISM_PLUGIN_CONFIG`, else `config.yaml`.
    pub fn resolve_path(flag: Option<PathBuf>, env: &HashMap<String, String>) -> PathBuf {
        flag.or_else(|| env.get(CONFIG_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }

    /// Reads, overlays the process environment and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("--config", format!("{}: {e}", path.display())))?;
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::from_yaml_and_env(&text, &env)
    }

    /// The pure core of [`Config::load`], for tests.
    pub fn from_yaml_and_env(
        yaml: &str,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut config = Self::parse(yaml)?;
        config.apply_env(env)?;
        config.take_address_credentials()?;
        config.validate()?;
        Ok(config)
    }

    fn parse(yaml: &str) -> Result<Self, ConfigError> {
        if yaml.trim().is_empty() {
            return Ok(Self::default());
        }
        let de = serde_norway::Deserializer::from_str(yaml);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner().to_string();
            // serde_norway may prefix its own (shorter) path; keep the reason.
            let reason = match inner.split_once(": ") {
                Some((prefix, rest)) if !prefix.contains(' ') => rest.to_string(),
                _ => inner,
            };
            let field = if field == "." {
                "(file)".to_string()
            } else {
                field
            };
            ConfigError::new(field, reason)
        })
    }

    /// Overlays the variables listed in [`ENV_VARS`].
    fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let b = &mut self.backend;
        overlay_str(env, "REDIS_ADDRESS", &mut b.address);
        overlay_str(env, "REDIS_USERNAME", &mut b.username);
        if let Some(v) = env.get("REDIS_PASSWORD") {
            b.password = Secret::new(v.clone());
        }
        overlay_parse(env, "REDIS_DATABASE", &mut b.database)?;
        overlay_parse(env, "REDIS_POOL_SIZE", &mut b.pool_size)?;
        overlay_str(env, "REDIS_KEY_PREFIX", &mut b.key_prefix);
        overlay_parse(env, "REDIS_VAULT_ENABLED", &mut b.vault_enabled)?;
        overlay_str(env, "REDIS_VAULT_PATH", &mut b.vault_path);
        overlay_str(env, "PRISM_LOG_LEVEL", &mut self.log.level);
        overlay_parse(env, "PRISM_PLUGIN_PORT", &mut self.control_plane.port)?;
        overlay_str(env, "PRISM_PLUGIN_LISTEN", &mut self.control_plane.listen);
        let v = &mut self.vault;
        overlay_str(env, "VAULT_ADDR", &mut v.address);
        overlay_str(env, "VAULT_CACERT", &mut v.ca_file);
        overlay_str(env, "VAULT_NAMESPACE", &mut v.namespace);
        overlay_str(env, "VAULT_CLIENT_CERT", &mut v.client_cert_file);
        overlay_str(env, "VAULT_CLIENT_KEY", &mut v.client_key_file);
        if let Some(t) = env.get("VAULT_TOKEN") {
            v.auth.token = Secret::new(t.clone());
        }
        overlay_str(env, "VAULT_ROLE_ID", &mut v.auth.role_id);
        if let Some(t) = env.get("VAULT_SECRET_ID") {
            v.auth.secret_id = Secret::new(t.clone());
        }
        Ok(())
    }

    /// Moves a username/password written into `backend.address`
    /// (`redis://user:pw@host:port`, also from `REDIS_ADDRESS`) into
    /// `backend.username`/`backend.password`, so the address that is logged
    /// and printed never carries them and AUTH is sent with them.
    fn take_address_credentials(&mut self) -> Result<(), ConfigError> {
        let b = &mut self.backend;
        let split = address::split_credentials(&b.address)
            .map_err(|reason| ConfigError::new("backend.address", reason))?;
        let Some(split) = split else {
            return Ok(());
        };
        if !b.username.is_empty() || !b.password.is_empty() {
            return Err(ConfigError::new(
                "backend.address",
                "carries credentials and backend.username/password (REDIS_USERNAME/REDIS_PASSWORD) are set too: give them in one place",
            ));
        }
        if b.vault_enabled {
            return Err(ConfigError::new(
                "backend.address",
                "carries credentials but backend.vault_enabled fetches them from Vault: remove them from the address",
            ));
        }
        b.address = split.address;
        b.username = split.username;
        b.password = split.password;
        Ok(())
    }

    /// What TLS the plugin actually uses. The server, the Redis pool and the
    /// start-up line all read this one decision, so the log cannot claim TLS
    /// that is not served. (Validation refuses TLS material without TLS on.)
    pub fn tls_served(&self) -> TlsServed {
        let cp = &self.control_plane.tls;
        let b = &self.backend;
        let implied = address::parse_address(&b.address).is_ok_and(|(_, _, tls)| tls);
        TlsServed {
            grpc_tls: cp.enabled,
            mtls: cp.enabled && !cp.client_ca_file.is_empty(),
            redis_tls: b.kind == BackendKind::Redis && (b.tls.enabled || implied),
        }
    }

    /// Checks every constraint the schema cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_control_plane()?;
        self.validate_backend()?;
        // After the backend: the budgets must hold its largest request.
        self.validate_transport()?;
        self.validate_tls()?;
        if self.backend.kind == BackendKind::Redis && self.backend.vault_enabled {
            self.validate_vault()?;
        }
        log::parse_level(&self.log.level)
            .map_err(|reason| ConfigError::new("log.level", reason))?;
        Ok(())
    }

    /// TLS fails closed: certificate, key or CA files given while TLS is off
    /// stop start-up, naming the switch, instead of serving or dialing
    /// plaintext the operator did not ask for.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let t = &self.control_plane.tls;
        if !t.enabled {
            let given = [
                ("cert_file", &t.cert_file),
                ("key_file", &t.key_file),
                ("client_ca_file", &t.client_ca_file),
            ];
            if let Some((name, _)) = given.iter().find(|(_, v)| !v.is_empty()) {
                return Err(tls_off("control_plane.tls", name, "serve plaintext"));
            }
        }
        if t.enabled {
            readable("control_plane.tls.cert_file", &t.cert_file, true)?;
            readable("control_plane.tls.key_file", &t.key_file, true)?;
            readable("control_plane.tls.client_ca_file", &t.client_ca_file, false)?;
            nonzero(t.reload_interval, "control_plane.tls.reload_interval")?;
        }
        self.validate_redis_tls()?;
        let v = &self.vault;
        readable("vault.client_cert_file", &v.client_cert_file, false)?;
        readable("vault.client_key_file", &v.client_key_file, false)?;
        if v.client_cert_file.is_empty() != v.client_key_file.is_empty() {
            return Err(ConfigError::new(
                "vault.client_key_file",
                "client_cert_file and client_key_file go together",
            ));
        }
        Ok(())
    }

    fn validate_redis_tls(&self) -> Result<(), ConfigError> {
        let r = &self.backend.tls;
        if self.backend.kind == BackendKind::Redis && !self.tls_served().redis_tls {
            let given = [
                ("ca_file", !r.ca_file.is_empty()),
                ("cert_file", !r.cert_file.is_empty()),
                ("key_file", !r.key_file.is_empty()),
                ("server_name", !r.server_name.is_empty()),
                ("insecure_skip_verify", r.insecure_skip_verify),
            ];
            if let Some((name, _)) = given.iter().find(|(_, set)| *set) {
                return Err(tls_off(
                    "backend.tls",
                    name,
                    "connect in plaintext (or use a rediss:// address)",
                ));
            }
        }
        readable("backend.tls.ca_file", &r.ca_file, false)?;
        readable("backend.tls.cert_file", &r.cert_file, false)?;
        readable("backend.tls.key_file", &r.key_file, false)?;
        if r.cert_file.is_empty() != r.key_file.is_empty() {
            return Err(ConfigError::new(
                "backend.tls.key_file",
                "cert_file and key_file go together",
            ));
        }
        Ok(())
    }

    fn validate_control_plane(&self) -> Result<(), ConfigError> {
        let c = &self.control_plane;
        c.listen.parse::<IpAddr>().map_err(|_| {
            ConfigError::new(
                "control_plane.listen",
                "must be an IP address like 127.0.0.1",
            )
        })?;
        within(
            c.max_concurrent_requests,
            MAX_CONCURRENT_REQUESTS,
            "control_plane.max_concurrent_requests",
        )?;
        timeout(c.drain_timeout, "control_plane.drain_timeout")?;
        timeout(c.health_interval, "control_plane.health_interval")?;
        timeout(c.tls.reload_interval, "control_plane.tls.reload_interval")?;
        if self.plugin.name.is_empty() {
            return Err(ConfigError::new("plugin.name", "must not be empty"));
        }
        Ok(())
    }

    /// The connection and memory limits of the plugin's own port.
    fn validate_transport(&self) -> Result<(), ConfigError> {
        let c = &self.control_plane;
        within(
            c.max_connections,
            MAX_CONNECTIONS,
            "control_plane.max_connections",
        )?;
        within(
            c.max_concurrent_streams as usize,
            MAX_CONCURRENT_STREAMS,
            "control_plane.max_concurrent_streams",
        )?;
        within(
            c.max_in_flight_bytes,
            MAX_IN_FLIGHT_BYTES,
            "control_plane.max_in_flight_bytes",
        )?;
        let per_conn = "control_plane.max_in_flight_bytes_per_connection";
        if c.max_in_flight_bytes_per_connection > c.max_in_flight_bytes {
            return Err(ConfigError::new(
                per_conn,
                "must be at most control_plane.max_in_flight_bytes",
            ));
        }
        // A largest allowed Set (or Get reply) must fit, or it could never succeed.
        let b = &self.backend;
        let largest = b
            .max_value_bytes
            .saturating_add(b.max_key_bytes)
            .saturating_add(64 * 1024);
        if c.max_in_flight_bytes_per_connection < largest {
            return Err(ConfigError::new(
                per_conn,
                format!(
                    "must be at least backend.max_value_bytes + max_key_bytes + 64 KiB ({largest})"
                ),
            ));
        }
        timeout(c.request_read_timeout, "control_plane.request_read_timeout")?;
        timeout(c.idle_timeout, "control_plane.idle_timeout")?;
        timeout(c.keepalive_interval, "control_plane.keepalive_interval")?;
        timeout(c.keepalive_timeout, "control_plane.keepalive_timeout")?;
        Ok(())
    }

    fn validate_backend(&self) -> Result<(), ConfigError> {
        let b = &self.backend;
        within(b.max_key_bytes, MAX_KEY_BYTES, "backend.max_key_bytes")?;
        within(
            b.max_value_bytes,
            MAX_VALUE_BYTES,
            "backend.max_value_bytes",
        )?;
        within(b.max_batch_keys, MAX_BATCH_KEYS, "backend.max_batch_keys")?;
        within(b.pool_size, MAX_POOL_SIZE, "backend.pool_size")?;
        if b.min_idle_conns > MAX_POOL_SIZE {
            return Err(ConfigError::new(
                "backend.min_idle_conns",
                format!("must be at most {MAX_POOL_SIZE}"),
            ));
        }
        if b.max_retries > MAX_RETRIES {
            return Err(ConfigError::new(
                "backend.max_retries",
                format!("must be at most {MAX_RETRIES}"),
            ));
        }
        timeout(b.pool_timeout, "backend.pool_timeout")?;
        timeout(b.operation_timeout, "backend.operation_timeout")?;
        at_most(b.conn_max_idle_time, "backend.conn_max_idle_time")?;
        if b.default_ttl.0.is_some_and(|ttl| ttl > MAX_TTL) {
            return Err(ConfigError::new(
                "backend.default_ttl",
                format!("must be at most {}, or \"none\"", format_duration(MAX_TTL)),
            ));
        }
        let min_reply = b.max_value_bytes.saturating_add(REPLY_FRAMING);
        if b.max_reply_bytes < min_reply {
            return Err(ConfigError::new(
                "backend.max_reply_bytes",
                format!(
                    "must be at least max_value_bytes + 1 KiB ({min_reply}), so the largest value fits in a reply"
                ),
            ));
        }
        if b.max_reply_bytes > MAX_REPLY_BYTES {
            return Err(ConfigError::new(
                "backend.max_reply_bytes",
                format!("must be at most {MAX_REPLY_BYTES} (1 GiB)"),
            ));
        }
        if b.kind == BackendKind::Memory {
            return Ok(());
        }
        if b.address.trim().is_empty() {
            return Err(ConfigError::new(
                "backend.address",
                "must not be empty (REDIS_ADDRESS)",
            ));
        }
        address::parse_address(&b.address)
            .map_err(|reason| ConfigError::new("backend.address", reason))?;
        Ok(())
    }

    /// TLS settings for Vault with a plaintext address: fail closed.
    fn validate_vault_tls(&self) -> Result<(), ConfigError> {
        let v = &self.vault;
        if v.address.starts_with("http://") {
            let given = [
                ("vault.ca_file", &v.ca_file),
                ("vault.client_cert_file", &v.client_cert_file),
                ("vault.client_key_file", &v.client_key_file),
            ];
            if let Some((name, _)) = given.iter().find(|(_, f)| !f.is_empty()) {
                return Err(ConfigError::new(
                    *name,
                    "is set but vault.address (VAULT_ADDR) is http://: use https://, or remove it; refusing to talk to Vault in plaintext",
                ));
            }
        }
        Ok(())
    }

    fn validate_vault(&self) -> Result<(), ConfigError> {
        let v = &self.vault;
        if !(v.address.starts_with("http://") || v.address.starts_with("https://")) {
            return Err(ConfigError::new(
                "vault.address",
                "must start with http:// or https://",
            ));
        }
        if !(v.renew_fraction > 0.0 && v.renew_fraction < 1.0) {
            return Err(ConfigError::new(
                "vault.renew_fraction",
                "must be between 0 and 1",
            ));
        }
        if v.kv_path.is_empty() && !self.backend.vault_path.contains("/creds/") {
            return Err(ConfigError::new(
                "backend.vault_path",
                "must look like <mount>/creds/<role>",
            ));
        }
        if !v.kv_path.is_empty() && split_kv_path(&v.kv_path).is_none() {
            return Err(ConfigError::new(
                "vault.kv_path",
                "must look like <mount>/<path> (KV v2)",
            ));
        }
        timeout(v.request_timeout, "vault.request_timeout")?;
        self.validate_vault_tls()?;
        let a = &v.auth;
        match a.method {
            VaultAuthMethod::Token if a.token.is_empty() && a.token_file.is_empty() => {
                Err(ConfigError::new(
                    "vault.auth.token",
                    "token or token_file required (VAULT_TOKEN)",
                ))
            }
            VaultAuthMethod::Approle if a.role_id.is_empty() && a.role_id_file.is_empty() => Err(
                ConfigError::new("vault.auth.role_id", "role_id or role_id_file required"),
            ),
            VaultAuthMethod::Approle if a.secret_id.is_empty() && a.secret_id_file.is_empty() => {
                Err(ConfigError::new(
                    "vault.auth.secret_id",
                    "secret_id or secret_id_file required",
                ))
            }
            VaultAuthMethod::Kubernetes if a.role.is_empty() => Err(ConfigError::new(
                "vault.auth.role",
                "required for kubernetes login",
            )),
            VaultAuthMethod::Cert if v.client_cert_file.is_empty() => Err(ConfigError::new(
                "vault.client_cert_file",
                "required for cert login (with client_key_file)",
            )),
            _ => Ok(()),
        }
    }

    /// The config as YAML with every secret replaced by `[redacted]`.
    pub fn redacted_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn overlay_str(env: &HashMap<String, String>, var: &str, field: &mut String) {
    if let Some(v) = env.get(var) {
        *field = v.clone();
    }
}

fn overlay_parse<T: std::str::FromStr>(
    env: &HashMap<String, String>,
    var: &str,
    field: &mut T,
) -> Result<(), ConfigError> {
    if let Some(v) = env.get(var) {
        *field = v
            .trim()
            .parse()
            .map_err(|_| ConfigError::new(var, format!("cannot parse {v:?}")))?;
    }
    Ok(())
}

/// A file named by `field` must be readable (when given, or always when
/// `required`); read errors name the field, never the content.
fn readable(field: &str, path: &str, required: bool) -> Result<(), ConfigError> {
    if path.is_empty() {
        return match required {
            true => Err(ConfigError::new(field, "required when TLS is enabled")),
            false => Ok(()),
        };
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| ConfigError::new(field, format!("{path}: {e}")))
}

/// TLS material in `block` while its `enabled` is off.
fn tls_off(block: &str, given: &str, instead: &str) -> ConfigError {
    ConfigError::new(
        format!("{block}.enabled"),
        format!("must be true when {block}.{given} is set; refusing to {instead}"),
    )
}

/// A count limit: at least 1, at most `max`.
fn within(n: usize, max: usize, field: &str) -> Result<(), ConfigError> {
    if n == 0 || n > max {
        return Err(ConfigError::new(
            field,
            format!("must be between 1 and {max}"),
        ));
    }
    Ok(())
}

fn nonzero(d: Dur, field: &str) -> Result<(), ConfigError> {
    if d.0.is_zero() {
        return Err(ConfigError::new(field, "must be greater than 0"));
    }
    Ok(())
}

/// A timeout or interval: above zero and at most [`MAX_TIMEOUT`], so
/// `Instant::now() + d` cannot overflow anywhere it is used.
fn timeout(d: Dur, field: &str) -> Result<(), ConfigError> {
    nonzero(d, field)?;
    at_most(d, field)
}

fn at_most(d: Dur, field: &str) -> Result<(), ConfigError> {
    if d.0 > MAX_TIMEOUT {
        return Err(ConfigError::new(
            field,
            format!("must be at most {}", format_duration(MAX_TIMEOUT)),
        ));
    }
    Ok(())
}

// === Vault paths ===

/// Splits `kv_path` (`<mount>/<path>` or `<mount>/data/<path>`).
pub fn split_kv_path(kv_path: &str) -> Option<(String, String)> {
    let (mount, rest) = kv_path.trim_matches('/').split_once('/')?;
    let path = rest.strip_prefix("data/").unwrap_or(rest);
    (!mount.is_empty() && !path.is_empty()).then(|| (mount.to_string(), path.to_string()))
}

// === impl Dur ===

/// A duration written as `250ms`, `30s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
}

/// Parses `250ms`, `30s`, `5m`, `1h`, `1.5s`; a bare `0` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} needs a unit (ms, s, m, h)"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 250ms, 30s, 5m"))?;
    let scale = match unit {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{s:?} has unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(n * scale).map_err(|_| format!("{s:?} is out of range"))
}

fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

// === impl Ttl ===

/// A default TTL: a duration, or `none` for keys that never expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ttl(pub Option<Duration>);

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().eq_ignore_ascii_case("none") {
            return Ok(Ttl(None));
        }
        let d = parse_duration(&s).map_err(serde::de::Error::custom)?;
        if d < Duration::from_millis(1) {
            return Err(serde::de::Error::custom(
                "must be at least 1ms, or \"none\"",
            ));
        }
        Ok(Ttl(Some(d)))
    }
}

impl Serialize for Ttl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            None => s.serialize_str("none"),
            Some(d) => s.serialize_str(&format_duration(d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_paths_split_with_or_without_data() {
        let want = Some(("secret".to_string(), "redis/cache".to_string()));
        assert_eq!(split_kv_path("secret/redis/cache"), want);
        assert_eq!(split_kv_path("secret/data/redis/cache"), want);
        assert_eq!(split_kv_path("/secret/redis/cache/"), want);
        assert_eq!(split_kv_path("secret"), None);
        assert_eq!(split_kv_path("secret/"), None);
    }

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_and_env(yaml, &HashMap::new())
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = load("").expect("defaults are valid");
        assert_eq!(c.control_plane.port, 9092);
        assert_eq!(c.backend.address, "localhost:6379");
        assert_eq!(c.backend.key_prefix, "prism:");
        assert_eq!(c.backend.default_ttl, Ttl(Some(Duration::from_secs(300))));
        assert_eq!(c.backend.operation_timeout.0, Duration::from_millis(500));
        assert_eq!(c.backend.max_batch_keys, 1000);
    }

    #[test]
    fn transport_limits_have_defaults_and_are_validated() {
        let c = load("control_plane: { idle_timeout: 1s }\n").expect("valid");
        let cp = &c.control_plane;
        assert_eq!(cp.idle_timeout.0, Duration::from_secs(1));
        assert_eq!(cp.max_concurrent_streams, 256);
        assert_eq!(cp.max_in_flight_bytes, 256 * MIB);
        assert_eq!(cp.max_in_flight_bytes_per_connection, 64 * MIB);
        let repo = include_str!("../../config.yaml");
        let from_repo = load(repo).expect("config.yaml is valid");
        let (a, b) = (&from_repo.control_plane, &Config::default().control_plane);
        assert_eq!(a.max_connections, b.max_connections);
        assert_eq!(a.max_in_flight_bytes, b.max_in_flight_bytes);
        assert_eq!(a.request_read_timeout.0, b.request_read_timeout.0);
        assert_eq!(a.keepalive_timeout.0, b.keepalive_timeout.0);
        for (yaml, field) in [
            ("max_connections: 0", "control_plane.max_connections"),
            (
                "max_concurrent_streams: 0",
                "control_plane.max_concurrent_streams",
            ),
            (
                "max_in_flight_bytes: 1000",
                "control_plane.max_in_flight_bytes_per_connection",
            ),
            (
                "max_in_flight_bytes_per_connection: 1000",
                "control_plane.max_in_flight_bytes_per_connection",
            ),
            (
                "request_read_timeout: 0",
                "control_plane.request_read_timeout",
            ),
            ("idle_timeout: 0", "control_plane.idle_timeout"),
        ] {
            let err = load(&format!("control_plane: {{ {yaml} }}\n")).unwrap_err();
            assert_eq!(err.field, field, "{yaml}: {err}");
        }
    }

    #[test]
    fn unknown_field_is_named() {
        let err = load("backend:\n  adress: x\n").unwrap_err();
        assert!(err.to_string().contains("backend"), "{err}");
        assert!(err.to_string().contains("adress"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = load("backend:\n  pool_size: many\n").unwrap_err();
        assert!(err.to_string().contains("backend.pool_size"), "{err}");
    }

    #[test]
    fn bad_duration_names_the_field() {
        let err = load("backend:\n  operation_timeout: fast\n").unwrap_err();
        assert!(
            err.to_string().contains("backend.operation_timeout"),
            "{err}"
        );
    }

    #[test]
    fn missing_address_is_rejected() {
        let err = load("backend:\n  address: \"\"\n").unwrap_err();
        assert_eq!(err.field, "backend.address");
    }

    #[test]
    fn memory_backend_needs_no_address() {
        let c = load("backend:\n  kind: memory\n  address: \"\"\n").expect("valid");
        assert_eq!(c.backend.kind, BackendKind::Memory);
    }

    #[test]
    fn env_overlays_file() {
        let env = HashMap::from([
            (
                "REDIS_ADDRESS".to_string(),
                "redis://127.0.0.1:7000".to_string(),
            ),
            ("REDIS_DATABASE".to_string(), "3".to_string()),
            ("REDIS_PASSWORD".to_string(), "hunter2".to_string()),
            ("PRISM_LOG_LEVEL".to_string(), "debug".to_string()),
        ]);
        let c = Config::from_yaml_and_env("backend:\n  address: a:1\n", &env).expect("valid");
        assert_eq!(c.backend.address, "redis://127.0.0.1:7000");
        assert_eq!(c.backend.database, 3);
        assert_eq!(c.backend.password.expose(), "hunter2");
        assert_eq!(c.log.level, "debug");
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let env = HashMap::from([("REDIS_DATABASE".to_string(), "x".to_string())]);
        let err = Config::from_yaml_and_env("", &env).unwrap_err();
        assert_eq!(err.field, "REDIS_DATABASE");
    }

    #[test]
    fn secrets_never_print() {
        let yaml = "backend:\n  password: hunter2\nvault:\n  auth:\n    token: s.abc\n";
        let c = load(yaml).expect("valid");
        let debug = format!("{c:?}");
        let dump = c.redacted_yaml();
        for text in [debug, dump] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains("s.abc"), "{text}");
            assert!(text.contains("[redacted]"));
        }
    }

    #[test]
    fn durations_parse_in_common_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("300s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn default_ttl_accepts_none() {
        let c = load("backend:\n  default_ttl: none\n").expect("valid");
        assert_eq!(c.backend.default_ttl, Ttl(None));
        assert!(load("backend:\n  default_ttl: 0s\n").is_err());
    }

    #[test]
    fn zero_limits_are_rejected() {
        for field in [
            "max_key_bytes",
            "max_value_bytes",
            "max_batch_keys",
            "pool_size",
        ] {
            let err = load(&format!("backend:\n  {field}: 0\n")).unwrap_err();
            assert_eq!(err.field, format!("backend.{field}"));
        }
    }

    #[test]
    fn max_reply_bytes_must_hold_the_largest_value() {
        let c = load("backend:\n  max_value_bytes: 1000\n  max_reply_bytes: 2024\n");
        assert_eq!(c.expect("valid").backend.max_reply_bytes, 2024);
        let err = load("backend:\n  max_value_bytes: 1000\n  max_reply_bytes: 2023\n").unwrap_err();
        assert_eq!(err.field, "backend.max_reply_bytes");
        assert!(err.to_string().contains("2024"), "{err}");
        assert_eq!(Config::default().backend.max_reply_bytes, 64 << 20);
        let err = load("backend:\n  max_reply_bytes: 1073741825\n").unwrap_err();
        assert_eq!(err.field, "backend.max_reply_bytes");
    }

    #[test]
    fn vault_token_required_when_enabled() {
        let err = load("backend:\n  vault_enabled: true\n").unwrap_err();
        assert_eq!(err.field, "vault.auth.token");
    }

    #[test]
    fn vault_approle_and_kv_are_validated() {
        let base = "backend:\n  vault_enabled: true\nvault:\n";
        let err = load(&format!(
            "{base}  auth: {{ method: approle, role_id: r }}\n"
        ))
        .unwrap_err();
        assert_eq!(err.field, "vault.auth.secret_id");
        let env = HashMap::from([
            ("VAULT_ROLE_ID".to_string(), "r".to_string()),
            ("VAULT_SECRET_ID".to_string(), "s-secret".to_string()),
        ]);
        let c = Config::from_yaml_and_env(&format!("{base}  auth: {{ method: approle }}\n"), &env)
            .expect("role and secret id from env");
        assert_eq!(c.vault.auth.secret_id.expose(), "s-secret");
        let yaml = format!("{base}  kv_path: secret\n  auth: {{ token: t }}\n");
        assert_eq!(load(&yaml).unwrap_err().field, "vault.kv_path");
        let yaml = format!(
            "{base}  kv_path: secret/redis\n  request_timeout: 2s\n  auth: {{ token: t }}\n"
        );
        let c = load(&yaml).expect("kv path");
        assert_eq!(c.vault.request_timeout.0, Duration::from_secs(2));
        let yaml = format!("{base}  auth: {{ method: cert }}\n");
        assert_eq!(load(&yaml).unwrap_err().field, "vault.client_cert_file");
        let yaml = format!("{base}  request_timeout: 0s\n  auth: {{ token: t }}\n");
        assert_eq!(load(&yaml).unwrap_err().field, "vault.request_timeout");
    }

    /// Each block written with one field keeps every other documented
    /// default (a derived `Default` on a block gave zeros here).
    #[test]
    fn partial_blocks_keep_their_defaults() {
        let d = Config::default();
        let c = load("plugin: { name: other }\n").expect("plugin");
        assert_eq!(c.plugin.version, d.plugin.version);
        let c = load("control_plane: { port: 1 }\n").expect("control_plane");
        assert_eq!(
            (
                c.control_plane.listen.as_str(),
                c.control_plane.drain_timeout
            ),
            ("127.0.0.1", Dur::secs(10))
        );
        let c = load("control_plane: { tls: { enabled: false } }\n").expect("tls");
        assert_eq!(c.control_plane.tls, ServerTls::default());
        assert_eq!(c.control_plane.tls.reload_interval, Dur::secs(5));
        let c = load("log: { format: text }\n").expect("log");
        assert_eq!(c.log.level, "info");
        let c = load("backend: { database: 1 }\n").expect("backend");
        assert_eq!(c.backend.max_value_bytes, 4 * 1024 * 1024);
        assert_eq!(c.backend.operation_timeout, Dur(Duration::from_millis(500)));
        let c = load("backend: { tls: { enabled: true } }\n").expect("backend.tls");
        assert_eq!(
            c.backend.tls,
            RedisTls {
                enabled: true,
                ..RedisTls::default()
            }
        );
        let c = load("vault: { namespace: x }\n").expect("vault");
        assert_eq!(
            (c.vault.renew_fraction, c.vault.request_timeout),
            (0.67, Dur::secs(5))
        );
        let c = load("vault: { auth: { mount: m } }\n").expect("vault.auth");
        assert_eq!(c.vault.auth.method, VaultAuthMethod::Token);
    }

    #[test]
    fn tls_files_without_enabled_name_the_switch() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let f = file.path().display();
        let err = load(&format!(
            "control_plane: {{ tls: {{ client_ca_file: \"{f}\" }} }}\n"
        ))
        .unwrap_err();
        assert_eq!(err.field, "control_plane.tls.enabled");
        assert!(err.reason.contains("client_ca_file"), "{err}");
        let err = load("backend: { tls: { insecure_skip_verify: true } }\n").unwrap_err();
        assert_eq!(err.field, "backend.tls.enabled");
        // rediss:// is TLS switched on: the block applies.
        let c = load(&format!(
            "backend: {{ address: \"rediss://h:1\", tls: {{ ca_file: \"{f}\" }} }}\n"
        ))
        .expect("rediss:// turns TLS on");
        assert!(c.tls_served().redis_tls);
        // Unused by the memory backend: no Redis connection to protect.
        load(&format!(
            "backend: {{ kind: memory, tls: {{ ca_file: \"{f}\" }} }}\n"
        ))
        .expect("memory");
        let vault = "backend: { vault_enabled: true }\nvault: { auth: { token: t }, ";
        let err = load(&format!("{vault}ca_file: \"{f}\" }}\n")).unwrap_err();
        assert_eq!(err.field, "vault.ca_file");
        load(&format!(
            "{vault}address: \"https://v:1\", ca_file: \"{f}\" }}\n"
        ))
        .expect("https vault");
    }

    #[test]
    fn tls_served_is_what_is_configured() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let f = file.path().display();
        let c = load("").expect("defaults");
        let off = TlsServed {
            grpc_tls: false,
            mtls: false,
            redis_tls: false,
        };
        assert_eq!(c.tls_served(), off);
        let yaml = format!(
            "control_plane: {{ tls: {{ enabled: true, cert_file: \"{f}\", key_file: \"{f}\" }} }}\n"
        );
        let c = load(&yaml).expect("tls");
        assert_eq!(
            c.tls_served(),
            TlsServed {
                grpc_tls: true,
                ..off
            }
        );
        let yaml = format!(
            "control_plane: {{ tls: {{ enabled: true, cert_file: \"{f}\", key_file: \"{f}\", client_ca_file: \"{f}\" }} }}\n"
        );
        let c = load(&yaml).expect("mtls");
        assert_eq!(
            c.tls_served(),
            TlsServed {
                grpc_tls: true,
                mtls: true,
                redis_tls: false
            }
        );
    }

    #[test]
    fn address_credentials_move_to_username_and_password() {
        let c = load("backend: { address: \"redis://cache:p%40ss%2Fw@127.0.0.1:6379/0\" }\n")
            .expect("valid");
        assert_eq!(c.backend.address, "redis://127.0.0.1:6379/0");
        assert_eq!(c.backend.username, "cache");
        assert_eq!(c.backend.password.expose(), "p@ss/w");
        let c = load("backend: { address: \"rediss://:a@b@h:1\" }\n").expect("password only");
        assert_eq!(
            (c.backend.address.as_str(), c.backend.username.as_str()),
            ("rediss://h:1", "")
        );
        assert_eq!(c.backend.password.expose(), "a@b");
        let err = load("backend: { address: \"u:s3cret@h:1\", password: x }\n").unwrap_err();
        assert_eq!(err.field, "backend.address");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = load("backend: { address: \"redis://u:s3cret@h:1\", vault_enabled: true }\n")
            .unwrap_err();
        assert_eq!(err.field, "backend.address");
        let err = load("backend: { address: \"redis://u:s3%zzcret@h:1\" }\n").unwrap_err();
        assert!(!err.to_string().contains("s3"), "{err}");
        // A config built in code cannot smuggle them past validation.
        let mut c = Config::default();
        c.backend.address = "redis://u:s3cret@h:1".into();
        let err = c.validate().unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn limits_are_capped() {
        for (yaml, field) in [
            (
                "backend: { max_value_bytes: 536870913 }",
                "backend.max_value_bytes",
            ),
            ("backend: { max_key_bytes: 65537 }", "backend.max_key_bytes"),
            (
                "backend: { max_batch_keys: 100001 }",
                "backend.max_batch_keys",
            ),
            ("backend: { pool_size: 1025 }", "backend.pool_size"),
            ("backend: { max_retries: 101 }", "backend.max_retries"),
            (
                "backend: { max_reply_bytes: 1073741825 }",
                "backend.max_reply_bytes",
            ),
            ("backend: { default_ttl: 8761h }", "backend.default_ttl"),
            ("backend: { pool_timeout: 25h }", "backend.pool_timeout"),
            (
                "control_plane: { max_concurrent_requests: 1000001 }",
                "control_plane.max_concurrent_requests",
            ),
            (
                "control_plane: { drain_timeout: 25h }",
                "control_plane.drain_timeout",
            ),
            (
                "control_plane: { max_connections: 1000001 }",
                "control_plane.max_connections",
            ),
            (
                "control_plane: { max_concurrent_streams: 1000001 }",
                "control_plane.max_concurrent_streams",
            ),
            (
                "control_plane: { max_in_flight_bytes: 68719476737 }",
                "control_plane.max_in_flight_bytes",
            ),
            (
                "control_plane: { idle_timeout: 25h }",
                "control_plane.idle_timeout",
            ),
        ] {
            assert_eq!(load(yaml).unwrap_err().field, field, "{yaml}");
        }
        let at_max = "backend: { max_value_bytes: 536870912, max_key_bytes: 65536, max_batch_keys: 100000, max_reply_bytes: 1073741824, default_ttl: 8760h, pool_timeout: 24h }\n\
                      control_plane: { max_connections: 1000000, max_concurrent_streams: 1000000, max_in_flight_bytes: 68719476736, max_in_flight_bytes_per_connection: 1073741824, idle_timeout: 24h }";
        load(at_max).expect("the maxima themselves are accepted");
    }

    #[test]
    fn path_prefers_flag_then_env_then_default() {
        let env = HashMap::from([(CONFIG_ENV.to_string(), "/etc/p.yaml".to_string())]);
        assert_eq!(
            Config::resolve_path(Some("x.yaml".into()), &env),
            PathBuf::from("x.yaml")
        );
        assert_eq!(
            Config::resolve_path(None, &env),
            PathBuf::from("/etc/p.yaml")
        );
        assert_eq!(
            Config::resolve_path(None, &HashMap::new()),
            PathBuf::from(DEFAULT_PATH)
        );
    }
}
