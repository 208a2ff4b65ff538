//! The cluster router against a real six-node cluster: keys reach the
//! primary of their slot through one seed, multi-key calls split by slot
//! and merge in order, and a reshard under traffic is followed (MOVED and
//! ASK) with no wrong answer.

mod common;

use std::collections::HashMap;

use common::{
    CACHE_USER, Flavor, Plugin, base_config, test_prefix,
    topology::{As, RedisCluster},
};
use redis_cache_plugin::config::{BackendKind, Secret, Topology};

twin_tests!(
    cluster_serves_every_slot_through_one_seed,
    reshard_under_traffic_gives_no_wrong_answer,
    a_migrating_slot_is_followed_with_ask_then_moved,
);

fn cluster_config(cluster: &RedisCluster, prefix: &str) -> redis_cache_plugin::config::Config {
    let mut c = base_config(prefix);
    c.backend.kind = BackendKind::Redis;
    c.backend.topology = Topology::Cluster;
    c.backend.addresses = vec![cluster.seed_addresses()[0].clone()];
    c.backend.username = CACHE_USER.into();
    c.backend.password = Secret::new(cluster.users.cache.clone());
    c
}

async fn cluster_serves_every_slot_through_one_seed(flavor: Flavor) {
    let cluster = RedisCluster::start(flavor);
    let prefix = test_prefix("route");
    let plugin = Plugin::start_serving(cluster_config(&cluster, &prefix)).await;
    let mut client = plugin.cache().await;
    let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    for k in &keys {
        client.set(k, k.as_bytes()).await.expect("set");
    }
    let mut owners = std::collections::BTreeSet::new();
    for k in keys.iter().take(30) {
        let full = format!("{prefix}{k}");
        let owner = cluster.node_for_key(&full);
        let (host, port) = owner.split_once(':').expect("host:port");
        let out = cluster.cli(As::Admin, &["-h", host, "-p", port, "GET", &full]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            k,
            "{full} on {owner}"
        );
        owners.insert(owner);
    }
    assert_eq!(owners.len(), 3, "keys on every primary");
    let mut asked: Vec<String> = keys.clone();
    asked.push("absent".into());
    let hits = client.mget(asked.iter()).await.expect("mget");
    let hits = hits.hits;
    assert_eq!(hits.len(), keys.len(), "every hit back");
    for k in &keys {
        assert_eq!(hits.get(k).map(|v| &v[..]), Some(k.as_bytes()), "{k}");
    }
    let deleted = client.delete(keys.iter().take(150)).await.expect("delete");
    assert_eq!(deleted, 150, "counts summed over nodes");
    assert!(!client.get("k0").await.expect("get").found);
    assert!(client.get("k199").await.expect("get").found);
    plugin.stop().await;
}

async fn reshard_under_traffic_gives_no_wrong_answer(flavor: Flavor) {
    let cluster = std::sync::Arc::new(RedisCluster::start(flavor));
    let primaries = cluster.primaries();
    let prefix = test_prefix("reshard");
    let plugin = Plugin::start_serving(cluster_config(&cluster, &prefix)).await;
    let addr = plugin.addr.to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (addr, stop) = (addr.clone(), stop.clone());
            tokio::spawn(async move {
                let mut client = common::Cache::connect(&addr).await;
                let mut model: HashMap<String, u64> = HashMap::new();
                let (mut calls, mut errors, mut wrong) = (0u64, 0u64, 0u64);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && calls < 200_000 {
                    n += 1;
                    let key = format!("w{w}:{}", n % 300);
                    let value = n.to_string();
                    calls += 1;
                    match client.set(&key, value.as_bytes()).await {
                        Ok(()) => {
                            model.insert(key.clone(), n);
                        }
                        Err(e) => {
                            errors += 1;
                            assert!(
                                matches!(
                                    e.code(),
                                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                                ),
                                "{e:?}"
                            );
                            model.remove(&key);
                            continue;
                        }
                    }
                    calls += 1;
                    match client.get(&key).await {
                        Ok(r) => {
                            if model
                                .get(&key)
                                .is_some_and(|want| r.value != want.to_string().as_bytes())
                            {
                                wrong += 1;
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            assert!(
                                matches!(
                                    e.code(),
                                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                                ),
                                "{e:?}"
                            );
                        }
                    }
                }
                (calls, errors, wrong)
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    tokio::task::spawn_blocking({
        let (from, to, cluster) = (primaries[0].clone(), primaries[1].clone(), cluster.clone());
        move || cluster.reshard(&from, &to, 1000)
    })
    .await
    .expect("reshard");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut calls, mut errors, mut wrong) = (0, 0, 0);
    for w in workers {
        let (c, e, x) = w.await.expect("worker");
        calls += c;
        errors += e;
        wrong += x;
    }
    let moved = common::metric(
        plugin.addr,
        "redis_plugin_cluster_redirects_total{kind=\"moved\"}",
    )
    .await;
    let ask = common::metric(
        plugin.addr,
        "redis_plugin_cluster_redirects_total{kind=\"ask\"}",
    )
    .await;
    println!("calls {calls} errors {errors} wrong {wrong} moved {moved} ask {ask}");
    assert!(moved > 0.0, "the reshard moved slots under traffic");
    assert_eq!(wrong, 0);
    assert!(errors * 100 < calls, "errors {errors} of {calls}");
    plugin.stop().await;
}

/// One slot migrated by hand, step by step: while it is migrating, a key
/// already moved (and a new one) are reached with ASK on the importing
/// node, and the map is not changed by it; once the slot is assigned, the
/// next call gets MOVED and stays there.
async fn a_migrating_slot_is_followed_with_ask_then_moved(flavor: Flavor) {
    let cluster = RedisCluster::start(flavor);
    let prefix = test_prefix("ask");
    let plugin = Plugin::start_serving(cluster_config(&cluster, &prefix)).await;
    let mut client = plugin.cache().await;
    client.set("{t}moved", b"old-home").await.expect("set");
    let (moved_key, new_key) = (format!("{prefix}{{t}}moved"), format!("{prefix}{{t}}new"));
    let slot = cluster.slot_of(&moved_key);
    let source = cluster.owner_of(slot);
    let target = cluster
        .primaries()
        .into_iter()
        .find(|p| *p != source)
        .expect("another primary");
    let id = |address: &str| {
        let nodes = cluster.topology();
        nodes
            .into_iter()
            .find(|n| n.address == address)
            .expect("node")
            .id
    };
    let (source_id, target_id) = (id(&source), id(&target));
    let admin = |node: &str, args: &[&str]| {
        let (host, port) = node.split_once(':').expect("host:port");
        let mut all = vec!["-h", host, "-p", port];
        all.extend_from_slice(args);
        let out = cluster.cli(As::Admin, &all);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let slot_text = slot.to_string();
    assert_eq!(
        admin(
            &target,
            &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &source_id]
        ),
        "OK"
    );
    assert_eq!(
        admin(
            &source,
            &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &target_id]
        ),
        "OK"
    );
    let (host, port) = target.split_once(':').expect("host:port");
    let migrated = admin(
        &source,
        &[
            "MIGRATE",
            host,
            port,
            "",
            "0",
            "5000",
            "AUTH2",
            "admin",
            &cluster.users.admin,
            "KEYS",
            &moved_key,
        ],
    );
    assert_eq!(migrated, "OK", "the key moved to the importing node");
    let asked = admin(&source, &["EXISTS", &moved_key]);
    assert!(
        asked.starts_with("ASK"),
        "gone from the source, which now redirects: {asked}"
    );

    let got = client.get("{t}moved").await.expect("get during migration");
    assert_eq!(&got.value[..], b"old-home", "found on the importing node");
    client
        .set("{t}new", b"new-home")
        .await
        .expect("set during migration");
    let (_, on_target): ((), u32) = ::redis::pipe()
        .cmd("ASKING")
        .cmd("EXISTS")
        .arg(&new_key)
        .query(&mut cluster.node(&target).admin())
        .expect("ASKING + EXISTS on the importing node");
    assert_eq!(on_target, 1, "a new key goes to the importing node");
    let ask = "redis_plugin_cluster_redirects_total{kind=\"ask\"}";
    assert!(
        common::metric(plugin.addr, ask).await >= 2.0,
        "both calls were ASK-redirected"
    );

    for node in cluster.primaries() {
        admin(
            &node,
            &["CLUSTER", "SETSLOT", &slot_text, "NODE", &target_id],
        );
    }
    let moved = "redis_plugin_cluster_redirects_total{kind=\"moved\"}";
    // The first call after the move learns the new owner from MOVED (or
    // from a periodic refresh that came first).
    assert!(client.get("{t}new").await.expect("get after").found);
    let moved_now = common::metric(plugin.addr, moved).await;
    assert!(client.get("{t}moved").await.expect("get again").found);
    assert_eq!(
        common::metric(plugin.addr, moved).await,
        moved_now,
        "the map was updated: no second MOVED"
    );
    plugin.stop().await;
}
