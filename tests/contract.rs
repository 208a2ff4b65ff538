//! The gRPC contract, run identically against Redis, Valkey and the memory
//! backend, and against a Redis Cluster and a Valkey cluster (six nodes,
//! `backend.topology: cluster`): every RPC's happy path, its edge cases and
//! every input limit.

#[path = "contract/additions.rs"]
mod additions;
mod common;

use std::{collections::HashMap, time::Duration};

use additions::*;
use common::{
    Cache, Flavor, Plugin, RedisServer, cluster_config, memory_config, redis_config, test_prefix,
    topology::RedisCluster, ttl,
};
use redis_cache_plugin::config::Config;
use tonic::Code;

/// The Redis or Valkey behind a fixture's plugin: one server, or a cluster
/// whose raw reads ask the primary that serves the key.
enum Store {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Store {
    fn start(backend: &str) -> Self {
        let flavor = if backend.starts_with("redis") {
            Flavor::Redis
        } else {
            Flavor::Valkey
        };
        if backend.ends_with("_cluster") {
            Self::Cluster(RedisCluster::start(flavor))
        } else {
            Self::Single(RedisServer::start(flavor))
        }
    }

    /// A plugin config on this store with `prefix`.
    fn config(&self, prefix: &str) -> Config {
        match self {
            Self::Single(server) => redis_config(server, prefix),
            Self::Cluster(cluster) => cluster_config(cluster, prefix),
        }
    }

    fn raw_get(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            Self::Single(server) => server.raw_get(key),
            Self::Cluster(cluster) => cluster.raw_get(key),
        }
    }

    fn pttl(&self, key: &str) -> i64 {
        match self {
            Self::Single(server) => server.pttl(key),
            Self::Cluster(cluster) => cluster.pttl(key),
        }
    }

    fn dbsize(&self) -> i64 {
        match self {
            Self::Single(server) => server.dbsize(),
            Self::Cluster(cluster) => cluster.dbsize(),
        }
    }

    /// An admin connection to the node that holds `key`.
    fn admin_for(&self, key: &str) -> ::redis::Connection {
        match self {
            Self::Single(server) => server.admin(),
            Self::Cluster(cluster) => cluster.node(&cluster.node_for_key(key)).admin(),
        }
    }
}

/// A plugin over one backend, and (for Redis/Valkey) the store behind it.
struct Fixture {
    plugin: Plugin,
    client: Cache,
    server: Option<Store>,
    prefix: String,
}

impl Fixture {
    async fn new(backend: &str, name: &str) -> Self {
        let prefix = test_prefix(name);
        let (server, mut config) = match backend {
            "memory" => (None, memory_config(&prefix)),
            backend => {
                let store = Store::start(backend);
                let config = store.config(&prefix);
                (Some(store), config)
            }
        };
        config.backend.max_key_bytes = 64;
        config.backend.max_value_bytes = 1024;
        config.backend.max_batch_keys = 5;
        // The smallest cap allowed: max_value_bytes + 1 KiB.
        config.backend.max_reply_bytes = 2048;
        let plugin = Plugin::start_serving(config).await;
        let client = plugin.cache().await;
        Self {
            plugin,
            client,
            server,
            prefix,
        }
    }

    async fn set(&mut self, key: &str, value: &[u8], ttl: Option<Duration>) {
        let ttl = ttl.and_then(common::ttl);
        self.client.set_ttl(key, value, ttl).await.expect("set");
    }

    async fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        let r = self.client.get(key).await.expect("get");
        r.found.then(|| r.value.to_vec())
    }

    async fn expire(&mut self, key: &str, d: Duration) -> bool {
        self.client.expire(key, ttl(d)).await.expect("expire")
    }

    async fn mget(&mut self, keys: &[&str]) -> HashMap<String, Vec<u8>> {
        let r = self.client.mget(keys).await.expect("mget");
        r.hits
            .into_iter()
            .map(|(k, v)| (k.into(), v.to_vec()))
            .collect()
    }
}

async fn get_returns_what_set_stored(f: &mut Fixture) {
    f.set("a", b"hello", None).await;
    assert_eq!(f.get("a").await.as_deref(), Some(&b"hello"[..]));
    f.set("a", b"", None).await;
    assert_eq!(
        f.get("a").await.as_deref(),
        Some(&b""[..]),
        "empty value is a hit"
    );
    let binary: Vec<u8> = (0..=255).collect();
    f.set("bin", &binary, None).await;
    assert_eq!(f.get("bin").await, Some(binary));
}

async fn get_miss_is_found_false(f: &mut Fixture) {
    assert_eq!(f.get("never-set").await, None);
}

async fn set_overwrites(f: &mut Fixture) {
    f.set("k", b"one", None).await;
    f.set("k", b"two", None).await;
    assert_eq!(f.get("k").await.as_deref(), Some(&b"two"[..]));
}

async fn set_applies_prefix_and_ttl(f: &mut Fixture) {
    f.set("ttl", b"v", Some(Duration::from_secs(30))).await;
    f.set("default", b"v", None).await;
    if let Some(server) = &f.server {
        let full = format!("{}ttl", f.prefix);
        assert_eq!(server.raw_get(&full).as_deref(), Some(&b"v"[..]));
        let pttl = server.pttl(&full);
        assert!((29_000..=30_000).contains(&pttl), "pttl {pttl}");
        let pttl = server.pttl(&format!("{}default", f.prefix));
        assert!((59_000..=60_000).contains(&pttl), "default ttl pttl {pttl}");
        assert_eq!(server.raw_get("ttl"), None, "stored only under the prefix");
    } else {
        memory_applies_default_and_explicit_ttls(f).await;
    }
}

/// The memory backend has no outside view of its keys (the prefix cannot be
/// seen), so its half checks the TTLs by behaviour: a plugin with a 200 ms
/// default drops a key set without TTL, and keeps one set with 30 s.
async fn memory_applies_default_and_explicit_ttls(f: &mut Fixture) {
    let mut config = memory_config(&f.prefix);
    config.backend.default_ttl = redis_cache_plugin::config::Ttl(Some(Duration::from_millis(200)));
    let plugin = Plugin::start_serving(config).await;
    let mut client = plugin.cache().await;
    for (key, d) in [("default", None), ("ttl", Some(Duration::from_secs(30)))] {
        let ttl = d.and_then(ttl);
        client.set_ttl(key, b"v", ttl).await.expect("set");
    }
    let found = |client: &mut Cache, key: &'static str| {
        let mut client = client.clone();
        async move { client.get(key).await.expect("get").found }
    };
    assert!(
        found(&mut client, "default").await,
        "hit before the default TTL"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while found(&mut client, "default").await {
        assert!(
            std::time::Instant::now() < deadline,
            "default TTL not applied"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        found(&mut client, "ttl").await,
        "an explicit TTL overrides the default"
    );
    plugin.stop().await;
}

async fn ttl_expiry_is_observed(f: &mut Fixture) {
    f.set("short", b"v", Some(Duration::from_millis(150))).await;
    assert!(f.get("short").await.is_some());
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while f.get("short").await.is_some() {
        assert!(std::time::Instant::now() < deadline, "key never expired");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn mget_returns_only_hits_keyed_by_caller_keys(f: &mut Fixture) {
    f.set("x", b"1", None).await;
    f.set("y", b"2", None).await;
    let hits = f.mget(&["x", "missing", "y", "x"]).await;
    assert_eq!(hits.len(), 2);
    assert_eq!(hits["x"], b"1");
    assert_eq!(hits["y"], b"2");
    assert!(f.mget(&["nope", "nada"]).await.is_empty());
}

async fn delete_counts_keys_that_existed(f: &mut Fixture) {
    f.set("d1", b"1", None).await;
    f.set("d2", b"2", None).await;
    let deleted = f
        .client
        .delete(["d1", "absent", "d2", "d1"])
        .await
        .expect("delete");
    assert_eq!(deleted, 2);
    assert_eq!(f.get("d1").await, None);
    let deleted = f.client.delete(["absent"]).await.expect("delete absent");
    assert_eq!(deleted, 0);
}

async fn replies_over_max_reply_bytes_are_resource_exhausted(f: &mut Fixture) {
    let v = vec![b'v'; 1000];
    for k in ["r1", "r2", "r3"] {
        f.set(k, &v, None).await;
    }
    assert_eq!(f.mget(&["r1", "r2", "r1"]).await.len(), 2, "2 KB fit");
    let err = f
        .client
        .mget(["r1", "r2", "r3"])
        .await
        .expect_err("3 KB do not");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_reply_bytes (2048 bytes)"),
        "{}",
        err.message()
    );
    assert_eq!(f.get("r3").await, Some(v), "still serving");
}

async fn expire_reports_whether_key_existed(f: &mut Fixture) {
    f.set("e", b"v", None).await;
    assert!(f.expire("e", Duration::from_secs(5)).await);
    if let Some(server) = &f.server {
        let pttl = server.pttl(&format!("{}e", f.prefix));
        assert!((4_000..=5_000).contains(&pttl), "pttl {pttl}");
    }
    assert!(!f.expire("absent", Duration::from_secs(5)).await);
}

async fn expire_then_key_disappears(f: &mut Fixture) {
    f.set("gone", b"v", None).await;
    assert!(f.expire("gone", Duration::from_millis(100)).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while f.get("gone").await.is_some() {
        assert!(std::time::Instant::now() < deadline, "key never expired");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn assert_invalid(result: Result<impl std::fmt::Debug, tonic::Status>, needle: &str) {
    let status = result.expect_err("must be rejected");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(needle),
        "{:?} lacks {needle:?}",
        status.message()
    );
}

async fn invalid_keys_are_rejected_and_nothing_written(f: &mut Fixture) {
    let long = "k".repeat(65);
    let r = f.client.get("").await;
    assert_invalid(r, "key: must not be empty");
    let r = f.client.set(&long, b"v").await;
    assert_invalid(r, "max_key_bytes (64)");
    let r = f.client.set("big", &[0u8; 1025]).await;
    assert_invalid(r, "max_value_bytes (1024)");
    assert_eq!(f.get("big").await, None, "oversized value was not written");
    if let Some(server) = &f.server {
        assert_eq!(server.dbsize(), 0, "nothing written");
    }
}

async fn batch_limits_are_enforced(f: &mut Fixture) {
    let six: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    let r = f.client.mget(&six).await;
    assert_invalid(r, "6 keys exceeds max_batch_keys (5)");
    let r = f.client.delete(&six).await;
    assert_invalid(r, "max_batch_keys (5)");
    let r = f.client.mget(Vec::<String>::new()).await;
    assert_invalid(r, "keys: must hold at least one key");
    let r = f.client.mget(["ok", ""]).await;
    assert_invalid(r, "keys[1]: must not be empty");
}

async fn bad_ttls_are_rejected_and_nothing_written(f: &mut Fixture) {
    let cases = [
        (
            prost_types::Duration {
                seconds: 0,
                nanos: 0,
            },
            "at least 1ms",
        ),
        (
            prost_types::Duration {
                seconds: -5,
                nanos: 0,
            },
            "positive",
        ),
        (
            prost_types::Duration {
                seconds: 0,
                nanos: 10,
            },
            "at least 1ms",
        ),
        (
            prost_types::Duration {
                seconds: i64::MAX,
                nanos: 0,
            },
            "at most 365 days",
        ),
    ];
    for (bad, needle) in cases {
        let r = f.client.set_ttl("t", b"v", Some(bad)).await;
        assert_invalid(r, needle);
        let r = f.client.expire("t", Some(bad)).await;
        assert_invalid(r, needle);
    }
    let r = f.client.expire("t", None).await;
    assert_invalid(r, "ttl: required");
    assert_eq!(f.get("t").await, None, "nothing written");
}

async fn prefixes_isolate_tenants(f: &mut Fixture) {
    // A second plugin on the same backend with another prefix sees nothing
    // of the first. Memory backends: the second plugin has its own store, and
    // that is the isolation it promises (no store shared through a global).
    f.set("shared", b"mine", None).await;
    assert_eq!(f.get("shared").await.as_deref(), Some(&b"mine"[..]));
    let other_prefix = format!("{}other:", f.prefix);
    let other = match &f.server {
        Some(server) => server.config(&other_prefix),
        None => memory_config(&other_prefix),
    };
    let plugin = Plugin::start_serving(other).await;
    let r = plugin.cache().await.get("shared").await.expect("get");
    assert!(!r.found, "the other tenant sees the key");
    if let Some(server) = &f.server {
        let raw = server.raw_get(&format!("{}shared", f.prefix));
        assert_eq!(
            raw.as_deref(),
            Some(&b"mine"[..]),
            "stored under its prefix"
        );
    }
    plugin.stop().await;
}

// Every contract test, once per backend.
backend_tests! {
    backends {
        redis => "redis",
        valkey => "valkey",
        memory => "memory",
        redis_cluster => "redis_cluster",
        valkey_cluster => "valkey_cluster",
    }
    run |backend, test, name| {
        let mut f = Fixture::new(backend, name).await;
        test(&mut f).await;
        f.plugin.stop().await;
    }
    tests {
        get_returns_what_set_stored,
        get_miss_is_found_false,
        set_overwrites,
        set_applies_prefix_and_ttl,
        ttl_expiry_is_observed,
        mget_returns_only_hits_keyed_by_caller_keys,
        delete_counts_keys_that_existed,
        replies_over_max_reply_bytes_are_resource_exhausted,
        expire_reports_whether_key_existed,
        expire_then_key_disappears,
        invalid_keys_are_rejected_and_nothing_written,
        batch_limits_are_enforced,
        bad_ttls_are_rejected_and_nothing_written,
        prefixes_isolate_tenants,
        unconditional_set_reports_written,
        set_if_absent_writes_only_a_missing_key,
        set_if_present_on_a_miss_writes_nothing,
        set_if_absent_has_one_winner_among_32_callers,
        an_unknown_set_condition_is_rejected,
        mset_stores_every_entry_with_its_own_ttl,
        mset_limits_are_enforced_and_nothing_written,
        incr_counts_from_zero_and_sets_the_ttl_only_on_create,
        incr_on_a_non_integer_is_failed_precondition,
        incr_limits_are_enforced_and_nothing_written,
        incr_without_any_ttl_never_expires,
        get_ttl_tells_a_miss_from_no_expiry,
        persist_reports_found_and_ttl_removed,
        exists_counts_each_key_once,
    }
}
