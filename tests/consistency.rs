//! Consistency: a seeded random sequence of Set/Get/MGet/Delete/Expire, with
//! TTLs that run out during the run, from several concurrent clients on
//! disjoint keys, checked call by call against an in-test model. At least
//! 100k operations per backend; zero mismatches allowed.
//!
//! TTL boundaries are handled honestly: a write's expiry lies between
//! (send + ttl) and (reply + ttl), so an observation inside that window may
//! see the key or not; outside it, only one answer is right.

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::{Cache, Flavor, Plugin, RedisServer, memory_config, redis_config, test_prefix};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::transport::Channel;

const CLIENTS: u64 = 8;
const OPS_PER_CLIENT: u64 = 12_600;
const KEYS_PER_CLIENT: usize = 24;
/// Clock slack between this process and the server's expiry checks.
const SLACK: Duration = Duration::from_millis(3);

/// What the model knows of one key.
#[derive(Clone, Debug)]
struct Entry {
    value: Vec<u8>,
    /// Expiry window: gone for sure after `.1`, there for sure before `.0`.
    expiry: Option<(Instant, Instant)>,
}

/// The model's answer to "is it there during [start, end]?".
#[derive(Debug, PartialEq)]
enum Presence<'a> {
    Yes(&'a [u8]),
    No,
    Either(&'a [u8]),
}

#[derive(Default)]
struct Model {
    keys: HashMap<String, Entry>,
    /// Observations only one answer fitted (a sure hit, a sure miss): the
    /// ones that can catch a wrong backend, counted so a model that always
    /// says "either" cannot pass.
    sure_hits: u64,
    sure_misses: u64,
}

impl Model {
    fn presence(&self, key: &str, start: Instant, end: Instant) -> Presence<'_> {
        let Some(e) = self.keys.get(key) else {
            return Presence::No;
        };
        match e.expiry {
            None => Presence::Yes(&e.value),
            Some((lo, _)) if end + SLACK < lo => Presence::Yes(&e.value),
            Some((_, hi)) if start > hi + SLACK => Presence::No,
            Some(_) => Presence::Either(&e.value),
        }
    }

    /// Checks an observed value against the model and learns from it.
    fn observe(&mut self, key: &str, got: Option<&[u8]>, start: Instant, end: Instant) -> bool {
        let (ok, sure) = match (self.presence(key, start, end), got) {
            (Presence::Yes(v), Some(g)) => (v == g, Some(true)),
            (Presence::No, None) => (true, Some(false)),
            (Presence::Either(v), Some(g)) => (v == g, None),
            (Presence::Either(_), None) => (true, None),
            _ => (false, None),
        };
        match sure {
            Some(true) => self.sure_hits += 1,
            Some(false) => self.sure_misses += 1,
            None => {}
        }
        if got.is_none() {
            self.keys.remove(key);
        }
        ok
    }

    fn window(ttl: Option<Duration>, start: Instant, end: Instant) -> Option<(Instant, Instant)> {
        ttl.map(|t| (start + t, end + t))
    }
}

fn ttl_choice(rng: &mut StdRng) -> Option<Duration> {
    match rng.random_range(0..4) {
        0 | 1 => None,
        2 => Some(Duration::from_millis(rng.random_range(20..300))),
        _ => Some(Duration::from_secs(60)),
    }
}

/// What one client's run checked.
#[derive(Debug, Default)]
struct Tally {
    ops: u64,
    mismatches: u64,
    sure_hits: u64,
    sure_misses: u64,
}

/// One client's run.
async fn client_run(channel: Channel, id: u64, seed: u64, default_ttl: Duration) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed ^ (id * 0x9E37_79B9));
    let mut client = Cache::on(channel);
    let mut model = Model::default();
    let key = |i: usize| format!("c{id}:k{i}");
    let (mut mismatches, mut ops) = (0, 0);
    for n in 0..OPS_PER_CLIENT {
        let k = key(rng.random_range(0..KEYS_PER_CLIENT));
        let start = Instant::now();
        let ok = match rng.random_range(0..10) {
            0..=2 => {
                let value = format!("{id}:{n}:{}", rng.random::<u32>()).into_bytes();
                let ttl = ttl_choice(&mut rng);
                let sent = ttl.and_then(common::ttl);
                client.set_ttl(&k, &value, sent).await.expect("set");
                let end = Instant::now();
                let expiry = Model::window(Some(ttl.unwrap_or(default_ttl)), start, end);
                model.keys.insert(k, Entry { value, expiry });
                true
            }
            3..=5 => {
                let r = client.get(&k).await.expect("get");
                let got = r.found.then_some(r.value.as_ref());
                model.observe(&k, got, start, Instant::now())
            }
            6 | 7 => {
                let keys: Vec<String> = (0..rng.random_range(1..6))
                    .map(|_| key(rng.random_range(0..KEYS_PER_CLIENT)))
                    .collect();
                let hits = client.mget(&keys).await.expect("mget").hits;
                let end = Instant::now();
                let mut all = true;
                let mut seen = std::collections::HashSet::new();
                for k in keys.iter().filter(|k| seen.insert(k.to_string())) {
                    all &= model.observe(k, hits.get(k).map(|v| v.as_ref()), start, end);
                }
                all && hits.keys().all(|h| keys.iter().any(|k| h == k))
            }
            8 => {
                let keys: Vec<String> = (0..rng.random_range(1..4))
                    .map(|_| key(rng.random_range(0..KEYS_PER_CLIENT)))
                    .collect();
                let deleted = client.delete(&keys).await.expect("delete");
                let end = Instant::now();
                let mut distinct: Vec<&String> = keys.iter().collect();
                distinct.sort();
                distinct.dedup();
                let (mut sure, mut maybe) = (0, 0);
                for k in &distinct {
                    match model.presence(k, start, end) {
                        Presence::Yes(_) => sure += 1,
                        Presence::Either(_) => maybe += 1,
                        Presence::No => {}
                    }
                }
                for k in &distinct {
                    model.keys.remove(*k);
                }
                (sure..=sure + maybe).contains(&deleted)
            }
            _ => {
                let ttl = ttl_choice(&mut rng).unwrap_or(Duration::from_secs(30));
                let found = client.expire(&k, common::ttl(ttl)).await.expect("expire");
                let end = Instant::now();
                let ok = match model.presence(&k, start, end) {
                    Presence::Yes(_) => found,
                    Presence::No => !found,
                    Presence::Either(_) => true,
                };
                match (found, model.keys.get_mut(&k)) {
                    (true, Some(e)) => e.expiry = Model::window(Some(ttl), start, end),
                    _ => {
                        model.keys.remove(&k);
                    }
                }
                ok
            }
        };
        ops += 1;
        if !ok {
            mismatches += 1;
        }
    }
    Tally {
        ops,
        mismatches,
        sure_hits: model.sure_hits,
        sure_misses: model.sure_misses,
    }
}

async fn run_model(plugin: &Plugin, default_ttl: Duration) {
    let seed: u64 = std::env::var("CONSISTENCY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED);
    let channel = plugin.channel().await;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client_run(channel.clone(), id, seed, default_ttl)))
        .collect();
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.expect("client");
        all.ops += t.ops;
        all.mismatches += t.mismatches;
        all.sure_hits += t.sure_hits;
        all.sure_misses += t.sure_misses;
    }
    eprintln!("[consistency] seed={seed:#x} {all:?}");
    // Operations counted as they ran, not the loop's bound.
    assert!(all.ops >= 100_000, "{all:?}");
    // A tenth of the operations each way had exactly one right answer.
    assert!(all.sure_hits >= all.ops / 10, "{all:?}");
    assert!(all.sure_misses >= all.ops / 10, "{all:?}");
    assert_eq!(all.mismatches, 0, "seed {seed:#x}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_matches_the_model_over_100k_operations() {
    let server = RedisServer::start(Flavor::Redis);
    let config = redis_config(&server, &test_prefix("model"));
    let default_ttl = config.backend.default_ttl.0.expect("harness default ttl");
    let plugin = Plugin::start_serving(config).await;
    run_model(&plugin, default_ttl).await;
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_matches_the_model_over_100k_operations() {
    let config = memory_config("model:");
    let default_ttl = config.backend.default_ttl.0.expect("harness default ttl");
    let plugin = Plugin::start_serving(config).await;
    run_model(&plugin, default_ttl).await;
    plugin.stop().await;
}
