//! The RPCs of `cache.v1.Cache`: each reads its request, validates it
//! through the service's shared steps, and makes one backend call inside
//! [`CacheService::run`] (deadline, panic guard, metrics, error contract).

use tonic::{Request, Response, Status};

use super::{
    CacheService,
    validate::{check_value, invalid, set_condition, ttl_or, wire_ttl},
};
use crate::{
    backend::Backend,
    error::Error,
    pb::{
        DeleteRequest, DeleteResponse, ExistsRequest, ExistsResponse, ExpireRequest,
        ExpireResponse, GetRequest, GetResponse, GetTtlRequest, GetTtlResponse, Hits, IncrRequest,
        IncrResponse, MGetRequest, MGetResponse, MSetRequest, MSetResponse, PersistRequest,
        PersistResponse, SetRequest, SetResponse, cache_server::Cache,
    },
    service::check_ttl,
};

/// An MSet that failed after it was sent may have written some entries:
/// the caller hears so (a deadline's message says it already).
fn maybe_partial(e: Error) -> Error {
    match e {
        Error::Unavailable(why) => {
            Error::Unavailable(format!("{why}; some entries may have been written"))
        }
        e => e,
    }
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
            key,
            value,
            ttl,
            condition,
        } = req.into_inner();
        self.run(&self.ops.set, deadline, async {
            let key = self.key("key", &key)?;
            check_value("value", &value, self.limits.max_value_bytes)?;
            let ttl = ttl_or("ttl", ttl, self.limits.default_ttl)?;
            let condition = set_condition(condition)?;
            let written = self.backend.set(key, value, ttl, condition).await?;
            Ok(SetResponse { written })
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
            let deleted = self.backend.delete(self.prefixed(&keys)?).await?;
            Ok(DeleteResponse { deleted })
        })
        .await
    }

    async fn m_get(&self, req: Request<MGetRequest>) -> Result<Response<MGetResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let keys = req.into_inner().keys;
        self.run(&self.ops.mget, deadline, async {
            let keys = self.batch(keys)?;
            let values = self.backend.mget(self.prefixed(&keys)?).await?;
            if values.len() != keys.len() {
                return Err(Error::Internal(
                    "backend answered a different key count".into(),
                ));
            }
            // Lookups are counted per distinct key: what Redis looked up.
            let found = values.iter().filter(|v| v.is_some()).count();
            self.count_lookups(found, keys.len());
            // The batch holds each key once, as `Hits` asks.
            let mut hits = Hits::with_capacity(found);
            for (key, value) in keys.into_iter().zip(values) {
                if let Some(value) = value {
                    hits.push(key, value);
                }
            }
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

    async fn m_set(&self, req: Request<MSetRequest>) -> Result<Response<MSetResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let entries = req.into_inner().entries;
        self.run(&self.ops.mset, deadline, async {
            let (keys, entries) = self.entries(entries)?;
            self.backend
                .mset(keys, entries)
                .await
                .map_err(maybe_partial)?;
            Ok(MSetResponse {})
        })
        .await
    }

    async fn incr(&self, req: Request<IncrRequest>) -> Result<Response<IncrResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let IncrRequest { key, delta, ttl } = req.into_inner();
        self.run(&self.ops.incr, deadline, async {
            let key = self.key("key", &key)?;
            let ttl = ttl_or("ttl", ttl, self.limits.default_ttl)?;
            let value = self.backend.incr(key, delta, ttl).await?;
            Ok(IncrResponse { value })
        })
        .await
    }

    async fn get_ttl(
        &self,
        req: Request<GetTtlRequest>,
    ) -> Result<Response<GetTtlResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let key = req.into_inner().key;
        self.run(&self.ops.get_ttl, deadline, async {
            let ttl = self.backend.get_ttl(self.key("key", &key)?).await?;
            Ok(GetTtlResponse {
                found: ttl.is_some(),
                ttl: ttl.flatten().map(wire_ttl),
            })
        })
        .await
    }

    async fn persist(
        &self,
        req: Request<PersistRequest>,
    ) -> Result<Response<PersistResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let key = req.into_inner().key;
        self.run(&self.ops.persist, deadline, async {
            let p = self.backend.persist(self.key("key", &key)?).await?;
            Ok(PersistResponse {
                found: p.found,
                ttl_removed: p.ttl_removed,
            })
        })
        .await
    }

    async fn exists(
        &self,
        req: Request<ExistsRequest>,
    ) -> Result<Response<ExistsResponse>, Status> {
        let deadline = self.deadline(req.metadata());
        let keys = req.into_inner().keys;
        self.run(&self.ops.exists, deadline, async {
            let keys = self.batch(keys)?;
            let count = self.backend.exists(self.prefixed(&keys)?).await?;
            Ok(ExistsResponse { count })
        })
        .await
    }
}
