//! A steady mixed load against the plugin, recording every call's start,
//! latency and status code, for fault and overload tests.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use redis_cache_plugin::pb::{GetRequest, MGetRequest, SetRequest, cache_client::CacheClient};
use tokio::task::JoinSet;
use tonic::{Code, transport::Channel};

/// One finished call.
#[derive(Clone, Debug)]
pub struct Sample {
    pub start: Instant,
    pub latency: Duration,
    pub code: Code,
    /// The status message of a failed call.
    pub message: Option<Arc<str>>,
}

impl Sample {
    pub fn end(&self) -> Instant {
        self.start + self.latency
    }
}

/// Options for [`run`].
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub workers: usize,
    /// Pause between a worker's calls (zero = closed loop, as fast as it can).
    pub pause: Duration,
    /// Per-call gRPC deadline sent to the plugin.
    pub deadline: Duration,
}

/// Runs `load` until `stop` is set and returns only the count of calls per
/// status (for long runs, where keeping every sample would itself grow).
pub async fn count(
    channel: Channel,
    load: Load,
    stop: Arc<AtomicBool>,
) -> std::collections::BTreeMap<String, usize> {
    let chunk = Duration::from_secs(5);
    let mut totals = std::collections::BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let inner = Arc::new(AtomicBool::new(false));
        let run = tokio::spawn(run(channel.clone(), load, inner.clone()));
        let deadline = Instant::now() + chunk;
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        inner.store(true, Ordering::Relaxed);
        for (k, v) in by_code(&run.await.expect("load chunk")) {
            let code = k.split(':').next().unwrap_or_default().to_string();
            *totals.entry(code).or_insert(0) += v;
        }
    }
    totals
}

/// Runs `load` until `stop` is set, returning every sample. Each worker
/// cycles Set, Get, MGet over its own keys; the channel is shared (HTTP/2).
pub async fn run(channel: Channel, load: Load, stop: Arc<AtomicBool>) -> Vec<Sample> {
    let mut set = JoinSet::new();
    for w in 0..load.workers {
        let client = CacheClient::new(channel.clone());
        let stop = stop.clone();
        set.spawn(worker(client, w, load, stop));
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.expect("load worker"));
    }
    all.sort_by_key(|s| s.start);
    all
}

async fn worker(
    mut client: CacheClient<Channel>,
    w: usize,
    load: Load,
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut i: u64 = 0;
    // Bounded: the caller sets `stop`; the cap is a backstop.
    while !stop.load(Ordering::Relaxed) && i < 5_000_000 {
        let key = format!("w{w}:k{}", i % 50);
        let start = Instant::now();
        let result = match i % 3 {
            0 => {
                let mut req = tonic::Request::new(SetRequest {
                    key,
                    value: vec![b'x'; 100].into(),
                    ttl: None,
                    condition: 0,
                });
                req.set_timeout(load.deadline);
                client.set(req).await.map(drop)
            }
            1 => {
                let mut req = tonic::Request::new(GetRequest { key });
                req.set_timeout(load.deadline);
                client.get(req).await.map(drop)
            }
            _ => {
                let keys = (0..10).map(|j| format!("w{w}:k{j}").into()).collect();
                let mut req = tonic::Request::new(MGetRequest { keys });
                req.set_timeout(load.deadline);
                client.m_get(req).await.map(drop)
            }
        };
        let latency = start.elapsed();
        let (code, message) = match result {
            Ok(()) => (Code::Ok, None),
            Err(s) => (s.code(), Some(Arc::from(s.message()))),
        };
        samples.push(Sample {
            start,
            latency,
            code,
            message,
        });
        i += 1;
        if !load.pause.is_zero() {
            tokio::time::sleep(load.pause).await;
        }
    }
    samples
}

/// The `q` quantile (0..=1) of the latencies of `samples`.
pub fn quantile(samples: &[Sample], q: f64) -> Duration {
    let mut v: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let idx = ((v.len() - 1) as f64 * q).round() as usize;
    v[idx]
}

/// Counts of samples per status code and message, for reports.
pub fn by_code(samples: &[Sample]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for s in samples {
        let key = match &s.message {
            Some(msg) => format!("{:?}: {msg}", s.code),
            None => format!("{:?}", s.code),
        };
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

/// Resident set size of this process in KiB (the in-process plugin included).
pub fn rss_kib() -> u64 {
    rss_kib_of("self")
}

/// Resident set size in KiB of process `pid` (`"self"` for this one); 0
/// when it cannot be read.
pub fn rss_kib_of(pid: &str) -> u64 {
    status_kib_of(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` field in KiB (`"VmRSS:"`, `"VmHWM:"`); 0 when it
/// cannot be read.
pub fn status_kib_of(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
