//! The `backend` section: which backend serves the cache, the Redis address
//! and credentials, the pool, the input and reply limits, and TLS to Redis
//! ([`RedisTls`]). Schema, documented defaults and validation of the
//! section live here; dialing and the pool are `backend`'s (the crate
//! module), not config's.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    config::{
        address,
        duration::{Dur, Ttl, format_duration},
        error::ConfigError,
        rules::{at_most, cert_and_key, readable, timeout, tls_off, within},
        topology::Topology,
    },
    secret::Secret,
};

/// Upper bounds on the limits: arithmetic on them (request sizes, deadlines)
/// cannot overflow, and a typo cannot ask for terabytes. README lists them.
pub const MAX_VALUE_BYTES: usize = 512 * 1024 * 1024; // Redis' own bulk limit
pub const MAX_KEY_BYTES: usize = 64 * 1024;
/// Bounds `backend.max_reply_bytes`: room for the largest value and then some.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024 * 1024;
pub const MAX_BATCH_KEYS: usize = 100_000;
pub const MAX_POOL_SIZE: usize = 1024;
pub const MAX_RETRIES: u32 = 100;
/// The longest cache TTL: `backend.default_ttl` and a request's `ttl`
/// (365 days; beyond a year a "cache" entry is a mistake).
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Room for RESP framing on top of the largest value in one reply
/// (`$4194304\r\n` ... `\r\n`, an MGet's array header).
const REPLY_FRAMING: usize = 1024;

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
    /// Standalone, Sentinel or Cluster (see `topology`).
    pub topology: Topology,
    pub address: String,
    /// Sentinel: the sentinels; cluster: seed nodes.
    pub addresses: Vec<String>,
    /// Sentinel: the name of the monitored master.
    pub sentinel_master: String,
    /// Sentinel: AUTH to the sentinels themselves (not the data nodes).
    pub sentinel_username: String,
    pub sentinel_password: Secret,
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
    /// Hot keys answered from process memory (README, "Near cache").
    pub near_cache: NearCacheConfig,
}

/// The near cache: values held in process, kept coherent by Redis'
/// invalidation messages (`CLIENT TRACKING`). The memory backend ignores it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NearCacheConfig {
    pub enabled: bool,
    /// Keys + values (+ a fixed overhead per entry) held at most.
    pub max_bytes: usize,
    /// No entry lives longer here, whatever its Redis TTL.
    pub max_ttl: Dur,
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

// === defaults ===
//
// Hand-written with the documented values: `#[serde(default)]` fills a
// partly written block from these (a derived `Default` gives zeros).

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: BackendKind::Redis,
            topology: Topology::Standalone,
            address: "localhost:6379".into(),
            addresses: Vec::new(),
            sentinel_master: String::new(),
            sentinel_username: String::new(),
            sentinel_password: Secret::default(),
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
            operation_timeout: Dur::millis(500),
            key_prefix: "prism:".into(),
            default_ttl: Ttl(Some(Duration::from_secs(300))),
            max_key_bytes: 1024,
            max_value_bytes: 4 * 1024 * 1024,
            max_batch_keys: 1000,
            max_reply_bytes: 64 * 1024 * 1024,
            tls: RedisTls::default(),
            near_cache: NearCacheConfig::default(),
        }
    }
}

impl Default for NearCacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_bytes: 64 * 1024 * 1024,
            max_ttl: Dur::secs(60),
        }
    }
}

// Written out although derivable: the rule is one hand-written impl per
// block, so a new field gets its documented default, not a derived zero.
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

// === loading and validation ===

impl BackendConfig {
    /// Connections to Redis use TLS: switched on, or implied by `rediss://`.
    pub(crate) fn tls_on(&self) -> bool {
        let implied = address::parse_address(&self.address).is_ok_and(|(_, _, tls)| tls);
        self.kind == BackendKind::Redis && (self.tls.enabled || implied)
    }

    /// Moves a username/password written into `backend.address`
    /// (`redis://user:pw@host:port`, also from `REDIS_ADDRESS`) into
    /// `backend.username`/`backend.password`, so the address that is logged
    /// and printed never carries them and AUTH is sent with them.
    pub(crate) fn take_address_credentials(&mut self) -> Result<(), ConfigError> {
        let split = address::split_credentials(&self.address)
            .map_err(|reason| ConfigError::new("backend.address", reason))?;
        let Some(split) = split else {
            return Ok(());
        };
        if !self.username.is_empty() || !self.password.is_empty() {
            return Err(ConfigError::new(
                "backend.address",
                "carries credentials and backend.username/password (REDIS_USERNAME/REDIS_PASSWORD) are set too: give them in one place",
            ));
        }
        if self.vault_enabled {
            return Err(ConfigError::new(
                "backend.address",
                "carries credentials but backend.vault_enabled fetches them from Vault: remove them from the address",
            ));
        }
        self.address = split.address;
        self.username = split.username;
        self.password = split.password;
        Ok(())
    }

    /// Limits, timers, the reply cap and (for Redis) the address.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_limits()?;
        timeout(self.pool_timeout, "backend.pool_timeout")?;
        timeout(self.operation_timeout, "backend.operation_timeout")?;
        at_most(self.conn_max_idle_time, "backend.conn_max_idle_time")?;
        if self.default_ttl.0.is_some_and(|ttl| ttl > MAX_TTL) {
            return Err(ConfigError::new(
                "backend.default_ttl",
                format!("must be at most {}, or \"none\"", format_duration(MAX_TTL)),
            ));
        }
        self.validate_reply_cap()?;
        self.near_cache.validate()
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        within(self.max_key_bytes, MAX_KEY_BYTES, "backend.max_key_bytes")?;
        within(
            self.max_value_bytes,
            MAX_VALUE_BYTES,
            "backend.max_value_bytes",
        )?;
        within(
            self.max_batch_keys,
            MAX_BATCH_KEYS,
            "backend.max_batch_keys",
        )?;
        within(self.pool_size, MAX_POOL_SIZE, "backend.pool_size")?;
        if self.min_idle_conns > MAX_POOL_SIZE {
            return Err(ConfigError::new(
                "backend.min_idle_conns",
                format!("must be at most {MAX_POOL_SIZE}"),
            ));
        }
        if self.max_retries > MAX_RETRIES {
            return Err(ConfigError::new(
                "backend.max_retries",
                format!("must be at most {MAX_RETRIES}"),
            ));
        }
        Ok(())
    }

    fn validate_reply_cap(&self) -> Result<(), ConfigError> {
        let min_reply = self.max_value_bytes.saturating_add(REPLY_FRAMING);
        if self.max_reply_bytes < min_reply {
            return Err(ConfigError::new(
                "backend.max_reply_bytes",
                format!(
                    "must be at least max_value_bytes + 1 KiB ({min_reply}), so the largest value fits in a reply"
                ),
            ));
        }
        if self.max_reply_bytes > MAX_REPLY_BYTES {
            return Err(ConfigError::new(
                "backend.max_reply_bytes",
                format!("must be at most {MAX_REPLY_BYTES} (1 GiB)"),
            ));
        }
        Ok(())
    }

    /// TLS to Redis fails closed: material given while TLS is off stops
    /// start-up naming the switch, instead of dialing plaintext.
    pub(crate) fn validate_tls(&self) -> Result<(), ConfigError> {
        let r = &self.tls;
        if self.kind == BackendKind::Redis && !self.tls_on() {
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
        cert_and_key(
            "backend.tls",
            ("cert_file", &r.cert_file),
            ("key_file", &r.key_file),
        )
    }
}

// === near cache ===

/// Bounds `backend.near_cache.max_bytes`: the near cache is for hot keys,
/// not a second Redis in the sidecar.
pub const MAX_NEAR_CACHE_BYTES: usize = 16 * 1024 * 1024 * 1024;

impl NearCacheConfig {
    /// With the near cache on, a size and a lifetime that can hold something.
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        within(
            self.max_bytes,
            MAX_NEAR_CACHE_BYTES,
            "backend.near_cache.max_bytes",
        )?;
        timeout(self.max_ttl, "backend.near_cache.max_ttl")
    }
}

// === topology ===

impl BackendConfig {
    /// The address fields the topology reads, and the combinations that
    /// cannot work. `dynamic_vault` is true when Vault issues database
    /// users (not a KV secret).
    pub(crate) fn validate_topology(&self, dynamic_vault: bool) -> Result<(), ConfigError> {
        match self.topology {
            Topology::Standalone => self.validate_standalone(),
            Topology::Sentinel => {
                self.validate_addresses("sentinels")?;
                if self.sentinel_master.trim().is_empty() {
                    return Err(ConfigError::new(
                        "backend.sentinel_master",
                        "must name the master the sentinels monitor when backend.topology is sentinel (REDIS_SENTINEL_MASTER)",
                    ));
                }
                self.validate_static_credentials(dynamic_vault)
            }
            Topology::Cluster => {
                self.validate_addresses("seed nodes")?;
                if self.database != 0 {
                    return Err(ConfigError::new(
                        "backend.database",
                        "must be 0 when backend.topology is cluster: Redis Cluster has only database 0",
                    ));
                }
                self.validate_static_credentials(dynamic_vault)
            }
        }
    }

    fn validate_standalone(&self) -> Result<(), ConfigError> {
        if !self.addresses.is_empty() {
            return Err(ConfigError::new(
                "backend.addresses",
                "is for sentinel and cluster topologies; a standalone Redis takes backend.address (or set backend.topology)",
            ));
        }
        if self.address.trim().is_empty() {
            return Err(ConfigError::new(
                "backend.address",
                "must not be empty (REDIS_ADDRESS)",
            ));
        }
        address::parse_address(&self.address)
            .map(|_| ())
            .map_err(|reason| ConfigError::new("backend.address", reason))
    }

    fn validate_addresses(&self, what: &str) -> Result<(), ConfigError> {
        let topology = self.topology;
        if self.addresses.is_empty() {
            return Err(ConfigError::new(
                "backend.addresses",
                format!(
                    "must list the {what} when backend.topology is {topology} (REDIS_ADDRESSES, comma-separated); backend.address is for standalone only"
                ),
            ));
        }
        for (i, a) in self.addresses.iter().enumerate() {
            let field = format!("backend.addresses[{i}]");
            if address::split_credentials(a).is_ok_and(|c| c.is_some()) {
                return Err(ConfigError::new(
                    field,
                    "must not carry credentials: use backend.username/password (and sentinel_username/sentinel_password for the sentinels)",
                ));
            }
            address::parse_address(a).map_err(|reason| ConfigError::new(field, reason))?;
        }
        Ok(())
    }

    /// ACL users are per node and not replicated, and Vault's Redis
    /// database plugin creates a user on one host: a dynamic user would
    /// exist on one node of a cluster or on a master that may be gone after
    /// the next failover.
    fn validate_static_credentials(&self, dynamic_vault: bool) -> Result<(), ConfigError> {
        if dynamic_vault {
            return Err(ConfigError::new(
                "backend.vault_enabled",
                format!(
                    "dynamic Vault users work with backend.topology standalone only (the database plugin creates the user on one server; a {} has several): use static credentials or a KV v2 secret (vault.kv_path)",
                    self.topology
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, tests::load};

    use super::*;

    #[test]
    fn near_cache_is_off_by_default_and_checked_only_when_on() {
        let c = load("").expect("valid");
        assert_eq!(c.backend.near_cache, NearCacheConfig::default());
        assert!(!c.backend.near_cache.enabled);
        assert_eq!(c.backend.near_cache.max_bytes, 64 << 20);
        assert_eq!(c.backend.near_cache.max_ttl, Dur::secs(60));
        // Off: nothing to check.
        load("backend:\n  near_cache: { max_bytes: 0, max_ttl: 0s }\n").expect("off");
        let on = |fields: &str| {
            load(&format!(
                "backend:\n  near_cache: {{ enabled: true, {fields} }}\n"
            ))
            .expect_err("refused")
            .field
        };
        assert_eq!(on("max_bytes: 0"), "backend.near_cache.max_bytes");
        assert_eq!(on("max_bytes: 17179869185"), "backend.near_cache.max_bytes");
        assert_eq!(on("max_ttl: 0s"), "backend.near_cache.max_ttl");
        assert_eq!(on("max_ttl: 25h"), "backend.near_cache.max_ttl");
        let c =
            load("backend:\n  near_cache: { enabled: true, max_bytes: 1024, max_ttl: 250ms }\n")
                .expect("valid");
        assert_eq!(c.backend.near_cache.max_ttl, Dur::millis(250));
        assert!(
            load("backend:\n  near_cache: { size: 1 }\n").is_err(),
            "unknown field"
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
}
