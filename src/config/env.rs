//! The environment overlay: [`ENV_VARS`], the one table of the variables
//! the plugin reads, each with the field it sets and how. Loading applies
//! it and `--help` prints it, so the two cannot disagree. Owns no reading
//! of the process environment (loading passes the variables in).

use std::{collections::HashMap, str::FromStr};

use crate::{
    config::{Config, error::ConfigError, topology::address_list},
    secret::Secret,
};

/// One environment variable and the config field it overrides.
#[derive(Clone, Copy)]
pub struct EnvVar {
    /// The variable's name, e.g. `REDIS_ADDRESS`.
    pub name: &'static str,
    /// Dotted path of the field it sets, e.g. `backend.address`.
    pub field: &'static str,
    /// Sets the field from the variable's value; `Err` says why not.
    apply: fn(&mut Config, &str) -> Result<(), String>,
}

impl EnvVar {
    /// Sets this variable's field in `config` to `value`.
    pub fn apply(&self, config: &mut Config, value: &str) -> Result<(), ConfigError> {
        (self.apply)(config, value).map_err(|reason| ConfigError::new(self.name, reason))
    }
}

impl std::fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.name, self.field)
    }
}

/// `var!("NAME" => how a.b.c)`: the field is written once, as a path, and
/// its dotted name for `--help` is made from that same path.
macro_rules! var {
    ($name:literal => $how:ident $first:ident $(. $rest:ident)*) => {
        EnvVar {
            name: $name,
            field: concat!(stringify!($first) $(, ".", stringify!($rest))*),
            apply: |config, value| {
                config.$first $(.$rest)* = $how(value)?;
                Ok(())
            },
        }
    };
}

/// Every variable the overlay reads, in the order `--help` lists them.
pub const ENV_VARS: &[EnvVar] = &[
    var!("REDIS_TOPOLOGY" => parsed backend.topology),
    var!("REDIS_ADDRESS" => text backend.address),
    var!("REDIS_ADDRESSES" => address_list backend.addresses),
    var!("REDIS_SENTINEL_MASTER" => text backend.sentinel_master),
    var!("REDIS_SENTINEL_USERNAME" => text backend.sentinel_username),
    var!("REDIS_SENTINEL_PASSWORD" => secret backend.sentinel_password),
    var!("REDIS_USERNAME" => text backend.username),
    var!("REDIS_PASSWORD" => secret backend.password),
    var!("REDIS_DATABASE" => parsed backend.database),
    var!("REDIS_POOL_SIZE" => parsed backend.pool_size),
    var!("REDIS_KEY_PREFIX" => text backend.key_prefix),
    var!("REDIS_VAULT_ENABLED" => parsed backend.vault_enabled),
    var!("REDIS_VAULT_PATH" => text backend.vault_path),
    var!("REDIS_NEAR_CACHE_ENABLED" => parsed backend.near_cache.enabled),
    var!("REDIS_NEAR_CACHE_MAX_BYTES" => parsed backend.near_cache.max_bytes),
    var!("REDIS_NEAR_CACHE_MAX_TTL" => duration backend.near_cache.max_ttl),
    var!("PRISM_LOG_LEVEL" => text log.level),
    var!("PRISM_PLUGIN_PORT" => parsed control_plane.port),
    var!("PRISM_PLUGIN_LISTEN" => text control_plane.listen),
    var!("VAULT_ADDR" => text vault.address),
    var!("VAULT_TOKEN" => secret vault.auth.token),
    var!("VAULT_CACERT" => text vault.ca_file),
    var!("VAULT_NAMESPACE" => text vault.namespace),
    var!("VAULT_ROLE_ID" => text vault.auth.role_id),
    var!("VAULT_SECRET_ID" => secret vault.auth.secret_id),
    var!("VAULT_CLIENT_CERT" => text vault.client_cert_file),
    var!("VAULT_CLIENT_KEY" => text vault.client_key_file),
];

/// Overlays every variable of [`ENV_VARS`] that `env` sets, in table order
/// (the first unparsable one is the error, naming the variable).
pub(crate) fn overlay(
    config: &mut Config,
    env: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    for var in ENV_VARS {
        if let Some(value) = env.get(var.name) {
            var.apply(config, value)?;
        }
    }
    Ok(())
}

/// A string field takes the value as written.
fn text(value: &str) -> Result<String, String> {
    Ok(value.to_string())
}

/// A password or token: as written, and never printed.
fn duration(value: &str) -> Result<crate::config::Dur, String> {
    crate::config::parse_duration(value).map(crate::config::Dur)
}

fn secret(value: &str) -> Result<Secret, String> {
    Ok(Secret::new(value))
}

/// A number or boolean; surrounding blanks are forgiven. The error never
/// shows more than the value the operator set for a non-secret field.
fn parsed<T: FromStr>(value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("cannot parse {value:?}"))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    use super::*;

    #[test]
    fn field_names_follow_the_path() {
        let token = ENV_VARS
            .iter()
            .find(|v| v.name == "VAULT_TOKEN")
            .expect("listed");
        assert_eq!(token.field, "vault.auth.token");
        let mut names: Vec<_> = ENV_VARS.iter().map(|v| v.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ENV_VARS.len(), "a variable listed twice");
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
    fn near_cache_env_overlays_file() {
        let env = HashMap::from([
            ("REDIS_NEAR_CACHE_ENABLED".to_string(), "true".to_string()),
            (
                "REDIS_NEAR_CACHE_MAX_BYTES".to_string(),
                "1048576".to_string(),
            ),
            ("REDIS_NEAR_CACHE_MAX_TTL".to_string(), "5s".to_string()),
        ]);
        let c = Config::from_yaml_and_env("", &env).expect("valid");
        let n = &c.backend.near_cache;
        assert!(n.enabled);
        assert_eq!(n.max_bytes, 1 << 20);
        assert_eq!(n.max_ttl.0, std::time::Duration::from_secs(5));
        let bad = HashMap::from([("REDIS_NEAR_CACHE_MAX_TTL".to_string(), "5".to_string())]);
        let err = Config::from_yaml_and_env("", &bad).unwrap_err();
        assert_eq!(err.field, "REDIS_NEAR_CACHE_MAX_TTL");
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let env = HashMap::from([("REDIS_DATABASE".to_string(), "x".to_string())]);
        let err = Config::from_yaml_and_env("", &env).unwrap_err();
        assert_eq!(err.field, "REDIS_DATABASE");
    }
}
