//! How the Redis servers are arranged: `backend.topology` (one server, a
//! master that Sentinel names, or a Redis Cluster), with `addresses`,
//! `sentinel_master` and the sentinels' own credentials. Owns the schema of
//! these fields and the rules that tie them to the rest of `backend` (which
//! address field a topology reads, why dynamic Vault users are
//! standalone-only); finding the master or the slot map is the backend's.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::config::{address, backend::BackendConfig, error::ConfigError};

/// How the Redis servers are arranged (`backend.topology`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// One server at `backend.address`.
    #[default]
    Standalone,
    /// The master that the sentinels at `backend.addresses` name for
    /// `backend.sentinel_master`.
    Sentinel,
    /// A Redis Cluster; `backend.addresses` are seed nodes.
    Cluster,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Standalone => "standalone",
            Self::Sentinel => "sentinel",
            Self::Cluster => "cluster",
        })
    }
}

impl FromStr for Topology {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "standalone" => Ok(Self::Standalone),
            "sentinel" => Ok(Self::Sentinel),
            "cluster" => Ok(Self::Cluster),
            other => Err(format!(
                "{other:?} is not one of standalone, sentinel, cluster"
            )),
        }
    }
}

/// `REDIS_ADDRESSES`: comma-separated, blanks around each forgiven.
pub(crate) fn address_list(value: &str) -> Result<Vec<String>, String> {
    Ok(value
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect())
}

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
    use crate::config::tests::load;

    use super::*;

    #[test]
    fn topology_parses_and_defaults_to_standalone() {
        assert_eq!(
            load("{}").expect("valid").backend.topology,
            Topology::Standalone
        );
        let c = load("backend: { topology: cluster, addresses: [\"127.0.0.1:7000\"] }\n")
            .expect("valid");
        assert_eq!(c.backend.topology, Topology::Cluster);
        assert!(load("backend: { topology: ring }\n").is_err());
        assert_eq!(
            address_list(" a:1, b:2 ,,"),
            Ok(vec!["a:1".into(), "b:2".into()])
        );
    }

    #[test]
    fn bad_topology_combinations_name_the_field() {
        let cases = [
            ("backend: { topology: cluster }", "backend.addresses"),
            (
                "backend: { topology: sentinel, addresses: [\"h:1\"] }",
                "backend.sentinel_master",
            ),
            ("backend: { addresses: [\"h:1\"] }", "backend.addresses"),
            (
                "backend: { topology: cluster, addresses: [\"h:1\"], database: 2 }",
                "backend.database",
            ),
            (
                "backend: { topology: cluster, addresses: [\"h:1\", \"nope\"] }",
                "backend.addresses[1]",
            ),
            (
                "backend: { topology: cluster, addresses: [\"redis://u:pw@h:1\"] }",
                "backend.addresses[0]",
            ),
            (
                "backend: { topology: cluster, addresses: [\"h:1\"], vault_enabled: true }\nvault: { auth: { token: t } }",
                "backend.vault_enabled",
            ),
        ];
        for (yaml, field) in cases {
            let err = load(&format!("{yaml}\n")).unwrap_err();
            assert_eq!(err.field, field, "{yaml}: {err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
    }

    #[test]
    fn kv_credentials_work_with_every_topology() {
        let yaml = "backend: { topology: sentinel, addresses: [\"h:26379\"], sentinel_master: m, vault_enabled: true }\nvault: { auth: { token: t }, kv_path: secret/data/redis }\n";
        let c = load(yaml).expect("valid");
        assert_eq!(c.backend.sentinel_master, "m");
    }
}
