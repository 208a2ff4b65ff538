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
/// `control_plane.refusal_delay`'s default: how long a refusal in a flood of
/// them waits before it is answered.
const REFUSAL_DELAY: Duration = Duration::from_millis(10);

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
    let plugin = Plugin::start_serving(config).await;
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

/// Calls at the end of a run that must all have succeeded.
const LAST_OK: usize = 50;

impl Run {
    /// The fault ended just now: waits for SERVING, keeps the load running
    /// past the recovery deadline (so a failure after it is seen), stops it,
    /// reports, and checks that every failure carries an outage code and lies
    /// between the fault and `grace` after healing, that a call started after
    /// healing succeeded within `grace`, and that the last calls all passed.
    async fn healed(
        self,
        name: &str,
        fault: Instant,
        grace: Duration,
    ) -> (Plugin, Vec<Sample>, Instant) {
        let healed = Instant::now();
        let serving = self
            .plugin
            .wait_health(SERVING, bound(grace) + Duration::from_secs(2))
            .await;
        assert!(serving, "{name}: SERVING again");
        let settle = (healed + bound(grace) + Duration::from_secs(1))
            .max(Instant::now() + Duration::from_secs(1));
        tokio::time::sleep_until(settle.into()).await;
        let (plugin, samples) = self.finish().await;
        report(name, &samples, fault, healed);
        assert_failures_inside(&samples, &OUTAGE_CODES, fault, healed, bound(grace));
        let recovered = first_ok_after(&samples, healed).expect("a success after healing");
        let took = recovered.duration_since(healed);
        assert!(
            took <= bound(grace),
            "{name}: first success {took:?} after healing"
        );
        assert_last_ok(&samples, LAST_OK);
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

/// The last `n` calls (by start) all succeeded, and there were that many.
fn assert_last_ok(samples: &[Sample], n: usize) {
    assert!(samples.len() >= n, "only {} calls", samples.len());
    let tail = &samples[samples.len() - n..];
    let bad: Vec<_> = tail.iter().filter(|s| s.code != Code::Ok).collect();
    assert!(bad.is_empty(), "failures among the last {n} calls: {bad:?}");
}

/// The failed calls of `samples`.
fn failed(samples: &[Sample]) -> Vec<Sample> {
    samples
        .iter()
        .filter(|s| s.code != Code::Ok)
        .cloned()
        .collect()
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
    let (plugin, samples, _) = run
        .healed("redis_killed", fault, Duration::from_secs(1))
        .await;
    let failed = failed(&samples);
    assert!(!failed.is_empty(), "the outage was seen");
    let p99 = load::quantile(&failed, 0.99);
    assert!(
        p99 <= bound(OP_TIMEOUT + Duration::from_millis(100)),
        "failed p99 {p99:?}"
    );
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_calls_fail_by_deadline_and_none_hangs() {
    let server = RedisServer::start(Flavor::Valkey);
    let run = start(&server, "pause", 8).await;
    let fault = Instant::now();
    server.signal("STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The pause took: Redis was not answering while it lasted.
    let answered = tokio::task::block_in_place(|| redis_answers(&server));
    server.signal("CONT");
    assert!(!answered, "Redis answered while paused");
    let (plugin, samples, _) = run
        .healed("redis_paused", fault, Duration::from_secs(1))
        .await;
    let max = samples.iter().map(|s| s.latency).max().unwrap_or_default();
    assert!(
        max <= bound(OP_TIMEOUT + Duration::from_millis(300)),
        "a call hung for {max:?}"
    );
    // README: a call Redis does not answer fails with DEADLINE_EXCEEDED at
    // the operation timeout.
    let deadline = samples
        .iter()
        .filter(|s| s.code == Code::DeadlineExceeded)
        .count();
    assert!(
        deadline > 0,
        "no DEADLINE_EXCEEDED: {:?}",
        load::by_code(&samples)
    );
    plugin.stop().await;
}

/// Whether Redis answers anything (here a NOAUTH error to a PING) within
/// 300 ms on a fresh connection: a paused server accepts but never answers.
fn redis_answers(server: &RedisServer) -> bool {
    use std::io::{Read, Write};
    let Ok(mut tcp) = std::net::TcpStream::connect(server.address()) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(300)));
    let mut buf = [0u8; 64];
    tcp.write_all(b"PING\r\n").is_ok() && matches!(tcp.read(&mut buf), Ok(n) if n > 0)
}

/// Ids of the clients connected as the cache user, from CLIENT LIST.
fn cache_client_ids(server: &RedisServer) -> Vec<u64> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut server.admin())
        .expect("CLIENT LIST");
    list.lines()
        .filter(|l| l.split(' ').any(|f| f == format!("user={CACHE_USER}")))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .filter_map(|id| id.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_of_all_connections_recovers_within_2s() {
    let server = RedisServer::start(Flavor::Redis);
    let run = start(&server, "clientkill", 8).await;
    let before = tokio::task::block_in_place(|| cache_client_ids(&server));
    let fault = Instant::now();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg(CACHE_USER)
        .query(&mut server.admin())
        .expect("CLIENT KILL");
    assert!(killed >= 4, "killed {killed}");
    // Healing starts at once: the plugin must reconnect within 2 s.
    let (plugin, samples, _) = run
        .healed("client_kill", fault, Duration::from_secs(2))
        .await;
    // The kill took: every connection now serving the plugin is a new one.
    let after = cache_client_ids(&server);
    assert!(!after.is_empty(), "the plugin reconnected");
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "old connections survived: before {before:?}, after {after:?}"
    );
    // README: a connection killed under a call is retried; no call fails.
    let failed = failed(&samples);
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        load::by_code(&failed)
    );
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_deleted_mid_load_recovers_when_it_returns() {
    let server = RedisServer::start(Flavor::Valkey);
    let run = start(&server, "deluser", 8).await;
    let fault = Instant::now();
    let mut admin = server.admin();
    let deleted = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(CACHE_USER)
        .query::<i64>(&mut admin)
        .expect("ACL DELUSER");
    assert_eq!(deleted, 1, "the user existed and was deleted");
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
    let (plugin, samples, healed) = run
        .healed("acl_deluser", fault, Duration::from_secs(2))
        .await;
    // The delete was felt by the callers, not only by the health probe.
    let during = failed(&samples).iter().filter(|s| s.start < healed).count();
    assert!(during > 0, "no call failed while the user was gone");
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_rejected_without_a_queue_and_memory_stays_bounded() {
    let full = strict();
    let burst = Duration::from_secs(if full { 30 } else { 5 });
    let server = RedisServer::start(Flavor::Redis);
    let limit = 16;
    // The plugin as its own process, so the memory measured is its own.
    let plugin = tokio::task::block_in_place(|| {
        common::PluginProcess::start_with(
            &server,
            &test_prefix("overload"),
            &format!(", max_concurrent_requests: {limit}"),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while plugin.health("").await != SERVING {
        assert!(Instant::now() < deadline, "plugin not SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel = plugin.channel().await;
    let closed = |workers| Load {
        workers,
        pause: Duration::ZERO,
        deadline: Duration::from_secs(5),
    };

    // Sustainable: as many callers as the limit admits.
    let unloaded = timed(channel.clone(), closed(limit), Duration::from_secs(2)).await;
    let rss_before = plugin.rss_kib();
    // Overload: four times as many callers, each as fast as it can.
    let overload = timed(channel.clone(), closed(4 * limit), burst).await;
    let (rss_after, peak) = (plugin.rss_kib(), plugin.peak_rss_kib());
    assert_eq!(
        plugin.health("").await,
        SERVING,
        "healthy the moment the burst ends"
    );
    check_overload(&unloaded, &overload, burst);
    eprintln!("[overload] plugin rss_kib {rss_before} -> {rss_after}, peak {peak}");
    assert!(
        rss_before > 0 && peak >= rss_after,
        "the plugin's RSS was read"
    );
    // Sixteen calls of 1 KiB in flight need no more than a few MiB; a queue
    // of the rejected ones would grow with the burst.
    assert!(
        peak < rss_before + 32 * 1024,
        "RSS grew {rss_before} -> peak {peak} KiB"
    );
}

/// Refusals past `max_concurrent_requests` of them in one `refusal_delay`
/// wait that long before they are answered (a refused caller that retries at
/// once cannot spin the plugin's CPU), and none of them holds a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_is_paced_by_refusal_delay() {
    let server = RedisServer::start(Flavor::Redis);
    let delay = Duration::from_secs(1);
    let mut config = redis_config(&server, &test_prefix("paced"));
    // Longer than the held refusals: the Set holding the slot must not
    // time out meanwhile.
    config.backend.operation_timeout = redis_cache_plugin::config::Dur(Duration::from_secs(5));
    config.control_plane.max_concurrent_requests = 1;
    config.control_plane.refusal_delay = redis_cache_plugin::config::Dur(delay);
    let plugin = Plugin::start_serving(config).await;
    let mut cache = plugin.cache().await;
    cache.set("k", b"v").await.expect("set");

    // The one slot, taken by a Set that Redis holds (writes paused).
    let mut admin = server.admin();
    let paused: String = tokio::task::block_in_place(|| {
        ::redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(3000)
            .arg("WRITE")
            .query(&mut admin)
    })
    .expect("CLIENT PAUSE");
    assert_eq!(paused, "OK");
    let rejected = "redis_plugin_requests_rejected_total{reason=\"max_concurrent_requests\"}";
    let in_flight = hold_the_slot(&mut cache).await;
    let before = common::metric(plugin.addr, rejected).await;

    // Four more at once: at most one window's burst (1, or 2 if they
    // straddle a window's end) is answered at once, the rest are held.
    let refusals = (0..4).map(|_| {
        let mut c = cache.clone();
        async move {
            let sent = Instant::now();
            (c.get("k").await.map(drop), sent.elapsed())
        }
    });
    let answers = futures_util::future::join_all(refusals).await;
    for (answer, _) in &answers {
        let status = answer.as_ref().expect_err("over the limit");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }
    let took: Vec<Duration> = answers.iter().map(|a| a.1).collect();
    eprintln!("[paced] refusals took {took:?}");
    let held = took.iter().filter(|t| **t >= delay).count();
    assert!(held >= 2, "held {held} of 4 refusals: {took:?}");
    assert_eq!(common::metric(plugin.addr, rejected).await, before + 4.0);

    // The held refusals took no slot: the Set finishes and the next call
    // is served.
    in_flight.await.expect("task").expect("the paused Set");
    let got = cache.get("k").await.expect("served after the Set");
    assert_eq!(got.value.as_ref(), b"w");
}

/// Takes the plugin's one slot with a Set that paused Redis holds, and
/// returns it once a Get is refused for want of the slot. A probe Get may
/// take the slot first and get the Set refused: then the Set is sent again.
async fn hold_the_slot(
    cache: &mut common::Cache,
) -> tokio::task::JoinHandle<Result<(), tonic::Status>> {
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the Set never took the slot"
        );
        let mut slow = cache.clone();
        let set = tokio::spawn(async move { slow.set("k", b"w").await });
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if set.is_finished() {
                break; // refused: a probe held the slot
            }
            if cache.get("k").await.is_err() {
                return set;
            }
        }
    }
}

/// The overload verdict: some calls admitted, the excess rejected with
/// RESOURCE_EXHAUSTED without waiting for a slot (at once, or after the
/// default `refusal_delay` once refusals flood), nothing else.
fn check_overload(unloaded: &[Sample], overload: &[Sample], burst: Duration) {
    let with = |code| -> Vec<Sample> {
        overload
            .iter()
            .filter(|s| s.code == code)
            .cloned()
            .collect()
    };
    let (admitted, rejected) = (with(Code::Ok), with(Code::ResourceExhausted));
    let (p99_unloaded, p99_admitted) = (
        load::quantile(unloaded, 0.99),
        load::quantile(&admitted, 0.99),
    );
    let (p50_admitted, p99_rejected) = (
        load::quantile(&admitted, 0.5),
        load::quantile(&rejected, 0.99),
    );
    eprintln!(
        "[overload] unloaded: calls={} p99={p99_unloaded:?}; burst {burst:?}: calls={} by_code={:?} \
         admitted_p50={p50_admitted:?} admitted_p99={p99_admitted:?} rejected_p99={p99_rejected:?} ratio={:.2}",
        unloaded.len(),
        overload.len(),
        load::by_code(overload),
        p99_admitted.as_secs_f64() / p99_unloaded.as_secs_f64().max(1e-9),
    );
    assert!(!admitted.is_empty(), "no call was admitted");
    assert!(!rejected.is_empty(), "excess was rejected");
    // "At once": a rejection does not wait for a slot or a timeout. The
    // strict run wants it faster than a typical admitted call; CI (a busy
    // machine, 160 ms p99 seen) only sooner than the shortest timeout.
    let at_once = REFUSAL_DELAY + if strict() { p50_admitted } else { OP_TIMEOUT };
    assert!(p99_rejected < at_once, "rejections took {p99_rejected:?}");
    // Under CPU starvation an admitted call may still run out its deadline;
    // that is the documented answer, but the strict run allows none.
    let allowed: &[Code] = if strict() {
        &[Code::Ok, Code::ResourceExhausted]
    } else {
        &[Code::Ok, Code::ResourceExhausted, Code::DeadlineExceeded]
    };
    for s in overload {
        assert!(allowed.contains(&s.code), "{s:?}");
    }
    if strict() {
        assert!(
            p99_admitted <= 2 * p99_unloaded,
            "admitted p99 {p99_admitted:?}"
        );
    }
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
