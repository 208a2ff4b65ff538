//! How the Redis servers are arranged: `backend.topology` (one server, a
//! master that Sentinel names, or a Redis Cluster) and how
//! `REDIS_ADDRESSES` lists them. The rules that tie the topology to the
//! rest of `backend` (which address field it reads, why dynamic Vault
//! users are standalone-only) are the `backend` section's; finding the
//! master or the slot map is the backend's (the crate module).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

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
