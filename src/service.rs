//! The `cache.v1.Cache` gRPC service: validation, key prefix,
//! deadlines, metrics and the error contract — then one backend call.
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
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::{debug, error};

use crate::{
    backend::Backend,
    config::MAX_TTL,
    error::{Error, Result},
    grpc_timeout::parse_grpc_timeout,
    metrics::{Metrics, OpMetrics},
    pb::{
        DeleteRequest, DeleteResponse, ExistsRequest, ExistsResponse, ExpireRequest,
        ExpireResponse, GetRequest, GetResponse, GetTtlRequest, GetTtlResponse, IncrRequest,
        IncrResponse, MGetRequest, MGetResponse, MSetRequest, MSetResponse, PersistRequest,
        PersistResponse, SetRequest, SetResponse, cache_server::Cache,
    },
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
}

impl Ops {
    fn new(m: &Metrics) -> Self {
        Self {
            get: m.op("get"),
            set: m.op("set"),
            delete: m.op("delete"),
            mget: m.op("mget"),
            expire: m.op("expire"),
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
        let bounded = tokio::time::timeout(deadline, work);
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
    fn batch(&self, mut keys: Vec<String>) -> Result<Vec<String>> {
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
            if key.is_empty() || key.len() > max_key {
                check_key(&format!("keys[{i}]"), key, max_key)?;
            }
        }
        if has_repeats(&keys) {
            let mut seen = std::collections::HashSet::with_capacity(keys.len());
            keys.retain(|k| seen.insert(k.clone()));
        }
        Ok(keys)
    }

    fn prefixed(&self, keys: &[String]) -> Vec<String> {
        keys.iter().map(|k| self.with_prefix(k)).collect()
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

/// True when a key occurs twice. Small batches compare pairwise (no
/// allocation); larger ones sort borrowed keys (one allocation, no hashing:
/// a hash set was 8 % of the plugin's CPU on MGet 100, see BENCHMARKS.md).
/// Any order puts equal keys side by side; length, then bytes from the end,
/// is the cheap one, as keys tend to share a prefix and differ at the end
/// (1.7 us per 100 keys against 2.3-3.5 us for a hash set or a plain sort).
fn has_repeats(keys: &[String]) -> bool {
    if keys.len() <= 8 {
        return keys.iter().enumerate().any(|(i, k)| keys[..i].contains(k));
    }
    let mut sorted: Vec<&[u8]> = keys.iter().map(String::as_bytes).collect();
    sorted.sort_unstable_by(|a, b| {
        a.len()
            .cmp(&b.len())
            .then_with(|| a.iter().rev().cmp(b.iter().rev()))
    });
    sorted.windows(2).any(|w| w[0] == w[1])
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

fn check_key(field: &str, key: &str, max: usize) -> Result<()> {
    if key.is_empty() {
        return Err(invalid(format!("{field}: must not be empty")));
    }
    if key.len() > max {
        return Err(invalid(format!(
            "{field}: {} bytes exceeds max_key_bytes ({max})",
            key.len()
        )));
    }
    Ok(())
}

/// A TTL from the wire: at least 1 ms, at most [`MAX_TTL`], rounded up to a
/// whole millisecond (Redis' resolution, so both backends agree).
pub fn check_ttl(field: &str, ttl: &prost_types::Duration) -> Result<Duration> {
    if ttl.seconds < 0 || ttl.nanos < 0 || ttl.nanos >= 1_000_000_000 {
        return Err(invalid(format!("{field}: must be a positive duration")));
    }
    let d = Duration::new(ttl.seconds as u64, ttl.nanos as u32);
    if d < Duration::from_millis(1) {
        return Err(invalid(format!("{field}: must be at least 1ms")));
    }
    if d > MAX_TTL {
        return Err(invalid(format!("{field}: must be at most 365 days")));
    }
    let ms = d.as_nanos().div_ceil(1_000_000) as u64;
    Ok(Duration::from_millis(ms))
}

#[tonic::async_trait]
impl<B: Backend> Cache for CacheService<B> {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let key = req.into_inner().key;
        self.run(&self.ops.get, deadline, async {
            let value = self.backend.get(self.key("key", &key)?).await?;
            self.count_lookups(usize::from(value.is_some()), 1);
            Ok(GetResponse {
                found: value.is_some(),
                value: value.unwrap_or_default(),
            })
        })
        .await
    }

    async fn set(&self, req: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let SetRequest {
            key, value, ttl, ..
        } = req.into_inner();
        self.run(&self.ops.set, deadline, async {
            let key = self.key("key", &key)?;
            let max = self.limits.max_value_bytes;
            if value.len() > max {
                return Err(invalid(format!(
                    "value: {} bytes exceeds max_value_bytes ({max})",
                    value.len()
                )));
            }
            let ttl = match ttl {
                Some(ttl) => Some(check_ttl("ttl", &ttl)?),
                None => self.limits.default_ttl,
            };
            self.backend.set(key, value, ttl).await?;
            Ok(SetResponse { written: true })
        })
        .await
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let keys = req.into_inner().keys;
        self.run(&self.ops.delete, deadline, async {
            let keys = self.batch(keys)?;
            let deleted = self.backend.delete(self.prefixed(&keys)).await?;
            Ok(DeleteResponse { deleted })
        })
        .await
    }

    async fn m_get(&self, req: Request<MGetRequest>) -> Result<Response<MGetResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let keys = req.into_inner().keys;
        self.run(&self.ops.mget, deadline, async {
            let keys = self.batch(keys)?;
            let values = self.backend.mget(self.prefixed(&keys)).await?;
            if values.len() != keys.len() {
                return Err(Error::Internal(
                    "backend answered a different key count".into(),
                ));
            }
            // Lookups are counted per distinct key: what Redis looked up.
            let found = values.iter().filter(|v| v.is_some()).count();
            self.count_lookups(found, keys.len());
            let mut hits = std::collections::HashMap::with_capacity(found);
            hits.extend(
                keys.into_iter()
                    .zip(values)
                    .filter_map(|(k, v)| v.map(|v| (k, v))),
            );
            Ok(MGetResponse { hits })
        })
        .await
    }

    async fn expire(
        &self,
        req: Request<ExpireRequest>,
    ) -> Result<Response<ExpireResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let ExpireRequest { key, ttl } = req.into_inner();
        self.run(&self.ops.expire, deadline, async {
            let key = self.key("key", &key)?;
            let ttl = ttl.ok_or_else(|| invalid("ttl: required"))?;
            let ttl = check_ttl("ttl", &ttl)?;
            let found = self.backend.expire(key, ttl).await?;
            Ok(ExpireResponse { found })
        })
        .await
    }

    async fn m_set(&self, _req: Request<MSetRequest>) -> Result<Response<MSetResponse>, Status> {
        Err(Status::unimplemented("MSet: not yet"))
    }

    async fn incr(&self, _req: Request<IncrRequest>) -> Result<Response<IncrResponse>, Status> {
        Err(Status::unimplemented("Incr: not yet"))
    }

    async fn get_ttl(
        &self,
        _req: Request<GetTtlRequest>,
    ) -> Result<Response<GetTtlResponse>, Status> {
        Err(Status::unimplemented("GetTtl: not yet"))
    }

    async fn persist(
        &self,
        _req: Request<PersistRequest>,
    ) -> Result<Response<PersistResponse>, Status> {
        Err(Status::unimplemented("Persist: not yet"))
    }

    async fn exists(
        &self,
        _req: Request<ExistsRequest>,
    ) -> Result<Response<ExistsResponse>, Status> {
        Err(Status::unimplemented("Exists: not yet"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{PoolStats, memory::MemoryBackend};
    use bytes::Bytes;

    /// The memory backend, recording the keys each batch call got; with
    /// `panic_on_get`, its reads panic (to prove a panic stays one request's).
    #[derive(Default)]
    struct TestBackend {
        inner: MemoryBackend,
        batches: std::sync::Mutex<Vec<Vec<String>>>,
        panic_on_get: bool,
    }

    impl TestBackend {
        fn record(&self, keys: &[String]) {
            self.batches.lock().expect("lock").push(keys.to_vec());
        }
    }

    impl Backend for TestBackend {
        async fn get(&self, k: String) -> Result<Option<Bytes>> {
            assert!(!self.panic_on_get, "injected panic");
            self.inner.get(k).await
        }
        async fn set(&self, k: String, v: Bytes, t: Option<Duration>) -> Result<()> {
            self.inner.set(k, v, t).await
        }
        async fn delete(&self, keys: Vec<String>) -> Result<u64> {
            self.record(&keys);
            self.inner.delete(keys).await
        }
        async fn mget(&self, keys: Vec<String>) -> Result<Vec<Option<Bytes>>> {
            self.record(&keys);
            self.inner.mget(keys).await
        }
        async fn expire(&self, k: String, t: Duration) -> Result<bool> {
            self.inner.expire(k, t).await
        }
        async fn ping(&self) -> Result<()> {
            Ok(())
        }
        fn pool_stats(&self) -> PoolStats {
            PoolStats::default()
        }
    }

    fn limits() -> Limits {
        Limits {
            key_prefix: "p:".into(),
            max_key_bytes: 16,
            max_value_bytes: 16,
            max_batch_keys: 4,
            default_ttl: None,
            operation_timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal_and_is_counted() {
        let metrics = Metrics::new();
        let backend = Arc::new(TestBackend {
            panic_on_get: true,
            ..TestBackend::default()
        });
        let svc = CacheService::new(backend, limits(), metrics.clone(), Arc::new(Notify::new()));
        let req = Request::new(GetRequest { key: "k".into() });
        let status = svc.get(req).await.expect_err("panic becomes an error");
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(status.message().contains("request id"), "{status:?}");
        assert!(
            metrics
                .encode()
                .contains("redis_plugin_operations_total{operation=\"get\",status=\"internal\"} 1")
        );
        // The service keeps working for other calls.
        let set = Request::new(SetRequest {
            key: "k".into(),
            value: Bytes::from_static(b"v"),
            ttl: None,
            condition: 0,
        });
        assert!(svc.set(set).await.is_ok());
    }

    fn pd(seconds: i64, nanos: i32) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos }
    }

    #[test]
    fn ttl_bounds_are_enforced() {
        assert!(check_ttl("ttl", &pd(0, 0)).is_err());
        assert!(check_ttl("ttl", &pd(-1, 0)).is_err());
        assert!(check_ttl("ttl", &pd(0, -5)).is_err());
        assert!(check_ttl("ttl", &pd(0, 999_999)).is_err());
        assert!(check_ttl("ttl", &pd(i64::MAX, 0)).is_err());
        assert!(check_ttl("ttl", &pd(1, 1_000_000_000)).is_err());
        assert_eq!(
            check_ttl("ttl", &pd(1, 0)).ok(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            check_ttl("ttl", &pd(0, 1_500_000)).ok(),
            Some(Duration::from_millis(2))
        );
    }

    #[test]
    fn repeats_are_found_in_small_and_large_batches() {
        let keys = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!has_repeats(&keys(&["a"])));
        assert!(!has_repeats(&keys(&["a", "b", "c"])));
        assert!(has_repeats(&keys(&["a", "b", "a"])));
        let many: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        assert!(!has_repeats(&many));
        let mut with_repeat = many.clone();
        with_repeat.push("k42".into());
        assert!(has_repeats(&with_repeat));
    }

    #[tokio::test]
    async fn mget_and_delete_send_each_key_once() {
        let backend = Arc::new(TestBackend::default());
        let mut l = limits();
        l.max_batch_keys = 300;
        let svc = CacheService::new(backend.clone(), l, Metrics::new(), Arc::new(Notify::new()));
        let set = SetRequest {
            key: "big".into(),
            value: Bytes::from_static(b"v"),
            ttl: None,
            condition: 0,
        };
        svc.set(Request::new(set)).await.expect("set");
        let keys = vec!["big".to_string(); 250];
        let hits = svc
            .m_get(Request::new(MGetRequest { keys }))
            .await
            .expect("mget")
            .into_inner()
            .hits;
        assert_eq!(hits.len(), 1);
        let keys = ["big", "x", "big", "x"].map(String::from).to_vec();
        let deleted = svc
            .delete(Request::new(DeleteRequest { keys }))
            .await
            .expect("delete")
            .into_inner()
            .deleted;
        assert_eq!(deleted, 1);
        let seen = backend.batches.lock().expect("lock").clone();
        assert_eq!(
            seen,
            vec![
                vec!["p:big".to_string()],
                vec!["p:big".into(), "p:x".into()]
            ]
        );
    }

    #[test]
    fn key_errors_name_field_and_limit() {
        let err = check_key("key", &"x".repeat(11), 10).unwrap_err();
        assert_eq!(err.to_string(), "key: 11 bytes exceeds max_key_bytes (10)");
        let err = check_key("keys[2]", "", 10).unwrap_err();
        assert_eq!(err.to_string(), "keys[2]: must not be empty");
    }
}
