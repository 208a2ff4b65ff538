//! The `vault` section: how the plugin reaches Vault/OpenBao, logs in
//! ([`VaultAuthConfig`]) and where its credentials live (the database
//! engine, or a KV v2 secret: [`split_kv_path`]). Schema, documented
//! defaults and validation of the section live here; talking to Vault is
//! `credentials::vault`'s.

use serde::{Deserialize, Serialize};

use crate::{
    config::{
        duration::Dur,
        error::ConfigError,
        rules::{cert_and_key, timeout},
    },
    secret::Secret,
};

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
// Hand-written with the documented values: `#[serde(default)]` fills a
// partly written block from these (a derived `Default` gives zeros).

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

// === validation ===

impl VaultConfig {
    /// The client certificate files, checked whether or not Vault is used.
    pub(crate) fn validate_client_cert(&self) -> Result<(), ConfigError> {
        cert_and_key(
            "vault",
            ("client_cert_file", &self.client_cert_file),
            ("client_key_file", &self.client_key_file),
        )
    }

    /// The whole section, when Vault supplies the credentials read from
    /// `vault_path` (`backend.vault_path`, unless `kv_path` is set).
    pub(crate) fn validate(&self, vault_path: &str) -> Result<(), ConfigError> {
        if !(self.address.starts_with("http://") || self.address.starts_with("https://")) {
            return Err(ConfigError::new(
                "vault.address",
                "must start with http:// or https://",
            ));
        }
        if !(self.renew_fraction > 0.0 && self.renew_fraction < 1.0) {
            return Err(ConfigError::new(
                "vault.renew_fraction",
                "must be between 0 and 1",
            ));
        }
        if self.kv_path.is_empty() && !vault_path.contains("/creds/") {
            return Err(ConfigError::new(
                "backend.vault_path",
                "must look like <mount>/creds/<role>",
            ));
        }
        if !self.kv_path.is_empty() && split_kv_path(&self.kv_path).is_none() {
            return Err(ConfigError::new(
                "vault.kv_path",
                "must look like <mount>/<path> (KV v2)",
            ));
        }
        timeout(self.request_timeout, "vault.request_timeout")?;
        self.validate_tls()?;
        self.validate_auth()
    }

    /// TLS settings for Vault with a plaintext address: fail closed.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        if self.address.starts_with("http://") {
            let given = [
                ("vault.ca_file", &self.ca_file),
                ("vault.client_cert_file", &self.client_cert_file),
                ("vault.client_key_file", &self.client_key_file),
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

    /// Each login method has the inputs it needs.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
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
            VaultAuthMethod::Cert if self.client_cert_file.is_empty() => Err(ConfigError::new(
                "vault.client_cert_file",
                "required for cert login (with client_key_file)",
            )),
            _ => Ok(()),
        }
    }
}

// === Vault paths ===

/// Splits `kv_path` (`<mount>/<path>` or `<mount>/data/<path>`).
pub fn split_kv_path(kv_path: &str) -> Option<(String, String)> {
    let (mount, rest) = kv_path.trim_matches('/').split_once('/')?;
    let path = rest.strip_prefix("data/").unwrap_or(rest);
    (!mount.is_empty() && !path.is_empty()).then(|| (mount.to_string(), path.to_string()))
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use crate::config::{Config, tests::load};

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
}
