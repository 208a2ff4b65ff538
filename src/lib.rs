//! redis-cache-plugin: a gRPC cache sidecar over Redis or Valkey.
//!
//! A tour of the layout, outside in; each layer imports only the ones
//! below it (`scripts/layers --graph` prints the graph and fails on a
//! cycle):
//! - [`server`]: wiring. Builds the application from a [`config::Config`],
//!   serves one port and walks the [`shutdown`] phases in order (health
//!   NOT_SERVING, drain, stop background tasks, revoke credentials).
//! - [`transport`] accepts and serves connections (plain or [`tls`]),
//!   each behind [`coalesce`], which gathers its responses into one write;
//!   [`admission`] decides what a request may hold (HTTP policy, permits,
//!   byte budgets, read deadline); [`codec`] decodes `cache.v1` messages;
//!   [`mget_reply`] is MGet's reply, encoded by hand.
//! - [`service`]: the `cache.v1.Cache` RPCs — validation, key prefix,
//!   deadlines ([`grpc_timeout`]), metrics, the error contract.
//! - [`prism`]: Prism's plugin interfaces on the same port — the key-value
//!   services as an adapter over [`service`], and the lifecycle
//!   (Initialize, Start, Drain, Stop, HealthCheck) over [`drain`].
//! - [`backend`]: the [`backend::Backend`] trait; [`backend::memory`] and
//!   [`backend::redis`], itself in layers: `commands` (what to send) →
//!   `router` (which node) → `pool` (which connection, repair, circuit) →
//!   `connection` and `resp` (the wire).
//! - [`credentials`]: who the plugin is to Redis. A `rotation` loop over a
//!   `source` (Vault's database engine or KV v2) publishes identities the
//!   pool applies without dropping a request; `fixed` for static ones.
//! - [`health`], [`metrics`], [`telemetry`]: what operators watch;
//!   [`probe`] is the client side of health, for `redis-cache-plugin health`.
//! - [`config`]: the YAML schema, a file per section with its defaults and
//!   validation, and the environment overlay named once (`config::env`).
//! - Leaves that know nothing above them: [`error`] (the one error type and
//!   its gRPC mapping), [`secret`], [`backoff`], [`shutdown`], [`drain`].

#![forbid(unsafe_code)]

pub mod admission;
pub mod backend;
pub mod backoff;
pub mod coalesce;
pub mod codec;
pub mod config;
pub mod credentials;
pub mod drain;
pub mod error;
pub mod grpc_timeout;
pub mod health;
pub mod metrics;
pub mod mget_reply;
pub mod mget_request;
pub mod prism;
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

    /// Written by hand (see [`crate::mget_reply`] and
    /// [`crate::mget_request`]); generated code names them there.
    pub use crate::{
        mget_reply::{Hits, MGetResponse},
        mget_request::{Key, MGetRequest},
    };

    /// Encoded descriptors of `cache.v1`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cache_descriptor");
}

/// Generated Prism plugin interfaces (`prism.*`), client and server; the
/// module tree mirrors the packages, as the generated code expects.
pub mod prism_pb {
    /// `prism.common`.
    pub mod common {
        #![allow(unreachable_pub, missing_docs, clippy::all)]
        tonic::include_proto!("prism.common");
    }

    /// `prism.interfaces`: the lifecycle.
    pub mod interfaces {
        #![allow(unreachable_pub, missing_docs, clippy::all)]
        tonic::include_proto!("prism.interfaces");

        /// `prism.interfaces.keyvalue`: basic, batch and TTL.
        pub mod keyvalue {
            #![allow(unreachable_pub, missing_docs, clippy::all)]
            tonic::include_proto!("prism.interfaces.keyvalue");
        }
    }

    /// Encoded descriptors of `prism.*`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("prism_descriptor");
}

pub use server::serve;
