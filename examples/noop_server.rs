//! The gRPC ceiling for `bench/run`: the `cache.v1.Cache` API answered
//! without any backend, behind the same tonic server setup as the plugin
//! (multi-thread runtime, `tcp_nodelay`, responses gathered by
//! `coalesce::Coalesce`, HTTP/1 accepted, the service mounted
//! on tonic's axum router next to a `GET /metrics` route, the same codec and
//! allocator, and MGet's reply type `pb::Hits`, a list rather than prost's
//! `HashMap`). Whatever the plugin adds on top of this is validation,
//! metrics and the Redis round trip.
//!
//! Not part of the product: `cargo build --release --example noop_server`,
//! then `noop_server PORT [VALUE_BYTES]`. Get answers a hit of VALUE_BYTES
//! (default 100), MGet a hit for every key, the rest an empty success.
//! `GET /metrics` counts the answered RPCs, so the harness can check that
//! h2load's "succeeded" were gRPC successes and not just HTTP 200s.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::routing::get;
use bytes::Bytes;
use redis_cache_plugin::coalesce::Coalesce;
use redis_cache_plugin::pb::{
    DeleteRequest, DeleteResponse, ExistsRequest, ExistsResponse, ExpireRequest, ExpireResponse,
    GetRequest, GetResponse, GetTtlRequest, GetTtlResponse, Hits, IncrRequest, IncrResponse,
    MGetRequest, MGetResponse, MSetRequest, MSetResponse, PersistRequest, PersistResponse,
    SetRequest, SetResponse,
    cache_server::{Cache, CacheServer},
};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::{
    Request, Response, Status,
    service::Routes,
    transport::{Server, server::TcpIncoming},
};

/// The plugin's allocator, so the ceiling differs from the plugin only by
/// what the plugin does per request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Answers every RPC at once; counts what it answered.
struct Noop {
    value: Bytes,
    answered: Arc<AtomicU64>,
}

impl Noop {
    fn ok<T>(&self, reply: T) -> Result<Response<T>, Status> {
        self.answered.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(reply))
    }
}

#[tonic::async_trait]
impl Cache for Noop {
    async fn get(&self, _req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.ok(GetResponse {
            found: true,
            value: self.value.clone(),
        })
    }

    async fn set(&self, _req: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        self.ok(SetResponse { written: true })
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let deleted = req.into_inner().keys.len() as u64;
        self.ok(DeleteResponse { deleted })
    }

    async fn m_get(&self, req: Request<MGetRequest>) -> Result<Response<MGetResponse>, Status> {
        // The plugin's reply type (a list, not prost's HashMap), so the
        // ceiling encodes MGet as the plugin does (bench bodies hold each
        // key once, as `Hits` asks).
        let hits: Hits = req
            .into_inner()
            .keys
            .into_iter()
            .map(|k| (k, self.value.clone()))
            .collect();
        self.ok(MGetResponse { hits })
    }

    async fn expire(
        &self,
        _req: Request<ExpireRequest>,
    ) -> Result<Response<ExpireResponse>, Status> {
        self.ok(ExpireResponse { found: true })
    }

    async fn m_set(&self, _req: Request<MSetRequest>) -> Result<Response<MSetResponse>, Status> {
        self.ok(MSetResponse {})
    }

    async fn incr(&self, req: Request<IncrRequest>) -> Result<Response<IncrResponse>, Status> {
        let value = req.into_inner().delta;
        self.ok(IncrResponse { value })
    }

    async fn get_ttl(
        &self,
        _req: Request<GetTtlRequest>,
    ) -> Result<Response<GetTtlResponse>, Status> {
        self.ok(GetTtlResponse {
            found: true,
            ttl: None,
        })
    }

    async fn persist(
        &self,
        _req: Request<PersistRequest>,
    ) -> Result<Response<PersistResponse>, Status> {
        self.ok(PersistResponse {
            found: true,
            ttl_removed: false,
        })
    }

    async fn exists(
        &self,
        req: Request<ExistsRequest>,
    ) -> Result<Response<ExistsResponse>, Status> {
        let count = req.into_inner().keys.len() as u64;
        self.ok(ExistsResponse { count })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .ok_or("usage: noop_server PORT [VALUE_BYTES]")?
        .parse()?;
    let value_bytes: usize = args.next().map_or(Ok(100), |v| v.parse())?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(port, value_bytes))
}

async fn serve(port: u16, value_bytes: usize) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let answered = Arc::new(AtomicU64::new(0));
    let noop = Noop {
        value: Bytes::from(vec![b'v'; value_bytes]),
        answered: answered.clone(),
    };
    let scrape = move || {
        let n = answered.load(Ordering::Relaxed);
        async move { format!("noop_answered_total {n}\n") }
    };
    // Same shape as the plugin's router: the gRPC routes turned into an axum
    // router with /metrics beside them, and a decoding limit as large.
    let grpc = Routes::new(CacheServer::new(noop).max_decoding_message_size(8 << 20));
    let router = grpc.into_axum_router().route("/metrics", get(scrape));
    println!("noop_server listening on {}", listener.local_addr()?);
    // As the plugin: nodelay on the stream (the builder's flag is ignored for
    // an incoming stream), and each connection's responses gathered into one
    // write.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(|accepted| accepted.map(Coalesce::new));
    Server::builder()
        .accept_http1(true)
        .add_routes(Routes::from(router))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
