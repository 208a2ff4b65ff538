//! Prism's key-value interfaces (basic, batch, TTL) as an adapter over the
//! `cache.v1` service in the same process: each call builds the `cache.v1`
//! request, passes the caller's metadata (its `grpc-timeout` among it) and
//! calls the [`Cache`] trait method on the shared [`CacheService`], so
//! validation, limits, the key prefix, deadlines, metrics and backend
//! errors are exactly the cache's. A `Status` the cache answers becomes
//! `success = false, error = <its message>` in the reply body (Prism's
//! convention); these handlers never answer a gRPC error themselves.
//!
//! Mapping (README "Use with Prism" has the table): Set → Set with the
//! default TTL (Prism's tags are ignored), Get → Get, Delete → Delete,
//! Exists → Exists, BatchSet → MSet, BatchGet → MGet, BatchDelete →
//! Delete, Expire → Expire (0 s = Delete), GetTTL → GetTtl (whole seconds,
//! rounded up), Persist → Persist.

use std::{collections::HashMap, sync::Arc};

use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    backend::Backend,
    pb::{self, cache_server::Cache},
    prism_pb::interfaces::keyvalue::{
        BatchDeleteRequest, BatchDeleteResponse, BatchGetRequest, BatchGetResponse,
        BatchSetRequest, BatchSetResponse, DeleteRequest, DeleteResponse, ExistsRequest,
        ExistsResponse, ExpireRequest, ExpireResponse, GetRequest, GetResponse, GetTtlRequest,
        GetTtlResponse, PersistRequest, PersistResponse, SetRequest, SetResponse,
        key_value_basic_interface_server::KeyValueBasicInterface,
        key_value_batch_interface_server::KeyValueBatchInterface,
        key_value_ttl_interface_server::KeyValueTtlInterface,
    },
    service::CacheService,
};

/// Prism's `GetTTL` for a key that does not exist.
pub const TTL_NO_KEY: i64 = -2;
/// Prism's `GetTTL` for a key without expiry.
pub const TTL_NO_EXPIRY: i64 = -1;

/// The three key-value interfaces over one cache service.
pub struct KeyValue<B> {
    cache: Arc<CacheService<B>>,
}

impl<B: Backend> KeyValue<B> {
    /// The adapter over `cache` (the one the `cache.v1` route serves).
    pub fn new(cache: Arc<CacheService<B>>) -> Self {
        Self { cache }
    }
}

/// A `cache.v1` request carrying the Prism caller's metadata, so its
/// deadline (`grpc-timeout`) bounds the cache call as it would a direct one.
fn forward<T>(metadata: &MetadataMap, message: T) -> Request<T> {
    let mut req = Request::new(message);
    *req.metadata_mut() = metadata.clone();
    req
}

/// The cache's answer, or its error's message for the reply body.
fn body<T>(answer: Result<Response<T>, Status>) -> Result<T, String> {
    answer
        .map(Response::into_inner)
        .map_err(|s| s.message().to_string())
}

fn reply<T>(message: T) -> Result<Response<T>, Status> {
    Ok(Response::new(message))
}

/// `(success, error)` of a Prism reply from a cache outcome.
fn outcome<T>(result: &Result<T, String>) -> (bool, String) {
    match result {
        Ok(_) => (true, String::new()),
        Err(e) => (false, e.clone()),
    }
}

/// Whole seconds of a `cache.v1` TTL, rounded up: a key with 300 ms left
/// reports 1, never 0 (which a caller could read as "gone") nor -1/-2.
pub fn whole_seconds(ttl: &prost_types::Duration) -> i64 {
    ttl.seconds.saturating_add(i64::from(ttl.nanos > 0))
}

// === basic ===

impl<B: Backend> KeyValue<B> {
    async fn exists_one(&self, metadata: &MetadataMap, key: String) -> Result<bool, String> {
        let req = pb::ExistsRequest { keys: vec![key] };
        body(self.cache.exists(forward(metadata, req)).await).map(|r| r.count > 0)
    }

    async fn delete_keys(&self, metadata: &MetadataMap, keys: Vec<String>) -> Result<u64, String> {
        let req = pb::DeleteRequest { keys };
        body(self.cache.delete(forward(metadata, req)).await).map(|r| r.deleted)
    }
}

#[tonic::async_trait]
impl<B: Backend> KeyValueBasicInterface for KeyValue<B> {
    async fn set(&self, req: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        let (metadata, _, SetRequest { key, value, .. }) = req.into_parts();
        // No TTL: the cache's default_ttl applies, as for a cache Set.
        let set = pb::SetRequest {
            key,
            value,
            ttl: None,
            condition: pb::SetCondition::Always.into(),
        };
        let result = body(self.cache.set(forward(&metadata, set)).await);
        let (success, error) = outcome(&result);
        reply(SetResponse { success, error })
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let (metadata, _, GetRequest { key }) = req.into_parts();
        let get = pb::GetRequest { key };
        reply(match body(self.cache.get(forward(&metadata, get)).await) {
            Ok(r) => GetResponse {
                found: r.found,
                value: r.value,
                error: String::new(),
            },
            Err(error) => GetResponse {
                error,
                ..GetResponse::default()
            },
        })
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let (metadata, _, DeleteRequest { key }) = req.into_parts();
        let result = self.delete_keys(&metadata, vec![key]).await;
        let (success, error) = outcome(&result);
        reply(DeleteResponse { success, error })
    }

    async fn exists(
        &self,
        req: Request<ExistsRequest>,
    ) -> Result<Response<ExistsResponse>, Status> {
        let (metadata, _, ExistsRequest { key }) = req.into_parts();
        let result = self.exists_one(&metadata, key).await;
        let (_, error) = outcome(&result);
        reply(ExistsResponse {
            exists: result.unwrap_or(false),
            error,
        })
    }
}

// === batch ===

/// MSet entries from Prism's Set requests. MSet takes a key once; Prism's
/// BatchSet may repeat one, and the last value wins as it would when the
/// Sets ran in order (each request still gets its own result).
fn entries(requests: Vec<SetRequest>) -> Vec<pb::Entry> {
    let mut last = HashMap::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        last.insert(r.key.clone(), i);
    }
    requests
        .into_iter()
        .enumerate()
        .filter(|(i, r)| last.get(&r.key) == Some(i))
        .map(|(_, r)| pb::Entry {
            key: r.key,
            value: r.value,
            ttl: None,
        })
        .collect()
}

#[tonic::async_trait]
impl<B: Backend> KeyValueBatchInterface for KeyValue<B> {
    async fn batch_set(
        &self,
        req: Request<BatchSetRequest>,
    ) -> Result<Response<BatchSetResponse>, Status> {
        let (metadata, _, BatchSetRequest { requests }) = req.into_parts();
        let count = requests.len();
        if count == 0 {
            return reply(BatchSetResponse {
                results: Vec::new(),
                all_success: true,
            });
        }
        let mset = pb::MSetRequest {
            entries: entries(requests),
        };
        // MSet succeeds or fails as a whole: every request shares its outcome.
        let result = body(self.cache.m_set(forward(&metadata, mset)).await);
        let (success, error) = outcome(&result);
        reply(BatchSetResponse {
            results: vec![SetResponse { success, error }; count],
            all_success: success,
        })
    }

    async fn batch_get(
        &self,
        req: Request<BatchGetRequest>,
    ) -> Result<Response<BatchGetResponse>, Status> {
        let (metadata, _, BatchGetRequest { keys }) = req.into_parts();
        if keys.is_empty() {
            return reply(BatchGetResponse::default());
        }
        let mget = pb::MGetRequest {
            keys: keys.iter().map(|k| pb::Key::from(k.as_str())).collect(),
        };
        let hits = match body(self.cache.m_get(forward(&metadata, mget)).await) {
            // A map here: one lookup per key, whatever the batch's size.
            Ok(r) => r.hits.into_iter().collect::<HashMap<_, _>>(),
            Err(error) => {
                let failed = GetResponse {
                    error,
                    ..GetResponse::default()
                };
                return reply(BatchGetResponse {
                    results: vec![failed; keys.len()],
                    found_count: 0,
                });
            }
        };
        // In key order, misses included (MGet answers hits only, by key).
        let results: Vec<GetResponse> = keys
            .iter()
            .map(|k| GetResponse {
                found: hits.contains_key(k.as_str()),
                value: hits.get(k.as_str()).cloned().unwrap_or_default(),
                error: String::new(),
            })
            .collect();
        let found = results.iter().filter(|r| r.found).count();
        reply(BatchGetResponse {
            results,
            found_count: i32::try_from(found).unwrap_or(i32::MAX),
        })
    }

    async fn batch_delete(
        &self,
        req: Request<BatchDeleteRequest>,
    ) -> Result<Response<BatchDeleteResponse>, Status> {
        let (metadata, _, BatchDeleteRequest { keys }) = req.into_parts();
        let count = keys.len();
        if count == 0 {
            return reply(BatchDeleteResponse {
                results: Vec::new(),
                all_success: true,
            });
        }
        let result = self.delete_keys(&metadata, keys).await;
        let (success, error) = outcome(&result);
        reply(BatchDeleteResponse {
            results: vec![DeleteResponse { success, error }; count],
            all_success: success,
        })
    }
}

// === TTL ===

#[tonic::async_trait]
impl<B: Backend> KeyValueTtlInterface for KeyValue<B> {
    async fn expire(
        &self,
        req: Request<ExpireRequest>,
    ) -> Result<Response<ExpireResponse>, Status> {
        let (metadata, _, ExpireRequest { key, ttl_seconds }) = req.into_parts();
        let result = match ttl_seconds {
            ..0 => Err("ttl_seconds: must not be negative (0 expires the key now)".to_string()),
            // Expire now: Delete, whose count says whether the key existed.
            0 => self.delete_keys(&metadata, vec![key]).await.map(|n| n > 0),
            seconds => {
                let ttl = prost_types::Duration { seconds, nanos: 0 };
                let expire = pb::ExpireRequest {
                    key,
                    ttl: Some(ttl),
                };
                body(self.cache.expire(forward(&metadata, expire)).await).map(|r| r.found)
            }
        };
        let (success, error) = outcome(&result);
        reply(ExpireResponse {
            success,
            error,
            key_existed: result.unwrap_or(false),
        })
    }

    async fn get_ttl(
        &self,
        req: Request<GetTtlRequest>,
    ) -> Result<Response<GetTtlResponse>, Status> {
        let (metadata, _, GetTtlRequest { key }) = req.into_parts();
        let get_ttl = pb::GetTtlRequest { key };
        reply(
            match body(self.cache.get_ttl(forward(&metadata, get_ttl)).await) {
                Ok(r) => GetTtlResponse {
                    ttl_seconds: match (r.found, r.ttl) {
                        (false, _) => TTL_NO_KEY,
                        (true, None) => TTL_NO_EXPIRY,
                        (true, Some(ttl)) => whole_seconds(&ttl),
                    },
                    error: String::new(),
                },
                // No TTL to report; 0 with the error set.
                Err(error) => GetTtlResponse {
                    ttl_seconds: 0,
                    error,
                },
            },
        )
    }

    async fn persist(
        &self,
        req: Request<PersistRequest>,
    ) -> Result<Response<PersistResponse>, Status> {
        let (metadata, _, PersistRequest { key }) = req.into_parts();
        let persist = pb::PersistRequest { key };
        let result = body(self.cache.persist(forward(&metadata, persist)).await);
        let (success, error) = outcome(&result);
        reply(PersistResponse {
            success,
            error,
            expiration_removed: result.is_ok_and(|r| r.ttl_removed),
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn set(key: &str, value: &'static [u8]) -> SetRequest {
        SetRequest {
            key: key.into(),
            value: Bytes::from_static(value),
            tags: None,
        }
    }

    #[test]
    fn a_repeated_batch_set_key_keeps_its_last_value() {
        let got = entries(vec![set("a", b"1"), set("b", b"2"), set("a", b"3")]);
        let got: Vec<_> = got.iter().map(|e| (e.key.as_str(), &e.value[..])).collect();
        assert_eq!(got, vec![("b", &b"2"[..]), ("a", &b"3"[..])]);
    }

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(whole_seconds(&d(0, 300_000_000)), 1);
        assert_eq!(whole_seconds(&d(59, 0)), 59);
        assert_eq!(whole_seconds(&d(59, 1)), 60);
    }
}
