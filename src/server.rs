//! One port for everything: the cache service, Prism's plugin interfaces
//! (`crate::prism`), `grpc.health.v1`, server reflection (v1 and v1alpha,
//! for grpcurl) and plain HTTP `GET /metrics`.
//!
//! [`serve`] builds the application from a validated [`Config`], serves on a
//! listener it is given and drains on a shutdown future it is given — so
//! tests drive the real server in-process. It owns the order of shutdown:
//! health NOT_SERVING, stop accepting, let calls in flight finish (bounded by
//! `drain_timeout`), then release credentials — on the shutdown future or
//! on Prism's `Stop`, whichever comes first.

use std::{future::Future, sync::Arc};

use axum::{http::header::CONTENT_TYPE, routing::get};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tracing::{info, warn};

use crate::{
    admission::{Admission, AdmissionLimits},
    backend::{
        Backend,
        memory::MemoryBackend,
        redis::{NearCache, RedisBackend, RedisSettings, RedisTlsSettings},
    },
    config::{BackendKind, Config},
    credentials::{self, CredentialsHandle},
    drain::Gate,
    error::Error,
    health::Prober,
    metrics::{self, Metrics},
    pb::{self, cache_server::CacheServer},
    prism::{KeyValue, Lifecycle, lifecycle::LifecycleParts},
    prism_pb::{
        self,
        interfaces::{
            keyvalue::{
                key_value_basic_interface_server::KeyValueBasicInterfaceServer as BasicServer,
                key_value_batch_interface_server::KeyValueBatchInterfaceServer as BatchServer,
                key_value_ttl_interface_server::KeyValueTtlInterfaceServer as TtlServer,
            },
            lifecycle_interface_server::LifecycleInterfaceServer as LifecycleServer,
        },
    },
    service::{CacheService, Limits},
    shutdown::{Phase, Shutdown},
    tls::{self, ReloadingAcceptor, TlsError},
    transport::{self, TransportLimits},
};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("backend: {0}")]
    Backend(#[from] Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("vault: {0}")]
    Vault(#[from] credentials::vault::VaultError),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
}

/// Builds the backend named by the config and serves until `signal`
/// resolves, then shuts down in order (see [`crate::shutdown`]).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    tls::install_crypto_provider();
    let metrics = Metrics::new();
    // Dropped on every return path, which stops whatever was started.
    let shutdown = Shutdown::new();
    let on = Serving {
        listener,
        signal,
        shutdown: &shutdown,
    };
    match config.backend.kind {
        BackendKind::Memory => {
            let backend =
                Arc::new(MemoryBackend::new().max_reply_bytes(config.backend.max_reply_bytes));
            serve_backend(config, backend, None, metrics, on).await
        }
        BackendKind::Redis => {
            let (creds, vault) = if config.backend.vault_enabled {
                let (handle, task) =
                    credentials::vault::start(&config, metrics.clone(), shutdown.watch())?;
                (handle, Some(task))
            } else {
                let b = &config.backend;
                (credentials::fixed(&b.username, &b.password), None)
            };
            let run = async {
                let settings = redis_settings(&config)?;
                let backend = RedisBackend::start(settings, creds.clone(), shutdown.watch())?;
                backend.check_tls().await?;
                let backend = Arc::new(backend);
                serve_backend(config, backend, Some(creds), metrics, on).await
            };
            let result = run.await;
            // After the drain, or after a start-up error once a lease may
            // have been read: revoke it so no Vault user outlives us.
            shutdown.advance(Phase::Stopped);
            if let Some(vault) = vault {
                vault.join().await;
            }
            result
        }
    }
}

/// Where to serve and when to stop.
struct Serving<'a, F> {
    listener: TcpListener,
    /// The request to stop (SIGTERM in the binary).
    signal: F,
    shutdown: &'a Shutdown,
}

/// Redis connection settings from config (reads the TLS files).
pub fn redis_settings(config: &Config) -> Result<RedisSettings, TlsError> {
    let b = &config.backend;
    let t = &b.tls;
    // The same decision the start-up line reports: `rediss://` turns TLS on
    // with this block's CA and client certificate, not only `enabled`.
    let tls = if config.tls_served().redis_tls {
        if t.insecure_skip_verify {
            warn!(
                "backend.tls.insecure_skip_verify is ON: Redis' certificate is NOT verified; anyone on the path can impersonate Redis. Never use this in production."
            );
        }
        Some(RedisTlsSettings {
            config: Arc::new(tls::redis_client_config(t)?),
            server_name: (!t.server_name.is_empty()).then(|| t.server_name.clone()),
        })
    } else {
        None
    };
    Ok(RedisSettings {
        topology: b.topology,
        address: b.address.clone(),
        addresses: b.addresses.clone(),
        sentinel_master: b.sentinel_master.clone(),
        sentinel_username: b.sentinel_username.clone(),
        sentinel_password: b.sentinel_password.clone(),
        database: b.database,
        pool_size: b.pool_size,
        connect_timeout: b.pool_timeout.0,
        operation_timeout: b.operation_timeout.0,
        max_retries: b.max_retries,
        tls,
        max_reply_bytes: b.max_reply_bytes,
        near_cache: b
            .near_cache
            .enabled
            .then(|| NearCache::new(b.near_cache.max_bytes, b.near_cache.max_ttl.0)),
    })
}

fn limits(config: &Config) -> Limits {
    let b = &config.backend;
    Limits {
        key_prefix: b.key_prefix.clone(),
        max_key_bytes: b.max_key_bytes,
        max_value_bytes: b.max_value_bytes,
        max_batch_keys: b.max_batch_keys,
        default_ttl: b.default_ttl.0,
        operation_timeout: b.operation_timeout.0,
    }
}

/// The largest request the limits allow, plus room for framing. An MSet
/// is bounded by this too (not by `max_batch_keys` x `max_value_bytes`,
/// which with the defaults would be 4 GiB): one call carries about one
/// Set's worth of values at most.
fn max_request_bytes(l: &Limits) -> usize {
    let batch = l.max_batch_keys.saturating_mul(l.max_key_bytes + 8);
    (l.max_value_bytes + l.max_key_bytes).max(batch) + 64 * 1024
}

async fn serve_backend<B: Backend>(
    config: Config,
    backend: Arc<B>,
    creds: Option<CredentialsHandle>,
    metrics: Arc<Metrics>,
    on: Serving<'_, impl Future<Output = ()> + Send>,
) -> Result<(), ServeError> {
    let Serving {
        listener,
        signal,
        shutdown,
    } = on;
    let acceptor = acceptor(&config, &metrics)?;
    let gate = Arc::new(Gate::new());
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let prober = prober(&config, reporter, creds, &gate, &metrics);
    let services = Services {
        health: health_service,
        lifecycle: lifecycle(&config, &listener, &gate, &prober),
        gate: gate.clone(),
    };
    let admission = app(&config, &backend, services, &prober, metrics)?;
    let interval = config.control_plane.health_interval.0;
    let probe_timeout = config.backend.operation_timeout.0;
    // tonic-health starts "" as SERVING; say NOT_SERVING before the port
    // opens, so nobody is told SERVING before Redis has answered.
    prober.set(false).await;
    let prober = tokio::spawn(prober.run(backend, interval, probe_timeout, shutdown.watch()));
    if let Some(acceptor) = &acceptor {
        tokio::spawn(acceptor.clone().watch(shutdown.watch()));
    }
    log_start(&config, &listener);
    let limits = transport_limits(&config);
    let served = transport::serve(listener, acceptor, admission, limits, shutdown.watch());
    tokio::pin!(served);
    let asked = tokio::select! {
        () = &mut served => return Ok(()),
        () = signal => {
            info!("shutdown requested: draining");
            None
        }
        asked = gate.stop_requested() => {
            info!("Prism Stop: draining");
            asked
        }
    };
    shutdown.advance(Phase::Closing);
    // The prober publishes NOT_SERVING as it ends; only then close the port.
    let _ = prober.await;
    shutdown.advance(Phase::Draining);
    let drain = config.control_plane.drain_timeout.0;
    let drain = asked.map_or(drain, |asked| asked.min(drain));
    if tokio::time::timeout(drain, &mut served).await.is_err() {
        warn!(?drain, "drain timeout reached; closing remaining calls");
        shutdown.advance(Phase::Stopped);
        served.await;
    }
    Ok(())
}

/// The health prober, also NOT_SERVING while `gate` is closed and, with
/// `creds`, while the credentials are not valid.
fn prober(
    config: &Config,
    reporter: tonic_health::server::HealthReporter,
    creds: Option<CredentialsHandle>,
    gate: &Arc<Gate>,
    metrics: &Arc<Metrics>,
) -> Prober {
    let prober =
        Prober::new(reporter, &config.plugin.name, metrics.clone()).with_gate(gate.clone());
    match creds {
        Some(creds) => prober.with_credentials(creds),
        None => prober,
    }
}

/// The TLS acceptor of the gRPC port, when it speaks TLS.
fn acceptor(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<ReloadingAcceptor>>, ServeError> {
    if !config.tls_served().grpc_tls {
        return Ok(None);
    }
    let t = config.control_plane.tls.clone();
    Ok(Some(ReloadingAcceptor::new(t, metrics.clone())?))
}

/// Prism's lifecycle service for this server.
fn lifecycle(
    config: &Config,
    listener: &TcpListener,
    gate: &Arc<Gate>,
    prober: &Prober,
) -> Lifecycle {
    let endpoint = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    Lifecycle::new(LifecycleParts {
        config: config.clone(),
        endpoint,
        gate: gate.clone(),
        health: prober.view(),
        wake_prober: prober.wake.clone(),
    })
}

/// The services besides the cache's that the routes serve.
struct Services<H> {
    health: tonic_health::pb::health_server::HealthServer<H>,
    lifecycle: Lifecycle,
    gate: Arc<Gate>,
}

/// The cache service, Prism's services, health, reflection and `/metrics`
/// behind admission.
fn app<B: Backend, H: tonic_health::pb::health_server::Health>(
    config: &Config,
    backend: &Arc<B>,
    services: Services<H>,
    prober: &Prober,
    metrics: Arc<Metrics>,
) -> Result<Arc<Admission>, ServeError> {
    let limits = limits(config);
    let max_request = max_request_bytes(&limits);
    let cache = CacheService::new(
        backend.clone(),
        limits,
        metrics.clone(),
        prober.wake.clone(),
    );
    let gate = services.gate.clone();
    let router = routes(
        Arc::new(cache),
        services,
        backend.clone(),
        metrics.clone(),
        max_request,
    )?;
    let limits = admission_limits(config, max_request);
    Ok(Admission::new(router, limits, metrics, gate))
}

fn admission_limits(config: &Config, max_request_bytes: usize) -> AdmissionLimits {
    let c = &config.control_plane;
    AdmissionLimits {
        max_concurrent_requests: c.max_concurrent_requests,
        max_in_flight_bytes: c.max_in_flight_bytes,
        max_in_flight_bytes_per_connection: c.max_in_flight_bytes_per_connection,
        request_read_timeout: c.request_read_timeout.0,
        max_request_bytes,
        refusal_delay: c.refusal_delay.0,
    }
}

fn transport_limits(config: &Config) -> TransportLimits {
    let c = &config.control_plane;
    TransportLimits {
        max_connections: c.max_connections,
        max_concurrent_streams: c.max_concurrent_streams,
        idle_timeout: c.idle_timeout.0,
        keepalive_interval: c.keepalive_interval.0,
        keepalive_timeout: c.keepalive_timeout.0,
        header_read_timeout: c.request_read_timeout.0,
    }
}

fn routes<B: Backend, H: tonic_health::pb::health_server::Health>(
    cache: Arc<CacheService<B>>,
    services: Services<H>,
    backend: Arc<B>,
    metrics: Arc<Metrics>,
    max_request: usize,
) -> Result<axum::Router, ServeError> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(prism_pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let kv = Arc::new(KeyValue::new(cache.clone()));
    let grpc = Routes::new(CacheServer::from_arc(cache).max_decoding_message_size(max_request))
        .add_service(BasicServer::from_arc(kv.clone()).max_decoding_message_size(max_request))
        .add_service(BatchServer::from_arc(kv.clone()).max_decoding_message_size(max_request))
        .add_service(TtlServer::from_arc(kv))
        .add_service(LifecycleServer::new(services.lifecycle))
        .add_service(services.health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    let scrape = move || {
        let (backend, metrics) = (backend.clone(), metrics.clone());
        async move {
            metrics.set_pool(backend.pool_stats());
            metrics.set_topology(&backend.topology_stats());
            metrics.set_near(backend.near_stats());
            ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics.encode())
        }
    };
    Ok(grpc.into_axum_router().route("/metrics", get(scrape)))
}

/// The start-up line. TLS fields come from [`Config::tls_served`], the
/// decision the listener and the Redis pool act on; the address is shown
/// without credentials (config loading moved them out; redacting again
/// costs nothing).
fn log_start(config: &Config, listener: &TcpListener) {
    let b = &config.backend;
    let served = config.tls_served();
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(
        listen = %addr,
        backend = ?b.kind,
        redis_address = %crate::config::address::redact_address(&b.address),
        database = b.database,
        pool_size = b.pool_size,
        acl = !b.username.is_empty() || b.vault_enabled,
        vault = b.vault_enabled,
        redis_tls = served.redis_tls,
        grpc_tls = served.grpc_tls,
        mtls = served.mtls,
        key_prefix = %b.key_prefix,
        version = env!("CARGO_PKG_VERSION"),
        "redis-cache-plugin starting"
    );
}
