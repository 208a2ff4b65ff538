//! Unit tests of the service: panics, repeated keys, field names.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::sync::Notify;
use tonic::Request;

use super::{
    CacheService, Limits,
    validate::{check_key, check_ttl, has_repeats},
};
use crate::{
    backend::{Backend, Entry, Keys, Persisted, PoolStats, SetCondition, memory::MemoryBackend},
    error::Result,
    metrics::Metrics,
    pb::{DeleteRequest, GetRequest, MGetRequest, SetRequest, cache_server::Cache},
};

/// The memory backend, recording the keys each batch call got; with
/// `panic_on_get`, its reads panic (to prove a panic stays one request's).
#[derive(Default)]
struct TestBackend {
    inner: MemoryBackend,
    batches: std::sync::Mutex<Vec<Vec<String>>>,
    panic_on_get: bool,
}

impl TestBackend {
    fn record(&self, keys: &Keys) {
        let keys = keys.iter().map(String::from).collect();
        self.batches.lock().expect("lock").push(keys);
    }
}

impl Backend for TestBackend {
    async fn get(&self, k: String) -> Result<Option<Bytes>> {
        assert!(!self.panic_on_get, "injected panic");
        self.inner.get(k).await
    }
    async fn set(&self, k: String, v: Bytes, t: Option<Duration>, c: SetCondition) -> Result<bool> {
        self.inner.set(k, v, t, c).await
    }
    async fn mset(&self, keys: Keys, entries: Vec<Entry>) -> Result<()> {
        self.inner.mset(keys, entries).await
    }
    async fn incr(&self, k: String, delta: i64, t: Option<Duration>) -> Result<i64> {
        self.inner.incr(k, delta, t).await
    }
    async fn get_ttl(&self, k: String) -> Result<Option<Option<Duration>>> {
        self.inner.get_ttl(k).await
    }
    async fn persist(&self, k: String) -> Result<Persisted> {
        self.inner.persist(k).await
    }
    async fn exists(&self, keys: Keys) -> Result<u64> {
        self.record(&keys);
        self.inner.exists(keys).await
    }
    async fn delete(&self, keys: Keys) -> Result<u64> {
        self.record(&keys);
        self.inner.delete(keys).await
    }
    async fn mget(&self, keys: Keys) -> Result<Vec<Option<Bytes>>> {
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
    let keys = vec!["big".into(); 250];
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
