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
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where the config file is looked for when `--config` is not given.
pub const CONFIG_ENV: &str = "PRISM_PLUGIN_CONFIG";
/// The last resort path.
pub const DEFAULT_PATH: &str = "config.yaml";

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
    ("VAULT_ADDR", "vault.address"),
    ("VAULT_TOKEN", "vault.auth.token"),
    ("VAULT_CACERT", "vault.ca_file"),
    ("VAULT_NAMESPACE", "vault.namespace"),
    ("VAULT_ROLE_ID", "vault.auth.role_id"),
    ("VAULT_SECRET_ID", "vault.auth.secret_id"),
    ("VAULT_CLIENT_CERT", "vault.client_cert_file"),
    ("VAULT_CLIENT_KEY", "vault.client_key_file"),
];

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
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub plugin: PluginConfig,
    pub control_plane: ControlPlaneConfig,
    pub log: LogConfig,
    pub backend: BackendConfig,
    pub vault: VaultConfig,
}

/// Identity of the plugin, used as a health service name.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginConfig {
    pub name: String,
    pub version: String,
}

/// The gRPC port and how it admits and drains requests.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    pub tls: RedisTls,
}

/// How the plugin reaches Vault/OpenBao and logs in.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
            listen: "0.0.0.0".into(),
            drain_timeout: Dur::secs(10),
            max_concurrent_requests: 1024,
            health_interval: Dur::secs(5),
            tls: ServerTls {
                reload_interval: Dur::secs(5),
                ..ServerTls::default()
            },
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

    /// Checks every constraint the schema cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_control_plane()?;
        self.validate_backend()?;
        self.validate_tls()?;
        if self.backend.kind == BackendKind::Redis && self.backend.vault_enabled {
            self.validate_vault()?;
        }
        crate::telemetry::parse_level(&self.log.level)
            .map_err(|reason| ConfigError::new("log.level", reason))?;
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let t = &self.control_plane.tls;
        if t.enabled {
            readable("control_plane.tls.cert_file", &t.cert_file, true)?;
            readable("control_plane.tls.key_file", &t.key_file, true)?;
            readable("control_plane.tls.client_ca_file", &t.client_ca_file, false)?;
            nonzero(t.reload_interval, "control_plane.tls.reload_interval")?;
        }
        let r = &self.backend.tls;
        readable("backend.tls.ca_file", &r.ca_file, false)?;
        readable("backend.tls.cert_file", &r.cert_file, false)?;
        readable("backend.tls.key_file", &r.key_file, false)?;
        if r.cert_file.is_empty() != r.key_file.is_empty() {
            return Err(ConfigError::new(
                "backend.tls.key_file",
                "cert_file and key_file go together",
            ));
        }
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

    fn validate_control_plane(&self) -> Result<(), ConfigError> {
        let c = &self.control_plane;
        c.listen.parse::<IpAddr>().map_err(|_| {
            ConfigError::new("control_plane.listen", "must be an IP address like 0.0.0.0")
        })?;
        positive(
            c.max_concurrent_requests,
            "control_plane.max_concurrent_requests",
        )?;
        nonzero(c.drain_timeout, "control_plane.drain_timeout")?;
        nonzero(c.health_interval, "control_plane.health_interval")?;
        self.validate_transport()?;
        if self.plugin.name.is_empty() {
            return Err(ConfigError::new("plugin.name", "must not be empty"));
        }
        Ok(())
    }

    /// The connection and memory limits of the plugin's own port.
    fn validate_transport(&self) -> Result<(), ConfigError> {
        let c = &self.control_plane;
        positive(c.max_connections, "control_plane.max_connections")?;
        positive(
            c.max_concurrent_streams as usize,
            "control_plane.max_concurrent_streams",
        )?;
        positive(c.max_in_flight_bytes, "control_plane.max_in_flight_bytes")?;
        let per_conn = "control_plane.max_in_flight_bytes_per_connection";
        if c.max_in_flight_bytes_per_connection > c.max_in_flight_bytes {
            return Err(ConfigError::new(
                per_conn,
                "must be at most control_plane.max_in_flight_bytes",
            ));
        }
        // A largest allowed Set (or Get reply) must fit, or it could never succeed.
        let b = &self.backend;
        let largest = b.max_value_bytes.saturating_add(b.max_key_bytes) + 64 * 1024;
        if c.max_in_flight_bytes_per_connection < largest {
            return Err(ConfigError::new(
                per_conn,
                format!(
                    "must be at least backend.max_value_bytes + max_key_bytes + 64 KiB ({largest})"
                ),
            ));
        }
        nonzero(c.request_read_timeout, "control_plane.request_read_timeout")?;
        nonzero(c.idle_timeout, "control_plane.idle_timeout")?;
        nonzero(c.keepalive_interval, "control_plane.keepalive_interval")?;
        nonzero(c.keepalive_timeout, "control_plane.keepalive_timeout")?;
        Ok(())
    }

    fn validate_backend(&self) -> Result<(), ConfigError> {
        let b = &self.backend;
        positive(b.max_key_bytes, "backend.max_key_bytes")?;
        positive(b.max_value_bytes, "backend.max_value_bytes")?;
        positive(b.max_batch_keys, "backend.max_batch_keys")?;
        if b.max_value_bytes + b.max_key_bytes > 512 * 1024 * 1024 {
            return Err(ConfigError::new(
                "backend.max_value_bytes",
                "must be at most 512 MiB (Redis' limit)",
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
        crate::backend::redis::parse_address(&b.address)
            .map_err(|reason| ConfigError::new("backend.address", reason))?;
        positive(b.pool_size, "backend.pool_size")?;
        if b.pool_size > 1024 {
            return Err(ConfigError::new(
                "backend.pool_size",
                "must be at most 1024",
            ));
        }
        nonzero(b.pool_timeout, "backend.pool_timeout")?;
        nonzero(b.operation_timeout, "backend.operation_timeout")?;
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
        if !v.kv_path.is_empty() && crate::credentials::vault::split_kv_path(&v.kv_path).is_none() {
            return Err(ConfigError::new(
                "vault.kv_path",
                "must look like <mount>/<path> (KV v2)",
            ));
        }
        nonzero(v.request_timeout, "vault.request_timeout")?;
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

fn positive(n: usize, field: &str) -> Result<(), ConfigError> {
    if n == 0 {
        return Err(ConfigError::new(field, "must be greater than 0"));
    }
    Ok(())
}

fn nonzero(d: Dur, field: &str) -> Result<(), ConfigError> {
    if d.0.is_zero() {
        return Err(ConfigError::new(field, "must be greater than 0"));
    }
    Ok(())
}

// === impl Secret ===

/// A string that never prints: `Debug`, `Display` and serialisation show
/// `[redacted]`, so a config dump or a log line cannot leak it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "[redacted]" })
    }
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
        let repo = include_str!("../config.yaml");
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
