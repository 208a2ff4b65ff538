//! The `control_plane` section: the plugin's own port — where it listens,
//! how it admits and drains requests, its connection and memory limits, and
//! TLS on it ([`ServerTls`]). Schema, documented defaults and validation of
//! the section live here; serving it is `server`'s and `transport`'s.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::{
    duration::Dur,
    error::ConfigError,
    rules::{nonzero, readable, timeout, tls_off, within},
};

const MIB: usize = 1024 * 1024;

/// Bounds on the port's own limits: far past any real deployment, low enough
/// that no arithmetic on them overflows.
pub const MAX_CONCURRENT_REQUESTS: usize = 1_000_000;
pub const MAX_CONNECTIONS: usize = 1_000_000;
pub const MAX_CONCURRENT_STREAMS: usize = 1_000_000;
pub const MAX_IN_FLIGHT_BYTES: usize = 64 * 1024 * 1024 * 1024;
const MAX_REFUSAL_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Room for gRPC framing and headers on top of the largest key and value:
/// the largest allowed Set (or Get reply) must fit one connection's budget.
const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// The gRPC port and how it admits and drains requests.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneConfig {
    pub port: u16,
    pub listen: String,
    pub drain_timeout: Dur,
    pub max_concurrent_requests: usize,
    /// How often the health prober PINGs Redis.
    pub health_interval: Dur,
    /// TLS (and mTLS) on the plugin's own port.
    pub tls: ServerTls,
    /// Connections served at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open (advertised in SETTINGS).
    pub max_concurrent_streams: u32,
    /// Request and response bytes held in memory, all connections together.
    pub max_in_flight_bytes: usize,
    /// The share of `max_in_flight_bytes` one connection may hold.
    pub max_in_flight_bytes_per_connection: usize,
    /// How long a request body may take to arrive (or the caller's deadline).
    pub request_read_timeout: Dur,
    /// In a flood of refusals (more than `max_concurrent_requests` in this
    /// long), how long each further refusal waits before it is answered;
    /// `0s` answers every refusal at once.
    pub refusal_delay: Dur,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Dur,
    /// HTTP/2 PING interval on a connection, to find dead peers.
    pub keepalive_interval: Dur,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Dur,
}

/// TLS on the gRPC port. With `client_ca_file`, clients must present a
/// certificate that CA signed (mTLS). Files are re-read when they change.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTls {
    pub enabled: bool,
    pub cert_file: String,
    pub key_file: String,
    pub client_ca_file: String,
    /// How often the files are checked for changes.
    pub reload_interval: Dur,
}

// === defaults ===
//
// Hand-written with the documented values: `#[serde(default)]` fills a
// partly written block from these, and a derived `Default` would give zeros
// (a 0 s reload interval) to whatever the block leaves out.

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            port: 9092,
            // A sidecar serves its pod's gateway: loopback unless told
            // otherwise (deploy/ sets 0.0.0.0 where kubelet must dial it).
            listen: "127.0.0.1".into(),
            drain_timeout: Dur::secs(10),
            max_concurrent_requests: 1024,
            health_interval: Dur::secs(5),
            tls: ServerTls::default(),
            max_connections: 1024,
            max_concurrent_streams: 256,
            max_in_flight_bytes: 256 * MIB,
            max_in_flight_bytes_per_connection: 64 * MIB,
            request_read_timeout: Dur::secs(10),
            refusal_delay: Dur::millis(10),
            idle_timeout: Dur::secs(300),
            keepalive_interval: Dur::secs(60),
            keepalive_timeout: Dur::secs(20),
        }
    }
}

impl Default for ServerTls {
    fn default() -> Self {
        Self {
            enabled: false,
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
            reload_interval: Dur::secs(5),
        }
    }
}

// === validation ===

impl ControlPlaneConfig {
    /// Where it listens, how many calls it admits, its timers.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.listen.parse::<IpAddr>().map_err(|_| {
            ConfigError::new(
                "control_plane.listen",
                "must be an IP address like 127.0.0.1",
            )
        })?;
        within(
            self.max_concurrent_requests,
            MAX_CONCURRENT_REQUESTS,
            "control_plane.max_concurrent_requests",
        )?;
        timeout(self.drain_timeout, "control_plane.drain_timeout")?;
        if self.refusal_delay.0 > MAX_REFUSAL_DELAY {
            // Held longer, a refusal stops being an answer a caller can act on.
            return Err(ConfigError::new(
                "control_plane.refusal_delay",
                "must be at most 1s (0s answers every refusal at once)",
            ));
        }
        timeout(self.health_interval, "control_plane.health_interval")?;
        timeout(
            self.tls.reload_interval,
            "control_plane.tls.reload_interval",
        )
    }

    /// The connection and memory limits of the port. The budgets must hold
    /// the backend's largest request, or it could never succeed.
    pub(crate) fn validate_transport(
        &self,
        max_value_bytes: usize,
        max_key_bytes: usize,
    ) -> Result<(), ConfigError> {
        within(
            self.max_connections,
            MAX_CONNECTIONS,
            "control_plane.max_connections",
        )?;
        within(
            self.max_concurrent_streams as usize,
            MAX_CONCURRENT_STREAMS,
            "control_plane.max_concurrent_streams",
        )?;
        within(
            self.max_in_flight_bytes,
            MAX_IN_FLIGHT_BYTES,
            "control_plane.max_in_flight_bytes",
        )?;
        self.validate_per_connection(max_value_bytes, max_key_bytes)?;
        timeout(
            self.request_read_timeout,
            "control_plane.request_read_timeout",
        )?;
        timeout(self.idle_timeout, "control_plane.idle_timeout")?;
        timeout(self.keepalive_interval, "control_plane.keepalive_interval")?;
        timeout(self.keepalive_timeout, "control_plane.keepalive_timeout")
    }

    fn validate_per_connection(
        &self,
        max_value_bytes: usize,
        max_key_bytes: usize,
    ) -> Result<(), ConfigError> {
        let per_conn = "control_plane.max_in_flight_bytes_per_connection";
        if self.max_in_flight_bytes_per_connection > self.max_in_flight_bytes {
            return Err(ConfigError::new(
                per_conn,
                "must be at most control_plane.max_in_flight_bytes",
            ));
        }
        let largest = max_value_bytes
            .saturating_add(max_key_bytes)
            .saturating_add(MESSAGE_OVERHEAD);
        if self.max_in_flight_bytes_per_connection < largest {
            return Err(ConfigError::new(
                per_conn,
                format!(
                    "must be at least backend.max_value_bytes + max_key_bytes + 64 KiB ({largest})"
                ),
            ));
        }
        Ok(())
    }
}

impl ServerTls {
    /// TLS fails closed: certificate, key or CA files given while TLS is off
    /// stop start-up, naming the switch, instead of serving plaintext the
    /// operator did not ask for.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            let given = [
                ("cert_file", &self.cert_file),
                ("key_file", &self.key_file),
                ("client_ca_file", &self.client_ca_file),
            ];
            if let Some((name, _)) = given.iter().find(|(_, v)| !v.is_empty()) {
                return Err(tls_off("control_plane.tls", name, "serve plaintext"));
            }
            return Ok(());
        }
        readable("control_plane.tls.cert_file", &self.cert_file, true)?;
        readable("control_plane.tls.key_file", &self.key_file, true)?;
        readable(
            "control_plane.tls.client_ca_file",
            &self.client_ca_file,
            false,
        )?;
        nonzero(self.reload_interval, "control_plane.tls.reload_interval")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{Config, tests::load};

    use super::*;

    #[test]
    fn refusal_delay_defaults_to_10ms_and_may_be_off() {
        let c = Config::default().control_plane;
        assert_eq!(c.refusal_delay.0, Duration::from_millis(10));
        let off = load("control_plane: { refusal_delay: 0s }\n").expect("0s is valid");
        assert!(off.control_plane.refusal_delay.0.is_zero());
        let max = load("control_plane: { refusal_delay: 1s }\n").expect("1s is valid");
        assert_eq!(max.control_plane.refusal_delay.0, Duration::from_secs(1));
    }

    #[test]
    fn transport_limits_have_defaults_and_are_validated() {
        let c = load("control_plane: { idle_timeout: 1s }\n").expect("valid");
        let cp = &c.control_plane;
        assert_eq!(cp.idle_timeout.0, Duration::from_secs(1));
        assert_eq!(cp.max_concurrent_streams, 256);
        assert_eq!(cp.max_in_flight_bytes, 256 * MIB);
        assert_eq!(cp.max_in_flight_bytes_per_connection, 64 * MIB);
        let repo = include_str!("../../config.yaml");
        let from_repo = load(repo).expect("config.yaml is valid");
        let (a, b) = (&from_repo.control_plane, &Config::default().control_plane);
        assert_eq!(a.max_connections, b.max_connections);
        assert_eq!(a.max_in_flight_bytes, b.max_in_flight_bytes);
        assert_eq!(a.request_read_timeout.0, b.request_read_timeout.0);
        assert_eq!(a.keepalive_timeout.0, b.keepalive_timeout.0);
        assert_eq!(a.refusal_delay.0, b.refusal_delay.0);
        for (yaml, field) in [
            ("max_connections: 0", "control_plane.max_connections"),
            (
                "max_concurrent_streams: 0",
                "control_plane.max_concurrent_streams",
            ),
            (
                "max_in_flight_bytes: 1000",
                "control_plane.max_in_flight_bytes_per_connection",
            ),
            (
                "max_in_flight_bytes_per_connection: 1000",
                "control_plane.max_in_flight_bytes_per_connection",
            ),
            (
                "request_read_timeout: 0",
                "control_plane.request_read_timeout",
            ),
            ("idle_timeout: 0", "control_plane.idle_timeout"),
            ("refusal_delay: 1001ms", "control_plane.refusal_delay"),
        ] {
            let err = load(&format!("control_plane: {{ {yaml} }}\n")).unwrap_err();
            assert_eq!(err.field, field, "{yaml}: {err}");
        }
    }
}
