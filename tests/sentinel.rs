//! Sentinel topology end to end, on Redis and on Valkey: the plugin finds
//! the master through the sentinels (some down or silent, with or without
//! AUTH on the sentinels), writes land on the master, and when the master
//! is SIGKILLed under load the plugin follows the new one: errors only
//! UNAVAILABLE/DEADLINE_EXCEEDED and none later than 2 s after Sentinel
//! named the new master, no wrong answer against an exact model (except
//! writes acknowledged in the last second before the kill: asynchronous
//! replication), later writes on the new master. A master demoted without
//! dying (SENTINEL FAILOVER) is followed too and counted.
//!
//! Every fault is asserted to have happened (old master gone or demoted,
//! another master named) before the recovery is.

mod common;

use std::{
    collections::BTreeMap,
    net::TcpListener as StdListener,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    CACHE_USER, Cache, Flavor, Plugin, base_config, free_port, plugin, test_prefix,
    topology::SentinelSet,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use redis_cache_plugin::{
    backend::{Backend, SetCondition, redis::RedisBackend},
    config::{BackendKind, Config, Secret, Topology},
    pb::{DeleteRequest, GetRequest, MGetRequest, SetRequest, cache_client::CacheClient},
};
use tonic::{Code, transport::Channel};

twin_tests!(
    calls_reach_the_master_the_sentinels_name,
    unreachable_and_silent_sentinels_are_tolerated,
    sentinels_with_auth_are_logged_in_to,
    no_master_named_is_not_serving,
    master_killed_under_load_is_followed,
    a_demoted_master_is_left_and_the_failover_counted,
);

/// A plugin config for `set` as the cache user, sentinels as `addresses`.
fn sentinel_config(set: &SentinelSet, addresses: Vec<String>, prefix: &str) -> Config {
    let mut c = base_config(prefix);
    c.backend.kind = BackendKind::Redis;
    c.backend.topology = Topology::Sentinel;
    c.backend.addresses = addresses;
    c.backend.sentinel_master = set.master_name().into();
    c.backend.username = CACHE_USER.into();
    c.backend.password = Secret::new(set.users.cache.clone());
    if let Some(pw) = &set.sentinel_password {
        c.backend.sentinel_username = CACHE_USER.into();
        c.backend.sentinel_password = Secret::new(pw.clone());
    }
    c
}

/// Set, Get, MGet, Expire and Delete through the plugin, each checked
/// on the master with redis-cli (the key is there with its TTL, and gone).
async fn ops_land_on_the_master(cache: &mut Cache, set: &SentinelSet, prefix: &str) {
    let master = set.current_master().expect("a sentinel names the master");
    let node = set.node(&master);
    cache.set("k1", b"v1").await.expect("Set");
    assert_eq!(
        node.raw_get(&format!("{prefix}k1")).as_deref(),
        Some(&b"v1"[..])
    );
    let got = cache.get("k1").await.expect("Get");
    assert!(got.found && got.value == b"v1"[..], "{got:?}");
    let many = cache.mget(["k1", "absent"]).await.expect("MGet");
    assert_eq!(many.hits.len(), 1, "{many:?}");
    assert_eq!(many.hits.get("k1").map(|v| &v[..]), Some(&b"v1"[..]));
    let ttl = common::ttl(Duration::from_secs(30));
    assert!(cache.expire("k1", ttl).await.expect("Expire"), "k1 exists");
    let pttl = node.pttl(&format!("{prefix}k1"));
    assert!(
        (25_000..=30_000).contains(&pttl),
        "PTTL on the master: {pttl}"
    );
    assert_eq!(cache.delete(["k1", "absent"]).await.expect("Delete"), 1);
    assert_eq!(
        node.raw_get(&format!("{prefix}k1")),
        None,
        "gone on the master"
    );
    for replica in set.data_addresses().iter().filter(|a| **a != master) {
        assert_eq!(set.role(replica).as_deref(), Some("slave"), "{replica}");
    }
}

async fn calls_reach_the_master_the_sentinels_name(flavor: Flavor) {
    let set = SentinelSet::start(flavor);
    let prefix = test_prefix("sentinel-ops");
    let plugin =
        Plugin::start_serving(sentinel_config(&set, set.sentinel_addresses(), &prefix)).await;
    ops_land_on_the_master(&mut plugin.cache().await, &set, &prefix).await;
    plugin.stop().await;
}

/// A loopback listener that accepts (the kernel completes the handshake)
/// and never answers: a sentinel that hangs.
fn silent_sentinel() -> (StdListener, String) {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    (listener, address)
}

async fn unreachable_and_silent_sentinels_are_tolerated(flavor: Flavor) {
    let set = SentinelSet::start(flavor);
    let (_silent, silent) = silent_sentinel();
    let refused = format!("127.0.0.1:{}", free_port());
    // The real one last: the others are asked (and fail) first.
    let addresses = vec![refused, silent, set.sentinel_addresses().remove(0)];
    let prefix = test_prefix("sentinel-down");
    let plugin = Plugin::start_serving(sentinel_config(&set, addresses, &prefix)).await;
    ops_land_on_the_master(&mut plugin.cache().await, &set, &prefix).await;
    plugin.stop().await;
}

async fn sentinels_with_auth_are_logged_in_to(flavor: Flavor) {
    let set = SentinelSet::start_with_auth(flavor);
    let prefix = test_prefix("sentinel-auth");
    let config = sentinel_config(&set, set.sentinel_addresses(), &prefix);
    assert!(!config.backend.sentinel_password.is_empty(), "AUTH is used");
    let plugin = Plugin::start_serving(config).await;
    ops_land_on_the_master(&mut plugin.cache().await, &set, &prefix).await;
    plugin.stop().await;
}

/// Sentinels that refuse the plugin (a wrong sentinel password) or do not
/// know the master name: NOT_SERVING, calls UNAVAILABLE, and one warning
/// saying why, without the password.
async fn no_master_named_is_not_serving(flavor: Flavor) {
    let set = SentinelSet::start_with_auth(flavor);
    let prefix = test_prefix("sentinel-none");
    let wrong = "not-the-sentinel-password";
    let yaml = format!(
        "  sentinel_username: {CACHE_USER}\n  sentinel_password: {wrong}\n  operation_timeout: 500ms\n"
    );
    let mut child = PluginChild::start(&set, &prefix, &yaml);
    let mut cache = Cache::connect(&child.addr).await;
    let err = cache.get("k").await.expect_err("no master known");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let probe = plugin::probe(&child.addr, &[]);
    assert!(!probe.status.success(), "health is NOT_SERVING: {probe:?}");
    let line = child.running.line_with("no sentinel names the master");
    assert!(
        line.contains("WRONGPASS") || line.contains("invalid"),
        "{line}"
    );
    assert!(
        !child.running.log().contains(wrong),
        "the password is not logged"
    );
}

// === the plugin as a child process (its log, its own runtime) ===

/// The plugin binary in sentinel mode at log level info.
struct PluginChild {
    running: plugin::Running,
    addr: String,
    _dir: tempfile::TempDir,
}

impl PluginChild {
    /// `backend_extra`: more lines of the `backend:` block (indented two
    /// spaces); the data nodes' password goes through `REDIS_PASSWORD`.
    fn start(set: &SentinelSet, prefix: &str, backend_extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addresses = set.sentinel_addresses().join("\", \"");
        let yaml = plugin::loopback_yaml(port, "health_interval: 100ms", "info")
            + &format!(
                "backend:\n  topology: sentinel\n  addresses: [\"{addresses}\"]\n  sentinel_master: {}\n  username: {CACHE_USER}\n  key_prefix: \"{prefix}\"\n{backend_extra}",
                set.master_name()
            );
        let path: PathBuf = plugin::write_config(dir.path(), &yaml);
        let mut running = plugin::PluginCommand::new()
            .config(&path)
            .env("REDIS_PASSWORD", &set.users.cache)
            .start();
        let addr = format!("127.0.0.1:{port}");
        running.wait_accepting(addr.parse().expect("addr"));
        Self {
            running,
            addr,
            _dir: dir,
        }
    }
}

// === the failover under load ===

const WORKERS: usize = 4;
const KEYS_PER_WORKER: usize = 8;
/// Per-call deadline the clients send.
const CALL_DEADLINE: Duration = Duration::from_secs(1);
/// Backstop on each worker's calls; the run is stopped by time first.
const MAX_CALLS_PER_WORKER: usize = 200_000;

/// One call a worker made, and what came back.
#[derive(Debug)]
struct Op {
    /// Indices into the worker's keys.
    keys: Vec<usize>,
    kind: Kind,
    start: Instant,
    end: Instant,
    result: Result<Vec<Option<Vec<u8>>>, (Code, String)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Set(Vec<u8>),
    Delete,
    Get,
    MGet,
}

fn key(worker: usize, index: usize) -> String {
    format!("w{worker}k{index}")
}

/// One closed-loop worker: random Set/Get/MGet/Delete over its own keys
/// until `stop` (or the backstop); returns every call.
async fn worker(channel: Channel, w: usize, stop: Arc<AtomicBool>) -> Vec<Op> {
    let mut client = CacheClient::new(channel);
    let mut rng = StdRng::seed_from_u64(w as u64);
    let mut ops = Vec::new();
    for i in 0..MAX_CALLS_PER_WORKER {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let k = rng.random_range(0..KEYS_PER_WORKER);
        let (keys, kind) = match rng.random_range(0..10) {
            0..4 => (vec![k], Kind::Set(format!("w{w}-{i}").into_bytes())),
            4..7 => (vec![k], Kind::Get),
            7..9 => ((0..KEYS_PER_WORKER).collect(), Kind::MGet),
            _ => (vec![k], Kind::Delete),
        };
        let start = Instant::now();
        let result = call(&mut client, w, &keys, &kind).await;
        let end = Instant::now();
        let result = result.map_err(|s| (s.code(), s.message().to_string()));
        ops.push(Op {
            keys,
            kind,
            start,
            end,
            result,
        });
    }
    ops
}

/// Sends one call; reads come back as values, writes as nothing.
async fn call(
    client: &mut CacheClient<Channel>,
    w: usize,
    keys: &[usize],
    kind: &Kind,
) -> Result<Vec<Option<Vec<u8>>>, tonic::Status> {
    fn timed<T>(msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(CALL_DEADLINE);
        req
    }
    let names: Vec<String> = keys.iter().map(|&i| key(w, i)).collect();
    let first = names[0].clone();
    Ok(match kind {
        Kind::Set(v) => {
            let ttl = common::ttl(Duration::from_secs(600));
            let req = SetRequest {
                key: first,
                value: v.clone().into(),
                ttl,
                condition: 0,
            };
            client.set(timed(req)).await.map(|_| Vec::new())?
        }
        Kind::Delete => client
            .delete(timed(DeleteRequest { keys: names }))
            .await
            .map(|_| Vec::new())?,
        Kind::Get => {
            let reply = client.get(timed(GetRequest { key: first })).await?;
            let reply = reply.into_inner();
            vec![reply.found.then(|| reply.value.to_vec())]
        }
        Kind::MGet => {
            let req = MGetRequest {
                keys: names.iter().map(|n| n.as_str().into()).collect(),
            };
            let hits = client.m_get(timed(req)).await?.into_inner().hits;
            names
                .iter()
                .map(|n| hits.get(n).map(|v| v.to_vec()))
                .collect()
        }
    })
}

/// Runs the workers on their own thread and runtime (the test's thread
/// blocks on the harness' polls meanwhile) until `stop` or `MAX_RUN`.
fn start_load(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Vec<Op>>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let channel = Channel::from_shared(format!("http://{addr}"))
                .expect("url")
                .connect()
                .await
                .expect("connect to the plugin");
            let workers: Vec<_> = (0..WORKERS)
                .map(|w| tokio::spawn(worker(channel.clone(), w, stop.clone())))
                .collect();
            let mut all = Vec::new();
            for w in workers {
                all.push(w.await.expect("worker"));
            }
            all
        })
    })
}

/// When the master died and when Sentinel named the master the failover
/// settled on.
struct Fault {
    killed_at: Instant,
    named_at: Instant,
    /// Sentinel named another master first, then re-elected (see
    /// [`watch_master`]).
    reelected: bool,
}

impl Fault {
    /// A write acknowledged in the last second before the kill may be
    /// missing on the new master (asynchronous replication). After a
    /// re-election, so may one acknowledged by the master named first,
    /// until a second after the last one was named: that node is made a
    /// replica of the last one and resyncs from it.
    fn may_be_lost(&self, op: &Op) -> bool {
        let second = Duration::from_secs(1);
        let before_kill = op.start <= self.killed_at && op.end + second >= self.killed_at;
        let on_the_first = self.reelected && op.end <= self.named_at + second;
        before_kill || on_the_first
    }
}

/// Follows the master Sentinel names, from `first` (named at `at`), until
/// it has not changed for 3 s and 5 s have passed since `at` (bounded by
/// 30 s); returns the last one and when it was first seen. On a loaded
/// machine a failover can be re-run with a newer epoch that picks another
/// replica, after the first pick was already promoted and took writes
/// (seen once in CI: named 2.2 s after the kill, replaced at 4.5 s).
fn watch_master(set: &SentinelSet, first: String, at: Instant) -> (String, Instant) {
    let (mut master, mut since) = (first, at);
    let deadline = at + Duration::from_secs(30);
    loop {
        let now = Instant::now();
        let quiet = now >= since + Duration::from_secs(3) && now >= at + Duration::from_secs(5);
        if quiet || now >= deadline {
            return (master, since);
        }
        if let Some(m) = set.current_master()
            && m != master
        {
            println!("{:?}: Sentinel re-elected: {master} -> {m}", set.flavor);
            (master, since) = (m, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What one worker's calls show against the model.
#[derive(Default)]
struct Verdict {
    wrong: Vec<String>,
    /// Reads only one answer fitted: the ones that can catch a wrong value.
    sure_reads: usize,
    /// Per key: the value it must have now, when written after the kill.
    written_after_kill: BTreeMap<usize, Option<Vec<u8>>>,
}

/// Replays one worker's calls (each key is that worker's alone, one call
/// at a time) against the model: per key, the values a read may return.
/// An acknowledged write leaves one (unless it may be lost); a failed one
/// adds its value to what was possible (it may or may not have happened).
fn check_worker(ops: &[Op], fault: &Fault) -> Verdict {
    let mut possible: Vec<Vec<Option<Vec<u8>>>> = vec![vec![None]; KEYS_PER_WORKER];
    let mut written_at = vec![None; KEYS_PER_WORKER];
    let mut v = Verdict::default();
    for op in ops {
        let written = match &op.kind {
            Kind::Set(value) => Some(Some(value.clone())),
            Kind::Delete => Some(None),
            Kind::Get | Kind::MGet => None,
        };
        if let Some(value) = written {
            let exact = op.result.is_ok() && !fault.may_be_lost(op);
            for &k in &op.keys {
                written_at[k] = Some(ms_after(op.end, fault.killed_at));
                if exact {
                    possible[k] = vec![value.clone()];
                } else if !possible[k].contains(&value) {
                    possible[k].push(value.clone());
                }
                match exact && op.start > fault.killed_at {
                    true => v.written_after_kill.insert(k, value.clone()),
                    false => v.written_after_kill.remove(&k),
                };
            }
            continue;
        }
        let Ok(values) = &op.result else { continue };
        for (&k, got) in op.keys.iter().zip(values) {
            if !possible[k].contains(got) {
                v.wrong.push(format!(
                    "key {k}: read {got:?} in a call from {} to {} ms after the kill; expected one of {:?} (written {:?} ms after the kill)",
                    ms_after(op.start, fault.killed_at),
                    ms_after(op.end, fault.killed_at),
                    possible[k],
                    written_at[k]
                ));
            } else if possible[k].len() == 1 {
                v.sure_reads += 1;
            }
        }
    }
    v
}

/// Milliseconds from `since` to `t`, negative before it.
fn ms_after(t: Instant, since: Instant) -> i128 {
    match t.checked_duration_since(since) {
        Some(d) => d.as_millis() as i128,
        None => -(since.duration_since(t).as_millis() as i128),
    }
}

/// Every failed call: UNAVAILABLE or DEADLINE_EXCEEDED, and none that
/// started later than 2 s after Sentinel named the new master.
fn check_errors(all: &[Vec<Op>], fault: &Fault) -> usize {
    let recovered_by = fault.named_at + Duration::from_secs(2);
    let mut failed = 0;
    for op in all.iter().flatten() {
        let Err((code, msg)) = &op.result else {
            continue;
        };
        failed += 1;
        assert!(
            matches!(code, Code::Unavailable | Code::DeadlineExceeded),
            "{:?} failed with {code:?}: {msg}",
            op.kind
        );
        assert!(
            op.start <= recovered_by,
            "{:?} failed {:?} after the new master was named: {code:?} {msg}",
            op.kind,
            op.start - fault.named_at
        );
    }
    failed
}

async fn master_killed_under_load_is_followed(flavor: Flavor) {
    let mut set = SentinelSet::start(flavor);
    let prefix = test_prefix("sentinel-kill");
    let mut child = PluginChild::start(&set, &prefix, "  pool_timeout: 500ms\n");
    let mut cache = Cache::connect(&child.addr).await;
    let up = cache.set_succeeds_within("warm", b"up", Duration::from_secs(15));
    assert!(up.await, "the plugin never served: {}", child.running.log());

    // The model allows losing the last second, not a replica's first sync.
    set.wait_replicas_synced();
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(child.addr.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    let (old, killed_at) = set.kill_master();
    assert_eq!(set.role(&old), None, "the old master is gone");
    let (first, took) = set.wait_new_master(&old, killed_at, Duration::from_secs(30));
    assert_ne!(first, old, "another master named");
    // Recovery is judged on the calls after named + 2 s: give them 3 s.
    let (new, named_at) = watch_master(&set, first.clone(), killed_at + took);
    stop.store(true, Ordering::Relaxed);
    let fault = Fault {
        killed_at,
        named_at,
        reelected: new != first,
    };
    let all = load.join().expect("load thread");

    let failed = check_errors(&all, &fault);
    let late_ok = all
        .iter()
        .flatten()
        .filter(|o| o.start > fault.named_at + Duration::from_secs(2) && o.result.is_ok())
        .count();
    let total: usize = all.iter().map(Vec::len).sum();
    let last_error = all
        .iter()
        .flatten()
        .filter(|o| o.result.is_err())
        .map(|o| o.start)
        .max();
    let last_error = last_error.map(|t| t.duration_since(killed_at));
    println!(
        "{flavor:?}: {total} calls, {failed} failed, the last one starting {last_error:?} after the kill; \
         new master named {took:?} after the kill (re-elected: {}); {late_ok} ok after named + 2 s",
        fault.reelected
    );
    assert!(failed > 0, "the kill was felt by the plugin");
    assert!(late_ok > 100, "calls succeed after the failover: {late_ok}");
    let new_node = set.node(&new);
    let (mut sure, mut landed) = (0, 0);
    for (w, ops) in all.iter().enumerate() {
        let v = check_worker(ops, &fault);
        if !v.wrong.is_empty() {
            let log = child.running.log();
            let moves: Vec<&str> = log.lines().filter(|l| l.contains("sentinel")).collect();
            panic!(
                "worker {w}: wrong answers: {:#?}\nplugin: {moves:#?}",
                v.wrong
            );
        }
        sure += v.sure_reads;
        for (k, value) in v.written_after_kill {
            let held = new_node.raw_get(&format!("{prefix}{}", key(w, k)));
            assert_eq!(held, value, "worker {w} key {k} on the new master {new}");
            landed += 1;
        }
    }
    assert!(
        sure > 100 && landed > 0,
        "the model checked: {sure} sure reads, {landed} keys"
    );
    // The first move leaves the killed master. After a re-election the
    // plugin may have followed the master named first on the way, so the
    // move to the last one can be a later line.
    let line = child.running.line_with("master moved");
    assert!(line.contains(&old), "{line}");
    let line = child.running.line_with(&format!(r#""to":"{new}""#));
    assert!(line.contains("master moved"), "{line}");
}

/// Sentinel settings for a backend built directly (to read its counter).
fn backend_settings(set: &SentinelSet) -> redis_cache_plugin::backend::redis::RedisSettings {
    redis_cache_plugin::backend::redis::RedisSettings {
        topology: Topology::Sentinel,
        address: String::new(),
        addresses: set.sentinel_addresses(),
        sentinel_master: set.master_name().into(),
        sentinel_username: String::new(),
        sentinel_password: Secret::default(),
        database: 0,
        pool_size: 2,
        connect_timeout: Duration::from_millis(500),
        operation_timeout: Duration::from_millis(500),
        max_retries: 3,
        tls: None,
        max_reply_bytes: 1 << 20,
        near_cache: None,
    }
}

/// `SENTINEL FAILOVER`: the master is demoted, not killed (it stays up,
/// as a replica). The backend moves to the new master, counts one
/// failover, and its writes meanwhile fail only UNAVAILABLE (a demoted
/// master's READONLY or a refused ROLE check), never INTERNAL.
async fn a_demoted_master_is_left_and_the_failover_counted(flavor: Flavor) {
    use redis_cache_plugin::{credentials, error::Error, shutdown::Shutdown};
    let set = SentinelSet::start(flavor);
    let shutdown = Shutdown::new();
    let creds = credentials::fixed(CACHE_USER, &Secret::new(set.users.cache.clone()));
    let backend =
        RedisBackend::start(backend_settings(&set), creds, shutdown.watch()).expect("backend");
    let key = test_prefix("sentinel-demote") + "k";
    let write = |v: &'static str| {
        let value = v.as_bytes().to_vec().into();
        backend.set(key.clone(), value, None, SetCondition::Always)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while write("before").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the backend never found the master"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(backend.failovers_followed(), 0);

    set.wait_replicas_synced();
    let old = set.current_master().expect("a master");
    let sentinel = set.sentinel_addresses().remove(0);
    ::redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg(set.master_name())
        .exec(&mut set.sentinel_as(&sentinel, None))
        .expect("SENTINEL FAILOVER");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut errors = Vec::new();
    let new = loop {
        if let Err(e) = write("during").await {
            errors.push(e);
        }
        match set.current_master() {
            Some(m) if m != old && set.role(&old).as_deref() == Some("slave") => break m,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no failover: {:?}",
            set.current_master()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        set.role(&new).as_deref(),
        Some("master"),
        "the fault: {old} demoted, {new} promoted"
    );
    let followed = common::eventually(Duration::from_secs(10), || {
        backend.failovers_followed() == 1
    })
    .await;
    assert!(
        followed,
        "the backend followed: {} failovers",
        backend.failovers_followed()
    );
    let recovered = async {
        while write("after").await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), recovered)
        .await
        .expect("writes work again");
    assert_eq!(set.node(&new).raw_get(&key).as_deref(), Some(&b"after"[..]));
    for e in &errors {
        assert!(
            matches!(e, Error::Unavailable(_) | Error::DeadlineExceeded(_)),
            "{e:?}"
        );
    }
    assert_eq!(
        backend.failovers_followed(),
        1,
        "one failover, counted once"
    );
}
