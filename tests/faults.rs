//! Fault injection under a steady mixed load: Redis killed, paused, its
//! connections killed, its ACL user deleted; and overload. Each test prints
//! its figures (error window, recovery, errors by code) and asserts the
//! failure contract: errors only inside the fault, only UNAVAILABLE or
//! DEADLINE_EXCEEDED (RESOURCE_EXHAUSTED for overload), nothing hangs,
//! recovery by itself.
//!
//! Durations are the (3 s outages); the overload burst runs 5 s here
//! and 30 s with `FAULTS_FULL=1` (see README, "Failure behaviour").
//!
//! Time bounds: `FAULTS_FULL=1` asserts the figures as written (1 s
//! recovery, failed p99 within the operation timeout, admitted p99 within
//! 2x). The CI form allows three times each bound, because CI shares two
//! cores with compiles and other tests; the figures are printed either way.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    CACHE_ACL, CACHE_USER, Flavor, NOT_SERVING, Plugin, RedisServer, SERVING,
    load::{self, Load, Sample},
    redis_config, test_prefix,
};
use tonic::Code;

const OP_TIMEOUT: Duration = Duration::from_millis(500);

/// True for the full, strict run (`FAULTS_FULL=1`).
fn strict() -> bool {
    std::env::var_os("FAULTS_FULL").is_some()
}

/// A time bound: as written when strict, three times it otherwise.
fn bound(tight: Duration) -> Duration {
    if strict() { tight } else { tight * 3 }
}

struct Run {
    plugin: Plugin,
    stop: Arc<AtomicBool>,
    load: tokio::task::JoinHandle<Vec<Sample>>,
}

async fn start(server: &RedisServer, name: &str, workers: usize) -> Run {
    let mut config = redis_config(server, &test_prefix(name));
    config.backend.operation_timeout = redis_cache_plugin::config::Dur(OP_TIMEOUT);
    let plugin = Plugin::start(config).await;
    assert!(plugin.wait_health(SERVING, Duration::from_secs(10)).await);
    let stop = Arc::new(AtomicBool::new(false));
    let spec = Load {
        workers,
        pause: Duration::from_millis(2),
        deadline: Duration::from_secs(5),
    };
    let load = tokio::spawn(load::run(plugin.channel().await, spec, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    Run { plugin, stop, load }
}

/// The only codes an outage may produce.
const OUTAGE_CODES: [Code; 2] = [Code::Unavailable, Code::DeadlineExceeded];

impl Run {
    /// The fault ended just now: waits for SERVING, lets traffic settle,
    /// stops the load, reports, and checks that every failure carries an
    /// outage code and lies between the fault and `grace` after healing.
    async fn healed(
        self,
        name: &str,
        fault: Instant,
        grace: Duration,
    ) -> (Plugin, Vec<Sample>, Instant) {
        let healed = Instant::now();
        let serving = self
            .plugin
            .wait_health(SERVING, Duration::from_secs(2))
            .await;
        assert!(serving, "{name}: SERVING again");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (plugin, samples) = self.finish().await;
        report(name, &samples, fault, healed);
        assert_failures_inside(&samples, &OUTAGE_CODES, fault, healed, bound(grace));
        (plugin, samples, healed)
    }

    async fn finish(self) -> (Plugin, Vec<Sample>) {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.load.await.expect("load");
        (self.plugin, samples)
    }
}

/// First success that started at or after `t`.
fn first_ok_after(samples: &[Sample], t: Instant) -> Option<Instant> {
    samples
        .iter()
        .filter(|s| s.start >= t && s.code == Code::Ok)
        .map(|s| s.end())
        .min()
}

fn report(name: &str, samples: &[Sample], fault: Instant, healed: Instant) {
    let failed: Vec<_> = samples
        .iter()
        .filter(|s| s.code != Code::Ok)
        .cloned()
        .collect();
    let window = match (failed.first(), failed.iter().map(|s| s.end()).max()) {
        (Some(first), Some(last)) => last.duration_since(first.start),
        _ => Duration::ZERO,
    };
    let recovery = first_ok_after(samples, healed).map(|t| t.duration_since(healed));
    eprintln!(
        "[{name}] calls={} failed={} by_code={:?} error_window={window:?} \
         failed_p99={:?} max_latency={:?} recovery_after_heal={recovery:?} fault_to_heal={:?}",
        samples.len(),
        failed.len(),
        load::by_code(samples),
        load::quantile(&failed, 0.99),
        samples.iter().map(|s| s.latency).max().unwrap_or_default(),
        healed.duration_since(fault),
    );
}

/// Every failure is one of `allowed` and lies inside [fault, healed + grace].
fn assert_failures_inside(
    samples: &[Sample],
    allowed: &[Code],
    fault: Instant,
    healed: Instant,
    grace: Duration,
) {
    for s in samples.iter().filter(|s| s.code != Code::Ok) {
        assert!(allowed.contains(&s.code), "unexpected {:?}", s.code);
        assert!(s.end() >= fault, "failure before the fault: {s:?}");
        assert!(
            s.start <= healed + grace,
            "failure {:?} after recovery deadline",
            s.start.duration_since(healed)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_fails_only_during_outage_and_recovers() {
    let mut server = RedisServer::start(Flavor::Redis);
    let run = start(&server, "kill", 8).await;
    let fault = Instant::now();
    tokio::task::block_in_place(|| server.kill());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        run.plugin.health("").await,
        NOT_SERVING,
        "health follows Redis down"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| server.restart());
    let (plugin, samples, healed) = run
        .healed("redis_killed", fault, Duration::from_secs(1))
        .await;
    let failed: Vec<_> = samples
        .iter()
        .filter(|s| s.code != Code::Ok)
        .cloned()
        .collect();
    assert!(!failed.is_empty(), "the outage was seen");
    let p99 = load::quantile(&failed, 0.99);
    assert!(
        p99 <= bound(OP_TIMEOUT + Duration::from_millis(100)),
        "failed p99 {p99:?}"
    );
    let recovered = first_ok_after(&samples, healed).expect("a success after restart");
    assert!(recovered.duration_since(healed) <= bound(Duration::from_secs(1)));
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_calls_fail_by_deadline_and_none_hangs() {
    let server = RedisServer::start(Flavor::Valkey);
    let run = start(&server, "pause", 8).await;
    let fault = Instant::now();
    server.signal("STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.signal("CONT");
    let (plugin, samples, healed) = run
        .healed("redis_paused", fault, Duration::from_secs(1))
        .await;
    let max = samples.iter().map(|s| s.latency).max().unwrap_or_default();
    assert!(
        max <= bound(OP_TIMEOUT + Duration::from_millis(300)),
        "a call hung for {max:?}"
    );
    assert!(first_ok_after(&samples, healed).is_some());
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_of_all_connections_recovers_within_2s() {
    let server = RedisServer::start(Flavor::Redis);
    let run = start(&server, "clientkill", 8).await;
    let fault = Instant::now();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg(CACHE_USER)
        .query(&mut server.admin())
        .expect("CLIENT KILL");
    assert!(killed >= 4, "killed {killed}");
    // Healing starts at once: the plugin must reconnect within 2 s.
    let (plugin, _, _) = run
        .healed("client_kill", fault, Duration::from_secs(2))
        .await;
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_deleted_mid_load_recovers_when_it_returns() {
    let server = RedisServer::start(Flavor::Valkey);
    let run = start(&server, "deluser", 8).await;
    let fault = Instant::now();
    let mut admin = server.admin();
    redis::cmd("ACL")
        .arg("DELUSER")
        .arg(CACHE_USER)
        .query::<i64>(&mut admin)
        .expect("ACL DELUSER");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        run.plugin
            .wait_health(NOT_SERVING, bound(Duration::from_secs(1)))
            .await
    );
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg(CACHE_USER)
        .arg("on")
        .arg(format!(">{}", server.cache_password));
    for rule in CACHE_ACL.split_whitespace() {
        setuser.arg(rule);
    }
    setuser.query::<()>(&mut admin).expect("ACL SETUSER");
    let (plugin, _, _) = run
        .healed("acl_deluser", fault, Duration::from_secs(2))
        .await;
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_rejected_at_once_and_memory_stays_bounded() {
    let full = strict();
    let burst = Duration::from_secs(if full { 30 } else { 5 });
    let server = RedisServer::start(Flavor::Redis);
    let limit = 16;
    let mut config = redis_config(&server, &test_prefix("overload"));
    config.control_plane.max_concurrent_requests = limit;
    let plugin = Plugin::start(config).await;
    assert!(plugin.wait_health(SERVING, Duration::from_secs(10)).await);
    let channel = plugin.channel().await;
    let closed = |workers| Load {
        workers,
        pause: Duration::ZERO,
        deadline: Duration::from_secs(5),
    };

    // Sustainable: as many callers as the limit admits.
    let unloaded = timed(channel.clone(), closed(limit), Duration::from_secs(2)).await;
    let rss_before = load::rss_kib();
    // Overload: four times as many callers, each as fast as it can.
    let overload = timed(channel.clone(), closed(4 * limit), burst).await;
    let rss_after = load::rss_kib();
    assert_eq!(
        plugin.health("").await,
        SERVING,
        "healthy the moment the burst ends"
    );

    let admitted: Vec<_> = overload
        .iter()
        .filter(|s| s.code == Code::Ok)
        .cloned()
        .collect();
    let rejected = overload
        .iter()
        .filter(|s| s.code == Code::ResourceExhausted)
        .count();
    let (p99_unloaded, p99_admitted) = (
        load::quantile(&unloaded, 0.99),
        load::quantile(&admitted, 0.99),
    );
    eprintln!(
        "[overload] unloaded: calls={} p99={p99_unloaded:?}; burst {burst:?}: calls={} by_code={:?} \
         admitted_p99={p99_admitted:?} ratio={:.2} rss_kib {rss_before} -> {rss_after}",
        unloaded.len(),
        overload.len(),
        load::by_code(&overload),
        p99_admitted.as_secs_f64() / p99_unloaded.as_secs_f64().max(1e-9),
    );
    assert!(rejected > 0, "excess was rejected");
    // Under CPU starvation an admitted call may still run out its deadline;
    // that is the documented answer, but the strict run allows none.
    let allowed: &[Code] = if strict() {
        &[Code::Ok, Code::ResourceExhausted]
    } else {
        &[Code::Ok, Code::ResourceExhausted, Code::DeadlineExceeded]
    };
    for s in &overload {
        assert!(allowed.contains(&s.code), "{s:?}");
    }
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew {rss_before} -> {rss_after} KiB"
    );
    if full {
        assert!(
            p99_admitted <= 2 * p99_unloaded,
            "admitted p99 {p99_admitted:?}"
        );
    }
    plugin.stop().await;
}

async fn timed(channel: tonic::transport::Channel, spec: Load, for_: Duration) -> Vec<Sample> {
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(load::run(channel, spec, stop.clone()));
    tokio::time::sleep(for_).await;
    stop.store(true, Ordering::Relaxed);
    task.await.expect("load")
}

/// Ten minutes of mixed load (`SOAK_SECS` to change) against the plugin
/// binary as its own process: no error, and its RSS after the run within
/// 10 % of its RSS after the first minute. Long: run by hand, see README.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "10-minute soak; run with --run-ignored only"]
async fn soak_mixed_load_has_no_errors_and_no_growth() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let server = RedisServer::start(Flavor::Redis);
    let plugin = common::PluginProcess::start(&server, &test_prefix("soak"));
    let stop = Arc::new(AtomicBool::new(false));
    let spec = Load {
        workers: 16,
        pause: Duration::from_millis(2),
        deadline: Duration::from_secs(5),
    };
    let counting = tokio::spawn(load::count(plugin.channel().await, spec, stop.clone()));
    tokio::time::sleep(Duration::from_secs(secs.min(60))).await;
    let rss_warm = plugin.rss_kib();
    tokio::time::sleep(Duration::from_secs(secs.saturating_sub(60))).await;
    let rss_end = plugin.rss_kib();
    stop.store(true, Ordering::Relaxed);
    let counts = counting.await.expect("load");
    eprintln!("[soak] {secs}s by_code={counts:?} plugin rss_kib warm={rss_warm} end={rss_end}");
    assert!(rss_warm > 0, "plugin RSS was read");
    assert!(counts.keys().all(|k| k == "Ok"), "errors: {counts:?}");
    assert!(rss_end as f64 <= rss_warm as f64 * 1.10, "RSS grew");
}
