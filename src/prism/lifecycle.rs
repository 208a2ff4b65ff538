//! Prism's `LifecycleInterface`: how a Prism proxy initialises, starts,
//! drains, stops and health-checks the plugin.
//!
//! - `Initialize` checks its `config` against the plugin's own schema (the
//!   YAML names, unknown keys refused, the same validation). The plugin
//!   already serves with its file/environment config and applies config at
//!   start-up only, so a key whose value differs from the running one is
//!   refused naming it; equal values (or none) succeed with the plugin's
//!   [`PatternMetadata`].
//! - `Start` answers the address the port actually listens on.
//! - `Drain` closes the [`Gate`]: health turns NOT_SERVING, new data calls
//!   are refused UNAVAILABLE (by admission), the calls in flight finish
//!   within the bound.
//! - `Stop` closes the gate too and asks the server for its ordinary
//!   shutdown (health, stop accepting, drain, release credentials); the
//!   process then exits 0.
//! - `HealthCheck` mirrors what the health prober published.
//!
//! Errors go in the reply body, like the key-value interfaces'.

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde_json::{Map, Number, Value as Json};
use tokio::sync::{Notify, watch};
use tonic::{Request, Response, Status};

use crate::{
    config::Config,
    drain::Gate,
    health::HealthView,
    prism_pb::interfaces::{
        DrainRequest, DrainResponse, HealthCheckRequest, HealthCheckResponse, HealthStatus,
        InitializeRequest, InitializeResponse, InterfaceDeclaration, PatternMetadata, StartRequest,
        StartResponse, StopRequest, StopResponse, lifecycle_interface_server::LifecycleInterface,
    },
};

/// The interfaces the plugin declares: (name, proto file, the file).
const INTERFACES: [(&str, &str, &str); 4] = [
    (
        "KeyValueBasicInterface",
        "prism/interfaces/keyvalue/keyvalue_basic.proto",
        include_str!("../../proto/prism/interfaces/keyvalue/keyvalue_basic.proto"),
    ),
    (
        "KeyValueBatchInterface",
        "prism/interfaces/keyvalue/keyvalue_batch.proto",
        include_str!("../../proto/prism/interfaces/keyvalue/keyvalue_batch.proto"),
    ),
    (
        "KeyValueTTLInterface",
        "prism/interfaces/keyvalue/keyvalue_ttl.proto",
        include_str!("../../proto/prism/interfaces/keyvalue/keyvalue_ttl.proto"),
    ),
    (
        "LifecycleInterface",
        "prism/interfaces/lifecycle.proto",
        include_str!("../../proto/prism/interfaces/lifecycle.proto"),
    ),
];

/// The version every declared interface is at.
const INTERFACE_VERSION: &str = "v1";

/// The lifecycle service.
pub struct Lifecycle {
    /// The config the plugin runs with (file, then environment).
    config: Config,
    /// `host:port` the listener is bound to.
    endpoint: String,
    gate: Arc<Gate>,
    health: watch::Receiver<HealthView>,
    /// Wakes the prober so a drain shows in health at once.
    wake_prober: Arc<Notify>,
    /// Computed once at start (the files are embedded).
    interfaces: Vec<InterfaceDeclaration>,
}

/// What the lifecycle service is built from.
pub struct LifecycleParts {
    pub config: Config,
    pub endpoint: String,
    pub gate: Arc<Gate>,
    pub health: watch::Receiver<HealthView>,
    pub wake_prober: Arc<Notify>,
}

impl Lifecycle {
    /// The service, with the interface declarations hashed.
    pub fn new(parts: LifecycleParts) -> Self {
        Self {
            config: parts.config,
            endpoint: parts.endpoint,
            gate: parts.gate,
            health: parts.health,
            wake_prober: parts.wake_prober,
            interfaces: declarations(),
        }
    }

    fn metadata(&self) -> PatternMetadata {
        PatternMetadata {
            name: self.config.plugin.name.clone(),
            version: self.config.plugin.version.clone(),
            interfaces: self.interfaces.clone(),
            extra: HashMap::from([("backend".into(), backend_kind(&self.config))]),
        }
    }

    /// The drain bound: the request's, else `drain_timeout`.
    fn bound(&self, timeout_seconds: i32) -> Duration {
        match u64::try_from(timeout_seconds) {
            Ok(s) if s > 0 => Duration::from_secs(s),
            _ => self.config.control_plane.drain_timeout.0,
        }
    }

    /// Closes the gate and waits (up to `bound`) until health has been
    /// published as draining, then for the calls in flight.
    async fn drain(&self, reason: &str, bound: Duration) -> crate::drain::Drained {
        let deadline = tokio::time::Instant::now() + bound;
        self.gate.close(reason);
        self.wake_prober.notify_one();
        let mut health = self.health.clone();
        let published = health.wait_for(|h| h.draining);
        let _ = tokio::time::timeout_at(deadline, published).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.gate.drain(reason, left).await
    }
}

fn backend_kind(config: &Config) -> String {
    format!("{:?}", config.backend.kind).to_lowercase()
}

/// One declaration per served interface, with the hex SHA-256 of its file.
fn declarations() -> Vec<InterfaceDeclaration> {
    INTERFACES
        .iter()
        .map(|(name, file, text)| InterfaceDeclaration {
            name: (*name).into(),
            proto_file: (*file).into(),
            version: INTERFACE_VERSION.into(),
            proto_hash: sha256_hex(text.as_bytes()),
            metadata: HashMap::new(),
        })
        .collect()
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

// === Initialize: config checks ===

/// A protobuf `Struct` as JSON. Struct numbers are doubles; whole ones
/// become integers, so `port: 9092` fits a `u16` field as in YAML.
pub fn struct_to_json(s: prost_types::Struct) -> Json {
    Json::Object(
        s.fields
            .into_iter()
            .map(|(k, v)| (k, value_to_json(v)))
            .collect::<Map<_, _>>(),
    )
}

fn value_to_json(v: prost_types::Value) -> Json {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::NumberValue(n)) => number(n),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Json::Array(l.values.into_iter().map(value_to_json).collect()),
    }
}

fn number(n: f64) -> Json {
    // 2^53: past it a double no longer holds every integer.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() <= EXACT {
        return Json::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Json::Null, Json::Number)
}

/// Dotted paths of the leaves of a JSON object (an empty object counts as
/// a leaf: it sets nothing, but names a section).
fn leaves(value: &Json, path: &str, out: &mut Vec<String>) {
    match value {
        Json::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(v, &p, out);
            }
        }
        _ if !path.is_empty() => out.push(path.to_string()),
        _ => {}
    }
}

/// The first key of `given` whose value in `wanted` differs from the
/// running config's. Secrets are compared as values (their serialised form
/// is redacted); a secret `wanted` leaves empty is not compared.
pub fn first_difference(given: &Json, wanted: &Config, running: &Config) -> Option<String> {
    let mut paths = Vec::new();
    leaves(given, "", &mut paths);
    let secrets: HashMap<_, _> = running.secrets().into_iter().collect();
    for (path, secret) in wanted.secrets() {
        if !secret.is_empty() && secrets.get(path) != Some(&secret) {
            return Some(path.to_string());
        }
    }
    let (w, r) = (serde_json::to_value(wanted), serde_json::to_value(running));
    let (Ok(w), Ok(r)) = (w, r) else {
        return paths.into_iter().next();
    };
    paths.into_iter().find(|path| {
        let pointer = format!("/{}", path.replace('.', "/"));
        !secrets.contains_key(path.as_str()) && w.pointer(&pointer) != r.pointer(&pointer)
    })
}

/// Checks an Initialize config; `Err` is the reply's error.
fn check_config(given: Option<prost_types::Struct>, running: &Config) -> Result<(), String> {
    let Some(given) = given else {
        return Ok(());
    };
    let given = struct_to_json(given);
    let wanted = Config::from_json(given.clone()).map_err(|e| e.to_string())?;
    match first_difference(&given, &wanted, running) {
        None => Ok(()),
        Some(key) => Err(format!(
            "{key}: differs from the config the plugin runs with; config is applied at start-up only: put it in the plugin's config file (or environment) and restart it"
        )),
    }
}

// === impl LifecycleInterface ===

#[tonic::async_trait]
impl LifecycleInterface for Lifecycle {
    async fn initialize(
        &self,
        req: Request<InitializeRequest>,
    ) -> Result<Response<InitializeResponse>, Status> {
        let reply = match check_config(req.into_inner().config, &self.config) {
            Ok(()) => InitializeResponse {
                success: true,
                error: String::new(),
                metadata: Some(self.metadata()),
            },
            Err(error) => InitializeResponse {
                success: false,
                error,
                metadata: None,
            },
        };
        Ok(Response::new(reply))
    }

    async fn start(&self, _: Request<StartRequest>) -> Result<Response<StartResponse>, Status> {
        let reply = match self.gate.is_draining() {
            true => StartResponse {
                success: false,
                error: "the plugin is draining or stopping; start a new one".into(),
                data_endpoint: String::new(),
            },
            false => StartResponse {
                success: true,
                error: String::new(),
                data_endpoint: self.endpoint.clone(),
            },
        };
        Ok(Response::new(reply))
    }

    async fn drain(&self, req: Request<DrainRequest>) -> Result<Response<DrainResponse>, Status> {
        let DrainRequest {
            timeout_seconds,
            reason,
        } = req.into_inner();
        let bound = self.bound(timeout_seconds);
        let drained = self.drain(&reason, bound).await;
        let error = match drained.unfinished {
            0 => String::new(),
            n => format!("{n} calls still in flight after {bound:?}; Stop ends them"),
        };
        Ok(Response::new(DrainResponse {
            success: drained.unfinished == 0,
            error,
            drained_operations: i64::try_from(drained.finished).unwrap_or(i64::MAX),
            aborted_operations: i64::try_from(drained.unfinished).unwrap_or(i64::MAX),
        }))
    }

    async fn stop(&self, req: Request<StopRequest>) -> Result<Response<StopResponse>, Status> {
        // A bound the request gives can shorten the drain, not lengthen it.
        let configured = self.config.control_plane.drain_timeout.0;
        let bound = u64::try_from(req.into_inner().timeout_seconds)
            .ok()
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(s).min(configured));
        self.gate.close("stopping");
        self.gate.request_stop(bound);
        Ok(Response::new(StopResponse {
            success: true,
            error: String::new(),
        }))
    }

    async fn health_check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(health_reply(
            &self.health.borrow(),
            self.gate.in_flight(),
        )))
    }
}

/// Prism's health from what the prober published.
fn health_reply(view: &HealthView, in_flight: usize) -> HealthCheckResponse {
    let (status, message) = match view.serving {
        true => (HealthStatus::Healthy, "serving".to_string()),
        false => (HealthStatus::Unhealthy, view.reason.clone()),
    };
    let mut details = HashMap::from([
        ("draining".to_string(), view.draining.to_string()),
        ("in_flight".to_string(), in_flight.to_string()),
    ]);
    if !view.serving {
        details.insert("reason".into(), view.reason.clone());
    }
    HealthCheckResponse {
        status: status.into(),
        message,
        details,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Secret;

    fn difference(given: Json, running: &Config) -> Option<String> {
        let wanted = Config::from_json(given.clone()).expect("valid config");
        first_difference(&given, &wanted, running)
    }

    #[test]
    fn a_secret_is_compared_by_value_not_by_its_redacted_form() {
        let mut running = Config::default();
        running.backend.username = "cache".into();
        running.backend.password = Secret::new("one");
        let same = json!({ "backend": { "username": "cache", "password": "one" } });
        assert_eq!(difference(same, &running), None);
        let other = json!({ "backend": { "username": "cache", "password": "two" } });
        assert_eq!(
            difference(other, &running).as_deref(),
            Some("backend.password")
        );
    }

    #[test]
    fn whole_numbers_from_a_struct_fit_integer_fields() {
        use prost_types::{Struct, Value, value::Kind};
        let number = |n| Value {
            kind: Some(Kind::NumberValue(n)),
        };
        let s = Struct {
            fields: [
                ("port".to_string(), number(9092.0)),
                ("f".into(), number(0.5)),
            ]
            .into(),
        };
        assert_eq!(struct_to_json(s), json!({ "port": 9092, "f": 0.5 }));
    }

    #[test]
    fn every_declared_interface_has_a_sha256_of_its_file() {
        let declared = declarations();
        assert_eq!(declared.len(), 4);
        for d in &declared {
            assert_eq!(d.proto_hash.len(), 64);
            assert!(d.proto_hash.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        // The well-known vector: SHA-256 of "abc".
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
