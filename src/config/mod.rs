//! Configuration: the whole [`Config`] and how it is loaded — parse the file
//! (unknown fields are errors), overlay the environment ([`ENV_VARS`]), move
//! credentials out of the Redis address, validate each section. Any failure
//! is a [`ConfigError`] whose one-line message names the field, so `main`
//! can print it and exit before a socket opens. Owns no I/O besides reading
//! the file and the environment.
//!
//! Each section's schema, documented defaults and validation live in its own
//! file: `control_plane.rs`, `backend.rs`, `vault.rs`, `log.rs`; what they
//! share in `duration.rs`, `address.rs`, `rules.rs`, `error.rs`; the
//! environment table in `env.rs`. Their public items are re-exported here,
//! so `config::{Dur, RedisTls, ...}` is the path.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use crate::secret::Secret;

pub mod address;
mod backend;
mod control_plane;
mod duration;
mod env;
mod error;
pub mod log;
mod rules;
mod topology;
mod vault;

pub use backend::{
    BackendConfig, BackendKind, MAX_BATCH_KEYS, MAX_KEY_BYTES, MAX_NEAR_CACHE_BYTES, MAX_POOL_SIZE,
    MAX_REPLY_BYTES, MAX_RETRIES, MAX_TTL, MAX_VALUE_BYTES, NearCacheConfig, RedisTls,
};
pub use control_plane::{
    ControlPlaneConfig, MAX_CONCURRENT_REQUESTS, MAX_CONCURRENT_STREAMS, MAX_CONNECTIONS,
    MAX_IN_FLIGHT_BYTES, ServerTls,
};
pub use duration::{Dur, Ttl, parse_duration};
pub use env::{ENV_VARS, EnvVar};
pub use error::ConfigError;
pub use log::{LogConfig, LogFormat};
pub use rules::MAX_TIMEOUT;
pub use topology::Topology;
pub use vault::{VaultAuthConfig, VaultAuthMethod, VaultConfig, split_kv_path};

/// Where the config file is looked for when `--config` is not given.
pub const CONFIG_ENV: &str = "PRISM_PLUGIN_CONFIG";
/// The last resort path.
pub const DEFAULT_PATH: &str = "config.yaml";

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

// === defaults ===
//
// Every block has a hand-written `Default` with its documented values (in
// its section's file), and `#[serde(default)]` fills a partly written block
// from it: a derived `Default` would give zeros (a 0 s reload interval) to
// whatever a block leaves out. Tests check config.yaml against these, field
// by field, and that any one field written alone keeps all the others.

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
        env::overlay(&mut config, env)?;
        config.backend.take_address_credentials()?;
        config.validate()?;
        Ok(config)
    }

    fn parse(yaml: &str) -> Result<Self, ConfigError> {
        if yaml.trim().is_empty() {
            return Ok(Self::default());
        }
        let de = serde_norway::Deserializer::from_str(yaml);
        serde_path_to_error::deserialize(de).map_err(|e| field_error(e, "(file)"))
    }

    /// A config given as a JSON object (Prism's `Initialize`): the same
    /// schema as the YAML file (unknown fields are errors), the address'
    /// credentials moved out and the same validation; no environment.
    pub fn from_json(value: serde_json::Value) -> Result<Self, ConfigError> {
        let mut config: Self =
            serde_path_to_error::deserialize(value).map_err(|e| field_error(e, "(config)"))?;
        config.backend.take_address_credentials()?;
        config.validate()?;
        Ok(config)
    }

    /// The secret fields by dotted path: their serialised form is redacted,
    /// so comparing configs compares these directly.
    pub fn secrets(&self) -> [(&'static str, &Secret); 4] {
        [
            ("backend.password", &self.backend.password),
            ("backend.sentinel_password", &self.backend.sentinel_password),
            ("vault.auth.token", &self.vault.auth.token),
            ("vault.auth.secret_id", &self.vault.auth.secret_id),
        ]
    }

    /// What TLS the plugin actually uses. The server, the Redis pool and the
    /// start-up line all read this one decision, so the log cannot claim TLS
    /// that is not served. (Validation refuses TLS material without TLS on.)
    pub fn tls_served(&self) -> TlsServed {
        let cp = &self.control_plane.tls;
        TlsServed {
            grpc_tls: cp.enabled,
            mtls: cp.enabled && !cp.client_ca_file.is_empty(),
            redis_tls: self.backend.tls_on(),
        }
    }

    /// Checks every constraint the schema cannot express, section by
    /// section, in an order that keeps which error a config with several
    /// faults reports.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.control_plane.validate()?;
        if self.plugin.name.is_empty() {
            return Err(ConfigError::new("plugin.name", "must not be empty"));
        }
        self.backend.validate()?;
        if self.backend.kind == BackendKind::Redis {
            let dynamic_vault = self.backend.vault_enabled && self.vault.kv_path.is_empty();
            self.backend.validate_topology(dynamic_vault)?;
        }
        // After the backend: the budgets must hold its largest request.
        let b = &self.backend;
        self.control_plane
            .validate_transport(b.max_value_bytes, b.max_key_bytes)?;
        self.control_plane.tls.validate()?;
        self.backend.validate_tls()?;
        self.vault.validate_client_cert()?;
        if b.kind == BackendKind::Redis && b.vault_enabled {
            self.vault.validate(&b.vault_path)?;
        }
        self.log.validate()
    }

    /// The config as YAML with every secret replaced by `[redacted]`.
    pub fn redacted_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// A deserialisation error as a [`ConfigError`] naming the field
/// (`whole` when the document itself is at fault).
fn field_error<E: std::fmt::Display>(e: serde_path_to_error::Error<E>, whole: &str) -> ConfigError {
    let field = e.path().to_string();
    let inner = e.into_inner().to_string();
    // serde_norway may prefix its own (shorter) path; keep the reason.
    let reason = match inner.split_once(": ") {
        Some((prefix, rest)) if !prefix.contains(' ') => rest.to_string(),
        _ => inner,
    };
    let field = if field == "." {
        whole.to_string()
    } else {
        field
    };
    ConfigError::new(field, reason)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_norway::Value;

    use super::*;

    /// Loads `yaml` with no environment (the section files' tests use it too).
    pub(super) fn load(yaml: &str) -> Result<Config, ConfigError> {
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

    /// Every leaf of a value tree, as (dotted path, value).
    fn leaves(value: &Value, path: &str, out: &mut Vec<(String, Value)>) {
        match value {
            Value::Mapping(m) => {
                for (k, v) in m {
                    let key = k.as_str().expect("string keys");
                    let path = if path.is_empty() {
                        key.to_string()
                    } else {
                        format!("{path}.{key}")
                    };
                    leaves(v, &path, out);
                }
            }
            leaf => out.push((path.to_string(), leaf.clone())),
        }
    }

    fn tree(config: &Config) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        leaves(
            &serde_norway::to_value(config).expect("to value"),
            "",
            &mut out,
        );
        out
    }

    /// A document holding only `value` at the dotted `path`.
    fn only(path: &str, value: Value) -> String {
        let doc = path.rsplit('.').fold(value, |inner, key| {
            let mut m = serde_norway::Mapping::new();
            m.insert(Value::from(key), inner);
            Value::Mapping(m)
        });
        serde_norway::to_string(&doc).expect("yaml")
    }

    /// Values of the default's type other than `default`, to try in turn:
    /// a duration one second longer, the other variants of the enums, ...
    fn other_values(default: &Value) -> Vec<Value> {
        match default {
            Value::Bool(b) => vec![Value::from(!b)],
            Value::Number(n) => match n.as_u64() {
                Some(n) => vec![Value::from(n + 1)],
                None => vec![Value::from(n.as_f64().expect("a number") / 2.0)],
            },
            Value::String(s) => {
                let longer = parse_duration(s).map(|d| d + Duration::from_secs(1));
                let longer = longer.map(duration::format_duration);
                let variants = ["memory", "text", "approle", "cluster"].map(String::from);
                longer
                    .into_iter()
                    .chain(variants)
                    .chain([format!("{s}x")])
                    .map(Value::from)
                    .collect()
            }
            Value::Sequence(items) if items.is_empty() => {
                vec![Value::Sequence(vec![Value::from("127.0.0.1:7000")])]
            }
            other => panic!("no other value for {other:?}"),
        }
    }

    /// Any one field written alone, with a value other than its default,
    /// takes that value and leaves every other field at its documented
    /// default: no block falls back to a derived (zero) `Default` for the
    /// fields it leaves out. Parsing only, so the values need not be valid.
    #[test]
    fn one_field_written_keeps_every_other_default() {
        let defaults = tree(&Config::default());
        assert!(defaults.len() > 60, "walks the whole schema");
        for (path, default) in &defaults {
            let changed = other_values(default).into_iter().find_map(|v| {
                let parsed = tree(&Config::parse(&only(path, v)).ok()?);
                let written = parsed.iter().find(|(p, _)| p == path)?;
                (written.1 != *default).then_some(parsed)
            });
            let parsed = changed.unwrap_or_else(|| panic!("{path}: no other value parses"));
            let moved: Vec<&str> = parsed
                .iter()
                .zip(&defaults)
                .filter(|((p, v), (_, d))| p != path && v != d)
                .map(|((p, _), _)| p.as_str())
                .collect();
            assert!(moved.is_empty(), "{path} written alone changed {moved:?}");
            assert_eq!(parsed.len(), defaults.len(), "{path}");
        }
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
