//! redis-cache-plugin: a gRPC cache sidecar over Redis or Valkey.
//!
//! A tour of the layout, outside in:
//! - [`server`]: one port serving the cache API, health, reflection and
//!   `/metrics`; start-up and drain order. [`transport`] accepts and
//!   serves its connections; [`admission`] decides what a request may
//!   hold (HTTP policy, permits, byte budgets, read deadline).
//! - [`service`]: the `cache.v1.Cache` RPCs — validation, key prefix,
//!   deadlines, metrics, the error contract.
//! - [`backend`]: the [`backend::Backend`] trait, with Redis and in-memory
//!   implementations.
//! - [`credentials`]: who the plugin is to Redis, and how a new identity
//!   reaches the pool without dropping a request.
//! - [`health`], [`metrics`], [`telemetry`]: what operators watch;
//!   [`probe`] is the client side of health, for `redis-cache-plugin health`.
//! - [`config`]: the YAML schema, environment overlay and validation.
//! - [`error`]: the one error type and its gRPC mapping.

#![forbid(unsafe_code)]

pub mod admission;
pub mod backend;
pub mod backoff;
pub mod codec;
pub mod config;
pub mod credentials;
pub mod error;
pub mod grpc_timeout;
pub mod health;
pub mod metrics;
pub mod probe;
pub mod secret;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod transport;

/// Generated `cache.v1` messages, client and server.
pub mod pb {
    #![allow(unreachable_pub, missing_docs, clippy::all)]
    tonic::include_proto!("cache.v1");

    /// Encoded descriptors of `cache.v1`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cache_descriptor");
}

pub use server::serve;
