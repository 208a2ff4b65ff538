//! Prometheus metrics: one registry, typed label sets, text encoding for
//! `GET /metrics`.
//!
//! Components record through [`Metrics`]; this module does not serve HTTP
//! (the server does) and reads nothing on its own — pool gauges are set from a
//! [`PoolStats`] snapshot just before each scrape.

use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::backend::{NearStats, PoolStats, TopologyStats};

/// The media type of `/metrics`: prometheus-client writes OpenMetrics 1.0
/// text (with `# EOF`), which Prometheus asks for in its `Accept` header.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of `redis_plugin_operations_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpStatus {
    pub operation: &'static str,
    pub status: &'static str,
}

/// Labels carrying only the operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    pub operation: &'static str,
}

/// Labels carrying a state, reason or result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct State {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub result: &'static str,
}

/// Labels of `redis_plugin_cluster_redirects_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: &'static str,
}

/// Labels of `redis_plugin_node_connections`: the node's address (no
/// credentials: config moved them out of addresses; nodes a cluster
/// announces carry none).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeState {
    pub node: String,
    pub state: &'static str,
}

/// Histogram buckets that resolve cache latencies: 25 µs doubling to ~1.6 s.
#[derive(Clone)]
pub struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.000_025, 2.0, 17))
    }
}

/// One operation's success counter and latency histogram, looked up once:
/// recording a success is then an atomic add and one observation, with no
/// label hashing or family lock on every request. Other outcomes go through
/// [`Metrics::record`].
#[derive(Clone)]
pub struct OpMetrics {
    pub operation: &'static str,
    ok: Counter,
    duration: Histogram,
}

impl OpMetrics {
    /// Records one successful operation.
    pub fn ok(&self, seconds: f64) {
        self.ok.inc();
        self.duration.observe(seconds);
    }
}

/// The near cache's metrics (DESIGN.md, "Near cache").
#[derive(Default)]
pub struct NearMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub invalidations: Counter,
    pub evictions: Counter,
    pub bytes: Gauge,
}

impl NearMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "redis_plugin_near_cache_hits",
            "Gets answered from the near cache",
            self.hits.clone(),
        );
        r.register(
            "redis_plugin_near_cache_misses",
            "Gets the near cache did not hold",
            self.misses.clone(),
        );
        r.register(
            "redis_plugin_near_cache_invalidations",
            "Near cache entries dropped by Redis invalidations and flushes",
            self.invalidations.clone(),
        );
        r.register(
            "redis_plugin_near_cache_evictions",
            "Near cache entries dropped to stay under max_bytes",
            self.evictions.clone(),
        );
        r.register(
            "redis_plugin_near_cache_bytes",
            "Bytes the near cache holds (keys + values + overhead)",
            self.bytes.clone(),
        );
    }
}

/// Every metric the plugin exports.
pub struct Metrics {
    registry: Registry,
    pub operations: Family<OpStatus, Counter>,
    pub duration: Family<Op, Histogram, LatencyBuckets>,
    pub hits: Counter,
    pub misses: Counter,
    pub pool_size: Gauge,
    pub pool_connections: Family<State, Gauge>,
    pub dead_connections: Counter,
    pub health_status: Gauge,
    pub lease_expiry_seconds: Gauge<f64, AtomicU64>,
    pub rotations: Counter,
    pub renewals: Family<Outcome, Counter>,
    pub vault_errors: Family<Op, Counter>,
    pub rejected: Family<Reason, Counter>,
    pub tls_reloads: Family<Outcome, Counter>,
    pub redirects: Family<Kind, Counter>,
    pub topology_refreshes: Counter,
    pub failovers: Counter,
    pub node_connections: Family<NodeState, Gauge>,
    pub near: NearMetrics,
    /// Serialises [`Metrics::set_topology`]: counters advance by the
    /// difference to the backend's own counts.
    topology_lock: std::sync::Mutex<()>,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let m = Metrics {
            operations: Family::default(),
            duration: Family::new_with_constructor(LatencyBuckets),
            hits: Counter::default(),
            misses: Counter::default(),
            pool_size: Gauge::default(),
            pool_connections: Family::default(),
            dead_connections: Counter::default(),
            health_status: Gauge::default(),
            lease_expiry_seconds: Gauge::default(),
            rotations: Counter::default(),
            renewals: Family::default(),
            vault_errors: Family::default(),
            rejected: Family::default(),
            tls_reloads: Family::default(),
            redirects: Family::default(),
            topology_refreshes: Counter::default(),
            failovers: Counter::default(),
            node_connections: Family::default(),
            near: NearMetrics::default(),
            topology_lock: std::sync::Mutex::new(()),
            registry: Registry::default(),
        };
        m.register_requests(&mut registry);
        m.register_serving(&mut registry);
        m.register_credentials(&mut registry);
        m.register_topology(&mut registry);
        m.near.register(&mut registry);
        Arc::new(Metrics { registry, ..m })
    }

    /// What callers asked for and how it went.
    fn register_requests(&self, r: &mut Registry) {
        r.register(
            "redis_plugin_operations",
            "Cache operations by result",
            self.operations.clone(),
        );
        r.register(
            "redis_plugin_operation_duration_seconds",
            "Cache operation latency, from request to response",
            self.duration.clone(),
        );
        r.register("redis_plugin_cache_hits", "Keys found", self.hits.clone());
        r.register(
            "redis_plugin_cache_misses",
            "Keys not found",
            self.misses.clone(),
        );
        r.register(
            "redis_plugin_requests_rejected",
            "Requests refused before reaching Redis, by reason",
            self.rejected.clone(),
        );
    }

    /// The pool, health and TLS state of the serving side.
    fn register_serving(&self, r: &mut Registry) {
        r.register(
            "redis_plugin_pool_size",
            "Configured Redis connections",
            self.pool_size.clone(),
        );
        r.register(
            "redis_plugin_pool_connections",
            "Redis connections by state (idle, in_use, disconnected)",
            self.pool_connections.clone(),
        );
        r.register(
            "redis_plugin_dead_connections",
            "Redis connections replaced because the peer stopped answering",
            self.dead_connections.clone(),
        );
        r.register(
            "redis_plugin_health_status",
            "1 when serving, 0 when not",
            self.health_status.clone(),
        );
        r.register(
            "redis_plugin_tls_reloads",
            "Reloads of the gRPC port's TLS certificates by result",
            self.tls_reloads.clone(),
        );
    }

    /// Sentinel and Cluster: redirects, map refreshes, failovers, nodes.
    fn register_topology(&self, r: &mut Registry) {
        r.register(
            "redis_plugin_cluster_redirects",
            "Cluster redirects followed by kind (moved, ask)",
            self.redirects.clone(),
        );
        r.register(
            "redis_plugin_topology_refreshes",
            "Cluster slot maps read",
            self.topology_refreshes.clone(),
        );
        r.register(
            "redis_plugin_failovers_followed",
            "Master changes followed (sentinel)",
            self.failovers.clone(),
        );
        r.register(
            "redis_plugin_node_connections",
            "Redis connections per node by state (idle, in_use, disconnected)",
            self.node_connections.clone(),
        );
    }

    /// The Redis identity from Vault: lease, renewals, rotations.
    fn register_credentials(&self, r: &mut Registry) {
        r.register(
            "redis_plugin_credential_lease_expiry_seconds",
            "Seconds until the current Redis credential lease ends",
            self.lease_expiry_seconds.clone(),
        );
        r.register(
            "redis_plugin_credential_rotations",
            "Switches to new Redis credentials",
            self.rotations.clone(),
        );
        r.register(
            "redis_plugin_credential_renewals",
            "Credential lease renewals by result",
            self.renewals.clone(),
        );
        r.register(
            "redis_plugin_vault_errors",
            "Failed Vault calls by operation",
            self.vault_errors.clone(),
        );
    }

    /// Records one finished operation.
    pub fn record(&self, operation: &'static str, status: &'static str, seconds: f64) {
        self.operations
            .get_or_create(&OpStatus { operation, status })
            .inc();
        self.duration
            .get_or_create(&Op { operation })
            .observe(seconds);
    }

    /// Handles for `operation`'s success path, resolved once (see [`OpMetrics`]).
    pub fn op(&self, operation: &'static str) -> OpMetrics {
        OpMetrics {
            operation,
            ok: self
                .operations
                .get_or_create(&OpStatus {
                    operation,
                    status: "ok",
                })
                .clone(),
            duration: self.duration.get_or_create(&Op { operation }).clone(),
        }
    }

    /// Counts a request refused before it reached the backend.
    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&Reason { reason }).inc();
    }

    /// The rejection counter of `reason`, resolved once for a hot path.
    pub fn rejected_counter(&self, reason: &'static str) -> Counter {
        self.rejected.get_or_create(&Reason { reason }).clone()
    }

    /// Sets the pool gauges from a snapshot.
    pub fn set_pool(&self, s: PoolStats) {
        self.pool_size.set(s.size as i64);
        for (state, n) in [
            ("idle", s.idle),
            ("in_use", s.in_use),
            ("disconnected", s.disconnected),
        ] {
            self.pool_connections
                .get_or_create(&State { state })
                .set(n as i64);
        }
        // The pools count since start; the counter catches up to them.
        let seen = self.dead_connections.get();
        if s.dead > seen {
            self.dead_connections.inc_by(s.dead - seen);
        }
    }

    /// Advances the near cache counters to the backend's counts and sets
    /// its size (nothing without a near cache).
    pub fn set_near(&self, s: Option<NearStats>) {
        let Some(s) = s else {
            return;
        };
        let _serial = self
            .topology_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = &self.near;
        for (c, to) in [
            (&n.hits, s.hits),
            (&n.misses, s.misses),
            (&n.invalidations, s.invalidations),
            (&n.evictions, s.evictions),
        ] {
            let now = c.get();
            if to > now {
                c.inc_by(to - now);
            }
        }
        n.bytes.set(i64::try_from(s.bytes).unwrap_or(i64::MAX));
    }

    /// Advances the topology counters to the backend's counts and sets the
    /// per-node gauges (nodes that left drop out).
    pub fn set_topology(&self, s: &TopologyStats) {
        let _serial = self
            .topology_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let advance = |c: &Counter, to: u64| {
            let now = c.get();
            if to > now {
                c.inc_by(to - now);
            }
        };
        advance(
            &self.redirects.get_or_create(&Kind { kind: "moved" }),
            s.moved,
        );
        advance(&self.redirects.get_or_create(&Kind { kind: "ask" }), s.ask);
        advance(&self.topology_refreshes, s.refreshes);
        advance(&self.failovers, s.failovers);
        self.node_connections.clear();
        for (node, p) in &s.nodes {
            for (state, n) in [
                ("idle", p.idle),
                ("in_use", p.in_use),
                ("disconnected", p.disconnected),
            ] {
                let labels = NodeState {
                    node: node.clone(),
                    state,
                };
                self.node_connections.get_or_create(&labels).set(n as i64);
            }
        }
    }

    /// The registry in OpenMetrics text format (served as [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an error here would be a bug in
        // the encoder, and an empty scrape is the safe answer.
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_documented_names() {
        let m = Metrics::new();
        m.record("get", "ok", 0.0001);
        m.hits.inc();
        m.misses.inc();
        m.reject("overload");
        m.set_pool(PoolStats {
            size: 4,
            idle: 3,
            in_use: 1,
            disconnected: 0,
            dead: 2,
        });
        let text = m.encode();
        for name in [
            "redis_plugin_operations_total{operation=\"get\",status=\"ok\"} 1",
            "redis_plugin_operation_duration_seconds_bucket{le=\"0.0001\",operation=\"get\"}",
            "redis_plugin_cache_hits_total 1",
            "redis_plugin_cache_misses_total 1",
            "redis_plugin_pool_size 4",
            "redis_plugin_pool_connections{state=\"in_use\"} 1",
            "redis_plugin_dead_connections_total 2",
            "redis_plugin_health_status 0",
            "redis_plugin_requests_rejected_total{reason=\"overload\"} 1",
            "redis_plugin_credential_rotations_total 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
