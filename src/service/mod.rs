//! The `cache.v1.Cache` gRPC service: validation, key prefix,
//! deadlines, metrics and the error contract — then one backend call.
//!
//! This file owns the service's state and the steps every RPC shares;
//! `rpc` has the RPCs themselves, `validate` the stateless checks.
//!
//! Every RPC goes through `CacheService::run`, which bounds it by the
//! shorter of `operation_timeout` and the caller's deadline, turns a panic
//! into `INTERNAL`, records metrics and maps [`Error`] to a status. Admission
//! (how many calls at once, their bytes) happens before, in
//! the admission layer ahead of the routes (`admission.rs`). The service never sees Redis: only the [`Backend`]
//! trait and its [`Error`]s.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use tokio::sync::Notify;
use tonic::{Response, Status, metadata::MetadataMap};
use tracing::{debug, error};

mod rpc;
#[cfg(test)]
mod tests;
mod validate;

pub use self::validate::check_ttl;
use self::validate::{check_key, check_value, has_repeats, invalid, ttl_or};
use crate::{
    backend::{Backend, Entry, Keys},
    error::{Error, Result},
    grpc_timeout::parse_grpc_timeout,
    metrics::{Metrics, OpMetrics},
    pb,
};

/// Request limits and defaults, from `backend` config.
#[derive(Debug, Clone)]
pub struct Limits {
    pub key_prefix: String,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_batch_keys: usize,
    pub default_ttl: Option<Duration>,
    pub operation_timeout: Duration,
}

/// The gRPC cache service over a backend `B`.
pub struct CacheService<B> {
    backend: Arc<B>,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// Wakes the health prober when a request saw the backend fail.
    health_wake: Arc<Notify>,
    next_request_id: AtomicU64,
    ops: Ops,
}

/// Per-RPC metric handles, resolved at start-up.
struct Ops {
    get: OpMetrics,
    set: OpMetrics,
    delete: OpMetrics,
    mget: OpMetrics,
    expire: OpMetrics,
    mset: OpMetrics,
    incr: OpMetrics,
    get_ttl: OpMetrics,
    persist: OpMetrics,
    exists: OpMetrics,
}

impl Ops {
    fn new(m: &Metrics) -> Self {
        Self {
            get: m.op("get"),
            set: m.op("set"),
            delete: m.op("delete"),
            mget: m.op("mget"),
            expire: m.op("expire"),
            mset: m.op("mset"),
            incr: m.op("incr"),
            get_ttl: m.op("get_ttl"),
            persist: m.op("persist"),
            exists: m.op("exists"),
        }
    }
}

impl<B: Backend> CacheService<B> {
    /// The service over `backend` with `limits`.
    pub fn new(
        backend: Arc<B>,
        limits: Limits,
        metrics: Arc<Metrics>,
        health_wake: Arc<Notify>,
    ) -> Self {
        let ops = Ops::new(&metrics);
        Self {
            ops,
            backend,
            limits,
            metrics,
            health_wake,
            next_request_id: AtomicU64::new(1),
        }
    }

    /// Bounds, guards and accounts one RPC.
    async fn run<T>(
        &self,
        op: &OpMetrics,
        deadline: Duration,
        work: impl Future<Output = Result<T>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        // The deadline from the clock read already taken: one read fewer
        // per call than `timeout` (clock reads are ~1-2 % of a Get).
        let bounded = tokio::time::timeout_at((started + deadline).into(), work);
        let result = match AssertUnwindSafe(bounded).catch_unwind().await {
            Ok(Ok(result)) => result,
            Ok(Err(_elapsed)) => Err(Error::DeadlineExceeded(deadline)),
            Err(_panic) => Err(Error::Internal("handler panicked".into())),
        };
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(reply) => {
                op.ok(seconds);
                Ok(Response::new(reply))
            }
            Err(e) => {
                self.metrics.record(op.operation, e.label(), seconds);
                Err(self.fail(op.operation, e))
            }
        }
    }

    fn fail(&self, op: &'static str, err: Error) -> Status {
        if err.is_connection_failure() {
            self.health_wake.notify_one();
        }
        if let Error::Internal(detail) = &err {
            let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
            error!(request_id = id, operation = op, error = %detail, "internal error");
            return Error::Logged(id).into();
        }
        debug!(operation = op, error = %err, "request failed");
        err.into()
    }

    /// The shorter of `operation_timeout` and the caller's `grpc-timeout`.
    fn deadline(&self, metadata: &MetadataMap) -> Duration {
        let own = self.limits.operation_timeout;
        metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map_or(own, |caller| caller.min(own))
    }

    fn key(&self, field: &str, key: &str) -> Result<String> {
        check_key(field, key, self.limits.max_key_bytes)?;
        Ok(self.with_prefix(key))
    }

    /// Validates a batch and removes repeated keys: the reply map holds
    /// each key once and Delete counts a key once, so a repeat only costs —
    /// `MGet(["big"] x 250)` would make Redis send (and buffer) the value
    /// 250 times.
    ///
    /// Generic over the key type: MGet's keys are the request's own
    /// slices ([`pb::Key`]), Delete's and Exists' `String`s.
    fn batch<K: BatchKey>(&self, mut keys: Vec<K>) -> Result<Vec<K>> {
        let max = self.limits.max_batch_keys;
        if keys.is_empty() {
            return Err(invalid("keys: must hold at least one key"));
        }
        if keys.len() > max {
            return Err(invalid(format!(
                "keys: {} keys exceeds max_batch_keys ({max})",
                keys.len()
            )));
        }
        let max_key = self.limits.max_key_bytes;
        for (i, key) in keys.iter().enumerate() {
            // The field name is formatted only for an error (hot path: MGet).
            let len = AsRef::<[u8]>::as_ref(key).len();
            if len == 0 || len > max_key {
                check_key(&format!("keys[{i}]"), AsRef::<str>::as_ref(key), max_key)?;
            }
        }
        if has_repeats(&keys) {
            let mut seen = std::collections::HashSet::with_capacity(keys.len());
            keys.retain(|k| seen.insert(k.clone()));
        }
        Ok(keys)
    }

    /// Validates MSet's entries and prefixes their keys. A key may appear
    /// once: with a TTL per entry, which of two entries wins is a question
    /// a caller should not leave to the store, so a repeat is refused
    /// naming both. Field names are formatted only for an error (hot path:
    /// MSet 100).
    ///
    /// The keys go into one [`Keys`] buffer, the values and TTLs beside
    /// them in the same order.
    fn entries(&self, entries: Vec<pb::Entry>) -> Result<(Keys, Vec<Entry>)> {
        let max = self.limits.max_batch_keys;
        if entries.is_empty() {
            return Err(invalid("entries: must hold at least one entry"));
        }
        if entries.len() > max {
            return Err(invalid(format!(
                "entries: {} entries exceeds max_batch_keys ({max})",
                entries.len()
            )));
        }
        let (max_key, max_value) = (self.limits.max_key_bytes, self.limits.max_value_bytes);
        let prefix = &self.limits.key_prefix;
        let bytes = entries.iter().map(|e| prefix.len() + e.key.len()).sum();
        let mut keys = Keys::with_capacity(entries.len(), bytes);
        let mut checked = Vec::with_capacity(entries.len());
        for (i, e) in entries.into_iter().enumerate() {
            let field = |name: &str| format!("entries[{i}].{name}");
            check_key("key", &e.key, max_key)
                .or_else(|_| check_key(&field("key"), &e.key, max_key))?;
            check_value("value", &e.value, max_value)
                .or_else(|_| check_value(&field("value"), &e.value, max_value))?;
            let default = self.limits.default_ttl;
            let ttl =
                ttl_or("ttl", e.ttl, default).or_else(|_| ttl_or(&field("ttl"), e.ttl, default))?;
            keys.push(prefix, &e.key);
            checked.push((e.value, ttl));
        }
        if has_repeats(&keys.iter().collect::<Vec<_>>()) {
            return Err(repeated_entry(&keys));
        }
        Ok((keys, checked))
    }

    /// The batch's keys with the prefix, in one buffer (two allocations
    /// for the whole batch, not one per key).
    fn prefixed<K: BatchKey>(&self, keys: &[K]) -> Result<Keys> {
        let keys = keys.iter().map(AsRef::<[u8]>::as_ref);
        Keys::prefixed(&self.limits.key_prefix, keys)
            // Request keys are UTF-8 (prost's and `pb::Key`'s decoders check).
            .ok_or_else(|| Error::Internal("a batch key was not UTF-8".into()))
    }

    fn with_prefix(&self, key: &str) -> String {
        let prefix = &self.limits.key_prefix;
        let mut full = String::with_capacity(prefix.len() + key.len());
        full.push_str(prefix);
        full.push_str(key);
        full
    }

    fn count_lookups(&self, hits: usize, total: usize) {
        self.metrics.hits.inc_by(hits as u64);
        self.metrics.misses.inc_by((total - hits) as u64);
    }
}

/// A key of a batch as a request carries it: readable as text and as
/// bytes (the hot path reads the bytes: for a [`pb::Key`] the text is
/// checked UTF-8 again), hashed as its text.
trait BatchKey: AsRef<str> + AsRef<[u8]> + Eq + std::hash::Hash + Clone {}

impl<K: AsRef<str> + AsRef<[u8]> + Eq + std::hash::Hash + Clone> BatchKey for K {}

/// The error for a key that occurs twice among `entries`, naming both.
fn repeated_entry(keys: &Keys) -> Error {
    let mut first = std::collections::HashMap::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        if let Some(j) = first.insert(key, i) {
            return invalid(format!(
                "entries[{i}].key: repeats entries[{j}].key (a key may appear once)"
            ));
        }
    }
    Error::Internal("a repeated MSet key was not found again".into())
}
