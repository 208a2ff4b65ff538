//! The plugin on a six-node Redis Cluster and Valkey cluster
//! (`backend.topology: cluster`): keys land on the node their slot says
//! (hash tags and a braced key prefix included), multi-key calls span every
//! primary, a random closed-loop run stays exact while slots move and a
//! replica takes over, a killed primary's slots recover after promotion, a
//! dead first seed does not stop start-up, health follows slot coverage,
//! and a KV v2 password rotation swaps every node's pool without a failed
//! call.
//!
//! Blocking harness calls that take seconds (reshard, failover, waiting for
//! a promotion, the `bao` CLI) run on their own thread ([`off_thread`]),
//! so the in-process plugin and the load keep running on the test's
//! runtime meanwhile.

mod common;

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    CACHE_USER, Cache, Flavor, NOT_SERVING, Plugin, SERVING,
    chaos::{Chaos, Model, Tally},
    cluster_config, free_port,
    openbao::OpenBao,
    random_secret, test_prefix,
    topology::{As, RedisCluster},
};
use redis_cache_plugin::config::{Config, Secret, VaultAuthMethod};
use tonic::Code;

twin_tests!(
    keys_land_on_the_node_their_slot_says,
    hash_tags_and_a_braced_prefix_keep_keys_on_one_slot,
    mget_and_delete_span_every_primary,
    ask_is_followed_while_a_slot_migrates,
    random_run_stays_exact_through_reshard_and_failover,
    killed_primary_recovers_after_its_replica_takes_over,
    starts_and_serves_when_the_first_seed_is_down,
    health_is_not_serving_only_while_slots_have_no_primary,
    kv_rotation_swaps_every_nodes_pool_without_a_failed_call,
);

/// Runs `f` (blocking harness work) on its own thread and awaits its
/// result without blocking the runtime.
async fn off_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.await.expect("harness thread panicked")
}

/// The plugin on `cluster` with `config` tuned by `tune`, SERVING.
async fn plugin_with(
    cluster: &RedisCluster,
    prefix: &str,
    tune: impl FnOnce(&mut Config),
) -> Plugin {
    let mut config = cluster_config(cluster, prefix);
    tune(&mut config);
    Plugin::start_serving(config).await
}

/// `count` keys `{stem}{i}` whose full keys (after `prefix`) spread over
/// all three primaries, with the owner of each full key.
fn spread_keys(
    cluster: &RedisCluster,
    prefix: &str,
    stem: &str,
    count: usize,
) -> Vec<(String, String)> {
    let keys: Vec<String> = (0..count).map(|i| format!("{stem}{i}")).collect();
    let full: Vec<String> = keys.iter().map(|k| format!("{prefix}{k}")).collect();
    let ranges = cluster.slot_ranges();
    let owner = |slot: u16| {
        let range = ranges.iter().find(|(a, b, _)| *a <= slot && slot <= *b);
        range.expect("every slot is served").2.clone()
    };
    let keys: Vec<(String, String)> = keys
        .into_iter()
        .zip(cluster.slots_of(&full))
        .map(|(k, slot)| (k, owner(slot)))
        .collect();
    let owners: BTreeSet<&String> = keys.iter().map(|(_, o)| o).collect();
    assert_eq!(owners.len(), 3, "keys spread over every primary");
    keys
}

/// The cluster, a key prefix from `name`, the plugin on it (SERVING) and a
/// client.
async fn start(flavor: Flavor, name: &str) -> (RedisCluster, String, Plugin, Cache) {
    let cluster = RedisCluster::start(flavor);
    let prefix = test_prefix(name);
    let plugin = plugin_with(&cluster, &prefix, |_| {}).await;
    let client = plugin.cache().await;
    (cluster, prefix, plugin, client)
}

/// The slot of one key, asked of the cluster.
fn slot(cluster: &RedisCluster, key: &str) -> u16 {
    cluster.slots_of(&[key.to_string()])[0]
}

// === where keys go ===

async fn keys_land_on_the_node_their_slot_says(flavor: Flavor) {
    let (cluster, prefix, plugin, mut client) = start(flavor, "cluster_slots").await;
    let primaries = cluster.primaries();
    let seed = primaries[0].clone();
    let (host, port) = seed.split_once(':').expect("host:port");
    for (key, owner) in spread_keys(&cluster, &prefix, "k", 30) {
        let full = format!("{prefix}{key}");
        client.set(&key, full.as_bytes()).await.expect("set");
        assert_eq!(
            cluster.raw_get(&full).as_deref(),
            Some(full.as_bytes()),
            "{full} on {owner}"
        );
        for other in primaries.iter().filter(|p| **p != owner) {
            let err = ::redis::cmd("GET")
                .arg(&full)
                .query::<Option<String>>(&mut cluster.node(other).admin())
                .expect_err("another primary redirects");
            assert!(
                err.to_string().to_uppercase().contains("MOVED"),
                "{other}: {err}"
            );
        }
        // What an operator would check: redis-cli -c as the cache user.
        let out = cluster.cli(As::Cache, &["-c", "-h", host, "-p", port, "GET", &full]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), full, "{out:?}");
    }
    plugin.stop().await;
}

/// A `{tag}` in the key puts keys on one slot; a `{` in `key_prefix` wins
/// over any tag in the key, because the tag is looked for in the full key
/// (prefix first): every key of such a plugin shares one slot.
async fn hash_tags_and_a_braced_prefix_keep_keys_on_one_slot(flavor: Flavor) {
    let (cluster, prefix, plugin, mut client) = start(flavor, "cluster_tags").await;
    for key in ["{user1}:a", "{user1}:b"] {
        client.set(key, key.as_bytes()).await.expect("set tagged");
        let full = format!("{prefix}{key}");
        assert_eq!(cluster.slot_of(&full), slot(&cluster, "user1"), "{full}");
        assert_eq!(cluster.raw_get(&full).as_deref(), Some(key.as_bytes()));
    }
    let hits = client.mget(["{user1}:a", "{user1}:b"]).await.expect("mget");
    assert_eq!(hits.hits.len(), 2);
    plugin.stop().await;

    let braced = format!("cache:app{{x}}:{}:", std::process::id());
    let plain: BTreeSet<u16> = (0..20)
        .map(|i| slot(&cluster, &format!("{prefix}k{i}")))
        .collect();
    assert!(plain.len() > 1, "without a tag the keys spread: {plain:?}");
    let plugin = plugin_with(&cluster, &braced, |_| {}).await;
    let mut client = plugin.cache().await;
    let keys: Vec<String> = (0..20)
        .map(|i| format!("k{i}"))
        .chain(["{user1}:a".into()])
        .collect();
    let owner = cluster.owner_of(slot(&cluster, "x"));
    for key in &keys {
        client
            .set(key, key.as_bytes())
            .await
            .expect("set under the braced prefix");
        let full = format!("{braced}{key}");
        assert_eq!(cluster.slot_of(&full), slot(&cluster, "x"), "{full}");
        let held: Option<Vec<u8>> = ::redis::cmd("GET")
            .arg(&full)
            .query(&mut cluster.node(&owner).admin())
            .expect("GET on the owner of slot(\"x\")");
        assert_eq!(held.as_deref(), Some(key.as_bytes()), "{full} on {owner}");
    }
    assert_eq!(
        client.mget(&keys).await.expect("mget").hits.len(),
        keys.len()
    );
    plugin.stop().await;
}

async fn mget_and_delete_span_every_primary(flavor: Flavor) {
    let (cluster, prefix, plugin, mut client) = start(flavor, "cluster_multi").await;
    let keys = spread_keys(&cluster, &prefix, "m", 30);
    for (key, _) in &keys {
        client.set(key, key.as_bytes()).await.expect("set");
    }
    // Asked in an order that interleaves nodes, with misses and a repeat.
    let mut asked: Vec<String> = keys.iter().rev().map(|(k, _)| k.clone()).collect();
    asked.extend(["absent1".into(), keys[0].0.clone(), "absent2".into()]);
    let hits = client.mget(&asked).await.expect("mget").hits;
    let want: HashMap<String, Vec<u8>> = keys
        .iter()
        .map(|(k, _)| (k.clone(), k.as_bytes().to_vec()))
        .collect();
    let got: HashMap<String, Vec<u8>> = hits
        .into_iter()
        .map(|(k, v)| (k.into(), v.to_vec()))
        .collect();
    assert_eq!(got, want, "every hit, keyed by the caller's key, no miss");

    let deleted = client.delete(&asked).await.expect("delete");
    assert_eq!(deleted, 30, "counts summed over the nodes, each key once");
    assert!(client.mget(&asked).await.expect("mget").hits.is_empty());
    assert_eq!(cluster.dbsize(), 0, "nothing left on any primary");
    plugin.stop().await;
}

/// One slot moved by hand, key by key: while it migrates, the old owner
/// answers ASK for the keys it no longer holds (and for new ones), and
/// the plugin follows with ASKING to the new owner; afterwards MOVED.
async fn ask_is_followed_while_a_slot_migrates(flavor: Flavor) {
    let (cluster, prefix, plugin, mut client) = start(flavor, "cluster_ask").await;
    let full = |k: &str| format!("{prefix}{k}");
    let slot = slot(&cluster, "ask");
    let from = cluster.owner_of(slot);
    let to = cluster
        .primaries()
        .into_iter()
        .find(|p| *p != from)
        .expect("another primary");
    for k in ["{ask}:a", "{ask}:b"] {
        client
            .set(k, k.as_bytes())
            .await
            .expect("set before the move");
    }
    cluster.begin_migration(slot, &from, &to);
    cluster.migrate_key(&full("{ask}:a"), &from, &to);
    let err = ::redis::cmd("GET")
        .arg(full("{ask}:a"))
        .query::<Option<String>>(&mut cluster.node(&from).admin())
        .expect_err("the old owner no longer holds it");
    assert!(err.to_string().to_uppercase().contains("ASK"), "{err}");

    let ask = r#"redis_plugin_cluster_redirects_total{kind="ask"}"#;
    let asked_before = common::metric(plugin.addr, ask).await;
    let got = client.get("{ask}:a").await.expect("get a moved key");
    assert_eq!(got.value.as_ref(), b"{ask}:a", "read from the new owner");
    let got = client
        .get("{ask}:b")
        .await
        .expect("get a key not moved yet");
    assert_eq!(got.value.as_ref(), b"{ask}:b", "read from the old owner");
    client
        .set("{ask}:c", b"new")
        .await
        .expect("a new key goes to the new owner");
    let asked = common::metric(plugin.addr, ask).await - asked_before;
    assert!(
        asked >= 2.0,
        "ASK followed for the moved and the new key: {asked}"
    );
    // A transaction follows ASK as one unit: ASKING, then MULTI ... EXEC on
    // the importing node (Incr with a TTL creating a new key there, Persist
    // on the moved one).
    let asked_before = common::metric(plugin.addr, ask).await;
    let n = client.incr("{ask}:n", 3, common::ttl(Duration::from_secs(60)));
    assert_eq!(n.await.expect("incr a new key of a migrating slot"), 3);
    assert!(
        common::metric(plugin.addr, ask).await > asked_before,
        "Incr was asked over"
    );
    // The importing node answers for the key only after ASKING.
    let (pttl,): (i64,) = ::redis::pipe()
        .cmd("ASKING")
        .ignore()
        .cmd("PTTL")
        .arg(full("{ask}:n"))
        .query(&mut cluster.node(&to).admin())
        .expect("PTTL on the new owner");
    assert!(
        (1..=60_000).contains(&pttl),
        "created with its TTL on {to}: {pttl}"
    );
    let p = client
        .persist("{ask}:a")
        .await
        .expect("persist a moved key");
    assert!(p.found, "{p:?}");

    cluster.migrate_key(&full("{ask}:b"), &from, &to);
    cluster.finish_migration(slot, &from, &to);
    assert_eq!(cluster.owner_of(slot), to, "the slot moved");
    for (k, v) in [
        ("{ask}:a", &b"{ask}:a"[..]),
        ("{ask}:b", b"{ask}:b"),
        ("{ask}:c", b"new"),
    ] {
        assert_eq!(cluster.raw_get(&full(k)).as_deref(), Some(v), "{k} on {to}");
        let got = client.get(k).await.expect("get after the move");
        assert_eq!(got.value.as_ref(), v, "{k} through the plugin");
    }
    plugin.stop().await;
}

// === the random run ===

/// Slots `redis-cli --cluster reshard` moves in the random run: the lowest
/// of the first primary.
const RESHARD_SLOTS: u16 = 1000;

/// Each worker's keys: 40 anywhere plus 6 in the slots the reshard moves,
/// so some of every worker's keys are redirected.
fn worker_keys(cluster: &RedisCluster, prefix: &str, worker: usize) -> Vec<String> {
    // About 6 % of slots move, so 400 candidates hold ~24 moving keys.
    let candidates: Vec<String> = (0..400).map(|j| format!("w{worker}:k{j}")).collect();
    let full: Vec<String> = candidates.iter().map(|k| format!("{prefix}{k}")).collect();
    let moving: Vec<String> = candidates
        .iter()
        .zip(cluster.slots_of(&full))
        .filter(|(_, slot)| *slot < RESHARD_SLOTS)
        .map(|(k, _)| k.clone())
        .take(6)
        .collect();
    assert_eq!(moving.len(), 6, "worker {worker}: keys in the moving slots");
    candidates.into_iter().take(40).chain(moving).collect()
}

/// What the faults of the random run did, for the assertions.
struct Faults {
    moved_from: String,
    moved_to: String,
    took_over: String,
    stepped_down: String,
    reshard_window: (Instant, Instant),
    failover_window: (Instant, Instant),
}

/// Reshards the lowest slots of the first primary to the second, then has
/// the third's replica take over; asserts each fault really happened.
fn inject_faults(cluster: &RedisCluster) -> Faults {
    let primaries = cluster.primaries();
    let (from, to) = (primaries[0].clone(), primaries[1].clone());
    assert_eq!(
        cluster.owner_of(0),
        from,
        "slot 0 starts on the first primary"
    );
    assert_eq!(cluster.owner_of(RESHARD_SLOTS - 1), from);
    let started = Instant::now();
    cluster.reshard(&from, &to, RESHARD_SLOTS);
    let reshard_window = (started, Instant::now());
    for slot in [0, RESHARD_SLOTS / 2, RESHARD_SLOTS - 1] {
        assert_eq!(cluster.owner_of(slot), to, "slot {slot} moved");
    }
    assert_eq!(
        cluster.owner_of(RESHARD_SLOTS),
        from,
        "only {RESHARD_SLOTS} slots moved"
    );

    let old = primaries[2].clone();
    let replica = cluster.replicas_of(&old).remove(0);
    let started = Instant::now();
    cluster.failover(&replica);
    let failover_window = (started, Instant::now());
    let now = cluster.primaries();
    assert!(
        now.contains(&replica) && !now.contains(&old),
        "roles swapped: {now:?}"
    );
    assert_eq!(cluster.replicas_of(&replica), vec![old.clone()]);
    Faults {
        moved_from: from,
        moved_to: to,
        took_over: replica,
        stepped_down: old,
        reshard_window,
        failover_window,
    }
}

/// The plugin's redirect and refresh metrics, as text (empty if it has
/// none).
async fn topology_metrics(plugin: &Plugin) -> String {
    let addr = plugin.addr;
    let text = tokio::task::spawn_blocking(move || common::http_get(addr, "/metrics"))
        .await
        .expect("scrape");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.contains("redirect") || l.contains("topology") || l.contains("refresh"))
        .collect();
    lines.join("\n")
}

/// Calls that succeeded between `from` and `to`.
fn ok_between(tally: &Tally, (from, to): (Instant, Instant)) -> usize {
    let during = |at: Instant| at >= from && at <= to;
    tally
        .calls
        .iter()
        .filter(|c| during(c.at) && c.code == Code::Ok)
        .count()
}

async fn random_run_stays_exact_through_reshard_and_failover(flavor: Flavor) {
    const WORKERS: usize = 8;
    const HARD_CAP: Duration = Duration::from_secs(90);
    let cluster = Arc::new(RedisCluster::start(flavor));
    let prefix = test_prefix("cluster_chaos");
    let plugin = plugin_with(&cluster, &prefix, |_| {}).await;
    let key_sets: Vec<Vec<String>> = (0..WORKERS)
        .map(|w| worker_keys(&cluster, &prefix, w))
        .collect();
    let chaos = Chaos::start(plugin.channel().await, key_sets, rand::random());
    let seed = chaos.seed;
    let begun = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = cluster.clone();
    let faults = tokio::time::timeout(HARD_CAP, off_thread(move || inject_faults(&c)))
        .await
        .unwrap_or_else(|_| panic!("faults not done within {HARD_CAP:?} (seed {seed})"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tally = chaos.finish().await;
    let redirects = topology_metrics(&plugin).await;
    println!(
        "{flavor:?} random run (seed {seed}, {WORKERS} workers, {:?}): {}; \
         reshard {} -> {} of {RESHARD_SLOTS} slots took {:?} ({} calls ok meanwhile), \
         failover to {} took {:?} ({} ok meanwhile); plugin metrics:\n{redirects}",
        begun.elapsed(),
        tally.summary(),
        faults.moved_from,
        faults.moved_to,
        faults.reshard_window.1 - faults.reshard_window.0,
        ok_between(&tally, faults.reshard_window),
        faults.took_over,
        faults.failover_window.1 - faults.failover_window.0,
        ok_between(&tally, faults.failover_window),
    );
    assert!(
        tally.wrong.is_empty(),
        "seed {seed}: wrong answers: {:#?}",
        &tally.wrong[..tally.wrong.len().min(10)]
    );
    assert!(
        tally.only_allowed_errors(),
        "seed {seed}: {:?}",
        tally.errors()
    );
    assert!(
        tally.failed() * 100 < tally.calls.len(),
        "seed {seed}: {} of {} calls failed",
        tally.failed(),
        tally.calls.len()
    );
    assert!(
        ok_between(&tally, faults.reshard_window) > 0,
        "load ran during the reshard"
    );
    assert!(
        ok_between(&tally, faults.failover_window) > 0,
        "load ran during the failover"
    );
    assert_ne!(faults.stepped_down, faults.took_over);
    let moved = common::metric(
        plugin.addr,
        r#"redis_plugin_cluster_redirects_total{kind="moved"}"#,
    )
    .await;
    assert!(moved > 0.0, "the plugin followed MOVED: {redirects}");
    plugin.stop().await;
}

#[test]
fn the_model_widens_on_a_failed_write_and_narrows_on_an_acknowledged_one() {
    let keys = vec!["k".to_string()];
    let mut m = Model::new(&keys);
    assert!(m.allows("k", None));
    m.wrote("k", Some(b"1".to_vec()), false);
    assert!(m.allows("k", None) && m.allows("k", Some(b"1")));
    assert_eq!(m.delete_bounds(&keys), (0, 1));
    m.wrote("k", Some(b"2".to_vec()), true);
    assert!(!m.allows("k", None) && !m.allows("k", Some(b"1")));
    assert_eq!(m.delete_bounds(&keys), (1, 1));
    assert!(
        !m.allows("other", None),
        "keys outside the model allow nothing"
    );
}

// === a killed primary, seeds, health ===

async fn killed_primary_recovers_after_its_replica_takes_over(flavor: Flavor) {
    let (mut cluster, prefix, plugin, _) = start(flavor, "cluster_kill").await;
    let victim = cluster.primaries().remove(0);
    let replica = cluster.replicas_of(&victim).remove(0);
    cluster.wait_replicas_synced();
    let key_sets: Vec<Vec<String>> = (0..4).map(|w| worker_keys(&cluster, &prefix, w)).collect();
    let on_victim: BTreeSet<String> = key_sets
        .iter()
        .flatten()
        .filter(|k| cluster.node_for_key(&format!("{prefix}{k}")) == victim)
        .cloned()
        .collect();
    assert!(!on_victim.is_empty(), "some keys live on {victim}");
    let chaos = Chaos::start(plugin.channel().await, key_sets, rand::random());
    tokio::time::sleep(Duration::from_secs(1)).await;

    cluster.kill(&victim);
    let killed_at = Instant::now();
    let (cluster, promoted_at) = off_thread(move || {
        let promoted = common::poll(Duration::from_secs(30), Duration::from_millis(50), || {
            cluster.primaries().contains(&replica)
        });
        assert!(
            promoted,
            "{replica} was not promoted after {victim} was killed: {:#?}\n{}",
            cluster.topology(),
            cluster.node(&replica).log()
        );
        let failed = cluster
            .topology()
            .iter()
            .any(|n| n.address == victim && n.failed);
        assert!(failed, "the cluster flags {victim} failed");
        (cluster, Instant::now())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let tally = chaos.finish().await;
    summarize_kill(flavor, &tally, &on_victim, &prefix, killed_at, promoted_at);
    drop(cluster);
    plugin.stop().await;
}

/// Prints and checks the killed-primary run: failures only of the allowed
/// kinds, and the victim's keys answered again within 3 s of the promotion.
fn summarize_kill(
    flavor: Flavor,
    tally: &Tally,
    on_victim: &BTreeSet<String>,
    prefix: &str,
    killed_at: Instant,
    promoted_at: Instant,
) {
    let last_failure = tally
        .calls
        .iter()
        .filter(|c| c.code != Code::Ok)
        .map(|c| c.at)
        .max();
    let victim_ok_after = tally
        .calls
        .iter()
        .filter(|c| c.at > promoted_at && c.code == Code::Ok && on_victim.contains(&c.key))
        .count();
    println!(
        "{flavor:?} killed primary ({prefix}): {} (wrong answers may follow lost writes); promotion {:?} after the kill, \
         last failure {:?} after the kill, {victim_ok_after} ok calls on its keys since",
        tally.summary(),
        promoted_at - killed_at,
        last_failure.map(|t| t.saturating_duration_since(killed_at)),
    );
    // Wrong answers are only printed: writes acknowledged just before the
    // kill may be lost with the primary (asynchronous replication).
    assert!(tally.only_allowed_errors(), "{:?}", tally.errors());
    let recovered = last_failure.is_none_or(|t| t < promoted_at + Duration::from_secs(3));
    assert!(
        recovered,
        "failures went on after the promotion: {last_failure:?}"
    );
    assert!(
        victim_ok_after >= 20,
        "{victim_ok_after} calls on the victim's keys after"
    );
}

async fn starts_and_serves_when_the_first_seed_is_down(flavor: Flavor) {
    let cluster = RedisCluster::start(flavor);
    let prefix = test_prefix("cluster_seed");
    let dead = format!("127.0.0.1:{}", free_port());
    assert!(
        std::net::TcpStream::connect(&dead).is_err(),
        "nothing listens on {dead}"
    );
    let plugin = plugin_with(&cluster, &prefix, |c| {
        c.backend.addresses.insert(0, dead.clone())
    })
    .await;
    let mut client = plugin.cache().await;
    for (key, _) in spread_keys(&cluster, &prefix, "s", 30) {
        client.set(&key, b"v").await.expect("set");
        let got = client.get(&key).await.expect("get");
        assert!(got.found && got.value.as_ref() == b"v", "{key}");
    }
    plugin.stop().await;
}

async fn health_is_not_serving_only_while_slots_have_no_primary(flavor: Flavor) {
    let (mut cluster, _, plugin, _) = start(flavor, "cluster_health").await;
    let victim = cluster.primaries().remove(1);
    let replica = cluster.replicas_of(&victim).remove(0);

    // A replica alone going away leaves every slot served.
    cluster.kill(&replica);
    for _ in 0..10 {
        assert_eq!(
            plugin.health("").await,
            SERVING,
            "a replica down is no outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.kill(&victim);
    let (mut cluster, victim) = off_thread(move || {
        let failed = common::poll(Duration::from_secs(20), Duration::from_millis(50), || {
            cluster
                .topology()
                .iter()
                .any(|n| n.address == victim && n.failed)
        });
        assert!(
            failed,
            "the cluster flags {victim} failed: its slots have no primary"
        );
        (cluster, victim)
    })
    .await;
    assert!(
        plugin
            .wait_health(NOT_SERVING, Duration::from_secs(10))
            .await,
        "NOT_SERVING while slots have no primary"
    );
    cluster.restart(&victim);
    cluster.restart(&replica);
    let cluster = off_thread(move || {
        cluster.wait_settled();
        cluster
    })
    .await;
    assert!(
        plugin.wait_health(SERVING, Duration::from_secs(15)).await,
        "SERVING again once the primary is back"
    );
    let mut client = plugin.cache().await;
    assert!(
        client
            .set_succeeds_within("back", b"v", Duration::from_secs(5))
            .await
    );
    drop(cluster);
    plugin.stop().await;
}

// === credentials ===

/// Sets (`>`) or removes (`<`) a password of the cache user on every node:
/// ACL users are per node and not replicated.
fn on_every_node(cluster: &RedisCluster, rule: &str) {
    for node in cluster.seed_addresses() {
        ::redis::cmd("ACL")
            .arg("SETUSER")
            .arg(CACHE_USER)
            .arg(rule)
            .exec(&mut cluster.node(&node).admin())
            .expect("ACL SETUSER");
    }
}

/// Ids of the cache user's connections on every node, by node.
fn cache_connections(cluster: &RedisCluster) -> Vec<(String, BTreeSet<u64>)> {
    let user = format!(" user={CACHE_USER} ");
    let ids = |address: &str| -> BTreeSet<u64> {
        let list: String = ::redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut cluster.node(address).admin())
            .expect("CLIENT LIST");
        list.lines()
            .filter(|l| l.contains(&user))
            .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
            .collect()
    };
    let nodes = cluster.seed_addresses();
    nodes.into_iter().map(|a| (a.clone(), ids(&a))).collect()
}

/// The rotation an operator does for a KV v2 secret on a cluster: the new
/// password on every node, then in KV, then the old one off every node;
/// finally one of the plugin's connections drops (as connections do), so
/// its next login finds the old password refused. Returns the plugin's
/// connections from before (all logged in with the old password).
///
/// Only one connection drops: with every connection of a node killed at
/// once, the pool's circuit opens while the refresh is under way and a few
/// calls fail UNAVAILABLE, on a standalone Redis as on a cluster (the
/// pool's behaviour, not the router's).
fn rotate_kv_password(cluster: &RedisCluster, bao: &OpenBao) -> Vec<(String, BTreeSet<u64>)> {
    let (old, new) = (cluster.users.cache.clone(), random_secret());
    on_every_node(cluster, &format!(">{new}"));
    bao.kv_creds("cache", CACHE_USER, &new);
    on_every_node(cluster, &format!("<{old}"));
    let before = cache_connections(cluster);
    let (node, ids) = before
        .iter()
        .find(|(_, ids)| !ids.is_empty())
        .expect("the plugin is connected");
    let id = ids.first().expect("a connection").to_string();
    ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .exec(&mut cluster.node(node).admin())
        .expect("CLIENT KILL ID");
    before
}

/// Waits (bounded) until no connection from `before` is left on any node
/// and every primary has a connection again: every pool has swapped.
fn wait_swapped(
    cluster: &RedisCluster,
    before: &[(String, BTreeSet<u64>)],
) -> Vec<(String, BTreeSet<u64>)> {
    let old: BTreeSet<(String, u64)> = before
        .iter()
        .flat_map(|(a, ids)| ids.iter().map(move |id| (a.clone(), *id)))
        .collect();
    let primaries = cluster.primaries();
    let mut now = Vec::new();
    let swapped = common::poll(Duration::from_secs(15), Duration::from_millis(100), || {
        now = cache_connections(cluster);
        let none_old = now
            .iter()
            .all(|(a, ids)| ids.iter().all(|id| !old.contains(&(a.clone(), *id))));
        let all_up = now
            .iter()
            .filter(|(a, _)| primaries.contains(a))
            .all(|(_, ids)| !ids.is_empty());
        none_old && all_up
    });
    assert!(
        swapped,
        "pools still on old connections: before {before:?}, now {now:?}"
    );
    now
}

async fn kv_rotation_swaps_every_nodes_pool_without_a_failed_call(flavor: Flavor) {
    let cluster = Arc::new(RedisCluster::start(flavor));
    let bao = Arc::new(OpenBao::dev());
    bao.write_plugin_policy();
    bao.kv_creds("cache", CACHE_USER, &cluster.users.cache);
    let token = bao.plugin_token("1h", "2h");
    let prefix = test_prefix("cluster_kv");
    let plugin = plugin_with(&cluster, &prefix, |c| {
        c.backend.password = Secret::default();
        c.backend.username = String::new();
        c.backend.vault_enabled = true;
        c.vault.kv_path = "secret/redis/cache".into();
        c.vault.address = bao.address();
        c.vault.auth.method = VaultAuthMethod::Token;
        c.vault.auth.token = Secret::new(token.clone());
    })
    .await;
    let key_sets: Vec<Vec<String>> = (0..4).map(|w| worker_keys(&cluster, &prefix, w)).collect();
    let chaos = Chaos::start(plugin.channel().await, key_sets, rand::random());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (c, b) = (cluster.clone(), bao.clone());
    let (before, now, swapped_at) = off_thread(move || {
        let before = rotate_kv_password(&c, &b);
        let now = wait_swapped(&c, &before);
        (before, now, Instant::now())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = chaos.finish().await;
    let rotations = common::metric(plugin.addr, "redis_plugin_credential_rotations_total").await;
    println!(
        "{flavor:?} KV rotation on a cluster: {}; {rotations} rotations; \
         the plugin's connections before {before:?}, after {now:?}",
        tally.summary()
    );
    assert!(tally.wrong.is_empty(), "{:#?}", tally.wrong);
    assert_eq!(tally.failed(), 0, "{:?}", tally.errors());
    assert!(rotations >= 1.0, "the plugin read the new password");
    let after = tally
        .calls
        .iter()
        .filter(|c| c.at > swapped_at && c.code == Code::Ok)
        .count();
    assert!(after > 0, "calls served after the swap");
    plugin.stop().await;
}
